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

/// Every error code Portico answers with, on the proxy and on the admin listener. The
/// codes are one closed list, so `portico reference errors` (the book's error-code page)
/// cannot miss one, and a new code cannot ship without its status and meaning.
macro_rules! codes {
    ($($variant:ident = $text:literal, $status:literal, $meaning:literal;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code { $($variant),* }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $text),* }
            }

            /// The status (or statuses) it is answered with, as the reference writes it.
            pub const fn status(self) -> &'static str {
                match self { $(Code::$variant => $status),* }
            }

            pub const fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning),* }
            }
        }
    };
}

codes! {
    BadPath = "bad_path", "400", "The path cannot be normalized safely: an encoded `/`, `\\` or control character, a `..` above the root, a `;` parameter on a route without `allow_path_params`, or a segment ending in `.` or a space.";
    BadRequest = "bad_request", "400", "The request is malformed in a way no other code names (an invalid `Host`, an unreadable body).";
    BadFraming = "bad_framing", "400", "The request's framing could be read two ways (two `Content-Length`s, `Transfer-Encoding` other than `chunked`, both together, bare LF line ends, a malformed chunk): refused before anything reaches an upstream.";
    AmbiguousHeader = "ambiguous_header", "400", "The request repeats a header or cookie the route reads (a token, a key, a sticky or hash header): which copy counts would be a guess.";
    ValidationFailed = "validation_failed", "400", "The request breaks the route's `validate` rules; `violations` lists each one.";
    InvalidJson = "invalid_json", "400", "A body the route validates is not valid JSON.";
    TokenMissing = "token_missing", "401", "A JWT route got no token where its policy's `token` says to look.";
    TokenMalformed = "token_malformed", "401", "The token is not a well-formed JWT.";
    TokenAlgorithmNotAllowed = "token_algorithm_not_allowed", "401", "The token's `alg` is not in the policy's `algorithms` (`none` never is).";
    TokenUnknownKey = "token_unknown_key", "401", "No key of the policy has the token's `kid` (a JWKS URL is refetched first, at most every 10 s).";
    TokenBadSignature = "token_bad_signature", "401", "The token's signature does not verify.";
    TokenExpired = "token_expired", "401", "The token's `exp` has passed (beyond `leeway`).";
    TokenNotYetValid = "token_not_yet_valid", "401", "The token's `nbf` is in the future (beyond `leeway`).";
    TokenWrongIssuer = "token_wrong_issuer", "401", "The token's `iss` is not the policy's `issuer`.";
    TokenWrongAudience = "token_wrong_audience", "401", "The token's `aud` does not name the policy's `audience`.";
    TokenMissingClaim = "token_missing_claim", "401", "A claim in `required_claims` (or `exp`) is absent.";
    TokenKeysUnavailable = "token_keys_unavailable", "401", "The policy's keys could not be loaded (a JWKS URL unreachable since start).";
    TokenUnsupportedCrit = "token_unsupported_crit", "401", "The token lists critical header extensions (`crit`); Portico implements none.";
    TokenBadTimeClaim = "token_bad_time_claim", "401", "A time claim (`exp`, `nbf`, `iat`) is not a number.";
    TokenBadClaim = "token_bad_claim", "401", "A claim to forward upstream has no unambiguous header form.";
    TokenInactive = "token_inactive", "401", "The introspection endpoint says the token is not active (revoked, expired or unknown).";
    ApiKeyMissing = "api_key_missing", "401", "An API-key route got no key in the header or query parameter its policy reads.";
    ApiKeyInvalid = "api_key_invalid", "401", "The API key is not one of the policy's keys.";
    CredentialsMissing = "credentials_missing", "401", "A Basic-auth route got no `Authorization: Basic` credentials.";
    CredentialsMalformed = "credentials_malformed", "401", "The `Authorization` header is not well-formed Basic credentials.";
    CredentialsInvalid = "credentials_invalid", "401", "The Basic-auth user name or password is wrong.";
    LoginRequired = "login_required", "401", "An OIDC route's request has no session and is not one a browser can be redirected for (not a `GET` of a page).";
    LoginExpired = "login_expired", "401", "An OIDC callback arrived with no login in progress from this browser (or one older than 10 minutes).";
    LoginStateMismatch = "login_state_mismatch", "401", "An OIDC callback's `state` is not the one this browser's login sent.";
    LoginRefused = "login_refused", "401", "The identity provider refused the login, or sent no code or ID token.";
    IdTokenInvalid = "id_token_invalid", "401", "The identity provider's ID token did not verify (signature, issuer, audience, nonce, times).";
    AuthRedirect = "auth_redirect", "the auth service's 3xx", "A forward-auth service answered with a redirect (a login page); its status, `Location` and body go to the client.";
    AuthDenied = "auth_denied", "401 or 403 (the auth service's)", "A forward-auth service refused the request; its status, challenge headers and body go to the client (any other status of its is `auth_unavailable`).";
    LoginRedirect = "login_redirect", "302", "An OIDC route sends a browser without a session to the identity provider (or back after the callback).";
    InsufficientClaims = "insufficient_claims", "403", "The identity is valid but lacks what the route's `require` asks for.";
    CorsRejected = "cors_rejected", "403", "A CORS preflight whose origin, method or headers the route's `cors` policy does not allow.";
    IpForbidden = "ip_forbidden", "403", "The client address is not allowed by the route's `ip_access` policy.";
    RouteNotFound = "route_not_found", "404", "No route matches the request's host, path and conditions.";
    MethodNotAllowed = "method_not_allowed", "405", "Routes match the path but not the method; `Allow` lists the methods they take.";
    LengthRequired = "length_required", "411", "A chunked request body over 64 KiB on a route without `stream_request_body`: send `Content-Length`.";
    BodyTooLarge = "body_too_large", "413", "The request body is over the route's `max_body` (or `validate.max_body_bytes`).";
    UnsupportedMediaType = "unsupported_media_type", "415", "A route validating a JSON body got another `Content-Type`.";
    RateLimited = "rate_limited", "429", "Over the route's rate limit; `Retry-After` says when to retry.";
    QuotaExceeded = "quota_exceeded", "429", "The caller's quota for the period is used up; `Retry-After` says when it resets.";
    TooManyFailedLogins = "too_many_failed_logins", "429", "Too many failed Basic-auth logins from this address or for this user in the last minute.";
    InternalError = "internal_error", "500", "A bug in Portico; the log has the request id.";
    SessionTooLarge = "session_too_large", "500", "An OIDC login's claims do not fit in a session cookie: ask the provider for fewer scopes or claims.";
    UpstreamUnreachable = "upstream_unreachable", "502", "The upstream refused or reset the connection and no retry was left.";
    UpstreamTlsFailed = "upstream_tls_failed", "502", "The TLS handshake with the upstream failed (its certificate did not verify).";
    UpstreamBadResponse = "upstream_bad_response", "502", "The upstream answered, but not with well-formed HTTP.";
    AggregateCallFailed = "aggregate_call_failed", "502", "A required call of an aggregate route failed; `call` names it.";
    NoUpstreamAvailable = "no_upstream_available", "503", "No target of the upstream has an address (DNS has not resolved any).";
    NoHealthyUpstream = "no_healthy_upstream", "503", "Every target of the upstream fails its health checks.";
    CircuitOpen = "circuit_open", "503", "Every target's circuit breaker is open.";
    GatewayOverloaded = "gateway_overloaded", "503", "The upstream connections' share of file descriptors is taken.";
    RateLimitUnavailable = "rate_limit_unavailable", "503", "Redis is unreachable and the limit has `on_redis_error: deny`.";
    QuotaUnavailable = "quota_unavailable", "503", "The quota store is unreachable and the quota denies unchecked requests.";
    AuthUnavailable = "auth_unavailable", "503", "A forward-auth, introspection or OIDC service could not be reached.";
    AuthBusy = "auth_busy", "503", "Too many Basic-auth passwords are being checked at once; retry shortly.";
    UpstreamTimeout = "upstream_timeout", "504", "The upstream did not connect, accept the request or answer within its timeouts.";
    RouteTimeout = "route_timeout", "504", "The route's `timeout` passed before the answer was complete.";
    AggregateCallTimeout = "aggregate_call_timeout", "504", "A required call of an aggregate route timed out; `call` names it.";
    AdminTokenRequired = "admin_token_required", "403 (admin)", "`POST /cache/purge` with no `admin.token_env` configured: purges are off.";
    AdminTokenInvalid = "admin_token_invalid", "401 (admin)", "`POST /cache/purge` without the bearer token `admin.token_env` names.";
    InvalidPurge = "invalid_purge", "400 (admin)", "A purge naming an unknown cache, or a malformed purge body.";
    PurgeNotBroadcast = "purge_not_broadcast", "502 (admin)", "This replica purged, but Redis could not be reached to tell the others: retry.";
    DashboardOff = "dashboard_off", "404 (admin)", "The dashboard and its JSON endpoints are off (`admin.dashboard: false`).";
    DashboardHost = "dashboard_host", "403 (admin)", "The dashboard was asked by a host name: open it by the admin listener's IP address or `localhost`.";
    InvalidProbe = "invalid_probe", "400 (admin)", "`/explain` without a `path`, or with a malformed `method` or `header`.";
    NotFound = "not_found", "404 (admin)", "No admin endpoint has this path.";
}

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
    pub code: Code,
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
    pub const fn fixed(status: u16, code: Code, message: &'static str) -> Refusal {
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

    pub fn new(status: u16, code: Code, message: impl Into<Cow<'static, str>>) -> Refusal {
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
    Code::AmbiguousHeader,
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
        self.catalogued().as_str()
    }

    fn catalogued(&self) -> Code {
        match self {
            GatewayError::Refused(r) => r.code,
            GatewayError::AggregateFailed { timeout: true, .. } => Code::AggregateCallTimeout,
            GatewayError::AggregateFailed { .. } => Code::AggregateCallFailed,
            GatewayError::BadPath(_) => Code::BadPath,
            GatewayError::BadRequest => Code::BadRequest,
            GatewayError::BadFraming(_) => Code::BadFraming,
            GatewayError::RouteNotFound => Code::RouteNotFound,
            GatewayError::MethodNotAllowed { .. } => Code::MethodNotAllowed,
            GatewayError::BodyTooLarge { .. } => Code::BodyTooLarge,
            GatewayError::NoUpstreamAvailable => Code::NoUpstreamAvailable,
            GatewayError::NoHealthyUpstream => Code::NoHealthyUpstream,
            GatewayError::CircuitOpen => Code::CircuitOpen,
            GatewayError::UpstreamUnreachable => Code::UpstreamUnreachable,
            GatewayError::UpstreamTls => Code::UpstreamTlsFailed,
            GatewayError::UpstreamBadResponse => Code::UpstreamBadResponse,
            GatewayError::UpstreamTimeout => Code::UpstreamTimeout,
            GatewayError::RouteTimeout => Code::RouteTimeout,
            GatewayError::Overloaded => Code::GatewayOverloaded,
            GatewayError::Internal => Code::InternalError,
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
