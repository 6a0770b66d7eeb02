//! API keys (`type: api_key`): consumers listed in a keys file, each key stored as the hex
//! SHA-256 of the key, never in clear. A request's key is hashed and looked up by its
//! digest, then compared in constant time: what timing can reveal is about a digest, not
//! about any key. The consumer becomes the identity: claims `consumer` and `sub` (its
//! name) plus its own `claims`, and its own rate limit and quota apply.

use super::*;
use crate::policy::quota::Quota;
use crate::policy::ratelimit::RateLimit;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// Where the key is read, in order (the first found wins): `header:NAME` or
    /// `query:NAME`. Default `[header:X-API-Key]`. A key in the query is removed from the
    /// request before it is logged or proxied.
    #[serde(default = "default_from")]
    #[schemars(inner(pattern(r"^(header:\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*|query:.+)$")))]
    pub from: Vec<String>,
    /// The consumers: a YAML list of `{ consumer, key_sha256, rate_limit, quota, claims }`,
    /// relative to the config file. A change to it reloads the config.
    pub keys_file: String,
    /// Identity headers for the upstream, e.g. `{ consumer: X-Consumer }` (any claim of
    /// the consumer may be named); every client's own copies are removed.
    #[serde(default)]
    pub forward: BTreeMap<String, String>,
}

fn default_from() -> Vec<String> {
    vec!["header:X-API-Key".into()]
}

/// One entry of a keys file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    consumer: String,
    /// One digest, or several while a key is rotated.
    key_sha256: OneOrMany,
    rate_limit: Option<String>,
    quota: Option<String>,
    #[serde(default)]
    claims: serde_json::Map<String, Value>,
}

/// Where a request's key is read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    Header(HeaderName),
    Query(String),
}

/// A place in a file the config refers to, for errors found once names are resolved.
#[derive(Debug, Clone)]
pub struct Located {
    pub file: PathBuf,
    pub pos: crate::diag::Pos,
}

pub struct Consumer {
    pub name: Arc<str>,
    /// `consumer`, `sub` and the consumer's own claims.
    pub claims: Arc<Value>,
    pub rate_limit: Option<Arc<RateLimit>>,
    pub quota: Option<Arc<Quota>>,
    /// The names as the keys file gives them, resolved by [`ApiKeys::link`].
    wants: Vec<(&'static str, String, Located)>,
}

pub struct ApiKeys {
    pub name: Arc<str>,
    from: Vec<KeySource>,
    by_digest: HashMap<[u8; 32], Arc<Consumer>>,
    pub forward: Vec<(String, HeaderName)>,
}

/// The lowercase hex SHA-256 of a key, as a keys file stores it (`portico keys hash`).
pub fn key_digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(
        key.trim_end_matches(['\r', '\n']).as_bytes(),
    ))
}

