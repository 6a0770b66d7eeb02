//! Errors the gateway itself answers with, always as JSON with the request id:
//! `{"error": {"status": 404, "code": "route_not_found", "message": "...", "request_id": "..."}}`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use serde::Serialize;

/// Header names are parsed once: lookups take the name, inserts its `.as_str()` (Pingora
/// turns a `HeaderName` back into title-case text for its case-preserving map, which
/// allocates; a `&'static str` is kept as written).
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Why a request was not authenticated; each maps to a 401 with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(String),
    KeysUnavailable,
    /// The header lists critical extensions (`crit`); Portico implements none.
    CriticalExtension,
    /// A time claim (`exp`, `nbf`, `iat`) that is not a number.
    BadTimeClaim(&'static str),
    /// A claim to forward that has no unambiguous header form.
    BadClaim(String),
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed => "token_malformed",
            AuthError::AlgorithmNotAllowed => "token_algorithm_not_allowed",
            AuthError::UnknownKey => "token_unknown_key",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongIssuer => "token_wrong_issuer",
            AuthError::WrongAudience => "token_wrong_audience",
            AuthError::MissingClaim(_) => "token_missing_claim",
            AuthError::KeysUnavailable => "token_keys_unavailable",
            AuthError::CriticalExtension => "token_unsupported_crit",
            AuthError::BadTimeClaim(_) => "token_bad_time_claim",
            AuthError::BadClaim(_) => "token_bad_claim",
        }
    }

    pub fn message(&self) -> String {
        match self {
            AuthError::Missing => "no token was sent".into(),
            AuthError::Malformed => "the token is not a well-formed JWT".into(),
            AuthError::AlgorithmNotAllowed => "the token's algorithm is not accepted here".into(),
            AuthError::UnknownKey => "the token was signed with an unknown key".into(),
            AuthError::BadSignature => "the token's signature is invalid".into(),
            AuthError::Expired => "the token has expired".into(),
            AuthError::NotYetValid => "the token is not valid yet".into(),
            AuthError::WrongIssuer => "the token has the wrong issuer".into(),
            AuthError::WrongAudience => "the token has the wrong audience".into(),
            AuthError::MissingClaim(c) => format!("the token lacks the required claim `{c}`"),
            AuthError::KeysUnavailable => "the signing keys could not be fetched".into(),
            AuthError::CriticalExtension => {
                "the token requires extensions (`crit`) this gateway does not implement".into()
            }
            AuthError::BadTimeClaim(c) => format!("the token's `{c}` claim is not a number"),
            AuthError::BadClaim(c) => format!(
                "the token's `{c}` claim cannot be forwarded: control characters, a comma inside a list item, or over 4096 bytes"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the body (`/address/zip`), or `header:NAME` / `query:NAME`.
    pub path: String,
    pub message: String,
}

/// A refusal a policy defines itself (its status, code and message), so a new policy adds
/// no variant here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
}

/// A request that repeats a header (or cookie) a policy reads: which copy counts would be
/// a guess, and the upstream would see them all.
pub const AMBIGUOUS_HEADER: Refusal = Refusal {
    status: 400,
    code: "ambiguous_header",
    message: "the request repeats a header or cookie this route reads; send it once",
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    Refused(Refusal),
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
    Unauthorized(AuthError),
    Forbidden,
    CorsRejected,
    RateLimited {
        retry_after: u64,
    },
    RateLimitUnavailable,
    UnsupportedMediaType,
    InvalidJson(String),
    ValidationFailed(Vec<Violation>),
    NoUpstreamAvailable,
    NoHealthyUpstream,
    CircuitOpen,
    UpstreamUnreachable,
    /// The TLS handshake with the upstream failed (its certificate did not verify).
    UpstreamTls,
    UpstreamTimeout,
    RouteTimeout,
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::Refused(r) => r.status,
            GatewayError::AggregateFailed { timeout: true, .. } => 504,
            GatewayError::AggregateFailed { .. } => 502,
            GatewayError::BadPath(_)
            | GatewayError::BadFraming(_)
            | GatewayError::BadRequest
            | GatewayError::InvalidJson(_)
            | GatewayError::ValidationFailed(_) => 400,
            GatewayError::UnsupportedMediaType => 415,
            GatewayError::RouteNotFound => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::Unauthorized(_) => 401,
            GatewayError::Forbidden | GatewayError::CorsRejected => 403,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::UpstreamUnreachable | GatewayError::UpstreamTls => 502,
            GatewayError::NoUpstreamAvailable
            | GatewayError::NoHealthyUpstream
            | GatewayError::CircuitOpen
            | GatewayError::RateLimitUnavailable => 503,
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
            GatewayError::UnsupportedMediaType => "unsupported_media_type",
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::ValidationFailed(_) => "validation_failed",
            GatewayError::RouteNotFound => "route_not_found",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::Unauthorized(e) => e.code(),
            GatewayError::Forbidden => "insufficient_claims",
            GatewayError::CorsRejected => "cors_rejected",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::RateLimitUnavailable => "rate_limit_unavailable",
            GatewayError::NoUpstreamAvailable => "no_upstream_available",
            GatewayError::NoHealthyUpstream => "no_healthy_upstream",
            GatewayError::CircuitOpen => "circuit_open",
            GatewayError::UpstreamUnreachable => "upstream_unreachable",
            GatewayError::UpstreamTls => "upstream_tls_failed",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::RouteTimeout => "route_timeout",
            GatewayError::Internal => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            GatewayError::Refused(r) => r.message.into(),
            GatewayError::AggregateFailed { call, reason, .. } => {
                format!("the required call `{call}` failed: {reason}")
            }
            GatewayError::BadPath(why) => format!("the request path cannot be routed: {why}"),
            GatewayError::BadRequest => "the request is malformed".into(),
            GatewayError::BadFraming(why) => format!("the request is refused: {why}"),
            GatewayError::UnsupportedMediaType => {
                "this route takes a JSON body (Content-Type: application/json)".into()
            }
            GatewayError::InvalidJson(why) => format!("the body is not valid JSON: {why}"),
            GatewayError::ValidationFailed(v) => format!(
                "the request breaks {} rule(s) of the route's schema",
                v.len()
            ),
            GatewayError::RouteNotFound => "no route matches this request".into(),
            GatewayError::MethodNotAllowed { allow } => format!("this path accepts only {allow}"),
            GatewayError::BodyTooLarge { limit } => {
                format!("the request body exceeds the limit of {limit} bytes")
            }
            GatewayError::Unauthorized(e) => e.message(),
            GatewayError::Forbidden => "the token lacks the claims this route requires".into(),
            GatewayError::CorsRejected => {
                "this origin, method or header is not allowed by the route's CORS policy".into()
            }
            GatewayError::RateLimited { retry_after } => {
                format!("too many requests; retry in {retry_after} s")
            }
            GatewayError::RateLimitUnavailable => {
                "the rate limiter is unavailable and this route denies unchecked requests".into()
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
            GatewayError::UpstreamTls => {
                "the TLS handshake with the upstream failed: its certificate could not be verified"
                    .into()
            }
            GatewayError::RouteTimeout => "the request exceeded the route's time limit".into(),
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
        if let GatewayError::ValidationFailed(violations) = self {
            body["error"]["violations"] = serde_json::to_value(violations).unwrap_or_default();
        }
        if let GatewayError::AggregateFailed { call, .. } = self {
            body["error"]["call"] = call.as_str().into();
        }
        let body = Bytes::from(body.to_string());
        let mut header = ResponseHeader::build(self.status(), Some(5)).expect("valid status");
        let _ = header.insert_header(http::header::CONTENT_TYPE, "application/json");
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body.len());
        let _ = header.insert_header(http::header::CACHE_CONTROL, "no-store");
        let _ = header.insert_header(X_REQUEST_ID.as_str(), request_id);
        match self {
            GatewayError::MethodNotAllowed { allow } => {
                let _ = header.insert_header(http::header::ALLOW, allow.as_str());
            }
            GatewayError::RateLimited { retry_after } => {
                let _ = header.insert_header(http::header::RETRY_AFTER, *retry_after);
            }
            GatewayError::Unauthorized(AuthError::Missing) => {
                let _ = header
                    .insert_header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"portico\"");
            }
            GatewayError::Unauthorized(e) => {
                let value = format!(
                    "Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"{}\"",
                    e.message()
                );
                let _ = header.insert_header(http::header::WWW_AUTHENTICATE, value);
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
        if let GatewayError::RateLimited { retry_after } = self {
            let _ = header.insert_header(http::header::RETRY_AFTER, *retry_after);
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
