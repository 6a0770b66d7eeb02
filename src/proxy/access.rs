//! What a finished request leaves behind: its metrics and its access-log line.

use super::ctx::Ctx;
use crate::policy::auth::header_text;
use crate::telemetry::Metrics;
use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// A field's key as written after another field, `,"name":`: one copy per field.
macro_rules! key {
    ($name:literal) => {
        Key(concat!(",\"", $name, "\":"))
    };
}

/// A log field's key, made only by [`key!`] (so it always has its `,"` and `":`).
#[derive(Clone, Copy)]
struct Key(&'static str);

/// Counts a finished request on its route's handles (resolved at compile time).
pub fn record_metrics(metrics: &Metrics, session: &Session, ctx: &Ctx, status: u16) {
    metrics.in_flight.dec();
    // A request sent to a backend counts under its upstream; others under the route's.
    let route = match (ctx.route(), ctx.backend()) {
        (_, Some(backend)) => &backend.metrics,
        (Some(route), None) => &route.metrics,
        (None, None) => &ctx.snapshot.unrouted,
    };
    route.request(&session.req_header().method, status);
    route.duration(ctx.request.duration().as_secs_f64());
    if let Some(t) = ctx.upstream.time {
        route.upstream_duration(t.as_secs_f64());
    }
}

/// Counts a finished request in the dashboard's rings; keeps it among the last failures
/// when it failed (4xx, 5xx, or no answer at all).
pub fn record_live(live: &crate::live::Live, session: &Session, ctx: &Ctx, status: u16) {
    let route = ctx.route();
    live.record(
        route.and_then(|r| r.live.as_deref()),
        ctx.request.ended.unwrap_or_else(Instant::now),
        ctx.request.duration(),
        status,
    );
    if (200..400).contains(&status) || status == 101 {
        return;
    }
    let req = session.req_header();
    let reason = match (&ctx.error_reason, ctx.upstream.status) {
        (Some(why), _) => why.clone(),
        (None, Some(up)) => format!("the upstream answered {up}"),
        (None, None) => "the connection ended before an answer".into(),
    };
    let reason = match (&ctx.policy.rate, ctx.error_code) {
        (Some(d), Some("rate_limited" | "quota_exceeded")) => {
            format!("{reason} ({} of {} left)", d.remaining, d.limit)
        }
        _ => reason,
    };
    let user = ctx
        .policy
        .claims
        .as_ref()
        .and_then(|c| c.get("sub"))
        .map(header_text);
    let host = req
        .headers
        .get(http::header::HOST)
        .map(|h| client_text(h.as_bytes()));
    live.failed(crate::live::Failure {
        at_ms: crate::units::unix_ms(),
        request_id: ctx.request.id().to_string(),
        method: req.method.to_string(),
        host: host.map(|h| h.into_owned()),
        path: logged_path(req, ctx).into_owned(),
        route: route.map(|r| r.name.to_string()),
        status,
        code: ctx.error_code,
        reason,
        user,
    });
}

/// The path as the access log (and the dashboard) shows it: with the query only when
/// `access_log.query` is on (queries often carry tokens), its credentials redacted.
fn logged_path<'r>(req: &'r pingora::http::RequestHeader, ctx: &Ctx) -> std::borrow::Cow<'r, str> {
    match (ctx.snapshot.access_log.query, req.uri.query()) {
        (true, Some(q)) => {
            let q = redact_query(q, &ctx.snapshot.query_secrets);
            format!("{}?{q}", req.uri.path()).into()
        }
        _ => req.uri.path().into(),
    }
}

/// A query with the values of credential parameters (API keys) replaced by `REDACTED`.
fn redact_query<'q>(query: &'q str, secrets: &[String]) -> std::borrow::Cow<'q, str> {
    let secret = |pair: &str| {
        secrets
            .iter()
            .any(|s| pair.split_once('=').map_or(pair, |(k, _)| k) == s)
    };
    if !query.split('&').any(secret) {
        return std::borrow::Cow::Borrowed(query);
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match secret(pair) {
            true => format!("{}=REDACTED", pair.split_once('=').map_or(pair, |(k, _)| k)),
            false => pair.to_string(),
        })
        .collect();
    std::borrow::Cow::Owned(pairs.join("&"))
}

