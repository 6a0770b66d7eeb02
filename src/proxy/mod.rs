//! The `ProxyHttp` implementation. Each phase is short: it reads the snapshot the request
//! loaded once, runs the route's policy chain (see `policy`) and delegates to the router,
//! the upstream pool, `forwarding` and the one responder (`respond`).

mod access;
pub mod ctx;
mod deadline;
pub mod forwarding;
mod framing;
pub mod guard;
mod respond;

use crate::aggregate::{Aggregate, Values};
use crate::descriptors::Descriptors;
use crate::errors::{GatewayError, X_REQUEST_ID};
use crate::policy::cache::{self, CachePolicy};
use crate::policy::cors;
use crate::policy::validate::content_length;
use crate::policy::RequestInfo;
use crate::redirect::Redirect;
use crate::retry::Reason;
use crate::router::Match;
use crate::snapshot::{Action, Backends, Route, Snapshot, SnapshotHolder, StaticResponse};
use crate::telemetry::Telemetry;
use crate::upstream::call::Link;
use crate::upstream::{Balance, PickError};
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Ctx;
use forwarding::{TRACEPARENT, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::Method;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, Result};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Gateway {
    pub holder: SnapshotHolder,
    pub telemetry: Arc<Telemetry>,
    /// Pooled upstream connections for aggregate calls.
    pub connector: Arc<Connector>,
    /// Requests between their head and their log line (metrics or not): what a shutdown
    /// waits for.
    pub in_flight: Arc<AtomicUsize>,
    /// Upstream connections held by requests come from their share.
    pub descriptors: &'static Descriptors,
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

/// Resolves when the client closes or resets while it waits for its answer (bytes it
/// sends meanwhile, a pipelined request, end the watch). Not watched while a request body
/// is unread: the watch reads the connection, and would take the body's first byte.
async fn client_gone(session: &mut Session) {
    let watchable = session.is_body_done();
    if !watchable
        || session
            .as_downstream_mut()
            .read_body_or_idle(true)
            .await
            .is_ok()
    {
        std::future::pending::<()>().await;
    }
}

/// Answers a gateway error; `Ok(true)` tells Pingora the request was answered.
async fn refuse(session: &mut Session, ctx: &mut Ctx, error: GatewayError) -> Result<bool> {
    respond::reject(session, ctx, &error, true).await?;
    Ok(true)
}

async fn respond_static(session: &mut Session, ctx: &Ctx, resp: &StaticResponse) -> Result<bool> {
    let mut header = ResponseHeader::build(resp.status, Some(4 + resp.headers.len()))?;
    header.insert_header(CONTENT_TYPE, resp.content_type)?;
    header.insert_header(CONTENT_LENGTH, resp.body.len())?;
    for (name, value) in &resp.headers {
        header.insert_header(name.clone(), value.clone())?;
    }
    respond::answer(session, ctx, header, resp.body.clone(), true).await?;
    Ok(true)
}

/// The backend a request goes to: the next turn, or for a sticky route the one that keeps
/// it (noting the cookie to send when the client must be told).
fn choose_backend(session: &Session, ctx: &mut Ctx, route: &Route, backends: &Backends) {
    let Some(sticky) = &route.sticky else {
        ctx.upstream.backend = Some(backends.choose());
        return;
    };
    let req = session.req_header();
    let seen = crate::sticky::Seen {
        route: &route.name,
        claims: ctx.policy.claims.as_deref(),
        headers: &req.headers,
        trusted_peer: ctx.request.trusted_peer,
    };
    let (chosen, tell) = backends.choose_kept(&sticky.keep(&seen));
    ctx.upstream.backend = Some(chosen);
    if tell {
        let name = &backends.list[chosen].upstream.name;
        ctx.upstream.set_cookie = sticky.set_cookie(&route.name, name, ctx.request.tls);
    }
}

/// A `redirect` route's answer; a request with no usable host gets 400.
async fn answer_redirect(session: &mut Session, ctx: &mut Ctx, r: &Redirect) -> Result<bool> {
    let req = session.req_header();
    // The router took this path, so it normalizes.
    let path = crate::router::normalize::normalize(req.uri.path()).unwrap_or_default();
    let from = crate::redirect::From {
        tls: ctx.request.tls,
        authority: req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str())),
        path: &path,
        query: req.uri.query(),
    };
    let Some(location) = r.location(&from) else {
        let why = "a valid Host header is needed to redirect".to_string();
        return refuse(session, ctx, GatewayError::BadPath(why)).await;
    };
    let mut header = ResponseHeader::build(r.status, Some(3))?;
    header.insert_header(http::header::LOCATION, location)?;
    header.insert_header(CONTENT_LENGTH, 0)?;
    respond::answer(session, ctx, header, Bytes::new(), true).await?;
    Ok(true)
}

