//! The compiled route table. Routes match in file order (the first full match wins); a byte
//! trie over exact paths and prefixes narrows the candidates so a lookup costs about the
//! path's length, not the number of routes.

pub mod normalize;

use normalize::{normalize, PathError};

use crate::upstream::Upstream;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use std::sync::Arc;
use std::time::Duration;

pub struct Route {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub action: Action,
    pub rewrite: PathRewrite,
    pub rate_limit: Option<Arc<crate::policy::ratelimit::RateLimit>>,
    pub auth: Option<Arc<crate::policy::auth::AuthPolicy>>,
    /// Claim conditions a valid token must meet (403 otherwise).
    pub require: Vec<crate::policy::auth::ClaimRule>,
    pub cors: Option<Arc<crate::policy::cors::CorsPolicy>>,
    pub validate: Option<Arc<crate::policy::validate::RequestValidation>>,
    /// Total time for the request, across retries.
    pub timeout: Option<Duration>,
    pub max_body: u64,
}

pub enum Action {
    Proxy(Arc<Upstream>),
    Respond(Arc<StaticResponse>),
}

pub struct StaticResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: bytes::Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

pub enum PathRewrite {
    None,
    /// Removes this prefix (the result always starts with `/`).
    Strip(String),
    /// Replaces the prefix `from` with `to`.
    Replace {
        from: String,
        to: String,
    },
}

impl PathRewrite {
    /// The path sent upstream for a normalized request path.
    pub fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::None => path.to_string(),
            PathRewrite::Strip(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                Some(rest) => format!("/{rest}"),
                None => path.to_string(),
            },
            PathRewrite::Replace { from, to } => match path.strip_prefix(from.as_str()) {
                Some(rest) => format!("{to}{rest}"),
                None => path.to_string(),
            },
        }
    }
}

pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, not the apex.
    Suffix(String),
}

impl HostMatch {
    fn matches(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

pub enum HeaderCond {
    Equals(HeaderValue),
    Present(bool),
}

pub struct HeaderMatch {
    pub name: HeaderName,
    pub cond: HeaderCond,
}

pub struct Matcher {
    pub path: PathMatch,
    /// None: any method. A list with GET also admits HEAD.
    pub methods: Option<Vec<Method>>,
    pub host: Option<HostMatch>,
    pub headers: Vec<HeaderMatch>,
}

impl Matcher {
    fn method_ok(&self, method: &Method) -> bool {
        match &self.methods {
            None => true,
            Some(list) => {
                list.contains(method) || (*method == Method::HEAD && list.contains(&Method::GET))
            }
        }
    }

    /// Everything but the method (the path's trie part is already known to match).
    fn rest_ok(&self, req: &RequestView) -> bool {
        if let PathMatch::Regex(re) = &self.path {
            if !re.is_match(req.path) {
                return false;
            }
        }
        if let Some(host) = &self.host {
            if !host.matches(req.host) {
                return false;
            }
        }
        self.headers.iter().all(|h| {
            let value = req.headers.get(&h.name);
            match &h.cond {
                HeaderCond::Equals(want) => value == Some(want),
                HeaderCond::Present(p) => value.is_some() == *p,
            }
        })
    }
}

/// What the router needs to know of a request; `path` is already normalized and `host`
/// lower-cased without its port.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

pub enum Match {
    /// Index into [`Router::routes`].
    Route(usize),
    /// Some route matched all but the method; these are the methods that would match.
    MethodNotAllowed(String),
    NotFound,
}

#[derive(Default)]
struct Node {
    edges: Vec<(u8, u32)>,
    prefix_routes: Vec<u32>,
    exact_routes: Vec<u32>,
}

pub struct Router {
    routes: Vec<Route>,
    nodes: Vec<Node>,
    /// Routes the trie cannot narrow (regex or no path matcher): always candidates.
    always: Vec<u32>,
}

impl Router {
    pub fn new(routes: Vec<Route>) -> Router {
        let mut router = Router {
            routes: Vec::new(),
            nodes: vec![Node::default()],
            always: Vec::new(),
        };
        for (i, route) in routes.iter().enumerate() {
            let i = i as u32;
            match &route.matcher.path {
                PathMatch::Exact(p) => {
                    let n = router.insert(p);
                    router.nodes[n].exact_routes.push(i);
                }
                PathMatch::Prefix(p) => {
                    let n = router.insert(p);
                    router.nodes[n].prefix_routes.push(i);
                }
                PathMatch::Regex(_) | PathMatch::Any => router.always.push(i),
            }
        }
        router.routes = routes;
        router
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    fn insert(&mut self, key: &str) -> usize {
        let mut node = 0;
        for &b in key.as_bytes() {
            node = match self.nodes[node].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.nodes[node].edges[i].1 as usize,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::default());
                    self.nodes[node].edges.insert(i, (b, child as u32));
                    child
                }
            };
        }
        node
    }

