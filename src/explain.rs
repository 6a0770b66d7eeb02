//! `portico route`: which route a request takes and why, and `--test` tables of expected
//! matches so a team can test its route table in CI.

use crate::config::model::{HeaderCond, RawMatch};
use crate::router::Match;
use crate::snapshot::{Action, Snapshot};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use std::fmt::Write;

/// A request to explain: method, path (with query) and headers.
pub struct Probe {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Probe {
    pub fn parse(method: &str, path: &str, headers: &[String]) -> Result<Probe, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`{method}` is not an HTTP method"))?;
        let uri: Uri = path
            .parse()
            .map_err(|_| format!("`{path}` is not a request path"))?;
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| format!("header `{h}` must look like `Name: value`"))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("invalid header name in `{h}`"))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("invalid header value in `{h}`"))?;
            map.append(name, value);
        }
        Ok(Probe {
            method,
            uri,
            headers: map,
        })
    }
}

/// What the gateway would do with a probe.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Route {
        index: usize,
        upstream_path: Option<String>,
        /// Values the route's path template bound.
        bound: Vec<(String, String)>,
    },
    Status(u16, String),
}

pub fn outcome(snapshot: &Snapshot, probe: &Probe) -> Outcome {
    match snapshot
        .router
        .route(&probe.method, &probe.uri, &probe.headers)
    {
        Err(e) => Outcome::Status(400, e.to_string()),
        Ok((Match::NotFound, _)) => Outcome::Status(404, "no route matches".into()),
        Ok((Match::MethodNotAllowed(allow), _)) => {
            Outcome::Status(405, format!("allowed: {allow}"))
        }
        Ok((Match::Route(index), path)) => {
            let route = &snapshot.routes[index];
            let bound = snapshot.router.bind(index, &path);
            let upstream_path = match route.action {
                Action::Proxy(_) => Some(route.rewrite.apply(&path, &bound).into_owned()),
                Action::Respond(_) | Action::Aggregate(_) | Action::Redirect(_) => None,
            };
            Outcome::Route {
                index,
                upstream_path,
                bound,
            }
        }
    }
}

fn describe_match(m: &RawMatch) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &m.path {
        parts.push(format!("path = {p}"));
    }
    if let Some(p) = &m.path_prefix {
        parts.push(format!("path_prefix = {p}"));
    }
    if let Some(p) = &m.path_regex {
        parts.push(format!("path_regex = {p}"));
    }
    if let Some(p) = &m.path_template {
        parts.push(format!("path_template = {p}"));
    }
    if let Some(methods) = &m.methods {
        parts.push(format!("methods = {}", methods.join(", ")));
    }
    if let Some(h) = &m.host {
        parts.push(format!("host = {h}"));
    }
    for (name, cond) in &m.headers {
        parts.push(match cond {
            HeaderCond::Equals(v) => format!("header {name} = {v}"),
            HeaderCond::Present { present: true } => format!("header {name} present"),
            HeaderCond::Present { present: false } => format!("header {name} absent"),
        });
    }
    for (name, value) in &m.cookies {
        parts.push(format!("cookie {name} = {value}"));
    }
    if parts.is_empty() {
        "any request".into()
    } else {
        parts.join("; ")
    }
}

/// The routes whose paths are nearest to `path` (a 404's likely intent), each as
/// `/path (route NAME)`, with the methods it takes when `method` is not among them.
pub fn nearest(snapshot: &Snapshot, method: &str, path: &str) -> Vec<String> {
    let path = path.split('?').next().unwrap_or(path);
    let mut scored: Vec<(f64, String)> = snapshot
        .raw
        .routes
        .iter()
        .filter_map(|r| {
            let m = &r.matcher;
            let literal = m
                .path
                .as_ref()
                .or(m.path_prefix.as_ref())
                .or(m.path_template.as_ref())?;
            let score = strsim::normalized_levenshtein(path, literal);
            let methods = m
                .methods
                .as_ref()
                .filter(|ms| !ms.iter().any(|x| x.eq_ignore_ascii_case(method)));
            let note = match methods {
                Some(ms) => format!(
                    " (route {}; method {method} not allowed: {})",
                    r.name,
                    ms.join(", ")
                ),
                None => format!(" (route {})", r.name),
            };
            Some((score, format!("{literal}{note}")))
        })
        .filter(|(score, _)| *score >= 0.5)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(3).map(|(_, s)| s).collect()
}

