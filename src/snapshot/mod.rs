//! Compiles the file model into the immutable runtime snapshot, gathering every problem
//! with its location; and the `ArcSwap` holder each request loads the snapshot from.

mod policies;

use crate::config::model::{
    HeaderCond as RawCond, LimitBackend, OnRedisError, RawBreaker, RawHealthCheck, RawMatch,
    RawRateLimit, RawRespond, RawRoute, RawUpstream, RetryOn,
};
use crate::config::{ConfigError, Diagnostic, Diags, Source};
use crate::policy::auth::{AuthPolicy, Keys, RemoteJwks};
use crate::policy::cors::CorsPolicy;
use crate::policy::ratelimit::{Backend, LimitKey, LocalStore, RateLimit, RedisLink};
use crate::router::normalize::normalize;
use crate::router::{
    Action, HeaderCond, HeaderMatch, HostMatch, Matcher, PathMatch, PathRewrite, Route, Router,
    StaticResponse,
};
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::health::HealthConfig;
use crate::upstream::{Balance, Target, Upstream};
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Settings {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub resolve_interval: Duration,
}

impl Settings {
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Files a config refers to (keys, JWKS, schemas): read once at compile time, and watched
/// so that changing one reloads the config.
pub struct Inputs {
    base: PathBuf,
    pub files: Vec<PathBuf>,
}

impl Inputs {
    fn new(config: &Path) -> Inputs {
        let base = config.parent().map(Path::to_path_buf).unwrap_or_default();
        Inputs {
            base,
            files: Vec::new(),
        }
    }

    /// Reads `file` (relative to the config's directory), reporting failures at `at`.
    pub fn read(&mut self, d: &mut Diags, at: &str, file: &str) -> Option<String> {
        let path = self.base.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.files.push(path);
                Some(text)
            }
            Err(e) => {
                d.error(
                    at,
                    format!("cannot read `{}`: {e}", path.display()),
                    Some("paths are relative to the config file's directory".into()),
                );
                None
            }
        }
    }
}

/// A digest of the current contents of `files` (a missing file counts as empty).
pub fn inputs_digest(files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    hex::encode(&h.finalize()[..8])
}

/// Fields an access-log line can carry (any may be excluded).
pub const ACCESS_FIELDS: [&str; 16] = [
    "time",
    "request_id",
    "trace_id",
    "client_ip",
    "method",
    "path",
    "route",
    "upstream",
    "target",
    "status",
    "duration_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
    "user",
    "error",
];

pub struct AccessLogSettings {
    pub enabled: bool,
    pub sample: f64,
    pub exclude: Vec<String>,
    pub query: bool,
}

pub struct Snapshot {
    pub hash: String,
    pub path: PathBuf,
    pub settings: Settings,
    pub router: Router,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub rate_limits: BTreeMap<String, Arc<RateLimit>>,
    pub auth: BTreeMap<String, Arc<AuthPolicy>>,
    pub cors: BTreeMap<String, Arc<CorsPolicy>>,
    /// Every header some auth policy forwards claims in: removed from every client request.
    pub identity_headers: Vec<HeaderName>,
    /// The shared Redis link (with the fingerprint of its settings).
    pub redis: Option<(String, Arc<RedisLink>)>,
    /// Referenced files, and the digest of their contents when compiled.
    pub inputs: Vec<PathBuf>,
    pub inputs_digest: String,
    pub metrics: bool,
    pub access_log: AccessLogSettings,
    /// The config as loaded, with credentials in URLs redacted (for the admin `/config`).
    pub redacted: serde_json::Value,
    pub warnings: Vec<Diagnostic>,
}

impl Snapshot {
    /// Loads, checks and compiles a config file.
    pub fn load(path: &Path) -> Result<Snapshot, ConfigError> {
        compile(&Source::load(path)?)
    }

    /// Settings that only take effect on restart and differ from `other`'s.
    pub fn restart_needed(&self, other: &Snapshot) -> Vec<String> {
        let (a, b) = (&self.settings, &other.settings);
        let mut out = Vec::new();
        if a.proxy_addr != b.proxy_addr {
            out.push(format!("listen.proxy: {} → {}", a.proxy_addr, b.proxy_addr));
        }
        if a.admin_addr != b.admin_addr {
            out.push(format!("listen.admin: {} → {}", a.admin_addr, b.admin_addr));
        }
        if a.threads != b.threads {
            out.push(format!("server.threads: {} → {}", a.threads, b.threads));
        }
        if a.grace_period != b.grace_period || a.shutdown_timeout != b.shutdown_timeout {
            out.push("server.grace_period/shutdown_timeout".to_string());
        }
        out
    }
}

