//! JWT authentication and claim-based authorization. Each policy pins its algorithms; keys
//! come from PEM files, a JWKS file or URL (chosen by `kid`), or an HMAC secret from an env
//! var or file. The token itself is never logged.

use super::{ApiDoc, PolicyState, RequestInfo, Stage, Unit};
use crate::bounded::Bounded;
use crate::diag::{Diags, Inputs};
use crate::errors::{Counted, GatewayError, Refusal};
use crate::state::StateCx;
use crate::units::unix_now;
use arc_swap::ArcSwap;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA:
    /// the only algorithms accepted (pinned; `none` never is).
    #[schemars(inner(pattern(
        r"^(HS256|HS384|HS512|RS256|RS384|RS512|PS256|PS384|PS512|ES256|ES384|EdDSA)$"
    )))]
    pub algorithms: Vec<String>,
    /// A JWKS document (file) holding the verification keys.
    pub jwks_file: Option<String>,
    /// A JWKS endpoint holding the verification keys.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_jwks_refresh", with = "crate::units::duration")]
    pub jwks_refresh: Duration,
    /// A PEM public key for RS*, PS*, ES* or EdDSA tokens.
    pub public_key_file: Option<String>,
    /// HMAC secret from this environment variable (never inline in the file).
    pub secret_env: Option<String>,
    /// A file holding the HMAC secret for HS* tokens.
    pub secret_file: Option<String>,
    /// The `iss` a token must carry.
    pub issuer: Option<OneOrMany>,
    /// The `aud` a token must carry.
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_leeway", with = "crate::units::duration")]
    pub leeway: Duration,
    /// Claims a token must carry, whatever their value.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// `bearer` (default), `cookie:NAME` or `header:NAME`.
    #[serde(default = "default_token_source")]
    #[schemars(pattern(r"^(bearer|cookie:.+|header:\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*)$"))]
    pub token: String,
    /// Claims sent upstream as headers, e.g. `{ sub: X-User-Id }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_token_source() -> String {
    "bearer".to_string()
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `require: { claims: { role: [admin, user], amr: { all_of: [pwd, mfa] } } }`
#[derive(Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// Per claim, the values accepted: a list (any of), `{ any_of }` or `{ all_of }`.
    #[serde(default)]
    pub claims: BTreeMap<String, RawClaimRule>,
}

