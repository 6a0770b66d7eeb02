//! Config problems with their place in the file (`file:line:col: error: what (help: how)`),
//! and the files a config refers to. The bottom layer of config checking: every compile
//! step (the config's own and each policy's) reports through [`Diags`].

pub mod locate;
pub mod report;

pub use locate::{Locator, Pos};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    pub pos: Pos,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {level}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.col,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl Diagnostic {
    /// The diagnostic on one line, for a log record (`… (help: …)`).
    pub fn one_line(&self) -> String {
        let text = self.to_string();
        match text.split_once("\n  help: ") {
            Some((what, help)) => format!("{what} (help: {help})"),
            None => text,
        }
    }
}

/// A config that was refused, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.0))]
pub struct ConfigError(pub Vec<Diagnostic>);

impl ConfigError {
    /// Every problem on one line, `; ` between them, for a log record.
    pub fn one_line(&self) -> String {
        let lines: Vec<String> = self.0.iter().map(Diagnostic::one_line).collect();
        lines.join("; ")
    }
}

fn render(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Collects problems during checking/compilation, locating each by its config path.
/// Help for a header name that does not parse.
pub const HEADER_NAME_HELP: &str =
    "a header name is letters, digits and `-` (any of !#$%&'*+.^_`|~ too), without spaces or `:`";

pub struct Diags<'a> {
    places: &'a Places,
    pub items: Vec<Diagnostic>,
}

/// Where each part of a config was written. A config is one file, or a directory's files
/// merged into one: a config path (`routes[12].auth`, `upstreams.users`) is looked up in
/// the file that defines it, at its place there.
#[derive(Debug, Default)]
pub struct Places {
    files: Vec<(PathBuf, std::sync::Arc<Locator>)>,
    routes: Vec<RouteOrigin>,
    /// `section.name` → the file that defines it (named upstreams and policies).
    named: std::collections::HashMap<String, usize>,
}

/// Where a merged route came from.
#[derive(Debug, Clone)]
pub struct RouteOrigin {
    /// The index of its file in [`Places`].
    pub file: usize,
    /// Its index among that file's routes.
    pub index: usize,
    /// The keys its file's `defaults` gave it (located at `defaults.KEY`).
    pub defaulted: Vec<&'static str>,
}

impl Places {
    /// The places of a config that is one file.
    pub fn one(path: &Path, locator: Locator) -> Places {
        let mut places = Places::default();
        places.add_file(path, std::sync::Arc::new(locator));
        places
    }

    /// Adds a file (the first is the base); returns its index.
    pub fn add_file(&mut self, path: &Path, locator: std::sync::Arc<Locator>) -> usize {
        self.files.push((path.to_path_buf(), locator));
        self.files.len() - 1
    }

    pub fn add_route(&mut self, origin: RouteOrigin) {
        self.routes.push(origin);
    }

    pub fn add_named(&mut self, section: &str, name: &str, file: usize) {
        self.named.insert(format!("{section}.{name}"), file);
    }

    /// The file and position of a config path; the base file's root when nothing matches.
    pub fn find(&self, path: &str) -> (&Path, Pos) {
        let (file, local) = self.local(path);
        let Some((name, locator)) = self.files.get(file) else {
            return (Path::new(""), Pos { line: 1, col: 1 });
        };
        (name, locator.find(&local))
    }

    /// `file:line:col` of a config path, to name another place in a message.
    pub fn describe(&self, path: &str) -> String {
        let (file, pos) = self.find(path);
        format!("{}:{}:{}", file.display(), pos.line, pos.col)
    }

    /// The file index and the path within that file.
    fn local(&self, path: &str) -> (usize, String) {
        if let Some((origin, tail)) = self.route_of(path) {
            let key = tail.trim_start_matches('.');
            let key = &key[..key.find(['.', '[']).unwrap_or(key.len())];
            if !key.is_empty() && origin.defaulted.contains(&key) {
                return (origin.file, format!("defaults{tail}"));
            }
            return (origin.file, format!("routes[{}]{tail}", origin.index));
        }
        // A name may hold `.` (`orders.v2`): the longest `section.name` defined wins.
        let ends = path.match_indices(['.', '[']).map(|(i, _)| i).skip(1);
        let file = ends
            .chain(std::iter::once(path.len()))
            .filter_map(|end| self.named.get(&path[..end]))
            .last();
        (file.copied().unwrap_or(0), path.to_string())
    }

    /// Whether a config path was written in a team file (not the base).
    pub fn in_team_file(&self, path: &str) -> bool {
        self.local(path).0 != 0
    }

    fn route_of<'p>(&self, path: &'p str) -> Option<(&RouteOrigin, &'p str)> {
        let rest = path.strip_prefix("routes[")?;
        let (index, tail) = rest.split_once(']')?;
        Some((self.routes.get(index.parse::<usize>().ok()?)?, tail))
    }
}

impl<'a> Diags<'a> {
    pub fn new(places: &'a Places) -> Self {
        Diags {
            places,
            items: Vec::new(),
        }
    }

    pub fn error(
        &mut self,
        path: &str,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.push(Severity::Error, path, message.into(), help.into());
    }

    pub fn warn(
        &mut self,
        path: &str,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.push(Severity::Warning, path, message.into(), help.into());
    }

