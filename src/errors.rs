//! Errors the gateway itself answers with, always as JSON with the request id:
//! `{"error": {"status": 404, "code": "route_not_found", "message": "...", "request_id": "..."}}`.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use std::borrow::Cow;

/// Header names are parsed once: lookups take the name, inserts its `.as_str()` (Pingora
/// turns a `HeaderName` back into title-case text for its case-preserving map, which
/// allocates; a `&'static str` is kept as written).
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What a refusal counts toward in the route's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Nothing,
    /// `portico_auth_failures_total`, by code.
    AuthFailure,
    /// `portico_rate_limited_total`.
    RateLimited,
}

/// A refusal a policy defines itself: its status, code, message, the headers the answer
/// carries (`WWW-Authenticate`, `Retry-After`) and any extra field of the JSON error, so a
/// new policy adds nothing here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// An extra field of the JSON error (`violations`).
    pub detail: Option<(&'static str, serde_json::Value)>,
    pub counted: Counted,
    /// A body written by someone else (a forward-auth service's denial) sent instead of
    /// the JSON error, with the headers above (its `Content-Type` among them).
    pub answer: Option<Bytes>,
}

impl Refusal {
    /// A refusal with a fixed message and no extra header.
    pub const fn fixed(status: u16, code: &'static str, message: &'static str) -> Refusal {
        Refusal {
            status,
            code,
            message: Cow::Borrowed(message),
            headers: Vec::new(),
            detail: None,
            counted: Counted::Nothing,
            answer: None,
        }
    }

    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            message: message.into(),
            ..Refusal::fixed(status, code, "")
        }
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Refusal {
        self.headers.push((name, value));
        self
    }

    pub fn detail(mut self, field: &'static str, value: serde_json::Value) -> Refusal {
        self.detail = Some((field, value));
        self
    }

    pub fn counted(mut self, counted: Counted) -> Refusal {
        self.counted = counted;
        self
    }
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> GatewayError {
        GatewayError::Refused(Box::new(r))
    }
}

