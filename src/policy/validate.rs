//! Request validation: required headers and query parameters, and a JSON Schema for the
//! body (draft 2020-12 or draft-07, `$ref` between files). Schemas are compiled when the
//! config loads; a validated body is read whole (up to `max_body_bytes`) before the
//! upstream is contacted, so an invalid one never reaches it.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::diag::parse_methods;
use crate::errors::{Code, GatewayError, Refusal};
use crate::units::ByteSize;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, Method};
use jsonschema::{Retrieve, Uri, Validator};
use pingora::proxy::Session;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    /// A JSON Schema file for the request body (relative to the config's directory).
    pub body: Option<String>,
    /// Methods validated (default POST, PUT, PATCH).
    pub methods: Option<Vec<String>>,
    /// Largest validated body (at most 64KiB; it is held whole).
    #[serde(default = "default_validate_max")]
    pub max_body_bytes: ByteSize,
    /// Request headers that must be present.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Query parameters that must be present.
    #[serde(default)]
    pub query: Vec<String>,
}

fn default_validate_max() -> ByteSize {
    ByteSize(64 * 1024)
}

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Pingora can replay at most this much of a request body it has already read.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

/// One broken rule, listed in the refusal's `violations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the body (`/address/zip`), or `header:NAME` / `query:NAME`.
    pub path: String,
    pub message: String,
}

/// The 400 listing what the request breaks.
fn failed(violations: Vec<Violation>) -> GatewayError {
    let message = format!(
        "the request breaks {} rule(s) of the route's schema",
        violations.len()
    );
    let list = serde_json::to_value(&violations).unwrap_or_default();
    Refusal::new(400, Code::ValidationFailed, message)
        .detail("violations", list)
        .into()
}

const NOT_JSON: Refusal = Refusal::fixed(
    415,
    Code::UnsupportedMediaType,
    "this route takes a JSON body (Content-Type: application/json)",
);

pub struct RequestValidation {
    pub methods: Vec<Method>,
    pub schema: Option<Validator>,
    pub max_body: u64,
    pub headers: Vec<HeaderName>,
    pub query: Vec<String>,
    /// Required headers as written in the file (what the OpenAPI document names).
    pub header_text: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    InvalidJson(String),
    Invalid(Vec<Violation>),
}

impl RequestValidation {
    pub fn applies(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }

    /// Applies the rules. A body to check is read whole (bounded) into Pingora's retry
    /// buffer, which is what gets sent upstream once it passed.
    pub async fn check(&self, session: &mut Session) -> Result<(), GatewayError> {
        if !self.applies(&session.req_header().method) {
            return Ok(());
        }
        let req = session.req_header();
        let missing = self.check_head(&req.headers, req.uri.query());
        if !missing.is_empty() {
            return Err(failed(missing));
        }
        if self.schema.is_none() {
            return Ok(());
        }
        let content_type = req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        if !is_json(content_type) {
            return Err(NOT_JSON.into());
        }
        let too_large = GatewayError::BodyTooLarge {
            limit: self.max_body,
        };
        if content_length(req).is_some_and(|len| len > self.max_body) {
            return Err(too_large);
        }
        session.enable_retry_buffering();
        let mut body = bytes::BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    return Err(GatewayError::from_pingora(&e).unwrap_or(GatewayError::BadRequest))
                }
            }
            if body.len() as u64 > self.max_body {
                return Err(too_large);
            }
        }
        match self.check_body(&body) {
            Ok(()) => Ok(()),
            Err(BodyError::InvalidJson(why)) => {
                let message = format!("the body is not valid JSON: {why}");
                Err(Refusal::new(400, Code::InvalidJson, message).into())
            }
            Err(BodyError::Invalid(violations)) => Err(failed(violations)),
        }
    }

    /// Required headers and query parameters that are missing.
    pub fn check_head(&self, headers: &HeaderMap, query: Option<&str>) -> Vec<Violation> {
        let mut missing: Vec<Violation> = self
            .headers
            .iter()
            .filter(|h| !headers.contains_key(*h))
            .map(|h| Violation {
                path: format!("header:{h}"),
                message: format!("the header `{h}` is required"),
            })
            .collect();
        let present: Vec<&str> = query
            .unwrap_or_default()
            .split('&')
            .map(|kv| kv.split('=').next().unwrap_or_default())
            .collect();
        missing.extend(
            self.query
                .iter()
                .filter(|q| !present.contains(&q.as_str()))
                .map(|q| Violation {
                    path: format!("query:{q}"),
                    message: format!("the query parameter `{q}` is required"),
                }),
        );
        missing
    }

    /// Checks a complete body against the schema.
    pub fn check_body(&self, body: &[u8]) -> Result<(), BodyError> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let value: Value =
            serde_json::from_slice(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
        let violations: Vec<Violation> = schema
            .iter_errors(&value)
            .map(|e| Violation {
                path: e.instance_path.to_string(),
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(BodyError::Invalid(violations))
        }
    }
}

/// `application/json` or any `+json` type.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// Resolves `$ref`s to other schema files and remembers which files were read.
struct FileRetriever {
    read: Arc<Mutex<Vec<PathBuf>>>,
}

impl Retrieve for FileRetriever {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.scheme().as_str() != "file" {
            return Err(format!("only file references are allowed, not `{uri}`").into());
        }
        let path = PathBuf::from(uri.path().as_str());
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path);
        Ok(serde_json::from_str(&text)?)
    }
}

