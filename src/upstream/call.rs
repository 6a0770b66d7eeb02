//! Calls the gateway makes to an upstream itself (an aggregate's calls, a mirror's copies),
//! as a proxied request goes: the upstream's balancing, health, breaker, TLS, HTTP/2,
//! timeouts and connect retries, over Pingora's pooled connector, each holding a descriptor
//! from the upstream connections' share (see `descriptors`).

use super::{Pick, PickError, Upstream, UpstreamTls};
use crate::descriptors::Descriptors;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::Method;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use std::time::{Duration, Instant};

/// How long a pooled connection may stay idle.
const IDLE: Duration = Duration::from_secs(60);

/// How calls reach their upstreams.
pub struct Link<'a> {
    pub connector: &'a Connector,
    pub descriptors: &'static Descriptors,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    Timeout,
    Unreachable,
    CircuitOpen,
    NoHealthyUpstream,
    NoAddress,
    /// The upstream connections' share of descriptors is taken.
    Overloaded,
}

impl CallError {
    pub fn outcome(self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Unreachable => "unreachable",
            CallError::CircuitOpen => "circuit_open",
            CallError::NoHealthyUpstream => "no_healthy_upstream",
            CallError::NoAddress => "no_upstream_available",
            CallError::Overloaded => "overloaded",
        }
    }

    /// Why, in words, after "the call failed: ".
    pub fn describe(self) -> &'static str {
        match self {
            CallError::Timeout => "it did not answer in time",
            CallError::Unreachable => "its upstream could not be reached",
            CallError::CircuitOpen => "its upstream's circuit breaker is open",
            CallError::NoHealthyUpstream => "every target of its upstream is unhealthy",
            CallError::NoAddress => "no target of its upstream has an address",
            CallError::Overloaded => "the gateway holds as many upstream connections as it may",
        }
    }
}

impl From<PickError> for CallError {
    fn from(e: PickError) -> CallError {
        match e {
            PickError::Exhausted => CallError::Unreachable,
            PickError::CircuitOpen => CallError::CircuitOpen,
            PickError::Unhealthy => CallError::NoHealthyUpstream,
            PickError::NoAddress => CallError::NoAddress,
        }
    }
}

/// An upstream's answer to a call.
pub struct Reply {
    pub status: u16,
    /// The whole body, or None when it is over the call's `max_body`.
    pub body: Option<Vec<u8>>,
    /// From sending the request to its answer's head.
    pub head_time: Duration,
    /// The body is content-encoded (gzip, br...), so its bytes are not the content's.
    pub encoded: bool,
}

/// The peer for a picked target: TLS and HTTP/2 as its upstream says (timeouts are the
/// caller's).
#[inline]
pub fn peer(up: &Upstream, pick: &Pick) -> HttpPeer {
    let mut peer = match &up.tls {
        None => HttpPeer::new(pick.addr, false, String::new()),
        Some(tls) => tls_peer(pick.addr, tls, &pick.target.host),
    };
    if up.h2 {
        peer.options.set_http_version(2, 2);
    }
    peer
}

/// A TLS peer. SNI is never empty: Pingora skips verification for a peer without one.
fn tls_peer(addr: std::net::SocketAddr, tls: &UpstreamTls, host: &str) -> HttpPeer {
    let sni = tls.sni.clone().unwrap_or_else(|| host.to_string());
    let mut peer = HttpPeer::new(addr, true, sni);
    peer.options.verify_cert = tls.verify;
    peer.options.verify_hostname = tls.verify;
    peer.options.ca = tls.ca.clone();
    peer.client_cert_key = tls.client.clone();
    peer.group_key = tls.pool;
    peer
}

