//! Loading gateway.yaml: env expansion, YAML → file model, with every error located.

pub mod env;
pub mod model;

pub use crate::diag::{ConfigError, Diagnostic, Severity};
pub use model::RawConfig;

use crate::diag::{Locator, Pos};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A parsed config file, ready to be checked and compiled.
pub struct Source {
    pub path: PathBuf,
    pub raw: RawConfig,
    pub locator: Locator,
    /// Short hex digest of the expanded text; identifies the active config.
    pub hash: String,
}

impl Source {
    /// Reads and parses `path` with the process environment.
    pub fn load(path: &Path) -> Result<Source, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            single(
                path,
                Pos { line: 1, col: 1 },
                format!("cannot read config: {e}"),
                None,
            )
        })?;
        Source::parse(path, &text, |name| std::env::var(name).ok())
    }

    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Source, ConfigError> {
        let text = env::expand(text, env).map_err(|unset| {
            let diags = unset.into_iter().map(|u| Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                pos: Pos {
                    line: u.line,
                    col: u.col,
                },
                message: format!("environment variable `{}` is not set", u.name),
                help: Some(format!(
                    "export {0}=..., or give a default: ${{{0}:-value}}",
                    u.name
                )),
            });
            ConfigError(diags.collect())
        })?;
        let locator = Locator::new(&text);
        if !locator.duplicates.is_empty() {
            let diags = locator.duplicates.iter().map(|(key, pos, first)| Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                pos: *pos,
                message: format!("duplicate key `{key}`"),
                help: Some(format!("first at line {}, column {}; each key may appear once in a mapping (YAML would silently keep only one), so merge or rename them", first.line, first.col)),
            });
            return Err(ConfigError(diags.collect()));
        }
        let raw: RawConfig =
            serde_yaml::from_str(&text).map_err(|e| yaml_error(path, &text, &e))?;
        let hash = hex::encode(&Sha256::digest(text.as_bytes())[..8]);
        Ok(Source {
            path: path.to_path_buf(),
            locator,
            raw,
            hash,
        })
    }
}

fn single(path: &Path, pos: Pos, message: String, help: Option<String>) -> ConfigError {
    ConfigError(vec![Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        pos,
        message,
        help,
    }])
}

fn yaml_error(path: &Path, text: &str, e: &serde_yaml::Error) -> ConfigError {
    let pos = e
        .location()
        .map(|l| Pos {
            line: l.line(),
            col: l.column(),
        })
        .unwrap_or(Pos { line: 1, col: 1 });
    let full = e.to_string();
    let message = match full.find(" at line ") {
        Some(cut) => full[..cut].to_string(),
        None => full,
    };
    let indented_by_tab = text
        .lines()
        .nth(pos.line.saturating_sub(1))
        .is_some_and(|l| l.trim_start_matches(' ').starts_with('\t'));
    if indented_by_tab {
        let message = "a tab is used for indentation".to_string();
        let help = Some("YAML indents with spaces only: replace the tab with spaces".into());
        return single(path, pos, message, help);
    }
    let help = yaml_help(&message);
    single(path, pos, message, help)
}

/// "did you mean `upstream`?" for serde's `unknown field `upstrem`, expected one of ...`.
fn did_you_mean(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates = expected.split('`').skip(1).step_by(2);
    let near = crate::diag::closest(field, candidates)?;
    Some(format!("did you mean `{near}`?"))
}

/// Hints for the serde messages users meet most.
fn yaml_help(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        let reference = "the config reference in README.md lists every key";
        Some(match did_you_mean(message) {
            Some(near) => format!("{near} ({reference})"),
            None => format!("check the spelling: {reference}"),
        })
    } else if message.contains("missing field") {
        Some(
            "add the field; the config reference in README.md lists what each section needs".into(),
        )
    } else if message.contains("invalid type") {
        Some(
            "quote strings, write numbers without quotes, and durations like 500ms, 2s or 1m"
                .into(),
        )
    } else if message.contains("duplicate") {
        Some("each key may appear once in a mapping; remove or rename one".into())
    } else if message.contains("time unit") || message.contains("duration") {
        Some("durations look like 250ms, 2s, 1m or 1h 30m".into())
    } else {
        None
    }
}

/// The JSON Schema of gateway.yaml, generated from the file model (`portico schema`).
/// `server.log_format` as written in a config file, read before logging starts (and before
/// the config is compiled); None when the file or the key cannot be read.
pub fn peek_log_format(path: &Path) -> Option<crate::telemetry::LogFormat> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    serde_yaml::from_value(doc.get("server")?.get("log_format")?.clone()).ok()
}

pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(RawConfig);
    schema.insert("title".into(), "Portico gateway.yaml".into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Source, ConfigError> {
        Source::parse(Path::new("g.yaml"), text, |_| None)
    }

    #[test]
    fn unknown_field_is_located() {
        let err =
            parse("version: 1\nlisten:\n  proxy: 127.0.0.1:1\n  admin: 127.0.0.1:2\n  extra: 3\n")
                .err()
                .unwrap();
        let d = &err.0[0];
        assert_eq!((d.pos.line, d.pos.col), (5, 3), "{d}");
        assert!(d.message.contains("unknown field `extra`"), "{d}");
    }
}
