//! Rate limits: GCRA (a token bucket in one timestamp per key). `capacity = requests +
//! burst` requests may come at once; the bucket refills one request every
//! `per / requests`. Local state is sharded and bounded; the Redis backend runs the same
//! algorithm atomically in a server-side script so replicas share one limit.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::bounded::Bounded;
use crate::errors::{Code, Counted, GatewayError, Refusal};
use crate::hashing::fnv1a;
use crate::redis_link::{LinkError, RedisLink};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests allowed per `per`.
    pub requests: u64,
    /// The period `requests` are counted over.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(with = "crate::units::duration")]
    pub per: Duration,
    /// Requests allowed at once beyond the steady rate.
    #[serde(default)]
    pub burst: u64,
    /// What is counted apart: client_ip (default), route, header:NAME, claim:NAME or
    /// consumer (an API key's consumer; its own `rate_limit` replaces this one).
    #[serde(default = "default_limit_key")]
    #[schemars(pattern(
        r"^(client_ip|route|consumer|header:\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*|claim:.+)$"
    ))]
    pub key: String,
    /// local (per replica, default) or redis (shared by every replica).
    #[serde(default)]
    pub backend: LimitBackend,
    /// allow (default) or deny when Redis does not answer in time.
    #[serde(default)]
    pub on_redis_error: OnRedisError,
    /// Most keys a local limit tracks (the least recently used go first).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_limit_key() -> String {
    "client_ip".to_string()
}
fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    Allow,
    Deny,
}

/// What a request is counted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Route,
    Header(http::HeaderName),
    Claim(String),
}

impl LimitKey {
    /// Keyed by a claim (a consumer's name among them): known once authenticated.
    pub fn is_identity(&self) -> bool {
        matches!(self, LimitKey::Claim(_))
    }

    /// The key a request is counted by; `Err` when it repeats the header it is keyed on.
    /// Without the header or claim, the client's address counts.
    pub fn of(
        &self,
        req: &RequestHeader,
        info: &RequestInfo,
        state: &PolicyState,
    ) -> Result<String, GatewayError> {
        let ip = || info.client_ip.map_or_else(String::new, |ip| ip.to_string());
        Ok(match self {
            LimitKey::ClientIp => ip(),
            LimitKey::Route => info.route.to_string(),
            LimitKey::Header(name) if req.headers.get_all(name).iter().count() > 1 => {
                return Err(crate::errors::AMBIGUOUS_HEADER.into());
            }
            LimitKey::Header(name) => match req.headers.get(name) {
                // Long values are hashed so a key never costs more than a few bytes.
                Some(v) if v.len() <= 128 => {
                    format!("h:{}", String::from_utf8_lossy(v.as_bytes()))
                }
                Some(v) => format!("h#{:x}", fnv1a(v.as_bytes())),
                None => format!("ip:{}", ip()),
            },
            LimitKey::Claim(name) => {
                match state
                    .claims
                    .as_ref()
                    .and_then(|c| super::auth::claim(c, name))
                {
                    Some(v) => format!("c:{}", super::auth::header_text(v)),
                    None => format!("ip:{}", ip()),
                }
            }
        })
    }

    pub fn parse(text: &str) -> Result<LimitKey, String> {
        match text {
            "client_ip" => Ok(LimitKey::ClientIp),
            "route" => Ok(LimitKey::Route),
            // An API-key consumer's name is its `consumer` claim.
            "consumer" => Ok(LimitKey::Claim("consumer".into())),
            _ => {
                if let Some(h) = text.strip_prefix("header:") {
                    http::HeaderName::from_bytes(h.trim().as_bytes())
                        .map(LimitKey::Header)
                        .map_err(|_| format!("`{h}` is not a valid header name"))
                } else if let Some(c) = text.strip_prefix("claim:") {
                    Ok(LimitKey::Claim(c.trim().to_string()))
                } else {
                    Err(format!("unknown rate limit key `{text}`"))
                }
            }
        }
    }
}

impl std::fmt::Display for LimitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitKey::ClientIp => f.write_str("client_ip"),
            LimitKey::Route => f.write_str("route"),
            LimitKey::Header(h) => write!(f, "header:{h}"),
            LimitKey::Claim(c) => write!(f, "claim:{c}"),
        }
    }
}