impl Gateway {
    /// Whether the route's retry policy makes this failed try again: it covers `reason`, a
    /// try is left, the method allows it (only a connect failure for one that is not
    /// idempotent: the upstream never saw it), the body can be sent again, the route
    /// deadline is not past, and the budget holds a retry. Counted when it does.
    fn may_retry(&self, session: &Session, ctx: &mut Ctx, reason: Reason) -> bool {
        let Some(route) = ctx.route() else {
            return false;
        };
        let Some(retry) = &route.retry else {
            return false;
        };
        let method_ok = reason == Reason::Connect || session.req_header().method.is_idempotent();
        let again = retry.covers(reason)
            && (ctx.upstream.tried.len() as u32) < retry.attempts
            && method_ok
            && !session.as_ref().retry_buffer_truncated()
            && !ctx.past_deadline()
            && retry.withdraw();
        if again {
            if ctx.snapshot.metrics {
                let reason = reason.label();
                let retries = &self.telemetry.metrics.retries;
                retries.with_label_values(&[&*route.name, &reason]).inc();
            }
            ctx.upstream.retrying = Some(reason);
        }
        again
    }

    /// A connection is being upgraded (WebSocket): counted while open; the client side may
    /// now be silent for the route's `upgrade_idle_timeout` (the upstream side got it in
    /// `upstream_peer`).
    fn upgraded(&self, session: &mut Session, ctx: &mut Ctx) {
        let Some(route) = ctx.route() else { return };
        let idle = route.upgrade_idle_timeout;
        self.telemetry
            .metrics
            .upgrades
            .with_label_values(&[&*route.name])
            .inc();
        self.telemetry.metrics.upgraded_open.inc();
        ctx.upgraded = true;
        session.as_downstream_mut().set_read_timeout(Some(idle));
    }

    /// Answers a CORS preflight for a route with a CORS policy (before auth: browsers send
    /// preflights without credentials). None when this is not such a preflight.
    async fn preflight(&self, session: &mut Session, ctx: &mut Ctx) -> Option<Result<bool>> {
        let snapshot = ctx.snapshot.clone();
        let req = session.req_header();
        let method = cors::preflight_method(req)?;
        let Ok((Match::Route(index), _)) = snapshot.router.route(&method, &req.uri, &req.headers)
        else {
            return None;
        };
        let answer = snapshot.routes[index]
            .cors()?
            .answer_preflight(req, &method);
        let header = match answer {
            Ok(header) => header,
            Err(refusal) => {
                ctx.route = Some(index);
                return Some(refuse(session, ctx, refusal).await);
            }
        };
        // Not decorated with the route's response policies: a preflight answers for the
        // method it asks about, not for this OPTIONS request.
        let written = respond::answer(session, ctx, header, Bytes::new(), true).await;
        Some(written.map(|()| true))
    }

    /// Sends a mirrored request's copy, once the primary answered it whole.
    fn mirror(&self, ctx: &Ctx, capture: Box<crate::mirror::Capture>) {
        let (Some(route), Some(status)) = (ctx.route(), ctx.upstream.status) else {
            return;
        };
        let sender = crate::mirror::Sender {
            connector: self.connector.clone(),
            descriptors: self.descriptors,
            max_connections: ctx.snapshot.settings.max_connections,
        };
        let primary = crate::mirror::Primary {
            status,
            head_time: ctx.upstream.time.unwrap_or_default(),
        };
        capture.send(&sender, primary, &route.name, ctx.request.id());
    }

