//! `headers` on a route: set, add or remove request headers (sent upstream) and response
//! headers (on every answer). Values may use `${claim.NAME}`, `${client_ip}` and
//! `${request_id}`. Names and literal text are checked at compile time; a value whose
//! variables would put CR, LF or another control byte into it is never sent.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::diag::Diags;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `headers: { request: {...}, response: {...} }`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    /// Edits to the request sent upstream.
    #[serde(default)]
    pub request: RawHeaderEdits,
    /// Edits to every response the client gets.
    #[serde(default)]
    pub response: RawHeaderEdits,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    /// Replaces any value the header had.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Adds a value beside those the header has.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Removes the header.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Headers that frame the message or the connection: editing them could desynchronize
/// the gateway and its peers, so they are refused at compile time.
const FRAMING: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

#[derive(Debug, PartialEq)]
enum Part {
    Text(String),
    Claim(String),
    ClientIp,
    RequestId,
}

/// A header value: fixed text is a ready header value; text with variables is split at
/// compile time and filled per request.
#[derive(Debug, PartialEq)]
enum Template {
    Fixed(HeaderValue),
    Parts(Vec<Part>),
}

impl Template {
    fn render(&self, info: &RequestInfo, state: &PolicyState) -> Option<HeaderValue> {
        let parts = match self {
            Template::Fixed(value) => return Some(value.clone()),
            Template::Parts(parts) => parts,
        };
        let mut out = String::new();
        for part in parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::ClientIp => {
                    if let Some(ip) = info.client_ip {
                        out.push_str(&ip.to_string());
                    }
                }
                Part::RequestId => out.push_str(info.request_id),
                Part::Claim(name) => {
                    let value = state
                        .claims
                        .as_ref()
                        .and_then(|c| super::auth::claim(c, name));
                    if let Some(v) = value {
                        out.push_str(&super::auth::header_text(v));
                    }
                }
            }
        }
        // `from_str` refuses control bytes (CR, LF, NUL, DEL, ...): such a value is dropped.
        HeaderValue::from_str(&out).ok().filter(|v| !v.is_empty())
    }
}

#[derive(Debug)]
struct Edits {
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    fn apply(
        &self,
        msg: &mut impl Message,
        info: &RequestInfo,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        for name in &self.remove {
            msg.remove(name);
        }
        for (name, template) in &self.set {
            msg.remove(name);
            match template.render(info, state) {
                Some(value) => msg.insert(name, value)?,
                None => {
                    tracing::debug!(header = %name, "header value not sent: empty or control bytes")
                }
            }
        }
        for (name, template) in &self.add {
            if let Some(value) = template.render(info, state) {
                msg.append(name, value)?;
            }
        }
        Ok(())
    }
}

/// A request or response head the edits apply to.
trait Message {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()>;
}

/// Requests and responses have the same header methods but no common trait.
macro_rules! message {
    ($($head:ty),*) => {$(
        impl Message for $head {
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
            fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.insert_header(name.clone(), value)
            }
            fn append(&mut self, name: &HeaderName, value: HeaderValue) -> pingora::Result<()> {
                self.append_header(name.clone(), value).map(|_| ())
            }
        }
    )*};
}

message!(RequestHeader, ResponseHeader);

#[derive(Debug)]
pub struct HeaderRules {
    request: Edits,
    response: Edits,
}

impl Edits {
    /// Names set or added with a value made of a claim: identity the gateway vouches for.
    fn made_of_claims(&self) -> impl Iterator<Item = &HeaderName> {
        self.set
            .iter()
            .chain(&self.add)
            .filter(|(_, t)| matches!(t, Template::Parts(p) if p.iter().any(|p| matches!(p, Part::Claim(_)))))
            .map(|(name, _)| name)
    }

    fn describe(&self) -> serde_json::Value {
        let names = |list: &[(HeaderName, Template)]| {
            list.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>()
        };
        let removed: Vec<String> = self.remove.iter().map(|n| n.to_string()).collect();
        serde_json::json!({"set": names(&self.set), "add": names(&self.add), "remove": removed})
    }
}

