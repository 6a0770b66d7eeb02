//! Forward auth (`type: forward`), the convention of Traefik's forwardAuth and nginx's
//! `auth_request`: each request is first described to an auth service (the listed headers
//! plus `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`, `-For`). A 2xx allows it and the
//! `copy` headers of that answer go upstream; a 401, 403 or 3xx is the client's answer as
//! the service wrote it (so login redirects work); anything else, or no answer in time, is
//! a 503: never an allow. Allows may be cached, never across methods, hosts, paths or
//! clients; denials never are.

use super::*;
use crate::bounded::Bounded;
use bytes::Bytes;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// The auth service's address (http or https); asked with GET.
    pub url: String,
    /// Request headers sent to it (besides the `X-Forwarded-*` ones, always sent).
    #[serde(default)]
    pub send: Vec<String>,
    /// Headers of its 2xx answer sent upstream; every client's own copies are removed.
    #[serde(default)]
    pub copy: Vec<String>,
    /// How long an allow is reused for the same method, host, path and sent headers
    /// (default 0: ask every time).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default, with = "crate::units::duration")]
    pub cache: Duration,
    /// How long to wait for its answer; past it the request gets 503.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_millis(500)
}

/// Largest body of a denial passed on to the client; a longer one is cut.
const MAX_DENIAL_BODY: usize = 64 * 1024;
/// Headers of a denial passed on to the client.
const DENIAL_HEADERS: [HeaderName; 5] = [
    http::header::LOCATION,
    http::header::WWW_AUTHENTICATE,
    http::header::SET_COOKIE,
    http::header::CONTENT_TYPE,
    http::header::CACHE_CONTROL,
];

/// An allow, with the headers to copy upstream, and when it was given.
#[derive(Clone)]
struct Allow {
    copied: Vec<(HeaderName, HeaderValue)>,
    at: Instant,
}

pub struct ForwardAuth {
    pub name: Arc<str>,
    url: String,
    send: Vec<HeaderName>,
    pub copy: Vec<HeaderName>,
    cache: Duration,
    timeout: Duration,
    client: reqwest::Client,
    allowed: Bounded<Allow>,
}

const UNAVAILABLE: Refusal = Refusal::fixed(
    503,
    Code::AuthUnavailable,
    "the auth service could not be asked; try again later",
);

impl ForwardAuth {
    /// Asks the auth service (or the cache); on an allow, notes the headers to copy.
    pub(super) async fn check(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        let key = (!self.cache.is_zero()).then(|| self.cache_key(req, info));
        if let Some(key) = &key {
            let hit = self.allowed.shard(key.as_bytes()).get(key).cloned();
            if let Some(allow) = hit.filter(|a| a.at.elapsed() < self.cache) {
                state.forward.extend(allow.copied);
                return Ok(());
            }
        }
        let answer = self.ask(req, info).await.map_err(|e| {
            let error = e.without_url();
            tracing::warn!(policy = %self.name, %error, "auth service failed");
            GatewayError::from(UNAVAILABLE)
        })?;
        let status = answer.status().as_u16();
        match status {
            200..=299 => {
                let copied = self.copied(answer.headers());
                if let Some(key) = key {
                    let allow = Allow {
                        copied: copied.clone(),
                        at: Instant::now(),
                    };
                    let cache = self.cache;
                    self.allowed
                        .shard(key.as_bytes())
                        .insert(&key, allow, |a| a.at.elapsed() >= cache);
                }
                state.forward.extend(copied);
                Ok(())
            }
            300..=399 | 401 | 403 => Err(denial(answer).await),
            _ => {
                tracing::warn!(policy = %self.name, status, "auth service answered with an error");
                Err(UNAVAILABLE.into())
            }
        }
    }

