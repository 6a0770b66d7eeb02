//! The compiled route table. Routes match in file order (the first full match wins); a byte
//! trie over exact paths and prefixes narrows the candidates so a lookup costs about the
//! path's length, not the number of routes. Each trie node already holds its candidate
//! list in file order, so a lookup allocates nothing. The router knows matchers only; the
//! snapshot pairs match `i` with route `i`.

pub mod normalize;
pub mod template;

use normalize::{normalize, PathError};
use template::{Fill, PathTemplate};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use std::borrow::Cow;

pub enum PathRewrite {
    None,
    /// Removes this prefix (the result always starts with `/`).
    Strip(String),
    /// Replaces the prefix `from` with `to`.
    Replace {
        from: String,
        to: String,
    },
    /// The whole path, from the values a `path_template` bound.
    Template(Fill),
}

impl PathRewrite {
    /// The path sent upstream for a normalized request path.
    /// `bound`: the values of the route's path template, if it has one.
    pub fn apply<'a>(&self, path: &'a str, bound: &[(String, String)]) -> Cow<'a, str> {
        match self {
            PathRewrite::Template(fill) => Cow::Owned(fill.render(bound)),
            PathRewrite::None => Cow::Borrowed(path),
            PathRewrite::Strip(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
                Some(rest) => Cow::Owned(format!("/{rest}")),
                None => Cow::Borrowed(path),
            },
            PathRewrite::Replace { from, to } => match path.strip_prefix(from.as_str()) {
                Some(rest) => Cow::Owned(format!("{to}{rest}")),
                None => Cow::Borrowed(path),
            },
        }
    }
}

pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Template(PathTemplate),
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

/// A query parameter's condition: the parameter's value (percent-decoded, `+` as a space)
/// equals a text or matches a regex — every value, when it is repeated, since upstreams
/// differ on which one they read — or the parameter is there or not.
pub enum QueryCond {
    Equals(String),
    Regex(Regex),
    Present(bool),
}

pub struct QueryMatch {
    pub name: String,
    pub cond: QueryCond,
}

impl QueryMatch {
    fn matches(&self, query: Option<&str>) -> bool {
        let query = query.unwrap_or_default();
        let mut values = query_values(query, &self.name).peekable();
        let present = values.peek().is_some();
        match &self.cond {
            QueryCond::Present(p) => present == *p,
            QueryCond::Equals(want) => present && values.all(|v| v == *want),
            QueryCond::Regex(re) => present && values.all(|v| re.is_match(&v)),
        }
    }
}

/// Every value of parameter `name` in a query string, decoded (`+` as a space).
pub fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = Cow<'q, str>> {
    let decode = |s: &'q str| -> Cow<'q, str> {
        if !s.contains(['%', '+']) {
            return Cow::Borrowed(s);
        }
        let spaced = s.replace('+', " ");
        Cow::Owned(
            percent_encoding::percent_decode_str(&spaced)
                .decode_utf8_lossy()
                .into_owned(),
        )
    };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(move |pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key) == name).then(|| decode(value))
        })
}

pub struct Matcher {
    pub path: PathMatch,
    /// The path matches regardless of ASCII case (checked whole, not through the trie).
    pub ignore_case: bool,
    /// None: any method. A list with GET also admits HEAD.
    pub methods: Option<Vec<Method>>,
    pub host: Option<HostMatch>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// Cookies that must have these values (name, value).
    pub cookies: Vec<(String, String)>,
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

