//! Loading a config: gateway.yaml, or a directory of files merged into one; env
//! expansion, YAML → file model, with every error located.

mod all_errors;
pub mod env;
pub mod files;
pub mod model;

pub use crate::diag::{ConfigError, Diagnostic, Severity};
pub use all_errors::Model;
pub use files::Parsed;
pub use model::{RawConfig, RawPart};

use crate::diag::{Locator, Places, Pos};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A parsed config, ready to be checked and compiled: one file, or a directory's files
/// merged (names and routes of every file in one file model).
pub struct Source {
    /// What `-c` named: a file or a directory.
    pub path: PathBuf,
    pub raw: Arc<RawConfig>,
    /// Where each config path was written.
    pub places: Places,
    /// Short hex digest of the expanded texts; identifies the active config.
    pub hash: String,
    /// The base file (listeners, server settings) as parsed.
    pub base: Arc<Parsed<RawConfig>>,
    /// The other files, in route order, as parsed.
    pub parts: Vec<Arc<Parsed<RawPart>>>,
}

impl Source {
    /// Reads and parses the config at `path` (a file or a directory) with the process
    /// environment; a file that does not parse refuses the whole config.
    pub fn load(path: &Path) -> Result<Source, ConfigError> {
        let read = files::read(path, &Default::default())?;
        let mut errors = Vec::new();
        let mut parts = Vec::new();
        for (_, part) in read.parts {
            match part {
                Ok(part) => parts.push(part),
                Err(e) => errors.extend(e.0),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        files::assemble(path, read.base, parts)
    }

    /// A config that is one text (tests and tools); `include` is not followed.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Source, ConfigError> {
        let base = parse_text::<RawConfig>(path, text, env)?;
        files::assemble(path, Arc::new(base), Vec::new())
    }

    /// When the file at `path` does not parse: its config with the parts the schema
    /// refuses taken out, for the checks that need a whole config (see
    /// [`all_errors::repaired`]). None for a directory.
    pub fn repaired(path: &Path) -> Option<Source> {
        let text = std::fs::read_to_string(path).ok()?;
        let text = env::expand(&text, |name| std::env::var(name).ok()).ok()?;
        let raw = all_errors::repaired::<RawConfig>(&text)?;
        let base = Parsed {
            path: path.to_path_buf(),
            locator: Arc::new(Locator::new(&text)),
            raw,
            hash: String::new(),
        };
        files::assemble(path, Arc::new(base), Vec::new()).ok()
    }
}

/// Which environment variables a file may read as `${VAR}`: the base file any, a team
/// file only those the base lists in `team_env` (a team must not read the gateway's
/// secrets into an answer).
#[derive(Clone, Copy)]
pub enum EnvAccess<'a> {
    All,
    Only(&'a [String]),
}

impl EnvAccess<'_> {
    fn get(&self, name: &str) -> Option<String> {
        match self {
            EnvAccess::Only(names) if !names.iter().any(|n| n == name) => None,
            _ => std::env::var(name).ok(),
        }
    }

    fn refuses(&self, name: &str) -> bool {
        matches!(self, EnvAccess::Only(names) if !names.iter().any(|n| n == name))
    }
}

/// Reads and parses one file of a config with the environment `access` allows. When its
/// expanded text is that of `known`, `known` is the answer: a reload parses only what
/// changed.
pub fn parse_file<T: Model>(
    path: &Path,
    known: Option<&Arc<Parsed<T>>>,
    access: EnvAccess,
) -> Result<Arc<Parsed<T>>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let help = match e.kind() {
            std::io::ErrorKind::InvalidData => "save the file as UTF-8 text",
            _ => "check the path (`-c`, PORTICO_CONFIG) and that it is readable",
        };
        single(
            path,
            Pos { line: 1, col: 1 },
            format!("cannot read config: {e}"),
            Some(help.into()),
        )
    })?;
    let env = |name: &str| access.get(name);
    match env::expand(&text, env) {
        Ok(expanded) => match known.filter(|k| k.hash == digest(&expanded)) {
            Some(known) => Ok(known.clone()),
            None => parse_expanded(path, expanded).map(Arc::new),
        },
        Err(unset) => Err(unset_errors::<T>(path, &text, &env, unset, access)),
    }
}