/// Writes one access-log line: a JSON object with the fields not excluded by the config,
/// written straight into the log buffer (no intermediate JSON tree or strings) since it
/// runs for every request.
pub fn access_line(out: &mut Vec<u8>, session: &Session, ctx: &Ctx, status: u16) {
    let settings = &ctx.snapshot.access_log;
    let req = session.req_header();
    let mut line = JsonLine::new(out, &settings.exclude);
    line.time(key!("time"), std::time::SystemTime::now());
    line.plain(key!("request_id"), ctx.request.id());
    line.plain(key!("trace_id"), ctx.request.trace_id());
    if let Some(span) = super::forwarding::span_id(&ctx.request.traceparent) {
        line.plain(key!("span_id"), span);
    }
    if let Some(ip) = ctx.request.client_ip {
        line.ip(key!("client_ip"), ip);
    }
    line.plain(key!("method"), req.method.as_str());
    line.plain(key!("protocol"), protocol(req.version));
    let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    if let Some(host) = host.or(authority) {
        line.str(key!("host"), &client_text(host));
    }
    for (field, name) in [
        (key!("user_agent"), http::header::USER_AGENT),
        (key!("referer"), http::header::REFERER),
    ] {
        if let Some(value) = req.headers.get(name) {
            line.str(field, &client_text(value.as_bytes()));
        }
    }
    line.str(key!("path"), &logged_path(req, ctx));
    if let Some(route) = ctx.route() {
        line.str(key!("route"), &route.name);
    }
    if let Some(upstream) = ctx.upstream() {
        line.str(key!("upstream"), &upstream.name);
    }
    if let Some(target) = &ctx.upstream.target {
        line.str(key!("target"), &target.label);
    }
    // Tries beyond the first: retries and failovers.
    if ctx.upstream.tried.len() > 1 {
        line.num(key!("tries"), ctx.upstream.tried.len());
    }
    line.num(key!("status"), status);
    line.millis(key!("duration_ms"), ctx.request.duration());
    if let Some(t) = ctx.upstream.time {
        line.millis(key!("upstream_ms"), t);
    }
    // Every body byte read, also when the request was refused after its body was read.
    line.num(key!("bytes_in"), session.body_bytes_read() as u64);
    line.num(key!("bytes_out"), session.body_bytes_sent());
    if let Some(sub) = ctx.policy.claims.as_ref().and_then(|c| c.get("sub")) {
        line.str(key!("user"), &header_text(sub));
    }
    if let Some(code) = ctx.error_code {
        line.str(key!("error"), code);
    }
    if let Some(calls) = &ctx.calls {
        line.str(key!("calls"), calls);
    }
    if ctx.upgraded {
        // Written when the tunnel closes: duration_ms and the bytes cover all of it.
        let protocol = session.req_header().headers.get(http::header::UPGRADE);
        let websocket = protocol.is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
        line.str(
            key!("upgraded"),
            if websocket { "websocket" } else { "other" },
        );
    }
    line.finish();
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Longest client-sent header text a log line carries.
const MAX_LOGGED_HEADER: usize = 256;

/// A client-sent header value for the log: bytes that are not UTF-8 replaced, cut at
/// [`MAX_LOGGED_HEADER`] bytes (a client must not be able to make lines huge).
fn client_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    let bytes = &bytes[..bytes.len().min(MAX_LOGGED_HEADER)];
    String::from_utf8_lossy(bytes)
}

/// Whether JSON needs `value` escaped: a fold without an early exit, which the compiler
/// turns into vector code.
fn needs_escape(value: &str) -> bool {
    value.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Writes one JSON object, skipping excluded fields.
struct JsonLine<'a> {
    out: &'a mut Vec<u8>,
    exclude: &'a [String],
    empty: bool,
}

impl<'a> JsonLine<'a> {
    fn new(out: &'a mut Vec<u8>, exclude: &'a [String]) -> Self {
        JsonLine {
            out,
            exclude,
            empty: true,
        }
    }

    /// Writes a field's key unless the field is excluded.
    fn key(&mut self, Key(key): Key) -> bool {
        // Most configs exclude nothing: the name is cut out of the key only when needed.
        if !self.exclude.is_empty() && self.exclude.iter().any(|x| *x == key[2..key.len() - 2]) {
            return false;
        }
        if self.empty {
            self.empty = false;
            self.out.push(b'{');
            self.out.extend_from_slice(&key.as_bytes()[1..]);
        } else {
            self.out.extend_from_slice(key.as_bytes());
        }
        true
    }

    /// A value that never needs escaping (request ids are checked to be `[A-Za-z0-9._:-]`,
    /// trace ids are hex, methods are tokens, IPs are digits): copied without the scan.
    fn plain(&mut self, name: Key, value: &str) {
        debug_assert!(!needs_escape(value), "{} must be plain: {value:?}", name.0);
        if self.key(name) {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        }
    }