/// A list or a single value means "any of"; `{all_of: [...]}` needs every value.
#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum RawClaimRule {
    AnyList(Vec<Scalar>),
    AnyOf {
        /// The claim holds at least one of these.
        any_of: Vec<Scalar>,
    },
    AllOf {
        /// The claim holds every one of these.
        all_of: Vec<Scalar>,
    },
    One(Scalar),
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Text(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Where the token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`
    Bearer,
    Cookie(String),
    Header(HeaderName),
}

impl TokenSource {
    pub fn parse(text: &str) -> Result<TokenSource, String> {
        if text == "bearer" {
            Ok(TokenSource::Bearer)
        } else if let Some(c) = text.strip_prefix("cookie:") {
            Ok(TokenSource::Cookie(c.trim().to_string()))
        } else if let Some(h) = text.strip_prefix("header:") {
            HeaderName::from_bytes(h.trim().as_bytes())
                .map(TokenSource::Header)
                .map_err(|_| format!("`{h}` is not a valid header name"))
        } else {
            Err(format!("unknown token source `{text}`"))
        }
    }

    /// The token, if sent; `Err` when it is sent more than once (two `Authorization` or
    /// token headers, or the cookie twice), since which one counts would be a guess.
    fn find<'a>(&self, headers: &'a HeaderMap) -> Result<Option<&'a str>, SentTwice> {
        let once = |name| match headers.get_all(name).iter().count() {
            0 | 1 => Ok(headers.get(name)),
            _ => Err(SentTwice),
        };
        let token = match self {
            TokenSource::Bearer => once(&http::header::AUTHORIZATION)?
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim()),
            TokenSource::Header(name) => once(name)?.and_then(|v| v.to_str().ok()).map(str::trim),
            TokenSource::Cookie(name) => {
                let mut found = headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|pair| pair.trim().split_once('='))
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v);
                let first = found.next();
                if found.next().is_some() {
                    return Err(SentTwice);
                }
                first
            }
        };
        Ok(token.filter(|t| !t.is_empty()))
    }
}

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

impl From<AuthError> for GatewayError {
    /// A 401 with the challenge RFC 6750 describes; the reason is in `error_description`.
    fn from(e: AuthError) -> GatewayError {
        let challenge = match &e {
            AuthError::Missing => "Bearer realm=\"portico\"".to_string(),
            e => format!(
                "Bearer realm=\"portico\", error=\"invalid_token\", error_description=\"{}\"",
                e.message()
            ),
        };
        let refusal = Refusal::new(401, e.code(), e.message()).counted(Counted::AuthFailure);
        match HeaderValue::try_from(challenge) {
            Ok(v) => refusal.header(http::header::WWW_AUTHENTICATE, v).into(),
            Err(_) => refusal.into(),
        }
    }
}

/// A valid token whose claims do not meet the route's `require`.
fn insufficient() -> GatewayError {
    let message = "the token lacks the claims this route requires";
    Refusal::new(403, "insufficient_claims", message)
        .counted(Counted::AuthFailure)
        .into()
}

/// The token was sent more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentTwice;

/// Longest claim value forwarded as a header.
const MAX_FORWARDED: usize = 4096;

/// The headers `forward` makes of verified claims. A claim with no unambiguous header form
/// fails the token: a list item holding a comma, control bytes, a value over
/// [`MAX_FORWARDED`]. A missing or `null` claim sends no header.
fn forwardable(
    claims: &Value,
    forward: &[(String, HeaderName)],
) -> Result<Vec<(HeaderName, HeaderValue)>, AuthError> {
    let mut out = Vec::with_capacity(forward.len());
    for (name, header) in forward {
        let value = match claim(claims, name) {
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        let bad = || AuthError::BadClaim(name.clone());
        if let Value::Array(items) = value {
            let ambiguous = items
                .iter()
                .any(|i| scalar(i).is_none_or(|text| text.contains(',')));
            if ambiguous {
                return Err(bad());
            }
        }
        let text = header_text(value);
        if text.len() > MAX_FORWARDED {
            return Err(bad());
        }
        out.push((
            header.clone(),
            HeaderValue::from_str(&text).map_err(|_| bad())?,
        ));
    }
    Ok(out)
}

fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::AlgorithmNotAllowed
        }
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidSignature
        | ErrorKind::Crypto(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

/// Keys by `kid`, from a JWKS document; keys of unsupported types are skipped.
pub fn parse_jwks(text: &str) -> Result<HashMap<String, DecodingKey>, String> {
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, key);
            }
            Err(e) => tracing::warn!(kid, error = %e, "skipping a JWKS key"),
        }
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable key".into());
    }
    Ok(keys)
}

/// A JWKS fetched from a URL, cached and refreshed; an unknown `kid` triggers a refetch
/// (at most every 10 s) so key rotation needs no restart.
pub struct RemoteJwks {
    pub url: String,
    pub refresh: Duration,
    keys: ArcSwap<HashMap<String, DecodingKey>>,
    last_fetch: Mutex<Option<Instant>>,
    client: reqwest::Client,
}

const MIN_REFETCH: Duration = Duration::from_secs(10);

impl RemoteJwks {
    pub fn new(url: &str, refresh: Duration) -> RemoteJwks {
        RemoteJwks {
            url: url.to_string(),
            refresh,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_fetch: Mutex::new(None),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
        }
    }

    fn due(&self, min_age: Duration) -> bool {
        let last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= min_age)
    }

    /// Fetches the document now; keeps the old keys on failure.
    pub async fn fetch(&self) {
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let result = async {
            let resp = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let text = resp
                .error_for_status()
                .map_err(|e| e.without_url().to_string())?
                .text()
                .await
                .map_err(|e| e.without_url().to_string())?;
            parse_jwks(&text)
        }
        .await;
        match result {
            Ok(keys) => self.keys.store(Arc::new(keys)),
            Err(e) => {
                let url = crate::diag::redact_url(&self.url);
                tracing::warn!(%url, error = %e, "JWKS fetch failed; keeping the cached keys")
            }
        }
    }

    /// Refreshes when the refresh interval has passed (called by the background refresher).
    pub async fn refresh_if_due(&self) {
        if self.due(self.refresh) {
            self.fetch().await;
        }
    }

    /// The key set holding `kid`, refetched (rate-limited) when it does not.
    async fn keys_for(
        &self,
        kid: Option<&str>,
    ) -> Result<Arc<HashMap<String, DecodingKey>>, AuthError> {
        let keys = self.keys.load_full();
        if pick_key(&keys, kid).is_some() {
            return Ok(keys);
        }
        if self.due(MIN_REFETCH) {
            self.fetch().await;
        }
        let keys = self.keys.load_full();
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        Ok(keys)
    }
}

fn pick_key<'a>(
    keys: &'a HashMap<String, DecodingKey>,
    kid: Option<&str>,
) -> Option<&'a DecodingKey> {
    match kid {
        Some(kid) => keys.get(kid),
        None if keys.len() == 1 => keys.values().next(),
        None => None,
    }
}

pub enum Keys {
    Single(DecodingKey),
    Set(HashMap<String, DecodingKey>),
    Remote(Arc<RemoteJwks>),
}

/// A claim condition of `require`: the claim (a string, number, or an array of them) must
/// contain any / all of the values.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    pub claim: String,
    pub values: Vec<String>,
    pub all: bool,
}

impl ClaimRule {
    pub fn holds(&self, claims: &Value) -> bool {
        let have = claim(claims, &self.claim).map(scalars).unwrap_or_default();
        let has = |v: &String| have.contains(v);
        if self.all {
            self.values.iter().all(has)
        } else {
            self.values.iter().any(has)
        }
    }
}

/// A claim by name: the whole name first (namespaced claims contain dots), then a dotted
/// path into nested objects.
pub fn claim<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims
        .get(name)
        .or_else(|| name.split('.').try_fold(claims, |v, part| v.get(part)))
}

/// A claim's values as strings: a scalar, or the scalars of an array.
fn scalars(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim as an upstream header value: scalars as text, arrays comma-joined, objects as JSON.
pub fn header_text(v: &Value) -> String {
    match v {
        Value::Array(_) => scalars(v).join(","),
        Value::Object(_) => v.to_string(),
        other => scalar(other).unwrap_or_default(),
    }
}

pub struct AuthPolicy {
    pub name: Arc<str>,
    pub source: TokenSource,
    pub keys: Keys,
    /// One prebuilt validation per accepted algorithm (jsonwebtoken checks that a
    /// validation's algorithms match the key's family).
    pub validations: Vec<(Algorithm, Validation)>,
    pub required_claims: Vec<String>,
    /// (claim, upstream header)
    pub forward: Vec<(String, HeaderName)>,
    /// Tokens this policy verified: a repeated token costs a lookup, not a signature check.
    pub verified: TokenCache,
    /// Its OpenAPI security scheme (made from the file's text: header names as written).
    pub scheme: Value,
}

/// Verified tokens by their whole text, bounded, each until its `exp` (never later). An
/// entry verified with a key set fetched from a URL is dropped once its `kid` leaves the
/// set. The cache belongs to the compiled policy, so a reload starts it afresh.
pub struct TokenCache {
    entries: Bounded<Verified>,
}

struct Verified {
    claims: Arc<Value>,
    /// Unix seconds of `exp`.
    expires: u64,
    kid: Option<String>,
}

const CACHE_SHARDS: usize = 16;
const CACHE_ENTRIES: usize = 10_000;

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(CACHE_ENTRIES)
    }
}

impl TokenCache {
    pub fn new(entries: usize) -> TokenCache {
        TokenCache {
            entries: Bounded::new(CACHE_SHARDS, entries),
        }
    }

    /// The shard of a token: by its signature's last bytes, as good as random.
    fn shard(&self, token: &str) -> crate::bounded::Shard<'_, Verified> {
        let tail = &token.as_bytes()[token.len().saturating_sub(16)..];
        self.entries.shard(tail)
    }

    /// The claims of a token verified before, while it is unexpired and (with `keys`, a
    /// fetched set) its key is still in the set.
    fn get(
        &self,
        token: &str,
        now: u64,
        keys: Option<&HashMap<String, DecodingKey>>,
    ) -> Option<Arc<Value>> {
        let mut shard = self.shard(token);
        let hit = shard.get(token)?;
        let key_gone =
            keys.is_some_and(|k| hit.kid.as_ref().is_none_or(|kid| !k.contains_key(kid)));
        if now >= hit.expires || key_gone {
            shard.remove(token);
            return None;
        }
        Some(hit.claims.clone())
    }

    fn put(&self, token: &str, claims: Arc<Value>, kid: Option<&str>, now: u64) {
        let Some(expires) = claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let verified = Verified {
            claims,
            expires,
            kid: kid.map(str::to_string),
        };
        self.shard(token)
            .insert(token, verified, |v| v.expires <= now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether the token's header has a `crit` member (parsed as JSON, so an escaped key
/// counts too).
fn has_crit(token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Crit {
        crit: Option<serde::de::IgnoredAny>,
    }
    let Some(header) = token.split('.').next() else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Crit>(&bytes).ok())
        .is_some_and(|h| h.crit.is_some())
}

/// The `alg` of a token whose header jsonwebtoken refuses (e.g. `none`).
fn raw_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    json.get("alg")?.as_str().map(str::to_string)
}

impl AuthPolicy {
    /// The token, if sent; `Err` when sent more than once.
    pub fn token<'a>(&self, headers: &'a HeaderMap) -> Result<Option<&'a str>, SentTwice> {
        self.source.find(headers)
    }

    /// Verifies a token and returns its claims; a token verified before (and still valid)
    /// is a lookup.
    pub async fn verify(&self, token: &str) -> Result<Arc<Value>, AuthError> {
        let now = unix_now();
        let remote = match &self.keys {
            Keys::Remote(remote) => Some(remote.keys.load_full()),
            _ => None,
        };
        if let Some(claims) = self.verified.get(token, now, remote.as_deref()) {
            return Ok(claims);
        }
        let (claims, kid) = self.verify_signed(token).await?;
        let claims = Arc::new(claims);
        self.verified
            .put(token, claims.clone(), kid.as_deref(), now);
        Ok(claims)
    }

    /// Verifies a token's signature and claims; returns them and the key id it named.
    async fn verify_signed(&self, token: &str) -> Result<(Value, Option<String>), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| match raw_alg(token) {
            Some(_) => AuthError::AlgorithmNotAllowed,
            None => AuthError::Malformed,
        })?;
        if has_crit(token) {
            return Err(AuthError::CriticalExtension);
        }
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let kid = header.kid.as_deref();
        let decode = |key: Option<&DecodingKey>| {
            let key = key.ok_or(AuthError::UnknownKey)?;
            jsonwebtoken::decode::<Value>(token, key, validation).map_err(|e| map_jwt_error(&e))
        };
        let data = match &self.keys {
            Keys::Single(key) => decode(Some(key)),
            Keys::Set(keys) => decode(pick_key(keys, kid)),
            Keys::Remote(remote) => decode(pick_key(&*remote.keys_for(kid).await?, kid)),
        }?;
        // jsonwebtoken skips a time claim it cannot read as a number (`"nbf": "tomorrow"`):
        // such a token is refused, not taken as having no such limit.
        for name in ["exp", "nbf", "iat"] {
            if data.claims.get(name).is_some_and(|v| !v.is_number()) {
                return Err(AuthError::BadTimeClaim(name));
            }
        }
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| claim(&data.claims, c).is_none())
        {
            return Err(AuthError::MissingClaim(missing.clone()));
        }
        Ok((data.claims, header.kid))
    }
}

/// An auth policy as a route applies it: the token check plus the route's claim rules.
pub struct RouteAuth {
    pub policy: Arc<AuthPolicy>,
    /// Claim conditions a valid token must meet (403 otherwise).
    pub require: Vec<ClaimRule>,
}

impl RouteAuth {
    /// Verifies the token and the claim rules; the claims are kept for later phases.
    pub async fn authenticate(
        &self,
        req: &RequestHeader,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        let auth = &self.policy;
        let Ok(token) = auth.token(&req.headers) else {
            return Err(crate::errors::AMBIGUOUS_HEADER.into());
        };
        let Some(token) = token else {
            return Err(AuthError::Missing.into());
        };
        match auth.verify(token).await {
            Err(e) => {
                tracing::debug!(policy = %auth.name, reason = e.code(), "token refused");
                Err(e.into())
            }
            Ok(claims) if !self.require.iter().all(|rule| rule.holds(&claims)) => {
                Err(insufficient())
            }
            Ok(claims) => {
                state.forward = forwardable(&claims, &auth.forward)?;
                state.claims = Some(claims);
                Ok(())
            }
        }
    }

    /// Sends the configured claims upstream as headers (the client's copies were removed).
    pub fn forward_claims(
        &self,
        req: &mut RequestHeader,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        for (name, value) in &state.forward {
            req.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

impl std::fmt::Display for ClaimRule {
    /// `role in [admin, ops]`, or `amr has all of [pwd, mfa]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.all { "has all of" } else { "in" };
        write!(f, "{} {how} [{}]", self.claim, self.values.join(", "))
    }
}

