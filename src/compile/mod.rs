//! Compiles the file model into the immutable runtime [`Snapshot`], gathering every
//! problem with its location. Long-lived state (targets, buckets, links, JWKS caches) is
//! taken from [`Stores`] where its defining fields did not change.

mod policies;
mod routes;
mod upstream;

use crate::config::model::RawAccessLog;
use crate::config::{RawConfig, Source};
use crate::diag::{cidr, inputs_digest, ConfigError, Diags, Inputs};
use crate::policy::CompileCx;
use crate::redis_link::RedisLink;
use crate::router::{Match, Router};
use crate::snapshot::{AccessLogSettings, Route, Settings, Snapshot, ACCESS_FIELDS};
use crate::state::{StateCx, Stores};
use crate::telemetry::{Metrics, RouteMetrics};
use crate::upstream::Upstream;
use policies::Named;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// Loads, checks and compiles a config file with fresh state (for `check` and tools).
/// Loads and compiles a config file. When it does not parse, the part that does is checked
/// too, so every problem is reported at once (an unknown upstream beside an unknown key).
pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
    match Source::load(path) {
        Ok(src) => compile(&src),
        Err(e) if path.is_file() => Err(with_semantic_errors(e, path)),
        Err(e) => Err(e),
    }
}

/// `e`, and what compiling the repaired rest of the file finds elsewhere.
fn with_semantic_errors(mut e: ConfigError, path: &Path) -> ConfigError {
    let Some(src) = Source::repaired(path) else {
        return e;
    };
    let Err(more) = compile(&src) else { return e };
    let places: Vec<_> = e.0.iter().map(|d| (d.pos.line, d.pos.col)).collect();
    let new = more
        .0
        .into_iter()
        .filter(|d| d.severity == crate::diag::Severity::Error);
    e.0.extend(new.filter(|d| !places.contains(&(d.pos.line, d.pos.col))));
    e.0.sort_by_key(|d| (d.pos.line, d.pos.col));
    e
}

/// Checks and compiles with fresh state and metrics (for `check` and tools).
pub fn compile(src: &Source) -> Result<Snapshot, ConfigError> {
    compile_with(src, &Stores::default(), &Metrics::new())
}

/// Checks and compiles, reusing unchanged state from `stores`; route metric handles come
/// from `metrics`.
pub fn compile_with(
    src: &Source,
    stores: &Stores,
    metrics: &Metrics,
) -> Result<Snapshot, ConfigError> {
    let mut d = Diags::new(&src.places);
    let raw = &src.raw;
    if raw.version != 1 {
        d.error(
            "version",
            format!("unsupported config version {}", raw.version),
            Some("this Portico reads `version: 1`".into()),
        );
    }
    let settings = compile_settings(&mut d, raw);
    let mut state = stores.begin();
    let mut inputs = Inputs::new(&src.base.path);
    pingora::tls::install_default_crypto_provider();
    let upstreams: BTreeMap<String, Arc<Upstream>> = raw
        .upstreams
        .iter()
        .filter_map(|(name, up)| {
            let upstream = upstream::compile_upstream(&mut d, &mut inputs, name, up, &mut state)?;
            Some((name.clone(), Arc::new(upstream)))
        })
        .collect();
    let redis = compile_redis(&mut d, &mut state, raw);
    let tls = raw
        .tls
        .as_ref()
        .and_then(|t| crate::tls::compile(&mut d, &mut inputs, t))
        .map(Arc::new);
    let mut cx = CompileCx {
        d: &mut d,
        state: &mut state,
        inputs: &mut inputs,
        redis: redis.clone(),
        metrics,
    };
    let named = Named::compile(&mut cx, raw);
    let compiled = routes::compile_routes(&mut cx, &named, &upstreams, raw);
    let (mut matchers, mut routes, mut at) = (Vec::new(), Vec::new(), Vec::new());
    for c in compiled {
        matchers.push(c.matcher);
        routes.push(c.route);
        at.push(c.at);
    }
    let router = Router::new(matchers);
    warn_shadowed(&mut d, &router, raw, &at);
    warn_unused_upstreams(&mut d, raw);
    warn_plain_logins(&mut d, raw);
    warn_unrouted_callbacks(&mut d, &router, &routes, &at);
    let access_log = compile_access_log(&mut d, &raw.telemetry.access_log);
    let admin_token = raw.admin.token_env.as_ref().and_then(|var| {
        let token = std::env::var(var)
            .ok()
            .filter(|t| t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()));
        if token.is_none() {
            d.error(
                "admin.token_env",
                format!(
                    "environment variable `{var}` is not set to a token of 16 or more visible characters"
                ),
                Some(format!("export {var}=$(openssl rand -hex 24)")),
            );
        }
        token
    });
    let tracing = compile_tracing(&mut d, &mut state, raw);
    d.items
        .sort_by(|a, b| (&a.file, a.pos.line, a.pos.col).cmp(&(&b.file, b.pos.line, b.pos.col)));
    let Some(settings) = settings.filter(|_| !d.has_errors()) else {
        return Err(ConfigError(d.items));
    };
    let identity_headers = named.identity_headers(routes.iter().flat_map(|r| &r.policies));
    Ok(Snapshot {
        hash: src.hash.clone(),
        path: src.path.clone(),
        settings,
        router,
        defined_at: at
            .iter()
            .map(|i| src.places.describe(&format!("routes[{i}]")))
            .collect(),
        routes,
        unrouted: RouteMetrics::new(metrics, "none", "none"),
        upstreams,
        redis,
        remote_jwks: named.remote_jwks(),
        caches: named.caches.clone(),
        tls,
        identity_headers,
        query_secrets: named.query_secrets(),
        inputs_digest: inputs_digest(&inputs.files),
        inputs: inputs.files,
        metrics: raw.telemetry.metrics,
        dashboard: raw.admin.dashboard,
        admin_token,
        access_log,
        raw: src.raw.clone(),
        base: src.base.path.clone(),
        redacted: Default::default(),
        openapi: Default::default(),
        tracing,
        warnings: d.items,
        state: state.finish(),
    })
}

