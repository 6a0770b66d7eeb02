//! The `ProxyHttp` implementation: each phase reads the snapshot the request loaded once
//! and calls into router/, upstream/ and forwarding; errors become JSON via `errors`.

use crate::errors::GatewayError;
use crate::forwarding::{self, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::policy::auth::{claim, header_text, AuthError};
use crate::policy::ratelimit::{ceil_secs, Decision, LimitKey, RateLimit, Verdict};
use crate::policy::validate::{is_json, BodyError};
use crate::router::{Action, Match, Route, StaticResponse};
use crate::snapshot::{Snapshot, SnapshotHolder};
use crate::telemetry::{self, method_label, METRICS};
use crate::upstream::{Balance, Pick, PickError, Target, Upstream};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, CONTENT_TYPE,
    HOST, ORIGIN, TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method};

const TRACEPARENT: &str = "traceparent";
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    pub holder: SnapshotHolder,
}

/// Per-request state; `snapshot` is loaded once in `new_ctx` and used by every phase.
pub struct Ctx {
    snapshot: Arc<Snapshot>,
    request_id: String,
    client_ip: Option<IpAddr>,
    route: Option<usize>,
    upstream_uri: Option<http::Uri>,
    tried: Vec<usize>,
    pick: Option<Pick>,
    deadline: Option<Instant>,
    body_seen: u64,
    failure: Option<GatewayError>,
    /// The rate-limit decision, reported in `RateLimit-*` headers on the response.
    rate: Option<Decision>,
    upstream_status: Option<u16>,
    /// The verified token's claims.
    claims: Option<serde_json::Value>,
    /// The request's Origin, when the route's CORS policy allows it.
    cors_origin: Option<HeaderValue>,
    /// The route has a CORS policy, so responses vary by Origin.
    cors_vary: bool,
    started: Instant,
    trace_id: String,
    traceparent: String,
    upstream_sent: Option<Instant>,
    upstream_time: Option<Duration>,
    target: Option<Arc<Target>>,
    error_code: Option<&'static str>,
}

