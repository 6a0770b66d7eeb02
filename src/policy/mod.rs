//! Per-route policies. Each lives in one module with its config fragment, its compile step,
//! its hooks and its tests; a route holds its policies compiled, in the order they run.
//!
//! Each policy implements [`Unit`]: its hooks (which default to doing nothing) and what it
//! shows in every view of a config (which have no default, so a new policy cannot forget
//! one): `/routes` and `portico route`, the OpenAPI document and the identity headers whose
//! client copies are removed. `Policy` is the closed list of them; [`Policy::unit`] is the
//! one `match` over it.

pub mod auth;
pub mod cache;
pub mod compression;
pub mod cors;
pub mod headers;
pub mod ip_access;
pub mod quota;
pub mod ratelimit;
pub mod validate;

use crate::diag::{Diags, Inputs};
use crate::errors::GatewayError;
use crate::redis_link::RedisLink;
use crate::state::StateCx;
use crate::telemetry::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;

/// Every policy Portico has; registering one is a variant here and its arm in [`Policy::unit`].
pub enum Policy {
    Cors(Arc<cors::CorsPolicy>),
    IpAccess(Arc<ip_access::IpAccess>),
    RateLimit(Arc<ratelimit::RateLimit>),
    Quota(Arc<quota::Quota>),
    Auth(Arc<auth::RouteAuth>),
    Validate(Arc<validate::RequestValidation>),
    Headers(Arc<headers::HeaderRules>),
    Cache(Arc<cache::CachePolicy>),
    Compression(Arc<compression::Compression>),
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
    /// Notes the codings the client accepts (its response hooks run after the cache's, so a
    /// cached answer is stored plain and compressed per client).
    Compress,
    /// The response cache (looked up once every check passed).
    Cache,
    /// Header edits (run last on the way out, after every other policy's headers).
    Headers,
}

/// What every policy's compile step gets, whatever it needs of it: where to report (at the
/// key's line and column), the state kept across reloads, the files it reads, the shared
/// Redis link and the metrics registry. Every policy compiles with one signature,
/// `compile(cx, name_or_route, fragment) -> Option<Policy>`.
pub struct CompileCx<'c, 'd> {
    pub d: &'c mut Diags<'d>,
    pub state: &'c mut StateCx<'d>,
    pub inputs: &'c mut Inputs,
    pub redis: Option<Arc<RedisLink>>,
    pub metrics: &'c Metrics,
}

/// A compile context for unit tests: an empty config `g.yaml`, fresh state.
#[cfg(test)]
pub fn with_test_cx<T>(f: impl FnOnce(&mut CompileCx) -> T) -> (T, Vec<crate::diag::Diagnostic>) {
    let path = std::path::Path::new("g.yaml");
    let places = crate::diag::Places::one(path, Default::default());
    let mut d = Diags::new(&places);
    let stores = crate::state::Stores::default();
    let mut state = stores.begin();
    let mut inputs = Inputs::new(path);
    let metrics = Metrics::new();
    let mut cx = CompileCx {
        d: &mut d,
        state: &mut state,
        inputs: &mut inputs,
        redis: None,
        metrics: &metrics,
    };
    let out = f(&mut cx);
    (out, d.items)
}

/// What a policy sees of a request besides its head.
pub struct RequestInfo<'a> {
    pub client_ip: Option<IpAddr>,
    /// The connection's peer is one of `trusted_proxies`.
    pub trusted_peer: bool,
    pub request_id: &'a str,
    pub route: &'a str,
    /// The client connected over TLS.
    pub tls: bool,
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
    /// The identity headers made of the verified claims (`forward_claims`), or copied
    /// from a forward-auth answer.
    pub forward: Vec<(http::HeaderName, HeaderValue)>,
    /// An API-key consumer's own rate limit was counted: it replaces the route's limit
    /// keyed by `consumer`.
    pub consumer_limited: bool,
    /// A refreshed OIDC session, sent back with the answer.
    pub set_cookie: Option<HeaderValue>,
    /// The cache's path and what it did.
    pub cache: cache::State,
    /// The coding the client accepts, then the encoder of the response body.
    pub compression: compression::State,
}

