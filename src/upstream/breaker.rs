//! Circuit breaker per target: closed → open after `consecutive_failures` (or a failure
//! ratio over a window); open fails fast; after `open_for`, half-open admits
//! `half_open_requests` probes; a probe's success closes it, its failure reopens it.
//! The closed state costs one atomic load per request; transitions take a lock.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    /// (ratio, window, minimum requests in the window)
    pub failure_ratio: Option<(f64, Duration, u32)>,
    pub open_for: Duration,
    pub half_open_requests: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
    Rejected,
}

struct Window {
    start: Instant,
    total: u32,
    failures: u32,
}

/// Whose breaker this is, for its log lines.
#[derive(Clone, Copy)]
pub struct Who<'a> {
    pub upstream: &'a str,
    pub addr: &'a str,
}

pub struct Breaker {
    state: AtomicU8,
    consecutive: AtomicU32,
    opened_at: AtomicU64,
    /// When it last left the closed state (ms), kept through half-open probes that fail.
    tripped_at: AtomicU64,
    probes: AtomicU32,
    window: Mutex<Window>,
    transition: Mutex<()>,
    epoch: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        let now = Instant::now();
        Breaker {
            state: AtomicU8::new(State::Closed as u8),
            consecutive: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            tripped_at: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            window: Mutex::new(Window {
                start: now,
                total: 0,
                failures: 0,
            }),
            transition: Mutex::new(()),
            epoch: now,
        }
    }
}

impl Breaker {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// How long the breaker has not been closed (open, or half-open between probes), in
    /// ms; None while closed.
    pub fn open_for_ms(&self) -> Option<u64> {
        let opened = self.tripped_at.load(Ordering::Acquire);
        (self.state() != State::Closed).then(|| self.millis().saturating_sub(opened))
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether this target may be tried now, without taking a probe slot.
    pub fn may_admit(&self, cfg: &BreakerConfig) -> bool {
        match self.state() {
            State::Closed => true,
            State::Open => {
                self.millis()
                    >= self.opened_at.load(Ordering::Relaxed) + cfg.open_for.as_millis() as u64
            }
            State::HalfOpen => self.probes.load(Ordering::Relaxed) < cfg.half_open_requests,
        }
    }

    /// Admits a request (taking a probe slot when half-open) or rejects it.
    pub fn admit(&self, cfg: &BreakerConfig, who: Who) -> Admission {
        if self.state() == State::Closed {
            return Admission::Normal;
        }
        let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        if self.state() == State::Open {
            if !self.may_admit(cfg) {
                return Admission::Rejected;
            }
            self.probes.store(0, Ordering::Relaxed);
            self.state.store(State::HalfOpen as u8, Ordering::Release);
            tracing::info!(
                upstream = who.upstream,
                addr = who.addr,
                "circuit half-open: probing"
            );
        }
        match self.state() {
            State::Closed => Admission::Normal,
            State::HalfOpen if self.probes.load(Ordering::Relaxed) < cfg.half_open_requests => {
                self.probes.fetch_add(1, Ordering::Relaxed);
                Admission::Probe
            }
            _ => Admission::Rejected,
        }
    }

    /// Records a finished try. `success: None` releases a probe slot without a verdict.
    pub fn record(
        &self,
        cfg: &BreakerConfig,
        admission: Admission,
        success: Option<bool>,
        who: Who,
    ) {
        if admission == Admission::Probe {
            let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
            self.probes.fetch_sub(1, Ordering::Relaxed);
            match success {
                Some(true) => self.close(who),
                Some(false) => self.open(who),
                None => {}
            }
            return;
        }
        let Some(success) = success else { return };
        if self.state() != State::Closed {
            return;
        }
        if success {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Relaxed);
            }
        } else if self.consecutive.fetch_add(1, Ordering::Relaxed) + 1 >= cfg.consecutive_failures {
            let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
            self.open(who);
            return;
        }
        if let Some((ratio, window, min)) = cfg.failure_ratio {
            if self.window_trips(success, ratio, window, min) {
                let _t = self.transition.lock().unwrap_or_else(|e| e.into_inner());
                self.open(who);
            }
        }
    }

    fn window_trips(&self, success: bool, ratio: f64, window: Duration, min: u32) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.start.elapsed() >= window {
            *w = Window {
                start: Instant::now(),
                total: 0,
                failures: 0,
            };
        }
        w.total += 1;
        w.failures += u32::from(!success);
        w.total >= min && f64::from(w.failures) / f64::from(w.total) >= ratio
    }

    fn open(&self, who: Who) {
        if self.state() != State::Open {
            tracing::warn!(upstream = who.upstream, addr = who.addr, "circuit opened");
        }
        if self.state() == State::Closed {
            self.tripped_at.store(self.millis(), Ordering::Relaxed);
        }
        self.opened_at.store(self.millis(), Ordering::Relaxed);
        self.state.store(State::Open as u8, Ordering::Release);
    }

    fn close(&self, who: Who) {
        self.consecutive.store(0, Ordering::Relaxed);
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = Window {
            start: Instant::now(),
            total: 0,
            failures: 0,
        };
        self.state.store(State::Closed as u8, Ordering::Release);
        tracing::info!(upstream = who.upstream, addr = who.addr, "circuit closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHO: Who = Who {
        upstream: "u",
        addr: "127.0.0.1:1",
    };

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: None,
            open_for: Duration::from_millis(50),
            half_open_requests: 1,
        }
    }

    #[test]
    fn opens_probes_and_closes() {
        let (b, c) = (Breaker::default(), cfg());
        for _ in 0..2 {
            b.record(&c, Admission::Normal, Some(false), WHO);
        }
        b.record(&c, Admission::Normal, Some(true), WHO);
        assert_eq!(b.state(), State::Closed, "a success resets the count");
        for _ in 0..3 {
            b.record(&c, Admission::Normal, Some(false), WHO);
        }
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(&c, WHO), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(&c, WHO), Admission::Probe);
        assert_eq!(b.admit(&c, WHO), Admission::Rejected, "one probe at a time");
        b.record(&c, Admission::Probe, Some(false), WHO);
        assert_eq!(b.state(), State::Open, "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(&c, WHO), Admission::Probe);
        b.record(&c, Admission::Probe, Some(true), WHO);
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn failure_ratio_opens() {
        let c = BreakerConfig {
            consecutive_failures: 100,
            failure_ratio: Some((0.5, Duration::from_secs(10), 4)),
            ..cfg()
        };
        let b = Breaker::default();
        for ok in [true, false, true, false] {
            b.record(&c, Admission::Normal, Some(ok), WHO);
        }
        assert_eq!(b.state(), State::Open);
    }
}