/// A request that repeats a header (or cookie) a policy reads: which copy counts would be
/// a guess, and the upstream would see them all.
pub const AMBIGUOUS_HEADER: Refusal = Refusal::fixed(
    400,
    "ambiguous_header",
    "the request repeats a header or cookie this route reads; send it once",
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// A policy's own refusal (boxed: refusals are rare, and results stay small).
    Refused(Box<Refusal>),
    /// A required call of an aggregate route failed.
    AggregateFailed {
        call: String,
        timeout: bool,
        reason: String,
    },
    BadPath(String),
    BadRequest,
    /// A head whose framing or target could be read two ways.
    BadFraming(&'static str),
    RouteNotFound,
    MethodNotAllowed {
        allow: String,
    },
    BodyTooLarge {
        limit: u64,
    },
    NoUpstreamAvailable,
    NoHealthyUpstream,
    CircuitOpen,
    UpstreamUnreachable,
    /// The TLS handshake with the upstream failed (its certificate did not verify).
    UpstreamTls,
    /// The upstream answered, but not with well-formed HTTP.
    UpstreamBadResponse,
    UpstreamTimeout,
    RouteTimeout,
    /// The upstream connections' share of descriptors is taken (see `proxy::descriptors`).
    Overloaded,
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Refused(r) => r.status,
            GatewayError::AggregateFailed { timeout: true, .. } => 504,
            GatewayError::AggregateFailed { .. } => 502,
            GatewayError::BadPath(_) | GatewayError::BadFraming(_) | GatewayError::BadRequest => {
                400
            }
            GatewayError::RouteNotFound => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::UpstreamUnreachable
            | GatewayError::UpstreamTls
            | GatewayError::UpstreamBadResponse => 502,
            GatewayError::NoUpstreamAvailable
            | GatewayError::NoHealthyUpstream
            | GatewayError::CircuitOpen
            | GatewayError::Overloaded => 503,
            GatewayError::UpstreamTimeout | GatewayError::RouteTimeout => 504,
            GatewayError::Internal => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Refused(r) => r.code,
            GatewayError::AggregateFailed { timeout: true, .. } => "aggregate_call_timeout",
            GatewayError::AggregateFailed { .. } => "aggregate_call_failed",
            GatewayError::BadPath(_) => "bad_path",
            GatewayError::BadRequest => "bad_request",
            GatewayError::BadFraming(_) => "bad_framing",
            GatewayError::RouteNotFound => "route_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NoUpstreamAvailable => "no_upstream_available",
            GatewayError::NoHealthyUpstream => "no_healthy_upstream",
            GatewayError::CircuitOpen => "circuit_open",
            GatewayError::UpstreamUnreachable => "upstream_unreachable",
            GatewayError::UpstreamTls => "upstream_tls_failed",
            GatewayError::UpstreamBadResponse => "upstream_bad_response",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::RouteTimeout => "route_timeout",
            GatewayError::Overloaded => "gateway_overloaded",
            GatewayError::Internal => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            GatewayError::Refused(r) => r.message.to_string(),
            GatewayError::AggregateFailed { call, reason, .. } => {
                format!("the required call `{call}` failed: {reason}")
            }
            GatewayError::BadPath(why) => format!("the request path cannot be routed: {why}"),
            GatewayError::BadRequest => "the request is malformed".into(),
            GatewayError::BadFraming(why) => format!("the request is refused: {why}"),
            GatewayError::RouteNotFound => "no route matches this request".into(),
            GatewayError::MethodNotAllowed { allow } => format!("this path accepts only {allow}"),
            GatewayError::BodyTooLarge { limit } => {
                format!("the request body exceeds the limit of {limit} bytes")
            }
            GatewayError::NoUpstreamAvailable => "no upstream target has an address".into(),
            GatewayError::NoHealthyUpstream => {
                "every upstream target failed its health checks".into()
            }
            GatewayError::CircuitOpen => {
                "the upstream is failing; its circuit breaker is open".into()
            }
            GatewayError::UpstreamUnreachable => {
                "the upstream could not be reached or closed the connection".into()
            }
            GatewayError::UpstreamTimeout => "the upstream did not answer in time".into(),
            GatewayError::UpstreamBadResponse => {
                "the upstream's answer was not well-formed HTTP".into()
            }
            GatewayError::UpstreamTls => {
                "the TLS handshake with the upstream failed: its certificate could not be verified"
                    .into()
            }
            GatewayError::RouteTimeout => "the request exceeded the route's time limit".into(),
            GatewayError::Overloaded => {
                "the gateway holds as many upstream connections as it may; retry shortly".into()
            }
            GatewayError::Internal => "the gateway failed to handle the request".into(),
        }
    }

    /// Maps a Pingora error that has no gateway error attached; None when the client is gone.
    pub fn from_pingora(e: &Error) -> Option<GatewayError> {
        use ErrorType::*;
        match (e.esource(), e.etype()) {
            (_, HTTPStatus(413)) => Some(GatewayError::BodyTooLarge { limit: 0 }),
            (_, HTTPStatus(504)) => Some(GatewayError::RouteTimeout),
            (_, ConnectTimedout | ReadTimedout | WriteTimedout)
                if e.esource() != &ErrorSource::Downstream =>
            {
                Some(GatewayError::UpstreamTimeout)
            }
            (_, TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup)
                if e.esource() != &ErrorSource::Downstream =>
            {
                Some(GatewayError::UpstreamTls)
            }
            (ErrorSource::Upstream, InvalidHTTPHeader | H1Error | H2Error | InvalidH2) => {
                Some(GatewayError::UpstreamBadResponse)
            }
            (ErrorSource::Upstream, _) => Some(GatewayError::UpstreamUnreachable),
            (_, ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure) => {
                Some(GatewayError::UpstreamUnreachable)
            }
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => None,
            (ErrorSource::Downstream, _) => Some(GatewayError::BadRequest),
            (_, HTTPStatus(code)) if (400..500).contains(code) => Some(GatewayError::BadRequest),
            _ => Some(GatewayError::Internal),
        }
    }

    /// The response header and JSON body for this error.
    pub fn response(&self, request_id: &str) -> (ResponseHeader, Bytes) {
        let mut body = serde_json::json!({
            "error": {
                "status": self.status(),
                "code": self.code(),
                "message": self.message(),
                "request_id": request_id,
            }
        });
        if let GatewayError::Refused(r) = self {
            if let Some((field, value)) = &r.detail {
                body["error"][*field] = value.clone();
            }
        }
        if let GatewayError::AggregateFailed { call, .. } = self {
            body["error"]["call"] = call.as_str().into();
        }
        let answer = match self {
            GatewayError::Refused(r) => r.answer.clone(),
            _ => None,
        };
        let json = answer.is_none();
        let body = answer.unwrap_or_else(|| Bytes::from(body.to_string()));
        let mut header = ResponseHeader::build(self.status(), Some(5)).expect("valid status");
        if json {
            let _ = header.insert_header(http::header::CONTENT_TYPE, "application/json");
        }
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
        let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
        let _ = header.insert_header(X_REQUEST_ID.as_str(), request_id);
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                let _ = header.insert_header(http::header::ALLOW, allow.as_str());
            }
            GatewayError::Overloaded => {
                let _ = header.insert_header(http::header::RETRY_AFTER, "1");
            }
            GatewayError::Refused(r) => {
                for (name, value) in &r.headers {
                    let _ = header.append_header(name.clone(), value.clone());
                }
            }
            _ => {}
        }
        (header, body)
    }

    /// The gRPC status code for this error (what a gRPC client sees instead of the HTTP
    /// status): see grpc/doc/statuscodes.md.
    pub fn grpc_status(&self) -> u8 {
        match self.status() {
            400 | 415 | 422 => 3, // INVALID_ARGUMENT
            401 => 16,            // UNAUTHENTICATED
            403 => 7,             // PERMISSION_DENIED
            404 | 405 => 12,      // UNIMPLEMENTED
            408 | 504 => 4,       // DEADLINE_EXCEEDED
            413 | 429 => 8,       // RESOURCE_EXHAUSTED
            502 | 503 => 14,      // UNAVAILABLE
            _ => 13,              // INTERNAL
        }
    }

    /// This error as a gRPC client expects it: a trailers-only answer (HTTP 200, the
    /// status in `grpc-status`, the message percent-encoded in `grpc-message`).
    pub fn grpc_response(&self, request_id: &str) -> ResponseHeader {
        const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
        let message = format!("{} ({})", self.message(), self.code());
        let message = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE).to_string();
        let mut header = ResponseHeader::build(200, Some(5)).expect("valid status");
        let _ = header.insert_header(http::header::CONTENT_TYPE, "application/grpc");
        let _ = header.insert_header("grpc-status", self.grpc_status().to_string());
        let _ = header.insert_header("grpc-message", message);
        let _ = header.insert_header(X_REQUEST_ID.as_str(), request_id);
        if let GatewayError::Refused(r) = self {
            for (name, value) in &r.headers {
                let _ = header.append_header(name.clone(), value.clone());
            }
        }
        header
    }
}

