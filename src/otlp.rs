//! OpenTelemetry traces: a server span per request and a client span per upstream attempt,
//! exported over OTLP/HTTP (protobuf, `POST {endpoint}/v1/traces`) by the OpenTelemetry
//! SDK's batch processor, on its own thread. The spans carry the ids the gateway already
//! uses — the incoming `traceparent`'s trace and parent, the request's span id in the
//! access log, each attempt's span id in the `traceparent` sent upstream — so the gateway's
//! spans join the caller's and the upstream's into one trace.

use crate::diag::{redact_url, Diags};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// `telemetry.tracing`: where spans go and how many.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP/HTTP receiver (an OpenTelemetry Collector, Jaeger, Tempo...), e.g.
    /// http://otel-collector:4318; spans are posted to `/v1/traces` under it.
    pub otlp_endpoint: String,
    /// The share of new traces exported, 0 to 1 (default 1). A request whose
    /// `traceparent` says whether it is sampled follows that instead.
    #[serde(default = "all")]
    pub sample: f64,
    /// `service.name` of the spans (default `portico`).
    #[serde(default = "service")]
    pub service_name: String,
    /// Longest an export may take (default 10s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "export_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
}

fn all() -> f64 {
    1.0
}
fn service() -> String {
    "portico".into()
}
fn export_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A compiled `telemetry.tracing`. The exporter (and its thread) starts with the first
/// span, so `check` and `route` never start one; it flushes when dropped.
pub struct Tracing {
    endpoint: String,
    sample: f64,
    service: String,
    timeout: Duration,
    provider: OnceLock<SdkTracerProvider>,
}

impl Tracing {
    pub fn compile(d: &mut Diags, raw: &RawTracing) -> Option<Tracing> {
        let at = "telemetry.tracing";
        let endpoint = raw.otlp_endpoint.trim_end_matches('/');
        let url_ok = endpoint
            .parse::<http::Uri>()
            .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
        if !url_ok {
            d.error(
                &format!("{at}.otlp_endpoint"),
                format!("`{}` is not an http(s) URL", redact_url(endpoint)),
                Some("give the OTLP/HTTP receiver, e.g. http://otel-collector:4318".into()),
            );
        }
        let sample_ok = (0.0..=1.0).contains(&raw.sample);
        if !sample_ok {
            d.error(
                &format!("{at}.sample"),
                "sample is a share between 0 and 1",
                Some("e.g. 0.1 exports one new trace in ten".into()),
            );
        }
        (url_ok && sample_ok).then(|| Tracing {
            endpoint: format!("{endpoint}/v1/traces"),
            sample: raw.sample,
            service: raw.service_name.clone(),
            timeout: raw.timeout,
            provider: OnceLock::new(),
        })
    }

    /// Whether a request's trace is recorded: as its `traceparent` says, else by `sample`.
    pub fn sampled(&self, incoming_flags: Option<u8>) -> bool {
        match incoming_flags {
            Some(flags) => flags & 1 == 1,
            None => self.sample >= 1.0 || fastrand::f64() < self.sample,
        }
    }

    fn provider(&self) -> &SdkTracerProvider {
        self.provider.get_or_init(|| {
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(self.service.clone())
                .build();
            let builder = SdkTracerProvider::builder().with_resource(resource);
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(self.endpoint.clone())
                .with_timeout(self.timeout)
                .build();
            match exporter {
                Ok(exporter) => {
                    // Spans leave within a second; a full queue drops spans, never blocks.
                    let config = BatchConfigBuilder::default()
                        .with_scheduled_delay(Duration::from_secs(1))
                        .build();
                    let batch = BatchSpanProcessor::builder(exporter)
                        .with_batch_config(config)
                        .build();
                    builder.with_span_processor(batch).build()
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot export traces over OTLP");
                    builder.build()
                }
            }
        })
    }

