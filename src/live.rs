//! Live figures for the dashboard, kept in memory and bounded: per route and for the whole
//! gateway, the last 15 minutes in 10-second buckets (requests by status class and a
//! latency histogram), and the last 200 failed requests with why they failed (their texts
//! cut short). Recording is a few relaxed atomic adds on the request's own route; nothing
//! is allocated per request except for a failure's entry.

use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds per bucket.
pub const BUCKET_SECS: u64 = 10;
/// Buckets kept: 15 minutes.
pub const BUCKETS: usize = 90;
/// Upper bounds (ms) of the latency histogram's buckets; the last one is open.
pub const LATENCY_MS: [u32; 11] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];
/// Failed requests kept.
pub const ERRORS_KEPT: usize = 200;

/// One 10-second bucket.
#[derive(Default)]
struct Bucket {
    /// Which bucket of the process's life this slot holds now.
    number: AtomicU64,
    /// Requests by status class: 1xx-2xx, 3xx, 4xx, and 5xx with those that got no
    /// answer at all (reset, timed out).
    classes: [AtomicU32; 4],
    latency: [AtomicU32; LATENCY_MS.len() + 1],
}

/// 15 minutes of one route's (or the gateway's) requests: a fixed ring of buckets.
pub struct Ring {
    buckets: Box<[Bucket]>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }
}

impl Ring {
    /// Counts one finished request, `number` being its bucket (seconds of life / 10, plus
    /// one so that 0 means never used); `latency` is None for an upgraded connection (its
    /// time is the tunnel's life, not an answer's).
    fn record(&self, number: u64, status: u16, latency: Option<Duration>) {
        let bucket = &self.buckets[(number % BUCKETS as u64) as usize];
        let held = bucket.number.load(Relaxed);
        // A slot still holding an older bucket is emptied by whoever gets there first
        // (figures are approximate at a bucket's edge, never unbounded).
        if held != number
            && bucket
                .number
                .compare_exchange(held, number, Relaxed, Relaxed)
                .is_ok()
        {
            bucket.classes.iter().for_each(|c| c.store(0, Relaxed));
            bucket.latency.iter().for_each(|c| c.store(0, Relaxed));
        }
        let class = match status {
            1..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        bucket.classes[class].fetch_add(1, Relaxed);
        if let Some(latency) = latency {
            let ms = latency.as_millis().min(u32::MAX as u128) as u32;
            let slot = LATENCY_MS.partition_point(|bound| *bound < ms);
            bucket.latency[slot].fetch_add(1, Relaxed);
        }
    }

    /// The last `span` buckets up to `now`, oldest first.
    fn series(&self, now: u64, span: usize) -> Vec<Sample> {
        (0..span.min(BUCKETS))
            .rev()
            .map(|back| {
                let number = now.saturating_sub(back as u64);
                let bucket = &self.buckets[(number % BUCKETS as u64) as usize];
                let live = number > 0 && bucket.number.load(Relaxed) == number;
                let read = |c: &AtomicU32| if live { c.load(Relaxed) } else { 0 };
                Sample {
                    age: back as u64 * BUCKET_SECS,
                    classes: bucket.classes.each_ref().map(read),
                    latency: bucket.latency.each_ref().map(read),
                }
            })
            .collect()
    }
}

struct Sample {
    age: u64,
    classes: [u32; 4],
    latency: [u32; LATENCY_MS.len() + 1],
}

/// A latency percentile (ms, the bucket's upper bound) of a histogram; None when empty.
fn percentile(hist: &[u64], p: f64) -> Option<u32> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * p).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += *c;
        if seen >= want {
            // The open bucket is reported as its lower bound.
            return Some(
                *LATENCY_MS
                    .get(i)
                    .unwrap_or(&LATENCY_MS[LATENCY_MS.len() - 1]),
            );
        }
    }
    None
}