/// A human explanation of how `probe` is routed.
pub fn explain(snapshot: &Snapshot, probe: &Probe) -> String {
    let mut out = String::new();
    let head = format!("{} {}", probe.method, probe.uri);
    match outcome(snapshot, probe) {
        Outcome::Status(status, why) => {
            let _ = writeln!(out, "{head} → {status} ({why})");
        }
        Outcome::Route {
            index,
            upstream_path,
            bound,
        } => {
            let route = &snapshot.routes[index];
            let raw = &snapshot.raw.routes[index];
            let place = &snapshot.defined_at[index];
            let _ = writeln!(out, "{head} → route `{}` ({place})", route.name);
            let _ = writeln!(out, "  matched because: {}", describe_match(&raw.matcher));
            if !route.policies.is_empty() {
                let chain: Vec<String> = route.policies.iter().map(|p| p.label()).collect();
                let _ = writeln!(out, "  policies, in order: {}", chain.join(" → "));
                for policy in &route.policies {
                    let _ = writeln!(out, "    {}: {}", policy.label(), policy.unit().details());
                }
            }
            if !bound.is_empty() {
                let shown: Vec<String> = bound.iter().map(|(n, v)| format!("{n} = {v}")).collect();
                let _ = writeln!(out, "  bound: {}", shown.join(", "));
            }
            match &route.action {
                Action::Aggregate(agg) => {
                    let values = crate::aggregate::Values {
                        bound: &bound,
                        claims: None,
                        query: probe.uri.query(),
                    };
                    let _ = writeln!(
                        out,
                        "  aggregates {} calls in parallel (timeout {}):",
                        agg.calls.len(),
                        humantime::format_duration(agg.timeout)
                    );
                    for call in &agg.calls {
                        let kind = if call.required {
                            "required"
                        } else {
                            "optional"
                        };
                        let _ = writeln!(
                            out,
                            "    {} ({kind}) → upstream {}: GET {}",
                            call.name,
                            call.upstream.name,
                            call.path.explain(&values)
                        );
                    }
                }
                Action::Redirect(redirect) => {
                    let _ = writeln!(out, "  {}", redirect.explain());
                }
                Action::Respond(resp) => {
                    let _ = writeln!(
                        out,
                        "  responds directly: status {}, {} bytes of {}",
                        resp.status,
                        resp.body.len(),
                        resp.content_type
                    );
                }
                Action::Proxy(backends) => {
                    let split = backends.list.len() > 1;
                    let total: u32 = backends.list.iter().map(|b| b.weight).sum();
                    for b in &backends.list {
                        let up = &b.upstream;
                        let targets: Vec<String> = (0..up.targets.len())
                            .map(|i| match up.weight(i) {
                                1 => up.targets[i].label.clone(),
                                w => format!("{} (weight {w})", up.targets[i].label),
                            })
                            .collect();
                        let share = match split {
                            true => format!("; weight {} of {total}", b.weight),
                            false => String::new(),
                        };
                        let _ = writeln!(
                            out,
                            "  upstream: {} ({}) → {}{share}",
                            up.name,
                            up.balance,
                            targets.join(", ")
                        );
                    }
                    let up = &backends.list[0].upstream;
                    let _ = writeln!(
                        out,
                        "  upstream path: {}",
                        upstream_path.unwrap_or_default()
                    );
                    let _ = writeln!(
                        out,
                        "  timeouts: connect {}, read {}, route total {}",
                        humantime::format_duration(up.connect_timeout),
                        humantime::format_duration(up.read_timeout),
                        route
                            .timeout
                            .map_or("none".into(), |t| humantime::format_duration(t).to_string())
                    );
                    if let Some(sticky) = &route.sticky {
                        let _ = writeln!(out, "  {}", sticky.explain());
                    }
                    if let Some(mirror) = &route.mirror {
                        let _ = writeln!(out, "  {}", mirror.explain());
                    }
                    match &route.retry {
                        Some(retry) => {
                            let _ = writeln!(out, "  {}", retry.explain());
                        }
                        None => {
                            let _ = writeln!(
                                out,
                                "  retries: {} on connect failure (idempotent methods)",
                                up.retry_attempts
                            );
                        }
                    }
                }
            }
            let _ = writeln!(out, "  max body: {} bytes", route.max_body);
        }
    }
    out
}

/// One row of a `--test` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// `METHOD /path?query`
    pub request: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Expected route name...
    pub route: Option<String>,
    /// ...or expected status when no route takes it (400, 404, 405).
    pub status: Option<u16>,
    pub upstream_path: Option<String>,
    /// The backend (upstream) a split route keeps this request on: by its sticky cookie, or
    /// its sticky header as a trusted proxy would send it.
    pub backend: Option<String>,
}

