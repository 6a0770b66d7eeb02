//! Per-route policies. Each lives in one module with its config fragment, its compile step,
//! its hooks and its tests; a route holds its policies compiled, in the order they run.
//!
//! `Policy` is a closed enum and every phase is an exhaustive `match`, so a new policy says
//! what it does in each phase: `on_request` (may refuse), `on_upstream_request` (edits the
//! request sent upstream) and `on_response` (edits every answer, the upstream's and the
//! gateway's own).

pub mod auth;
pub mod cache;
pub mod cors;
pub mod headers;
pub mod ip_access;
pub mod ratelimit;
pub mod validate;

use crate::errors::GatewayError;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use std::net::IpAddr;
use std::sync::Arc;

/// Says what the cache did with a request.
pub const X_CACHE: &str = "x-cache";

pub enum Policy {
    Cors(Arc<cors::CorsPolicy>),
    IpAccess(Arc<ip_access::IpAccess>),
    RateLimit(Arc<ratelimit::RateLimit>),
    Auth(Arc<auth::RouteAuth>),
    Validate(Arc<validate::RequestValidation>),
    Headers(Arc<headers::HeaderRules>),
    Cache(Arc<cache::CachePolicy>),
}

/// When a policy runs: cheap refusals first, so a flood of bad tokens is limited by IP
/// before any signature is verified; limits keyed by a claim run once the token is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Notes the Origin (preflights are answered before the chain runs).
    Cors,
    /// Client network checks.
    Network,
    /// Rate limits keyed by client IP, route or header.
    Limit,
    /// Token verification and claim rules.
    Authenticate,
    /// Rate limits keyed by a claim.
    LimitByIdentity,
    /// Required headers, query parameters and the body schema (reads the body).
    Validate,
    /// The response cache (looked up once every check passed).
    Cache,
    /// Header edits (run last on the way out, after every other policy's headers).
    Headers,
}

/// What a policy sees of a request besides its head.
pub struct RequestInfo<'a> {
    pub client_ip: Option<IpAddr>,
    pub request_id: &'a str,
    pub route: &'a str,
}

/// What policies learned about a request, read by later phases and the access log.
#[derive(Default)]
pub struct PolicyState {
    /// The verified token's claims.
    pub claims: Option<Arc<serde_json::Value>>,
    /// The rate-limit decision, reported in `RateLimit-*` headers.
    pub rate: Option<ratelimit::Decision>,
    /// The request's Origin, when the route's CORS policy allows it.
    pub cors_origin: Option<HeaderValue>,
    /// The identity headers made of the verified claims (`forward_claims`).
    pub forward: Vec<(http::HeaderName, HeaderValue)>,
    /// What the cache did (`X-Cache`), once the response is known.
    pub cache: Option<&'static str>,
}

impl Policy {
    pub fn stage(&self) -> Stage {
        match self {
            Policy::Cors(_) => Stage::Cors,
            Policy::IpAccess(_) => Stage::Network,
            Policy::RateLimit(p) if p.by_identity() => Stage::LimitByIdentity,
            Policy::RateLimit(_) => Stage::Limit,
            Policy::Auth(_) => Stage::Authenticate,
            Policy::Validate(_) => Stage::Validate,
            Policy::Headers(_) => Stage::Headers,
            Policy::Cache(_) => Stage::Cache,
        }
    }

    /// The config key that applies this policy on a route.
    pub fn kind(&self) -> &'static str {
        match self {
            Policy::Cors(_) => "cors",
            Policy::IpAccess(_) => "ip_access",
            Policy::RateLimit(_) => "rate_limit",
            Policy::Auth(_) => "auth",
            Policy::Validate(_) => "validate",
            Policy::Headers(_) => "headers",
            Policy::Cache(_) => "cache",
        }
    }

    /// The named policy's name; None for a route's inline one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Policy::Cors(p) => Some(&p.name),
            Policy::IpAccess(p) => Some(&p.name),
            Policy::RateLimit(p) => Some(&p.name),
            Policy::Auth(p) => Some(&p.policy.name),
            Policy::Cache(p) => Some(&p.name),
            Policy::Validate(_) | Policy::Headers(_) => None,
        }
    }

    /// `kind:name` (or `kind`), as `portico route` and `/routes` show the chain.
    pub fn label(&self) -> String {
        match self.name() {
            Some(name) => format!("{}:{name}", self.kind()),
            None => self.kind().to_string(),
        }
    }

    /// Checks the request; an error is the answer the client gets.
    pub async fn on_request(
        &self,
        session: &mut Session,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        match self {
            Policy::Cors(p) => {
                p.on_request(session.req_header(), state);
                Ok(())
            }
            Policy::IpAccess(p) => p.check(info.client_ip),
            Policy::RateLimit(p) => p.on_request(session.req_header(), info, state).await,
            Policy::Auth(p) => p.on_request(session.req_header(), state).await,
            Policy::Validate(p) => p.on_request(session).await,
            Policy::Headers(_) | Policy::Cache(_) => Ok(()),
        }
    }

    /// Edits the request sent upstream.
    pub fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> Result<()> {
        match self {
            Policy::Auth(p) => p.forward_claims(req, state),
            Policy::Headers(p) => p.on_upstream_request(req, info, state),
            Policy::Cors(_)
            | Policy::IpAccess(_)
            | Policy::RateLimit(_)
            | Policy::Validate(_)
            | Policy::Cache(_) => Ok(()),
        }
    }

    /// Edits any answer: the upstream's, or one the gateway writes itself.
    pub fn on_response(
        &self,
        resp: &mut ResponseHeader,
        info: &RequestInfo<'_>,
        state: &PolicyState,
    ) -> Result<()> {
        match self {
            Policy::Cors(p) => p.on_response(resp, state),
            Policy::RateLimit(_) => ratelimit::on_response(resp, state),
            Policy::Headers(p) => p.on_response(resp, info, state),
            Policy::Cache(_) => match state.cache {
                Some(result) => resp.insert_header(X_CACHE, result),
                None => Ok(()),
            },
            Policy::IpAccess(_) | Policy::Auth(_) | Policy::Validate(_) => Ok(()),
        }
    }
}

/// Puts a route's policies in running order (stable: file order within a stage).
pub fn order(policies: &mut [Policy]) {
    policies.sort_by_key(Policy::stage);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_refusals_run_before_signature_checks() {
        let mut stages = [
            Stage::Headers,
            Stage::Cache,
            Stage::Validate,
            Stage::LimitByIdentity,
            Stage::Authenticate,
            Stage::Limit,
            Stage::Network,
            Stage::Cors,
        ];
        stages.sort();
        assert_eq!(stages[0], Stage::Cors);
        assert!(Stage::Limit < Stage::Authenticate);
        assert!(Stage::Authenticate < Stage::LimitByIdentity);
        assert_eq!(stages[7], Stage::Headers);
    }
}
