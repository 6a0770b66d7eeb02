//! `caches:` and a route's `cache: NAME`: a shared HTTP cache (RFC 9111) on Pingora's own
//! cache machinery. Pingora runs the phases (lookup, the lock that lets one miss per key
//! go upstream, revalidation, stale-while-revalidate in a background request, stale-if-error,
//! 304s from stored validators); this module decides what is stored, under which key, for
//! how long, and what a client is told (`X-Cache`). Entries live in [`store::MemoryStore`].

pub mod store;

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::diag::Diags;
use crate::errors::GatewayError;
use crate::units::ByteSize;
use http::header::{AUTHORIZATION, SET_COOKIE, VARY};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, Cacheable, InterpretCacheControl};
use pingora::cache::filters::{calculate_expires_header_time, calculate_serve_stale_durations};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, HttpCache, NoCacheReason, RespCacheable,
    VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::{MemoryStore, StoreMetrics};

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Total bytes the cache holds in memory.
    pub max_size: ByteSize,
    /// Larger responses are passed through, not stored.
    #[serde(default = "default_max_object")]
    pub max_object: ByteSize,
    /// Freshness when the upstream gives none (no Cache-Control max-age or Expires);
    /// without it such responses are not stored.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub ttl: Option<Duration>,
    /// Caps any freshness the upstream gives.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub max_ttl: Option<Duration>,
    /// How long a stale entry is served while one background request refreshes it, unless
    /// the response sets its own `stale-while-revalidate`.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub stale_while_revalidate: Option<Duration>,
    /// How long a stale entry is served when the upstream fails, unless the response sets
    /// its own `stale-if-error`.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub stale_if_error: Option<Duration>,
    /// Request headers in the key besides those the response's `Vary` names.
    #[serde(default)]
    pub vary: Vec<String>,
    /// Per-user entries: `claim:NAME` parts (the route needs `auth`).
    #[serde(default)]
    pub key: Vec<String>,
    /// Longest a request waits for another request fetching the same entry before it
    /// goes upstream itself.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_lock_timeout", with = "crate::units::duration")]
    pub lock_timeout: Duration,
}

fn default_max_object() -> ByteSize {
    ByteSize(1024 * 1024)
}

fn default_lock_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The long-lived part of a cache, kept across reloads while `max_size` stays. Pingora
/// takes storage and lock as `&'static`, so they are leaked once per definition; a retired
/// definition frees its entries when its last user drops it.
pub struct CacheStore {
    pub store: &'static MemoryStore,
    lock: &'static CacheKeyLockImpl,
}

impl Drop for CacheStore {
    fn drop(&mut self) {
        self.store.clear();
    }
}

/// A compiled `caches:` entry.
pub struct CachePolicy {
    pub name: String,
    pub kept: Arc<CacheStore>,
    max_object: usize,
    ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    stale_while_revalidate: u32,
    stale_if_error: u32,
    vary: Vec<HeaderName>,
    claims: Vec<String>,
}

