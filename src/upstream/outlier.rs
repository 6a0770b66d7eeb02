//! Outlier ejection (passive health): a target that fails `consecutive_failures` times in
//! a row (5xx answers, resets, timeouts, connect failures) is taken out of its upstream for
//! `base_ejection` × the times it has been ejected, unless `max_ejected` of the upstream's
//! targets are out already. It comes back when its time is up; a success then clears its
//! count, and a success long after its last return clears its history too. Unlike the
//! breaker it sends no probes and lengthens the ejection of a repeat offender.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest ejection is this many times `base_ejection` (Envoy caps it too).
pub const MAX_TIMES: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    /// At most this share of an upstream's targets out at once, in thousandths.
    pub max_ejected_per_mille: u32,
}

/// A target's ejection state (kept across reloads with the target).
pub struct Outlier {
    epoch: Instant,
    consecutive: AtomicU32,
    times: AtomicU32,
    /// Milliseconds from `epoch` until which the target is out (0: never ejected).
    until: AtomicU64,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            epoch: Instant::now(),
            consecutive: AtomicU32::new(0),
            times: AtomicU32::new(0),
            until: AtomicU64::new(0),
        }
    }
}

impl Outlier {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How long the target stays out, if it is out.
    pub fn ejected_for(&self) -> Option<Duration> {
        let (until, now) = (self.until.load(Ordering::Relaxed), self.now_ms());
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn is_ejected(&self) -> bool {
        self.until.load(Ordering::Relaxed) > self.now_ms()
    }

    pub fn times_ejected(&self) -> u32 {
        self.times.load(Ordering::Relaxed)
    }

    fn succeeded(&self, cfg: &OutlierConfig) {
        self.consecutive.store(0, Ordering::Relaxed);
        let back_since = self.until.load(Ordering::Relaxed);
        let long_ago = cfg.base_ejection.as_millis() as u64;
        if back_since != 0 && self.now_ms() > back_since + long_ago {
            self.times.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; true when it reaches the threshold (the caller decides to eject).
    fn failed(&self, cfg: &OutlierConfig) -> bool {
        !self.is_ejected()
            && self.consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= cfg.consecutive_failures
    }

    /// Takes the target out for `base_ejection` × the times it has been out (at most
    /// [`MAX_TIMES`] times as long).
    fn eject(&self, cfg: &OutlierConfig) -> Duration {
        let times = self.times.fetch_add(1, Ordering::Relaxed) + 1;
        let out_for = cfg.base_ejection.saturating_mul(times.min(MAX_TIMES));
        self.until.store(
            self.now_ms() + out_for.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.consecutive.store(0, Ordering::Relaxed);
        out_for
    }
}

/// An upstream's outlier detection: its settings and its targets' states, so a failure can
/// count the targets already out.
pub struct Ejector {
    pub cfg: OutlierConfig,
    pub targets: Vec<Arc<super::Target>>,
    /// Counting the targets out and ejecting one is one step, so failures at once cannot
    /// all see room under `max_ejected` (rare: only at a threshold).
    ejecting: std::sync::Mutex<()>,
}

impl Ejector {
    pub fn new(cfg: OutlierConfig, targets: Vec<Arc<super::Target>>) -> Ejector {
        Ejector {
            cfg,
            targets,
            ejecting: std::sync::Mutex::default(),
        }
    }

    /// Records a try's outcome on `target`; an ejection is logged and returned.
    pub fn record(
        &self,
        target: &super::Target,
        success: bool,
        upstream: &str,
    ) -> Option<Duration> {
        if success {
            target.outlier.succeeded(&self.cfg);
            return None;
        }
        if !target.outlier.failed(&self.cfg) {
            return None;
        }
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let out = self
            .targets
            .iter()
            .filter(|t| t.outlier.is_ejected())
            .count();
        let allowed = self.targets.len() * self.cfg.max_ejected_per_mille as usize / 1000;
        if out >= allowed {
            tracing::warn!(upstream, target = %target.label, "outlier not ejected: max_ejected targets are out already");
            return None;
        }
        let out_for = target.outlier.eject(&self.cfg);
        tracing::warn!(upstream, target = %target.label, seconds = out_for.as_secs(), "outlier target ejected");
        Some(out_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_offenders_stay_out_longer_and_max_ejected_holds() {
        let cfg = OutlierConfig {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(30),
            max_ejected_per_mille: 500,
        };
        let targets: Vec<_> = ["127.0.0.1:1", "127.0.0.1:2"]
            .iter()
            .map(|t| Arc::new(super::super::Target::parse(t).unwrap()))
            .collect();
        let e = Ejector::new(cfg, targets.clone());
        assert_eq!(e.record(&targets[0], false, "u"), None);
        assert_eq!(
            e.record(&targets[0], false, "u"),
            Some(Duration::from_secs(30))
        );
        assert!(targets[0].outlier.is_ejected());
        // Half of two targets are out: the other is never ejected.
        e.record(&targets[1], false, "u");
        assert_eq!(e.record(&targets[1], false, "u"), None);
        assert!(!targets[1].outlier.is_ejected());
        // Back (its time made up), then out again for twice as long.
        targets[0].outlier.until.store(0, Ordering::Relaxed);
        e.record(&targets[0], false, "u");
        assert_eq!(
            e.record(&targets[0], false, "u"),
            Some(Duration::from_secs(60))
        );
    }
}
