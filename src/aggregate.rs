//! `aggregate` routes: one request answered with one JSON object composed of several
//! upstream calls made in parallel. Each call goes through its upstream's balancing,
//! health, breaker, timeouts and retries, over Pingora's pooled connector, with the headers
//! a proxied request would carry. Failure is never silent: a required call that fails
//! fails the answer (502/504 naming it); an optional one is left out and named in
//! `X-Portico-Partial`.

use crate::diag::{lookup, Diags};
use crate::errors::GatewayError;
use crate::router::template::{encode_segment as encode, placeholders, Piece as Part};
use crate::telemetry::Metrics;
use crate::units::ByteSize;
use crate::upstream::call::{self, Link};
use crate::upstream::Upstream;
use bytes::Bytes;
use pingora::http::RequestHeader;
use prometheus::{Histogram, IntCounterVec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `aggregate: { timeout: 2s, calls: [...] }` on a route.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAggregate {
    /// Longest the whole answer may take (default 5s); no call runs longer.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub timeout: Option<Duration>,
    /// Largest body a call may return (default 1MiB); a larger one fails the call.
    pub max_body: Option<ByteSize>,
    /// The calls made in parallel; each answer goes under its name.
    pub calls: Vec<RawCall>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCall {
    /// The key of this call's body in the answer.
    pub name: String,
    /// The upstream called.
    pub upstream: String,
    /// The path (and query) called, with `{binding}`, `{claim.NAME}`, `{query.NAME}`.
    pub path: String,
    /// A required call that fails fails the whole answer (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// Longest this call may take.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub timeout: Option<Duration>,
    /// Put the body's fields at the top level instead of under `name`.
    #[serde(default)]
    pub merge: bool,
    /// Keep only these fields (dot paths; applied to each element of an array).
    pub allow: Option<Vec<String>>,
    /// Drop these fields (dot paths).
    #[serde(default)]
    pub deny: Vec<String>,
}

fn yes() -> bool {
    true
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Binding(String),
    Claim(String),
    Query(String),
}

/// A call's path with its placeholders, split at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPath(Vec<Piece>);

/// What a call's placeholders are filled from.
pub struct Values<'a> {
    pub bound: &'a [(String, String)],
    pub claims: Option<&'a Value>,
    pub query: Option<&'a str>,
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl CallPath {
    fn parse(text: &str, names: &HashSet<&str>) -> Result<CallPath, String> {
        let mut pieces = Vec::new();
        for piece in placeholders(text)? {
            pieces.push(match piece {
                Part::Text(t) => Piece::Text(t.to_string()),
                Part::Name(name) => if let Some(c) = name.strip_prefix("claim.") {
                    Piece::Claim(c.to_string())
                } else if let Some(q) = name.strip_prefix("query.") {
                    Piece::Query(q.to_string())
                } else if names.contains(name) {
                    Piece::Binding(name.to_string())
                } else {
                    return Err(format!(
                        "`{{{name}}}` is neither bound by the route's path_template nor {{claim.NAME}} or {{query.NAME}}"
                    ));
                },
            });
        }
        let sample = CallPath(pieces.clone()).render_with(|_| Some("x".into()));
        if !sample.starts_with('/') || sample.parse::<http::Uri>().is_err() {
            return Err(format!("`{text}` is not a path (and query) to call"));
        }
        Ok(CallPath(pieces))
    }

    fn render_with(&self, mut value: impl FnMut(&Piece) -> Option<String>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                other => out.push_str(&value(other).unwrap_or_default()),
            }
        }
        out
    }

    /// The path to call; every placeholder value is percent-encoded.
    pub fn render(&self, v: &Values) -> String {
        self.render_with(|piece| match piece {
            Piece::Binding(name) => v
                .bound
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, value)| encode(value)),
            Piece::Claim(name) => v
                .claims
                .and_then(|c| crate::policy::auth::claim(c, name))
                .map(|c| encode(&crate::policy::auth::header_text(c))),
            Piece::Query(name) => query_value(v.query, name).map(encode),
            Piece::Text(_) => None,
        })
    }

    /// The path with the placeholders it could not fill shown as written (for `route`).
    pub fn explain(&self, v: &Values) -> String {
        let shown = CallPath(
            self.0
                .iter()
                .map(|p| match p {
                    Piece::Claim(c) if v.claims.is_none() => Piece::Text(format!("{{claim.{c}}}")),
                    other => other.clone(),
                })
                .collect(),
        );
        shown.render(v)
    }
}

