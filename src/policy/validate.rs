//! Request validation: required headers and query parameters, and a JSON Schema for the
//! body (draft 2020-12 or draft-07, `$ref` between files). Schemas are compiled when the
//! config loads; a validated body is read whole (up to `max_body_bytes`) before the
//! upstream is contacted, so an invalid one never reaches it.

use http::{HeaderMap, HeaderName, Method};
use jsonschema::{Retrieve, Uri, Validator};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Pingora can replay at most this much of a request body it has already read.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON pointer into the body (`/address/zip`), or `header:NAME` / `query:NAME`.
    pub path: String,
    pub message: String,
}

pub struct RequestValidation {
    pub methods: Vec<Method>,
    pub schema: Option<Validator>,
    pub max_body: u64,
    pub headers: Vec<HeaderName>,
    pub query: Vec<String>,
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
}