fn compile_settings(d: &mut Diags, raw: &RawConfig) -> Option<Settings> {
    let proxy_addr = match &raw.listen.proxy {
        Some(text) => socket_addr(d, "listen.proxy", text).map(Some),
        None => Some(None),
    };
    let listen = &raw.listen;
    if listen.proxy.is_none() && listen.proxy_tls.is_none() {
        d.error(
            "listen",
            "no proxy listener",
            Some("add `proxy: 0.0.0.0:8080`, `proxy_tls: 0.0.0.0:8443` or both".into()),
        );
    }
    for (set, key) in [
        (listen.h2c, "h2c"),
        (listen.redirect_https, "redirect_https"),
    ] {
        if set && listen.proxy.is_none() {
            d.error(
                &format!("listen.{key}"),
                format!("`{key}` applies to the plain listener, and there is no `proxy`"),
                Some("add `listen.proxy`, or remove the option".into()),
            );
        }
    }
    let admin_addr = socket_addr(d, "listen.admin", &raw.listen.admin);
    let proxy_tls_addr = match &raw.listen.proxy_tls {
        Some(text) => socket_addr(d, "listen.proxy_tls", text).map(Some),
        None => Some(None),
    };
    match (&raw.listen.proxy_tls, &raw.tls) {
        (Some(_), None) => d.error(
            "listen.proxy_tls",
            "a TLS listener needs certificates",
            Some("add `tls: { certificates: [{ cert: FILE, key: FILE }] }`".into()),
        ),
        (None, Some(_)) => d.warn(
            "tls",
            "`tls` is unused: no `listen.proxy_tls`",
            Some("add `proxy_tls: 0.0.0.0:8443` under `listen`".into()),
        ),
        _ => {}
    }
    if raw.listen.redirect_https && raw.listen.proxy_tls.is_none() {
        d.error(
            "listen.redirect_https",
            "redirect_https needs a TLS listener to redirect to",
            Some("add `proxy_tls` under `listen`".into()),
        );
    }
    if raw.listen.proxy.as_ref() == Some(&raw.listen.admin) {
        d.error(
            "listen.admin",
            "the admin listener uses the same address as the proxy",
            Some("give /health and /metrics their own port".into()),
        );
    }
    let server = &raw.server;
    if server.threads == Some(0) {
        d.error(
            "server.threads",
            "threads must be at least 1",
            Some("leave `threads` out to use one per CPU".into()),
        );
    }
    for (key, value) in [
        ("header", server.timeouts.header),
        ("idle", server.timeouts.idle),
        ("body", server.timeouts.body),
        ("send", server.timeouts.send),
    ] {
        if value.is_zero() {
            d.error(
                &format!("server.timeouts.{key}"),
                "a timeout must be longer than 0",
                Some("give a duration such as 10s, or leave it out for the default".into()),
            );
        }
    }
    if server.max_requests_per_connection == 0 {
        d.error(
            "server.max_requests_per_connection",
            "max_requests_per_connection must be at least 1",
            Some("leave it out for the default (1000)".into()),
        );
    }
    if server.max_streams_per_connection == 0 {
        d.error(
            "server.max_streams_per_connection",
            "max_streams_per_connection must be at least 1",
            Some("leave it out for the default (100)".into()),
        );
    }
    if server.max_connections == 0 {
        d.error(
            "server.max_connections",
            "max_connections must be at least 1",
            Some(
                "leave it out for the default (10000), and keep it under the process's file limit"
                    .into(),
            ),
        );
    }
    let trusted_proxies = server
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, text)| cidr(d, &format!("server.trusted_proxies[{i}]"), text))
        .collect();
    Some(Settings {
        admin_addr: admin_addr?,
        threads: server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        trusted_proxies,
        grace_period: server.grace_period,
        shutdown_timeout: server.shutdown_timeout,
        drain_delay: server.drain_delay,
        resolve_interval: server.resolve_interval,
        upgrade_socket: server.upgrade_socket.clone().unwrap_or_else(|| {
            let plain = proxy_addr.flatten();
            let port = plain.or(proxy_tls_addr.flatten()).map_or(0, |a| a.port());
            format!("/tmp/portico-upgrade-{port}.sock")
        }),
        pid_file: server.pid_file.clone(),
        log_format: server.log_format,
        header_timeout: server.timeouts.header,
        idle_timeout: server.timeouts.idle,
        body_timeout: server.timeouts.body,
        send_timeout: server.timeouts.send,
        max_connections: server.max_connections,
        max_requests_per_connection: server.max_requests_per_connection,
        max_streams_per_connection: server.max_streams_per_connection,
        proxy_addr: proxy_addr?,
        proxy_tls_addr: proxy_tls_addr?,
        h2c: raw.listen.h2c,
        redirect_https: raw.listen.redirect_https,
    })
}

