//! The config reference, generated from the JSON Schema the file model derives (so it cannot
//! drift from the code): every key, with its type, default and description, as Markdown.
//! `portico reference` writes it into docs/reference/; a test fails when the committed page
//! is stale or a key has no description.

use serde_json::Value;
use std::fmt::Write;

/// One documented key.
#[derive(Debug, PartialEq)]
pub struct Key {
    /// `routes[].match.path_prefix`, `upstreams.NAME.targets`.
    pub path: String,
    pub kind: String,
    pub default: Option<String>,
    pub description: String,
}

/// Every key of a schema (`portico schema`, or `--team-file`'s), in file order.
pub fn keys(schema: &Value) -> Vec<Key> {
    let mut out = Vec::new();
    walk(schema, schema, "", &mut out, 0);
    out
}

/// Follows `$ref`s into `$defs`.
fn resolve<'s>(root: &'s Value, node: &'s Value) -> &'s Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .map_or(node, |target| resolve(root, target)),
        None => node,
    }
}

/// What the value of a property is, in words: `string`, `list of string`, `Duration`.
fn kind(root: &Value, node: &Value) -> String {
    if let Some(r) = node.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        let target = resolve(root, node);
        return match target.get("properties") {
            Some(_) => "object".into(),
            None => name.trim_start_matches("Raw").to_string(),
        };
    }
    if let Some(any) = node.get("anyOf").and_then(Value::as_array) {
        let kinds: Vec<String> = any
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .map(|v| kind(root, v))
            .collect();
        return kinds.join(" or ");
    }
    match node.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let items = node.get("items").map_or("value".into(), |i| kind(root, i));
            format!("list of {items}")
        }
        Some(Value::String(t))
            if t == "object"
                && node
                    .get("additionalProperties")
                    .is_some_and(Value::is_object) =>
        {
            let values = kind(root, &node["additionalProperties"]);
            format!("map of {values}")
        }
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ if node.get("oneOf").is_some() => "one of the kinds below".into(),
        _ => "value".into(),
    }
}

/// The object whose keys a property holds, and how its path continues: a `$ref` object
/// (`.`), a map's values (`.NAME.`), a list's items (`[].`), an optional one (`anyOf`).
fn children<'s>(root: &'s Value, node: &'s Value) -> Option<(&'s Value, &'static str)> {
    let target = resolve(root, node);
    if target.get("properties").is_some() || target.get("oneOf").is_some() {
        return Some((target, "."));
    }
    if let Some(values) = target.get("additionalProperties").filter(|v| v.is_object()) {
        return children(root, values).map(|(t, _)| (t, ".NAME."));
    }
    if let Some(items) = target.get("items") {
        return children(root, items).map(|(t, _)| (t, "[]."));
    }
    target
        .get("anyOf")
        .and_then(Value::as_array)
        .and_then(|any| any.iter().find_map(|v| children(root, v)))
}

fn walk(root: &Value, object: &Value, prefix: &str, out: &mut Vec<Key>, depth: usize) {
    if depth > 12 {
        return;
    }
    if let Some(variants) = object.get("oneOf").and_then(Value::as_array) {
        for v in variants {
            walk(root, v, prefix, out, depth + 1);
        }
        return;
    }
    let Some(props) = object.get("properties").and_then(Value::as_object) else {
        return;
    };
    let variant = object
        .pointer("/properties/type/const")
        .and_then(Value::as_str)
        .map(|t| format!(" (type: {t})"))
        .unwrap_or_default();
    for (name, node) in props {
        let path = format!("{prefix}{name}");
        let description = node
            .get("description")
            .or_else(|| resolve(root, node).get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('\n', " ");
        let default = node
            .get("default")
            .filter(|d| match d {
                Value::Null => false,
                Value::Object(m) => !m.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            })
            .map(Value::to_string);
        out.push(Key {
            path: format!("{path}{variant}"),
            kind: kind(root, node),
            default,
            description,
        });
        if let Some((child, join)) = children(root, node) {
            walk(
                root,
                child,
                &format!("{path}{}", join.trim_end_matches('.').to_string() + "."),
                out,
                depth + 1,
            );
        }
    }
}

/// The reference page of a schema.
pub fn markdown(title: &str, intro: &str, schema: &Value) -> String {
    let mut page =
        format!("# {title}\n\n{intro}\n\n| key | type | default | meaning |\n|---|---|---|---|\n");
    for k in keys(schema) {
        let cell = |s: &str| s.replace('|', "\\|");
        let _ = writeln!(
            page,
            "| `{}` | {} | {} | {} |",
            k.path,
            cell(&k.kind),
            k.default
                .as_deref()
                .map_or(String::new(), |d| format!("`{}`", cell(d))),
            cell(&k.description)
        );
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_maps_lists_and_kinds_have_paths() {
        let schema: Value = serde_json::from_str(&crate::config::json_schema(false)).unwrap();
        let keys = keys(&schema);
        let path = |p: &str| {
            keys.iter()
                .find(|k| k.path == p)
                .unwrap_or_else(|| panic!("{p}"))
        };
        assert_eq!(path("routes[].match.path_prefix").kind, "string");
        assert!(path("upstreams.NAME.targets").kind.starts_with("list of"));
        assert!(keys
            .iter()
            .any(|k| k.path == "auth.NAME.keys_file (type: api_key)"));
    }
}