/// Short hex digest of a file's expanded text.
fn digest(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

fn parse_text<T: Model>(
    path: &Path,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed<T>, ConfigError> {
    match env::expand(text, &env) {
        Ok(expanded) => parse_expanded(path, expanded),
        Err(unset) => Err(unset_errors::<T>(path, text, &env, unset, EnvAccess::All)),
    }
}

/// Parses a file whose `${VAR}` references are already expanded.
fn parse_expanded<T: Model>(path: &Path, text: String) -> Result<Parsed<T>, ConfigError> {
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
    let raw = deserialize::<T>(path, &text, &locator)
        .map_err(|first| every_error::<T>(first, path, &text, &locator))?;
    let hash = digest(&text);
    Ok(Parsed {
        path: path.to_path_buf(),
        locator: Arc::new(locator),
        raw,
        hash,
    })
}

/// serde's reading of the text. With merge keys it reads the merged tree, which has no
/// positions: its error is located by the path serde was at.
fn deserialize<T: Model>(path: &Path, text: &str, locator: &Locator) -> Result<T, ConfigError> {
    let merged = match locator.needs_merge {
        true => all_errors::merged(text),
        false => None,
    };
    let Some(tree) = merged else {
        return serde_yaml::from_str(text).map_err(|e| yaml_error(path, text, &e));
    };
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let message = e.inner().to_string();
        let mut at = e.path().to_string();
        if let Some((_, rest)) = message.split_once("unknown field `") {
            let key = rest.split('`').next().unwrap_or_default();
            at = if at == "." {
                key.to_string()
            } else {
                format!("{at}.{key}")
            };
        }
        let help = yaml_help(&message);
        single(path, locator.find(&at), message, help)
    })
}

/// Every unset `${VAR}`, and what else is wrong with the file: it is still checked with
/// unset variables read as empty (what that breaks on their lines is left to their errors).
fn unset_errors<T: Model>(
    path: &Path,
    text: &str,
    env: &impl Fn(&str) -> Option<String>,
    unset: Vec<env::UnsetVar>,
    access: EnvAccess,
) -> ConfigError {
    let unset: Vec<Diagnostic> = unset
        .into_iter()
        .map(|u| {
            let (message, help) = match access.refuses(&u.name) {
                true => (
                    format!(
                        "a team file may not read the environment variable `{}`",
                        u.name
                    ),
                    format!(
                        "list it in the base file's `team_env: [{}]`, or write the value here",
                        u.name
                    ),
                ),
                false => (
                    format!("environment variable `{}` is not set", u.name),
                    format!("export {0}=..., or give a default: ${{{0}:-value}}", u.name),
                ),
            };
            Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                pos: Pos {
                    line: u.line,
                    col: u.col,
                },
                message,
                help: Some(help),
            }
        })
        .collect();
    let lines: Vec<usize> = unset.iter().map(|d| d.pos.line).collect();
    let blank = |name: &str| Some(env(name).unwrap_or_default());
    let mut all = match env::expand(text, blank).map(|t| parse_expanded::<T>(path, t)) {
        Ok(Err(ConfigError(rest))) => rest,
        _ => Vec::new(),
    };
    all.retain(|d| !lines.contains(&d.pos.line));
    all.extend(unset);
    all.sort_by_key(|d| (d.pos.line, d.pos.col));
    ConfigError(all)
}

/// serde's first error, and every other the schema finds (serde's message wins on its line).
fn every_error<T: Model>(
    first: ConfigError,
    path: &Path,
    text: &str,
    locator: &Locator,
) -> ConfigError {
    let mut all = all_errors::schema_violations::<T>(path, text, locator);
    let lines: Vec<usize> = first.0.iter().map(|d| d.pos.line).collect();
    all.retain(|d| !lines.contains(&d.pos.line));
    all.extend(first.0);
    all.sort_by_key(|d| (d.pos.line, d.pos.col));
    ConfigError(all)
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
        let reference = "docs/book/src/reference/config.md lists every key";
        Some(match did_you_mean(message) {
            Some(near) => format!("{near} ({reference})"),
            None => format!("check the spelling: {reference}"),
        })
    } else if message.contains("missing field") {
        Some("add the field; docs/book/src/reference/config.md lists every key".into())
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
        Some("YAML nests by indentation (spaces), separates keys from values with `: `, and needs quotes around values with `: ` or a leading `{`, `[`, `*`, `&`, `!`, `%` or `@`".into())
    }
}

