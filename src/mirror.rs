//! A route's `mirror`: a copy of chosen requests goes to a shadow upstream, and the
//! shadow's answer is compared with the one the client got — status, time to the answer's
//! head, and the body (JSON value by value, minus `ignore` pointers; bytes otherwise).
//!
//! The copy is sent once the primary exchange is over, from a task of its own: the client's
//! answer never waits for it and never changes, and the verdict compares like with like.
//! Which requests are copied is decided by request id, so the same id is always copied or
//! never. Copies are bounded per route from the moment a request is chosen until its copy
//! is answered (`max_in_flight`, which also bounds the bodies held for them): a request
//! chosen past it is not copied, and counted as dropped, at the cost of an atomic add. A
//! copy takes a descriptor from the upstream connections' share and ends at the shadow's
//! connect + read timeouts. Only what a verdict needs is kept: the last differences per
//! route (never bodies, queries or header values) for the admin `/mirrors`.

use crate::diag::{lookup, Diags};
use crate::telemetry::Metrics;
use crate::units::ByteSize;
use crate::upstream::call::{self, CallError, Link, Reply};
use crate::upstream::Upstream;
use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use prometheus::{Histogram, IntCounter};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// `mirror:` on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// The shadow upstream the copies go to (not one of the route's own).
    pub upstream: String,
    /// The share of requests copied, 0 to 100 (default 100). Chosen by request id: a
    /// request with a given `X-Request-Id` is always copied, or never.
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Copies in flight at most, counted from when a request is chosen (default 64); a
    /// request chosen past it is not copied, and counted as dropped.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Requests with larger bodies are not copied, and answers are compared up to this
    /// size (default 64KiB; a larger answer is compared by status only).
    pub max_body: Option<ByteSize>,
    /// How the two answers are compared.
    #[serde(default)]
    pub compare: RawCompare,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    /// JSON pointers (RFC 6901) left out of the body comparison, with everything under
    /// them: `[/meta/generated_at, /request_id]`.
    #[serde(default)]
    pub ignore: Vec<String>,
}

fn hundred() -> f64 {
    100.0
}
fn default_in_flight() -> usize {
    64
}

const DEFAULT_MAX_BODY: u64 = 64 * 1024;
/// Differences kept per route for `/mirrors`.
const KEPT: usize = 100;
/// Pointers named per difference, and the longest one kept (keys come from bodies).
const POINTERS: usize = 20;
const POINTER_LEN: usize = 200;

/// What became of a copy: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Match,
    StatusDiffers,
    BodyDiffers,
    Error,
    Dropped,
    TooLarge,
}

const OUTCOMES: [Outcome; 6] = [
    Outcome::Match,
    Outcome::StatusDiffers,
    Outcome::BodyDiffers,
    Outcome::Error,
    Outcome::Dropped,
    Outcome::TooLarge,
];

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::StatusDiffers => "status_differs",
            Outcome::BodyDiffers => "body_differs",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
            Outcome::TooLarge => "too_large",
        }
    }
}

pub struct Mirror {
    pub upstream: Arc<Upstream>,
    pub percent: f64,
    /// The share copied, in hundredths of a percent.
    share: u64,
    pub max_in_flight: usize,
    pub max_body: u64,
    ignore: Vec<String>,
    /// Kept across reloads while the route keeps its name.
    record: Arc<Record>,
    /// By outcome, in `OUTCOMES` order.
    counted: Vec<IntCounter>,
    latency_difference: Histogram,
}

/// A route's copies in flight and its last differences.
#[derive(Default)]
pub struct Record {
    in_flight: AtomicUsize,
    differences: Mutex<VecDeque<Value>>,
}

