//! Logging setup, Prometheus metrics and the access log.
//!
//! Logs go to stderr through `tracing` (Pingora's `log` records are captured too); the level
//! comes from `PORTICO_LOG` (e.g. `debug`, `portico=debug,pingora=warn`), the format from
//! `server.log_format` or `PORTICO_LOG_FORMAT` (text or one JSON object per line). The access log is
//! one JSON object per line on stdout, written by a dedicated thread in batches, so a
//! request never waits on the terminal or pipe.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// Pingora modules whose records are quieted unless the filter names them. Its proxy
/// error lines quote the request's query and the error's context (for a malformed upstream
/// head: the raw bytes, cookies and all): Portico logs each failed request without request
/// data. Its cache warns, once per process (every `check`), that no header compression
/// dictionary is loaded: a dictionary only shrinks entries on disk, and Portico's are in
/// memory.
const QUIETED: [(&str, &str); 2] = [("pingora_proxy", "off"), ("pingora_cache::meta", "error")];

/// The log filter for `PORTICO_LOG` (default `info`), with [`QUIETED`] added.
pub fn log_filter(setting: Option<&str>) -> String {
    let setting = setting.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let mut filter = setting.to_string();
    for (module, level) in QUIETED {
        if !setting.contains(module) {
            filter.push_str(&format!(",{module}={level}"));
        }
    }
    filter
}

/// How the gateway's own log records are written to stderr.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (a file, a pipe, a container's log collector).
    #[default]
    Auto,
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per record and line: timestamp, level, target, message, fields.
    Json,
}

impl LogFormat {
    /// `PORTICO_LOG_FORMAT` (read at start), which wins over the config.
    pub fn from_env() -> Option<LogFormat> {
        let value = std::env::var("PORTICO_LOG_FORMAT").ok()?;
        serde_yaml::from_str(&value).ok()
    }
}

/// Sets up stderr logging once, before the config is compiled (a change of format needs a
/// restart).
pub fn init(format: LogFormat) {
    let setting = std::env::var("PORTICO_LOG").ok();
    let env = EnvFilter::try_new(log_filter(setting.as_deref()))
        .unwrap_or_else(|_| EnvFilter::new(log_filter(None)));
    // The filter states its most verbose level, so `log` records (Pingora's `debug!` and
    // `trace!` calls on the hot path) below it are dropped by a level check, never dispatched.
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(env);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Auto if !terminal => builder.json().flatten_event(true).try_init(),
        // Colour codes only for a person at a terminal, never into files or collectors.
        _ => builder.with_ansi(terminal).try_init(),
    };
}

/// Access-log lines go to a buffer that a writer thread flushes every [`FLUSH_EVERY`]: a
/// request never makes a syscall or wakes a thread for its line. When the buffer is full
/// (the output is stuck), lines are dropped and counted.
pub struct AccessLog {
    buffer: Arc<Mutex<Vec<u8>>>,
    /// Held by whoever is writing lines out (the writer thread, or `flush` at exit), so
    /// exiting waits for lines the writer has taken but not yet written.
    writing: Arc<Mutex<()>>,
    writer: Once,
    dropped: IntCounter,
}

const FLUSH_EVERY: Duration = Duration::from_millis(25);
const MAX_BUFFER: usize = 16 * 1024 * 1024;

fn lock(buffer: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    buffer.lock().unwrap_or_else(|e| e.into_inner())
}

impl AccessLog {
    pub fn new(metrics: &Metrics) -> AccessLog {
        AccessLog {
            buffer: Arc::default(),
            writing: Arc::default(),
            writer: Once::new(),
            dropped: metrics.access_log_dropped.clone(),
        }
    }

