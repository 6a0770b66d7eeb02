//! Compiling `routes`: matchers, actions, rewrites, and the policies each route applies.

use super::is_name;
use super::policies::Named;
use crate::aggregate;
use crate::config::model::{
    HeaderCond as RawCond, QueryCondText, RawBackend, RawMatch, RawRespond, RawRoute,
};
use crate::config::RawConfig;
use crate::diag::{lookup, parse_methods, Diags};
use crate::policy::CompileCx;
use crate::router::normalize::normalize;
use crate::router::template::{Fill, PathTemplate};
use crate::router::{
    HeaderCond, HeaderMatch, HostMatch, Matcher, PathMatch, PathRewrite, QueryCond, QueryMatch,
};
use crate::snapshot::{Action, Backend, Backends, Route, StaticResponse};
use crate::telemetry::{Metrics, RouteMetrics};
use crate::upstream::weighted::MAX_WEIGHT;
use crate::upstream::Upstream;
use http::{HeaderName, HeaderValue};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// How long an upgraded connection may be silent when the route does not say.
const DEFAULT_UPGRADE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A compiled route with its matcher and its index in the file's `routes`.
pub(super) struct Compiled {
    pub at: usize,
    pub matcher: Matcher,
    pub route: Route,
}

pub(super) fn compile_routes(
    cx: &mut CompileCx,
    named: &Named,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    raw: &RawConfig,
) -> Vec<Compiled> {
    let metrics = cx.metrics;
    let default_max_body = raw.server.max_body.0;
    let raw_routes = &raw.routes;
    let mut names = std::collections::HashMap::new();
    let mut routes = Vec::new();
    for (i, r) in raw_routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !is_name(&r.name) {
            cx.d.error(
                &format!("{at}.name"),
                format!("route name `{}` is not allowed", r.name),
                Some("use letters, digits, `-` and `_`; names label metrics and logs".into()),
            );
        }
        if let Some(first) = names.insert(r.name.as_str(), i) {
            names.insert(r.name.as_str(), first);
            let place = cx.d.place(&format!("routes[{first}].name"));
            cx.d.error(
                &format!("{at}.name"),
                format!("duplicate route name `{}`", r.name),
                Some(format!(
                    "the first is at {place}; route names are global across a config's files, so rename one"
                )),
            );
        }
        let matcher = compile_matcher(cx.d, &format!("{at}.match"), &r.matcher);
        // The names the route's template binds, for the rewrite and aggregate calls.
        let template = r.matcher.path_template.as_deref().map(PathTemplate::parse);
        let groups = r
            .matcher
            .path_regex
            .as_deref()
            .map_or_else(Vec::new, regex_groups);
        let names: HashSet<&str> = match &template {
            Some(Ok(t)) => t.names().collect(),
            _ => groups.iter().map(String::as_str).collect(),
        };
        let action = compile_action(cx.d, &at, r, &names, upstreams, raw, metrics);
        let rewrite = compile_rewrite(cx.d, &at, r, &names);
        let policies = named.for_route(cx, &at, r);
        let retry = match &r.retry {
            Some(_) if r.upstream.is_none() && r.backends.is_none() => {
                cx.d.error(
                    &format!("{at}.retry"),
                    "`retry` is for routes that proxy (`upstream` or `backends`)",
                    Some("remove it; aggregate calls retry by their upstream's `retries`".into()),
                );
                None
            }
            Some(raw) => crate::retry::compile(cx.d, cx.state, &at, &r.name, raw),
            None => None,
        };
        let retry_ok = r.retry.is_none() || retry.is_some();
        let sticky = match &r.sticky {
            Some(_) if r.backends.is_none() => {
                cx.d.error(
                    &format!("{at}.sticky"),
                    "`sticky` keeps clients on one of a route's `backends`, and this route has none",
                    Some("split the route with `backends`, or remove `sticky`".into()),
                );
                None
            }
            Some(raw) => crate::sticky::compile(cx.d, &at, raw, r.auth.is_some()),
            None => None,
        };
        let sticky_ok = r.sticky.is_none() || sticky.is_some();
        let mirror = compile_mirror(cx, &at, r, upstreams, raw);
        let mirror_ok = r.mirror.is_none() || mirror.is_some();
        if r.upgrade_idle_timeout.is_some_and(|t| t.is_zero()) {
            cx.d.error(
                &format!("{at}.upgrade_idle_timeout"),
                "upgrade_idle_timeout must be longer than 0",
                Some("give a duration such as 60s, or leave it out for the default (60s)".into()),
            );
        }
        if r.timeout.is_some_and(|t| t.is_zero()) {
            cx.d.error(
                &format!("{at}.timeout"),
                "the route timeout must be longer than 0",
                Some("give a duration such as 5s, or leave it out for no route deadline".into()),
            );
        }
        if let (Some(matcher), Some(action), Some(rewrite), Some(policies), true) = (
            matcher,
            action,
            rewrite,
            policies,
            retry_ok && sticky_ok && mirror_ok,
        ) {
            let upstream = match &action {
                Action::Proxy(backends) => backends.names(),
                Action::Respond(_) | Action::Aggregate(_) | Action::Redirect(_) => {
                    "none".to_string()
                }
            };
            let metrics = RouteMetrics::new(metrics, &r.name, &upstream);
            routes.push(Compiled {
                at: i,
                matcher,
                route: Route {
                    name: r.name.as_str().into(),
                    action,
                    rewrite,
                    query_secrets: Route::credential_params(&policies),
                    live: raw.admin.dashboard.then(|| cx.metrics.live.ring(&r.name)),
                    policies,
                    timeout: r.timeout,
                    max_body: r.max_body.map_or(default_max_body, |b| b.0),
                    allow_path_params: r.allow_path_params,
                    stream_request_body: r.stream_request_body,
                    upgrade_idle_timeout: r
                        .upgrade_idle_timeout
                        .unwrap_or(DEFAULT_UPGRADE_IDLE_TIMEOUT),
                    retry,
                    sticky,
                    mirror,
                    metrics,
                },
            });
        }
    }
    routes
}