/// One call: a target is picked (another is tried on connect failure, up to the upstream's
/// `retries`), `req` sent with `body`, and the answer read whole up to `max_body`, all
/// before `deadline`. The target's breaker and outlier detection hear how it went.
pub async fn call(
    link: &Link<'_>,
    up: &Upstream,
    req: &RequestHeader,
    body: Bytes,
    deadline: Instant,
    max_body: u64,
) -> Result<Reply, CallError> {
    let _descriptor = link
        .descriptors
        .upstream(link.max_connections)
        .ok_or(CallError::Overloaded)?;
    let mut tried = Vec::new();
    loop {
        let pick = up.pick(None, &tried)?;
        tried.push(pick.index);
        let left = deadline.saturating_duration_since(Instant::now());
        let mut peer = peer(up, &pick);
        peer.options.connection_timeout = Some(up.connect_timeout.min(left));
        peer.options.read_timeout = Some(up.read_timeout.min(left));
        peer.options.write_timeout = Some(up.write_timeout.min(left));
        // Boxed, as is the exchange: Pingora's connect future is large, and inline it would
        // make every caller's future (a mirror's spawned task) as large, copied on each move.
        let connecting = Box::pin(link.connector.get_http_session(&peer));
        let connect = tokio::time::timeout(left, connecting).await;
        let mut session = match connect {
            Ok(Ok((session, _reused))) => session,
            Ok(Err(e)) => {
                pick.finish(Some(false), &up.name);
                let timed_out = Instant::now() >= deadline;
                if !timed_out && tried.len() <= up.retry_attempts as usize {
                    continue;
                }
                tracing::debug!(upstream = %up.name, error = %e, "call could not connect");
                return Err(if timed_out {
                    CallError::Timeout
                } else {
                    CallError::Unreachable
                });
            }
            Err(_) => {
                pick.finish(Some(false), &up.name);
                return Err(CallError::Timeout);
            }
        };
        // Timed out here, not by dropping the call, so the target's breaker hears of it.
        let left = deadline.saturating_duration_since(Instant::now());
        let exchanged = Box::pin(exchange(&mut session, req.clone(), body.clone(), max_body));
        let result = tokio::time::timeout(left, exchanged)
            .await
            .unwrap_or(Err(CallError::Timeout));
        pick.finish(
            Some(result.as_ref().is_ok_and(|r| r.status < 500)),
            &up.name,
        );
        let reply = result?;
        if reply.body.is_some() {
            link.connector
                .release_http_session(session, &peer, Some(IDLE))
                .await;
        }
        return Ok(reply);
    }
}

/// A call's request in the upstream session's own version, never the client's: an HTTP/2
/// client's request line would otherwise reach an HTTP/1.1 upstream as `GET /a HTTP/2`.
fn for_upstream(mut req: RequestHeader, session: &HttpSession, body: &Bytes) -> RequestHeader {
    match session {
        HttpSession::H1(_) => req.set_version(http::Version::HTTP_11),
        HttpSession::H2(_) => req.set_version(http::Version::HTTP_2),
        HttpSession::Custom(_) => {}
    }
    // An empty body of a method that carries one is framed too (some servers want 411).
    let carries = matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
    if !body.is_empty() || carries {
        let _ = req.insert_header(CONTENT_LENGTH, body.len());
    }
    req
}

/// Sends a request and reads its answer (the body whole, when at most `max_body` bytes).
async fn exchange(
    session: &mut HttpSession,
    req: RequestHeader,
    body: Bytes,
    max_body: u64,
) -> Result<Reply, CallError> {
    let timeout = |e: pingora::BError| match e.etype() {
        pingora::ErrorType::ReadTimedout
        | pingora::ErrorType::WriteTimedout
        | pingora::ErrorType::ConnectTimedout => CallError::Timeout,
        _ => CallError::Unreachable,
    };
    let sent = Instant::now();
    let req = for_upstream(req, session, &body);
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(timeout)?;
    if !body.is_empty() {
        session
            .write_request_body(body, false)
            .await
            .map_err(timeout)?;
    }
    session.finish_request_body().await.map_err(timeout)?;
    // Interim answers (100 Continue, 103 Early Hints) come before the answer itself.
    let status = loop {
        session.read_response_header().await.map_err(timeout)?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        if !(100..200).contains(&status) || status == 101 {
            break status;
        }
    };
    let head_time = sent.elapsed();
    let encoded = session
        .response_header()
        .and_then(|h| h.headers.get(http::header::CONTENT_ENCODING))
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let declared = session
        .response_header()
        .and_then(|h| h.headers.get(CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut reply = Reply {
        status,
        body: None,
        head_time,
        encoded,
    };
    if declared.is_some_and(|len| len > max_body) {
        return Ok(reply);
    }
    let mut whole = Vec::new();
    while let Some(chunk) = session.read_response_body().await.map_err(timeout)? {
        whole.extend_from_slice(&chunk);
        if whole.len() as u64 > max_body {
            return Ok(reply);
        }
    }
    reply.body = Some(whole);
    Ok(reply)
}