/// A copy in flight; gives its place back however the copy ends.
struct InFlight(Arc<Record>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the request with this id is copied, `share` being hundredths of a percent.
pub fn chosen(id: &str, share: u64) -> bool {
    crate::hashing::fnv1a(id.as_bytes()) % 10_000 < share
}

/// A request being copied: its head as sent to the primary, its body, and the primary's
/// answer body, each bounded by `max_body`.
pub struct Capture {
    /// The route's mirror, whose bounds and verdict the capture follows.
    mirror: Arc<Mirror>,
    /// This copy's place among the route's `max_in_flight`.
    _held: InFlight,
    request: Option<RequestHeader>,
    body: Vec<u8>,
    path: String,
    answer: Vec<u8>,
    answer_whole: bool,
    /// The primary's answer is content-encoded.
    answer_encoded: bool,
}

/// The primary exchange, as the verdict needs it.
pub struct Primary {
    pub status: u16,
    pub head_time: Duration,
}

/// How copies are sent: the gateway's pooled connector and descriptor budget.
pub struct Sender {
    pub connector: Arc<Connector>,
    pub descriptors: &'static crate::descriptors::Descriptors,
    pub max_connections: usize,
}

impl Mirror {
    /// A capture when this request is copied: chosen by its id, its declared body (if
    /// any) within `max_body` (else counted as `too_large`), and a place free among
    /// `max_in_flight` (else counted as `dropped`).
    pub fn capture(
        self: &Arc<Mirror>,
        id: &str,
        path: &str,
        declared: Option<u64>,
    ) -> Option<Box<Capture>> {
        if !chosen(id, self.share) {
            return None;
        }
        if declared.is_some_and(|len| len > self.max_body) {
            self.count(Outcome::TooLarge);
            return None;
        }
        let record = &self.record;
        if record.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            record.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.count(Outcome::Dropped);
            return None;
        }
        Some(Box::new(Capture {
            mirror: self.clone(),
            _held: InFlight(record.clone()),
            request: None,
            body: Vec::new(),
            path: path.to_string(),
            answer: Vec::new(),
            answer_whole: true,
            answer_encoded: false,
        }))
    }

    fn count(&self, outcome: Outcome) {
        let at = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.counted[at].inc();
    }

    /// Compares the shadow's answer with the primary's, counts the outcome and keeps a
    /// difference.
    fn judge(&self, seen: &Seen, capture: &Capture, reply: Result<Reply, CallError>) {
        let primary = &seen.primary;
        let (outcome, pointers) = match &reply {
            Err(_) => (Outcome::Error, Vec::new()),
            Ok(r) if r.status != primary.status => (Outcome::StatusDiffers, Vec::new()),
            // Encoded bytes are not the content (levels and encoders differ).
            Ok(r) if r.encoded || capture.answer_encoded => (Outcome::Match, Vec::new()),
            Ok(r) => {
                let ours = capture.answer_whole.then_some(&capture.answer[..]);
                self.compare_bodies(ours, r.body.as_deref())
            }
        };
        if let Ok(r) = &reply {
            let difference = r.head_time.as_secs_f64() - primary.head_time.as_secs_f64();
            self.latency_difference.observe(difference);
        }
        if outcome != Outcome::Match {
            self.keep(seen, capture, outcome, &reply, pointers);
        }
        // Counted last: whoever sees the count also sees the copy's record.
        self.count(outcome);
    }

    /// JSON is compared value by value (outside the ignored pointers), anything else byte
    /// for byte; one body over `max_body` and the other not differ, two over it are not
    /// compared.
    fn compare_bodies(&self, ours: Option<&[u8]>, theirs: Option<&[u8]>) -> (Outcome, Vec<String>) {
        let (ours, theirs) = match (ours, theirs) {
            (Some(ours), Some(theirs)) => (ours, theirs),
            (None, None) => return (Outcome::Match, Vec::new()),
            _ => return (Outcome::BodyDiffers, vec![String::new()]),
        };
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
        let pointers = match (json(ours), json(theirs)) {
            (Some(a), Some(b)) => {
                let mut found = Vec::new();
                differences(&a, &b, &mut String::new(), &self.ignore, &mut found);
                found
            }
            _ if ours == theirs => Vec::new(),
            _ => vec![String::new()],
        };
        match pointers.is_empty() {
            true => (Outcome::Match, pointers),
            false => (Outcome::BodyDiffers, pointers),
        }
    }

    fn keep(
        &self,
        seen: &Seen,
        capture: &Capture,
        outcome: Outcome,
        reply: &Result<Reply, CallError>,
        pointers: Vec<String>,
    ) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let shadow = match reply {
            Ok(r) => json!({"status": r.status, "latency_ms": ms(r.head_time)}),
            Err(e) => json!({"error": e.outcome()}),
        };
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = json!({
            "at_unix_ms": at,
            "route": seen.route,
            "request_id": seen.id,
            "method": seen.method,
            "path": capture.path,
            "outcome": outcome.label(),
            "primary": {"status": seen.primary.status, "latency_ms": ms(seen.primary.head_time)},
            "shadow": shadow,
            "pointers": pointers,
        });
        let mut kept = self
            .record
            .differences
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(entry);
    }

    /// The admin `/mirrors` entry: settings, copies in flight, newest difference first.
    pub fn view(&self) -> Value {
        let kept = self
            .record
            .differences
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        json!({
            "upstream": &*self.upstream.name,
            "percent": self.percent,
            "max_in_flight": self.max_in_flight,
            "in_flight": self.record.in_flight.load(Ordering::Relaxed),
            "differences": kept.iter().rev().collect::<Vec<_>>(),
        })
    }

    /// One line for `portico route`.
    pub fn explain(&self) -> String {
        let ignore = match self.ignore.is_empty() {
            true => String::new(),
            false => format!(", ignoring {}", self.ignore.join(", ")),
        };
        format!(
            "mirror: {}% of requests (by request id) copied to `{}`, at most {} in flight, bodies up to {} bytes{ignore}",
            self.percent, self.upstream.name, self.max_in_flight, self.max_body
        )
    }
}