    /// An IP, written in place.
    fn ip(&mut self, name: Key, ip: std::net::IpAddr) {
        if self.key(name) {
            self.out.push(b'"');
            super::forwarding::push_ip(self.out, ip);
            self.out.push(b'"');
        }
    }

    fn str(&mut self, name: Key, value: &str) {
        if !self.key(name) {
            return;
        }
        if !needs_escape(value) {
            // Nothing to escape (the usual case): copied as it is.
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        } else {
            // serde_json escapes quotes, backslashes and control characters.
            let _ = serde_json::to_writer(&mut *self.out, value);
        }
    }

    fn num(&mut self, name: Key, value: impl itoa::Integer) {
        if self.key(name) {
            self.out
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    /// An RFC 3339 time with milliseconds. The text up to the second is formatted once a
    /// second per thread and reused (every line needs it; formatting it is not cheap).
    fn time(&mut self, name: Key, now: std::time::SystemTime) {
        thread_local! {
            static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
        }
        if !self.key(name) {
            return;
        }
        let since = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, millis) = (since.as_secs(), since.subsec_millis());
        SECOND.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                let whole = std::time::UNIX_EPOCH + Duration::from_secs(secs);
                // `2026-11-24T02:00:57Z` without its `Z`.
                let text = humantime::format_rfc3339_seconds(whole).to_string();
                *cached = (secs, text.trim_end_matches('Z').to_string());
            }
            self.out.push(b'"');
            self.out.extend_from_slice(cached.1.as_bytes());
            self.out.push(b'.');
            let mut digits = itoa::Buffer::new();
            // "1xyz": keeps the leading zeros of the milliseconds.
            self.out
                .extend_from_slice(&digits.format(millis + 1000).as_bytes()[1..]);
            self.out.extend_from_slice(b"Z\"");
        });
    }

    /// Milliseconds with three decimals, from integer microseconds (no float formatting).
    fn millis(&mut self, name: Key, d: Duration) {
        if self.key(name) {
            let micros = d.as_micros();
            let frac = (micros % 1000) as u16 + 1000; // "1xyz": keeps the leading zeros
            self.out
                .extend_from_slice(itoa::Buffer::new().format(micros / 1000).as_bytes());
            self.out.push(b'.');
            self.out
                .extend_from_slice(&itoa::Buffer::new().format(frac).as_bytes()[1..]);
        }
    }

    fn finish(self) {
        if self.empty {
            self.out.push(b'{');
        }
        self.out.push(b'}');
    }
}

/// What a request's server span says of it (the same facts as its access line).
pub fn span_summary(session: &Session, ctx: &Ctx, status: u16) -> crate::otlp::RequestSummary {
    let req = session.req_header();
    crate::otlp::RequestSummary {
        method: req.method.to_string(),
        path: req.uri.path().to_string(),
        route: ctx.route().map(|r| r.name.to_string()),
        status,
        request_id: ctx.request.id().to_string(),
        client_ip: ctx.request.client_ip.map(|ip| ip.to_string()),
        error: ctx.error_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_writes_escaped_fields_and_skips_excluded_ones() {
        let mut out = Vec::new();
        let exclude = ["client_ip".to_string()];
        let mut line = JsonLine::new(&mut out, &exclude);
        line.str(key!("path"), "/a\"b");
        line.ip(key!("client_ip"), "10.0.0.1".parse().unwrap());
        line.num(key!("status"), 200u16);
        line.millis(key!("duration_ms"), Duration::from_micros(1_002_003));
        line.millis(key!("upstream_ms"), Duration::from_micros(7));
        line.finish();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"path":"/a\"b","status":200,"duration_ms":1002.003,"upstream_ms":0.007}"#
        );
        let mut ips = Vec::new();
        let mut line = JsonLine::new(&mut ips, &[]);
        line.ip(key!("v4"), "192.0.2.10".parse().unwrap());
        line.ip(key!("v6"), "2001:db8::1".parse().unwrap());
        line.finish();
        assert_eq!(ips, br#"{"v4":"192.0.2.10","v6":"2001:db8::1"}"#);
        let mut empty = Vec::new();
        JsonLine::new(&mut empty, &[]).finish();
        assert_eq!(empty, b"{}");
        let mut timed = Vec::new();
        let mut line = JsonLine::new(&mut timed, &[]);
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_795_999_257_042);
        line.time(key!("time"), t);
        line.time(key!("again"), t + Duration::from_millis(5));
        line.finish();
        assert_eq!(
            String::from_utf8(timed).unwrap(),
            format!(
                r#"{{"time":"{}","again":"{}"}}"#,
                humantime::format_rfc3339_millis(t),
                humantime::format_rfc3339_millis(t + Duration::from_millis(5))
            )
        );
    }
}