/// A route's `mirror`: for routes that proxy, to an upstream not their own.
fn compile_mirror(
    cx: &mut CompileCx,
    at: &str,
    r: &RawRoute,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    raw: &RawConfig,
) -> Option<Arc<crate::mirror::Mirror>> {
    let m = r.mirror.as_ref()?;
    let own: Vec<&str> = match (&r.upstream, &r.backends) {
        (Some(one), _) => vec![one.as_str()],
        (None, Some(list)) => list.iter().map(|b| b.upstream.as_str()).collect(),
        (None, None) => {
            cx.d.error(
                &format!("{at}.mirror"),
                "`mirror` copies requests a route proxies, and this route has no `upstream` or `backends`",
                Some("remove `mirror`, or mirror on the route that proxies these requests".into()),
            );
            return None;
        }
    };
    // Copies count in the shadow's breaker, outlier detection and load like any request.
    let serves = |o: &&RawRoute| {
        o.upstream.as_ref() == Some(&m.upstream)
            || o.backends
                .iter()
                .flatten()
                .any(|b| b.upstream == m.upstream)
    };
    if let Some(other) = raw.routes.iter().filter(|o| o.name != r.name).find(serves) {
        cx.d.warn(
            &format!("{at}.mirror.upstream"),
            format!(
                "`{}` also serves route `{}`: copies that fail there count in its breaker and outlier detection",
                m.upstream, other.name
            ),
            Some("mirror to an upstream of its own (define it again under another name)".into()),
        );
    }
    let defined: Vec<&String> = raw.upstreams.keys().collect();
    let (d, state, metrics) = (&mut *cx.d, &mut *cx.state, cx.metrics);
    crate::mirror::compile(d, state, metrics, at, &r.name, m, &own, upstreams, &defined)
}

