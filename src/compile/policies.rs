//! The named policies (`auth:`, `rate_limits:`, `quotas:`, `cors:`, `ip_access:`,
//! `caches:`, `compression:`) compiled once, and the one place that turns a route's policy keys into
//! its ordered policy chain.

use crate::config::model::RawRoute;
use crate::config::RawConfig;
use crate::diag::{lookup, Diags};
use crate::policy::auth::{self, AuthPolicy, Keys, RemoteJwks, RouteAuth};
use crate::policy::cache::{self, CachePolicy};
use crate::policy::compression::{self, Compression};
use crate::policy::cors::{self, CorsPolicy};
use crate::policy::ip_access::{self, IpAccess};
use crate::policy::quota::{self, Quota};
use crate::policy::ratelimit::{self, RateLimit};
use crate::policy::{self, headers, validate, CompileCx, Policy};
use http::HeaderName;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The named policies, compiled; routes refer to them by name.
pub(super) struct Named {
    rate_limits: BTreeMap<String, Arc<RateLimit>>,
    quotas: BTreeMap<String, Arc<Quota>>,
    auth: BTreeMap<String, Arc<AuthPolicy>>,
    cors: BTreeMap<String, Arc<CorsPolicy>>,
    ip_access: BTreeMap<String, Arc<IpAccess>>,
    pub(super) caches: BTreeMap<String, Arc<CachePolicy>>,
    compression: BTreeMap<String, Arc<Compression>>,
    /// Names as written (a defined name that failed to compile is no unknown name).
    defined: BTreeMap<&'static str, Vec<String>>,
}

/// Compiles each entry of a named map, keeping those that compiled.
fn each<R, T>(
    cx: &mut CompileCx,
    map: &BTreeMap<String, R>,
    compile: impl Fn(&mut CompileCx, &str, &R) -> Option<T>,
) -> BTreeMap<String, Arc<T>> {
    map.iter()
        .filter_map(|(name, raw)| Some((name.clone(), Arc::new(compile(cx, name, raw)?))))
        .collect()
}

impl Named {
    pub(super) fn compile(cx: &mut CompileCx, raw: &RawConfig) -> Named {
        let names = |keys: Vec<&String>| keys.into_iter().cloned().collect();
        let defined = BTreeMap::from([
            ("rate limit", names(raw.rate_limits.keys().collect())),
            ("quota", names(raw.quotas.keys().collect())),
            ("auth policy", names(raw.auth.keys().collect())),
            ("CORS policy", names(raw.cors.keys().collect())),
            ("ip_access policy", names(raw.ip_access.keys().collect())),
            ("cache", names(raw.caches.keys().collect())),
            ("compression", names(raw.compression.keys().collect())),
        ]);
        let rate_limits = each(cx, &raw.rate_limits, ratelimit::compile);
        let quotas = each(cx, &raw.quotas, quota::compile);
        // API-key consumers name their own limit and quota: resolved once those compiled.
        let auth = raw
            .auth
            .iter()
            .filter_map(|(name, a)| {
                let mut policy = auth::compile(cx, name, a)?;
                if let AuthPolicy::ApiKey(keys) = &mut policy {
                    keys.link(&rate_limits, &quotas, cx.d);
                }
                Some((name.clone(), Arc::new(policy)))
            })
            .collect();
        Named {
            rate_limits,
            quotas,
            auth,
            cors: each(cx, &raw.cors, cors::compile),
            ip_access: each(cx, &raw.ip_access, ip_access::compile),
            caches: each(cx, &raw.caches, cache::compile),
            compression: each(cx, &raw.compression, compression::compile),
            defined,
        }
    }

    fn find<T>(
        &self,
        d: &mut Diags,
        at: &str,
        kind: &'static str,
        name: Option<&String>,
        compiled: &BTreeMap<String, Arc<T>>,
    ) -> Result<Option<Arc<T>>, ()> {
        let Some(name) = name else { return Ok(None) };
        let defined: Vec<&String> = self.defined[kind].iter().collect();
        lookup(d, at, kind, name, compiled, &defined)
            .map(Some)
            .ok_or(())
    }