impl Capture {
    /// Sends the copy from a task of its own, which keeps its place among `max_in_flight`
    /// until the shadow answered. Returns at once.
    pub fn send(self: Box<Capture>, sender: &Sender, primary: Primary, route: &str, id: &str) {
        let capture = self;
        let Some(request) = capture.request.as_ref() else {
            return;
        };
        let mut copy = request.clone();
        let _ = copy.insert_header("x-portico-mirror", "1");
        let (mirror, connector) = (capture.mirror.clone(), sender.connector.clone());
        let (descriptors, max_connections) = (sender.descriptors, sender.max_connections);
        let seen = Seen {
            route: route.to_string(),
            id: id.to_string(),
            method: copy.method.to_string(),
            primary,
        };
        tokio::spawn(async move {
            let link = Link {
                connector: &connector,
                descriptors,
                max_connections,
            };
            let up = &mirror.upstream;
            let deadline = Instant::now() + up.connect_timeout + up.read_timeout;
            let body = Bytes::from(capture.body.clone());
            let reply = call::call(&link, up, &copy, body, deadline, mirror.max_body).await;
            mirror.judge(&seen, &capture, reply);
        });
    }

    /// Takes a chunk of the request body; false (counted as `too_large`) when the body
    /// outgrows `max_body` and the request is not copied.
    pub fn request_body(&mut self, chunk: &[u8]) -> bool {
        self.body.extend_from_slice(chunk);
        let fits = self.body.len() as u64 <= self.mirror.max_body;
        if !fits {
            self.mirror.count(Outcome::TooLarge);
        }
        fits
    }

    /// Takes a chunk of the primary's answer, up to `max_body`.
    pub fn answer_body(&mut self, chunk: &[u8]) {
        if !self.answer_whole {
            return;
        }
        self.answer.extend_from_slice(chunk);
        if self.answer.len() as u64 > self.mirror.max_body {
            self.answer_whole = false;
            self.answer = Vec::new();
        }
    }

    /// The request as sent to the primary (made the gateway's own by the caller); a retry
    /// replaces it, and its body is taken again.
    pub fn sent(&mut self, request: RequestHeader) {
        self.request = Some(request);
        self.body.clear();
        self.answer.clear();
        self.answer_whole = true;
    }

    /// The primary's answer head is in.
    pub fn answered(&mut self, head: &pingora::http::ResponseHeader) {
        self.answer_encoded = head
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    }
}

/// What the copy's task keeps of the request.
struct Seen {
    route: String,
    id: String,
    method: String,
    primary: Primary,
}

/// Escapes a key for a JSON pointer (RFC 6901 §3).
fn escaped(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Collects the pointers where `a` and `b` differ (at most `POINTERS`), skipping `ignore`
/// and everything under it.
fn differences(a: &Value, b: &Value, at: &mut String, ignore: &[String], found: &mut Vec<String>) {
    if found.len() >= POINTERS || ignore.iter().any(|i| i == at) {
        return;
    }
    let mut descend = |key: &str, a: Option<&Value>, b: Option<&Value>, found: &mut Vec<String>| {
        let len = at.len();
        at.push('/');
        at.push_str(&escaped(key));
        match (a, b) {
            (Some(a), Some(b)) => differences(a, b, at, ignore, found),
            _ if ignore.iter().any(|i| i == at) || found.len() >= POINTERS => {}
            _ => found.push(shown(at)),
        }
        at.truncate(len);
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                descend(key, x.get(key), y.get(key), found);
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                descend(&i.to_string(), x.get(i), y.get(i), found);
            }
        }
        _ if a == b => {}
        _ => found.push(shown(at)),
    }
}

