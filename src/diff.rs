//! `portico diff OLD NEW [--requests access.log]`: what a config change will do before it
//! is applied. Named entities (routes, upstreams, policies, caches) and the singleton
//! sections are compared field by field on the redacted config (what `/config` shows, so no
//! credential is printed); recorded requests are replayed through both route tables, and
//! every request whose route, upstream, path sent upstream, auth or rate limit would change
//! is listed.

use crate::explain::{self, Outcome, Probe};
use crate::snapshot::Snapshot;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Sections that are one object each; every other section holds entities keyed by name
/// (routes are a list, keyed by `name` too), so a new policy's section is compared
/// without being listed here.
const SINGLE: [&str; 7] = [
    "version",
    "listen",
    "server",
    "redis",
    "tls",
    "telemetry",
    "admin",
];

/// Where the usual named sections come in a report; any other comes after them.
const ORDER: [&str; 7] = [
    "routes",
    "upstreams",
    "auth",
    "rate_limits",
    "cors",
    "ip_access",
    "caches",
];

/// The sections of either config that hold named entities.
fn named_sections<'a>(old: &'a Value, new: &'a Value) -> Vec<&'a str> {
    let mut sections: Vec<&str> = Vec::new();
    for config in [old, new] {
        for key in config.as_object().into_iter().flat_map(|m| m.keys()) {
            if !SINGLE.contains(&key.as_str()) && !sections.contains(&key.as_str()) {
                sections.push(key);
            }
        }
    }
    sections.sort_by_key(|s| ORDER.iter().position(|o| o == s).unwrap_or(ORDER.len()));
    sections
}

/// One field that differs: its dotted path inside the entity, and both values.
#[derive(Debug, Serialize, PartialEq)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// An entity added, removed or changed.
#[derive(Debug, Serialize)]
pub struct EntityChange {
    pub section: String,
    pub name: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    pub fields: Vec<FieldChange>,
}

/// What the gateway does with one request, as far as a config decides it.
#[derive(Debug, Serialize, PartialEq, Clone)]
pub struct Behaviour {
    /// The route's name, or the status the gateway answers itself (404, 405, 400).
    pub route: String,
    pub upstream: Option<String>,
    pub upstream_path: Option<String>,
    /// The auth policy's name and definition and the route's `require`.
    pub auth: Value,
    /// The rate limit's name and definition.
    pub limit: Value,
    /// The upstream's definition (targets, balancing, timeouts...).
    #[serde(skip)]
    upstream_definition: Value,
}

/// A replayed request whose behaviour changes.
#[derive(Debug, Serialize)]
pub struct RequestChange {
    pub request: String,
    /// Which aspects change: route, upstream, upstream_path, auth, limit.
    pub changes: Vec<&'static str>,
    pub old: Behaviour,
    pub new: Behaviour,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub entities: Vec<EntityChange>,
    /// Distinct requests replayed (method, host, path).
    pub replayed: usize,
    pub requests: Vec<RequestChange>,
}

impl Report {
    pub fn changes_behaviour(&self) -> bool {
        !self.entities.is_empty() || !self.requests.is_empty()
    }
}

/// Compares two compiled configs, replaying `access_log` (JSON lines) when given.
pub fn diff(old: &Snapshot, new: &Snapshot, access_log: Option<&str>) -> Report {
    let mut entities = Vec::new();
    for section in SINGLE {
        let (a, b) = (&old.redacted()[section], &new.redacted()[section]);
        if a != b {
            let mut fields = fields(a, b, "");
            // A scalar section (`version`) is its own one field.
            fields
                .iter_mut()
                .filter(|f| f.field.is_empty())
                .for_each(|f| f.field = section.into());
            entities.push(EntityChange {
                section: section.into(),
                name: section.into(),
                change: "changed",
                fields,
            });
        }
    }
    for section in named_sections(old.redacted(), new.redacted()) {
        let (a, b) = (
            named(old.redacted(), section),
            named(new.redacted(), section),
        );
        let names: BTreeSet<&String> = a.iter().chain(&b).map(|(n, _)| n).collect();
        for name in names {
            let find = |list: &[(String, Value)]| {
                list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
            };
            let change = match (find(&a), find(&b)) {
                (Some(_), None) => ("removed", Vec::new()),
                (None, Some(_)) => ("added", Vec::new()),
                (Some(x), Some(y)) if x != y => ("changed", fields(&x, &y, "")),
                _ => continue,
            };
            entities.push(EntityChange {
                section: section.into(),
                name: name.clone(),
                change: change.0,
                fields: change.1,
            });
        }
    }
    let (replayed, requests) = access_log.map_or((0, Vec::new()), |log| replay(old, new, log));
    Report {
        entities,
        replayed,
        requests,
    }
}