impl Unit for HeaderRules {
    fn kind(&self) -> &'static str {
        "headers"
    }

    fn name(&self) -> Option<&str> {
        None
    }

    fn stage(&self) -> Stage {
        Stage::Headers
    }

    fn details(&self) -> serde_json::Value {
        serde_json::json!({"request": self.request.describe(), "response": self.response.describe()})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc::default()
    }

    /// A request header whose value is made of a claim is an identity header: a client's
    /// own copy must never reach the upstream beside (or instead of) the gateway's.
    fn identity_headers(&self) -> Vec<HeaderName> {
        self.request.made_of_claims().cloned().collect()
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        info: &RequestInfo,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        self.request.apply(req, info, state)
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        info: &RequestInfo,
        state: &PolicyState,
    ) -> pingora::Result<()> {
        self.response.apply(resp, info, state)
    }
}

/// Compiles a route's `headers` (`at` is the route).
pub fn compile(cx: &mut CompileCx, at: &str, raw: &RawHeaders) -> Option<HeaderRules> {
    let d = &mut *cx.d;
    let errors = d.errors();
    let request = compile_edits(d, &format!("{at}.headers.request"), &raw.request);
    let response = compile_edits(d, &format!("{at}.headers.response"), &raw.response);
    if d.errors() > errors {
        return None;
    }
    if request.is_empty() && response.is_empty() {
        d.warn(
            &format!("{at}.headers"),
            "`headers` edits nothing",
            Some(
                "add `request:` or `response:` edits (`set`, `add`, `remove`), or drop the policy"
                    .into(),
            ),
        );
    }
    Some(HeaderRules { request, response })
}

fn compile_edits(d: &mut Diags, at: &str, raw: &RawHeaderEdits) -> Edits {
    let mut pairs = |map: &BTreeMap<String, String>, key: &str| -> Vec<(HeaderName, Template)> {
        map.iter()
            .filter_map(|(name, value)| {
                let here = format!("{at}.{key}.{name}");
                let name = header_name(d, &here, name)?;
                let template = template(d, &here, value)?;
                Some((name, template))
            })
            .collect()
    };
    let set = pairs(&raw.set, "set");
    let add = pairs(&raw.add, "add");
    let remove = raw
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, name)| header_name(d, &format!("{at}.remove[{i}]"), name))
        .collect();
    Edits { set, add, remove }
}

fn header_name(d: &mut Diags, at: &str, name: &str) -> Option<HeaderName> {
    let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
        d.error(
            at,
            format!("`{name}` is not a valid header name"),
            Some(crate::diag::HEADER_NAME_HELP.into()),
        );
        return None;
    };
    if FRAMING.contains(&parsed.as_str()) {
        d.error(
            at,
            format!("`{name}` frames the message or the connection and cannot be edited"),
            Some("the gateway sets framing headers itself".into()),
        );
        return None;
    }
    Some(parsed)
}

