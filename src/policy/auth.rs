//! JWT authentication and claim-based authorization. Each policy pins its algorithms; keys
//! come from PEM files, a JWKS file or URL (chosen by `kid`), or an HMAC secret from an env
//! var or file. The token itself is never logged.

use arc_swap::ArcSwap;
use base64::Engine;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

    fn find<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        match self {
            TokenSource::Bearer => headers
                .get(http::header::AUTHORIZATION)?
                .to_str()
                .ok()?
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim()),
            TokenSource::Header(name) => headers.get(name)?.to_str().ok().map(str::trim),
            TokenSource::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v),
        }
        .filter(|t| !t.is_empty())
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
        }
    }
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
                .map_err(|e| e.to_string())?;
            let text = resp
                .error_for_status()
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            parse_jwks(&text)
        }
        .await;
        match result {
            Ok(keys) => self.keys.store(Arc::new(keys)),
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the cached keys")
            }
        }
    }

    /// Refreshes when the refresh interval has passed (called by the background refresher).
    pub async fn refresh_if_due(&self) {
        if self.due(self.refresh) {
            self.fetch().await;
        }
    }

    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        if let Some(key) = pick_key(&self.keys.load(), kid) {
            return Ok(key.clone());
        }
        if self.due(MIN_REFETCH) {
            self.fetch().await;
        }
        let keys = self.keys.load();
        if keys.is_empty() {
            return Err(AuthError::KeysUnavailable);
        }
        pick_key(&keys, kid).cloned().ok_or(AuthError::UnknownKey)
    }
}

/// Refreshes every remote JWKS of the active snapshot when its interval has passed.
pub struct JwksRefresher {
    pub holder: crate::snapshot::SnapshotHolder,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let snapshot = self.holder.load();
            for policy in snapshot.auth.values() {
                if let Keys::Remote(remote) = &policy.keys {
                    remote.refresh_if_due().await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
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
    pub fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        self.source.find(headers)
    }

    /// Verifies a token and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Value, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| match raw_alg(token) {
            Some(_) => AuthError::AlgorithmNotAllowed,
            None => AuthError::Malformed,
        })?;
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let kid = header.kid.as_deref();
        let key = match &self.keys {
            Keys::Single(key) => key.clone(),
            Keys::Set(keys) => pick_key(keys, kid).cloned().ok_or(AuthError::UnknownKey)?,
            Keys::Remote(remote) => remote.key(kid).await?,
        };
        let data = jsonwebtoken::decode::<Value>(token, &key, validation)
            .map_err(|e| map_jwt_error(&e))?;
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| claim(&data.claims, c).is_none())
        {
            return Err(AuthError::MissingClaim(missing.clone()));
        }
        Ok(data.claims)
    }
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
        assert_eq!(TokenSource::Bearer.find(&h), Some("abc"));
        assert_eq!(
            TokenSource::parse("cookie:session").unwrap().find(&h),
            Some("tok")
        );
        assert_eq!(TokenSource::parse("header:x-token").unwrap().find(&h), None);
    }
}