/// The active snapshot, shared by all phases and swapped whole on reload.
#[derive(Clone)]
pub struct SnapshotHolder(Arc<ArcSwap<Snapshot>>);

impl SnapshotHolder {
    pub fn new(snapshot: Snapshot) -> Self {
        SnapshotHolder(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

/// Long-lived state keyed by stable config names, reused by a new snapshot where the
/// definition did not change, so a reload does not reset counters, DNS results or (later)
/// health and limits.
#[derive(Default)]
pub struct Stores {
    upstreams: Mutex<HashMap<String, Arc<Upstream>>>,
    rate_limits: Mutex<HashMap<String, Arc<RateLimit>>>,
    redis: Mutex<Option<(String, Arc<RedisLink>)>>,
    remote_jwks: Mutex<HashMap<String, Arc<RemoteJwks>>>,
}

fn reuse<T>(
    map: &Mutex<HashMap<String, Arc<T>>>,
    name: &str,
    same: impl Fn(&T) -> bool,
) -> Option<Arc<T>> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.get(name).filter(|t| same(t)).cloned()
}

impl Stores {
    fn upstream(&self, name: &str, fingerprint: &str) -> Option<Arc<Upstream>> {
        reuse(&self.upstreams, name, |u| u.fingerprint == fingerprint)
    }

    fn rate_limit(&self, name: &str, fingerprint: &str) -> Option<Arc<RateLimit>> {
        reuse(&self.rate_limits, name, |r| r.fingerprint == fingerprint)
    }

    /// The cached JWKS for a URL, shared across reloads while the URL and refresh stay.
    fn remote_jwks(&self, url: &str, refresh: std::time::Duration) -> Arc<RemoteJwks> {
        let mut map = self.remote_jwks.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(RemoteJwks::new(url, refresh)));
        if entry.refresh != refresh {
            *entry = Arc::new(RemoteJwks::new(url, refresh));
        }
        entry.clone()
    }

    fn redis(&self, fingerprint: &str) -> Option<Arc<RedisLink>> {
        let slot = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref()
            .filter(|(f, _)| f == fingerprint)
            .map(|(_, link)| link.clone())
    }

    /// Keeps exactly the state the active snapshot uses.
    pub fn remember(&self, snapshot: &Snapshot) {
        *self.upstreams.lock().unwrap_or_else(|e| e.into_inner()) =
            snapshot.upstreams.clone().into_iter().collect();
        *self.rate_limits.lock().unwrap_or_else(|e| e.into_inner()) =
            snapshot.rate_limits.clone().into_iter().collect();
        *self.redis.lock().unwrap_or_else(|e| e.into_inner()) = snapshot.redis.clone();
        let urls: Vec<&str> = snapshot
            .auth
            .values()
            .filter_map(|a| match &a.keys {
                Keys::Remote(r) => Some(r.url.as_str()),
                _ => None,
            })
            .collect();
        self.remote_jwks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|url, _| urls.contains(&url.as_str()));
    }
}

/// Checks and compiles with fresh state (for `check` and tools).
pub fn compile(src: &Source) -> Result<Snapshot, ConfigError> {
    compile_with(src, &Stores::default())
}