/// Whether a request is a gRPC call (its errors are then gRPC errors, not JSON).
pub fn is_grpc(req: &pingora::http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_errors_map_to_statuses() {
        let map = |source, etype| {
            let mut e = Error::new(etype);
            e.esource = source;
            GatewayError::from_pingora(&e).map(|g| g.status())
        };
        assert_eq!(
            map(ErrorSource::Internal, ErrorType::InternalError),
            Some(500)
        );
        assert_eq!(
            map(ErrorSource::Upstream, ErrorType::ReadTimedout),
            Some(504)
        );
        assert_eq!(
            map(ErrorSource::Upstream, ErrorType::ConnectRefused),
            Some(502)
        );
        assert_eq!(
            map(ErrorSource::Downstream, ErrorType::InvalidHTTPHeader),
            Some(400)
        );
        assert_eq!(
            map(ErrorSource::Downstream, ErrorType::ConnectionClosed),
            None
        );
    }

    #[test]
    fn internal_errors_are_json_with_the_request_id() {
        let (header, body) = GatewayError::Internal.response("req-1");
        assert_eq!(header.status.as_u16(), 500);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "internal_error");
        assert_eq!(json["error"]["request_id"], "req-1");
        assert_eq!(header.headers["x-request-id"], "req-1");
    }
}