fn socket_addr(d: &mut Diags, path: &str, text: &str) -> Option<SocketAddr> {
    let parsed = text.parse();
    if parsed.is_err() {
        d.error(
            path,
            format!("`{text}` is not a listen address"),
            Some("write IP:PORT, e.g. 0.0.0.0:8080 or [::]:8080".into()),
        );
    }
    parsed.ok()
}

/// The span exporter, kept across reloads while its settings stay (its queue and thread).
fn compile_tracing(
    d: &mut Diags,
    state: &mut StateCx,
    raw: &RawConfig,
) -> Option<Arc<crate::otlp::Tracing>> {
    let t = raw.telemetry.tracing.as_ref()?;
    let defining = (
        &t.otlp_endpoint,
        t.sample.to_bits(),
        &t.service_name,
        t.timeout,
    );
    let compiled = crate::otlp::Tracing::compile(d, t)?;
    Some(state.keep("otlp", "tracing", &defining, || compiled))
}

fn compile_redis(d: &mut Diags, state: &mut StateCx, raw: &RawConfig) -> Option<Arc<RedisLink>> {
    let r = raw.redis.as_ref()?;
    match RedisLink::new(&r.url, r.timeout) {
        Ok(link) => Some(state.keep("redis", "redis", &(&r.url, r.timeout), || link)),
        Err(e) => {
            d.error("redis.url", e, Some("write redis://HOST:PORT/DB".into()));
            None
        }
    }
}

/// Warns about routes that can never match because an earlier route takes all their
/// requests (checked on the compiled matchers, by the router itself).
fn warn_shadowed(d: &mut Diags, router: &Router, raw: &RawConfig, at: &[usize]) {
    for j in 0..router.matchers().len() {
        if let Some(i) = router.shadowed_by(j) {
            let (later, earlier) = (&raw.routes[at[j]], &raw.routes[at[i]]);
            let place = d.place(&format!("routes[{}]", at[i]));
            d.warn(
                &format!("routes[{}].match", at[j]),
                format!(
                    "route `{}` is shadowed by the earlier route `{}` ({place}) and never matches",
                    later.name, earlier.name
                ),
                Some("move it above that route or narrow the earlier one; a config's files are tried base first, then by name".into()),
            );
        }
    }
}

fn warn_unused_upstreams(d: &mut Diags, raw: &RawConfig) {
    let used = |name: &String| {
        raw.routes.iter().any(|r| {
            r.upstream.as_ref() == Some(name)
                || r.backends.iter().flatten().any(|b| &b.upstream == name)
                || r.mirror.as_ref().is_some_and(|m| &m.upstream == name)
                || r.aggregate
                    .as_ref()
                    .is_some_and(|a| a.calls.iter().any(|c| &c.upstream == name))
        })
    };
    for name in raw.upstreams.keys().filter(|n| !used(n)) {
        d.warn(
            &format!("upstreams.{name}"),
            format!("upstream `{name}` is not used by any route"),
            Some("point a route at it (`upstream: NAME`), or remove it".into()),
        );
    }
}

/// An OIDC session cookie is `Secure`: browsers keep it only from https pages.
fn warn_plain_logins(d: &mut Diags, raw: &RawConfig) {
    if raw.listen.proxy_tls.is_some() {
        return;
    }
    for (i, r) in raw.routes.iter().enumerate() {
        let oidc = r.auth.as_ref().and_then(|name| raw.auth.get(name));
        if let Some(crate::policy::auth::RawAuth::Oidc(_)) = oidc {
            d.warn(
                &format!("routes[{i}].auth"),
                format!("route `{}` logs in with OIDC, but Portico has no TLS listener", r.name),
                Some("its session cookie is Secure, which browsers keep only over https: add `listen.proxy_tls`, or end TLS in front of Portico (http://localhost is the one exception browsers make)".into()),
            );
        }
    }
}

