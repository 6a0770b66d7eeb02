//! Per-request state, grouped by concern. `snapshot` is loaded once in `new_ctx` and read
//! by every phase, so a reload never mixes two configs in one request.

use crate::errors::GatewayError;
use crate::policy::{Policy, PolicyState, RequestInfo};
use crate::snapshot::{Backend, Route, Snapshot};
use crate::upstream::{Pick, Target, Upstream};
use pingora::{Error, ErrorType};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Facts about the client request, known once its head is read.
pub struct RequestFacts {
    /// Set together by [`RequestFacts::set_id`]: the header value is made once, and the
    /// upstream request and the answer carry it.
    id: String,
    id_header: http::HeaderValue,
    /// The connection's peer.
    pub peer: Option<IpAddr>,
    /// The client, as `trusted_proxies` decides it.
    pub client_ip: Option<IpAddr>,
    /// The peer is one of `trusted_proxies`.
    pub trusted_peer: bool,
    /// The `X-Forwarded-For` to send, made once from the client's chain.
    pub forwarded_for: Option<http::HeaderValue>,
    /// This hop's `traceparent`, which holds the trace id.
    pub traceparent: String,
    pub started: Instant,
    /// When the request ended (set as it is logged): metrics, the dashboard and the log
    /// line read one clock and tell the same duration.
    pub ended: Option<Instant>,
    /// Request body bytes seen so far.
    pub body_seen: u64,
    /// The client connection is TLS.
    pub tls: bool,
    /// This request's place on its HTTP/1.1 connection (1 for the first; 0 on HTTP/2).
    pub nth_on_connection: usize,
}

impl RequestFacts {
    /// Sets the request id (checked to be `[A-Za-z0-9._:-]`, or made here).
    pub fn set_id(&mut self, id: String) {
        self.id_header =
            http::HeaderValue::from_str(&id).unwrap_or(http::HeaderValue::from_static(""));
        self.id = id;
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn id_header(&self) -> &http::HeaderValue {
        &self.id_header
    }

    /// How long the request took: until it ended, or until now.
    pub fn duration(&self) -> Duration {
        self.ended.unwrap_or_else(Instant::now) - self.started
    }
}

/// The upstream side: the path sent, the tries made, and their timing.
#[derive(Default)]
pub struct UpstreamTry {
    /// The route's backend the request goes to, once chosen (see `Route::backend`).
    pub backend: Option<usize>,
    pub uri: Option<http::Uri>,
    /// Inline: a request tries a few targets at most, and this is made per request.
    pub tried: smallvec::SmallVec<[usize; 4]>,
    pub pick: Option<Pick>,
    pub target: Option<Arc<Target>>,
    pub deadline: Option<Instant>,
    pub sent: Option<Instant>,
    pub time: Option<Duration>,
    pub status: Option<u16>,
    /// The last connection attempt failed in its TLS handshake.
    pub tls_failed: bool,
    /// A sticky route's cookie for the answer (see `sticky`).
    pub set_cookie: Option<String>,
    /// A try the route's retry policy decided to make again, and why (see `retry`).
    pub retrying: Option<crate::retry::Reason>,
    /// Ends the connection at the route deadline, while the upstream owes an answer.
    pub watchdog: Option<super::deadline::Watchdog>,
    /// The descriptor the upstream connection takes (see `descriptors`).
    pub descriptor: Option<crate::descriptors::UpstreamHeld>,
}

pub struct Ctx {
    pub snapshot: Arc<Snapshot>,
    pub request: RequestFacts,
    /// Index into `snapshot.routes`, once routed.
    pub route: Option<usize>,
    pub policy: PolicyState,
    pub upstream: UpstreamTry,
    /// Why the request fails, for `fail_to_proxy`.
    pub failure: Option<GatewayError>,
    /// The error code of the answer, for the access log.
    pub error_code: Option<&'static str>,
    /// Why the gateway answered with an error, in words (kept for the dashboard only).
    pub error_reason: Option<String>,
    /// `name:outcome` of an aggregate route's calls, for the access log.
    pub calls: Option<String>,
    /// The connection was upgraded (101): the request lasts as long as the tunnel.
    pub upgraded: bool,
    /// The spans of a sampled request, when `telemetry.tracing` is on.
    pub trace: Option<crate::otlp::RequestTrace>,
    /// What a mirrored request's copy and verdict need (see `mirror`).
    pub mirror: Option<Box<crate::mirror::Capture>>,
}

impl RequestFacts {
    pub fn trace_id(&self) -> &str {
        super::forwarding::trace_id(&self.traceparent)
    }
}

impl Ctx {
    pub fn new(snapshot: Arc<Snapshot>) -> Ctx {
        Ctx {
            snapshot,
            request: RequestFacts {
                id: String::new(),
                id_header: http::HeaderValue::from_static(""),
                peer: None,
                client_ip: None,
                trusted_peer: false,
                forwarded_for: None,
                traceparent: String::new(),
                started: Instant::now(),
                ended: None,
                body_seen: 0,
                tls: false,
                nth_on_connection: 0,
            },
            route: None,
            policy: PolicyState::default(),
            upstream: UpstreamTry::default(),
            failure: None,
            error_code: None,
            error_reason: None,
            trace: None,
            mirror: None,
            calls: None,
            upgraded: false,
        }
    }

    pub fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.snapshot.routes[i])
    }

    /// The route's policies (none before routing) beside the state they write: one borrow
    /// of the snapshot, one of the state.
    pub fn policies_and_state(&mut self) -> (&[Policy], &mut PolicyState) {
        let Ctx {
            snapshot,
            policy,
            route,
            ..
        } = self;
        let policies = route.map_or(&[][..], |i| &snapshot.routes[i].policies[..]);
        (policies, policy)
    }

    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        Some(&self.backend()?.upstream)
    }

    pub fn backend(&self) -> Option<&Backend> {
        self.route()?.backend(self.upstream.backend)
    }

    /// What policies see of this request.
    pub fn info<'a>(&'a self, route: &'a Route) -> RequestInfo<'a> {
        RequestInfo {
            client_ip: self.request.client_ip,
            trusted_peer: self.request.trusted_peer,
            request_id: self.request.id(),
            route: &route.name,
            tls: self.request.tls,
        }
    }

    pub fn remaining(&self) -> Option<Duration> {
        self.upstream
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    pub fn past_deadline(&self) -> bool {
        self.remaining().is_some_and(|r| r.is_zero())
    }

    /// Records why the request fails, for `fail_to_proxy`, and returns the Pingora error.
    pub fn fail(&mut self, failure: GatewayError) -> Box<Error> {
        let status = failure.status();
        self.failure = Some(failure);
        Error::new(ErrorType::HTTPStatus(status))
    }
}