/// A section's entities as (name, value), in file order for routes.
fn named(config: &Value, section: &str) -> Vec<(String, Value)> {
    match &config[section] {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::Array(items) => items
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    r.clone(),
                )
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The fields that differ between two values, by dotted path (objects are descended; a
/// list or scalar that differs is one field).
fn fields(a: &Value, b: &Value, at: &str) -> Vec<FieldChange> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    let (old, new) = (
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    );
                    fields(old, new, &path)
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![FieldChange {
            field: at.to_string(),
            old: (!a.is_null()).then(|| a.clone()),
            new: (!b.is_null()).then(|| b.clone()),
        }],
    }
}

/// One request of an access log: Portico's JSON lines, or an nginx line in ingress-nginx's
/// default format (which names the upstream that served it) or nginx's `combined`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recorded {
    pub method: String,
    /// The path and query.
    pub target: String,
    pub host: Option<String>,
    /// ingress-nginx's `$proxy_upstream_name` (`NAMESPACE-SERVICE-PORT`).
    pub upstream: Option<String>,
}

impl Recorded {
    fn describe(&self) -> String {
        match &self.host {
            Some(host) => format!("{} {} (Host: {host})", self.method, self.target),
            None => format!("{} {}", self.method, self.target),
        }
    }

    fn probe(&self, host: Option<&str>) -> Option<Probe> {
        let headers: Vec<String> = host.map(|h| format!("Host: {h}")).into_iter().collect();
        Probe::parse(&self.method, &self.target, &headers).ok()
    }
}

/// The distinct requests of a log, in the order first seen.
pub fn recorded(log: &str) -> Vec<Recorded> {
    let mut seen = BTreeSet::new();
    log.lines()
        .filter_map(|line| json_line(line).or_else(|| nginx_line(line)))
        .filter(|r| seen.insert(r.clone()))
        .collect()
}

