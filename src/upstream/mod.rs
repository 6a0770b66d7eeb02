//! Upstream pools: targets with their resolved addresses, and the balancer that picks one.

pub mod breaker;
pub mod call;
pub mod health;
pub mod outlier;
pub mod resolve;
pub mod weighted;

use breaker::{Admission, Breaker, BreakerConfig};
use health::{Health, HealthConfig};

use arc_swap::ArcSwap;
use http::HeaderName;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    Random,
    LeastRequests,
    /// A header's value, from trusted proxies only (a client's own copy is ignored).
    HashHeader(HeaderName),
    HashClientIp,
    /// A verified claim (the route's `auth`).
    HashClaim(String),
    /// A cookie's value.
    HashCookie(String),
}

impl std::fmt::Display for Balance {
    /// As written in the config.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Balance::RoundRobin => f.write_str("round_robin"),
            Balance::Random => f.write_str("random"),
            Balance::LeastRequests => f.write_str("least_requests"),
            Balance::HashHeader(h) => write!(f, "hash(header:{h})"),
            Balance::HashClientIp => f.write_str("hash(client_ip)"),
            Balance::HashClaim(c) => write!(f, "hash(claim:{c})"),
            Balance::HashCookie(c) => write!(f, "hash(cookie:{c})"),
        }
    }
}

impl Balance {
    /// Parses `round_robin`, `random`, `least_requests`, `hash(header:NAME)`, `hash(client_ip)`,
    /// `hash(claim:NAME)`, `hash(cookie:NAME)`.
    pub fn parse(text: &str) -> Result<Balance, String> {
        let inner = |prefix: &str| {
            let name = text.trim().strip_prefix(prefix)?.strip_suffix(')')?.trim();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            token.then(|| name.to_string())
        };
        if let Some(claim) = inner("hash(claim:") {
            return Ok(Balance::HashClaim(claim));
        }
        if let Some(cookie) = inner("hash(cookie:") {
            return Ok(Balance::HashCookie(cookie));
        }
        match text.trim() {
            "round_robin" => Ok(Balance::RoundRobin),
            "random" => Ok(Balance::Random),
            "least_requests" => Ok(Balance::LeastRequests),
            "hash(client_ip)" => Ok(Balance::HashClientIp),
            other => {
                let header = other
                    .strip_prefix("hash(header:")
                    .and_then(|h| h.strip_suffix(')'))
                    .ok_or_else(|| format!("unknown balance `{other}`"))?;
                HeaderName::from_bytes(header.trim().as_bytes())
                    .map(Balance::HashHeader)
                    .map_err(|_| format!("`{header}` is not a valid header name"))
            }
        }
    }
}

pub struct Target {
    pub host: String,
    pub port: u16,
    /// `host:port` as written in the config.
    pub label: String,
    addrs: ArcSwap<Vec<SocketAddr>>,
    next_addr: AtomicUsize,
    in_flight: AtomicUsize,
    pub health: Health,
    pub breaker: Breaker,
    pub outlier: outlier::Outlier,
    /// What the dashboard shows: the time to a response head, smoothed (µs), and the last
    /// failure (unix ms, what).
    latency_us: AtomicU64,
    last_error: std::sync::Mutex<Option<(u64, String)>>,
}

impl Target {
    /// Notes a finished try: its time to the response head and, if it failed, why.
    pub fn observe(&self, head: Option<std::time::Duration>, error: Option<String>) {
        if let Some(t) = head {
            let us = t.as_micros().min(u128::from(u64::MAX / 8)) as u64;
            let old = self.latency_us.load(Ordering::Relaxed);
            // An exponential average with weight 1/8: a few slow answers show, one does not.
            let new = if old == 0 { us } else { old - old / 8 + us / 8 };
            self.latency_us.store(new, Ordering::Relaxed);
        }
        if let Some(what) = error {
            let at = crate::units::unix_ms();
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, what));
        }
    }

    /// The smoothed time to a response head, in ms (None before the first answer).
    pub fn latency_ms(&self) -> Option<f64> {
        let us = self.latency_us.load(Ordering::Relaxed);
        (us > 0).then(|| us as f64 / 1000.0)
    }

    /// The last failure: unix ms and what happened.
    pub fn last_error(&self) -> Option<(u64, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Parses `host:port`; an IP literal is resolved at once, a DNS name by [`resolve`].
    pub fn parse(text: &str) -> Result<Target, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("target `{text}` has no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("target `{text}` has an invalid port `{port}`"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(format!("target `{text}` has an invalid host"));
        }
        let addrs = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => Vec::new(),
        };
        Ok(Target {
            host: host.to_string(),
            port,
            label: text.to_string(),
            addrs: ArcSwap::from_pointee(addrs),
            next_addr: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            health: Health::default(),
            breaker: Breaker::default(),
            outlier: outlier::Outlier::default(),
            latency_us: AtomicU64::new(0),
            last_error: std::sync::Mutex::new(None),
        })
    }

    pub fn is_dns(&self) -> bool {
        self.host.parse::<IpAddr>().is_err()
    }

    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        self.addrs.store(Arc::new(addrs));
    }

    /// One of the target's addresses, rotating when DNS returned several.
    fn addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.load();
        match addrs.len() {
            0 => None,
            1 => Some(addrs[0]),
            n => Some(addrs[self.next_addr.fetch_add(1, Ordering::Relaxed) % n]),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Why no target could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// Every target was tried already (retries exhausted).
    Exhausted,
    /// The remaining targets' circuits are open.
    CircuitOpen,
    /// Health checks took every target out.
    Unhealthy,
    /// No target has an address (DNS).
    NoAddress,
}

pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Vec<Arc<Target>>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Extra tries on connect failure (idempotent methods only).
    pub retry_attempts: u32,
    pub health_check: Option<HealthConfig>,
    pub breaker: Option<BreakerConfig>,
    /// Outlier ejection over the targets (passive health).
    pub outlier: Option<Arc<outlier::Ejector>>,
    /// The balancer's position, kept across reloads while the target list stays.
    pub next: Arc<AtomicUsize>,
    /// TLS to the targets.
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 to the targets.
    pub h2: bool,
    /// Each target's weight; empty when all weigh the same.
    weights: Box<[u32]>,
    /// The targets' turns in a cycle of smooth weighted round robin; empty when unweighted.
    order: Box<[u16]>,
}

/// How the gateway speaks TLS to an upstream's targets.
pub struct UpstreamTls {
    /// SNI and the name the certificate must carry; None: each target's host.
    pub sni: Option<String>,
    pub verify: bool,
    /// Trust anchors instead of the system's.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    /// The client certificate for mutual TLS.
    pub client: Option<Arc<pingora::utils::tls::CertKey>>,
    /// Pingora pools connections by address, SNI and client certificate, not by the CA that
    /// verified them: this keys the pool by upstream and trust anchors too, so a connection
    /// verified for one upstream is never reused for another that trusts other CAs.
    pub pool: u64,
}

/// The target chosen for one try. It counts as in flight (for `least_requests`) until
/// dropped; `finish` reports the outcome to the target's breaker.
pub struct Pick {
    pub index: usize,
    pub addr: SocketAddr,
    pub target: Arc<Target>,
    admission: Admission,
    breaker: Option<BreakerConfig>,
    outlier: Option<Arc<outlier::Ejector>>,
    finished: bool,
}

impl Pick {
    /// `Some(success)`, or None when the try ended for reasons not the target's;
    /// `upstream` names it in the breaker's log lines.
    pub fn finish(mut self, success: Option<bool>, upstream: &str) {
        if let Some(cfg) = &self.breaker {
            let who = breaker::Who {
                upstream,
                addr: &self.target.label,
            };
            self.target
                .breaker
                .record(cfg, self.admission, success, who);
        }
        if let (Some(ejector), Some(success)) = (&self.outlier, success) {
            ejector.record(&self.target, success, upstream);
        }
        self.finished = true;
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.target.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            if let Some(cfg) = &self.breaker {
                // No verdict: a probe slot is released, no state changes, nothing logged.
                let who = breaker::Who {
                    upstream: "",
                    addr: &self.target.label,
                };
                self.target.breaker.record(cfg, self.admission, None, who);
            }
        }
    }
}

impl Upstream {
    pub fn new(
        name: &str,
        targets: Vec<Arc<Target>>,
        balance: Balance,
        timeouts: (Duration, Duration, Duration),
        retry_attempts: u32,
    ) -> Upstream {
        Upstream {
            name: name.into(),
            targets,
            balance,
            connect_timeout: timeouts.0,
            read_timeout: timeouts.1,
            write_timeout: timeouts.2,
            retry_attempts,
            health_check: None,
            breaker: None,
            outlier: None,
            next: Arc::default(),
            tls: None,
            h2: false,
            weights: Box::default(),
            order: Box::default(),
        }
    }

    /// Gives the targets weights (in their order; 0 drains one).
    pub fn set_weights(&mut self, weights: &[u32]) {
        if weights.iter().all(|w| *w == weights[0]) && weights[0] > 0 {
            return;
        }
        self.order = weighted::smooth_order(weights);
        self.weights = weights.into();
    }

    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// The target whose turn `k` is.
    fn turn(&self, k: usize) -> usize {
        match self.order.len() {
            0 => k,
            len => self.order[k % len] as usize,
        }
    }

    /// Whether target `i` can take a try now (not tried, has an address, healthy, circuit
    /// not open), without side effects.
    fn available(&self, i: usize, tried: &[usize]) -> bool {
        let t = &self.targets[i];
        !tried.contains(&i)
            && (self.weights.is_empty() || self.weights[i] > 0)
            && !t.addrs.load().is_empty()
            && t.health.is_healthy()
            && (self.outlier.is_none() || !t.outlier.is_ejected())
            && self
                .breaker
                .as_ref()
                .is_none_or(|cfg| t.breaker.may_admit(cfg))
    }

