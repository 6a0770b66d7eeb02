//! The admin listener: `/health` (liveness, version, config hash, last reload), `/ready`
//! `/config` (the active config, redacted, and reload status), `/routes`, `/upstreams`,
//! `/metrics` (Prometheus), the dashboard and its JSON (`dashboard.rs`), and `POST
//! /cache/purge`, the one call that changes state (it needs `admin.token_env`'s token).

use super::dashboard;
use super::reload::Reloader;
use super::services::Readiness;
use crate::errors::Code;
use crate::policy::cache;
use crate::snapshot::{Action, Snapshot, SnapshotHolder};
use crate::telemetry::Telemetry;
use crate::VERSION;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use sha2::Digest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Admin {
    pub holder: SnapshotHolder,
    pub readiness: Readiness,
    pub reloader: Reloader,
    pub telemetry: Arc<Telemetry>,
    /// This process's id in purge broadcasts, and whether it receives theirs.
    pub origin: u64,
    pub purges_subscribed: Arc<AtomicBool>,
}

/// The dashboard's JSON endpoints.
const DASHBOARD_JSON: [&str; 4] = ["/overview", "/live", "/errors", "/explain"];

/// A purge request body is a small JSON object.
const MAX_PURGE_BODY: usize = 64 * 1024;

pub(super) fn admin_error(status: StatusCode, code: Code, message: &str) -> Response<Vec<u8>> {
    json_response(
        status,
        json!({"error": {"status": status.as_u16(), "code": code.as_str(), "message": message}}),
    )
}

pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static parts are valid")
}

impl Admin {
    fn health(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        json_response(
            StatusCode::OK,
            json!({
                "status": "ok",
                "version": VERSION,
                "config_hash": snapshot.hash,
                "config_path": snapshot.path.display().to_string(),
                "last_reload": self.reloader.status(),
                "config_files": self.reloader.file_statuses(),
                "redis": snapshot.redis.as_ref().map(|r| {
                    let mut state = json!({"connected": r.is_connected()});
                    if !snapshot.caches.is_empty() {
                        let subscribed = self.purges_subscribed.load(Ordering::Relaxed);
                        state["cache_purges_subscribed"] = json!(subscribed);
                    }
                    state
                }),
            }),
        )
    }

    /// The active config (credentials in URLs redacted), its hash and the reload status.
    fn config(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        json_response(
            StatusCode::OK,
            json!({
                "config_hash": snapshot.hash,
                "config_path": snapshot.path.display().to_string(),
                "last_reload": self.reloader.status(),
                "config": snapshot.redacted(),
            }),
        )
    }

    /// The compiled route table, in match order.
    fn routes(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        let routes: Vec<serde_json::Value> = snapshot
            .routes
            .iter()
            .zip(
                snapshot.redacted()["routes"]
                    .as_array()
                    .into_iter()
                    .flatten(),
            )
            .zip(&snapshot.defined_at)
            .map(|((route, raw), defined_at)| {
                let action = match &route.action {
                    Action::Proxy(b) if b.list.len() == 1 => json!({"upstream": b.names()}),
                    Action::Proxy(b) => {
                        let list: Vec<_> = b
                            .list
                            .iter()
                            .map(|b| json!({"upstream": &*b.upstream.name, "weight": b.weight}))
                            .collect();
                        json!({"backends": list})
                    }
                    Action::Respond(r) => json!({"respond": r.status}),
                    Action::Redirect(r) => json!({"redirect": r.status}),
                    Action::Aggregate(a) => {
                        let calls: Vec<&str> = a.calls.iter().map(|c| c.name.as_str()).collect();
                        json!({"aggregate": calls})
                    }
                };
                let mut view = json!({
                    "name": &*route.name,
                    "defined_at": defined_at,
                    "match": raw["match"],
                    "action": action,
                    "policies": route.policies.iter().map(|p| p.label()).collect::<Vec<_>>(),
                    "policy_details": route.policies.iter().map(|p| p.view()).collect::<Vec<_>>(),
                    "timeout_ms": route.timeout.map(|t| t.as_millis() as u64),
                    "max_body": route.max_body,
                });
                if let Some(m) = &route.mirror {
                    view["mirror"] = json!({"upstream": &*m.upstream.name, "percent": m.percent});
                }
                // As `portico route` says them.
                if let Some(sticky) = &route.sticky {
                    view["sticky"] = sticky.explain().into();
                }
                if let Some(retry) = &route.retry {
                    view["retry"] = retry.explain().into();
                }
                // Each named policy by its key (`"auth": "jwt"`), as the route's file says.
                for policy in &route.policies {
                    if let Some(name) = policy.name() {
                        view[policy.kind()] = name.into();
                    }
                }
                view
            })
            .collect();
        json_response(
            StatusCode::OK,
            json!({"config_hash": snapshot.hash, "routes": routes}),
        )
    }