/// Why a call failed; the outcome label of its metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No answer (see `upstream::call`).
    Call(call::CallError),
    BadStatus(u16),
    NotJson,
    NotObject,
    TooLarge,
}

impl CallError {
    pub fn outcome(self) -> &'static str {
        match self {
            CallError::Call(e) => e.outcome(),
            CallError::BadStatus(_) => "bad_status",
            CallError::NotJson => "not_json",
            CallError::NotObject => "not_object",
            CallError::TooLarge => "too_large",
        }
    }

    fn describe(self, max_body: u64) -> String {
        match self {
            CallError::Call(e) => e.describe().into(),
            CallError::BadStatus(s) => format!("it answered {s}"),
            CallError::NotJson => "its body is not JSON".into(),
            CallError::NotObject => "its body is not a JSON object, so it cannot be merged".into(),
            CallError::TooLarge => format!("its body is over {max_body} bytes"),
        }
    }
}

impl From<call::CallError> for CallError {
    fn from(e: call::CallError) -> CallError {
        CallError::Call(e)
    }
}

/// A call's metric handles, resolved at compile time (the outcome on first use).
struct CallMetrics {
    calls: IntCounterVec,
    route: String,
    duration: Histogram,
}

pub struct Call {
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub path: CallPath,
    pub required: bool,
    timeout: Option<Duration>,
    merge: bool,
    allow: Option<Vec<Vec<String>>>,
    deny: Vec<Vec<String>>,
    metrics: CallMetrics,
}

pub struct Aggregate {
    pub timeout: Duration,
    pub max_body: u64,
    pub calls: Vec<Call>,
}

/// The composed answer.
pub struct Answer {
    pub body: Bytes,
    /// Optional calls that failed, for `X-Portico-Partial`.
    pub partial: Vec<String>,
    /// `name:outcome` of every call, for the access log.
    pub outcomes: String,
}

fn split_paths(list: &[String]) -> Vec<Vec<String>> {
    list.iter()
        .map(|p| p.split('.').map(str::to_string).collect())
        .collect()
}

/// Keeps only the `allow` paths of an object (each element of an array).
fn keep(value: &Value, allow: &[Vec<String>]) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(|v| keep(v, allow)).collect()),
        Value::Object(map) => {
            let mut out = Map::new();
            for path in allow {
                let Some((head, tail)) = path.split_first() else {
                    continue;
                };
                let Some(v) = map.get(head) else { continue };
                let kept = if tail.is_empty() {
                    v.clone()
                } else {
                    let merged = keep(v, &[tail.to_vec()]);
                    match (out.remove(head), merged) {
                        (Some(Value::Object(mut a)), Value::Object(b)) => {
                            a.extend(b);
                            Value::Object(a)
                        }
                        (_, m) => m,
                    }
                };
                out.insert(head.clone(), kept);
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Removes the `deny` paths (in each element of an array).
fn drop_paths(value: &mut Value, deny: &[Vec<String>]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|v| drop_paths(v, deny)),
        Value::Object(map) => {
            for path in deny {
                match path.as_slice() {
                    [last] => {
                        map.remove(last);
                    }
                    [head, tail @ ..] => {
                        if let Some(v) = map.get_mut(head) {
                            drop_paths(v, &[tail.to_vec()]);
                        }
                    }
                    [] => {}
                }
            }
        }
        _ => {}
    }
}

