//! Compiling `upstreams`: targets, balancing, timeouts, retries, health checks, breakers,
//! TLS and the protocol spoken to the targets.

use super::is_name;
use crate::config::model::{
    RawBreaker, RawHealthCheck, RawOutlier, RawTarget, RawUpstream, RawUpstreamTls, RetryOn,
    UpstreamProtocol,
};
use crate::diag::{Diags, Inputs};
use crate::state::StateCx;
use crate::tls;
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::health::HealthConfig;
use crate::upstream::outlier::{Ejector, OutlierConfig};
use crate::upstream::weighted::MAX_WEIGHT;
use crate::upstream::{Balance, Target, Upstream, UpstreamTls};
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub(super) fn compile_upstream(
    d: &mut Diags,
    inputs: &mut Inputs,
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
    let outlier = up.outlier.as_ref().and_then(|o| compile_outlier(d, &at, o));
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for (i, target) in up.targets.iter().enumerate() {
        let path = format!("{at}.targets[{i}]");
        let text = target.addr();
        if target.weight() > MAX_WEIGHT {
            d.error(
                &format!("{path}.weight"),
                format!("weight {} is over {MAX_WEIGHT}", target.weight()),
                Some("weights are shares against each other: 3 and 1 send three times as much to the first".into()),
            );
        }
        match Target::parse(scheme(text).1) {
            // A target's addresses, health and breaker state are defined by its address and
            // its checks: timeouts, retries or balancing changes keep them.
            Ok(t) => {
                let defining = (text, &health_check, format!("{breaker:?}{outlier:?}"));
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
                    "it will get twice the share of traffic; remove the copy, and give the target a `weight` for a larger share".into(),
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
                    "use round_robin, random, least_requests, hash(header:NAME), hash(client_ip), hash(claim:NAME) or hash(cookie:NAME)"
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
                Some("give a duration such as 2s, or leave it out for the default".into()),
            );
        }
    }
    let retry_attempts = if up.retries.on.contains(&RetryOn::ConnectFailure) {
        up.retries.attempts
    } else {
        0
    };
    let tls = compile_tls(d, inputs, &at, up);
    if tls.is_some() && up.health_check.is_some() {
        d.error(
            &format!("{at}.health_check"),
            "health checks probe over plain HTTP and cannot check a TLS upstream",
            Some(
                "remove `health_check`: the circuit breaker still takes failing targets out".into(),
            ),
        );
    }
    let timeouts = (up.timeouts.connect, up.timeouts.read, up.timeouts.write);
    let weights: Vec<u32> = up.targets.iter().map(RawTarget::weight).collect();
    if !weights.is_empty() && weights.iter().all(|w| *w == 0) {
        d.error(
            &format!("{at}.targets"),
            format!("every target of upstream `{name}` has weight 0, so none takes traffic"),
            Some("give at least one target a weight above 0".into()),
        );
    }
    let mut upstream = Upstream::new(name, targets, balance?, timeouts, retry_attempts);
    if upstream.targets.len() == weights.len() {
        upstream.set_weights(&weights);
    }
    upstream.next = state.keep("balancer", name, &up.targets, AtomicUsize::default);
    upstream.health_check = health_check;
    upstream.breaker = breaker;
    upstream.outlier = outlier.map(|cfg| Arc::new(Ejector::new(cfg, upstream.targets.clone())));
    upstream.tls = tls;
    upstream.h2 = up.protocol == UpstreamProtocol::H2;
    Some(upstream)
}

/// The scheme a target is written with, and the target without it.
fn scheme(text: &str) -> (Option<&str>, &str) {
    match text.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, text),
    }
}

