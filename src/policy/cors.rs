//! CORS: preflights are answered by the gateway (before auth, never reaching the upstream);
//! actual requests from allowed origins get the CORS response headers. A disallowed origin
//! gets no CORS headers at all.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::diag::parse_methods;
use crate::errors::{Code, GatewayError, Refusal};
use http::header::{
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, UPGRADE, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins allowed: exact, or `https://*.example.com`.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers a browser script may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Send Access-Control-Allow-Credentials: true.
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub max_age: Option<Duration>,
}

pub struct CorsPolicy {
    pub name: String,
    any_origin: bool,
    exact: HashSet<String>,
    /// `https://*.example.com` as ("https://", ".example.com").
    wildcards: Vec<(String, String)>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    allowed_headers: Vec<String>,
    expose_headers: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

pub struct CorsSpec<'a> {
    pub origins: &'a [String],
    pub methods: &'a [Method],
    pub headers: &'a [String],
    pub expose: &'a [String],
    pub credentials: bool,
    pub max_age: Option<u64>,
}

fn joined(items: &[String]) -> Option<HeaderValue> {
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(", ")).ok())
        .flatten()
}

/// Splits `https://*.example.com` into its scheme part and host suffix.
pub fn wildcard(origin: &str) -> Option<(String, String)> {
    let (scheme, rest) = origin.split_once("://")?;
    let suffix = rest.strip_prefix('*')?;
    (suffix.starts_with('.') && suffix.len() > 1)
        .then(|| (format!("{scheme}://"), suffix.to_ascii_lowercase()))
}

/// `scheme://` and host of an origin `scheme://host[:port]` (lower-case); None for anything
/// else (paths, fragments, user info, a port that is not a number).
fn split_origin(origin: &str) -> Option<(&str, &str)> {
    let sep = origin.find("://")?;
    let (scheme, rest) = (&origin[..sep + 3], &origin[sep + 3..]);
    let scheme_ok = sep > 0
        && origin[..sep]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    (scheme_ok && port_ok && host_ok).then_some((scheme, host))
}

/// Whether `domain` is itself a public suffix (`com`, `co.uk`, `github.io`): a pattern
/// over it would trust every site registered there.
fn is_public_suffix(domain: &str) -> bool {
    psl::suffix_str(domain) == Some(domain)
}

impl CorsPolicy {
    pub fn new(name: &str, spec: CorsSpec) -> Result<CorsPolicy, String> {
        let any_origin = spec.origins.iter().any(|o| o == "*");
        if any_origin && spec.credentials {
            return Err("`*` cannot be combined with allow_credentials: browsers refuse it".into());
        }
        let mut exact = HashSet::new();
        let mut wildcards = Vec::new();
        for o in spec.origins.iter().filter(|o| *o != "*") {
            if o.contains('*') {
                let (scheme, suffix) = wildcard(o).ok_or_else(|| {
                    format!("origin pattern `{o}` must look like https://*.example.com")
                })?;
                if split_origin(&format!("{scheme}x{suffix}")).is_none() {
                    return Err(format!(
                        "origin pattern `{o}` must look like https://*.example.com"
                    ));
                }
                if spec.credentials && is_public_suffix(&suffix[1..]) {
                    return Err(format!(
                        "origin pattern `{o}` covers a public suffix: with allow_credentials, every site under it could read credentialed answers"
                    ));
                }
                wildcards.push((scheme, suffix));
            } else if o
                .split_once("://")
                .is_some_and(|(_, host)| !host.is_empty() && !host.contains('/'))
            {
                exact.insert(o.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "origin `{o}` must be scheme://host[:port] without a path"
                ));
            }
        }
        let names: Vec<String> = spec.methods.iter().map(|m| m.to_string()).collect();
        Ok(CorsPolicy {
            name: name.to_string(),
            any_origin,
            exact,
            wildcards,
            methods: spec.methods.to_vec(),
            allow_methods: joined(&names).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            allow_headers: joined(spec.headers),
            allowed_headers: spec
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            expose_headers: joined(spec.expose),
            credentials: spec.credentials,
            max_age: spec.max_age.map(HeaderValue::from),
        })
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.any_origin || self.exact.contains(&origin) {
            return true;
        }
        // A pattern matches only a well-formed origin: `https://evil.com#.example.com` or
        // `https://x.example.com:evil` are not `https://*.example.com`.
        let Some((scheme, host)) = split_origin(&origin) else {
            return false;
        };
        self.wildcards.iter().any(|(s, suffix)| {
            s == scheme && host.len() > suffix.len() && host.ends_with(suffix.as_str())
        })
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Notes the request's Origin when this policy allows it. A WebSocket upgrade from an
    /// origin it does not allow is refused: browsers send cookies with cross-site upgrades
    /// and apply no CORS check to them (cross-site WebSocket hijacking).
    pub fn note_origin(
        &self,
        req: &RequestHeader,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        let origin = req.headers.get(ORIGIN);
        state.cors_origin = origin
            .filter(|o| o.to_str().is_ok_and(|o| self.allows_origin(o)))
            .cloned();
        if origin.is_some() && state.cors_origin.is_none() && req.headers.contains_key(UPGRADE) {
            return Err(REJECTED.into());
        }
        Ok(())
    }