#[async_trait::async_trait]
impl Unit for RouteAuth {
    fn kind(&self) -> &'static str {
        "auth"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.policy.name)
    }

    fn stage(&self) -> Stage {
        Stage::Authenticate
    }

    fn details(&self) -> Value {
        let rules: Vec<String> = self.require.iter().map(ToString::to_string).collect();
        let forward: Vec<String> = self
            .policy
            .forward
            .iter()
            .map(|(_, h)| h.to_string())
            .collect();
        serde_json::json!({"require": rules.join(" and "), "forward": forward})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        let rules: Vec<String> = self.require.iter().map(ToString::to_string).collect();
        ApiDoc {
            security: Some((self.policy.name.to_string(), self.policy.scheme.clone())),
            errors: vec!["401", "403"],
            parameters: Vec::new(),
            note: (!rules.is_empty())
                .then(|| format!("The token must also satisfy: {}.", rules.join(" and "))),
        }
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.policy.forward.iter().map(|(_, h)| h.clone()).collect()
    }

    async fn on_request(
        &self,
        session: &mut pingora::proxy::Session,
        _info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        self.authenticate(session.req_header(), state).await
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        _info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        self.forward_claims(req, state)
    }
}

/// The OpenAPI security scheme of an auth policy, from its text in the file.
fn security_scheme(a: &RawAuth) -> Value {
    let description = format!("JWT ({}), verified by the gateway", a.algorithms.join(", "));
    match a.token.split_once(':') {
        Some(("header", h)) => {
            serde_json::json!({"type": "apiKey", "in": "header", "name": h, "description": description})
        }
        Some(("cookie", c)) => {
            serde_json::json!({"type": "apiKey", "in": "cookie", "name": c, "description": description})
        }
        _ => {
            serde_json::json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": description})
        }
    }
}

