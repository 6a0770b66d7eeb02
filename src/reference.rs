//! The book's reference pages, generated from the code so they cannot drift from it: every
//! config key from the JSON Schema the file model derives, every command and flag from the
//! CLI's definition, every metric from the registry and every error code from
//! [`crate::errors::Code`]. `portico reference PAGE` prints one; a test fails when a
//! committed page is stale, and generating one fails when something has no description.

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

/// Escapes a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The reference page of a schema.
pub fn markdown(title: &str, intro: &str, schema: &Value) -> String {
    let mut page =
        format!("# {title}\n\n{intro}\n\n| key | type | default | meaning |\n|---|---|---|---|\n");
    for k in keys(schema) {
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

/// Every command and flag of the CLI; the commands or flags without a description are
/// the error.
pub fn cli(root: &clap::Command) -> Result<String, Vec<String>> {
    let mut page = String::from(
        "# CLI reference\n\nEvery command and flag of `portico`, generated by `portico reference cli` from the CLI's definition: a test fails when this page is stale or a command or flag has no description. `portico help COMMAND` prints the same.\n",
    );
    let mut missing = Vec::new();
    for (path, cmd) in commands(root, "portico") {
        if cmd.get_subcommands().next().is_some() {
            continue;
        }
        let about = cmd
            .get_long_about()
            .or(cmd.get_about())
            .map(|a| a.to_string());
        let Some(about) = about else {
            missing.push(path);
            continue;
        };
        let usage = cmd.clone().bin_name(&path).render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ");
        let _ = write!(page, "\n## `{path}`\n\n{about}\n\n```text\n{usage}\n```\n");
        let args: Vec<_> = cmd
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        if args.is_empty() {
            continue;
        }
        page.push_str("\n| argument | env | default | meaning |\n|---|---|---|---|\n");
        for arg in args {
            let name = argument_name(arg);
            let Some(help) = arg.get_long_help().or(arg.get_help()) else {
                missing.push(format!("{path} {name}"));
                continue;
            };
            let env = arg
                .get_env()
                .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
            let default: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = match default.is_empty() {
                true => String::new(),
                false => format!("`{}`", default.join(", ")),
            };
            let _ = writeln!(
                page,
                "| `{name}` | {env} | {default} | {} |",
                cell(&help.to_string())
            );
        }
    }
    missing.is_empty().then_some(page).ok_or(missing)
}

/// Every command under `cmd`, depth first, with its full name (`portico keys hash`).
fn commands<'c>(cmd: &'c clap::Command, path: &str) -> Vec<(String, &'c clap::Command)> {
    let mut all = vec![(path.to_string(), cmd)];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        all.extend(commands(sub, &format!("{path} {}", sub.get_name())));
    }
    all
}

/// `-c, --config <CONFIG>`, `--upgrade`, `<FILE>`.
fn argument_name(arg: &clap::Arg) -> String {
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
    if arg.is_positional() {
        return format!("<{value}>");
    }
    let mut name = match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => format!("-{s}, --{l}"),
        (Some(s), None) => format!("-{s}"),
        (None, Some(l)) => format!("--{l}"),
        (None, None) => arg.get_id().to_string(),
    };
    if arg.get_action().takes_values() {
        let _ = write!(name, " <{value}>");
    }
    name
}

/// Every metric the gateway exports; those without help text are the error.
pub fn metrics(catalog: &[crate::telemetry::MetricDoc]) -> Result<String, Vec<String>> {
    let mut page = String::from(
        "# Metrics reference\n\nEvery metric on the admin listener's `/metrics`, generated by `portico reference metrics` from the registry: a test fails when this page is stale or a metric has no help text. Label values are config names (routes, upstreams, targets, caches, files), never request data; a request no route matched is `route=\"none\"`. The process collector adds the standard `process_*` metrics (CPU, memory, open descriptors, threads), and every histogram has the `_bucket`, `_sum` and `_count` series.\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n",
    );
    let mut missing = Vec::new();
    let mut sorted: Vec<_> = catalog.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for m in sorted {
        if m.help.trim().is_empty() {
            missing.push(m.name.clone());
            continue;
        }
        let labels: Vec<_> = m.labels.iter().map(|l| format!("`{l}`")).collect();
        let _ = writeln!(
            page,
            "| `{}` | {} | {} | {} |",
            m.name,
            m.kind,
            labels.join(", "),
            cell(&m.help)
        );
    }
    missing.is_empty().then_some(page).ok_or(missing)
}

/// Every error code Portico answers with.
pub fn errors() -> String {
    let mut page = String::from(
        "# Error codes\n\nEvery `code` of the JSON errors Portico writes itself, generated by `portico reference errors` from the code's one list of them: a test fails when this page is stale. An error Portico writes looks like this, with the same id as the `X-Request-Id` header:\n\n```json\n{\"error\": {\"status\": 404, \"code\": \"route_not_found\", \"message\": \"no route matches this request\", \"request_id\": \"4f0c...\"}}\n```\n\nAn answer without this shape came from the upstream. `(admin)` marks the admin listener's codes. The [incident runbook](../operations/runbook.md) says what to do about each status.\n\n| code | status | meaning |\n|---|---|---|\n",
    );
    for code in crate::errors::Code::ALL {
        let _ = writeln!(
            page,
            "| `{}` | {} | {} |",
            code.as_str(),
            code.status(),
            cell(code.meaning())
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