/// What a policy adds to the OpenAPI operation of a route that applies it.
#[derive(Default)]
pub struct ApiDoc {
    /// The security scheme a client must satisfy: its name and OpenAPI object.
    pub security: Option<(String, Value)>,
    /// Statuses the gateway may answer with itself (each documented with the `Error` shape).
    pub errors: Vec<&'static str>,
    /// Parameters the request must carry.
    pub parameters: Vec<Value>,
    /// A sentence for the operation's description.
    pub note: Option<String>,
}

impl ApiDoc {
    /// A policy that only adds the statuses it refuses with.
    pub fn refusing(errors: &[&'static str]) -> ApiDoc {
        ApiDoc {
            errors: errors.to_vec(),
            ..ApiDoc::default()
        }
    }
}

/// One policy, self-contained. Hooks default to doing nothing; the views have no default.
#[async_trait]
pub trait Unit: Send + Sync {
    /// The config key that applies this policy on a route.
    fn kind(&self) -> &'static str;
    /// The named policy's name; None for a route's inline one.
    fn name(&self) -> Option<&str>;
    fn stage(&self) -> Stage;

    /// What `/routes` and `portico route` show of it on a route (besides kind and name).
    fn details(&self) -> Value;
    /// What it adds to the OpenAPI operation of `method` on a route that applies it.
    fn api_doc(&self, method: &str) -> ApiDoc;
    /// Request headers it makes for the upstream from what it verified: every client's
    /// own copies are removed, on every route.
    fn identity_headers(&self) -> Vec<HeaderName>;

    /// Checks the request; an error is the answer the client gets.
    async fn on_request(
        &self,
        _session: &mut Session,
        _info: &RequestInfo<'_>,
        _state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Edits the request sent upstream.
    fn on_upstream_request(
        &self,
        _req: &mut RequestHeader,
        _info: &RequestInfo<'_>,
        _state: &PolicyState,
    ) -> Result<()> {
        Ok(())
    }

    /// Sees a proxied answer (the upstream's, or the cache's) before [`Unit::on_response`];
    /// may prepare work on its body.
    fn on_proxied_response(
        &self,
        _resp: &mut ResponseHeader,
        _state: &mut PolicyState,
    ) -> Result<()> {
        Ok(())
    }

    /// Edits any answer: the upstream's, or one the gateway writes itself.
    fn on_response(
        &self,
        _resp: &mut ResponseHeader,
        _info: &RequestInfo<'_>,
        _state: &PolicyState,
    ) -> Result<()> {
        Ok(())
    }

    /// Edits a proxied answer's body, chunk by chunk (`end` on the last).
    fn on_response_body(
        &self,
        _body: &mut Option<Bytes>,
        _end: bool,
        _state: &mut PolicyState,
    ) -> Result<()> {
        Ok(())
    }
}

impl Policy {
    /// The policy itself: the one place that lists every kind.
    pub fn unit(&self) -> &dyn Unit {
        match self {
            Policy::Cors(p) => &**p,
            Policy::IpAccess(p) => &**p,
            Policy::RateLimit(p) => &**p,
            Policy::Quota(p) => &**p,
            Policy::Auth(p) => &**p,
            Policy::Validate(p) => &**p,
            Policy::Headers(p) => &**p,
            Policy::Cache(p) => &**p,
            Policy::Compression(p) => &**p,
        }
    }

    pub fn stage(&self) -> Stage {
        self.unit().stage()
    }

    pub fn kind(&self) -> &'static str {
        self.unit().kind()
    }

    pub fn name(&self) -> Option<&str> {
        self.unit().name()
    }

    /// `kind:name` (or `kind`), as `portico route` and `/routes` show the chain.
    pub fn label(&self) -> String {
        match self.name() {
            Some(name) => format!("{}:{name}", self.kind()),
            None => self.kind().to_string(),
        }
    }

    /// Kind, name and details, as `/routes` shows each policy.
    pub fn view(&self) -> Value {
        let mut view = json!({"kind": self.kind(), "name": self.name()});
        if let (Value::Object(out), Value::Object(details)) = (&mut view, self.unit().details()) {
            out.extend(details);
        }
        view
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
            Stage::Compress,
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
        assert_eq!(stages[8], Stage::Headers);
    }
}
