//! OpenID Connect login for browser apps (`type: oidc`): the authorization code flow with
//! PKCE, `state` and `nonce`. Nothing is kept on the gateway: the flow's secrets travel in a
//! short-lived cookie and the session in another, both sealed with AES-256-GCM under the
//! session key (so every replica can read them, and a client can neither read nor forge
//! them). The provider is found by discovery, its keys through its JWKS, both fetched when
//! first needed and kept across reloads.

use super::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The provider's issuer URL; its `/.well-known/openid-configuration` is read.
    pub issuer: String,
    /// The environment variable holding the client id.
    pub client_id_env: String,
    /// The environment variable holding the client secret (never in the file).
    pub client_secret_env: String,
    /// Where the provider sends the browser back (on this host); a route applying this
    /// policy must take it (`check` warns otherwise).
    #[serde(default = "default_redirect_path")]
    pub redirect_path: String,
    /// Scopes asked for; `openid` is always among them.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The session cookie.
    pub session: RawSession,
    /// A path that ends the session and sends the browser to the provider's logout.
    pub logout_path: Option<String>,
    /// Claims sent upstream as headers, e.g. `{ email: X-User-Email }`.
    #[serde(default)]
    pub forward: BTreeMap<String, String>,
    /// How long to wait for the provider (discovery, keys, tokens).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSession {
    /// The cookie's name (default portico_session).
    #[serde(default = "default_cookie")]
    pub cookie: String,
    /// The environment variable holding the 32-byte key that seals the cookie: 64 hex
    /// digits or base64 (`openssl rand -hex 32`).
    pub key_env: String,
    /// How long a session lasts, whatever the tokens say (default 8h).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_ttl", with = "crate::units::duration")]
    pub ttl: Duration,
    /// The ID token is refreshed (with the refresh token) this long before it expires.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_refresh_before", with = "crate::units::duration")]
    pub refresh_before: Duration,
}

fn default_redirect_path() -> String {
    "/oauth2/callback".into()
}
fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_cookie() -> String {
    "portico_session".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(8 * 3600)
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(60)
}

/// What discovery says of the provider.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    end_session_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
}

/// The provider as found: its endpoints and keys (kept across reloads per issuer).
pub struct Provider {
    issuer: String,
    found: tokio::sync::OnceCell<(Discovery, Arc<RemoteJwks>)>,
    last_failure: Mutex<Option<Instant>>,
}

/// How long a refresh's outcome is reused for the same refresh token.
const REFRESH_KEPT: Duration = Duration::from_secs(60);
/// A failed discovery is tried again at most this often.
const RETRY: Duration = Duration::from_secs(5);
/// How long a login may take, from the redirect to the provider to the callback.
const FLOW_TTL: u64 = 600;

/// The login in progress, sealed in the flow cookie.
#[derive(Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    /// Where to go after the login: a path on this host.
    back: String,
    expires: u64,
}

/// The session, sealed in the session cookie.
#[derive(Clone, Serialize, Deserialize)]
struct LoginSession {
    claims: Value,
    refresh: Option<String>,
    /// Unix seconds the ID token expires.
    token_expires: u64,
    /// Unix seconds the session ends (its `ttl`).
    expires: u64,
}

/// What the token endpoint answers.
#[derive(Deserialize)]
struct Tokens {
    id_token: Option<String>,
    refresh_token: Option<String>,
    /// Seconds the access token lasts (what a refresh without an ID token extends).
    expires_in: Option<u64>,
}

pub struct Oidc {
    pub name: Arc<str>,
    provider: Arc<Provider>,
    client_id: String,
    /// `Basic base64(id:secret)` (client_secret_basic).
    credentials: HeaderValue,
    redirect_path: String,
    logout_path: Option<String>,
    scopes: String,
    cookie: String,
    key: LessSafeKey,
    ttl: Duration,
    refresh_before: Duration,
    timeout: Duration,
    pub forward: Vec<(String, HeaderName)>,
    client: reqwest::Client,
    /// Refreshes under way or just done, by the refresh token's digest.
    refreshes: Bounded<Refresh>,
}

