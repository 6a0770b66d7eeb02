//! `redirect` routes: the gateway answers 301/302/303/307/308 with a `Location` built from
//! the request, each part replaced as configured (scheme, host, port, the whole path or
//! the route's matched prefix); the query is kept. `Location` is always absolute, and a
//! request host that is not a valid host[:port] is refused rather than echoed, so a
//! redirect never points anywhere a client could smuggle in.

use crate::diag::Diags;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `redirect: { prefix: /docs/v2/, status: 301 }` on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default = "default_status")]
    pub status: u16,
    /// `http` or `https` (default: the request's).
    pub scheme: Option<String>,
    /// The host (default: the request's).
    pub host: Option<String>,
    /// The port (default: the request's when host and scheme stay, else the scheme's).
    pub port: Option<u16>,
    /// The whole new path.
    pub path: Option<String>,
    /// Replaces the prefix the route matched (`path_prefix`), keeping the rest of the path.
    pub prefix: Option<String>,
}

fn default_status() -> u16 {
    302
}

const STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

pub struct Redirect {
    pub status: u16,
    scheme: Option<&'static str>,
    host: Option<String>,
    port: Option<u16>,
    path: NewPath,
}

enum NewPath {
    Same,
    Whole(String),
    /// The route's matched prefix, and what replaces it.
    Prefix(String, String),
}

/// What [`Redirect::location`] needs of the request.
pub struct From<'a> {
    pub tls: bool,
    /// The Host header (or HTTP/2 authority).
    pub authority: Option<&'a str>,
    /// The path as the router matched it (normalized).
    pub path: &'a str,
    pub query: Option<&'a str>,
}