    /// Appends one line, which `write` puts into the buffer, to the access log on stdout.
    pub fn line(&self, write: impl FnOnce(&mut Vec<u8>)) {
        self.writer.call_once(|| {
            let (buffer, writing) = (self.buffer.clone(), self.writing.clone());
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || write_lines(&buffer, &writing))
                .expect("spawn the access-log writer");
        });
        let mut buffer = lock(&self.buffer);
        if buffer.len() >= MAX_BUFFER {
            self.dropped.inc();
            return;
        }
        write(&mut buffer);
        buffer.push(b'\n');
    }

    /// Writes out what is buffered; called at exit so the last requests are logged too.
    /// It waits (a second at most: a stuck output must not hold the exit) for a write the
    /// writer thread has under way.
    pub fn flush(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let _writing = loop {
            match self.writing.try_lock() {
                Ok(guard) => break Some(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => break Some(e.into_inner()),
                Err(_) if std::time::Instant::now() >= deadline => break None,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let mut pending = std::mem::take(&mut *lock(&self.buffer));
        write_out(&mut pending);
    }
}

fn write_lines(buffer: &Mutex<Vec<u8>>, writing: &Mutex<()>) {
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(FLUSH_EVERY);
        // Requests append under `buffer` only; `writing` spans the swap and the write, so
        // a flush at exit never misses lines taken here.
        let _writing = writing.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *lock(buffer), &mut spare);
        write_out(&mut spare);
    }
}

fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(lines);
        let _ = out.flush();
        lines.clear();
    }
}

/// Metrics and the access log of one gateway (no process globals: two gateways in one
/// process keep their own).
pub struct Telemetry {
    pub metrics: Metrics,
    pub access_log: AccessLog,
}

impl Telemetry {
    pub fn new() -> Arc<Telemetry> {
        let metrics = Metrics::new();
        let access_log = AccessLog::new(&metrics);
        Arc::new(Telemetry {
            metrics,
            access_log,
        })
    }
}

/// A gateway's metrics; label values come from config names, never raw request data.
pub struct Metrics {
    pub registry: Registry,
    /// Every metric registered here, for the reference.
    pub catalog: Vec<MetricDoc>,
    /// The dashboard's figures (`live`): rings and the last failures.
    pub live: Arc<crate::live::Live>,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub in_flight: IntGauge,
    pub target_healthy: IntGaugeVec,
    pub target_ejected: IntGaugeVec,
    pub breaker_state: IntGaugeVec,
    pub rate_limited: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub password_checks: IntCounterVec,
    pub quota_unchecked: IntCounterVec,
    pub reloads: IntCounterVec,
    pub last_reload_success: Gauge,
    /// Per file of the config: 1 when its current text is live, 0 when it is refused.
    pub config_file_ok: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub access_log_dropped: IntCounter,
    pub aggregate_calls: IntCounterVec,
    pub retries: IntCounterVec,
    pub aggregate_duration: HistogramVec,
    pub mirror_requests: IntCounterVec,
    pub mirror_latency_difference: HistogramVec,
    pub redis_connected: IntGauge,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub connections_timed_out: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub upgraded_open: IntGauge,
    pub certificate_expiry: IntGaugeVec,
    pub upgrades: IntCounterVec,
    pub cache_size: IntGaugeVec,
    pub cache_evictions: IntCounterVec,
}