/// Checks and compiles, reusing unchanged state from `stores`.
pub fn compile_with(src: &Source, stores: &Stores) -> Result<Snapshot, ConfigError> {
    let mut d = Diags::new(&src.path, &src.locator);
    let raw = &src.raw;
    if raw.version != 1 {
        d.error(
            "version",
            format!("unsupported config version {}", raw.version),
            Some("this Portico reads `version: 1`".into()),
        );
    }
    let proxy_addr = socket_addr(&mut d, "listen.proxy", &raw.listen.proxy);
    let admin_addr = socket_addr(&mut d, "listen.admin", &raw.listen.admin);
    if raw.listen.proxy == raw.listen.admin {
        d.error(
            "listen.admin",
            "the admin listener uses the same address as the proxy",
            Some("give /health and /metrics their own port".into()),
        );
    }
    let server = &raw.server;
    if server.threads == Some(0) {
        d.error("server.threads", "threads must be at least 1", None);
    }
    let trusted_proxies = server
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, text)| cidr(&mut d, &format!("server.trusted_proxies[{i}]"), text))
        .collect();
    let upstreams: BTreeMap<String, Arc<Upstream>> = raw
        .upstreams
        .iter()
        .filter_map(|(name, up)| {
            // Always compiled, for its diagnostics; the stored one wins when unchanged.
            let fingerprint = format!("{up:?}");
            let fresh = compile_upstream(&mut d, name, up, fingerprint.clone())?;
            let upstream = stores
                .upstream(name, &fingerprint)
                .unwrap_or_else(|| Arc::new(fresh));
            Some((name.clone(), upstream))
        })
        .collect();
    let redis = compile_redis(&mut d, raw, stores);
    let rate_limits: BTreeMap<String, Arc<RateLimit>> = raw
        .rate_limits
        .iter()
        .filter_map(|(name, rl)| {
            let fingerprint = format!("{rl:?}{:?}", redis.as_ref().map(|r| &r.0));
            let fresh = compile_rate_limit(
                &mut d,
                name,
                rl,
                redis.as_ref().map(|r| r.1.clone()),
                fingerprint.clone(),
            )?;
            Some((
                name.clone(),
                stores
                    .rate_limit(name, &fingerprint)
                    .unwrap_or_else(|| Arc::new(fresh)),
            ))
        })
        .collect();
    let mut inputs = Inputs::new(&src.path);
    let auth: BTreeMap<String, Arc<AuthPolicy>> = raw
        .auth
        .iter()
        .filter_map(|(name, a)| {
            let policy = policies::compile_auth(&mut d, name, a, &mut inputs, |url, refresh| {
                stores.remote_jwks(url, refresh)
            })?;
            Some((name.clone(), Arc::new(policy)))
        })
        .collect();
    let cors: BTreeMap<String, Arc<CorsPolicy>> = raw
        .cors
        .iter()
        .filter_map(|(name, c)| {
            Some((
                name.clone(),
                Arc::new(policies::compile_cors(&mut d, name, c)?),
            ))
        })
        .collect();
    let mut identity_headers: Vec<HeaderName> = auth
        .values()
        .flat_map(|a| a.forward.iter().map(|(_, h)| h.clone()))
        .collect();
    identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    identity_headers.dedup();
    let named = Named {
        upstreams: &upstreams,
        rate_limits: &rate_limits,
        auth: &auth,
        cors: &cors,
        raw,
    };
    let routes = compile_routes(&mut d, &named, server.max_body.0, &mut inputs);
    warn_unused_upstreams(&mut d, raw);
    let access_log = compile_access_log(&mut d, &raw.telemetry.access_log);
    d.items.sort_by_key(|x| (x.pos.line, x.pos.col));
    if d.has_errors() {
        return Err(ConfigError(d.items));
    }
    let settings = Settings {
        proxy_addr: proxy_addr.expect("checked above"),
        admin_addr: admin_addr.expect("checked above"),
        threads: server
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        trusted_proxies,
        grace_period: server.grace_period,
        shutdown_timeout: server.shutdown_timeout,
        resolve_interval: server.resolve_interval,
    };
    Ok(Snapshot {
        hash: src.hash.clone(),
        path: src.path.clone(),
        settings,
        router: Router::new(routes),
        upstreams,
        rate_limits,
        auth,
        cors,
        identity_headers,
        redis,
        inputs_digest: inputs_digest(&inputs.files),
        inputs: inputs.files,
        metrics: raw.telemetry.metrics,
        access_log,
        redacted: redacted(raw),
        warnings: d.items,
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

fn cidr(d: &mut Diags, path: &str, text: &str) -> Option<IpNet> {
    let parsed = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
    if parsed.is_err() {
        d.error(
            path,
            format!("`{text}` is not an IP network"),
            Some("write a CIDR such as 10.0.0.0/8 or a single IP".into()),
        );
    }
    parsed.ok()
}

fn compile_upstream(
    d: &mut Diags,
    name: &str,
    up: &RawUpstream,
    fingerprint: String,
) -> Option<Upstream> {
    let at = format!("upstreams.{name}");
    if !is_name(name) {
        d.error(
            &at,
            format!("upstream name `{name}` is not allowed"),
            Some("use letters, digits, `-` and `_`".into()),
        );
    }
    if up.targets.is_empty() {
        d.error(
            &format!("{at}.targets"),
            format!("upstream `{name}` has no targets"),
            Some("list at least one HOST:PORT".into()),
        );
    }
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for (i, text) in up.targets.iter().enumerate() {
        let path = format!("{at}.targets[{i}]");
        match Target::parse(text) {
            Ok(t) => targets.push(t),
            Err(e) => d.error(
                &path,
                e,
                Some("write HOST:PORT, e.g. user-service:8000 or 10.0.0.5:8000".into()),
            ),
        }
        if !seen.insert(text) {
            d.warn(
                &path,
                format!("target `{text}` is listed twice"),
                Some(
                    "it will get twice the share of traffic; remove the copy if unintended".into(),
                ),
            );
        }
    }
    let balance = Balance::parse(&up.balance)
        .map_err(|e| {
            d.error(
                &format!("{at}.balance"),
                e,
                Some(
                    "use round_robin, random, least_requests, hash(header:NAME) or hash(client_ip)"
                        .into(),
                ),
            )
        })
        .ok();
    for (field, value) in [
        ("connect", up.timeouts.connect),
        ("read", up.timeouts.read),
        ("write", up.timeouts.write),
    ] {
        if value.is_zero() {
            d.error(
                &format!("{at}.timeouts.{field}"),
                format!("the {field} timeout must be longer than 0"),
                None,
            );
        }
    }
    let retry_attempts = if up.retries.on.contains(&RetryOn::ConnectFailure) {
        up.retries.attempts
    } else {
        0
    };
    let timeouts = (up.timeouts.connect, up.timeouts.read, up.timeouts.write);
    let mut upstream = Upstream::new(name, targets, balance?, timeouts, retry_attempts);
    upstream.fingerprint = fingerprint;
    upstream.health_check = up
        .health_check
        .as_ref()
        .and_then(|hc| compile_health(d, &at, hc));
    upstream.breaker = up.breaker.as_ref().and_then(|b| compile_breaker(d, &at, b));
    Some(upstream)
}

fn compile_health(d: &mut Diags, at: &str, hc: &RawHealthCheck) -> Option<HealthConfig> {
    let at = format!("{at}.health_check");
    let valid_path = hc.path.starts_with('/') && hc.path.bytes().all(|b| b.is_ascii_graphic());
    if !valid_path {
        d.error(
            &format!("{at}.path"),
            format!("`{}` is not a request path", hc.path),
            Some("e.g. /health".into()),
        );
    }
    if hc.interval.is_zero() || hc.timeout.is_zero() {
        d.error(&at, "interval and timeout must be longer than 0", None);
    }
    if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
        d.error(
            &at,
            "unhealthy_after and healthy_after must be at least 1",
            None,
        );
    }
    if hc.timeout > hc.interval {
        d.warn(
            &format!("{at}.timeout"),
            "the timeout is longer than the interval",
            None,
        );
    }
    valid_path.then(|| HealthConfig {
        path: hc.path.clone(),
        interval: hc.interval,
        timeout: hc.timeout,
        unhealthy_after: hc.unhealthy_after.max(1),
        healthy_after: hc.healthy_after.max(1),
    })
}

fn compile_breaker(d: &mut Diags, at: &str, b: &RawBreaker) -> Option<BreakerConfig> {
    let at = format!("{at}.breaker");
    let mut ok = true;
    if b.consecutive_failures == 0 {
        d.error(
            &format!("{at}.consecutive_failures"),
            "consecutive_failures must be at least 1",
            None,
        );
        ok = false;
    }
    if b.failure_ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
        d.error(
            &format!("{at}.failure_ratio"),
            "failure_ratio is a share between 0 and 1, e.g. 0.5",
            None,
        );
        ok = false;
    }
    if b.half_open_requests == 0 || b.open_for.is_zero() {
        d.error(
            &at,
            "half_open_requests must be at least 1 and open_for longer than 0",
            None,
        );
        ok = false;
    }
    ok.then(|| BreakerConfig {
        consecutive_failures: b.consecutive_failures,
        failure_ratio: b.failure_ratio.map(|r| (r, b.window, b.min_requests)),
        open_for: b.open_for,
        half_open_requests: b.half_open_requests,
    })
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The named objects routes refer to, compiled; plus the file model for messages.
struct Named<'a> {
    upstreams: &'a BTreeMap<String, Arc<Upstream>>,
    rate_limits: &'a BTreeMap<String, Arc<RateLimit>>,
    auth: &'a BTreeMap<String, Arc<AuthPolicy>>,
    cors: &'a BTreeMap<String, Arc<CorsPolicy>>,
    raw: &'a crate::config::RawConfig,
}