impl Redirect {
    /// The `Location`, or None when the request carries no usable host and none is set.
    pub fn location(&self, req: &From<'_>) -> Option<String> {
        let request_scheme = if req.tls { "https" } else { "http" };
        let scheme = self.scheme.unwrap_or(request_scheme);
        let authority = req
            .authority
            .and_then(|a| a.parse::<http::uri::Authority>().ok());
        let host = match &self.host {
            Some(h) => h.as_str(),
            None => authority.as_ref()?.host(),
        };
        // The request's port carries over only to the same place by the same scheme.
        let same_place = self.host.is_none() && scheme == request_scheme;
        let port = self
            .port
            .or_else(|| authority.as_ref()?.port_u16().filter(|_| same_place));
        let default_port = if scheme == "https" { 443 } else { 80 };
        let mut out = format!("{scheme}://{host}");
        if let Some(port) = port.filter(|p| *p != default_port) {
            out.push(':');
            out.push_str(itoa::Buffer::new().format(port));
        }
        match &self.path {
            NewPath::Same => out.push_str(req.path),
            NewPath::Whole(p) => out.push_str(p),
            // The path is the normalized one the route matched (maybe in any case).
            NewPath::Prefix(matched, new) => match req.path.get(..matched.len()) {
                Some(head) if head.eq_ignore_ascii_case(matched) => {
                    out.push_str(new);
                    out.push_str(&req.path[matched.len()..]);
                }
                _ => out.push_str(req.path),
            },
        }
        if let Some(q) = req.query {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }

    /// One line for `portico route`.
    pub fn explain(&self) -> String {
        let part =
            |v: Option<&str>, what: &str| v.map_or(format!("the request's {what}"), str::to_string);
        let path = match &self.path {
            NewPath::Same => "the request's path".to_string(),
            NewPath::Whole(p) => p.clone(),
            NewPath::Prefix(from, to) => format!("{from}… → {to}…"),
        };
        format!(
            "redirects: {} to {}://{}{} {path}, query kept",
            self.status,
            part(self.scheme, "scheme"),
            part(self.host.as_deref(), "host"),
            self.port.map_or(String::new(), |p| format!(":{p}")),
        )
    }
}

/// Compiles a route's `redirect`; `prefix` is the route's `path_prefix`, if it has one.
pub fn compile(
    d: &mut Diags,
    at: &str,
    raw: &RawRedirect,
    prefix: Option<&str>,
) -> Option<Redirect> {
    let at = format!("{at}.redirect");
    let errors = d.errors();
    if !STATUSES.contains(&raw.status) {
        d.error(
            &format!("{at}.status"),
            format!("{} is not a redirect status", raw.status),
            Some("use 301, 302, 303, 307 or 308 (307 and 308 keep the method and body)".into()),
        );
    }
    let scheme = match raw.scheme.as_deref() {
        None => None,
        Some("http") => Some("http"),
        Some("https") => Some("https"),
        Some(other) => {
            d.error(
                &format!("{at}.scheme"),
                format!("`{other}` is not a scheme a redirect can name"),
                Some("use http or https".into()),
            );
            None
        }
    };
    if let Some(host) = &raw.host {
        if host
            .parse::<http::uri::Authority>()
            .map_or(true, |a| a.port().is_some() || a.as_str().contains('@'))
        {
            d.error(
                &format!("{at}.host"),
                format!("`{host}` is not a host name"),
                Some("write the name alone (api.example.com); the port goes in `port`".into()),
            );
        }
    }
    if raw.port == Some(0) {
        d.error(
            &format!("{at}.port"),
            "port 0 cannot be redirected to",
            Some("give the port (1-65535), or leave it out".to_string()),
        );
    }
    let path = match (&raw.path, &raw.prefix, prefix) {
        (Some(_), Some(_), _) => {
            d.error(
                &at,
                "a redirect has `path` or `prefix`, not both",
                Some("`path` replaces the whole path, `prefix` only the matched prefix".into()),
            );
            NewPath::Same
        }
        (Some(p), None, _) => {
            check_path(d, &format!("{at}.path"), p).map_or(NewPath::Same, NewPath::Whole)
        }
        (None, Some(p), Some(matched)) => check_path(d, &format!("{at}.prefix"), p)
            .map_or(NewPath::Same, |p| NewPath::Prefix(matched.to_string(), p)),
        (None, Some(_), None) => {
            d.error(
                &format!("{at}.prefix"),
                "`prefix` replaces the prefix the route matches, and this route has no `path_prefix`",
                Some("match with `path_prefix`, or give the whole new `path`".into()),
            );
            NewPath::Same
        }
        (None, None, _) => NewPath::Same,
    };
    (d.errors() == errors).then(|| Redirect {
        status: raw.status,
        scheme,
        host: raw.host.clone(),
        port: raw.port,
        path,
    })
}

/// A path for `Location`: absolute, and nothing a browser would read as another host.
fn check_path(d: &mut Diags, at: &str, path: &str) -> Option<String> {
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains(['\\', '?', '#', ' '])
        && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !ok {
        d.error(
            at,
            format!("`{path}` is not a path to redirect to"),
            Some("start it with one `/`; the query is the request's".into()),
        );
    }
    ok.then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str, prefix: Option<&str>) -> Redirect {
        let raw: RawRedirect = serde_yaml::from_str(yaml).unwrap();
        let places = crate::diag::Places::one("g.yaml".as_ref(), Default::default());
        let mut d = Diags::new(&places);
        compile(&mut d, "r", &raw, prefix).expect("compiles")
    }

    fn req<'a>(authority: &'a str, path: &'a str, query: Option<&'a str>) -> From<'a> {
        From {
            tls: false,
            authority: Some(authority),
            path,
            query,
        }
    }

    #[test]
    fn locations_keep_the_query_and_replace_what_is_set() {
        let r = redirect("{ prefix: /docs/v2/, status: 301 }", Some("/docs/v1/"));
        let at = req("example.com:8080", "/docs/v1/intro", Some("a=1&b=2"));
        assert_eq!(
            r.location(&at).unwrap(),
            "http://example.com:8080/docs/v2/intro?a=1&b=2"
        );
        let r = redirect("{ scheme: https, host: new.example.com }", None);
        assert_eq!(
            r.location(&at).unwrap(),
            "https://new.example.com/docs/v1/intro?a=1&b=2"
        );
        let r = redirect("{ scheme: https, port: 8443, path: /moved }", None);
        assert_eq!(
            r.location(&at).unwrap(),
            "https://example.com:8443/moved?a=1&b=2"
        );
        assert!(
            r.location(&req("evil.com/x@y", "/", None)).is_none(),
            "an unusable host is not echoed"
        );
    }
}