impl Call {
    fn shape(&self, mut body: Value) -> Result<Value, CallError> {
        if let Some(allow) = &self.allow {
            body = keep(&body, allow);
        }
        drop_paths(&mut body, &self.deny);
        if self.merge && !body.is_object() {
            return Err(CallError::NotObject);
        }
        Ok(body)
    }

    /// One call (see `upstream::call`), its answer shaped.
    async fn fetch(
        &self,
        link: &Link<'_>,
        req: &RequestHeader,
        deadline: Instant,
        max_body: u64,
    ) -> Result<Value, CallError> {
        let reply = call::call(link, &self.upstream, req, Bytes::new(), deadline, max_body).await?;
        if !(200..300).contains(&reply.status) {
            return Err(CallError::BadStatus(reply.status));
        }
        let body = reply.body.ok_or(CallError::TooLarge)?;
        let value = serde_json::from_slice(&body).map_err(|_| CallError::NotJson)?;
        self.shape(value)
    }
}

impl Aggregate {
    /// Makes every call in parallel and composes the answer. `base` is the request as it
    /// would be proxied (forwarded headers, identity headers); each call sends it as a GET
    /// to its own path.
    pub async fn run(
        &self,
        link: &Link<'_>,
        base: &RequestHeader,
        values: &Values<'_>,
    ) -> Result<Answer, GatewayError> {
        let started = Instant::now();
        let calls = self.calls.iter().map(|call| async move {
            let mut req = base.clone();
            let path = call.path.render(values);
            if let Ok(uri) = path.parse::<http::Uri>() {
                req.set_uri(uri);
            }
            let limit = call.timeout.unwrap_or(self.timeout).min(self.timeout);
            let deadline = started + limit;
            let result = call.fetch(link, &req, deadline, self.max_body).await;
            let m = &call.metrics;
            let outcome = result.as_ref().err().map_or("ok", |e| e.outcome());
            m.calls
                .with_label_values(&[m.route.as_str(), call.name.as_str(), outcome])
                .inc();
            m.duration.observe(started.elapsed().as_secs_f64());
            result
        });
        let results = futures::future::join_all(calls).await;
        let mut top = Map::new();
        let mut partial = Vec::new();
        let mut outcomes = Vec::new();
        for (call, result) in self.calls.iter().zip(results) {
            let outcome = result.as_ref().err().map_or("ok", |e| e.outcome());
            outcomes.push(format!("{}:{outcome}", call.name));
            match result {
                Ok(Value::Object(fields)) if call.merge => top.extend(fields),
                Ok(body) => {
                    top.insert(call.name.clone(), body);
                }
                Err(e) if call.required => {
                    return Err(GatewayError::AggregateFailed {
                        call: call.name.clone(),
                        timeout: e == CallError::Call(call::CallError::Timeout),
                        reason: e.describe(self.max_body),
                    })
                }
                Err(_) => partial.push(call.name.clone()),
            }
        }
        Ok(Answer {
            body: Bytes::from(Value::Object(top).to_string()),
            partial,
            outcomes: outcomes.join(","),
        })
    }
}

