//! Active health checks: an HTTP GET per target every `interval`; `unhealthy_after`
//! failures in a row take a target out, `healthy_after` successes bring it back.

use super::Target;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, PartialEq, Hash)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

/// A target is healthy until checks say otherwise.
pub struct Health {
    healthy: AtomicBool,
    ok_streak: AtomicU32,
    fail_streak: AtomicU32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// `upstream` and `addr` name the target in the log (a field called `target` would
    /// collide with the record's own, the module it comes from).
    fn observe(&self, ok: bool, cfg: &HealthConfig, upstream: &str, addr: &str) {
        if ok {
            self.fail_streak.store(0, Ordering::Relaxed);
            let streak = self.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && streak >= cfg.healthy_after {
                self.healthy.store(true, Ordering::Relaxed);
                tracing::info!(upstream, addr, "target healthy again");
            }
        } else {
            self.ok_streak.store(0, Ordering::Relaxed);
            let streak = self.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && streak >= cfg.unhealthy_after {
                self.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(upstream, addr, "target unhealthy: removed from balancing");
            }
        }
    }
}

/// One probe: 2xx/3xx within the timeout is healthy.
async fn probe(target: &Target, cfg: &HealthConfig) -> bool {
    let Some(addr) = target.addrs().first().copied() else {
        return false;
    };
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portico-health-check\r\nConnection: close\r\n\r\n",
            cfg.path, target.label
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut len = 0;
        while len < 12 {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let line = std::str::from_utf8(&buf[..len]).ok()?;
        let status: u16 = line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()?;
        Some((200..400).contains(&status))
    };
    matches!(
        tokio::time::timeout(cfg.timeout, attempt).await,
        Ok(Some(true))
    )
}

/// One health-check step for a target: probes it and records the result (the loop that
/// calls this runs in `app`).
pub async fn check(upstream: &str, target: &Target, cfg: &HealthConfig) {
    let ok = probe(target, cfg).await;
    target.health.observe(ok, cfg, upstream, &target.label);
}
