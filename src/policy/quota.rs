//! Quotas: a fixed number of requests per calendar window (UTC minute, hour, day, ISO week
//! or month) per key, the way API plans are sold. Counted in Redis when the config has
//! `redis:` (every replica shares one count), else in the process. A route applies one with
//! `quota: NAME`; an API-key consumer's own `quota` is counted when its key is used.

use super::ratelimit::{ceil_secs, Decision, LimitKey, OnRedisError};
use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::bounded::Bounded;
use crate::errors::{Code, Counted, GatewayError, Refusal};
use crate::redis_link::{LinkError, RedisLink};
use pingora::http::{RequestHeader, ResponseHeader};
use prometheus::IntCounter;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Requests allowed per window.
    pub limit: u64,
    /// The calendar window (UTC): minute, hour, day, week (from Monday) or month.
    pub period: Period,
    /// What is counted apart: consumer (default), client_ip, route, claim:NAME or header:NAME.
    #[serde(default = "default_quota_key")]
    #[schemars(pattern(
        r"^(consumer|client_ip|route|header:\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*|claim:.+)$"
    ))]
    pub key: String,
    /// allow (default) or deny requests while Redis does not answer; each one is counted
    /// in `portico_quota_unchecked_total`.
    #[serde(default)]
    pub on_redis_error: OnRedisError,
    /// Most keys counted in the process (without Redis); the least active go first.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_quota_key() -> String {
    "consumer".into()
}
fn default_max_keys() -> usize {
    100_000
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    /// The window holding unix second `now`: its start and end (exclusive), in unix seconds.
    pub fn window(self, now: u64) -> (u64, u64) {
        let fixed = |len: u64| (now - now % len, now - now % len + len);
        match self {
            Period::Minute => fixed(60),
            Period::Hour => fixed(3600),
            Period::Day => fixed(86_400),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday-based weeks start 3 days after the
                // epoch's week boundary.
                let days = now / 86_400;
                let start = (days - (days + 3) % 7) * 86_400;
                (start, start + 7 * 86_400)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(now / 86_400);
                let start = days_from_civil(y, m, 1) * 86_400;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm, 1) * 86_400)
            }
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`, for dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a date on or after it.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Counts in the process: per key, the window's start and the count so far.
pub struct LocalCounts(Bounded<(u64, u64)>);

/// Counts one request in Redis: the window's key expires a minute after the window ends.
const SCRIPT_TEXT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
return n
";

static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SCRIPT_TEXT));

pub enum Counter {
    Local(Arc<LocalCounts>),
    Redis(Arc<RedisLink>),
}

pub struct Quota {
    pub name: Arc<str>,
    pub limit: u64,
    pub period: Period,
    pub key: LimitKey,
    counter: Counter,
    deny_on_error: bool,
    /// Requests let through (or refused) unchecked while Redis failed.
    unchecked: IntCounter,
}

const UNAVAILABLE: Refusal = Refusal::fixed(
    503,
    Code::QuotaUnavailable,
    "the quota store is unavailable and this quota denies unchecked requests",
);

impl Quota {
    /// Counts the request against its window; refuses it past the limit.
    pub async fn count(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        let key = self.key.of(req, info, state)?;
        let now = crate::units::unix_now();
        let (start, end) = self.period.window(now);
        let used = match self.used(&key, start, end).await {
            Ok(n) => n,
            Err(e) => {
                self.unchecked.inc();
                tracing::debug!(quota = %self.name, error = %e, "quota unchecked");
                return match self.deny_on_error {
                    true => Err(UNAVAILABLE.into()),
                    false => Ok(()),
                };
            }
        };
        let reset = Duration::from_secs(end - now);
        let decision = Decision {
            allowed: used <= self.limit,
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset,
            retry_after: if used <= self.limit {
                Duration::ZERO
            } else {
                reset
            },
        };
        super::ratelimit::note(state, decision);
        if decision.allowed {
            return Ok(());
        }
        let secs = ceil_secs(reset).max(1);
        let message = format!(
            "the `{}` quota of {} requests per {} is used up; it renews in {secs} s",
            self.name,
            self.limit,
            self.period.noun()
        );
        Err(Refusal::new(429, Code::QuotaExceeded, message)
            .header(http::header::RETRY_AFTER, secs.into())
            .counted(Counted::RateLimited)
            .into())
    }

    /// The count of `key` in the window `[start, end)` after this request.
    async fn used(&self, key: &str, start: u64, end: u64) -> Result<u64, LinkError> {
        match &self.counter {
            Counter::Local(counts) => {
                let mut shard = counts.0.shard(key.as_bytes());
                let next = match shard.get(key) {
                    Some((s, n)) if *s == start => n + 1,
                    _ => 1,
                };
                // An entry of an earlier window is stale, and goes first when full.
                shard.insert(key, (start, next), |(s, _)| *s < start);
                Ok(next)
            }
            Counter::Redis(link) => {
                let redis_key = format!("portico:quota:{}:{start}:{key}", self.name);
                let mut invocation = SCRIPT.key(redis_key);
                invocation.arg(end + 60);
                link.invoke::<u64>(&invocation).await
            }
        }
    }
}

impl Period {
    fn noun(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

#[async_trait::async_trait]
impl Unit for Quota {
    fn kind(&self) -> &'static str {
        "quota"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn stage(&self) -> Stage {
        if self.key.is_identity() {
            Stage::LimitByIdentity
        } else {
            Stage::Limit
        }
    }

    fn details(&self) -> serde_json::Value {
        let store = match self.counter {
            Counter::Local(_) => "local",
            Counter::Redis(_) => "redis",
        };
        serde_json::json!({"limit": self.limit, "period": self.period.noun(), "key": self.key.to_string(), "store": store})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc {
            note: Some(format!(
                "At most {} requests per calendar {} (UTC) per {}.",
                self.limit,
                self.period.noun(),
                self.key
            )),
            ..ApiDoc::refusing(&["429"])
        }
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
        super::ratelimit::report(resp, state)
    }
}

/// Compiles `quotas.NAME`. Local counts are kept across reloads while the quota's
/// defining fields stay the same.
pub fn compile(cx: &mut CompileCx, name: &str, q: &RawQuota) -> Option<Quota> {
    let at = format!("quotas.{name}");
    if q.limit == 0 {
        cx.d.error(
            &format!("{at}.limit"),
            "a quota must allow at least 1 request",
            Some("to block a route, remove it or respond with 403".into()),
        );
        return None;
    }
    let key = LimitKey::parse(&q.key)
        .map_err(|e| {
            cx.d.error(
                &format!("{at}.key"),
                e,
                Some("use consumer, client_ip, route, claim:NAME or header:NAME".into()),
            )
        })
        .ok()?;
    let counter = match cx.redis.clone() {
        Some(link) => Counter::Redis(link),
        None => {
            let defining = (q.limit, q.period, &q.key, q.max_keys);
            Counter::Local(cx.state.keep("quota", name, &defining, || {
                LocalCounts(Bounded::new(64, q.max_keys))
            }))
        }
    };
    Some(Quota {
        name: name.into(),
        limit: q.limit,
        period: q.period,
        key,
        counter,
        deny_on_error: q.on_redis_error == OnRedisError::Deny,
        unchecked: cx.metrics.quota_unchecked.with_label_values(&[name]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_utc_calendar() {
        // 2026-12-03T19:05:52Z, a Thursday.
        let now = 1_796_324_752;
        assert_eq!(Period::Minute.window(now), (1_796_324_700, 1_796_324_760));
        assert_eq!(Period::Day.window(now).0, 1_796_256_000); // 2026-12-03T00:00Z
        assert_eq!(Period::Week.window(now).0, 1_795_996_800); // Monday 2026-11-30
        assert_eq!(Period::Month.window(now), (1_796_083_200, 1_798_761_600)); // Dec 1 .. Jan 1
                                                                               // February of a leap year ends on the 29th.
        let feb_2028 = days_from_civil(2028, 2, 10) * 86_400;
        let (start, end) = Period::Month.window(feb_2028);
        assert_eq!(civil_from_days(start / 86_400), (2028, 2, 1));
        assert_eq!(civil_from_days(end / 86_400), (2028, 3, 1));
        assert_eq!((end - start) / 86_400, 29);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in (0..200_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[tokio::test]
    async fn local_counts_refuse_past_the_limit_and_report_headers() {
        let (quota, _) = crate::policy::with_test_cx(|cx| {
            let raw: RawQuota =
                serde_yaml::from_str("{ limit: 2, period: day, key: client_ip }").unwrap();
            compile(cx, "q", &raw).unwrap()
        });
        let info = RequestInfo {
            client_ip: Some("192.0.2.1".parse().unwrap()),
            trusted_peer: false,
            request_id: "r",
            route: "api",
            tls: false,
        };
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut state = PolicyState::default();
        assert!(quota.count(&req, &info, &mut state).await.is_ok());
        assert_eq!(state.rate.unwrap().remaining, 1);
        assert!(quota.count(&req, &info, &mut state).await.is_ok());
        let refused = quota.count(&req, &info, &mut state).await.unwrap_err();
        assert_eq!(refused.code(), "quota_exceeded");
        assert_eq!(refused.status(), 429);
        let mut resp = ResponseHeader::build(429, None).unwrap();
        super::super::ratelimit::report(&mut resp, &state).unwrap();
        assert_eq!(resp.headers["ratelimit-remaining"], "0");
    }
}