fn compile_matcher(d: &mut Diags, at: &str, m: &RawMatch) -> Option<Matcher> {
    let errors_before = d.items.len();
    let kinds = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
        m.path_template.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        d.error(
            at,
            "a route matches on one of path, path_prefix, path_regex or path_template, not several",
            Some("keep one; add another route for the other paths".into()),
        );
    }
    let path = if let Some(p) = &m.path {
        check_path(d, &format!("{at}.path"), p).map(PathMatch::Exact)
    } else if let Some(p) = &m.path_prefix {
        check_path(d, &format!("{at}.path_prefix"), p).map(PathMatch::Prefix)
    } else if let Some(t) = &m.path_template {
        compile_template(d, &format!("{at}.path_template"), t).map(PathMatch::Template)
    } else if let Some(re) = &m.path_regex {
        let flags = if m.ignore_case { "(?i)" } else { "" };
        match regex::Regex::new(&format!("{flags}^(?:{re})$")) {
            Ok(re) => Some(PathMatch::Regex(re)),
            Err(e) => {
                let detail = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_string();
                d.error(&format!("{at}.path_regex"), format!("invalid regex `{re}`: {detail}"), Some("the regex must match the whole normalized path; see https://docs.rs/regex for the syntax".into()));
                None
            }
        }
    } else {
        Some(PathMatch::Any)
    };
    let methods = m
        .methods
        .as_ref()
        .map(|list| parse_methods(d, &format!("{at}.methods"), list));
    if methods.as_ref().is_some_and(|m| m.is_empty()) && d.items.len() == errors_before {
        d.error(
            &format!("{at}.methods"),
            "an empty method list matches nothing",
            Some("remove `methods` to match any method".into()),
        );
    }
    let host = m
        .host
        .as_deref()
        .and_then(|h| compile_host(d, &format!("{at}.host"), h));
    let headers = m
        .headers
        .iter()
        .filter_map(|(name, cond)| {
            compile_header_match(d, &format!("{at}.headers.{name}"), name, cond)
        })
        .collect();
    let query = m
        .query
        .iter()
        .filter_map(|(name, cond)| {
            compile_query_match(d, &format!("{at}.query.{name}"), name, cond)
        })
        .collect();
    if d.items[errors_before..]
        .iter()
        .any(|x| x.severity == crate::diag::Severity::Error)
    {
        return None;
    }
    let cookies = m
        .cookies
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Some(Matcher {
        path: path?,
        methods,
        host,
        headers,
        query,
        cookies,
        ignore_case: m.ignore_case,
    })
}

fn compile_template(d: &mut Diags, at: &str, text: &str) -> Option<PathTemplate> {
    let template = PathTemplate::parse(text)
        .map_err(|e| {
            d.error(
                at,
                format!("invalid path template `{text}`: {e}"),
                Some(
                    "e.g. /users/{id}/orders/{order}, or /files/{rest...} for the rest of the path"
                        .into(),
                ),
            )
        })
        .ok()?;
    // Literal segments must be written as requests arrive after normalization.
    check_path(d, at, &template.literal_path())?;
    Some(template)
}

fn check_path(d: &mut Diags, at: &str, p: &str) -> Option<String> {
    match normalize(p) {
        Ok(n) if n == p => Some(n.into_owned()),
        Ok(n) => {
            d.error(
                at,
                format!("path `{p}` is not in normalized form, so no request could match it"),
                Some(format!("write it as `{n}`")),
            );
            None
        }
        Err(e) => {
            d.error(
                at,
                format!("invalid path `{p}`: {e}"),
                Some("paths start with `/`; write unreserved characters unescaped".into()),
            );
            None
        }
    }
}

fn compile_host(d: &mut Diags, at: &str, host: &str) -> Option<HostMatch> {
    let lower = host.to_ascii_lowercase();
    let (suffix, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        d.error(
            at,
            format!("`{host}` is not a host name or pattern"),
            Some(
                "write api.example.com, or *.example.com for any subdomain; no port, no scheme"
                    .into(),
            ),
        );
        return None;
    }
    Some(if suffix {
        HostMatch::Suffix(format!(".{name}"))
    } else {
        HostMatch::Exact(lower)
    })
}