/// Resolves a route's reference to a named policy; an unknown name is an error listing the
/// defined ones. (A name that is defined but failed to compile was reported already.)
fn lookup<T: Clone>(
    d: &mut Diags,
    path: &str,
    kind: &str,
    name: &str,
    compiled: &BTreeMap<String, T>,
    defined: Vec<&String>,
) -> Option<T> {
    if let Some(found) = compiled.get(name) {
        return Some(found.clone());
    }
    if !defined.iter().any(|n| *n == name) {
        let list: Vec<&str> = defined.iter().map(|s| s.as_str()).collect();
        let list = if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        };
        d.error(
            path,
            format!("unknown {kind} `{name}`"),
            Some(format!("defined: {list}")),
        );
    }
    None
}

fn compile_redis(
    d: &mut Diags,
    raw: &crate::config::RawConfig,
    stores: &Stores,
) -> Option<(String, Arc<RedisLink>)> {
    let r = raw.redis.as_ref()?;
    let fingerprint = format!("{r:?}");
    if let Some(link) = stores.redis(&fingerprint) {
        return Some((fingerprint, link));
    }
    match RedisLink::new(&r.url, r.timeout) {
        Ok(link) => Some((fingerprint, Arc::new(link))),
        Err(e) => {
            d.error("redis.url", e, Some("write redis://HOST:PORT/DB".into()));
            None
        }
    }
}