    /// Whether some target could take a request now.
    pub fn can_take(&self) -> bool {
        (0..self.targets.len()).any(|i| self.available(i, &[]))
    }

    /// Picks a target, skipping `tried` ones. `key` is the hash input for hash balancing
    /// (header value or client IP).
    pub fn pick(&self, key: Option<&[u8]>, tried: &[usize]) -> Result<Pick, PickError> {
        let n = self.targets.len();
        let start = match &self.balance {
            Balance::RoundRobin => self.turn(self.next.fetch_add(1, Ordering::Relaxed)),
            Balance::Random => self.turn(fastrand::usize(..self.order.len().max(n).max(1))),
            Balance::HashHeader(_)
            | Balance::HashClientIp
            | Balance::HashClaim(_)
            | Balance::HashCookie(_) => match key {
                Some(k) => self.turn(crate::hashing::fnv1a(k) as usize),
                None => self.turn(self.next.fetch_add(1, Ordering::Relaxed)),
            },
            Balance::LeastRequests => {
                let offset = self.next.fetch_add(1, Ordering::Relaxed);
                // Fewest requests per unit of weight.
                (0..n)
                    .map(|i| (i + offset) % n)
                    .filter(|i| self.available(*i, tried))
                    .min_by_key(|i| {
                        self.targets[*i].in_flight() as u64 * 1000 / u64::from(self.weight(*i))
                    })
                    .unwrap_or(offset)
            }
        };
        for index in (0..n).map(|i| (start + i) % n) {
            if !self.available(index, tried) {
                continue;
            }
            let target = &self.targets[index];
            let admission = match &self.breaker {
                Some(cfg) => target.breaker.admit(
                    cfg,
                    breaker::Who {
                        upstream: &self.name,
                        addr: &target.label,
                    },
                ),
                None => Admission::Normal,
            };
            let Some(addr) = target.addr().filter(|_| admission != Admission::Rejected) else {
                continue;
            };
            target.in_flight.fetch_add(1, Ordering::Relaxed);
            return Ok(Pick {
                index,
                addr,
                target: target.clone(),
                admission,
                breaker: self.breaker.clone(),
                outlier: self.outlier.clone(),
                finished: false,
            });
        }
        Err(self.why_none(tried))
    }

    fn why_none(&self, tried: &[usize]) -> PickError {
        let untried = || {
            (0..self.targets.len())
                .filter(|i| !tried.contains(i))
                .map(|i| &self.targets[i])
        };
        if !tried.is_empty() {
            PickError::Exhausted
        } else if untried().all(|t| t.addrs.load().is_empty()) {
            PickError::NoAddress
        } else if untried().any(|t| t.health.is_healthy() && !t.outlier.is_ejected()) {
            PickError::CircuitOpen
        } else {
            PickError::Unhealthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance) -> Upstream {
        let targets = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|t| Arc::new(Target::parse(t).unwrap()))
            .collect();
        let t = Duration::from_secs(1);
        Upstream::new("u", targets, balance, (t, t, t), 1)
    }

    #[test]
    fn round_robin_cycles_and_skips_tried() {
        let up = pool(Balance::RoundRobin);
        let ports: Vec<u16> = (0..3)
            .map(|_| up.pick(None, &[]).unwrap().addr.port())
            .collect();
        assert_eq!(ports, vec![1, 2, 3]);
        assert_eq!(up.pick(None, &[0, 1]).unwrap().addr.port(), 3);
        assert_eq!(up.pick(None, &[0, 1, 2]).err(), Some(PickError::Exhausted));
    }

    #[test]
    fn hash_is_sticky_and_least_requests_prefers_idle() {
        let up = pool(Balance::HashClientIp);
        let a = up.pick(Some(b"10.0.0.1"), &[]).unwrap().index;
        assert!((0..10).all(|_| up.pick(Some(b"10.0.0.1"), &[]).unwrap().index == a));

        let up = pool(Balance::LeastRequests);
        let busy = up.pick(None, &[]).unwrap();
        let next = up.pick(None, &[]).unwrap();
        assert_ne!(busy.index, next.index);
    }

    #[test]
    fn parses_targets_and_balance() {
        assert!(Target::parse("users:8000").unwrap().is_dns());
        assert!(Target::parse("users").is_err());
        assert!(Target::parse("users:0").is_err());
        assert!(Target::parse("[::1]:80").is_ok());
        assert_eq!(
            Balance::parse("hash(header:x-user-id)").unwrap(),
            Balance::HashHeader(HeaderName::from_static("x-user-id"))
        );
        assert!(Balance::parse("sticky").is_err());
        for text in [
            "round_robin",
            "random",
            "least_requests",
            "hash(header:x-user-id)",
            "hash(client_ip)",
            "hash(claim:sub)",
            "hash(cookie:sid)",
        ] {
            assert_eq!(
                Balance::parse(text).unwrap().to_string(),
                text,
                "written as configured"
            );
        }
    }
}