/// Applies `auth: NAME` (and `require`) on a route.
pub fn compile_route(
    d: &mut Diags,
    at: &str,
    policy: Option<Arc<AuthPolicy>>,
    named: bool,
    require: Option<&RawRequire>,
) -> Option<RouteAuth> {
    let require = match (require, named) {
        (Some(req), true) => compile_require(d, &format!("{at}.require"), req),
        (Some(_), false) => {
            d.error(
                &format!("{at}.require"),
                "`require` checks token claims, but this route has no `auth`",
                Some("add `auth: POLICY` to the route".into()),
            );
            Vec::new()
        }
        (None, _) => Vec::new(),
    };
    policy.map(|policy| RouteAuth { policy, require })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

const KEY_HELP: &str = "HS* algorithms take `secret_env` or `secret_file`; RS/PS/ES/EdDSA take one of `public_key_file`, `jwks_file`, `jwks_url`";

/// Compiles the named policy `auth.NAME`: keys are read and decoded here, once, so a
/// request only looks them up. A remote JWKS cache is kept across reloads per URL.
pub fn compile(
    d: &mut Diags,
    state: &mut StateCx,
    inputs: &mut Inputs,
    name: &str,
    a: &RawAuth,
) -> Option<AuthPolicy> {
    let at = format!("auth.{name}");
    let algorithms: Vec<Algorithm> = a
        .algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let alg = Algorithm::from_str(text).ok();
            if alg.is_none() {
                d.error(&format!("{at}.algorithms[{i}]"), format!("`{text}` is not a supported JWT algorithm"), Some("use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA; `none` is never accepted".into()));
            }
            alg
        })
        .collect();
    if a.algorithms.is_empty() {
        d.error(
            &format!("{at}.algorithms"),
            "list the accepted algorithms, e.g. [RS256]",
            Some("pinning the algorithms is what stops alg-confusion attacks".into()),
        );
    }
    let families: Vec<Family> = algorithms.iter().map(|a| family(*a)).collect();
    let hmac = families.contains(&Family::Hmac);
    if hmac && families.iter().any(|f| *f != Family::Hmac) {
        d.error(
            &format!("{at}.algorithms"),
            "HS* and public-key algorithms cannot share a policy",
            Some("make two policies: mixing them invites HS/RS key confusion".into()),
        );
        return None;
    }
    let keys = compile_keys(d, &at, a, hmac, &families, inputs, state)?;
    let source = TokenSource::parse(&a.token)
        .map_err(|e| {
            d.error(
                &format!("{at}.token"),
                e,
                Some("use bearer, cookie:NAME or header:NAME".into()),
            )
        })
        .ok()?;
    let forward = a
        .forward_claims
        .iter()
        .filter_map(
            |(claim, header)| match HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) => Some((claim.clone(), h)),
                Err(_) => {
                    d.error(
                        &format!("{at}.forward_claims.{claim}"),
                        format!("`{header}` is not a valid header name"),
                        Some(crate::diag::HEADER_NAME_HELP.into()),
                    );
                    None
                }
            },
        )
        .collect();
    let validations = algorithms
        .iter()
        .map(|alg| (*alg, validation(*alg, a)))
        .collect();
    Some(AuthPolicy {
        name: name.into(),
        source,
        keys,
        validations,
        required_claims: a.required_claims.clone(),
        forward,
        verified: TokenCache::default(),
        scheme: security_scheme(a),
    })
}