/// The backend a split route keeps `probe` on, or why none can be said.
fn kept_backend(snapshot: &Snapshot, index: usize, probe: &Probe) -> Result<String, String> {
    let route = &snapshot.routes[index];
    let Action::Proxy(backends) = &route.action else {
        return Err(format!(
            "route `{}` does not proxy, so it has no backend",
            route.name
        ));
    };
    if let [one] = backends.list.as_slice() {
        return Ok(one.upstream.name.to_string());
    }
    let keep = route.sticky.as_ref().map(|sticky| {
        sticky.keep(&crate::sticky::Seen {
            route: &route.name,
            claims: None,
            headers: &probe.headers,
            trusted_peer: true,
        })
    });
    match keep {
        Some(keep @ (crate::sticky::Keep::Backend(_) | crate::sticky::Keep::Hash(_))) => {
            Ok(backends.list[backends.choose_kept(&keep).0].upstream.name.to_string())
        }
        _ => Err(format!(
            "route `{}` picks its backend by weight for this request (no valid sticky cookie or header)",
            route.name
        )),
    }
}

/// Each case's request and why it failed (None: it passed).
pub type Outcomes = Vec<(String, Option<String>)>;

/// Runs a table of cases.
pub fn run_cases(snapshot: &Snapshot, cases_yaml: &str) -> Result<Outcomes, String> {
    let cases: Vec<Case> =
        serde_yaml::from_str(cases_yaml).map_err(|e| format!("cases file: {e}"))?;
    Ok(cases
        .iter()
        .map(|case| (case.request.clone(), check_case(snapshot, case).err()))
        .collect())
}

/// The report for people, and whether every case passed.
pub fn report(outcomes: &Outcomes) -> (String, bool) {
    let mut report = String::new();
    for (i, (request, failure)) in outcomes.iter().enumerate() {
        let _ = match failure {
            None => writeln!(report, "ok   {request}"),
            Some(why) => writeln!(report, "FAIL {request} (case {}): {why}", i + 1),
        };
    }
    let failed = outcomes.iter().filter(|(_, f)| f.is_some()).count();
    let _ = writeln!(
        report,
        "{} cases, {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    );
    (report, failed == 0)
}

/// The same as JUnit XML, which CI systems show test by test.
pub fn junit(outcomes: &Outcomes) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failed = outcomes.iter().filter(|(_, f)| f.is_some()).count();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"portico route --test\" tests=\"{}\" failures=\"{failed}\">\n",
        outcomes.len()
    );
    for (request, failure) in outcomes {
        let name = escape(request);
        let _ = match failure {
            None => writeln!(xml, "  <testcase classname=\"routes\" name=\"{name}\"/>"),
            Some(why) => writeln!(
                xml,
                "  <testcase classname=\"routes\" name=\"{name}\"><failure message=\"{}\"/></testcase>",
                escape(why)
            ),
        };
    }
    xml.push_str("</testsuite>\n");
    xml
}

fn check_case(snapshot: &Snapshot, case: &Case) -> Result<(), String> {
    if let Some(want) = &case.route {
        if !snapshot.routes.iter().any(|r| &*r.name == want) {
            let names = snapshot.routes.iter().map(|r| &*r.name);
            let hint = match crate::diag::closest(want, names) {
                Some(near) => format!("did you mean `{near}`?"),
                None => "a typo in the cases file?".to_string(),
            };
            return Err(format!("no route is named `{want}` ({hint})"));
        }
    }
    let (method, path) = case
        .request
        .split_once(' ')
        .ok_or_else(|| "request must look like `GET /path`".to_string())?;
    let headers: Vec<String> = case
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let probe = Probe::parse(method, path.trim(), &headers)?;
    let got = outcome(snapshot, &probe);
    let got_text = match &got {
        Outcome::Route { index, .. } => {
            format!("route `{}`", snapshot.routes[*index].name)
        }
        Outcome::Status(s, why) => format!("status {s} ({why})"),
    };
    match (&case.route, case.status, &got) {
        (
            Some(want),
            None,
            Outcome::Route {
                index,
                upstream_path,
                ..
            },
        ) => {
            if snapshot.routes[*index].name.as_ref() != want {
                return Err(format!("expected route `{want}`, got {got_text}"));
            }
            if let Some(want) = &case.backend {
                let got = kept_backend(snapshot, *index, &probe)?;
                if &got != want {
                    return Err(format!("expected backend `{want}`, got `{got}`"));
                }
            }
            match (&case.upstream_path, upstream_path) {
                (Some(want), Some(got)) if want != got => {
                    Err(format!("expected upstream path `{want}`, got `{got}`"))
                }
                _ => Ok(()),
            }
        }
        (None, Some(want), Outcome::Status(status, _)) if want == *status => Ok(()),
        (Some(want), None, _) => Err(format!("expected route `{want}`, got {got_text}")),
        (None, Some(want), _) => Err(format!("expected status {want}, got {got_text}")),
        _ => Err("a case expects exactly one of `route` or `status`".into()),
    }
}
