//! Token verification (algorithm pinned, `crit` refused, claims checked), claim lookup and
//! the identity headers made of verified claims.

use super::*;

/// Longest claim value forwarded as a header.
pub(super) const MAX_FORWARDED: usize = 4096;

/// The headers `forward` makes of verified claims. A claim with no unambiguous header form
/// fails the token: a list item holding a comma, control bytes, a value over
/// [`MAX_FORWARDED`]. A missing or `null` claim sends no header.
pub(super) fn forwardable(
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

pub(super) fn map_jwt_error(e: &jsonwebtoken::errors::Error) -> AuthError {
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
        let have = match (claim(claims, &self.claim), self.claim.as_str()) {
            // OAuth scopes are one space-separated string (RFC 6749 §3.3, RFC 7662).
            (Some(Value::String(s)), "scope" | "scp") => {
                s.split_whitespace().map(str::to_string).collect()
            }
            (v, _) => v.map(scalars).unwrap_or_default(),
        };
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
pub(super) fn scalars(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

pub(super) fn scalar(v: &Value) -> Option<String> {
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

pub struct Jwt {
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

/// Whether the token's header has a `crit` member (parsed as JSON, so an escaped key
/// counts too).
pub(super) fn has_crit(token: &str) -> bool {
    #[derive(Clone, serde::Deserialize)]
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
pub(super) fn raw_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    json.get("alg")?.as_str().map(str::to_string)
}

impl Jwt {
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

impl std::fmt::Display for ClaimRule {
    /// `role in [admin, ops]`, or `amr has all of [pwd, mfa]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.all { "has all of" } else { "in" };
        write!(f, "{} {how} [{}]", self.claim, self.values.join(", "))
    }
}