pub fn compile(cx: &mut CompileCx, name: &str, raw: &RawCache) -> Option<CachePolicy> {
    let (d, state, metrics) = (&mut *cx.d, &mut *cx.state, cx.metrics);
    let at = format!("caches.{name}");
    let errors = d.errors();
    if raw.max_size.0 < 1024 {
        d.error(
            &format!("{at}.max_size"),
            "max_size must be at least 1KiB",
            Some("e.g. `max_size: 256MiB`".into()),
        );
    }
    if raw.max_object.0 == 0 || raw.max_object.0 > store::MAX_OBJECT {
        d.error(
            &format!("{at}.max_object"),
            format!(
                "max_object must be between 1 byte and {}",
                store::MAX_OBJECT
            ),
            Some("set max_object to the largest response to keep, e.g. 1MiB".into()),
        );
    } else if raw.max_object.0 > raw.max_size.0 {
        d.error(
            &format!("{at}.max_object"),
            "max_object is larger than max_size: no such response could be stored",
            Some(
                "make max_object at most max_size (a small fraction of it keeps many entries)"
                    .into(),
            ),
        );
    }
    if let (Some(ttl), Some(max)) = (raw.ttl, raw.max_ttl) {
        if ttl > max {
            d.warn(
                &format!("{at}.ttl"),
                "ttl is longer than max_ttl, which caps it",
                Some("lower ttl to max_ttl or below, or raise max_ttl".into()),
            );
        }
    }
    let vary = header_names(d, &format!("{at}.vary"), &raw.vary);
    let mut claims = Vec::new();
    for (i, part) in raw.key.iter().enumerate() {
        match part.strip_prefix("claim:").filter(|c| !c.is_empty()) {
            Some(claim) => claims.push(claim.to_string()),
            None => d.error(
                &format!("{at}.key[{i}]"),
                format!("unknown cache key part `{part}`"),
                Some("write `claim:NAME`, e.g. `claim:sub` (headers go in `vary`)".into()),
            ),
        }
    }
    if d.errors() > errors {
        return None;
    }
    let max_size = raw.max_size.0;
    let kept = state.keep("cache", name, &max_size, || {
        let metrics = StoreMetrics {
            size: metrics.cache_size.with_label_values(&[name]),
            evictions: metrics.cache_evictions.with_label_values(&[name]),
        };
        CacheStore {
            store: Box::leak(Box::new(MemoryStore::new(max_size, metrics))),
            lock: Box::leak(CacheLock::new_boxed(raw.lock_timeout)),
        }
    });
    let seconds = |d: Option<Duration>| d.map_or(0, |d| d.as_secs().min(u32::MAX as u64) as u32);
    Some(CachePolicy {
        name: name.to_string(),
        kept,
        max_object: raw.max_object.0 as usize,
        ttl: raw.ttl,
        max_ttl: raw.max_ttl,
        stale_while_revalidate: seconds(raw.stale_while_revalidate),
        stale_if_error: seconds(raw.stale_if_error),
        vary,
        claims,
    })
}

fn header_names(d: &mut Diags, at: &str, names: &[String]) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => d.error(
                &format!("{at}[{i}]"),
                format!("`{name}` is not a valid header name"),
                Some(crate::diag::HEADER_NAME_HELP.into()),
            ),
        }
    }
    out
}

/// What `X-Cache` says of a request on a cache route.
pub fn status(cache: &HttpCache) -> &'static str {
    match cache.phase() {
        CachePhase::Hit => "HIT",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => REVALIDATED,
        // Looked up, then fetched (a response that may not be stored is disabled after).
        CachePhase::Miss | CachePhase::Expired => "MISS",
        CachePhase::Disabled(NoCacheReason::NeverEnabled) => "BYPASS",
        CachePhase::Disabled(_) => "MISS",
        CachePhase::Uninit | CachePhase::Bypass | CachePhase::CacheKey => "BYPASS",
    }
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1), which is what
/// `ttl` gives.
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// What the cache knows of one request.
#[derive(Default)]
pub struct State {
    /// The normalized path, the key's user tag (for purges).
    pub path: String,
    /// What the cache did (`X-Cache`), once the response is known.
    pub result: Option<&'static str>,
}

