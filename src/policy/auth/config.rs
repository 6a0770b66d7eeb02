//! The `auth:` fragment as the file gives it: its `type` (JWT when left out) and that
//! kind's fields; a route's `require`.

use super::*;

/// An auth policy as the file gives it. `type` picks the kind; without it, a policy is JWT
/// (the only kind before there were others).
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schemars(transform = jwt_type_optional)]
pub enum RawAuth {
    /// Signed tokens (JWT), verified with pinned algorithms.
    Jwt(RawJwt),
    /// Keys listed per consumer in a keys file (stored hashed).
    ApiKey(api_key::RawApiKey),
    /// HTTP Basic against an htpasswd file (bcrypt or SHA-512-crypt).
    Basic(basic::RawBasic),
    /// Asks an auth service about each request (Traefik's forwardAuth, nginx auth_request).
    Forward(forward::RawForward),
    /// Opaque tokens checked at an OAuth 2.0 introspection endpoint (RFC 7662).
    Introspection(introspection::RawIntrospection),
    /// A browser login with an OpenID Connect provider, kept in a sealed cookie.
    Oidc(oidc::RawOidc),
}

impl<'de> Deserialize<'de> for RawAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Tagged {
            Jwt(RawJwt),
            ApiKey(api_key::RawApiKey),
            Basic(basic::RawBasic),
            Forward(forward::RawForward),
            Introspection(introspection::RawIntrospection),
            Oidc(oidc::RawOidc),
        }
        let mut value = serde_yaml::Value::deserialize(d)?;
        if let serde_yaml::Value::Mapping(m) = &mut value {
            if !m.contains_key("type") {
                m.insert("type".into(), "jwt".into());
            }
        }
        let tagged = Tagged::deserialize(value).map_err(serde::de::Error::custom)?;
        Ok(match tagged {
            Tagged::Jwt(a) => RawAuth::Jwt(a),
            Tagged::ApiKey(a) => RawAuth::ApiKey(a),
            Tagged::Basic(a) => RawAuth::Basic(a),
            Tagged::Forward(a) => RawAuth::Forward(a),
            Tagged::Introspection(a) => RawAuth::Introspection(a),
            Tagged::Oidc(a) => RawAuth::Oidc(a),
        })
    }
}

/// In the schema, a JWT policy may leave `type` out, as the file may; `type` is described.
fn jwt_type_optional(schema: &mut schemars::Schema) {
    let Some(variants) = schema.get_mut("oneOf").and_then(|v| v.as_array_mut()) else {
        return;
    };
    for variant in variants {
        if let Some(tag) = variant.pointer_mut("/properties/type") {
            tag["description"] =
                "The policy's kind: jwt (the default), api_key, basic, forward, introspection or oidc."
                    .into();
        }
        let is_jwt = variant
            .pointer("/properties/type/const")
            .is_some_and(|c| c == "jwt");
        if let (true, Some(required)) = (is_jwt, variant.get_mut("required")) {
            if let Some(list) = required.as_array_mut() {
                list.retain(|r| r != "type");
            }
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
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

pub(super) fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_token_source() -> String {
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
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Default)]
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
    pub(super) fn find<'a>(&self, headers: &'a HeaderMap) -> Result<Option<&'a str>, SentTwice> {
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

/// The token was sent more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentTwice;