    /// An error in a file the config refers to (a keys or htpasswd file), at its own line.
    pub fn error_in(
        &mut self,
        file: &Path,
        pos: Pos,
        message: impl Into<String>,
        help: impl Into<Option<String>>,
    ) {
        self.items.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            pos,
            message: message.into(),
            help: help.into(),
        });
    }

    /// `file:line:col` of a config path (e.g. to point at a first definition).
    pub fn place(&self, path: &str) -> String {
        self.places.describe(path)
    }

    /// Whether a config path was written in a team file (not the base).
    pub fn in_team_file(&self, path: &str) -> bool {
        self.places.in_team_file(path)
    }

    fn push(&mut self, severity: Severity, path: &str, message: String, help: Option<String>) {
        debug_assert!(
            help.is_some(),
            "a diagnostic without a help line: {message}"
        );
        let (file, pos) = self.places.find(path);
        self.items.push(Diagnostic {
            severity,
            file: file.to_path_buf(),
            pos,
            message,
            help,
        });
    }

    /// How many errors (not warnings) were reported so far.
    pub fn errors(&self) -> usize {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Files a config refers to (keys, JWKS, schemas): read once at compile time, and watched
/// so that changing one reloads the config.
pub struct Inputs {
    base: PathBuf,
    pub files: Vec<PathBuf>,
}

impl Inputs {
    pub fn new(config: &Path) -> Inputs {
        let base = config.parent().map(Path::to_path_buf).unwrap_or_default();
        Inputs {
            base,
            files: Vec::new(),
        }
    }

    /// The path `file` names (relative to the config's directory).
    pub fn path_of(&self, file: &str) -> PathBuf {
        self.base.join(file)
    }

    /// Reads `file` (relative to the config's directory), reporting failures at `at`. A
    /// team file may only name files inside that directory: it must not publish the
    /// gateway's other files (a schema is bundled into the OpenAPI document).
    pub fn read(&mut self, d: &mut Diags, at: &str, file: &str) -> Option<String> {
        let escapes = Path::new(file).components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if escapes && d.in_team_file(at) {
            d.error(
                at,
                format!("a team file may not name `{file}`, outside the config directory"),
                Some("name a file under the base file's directory (no `/` at the start, no `..`), or move this part to the base file".into()),
            );
            return None;
        }
        let path = self.base.join(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.files.push(path);
                Some(text)
            }
            Err(e) => {
                d.error(
                    at,
                    format!("cannot read `{}`: {e}", path.display()),
                    Some("paths are relative to the config file's directory".into()),
                );
                None
            }
        }
    }
}

/// A digest of the current contents of `files` (a missing file counts as empty).
pub fn inputs_digest(files: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    hex::encode(&h.finalize()[..8])
}

/// Parses a list of upper-case method names, reporting each invalid one at `at[i]`.
pub fn parse_methods(d: &mut Diags, at: &str, list: &[String]) -> Vec<http::Method> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
            let method = http::Method::from_bytes(text.as_bytes())
                .ok()
                .filter(|_| ok);
            if method.is_none() {
                d.error(
                    &format!("{at}[{i}]"),
                    format!("`{text}` is not an HTTP method"),
                    Some("write methods in upper case: GET, POST, PUT, PATCH, DELETE, ...".into()),
                );
            }
            method
        })
        .collect()
}

/// Parses a CIDR or a single IP, reporting a bad one at `at`.
pub fn cidr(d: &mut Diags, at: &str, text: &str) -> Option<ipnet::IpNet> {
    let parsed = text
        .parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
    if parsed.is_err() {
        d.error(
            at,
            format!("`{text}` is not an IP network"),
            Some("write a CIDR such as 10.0.0.0/8 or a single IP".into()),
        );
    }
    parsed.ok()
}

/// Resolves a route's reference to a named, compiled object; an unknown name is an error
/// listing the defined ones. (A defined name that failed to compile was reported already.)
/// The candidate a misspelt `name` most likely meant: the nearest by edit distance, if it
/// is near enough to be a typo (a third of the name's length, at least one edit).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

pub fn lookup<T: Clone>(
    d: &mut Diags,
    at: &str,
    kind: &str,
    name: &str,
    compiled: &std::collections::BTreeMap<String, T>,
    defined: &[&String],
) -> Option<T> {
    if let Some(found) = compiled.get(name) {
        return Some(found.clone());
    }
    if !defined.iter().any(|n| *n == name) {
        let names: Vec<&str> = defined.iter().map(|s| s.as_str()).collect();
        let list = names.join(", ");
        let help = match closest(name, names.iter().copied()) {
            Some(near) => format!("did you mean `{near}`? defined: {list}"),
            None if names.is_empty() => format!("no {kind} is defined"),
            None => format!("defined: {list}"),
        };
        d.error(at, format!("unknown {kind} `{name}`"), Some(help));
    }
    None
}

/// A URL as it may be shown (logs, `/config`, `/health`, errors): user info and query
/// replaced by `***`. The user info ends at the authority's *last* `@`, so a password that
/// contains `@` is hidden whole. The one place URLs are redacted.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?***"),
        None => tail.to_string(),
    };
    format!("{scheme}{host}{tail}")
}

#[cfg(test)]
mod tests {
    use super::{closest, redact_url};

    #[test]
    fn closest_names_only_a_near_miss() {
        let names = ["users", "messages", "billing"];
        assert_eq!(closest("user", names), Some("users"));
        assert_eq!(closest("mesages", names), Some("messages"));
        assert_eq!(closest("orders", names), None);
        assert_eq!(
            closest("upstrem", ["name", "upstream", "respond"]),
            Some("upstream")
        );
    }

    #[test]
    fn credentials_and_queries_are_hidden_whole() {
        assert_eq!(
            redact_url("redis://:p@ss@word@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(
            redact_url("https://idp.example/jwks?token=abc#x"),
            "https://idp.example/jwks?***"
        );
        assert_eq!(
            redact_url("https://u:pw@idp.example/a@b"),
            "https://***@idp.example/a@b"
        );
        assert_eq!(redact_url("http://plain:80/x"), "http://plain:80/x");
    }
}