    /// Each mirrored route: its shadow, copies in flight and its last differences.
    fn mirrors(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        let routes: serde_json::Map<String, serde_json::Value> = snapshot
            .routes
            .iter()
            .filter_map(|r| Some((r.name.to_string(), r.mirror.as_ref()?.view())))
            .collect();
        json_response(
            StatusCode::OK,
            json!({"config_hash": snapshot.hash, "routes": routes}),
        )
    }

    /// Upstream targets with their addresses, health, breaker state and load.
    fn upstreams(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = snapshot
            .upstreams
            .iter()
            .map(|(name, up)| {
                let targets: Vec<serde_json::Value> = up
                    .targets
                    .iter()
                    .map(|t| {
                        json!({
                            "target": t.label,
                            "addresses": t.addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "healthy": t.health.is_healthy(),
                            "breaker": t.breaker.state().as_str(),
                            "ejected_for_ms": t.outlier.ejected_for().map(|d| d.as_millis() as u64),
                            "times_ejected": t.outlier.times_ejected(),
                            "in_flight": t.in_flight(),
                            "breaker_open_for_ms": t.breaker.open_for_ms(),
                            "latency_ms": t.latency_ms(),
                            "last_error": t.last_error().map(|(at_ms, what)| json!({"at_ms": at_ms, "what": what})),
                        })
                    })
                    .collect();
                (name.clone(), json!({"balance": up.balance.to_string(), "targets": targets}))
            })
            .collect();
        json_response(StatusCode::OK, json!({"upstreams": upstreams}))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        refresh_gauges(&self.telemetry, &self.holder.load());
        let body = self.telemetry.metrics.render().into_bytes();
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static parts are valid")
    }

    /// Purges one cache's entries by path or prefix here, then on every replica through
    /// Redis when it is configured. A purge that could not reach the replicas is a 502: the
    /// caller must know the other gateways may still serve the old entries.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if let Some(refused) = self.unauthorized(session) {
            return refused;
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_PURGE_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    let why = "a purge is a small JSON object";
                    return admin_error(StatusCode::PAYLOAD_TOO_LARGE, Code::BodyTooLarge, why);
                }
                Ok(None) => break,
                Err(_) => {
                    let why = "the request body could not be read";
                    return admin_error(StatusCode::BAD_REQUEST, Code::BadRequest, why);
                }
            }
        }
        let purge: cache::Purge = match serde_json::from_slice(&body) {
            Ok(purge) => purge,
            Err(e) => {
                let why =
                    format!("expected {{\"cache\": NAME, \"path\" or \"prefix\": \"/...\"}}: {e}");
                return admin_error(StatusCode::BAD_REQUEST, Code::InvalidPurge, &why);
            }
        };
        let snapshot = self.holder.load();
        let purged = match purge.apply(&snapshot.caches) {
            Ok(n) => n,
            Err(why) => return admin_error(StatusCode::BAD_REQUEST, Code::InvalidPurge, &why),
        };
        let Some(link) = snapshot.redis.clone() else {
            return json_response(StatusCode::OK, json!({"purged": purged, "replicas": false}));
        };
        let message = json!({"origin": self.origin, "purge": purge}).to_string();
        match link.publish(cache::PURGE_CHANNEL, &message).await {
            Ok(()) => json_response(StatusCode::OK, json!({"purged": purged, "replicas": true})),
            Err(e) => {
                tracing::warn!(error = %e, "a cache purge could not reach the other replicas");
                let why = format!(
                    "purged {purged} entries here, but the purge could not be sent to the other replicas ({e}); retry"
                );
                admin_error(StatusCode::BAD_GATEWAY, Code::PurgeNotBroadcast, &why)
            }
        }
    }

    /// The refusal of a call that changes state without `Authorization: Bearer` and
    /// `admin.token_env`'s token (without a token configured, such calls are off); None
    /// when it may go on.
    fn unauthorized(&self, session: &ServerSession) -> Option<Response<Vec<u8>>> {
        let snapshot = self.holder.load();
        let Some(token) = &snapshot.admin_token else {
            let why = "cache purges need `admin.token_env` set to a bearer token";
            return Some(admin_error(
                StatusCode::FORBIDDEN,
                Code::AdminTokenRequired,
                why,
            ));
        };
        let sent = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim());
        // Digests of equal length, compared in constant time: neither the token's bytes
        // nor its length show in the timing.
        let digest = |t: &str| sha2::Sha256::digest(t.as_bytes());
        #[allow(deprecated)]
        let same = ring::constant_time::verify_slices_are_equal(&digest(sent), &digest(token));
        same.is_err().then(|| {
            let why = "send `Authorization: Bearer TOKEN` with admin.token_env's token";
            admin_error(StatusCode::UNAUTHORIZED, Code::AdminTokenInvalid, why)
        })
    }

    fn ready(&self) -> Response<Vec<u8>> {
        if self.readiness.is_ready() {
            json_response(StatusCode::OK, json!({"ready": true}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ready": false, "reason": "draining"}),
            )
        }
    }
}