fn validation(alg: Algorithm, a: &RawAuth) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = a.leeway.as_secs();
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match &a.issuer {
        Some(iss) => {
            v.set_issuer(&iss.items());
            required.push("iss");
        }
        None => v.iss = None,
    }
    match &a.audience {
        Some(aud) => {
            v.set_audience(&aud.items());
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn compile_keys(
    d: &mut Diags,
    at: &str,
    a: &RawAuth,
    hmac: bool,
    families: &[Family],
    inputs: &mut Inputs,
    state: &mut StateCx,
) -> Option<Keys> {
    let sources = [
        a.secret_env.is_some(),
        a.secret_file.is_some(),
        a.public_key_file.is_some(),
        a.jwks_file.is_some(),
        a.jwks_url.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        d.error(at, "give exactly one key source", Some(KEY_HELP.into()));
        return None;
    }
    let wrong = if hmac {
        a.secret_env.is_none() && a.secret_file.is_none()
    } else {
        a.secret_env.is_some() || a.secret_file.is_some()
    };
    if wrong {
        d.error(
            at,
            "the key source does not fit the algorithms",
            Some(KEY_HELP.into()),
        );
        return None;
    }
    if let Some(var) = &a.secret_env {
        return match std::env::var(var) {
            Ok(secret) if !secret.is_empty() => {
                Some(Keys::Single(DecodingKey::from_secret(secret.as_bytes())))
            }
            _ => {
                d.error(
                    &format!("{at}.secret_env"),
                    format!("environment variable `{var}` is not set"),
                    Some(format!(
                        "export {var}=... (the secret itself never goes in the file)"
                    )),
                );
                None
            }
        };
    }
    if let Some(file) = &a.secret_file {
        let secret = inputs.read(d, &format!("{at}.secret_file"), file)?;
        return Some(Keys::Single(DecodingKey::from_secret(
            secret.trim_end_matches(['\n', '\r']).as_bytes(),
        )));
    }
    if let Some(url) = &a.jwks_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            d.error(
                &format!("{at}.jwks_url"),
                format!("`{}` is not an http(s) URL", crate::diag::redact_url(url)),
                Some("give the identity provider's JWKS address, e.g. https://idp.example.com/.well-known/jwks.json".into()),
            );
            return None;
        }
        let refresh = a.jwks_refresh;
        let cache = state.keep("jwks", url, &refresh, || RemoteJwks::new(url, refresh));
        return Some(Keys::Remote(cache));
    }
    if let Some(file) = &a.jwks_file {
        let text = inputs.read(d, &format!("{at}.jwks_file"), file)?;
        return match parse_jwks(&text) {
            Ok(keys) => Some(Keys::Set(keys)),
            Err(e) => {
                d.error(&format!("{at}.jwks_file"), format!("{file}: {e}"), Some("a JWKS file is a JSON object with a `keys` array (RFC 7517); the path is relative to the config file".into()));
                None
            }
        };
    }
    let file = a.public_key_file.as_ref()?;
    let path = format!("{at}.public_key_file");
    let pem = inputs.read(d, &path, file)?;
    let mut distinct = families.to_vec();
    distinct.dedup();
    let key = match distinct.as_slice() {
        [Family::Rsa] => DecodingKey::from_rsa_pem(pem.as_bytes()),
        [Family::Ec] => DecodingKey::from_ec_pem(pem.as_bytes()),
        [Family::Ed] => DecodingKey::from_ed_pem(pem.as_bytes()),
        _ => {
            d.error(
                &format!("{at}.algorithms"),
                "one public key serves one algorithm family",
                Some("use a JWKS to accept several key types".into()),
            );
            return None;
        }
    };
    match key {
        Ok(k) => Some(Keys::Single(k)),
        Err(e) => {
            d.error(
                &path,
                format!("{file} is not a PEM public key for {:?}: {e}", distinct[0]),
                Some("give the PEM public key (-----BEGIN PUBLIC KEY-----) that matches the algorithms listed".into()),
            );
            None
        }
    }
}

