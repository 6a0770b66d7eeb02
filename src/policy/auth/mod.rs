//! Authentication and claim-based authorization. A policy is one of several kinds, each in
//! its module: JWT (algorithms pinned; keys from PEM files, a JWKS file or URL chosen by
//! `kid`, or an HMAC secret), API keys with consumers, HTTP Basic, forward auth and token
//! introspection. Each yields the request's claims (forward auth: headers to copy), which
//! `require`, identity headers, claim-keyed limits and cache keys then use alike. No
//! credential is ever logged.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::bounded::Bounded;
use crate::diag::{Diags, Inputs};
use crate::errors::{Code, Counted, GatewayError, Refusal};
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

pub mod api_key;
pub mod basic;
mod compile;
mod config;
pub mod forward;
pub mod introspection;
mod jwks;
pub mod oidc;
mod token_cache;
mod verify;

pub use compile::*;
pub use config::*;
pub use jwks::*;
pub use token_cache::*;
pub use verify::*;

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
    pub fn code(&self) -> Code {
        match self {
            AuthError::Missing => Code::TokenMissing,
            AuthError::Malformed => Code::TokenMalformed,
            AuthError::AlgorithmNotAllowed => Code::TokenAlgorithmNotAllowed,
            AuthError::UnknownKey => Code::TokenUnknownKey,
            AuthError::BadSignature => Code::TokenBadSignature,
            AuthError::Expired => Code::TokenExpired,
            AuthError::NotYetValid => Code::TokenNotYetValid,
            AuthError::WrongIssuer => Code::TokenWrongIssuer,
            AuthError::WrongAudience => Code::TokenWrongAudience,
            AuthError::MissingClaim(_) => Code::TokenMissingClaim,
            AuthError::KeysUnavailable => Code::TokenKeysUnavailable,
            AuthError::CriticalExtension => Code::TokenUnsupportedCrit,
            AuthError::BadTimeClaim(_) => Code::TokenBadTimeClaim,
            AuthError::BadClaim(_) => Code::TokenBadClaim,
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
    Refusal::new(403, Code::InsufficientClaims, message)
        .counted(Counted::AuthFailure)
        .into()
}

/// A compiled auth policy: the one list of kinds.
pub enum AuthPolicy {
    Jwt(Jwt),
    ApiKey(api_key::ApiKeys),
    Basic(basic::Basic),
    Forward(forward::ForwardAuth),
    Introspection(introspection::Introspection),
    // Boxed: its sealing key (an AES key schedule) is larger than every other kind.
    Oidc(Box<oidc::Oidc>),
}

impl AuthPolicy {
    pub fn name(&self) -> &Arc<str> {
        match self {
            AuthPolicy::Jwt(p) => &p.name,
            AuthPolicy::ApiKey(p) => &p.name,
            AuthPolicy::Basic(p) => &p.name,
            AuthPolicy::Forward(p) => &p.name,
            AuthPolicy::Introspection(p) => &p.name,
            AuthPolicy::Oidc(p) => &p.name,
        }
    }

    /// The kind, as the file's `type` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthPolicy::Jwt(_) => "jwt",
            AuthPolicy::ApiKey(_) => "api_key",
            AuthPolicy::Basic(_) => "basic",
            AuthPolicy::Forward(_) => "forward",
            AuthPolicy::Introspection(_) => "introspection",
            AuthPolicy::Oidc(_) => "oidc",
        }
    }

    /// (claim, upstream header) pairs made of the verified claims.
    fn forward(&self) -> &[(String, HeaderName)] {
        match self {
            AuthPolicy::Jwt(p) => &p.forward,
            AuthPolicy::ApiKey(p) => &p.forward,
            AuthPolicy::Basic(p) => &p.forward,
            AuthPolicy::Forward(_) => &[],
            AuthPolicy::Introspection(p) => &p.forward,
            AuthPolicy::Oidc(p) => &p.forward,
        }
    }

    /// Query parameters it reads credentials from (kept from the upstream and the log).
    pub fn query_params(&self) -> Vec<String> {
        match self {
            AuthPolicy::ApiKey(p) => p.query_params(),
            _ => Vec::new(),
        }
    }

    /// Its OpenAPI security scheme.
    pub fn scheme(&self) -> Value {
        match self {
            AuthPolicy::Jwt(p) => p.scheme.clone(),
            AuthPolicy::ApiKey(p) => p.scheme(),
            AuthPolicy::Basic(p) => p.scheme(),
            AuthPolicy::Forward(p) => p.scheme(),
            AuthPolicy::Introspection(p) => p.scheme(),
            AuthPolicy::Oidc(p) => p.scheme(),
        }
    }

    /// What `/routes` and `portico route` show of the kind (never a secret).
    fn kind_details(&self) -> Value {
        match self {
            AuthPolicy::Jwt(p) => {
                let algorithms: Vec<String> = p
                    .validations
                    .iter()
                    .map(|(a, _)| format!("{a:?}"))
                    .collect();
                serde_json::json!({ "algorithms": algorithms })
            }
            AuthPolicy::ApiKey(p) => p.details(),
            AuthPolicy::Basic(p) => p.details(),
            AuthPolicy::Forward(p) => p.details(),
            AuthPolicy::Introspection(p) => p.details(),
            AuthPolicy::Oidc(p) => p.details(),
        }
    }

    /// Headers it makes for the upstream: every client's own copies are removed.
    pub fn identity_headers(&self) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = self.forward().iter().map(|(_, h)| h.clone()).collect();
        if let AuthPolicy::Forward(f) = self {
            names.extend(f.copy.iter().cloned());
        }
        names
    }

    /// Who the request is: its claims (None for forward auth, whose service decided and
    /// whose headers are noted in `state.forward`).
    async fn identify(
        &self,
        session: &mut pingora::proxy::Session,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<Option<Arc<Value>>, GatewayError> {
        let req = session.req_header();
        match self {
            AuthPolicy::Jwt(p) => p.identify(req).await.map(Some),
            AuthPolicy::ApiKey(p) => p.identify(session, info, state).await.map(Some),
            AuthPolicy::Basic(p) => p.identify(req, info).await.map(Some),
            AuthPolicy::Forward(p) => p.check(req, info, state).await.map(|()| None),
            AuthPolicy::Introspection(p) => p.identify(req).await.map(Some),
            AuthPolicy::Oidc(p) => p.identify(req, info, state).await.map(Some),
        }
    }
}

