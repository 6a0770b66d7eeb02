//! Opaque tokens (`type: introspection`): the gateway asks the authorization server about
//! each token it has not seen (RFC 7662), authenticating as a client with
//! `client_secret_basic`. An active token's fields (`sub`, `scope`, `exp`, ...) become its
//! claims; answers are cached by a digest of the token, bounded, and never past `exp`.

use super::*;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// The introspection endpoint.
    pub url: String,
    /// The environment variable holding the gateway's client id.
    pub client_id_env: String,
    /// The environment variable holding its client secret (never in the file).
    pub client_secret_env: String,
    /// `bearer` (default), `cookie:NAME` or `header:NAME`.
    #[serde(default = "default_token_source")]
    #[schemars(pattern(r"^(bearer|cookie:.+|header:\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*)$"))]
    pub token: String,
    /// How long an answer is reused (never past the token's `exp`; 0 = ask every time).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_cache", with = "crate::units::duration")]
    pub cache: Duration,
    /// How long to wait for the endpoint; past it the request gets 503.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
    /// Claims sent upstream as headers, e.g. `{ sub: X-User-Id }`.
    #[serde(default)]
    pub forward: BTreeMap<String, String>,
    /// The `aud` a token must carry (this API's identifier at the authorization server):
    /// tokens issued for other services are refused.
    pub audience: Option<String>,
}

fn default_cache() -> Duration {
    Duration::from_secs(60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

pub struct Introspection {
    pub name: Arc<str>,
    url: String,
    source: TokenSource,
    /// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
    credentials: HeaderValue,
    cache: Duration,
    timeout: Duration,
    pub forward: Vec<(String, HeaderName)>,
    client: reqwest::Client,
    audience: Option<String>,
    /// Answers by the token's digest: an active token's claims until `exp` or the cache
    /// time, an inactive one (None) briefly, so a flood of made-up tokens is not a flood
    /// of calls.
    known: Bounded<(Option<Arc<Value>>, Instant)>,
    /// Calls to the endpoint at once, at most.
    asking: tokio::sync::Semaphore,
}

/// How long an inactive token's answer is reused.
const INACTIVE_KEPT: Duration = Duration::from_secs(10);
/// Calls to the endpoint one policy makes at once.
const ASKING_AT_ONCE: usize = 32;

const UNAVAILABLE: Refusal = Refusal::fixed(
    503,
    Code::AuthUnavailable,
    "the token could not be checked; try again later",
);

impl Introspection {
    pub(super) async fn identify(&self, req: &RequestHeader) -> Result<Arc<Value>, GatewayError> {
        let token = self
            .source
            .find(&req.headers)
            .map_err(|_| crate::errors::AMBIGUOUS_HEADER)?
            .ok_or(AuthError::Missing)?;
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        let hit = self.known.shard(digest.as_bytes()).get(&digest).cloned();
        match hit {
            Some((Some(claims), until)) if Instant::now() < until => return Ok(claims),
            Some((None, until)) if Instant::now() < until => return Err(inactive()),
            _ => {}
        }
        let Ok(_permit) = self.asking.try_acquire() else {
            return Err(UNAVAILABLE.into());
        };
        let answer = self.ask(token).await.map_err(|e| {
            tracing::warn!(policy = %self.name, error = %e, "introspection failed");
            GatewayError::from(UNAVAILABLE)
        })?;
        let remember = |answer: Option<Arc<Value>>, left: Duration| {
            let until = Instant::now() + left;
            let mut shard = self.known.shard(digest.as_bytes());
            shard.insert(&digest, (answer, until), |(_, u)| Instant::now() >= *u);
        };
        let claims = match active_claims(answer, self.audience.as_deref()) {
            Ok(claims) => claims,
            Err(e) => {
                if e.code() == "token_inactive" {
                    remember(None, INACTIVE_KEPT.min(self.cache));
                }
                return Err(e);
            }
        };
        let exp = claims.get("exp").and_then(Value::as_u64);
        let left = exp.map_or(self.cache, |exp| {
            self.cache
                .min(Duration::from_secs(exp.saturating_sub(unix_now())))
        });
        let claims = Arc::new(claims);
        if !left.is_zero() {
            remember(Some(claims.clone()), left);
        }
        Ok(claims)
    }

    async fn ask(&self, token: &str) -> Result<Value, String> {
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let answer = self
            .client
            .post(&self.url)
            .timeout(self.timeout)
            .header(http::header::AUTHORIZATION, self.credentials.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !answer.status().is_success() {
            return Err(format!("the endpoint answered {}", answer.status()));
        }
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if bytes.len() > 64 * 1024 {
            return Err("the endpoint's answer is over 64 KiB".into());
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))
    }

    pub fn scheme(&self) -> Value {
        serde_json::json!({"type": "http", "scheme": "bearer", "description": "an OAuth 2.0 access token, checked by introspection (RFC 7662)"})
    }

    pub fn details(&self) -> Value {
        serde_json::json!({"url": crate::diag::redact_url(&self.url), "cache_s": self.cache.as_secs_f64()})
    }
}

/// The claims of an introspection answer: refused unless `active` is `true`, it is no
/// refresh token, an `exp` it gives is in the future and (with `audience`) its `aud`
/// names this API.
fn active_claims(answer: Value, audience: Option<&str>) -> Result<Value, GatewayError> {
    let Value::Object(mut fields) = answer else {
        return Err(UNAVAILABLE.into());
    };
    let refresh = fields
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("refresh_token"));
    if fields.get("active") != Some(&Value::Bool(true)) || refresh {
        return Err(inactive());
    }
    if let Some(wanted) = audience {
        let named = match fields.get("aud") {
            Some(Value::String(a)) => a == wanted,
            Some(Value::Array(list)) => list.iter().any(|a| a == wanted),
            _ => false,
        };
        if !named {
            return Err(AuthError::WrongAudience.into());
        }
    }
    match fields.get("exp") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|exp| exp <= unix_now()) => {
            return Err(AuthError::Expired.into());
        }
        Some(exp) if !exp.is_number() => return Err(AuthError::BadTimeClaim("exp").into()),
        _ => {}
    }
    fields.remove("active");
    Ok(Value::Object(fields))
}