/// Request headers that make origins and frameworks answer another URL, host, scheme or
/// method, which a cache key would not show: from a client that is not a trusted proxy
/// they are removed on cache routes (else one client could store an answer others get);
/// a trusted proxy's are kept and keyed.
pub const UNKEYED: [&str; 11] = [
    "x-original-url",
    "x-rewrite-url",
    "forwarded",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// `X-Cache` of an entry the upstream confirmed (304) and the cache then serves.
pub const REVALIDATED: &str = "REVALIDATED";

/// Says what the cache did with a request.
pub const X_CACHE: &str = "x-cache";

impl Unit for CachePolicy {
    fn kind(&self) -> &'static str {
        "cache"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn stage(&self) -> Stage {
        Stage::Cache
    }

    fn details(&self) -> Value {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        let vary: Vec<&str> = self.vary.iter().map(HeaderName::as_str).collect();
        serde_json::json!({"ttl_s": secs(self.ttl), "max_ttl_s": secs(self.max_ttl), "vary": vary, "key_claims": self.claims})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc::default()
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        info: &RequestInfo<'_>,
        _state: &PolicyState,
    ) -> pingora::Result<()> {
        if !info.trusted_peer {
            for name in UNKEYED {
                req.remove_header(name);
            }
        }
        Ok(())
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        match state.cache.result {
            Some(result) => resp.insert_header(X_CACHE, result),
            None => Ok(()),
        }
    }
}

/// No freshness or stale windows of Pingora's own: `caches:` gives them.
const NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

impl CachePolicy {
    pub fn keyed_by_identity(&self) -> bool {
        !self.claims.is_empty()
    }

    /// Turns caching on for a GET or HEAD (HEAD is answered from the GET entry).
    pub fn enable(&self, method: &Method, cache: &mut HttpCache) {
        if method != Method::GET && method != Method::HEAD {
            return;
        }
        cache.enable(self.kept.store, None, None, Some(self.kept.lock), None);
        cache.set_max_file_size_bytes(self.max_object);
    }

    /// The key: host, normalized path, query, the configured `vary` headers, the key's
    /// claims and the forwarding headers a trusted proxy set (they reach the upstream).
    /// Each part is length-prefixed, so no value can pose as another part. The path is the
    /// user tag, for purges.
    pub fn key(
        &self,
        req: &RequestHeader,
        path: &str,
        claims: Option<&Value>,
        trusted: bool,
    ) -> Result<CacheKey, GatewayError> {
        let mut key = Vec::with_capacity(128);
        let mut part = |bytes: &[u8]| {
            key.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            key.extend_from_slice(bytes);
        };
        let host = req
            .headers
            .get(http::header::HOST)
            .map(HeaderValue::as_bytes);
        part(&host.unwrap_or_default().to_ascii_lowercase());
        part(path.as_bytes());
        part(req.uri.query().unwrap_or_default().as_bytes());
        let forwarding = ["x-forwarded-host", "x-forwarded-proto"].into_iter();
        let from_proxy = forwarding.chain(UNKEYED).filter(|_| trusted);
        let extra = self.vary.iter().map(HeaderName::as_str);
        for name in extra.chain(from_proxy) {
            for value in req.headers.get_all(name) {
                part(value.as_bytes());
            }
            part(b"\n");
        }
        for claim in &self.claims {
            // Checked at compile time: such a route has auth, so claims are here.
            let value = claims
                .and_then(|c| crate::policy::auth::claim(c, claim))
                .ok_or(GatewayError::Internal)?;
            part(value.to_string().as_bytes());
        }
        Ok(CacheKey::new(key, path))
    }

    /// Whether a request that carries credentials may use an entry: only per-user entries,
    /// or responses that say they are for everyone (RFC 9111 §3.5).
    pub fn serves_credentialed(&self, meta: &CacheMeta) -> bool {
        self.keyed_by_identity()
            || CacheControl::from_resp_headers(meta.response_header())
                .is_some_and(|cc| cc.allow_caching_authorized_req())
    }

    /// Decides whether and for how long a response is stored (RFC 9111, shared cache).
    pub fn cacheable(&self, resp: &ResponseHeader, credentialed: bool) -> RespCacheable {
        let refuse = |why| RespCacheable::Uncacheable(NoCacheReason::Custom(why));
        if resp.headers.contains_key(SET_COOKIE) {
            return refuse("set-cookie");
        }
        let vary_star = resp.headers.get_all(VARY).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|n| n.trim() == "*"))
        });
        if vary_star {
            return refuse("vary-star");
        }
        if resp.status == StatusCode::PARTIAL_CONTENT || resp.status.is_informational() {
            return refuse("status");
        }
        let cc = CacheControl::from_resp_headers(resp);
        if cc
            .as_ref()
            .is_some_and(|cc| cc.is_cacheable() == Cacheable::No)
        {
            return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        }
        let allows_credentials = cc
            .as_ref()
            .is_some_and(|cc| cc.allow_caching_authorized_req());
        if credentialed && !self.keyed_by_identity() && !allows_credentials {
            return refuse("credentials");
        }
        let now = SystemTime::now();
        let explicit = cc
            .as_ref()
            .and_then(|cc| cc.fresh_duration())
            .map(|ttl| now + ttl)
            .or_else(|| calculate_expires_header_time(resp));
        let heuristic = || {
            self.ttl
                .filter(|_| heuristically_cacheable(resp.status))
                .map(|ttl| now + ttl)
        };
        let Some(mut fresh_until) = explicit.or_else(heuristic) else {
            return refuse("no-freshness");
        };
        if let Some(max) = self.max_ttl {
            fresh_until = fresh_until.min(now + max);
        }
        if fresh_until <= now {
            // Stored, but revalidated before each use (no-cache, max-age=0, past Expires).
            fresh_until = now - Duration::from_secs(1);
        }
        let (mut swr, mut sie) = calculate_serve_stale_durations(cc.as_ref(), &NO_DEFAULTS);
        let strict = cc
            .as_ref()
            .is_some_and(|cc| cc.must_revalidate() || cc.proxy_revalidate() || cc.no_cache());
        if strict {
            // RFC 9111 §5.2.2.2: never served stale, even when the upstream fails.
            (swr, sie) = (0, 0);
        } else {
            let says = |d: Result<Option<u32>, _>| d.ok().flatten().is_some();
            if !cc
                .as_ref()
                .is_some_and(|cc| says(cc.stale_while_revalidate()))
            {
                swr = self.stale_while_revalidate;
            }
            if !cc.as_ref().is_some_and(|cc| says(cc.stale_if_error())) {
                sie = self.stale_if_error;
            }
        }
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
    }

    /// The variant of a stored response a request wants: the values of the headers the
    /// response's `Vary` names. None when it names none.
    pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        let mut names: Vec<String> = meta
            .headers()
            .get_all(VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        let mut variance = VarianceBuilder::new();
        for name in &names {
            let values: Vec<u8> = req
                .headers
                .get_all(name.as_str())
                .iter()
                .flat_map(|v| v.as_bytes().iter().copied().chain([b'\n']))
                .collect();
            variance.add_owned_value(name, values);
        }
        variance.finalize()
    }
}