fn json_line(line: &str) -> Option<Recorded> {
    let entry = serde_json::from_str::<Value>(line).ok()?;
    // The gateway's own log records (JSON too) have a level; access lines do not.
    if entry.get("level").is_some() {
        return None;
    }
    let (method, path) = (entry["method"].as_str()?, entry["path"].as_str()?);
    let target = match entry["query"].as_str() {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let host = entry["host"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(String::from);
    Some(Recorded {
        method: method.into(),
        target,
        host,
        upstream: None,
    })
}

/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent"` (combined), optionally followed by ingress-nginx's
/// `$request_length $request_time [$proxy_upstream_name] ...`.
fn nginx_line(line: &str) -> Option<Recorded> {
    static LINE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = LINE.get_or_init(|| {
        regex::Regex::new(r#"^\S+ - \S+ \[[^\]]*\] "(\S+) (\S+)[^"]*" \d{3} \S+ "[^"]*" "[^"]*"(?: \S+ \S+ \[([^\]]*)\])?"#)
            .expect("the pattern compiles")
    });
    let caps = re.captures(line)?;
    let upstream = caps.get(3).map(|m| m.as_str()).filter(|u| !u.is_empty());
    Some(Recorded {
        method: caps[1].to_string(),
        target: caps[2].to_string(),
        host: None,
        upstream: upstream.map(String::from),
    })
}

/// Replays each distinct recorded request through both configs.
fn replay(old: &Snapshot, new: &Snapshot, log: &str) -> (usize, Vec<RequestChange>) {
    let requests = recorded(log);
    let mut changed = Vec::new();
    for r in &requests {
        let Some(probe) = r.probe(r.host.as_deref()) else {
            continue;
        };
        let (a, b) = (behaviour(old, &probe), behaviour(new, &probe));
        let changes = aspects(&a, &b);
        if !changes.is_empty() {
            changed.push(RequestChange {
                request: r.describe(),
                changes,
                old: a,
                new: b,
            });
        }
    }
    (requests.len(), changed)
}

/// A migration's proof: each request of an ingress-nginx access log replayed through
/// `new`, listed when it would not reach the Service that served it (the log's
/// `$proxy_upstream_name`, which `portico import ingress` names upstreams after), or when a
/// request nginx answered without an upstream now reaches one. The log has no host: a
/// request is tried with each host `new` routes to that upstream. Requests of a log
/// without upstream names are listed when no route takes them.
pub fn against_log(new: &Snapshot, log: &str) -> Report {
    let requests = recorded(log);
    let mut changed = Vec::new();
    for r in &requests {
        let recorded_upstream = r
            .upstream
            .as_deref()
            .filter(|u| *u != "upstream-default-backend");
        let hosts = match (&r.host, recorded_upstream) {
            (Some(h), _) => vec![Some(h.clone())],
            (None, Some(u)) => hosts_serving(new, u),
            // A `combined` line has no host: any host the config routes may have sent it.
            (None, None) if r.upstream.is_none() => {
                let hosts = route_hosts(new, |_| true).into_iter().flatten();
                std::iter::once(None).chain(hosts.map(Some)).collect()
            }
            (None, None) => vec![None],
        };
        let outcomes: Vec<(Behaviour, Vec<String>)> = hosts
            .iter()
            .filter_map(|h| r.probe(h.as_deref()))
            .map(|probe| (behaviour(new, &probe), served_by(new, &probe)))
            .collect();
        let unrouted = |b: &Behaviour| b.route.starts_with("none");
        // The import names a second definition of a Service's port `NAME-2`.
        let same_service = |x: &str, u: &str| {
            x == u
                || x.strip_prefix(u)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|n| n.parse::<u32>().is_ok())
        };
        let same = match (recorded_upstream, &r.upstream) {
            // Served by a Service: a route for one of its hosts may send it there.
            (Some(u), _) => outcomes
                .iter()
                .any(|(_, ups)| ups.iter().any(|x| same_service(x, u))),
            // nginx's default backend answered (no rule took it): still no route.
            (None, Some(_)) => outcomes.iter().all(|(b, _)| unrouted(b)),
            // No upstream recorded (`combined`): some route takes it.
            (None, None) => outcomes.iter().any(|(b, _)| !unrouted(b)),
        };
        if same {
            continue;
        }
        let Some((new_behaviour, _)) = outcomes.into_iter().next() else {
            continue;
        };
        let old = Behaviour {
            route: "(recorded)".into(),
            upstream: r.upstream.clone(),
            upstream_path: None,
            auth: Value::Null,
            limit: Value::Null,
            upstream_definition: Value::Null,
        };
        let changes = match recorded_upstream {
            Some(_) => vec!["upstream"],
            None => vec!["route"],
        };
        changed.push(RequestChange {
            request: r.describe(),
            changes,
            old,
            new: new_behaviour,
        });
    }
    Report {
        entities: Vec::new(),
        replayed: requests.len(),
        requests: changed,
    }
}

/// The hosts of the routes `keep` selects (None: a host-less one), each once.
fn route_hosts(snapshot: &Snapshot, keep: impl Fn(&Value) -> bool) -> Vec<Option<String>> {
    let config = snapshot.redacted();
    let routes = config["routes"].as_array().into_iter().flatten();
    let mut hosts: Vec<Option<String>> = routes
        .filter(|r| keep(r))
        .map(|r| r["match"]["host"].as_str().map(String::from))
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The hosts of the routes that send requests to `upstream` (a host-less probe when none).
fn hosts_serving(snapshot: &Snapshot, upstream: &str) -> Vec<Option<String>> {
    let hosts = route_hosts(snapshot, |r| {
        route_upstreams(r).iter().any(|u| u == upstream)
    });
    if hosts.is_empty() {
        return vec![None];
    }
    hosts
}

/// The upstreams a route may send a request to (its upstream, or each of its backends).
fn route_upstreams(route: &Value) -> Vec<String> {
    let single = route["upstream"].as_str().map(String::from);
    let split = route["backends"].as_array().into_iter().flatten();
    let split = split.filter_map(|b| b["upstream"].as_str().map(String::from));
    single.into_iter().chain(split).collect()
}

/// The upstreams the route a probe takes may send it to.
fn served_by(snapshot: &Snapshot, probe: &Probe) -> Vec<String> {
    match explain::outcome(snapshot, probe) {
        Outcome::Route { index, .. } => route_upstreams(&snapshot.redacted()["routes"][index]),
        Outcome::Status(..) => Vec::new(),
    }
}

fn aspects(a: &Behaviour, b: &Behaviour) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.route != b.route {
        out.push("route");
    }
    if a.upstream != b.upstream || a.upstream_definition != b.upstream_definition {
        out.push("upstream");
    }
    if a.upstream_path != b.upstream_path {
        out.push("upstream_path");
    }
    if a.auth != b.auth {
        out.push("auth");
    }
    if a.limit != b.limit {
        out.push("limit");
    }
    out
}

fn behaviour(snapshot: &Snapshot, probe: &Probe) -> Behaviour {
    let config = snapshot.redacted();
    match explain::outcome(snapshot, probe) {
        Outcome::Status(status, _) => Behaviour {
            route: format!("none ({status})"),
            upstream: None,
            upstream_path: None,
            auth: Value::Null,
            limit: Value::Null,
            upstream_definition: Value::Null,
        },
        Outcome::Route {
            index,
            upstream_path,
            ..
        } => {
            let route = &config["routes"][index];
            let policy = |key: &str, section: &str| match route[key].as_str() {
                Some(name) => json!({"policy": name, "definition": config[section][name]}),
                None => Value::Null,
            };
            let mut auth = policy("auth", "auth");
            if !route["require"].is_null() {
                auth["require"] = route["require"].clone();
            }
            let upstream = route["upstream"].as_str().map(str::to_string);
            Behaviour {
                route: snapshot.routes[index].name.to_string(),
                upstream_definition: upstream
                    .as_ref()
                    .map_or(Value::Null, |u| config["upstreams"][u].clone()),
                upstream,
                upstream_path,
                auth,
                limit: policy("rate_limit", "rate_limits"),
            }
        }
    }
}

/// A value as the text report shows it: strings bare, the rest as compact JSON.
fn show(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The report for a person.
pub fn text(report: &Report, replaying: bool) -> String {
    let mut out = String::new();
    for e in &report.entities {
        let sign = match e.change {
            "added" => '+',
            "removed" => '-',
            _ => '~',
        };
        let _ = writeln!(out, "{sign} {} `{}` {}", e.section, e.name, e.change);
        for f in &e.fields {
            let _ = writeln!(out, "    {}: {} → {}", f.field, show(&f.old), show(&f.new));
        }
    }
    if replaying {
        let _ = writeln!(
            out,
            "{} of {} recorded request(s) would be handled differently",
            report.requests.len(),
            report.replayed
        );
        for r in &report.requests {
            let _ = writeln!(out, "  {}: {}", r.request, r.changes.join(", "));
            for aspect in &r.changes {
                let (a, b) = match *aspect {
                    "route" => (Some(json!(r.old.route)), Some(json!(r.new.route))),
                    "upstream" => (
                        r.old.upstream.clone().map(Value::from),
                        r.new.upstream.clone().map(Value::from),
                    ),
                    "upstream_path" => (
                        r.old.upstream_path.clone().map(Value::from),
                        r.new.upstream_path.clone().map(Value::from),
                    ),
                    "auth" => (
                        Some(r.old.auth["policy"].clone()),
                        Some(r.new.auth["policy"].clone()),
                    ),
                    _ => (
                        Some(r.old.limit["policy"].clone()),
                        Some(r.new.limit["policy"].clone()),
                    ),
                };
                let none = |v: Option<Value>| v.filter(|v| !v.is_null());
                let (a, b) = (none(a), none(b));
                if a == b {
                    // Same name, different definition.
                    let _ = writeln!(out, "    {aspect}: `{}` is defined differently", show(&a));
                } else {
                    let _ = writeln!(out, "    {aspect}: {} → {}", show(&a), show(&b));
                }
            }
        }
    }
    if !report.changes_behaviour() {
        out.push_str("no change in behaviour\n");
    }
    out
}
