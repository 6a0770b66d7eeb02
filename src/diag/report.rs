//! Diagnostics for machines: `check --format json` (one object) and `--format sarif` (SARIF
//! 2.1.0, which CI systems such as GitHub code scanning annotate pull requests with).

use super::{Diagnostic, Severity};
use serde_json::{json, Value};
use std::path::Path;

fn level(d: &Diagnostic) -> &'static str {
    match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// `{"file", "ok", "errors", "warnings", "diagnostics": [{severity, line, column, message, help}]}`.
pub fn json(file: &Path, ok: bool, diags: &[Diagnostic]) -> Value {
    let count = |s: Severity| diags.iter().filter(|d| d.severity == s).count();
    let items: Vec<Value> = diags
        .iter()
        .map(|d| {
            json!({
                "severity": level(d),
                "file": d.file.display().to_string(),
                "line": d.pos.line,
                "column": d.pos.col,
                "message": d.message,
                "help": d.help,
            })
        })
        .collect();
    json!({
        "file": file.display().to_string(),
        "ok": ok,
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warning),
        "diagnostics": items,
    })
}

/// One SARIF run whose results are the diagnostics, located by file, line and column.
pub fn sarif(diags: &[Diagnostic]) -> Value {
    let results: Vec<Value> = diags
        .iter()
        .map(|d| {
            let text = match &d.help {
                Some(help) => format!("{} (help: {help})", d.message),
                None => d.message.clone(),
            };
            json!({
                "ruleId": format!("portico/{}", level(d)),
                "level": level(d),
                "message": { "text": text },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": d.file.display().to_string() },
                        "region": { "startLine": d.pos.line, "startColumn": d.pos.col }
                    }
                }]
            })
        })
        .collect();
    json!({
        "version": "2.1.0",
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "runs": [{
            "tool": { "driver": {
                "name": "portico",
                "version": crate::VERSION,
                "rules": [
                    { "id": "portico/error", "shortDescription": { "text": "The config is refused" } },
                    { "id": "portico/warning", "shortDescription": { "text": "The config is accepted, but probably not as meant" } }
                ]
            }},
            "results": results
        }]
    })
}