impl ApiKeys {
    /// The key the request carries: the first source that has one. `Err` when that source
    /// repeats it (which copy counts would be a guess).
    fn key<'a>(&self, req: &'a RequestHeader) -> Result<Option<&'a str>, SentTwice> {
        for source in &self.from {
            let found = match source {
                KeySource::Header(name) => match req.headers.get_all(name).iter().count() {
                    0 => None,
                    1 => req
                        .headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::trim),
                    _ => return Err(SentTwice),
                },
                KeySource::Query(param) => match query_values(req.uri.query(), param)[..] {
                    [] => None,
                    [one] => Some(one),
                    _ => return Err(SentTwice),
                },
            };
            if let Some(key) = found.filter(|k| !k.is_empty()) {
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// The consumer a key belongs to, looked up by the key's SHA-256: timing-safe by
    /// construction, since what a comparison's time could reveal is how much of a digest
    /// matches, which says nothing about any key.
    fn consumer(&self, key: &str) -> Option<&Arc<Consumer>> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest.get(&digest)
    }

    /// The query parameters this policy reads keys from: removed from the query sent
    /// upstream and from the access log, whatever becomes of the request.
    pub fn query_params(&self) -> Vec<String> {
        self.from
            .iter()
            .filter_map(|s| match s {
                KeySource::Query(q) => Some(q.clone()),
                KeySource::Header(_) => None,
            })
            .collect()
    }

    /// Finds the consumer, removes query keys from the request, and counts the consumer's
    /// own limit and quota.
    pub(super) async fn identify(
        &self,
        session: &mut pingora::proxy::Session,
        info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<Arc<Value>, GatewayError> {
        let found = self
            .key(session.req_header())
            .map(|found| found.map(|key| self.consumer(key).cloned()));
        // Query keys leave the request whatever the outcome: the upstream never sees one,
        // not even a wrong or repeated one (the access log redacts them on its own).
        let params = self.query_params();
        if !params.is_empty() {
            strip_query_params(session.req_header_mut(), &params);
        }
        let consumer = match found {
            Err(SentTwice) => return Err(crate::errors::AMBIGUOUS_HEADER.into()),
            Ok(None) => return Err(self.refusal(KeyError::Missing)),
            Ok(Some(None)) => return Err(self.refusal(KeyError::Unknown)),
            Ok(Some(Some(consumer))) => consumer,
        };
        let req = session.req_header();
        if let Some(limit) = &consumer.rate_limit {
            state.claims = Some(consumer.claims.clone());
            limit.count(req, info, state).await?;
            state.consumer_limited = true;
        }
        if let Some(quota) = &consumer.quota {
            state.claims = Some(consumer.claims.clone());
            quota.count(req, info, state).await?;
        }
        Ok(consumer.claims.clone())
    }

    fn refusal(&self, e: KeyError) -> GatewayError {
        let (code, message) = match e {
            KeyError::Missing => (Code::ApiKeyMissing, "no API key was sent"),
            KeyError::Unknown => (Code::ApiKeyInvalid, "the API key is not valid"),
        };
        let challenge = format!("ApiKey realm=\"{}\"", self.name);
        let refusal = Refusal::new(401, code, message).counted(Counted::AuthFailure);
        match HeaderValue::try_from(challenge) {
            Ok(v) => refusal.header(http::header::WWW_AUTHENTICATE, v).into(),
            Err(_) => refusal.into(),
        }
    }

    /// The OpenAPI security scheme: where the first source reads the key.
    pub fn scheme(&self) -> Value {
        let (place, name) = match &self.from[0] {
            KeySource::Header(h) => ("header", h.to_string()),
            KeySource::Query(q) => ("query", q.clone()),
        };
        serde_json::json!({"type": "apiKey", "in": place, "name": name, "description": "an API key issued per consumer"})
    }

    pub fn details(&self) -> Value {
        let from: Vec<String> = self
            .from
            .iter()
            .map(|s| match s {
                KeySource::Header(h) => format!("header:{h}"),
                KeySource::Query(q) => format!("query:{q}"),
            })
            .collect();
        let mut consumers: Vec<&str> = self.by_digest.values().map(|c| &*c.name).collect();
        consumers.sort_unstable();
        consumers.dedup();
        serde_json::json!({"from": from, "consumers": consumers.len()})
    }

    /// Resolves each consumer's `rate_limit` and `quota` by name; what does not resolve is
    /// reported where the keys file names it.
    pub fn link(
        &mut self,
        limits: &BTreeMap<String, Arc<RateLimit>>,
        quotas: &BTreeMap<String, Arc<Quota>>,
        d: &mut Diags,
    ) {
        let mut done: HashMap<*const Consumer, Arc<Consumer>> = HashMap::new();
        for consumer in self.by_digest.values_mut() {
            let key = Arc::as_ptr(consumer);
            if let Some(linked) = done.get(&key) {
                *consumer = linked.clone();
                continue;
            }
            let mut c = Consumer {
                name: consumer.name.clone(),
                claims: consumer.claims.clone(),
                rate_limit: None,
                quota: None,
                wants: Vec::new(),
            };
            for (field, name, at) in &consumer.wants {
                let (section, known) = match *field {
                    "rate_limit" => ("rate_limits", limits.contains_key(name)),
                    _ => ("quotas", quotas.contains_key(name)),
                };
                match *field {
                    "rate_limit" => c.rate_limit = limits.get(name).cloned(),
                    _ => c.quota = quotas.get(name).cloned(),
                }
                if !known {
                    d.error_in(
                        &at.file,
                        at.pos,
                        format!(
                            "consumer `{}`: no `{section}` entry is named `{name}`",
                            c.name
                        ),
                        Some(format!(
                            "define `{name}` under `{section}`, or fix the name"
                        )),
                    );
                }
            }
            let linked = Arc::new(c);
            done.insert(key, linked.clone());
            *consumer = linked;
        }
    }
}