/// The outcome of one check, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until the next request would be allowed (zero when allowed).
    pub retry_after: Duration,
}

/// The GCRA step: given the stored theoretical arrival time, returns the decision and the
/// new TAT to store (None when rejected). Times in nanoseconds.
fn gcra(tat: u64, now: u64, interval: u64, capacity: u64) -> (Decision, Option<u64>) {
    let tat = tat.max(now);
    let new_tat = tat + interval;
    let window = interval.saturating_mul(capacity);
    let ahead = new_tat - now;
    if ahead > window {
        let decision = Decision {
            allowed: false,
            limit: capacity,
            remaining: 0,
            reset: Duration::from_nanos(tat - now),
            retry_after: Duration::from_nanos(ahead - window),
        };
        return (decision, None);
    }
    let decision = Decision {
        allowed: true,
        limit: capacity,
        remaining: (window - ahead) / interval,
        reset: Duration::from_nanos(ahead),
        retry_after: Duration::ZERO,
    };
    (decision, Some(new_tat))
}

const SHARDS: usize = 64;

/// In-process buckets: at most `max_keys` keys; keys whose bucket is full again are
/// dropped first, so a flood of distinct keys cannot grow memory without bound.
pub struct LocalStore {
    buckets: Bounded<u64>,
    epoch: Instant,
}

impl LocalStore {
    pub fn new(max_keys: usize) -> LocalStore {
        LocalStore {
            buckets: Bounded::new(SHARDS, max_keys),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn check(&self, key: &str, interval: u64, capacity: u64) -> Decision {
        let mut shard = self.buckets.shard(key.as_bytes());
        let now = self.now();
        let tat = shard.get(key).copied().unwrap_or(now);
        let (decision, store) = gcra(tat, now, interval, capacity);
        if let Some(new_tat) = store {
            match shard.get_mut(key) {
                Some(t) => *t = new_tat,
                // A bucket that is full again is stale; if every key is active, one is
                // forgotten (it gets a fresh bucket) to stay bounded.
                None => shard.insert(key, new_tat, |t| *t <= now),
            }
        }
        decision
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// GCRA in Redis, on Redis' clock so every replica agrees. Times in microseconds.
const SCRIPT_TEXT: &str = r"
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local window = interval * capacity
local ahead = new_tat - now
if ahead > window then
  return {0, 0, tat - now, ahead - window}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((window - ahead) / interval), ahead, 0}
";

/// The GCRA script, hashed once (Redis runs it by its SHA, loading it when missing).
static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SCRIPT_TEXT));

/// Counts one request against `key` in Redis.
async fn redis_check(
    link: &Arc<RedisLink>,
    key: &str,
    interval: u64,
    capacity: u64,
) -> Result<Decision, LinkError> {
    let micros = (interval / 1000).max(1);
    let mut invocation = SCRIPT.key(key);
    invocation.arg(micros).arg(capacity);
    let (allowed, remaining, reset, retry) =
        link.invoke::<(u64, u64, u64, u64)>(&invocation).await?;
    Ok(Decision {
        allowed: allowed == 1,
        limit: capacity,
        remaining,
        reset: Duration::from_micros(reset),
        retry_after: Duration::from_micros(retry),
    })
}

pub enum Backend {
    Local(Arc<LocalStore>),
    Redis {
        link: Arc<RedisLink>,
        deny_on_error: bool,
    },
}

pub struct RateLimit {
    pub name: Arc<str>,
    pub key: LimitKey,
    pub capacity: u64,
    /// Nanoseconds between two refilled requests.
    pub interval: u64,
    pub backend: Backend,
}

/// The 429 a client over its limit gets, with when to retry.
fn too_many(retry_after: u64) -> GatewayError {
    let message = format!("too many requests; retry in {retry_after} s");
    Refusal::new(429, Code::RateLimited, message)
        .header(http::header::RETRY_AFTER, retry_after.into())
        .counted(Counted::RateLimited)
        .into()
}

const UNAVAILABLE: Refusal = Refusal::fixed(
    503,
    Code::RateLimitUnavailable,
    "the rate limiter is unavailable and this route denies unchecked requests",
);

/// What to do with a request after its limit was checked.
pub enum Verdict {
    Allow(Decision),
    Reject(Decision),
    /// Redis failed and the policy says deny.
    Unavailable(String),
    /// Redis failed and the policy says allow.
    AllowUnchecked,
}

impl RateLimit {
    /// Keyed by a claim, so it runs after authentication.
    pub fn by_identity(&self) -> bool {
        self.key.is_identity()
    }