    /// Answers an aggregate route: its calls carry the headers this request would carry
    /// upstream, each as a body-less GET to its own path.
    async fn aggregate(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        agg: &Aggregate,
        bound: &[(String, String)],
    ) -> Result<bool> {
        let mut base = session.req_header().clone();
        forwarding::own_request(&mut base, session.req_header().uri.authority());
        prepare_upstream_request(&mut base, ctx)?;
        base.set_method(Method::GET);
        // The calls' JSON is read here: an encoded body would not parse.
        for name in [CONTENT_TYPE, http::header::ACCEPT_ENCODING] {
            base.remove_header(&name);
        }
        let query = session.req_header().uri.query().map(str::to_string);
        let values = Values {
            bound,
            claims: ctx.policy.claims.as_deref(),
            query: query.as_deref(),
        };
        let link = Link {
            connector: &self.connector,
            descriptors: self.descriptors,
            max_connections: ctx.snapshot.settings.max_connections,
        };
        // A client that goes away cancels the calls: nobody would read their answer.
        let answer = tokio::select! {
            answer = agg.run(&link, &base, &values) => answer,
            () = client_gone(session) => {
                tracing::debug!(request_id = %ctx.request.id(), "client gone: aggregate calls cancelled");
                let gone = Error::explain(pingora::ErrorType::ConnectionClosed, "client gone");
                return Err(gone.into_down());
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => return refuse(session, ctx, failure).await,
        };
        ctx.calls = Some(answer.outcomes);
        let mut header = ResponseHeader::build(200, Some(4))?;
        header.insert_header(CONTENT_TYPE, "application/json")?;
        header.insert_header(CONTENT_LENGTH, answer.body.len())?;
        if !answer.partial.is_empty() {
            header.insert_header("x-portico-partial", answer.partial.join(","))?;
        }
        respond::answer(session, ctx, header, answer.body, true).await?;
        Ok(true)
    }

    /// Takes a request from its head to the point where it goes upstream: checks the head,
    /// answers what the gateway answers itself (redirects, preflights), routes it, runs the
    /// route's policies, then answers it here or readies its body. Ok(true): answered.
    async fn route_request(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Err(refusal) = check_head(session, ctx) {
            return refuse(session, ctx, refusal).await;
        }
        if ctx.snapshot.settings.redirect_https && !ctx.request.tls {
            return redirect_https(session, ctx).await;
        }
        if let Some(answered) = self.preflight(session, ctx).await {
            return answered;
        }
        let snapshot = ctx.snapshot.clone();
        let (route, bound) = match find_route(session, ctx, &snapshot) {
            Ok(found) => found,
            Err(refusal) => return refuse(session, ctx, refusal).await,
        };
        if let Err(refusal) = run_policies(session, ctx, route).await {
            return refuse(session, ctx, refusal).await;
        }
        match &route.action {
            Action::Respond(resp) => return respond_static(session, ctx, resp).await,
            Action::Redirect(redirect) => return answer_redirect(session, ctx, redirect).await,
            Action::Aggregate(agg) => return self.aggregate(session, ctx, agg, &bound).await,
            Action::Proxy(backends) => choose_backend(session, ctx, route, backends),
        }
        if let Some(mirror) = route.mirror.as_ref().filter(|_| !session.is_upgrade_req()) {
            let req = session.req_header();
            ctx.mirror = mirror.capture(ctx.request.id(), req.uri.path(), content_length(req));
        }
        if let Err(refusal) = ready_body(session, ctx, route).await {
            return refuse(session, ctx, refusal).await;
        }
        ctx.upstream.deadline = route.timeout.map(|t| Instant::now() + t);
        Ok(false)
    }
}

/// The values a route's template binds (`{id}` → `7`).
type Bound = Vec<(String, String)>;

/// Refuses a head whose framing could be read two ways, and a target that is not a path.
fn check_head(session: &Session, ctx: &Ctx) -> Result<(), GatewayError> {
    if let Some(why) = framing::ambiguity(session) {
        tracing::warn!(request_id = %ctx.request.id(), why, "ambiguous request framing refused");
        return Err(GatewayError::BadFraming(why));
    }
    let raw_target = session.req_header().raw_path();
    if !raw_target.starts_with(b"/") && !is_absolute_http(raw_target) {
        return Err(GatewayError::BadPath(NOT_A_PATH.into()));
    }
    Ok(())
}

/// Normalizes the path and finds the route (404, 405 otherwise); on a proxy route, the
/// path sent upstream. Returns the route and the values its template binds.
fn find_route<'s>(
    session: &Session,
    ctx: &mut Ctx,
    snapshot: &'s Snapshot,
) -> Result<(&'s Route, Bound), GatewayError> {
    let req = session.req_header();
    let (found, path) = snapshot
        .router
        .route(&req.method, &req.uri, &req.headers)
        .map_err(|e| GatewayError::BadPath(e.to_string()))?;
    let index = match found {
        Match::Route(i) => i,
        Match::NotFound => return Err(GatewayError::RouteNotFound),
        Match::MethodNotAllowed(allow) => return Err(GatewayError::MethodNotAllowed { allow }),
    };
    ctx.route = Some(index);
    let route = &snapshot.routes[index];
    if route.cache().is_some() {
        ctx.policy.cache.path = path.to_string();
    }
    if !route.allow_path_params && path.contains(';') {
        let why = "`;` path parameters are not accepted on this route".to_string();
        return Err(GatewayError::BadPath(why));
    }
    let bound = snapshot.router.bind(index, &path);
    if let Action::Proxy(_) = route.action {
        let upstream_path = route.rewrite.apply(&path, &bound);
        // An absolute-form target goes upstream in origin-form, as it was routed.
        if upstream_path != req.uri.path() || !req.raw_path().starts_with(b"/") {
            // A rewrite with a query of its own gets the client's query after `&`, less any
            // credential the route's policy reads from it.
            let kept = req.uri.query().map(|q| {
                crate::policy::auth::api_key::without_params(q, &route.query_secrets)
                    .map_or(std::borrow::Cow::Borrowed(q), std::borrow::Cow::Owned)
            });
            let uri = match kept.as_deref().filter(|q| !q.is_empty()) {
                Some(q) if upstream_path.contains('?') => format!("{upstream_path}&{q}"),
                Some(q) => format!("{upstream_path}?{q}"),
                None => upstream_path.into_owned(),
            };
            ctx.upstream.uri = Some(uri.parse().map_err(|_| GatewayError::BadRequest)?);
        }
    }
    Ok((route, bound))
}