enum KeyError {
    Missing,
    Unknown,
}

/// The values of a query parameter (percent-decoding is not applied: keys are sent as
/// they were issued).
fn query_values<'q>(query: Option<&'q str>, param: &str) -> Vec<&'q str> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| match pair.split_once('=') {
            Some((k, v)) if k == param => Some(v),
            _ => None,
        })
        .collect()
}

/// The query without the `params` pairs; None when it has none of them.
pub fn without_params(query: &str, params: &[String]) -> Option<String> {
    let name = |pair: &&str| {
        let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
        params.iter().any(|p| p == key)
    };
    if !query.split('&').any(|pair| name(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !name(pair)).collect();
    Some(kept.join("&"))
}

/// Removes every pair of `params` from the request's query, keeping the rest of its target
/// (an absolute-form target keeps its scheme and authority).
fn strip_query_params(req: &mut RequestHeader, params: &[String]) {
    let Some(kept) = req.uri.query().and_then(|q| without_params(q, params)) else {
        return;
    };
    let path = req.uri.path();
    let target = match kept.is_empty() {
        true => path.to_string(),
        false => format!("{path}?{kept}"),
    };
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = target.parse().ok();
    if let Ok(uri) = http::Uri::from_parts(parts) {
        req.set_uri(uri);
    }
}

/// Compiles `type: api_key`: the keys file is read and checked here; errors in it point
/// at its own lines.
pub fn compile(cx: &mut CompileCx, name: &str, a: &RawApiKey) -> Option<ApiKeys> {
    let at = format!("auth.{name}");
    let from = sources(cx.d, &at, &a.from)?;
    let forward = forward_headers(cx.d, &format!("{at}.forward"), &a.forward);
    let text = cx
        .inputs
        .read(cx.d, &format!("{at}.keys_file"), &a.keys_file)?;
    let file = cx.inputs.path_of(&a.keys_file);
    let by_digest = consumers(cx.d, &file, &text)?;
    if by_digest.is_empty() {
        cx.d.warn(
            &format!("{at}.keys_file"),
            format!("`{}` lists no consumer: every request is refused", a.keys_file),
            Some("add `- { consumer: NAME, key_sha256: DIGEST }` (`portico keys hash` prints a key's digest)".into()),
        );
    }
    Some(ApiKeys {
        name: name.into(),
        from,
        by_digest,
        forward,
    })
}

fn sources(d: &mut Diags, at: &str, from: &[String]) -> Option<Vec<KeySource>> {
    if from.is_empty() {
        d.error(
            &format!("{at}.from"),
            "list where the key is read",
            Some("e.g. from: [header:X-API-Key, query:api_key]".into()),
        );
        return None;
    }
    let mut out = Vec::new();
    for (i, text) in from.iter().enumerate() {
        let source = if let Some(h) = text.strip_prefix("header:") {
            HeaderName::from_bytes(h.trim().as_bytes())
                .ok()
                .map(KeySource::Header)
        } else {
            text.strip_prefix("query:")
                .map(str::trim)
                .filter(|q| !q.is_empty() && !q.contains(['&', '=']))
                .map(|q| KeySource::Query(q.to_string()))
        };
        match source {
            Some(s) => out.push(s),
            None => d.error(
                &format!("{at}.from[{i}]"),
                format!("`{text}` is not a key source"),
                Some("use header:NAME or query:NAME".into()),
            ),
        }
    }
    (out.len() == from.len()).then_some(out)
}

/// Parses a keys file: each entry's digests, name and claims checked, each error at its
/// line in the keys file.
fn consumers(
    d: &mut Diags,
    file: &std::path::Path,
    text: &str,
) -> Option<HashMap<[u8; 32], Arc<Consumer>>> {
    let locator = crate::diag::Locator::new(text);
    let at = |path: &str| Located {
        file: file.to_path_buf(),
        pos: locator.find(path),
    };
    let de = serde_yaml::Deserializer::from_str(text);
    let list: Vec<RawConsumer> = match serde_path_to_error::deserialize(de) {
        Ok(list) => list,
        Err(e) => {
            let path = e.path().to_string();
            let pos = e
                .inner()
                .location()
                .map(|l| crate::diag::Pos {
                    line: l.line(),
                    col: l.column(),
                })
                .unwrap_or_else(|| locator.find(&path));
            d.error_in(
                file,
                pos,
                format!("keys file: {}", e.inner()),
                Some(KEYS_HELP.into()),
            );
            return None;
        }
    };
    let mut by_digest: HashMap<[u8; 32], Arc<Consumer>> = HashMap::new();
    let mut ok = true;
    let mut names = std::collections::HashSet::new();
    for (i, c) in list.into_iter().enumerate() {
        if !names.insert(c.consumer.clone()) {
            let here = at(&format!("[{i}].consumer"));
            d.error_in(&here.file, here.pos, format!("consumer `{}` is listed twice", c.consumer), Some("give each consumer one entry; list several digests under `key_sha256` to rotate a key".into()));
            ok = false;
        }
        let mut claims = c.claims;
        claims.insert("consumer".into(), c.consumer.clone().into());
        claims.insert("sub".into(), c.consumer.clone().into());
        let mut wants = Vec::new();
        if let Some(l) = c.rate_limit {
            wants.push(("rate_limit", l, at(&format!("[{i}].rate_limit"))));
        }
        if let Some(q) = c.quota {
            wants.push(("quota", q, at(&format!("[{i}].quota"))));
        }
        let consumer = Arc::new(Consumer {
            name: c.consumer.as_str().into(),
            claims: Arc::new(Value::Object(claims)),
            rate_limit: None,
            quota: None,
            wants,
        });
        for (j, digest) in c.key_sha256.items().iter().enumerate() {
            let here = match &c.key_sha256 {
                OneOrMany::One(_) => at(&format!("[{i}].key_sha256")),
                OneOrMany::Many(_) => at(&format!("[{i}].key_sha256[{j}]")),
            };
            let bytes = hex::decode(digest)
                .ok()
                .filter(|_| digest.len() == 64 && *digest == digest.to_lowercase());
            let Some(bytes) = bytes.and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
                d.error_in(&here.file, here.pos, format!("consumer `{}`: `key_sha256` is not 64 lowercase hex digits", c.consumer), Some("store the key's SHA-256, never the key: `printf %s KEY | portico keys hash`".into()));
                ok = false;
                continue;
            };
            if let Some(other) = by_digest.insert(bytes, consumer.clone()) {
                d.error_in(
                    &here.file,
                    here.pos,
                    format!(
                        "consumer `{}` has the same key as `{}`",
                        c.consumer, other.name
                    ),
                    Some("a key identifies one consumer: issue each its own".into()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(by_digest)
}

const KEYS_HELP: &str = "a keys file is a YAML list: `- { consumer: acme, key_sha256: <64 hex digits>, rate_limit: NAME, quota: NAME, claims: { tier: gold } }`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_found_once_and_stripped() {
        let mut req = RequestHeader::build("GET", b"/a?x=1&api_key=k1&y=2", None).unwrap();
        assert_eq!(query_values(req.uri.query(), "api_key"), ["k1"]);
        strip_query_params(&mut req, &["api_key".into()]);
        assert_eq!(req.uri.to_string(), "/a?x=1&y=2");
        strip_query_params(&mut req, &["x".into(), "y".into()]);
        assert_eq!(req.uri.to_string(), "/a");
        let mut absolute = RequestHeader::build("GET", b"/", None).unwrap();
        absolute.set_uri("http://h.example/a?k=1&b=2".parse().unwrap());
        strip_query_params(&mut absolute, &["k".into()]);
        assert_eq!(absolute.uri.to_string(), "http://h.example/a?b=2");
    }

    #[test]
    fn digests_are_the_trimmed_keys_sha256() {
        assert_eq!(
            key_digest_hex("abc\n"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