/// A purge, as `POST /cache/purge` takes it and as replicas receive it over Redis.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    pub cache: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// The Redis channel every replica's purges go through.
pub const PURGE_CHANNEL: &str = "portico:cache:purge";

/// A purge sent to the other replicas; `origin` tells a replica its own purges apart.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Broadcast {
    pub origin: u64,
    pub purge: Purge,
}

impl Purge {
    /// Removes the entries the purge names; the error says what is wrong with it.
    pub fn apply(
        &self,
        caches: &std::collections::BTreeMap<String, Arc<CachePolicy>>,
    ) -> Result<usize, String> {
        let Some(cache) = caches.get(&self.cache) else {
            let names: Vec<&str> = caches.keys().map(String::as_str).collect();
            return Err(format!(
                "no cache named `{}` (caches: {})",
                self.cache,
                names.join(", ")
            ));
        };
        let store = cache.kept.store;
        match (&self.path, &self.prefix) {
            (Some(path), None) => Ok(store.purge_path(&purge_path(path)?)),
            (None, Some(prefix)) => Ok(store.purge_prefix(&purge_path(prefix)?)),
            _ => Err("give exactly one of `path` and `prefix`".into()),
        }
    }
}

/// A purge names paths as the cache keys them: normalized.
fn purge_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` is not a path: it must start with `/`"));
    }
    crate::router::normalize::normalize(path)
        .map(|p| p.into_owned())
        .map_err(|e| e.to_string())
}

/// Whether a request carries credentials: an `Authorization` header, or a verified token
/// (which may come in another header or a cookie).
pub fn credentialed(req: &RequestHeader, claims: Option<&Value>) -> bool {
    claims.is_some() || req.headers.contains_key(AUTHORIZATION)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ttl: Option<u64>, claims: &[&str]) -> CachePolicy {
        let metrics = StoreMetrics {
            size: prometheus::IntGauge::new("s", "s").unwrap(),
            evictions: prometheus::IntCounter::new("e", "e").unwrap(),
        };
        CachePolicy {
            name: "t".into(),
            kept: Arc::new(CacheStore {
                store: Box::leak(Box::new(MemoryStore::new(1 << 20, metrics))),
                lock: Box::leak(CacheLock::new_boxed(Duration::from_secs(1))),
            }),
            max_object: 1 << 20,
            ttl: ttl.map(Duration::from_secs),
            max_ttl: Some(Duration::from_secs(3600)),
            stale_while_revalidate: 30,
            stale_if_error: 300,
            vary: Vec::new(),
            claims: claims.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn fresh_secs(c: RespCacheable) -> Option<u64> {
        match c {
            RespCacheable::Cacheable(meta) => Some(meta.fresh_sec()),
            RespCacheable::Uncacheable(_) => None,
        }
    }

    #[test]
    fn cache_control_rules() {
        let p = policy(None, &[]);
        let fresh = |h: &[(&str, &str)]| fresh_secs(p.cacheable(&resp(200, h), false));
        assert_eq!(fresh(&[("cache-control", "max-age=60")]), Some(60));
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, s-maxage=10")]),
            Some(10)
        );
        assert_eq!(fresh(&[("cache-control", "max-age=99999")]), Some(3600));
        assert_eq!(fresh(&[("cache-control", "no-store, max-age=60")]), None);
        assert_eq!(fresh(&[("cache-control", "private, max-age=60")]), None);
        assert_eq!(fresh(&[("cache-control", "no-cache")]), Some(0));
        assert_eq!(fresh(&[]), None, "no freshness and no ttl: not stored");
        let cookie = [("cache-control", "max-age=60"), ("set-cookie", "a=b")];
        assert_eq!(fresh(&cookie), None);
        let star = [("cache-control", "max-age=60"), ("vary", "Accept, *")];
        assert_eq!(fresh(&star), None);
        let with_ttl = policy(Some(20), &[]);
        assert_eq!(
            fresh_secs(with_ttl.cacheable(&resp(200, &[]), false)),
            Some(20)
        );
        assert_eq!(fresh_secs(with_ttl.cacheable(&resp(500, &[]), false)), None);
    }

    #[test]
    fn credentials_need_public_or_a_per_user_key() {
        let shared = policy(Some(20), &[]);
        let plain = resp(200, &[("cache-control", "max-age=60")]);
        assert_eq!(fresh_secs(shared.cacheable(&plain, true)), None);
        let public = resp(200, &[("cache-control", "public, max-age=60")]);
        assert_eq!(fresh_secs(shared.cacheable(&public, true)), Some(60));
        let per_user = policy(Some(20), &["sub"]);
        assert_eq!(fresh_secs(per_user.cacheable(&plain, true)), Some(60));
    }

    #[test]
    fn must_revalidate_is_never_served_stale() {
        let p = policy(None, &[]);
        let strict = resp(200, &[("cache-control", "max-age=60, must-revalidate")]);
        let RespCacheable::Cacheable(meta) = p.cacheable(&strict, false) else {
            panic!("stored")
        };
        assert_eq!(
            (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            (0, 0)
        );
        let own = resp(200, &[("cache-control", "max-age=60, stale-if-error=7")]);
        let RespCacheable::Cacheable(meta) = p.cacheable(&own, false) else {
            panic!("stored")
        };
        assert_eq!(
            (meta.stale_while_revalidate_sec(), meta.stale_if_error_sec()),
            (30, 7)
        );
    }

    #[test]
    fn key_parts_cannot_pose_as_each_other() {
        let p = policy(None, &["sub"]);
        let req = |host: &str| {
            let mut r = RequestHeader::build("GET", b"/a?x=1", None).unwrap();
            r.insert_header("host", host).unwrap();
            r
        };
        let claims = serde_json::json!({"sub": "alice"});
        let k = |host: &str, path: &str, sub: &str| {
            let claims = serde_json::json!({ "sub": sub });
            p.key(&req(host), path, Some(&claims), false)
                .unwrap()
                .primary_key()
                .to_vec()
        };
        assert_eq!(k("a.example", "/a", "alice"), k("A.EXAMPLE", "/a", "alice"));
        assert_ne!(k("a.example", "/a", "alice"), k("a.example", "/a", "bob"));
        assert_ne!(k("a.example", "/ab", "c"), k("a.example", "/a", "bc"));
        assert!(p.key(&req("a"), "/a", None, false).is_err());
        assert!(p.key(&req("a"), "/a", Some(&claims), false).is_ok());
    }
}