impl Ctx {
    fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.snapshot.router.routes()[i])
    }

    fn upstream(&self) -> Option<&Arc<Upstream>> {
        match &self.route()?.action {
            Action::Proxy(up) => Some(up),
            Action::Respond(_) => None,
        }
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn past_deadline(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// Records why the request fails, for `fail_to_proxy`, and returns the Pingora error.
    fn fail(&mut self, failure: GatewayError) -> Box<Error> {
        let status = failure.status();
        self.failure = Some(failure);
        Error::new(ErrorType::HTTPStatus(status))
    }
}

fn may_have_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(TRANSFER_ENCODING)
        || req
            .headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

fn content_length(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sends a complete response the gateway produced itself.
async fn send(session: &mut Session, header: ResponseHeader, body: Bytes) -> Result<bool> {
    if may_have_body(session.req_header()) {
        // The body was not read: the connection cannot carry another request.
        session.set_keepalive(None);
    }
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// What every response gets: the request id, `RateLimit-*` (IETF draft) when a limit was
/// checked, and CORS headers for an allowed origin (`Vary: Origin` on CORS routes).
fn decorate(header: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    header.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
    if let Some(d) = &ctx.rate {
        header.insert_header("ratelimit-limit", d.limit)?;
        header.insert_header("ratelimit-remaining", d.remaining)?;
        header.insert_header("ratelimit-reset", ceil_secs(d.reset))?;
    }
    if ctx.cors_vary {
        header.append_header(VARY, "Origin")?;
    }
    if let (Some(origin), Some(cors)) =
        (&ctx.cors_origin, ctx.route().and_then(|r| r.cors.as_ref()))
    {
        for (name, value) in cors.response_headers(origin) {
            header.insert_header(name, value)?;
        }
    }
    Ok(())
}

async fn reject(session: &mut Session, ctx: &mut Ctx, error: GatewayError) -> Result<bool> {
    ctx.error_code = Some(error.code());
    if ctx.snapshot.metrics {
        let route = ctx.route().map_or("none", |r| &*r.name);
        match &error {
            GatewayError::RateLimited { .. } => {
                METRICS.rate_limited.with_label_values(&[route]).inc()
            }
            GatewayError::Unauthorized(_) | GatewayError::Forbidden => METRICS
                .auth_failures
                .with_label_values(&[route, error.code()])
                .inc(),
            _ => {}
        }
    }
    let (mut header, body) = error.response(&ctx.request_id);
    decorate(&mut header, ctx)?;
    send(session, header, body).await
}

async fn respond_static(session: &mut Session, ctx: &Ctx, resp: &StaticResponse) -> Result<bool> {
    let mut header = ResponseHeader::build(resp.status, Some(4 + resp.headers.len()))?;
    header.insert_header(CONTENT_TYPE, resp.content_type)?;
    header.insert_header(CONTENT_LENGTH, resp.body.len())?;
    for (name, value) in &resp.headers {
        header.insert_header(name.clone(), value.clone())?;
    }
    decorate(&mut header, ctx)?;
    send(session, header, resp.body.clone()).await
}

const NOT_A_PATH: &str = "the request target must be a path (`/...`) or an http(s) URL";

/// Whether a request target is absolute-form (`http://host/path`), which Pingora routes by
/// its path. Any other target that is not a path (`GET svc`) is refused: Pingora would
/// route it as `/` but send its bytes upstream verbatim, so the upstream would see a
/// request other than the one that was routed.
fn is_absolute_http(target: &[u8]) -> bool {
    let scheme = |s: &[u8]| {
        target
            .get(..s.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(s))
    };
    scheme(b"http://") || scheme(b"https://")
}

/// The key a request is counted by under `limit`.
fn limit_key(limit: &RateLimit, session: &Session, ctx: &Ctx, route: &Route) -> String {
    let ip = || ctx.client_ip.map_or_else(String::new, |ip| ip.to_string());
    match &limit.key {
        LimitKey::ClientIp => ip(),
        LimitKey::Route => route.name.to_string(),
        LimitKey::Header(name) => match session.req_header().headers.get(name) {
            // Long values are hashed so a key never costs more than a few bytes.
            Some(v) if v.len() <= 128 => format!("h:{}", String::from_utf8_lossy(v.as_bytes())),
            Some(v) => format!("h#{:x}", fnv(v.as_bytes())),
            None => format!("ip:{}", ip()),
        },
        LimitKey::Claim(name) => match ctx.claims.as_ref().and_then(|c| claim(c, name)) {
            Some(v) => format!("c:{}", header_text(v)),
            None => format!("ip:{}", ip()),
        },
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Checks the route's rate limit; Some(error) when the request must be refused.
async fn check_rate_limit(session: &Session, ctx: &mut Ctx, route: &Route) -> Option<GatewayError> {
    let limit = route.rate_limit.as_ref()?;
    let key = limit_key(limit, session, ctx, route);
    match limit.check(&key).await {
        Verdict::Allow(d) => {
            ctx.rate = Some(d);
            None
        }
        Verdict::AllowUnchecked => None,
        Verdict::Reject(d) => {
            ctx.rate = Some(d);
            Some(GatewayError::RateLimited {
                retry_after: ceil_secs(d.retry_after).max(1),
            })
        }
        Verdict::Unavailable(why) => {
            tracing::warn!(limit = %limit.name, error = %why, "rate limit unavailable: denying");
            Some(GatewayError::RateLimitUnavailable)
        }
    }
}

/// The method a CORS preflight asks about, when this request is one.
fn preflight_method(req: &RequestHeader) -> Option<Method> {
    if req.method != Method::OPTIONS || !req.headers.contains_key(ORIGIN) {
        return None;
    }
    let acrm = req.headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(acrm.as_bytes()).ok()
}

/// Verifies the route's token and claims; Some(error) when the request must be refused.
async fn authenticate(session: &Session, ctx: &mut Ctx, route: &Route) -> Option<GatewayError> {
    let auth = route.auth.as_ref()?;
    let Some(token) = auth.token(&session.req_header().headers) else {
        return Some(GatewayError::Unauthorized(AuthError::Missing));
    };
    match auth.verify(token).await {
        Err(e) => {
            tracing::debug!(policy = %auth.name, reason = e.code(), "token refused");
            Some(GatewayError::Unauthorized(e))
        }
        Ok(claims) if !route.require.iter().all(|rule| rule.holds(&claims)) => {
            Some(GatewayError::Forbidden)
        }
        Ok(claims) => {
            ctx.claims = Some(claims);
            None
        }
    }
}

fn record_metrics(session: &Session, ctx: &Ctx, status: u16) {
    let m = &*METRICS;
    m.in_flight.dec();
    let route = ctx.route().map_or("none", |r| &*r.name);
    let upstream = ctx.upstream().map_or("none", |u| &*u.name);
    let method = method_label(&session.req_header().method);
    let mut code = itoa::Buffer::new();
    m.requests
        .with_label_values(&[route, upstream, method, code.format(status)])
        .inc();
    m.duration
        .with_label_values(&[route])
        .observe(ctx.started.elapsed().as_secs_f64());
    if let Some(t) = ctx.upstream_time {
        m.upstream_duration
            .with_label_values(&[route])
            .observe(t.as_secs_f64());
    }
}

/// Writes one access-log line: a JSON object with the fields not excluded by the config,
/// written straight into the log buffer (no intermediate JSON tree or strings) since it
/// runs for every request.
fn access_line(out: &mut Vec<u8>, session: &Session, ctx: &Ctx, status: u16) {
    let settings = &ctx.snapshot.access_log;
    let req = session.req_header();
    let mut line = JsonLine::new(out, &settings.exclude);
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    line.display("time", now);
    line.str("request_id", &ctx.request_id);
    line.str("trace_id", &ctx.trace_id);
    if let Some(ip) = ctx.client_ip {
        line.display("client_ip", ip);
    }
    line.str("method", req.method.as_str());
    match (settings.query, req.uri.query()) {
        (true, Some(q)) => line.str("path", &format!("{}?{q}", req.uri.path())),
        _ => line.str("path", req.uri.path()),
    }
    if let Some(route) = ctx.route() {
        line.str("route", &route.name);
    }
    if let Some(upstream) = ctx.upstream() {
        line.str("upstream", &upstream.name);
    }
    if let Some(target) = &ctx.target {
        line.str("target", &target.label);
    }
    line.num("status", status);
    line.millis("duration_ms", ctx.started.elapsed());
    if let Some(t) = ctx.upstream_time {
        line.millis("upstream_ms", t);
    }
    line.num("bytes_in", ctx.body_seen);
    line.num("bytes_out", session.body_bytes_sent());
    if let Some(sub) = ctx.claims.as_ref().and_then(|c| c.get("sub")) {
        line.str("user", &header_text(sub));
    }
    if let Some(code) = ctx.error_code {
        line.str("error", code);
    }
    line.finish();
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

    fn key(&mut self, name: &str) -> bool {
        if self.exclude.iter().any(|x| x == name) {
            return false;
        }
        self.out.push(if self.empty { b'{' } else { b',' });
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
        true
    }

    fn str(&mut self, name: &str, value: &str) {
        if self.key(name) {
            // serde_json escapes quotes, backslashes and control characters.
            let _ = serde_json::to_writer(&mut *self.out, value);
        }
    }

    /// A string field from a value whose text needs no escaping (times, addresses).
    fn display(&mut self, name: &str, value: impl std::fmt::Display) {
        if self.key(name) {
            use std::io::Write;
            let _ = write!(self.out, "\"{value}\"");
        }
    }

    fn num(&mut self, name: &str, value: impl itoa::Integer) {
        if self.key(name) {
            self.out
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        }
    }

    /// Milliseconds with three decimals, from integer microseconds (no float formatting).
    fn millis(&mut self, name: &str, d: Duration) {
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

/// Applies the route's `validate` rules. A body to check is read whole (bounded) into
/// Pingora's retry buffer, which is what gets sent upstream once it passed.
async fn validate_request(session: &mut Session, route: &Route) -> Result<Option<GatewayError>> {
    let Some(rules) = route
        .validate
        .as_ref()
        .filter(|v| v.applies(&session.req_header().method))
    else {
        return Ok(None);
    };
    let req = session.req_header();
    let missing = rules.check_head(&req.headers, req.uri.query());
    if !missing.is_empty() {
        return Ok(Some(GatewayError::ValidationFailed(missing)));
    }
    if rules.schema.is_none() {
        return Ok(None);
    }
    let content_type = req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if !is_json(content_type) {
        return Ok(Some(GatewayError::UnsupportedMediaType));
    }
    if content_length(req).is_some_and(|len| len > rules.max_body) {
        return Ok(Some(GatewayError::BodyTooLarge {
            limit: rules.max_body,
        }));
    }
    session.enable_retry_buffering();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > rules.max_body {
            return Ok(Some(GatewayError::BodyTooLarge {
                limit: rules.max_body,
            }));
        }
    }
    Ok(match rules.check_body(&body) {
        Ok(()) => None,
        Err(BodyError::InvalidJson(why)) => Some(GatewayError::InvalidJson(why)),
        Err(BodyError::Invalid(violations)) => Some(GatewayError::ValidationFailed(violations)),
    })
}

impl Gateway {
    /// Answers a CORS preflight for a route with a CORS policy (before auth: browsers send
    /// preflights without credentials). None when this is not such a preflight.
    async fn preflight(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snapshot: &Snapshot,
    ) -> Option<Result<bool>> {
        let req = session.req_header();
        let method = preflight_method(req)?;
        let Ok((Match::Route(index), _)) = snapshot.router.route(&method, &req.uri, &req.headers)
        else {
            return None;
        };
        let route = &snapshot.router.routes()[index];
        let cors = route.cors.as_ref()?;
        ctx.route = Some(index);
        let origin = req.headers.get(ORIGIN)?.clone();
        let requested = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok());
        let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o));
        let headers = allowed
            .then(|| cors.preflight(&origin, &method, requested))
            .flatten();
        let Some(headers) = headers else {
            return Some(reject(session, ctx, GatewayError::CorsRejected).await);
        };
        let answer = async {
            let mut header = ResponseHeader::build(204, Some(8))?;
            for (name, value) in headers {
                header.insert_header(name, value)?;
            }
            header.insert_header(
                VARY,
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            )?;
            header.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
            send(session, header, Bytes::new()).await
        };
        Some(answer.await)
    }

    /// Normalizes and routes the request; returns Ok(true) when it was answered here.
    async fn route_request(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = ctx.snapshot.clone();
        let raw_target = session.req_header().raw_path();
        let origin_form = raw_target.starts_with(b"/");
        if !origin_form && !is_absolute_http(raw_target) {
            return reject(session, ctx, GatewayError::BadPath(NOT_A_PATH.into())).await;
        }
        if let Some(answered) = self.preflight(session, ctx, &snapshot).await {
            return answered;
        }
        let req = session.req_header();
        let (found, path) = match snapshot.router.route(&req.method, &req.uri, &req.headers) {
            Ok(found) => found,
            Err(e) => return reject(session, ctx, GatewayError::BadPath(e.to_string())).await,
        };
        let index = match found {
            Match::Route(i) => i,
            Match::NotFound => return reject(session, ctx, GatewayError::RouteNotFound).await,
            Match::MethodNotAllowed(allow) => {
                return reject(session, ctx, GatewayError::MethodNotAllowed { allow }).await
            }
        };
        ctx.route = Some(index);
        let route = &snapshot.router.routes()[index];
        if let Some(cors) = &route.cors {
            ctx.cors_vary = true;
            ctx.cors_origin = req
                .headers
                .get(ORIGIN)
                .filter(|o| o.to_str().is_ok_and(|o| cors.allows_origin(o)))
                .cloned();
        }
        if let Some(refusal) = authenticate(session, ctx, route).await {
            return reject(session, ctx, refusal).await;
        }
        if let Some(refusal) = check_rate_limit(session, ctx, route).await {
            return reject(session, ctx, refusal).await;
        }
        if let Some(refusal) = validate_request(session, route).await? {
            return reject(session, ctx, refusal).await;
        }
        let req = session.req_header();
        if let Action::Respond(resp) = &route.action {
            return respond_static(session, ctx, resp).await;
        }
        if content_length(req).is_some_and(|len| len > route.max_body) {
            let limit = route.max_body;
            return reject(session, ctx, GatewayError::BodyTooLarge { limit }).await;
        }
        let upstream_path = route.rewrite.apply(&path);
        // An absolute-form target goes upstream in origin-form, as it was routed.
        if upstream_path != req.uri.path() || !origin_form {
            let uri = match req.uri.query() {
                Some(q) => format!("{upstream_path}?{q}"),
                None => upstream_path,
            };
            ctx.upstream_uri = Some(
                uri.parse()
                    .map_err(|_| ctx.fail(GatewayError::BadRequest))?,
            );
        }
        ctx.deadline = route.timeout.map(|t| Instant::now() + t);
        Ok(false)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// No downstream modules: Portico does not compress, and each module costs per request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        let snapshot = self.holder.load();
        if snapshot.metrics {
            METRICS.in_flight.inc();
        }
        Ctx {
            snapshot,
            request_id: String::new(),
            client_ip: None,
            route: None,
            upstream_uri: None,
            tried: Vec::new(),
            pick: None,
            deadline: None,
            body_seen: 0,
            failure: None,
            rate: None,
            upstream_status: None,
            claims: None,
            cors_origin: None,
            cors_vary: false,
            started: Instant::now(),
            trace_id: String::new(),
            traceparent: String::new(),
            upstream_sent: None,
            upstream_time: None,
            target: None,
            error_code: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id =
            forwarding::request_id(req.headers.get(X_REQUEST_ID).map(|v| v.as_bytes()));
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let xff = req
            .headers
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok());
        ctx.client_ip = forwarding::client_ip(peer, xff, &ctx.snapshot.settings);
        let incoming = req.headers.get(TRACEPARENT).and_then(|v| v.to_str().ok());
        (ctx.trace_id, ctx.traceparent) = forwarding::traceparent(incoming);
        self.route_request(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_seen += chunk.len() as u64;
            let limit = ctx.route().map_or(u64::MAX, |r| r.max_body);
            if ctx.body_seen > limit {
                return Err(ctx.fail(GatewayError::BodyTooLarge { limit }));
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream().cloned() else {
            return Err(ctx.fail(GatewayError::Internal));
        };
        if ctx.past_deadline() {
            return Err(ctx.fail(GatewayError::RouteTimeout));
        }
        let ip_key;
        let key = match &upstream.balance {
            Balance::HashHeader(name) => {
                session.req_header().headers.get(name).map(|v| v.as_bytes())
            }
            Balance::HashClientIp => {
                ip_key = ctx.client_ip.map(|ip| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                });
                ip_key.as_ref().map(|k| &k[..])
            }
            _ => None,
        };
        let pick = match upstream.pick(key, &ctx.tried) {
            Ok(pick) => pick,
            Err(why) => {
                let failure = match why {
                    PickError::Exhausted => GatewayError::UpstreamUnreachable,
                    PickError::CircuitOpen => GatewayError::CircuitOpen,
                    PickError::Unhealthy => GatewayError::NoHealthyUpstream,
                    PickError::NoAddress => GatewayError::NoUpstreamAvailable,
                };
                return Err(ctx.fail(failure));
            }
        };
        let mut peer = HttpPeer::new(pick.addr, false, String::new());
        let cap = |t: Duration| Some(ctx.remaining().map_or(t, |r| r.min(t)));
        peer.options.connection_timeout = cap(upstream.connect_timeout);
        peer.options.read_timeout = cap(upstream.read_timeout);
        peer.options.write_timeout = cap(upstream.write_timeout);
        ctx.tried.push(pick.index);
        ctx.target = Some(pick.target.clone());
        ctx.pick = Some(pick);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(pick) = ctx.pick.take() {
            pick.finish(Some(false));
        }
        let attempts = ctx.upstream().map_or(0, |u| u.retry_attempts as usize);
        let idempotent = session.req_header().method.is_idempotent();
        if idempotent && ctx.tried.len() <= attempts && !ctx.past_deadline() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream_uri {
            upstream_request.set_uri(uri.clone());
        }
        for name in forwarding::hop_by_hop(&upstream_request.headers) {
            upstream_request.remove_header(&name);
        }
        let settings = &ctx.snapshot.settings;
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = peer.is_some_and(|p| settings.is_trusted(p));
        if let Some(peer) = peer {
            let xff = upstream_request
                .headers
                .get(X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok());
            let value = forwarding::forwarded_for(peer, xff, settings);
            upstream_request.insert_header(X_FORWARDED_FOR, value)?;
        }
        if !(trusted && upstream_request.headers.contains_key(X_FORWARDED_PROTO)) {
            upstream_request.insert_header(X_FORWARDED_PROTO, "http")?;
        }
        if !(trusted && upstream_request.headers.contains_key(X_FORWARDED_HOST)) {
            match upstream_request.headers.get(HOST).cloned() {
                Some(host) => upstream_request.insert_header(X_FORWARDED_HOST, host)?,
                None => {
                    upstream_request.remove_header(X_FORWARDED_HOST);
                }
            }
        }
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id.as_str())?;
        upstream_request.insert_header(TRACEPARENT, ctx.traceparent.as_str())?;
        ctx.upstream_sent = Some(Instant::now());
        // Identity headers come only from a verified token, never from the client.
        for name in &ctx.snapshot.identity_headers {
            upstream_request.remove_header(name);
        }
        if let (Some(claims), Some(auth)) = (&ctx.claims, ctx.route().and_then(|r| r.auth.as_ref()))
        {
            for (name, header) in &auth.forward {
                let value = claim(claims, name)
                    .map(header_text)
                    .and_then(|v| HeaderValue::from_str(&v).ok());
                if let Some(value) = value {
                    upstream_request.insert_header(header.clone(), value)?;
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        ctx.upstream_time = ctx.upstream_sent.map(|t| t.elapsed());
        if ctx.past_deadline() {
            return Err(ctx.fail(GatewayError::RouteTimeout));
        }
        for name in forwarding::hop_by_hop(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.is_process_shutting_down() {
            // Draining: tell the client to open its next connection elsewhere.
            session.set_keepalive(None);
        }
        decorate(upstream_response, ctx)?;
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(pick) = ctx.pick.take() {
            // 5xx, resets and timeouts count against the target; a client that went away
            // says nothing about it.
            let outcome = match (ctx.upstream_status, e) {
                (Some(status), _) => Some(status < 500),
                (None, Some(e)) if e.esource() == &pingora::ErrorSource::Downstream => None,
                (None, Some(_)) => Some(false),
                (None, None) => None,
            };
            pick.finish(outcome);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if ctx.snapshot.metrics {
            record_metrics(session, ctx, status);
        }
        let log = &ctx.snapshot.access_log;
        if log.enabled && (log.sample >= 1.0 || fastrand::f64() < log.sample) {
            telemetry::access_log(|out| access_line(out, session, ctx, status));
        }
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx.past_deadline() {
            return Err(ctx.fail(GatewayError::RouteTimeout));
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let failure = match ctx.failure.take() {
            Some(f) => Some(f),
            None if ctx.past_deadline() => Some(GatewayError::RouteTimeout),
            None => GatewayError::from_pingora(e),
        };
        ctx.error_code = failure.as_ref().map(GatewayError::code);
        let Some(failure) = failure else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if ctx.request_id.is_empty() {
            ctx.request_id = forwarding::request_id(None);
        }
        let (header, body) = failure.response(&ctx.request_id);
        let downstream = session.as_downstream_mut();
        if let Err(err) = downstream.write_error_response(header, body).await {
            tracing::debug!(error = %err, "could not send the error response");
        }
        FailToProxy {
            error_code: failure.status(),
            can_reuse_downstream: false,
        }
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
        line.str("path", "/a\"b");
        line.display("client_ip", "10.0.0.1");
        line.num("status", 200u16);
        line.millis("duration_ms", Duration::from_micros(1_002_003));
        line.millis("upstream_ms", Duration::from_micros(7));
        line.finish();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"path":"/a\"b","status":200,"duration_ms":1002.003,"upstream_ms":0.007}"#
        );
        let mut empty = Vec::new();
        JsonLine::new(&mut empty, &[]).finish();
        assert_eq!(empty, b"{}");
    }
}
