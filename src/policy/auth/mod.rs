//! JWT authentication and claim-based authorization. Each policy pins its algorithms; keys
//! come from PEM files, a JWKS file or URL (chosen by `kid`), or an HMAC secret from an env
//! var or file. The token itself is never logged.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
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

mod compile;
mod config;
mod jwks;
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

#[cfg(test)]
mod tests;