fn compile_rate_limit(
    d: &mut Diags,
    name: &str,
    rl: &RawRateLimit,
    redis: Option<Arc<RedisLink>>,
    fingerprint: String,
) -> Option<RateLimit> {
    let at = format!("rate_limits.{name}");
    let mut ok = true;
    if rl.requests == 0 {
        d.error(
            &format!("{at}.requests"),
            "requests must be at least 1",
            Some("to block a route, remove it or respond with 403".into()),
        );
        ok = false;
    }
    if rl.per.is_zero() {
        d.error(
            &format!("{at}.per"),
            "the period must be longer than 0",
            Some("e.g. per: 1s or per: 1m".into()),
        );
        ok = false;
    }
    let key = LimitKey::parse(&rl.key)
        .map_err(|e| {
            d.error(
                &format!("{at}.key"),
                e,
                Some("use client_ip, route, header:NAME or claim:NAME".into()),
            )
        })
        .ok();
    let backend = match (rl.backend, redis) {
        (LimitBackend::Local, _) => Some(Backend::Local(LocalStore::new(rl.max_keys))),
        (LimitBackend::Redis, Some(link)) => Some(Backend::Redis {
            link,
            deny_on_error: rl.on_redis_error == OnRedisError::Deny,
        }),
        (LimitBackend::Redis, None) => {
            d.error(
                &format!("{at}.backend"),
                "`backend: redis` needs a top-level `redis:` section",
                Some("add `redis: { url: redis://HOST:6379 }`".into()),
            );
            None
        }
    };
    let interval = (rl.per.as_nanos() / u128::from(rl.requests.max(1))) as u64;
    if !ok {
        return None;
    }
    Some(RateLimit {
        name: name.into(),
        key: key?,
        capacity: rl.requests + rl.burst,
        interval: interval.max(1),
        backend: backend?,
        fingerprint,
    })
}

fn compile_access_log(d: &mut Diags, a: &crate::config::model::RawAccessLog) -> AccessLogSettings {
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
fn redacted(raw: &crate::config::RawConfig) -> serde_json::Value {
    let mut value = serde_json::to_value(raw).unwrap_or_default();
    if let Some(url) = value.pointer_mut("/redis/url") {
        *url = redact_url(url.as_str().unwrap_or_default()).into();
    }
    if let Some(policies) = value.get_mut("auth").and_then(|a| a.as_object_mut()) {
        for policy in policies.values_mut() {
            if let Some(url) = policy.get_mut("jwks_url").filter(|u| u.is_string()) {
                *url = redact_url(url.as_str().unwrap_or_default()).into();
            }
        }
    }
    value
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = match rest.split_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_string(),
    };
    let rest = match rest.split_once('?') {
        Some((path, _)) => format!("{path}?***"),
        None => rest,
    };
    format!("{scheme}://{rest}")
}

/// Parses a list of upper-case method names, reporting each invalid one at `at[i]`.
fn parse_methods(d: &mut Diags, at: &str, list: &[String]) -> Vec<Method> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            let method = Method::from_bytes(text.as_bytes()).ok().filter(|_| ok);
            if method.is_none() {
                d.error(
                    &format!("{at}[{i}]"),
                    format!("`{text}` is not an HTTP method"),
                    Some("write methods in upper case: GET, POST, PUT, PATCH, DELETE, ...".into()),
                );
            }
            method
        })
        .collect()
}

/// An optional reference that failed to resolve is None; an absent one Some(None).
fn transpose<T>(reference: Option<Option<T>>) -> Option<Option<T>> {
    match reference {
        None => Some(None),
        Some(found) => found.map(Some),
    }
}