fn compile_query_match(
    d: &mut Diags,
    at: &str,
    name: &str,
    cond: &QueryCondText,
) -> Option<QueryMatch> {
    if name.is_empty() {
        d.error(
            at,
            "a query parameter needs a name",
            Some("e.g. `query: { debug: \"1\" }`".into()),
        );
        return None;
    }
    let cond = match cond {
        QueryCondText::Equals(v) => QueryCond::Equals(v.clone()),
        QueryCondText::Present { present } => QueryCond::Present(*present),
        QueryCondText::Regex { regex } => {
            match regex::Regex::new(&format!("^(?:{regex})$")) {
                Ok(re) => QueryCond::Regex(re),
                Err(e) => {
                    d.error(
                    &format!("{at}.regex"),
                    format!("invalid regex `{regex}`: {}", e.to_string().lines().last().unwrap_or("")),
                    Some("see https://docs.rs/regex for the syntax; it must match the whole value".into()),
                );
                    return None;
                }
            }
        }
    };
    Some(QueryMatch {
        name: name.to_string(),
        cond,
    })
}

fn compile_header_match(
    d: &mut Diags,
    at: &str,
    name: &str,
    cond: &RawCond,
) -> Option<HeaderMatch> {
    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
        d.error(
            at,
            format!("`{name}` is not a valid header name"),
            Some(crate::diag::HEADER_NAME_HELP.into()),
        );
        return None;
    };
    let cond = match cond {
        RawCond::Present { present } => HeaderCond::Present(*present),
        RawCond::Equals(v) => match HeaderValue::from_str(v) {
            Ok(v) => HeaderCond::Equals(v),
            Err(_) => {
                d.error(
                    at,
                    format!("`{v}` is not a valid header value"),
                    Some(
                        "header values are visible ASCII and spaces, without CR, LF or NUL".into(),
                    ),
                );
                return None;
            }
        },
    };
    Some(HeaderMatch { name, cond })
}