/// A refresh shared by the requests that need it, and when it started.
type Refresh = (Arc<tokio::sync::OnceCell<Option<LoginSession>>>, Instant);

/// Why a login failed; each is a 401 naming it.
fn failed(code: Code, message: impl Into<std::borrow::Cow<'static, str>>) -> GatewayError {
    Refusal::new(401, code, message)
        .counted(Counted::AuthFailure)
        .into()
}

const UNAVAILABLE: Refusal = Refusal::fixed(
    503,
    Code::AuthUnavailable,
    "the identity provider could not be reached; try again later",
);

impl Oidc {
    /// The session's claims; or the answer that starts a login, finishes one, or logs out.
    pub(super) async fn identify(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<Arc<Value>, GatewayError> {
        let path = req.uri.path();
        if path == self.redirect_path {
            return Err(self.callback(req, info).await);
        }
        if self.logout_path.as_deref() == Some(path) {
            return Err(self.logout(req, info).await);
        }
        let now = unix_now();
        let session = cookie(&req.headers, &self.cookie)
            .and_then(|text| self.open::<LoginSession>(&self.cookie, text))
            .filter(|s| now < s.expires);
        if let Some(mut session) = session {
            let left = session.token_expires.saturating_sub(now);
            if left <= self.refresh_before.as_secs() && session.refresh.is_some() {
                if let Some(fresh) = self.refreshed(&session).await {
                    state.set_cookie = self.session_cookie(&fresh);
                    session = fresh;
                }
            }
            if now < session.token_expires {
                return Ok(Arc::new(session.claims));
            }
        }
        if !navigation(req) {
            let message = "this route needs a login session; sign in with a browser first";
            return Err(failed(Code::LoginRequired, message));
        }
        self.login(req, info).await
    }

    /// Sends the browser to the provider, with a new flow sealed in a cookie.
    async fn login(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
    ) -> Result<Arc<Value>, GatewayError> {
        let (discovery, _) = self.found().await?;
        let (Some(state), Some(nonce), Some(verifier)) =
            (random_token(), random_token(), random_token())
        else {
            return Err(UNAVAILABLE.into());
        };
        let flow = Flow {
            state,
            nonce,
            verifier,
            back: return_path(req),
            expires: unix_now() + FLOW_TTL,
        };
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(flow.verifier.as_bytes()));
        let query = [
            ("response_type", "code"),
            ("client_id", &self.client_id),
            ("redirect_uri", &self.redirect_uri(req, info)),
            ("scope", &self.scopes),
            ("state", &flow.state),
            ("nonce", &flow.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        let location = with_query(&discovery.authorization_endpoint, &query);
        let flow_cookie = self.flow_cookie(Some(&flow));
        Err(redirect(&location, flow_cookie.into_iter().collect()))
    }

    /// The provider's answer: state checked, code exchanged, ID token verified, session
    /// made; the browser goes back where it was.
    async fn callback(&self, req: &RequestHeader, info: &RequestInfo<'_>) -> GatewayError {
        match self.finish_login(req, info).await {
            Ok((session, back)) => match self.session_cookie(&session) {
                Some(cookie) => {
                    let cookies = [Some(cookie), self.flow_cookie(None)];
                    redirect(&back, cookies.into_iter().flatten().collect())
                }
                // Redirecting without a session would only start another login.
                None => Refusal::new(500, Code::SessionTooLarge, "the login's claims do not fit in a session cookie; ask the provider for fewer scopes or claims").into(),
            },
            Err(e) => e,
        }
    }

    async fn finish_login(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
    ) -> Result<(LoginSession, String), GatewayError> {
        let query = req.uri.query().unwrap_or_default();
        let param = |name: &str| {
            crate::router::query_values(query, name)
                .next()
                .map(std::borrow::Cow::into_owned)
        };
        let flow = cookie(&req.headers, &self.flow_name())
            .and_then(|text| self.open::<Flow>(&self.flow_name(), text))
            .filter(|f| unix_now() < f.expires)
            .ok_or_else(|| failed(Code::LoginExpired, "no login is in progress from this browser (or it took over 10 minutes); start again"))?;
        let sent_state = param("state").unwrap_or_default();
        #[allow(deprecated)]
        let same = ring::constant_time::verify_slices_are_equal(
            sent_state.as_bytes(),
            flow.state.as_bytes(),
        )
        .is_ok();
        if !same {
            return Err(failed(
                Code::LoginStateMismatch,
                "the login's state does not match this browser's: start again",
            ));
        }
        if let Some(error) = param("error") {
            let error: String = error
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(64)
                .collect();
            return Err(failed(
                Code::LoginRefused,
                format!("the identity provider refused the login: {error}"),
            ));
        }
        let code = param("code")
            .ok_or_else(|| failed(Code::LoginRefused, "the identity provider sent no code"))?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &self.redirect_uri(req, info)),
            ("code_verifier", &flow.verifier),
        ];
        let tokens = self.token_call(&form).await?;
        let id_token = tokens
            .id_token
            .ok_or_else(|| failed(Code::LoginRefused, "the identity provider sent no ID token"))?;
        let (claims, expires) = self.verify(&id_token, Some(&flow.nonce)).await?;
        let session = LoginSession {
            claims,
            refresh: tokens.refresh_token,
            token_expires: expires,
            expires: unix_now() + self.ttl.as_secs(),
        };
        Ok((session, flow.back))
    }