fn compile_require(d: &mut Diags, at: &str, r: &RawRequire) -> Vec<ClaimRule> {
    r.claims
        .iter()
        .map(|(claim, rule)| {
            let (values, all) = match rule {
                RawClaimRule::AnyList(v) | RawClaimRule::AnyOf { any_of: v } => (v.clone(), false),
                RawClaimRule::AllOf { all_of: v } => (v.clone(), true),
                RawClaimRule::One(v) => (vec![v.clone()], false),
            };
            if values.is_empty() {
                d.error(
                    &format!("{at}.claims.{claim}"),
                    "an empty list can never be satisfied",
                    Some("list the values the claim may take, or drop the rule".into()),
                );
            }
            ClaimRule {
                claim: claim.clone(),
                values: values.iter().map(ToString::to_string).collect(),
                all,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claim_paths_and_rules() {
        let claims = json!({"role": "admin", "amr": ["pwd", "mfa"], "realm": {"roles": ["a", "b"]}, "https://x.io/tier": 3});
        assert_eq!(claim(&claims, "realm.roles"), Some(&json!(["a", "b"])));
        assert_eq!(claim(&claims, "https://x.io/tier"), Some(&json!(3)));
        let rule = |c: &str, v: &[&str], all| ClaimRule {
            claim: c.into(),
            values: v.iter().map(|s| s.to_string()).collect(),
            all,
        };
        assert!(rule("role", &["user", "admin"], false).holds(&claims));
        assert!(rule("amr", &["mfa"], false).holds(&claims));
        assert!(rule("realm.roles", &["a", "b"], true).holds(&claims));
        assert!(!rule("realm.roles", &["a", "c"], true).holds(&claims));
        assert!(rule("https://x.io/tier", &["3"], false).holds(&claims));
        assert!(!rule("missing", &["x"], false).holds(&claims));
        assert_eq!(header_text(&json!(["a", 1])), "a,1");
    }

    #[test]
    fn token_sources() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer abc".parse().unwrap());
        h.insert("cookie", "a=1; session=tok; b=2".parse().unwrap());
        assert_eq!(TokenSource::Bearer.find(&h), Ok(Some("abc")));
        let cookie = TokenSource::parse("cookie:session").unwrap();
        assert_eq!(cookie.find(&h), Ok(Some("tok")));
        assert_eq!(
            TokenSource::parse("header:x-token").unwrap().find(&h),
            Ok(None)
        );
        h.append("cookie", "session=other".parse().unwrap());
        assert_eq!(cookie.find(&h), Err(SentTwice), "the cookie twice");
        h.append("authorization", "Bearer def".parse().unwrap());
        assert_eq!(
            TokenSource::Bearer.find(&h),
            Err(SentTwice),
            "two Authorization lines"
        );
    }

    #[test]
    fn require_without_auth_is_an_error_at_its_key() {
        let locator = crate::diag::Locator::new("");
        let mut d = Diags::new(std::path::Path::new("g.yaml"), &locator);
        let require: RawRequire = serde_yaml::from_str("claims: { role: [] }").unwrap();
        assert!(compile_route(&mut d, "routes[0]", None, false, Some(&require)).is_none());
        assert!(d.items[0].message.contains("this route has no `auth`"));
    }

    #[test]
    fn compile_pins_algorithms_and_refuses_mixed_families() {
        let locator = crate::diag::Locator::new("");
        let mut d = Diags::new(std::path::Path::new("g.yaml"), &locator);
        let stores = crate::state::Stores::default();
        let mut state = stores.begin();
        let mut inputs = Inputs::new(std::path::Path::new("g.yaml"));
        let raw: RawAuth =
            serde_yaml::from_str("{ algorithms: [HS256, RS256], secret_env: X }").unwrap();
        assert!(compile(&mut d, &mut state, &mut inputs, "p", &raw).is_none());
        assert!(d.items[0].message.contains("cannot share a policy"));
        let raw: RawAuth = serde_yaml::from_str("{ algorithms: [none], secret_env: X }").unwrap();
        assert!(compile(&mut d, &mut state, &mut inputs, "p", &raw).is_none());
        assert!(d.items.iter().any(|x| x
            .message
            .contains("`none` is not a supported JWT algorithm")));
    }

    fn hs_policy() -> AuthPolicy {
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_nbf = true;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp"]);
        AuthPolicy {
            name: "hs".into(),
            source: TokenSource::Bearer,
            keys: Keys::Single(DecodingKey::from_secret(b"s3cret")),
            validations: vec![(Algorithm::HS256, v)],
            required_claims: Vec::new(),
            forward: Vec::new(),
            verified: TokenCache::default(),
            scheme: Value::Null,
        }
    }

    /// Signs any header and claims, so tests can write what jsonwebtoken's encoder would not.
    fn forge(header: serde_json::Value, claims: serde_json::Value) -> String {
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let message = format!("{}.{}", b64(&header), b64(&claims));
        let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{signature}")
    }

    #[tokio::test]
    async fn critical_extensions_and_non_numeric_time_claims_are_refused() {
        let policy = hs_policy();
        let exp = 4_000_000_000u64;
        let ok = forge(json!({"alg": "HS256"}), json!({"sub": "u", "exp": exp}));
        assert!(policy.verify(&ok).await.is_ok());
        let crit = forge(
            json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            json!({"exp": exp}),
        );
        assert_eq!(
            policy.verify(&crit).await,
            Err(AuthError::CriticalExtension)
        );
        let nbf = forge(
            json!({"alg": "HS256"}),
            json!({"exp": exp, "nbf": "2999-01-01"}),
        );
        assert_eq!(
            policy.verify(&nbf).await,
            Err(AuthError::BadTimeClaim("nbf"))
        );
        let iat = forge(json!({"alg": "HS256"}), json!({"exp": exp, "iat": true}));
        assert_eq!(
            policy.verify(&iat).await,
            Err(AuthError::BadTimeClaim("iat"))
        );
        let future = forge(json!({"alg": "HS256"}), json!({"exp": exp, "nbf": exp - 1}));
        assert_eq!(policy.verify(&future).await, Err(AuthError::NotYetValid));
    }

    #[test]
    fn claims_are_forwarded_only_in_an_unambiguous_form() {
        let forward = |claim: &str| vec![(claim.to_string(), HeaderName::from_static("x-c"))];
        let claims = json!({"roles": ["a", "b"], "bad": ["guest,admin"], "nl": "a\r\nx: y",
                            "none": null, "big": "x".repeat(5000), "org": {"id": 1}});
        let value =
            |c: &str| forwardable(&claims, &forward(c)).map(|v| v.first().map(|(_, h)| h.clone()));
        assert_eq!(value("roles"), Ok(Some(HeaderValue::from_static("a,b"))));
        assert_eq!(
            value("org"),
            Ok(Some(HeaderValue::from_static("{\"id\":1}")))
        );
        assert_eq!(value("none"), Ok(None), "null sends no header");
        assert_eq!(value("missing"), Ok(None));
        for bad in ["bad", "nl", "big"] {
            assert_eq!(value(bad), Err(AuthError::BadClaim(bad.into())), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_verified_token_is_a_lookup_until_its_exp() {
        let policy = hs_policy();
        let exp = unix_now() + 600;
        let token = forge(json!({"alg": "HS256"}), json!({"sub": "u", "exp": exp}));
        let first = policy.verify(&token).await.unwrap();
        assert_eq!(policy.verified.len(), 1);
        let again = policy.verify(&token).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again), "served from the cache");
        assert!(policy.verified.get(&token, exp - 1, None).is_some());
        assert!(
            policy.verified.get(&token, exp, None).is_none(),
            "never at or past exp"
        );
        assert!(policy.verified.is_empty(), "the expired entry is dropped");
        let bad = forge(json!({"alg": "HS256"}), json!({"exp": "soon"}));
        assert!(policy.verify(&bad).await.is_err());
        assert!(policy.verified.is_empty(), "refused tokens are not cached");
    }

    #[test]
    fn an_entry_goes_when_its_key_leaves_the_fetched_set_and_the_cache_stays_bounded() {
        let cache = TokenCache::new(CACHE_SHARDS * 2);
        let claims = Arc::new(json!({"exp": 4_000_000_000u64}));
        cache.put("t1", claims.clone(), Some("k1"), 0);
        let with = HashMap::from([("k1".to_string(), DecodingKey::from_secret(b"x"))]);
        let without = HashMap::from([("k2".to_string(), DecodingKey::from_secret(b"x"))]);
        assert!(cache.get("t1", 1, Some(&with)).is_some());
        assert!(
            cache.get("t1", 1, Some(&without)).is_none(),
            "k1 left the set"
        );
        for i in 0..1000 {
            cache.put(&format!("token-{i}"), claims.clone(), None, 0);
        }
        assert!(cache.len() <= CACHE_SHARDS * 2, "{} entries", cache.len());
    }
}