/// What the metrics reference says of one metric (`portico reference metrics`).
#[derive(Debug, Clone)]
pub struct MetricDoc {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

/// Registers metrics and notes each one for the reference: a registry cannot list what a
/// vector without children holds.
struct Registrar {
    registry: Registry,
    catalog: std::cell::RefCell<Vec<MetricDoc>>,
}

impl Registrar {
    fn add<T: prometheus::core::Collector + Clone + 'static>(&self, metric: T) -> T {
        use prometheus::proto::MetricType;
        for (desc, family) in metric.desc().iter().zip(metric.collect()) {
            let kind = match family.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                _ => "untyped",
            };
            self.catalog.borrow_mut().push(MetricDoc {
                name: desc.fq_name.clone(),
                kind,
                labels: desc.variable_labels.clone(),
                help: desc.help.clone(),
            });
        }
        self.registry
            .register(Box::new(metric.clone()))
            .expect("metric names are unique");
        metric
    }
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Symmetric around 0: a shadow may be slower or faster than its primary.
const DIFFERENCE_BUCKETS: [f64; 14] = [
    -5.0, -1.0, -0.25, -0.1, -0.05, -0.01, -0.001, 0.001, 0.01, 0.05, 0.1, 0.25, 1.0, 5.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registrar {
            registry: Registry::new(),
            catalog: Default::default(),
        };
        // CPU, memory, open file descriptors and threads of this process.
        let _ = r.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        let counter = |name: &str, help: &str, labels: &[&str]| {
            r.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            r.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"))
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            r.add(HistogramVec::new(opts, labels).expect("valid"))
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
                &["route"],
            ),
            upstream_duration: histogram(
                "portico_upstream_duration_seconds",
                "Time from sending the request upstream to its response head.",
                &["route", "upstream"],
            ),
            in_flight: r.add(
                IntGauge::new("portico_requests_in_flight", "Requests being handled.")
                    .expect("valid"),
            ),
            target_healthy: gauge(
                "portico_upstream_target_healthy",
                "1 when the target passes its health checks (or has none).",
                &["upstream", "target"],
            ),
            target_ejected: gauge(
                "portico_upstream_target_ejected",
                "1 while outlier detection keeps the target out (upstreams with `outlier` only).",
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
            password_checks: counter(
                "portico_auth_password_checks_total",
                "Passwords checked against their hash (bcrypt, SHA-512-crypt), by auth policy.",
                &["policy"],
            ),
            quota_unchecked: counter(
                "portico_quota_unchecked_total",
                "Requests a quota could not count because Redis failed (let through or refused per `on_redis_error`), by quota.",
                &["quota"],
            ),
            reloads: counter(
                "portico_config_reloads_total",
                "Config reloads by result (ok, failed).",
                &["result"],
            ),
            last_reload_success: r.add(
                Gauge::new(
                    "portico_config_last_reload_success_timestamp_seconds",
                    "Unix time of the last successful config load.",
                )
                .expect("valid"),
            ),
            config_file_ok: gauge(
                "portico_config_file_ok",
                "1 when the config file's current text is live, 0 when it is refused (its last good version, if any, stays).",
                &["file"],
            ),
            build_info: gauge(
                "portico_build_info",
                "Always 1; labels carry the version and active config hash.",
                &["version", "config_hash"],
            ),
            access_log_dropped: r.add(
                IntCounter::new(
                    "portico_access_log_dropped_total",
                    "Access-log lines dropped because the writer fell behind.",
                )
                .expect("valid"),
            ),
            retries: counter(
                "portico_upstream_retries_total",
                "Tries made again by a route's retry policy, by route and reason.",
                &["route", "reason"],
            ),
            aggregate_calls: counter(
                "portico_aggregate_calls_total",
                "Calls made by aggregate routes, by route, call and outcome.",
                &["route", "call", "outcome"],
            ),
            aggregate_duration: histogram(
                "portico_aggregate_call_duration_seconds",
                "Time an aggregate route's call took, by route and call.",
                &["route", "call"],
            ),
            mirror_requests: counter(
                "portico_mirror_requests_total",
                "Mirrored copies by route and outcome: match, status_differs, body_differs, error, dropped (over max_in_flight), too_large (body over max_body).",
                &["route", "outcome"],
            ),
            mirror_latency_difference: {
                let opts = HistogramOpts::new(
                    "portico_mirror_latency_difference_seconds",
                    "The shadow's time to its answer's head minus the primary's, by route (negative: the shadow was faster).",
                )
                .buckets(DIFFERENCE_BUCKETS.to_vec());
                r.add(HistogramVec::new(opts, &["route"]).expect("valid"))
            },
            redis_connected: r.add(
                IntGauge::new(
                    "portico_redis_connected",
                    "1 while the Redis link for rate limits is connected (0 when down or unused).",
                )
                .expect("valid"),
            ),
            connections_open: r.add(
                IntGauge::new(
                    "portico_downstream_connections",
                    "Client connections open now.",
                )
                .expect("valid"),
            ),
            connections_refused: r.add(
                IntCounter::new(
                    "portico_downstream_connections_refused_total",
                    "Client connections closed at accept because max_connections were open.",
                )
                .expect("valid"),
            ),
            connections_timed_out: counter(
                "portico_downstream_timeouts_total",
                "Client connections closed for not sending a request head in time, by reason (header, idle, tls_handshake).",
                &["reason"],
            ),
            cache_requests: counter(
                "portico_cache_requests_total",
                "Requests on cache routes by route and result (HIT, MISS, STALE, REVALIDATED, BYPASS).",
                &["route", "result"],
            ),
            upgraded_open: r.add(
                IntGauge::new(
                    "portico_upgraded_connections",
                    "Upgraded connections (WebSocket) open now.",
                )
                .expect("valid"),
            ),
            certificate_expiry: gauge(
                "portico_tls_certificate_expiry_seconds",
                "When each served certificate expires (notAfter, Unix seconds), by its cert path.",
                &["name"],
            ),
            upgrades: counter(
                "portico_upgrades_total",
                "Connections upgraded (101 Switching Protocols), by route.",
                &["route"],
            ),
            cache_size: gauge(
                "portico_cache_size_bytes",
                "Bytes stored per cache (bodies, headers and keys).",
                &["cache"],
            ),
            cache_evictions: counter(
                "portico_cache_evictions_total",
                "Entries evicted to keep a cache within max_size.",
                &["cache"],
            ),
            catalog: r.catalog.take(),
            registry: r.registry,
            live: Arc::default(),
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];

/// Index of a method's label: the standard ones as they are, anything else `OTHER`.
fn method_index(method: &http::Method) -> usize {
    METHODS[..9]
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(9)
}

/// Statuses whose request counters a route keeps at hand; others are looked up by label.
const STATUSES: [u16; 26] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 415,
    422, 429, 500, 502, 503, 504, 0,
];