    /// Ends the session here and at the provider (when it has an end-session endpoint).
    async fn logout(&self, req: &RequestHeader, info: &RequestInfo<'_>) -> GatewayError {
        let home = format!("{}/", self.origin(req, info));
        let location = match self.found().await {
            Ok((d, _)) => match &d.end_session_endpoint {
                Some(end) => with_query(
                    end,
                    &[
                        ("client_id", &self.client_id),
                        ("post_logout_redirect_uri", &home),
                    ],
                ),
                None => "/".into(),
            },
            Err(_) => "/".into(),
        };
        let clear = HeaderValue::from_str(&format!(
            "{}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
            self.cookie
        ))
        .ok();
        redirect(&location, clear.into_iter().collect())
    }

    /// The session refreshed, once per refresh token: the requests a page makes at once
    /// share one call (a provider that rotates refresh tokens would take a second use of
    /// one for theft), and a failure is not retried for a minute. None when it failed.
    async fn refreshed(&self, session: &LoginSession) -> Option<LoginSession> {
        let token = session.refresh.as_deref()?;
        let key = hex::encode(Sha256::digest(token.as_bytes()));
        let cell = {
            let mut shard = self.refreshes.shard(key.as_bytes());
            match shard.get(&key) {
                Some((cell, at)) if at.elapsed() < REFRESH_KEPT => cell.clone(),
                _ => {
                    let cell = Arc::new(tokio::sync::OnceCell::new());
                    let entry = (cell.clone(), Instant::now());
                    shard.insert(&key, entry, |(_, at)| at.elapsed() >= REFRESH_KEPT);
                    cell
                }
            }
        };
        let outcome = cell
            .get_or_init(|| async {
                let mut fresh = session.clone();
                match self.refresh(&mut fresh).await {
                    Ok(()) => Some(fresh),
                    Err(e) => {
                        tracing::debug!(policy = %self.name, error = e.code(), "session not refreshed");
                        None
                    }
                }
            })
            .await;
        outcome.clone()
    }