    /// Exports a finished request's spans.
    pub fn export(&self, trace: &RequestTrace, summary: &RequestSummary) {
        let tracer = self.provider().tracer("portico");
        let parent = match trace.parent {
            Some(p) => {
                let remote = SpanContext::new(
                    trace.trace_id,
                    span_id(p),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                );
                Context::new().with_remote_span_context(remote)
            }
            None => Context::new(),
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", summary.method.clone()),
            KeyValue::new("url.path", summary.path.clone()),
            KeyValue::new("http.response.status_code", i64::from(summary.status)),
            KeyValue::new("portico.request_id", summary.request_id.clone()),
        ];
        if let Some(route) = &summary.route {
            attributes.push(KeyValue::new("http.route", route.clone()));
        }
        if let Some(ip) = &summary.client_ip {
            attributes.push(KeyValue::new("client.address", ip.clone()));
        }
        if let Some(code) = summary.error {
            attributes.push(KeyValue::new("error.type", code));
        }
        let name = match &summary.route {
            Some(route) => format!("{} {route}", summary.method),
            None => summary.method.clone(),
        };
        let end = SystemTime::now();
        let mut server = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_trace_id(trace.trace_id)
            .with_span_id(span_id(trace.span))
            .with_start_time(trace.start)
            .with_attributes(attributes)
            .start_with_context(&tracer, &parent);
        server.end_with_timestamp(end);
        let this = SpanContext::new(
            trace.trace_id,
            span_id(trace.span),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let within = Context::new().with_remote_span_context(this);
        for attempt in &trace.attempts {
            let mut attributes = vec![KeyValue::new("server.address", attempt.target.clone())];
            if let Some(status) = attempt.status {
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            if let Some(error) = attempt.error {
                attributes.push(KeyValue::new("error.type", error));
            }
            let mut span = tracer
                .span_builder(summary.method.clone())
                .with_kind(SpanKind::Client)
                .with_span_id(span_id(attempt.span))
                .with_start_time(attempt.start)
                .with_attributes(attributes)
                .start_with_context(&tracer, &within);
            span.end_with_timestamp(attempt.end.unwrap_or(end));
        }
    }

    /// Sends what is queued (at exit).
    pub fn flush(&self) {
        if let Some(provider) = self.provider.get() {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Tracing {
    /// A retired exporter (its settings changed) sends what it holds on a thread of its
    /// own: the last snapshot may be dropped by a request, which must not wait on a
    /// collector.
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            std::thread::spawn(move || provider.shutdown());
        }
    }
}

fn span_id(id: u64) -> SpanId {
    SpanId::from_bytes(id.to_be_bytes())
}

/// The spans of one sampled request, filled in as it goes.
pub struct RequestTrace {
    pub trace_id: TraceId,
    /// The caller's span, from its `traceparent`.
    pub parent: Option<u64>,
    /// This request's span (the access log's `span_id`).
    pub span: u64,
    pub start: SystemTime,
    pub attempts: Vec<Attempt>,
}

/// One try of an upstream target.
pub struct Attempt {
    /// Its span id, sent upstream as the `traceparent` parent.
    pub span: u64,
    pub start: SystemTime,
    pub end: Option<SystemTime>,
    pub target: String,
    pub status: Option<u16>,
    pub error: Option<&'static str>,
}

impl RequestTrace {
    /// From the hex trace id, the caller's span (if any) and this request's span.
    pub fn new(trace_id: &str, parent: Option<u64>, span: u64) -> Option<RequestTrace> {
        Some(RequestTrace {
            trace_id: TraceId::from_hex(trace_id).ok()?,
            parent,
            span,
            start: SystemTime::now(),
            attempts: Vec::new(),
        })
    }

    /// A new attempt on `target`; returns its span id.
    pub fn attempt(&mut self, target: &str) -> u64 {
        let span = fastrand::u64(1..);
        self.attempts.push(Attempt {
            span,
            start: SystemTime::now(),
            end: None,
            target: target.to_string(),
            status: None,
            error: None,
        });
        span
    }

    /// The latest attempt's answer (its span ends when the request does).
    pub fn answered(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.status = Some(status);
        }
    }

    /// The latest attempt failed before an answer.
    pub fn failed(&mut self, error: &'static str) {
        if let Some(a) = self.attempts.last_mut() {
            a.error = Some(error);
            a.end = Some(SystemTime::now());
        }
    }

    /// The `traceparent` for the latest attempt's request.
    pub fn traceparent(&self) -> Option<String> {
        let a = self.attempts.last()?;
        Some(format!("00-{}-{:016x}-01", self.trace_id, a.span))
    }
}

/// What the server span says of the request.
pub struct RequestSummary {
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub status: u16,
    pub request_id: String,
    pub client_ip: Option<String>,
    pub error: Option<&'static str>,
}