/// Figures of a ring over its last `span` buckets (`seconds` of them elapsed): requests/s,
/// error shares, percentiles, and the series for a chart.
fn figures(ring: &Ring, now: u64, span: usize, seconds: f64) -> Value {
    let series = ring.series(now, span);
    let mut classes = [0u64; 4];
    let mut hist = [0u64; LATENCY_MS.len() + 1];
    for s in &series {
        for (total, c) in classes.iter_mut().zip(s.classes) {
            *total += u64::from(c);
        }
        for (total, c) in hist.iter_mut().zip(s.latency) {
            *total += u64::from(c);
        }
    }
    let requests: u64 = classes.iter().sum();
    let seconds = seconds.max(1.0);
    let points: Vec<Value> = series
        .iter()
        .map(|s| {
            json!({
                "age_s": s.age,
                "by_class": s.classes,
                "p50_ms": percentile(&s.latency.map(u64::from), 0.5),
                "p99_ms": percentile(&s.latency.map(u64::from), 0.99),
            })
        })
        .collect();
    json!({
        "requests": requests,
        "rps": requests as f64 / seconds,
        "error_pct": if requests == 0 { 0.0 } else { classes[3] as f64 * 100.0 / requests as f64 },
        "client_error_pct": if requests == 0 { 0.0 } else { classes[2] as f64 * 100.0 / requests as f64 },
        "p50_ms": percentile(&hist, 0.5),
        "p99_ms": percentile(&hist, 0.99),
        "series": points,
    })
}

/// A failed request, as the Errors page lists it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub request_id: String,
    pub method: String,
    pub host: Option<String>,
    pub path: String,
    pub route: Option<String>,
    pub status: u16,
    pub code: Option<&'static str>,
    /// Why, in words (the gateway's message, or what the upstream answered).
    pub reason: String,
    /// The `sub` claim or API-key consumer, when known.
    pub user: Option<String>,
}

impl Failure {
    pub fn view(&self) -> Value {
        json!({
            "at_ms": self.at_ms, "request_id": self.request_id, "method": self.method,
            "host": self.host, "path": self.path, "route": self.route, "status": self.status,
            "code": self.code, "reason": self.reason, "user": self.user,
        })
    }
}

/// Everything the dashboard keeps: one ring per route name (kept across reloads), one for
/// the gateway, and the last failures.
pub struct Live {
    started: Instant,
    all: Ring,
    routes: Mutex<HashMap<String, Arc<Ring>>>,
    failures: Mutex<VecDeque<Failure>>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            started: Instant::now(),
            all: Ring::default(),
            routes: Mutex::default(),
            failures: Mutex::new(VecDeque::with_capacity(ERRORS_KEPT)),
        }
    }
}

impl Live {
    /// The ring of a route (made on first use; the same one after a reload).
    pub fn ring(&self, route: &str) -> Arc<Ring> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.entry(route.to_string()).or_default().clone()
    }

    /// Drops the rings of routes the config no longer has.
    pub fn keep_only<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = names.collect();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.retain(|name, _| keep.contains(name.as_str()));
    }

    /// How long the process has kept figures (its uptime).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn number(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() / BUCKET_SECS + 1
    }

    /// Counts a finished request that ended at `ended` and took `elapsed` (on `ring`, its
    /// route's).
    pub fn record(&self, ring: Option<&Ring>, ended: Instant, elapsed: Duration, status: u16) {
        let number = self.number(ended);
        let latency = (status != 101).then_some(elapsed);
        self.all.record(number, status, latency);
        if let Some(ring) = ring {
            ring.record(number, status, latency);
        }
    }

    /// Keeps a failed request (the oldest one goes past [`ERRORS_KEPT`]); its texts are
    /// cut to [`MAX_TEXT`] bytes, so the list stays small whatever clients send.
    pub fn failed(&self, mut failure: Failure) {
        for text in [
            &mut failure.path,
            &mut failure.reason,
            &mut failure.request_id,
        ] {
            cut(text);
        }
        for text in [&mut failure.host, &mut failure.user].into_iter().flatten() {
            cut(text);
        }
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= ERRORS_KEPT {
            failures.pop_front();
        }
        failures.push_back(failure);
    }

    /// The kept failures, newest first.
    pub fn failures(&self) -> Vec<Failure> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.iter().rev().cloned().collect()
    }

    fn now(&self) -> u64 {
        self.number(Instant::now())
    }

    /// The gateway's figures over the last `minutes`.
    pub fn gateway(&self, minutes: u64) -> Value {
        figures(&self.all, self.now(), span(minutes), self.covered(minutes))
    }

    /// A route's figures over the last `minutes` (zeros for a route not seen yet).
    pub fn route(&self, name: &str, minutes: u64) -> Value {
        let ring = self.ring(name);
        figures(&ring, self.now(), span(minutes), self.covered(minutes))
    }

    /// Seconds the last `minutes` of buckets really span: the newest is still filling,
    /// and the process may be younger than the window.
    fn covered(&self, minutes: u64) -> f64 {
        let up = self.uptime().as_secs_f64();
        let into_bucket = up % BUCKET_SECS as f64;
        let whole = (span(minutes) as u64 - 1) * BUCKET_SECS;
        (whole as f64 + into_bucket).min(up)
    }

    /// Bytes the rings and the failure list hold, their strings included.
    #[cfg(test)]
    fn footprint(&self) -> usize {
        let rings = self.routes.lock().map_or(0, |r| r.len()) + 1;
        let failures = self.failures.lock().unwrap();
        let strings: usize = failures
            .iter()
            .map(|f| {
                let opt = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
                f.request_id.capacity()
                    + f.method.capacity()
                    + f.path.capacity()
                    + f.reason.capacity()
                    + opt(&f.host)
                    + opt(&f.route)
                    + opt(&f.user)
            })
            .sum();
        rings * BUCKETS * std::mem::size_of::<Bucket>()
            + failures.capacity() * std::mem::size_of::<Failure>()
            + strings
    }
}