    /// Trades the refresh token for fresh tokens; the session takes the new claims.
    async fn refresh(&self, session: &mut LoginSession) -> Result<(), GatewayError> {
        let token = session.refresh.clone().unwrap_or_default();
        let tokens = self
            .token_call(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
            .await?;
        if let Some(id_token) = tokens.id_token {
            let (claims, expires) = self.verify(&id_token, None).await?;
            if claims.get("sub") != session.claims.get("sub") {
                return Err(failed(
                    Code::LoginRefused,
                    "the refreshed ID token is another user's",
                ));
            }
            session.claims = claims;
            session.token_expires = expires;
        } else if let Some(lasts) = tokens.expires_in {
            session.token_expires = unix_now() + lasts;
        }
        if tokens.refresh_token.is_some() {
            session.refresh = tokens.refresh_token;
        }
        Ok(())
    }

    async fn token_call(&self, form: &[(&str, &str)]) -> Result<Tokens, GatewayError> {
        let (discovery, _) = self.found().await?;
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let answer = self
            .client
            .post(&discovery.token_endpoint)
            .timeout(self.timeout)
            .header(http::header::AUTHORIZATION, self.credentials.clone())
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(http::header::ACCEPT, "application/json")
            .body(body.join("&"))
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(policy = %self.name, error = %e.without_url(), "token endpoint failed");
                GatewayError::from(UNAVAILABLE)
            })?;
        let status = answer.status();
        if status.is_client_error() {
            // A used, expired or forged code (or refresh token): the provider said no.
            return Err(failed(
                Code::LoginRefused,
                "the identity provider refused the code",
            ));
        }
        if !status.is_success() {
            return Err(UNAVAILABLE.into());
        }
        let bytes = answer
            .bytes()
            .await
            .map_err(|_| GatewayError::from(UNAVAILABLE))?;
        serde_json::from_slice(&bytes).map_err(|_| UNAVAILABLE.into())
    }

    /// Verifies an ID token: a signature by the provider's keys (asymmetric algorithms it
    /// lists only), `iss`, `aud` (and `azp` when there are several), `exp`, and the
    /// login's `nonce`. Returns its claims and `exp`.
    async fn verify(&self, token: &str, nonce: Option<&str>) -> Result<(Value, u64), GatewayError> {
        let bad = |why: &str| {
            failed(
                Code::IdTokenInvalid,
                format!("the ID token is not valid: {why}"),
            )
        };
        let (discovery, jwks) = self.found().await?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| bad("malformed"))?;
        let asymmetric = !matches!(compile::family(header.alg), compile::Family::Hmac);
        let listed = discovery.id_token_signing_alg_values_supported.is_empty()
            || discovery
                .id_token_signing_alg_values_supported
                .iter()
                .any(|a| Algorithm::from_str(a).ok() == Some(header.alg));
        if !asymmetric || !listed {
            return Err(bad("its algorithm is not accepted"));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.provider.issuer]);
        validation.set_audience(&[&self.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let keys = jwks
            .keys_for(header.kid.as_deref())
            .await
            .map_err(|_| GatewayError::from(UNAVAILABLE))?;
        let key = pick_key(&keys, header.kid.as_deref())
            .ok_or_else(|| bad("signed by an unknown key"))?;
        let data = jsonwebtoken::decode::<Value>(token, key, &validation)
            .map_err(|e| bad(map_jwt_error(&e).message().as_str()))?;
        let mut claims = data.claims;
        let several = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1);
        if several && claims.get("azp").and_then(Value::as_str) != Some(&self.client_id) {
            return Err(bad("`azp` is not this client"));
        }
        if let Some(nonce) = nonce {
            let sent = claims
                .get("nonce")
                .and_then(Value::as_str)
                .unwrap_or_default();
            #[allow(deprecated)]
            let same =
                ring::constant_time::verify_slices_are_equal(sent.as_bytes(), nonce.as_bytes())
                    .is_ok();
            if !same {
                return Err(bad("its nonce is not this login's"));
            }
        }
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no exp"))?;
        if let Value::Object(map) = &mut claims {
            for name in ["nonce", "at_hash", "c_hash", "sid", "auth_time"] {
                map.remove(name);
            }
        }
        Ok((claims, expires))
    }

    /// The provider's discovery document and keys, fetched once (tried again at most every
    /// few seconds after a failure).
    async fn found(&self) -> Result<&(Discovery, Arc<RemoteJwks>), GatewayError> {
        if let Some(found) = self.provider.found.get() {
            return Ok(found);
        }
        let failed_lately = |p: &Provider| {
            let last = p.last_failure.lock().unwrap_or_else(|e| e.into_inner());
            last.is_some_and(|t| t.elapsed() < RETRY)
        };
        if failed_lately(&self.provider) {
            return Err(UNAVAILABLE.into());
        }
        // Concurrent callers wait for the one discovery under way.
        self.provider
            .found
            .get_or_try_init(|| self.discover())
            .await
            .map_err(|e| {
                tracing::warn!(policy = %self.name, error = %e, "OIDC discovery failed");
                *self
                    .provider
                    .last_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                GatewayError::from(UNAVAILABLE)
            })
    }

    async fn discover(&self) -> Result<(Discovery, Arc<RemoteJwks>), String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.provider.issuer.trim_end_matches('/')
        );
        let answer = self
            .client
            .get(&url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let answer = answer
            .error_for_status()
            .map_err(|e| e.without_url().to_string())?;
        let discovery: Discovery = answer
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if discovery.issuer != self.provider.issuer {
            return Err(format!(
                "the document names issuer `{}`, not `{}`",
                discovery.issuer, self.provider.issuer
            ));
        }
        let jwks = Arc::new(RemoteJwks::new(
            &discovery.jwks_uri,
            Duration::from_secs(3600),
        ));
        jwks.fetch().await;
        Ok((discovery, jwks))
    }

    fn flow_name(&self) -> String {
        format!("{}_flow", self.cookie)
    }

    /// The flow cookie, or (None) the header that clears it. Scoped to the callback path.
    fn flow_cookie(&self, flow: Option<&Flow>) -> Option<HeaderValue> {
        let name = self.flow_name();
        let text = match flow {
            Some(flow) => format!(
                "{name}={}; Path={}; Max-Age={FLOW_TTL}; HttpOnly; Secure; SameSite=Lax",
                self.seal(&name, flow)?,
                self.redirect_path
            ),
            None => format!(
                "{name}=; Path={}; Max-Age=0; HttpOnly; Secure; SameSite=Lax",
                self.redirect_path
            ),
        };
        HeaderValue::from_str(&text).ok()
    }

    fn session_cookie(&self, session: &LoginSession) -> Option<HeaderValue> {
        let sealed = self.seal(&self.cookie, session)?;
        let max_age = session.expires.saturating_sub(unix_now());
        let text = format!(
            "{}={sealed}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax",
            self.cookie
        );
        if text.len() > 4000 {
            tracing::warn!(policy = %self.name, bytes = text.len(), "the session is too large for a cookie: ask for fewer scopes");
            return None;
        }
        HeaderValue::from_str(&text).ok()
    }

    /// JSON sealed with AES-256-GCM (a fresh random nonce; the cookie's name and the
    /// policy's are the associated data, so one cookie cannot stand for another).
    fn seal<T: Serialize>(&self, cookie: &str, value: &T) -> Option<String> {
        let mut data = serde_json::to_vec(value).ok()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let aad = format!("portico-oidc:{}:{cookie}", self.name);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut data,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
    }

    /// A sealed cookie's value, when it opens under this policy's key (None otherwise:
    /// forged, tampered with, or another policy's).
    fn open<T: serde::de::DeserializeOwned>(&self, cookie: &str, text: &str) -> Option<T> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let aad = format!("portico-oidc:{}:{cookie}", self.name);
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
            .ok()?;
        serde_json::from_slice(plain).ok()
    }

    /// `scheme://host` of the request as the browser sees it.
    fn origin(&self, req: &RequestHeader, info: &RequestInfo<'_>) -> String {
        let forwarded = info
            .trusted_peer
            .then(|| req.headers.get("x-forwarded-proto")?.to_str().ok())
            .flatten()
            .filter(|p| matches!(*p, "http" | "https"));
        let scheme = forwarded.unwrap_or(if info.tls { "https" } else { "http" });
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(req.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default();
        format!("{scheme}://{host}")
    }

    fn redirect_uri(&self, req: &RequestHeader, info: &RequestInfo<'_>) -> String {
        format!("{}{}", self.origin(req, info), self.redirect_path)
    }

    /// The paths the policy answers itself: its callback and logout.
    pub fn own_paths(&self) -> Vec<&str> {
        let mut paths = vec![self.redirect_path.as_str()];
        paths.extend(self.logout_path.as_deref());
        paths
    }

    pub fn scheme(&self) -> Value {
        serde_json::json!({"type": "openIdConnect", "openIdConnectUrl": format!("{}/.well-known/openid-configuration", self.provider.issuer.trim_end_matches('/')), "description": format!("a browser session (cookie {}) from an OpenID Connect login", self.cookie)})
    }

    pub fn details(&self) -> Value {
        serde_json::json!({"issuer": crate::diag::redact_url(&self.provider.issuer), "redirect_path": self.redirect_path, "logout_path": self.logout_path, "cookie": self.cookie, "ttl_s": self.ttl.as_secs()})
    }
}