fn inactive() -> GatewayError {
    let message = "the token is not active (revoked, expired or unknown)";
    Refusal::new(401, Code::TokenInactive, message)
        .header(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portico\", error=\"invalid_token\""),
        )
        .counted(Counted::AuthFailure)
        .into()
}

/// What `application/x-www-form-urlencoded` escapes: all but letters, digits and `*-._`.
pub(super) const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// `application/x-www-form-urlencoded` escaping of one value.
fn form_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, FORM).to_string()
}

/// Compiles `type: introspection`: the client credentials are read from the environment.
pub fn compile(cx: &mut CompileCx, name: &str, r: &RawIntrospection) -> Option<Introspection> {
    let at = format!("auth.{name}");
    let url = super::forward::http_url(cx.d, &format!("{at}.url"), &r.url)?;
    let id = env_secret(cx.d, &format!("{at}.client_id_env"), &r.client_id_env);
    let secret = env_secret(
        cx.d,
        &format!("{at}.client_secret_env"),
        &r.client_secret_env,
    );
    let source = TokenSource::parse(&r.token)
        .map_err(|e| {
            cx.d.error(
                &format!("{at}.token"),
                e,
                Some("use bearer, cookie:NAME or header:NAME".into()),
            )
        })
        .ok();
    let forward = forward_headers(cx.d, &format!("{at}.forward"), &r.forward);
    if url.starts_with("http://") && !is_loopback(&url) {
        cx.d.warn(
            &format!("{at}.url"),
            "tokens and the client secret would cross the network in clear",
            Some("use the endpoint's https:// address".into()),
        );
    }
    let pair = format!("{}:{}", form_encode(&id?), form_encode(&secret?));
    let basic = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut credentials = HeaderValue::from_str(&format!("Basic {basic}")).ok()?;
    credentials.set_sensitive(true);
    Some(Introspection {
        name: name.into(),
        url,
        source: source?,
        credentials,
        cache: r.cache,
        timeout: r.timeout.max(Duration::from_millis(1)),
        forward,
        client: super::forward::http_client(),
        audience: r.audience.clone(),
        known: Bounded::new(16, 10_000),
        asking: tokio::sync::Semaphore::new(ASKING_AT_ONCE),
    })
}

pub(super) fn is_loopback(url: &str) -> bool {
    reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")))
}

/// A secret from an environment variable, reported at `at` when unset.
pub(super) fn env_secret(d: &mut Diags, at: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            d.error(
                at,
                format!("environment variable `{var}` is not set"),
                Some(format!("export {var}=... (secrets never go in the file)")),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_active_unexpired_access_tokens_for_this_api_make_claims() {
        let code = |answer: Value, audience: Option<&str>| {
            active_claims(answer, audience).map_or_else(|e| e.code(), |_| "ok")
        };
        assert_eq!(code(json!({"active": false}), None), "token_inactive");
        assert_eq!(code(json!({"sub": "u"}), None), "token_inactive");
        let refresh = json!({"active": true, "token_type": "refresh_token"});
        assert_eq!(code(refresh, None), "token_inactive");
        assert_eq!(
            code(json!({"active": true, "exp": 1}), None),
            "token_expired"
        );
        let other = json!({"active": true, "aud": ["billing"]});
        assert_eq!(code(other, Some("orders")), "token_wrong_audience");
        let ours = json!({"active": true, "aud": ["billing", "orders"]});
        assert_eq!(code(ours, Some("orders")), "ok");
        let answer = json!({"active": true, "sub": "u", "scope": "read write"});
        let claims = active_claims(answer, None).unwrap();
        assert_eq!(claims, json!({"sub": "u", "scope": "read write"}));
    }

    #[test]
    fn form_values_are_escaped() {
        assert_eq!(form_encode("a+b/c=d&e f"), "a%2Bb%2Fc%3Dd%26e%20f");
        assert_eq!(form_encode("gw-client_1.*"), "gw-client_1.*");
    }
}