/// One route's metric handles, resolved when the config is compiled so a request only
/// indexes them.
pub struct RouteMetrics {
    route: Arc<str>,
    upstream: Arc<str>,
    requests: IntCounterVec,
    /// Request counters by (method, status), created on first use.
    counters: OnceLock<Box<[OnceLock<IntCounter>]>>,
    /// Resolved on first use, so a route that never saw an upstream has no such series.
    duration: OnceLock<Histogram>,
    upstream_duration: OnceLock<Histogram>,
    rate_limited: OnceLock<IntCounter>,
    auth_failures: IntCounterVec,
    histograms: (HistogramVec, HistogramVec),
    limited: IntCounterVec,
    /// Cache results by [`CACHE_RESULTS`] index, created on first use.
    cache: [OnceLock<IntCounter>; 5],
    cache_requests: IntCounterVec,
}

/// What `X-Cache` and `portico_cache_requests_total{result}` say.
pub const CACHE_RESULTS: [&str; 5] = ["HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"];

impl RouteMetrics {
    pub fn new(m: &Metrics, route: &str, upstream: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            upstream: upstream.into(),
            requests: m.requests.clone(),
            counters: OnceLock::new(),
            duration: OnceLock::new(),
            upstream_duration: OnceLock::new(),
            rate_limited: OnceLock::new(),
            auth_failures: m.auth_failures.clone(),
            histograms: (m.duration.clone(), m.upstream_duration.clone()),
            limited: m.rate_limited.clone(),
            cache: Default::default(),
            cache_requests: m.cache_requests.clone(),
        }
    }

    /// Counts what the cache did with a request (one of [`CACHE_RESULTS`]).
    pub fn cache_result(&self, result: &'static str) {
        let Some(i) = CACHE_RESULTS.iter().position(|r| *r == result) else {
            return;
        };
        self.cache[i]
            .get_or_init(|| {
                self.cache_requests
                    .with_label_values(&[&*self.route, result])
            })
            .inc();
    }

    /// Whole-request time.
    pub fn duration(&self, secs: f64) {
        self.observe(&self.duration, &self.histograms.0, secs);
    }

    /// Time from sending the request upstream to its response head.
    pub fn upstream_duration(&self, secs: f64) {
        let labels = [&*self.route, &*self.upstream];
        self.upstream_duration
            .get_or_init(|| self.histograms.1.with_label_values(&labels))
            .observe(secs);
    }

    fn observe(&self, slot: &OnceLock<Histogram>, family: &HistogramVec, secs: f64) {
        slot.get_or_init(|| family.with_label_values(&[&*self.route]))
            .observe(secs);
    }

    /// Counts a refusal by a rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited
            .get_or_init(|| self.limited.with_label_values(&[&*self.route]))
            .inc();
    }

    /// Counts a finished request.
    pub fn request(&self, method: &http::Method, status: u16) {
        let method = method_index(method);
        let counter = || {
            let mut code = itoa::Buffer::new();
            let labels = [
                &*self.route,
                &*self.upstream,
                METHODS[method],
                code.format(status),
            ];
            self.requests.with_label_values(&labels)
        };
        let Some(slot) = STATUSES.iter().position(|s| *s == status) else {
            return counter().inc();
        };
        let counters = self.counters.get_or_init(|| {
            (0..METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect()
        });
        counters[method * STATUSES.len() + slot]
            .get_or_init(counter)
            .inc();
    }

    /// Counts a refusal by authentication or authorization (rare: looked up by label).
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .with_label_values(&[&*self.route, reason])
            .inc();
    }
}