/// Sets the state gauges (target health, breakers, build info) from the active snapshot.
fn refresh_gauges(telemetry: &Telemetry, snapshot: &Snapshot) {
    let m = &telemetry.metrics;
    m.target_healthy.reset();
    m.breaker_state.reset();
    m.target_ejected.reset();
    m.build_info.reset();
    m.build_info
        .with_label_values(&[VERSION, snapshot.hash.as_str()])
        .set(1);
    m.certificate_expiry.reset();
    for cert in snapshot.tls.iter().flat_map(|t| &t.certificates) {
        m.certificate_expiry
            .with_label_values(&[cert.name.as_str()])
            .set(cert.not_after);
    }
    let redis = snapshot.redis.as_ref().is_some_and(|r| r.is_connected());
    m.redis_connected.set(i64::from(redis));
    for (name, upstream) in &snapshot.upstreams {
        for t in &upstream.targets {
            let labels = [name.as_str(), t.label.as_str()];
            m.target_healthy
                .with_label_values(&labels)
                .set(i64::from(t.health.is_healthy()));
            m.breaker_state
                .with_label_values(&labels)
                .set(t.breaker.state() as i64);
            if upstream.outlier.is_some() {
                m.target_ejected
                    .with_label_values(&labels)
                    .set(i64::from(t.outlier.is_ejected()));
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == "/cache/purge" {
            if req.method != http::Method::POST {
                let why = "purge with POST and a JSON body";
                return admin_error(StatusCode::METHOD_NOT_ALLOWED, Code::MethodNotAllowed, why);
            }
            return self.purge(session).await;
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            let why = "these admin endpoints are read-only: use GET";
            return admin_error(StatusCode::METHOD_NOT_ALLOWED, Code::MethodNotAllowed, why);
        }
        let snapshot = self.holder.load();
        let path = req.uri.path();
        if path == "/ui" || path.starts_with("/ui/") || DASHBOARD_JSON.contains(&path) {
            if !snapshot.dashboard {
                let why = "the dashboard is off (`admin.dashboard: false`)";
                return admin_error(StatusCode::NOT_FOUND, Code::DashboardOff, why);
            }
            if !dashboard::addressed_directly(req) {
                let why = "open the dashboard by the admin listener's IP address or localhost";
                return admin_error(StatusCode::FORBIDDEN, Code::DashboardHost, why);
            }
            let live = &self.telemetry.metrics.live;
            let query = req.uri.query();
            return match path {
                "/overview" => json_response(StatusCode::OK, dashboard::overview(self)),
                "/live" => json_response(StatusCode::OK, dashboard::live(&snapshot, live, query)),
                "/errors" => json_response(StatusCode::OK, dashboard::errors(&snapshot, live)),
                "/explain" => dashboard::explain(&snapshot, query),
                _ => dashboard::asset(path).unwrap_or_else(|| {
                    admin_error(
                        StatusCode::NOT_FOUND,
                        Code::NotFound,
                        "the dashboard is at /ui/",
                    )
                }),
            };
        }
        match path {
            "/health" => self.health(),
            "/ready" => self.ready(),
            "/config" => self.config(),
            "/openapi.json" => {
                let snapshot = self.holder.load();
                json_response(StatusCode::OK, crate::openapi::of(&snapshot).clone())
            }
            "/routes" => self.routes(),
            "/upstreams" => self.upstreams(),
            "/mirrors" => self.mirrors(),
            "/metrics" => self.metrics(),
            _ => admin_error(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                "admin endpoints: /health, /ready, /config, /routes, /upstreams, /mirrors, /metrics, /openapi.json, the dashboard at /ui/ and its /overview, /live, /errors, /explain, POST /cache/purge",
            ),
        }
    }
}