/// Compiles the schema at `path` (absolute); returns it with the other files it referenced.
pub fn compile_schema(path: &Path, text: &str) -> Result<(Validator, Vec<PathBuf>), String> {
    let schema: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let read = Arc::new(Mutex::new(Vec::new()));
    let base = format!("file://{}", path.display());
    let validator = jsonschema::options()
        .with_base_uri(base)
        .with_retriever(FileRetriever { read: read.clone() })
        .build(&schema)
        .map_err(|e| e.to_string())?;
    let files = read.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((validator, files))
}

/// The declared body length, when there is one.
pub fn content_length(req: &pingora::http::RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Compiles a route's `validate` (`at` is the route): the schema is compiled here, once.
pub fn compile(cx: &mut CompileCx, at: &str, v: &RawValidate) -> Option<RequestValidation> {
    let (d, inputs) = (&mut *cx.d, &mut *cx.inputs);
    let at = format!("{at}.validate");
    if v.max_body_bytes.0 > MAX_BUFFERED_BODY || v.max_body_bytes.0 == 0 {
        d.error(&format!("{at}.max_body_bytes"), format!("max_body_bytes must be between 1 and {MAX_BUFFERED_BODY} (64KiB)"), Some("a validated body is held whole before the upstream sees the request; larger bodies cannot be replayed".into()));
    }
    let methods = match &v.methods {
        None => vec![Method::POST, Method::PUT, Method::PATCH],
        Some(list) => parse_methods(d, &format!("{at}.methods"), list),
    };
    let headers = v
        .headers
        .iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.as_bytes()).ok();
            if name.is_none() {
                d.error(
                    &format!("{at}.headers"),
                    format!("`{h}` is not a valid header name"),
                    Some(crate::diag::HEADER_NAME_HELP.into()),
                );
            }
            name
        })
        .collect();
    let schema = match &v.body {
        None => None,
        Some(file) => {
            let path = format!("{at}.body");
            let text = inputs.read(d, &path, file)?;
            let full = inputs.files.last().cloned().unwrap_or_default();
            let absolute = std::path::absolute(&full).unwrap_or(full);
            match compile_schema(&absolute, &text) {
                Ok((validator, referenced)) => {
                    inputs.files.extend(referenced);
                    Some(validator)
                }
                Err(e) => {
                    d.error(&path, format!("schema `{file}` does not compile: {e}"), Some("check it with a JSON Schema validator; $ref paths are relative to the schema file".into()));
                    return None;
                }
            }
        }
    };
    Some(RequestValidation {
        methods,
        schema,
        max_body: v.max_body_bytes.0,
        headers,
        query: v.query.clone(),
        header_text: v.headers.clone(),
    })
}

#[async_trait::async_trait]
impl Unit for RequestValidation {
    fn kind(&self) -> &'static str {
        "validate"
    }

    fn name(&self) -> Option<&str> {
        None
    }

    fn stage(&self) -> Stage {
        Stage::Validate
    }

    fn details(&self) -> Value {
        let methods: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
        serde_json::json!({"methods": methods, "body_schema": self.schema.is_some(), "headers": self.header_text, "query": self.query})
    }

    fn api_doc(&self, method: &str) -> ApiDoc {
        let param = |name: &str, place: &str| serde_json::json!({"name": name, "in": place, "required": true, "schema": {"type": "string"}});
        let mut parameters: Vec<Value> = self
            .header_text
            .iter()
            .map(|h| param(h, "header"))
            .collect();
        parameters.extend(self.query.iter().map(|q| param(q, "query")));
        let mut errors = vec!["400"];
        let validated = self
            .methods
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(method));
        if validated && self.schema.is_some() {
            errors.push("415");
        }
        ApiDoc {
            errors,
            parameters,
            ..ApiDoc::default()
        }
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    async fn on_request(
        &self,
        session: &mut Session,
        _info: &RequestInfo<'_>,
        _state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        self.check(session).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(is_json(Some("application/merge-patch+json")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(None));
    }

    #[test]
    fn required_headers_and_query() {
        let v = RequestValidation {
            methods: vec![Method::GET],
            schema: None,
            max_body: 1,
            headers: vec![HeaderName::from_static("x-tenant")],
            query: vec!["page".into()],
            header_text: vec!["X-Tenant".into()],
        };
        let missing = v.check_head(&HeaderMap::new(), Some("size=2"));
        assert_eq!(
            missing.iter().map(|m| m.path.as_str()).collect::<Vec<_>>(),
            ["header:x-tenant", "query:page"]
        );
        assert!(v
            .check_head(
                &[(HeaderName::from_static("x-tenant"), "a".parse().unwrap())]
                    .into_iter()
                    .collect(),
                Some("page=1")
            )
            .is_empty());
    }

    #[test]
    fn compile_bounds_the_buffered_body_and_checks_names() {
        let raw: RawValidate = serde_yaml::from_str(
            "{ max_body_bytes: 1MiB, headers: ['bad name'], methods: [post] }",
        )
        .unwrap();
        let (_, items) = crate::policy::with_test_cx(|cx| compile(cx, "routes[0]", &raw));
        let messages: Vec<&str> = items.iter().map(|x| x.message.as_str()).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("max_body_bytes must be between 1 and 65536"));
    }
}