/// TLS to the targets: from `tls:`, or implied by `https://` targets.
fn compile_tls(
    d: &mut Diags,
    inputs: &mut Inputs,
    at: &str,
    up: &RawUpstream,
) -> Option<UpstreamTls> {
    let schemes: Vec<Option<&str>> = up.targets.iter().map(|t| scheme(t.addr()).0).collect();
    let https = schemes.iter().filter(|s| **s == Some("https")).count();
    if https > 0 && https < schemes.len() {
        d.error(
            &format!("{at}.targets"),
            "some targets are https:// and some are not",
            Some("an upstream speaks TLS to all its targets or to none".into()),
        );
    }
    if up.tls.is_some() && schemes.contains(&Some("http")) {
        d.error(
            &format!("{at}.tls"),
            "`tls` is set but the targets are http://",
            Some("write the targets as https://HOST:PORT or HOST:PORT".into()),
        );
    }
    let default = RawUpstreamTls {
        verify: true,
        ..RawUpstreamTls::default()
    };
    let raw = match &up.tls {
        Some(raw) => raw,
        None if https > 0 => &default,
        None => return None,
    };
    let at = format!("{at}.tls");
    if !raw.verify {
        d.warn(
            &format!("{at}.verify"),
            "certificate verification is off: anyone on the path can pose as this upstream",
            Some("give the upstream's CA in `ca_file` instead".into()),
        );
    }
    let mut pool = std::hash::DefaultHasher::new();
    (at.as_str(), &raw.sni, raw.verify).hash(&mut pool);
    let ca = raw.ca_file.as_ref().and_then(|file| {
        let certs = tls::read_certificates(d, inputs, &format!("{at}.ca_file"), file)?;
        certs.hash(&mut pool);
        let wrapped: Vec<WrappedX509> = certs
            .iter()
            .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
            .collect();
        Some(Arc::<[WrappedX509]>::from(wrapped))
    });
    let client = match (&raw.client_cert, &raw.client_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => client_cert(d, inputs, &at, cert, key),
        _ => {
            d.error(
                &at,
                "mutual TLS needs both `client_cert` and `client_key`",
                Some("give both files (PEM certificate and its key), or neither".into()),
            );
            None
        }
    };
    Some(UpstreamTls {
        sni: raw.sni.clone(),
        verify: raw.verify,
        ca,
        client,
        pool: pool.finish(),
    })
}

fn client_cert(
    d: &mut Diags,
    inputs: &mut Inputs,
    at: &str,
    cert: &str,
    key: &str,
) -> Option<Arc<CertKey>> {
    // Checked here as the TLS library will read it: a key it cannot use is a config error,
    // never a failure on a request.
    let (cert_at, key_at) = (format!("{at}.client_cert"), format!("{at}.client_key"));
    let pair = tls::read_pair(d, inputs, (&cert_at, cert), (&key_at, key))?;
    let chain = pair.key.cert.iter().map(|c| c.to_vec()).collect();
    Some(Arc::new(CertKey::new(
        chain,
        pair.key_der.secret_der().to_vec(),
    )))
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
        d.error(
            &at,
            "interval and timeout must be longer than 0",
            Some("e.g. `health_check: { path: /health, interval: 5s, timeout: 1s }`".into()),
        );
    }
    if hc.unhealthy_after == 0 || hc.healthy_after == 0 {
        d.error(
            &at,
            "unhealthy_after and healthy_after must be at least 1",
            Some("counts of consecutive checks, e.g. unhealthy_after: 3, healthy_after: 2".into()),
        );
    }
    if hc.timeout > hc.interval {
        d.warn(
            &format!("{at}.timeout"),
            "the timeout is longer than the interval",
            Some(
                "make the timeout shorter than the interval, e.g. interval: 5s, timeout: 1s".into(),
            ),
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

fn compile_outlier(d: &mut Diags, at: &str, o: &RawOutlier) -> Option<OutlierConfig> {
    let at = format!("{at}.outlier");
    let errors = d.errors();
    if o.consecutive_failures == 0 {
        d.error(
            &format!("{at}.consecutive_failures"),
            "consecutive_failures must be at least 1",
            Some("e.g. consecutive_failures: 5".into()),
        );
    }
    if o.base_ejection.is_zero() {
        d.error(
            &format!("{at}.base_ejection"),
            "base_ejection must be longer than 0",
            Some("e.g. base_ejection: 30s".into()),
        );
    }
    let share = crate::units::per_mille(&o.max_ejected);
    if share.is_none() {
        d.error(
            &format!("{at}.max_ejected"),
            format!("`{}` is not a share such as 50%", o.max_ejected),
            Some("write a percentage from 0% to 100% of the upstream's targets".into()),
        );
    }
    (d.errors() == errors).then(|| OutlierConfig {
        consecutive_failures: o.consecutive_failures,
        base_ejection: o.base_ejection,
        max_ejected_per_mille: share.unwrap_or(0) as u32,
    })
}

fn compile_breaker(d: &mut Diags, at: &str, b: &RawBreaker) -> Option<BreakerConfig> {
    let at = format!("{at}.breaker");
    let mut ok = true;
    if b.consecutive_failures == 0 {
        d.error(
            &format!("{at}.consecutive_failures"),
            "consecutive_failures must be at least 1",
            Some("e.g. consecutive_failures: 5".into()),
        );
        ok = false;
    }
    if b.failure_ratio.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
        d.error(
            &format!("{at}.failure_ratio"),
            "failure_ratio is a share between 0 and 1, e.g. 0.5",
            Some("e.g. failure_ratio: 0.5 (with min_requests)".into()),
        );
        ok = false;
    }
    if b.half_open_requests == 0 || b.open_for.is_zero() {
        d.error(
            &at,
            "half_open_requests must be at least 1 and open_for longer than 0",
            Some("e.g. half_open_requests: 1, open_for: 30s".into()),
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
