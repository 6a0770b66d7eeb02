//! Logging setup, Prometheus metrics and the access log.
//!
//! Logs go to stderr through `tracing` (Pingora's `log` records are captured too); the level
//! comes from `PORTICO_LOG` (e.g. `debug`, `portico=debug,pingora=warn`). The access log is
//! one JSON object per line on stdout, written by a dedicated thread in batches, so a
//! request never waits on the terminal or pipe.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::io::Write;
use std::sync::{LazyLock, Mutex, MutexGuard, Once};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let env = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // The filter states its most verbose level, so `log` records (Pingora's `debug!` and
    // `trace!` calls on the hot path) below it are dropped by a level check, never dispatched.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(env)
        .try_init();
}

/// Access-log lines go to a shared buffer that a writer thread flushes every
/// [`FLUSH_EVERY`]: a request never makes a syscall or wakes a thread for its line. When the
/// buffer is full (the output is stuck), lines are dropped and counted.
static ACCESS_BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static ACCESS_WRITER: Once = Once::new();

const FLUSH_EVERY: Duration = Duration::from_millis(25);
const MAX_BUFFER: usize = 16 * 1024 * 1024;

fn access_buffer() -> MutexGuard<'static, Vec<u8>> {
    ACCESS_BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Appends one line, which `write` puts into the buffer, to the access log on stdout.
pub fn access_log(write: impl FnOnce(&mut Vec<u8>)) {
    ACCESS_WRITER.call_once(|| {
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(write_lines)
            .expect("spawn the access-log writer");
    });
    let mut buffer = access_buffer();
    if buffer.len() >= MAX_BUFFER {
        METRICS.access_log_dropped.inc();
        return;
    }
    write(&mut buffer);
    buffer.push(b'\n');
}

fn write_lines() {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        std::mem::swap(&mut *access_buffer(), &mut spare);
        write_out(&mut spare);
    }
}

/// Writes out what is buffered; called at exit so the last requests are logged too.
pub fn flush_access_log() {
    let mut pending = std::mem::take(&mut *access_buffer());
    write_out(&mut pending);
}

fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(lines);
        let _ = out.flush();
        lines.clear();
    }
}

/// The process-wide metrics; label values come from config names, never raw request data.
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub target_healthy: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    pub build_info: IntGaugeVec,
    pub access_log_dropped: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        register(
            &r,
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
        )
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        register(
            &r,
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
        )
    };
    let histogram = |name: &str, help: &str| {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        register(&r, HistogramVec::new(opts, &["route"]).expect("valid"))
    };
    Metrics {
        requests: counter(
            "portico_requests_total",
            "Requests by route, upstream, method and status code.",
            &["route", "upstream", "method", "status"],
        ),
        duration: histogram(
            "portico_request_duration_seconds",
            "Whole-request time, from the request head to the last response byte.",
        ),
        upstream_duration: histogram(
            "portico_upstream_duration_seconds",
            "Time from sending the request upstream to its response head.",
        ),
        in_flight: register(
            &r,
            IntGauge::new("portico_requests_in_flight", "Requests being handled.").expect("valid"),
        ),
        target_healthy: gauge(
            "portico_upstream_target_healthy",
            "1 when the target passes its health checks (or has none).",
            &["upstream", "target"],
        ),
        breaker_state: gauge(
            "portico_upstream_breaker_state",
            "Circuit state per target: 0 closed, 1 open, 2 half-open.",
            &["upstream", "target"],
        ),
        rate_limited: counter(
            "portico_rate_limited_total",
            "Requests refused by a rate limit, by route.",
            &["route"],
        ),
        auth_failures: counter(
            "portico_auth_failures_total",
            "Requests refused by authentication or authorization, by route and reason.",
            &["route", "reason"],
        ),
        reloads: counter(
            "portico_config_reloads_total",
            "Config reloads by result (ok, failed).",
            &["result"],
        ),
        last_reload_success: register(
            &r,
            Gauge::new(
                "portico_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load.",
            )
            .expect("valid"),
        ),
        build_info: gauge(
            "portico_build_info",
            "Always 1; labels carry the version and active config hash.",
            &["version", "config_hash"],
        ),
        access_log_dropped: register(
            &r,
            IntCounter::new(
                "portico_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind.",
            )
            .expect("valid"),
        ),
        registry: r,
    }
});

/// Label value for a method: the standard ones as they are, anything else `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    KNOWN
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or("OTHER")
}

/// Refreshes the state gauges from the active snapshot and renders the text format.
pub fn render(snapshot: &crate::snapshot::Snapshot) -> String {
    let m = &*METRICS;
    m.target_healthy.reset();
    m.breaker_state.reset();
    m.build_info.reset();
    m.build_info
        .with_label_values(&[crate::admin::VERSION, snapshot.hash.as_str()])
        .set(1);
    for (name, upstream) in &snapshot.upstreams {
        for t in &upstream.targets {
            let labels = [name.as_str(), t.label.as_str()];
            m.target_healthy
                .with_label_values(&labels)
                .set(i64::from(t.health.is_healthy()));
            m.breaker_state
                .with_label_values(&labels)
                .set(t.breaker.state() as i64);
        }
    }
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