    /// The answer to a preflight asking for `method`: a 204 with the CORS headers, or the
    /// 403 when the origin, the method or a header is not allowed.
    pub fn answer_preflight(
        &self,
        req: &RequestHeader,
        method: &Method,
    ) -> Result<ResponseHeader, GatewayError> {
        let origin = req.headers.get(ORIGIN).ok_or(REJECTED)?;
        if !origin.to_str().is_ok_and(|o| self.allows_origin(o)) {
            return Err(REJECTED.into());
        }
        let requested = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok());
        let headers = self.preflight(origin, method, requested).ok_or(REJECTED)?;
        let mut header = ResponseHeader::build(204, Some(8)).map_err(|_| GatewayError::Internal)?;
        for (name, value) in headers {
            header
                .append_header(name, value)
                .map_err(|_| GatewayError::Internal)?;
        }
        let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
        header
            .insert_header(VARY, vary)
            .map_err(|_| GatewayError::Internal)?;
        Ok(header)
    }

    /// Every answer on a CORS route varies by Origin; an allowed origin gets its headers.
    pub fn decorate(&self, resp: &mut ResponseHeader, state: &PolicyState) -> pingora::Result<()> {
        resp.append_header(VARY, "Origin")?;
        if let Some(origin) = &state.cors_origin {
            for (name, value) in self.response_headers(origin) {
                resp.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    /// Headers for an actual (non-preflight) response to an allowed origin.
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = vec![(
            http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin_value(origin),
        )];
        if self.credentials {
            out.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(expose) = &self.expose_headers {
            out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
        }
        out
    }

    /// Headers answering a preflight, or None when the method or a header is not allowed.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &Method,
        requested_headers: Option<&str>,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        if !self.methods.contains(method) {
            return None;
        }
        let requested = requested_headers.unwrap_or_default();
        let headers_ok = requested
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .all(|h| self.allowed_headers.contains(&h));
        if !headers_ok {
            return None;
        }
        let mut out = vec![
            (
                http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin_value(origin),
            ),
            (
                http::header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            ),
        ];
        if let Some(h) = &self.allow_headers {
            out.push((http::header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
        }
        if self.credentials {
            out.push((
                http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
        if let Some(age) = &self.max_age {
            out.push((http::header::ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        Some(out)
    }
}

/// An origin, method or header the route's CORS policy does not allow.
pub const REJECTED: Refusal = Refusal::fixed(
    403,
    Code::CorsRejected,
    "this origin, method or header is not allowed by the route's CORS policy",
);

/// The method a CORS preflight asks about, when this request is one.
pub fn preflight_method(req: &RequestHeader) -> Option<Method> {
    if req.method != Method::OPTIONS || !req.headers.contains_key(ORIGIN) {
        return None;
    }
    let acrm = req.headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(acrm.as_bytes()).ok()
}

#[async_trait::async_trait]
impl Unit for CorsPolicy {
    fn kind(&self) -> &'static str {
        "cors"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn stage(&self) -> Stage {
        Stage::Cors
    }

    fn details(&self) -> serde_json::Value {
        let origins: Vec<String> = self
            .any_origin
            .then(|| "*".to_string())
            .into_iter()
            .chain(self.exact.iter().cloned())
            .chain(self.wildcards.iter().map(|(s, h)| format!("{s}*{h}")))
            .collect();
        serde_json::json!({"origins": origins, "credentials": self.credentials})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc::refusing(&["403"])
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    async fn on_request(
        &self,
        session: &mut pingora::proxy::Session,
        _info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        self.note_origin(session.req_header(), state)
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        self.decorate(resp, state)
    }
}

/// Compiles the named policy `cors.NAME`.
pub fn compile(cx: &mut CompileCx, name: &str, c: &RawCors) -> Option<CorsPolicy> {
    let d = &mut *cx.d;
    let at = format!("cors.{name}");
    let default_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec();
    let methods = parse_methods(
        d,
        &format!("{at}.allow_methods"),
        c.allow_methods.as_ref().unwrap_or(&default_methods),
    );
    let spec = CorsSpec {
        origins: &c.allow_origins,
        methods: &methods,
        headers: &c.allow_headers,
        expose: &c.expose_headers,
        credentials: c.allow_credentials,
        max_age: c.max_age.map(|d| d.as_secs()),
    };
    match CorsPolicy::new(name, spec) {
        Ok(p) => Some(p),
        Err(e) => {
            d.error(&format!("{at}.allow_origins"), e, Some("list exact origins such as https://app.example.com, or patterns like https://*.example.com".into()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Result<CorsPolicy, String> {
        let origins: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        CorsPolicy::new(
            "t",
            CorsSpec {
                origins: &origins,
                methods: &[Method::GET],
                headers: &["Authorization".into()],
                expose: &[],
                credentials,
                max_age: Some(600),
            },
        )
    }

    #[test]
    fn origin_matching() {
        let p = policy(&["https://app.example.com", "https://*.example.org"], true).unwrap();
        assert!(p.allows_origin("https://app.example.com"));
        assert!(p.allows_origin("https://eu.example.org"));
        assert!(p.allows_origin("https://a.b.example.org:8443"));
        assert!(!p.allows_origin("https://example.org"));
        assert!(!p.allows_origin("http://eu.example.org"));
        assert!(!p.allows_origin("https://evilexample.org"));
        assert!(!p.allows_origin("https://app.example.com.evil.io"));
        assert!(
            !p.allows_origin("https://evil.com#.example.org"),
            "a fragment is no host"
        );
        assert!(
            !p.allows_origin("https://x.example.org:evil"),
            "a port is a number"
        );
        assert!(!p.allows_origin("https://a@x.example.org"), "no user info");
        assert!(!p.allows_origin("https://x.example.org/path"));
        assert!(
            p.allows_origin("HTTPS://EU.EXAMPLE.ORG"),
            "case-insensitive"
        );
    }

    #[test]
    fn patterns_over_a_public_suffix_are_refused_with_credentials() {
        for pattern in ["https://*.com", "https://*.co.uk", "https://*.github.io"] {
            let err = policy(&[pattern], true).err().expect(pattern);
            assert!(err.contains("covers a public suffix"), "{err}");
        }
        assert!(policy(&["https://*.example.co.uk"], true).is_ok());
        assert!(
            policy(&["https://*.com"], false).is_ok(),
            "without credentials it is only broad"
        );
        assert!(policy(&["https://*.exa mple.com"], false).is_err());
    }

    #[test]
    fn star_with_credentials_is_refused() {
        assert!(policy(&["*"], true).is_err());
        assert!(policy(&["*"], false).is_ok());
        assert!(policy(&["https://app.example.com/"], false).is_err());
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let p = policy(&["https://app.example.com"], false).unwrap();
        let origin = HeaderValue::from_static("https://app.example.com");
        assert!(p
            .preflight(&origin, &Method::GET, Some("authorization"))
            .is_some());
        assert!(p.preflight(&origin, &Method::DELETE, None).is_none());
        assert!(p
            .preflight(&origin, &Method::GET, Some("x-other"))
            .is_none());
    }

    #[test]
    fn hooks_note_an_allowed_origin_and_decorate_every_answer() {
        let p = policy(&["https://app.example.com"], true).unwrap();
        let mut state = PolicyState::default();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("origin", "https://evil.example").unwrap();
        p.note_origin(&req, &mut state).unwrap();
        assert!(state.cors_origin.is_none());
        let mut resp = ResponseHeader::build(502, None).unwrap();
        p.decorate(&mut resp, &state).unwrap();
        assert_eq!(resp.headers["vary"], "Origin");
        assert!(!resp.headers.contains_key("access-control-allow-origin"));

        req.insert_header("origin", "https://app.example.com")
            .unwrap();
        p.note_origin(&req, &mut state).unwrap();
        let mut resp = ResponseHeader::build(502, None).unwrap();
        p.decorate(&mut resp, &state).unwrap();
        assert_eq!(
            resp.headers["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(resp.headers["access-control-allow-credentials"], "true");
    }

    #[test]
    fn compile_reports_bad_origins_and_methods() {
        let raw: RawCors = serde_yaml::from_str(
            "{ allow_origins: ['https://a.example/path'], allow_methods: [get] }",
        )
        .unwrap();
        let (policy, items) = crate::policy::with_test_cx(|cx| compile(cx, "web", &raw));
        assert!(policy.is_none());
        let messages: Vec<&str> = items.iter().map(|x| x.message.as_str()).collect();
        assert!(messages
            .iter()
            .any(|m| m.contains("`get` is not an HTTP method")));
        assert!(messages.iter().any(|m| m.contains("without a path")));
    }
}