    /// An allow is reused only for the same method, host, path and query, client address
    /// and scheme, and the same values of the headers sent: everything the service saw.
    fn cache_key(&self, req: &RequestHeader, info: &RequestInfo<'_>) -> String {
        let mut h = Sha256::new();
        h.update(req.method.as_str());
        h.update([0]);
        h.update(info.client_ip.map(|ip| ip.to_string()).unwrap_or_default());
        h.update([0, u8::from(info.tls), 0]);
        h.update(host(req));
        h.update([0]);
        h.update(req.uri.to_string());
        for name in &self.send {
            for value in req.headers.get_all(name) {
                h.update([0]);
                h.update(name.as_str());
                h.update([1]);
                h.update(value.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    async fn ask(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut ask = self.client.get(&self.url).timeout(self.timeout);
        for name in &self.send {
            for value in req.headers.get_all(name) {
                ask = ask.header(name, value);
            }
        }
        let host = host(req);
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        ask = ask
            .header("x-forwarded-method", req.method.as_str())
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-host", host)
            .header("x-forwarded-proto", if info.tls { "https" } else { "http" });
        if let Some(ip) = info.client_ip {
            ask = ask.header("x-forwarded-for", ip.to_string());
        }
        ask.send().await
    }

    fn copied(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        self.copy
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| (name.clone(), v.clone()))
            })
            .collect()
    }

    pub fn scheme(&self) -> Value {
        serde_json::json!({"type": "http", "scheme": "bearer", "description": "checked by the gateway's auth service"})
    }

    pub fn details(&self) -> Value {
        let send: Vec<&str> = self.send.iter().map(HeaderName::as_str).collect();
        let copy: Vec<&str> = self.copy.iter().map(HeaderName::as_str).collect();
        serde_json::json!({"url": crate::diag::redact_url(&self.url), "send": send, "copy": copy, "cache_s": self.cache.as_secs_f64()})
    }
}

/// The request's host: its `Host` header, or an HTTP/2 request's authority.
fn host(req: &RequestHeader) -> &[u8] {
    req.headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default()
}

/// The auth service's denial as the client's answer: its status, the headers a login
/// flow needs and its body (cut at [`MAX_DENIAL_BODY`]).
async fn denial(mut answer: reqwest::Response) -> GatewayError {
    let status = answer.status().as_u16();
    let code = if status < 400 {
        Code::AuthRedirect
    } else {
        Code::AuthDenied
    };
    let mut refusal = Refusal::new(status, code, "the auth service refused the request")
        .counted(Counted::AuthFailure);
    for name in DENIAL_HEADERS {
        for value in answer.headers().get_all(&name) {
            refusal = refusal.header(name.clone(), value.clone());
        }
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        let room = MAX_DENIAL_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_DENIAL_BODY {
            break;
        }
    }
    refusal.answer = Some(Bytes::from(body));
    refusal.into()
}

/// The client auth subrequests use: no redirects followed (a 3xx is the client's answer),
/// certificates verified, no proxy from the environment.
pub(super) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// Compiles `type: forward`.
pub fn compile(cx: &mut CompileCx, name: &str, f: &RawForward) -> Option<ForwardAuth> {
    let at = format!("auth.{name}");
    let url = http_url(cx.d, &format!("{at}.url"), &f.url)?;
    let send = header_list(cx.d, &format!("{at}.send"), &f.send)?;
    let copy = header_list(cx.d, &format!("{at}.copy"), &f.copy)?;
    if f.timeout.is_zero() {
        cx.d.error(
            &format!("{at}.timeout"),
            "the timeout must be longer than 0",
            Some("e.g. timeout: 500ms".into()),
        );
        return None;
    }
    Some(ForwardAuth {
        name: name.into(),
        url,
        send,
        copy,
        cache: f.cache,
        timeout: f.timeout,
        client: http_client(),
        allowed: Bounded::new(16, 10_000),
    })
}

/// An http(s) URL an auth service is reached at.
pub(super) fn http_url(d: &mut Diags, at: &str, url: &str) -> Option<String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Some(url.to_string())
        }
        _ => {
            d.error(
                at,
                format!("`{}` is not an http(s) URL", crate::diag::redact_url(url)),
                Some("e.g. http://authz.internal:9000/verify".into()),
            );
            None
        }
    }
}

fn header_list(d: &mut Diags, at: &str, names: &[String]) -> Option<Vec<HeaderName>> {
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match HeaderName::from_bytes(name.trim().as_bytes()) {
            Ok(h) => out.push(h),
            Err(_) => d.error(
                &format!("{at}[{i}]"),
                format!("`{name}` is not a valid header name"),
                Some(crate::diag::HEADER_NAME_HELP.into()),
            ),
        }
    }
    (out.len() == names.len()).then_some(out)
}