fn compile_routes(
    d: &mut Diags,
    named: &Named,
    default_max_body: u64,
    inputs: &mut Inputs,
) -> Vec<Route> {
    let (raw_routes, upstreams, raw) = (&named.raw.routes, named.upstreams, named.raw);
    let mut names = HashSet::new();
    let mut routes = Vec::new();
    for (i, r) in raw_routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !is_name(&r.name) {
            d.error(
                &format!("{at}.name"),
                format!("route name `{}` is not allowed", r.name),
                Some("use letters, digits, `-` and `_`; names label metrics and logs".into()),
            );
        }
        if !names.insert(r.name.as_str()) {
            d.error(
                &format!("{at}.name"),
                format!("duplicate route name `{}`", r.name),
                Some("route names must be unique; rename one of them".into()),
            );
        }
        let matcher = compile_matcher(d, &format!("{at}.match"), &r.matcher);
        let action = compile_action(d, &at, r, upstreams, raw);
        let rewrite = compile_rewrite(d, &at, r);
        let auth = r.auth.as_ref().map(|name| {
            let defined = raw.auth.keys().collect();
            lookup(
                d,
                &format!("{at}.auth"),
                "auth policy",
                name,
                named.auth,
                defined,
            )
        });
        let cors = r.cors.as_ref().map(|name| {
            let defined = raw.cors.keys().collect();
            lookup(
                d,
                &format!("{at}.cors"),
                "CORS policy",
                name,
                named.cors,
                defined,
            )
        });
        let require = match (&r.require, &r.auth) {
            (Some(req), Some(_)) => policies::compile_require(d, &format!("{at}.require"), req),
            (Some(_), None) => {
                d.error(
                    &format!("{at}.require"),
                    "`require` checks token claims, but this route has no `auth`",
                    Some("add `auth: POLICY` to the route".into()),
                );
                Vec::new()
            }
            (None, _) => Vec::new(),
        };
        let validate = r
            .validate
            .as_ref()
            .map(|v| policies::compile_validate(d, &at, v, inputs));
        let rate_limit = r.rate_limit.as_ref().map(|name| {
            let defined = raw.rate_limits.keys().collect();
            lookup(
                d,
                &format!("{at}.rate_limit"),
                "rate limit",
                name,
                named.rate_limits,
                defined,
            )
        });
        if r.timeout.is_some_and(|t| t.is_zero()) {
            d.error(
                &format!("{at}.timeout"),
                "the route timeout must be longer than 0",
                None,
            );
        }
        if let (Some(matcher), Some(action), Some(rewrite)) = (matcher, action, rewrite) {
            let (Some(rate_limit), Some(auth), Some(cors), Some(validate)) = (
                transpose(rate_limit),
                transpose(auth),
                transpose(cors),
                transpose(validate),
            ) else {
                continue;
            };
            routes.push(Route {
                name: r.name.as_str().into(),
                matcher,
                action,
                rewrite,
                rate_limit,
                auth,
                require,
                cors,
                validate: validate.map(Arc::new),
                timeout: r.timeout,
                max_body: r.max_body.map_or(default_max_body, |b| b.0),
            });
        }
    }
    warn_shadowed(d, raw_routes);
    routes
}

fn compile_matcher(d: &mut Diags, at: &str, m: &RawMatch) -> Option<Matcher> {
    let errors_before = d.items.len();
    let kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        d.error(
            at,
            "a route matches on one of path, path_prefix or path_regex, not several",
            Some("keep one; add another route for the other paths".into()),
        );
    }
    let path = if let Some(p) = &m.path {
        check_path(d, &format!("{at}.path"), p).map(PathMatch::Exact)
    } else if let Some(p) = &m.path_prefix {
        check_path(d, &format!("{at}.path_prefix"), p).map(PathMatch::Prefix)
    } else if let Some(re) = &m.path_regex {
        match regex::Regex::new(&format!("^(?:{re})$")) {
            Ok(re) => Some(PathMatch::Regex(re)),
            Err(e) => {
                let detail = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_string();
                d.error(&format!("{at}.path_regex"), format!("invalid regex `{re}`: {detail}"), Some("the regex must match the whole normalized path; see https://docs.rs/regex for the syntax".into()));
                None
            }
        }
    } else {
        Some(PathMatch::Any)
    };
    let methods = m
        .methods
        .as_ref()
        .map(|list| parse_methods(d, &format!("{at}.methods"), list));
    if methods.as_ref().is_some_and(|m| m.is_empty()) && d.items.len() == errors_before {
        d.error(
            &format!("{at}.methods"),
            "an empty method list matches nothing",
            Some("remove `methods` to match any method".into()),
        );
    }
    let host = m
        .host
        .as_deref()
        .and_then(|h| compile_host(d, &format!("{at}.host"), h));
    let headers = m
        .headers
        .iter()
        .filter_map(|(name, cond)| {
            compile_header_match(d, &format!("{at}.headers.{name}"), name, cond)
        })
        .collect();
    if d.items[errors_before..]
        .iter()
        .any(|x| x.severity == crate::config::Severity::Error)
    {
        return None;
    }
    Some(Matcher {
        path: path?,
        methods,
        host,
        headers,
    })
}