    /// Whether every request this matcher's `other` takes, this one takes too
    /// (conservative: a regex never covers another matcher).
    pub fn covers(&self, other: &Matcher) -> bool {
        if other.ignore_case && !self.ignore_case {
            return false;
        }
        let path = match (&self.path, &other.path) {
            (PathMatch::Any, _) => true,
            (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Prefix(a), PathMatch::Exact(b) | PathMatch::Prefix(b)) => {
                b.starts_with(a.as_str())
            }
            (PathMatch::Prefix(a), PathMatch::Template(b)) => b.prefix().starts_with(a.as_str()),
            (PathMatch::Template(a), PathMatch::Exact(b)) => a.matches(b, self.ignore_case),
            (PathMatch::Template(a), PathMatch::Template(b)) => a.covers(b),
            _ => false,
        };
        let methods = match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(theirs)) => theirs.iter().all(|m| self.method_ok(m)),
        };
        let host = match (&self.host, &other.host) {
            (None, _) => true,
            (Some(HostMatch::Exact(a)), Some(HostMatch::Exact(b))) => a == b,
            (Some(HostMatch::Suffix(a)), Some(HostMatch::Exact(b))) => {
                b.len() > a.len() && b.ends_with(a.as_str())
            }
            (Some(HostMatch::Suffix(a)), Some(HostMatch::Suffix(b))) => b.ends_with(a.as_str()),
            _ => false,
        };
        let headers = self.headers.iter().all(|mine| {
            other.headers.iter().any(|theirs| {
                theirs.name == mine.name
                    && match (&mine.cond, &theirs.cond) {
                        (HeaderCond::Equals(a), HeaderCond::Equals(b)) => a == b,
                        (HeaderCond::Present(true), HeaderCond::Equals(_)) => true,
                        (HeaderCond::Present(a), HeaderCond::Present(b)) => a == b,
                        _ => false,
                    }
            })
        });
        // A regex never covers another condition (conservative), nor is covered.
        let query = self.query.iter().all(|mine| {
            other.query.iter().any(|theirs| {
                theirs.name == mine.name
                    && match (&mine.cond, &theirs.cond) {
                        (QueryCond::Equals(a), QueryCond::Equals(b)) => a == b,
                        (QueryCond::Present(true), QueryCond::Equals(_) | QueryCond::Regex(_)) => {
                            true
                        }
                        (QueryCond::Present(a), QueryCond::Present(b)) => a == b,
                        _ => false,
                    }
            })
        });
        let cookies = self.cookies.iter().all(|c| other.cookies.contains(c));
        path && methods && host && headers && query && cookies
    }

    /// Out of line, so a matcher without cookies keeps a small `rest_ok`.
    #[inline(never)]
    fn cookies_ok(&self, headers: &http::HeaderMap) -> bool {
        let has = |(name, value): &(String, String)| cookie(headers, name) == Some(value);
        self.cookies.iter().all(has)
    }

    /// Everything but the method (the path's trie part is already known to match).
    fn rest_ok(&self, req: &RequestView) -> bool {
        let path_ok = match &self.path {
            PathMatch::Regex(re) => re.is_match(req.path),
            PathMatch::Template(t) => t.matches(req.path, self.ignore_case),
            PathMatch::Exact(p) if self.ignore_case => p.eq_ignore_ascii_case(req.path),
            PathMatch::Prefix(p) if self.ignore_case => req
                .path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            // The trie already matched exact paths and prefixes.
            _ => true,
        };
        if !path_ok {
            return false;
        }
        if let Some(host) = &self.host {
            if !host.matches(req.host) {
                return false;
            }
        }
        if !self.query.iter().all(|q| q.matches(req.query)) {
            return false;
        }
        if !self.cookies.is_empty() && !self.cookies_ok(req.headers) {
            return false;
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
    pub query: Option<&'a str>,
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
    parent: u32,
    prefix_routes: Vec<u32>,
    exact_routes: Vec<u32>,
    /// Candidates for a path that starts with this node's key: index into `lists`.
    prefix_list: u32,
    /// Candidates for a path equal to this node's key, when it has exact routes.
    exact_list: Option<u32>,
}

pub struct Router {
    matchers: Vec<Matcher>,
    nodes: Vec<Node>,
    /// Candidate lists in file order, shared by the nodes that have the same candidates.
    lists: Vec<Vec<u32>>,
}

/// Merges two ascending lists.
fn merged(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().chain(b).copied().collect();
    out.sort_unstable();
    out
}

impl Router {
    pub fn new(matchers: Vec<Matcher>) -> Router {
        let mut router = Router {
            matchers: Vec::new(),
            nodes: vec![Node::default()],
            lists: Vec::new(),
        };
        // Routes the trie cannot narrow (regex or no path matcher) are always candidates.
        let mut always = Vec::new();
        for (i, m) in matchers.iter().enumerate() {
            let i = i as u32;
            if m.ignore_case {
                always.push(i);
                continue;
            }
            match &m.path {
                PathMatch::Exact(p) => {
                    let n = router.insert(p);
                    router.nodes[n].exact_routes.push(i);
                }
                PathMatch::Prefix(p) => {
                    let n = router.insert(p);
                    router.nodes[n].prefix_routes.push(i);
                }
                // A template is indexed by its literal prefix and checked whole.
                PathMatch::Template(t) => {
                    let n = router.insert(&t.prefix());
                    router.nodes[n].prefix_routes.push(i);
                }
                PathMatch::Regex(_) | PathMatch::Any => always.push(i),
            }
        }
        router.lists.push(always);
        // Parents come before children, so one pass in index order sees every parent done.
        for n in 0..router.nodes.len() {
            let inherited = match n {
                0 => 0,
                _ => router.nodes[router.nodes[n].parent as usize].prefix_list,
            };
            let node = &router.nodes[n];
            let prefix_list = if node.prefix_routes.is_empty() {
                inherited
            } else {
                let list = merged(&router.lists[inherited as usize], &node.prefix_routes);
                router.lists.push(list);
                (router.lists.len() - 1) as u32
            };
            let exact_list = (!node.exact_routes.is_empty()).then(|| {
                let list = merged(&router.lists[prefix_list as usize], &node.exact_routes);
                router.lists.push(list);
                (router.lists.len() - 1) as u32
            });
            router.nodes[n].prefix_list = prefix_list;
            router.nodes[n].exact_list = exact_list;
        }
        router.matchers = matchers;
        router
    }

    pub fn matchers(&self) -> &[Matcher] {
        &self.matchers
    }

    /// The values route `index`'s path template binds in `path` (none without a template).
    // Inlined: every request asks, and most routes bind nothing.
    #[inline]
    pub fn bind(&self, index: usize, path: &str) -> Vec<(String, String)> {
        match &self.matchers[index].path {
            PathMatch::Template(t) => t
                .bind(path, self.matchers[index].ignore_case)
                .unwrap_or_default()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            // A regex with groups binds each by number (`1`) and by name.
            PathMatch::Regex(re) if re.captures_len() > 1 => regex_bindings(re, path),
            _ => Vec::new(),
        }
    }

    fn insert(&mut self, key: &str) -> usize {
        let mut node = 0;
        for &b in key.as_bytes() {
            node = match self.nodes[node].edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => self.nodes[node].edges[i].1 as usize,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes.push(Node {
                        parent: node as u32,
                        ..Node::default()
                    });
                    self.nodes[node].edges.insert(i, (b, child as u32));
                    child
                }
            };
        }
        node
    }

    /// Route indices whose path part matches, in file order.
    fn candidates(&self, path: &str) -> &[u32] {
        let mut node = &self.nodes[0];
        for &b in path.as_bytes() {
            match node.edges.binary_search_by_key(&b, |e| e.0) {
                Ok(i) => node = &self.nodes[node.edges[i].1 as usize],
                Err(_) => return &self.lists[node.prefix_list as usize],
            }
        }
        &self.lists[node.exact_list.unwrap_or(node.prefix_list) as usize]
    }

    /// Routes a raw request: normalizes the path, takes the host from `Host` (or the URI),
    /// and finds the route. Returns the match and the normalized path.
    pub fn route<'a>(
        &self,
        method: &Method,
        uri: &'a http::Uri,
        headers: &'a HeaderMap,
    ) -> Result<(Match, Cow<'a, str>), PathError> {
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
            query: uri.query(),
            headers,
        };
        Ok((self.find(&view), path))
    }

    pub fn find(&self, req: &RequestView) -> Match {
        let candidates = self.candidates(req.path);
        for &i in candidates {
            let m = &self.matchers[i as usize];
            if m.method_ok(req.method) && m.rest_ok(req) {
                return Match::Route(i as usize);
            }
        }
        self.method_not_allowed(candidates, req)
    }

    fn method_not_allowed(&self, candidates: &[u32], req: &RequestView) -> Match {
        let mut allowed: Vec<&str> = Vec::new();
        for &i in candidates {
            let m = &self.matchers[i as usize];
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

    /// The first earlier route that takes every request route `j` would take, if any: the
    /// shadowing lint, on the same candidate lists requests are routed by.
    pub fn shadowed_by(&self, j: usize) -> Option<usize> {
        let later = &self.matchers[j];
        let key = match &later.path {
            PathMatch::Template(t) => Some(t.prefix()),
            PathMatch::Exact(p) | PathMatch::Prefix(p) => Some(p.clone()),
            PathMatch::Any | PathMatch::Regex(_) => None,
        };
        let candidates = match key {
            Some(p) => {
                let mut node = &self.nodes[0];
                for &b in p.as_bytes() {
                    let i = node.edges.binary_search_by_key(&b, |e| e.0).ok()?;
                    node = &self.nodes[node.edges[i].1 as usize];
                }
                let list = match later.path {
                    PathMatch::Exact(_) => node.exact_list.unwrap_or(node.prefix_list),
                    _ => node.prefix_list,
                };
                &self.lists[list as usize]
            }
            None => &self.lists[0],
        };
        candidates
            .iter()
            .map(|&i| i as usize)
            .take_while(|&i| i < j)
            .find(|&i| self.matchers[i].covers(later))
    }
}

/// The request's host, lower-cased and without port (borrowed when already lower-case).
pub fn host_of(raw: &str) -> Cow<'_, str> {
    let host = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A cookie's value among the request's `Cookie` headers (the first of that name).
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The groups of `re` that took part in matching `path`, by number and by name.
fn regex_bindings(re: &Regex, path: &str) -> Vec<(String, String)> {
    let Some(caps) = re.captures(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, name) in re.capture_names().enumerate().skip(1) {
        let Some(value) = caps.get(i) else { continue };
        out.push((i.to_string(), value.as_str().to_string()));
        if let Some(name) = name {
            out.push((name.to_string(), value.as_str().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded_and_a_repeat_must_agree() {
        let values = |q, n| query_values(q, n).collect::<Vec<_>>();
        assert_eq!(values("a=1&debug=1&debug=2", "debug"), ["1", "2"]);
        assert_eq!(values("q=a+b%21", "q"), ["a b!"]);
        assert_eq!(values("flag&x=1", "flag"), [""]);
        assert!(values("debugx=1", "debug").is_empty());
        let m = QueryMatch {
            name: "debug".into(),
            cond: QueryCond::Equals("1".into()),
        };
        assert!(m.matches(Some("debug=1&debug=1")));
        assert!(
            !m.matches(Some("debug=1&debug=0")),
            "a repeat that disagrees"
        );
        assert!(!m.matches(None));
    }

    const NAMES: [&str; 5] = ["exact", "get-users", "regex", "users", "all"];

    fn route(_name: &str, path: PathMatch, methods: Option<Vec<Method>>) -> Matcher {
        Matcher {
            path,
            ignore_case: false,
            methods,
            host: None,
            headers: Vec::new(),
            query: Vec::new(),
            cookies: Vec::new(),
        }
    }

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; beta=always".parse().unwrap());
        headers.append(http::header::COOKIE, "beta=never; c=3".parse().unwrap());
        assert_eq!(cookie(&headers, "beta"), Some("always"));
        assert_eq!(cookie(&headers, "c"), Some("3"));
        assert_eq!(cookie(&headers, "bet"), None);
    }

    fn find(router: &Router, method: Method, path: &str) -> Option<&'static str> {
        let headers = HeaderMap::new();
        let req = RequestView {
            method: &method,
            host: None,
            path,
            query: None,
            headers: &headers,
        };
        match router.find(&req) {
            Match::Route(i) => Some(NAMES[i]),
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
            query: None,
            headers: &headers,
        };
        assert!(matches!(router.find(&req), Match::MethodNotAllowed(a) if a == "GET, HEAD, POST"));
    }

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(host_of("API.Example.com:8080"), "api.example.com");
        assert!(matches!(
            host_of("api.example.com:80"),
            Cow::Borrowed("api.example.com")
        ));
        assert_eq!(host_of("[::1]:80"), "[::1]");
    }

    #[test]
    fn shadowing_uses_the_compiled_matchers() {
        let router = Router::new(vec![
            route("a", PathMatch::Prefix("/api/".into()), None),
            route(
                "b",
                PathMatch::Exact("/api/users".into()),
                Some(vec![Method::GET]),
            ),
            route(
                "c",
                PathMatch::Prefix("/other".into()),
                Some(vec![Method::GET]),
            ),
            route("d", PathMatch::Prefix("/other/x".into()), None),
            route("e", PathMatch::Any, None),
            route("f", PathMatch::Exact("/late".into()), None),
        ]);
        assert_eq!(
            router.shadowed_by(1),
            Some(0),
            "prefix covers the exact path"
        );
        assert_eq!(router.shadowed_by(2), None);
        assert_eq!(
            router.shadowed_by(3),
            None,
            "GET only does not cover any method"
        );
        assert_eq!(
            router.shadowed_by(5),
            Some(4),
            "a catch-all covers what follows"
        );
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            PathRewrite::Strip("/api".into()).apply("/api/users", &[]),
            "/users"
        );
        assert_eq!(
            PathRewrite::Strip("/api/".into()).apply("/api/users", &[]),
            "/users"
        );
        assert_eq!(PathRewrite::Strip("/api".into()).apply("/api", &[]), "/");
        let r = PathRewrite::Replace {
            from: "/v1/".into(),
            to: "/internal/v2/".into(),
        };
        assert_eq!(r.apply("/v1/users", &[]), "/internal/v2/users");
    }
}