impl Jwt {
    /// The verified token's claims.
    async fn identify(&self, req: &RequestHeader) -> Result<Arc<Value>, GatewayError> {
        let Ok(token) = self.token(&req.headers) else {
            return Err(crate::errors::AMBIGUOUS_HEADER.into());
        };
        let Some(token) = token else {
            return Err(AuthError::Missing.into());
        };
        self.verify(token).await.map_err(|e| {
            tracing::debug!(policy = %self.name, reason = e.code().as_str(), "token refused");
            e.into()
        })
    }
}

/// An auth policy as a route applies it: the policy's check plus the route's claim rules.
pub struct RouteAuth {
    pub policy: Arc<AuthPolicy>,
    /// Claim conditions the identity must meet (403 otherwise).
    pub require: Vec<ClaimRule>,
}

impl RouteAuth {
    /// Identifies the request and checks the claim rules; the claims are kept for later
    /// phases, the identity headers noted for the upstream request.
    pub async fn authenticate(
        &self,
        session: &mut pingora::proxy::Session,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        let Some(claims) = self.policy.identify(session, info, state).await? else {
            return Ok(());
        };
        // Kept before the rules are checked: a 403's user is known (the access log and the
        // dashboard name it).
        state.claims = Some(claims.clone());
        if !self.require.iter().all(|rule| rule.holds(&claims)) {
            return Err(insufficient());
        }
        state.forward = forwardable(&claims, self.policy.forward())?;
        Ok(())
    }

    /// Sends the identity headers upstream (the client's copies were removed).
    pub fn forward_claims(
        &self,
        req: &mut RequestHeader,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        for (name, value) in &state.forward {
            req.append_header(name.clone(), value.clone())?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Unit for RouteAuth {
    fn kind(&self) -> &'static str {
        "auth"
    }

    fn name(&self) -> Option<&str> {
        Some(self.policy.name())
    }

    fn stage(&self) -> Stage {
        Stage::Authenticate
    }

    fn details(&self) -> Value {
        let rules: Vec<String> = self.require.iter().map(ToString::to_string).collect();
        let forward: Vec<String> = self
            .policy
            .identity_headers()
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut view = serde_json::json!({"type": self.policy.kind(), "require": rules.join(" and "), "forward": forward});
        if let (Value::Object(out), Value::Object(more)) = (&mut view, self.policy.kind_details()) {
            out.extend(more);
        }
        view
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        let rules: Vec<String> = self.require.iter().map(ToString::to_string).collect();
        let mut errors = vec!["401", "403"];
        if matches!(
            *self.policy,
            AuthPolicy::Forward(_) | AuthPolicy::Introspection(_) | AuthPolicy::Oidc(_)
        ) {
            errors.push("503");
        }
        if matches!(*self.policy, AuthPolicy::Basic(_) | AuthPolicy::ApiKey(_)) {
            errors.push("429");
        }
        ApiDoc {
            security: Some((self.policy.name().to_string(), self.policy.scheme())),
            errors,
            parameters: Vec::new(),
            note: (!rules.is_empty())
                .then(|| format!("The caller must also satisfy: {}.", rules.join(" and "))),
        }
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        self.policy.identity_headers()
    }

    async fn on_request(
        &self,
        session: &mut pingora::proxy::Session,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        self.authenticate(session, info, state).await
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        _info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        self.forward_claims(req, state)
    }

    /// A consumer's own limit and quota report `RateLimit-*` like a route's; a refreshed
    /// OIDC session goes back as a new cookie.
    fn on_response(
        &self,
        resp: &mut pingora::http::ResponseHeader,
        _info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        match *self.policy {
            AuthPolicy::ApiKey(_) => super::ratelimit::report(resp, state),
            AuthPolicy::Oidc(_) => match &state.set_cookie {
                Some(cookie) => resp
                    .append_header(http::header::SET_COOKIE, cookie.clone())
                    .map(|_| ()),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