fn check_path(d: &mut Diags, at: &str, p: &str) -> Option<String> {
    match normalize(p) {
        Ok(n) if n == p => Some(n),
        Ok(n) => {
            d.error(
                at,
                format!("path `{p}` is not in normalized form, so no request could match it"),
                Some(format!("write it as `{n}`")),
            );
            None
        }
        Err(e) => {
            d.error(
                at,
                format!("invalid path `{p}`: {e}"),
                Some("paths start with `/`; write unreserved characters unescaped".into()),
            );
            None
        }
    }
}

fn compile_host(d: &mut Diags, at: &str, host: &str) -> Option<HostMatch> {
    let lower = host.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        d.error(
            at,
            format!("`{host}` is not a host name or pattern"),
            Some(
                "write api.example.com, or *.example.com for any subdomain; no port, no scheme"
                    .into(),
            ),
        );
        return None;
    }
    Some(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(lower)
    })
}

fn compile_header_match(
    d: &mut Diags,
    at: &str,
    name: &str,
    cond: &RawCond,
) -> Option<HeaderMatch> {
    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
        d.error(at, format!("`{name}` is not a valid header name"), None);
        return None;
    };
    let cond = match cond {
        RawCond::Present { present } => HeaderCond::Present(*present),
        RawCond::Equals(v) => match HeaderValue::from_str(v) {
            Ok(v) => HeaderCond::Equals(v),
            Err(_) => {
                d.error(at, format!("`{v}` is not a valid header value"), None);
                return None;
            }
        },
    };
    Some(HeaderMatch { name, cond })
}

fn compile_action(
    d: &mut Diags,
    at: &str,
    r: &RawRoute,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    raw: &crate::config::RawConfig,
) -> Option<Action> {
    match (&r.upstream, &r.respond) {
        (Some(_), Some(_)) => {
            d.error(
                at,
                format!("route `{}` has both `upstream` and `respond`", r.name),
                Some("a route either proxies to an upstream or responds directly; keep one".into()),
            );
            None
        }
        (None, None) => {
            d.error(
                at,
                format!("route `{}` has neither `upstream` nor `respond`", r.name),
                Some("add `upstream: NAME` or `respond: {status: 200, json: ...}`".into()),
            );
            None
        }
        (Some(name), None) => match upstreams.get(name) {
            Some(u) => Some(Action::Proxy(u.clone())),
            None => {
                if !raw.upstreams.contains_key(name) {
                    let known: Vec<&str> = raw.upstreams.keys().map(String::as_str).collect();
                    d.error(
                        &format!("{at}.upstream"),
                        format!("unknown upstream `{name}`"),
                        Some(format!(
                            "defined upstreams: {}",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )),
                    );
                }
                None
            }
        },
        (None, Some(resp)) => {
            if r.strip_prefix.is_some() || r.rewrite.is_some() {
                d.error(
                    at,
                    "`strip_prefix`/`rewrite` have no effect on a `respond` route",
                    Some("remove them".into()),
                );
            }
            compile_respond(d, &format!("{at}.respond"), resp).map(|s| Action::Respond(Arc::new(s)))
        }
    }
}

fn compile_respond(d: &mut Diags, at: &str, r: &RawRespond) -> Option<StaticResponse> {
    let mut ok = true;
    if !(100..=599).contains(&r.status) {
        d.error(
            &format!("{at}.status"),
            format!("{} is not an HTTP status", r.status),
            Some("use a status between 100 and 599".into()),
        );
        ok = false;
    }
    let (content_type, body) = match (&r.json, &r.text) {
        (Some(_), Some(_)) => {
            d.error(at, "a response has `json` or `text`, not both", None);
            ok = false;
            ("", Vec::new())
        }
        (Some(json), None) => (
            "application/json",
            serde_json::to_vec(json).unwrap_or_default(),
        ),
        (None, Some(text)) => ("text/plain; charset=utf-8", text.clone().into_bytes()),
        (None, None) => ("text/plain; charset=utf-8", Vec::new()),
    };
    let mut headers = Vec::new();
    for (name, value) in &r.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => {
                d.error(
                    &format!("{at}.headers.{name}"),
                    format!("invalid header `{name}: {value}`"),
                    None,
                );
                ok = false;
            }
        }
    }
    ok.then(|| StaticResponse {
        status: r.status,
        content_type,
        body: body.into(),
        headers,
    })
}