/// The JSON Schema of gateway.yaml, generated from the file model (`portico schema`).
/// `server.log_format` as written in a config file, read before logging starts (and before
/// the config is compiled); None when the file or the key cannot be read.
pub fn peek_log_format(path: &Path) -> Option<crate::telemetry::LogFormat> {
    let base = match path.is_dir() {
        true => files::base_of(path).ok()?,
        false => path.to_path_buf(),
    };
    let text = std::fs::read_to_string(base).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    serde_yaml::from_value(doc.get("server")?.get("log_format")?.clone()).ok()
}

/// With `team_file`, the schema of a config directory's other files.
pub fn json_schema(team_file: bool) -> String {
    let mut schema = match team_file {
        true => schemars::schema_for!(RawPart),
        false => schemars::schema_for!(RawConfig),
    };
    let title = match team_file {
        true => "Portico team file (a config directory's file beside gateway.yaml)",
        false => "Portico gateway.yaml",
    };
    schema.insert("title".into(), title.into());
    // Top-level `x-` keys hold shared YAML anchors; they are not read as config.
    schema.insert(
        "patternProperties".into(),
        serde_json::json!({"^x-": {"description": "Ignored: a place for YAML anchors shared with `<<: *name`."}}),
    );
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

    #[test]
    fn every_problem_is_reported_in_one_pass() {
        let text = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nserver:\n  threads: two\n  grace_period: 5 seconds\nupstreams:\n  u: { targets: [127.0.0.1:9], balanse: random }\nroutes:\n  - name: a\n    match: { pathx: /a }\n    upstream: u\n";
        let err = parse(text).err().unwrap();
        let found: Vec<(usize, &str, Option<&str>)> = err
            .0
            .iter()
            .map(|d| (d.pos.line, d.message.as_str(), d.help.as_deref()))
            .collect();
        assert_eq!(found.len(), 4, "{err}");
        assert_eq!(found[0].0, 4);
        assert!(found[0].1.contains("invalid type: string \"two\""), "{err}");
        assert_eq!(
            (found[1].0, found[1].1),
            (5, "server.grace_period: \"5 seconds\" is not a duration")
        );
        assert_eq!(found[2].0, 7);
        assert!(
            found[2]
                .1
                .starts_with("upstreams.u.balanse: unknown field `balanse`"),
            "{err}"
        );
        assert!(
            found[2].2.unwrap().starts_with("did you mean `balance`?"),
            "{err}"
        );
        assert_eq!(found[3].0, 10);
        assert!(
            found[3].2.unwrap().starts_with("did you mean `path`?"),
            "{err}"
        );
        assert!(
            err.0.iter().all(|d| d.help.is_some()),
            "every error has a help line"
        );
    }

    #[test]
    fn a_value_outside_its_forms_names_the_forms() {
        let text = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nupstreams:\n  u: { targets: [127.0.0.1:9], balance: robin }\nauth:\n  a: { algorithms: [none], secret_env: X }\nroutes:\n  - { name: r, match: { pathx: /r }, upstream: u }\n";
        // serde stops at the unknown key; the schema finds the values outside their forms.
        let err = parse(text).err().unwrap();
        let found: Vec<(usize, &str, &str)> = err
            .0
            .iter()
            .map(|d| (d.pos.line, d.message.as_str(), d.help.as_deref().unwrap()))
            .collect();
        assert_eq!(found.len(), 3, "{err}");
        assert_eq!(
            (found[0].0, found[0].1),
            (4, "upstreams.u.balance: \"robin\" is not an accepted value")
        );
        assert!(
            found[0]
                .2
                .starts_with("accepted: round_robin (default), random"),
            "{err}"
        );
        assert_eq!(found[1].0, 6);
        assert!(found[1].2.contains("`none` never is"), "{err}");
    }

    #[test]
    fn an_unset_variable_does_not_hide_the_other_problems() {
        let text = "version: 1\nlisten: { proxy: \"${PROXY}\", admin: 127.0.0.1:2 }\nroutes:\n  - { name: a, match: { pathx: /a }, respond: { text: x } }\n";
        let err = parse(text).err().unwrap();
        let lines: Vec<usize> = err.0.iter().map(|d| d.pos.line).collect();
        assert_eq!(lines, vec![2, 4], "{err}");
        assert!(err.0[0].message.contains("`PROXY` is not set"), "{err}");
        assert!(err.0[1].message.contains("unknown field `pathx`"), "{err}");
    }
}