/// A pointer as listed: cut at `POINTER_LEN` bytes (on a character boundary).
fn shown(pointer: &str) -> String {
    if pointer.len() <= POINTER_LEN {
        return pointer.to_string();
    }
    let mut end = POINTER_LEN;
    while !pointer.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &pointer[..end])
}

/// Compiles a route's `mirror` (`at` is the route). `own` are the upstreams the route
/// sends to: a mirror to one of them would double its traffic, not shadow it.
#[allow(clippy::too_many_arguments)]
pub fn compile(
    d: &mut Diags,
    state: &mut crate::state::StateCx,
    metrics: &Metrics,
    at: &str,
    route: &str,
    raw: &RawMirror,
    own: &[&str],
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    defined: &[&String],
) -> Option<Arc<Mirror>> {
    let at = format!("{at}.mirror");
    let errors = d.errors();
    let upstream = lookup(
        d,
        &format!("{at}.upstream"),
        "upstream",
        &raw.upstream,
        upstreams,
        defined,
    );
    if own.contains(&raw.upstream.as_str()) {
        d.error(
            &format!("{at}.upstream"),
            format!(
                "`{}` already serves this route, so its copies would double its traffic",
                raw.upstream
            ),
            Some(
                "mirror to a separate shadow upstream, e.g. the next version of the service".into(),
            ),
        );
    }
    if !(0.0..=100.0).contains(&raw.percent) {
        d.error(
            &format!("{at}.percent"),
            format!("percent {} is outside 0 to 100", raw.percent),
            Some("give the share of requests copied, e.g. 5; 0 pauses the mirror".into()),
        );
    }
    if raw.max_in_flight == 0 {
        d.error(
            &format!("{at}.max_in_flight"),
            "max_in_flight must be at least 1",
            Some("leave it out for the default (64); set percent: 0 to pause the mirror".into()),
        );
    }
    for (i, pointer) in raw.compare.ignore.iter().enumerate() {
        if !pointer.starts_with('/') {
            d.error(
                &format!("{at}.compare.ignore[{i}]"),
                format!("`{pointer}` is not a JSON pointer"),
                Some(
                    "write pointers such as /meta/generated_at (RFC 6901: `/` before each key)"
                        .into(),
                ),
            );
        }
    }
    let upstream = upstream?;
    if d.errors() != errors {
        return None;
    }
    let record = state.keep("mirror record", route, &(), Record::default);
    Some(Arc::new(Mirror {
        upstream,
        percent: raw.percent,
        share: (raw.percent * 100.0).round() as u64,
        max_in_flight: raw.max_in_flight,
        max_body: raw.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0),
        ignore: raw.compare.ignore.clone(),
        record,
        counted: OUTCOMES
            .iter()
            .map(|o| {
                metrics
                    .mirror_requests
                    .with_label_values(&[route, o.label()])
            })
            .collect(),
        latency_difference: metrics
            .mirror_latency_difference
            .with_label_values(&[route]),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(a: Value, b: Value, ignore: &[&str]) -> Vec<String> {
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        let mut found = Vec::new();
        differences(&a, &b, &mut String::new(), &ignore, &mut found);
        found
    }

    #[test]
    fn json_differences_are_named_by_pointer_and_ignored_subtrees_skipped() {
        let a = json!({"id": 1, "meta": {"at": "x", "n": 2}, "items": [1, 2], "a/b": true});
        let b = json!({"id": 1, "meta": {"at": "y", "n": 3}, "items": [1], "a/b": false, "new": 0});
        assert_eq!(
            diff(a.clone(), b.clone(), &[]),
            ["/a~1b", "/items/1", "/meta/at", "/meta/n", "/new"]
        );
        assert_eq!(
            diff(a.clone(), b.clone(), &["/meta", "/items/1", "/new"]),
            ["/a~1b"]
        );
        assert_eq!(diff(a.clone(), a, &[]), Vec::<String>::new());
        assert_eq!(diff(json!(1), json!("1"), &[]), [""]);
        assert_eq!(diff(json!(1), json!(2), &[""]), Vec::<String>::new());
        let long = "k".repeat(300);
        let cut = diff(json!({&long: 1}), json!({}), &[]);
        assert_eq!(cut, [format!("/{}…", &long[..199])]);
    }

    #[test]
    fn the_choice_follows_the_request_id() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("req-{i}")).collect();
        let copied = ids.iter().filter(|id| chosen(id, 1000)).count();
        assert!((900..1100).contains(&copied), "{copied} of 10000 at 10%");
        assert!(ids.iter().all(|id| chosen(id, 10_000)));
        assert!(!ids.iter().any(|id| chosen(id, 0)));
    }
}