    /// Counts the request; refuses it over the limit (or when Redis fails and the policy
    /// denies unchecked requests).
    pub async fn count(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        if state.consumer_limited && self.key == LimitKey::Claim("consumer".into()) {
            return Ok(());
        }
        let key = self.key.of(req, info, state)?;
        match self.check(&key).await {
            Verdict::Allow(d) => {
                note(state, d);
                Ok(())
            }
            Verdict::AllowUnchecked => Ok(()),
            Verdict::Reject(d) => {
                state.rate = Some(d);
                Err(too_many(ceil_secs(d.retry_after).max(1)))
            }
            Verdict::Unavailable(why) => {
                tracing::warn!(limit = %self.name, error = %why, "rate limit unavailable: denying");
                Err(UNAVAILABLE.into())
            }
        }
    }

    pub async fn check(&self, key: &str) -> Verdict {
        let decision = match &self.backend {
            Backend::Local(store) => store.check(key, self.interval, self.capacity),
            Backend::Redis {
                link,
                deny_on_error,
            } => {
                let redis_key = format!("portico:rl:{}:{key}", self.name);
                match redis_check(link, &redis_key, self.interval, self.capacity).await {
                    Ok(d) => d,
                    Err(e) if *deny_on_error => return Verdict::Unavailable(e.to_string()),
                    Err(e) => {
                        tracing::debug!(limit = %self.name, error = %e, "rate limit unchecked");
                        return Verdict::AllowUnchecked;
                    }
                }
            }
        };
        if decision.allowed {
            Verdict::Allow(decision)
        } else {
            Verdict::Reject(decision)
        }
    }
}

#[async_trait::async_trait]
impl Unit for RateLimit {
    fn kind(&self) -> &'static str {
        "rate_limit"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn stage(&self) -> Stage {
        if self.by_identity() {
            Stage::LimitByIdentity
        } else {
            Stage::Limit
        }
    }

    fn details(&self) -> serde_json::Value {
        let backend = match self.backend {
            Backend::Local(_) => "local",
            Backend::Redis { .. } => "redis",
        };
        let per_second = 1e9 / self.interval.max(1) as f64;
        serde_json::json!({"key": self.key.to_string(), "per_second": per_second, "burst": self.capacity, "backend": backend})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc::refusing(&["429"])
    }

    fn identity_headers(&self) -> Vec<http::HeaderName> {
        Vec::new()
    }

    async fn on_request(
        &self,
        session: &mut pingora::proxy::Session,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        self.count(session.req_header(), info, state).await
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        report(resp, state)
    }
}

/// Notes a limit's decision for the `RateLimit-*` headers: the tightest one checked.
pub fn note(state: &mut PolicyState, d: Decision) {
    if state.rate.is_none_or(|r| d.remaining <= r.remaining) {
        state.rate = Some(d);
    }
}

/// `RateLimit-*` headers (IETF draft) on every answer to a request a limit was checked for.
pub fn report(resp: &mut ResponseHeader, state: &PolicyState) -> pingora::Result<()> {
    if let Some(d) = &state.rate {
        resp.insert_header("ratelimit-limit", d.limit)?;
        resp.insert_header("ratelimit-remaining", d.remaining)?;
        resp.insert_header("ratelimit-reset", ceil_secs(d.reset))?;
    }
    Ok(())
}

/// Compiles the named limit `rate_limits.NAME`. Its buckets are kept across reloads while
/// the fields that define them (rate, burst, key, size) stay the same.
pub fn compile(cx: &mut CompileCx, name: &str, rl: &RawRateLimit) -> Option<RateLimit> {
    let (d, state, redis) = (&mut *cx.d, &mut *cx.state, cx.redis.clone());
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
                Some("use client_ip, route, consumer, header:NAME or claim:NAME".into()),
            )
        })
        .ok();
    let defining = (rl.requests, rl.per, rl.burst, &rl.key, rl.max_keys);
    let backend = match (rl.backend, redis) {
        (LimitBackend::Local, _) => Some(Backend::Local(state.keep(
            "rate_limit",
            name,
            &defining,
            || LocalStore::new(rl.max_keys),
        ))),
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
    })
}

/// Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn gcra_allows_capacity_then_refills() {
        let (interval, capacity) = (12 * SEC, 5); // 5 per minute
        let mut tat = 0;
        for expected_remaining in (0..5).rev() {
            let (d, store) = gcra(tat, 0, interval, capacity);
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            tat = store.unwrap();
        }
        let (d, store) = gcra(tat, 0, interval, capacity);
        assert!(!d.allowed && store.is_none());
        assert_eq!(d.retry_after, Duration::from_secs(12));
        let (d, _) = gcra(tat, 12 * SEC, interval, capacity);
        assert!(d.allowed, "one request refilled after 12 s");
    }

    #[test]
    fn local_store_stays_bounded_under_a_key_flood() {
        let store = LocalStore::new(1_000);
        for i in 0..20_000 {
            store.check(&format!("key-{i}"), SEC, 10);
        }
        assert!(store.len() <= 1_000, "{} keys kept", store.len());
        assert!(store.check("key-19999", SEC, 2).allowed);
    }

    #[test]
    fn parses_keys() {
        assert_eq!(LimitKey::parse("client_ip"), Ok(LimitKey::ClientIp));
        assert_eq!(
            LimitKey::parse("claim:sub"),
            Ok(LimitKey::Claim("sub".into()))
        );
        assert!(LimitKey::parse("cookie:x").is_err());
    }

    fn limit(key: &str) -> RateLimit {
        RateLimit {
            name: "l".into(),
            key: LimitKey::parse(key).unwrap(),
            capacity: 2,
            interval: SEC,
            backend: Backend::Local(Arc::new(LocalStore::new(100))),
        }
    }

    #[test]
    fn keys_come_from_the_request_and_claims_run_after_auth() {
        let info = RequestInfo {
            client_ip: Some("192.0.2.1".parse().unwrap()),
            trusted_peer: false,
            request_id: "r",
            route: "api",
            tls: false,
        };
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-key", "k1").unwrap();
        let mut state = PolicyState::default();
        let key = |l: &str, state: &PolicyState| limit(l).key.of(&req, &info, state).unwrap();
        assert_eq!(key("client_ip", &state), "192.0.2.1");
        assert_eq!(key("route", &state), "api");
        assert_eq!(key("header:x-key", &state), "h:k1");
        assert_eq!(key("header:x-none", &state), "ip:192.0.2.1");
        assert!(limit("claim:sub").by_identity() && !limit("client_ip").by_identity());
        assert_eq!(key("claim:sub", &state), "ip:192.0.2.1");
        state.claims = Some(Arc::new(serde_json::json!({"sub": "u1"})));
        assert_eq!(key("claim:sub", &state), "c:u1");
        req.append_header("x-key", "k2").unwrap();
        assert_eq!(
            limit("header:x-key").key.of(&req, &info, &state),
            Err(crate::errors::AMBIGUOUS_HEADER.into()),
            "a repeated key header is refused, not counted by its first copy"
        );
    }

    #[tokio::test]
    async fn the_hook_refuses_over_the_limit_and_reports_headers() {
        let info = RequestInfo {
            client_ip: Some("192.0.2.1".parse().unwrap()),
            trusted_peer: false,
            request_id: "r",
            route: "api",
            tls: false,
        };
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let l = limit("client_ip");
        let mut state = PolicyState::default();
        assert!(l.count(&req, &info, &mut state).await.is_ok());
        assert!(l.count(&req, &info, &mut state).await.is_ok());
        let refused = l.count(&req, &info, &mut state).await.unwrap_err();
        assert_eq!(refused, too_many(1));
        let mut resp = ResponseHeader::build(429, None).unwrap();
        report(&mut resp, &state).unwrap();
        assert_eq!(resp.headers["ratelimit-limit"], "2");
        assert_eq!(resp.headers["ratelimit-remaining"], "0");
    }
}
