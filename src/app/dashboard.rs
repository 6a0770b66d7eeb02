//! The dashboard on the admin listener: its page and scripts at `/ui/` (embedded in the
//! binary: no CDN, works offline), and the read-only JSON it polls, which scripts can use
//! too: `/overview`, `/live`, `/errors`, `/explain` (besides `/routes`, `/upstreams` and
//! `/mirrors`). Nothing here changes state, and nothing shows a secret: configs are the
//! redacted ones, paths lose their credential parameters.

use super::admin::{admin_error, json_response, Admin};
use crate::errors::Code;
use crate::explain::{self, Probe};
use crate::live::Live;
use crate::snapshot::Snapshot;
use crate::VERSION;
use http::{Response, StatusCode};
use serde_json::{json, Value};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// No inline script or style, nothing from elsewhere, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// A dashboard asset, or None for another path. `/ui` goes to `/ui/`, where the page's
/// relative links resolve.
pub fn asset(path: &str) -> Option<Response<Vec<u8>>> {
    if path == "/ui" {
        let moved = Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(http::header::LOCATION, "/ui/")
            .header(http::header::CONTENT_LENGTH, 0)
            .body(Vec::new())
            .expect("static parts are valid");
        return Some(moved);
    }
    let (body, kind) = match path {
        "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, kind)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-cache")
        .header(http::header::CONTENT_SECURITY_POLICY, CSP)
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::REFERRER_POLICY, "no-referrer")
        .header(http::header::X_FRAME_OPTIONS, "DENY")
        .body(body.as_bytes().to_vec())
        .expect("static parts are valid");
    Some(response)
}

/// `/overview`: what runs, since when, its reloads (each applied one's changes, each
/// refused one's diagnostics), its files, caches and Redis.
pub fn overview(admin: &Admin) -> Value {
    let snapshot = admin.holder.load();
    let metrics = &admin.telemetry.metrics;
    let caches: serde_json::Map<String, Value> = snapshot
        .caches
        .keys()
        .map(|name| {
            let size = metrics.cache_size.with_label_values(&[name]).get();
            (name.clone(), json!({"size_bytes": size}))
        })
        .collect();
    let (hits, lookups) = match snapshot.caches.is_empty() {
        true => (0.0, 0.0),
        false => cache_hits(metrics),
    };
    json!({
        "version": VERSION,
        "config_hash": snapshot.hash,
        "config_path": snapshot.path.display().to_string(),
        "uptime_s": metrics.live.uptime().as_secs(),
        "last_reload": admin.reloader.status(),
        "reloads": admin.reloader.history(),
        "config_files": admin.reloader.file_statuses(),
        "warnings": snapshot.warnings.iter().map(|w| w.one_line()).collect::<Vec<_>>(),
        "routes": snapshot.routes.len(),
        "upstreams": snapshot.upstreams.len(),
        "caches": caches,
        "cache_hit_ratio": (lookups > 0.0).then(|| hits / lookups),
        "redis": snapshot.redis.as_ref().map(|r| json!({"connected": r.is_connected()})),
        "dashboard": snapshot.dashboard,
    })
}

/// Cache hits (fresh and revalidated) and lookups, over every cache route.
fn cache_hits(metrics: &crate::telemetry::Metrics) -> (f64, f64) {
    let families = metrics.registry.gather();
    let Some(family) = families
        .iter()
        .find(|f| f.name() == "portico_cache_requests_total")
    else {
        return (0.0, 0.0);
    };
    let mut hits = 0.0;
    let mut lookups = 0.0;
    for m in family.get_metric() {
        let result = m
            .get_label()
            .iter()
            .find(|l| l.name() == "result")
            .map_or("", |l| l.value());
        let n = m.get_counter().get_value();
        if result != "BYPASS" {
            lookups += n;
        }
        if matches!(result, "HIT" | "REVALIDATED") {
            hits += n;
        }
    }
    (hits, lookups)
}

/// `/live?minutes=N` (1 to 15, default 5): the gateway's and each route's requests/s,
/// error share, p50/p99 latency, and their series in 10-second buckets.
pub fn live(snapshot: &Snapshot, live: &Live, query: Option<&str>) -> Value {
    let minutes = param(query, "minutes")
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(5)
        .clamp(1, 15);
    let routes: serde_json::Map<String, Value> = snapshot
        .routes
        .iter()
        .map(|r| (r.name.to_string(), live.route(&r.name, minutes)))
        .collect();
    json!({
        "minutes": minutes,
        "bucket_s": crate::live::BUCKET_SECS,
        "gateway": live.gateway(minutes),
        "routes": routes,
    })
}

/// 404s whose nearest routes `/errors` works out (the newest ones): a page of them costs a
/// few milliseconds of the admin thread, whatever clients sent.
const NEAREST_FOR: usize = 20;
/// How much of a 404's path is compared with the routes'.
const NEAREST_CHARS: usize = 128;

/// `/errors`: the last failed requests, newest first, each with why. A recent 404's reason
/// names the routes nearest to its path (worked out now, not on the request's time).
pub fn errors(snapshot: &Snapshot, live: &Live) -> Value {
    let mut near_left = NEAREST_FOR;
    let list: Vec<Value> = live
        .failures()
        .iter()
        .map(|f| {
            let mut view = f.view();
            if f.code == Some("route_not_found") && near_left > 0 {
                near_left -= 1;
                let path: String = f.path.chars().take(NEAREST_CHARS).collect();
                let near = explain::nearest(snapshot, &f.method, &path);
                let reason = match near.is_empty() {
                    true => "no route matches, and none is near".to_string(),
                    false => format!("no route: nearest candidates {}", near.join("; ")),
                };
                view["reason"] = reason.into();
            }
            view
        })
        .collect();
    json!({"kept": crate::live::ERRORS_KEPT, "errors": list})
}

/// `/explain?method=GET&path=/x&header=Name:%20value`: `portico route`, for the browser.
pub fn explain(snapshot: &Snapshot, query: Option<&str>) -> Response<Vec<u8>> {
    let method = param(query, "method").unwrap_or_else(|| "GET".into());
    let Some(path) = param(query, "path") else {
        let why = "give `path` (and `method`, `header`)";
        return admin_error(StatusCode::BAD_REQUEST, Code::InvalidProbe, why);
    };
    let headers: Vec<String> = query
        .into_iter()
        .flat_map(|q| crate::router::query_values(q, "header"))
        .map(std::borrow::Cow::into_owned)
        .collect();
    match Probe::parse(&method, &path, &headers) {
        Ok(probe) => json_response(
            StatusCode::OK,
            json!({"request": format!("{} {path}", probe.method), "explanation": explain::explain(snapshot, &probe)}),
        ),
        Err(why) => admin_error(StatusCode::BAD_REQUEST, Code::InvalidProbe, &why),
    }
}

/// Whether a request is addressed to the admin listener by an IP address or `localhost`:
/// a page elsewhere that rebinds its own name to this address (DNS rebinding) cannot read
/// the dashboard's data, whose answers its browser would otherwise hand it.
pub fn addressed_directly(req: &http::request::Parts) -> bool {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(req.uri.authority().map(|a| a.as_str()));
    let Some(host) = host else { return true };
    // `[::1]:9901`, `127.0.0.1:9901`, `localhost`: the name without its port.
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// A query parameter's first value, decoded.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    crate::router::query_values(query?, name)
        .next()
        .map(std::borrow::Cow::into_owned)
}
