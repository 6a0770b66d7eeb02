//! Every problem of a file at once. serde stops at the first unknown key or wrong type, so
//! when it fails the same text is also checked against the config's JSON Schema, which goes
//! on past each problem; each violation is located at `file:line:col` like serde's own.

use super::model::{RawConfig, RawPart};
use crate::diag::{closest, Diagnostic, Locator, Severity};
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

/// A kind of config file (the base, or a team's part) and its schema.
pub trait Model: serde::de::DeserializeOwned + schemars::JsonSchema {
    /// The schema (as `portico schema` prints it) and its compiled validator, built once.
    fn checker() -> &'static (Value, jsonschema::Validator);
}

fn build<T: schemars::JsonSchema>() -> (Value, jsonschema::Validator) {
    let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or_default();
    let validator = jsonschema::validator_for(&schema).expect("the generated schema compiles");
    (schema, validator)
}

impl Model for RawConfig {
    fn checker() -> &'static (Value, jsonschema::Validator) {
        static SCHEMA: OnceLock<(Value, jsonschema::Validator)> = OnceLock::new();
        SCHEMA.get_or_init(build::<Self>)
    }
}

impl Model for RawPart {
    fn checker() -> &'static (Value, jsonschema::Validator) {
        static SCHEMA: OnceLock<(Value, jsonschema::Validator)> = OnceLock::new();
        SCHEMA.get_or_init(build::<Self>)
    }
}

/// The text as YAML with its merge keys applied and its top-level `x-` keys (where
/// shared anchors are written) taken out: what the file model reads.
pub fn merged(text: &str) -> Option<serde_yaml::Value> {
    let mut yaml = serde_yaml::from_str::<serde_yaml::Value>(text).ok()?;
    yaml.apply_merge().ok()?;
    if let serde_yaml::Value::Mapping(map) = &mut yaml {
        map.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
    }
    Some(yaml)
}

/// Every schema violation in `text`, in file order; empty when the text is not YAML or
/// satisfies the schema (serde's own error then stands alone).
pub fn schema_violations<T: Model>(path: &Path, text: &str, locator: &Locator) -> Vec<Diagnostic> {
    let Some(yaml) = merged(text) else {
        return Vec::new();
    };
    let Ok(instance) = serde_json::to_value(yaml) else {
        return Vec::new();
    };
    let (schema, validator) = T::checker();
    let mut out = Vec::new();
    for error in validator.iter_errors(&instance) {
        flatten(error, &mut |e| {
            out.push(diagnostic(path, &instance, schema, locator, e))
        });
    }
    out.sort_by_key(|d| (d.pos.line, d.pos.col));
    out.dedup_by(|a, b| a.pos == b.pos && a.message == b.message);
    out
}

/// When the schema's only complaints are unknown keys: the file's config without them, so
/// the checks that need a whole config — an upstream no route may name, a policy that does
/// not exist — report their findings in the same pass. None otherwise: taking out a value
/// of the wrong type or a part missing a field would make those checks report errors the
/// file does not have (a limit missing `per` is no unknown limit).
pub fn repaired<T: Model>(text: &str) -> Option<T> {
    let mut instance = serde_json::to_value(merged(text)?).ok()?;
    let (_, validator) = T::checker();
    let mut cuts: Vec<(String, String)> = Vec::new();
    let mut other = false;
    for error in validator.iter_errors(&instance) {
        flatten(error, &mut |e| match &e.kind {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let at = e.instance_path.as_str().to_string();
                cuts.extend(unexpected.iter().map(|k| (at.clone(), k.clone())));
            }
            _ => other = true,
        });
    }
    if other || cuts.is_empty() {
        return None;
    }
    for (at, key) in cuts {
        if let Some(Value::Object(map)) = instance.pointer_mut(&at) {
            map.remove(&key);
        }
    }
    serde_json::from_value(instance).ok()
}