/// The keys that say what a route does: a route has exactly one of them.
fn action_keys(r: &RawRoute) -> Vec<&'static str> {
    [
        ("upstream", r.upstream.is_some()),
        ("backends", r.backends.is_some()),
        ("respond", r.respond.is_some()),
        ("aggregate", r.aggregate.is_some()),
        ("redirect", r.redirect.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

fn compile_action(
    d: &mut Diags,
    at: &str,
    r: &RawRoute,
    names: &HashSet<&str>,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    raw: &RawConfig,
    metrics: &Metrics,
) -> Option<Action> {
    let keys = action_keys(r);
    if keys.len() != 1 {
        let (message, help) = match keys.as_slice() {
            [] => (
                format!("route `{}` says nothing to do with a request", r.name),
                "add `upstream: NAME`, `backends: [...]`, `respond: {status: 200, json: ...}`, `redirect:` or `aggregate:`",
            ),
            [a, b] => (
                format!("route `{}` has both `{a}` and `{b}`", r.name),
                "a route proxies (`upstream`, or weighted `backends`), answers itself (`respond`, `redirect`) or aggregates (`aggregate`); keep one",
            ),
            [first @ .., last] => (
                format!("route `{}` has `{}` and `{last}`", r.name, first.join("`, `")),
                "a route proxies (`upstream`, or weighted `backends`), answers itself (`respond`, `redirect`) or aggregates (`aggregate`); keep one",
            ),
        };
        d.error(at, message, Some(help.into()));
        return None;
    }
    let rewrites = r.strip_prefix.is_some() || r.rewrite.is_some();
    if let Some(agg) = &r.aggregate {
        if rewrites {
            d.error(
                at,
                "`strip_prefix`/`rewrite` have no effect on an `aggregate` route",
                Some("write each call's path instead".into()),
            );
        }
        let compiled = aggregate::compile(d, at, agg, names, upstreams, metrics, &r.name)?;
        return Some(Action::Aggregate(Arc::new(compiled)));
    }
    if let Some(redirect) = &r.redirect {
        if rewrites {
            d.error(
                at,
                "`strip_prefix`/`rewrite` have no effect on a `redirect` route",
                Some("give the new path in `redirect.path` or `redirect.prefix`".into()),
            );
        }
        let prefix = r.matcher.path_prefix.as_deref();
        let compiled = crate::redirect::compile(d, at, redirect, prefix)?;
        return Some(Action::Redirect(Arc::new(compiled)));
    }
    if let Some(resp) = &r.respond {
        if rewrites {
            d.error(
                at,
                "`strip_prefix`/`rewrite` have no effect on a `respond` route",
                Some("remove them".into()),
            );
        }
        let compiled = compile_respond(d, &format!("{at}.respond"), resp)?;
        return Some(Action::Respond(Arc::new(compiled)));
    }
    let defined: Vec<&String> = raw.upstreams.keys().collect();
    let backend = |d: &mut Diags, at: &str, name: &str, weight: u32| {
        let upstream = lookup(d, at, "upstream", name, upstreams, &defined)?;
        let metrics = RouteMetrics::new(metrics, &r.name, name);
        Some(Backend {
            upstream,
            weight,
            metrics,
        })
    };
    if let Some(name) = &r.upstream {
        let one = backend(d, &format!("{at}.upstream"), name, 1)?;
        return Some(Action::Proxy(Backends::new(vec![one])));
    }
    let raw_backends = r.backends.as_ref()?;
    let at = format!("{at}.backends");
    check_backends(d, &at, raw_backends);
    let list: Vec<Backend> = raw_backends
        .iter()
        .enumerate()
        .filter_map(|(i, b)| backend(d, &format!("{at}[{i}].upstream"), &b.upstream, b.weight))
        .collect();
    (list.len() == raw_backends.len() && !list.is_empty())
        .then(|| Action::Proxy(Backends::new(list)))
}

/// Weights in range, not all 0, and each upstream once.
fn check_backends(d: &mut Diags, at: &str, backends: &[RawBackend]) {
    if backends.is_empty() {
        d.error(
            at,
            "`backends` is empty",
            Some("list at least one `{ upstream: NAME, weight: N }`".into()),
        );
        return;
    }
    let mut seen = HashSet::new();
    for (i, b) in backends.iter().enumerate() {
        if b.weight > MAX_WEIGHT {
            d.error(
                &format!("{at}[{i}].weight"),
                format!("weight {} is over {MAX_WEIGHT}", b.weight),
                Some(
                    "weights are shares against each other: 90 and 10 send 90 % to the first"
                        .into(),
                ),
            );
        }
        if !seen.insert(b.upstream.as_str()) {
            d.error(
                &format!("{at}[{i}].upstream"),
                format!("upstream `{}` is listed twice", b.upstream),
                Some("list each upstream once, with its whole weight".into()),
            );
        }
    }
    if backends.iter().all(|b| b.weight == 0) {
        d.error(
            at,
            "every backend has weight 0, so none takes traffic",
            Some("give at least one backend a weight above 0".into()),
        );
    }
}

fn compile_respond(d: &mut Diags, at: &str, r: &RawRespond) -> Option<StaticResponse> {
    let mut ok = true;
    if !(100..=599).contains(&r.status) {
        d.error(
            &format!("{at}.status"),
            format!("{} is not an HTTP status", r.status),
            Some("use a status between 100 and 599".into()),
        );
        ok = false;
    }
    let (content_type, body) = match (&r.json, &r.text) {
        (Some(_), Some(_)) => {
            d.error(
                at,
                "a response has `json` or `text`, not both",
                Some("keep one: `json:` for a JSON body, `text:` for plain text".into()),
            );
            ok = false;
            ("", Vec::new())
        }
        (Some(json), None) => (
            "application/json",
            serde_json::to_vec(json).unwrap_or_default(),
        ),
        (None, Some(text)) => ("text/plain; charset=utf-8", text.clone().into_bytes()),
        (None, None) => ("text/plain; charset=utf-8", Vec::new()),
    };
    let mut headers = Vec::new();
    for (name, value) in &r.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => {
                d.error(
                    &format!("{at}.headers.{name}"),
                    format!("invalid header `{name}: {value}`"),
                    Some("header names are letters, digits and `-`; values visible ASCII without CR, LF or NUL".into()),
                );
                ok = false;
            }
        }
    }
    ok.then(|| StaticResponse {
        status: r.status,
        content_type,
        body: body.into(),
        headers,
    })
}