/// Runs the route's policies in order; the first refusal is the answer.
async fn run_policies(
    session: &mut Session,
    ctx: &mut Ctx,
    route: &Route,
) -> Result<(), GatewayError> {
    let info = RequestInfo {
        client_ip: ctx.request.client_ip,
        trusted_peer: ctx.request.trusted_peer,
        request_id: ctx.request.id(),
        route: &route.name,
        tls: ctx.request.tls,
    };
    for policy in &route.policies {
        policy
            .unit()
            .on_request(session, &info, &mut ctx.policy)
            .await?;
    }
    Ok(())
}

/// The body limit by Content-Length, and a chunked HTTP/1 body read whole (unless the
/// route streams it) so its framing is judged before the upstream is contacted.
async fn ready_body(session: &mut Session, ctx: &Ctx, route: &Route) -> Result<(), GatewayError> {
    if content_length(session.req_header()).is_some_and(|len| len > route.max_body) {
        let limit = route.max_body;
        return Err(GatewayError::BodyTooLarge { limit });
    }
    if route.retry.is_some() {
        // A retried try sends the body again: Pingora keeps up to 64 KiB of it for that
        // (a larger body is not retried).
        session.enable_retry_buffering();
    }
    if route.stream_request_body {
        return Ok(());
    }
    framing::read_chunked(session, route.max_body)
        .await
        .inspect_err(|error| {
            if let GatewayError::BadFraming(why) = error {
                tracing::warn!(request_id = %ctx.request.id(), why, "malformed chunked body refused");
            }
        })
}

/// One line for a failed request: the code its client got, the upstream and target tried,
/// and — for a failure Pingora saw rather than one the gateway decided — what went wrong
/// on which side. Never the error's context: it can hold upstream bytes.
fn log_failure(ctx: &Ctx, e: &Error) {
    let code = ctx.error_code.unwrap_or("none");
    let route = ctx.route().map_or("none", |r| &*r.name);
    let upstream = ctx.upstream().map_or("none", |u| &*u.name);
    let addr = ctx
        .upstream
        .target
        .as_ref()
        .map_or("none", |t| t.label.as_str());
    let id = ctx.request.id();
    if let pingora::ErrorType::HTTPStatus(_) = e.etype() {
        // The gateway's own decision: its code says it all.
        tracing::warn!(request_id = %id, route, upstream, addr, code, "request failed");
        return;
    }
    let side = match e.esource() {
        pingora::ErrorSource::Upstream => "upstream",
        pingora::ErrorSource::Downstream => "client",
        pingora::ErrorSource::Internal | pingora::ErrorSource::Unset => "gateway",
    };
    let cause = e.etype().as_str();
    tracing::warn!(request_id = %id, route, upstream, addr, code, cause, side, "request failed");
}

/// `server.max_requests_per_connection`: the last request an HTTP/1.1 connection may make
/// is answered with `Connection: close`; an HTTP/2 connection's streams are counted, and
/// past the limit it is sent GOAWAY (its open streams finish).
fn limit_requests_per_connection(session: &mut Session, ctx: &Ctx) {
    let max = ctx.snapshot.settings.max_requests_per_connection;
    if let pingora::protocols::http::ServerSession::H2(_) = session.as_downstream() {
        let digest = session.digest().and_then(|d| d.socket_digest.as_deref());
        guard::h2_stream(digest, max);
    } else if ctx.request.nth_on_connection >= max {
        session.set_keepalive(None);
    }
}

/// Notes whether the client connection is TLS.
fn facts_tls(session: &Session, ctx: &mut Ctx) {
    ctx.request.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
}