/// Longest text a kept failure holds (a path, a host, a reason).
pub const MAX_TEXT: usize = 512;

/// Cuts a text to [`MAX_TEXT`] bytes, on a character boundary.
fn cut(text: &mut String) {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.shrink_to_fit();
    }
}

fn span(minutes: u64) -> usize {
    ((minutes * 60 / BUCKET_SECS) as usize).clamp(1, BUCKETS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_by_class_and_percentiles_follow_the_histogram() {
        let ring = Ring::default();
        for i in 0..100 {
            let status = if i < 90 { 200 } else { 503 };
            let ms = if i < 50 { 3 } else { 40 };
            ring.record(5, status, Some(Duration::from_millis(ms)));
        }
        let f = figures(&ring, 5, 30, 300.0);
        assert_eq!(f["requests"], 100);
        assert_eq!(f["error_pct"], 10.0);
        assert_eq!(f["rps"], 100.0 / 300.0);
        assert_eq!(f["p50_ms"], 5);
        assert_eq!(f["p99_ms"], 50);
        assert_eq!(f["series"].as_array().unwrap().len(), 30);
        // A request that got no answer is a failure, and an upgrade adds no latency.
        ring.record(5, 0, None);
        let f = figures(&ring, 5, 30, 300.0);
        assert_eq!(
            (f["requests"].clone(), f["p99_ms"].clone()),
            (101.into(), 50.into())
        );
        assert!((f["error_pct"].as_f64().unwrap() - 1100.0 / 101.0).abs() < 1e-9);
    }

    #[test]
    fn a_slot_is_reused_for_a_later_bucket_and_old_buckets_read_as_empty() {
        let ring = Ring::default();
        ring.record(1, 200, Some(Duration::ZERO));
        ring.record(1 + BUCKETS as u64, 500, Some(Duration::ZERO));
        let f = figures(&ring, 1 + BUCKETS as u64, BUCKETS, 900.0);
        assert_eq!(f["requests"], 1, "the slot now holds the later bucket only");
        assert_eq!(f["error_pct"], 100.0);
    }

    #[test]
    fn memory_stays_fixed_whatever_the_traffic() {
        let live = Live::default();
        let ring = live.ring("api");
        let started = Instant::now();
        let before = live.footprint();
        for i in 0..100_000u32 {
            live.record(
                Some(&ring),
                Instant::now(),
                started.elapsed(),
                if i % 3 == 0 { 404 } else { 200 },
            );
            if i % 3 == 0 {
                live.failed(Failure {
                    at_ms: u64::from(i),
                    request_id: i.to_string(),
                    method: "GET".into(),
                    host: None,
                    path: format!("/missing/{i}/{}", "é".repeat(1000)),
                    route: None,
                    status: 404,
                    code: Some("route_not_found"),
                    reason: "no route".into(),
                    user: None,
                });
            }
        }
        assert_eq!(live.failures().len(), ERRORS_KEPT);
        assert_eq!(live.failures()[0].request_id, "99999", "newest first");
        let bound = before + ERRORS_KEPT * (MAX_TEXT + 64);
        let footprint = live.footprint();
        assert!(footprint <= bound, "{footprint} bytes after 100k requests");
        assert_eq!(live.gateway(15)["requests"], 100_000);
    }
}