fn compile_rewrite(d: &mut Diags, at: &str, r: &RawRoute) -> Option<PathRewrite> {
    match (&r.strip_prefix, &r.rewrite) {
        (Some(_), Some(_)) => {
            d.error(
                at,
                "use either `strip_prefix` or `rewrite`, not both",
                Some(
                    "`rewrite: /new/` replaces the matched prefix; `strip_prefix` removes one"
                        .into(),
                ),
            );
            None
        }
        (Some(p), None) => {
            if !p.starts_with('/') {
                d.error(
                    &format!("{at}.strip_prefix"),
                    format!("`{p}` must start with `/`"),
                    None,
                );
                return None;
            }
            if let Some(prefix) = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref()) {
                if !prefix.starts_with(p.as_str()) {
                    d.warn(&format!("{at}.strip_prefix"), format!("`{p}` is not a prefix of the matched path `{prefix}`, so it never applies"), None);
                }
            }
            Some(PathRewrite::Strip(p.clone()))
        }
        (None, Some(to)) => {
            let Some(from) = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref()) else {
                d.error(&format!("{at}.rewrite"), "`rewrite` replaces the matched prefix, but this route has no `path_prefix` or `path`", Some("match with path_prefix, or remove rewrite".into()));
                return None;
            };
            if !to.starts_with('/') {
                d.error(
                    &format!("{at}.rewrite"),
                    format!("`{to}` must start with `/`"),
                    None,
                );
                return None;
            }
            Some(PathRewrite::Replace {
                from: from.clone(),
                to: to.clone(),
            })
        }
        (None, None) => Some(PathRewrite::None),
    }
}

/// Warns about routes that can never match because an earlier route takes all their requests.
fn warn_shadowed(d: &mut Diags, routes: &[RawRoute]) {
    // Only earlier routes whose path could cover a later one are compared: those without a
    // path matcher, those whose prefix starts the later path, and equal exact paths.
    let mut any: Vec<usize> = Vec::new();
    let mut prefixes: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut exacts: HashMap<&str, Vec<usize>> = HashMap::new();
    for (j, later) in routes.iter().enumerate() {
        let m = &later.matcher;
        let mut candidates = any.clone();
        if let Some(p) = m.path.as_deref().or(m.path_prefix.as_deref()) {
            for (k, _) in p.char_indices().skip(1).chain([(p.len(), ' ')]) {
                candidates.extend(prefixes.get(&p[..k]).into_iter().flatten());
            }
        }
        if let Some(p) = m.path.as_deref() {
            candidates.extend(exacts.get(p).into_iter().flatten());
        }
        candidates.sort_unstable();
        if let Some(&i) = candidates.iter().find(|&&i| covers(&routes[i].matcher, m)) {
            d.warn(
                &format!("routes[{j}].match"),
                format!(
                    "route `{}` is shadowed by the earlier route `{}` and never matches",
                    later.name, routes[i].name
                ),
                Some("move it above that route or narrow the earlier one".into()),
            );
        }
        match (&m.path, &m.path_prefix, &m.path_regex) {
            (Some(p), _, _) => exacts.entry(p).or_default().push(j),
            (_, Some(p), _) => prefixes.entry(p).or_default().push(j),
            (None, None, None) => any.push(j),
            _ => {}
        }
    }
}

/// Whether every request matching `b` also matches `a` (conservative: regexes never cover).
fn covers(a: &RawMatch, b: &RawMatch) -> bool {
    let path = match (&a.path, &a.path_prefix, &a.path_regex) {
        (None, None, None) => true,
        (Some(p), _, _) => b.path.as_ref() == Some(p),
        (_, Some(p), _) => b
            .path
            .as_ref()
            .or(b.path_prefix.as_ref())
            .is_some_and(|bp| bp.starts_with(p.as_str())),
        _ => false,
    };
    let methods = match (&a.methods, &b.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(am), Some(bm)) => bm.iter().all(|m| am.contains(m)),
    };
    let host = a.host.is_none()
        || a.host.as_ref().map(|h| h.to_ascii_lowercase())
            == b.host.as_ref().map(|h| h.to_ascii_lowercase());
    let headers = a.headers.iter().all(|(name, cond)| {
        b.headers
            .iter()
            .any(|(bn, bc)| bn.eq_ignore_ascii_case(name) && same_cond(cond, bc))
    });
    path && methods && host && headers
}

fn same_cond(a: &RawCond, b: &RawCond) -> bool {
    match (a, b) {
        (RawCond::Equals(x), RawCond::Equals(y)) => x == y,
        (RawCond::Present { present: true }, RawCond::Equals(_)) => true,
        (RawCond::Present { present: x }, RawCond::Present { present: y }) => x == y,
        _ => false,
    }
}

fn warn_unused_upstreams(d: &mut Diags, raw: &crate::config::RawConfig) {
    for name in raw.upstreams.keys() {
        if !raw
            .routes
            .iter()
            .any(|r| r.upstream.as_deref() == Some(name))
        {
            d.warn(
                &format!("upstreams.{name}"),
                format!("upstream `{name}` is not used by any route"),
                None,
            );
        }
    }
}