/// A redirect the gateway answers with, with the cookies it sets.
fn redirect(location: &str, cookies: Vec<HeaderValue>) -> GatewayError {
    let mut answer = Refusal::new(302, Code::LoginRedirect, "continue at the location given");
    if let Ok(v) = HeaderValue::from_str(location) {
        answer = answer.header(http::header::LOCATION, v);
    }
    for cookie in cookies {
        answer = answer.header(http::header::SET_COOKIE, cookie);
    }
    answer = answer.header(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    answer.answer = Some(bytes::Bytes::new());
    answer.into()
}

/// Whether a browser is navigating to a page (which may be sent to log in), rather than a
/// script or API client calling (which gets 401).
fn navigation(req: &RequestHeader) -> bool {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return false;
    }
    if header("x-requested-with").is_some() {
        return false;
    }
    match header("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => header("accept").is_some_and(|a| a.contains("text/html")),
    }
}

/// The path and query to return to after the login: always a path on this host.
fn return_path(req: &RequestHeader) -> String {
    let back = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if !back.starts_with('/') || back.starts_with("//") || back.starts_with("/\\") {
        return "/".into();
    }
    back.to_string()
}

/// A cookie's value, when sent exactly once.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    TokenSource::Cookie(name.to_string())
        .find(headers)
        .ok()
        .flatten()
}