/// `listen.redirect_https`: a 308 to the same host, path and query on the TLS listener.
async fn redirect_https(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let req = session.req_header();
    let authority = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(authority) = authority else {
        let why = "a Host header is needed to redirect to https".to_string();
        return refuse(session, ctx, GatewayError::BadPath(why)).await;
    };
    let port = ctx
        .snapshot
        .settings
        .proxy_tls_addr
        .map_or(443, |a| a.port());
    let host = authority.host();
    let mut location = if port == 443 {
        format!("https://{host}")
    } else {
        format!("https://{host}:{port}")
    };
    location.push_str(req.uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut header = ResponseHeader::build(308, Some(3))?;
    header.insert_header(http::header::LOCATION, location)?;
    header.insert_header(CONTENT_LENGTH, 0)?;
    respond::answer(session, ctx, header, Bytes::new(), true).await?;
    Ok(true)
}

/// The cache of the request's route (the cache hooks only run on such routes).
/// The spans of a sampled request; an unsampled one tells the upstream so (flags `00`).
fn start_trace(
    tracing: &crate::otlp::Tracing,
    span: u64,
    caller: Option<(u64, u8)>,
    facts: &mut ctx::RequestFacts,
) -> Option<crate::otlp::RequestTrace> {
    if !tracing.sampled(caller.map(|(_, flags)| flags)) {
        forwarding::mark_unsampled(&mut facts.traceparent);
        return None;
    }
    crate::otlp::RequestTrace::new(facts.trace_id(), caller.map(|(parent, _)| parent), span)
}

fn route_cache(ctx: &Ctx) -> Result<&CachePolicy> {
    ctx.route()
        .and_then(|r| r.cache())
        .ok_or_else(|| Error::new(pingora::ErrorType::InternalError))
}

/// What a request carries upstream besides the client's own headers: X-Forwarded-*,
/// X-Request-Id, traceparent, no client-sent identity headers, then each route policy's
/// edits (claims forwarded, header edits). Proxied requests and aggregate calls alike (the
/// hop-by-hop headers are already gone: Pingora's upstream request policy strips them).
fn prepare_upstream_request(upstream_request: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    let trusted = ctx.request.trusted_peer;
    if let Some(value) = &ctx.request.forwarded_for {
        upstream_request.insert_header(X_FORWARDED_FOR.as_str(), value.clone())?;
    }
    if !(trusted && upstream_request.headers.contains_key(&X_FORWARDED_PROTO)) {
        let proto = if ctx.request.tls { "https" } else { "http" };
        // Static: no copy of the value per request.
        upstream_request.insert_header(
            X_FORWARDED_PROTO.as_str(),
            http::HeaderValue::from_static(proto),
        )?;
    }
    if !(trusted && upstream_request.headers.contains_key(&X_FORWARDED_HOST)) {
        match upstream_request.headers.get(HOST).cloned() {
            Some(host) => upstream_request.insert_header(X_FORWARDED_HOST.as_str(), host)?,
            None => {
                upstream_request.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    upstream_request.insert_header(X_REQUEST_ID.as_str(), ctx.request.id_header().clone())?;
    upstream_request.insert_header(TRACEPARENT.as_str(), ctx.request.traceparent.as_str())?;
    // Identity headers come only from a verified token, never from the client.
    for name in &ctx.snapshot.identity_headers {
        upstream_request.remove_header(name);
    }
    if let Some(route) = ctx.route() {
        let info = ctx.info(route);
        for policy in &route.policies {
            policy
                .unit()
                .on_upstream_request(upstream_request, &info, &ctx.policy)?;
        }
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the context inside its per-request future, which it moves
    /// (copies) twice per request; a pointer moves cheaper than the whole context.
    type CTX = Box<Ctx>;

    /// No downstream modules: each costs every request on every route; compression is a
    /// route policy instead (policy/compression.rs).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Box<Ctx> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let nth = guard::head_received();
        let snapshot = self.holder.load();
        if snapshot.metrics {
            self.telemetry.metrics.in_flight.inc();
        }
        let mut ctx = Box::new(Ctx::new(snapshot));
        ctx.request.nth_on_connection = nth;
        ctx
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        let settings = &ctx.snapshot.settings;
        let downstream = session.as_downstream_mut();
        downstream.set_read_timeout(Some(settings.body_timeout));
        // A client that stops reading holds this request's upstream side too: a write that
        // makes no progress this long ends the request (HTTP/1.1 and HTTP/2 streams alike).
        downstream.set_write_timeout(Some(settings.send_timeout));
        // Pipelined requests are answered in order (RFC 9112 §9.3.2) instead of dropped.
        downstream.set_pipelining_enabled(true);
        limit_requests_per_connection(session, ctx);
        facts_tls(session, ctx);
        let req = session.req_header();
        let facts = &mut ctx.request;
        facts.set_id(forwarding::request_id(
            req.headers.get(&X_REQUEST_ID).map(|v| v.as_bytes()),
        ));
        facts.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let settings = &ctx.snapshot.settings;
        facts.trusted_peer = facts.peer.is_some_and(|p| settings.is_trusted(p));
        let chain = forwarding::forwarded_chain(&req.headers);
        facts.client_ip = forwarding::client_ip(facts.peer, chain.as_deref(), settings);
        facts.forwarded_for = facts.peer.and_then(|peer| {
            let value = forwarding::forwarded_for(peer, chain.as_deref(), settings);
            // A header value's bytes and an IP: always a valid value.
            http::HeaderValue::try_from(value).ok()
        });
        let incoming = req.headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok());
        let trace = forwarding::traceparent(incoming);
        facts.traceparent = trace.header;
        if let Some(tracing) = &ctx.snapshot.tracing {
            ctx.trace = start_trace(tracing, trace.span, trace.caller, facts);
        }
        self.route_request(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.request.body_seen += chunk.len() as u64;
            let limit = ctx.route().map_or(u64::MAX, |r| r.max_body);
            // After an upgrade these are the tunnel's bytes, not a body.
            if ctx.request.body_seen > limit && !session.was_upgraded() {
                return Err(ctx.fail(GatewayError::BodyTooLarge { limit }));
            }
            if ctx.mirror.as_mut().is_some_and(|c| !c.request_body(chunk)) {
                ctx.mirror = None;
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream().cloned() else {
            return Err(ctx.fail(GatewayError::Internal));
        };
        if ctx.past_deadline() {
            return Err(ctx.fail(GatewayError::RouteTimeout));
        }
        if let Some(retry) = ctx.route().and_then(|r| r.retry.as_ref()) {
            if ctx.upstream.tried.is_empty() {
                retry.deposit();
            } else {
                let wait = retry.backoff_before(ctx.upstream.tried.len() as u32);
                tokio::time::sleep(ctx.remaining().map_or(wait, |r| r.min(wait))).await;
            }
        }
        if ctx.upstream.descriptor.is_none() {
            // Held until the request ends; a retry reuses it.
            let max_connections = ctx.snapshot.settings.max_connections;
            ctx.upstream.descriptor = self.descriptors.upstream(max_connections);
            if ctx.upstream.descriptor.is_none() {
                return Err(ctx.fail(GatewayError::Overloaded));
            }
        }
        let (ip_key, claim_key);
        let headers = &session.req_header().headers;
        let key = match &upstream.balance {
            // A client's own copy would let it choose its target: only a trusted proxy's.
            Balance::HashHeader(name) if ctx.request.trusted_peer => {
                headers.get(name).map(|v| v.as_bytes())
            }
            Balance::HashClaim(claim) => {
                claim_key = crate::sticky::claim_key(ctx.policy.claims.as_deref(), claim);
                claim_key.as_deref().map(str::as_bytes)
            }
            Balance::HashCookie(name) => crate::sticky::cookies(headers, name)
                .next()
                .map(str::as_bytes),
            Balance::HashClientIp => {
                ip_key = ctx.request.client_ip.map(|ip| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                });
                ip_key.as_ref().map(|k| &k[..])
            }
            _ => None,
        };
        let mut pick = upstream.pick(key, &ctx.upstream.tried);
        if pick.as_ref().err() == Some(&PickError::Exhausted) && ctx.upstream.retrying.is_some() {
            // Every target was tried: a retry goes to one of them again.
            pick = upstream.pick(key, &[]);
        }
        ctx.upstream.retrying = None;
        let pick = match pick {
            Ok(pick) => pick,
            Err(why) => {
                let failure = match why {
                    // Every target was tried: say why the last one failed.
                    PickError::Exhausted if ctx.upstream.tls_failed => GatewayError::UpstreamTls,
                    PickError::Exhausted => GatewayError::UpstreamUnreachable,
                    PickError::CircuitOpen => GatewayError::CircuitOpen,
                    PickError::Unhealthy => GatewayError::NoHealthyUpstream,
                    PickError::NoAddress => GatewayError::NoUpstreamAvailable,
                };
                return Err(ctx.fail(failure));
            }
        };
        let mut peer = crate::upstream::call::peer(&upstream, &pick);
        let cap = |t: Duration| Some(ctx.remaining().map_or(t, |r| r.min(t)));
        peer.options.connection_timeout = cap(upstream.connect_timeout);
        let per_try = ctx.route().and_then(|r| r.retry.as_ref()?.per_try_timeout);
        peer.options.read_timeout =
            cap(per_try.map_or(upstream.read_timeout, |t| t.min(upstream.read_timeout)));
        if session.is_upgrade_req() {
            // Once upgraded, the tunnel may be quiet for as long as the route allows.
            let idle = ctx.route().map(|r| r.upgrade_idle_timeout);
            peer.options.read_timeout = idle.or(peer.options.read_timeout);
        }
        peer.options.write_timeout = cap(upstream.write_timeout);
        ctx.upstream.tried.push(pick.index);
        if let Some(trace) = &mut ctx.trace {
            trace.attempt(&pick.target.label);
        }
        ctx.upstream.target = Some(pick.target.clone());
        ctx.upstream.pick = Some(pick);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(pick) = ctx.upstream.pick.take() {
            let upstream = ctx.upstream().map_or("", |u| &*u.name);
            pick.finish(Some(false), upstream);
        }
        let failure = GatewayError::from_pingora(&e);
        ctx.upstream.tls_failed = matches!(failure, Some(GatewayError::UpstreamTls));
        if let Some(trace) = &mut ctx.trace {
            trace.failed(failure.map_or("connect_failed", |f| f.code()));
        }
        if ctx.route().is_some_and(|r| r.retry.is_some()) {
            let again = self.may_retry(session, ctx, Reason::Connect);
            e.set_retry(again);
            return e;
        }
        let attempts = ctx.upstream().map_or(0, |u| u.retry_attempts as usize);
        let idempotent = session.req_header().method.is_idempotent();
        if idempotent && ctx.upstream.tried.len() <= attempts && !ctx.past_deadline() {
            e.set_retry(true);
        }
        e
    }

    /// After the connection was made: a route's retry policy decides on resets and
    /// timeouts (and keeps its decision on a status it asked to retry); other routes keep
    /// Pingora's rule (idempotent, body kept, a reused connection's failure).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.upstream.retrying.is_some() {
            return e;
        }
        if ctx.route().is_some_and(|r| r.retry.is_some()) {
            let reason = match e.etype() {
                pingora::ErrorType::ReadTimedout => Some(Reason::Timeout),
                pingora::ErrorType::ConnectionClosed
                | pingora::ErrorType::ReadError
                | pingora::ErrorType::WriteError => Some(Reason::Reset),
                _ => None,
            };
            let again = e.esource() == &pingora::ErrorSource::Upstream
                && ctx.upstream.status.is_none()
                && reason.is_some_and(|r| self.may_retry(session, ctx, r));
            if again {
                // The failed try counts against its target (breaker, outlier ejection).
                if let Some(pick) = ctx.upstream.pick.take() {
                    let upstream = ctx.upstream().map_or("", |u| &*u.name);
                    pick.finish(Some(false), upstream);
                }
                e.set_retry(true);
                return e;
            }
            // Not the policy's to retry: a pooled connection the upstream had closed is
            // still tried again once, as on every route (Pingora's rule, below).
        }
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(uri) = &ctx.upstream.uri {
            upstream_request.set_uri(uri.clone());
        }
        prepare_upstream_request(upstream_request, ctx)?;
        // This attempt's span is the upstream's parent.
        if let Some(tp) = ctx.trace.as_ref().and_then(|t| t.traceparent()) {
            upstream_request.insert_header(TRACEPARENT.as_str(), tp)?;
        }
        if let Some(capture) = &mut ctx.mirror {
            let mut copy = upstream_request.clone();
            forwarding::own_request(&mut copy, session.req_header().uri.authority());
            capture.sent(copy);
        }
        ctx.upstream.sent = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Err(failure) = forwarding::one_content_length(upstream_response) {
            return Err(ctx.fail(failure));
        }
        let status = upstream_response.status.as_u16();
        if ctx.route().is_some_and(|r| r.retry.is_some())
            && self.may_retry(session, ctx, Reason::Status(status))
        {
            // This answer goes nowhere: the try counts as failed and another is made.
            if let Some(pick) = ctx.upstream.pick.take() {
                let upstream = ctx.upstream().map_or("", |u| &*u.name);
                pick.finish(Some(false), upstream);
            }
            let mut again = Error::new(pingora::ErrorType::HTTPStatus(status));
            again.set_retry(true);
            return Err(again.into_up());
        }
        ctx.upstream.status = Some(status);
        if let Some(capture) = &mut ctx.mirror {
            capture.answered(upstream_response);
        }
        if let Some(trace) = &mut ctx.trace {
            trace.answered(upstream_response.status.as_u16());
        }
        ctx.upstream.time = ctx.upstream.sent.map(|t| t.elapsed());
        // The head is in: the watchdog's work is done (a body's chunks are checked against
        // the deadline as they come, and each read has the capped read timeout), and no
        // answer, bodiless ones included, can reach the pool with it armed.
        ctx.upstream.watchdog = None;
        if ctx.past_deadline() {
            return Err(ctx.fail(GatewayError::RouteTimeout));
        }
        // `Connection` goes too, although Pingora writes its own: kept, the header map
        // outgrows its parsed size when X-Request-Id is added (callgrind: ~900
        // instructions a request more than removing it).
        for name in forwarding::hop_by_hop(&upstream_response.headers) {
            upstream_response.remove_header(&name);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if session.is_process_shutting_down() {
            // Draining: tell the client to open its next connection elsewhere.
            session.set_keepalive(None);
        }
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS {
            self.upgraded(session, ctx);
        }
        if let Some(cookie) = ctx.upstream.set_cookie.take() {
            upstream_response.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if let Some(route) = ctx.route().filter(|r| r.cache().is_some()) {
            let result = cache::status(&session.cache);
            if ctx.snapshot.metrics {
                route.metrics.cache_result(result);
            }
            ctx.policy.cache.result = Some(result);
        }
        let (policies, state) = ctx.policies_and_state();
        for p in policies {
            p.unit().on_proxied_response(upstream_response, state)?;
        }
        respond::decorate(upstream_response, ctx)
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<()> {
        // An upgrade (WebSocket) is a GET that must reach the upstream, never a stored 200.
        if session.is_upgrade_req() {
            return Ok(());
        }
        if let Some(cache) = ctx.route().and_then(|r| r.cache()) {
            let method = session.req_header().method.clone();
            cache.enable(&method, &mut session.cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Box<Ctx>) -> Result<CacheKey> {
        let cache = route_cache(ctx)?;
        let trusted = ctx.request.trusted_peer;
        let claims = ctx.policy.claims.as_deref();
        cache
            .key(
                session.req_header(),
                &ctx.policy.cache.path,
                claims,
                trusted,
            )
            .map_err(|_| Error::new(pingora::ErrorType::InternalError))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<RespCacheable> {
        let credentialed = cache::credentialed(session.req_header(), ctx.policy.claims.as_deref());
        Ok(route_cache(ctx)?.cacheable(resp, credentialed))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Box<Ctx>,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        CachePolicy::variance(meta, req)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<ForcedFreshness>> {
        let credentialed = cache::credentialed(session.req_header(), ctx.policy.claims.as_deref());
        if credentialed && !route_cache(ctx)?.serves_credentialed(meta) {
            // Stored for anonymous requests: a credentialed one may be answered otherwise.
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        Ok(None)
    }

    /// Stale answers during a background refresh (the entry's `stale_while_revalidate`
    /// bounds it) and when the upstream failed, timed out or its circuit is open (bounded
    /// by `stale_if_error`); never for a client's own error.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Box<Ctx>,
        error: Option<&Error>,
    ) -> bool {
        error.is_none_or(|e| e.esource() != &pingora::ErrorSource::Downstream)
    }

    /// What Pingora's own log lines say of a request: no query (it often carries tokens).
    fn request_summary(&self, session: &Session, ctx: &Box<Ctx>) -> String {
        let req = session.req_header();
        format!(
            "{} {}, request id {}",
            req.method,
            req.uri.path(),
            ctx.request.id()
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        if let Some(e) = e.filter(|e| e.esource() != &pingora::ErrorSource::Downstream) {
            log_failure(ctx, e);
        }
        if let Some(pick) = ctx.upstream.pick.take() {
            // 5xx, resets and timeouts count against the target; a client that went away
            // says nothing about it.
            let outcome = match (ctx.upstream.status, e) {
                (Some(status), _) => Some(status < 500),
                (None, Some(e)) if e.esource() == &pingora::ErrorSource::Downstream => None,
                (None, Some(_)) => Some(false),
                (None, None) => None,
            };
            let upstream = ctx.upstream().map_or("", |u| &*u.name);
            if ctx.snapshot.dashboard {
                let error = match (outcome, ctx.upstream.status, e) {
                    (Some(false), Some(status), _) => Some(format!("answered {status}")),
                    (Some(false), None, Some(e)) => Some(e.etype().as_str().to_string()),
                    _ => None,
                };
                pick.target.observe(ctx.upstream.time, error);
            }
            pick.finish(outcome, upstream);
        }
        if let Some(capture) = ctx.mirror.take().filter(|_| e.is_none()) {
            self.mirror(ctx, capture);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let ended = Instant::now();
        ctx.request.ended = Some(ended);
        if ctx.snapshot.metrics {
            access::record_metrics(&self.telemetry.metrics, session, ctx, status);
        }
        if ctx.snapshot.dashboard {
            access::record_live(&self.telemetry.metrics.live, session, ctx, status);
        }
        let log = &ctx.snapshot.access_log;
        if log.enabled && (log.sample >= 1.0 || fastrand::f64() < log.sample) {
            self.telemetry
                .access_log
                .line(|out| access::access_line(out, session, ctx, status));
        }
        if ctx.upgraded {
            self.telemetry.metrics.upgraded_open.dec();
        }
        if let (Some(trace), Some(tracing)) = (&ctx.trace, &ctx.snapshot.tracing) {
            tracing.export(trace, &access::span_summary(session, ctx, status));
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        guard::request_done(ended);
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        let (policies, state) = ctx.policies_and_state();
        for p in policies {
            p.unit().on_response_body(body, end_of_stream, state)?;
        }
        Ok(None)
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        if let (Some(capture), Some(chunk)) = (&mut ctx.mirror, body) {
            capture.answer_body(chunk);
        }
        // The route timeout bounds getting the 101, not the tunnel after it.
        if ctx.past_deadline() && !session.was_upgraded() {
            return Err(ctx.fail(GatewayError::RouteTimeout));
        }
        Ok(None)
    }

    async fn connected_to_upstream(
        &self,
        session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        // A retry's new connection replaces the last one's watchdog.
        ctx.upstream.watchdog = None;
        if let Some(deadline) = ctx.upstream.deadline {
            // Not for an upgrade: its 101 ends the deadline at once, and a watchdog armed
            // over a tunnel's socket made WebSocket tunnels flaky under load (reset
            // mid-stream, 6 in 44 runs; none in 30 without it); the cause is not found.
            let armed = !ctx.upstream().is_some_and(|u| u.h2) && !session.is_upgrade_req();
            // With no descriptor to spare, the head stays bounded per read only.
            let max_connections = ctx.snapshot.settings.max_connections;
            if let Some(held) = armed
                .then(|| self.descriptors.upstream(max_connections))
                .flatten()
            {
                ctx.upstream.watchdog = deadline::arm(fd, deadline, held);
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
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
        if ctx.request.id().is_empty() {
            ctx.request.set_id(forwarding::request_id(None));
        }
        if let Err(err) = respond::reject(session, ctx, &failure, false).await {
            tracing::debug!(error = %err, "could not send the error response");
        }
        FailToProxy {
            error_code: failure.status(),
            can_reuse_downstream: false,
        }
    }
}
