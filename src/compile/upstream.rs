//! Compiling `upstreams`: targets, balancing, timeouts, retries, health checks, breakers.

use super::is_name;
use crate::config::model::{RawBreaker, RawHealthCheck, RawUpstream, RetryOn};
use crate::diag::Diags;
use crate::state::StateCx;
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::health::HealthConfig;
use crate::upstream::{Balance, Target, Upstream};
use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;

pub(super) fn compile_upstream(
    d: &mut Diags,
    name: &str,
    up: &RawUpstream,
    state: &mut StateCx,
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
    let health_check = up
        .health_check
        .as_ref()
        .and_then(|hc| compile_health(d, &at, hc));
    let breaker = up.breaker.as_ref().and_then(|b| compile_breaker(d, &at, b));
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for (i, text) in up.targets.iter().enumerate() {
        let path = format!("{at}.targets[{i}]");
        match Target::parse(text) {
            // A target's addresses, health and breaker state are defined by its address and
            // its checks: timeouts, retries or balancing changes keep them.
            Ok(t) => {
                let defining = (text, &health_check, format!("{breaker:?}"));
                let label = format!("{name}/{text}");
                targets.push(state.keep("target", &label, &defining, || t));
            }
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
    upstream.next = state.keep("balancer", name, &up.targets, AtomicUsize::default);
    upstream.health_check = health_check;
    upstream.breaker = breaker;
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