/// Compiles a route's `aggregate` (`at` is the route). `names` are the bindings of the
/// route's path template.
pub fn compile(
    d: &mut Diags,
    at: &str,
    raw: &RawAggregate,
    names: &HashSet<&str>,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    metrics: &Metrics,
    route: &str,
) -> Option<Aggregate> {
    let at = format!("{at}.aggregate");
    let errors = d.errors();
    if raw.calls.is_empty() {
        d.error(
            &format!("{at}.calls"),
            "an aggregate needs at least one call",
            Some("add calls: `- { name: user, upstream: users, path: /users/{id} }`".into()),
        );
    }
    if raw.timeout.is_some_and(|t| t.is_zero()) {
        d.error(
            &format!("{at}.timeout"),
            "the timeout must be longer than 0",
            Some("give a duration such as 2s, or leave it out for no aggregate deadline".into()),
        );
    }
    let mut seen = HashSet::new();
    let mut calls = Vec::new();
    for (i, c) in raw.calls.iter().enumerate() {
        let here = format!("{at}.calls[{i}]");
        if !seen.insert(c.name.as_str()) {
            d.error(
                &format!("{here}.name"),
                format!("duplicate call name `{}`", c.name),
                Some("each call's body goes under its name; rename one".into()),
            );
        }
        let defined: Vec<&String> = upstreams.keys().collect();
        let at = format!("{here}.upstream");
        let upstream = lookup(d, &at, "upstream", &c.upstream, upstreams, &defined);
        let path = CallPath::parse(&c.path, names)
            .map_err(|e| {
                d.error(
                    &format!("{here}.path"),
                    e,
                    Some(
                        "placeholders: {NAME} from path_template, {claim.NAME}, {query.NAME}"
                            .into(),
                    ),
                )
            })
            .ok();
        if c.timeout.is_some_and(|t| t.is_zero()) {
            d.error(
                &format!("{here}.timeout"),
                "the timeout must be longer than 0",
                Some(
                    "give a duration such as 500ms, or leave it out to use the aggregate's".into(),
                ),
            );
        }
        let (Some(upstream), Some(path)) = (upstream, path) else {
            continue;
        };
        calls.push(Call {
            name: c.name.clone(),
            upstream,
            path,
            required: c.required,
            timeout: c.timeout,
            merge: c.merge,
            allow: c.allow.as_deref().map(split_paths),
            deny: split_paths(&c.deny),
            metrics: CallMetrics {
                calls: metrics.aggregate_calls.clone(),
                route: route.to_string(),
                duration: metrics
                    .aggregate_duration
                    .with_label_values(&[route, c.name.as_str()]),
            },
        });
    }
    (d.errors() == errors).then(|| Aggregate {
        timeout: raw.timeout.unwrap_or(DEFAULT_TIMEOUT),
        max_body: raw.max_body.map_or(DEFAULT_MAX_BODY, |b| b.0),
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> CallPath {
        CallPath::parse(text, &HashSet::from(["id"])).unwrap()
    }

    #[test]
    fn placeholders_are_encoded_so_they_cannot_move_the_path() {
        let bound = vec![("id".to_string(), "a%20b".to_string())];
        let claims = json!({"sub": "u/1?x=2"});
        let v = Values {
            bound: &bound,
            claims: Some(&claims),
            query: Some("q=..&r=%2Fetc"),
        };
        assert_eq!(
            path("/users/{id}/x?owner={claim.sub}").render(&v),
            "/users/a%20b/x?owner=u%2F1%3Fx%3D2"
        );
        assert_eq!(path("/items/{query.q}").render(&v), "/items/%2E%2E");
        assert_eq!(path("/items/{query.r}").render(&v), "/items/%2Fetc");
        assert_eq!(path("/items/{query.none}").render(&v), "/items/");
    }

    #[test]
    fn unknown_placeholders_and_non_paths_are_refused() {
        let names = HashSet::from(["id"]);
        assert!(CallPath::parse("/users/{nope}", &names)
            .unwrap_err()
            .contains("`{nope}`"));
        assert!(CallPath::parse("users/{id}", &names).is_err());
        assert!(CallPath::parse("/users/{id", &names).is_err());
    }

    #[test]
    fn allow_and_deny_filter_fields() {
        let body = json!([{"id": 1, "total": 5, "secret": "x", "meta": {"a": 1, "b": 2}}]);
        let allow = split_paths(&["id".into(), "meta.a".into()]);
        assert_eq!(keep(&body, &allow), json!([{"id": 1, "meta": {"a": 1}}]));
        let mut body = json!({"id": 1, "secret": "x", "meta": {"a": 1, "b": 2}});
        drop_paths(&mut body, &split_paths(&["secret".into(), "meta.b".into()]));
        assert_eq!(body, json!({"id": 1, "meta": {"a": 1}}));
    }
}