/// 32 random bytes, base64url (None if the system has no randomness to give).
fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn form_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, introspection::FORM).to_string()
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect();
    let join = if base.contains('?') { '&' } else { '?' };
    format!("{base}{join}{}", query.join("&"))
}

/// The session key: 32 bytes, as 64 hex digits or base64.
fn session_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = hex::decode(text).ok().or_else(|| {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(text).ok())
    })?;
    bytes.try_into().ok()
}

/// Compiles `type: oidc`: the client and the session key are read from the environment.
pub fn compile(cx: &mut CompileCx, name: &str, o: &RawOidc) -> Option<Oidc> {
    let at = format!("auth.{name}");
    let d = &mut *cx.d;
    let issuer = super::forward::http_url(d, &format!("{at}.issuer"), &o.issuer)?;
    if issuer.starts_with("http://") && !super::introspection::is_loopback(&issuer) {
        d.error(&format!("{at}.issuer"), "an issuer is an https:// URL", Some("tokens and codes must not cross the network in clear (http:// is accepted for localhost only)".into()));
        return None;
    }
    let id = introspection::env_secret(d, &format!("{at}.client_id_env"), &o.client_id_env);
    let secret =
        introspection::env_secret(d, &format!("{at}.client_secret_env"), &o.client_secret_env);
    let key = introspection::env_secret(d, &format!("{at}.session.key_env"), &o.session.key_env)
        .and_then(|k| {
            let key = session_key(&k);
            if key.is_none() {
                d.error(
                    &format!("{at}.session.key_env"),
                    format!("`{}` is not a 32-byte key", o.session.key_env),
                    Some("give 64 hex digits or 32 bytes in base64: `openssl rand -hex 32`".into()),
                );
            }
            key
        });
    let mut paths_ok = true;
    for (field, path) in [
        ("redirect_path", Some(&o.redirect_path)),
        ("logout_path", o.logout_path.as_ref()),
    ] {
        if let Some(path) = path.filter(|p| !p.starts_with('/') || p.contains(['?', '#', ' ', ';']))
        {
            d.error(
                &format!("{at}.{field}"),
                format!("`{path}` is not a path"),
                Some("e.g. /oauth2/callback".into()),
            );
            paths_ok = false;
        }
    }
    let cookie_ok = !o.session.cookie.is_empty()
        && o.session
            .cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !cookie_ok {
        d.error(
            &format!("{at}.session.cookie"),
            format!("`{}` is not a cookie name", o.session.cookie),
            Some("use letters, digits, `_` and `-`".into()),
        );
    }
    if o.session.ttl.is_zero() {
        d.error(
            &format!("{at}.session.ttl"),
            "a session must last longer than 0",
            Some("e.g. ttl: 8h".into()),
        );
    }
    let forward = forward_headers(d, &format!("{at}.forward"), &o.forward);
    let mut scopes = o.scopes.clone();
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    let (id, secret, key) = (id?, secret?, key?);
    if !paths_ok || !cookie_ok || o.session.ttl.is_zero() {
        return None;
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(&id),
        form_encode(&secret)
    ));
    let mut credentials = HeaderValue::from_str(&format!("Basic {basic}")).ok()?;
    credentials.set_sensitive(true);
    let provider = cx.state.keep("oidc", &issuer, &issuer, || Provider {
        issuer: issuer.clone(),
        found: tokio::sync::OnceCell::new(),
        last_failure: Mutex::new(None),
    });
    Some(Oidc {
        name: name.into(),
        provider,
        client_id: id,
        credentials,
        redirect_path: o.redirect_path.clone(),
        logout_path: o.logout_path.clone(),
        scopes: scopes.join(" "),
        cookie: o.session.cookie.clone(),
        key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).ok()?),
        ttl: o.session.ttl,
        refresh_before: o.session.refresh_before,
        timeout: o.timeout.max(Duration::from_millis(1)),
        forward,
        client: super::forward::http_client(),
        refreshes: Bounded::new(16, 10_000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Oidc {
        Oidc {
            name: "web".into(),
            provider: Arc::new(Provider {
                issuer: "https://idp.test".into(),
                found: Default::default(),
                last_failure: Mutex::new(None),
            }),
            client_id: "c".into(),
            credentials: HeaderValue::from_static("Basic x"),
            redirect_path: "/cb".into(),
            logout_path: None,
            scopes: "openid".into(),
            cookie: "s".into(),
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7; 32]).unwrap()),
            ttl: Duration::from_secs(60),
            refresh_before: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            forward: Vec::new(),
            client: reqwest::Client::new(),
            refreshes: Bounded::new(1, 10),
        }
    }

    #[test]
    fn sealed_cookies_open_only_unchanged_and_under_their_own_name() {
        let p = policy();
        let flow = Flow {
            state: "s".into(),
            nonce: "n".into(),
            verifier: "v".into(),
            back: "/a".into(),
            expires: 1,
        };
        let sealed = p.seal("s_flow", &flow).unwrap();
        assert_eq!(p.open::<Flow>("s_flow", &sealed).unwrap().back, "/a");
        assert!(
            p.open::<Flow>("s", &sealed).is_none(),
            "a flow cookie is no session cookie"
        );
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert!(p.open::<Flow>("s_flow", &tampered).is_none());
        assert!(p.open::<Flow>("s_flow", "AAAA").is_none());
    }

    #[test]
    fn only_paths_on_this_host_are_returned_to() {
        let at = |target: &str| {
            return_path(&RequestHeader::build("GET", target.as_bytes(), None).unwrap())
        };
        assert_eq!(at("/app/x?y=1"), "/app/x?y=1");
        assert_eq!(at("//evil.example/x"), "/");
        assert_eq!(at("/\\evil.example"), "/");
    }

    #[test]
    fn session_keys_are_32_bytes_in_hex_or_base64() {
        assert!(session_key(&"ab".repeat(32)).is_some());
        assert!(
            session_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 32])).is_some()
        );
        assert!(session_key(&"ab".repeat(16)).is_none());
        assert!(session_key("not a key").is_none());
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        let req = |method: &str, headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build(method, b"/", None).unwrap();
            for (k, v) in headers {
                r.insert_header(k.to_string(), *v).unwrap();
            }
            navigation(&r)
        };
        assert!(req("GET", &[("accept", "text/html,application/xhtml+xml")]));
        assert!(req("GET", &[("sec-fetch-mode", "navigate")]));
        assert!(!req("GET", &[("accept", "application/json")]));
        assert!(!req(
            "GET",
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest")
            ]
        ));
        assert!(!req(
            "GET",
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")]
        ));
        assert!(!req("POST", &[("accept", "text/html")]));
    }
}