    /// Route indices whose path part matches, in file order.
    fn candidates(&self, path: &str) -> Vec<u32> {
        let mut out = self.always.clone();
        let mut node = &self.nodes[0];
        out.extend_from_slice(&node.prefix_routes);
        let mut complete = true;
        for &b in path.as_bytes() {
            match node.edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => {
                    node = &self.nodes[node.edges[i].1 as usize];
                    out.extend_from_slice(&node.prefix_routes);
                }
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        if complete {
            out.extend_from_slice(&node.exact_routes);
        }
        out.sort_unstable();
        out
    }

    /// Routes a raw request: normalizes the path, takes the host from `Host` (or the URI),
    /// and finds the route. Returns the match and the normalized path.
    pub fn route(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<(Match, String), PathError> {
        let path = normalize(uri.path())?;
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.host())
            .map(host_of);
        let view = RequestView {
            method,
            host: host.as_deref(),
            path: &path,
            headers,
        };
        Ok((self.find(&view), path))
    }

    pub fn find(&self, req: &RequestView) -> Match {
        let candidates = self.candidates(req.path);
        for &i in &candidates {
            let route = &self.routes[i as usize];
            if route.matcher.method_ok(req.method) && route.matcher.rest_ok(req) {
                return Match::Route(i as usize);
            }
        }
        self.method_not_allowed(&candidates, req)
    }

    fn method_not_allowed(&self, candidates: &[u32], req: &RequestView) -> Match {
        let mut allowed: Vec<&str> = Vec::new();
        for &i in candidates {
            let m = &self.routes[i as usize].matcher;
            if let (Some(methods), true) = (&m.methods, m.rest_ok(req)) {
                for method in methods {
                    if !allowed.contains(&method.as_str()) {
                        allowed.push(method.as_str());
                    }
                    if *method == Method::GET && !allowed.contains(&"HEAD") {
                        allowed.push("HEAD");
                    }
                }
            }
        }
        if allowed.is_empty() {
            Match::NotFound
        } else {
            Match::MethodNotAllowed(allowed.join(", "))
        }
    }
}

/// The request's host, lower-cased and without port.
pub fn host_of(raw: &str) -> String {
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, path: PathMatch, methods: Option<Vec<Method>>) -> Route {
        Route {
            name: name.into(),
            matcher: Matcher {
                path,
                methods,
                host: None,
                headers: Vec::new(),
            },
            action: Action::Respond(Arc::new(StaticResponse {
                status: 200,
                content_type: "text/plain",
                body: bytes::Bytes::new(),
                headers: Vec::new(),
            })),
            rewrite: PathRewrite::None,
            rate_limit: None,
            auth: None,
            require: Vec::new(),
            cors: None,
            validate: None,
            timeout: None,
            max_body: 0,
        }
    }

    fn find<'r>(router: &'r Router, method: Method, path: &str) -> Option<&'r str> {
        let headers = HeaderMap::new();
        let req = RequestView {
            method: &method,
            host: None,
            path,
            headers: &headers,
        };
        match router.find(&req) {
            Match::Route(i) => Some(&router.routes()[i].name),
            Match::MethodNotAllowed(allow) => panic!("405 {allow}"),
            Match::NotFound => None,
        }
    }

    #[test]
    fn first_match_in_file_order() {
        let router = Router::new(vec![
            route("exact", PathMatch::Exact("/users/me".into()), None),
            route(
                "get-users",
                PathMatch::Prefix("/users/".into()),
                Some(vec![Method::GET]),
            ),
            route(
                "regex",
                PathMatch::Regex(Regex::new("^/users/[0-9]+$").unwrap()),
                None,
            ),
            route("users", PathMatch::Prefix("/users".into()), None),
            route("all", PathMatch::Any, None),
        ]);
        assert_eq!(find(&router, Method::GET, "/users/me"), Some("exact"));
        assert_eq!(find(&router, Method::GET, "/users/42"), Some("get-users"));
        assert_eq!(find(&router, Method::HEAD, "/users/42"), Some("get-users"));
        assert_eq!(find(&router, Method::POST, "/users/42"), Some("regex"));
        assert_eq!(find(&router, Method::POST, "/users/x"), Some("users"));
        assert_eq!(find(&router, Method::POST, "/usersx"), Some("users"));
        assert_eq!(find(&router, Method::POST, "/other"), Some("all"));
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let router = Router::new(vec![route(
            "r",
            PathMatch::Prefix("/a".into()),
            Some(vec![Method::GET, Method::POST]),
        )]);
        let headers = HeaderMap::new();
        let req = RequestView {
            method: &Method::DELETE,
            host: None,
            path: "/a/b",
            headers: &headers,
        };
        assert!(matches!(router.find(&req), Match::MethodNotAllowed(a) if a == "GET, HEAD, POST"));
    }

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            PathRewrite::Strip("/api".into()).apply("/api/users"),
            "/users"
        );
        assert_eq!(
            PathRewrite::Strip("/api/".into()).apply("/api/users"),
            "/users"
        );
        assert_eq!(PathRewrite::Strip("/api".into()).apply("/api"), "/");
        let r = PathRewrite::Replace {
            from: "/v1/".into(),
            to: "/internal/v2/".into(),
        };
        assert_eq!(r.apply("/v1/users"), "/internal/v2/users");
    }
}