/// An `anyOf` (how an optional section is written) says only that no branch matched: its
/// errors are those of the branch the value was meant for, the one that is not `null`.
fn flatten<'a>(error: ValidationError<'a>, out: &mut dyn FnMut(ValidationError<'a>)) {
    match error.kind {
        ValidationErrorKind::AnyOf { context } => {
            let meant = context.into_iter().find(|branch| {
                !branch.iter().any(|e| {
                    matches!(&e.kind, ValidationErrorKind::Type { kind: TypeKind::Single(t) }
                        if t.to_string() == "null")
                })
            });
            for e in meant.into_iter().flatten() {
                flatten(e, out);
            }
        }
        // A policy's kinds (`type:`): the branch meant is the one whose `type` fits.
        ValidationErrorKind::OneOfNotValid { context } => {
            let at = error.instance_path.as_str().to_string();
            let tag = format!("{at}/type");
            let meant: Vec<Vec<ValidationError<'a>>> = context
                .into_iter()
                .filter(|branch| {
                    !branch.iter().any(|e| match &e.kind {
                        ValidationErrorKind::Constant { .. } => e.instance_path.as_str() == tag,
                        ValidationErrorKind::Required { property } => {
                            e.instance_path.as_str() == at && property == "type"
                        }
                        _ => false,
                    })
                })
                .collect();
            // No kind fits when the `type` itself is wrong, which serde reports by name.
            if let Ok([branch]) = <[_; 1]>::try_from(meant) {
                branch.into_iter().for_each(|e| flatten(e, out));
            }
        }
        _ => out(error),
    }
}

/// `/routes/0/match` → `routes[0].match`, the Locator's form (arrays told by the instance).
fn dotted(instance: &Value, pointer: &str) -> String {
    let mut path = String::new();
    let mut node = Some(instance);
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        match node {
            Some(Value::Array(items)) => {
                path.push_str(&format!("[{segment}]"));
                node = segment.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            _ => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&segment);
                node = node.and_then(|n| n.get(&segment));
            }
        }
    }
    path
}

/// The schema node a keyword location points into, following `$ref`s.
fn schema_node<'s>(schema: &'s Value, keyword_path: &str) -> Option<&'s Value> {
    let mut node = schema;
    for segment in keyword_path.split('/').skip(1) {
        node = if segment == "$ref" {
            let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
            schema.pointer(target)?
        } else if let Value::Array(items) = node {
            items.get(segment.parse::<usize>().ok()?)?
        } else {
            node.get(segment)?
        };
    }
    Some(node)
}

fn diagnostic(
    file: &Path,
    instance: &Value,
    schema: &Value,
    locator: &Locator,
    e: ValidationError<'_>,
) -> Diagnostic {
    let at = dotted(instance, e.instance_path.as_str());
    let reference = "docs/book/src/reference/config.md lists every key";
    let (path, message, help) = match &e.kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let key = unexpected.first().cloned().unwrap_or_default();
            // The keyword location ends in `additionalProperties`; its object lists the keys.
            let keyword = e.schema_path.as_str();
            let object = keyword.strip_suffix("/additionalProperties").unwrap_or(keyword);
            let known = schema_node(schema, object)
                .and_then(|o| o.get("properties")?.as_object())
                .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
                .unwrap_or_default();
            let help = match closest(&key, known.iter().copied()) {
                Some(near) => format!("did you mean `{near}`? ({reference})"),
                None => format!("check the spelling: {reference}"),
            };
            let message = format!("unknown field `{key}`, expected one of {}", known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "));
            let path = if at.is_empty() { key } else { format!("{at}.{key}") };
            (path, message, help)
        }
        ValidationErrorKind::Required { property } => (
            at,
            format!("missing field {property}"),
            "add the field; docs/book/src/reference/config.md lists every key"
                .to_string(),
        ),
        ValidationErrorKind::Pattern { pattern } if pattern.contains("(ms|s|m|h|d)") => (
            at,
            format!("{} is not a duration", e.instance),
            "durations are whole numbers with ms, s, m, h or d, joined by single spaces: 250ms, 2s, 1m 30s".to_string(),
        ),
        ValidationErrorKind::Pattern { .. } => {
            // The key's description lists the forms it takes (for a list: the list's).
            let keyword = e.schema_path.as_str();
            let key = keyword.strip_suffix("/pattern").unwrap_or(keyword);
            let described = [key, key.strip_suffix("/items").unwrap_or(key)]
                .into_iter()
                .find_map(|k| schema_node(schema, k)?.get("description")?.as_str());
            let help = match described {
                Some(forms) => format!("accepted: {}", forms.replace('\n', " ")),
                None => reference.to_string(),
            };
            (at, format!("{} is not an accepted value", e.instance), help)
        }
        ValidationErrorKind::Type { .. } => (
            at,
            e.to_string(),
            "quote strings, write numbers without quotes, durations like 250ms, 2s or 1m 30s, and sizes like 64KiB or 10MiB".to_string(),
        ),
        _ => (at, e.to_string(), reference.to_string()),
    };
    let pos = locator.find(&path);
    let message = match path.is_empty() {
        true => message,
        false => format!("{path}: {message}"),
    };
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        pos,
        message,
        help: Some(help),
    }
}