    /// The policies route `r` applies, in running order; None when one failed.
    pub(super) fn for_route(
        &self,
        cx: &mut CompileCx,
        at: &str,
        r: &RawRoute,
    ) -> Option<Vec<Policy>> {
        // Inline policies first; the named ones only report through `d`.
        let validate = r.validate.as_ref().map(|v| validate::compile(cx, at, v));
        let headers = r.headers.as_ref().map(|h| headers::compile(cx, at, h));
        let d = &mut *cx.d;
        let key = |k: &str| format!("{at}.{k}");
        let cors = self.find(d, &key("cors"), "CORS policy", r.cors.as_ref(), &self.cors);
        let ip = self.find(
            d,
            &key("ip_access"),
            "ip_access policy",
            r.ip_access.as_ref(),
            &self.ip_access,
        );
        let limit = self.find(
            d,
            &key("rate_limit"),
            "rate limit",
            r.rate_limit.as_ref(),
            &self.rate_limits,
        );
        let quota = self.find(d, &key("quota"), "quota", r.quota.as_ref(), &self.quotas);
        let auth = self.find(d, &key("auth"), "auth policy", r.auth.as_ref(), &self.auth);
        let route_auth = auth::compile_route(
            d,
            at,
            auth.clone().ok().flatten(),
            r.auth.is_some(),
            r.require.as_ref(),
        );
        let cache = self.find(d, &key("cache"), "cache", r.cache.as_ref(), &self.caches);
        if let Ok(Some(c)) = &cache {
            check_cache_route(d, &key("cache"), c, r);
        }
        let compress = self.find(
            d,
            &key("compression"),
            "compression",
            r.compression.as_ref(),
            &self.compression,
        );
        let mut policies: Vec<Policy> = Vec::new();
        policies.extend(cors.ok()?.map(Policy::Cors));
        policies.extend(ip.ok()?.map(Policy::IpAccess));
        policies.extend(limit.ok()?.map(Policy::RateLimit));
        policies.extend(quota.ok()?.map(Policy::Quota));
        auth.ok()?;
        policies.extend(route_auth.map(|a| Policy::Auth(Arc::new(a))));
        policies.extend(transpose(validate)?.map(|v| Policy::Validate(Arc::new(v))));
        policies.extend(transpose(headers)?.map(|h| Policy::Headers(Arc::new(h))));
        policies.extend(cache.ok()?.map(Policy::Cache));
        policies.extend(compress.ok()?.map(Policy::Compression));
        policy::order(&mut policies);
        Some(policies)
    }

    /// Every named policy, as a route would apply it (an auth policy without `require`).
    fn all(&self) -> Vec<Policy> {
        let named = |p: &Arc<AuthPolicy>| RouteAuth {
            policy: p.clone(),
            require: Vec::new(),
        };
        let mut all: Vec<Policy> = Vec::new();
        all.extend(self.cors.values().cloned().map(Policy::Cors));
        all.extend(self.ip_access.values().cloned().map(Policy::IpAccess));
        all.extend(self.rate_limits.values().cloned().map(Policy::RateLimit));
        all.extend(self.quotas.values().cloned().map(Policy::Quota));
        all.extend(self.auth.values().map(|a| Policy::Auth(Arc::new(named(a)))));
        all.extend(self.caches.values().cloned().map(Policy::Cache));
        all.extend(self.compression.values().cloned().map(Policy::Compression));
        all
    }

    /// Every header some policy (named, or inline on a route) makes from what it verified:
    /// a client's own copy is removed from every request.
    pub(super) fn identity_headers<'a>(
        &self,
        routes: impl Iterator<Item = &'a Policy>,
    ) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = routes.flat_map(|p| p.unit().identity_headers()).collect();
        for policy in self.all() {
            names.extend(policy.unit().identity_headers());
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        names
    }

    /// Every query parameter an auth policy reads credentials from.
    pub(super) fn query_secrets(&self) -> Vec<String> {
        let mut params: Vec<String> = self.auth.values().flat_map(|a| a.query_params()).collect();
        params.sort();
        params.dedup();
        params
    }

    pub(super) fn remote_jwks(&self) -> Vec<Arc<RemoteJwks>> {
        self.auth
            .values()
            .filter_map(|a| match &**a {
                AuthPolicy::Jwt(j) => match &j.keys {
                    Keys::Remote(r) => Some(r.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

/// A cache serves proxied routes only, and per-user entries need the identity.
fn check_cache_route(d: &mut Diags, at: &str, cache: &CachePolicy, r: &RawRoute) {
    if r.upstream.is_none() {
        d.error(
            at,
            "`cache` applies to routes with an `upstream`",
            Some("remove `cache` from this route".into()),
        );
    }
    if cache.keyed_by_identity() && r.auth.is_none() {
        d.error(
            at,
            format!(
                "cache `{}` keys entries by a claim, but this route has no `auth`",
                cache.name
            ),
            Some("add `auth: NAME` to the route, or use a cache without `key`".into()),
        );
    }
}

/// An inline policy that failed to compile is None; an absent one Some(None).
fn transpose<T>(compiled: Option<Option<T>>) -> Option<Option<T>> {
    match compiled {
        None => Some(None),
        Some(found) => found.map(Some),
    }
}
