//! Logging setup, Prometheus metrics and the access log.
//!
//! Logs go to stderr through `tracing` (Pingora's `log` records are captured too); the level
//! comes from `PORTICO_LOG` (e.g. `debug`, `portico=debug,pingora=warn`). Access-log lines
//! are `tracing` events with target `portico::access`, written as one JSON object per line
//! to stdout by a dedicated writer thread in batches, so a request never waits on the
//! terminal or pipe.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{filter, EnvFilter};

pub const ACCESS_TARGET: &str = "portico::access";

pub fn init() {
    let env = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Every filter states its most verbose level, so `log` records (Pingora's `debug!` and
    // `trace!` calls on the hot path) below it are dropped by a level check, never dispatched.
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(env.add_directive(format!("{ACCESS_TARGET}=off").parse().expect("valid")));
    let access = AccessLayer::spawn()
        .with_filter(filter::Targets::new().with_target(ACCESS_TARGET, tracing::Level::INFO));
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(access)
        .try_init();
}

/// Appends access-log lines to a shared buffer that a writer thread flushes every
/// [`FLUSH_EVERY`]: a request never makes a syscall or wakes a thread for its line. When
/// the buffer is full (the output is stuck), lines are dropped and counted.
struct AccessLayer {
    buffer: Arc<Mutex<String>>,
}

const FLUSH_EVERY: Duration = Duration::from_millis(25);
const MAX_BUFFER: usize = 16 * 1024 * 1024;

impl AccessLayer {
    fn spawn() -> AccessLayer {
        let buffer = Arc::new(Mutex::new(String::with_capacity(64 * 1024)));
        let shared = buffer.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&shared))
            .expect("spawn the access-log writer");
        AccessLayer { buffer }
    }
}

fn write_lines(buffer: &Mutex<String>) {
    let mut spare = String::with_capacity(64 * 1024);
    let mut out = std::io::stdout();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        {
            let mut shared = buffer.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *shared, &mut spare);
        }
        if !spare.is_empty() {
            let _ = out.write_all(spare.as_bytes());
            let _ = out.flush();
            spare.clear();
        }
    }
}

/// Writes an event's message straight into the buffer, followed by a newline.
struct Append<'a>(&'a mut String);

impl Visit for Append<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = writeln!(self.0, "{value:?}");
        }
    }
}

impl<S: Subscriber> Layer<S> for AccessLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() >= MAX_BUFFER {
            METRICS.access_log_dropped.inc();
            return;
        }
        event.record(&mut Append(&mut buffer));
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