/// The provider sends the browser back to an OIDC policy's callback (and logout) path: the
/// route taking that path on the same host must apply the policy, or the callback is
/// answered (or proxied) by something else.
fn warn_unrouted_callbacks(d: &mut Diags, router: &Router, routes: &[Route], at: &[usize]) {
    let headers = http::HeaderMap::new();
    for (j, route) in routes.iter().enumerate() {
        let Some(auth) = route.auth() else { continue };
        let crate::policy::auth::AuthPolicy::Oidc(oidc) = &*auth.policy else {
            continue;
        };
        let host = match &router.matchers()[j].host {
            Some(crate::router::HostMatch::Exact(h)) => Some(h.as_str()),
            _ => None,
        };
        for path in oidc.own_paths() {
            let view = crate::router::RequestView {
                method: &http::Method::GET,
                host,
                path,
                query: None,
                headers: &headers,
            };
            let taken_by = match router.find(&view) {
                Match::Route(i) => Some(i),
                _ => None,
            };
            let same = taken_by
                .and_then(|i| routes[i].auth())
                .is_some_and(|a| Arc::ptr_eq(&a.policy, &auth.policy));
            if !same {
                let other = taken_by.map_or("no route".to_string(), |i| {
                    format!("route `{}`", routes[i].name)
                });
                d.warn(
                    &format!("routes[{}].auth", at[j]),
                    format!("`GET {path}` goes to {other}, which does not apply auth `{}`: the login cannot finish there", oidc.name),
                    Some(format!("add a route for `{path}` that applies auth `{}` (or widen this one to cover it)", oidc.name)),
                );
            }
        }
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn compile_access_log(d: &mut Diags, a: &RawAccessLog) -> AccessLogSettings {
    if !(0.0..=1.0).contains(&a.sample) {
        d.error(
            "telemetry.access_log.sample",
            format!("sample {} is not a share between 0 and 1", a.sample),
            Some("1.0 logs every request, 0.1 one in ten".into()),
        );
    }
    for (i, field) in a.exclude.iter().enumerate() {
        if !ACCESS_FIELDS.contains(&field.as_str()) {
            d.error(
                &format!("telemetry.access_log.exclude[{i}]"),
                format!("unknown access-log field `{field}`"),
                Some(format!("fields: {}", ACCESS_FIELDS.join(", "))),
            );
        }
    }
    AccessLogSettings {
        enabled: a.enabled,
        sample: a.sample,
        exclude: a.exclude.clone(),
        query: a.query,
    }
}

/// The config as JSON with the credentials that URLs may carry (Redis password, JWKS URL
/// user info and query) replaced by `***`. Secrets themselves are never in the file: they
/// come from env vars and files, which are named, not shown.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    fn requests_of(rendered: &str, route: &str) -> Option<String> {
        rendered
            .lines()
            .find(|l| l.starts_with("portico_requests_total") && l.contains(route))
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_string)
    }

    #[test]
    fn two_gateways_in_one_process_keep_their_own_metrics() {
        let text = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nroutes:\n  - { name: a, match: { path: /a }, respond: { text: a } }\n";
        let src = Source::parse(Path::new("g.yaml"), text, |_| None).unwrap();
        let (one, two) = (Telemetry::new(), Telemetry::new());
        let a = compile_with(&src, &Stores::default(), &one.metrics).unwrap();
        let b = compile_with(&src, &Stores::default(), &two.metrics).unwrap();
        a.routes[0].metrics.request(&http::Method::GET, 200);
        a.routes[0].metrics.request(&http::Method::GET, 200);
        b.routes[0].metrics.request(&http::Method::GET, 200);
        let route = "route=\"a\"";
        assert_eq!(
            requests_of(&one.metrics.render(), route).as_deref(),
            Some("2")
        );
        assert_eq!(
            requests_of(&two.metrics.render(), route).as_deref(),
            Some("1")
        );
    }

    #[test]
    fn a_refused_config_reports_every_problem_sorted_by_place() {
        let text = "version: 2\nlisten: { proxy: nope, admin: 127.0.0.1:2 }\nroutes:\n  - { name: a, match: { path: /a }, upstream: missing }\n";
        let src = Source::parse(Path::new("g.yaml"), text, |_| None).unwrap();
        let err = compile(&src).err().expect("refused");
        let lines: Vec<usize> = err.0.iter().map(|d| d.pos.line).collect();
        assert_eq!(lines, vec![1, 2, 4], "{err}");
    }
}