/// The capture groups of a path regex, by number and by name (empty when it does not
/// compile: that error is the matcher's).
fn regex_groups(re: &str) -> Vec<String> {
    let Ok(re) = regex::Regex::new(re) else {
        return Vec::new();
    };
    let names = re.capture_names().enumerate().skip(1);
    names
        .flat_map(|(i, name)| std::iter::once(i.to_string()).chain(name.map(String::from)))
        .collect()
}

fn compile_rewrite(
    d: &mut Diags,
    at: &str,
    r: &RawRoute,
    names: &HashSet<&str>,
) -> Option<PathRewrite> {
    match (&r.strip_prefix, &r.rewrite) {
        (Some(_), Some(_)) => {
            d.error(
                at,
                "use either `strip_prefix` or `rewrite`, not both",
                Some(
                    "`rewrite: /new/` replaces the matched prefix; `strip_prefix` removes one"
                        .into(),
                ),
            );
            None
        }
        (Some(p), None) => {
            if !p.starts_with('/') {
                d.error(
                    &format!("{at}.strip_prefix"),
                    format!("`{p}` must start with `/`"),
                    Some("write the prefix as a path, e.g. /api".into()),
                );
                return None;
            }
            if let Some(prefix) = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref()) {
                if !prefix.starts_with(p.as_str()) {
                    d.warn(&format!("{at}.strip_prefix"), format!("`{p}` is not a prefix of the matched path `{prefix}`, so it never applies"), Some("use a prefix of the route's `path_prefix`, or remove `strip_prefix`".into()));
                }
            }
            Some(PathRewrite::Strip(p.clone()))
        }
        (None, Some(to)) if r.matcher.path_template.is_some() || r.matcher.path_regex.is_some() => {
            match Fill::parse(to, names.iter().copied()) {
                Ok(fill) if to.starts_with('/') => Some(PathRewrite::Template(fill)),
                Ok(_) => {
                    d.error(
                        &format!("{at}.rewrite"),
                        format!("`{to}` must start with `/`"),
                        Some("write the path sent upstream, e.g. /v2/users/{id}".into()),
                    );
                    None
                }
                Err(e) => {
                    d.error(
                        &format!("{at}.rewrite"),
                        e,
                        Some("use the {names} of the route's path_template, or the groups of its path_regex by number ({1}) or name".into()),
                    );
                    None
                }
            }
        }
        (None, Some(to)) => {
            let Some(from) = r.matcher.path_prefix.as_ref().or(r.matcher.path.as_ref()) else {
                d.error(&format!("{at}.rewrite"), "`rewrite` replaces the matched prefix, but this route has no `path_prefix` or `path`", Some("match with path_prefix, or remove rewrite".into()));
                return None;
            };
            if !to.starts_with('/') {
                d.error(
                    &format!("{at}.rewrite"),
                    format!("`{to}` must start with `/`"),
                    Some("write the path sent upstream, e.g. /v2/users/{id}".into()),
                );
                return None;
            }
            Some(PathRewrite::Replace {
                from: from.clone(),
                to: to.clone(),
            })
        }
        (None, None) => Some(PathRewrite::None),
    }
}