/// Splits `text ${var} text` into parts; unknown variables and literal text that is not
/// a valid header value are errors.
fn template(d: &mut Diags, at: &str, value: &str) -> Option<Template> {
    let mut parts = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        parts.push(Part::Text(rest[..start].to_string()));
        let Some(len) = rest[start..].find('}') else {
            d.error(
                at,
                format!("`{value}` has an unclosed `${{`"),
                Some("close it: ${client_ip}, ${request_id} or ${claim.NAME}".into()),
            );
            return None;
        };
        let var = &rest[start + 2..start + len];
        parts.push(match var {
            "client_ip" => Part::ClientIp,
            "request_id" => Part::RequestId,
            _ => match var.strip_prefix("claim.").filter(|c| !c.is_empty()) {
                Some(claim) => Part::Claim(claim.to_string()),
                None => {
                    d.error(
                        at,
                        format!("unknown variable `${{{var}}}`"),
                        Some("use ${claim.NAME}, ${client_ip} or ${request_id}".into()),
                    );
                    return None;
                }
            },
        });
        rest = &rest[start + len + 1..];
    }
    parts.push(Part::Text(rest.to_string()));
    parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
    for part in &parts {
        if let Part::Text(t) = part {
            if HeaderValue::from_str(t).is_err() {
                d.error(
                    at,
                    format!("`{value}` is not a valid header value"),
                    Some("header values are visible ASCII text, spaces and tabs".into()),
                );
                return None;
            }
        }
    }
    Some(match parts.as_slice() {
        [] => Template::Fixed(HeaderValue::from_static("")),
        [Part::Text(text)] => Template::Fixed(HeaderValue::from_str(text).ok()?),
        _ => Template::Parts(parts),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(yaml: &str) -> Result<HeaderRules, Vec<String>> {
        let raw: RawHeaders = serde_yaml::from_str(yaml).unwrap();
        let (rules, items) = crate::policy::with_test_cx(|cx| compile(cx, "routes[0]", &raw));
        let errors: Vec<String> = items
            .iter()
            .filter(|x| x.severity == crate::diag::Severity::Error)
            .map(|x| x.message.clone())
            .collect();
        match rules {
            Some(rules) if errors.is_empty() => Ok(rules),
            _ => Err(items.into_iter().map(|x| x.message).collect()),
        }
    }

    fn info(id: &str) -> RequestInfo<'_> {
        RequestInfo {
            client_ip: Some("192.0.2.9".parse().unwrap()),
            trusted_peer: false,
            request_id: id,
            route: "r",
            tls: false,
        }
    }

    #[test]
    fn request_edits_render_variables() {
        let rules = compiled(
            "request: { set: { x-user: 'u=${claim.sub} ip=${client_ip}' }, add: { x-tag: '${request_id}' }, remove: [x-debug] }",
        )
        .unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user", "forged").unwrap();
        req.insert_header("x-debug", "1").unwrap();
        req.insert_header("x-tag", "a").unwrap();
        let state = PolicyState {
            claims: Some(std::sync::Arc::new(json!({"sub": "alice"}))),
            ..PolicyState::default()
        };
        rules
            .on_upstream_request(&mut req, &info("rid-1"), &state)
            .unwrap();
        assert_eq!(req.headers["x-user"], "u=alice ip=192.0.2.9");
        assert!(!req.headers.contains_key("x-debug"));
        let tags: Vec<_> = req.headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "rid-1"]);
    }

    #[test]
    fn a_claim_with_control_bytes_is_never_sent() {
        let rules = compiled("request: { set: { x-user: '${claim.sub}' } }").unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user", "client-sent").unwrap();
        let state = PolicyState {
            claims: Some(std::sync::Arc::new(
                json!({"sub": "alice\r\nx-admin: true"}),
            )),
            ..PolicyState::default()
        };
        rules
            .on_upstream_request(&mut req, &info("r"), &state)
            .unwrap();
        assert!(
            !req.headers.contains_key("x-user"),
            "neither the bad value nor the client's"
        );
        assert!(!req.headers.contains_key("x-admin"));
    }

    #[test]
    fn response_edits() {
        let rules =
            compiled("response: { set: { x-frame-options: DENY }, remove: [server] }").unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "upstream/1.0").unwrap();
        rules
            .on_response(&mut resp, &info("r"), &PolicyState::default())
            .unwrap();
        assert_eq!(resp.headers["x-frame-options"], "DENY");
        assert!(!resp.headers.contains_key("server"));
    }

    #[test]
    fn bad_names_values_and_variables_are_refused_at_compile_time() {
        let errors = compiled(
            "request: { set: { 'bad name': x, x-a: '${nope}', x-b: \"a\\u0001b\", content-length: '1' } }",
        )
        .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.contains("`bad name` is not a valid header name")));
        assert!(errors
            .iter()
            .any(|e| e.contains("unknown variable `${nope}`")));
        assert!(errors
            .iter()
            .any(|e| e.contains("is not a valid header value")));
        assert!(errors
            .iter()
            .any(|e| e.contains("`content-length` frames the message")));
    }
}
