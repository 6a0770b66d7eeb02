//! A config's files. `-c` names one file, or a directory (a Kubernetes ConfigMap with a
//! key per team mounts as one): its base file (`gateway.yaml`, or the one file holding
//! `listen`) and every other `*.yaml` beside it, plus the files the base `include`s. They
//! are merged into one file model: names are global, routes are tried base first, then
//! file by file in name order, and each file's `defaults` fill its routes' gaps.

use super::model::{RawConfig, RawDefaults, RawPart, RawRoute};
use super::{parse_file, single, ConfigError, Diagnostic, EnvAccess, Severity, Source};
use crate::diag::{Locator, Places, Pos, RouteOrigin};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file of a config, parsed.
#[derive(Debug)]
pub struct Parsed<T> {
    pub path: PathBuf,
    pub raw: T,
    pub locator: Arc<Locator>,
    /// Short hex digest of the expanded text.
    pub hash: String,
}

/// A team file, parsed and shared between the configs that use this version of it.
pub type Part = Arc<Parsed<RawPart>>;

/// What a config's files are right now: the base parsed, and each other file parsed or
/// refused (a reload keeps a refused file's last good version).
pub struct Read {
    pub base: Arc<Parsed<RawConfig>>,
    pub parts: Vec<(PathBuf, Result<Part, ConfigError>)>,
}

/// The name `-c DIR` looks for first.
const BASE_NAME: &str = "gateway.yaml";

/// Reads every file of the config at `path`; a file whose text is that of its version in
/// `known` is not parsed again. Only the base refuses the whole read.
pub fn read(path: &Path, known: &BTreeMap<PathBuf, Part>) -> Result<Read, ConfigError> {
    let base = base_raw(path)?;
    let base_path = base.path.clone();
    let mut others = included(&base)?;
    if path.is_dir() {
        others.extend(yaml_files(path));
    }
    others.sort_by_key(|p| route_order_key(p, &base_path));
    // One file reached twice (a directory and an include, or two spellings of a path) is
    // read once, where it first comes.
    let mut seen = vec![canonical(&base_path)];
    others.retain(|p| {
        let c = canonical(p);
        let first = !seen.contains(&c);
        seen.push(c);
        first
    });
    let access = EnvAccess::Only(&base.raw.team_env);
    let parts = others
        .into_iter()
        .map(|p| {
            let parsed = parse_file::<RawPart>(&p, known.get(&p), access);
            (p, parsed)
        })
        .collect();
    Ok(Read { base, parts })
}

/// The directories whose `*.yaml` files belong to the config at `path` (for the watcher:
/// a new file there joins the config).
pub fn config_dirs(src: &Source) -> Vec<PathBuf> {
    let root = parent(&src.base.path);
    let included = src.base.raw.include.iter().map(|p| parent(&root.join(p)));
    let mut dirs: Vec<PathBuf> = included.collect();
    if src.path.is_dir() {
        dirs.push(src.path.clone());
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Files are ordered by their path relative to the base's directory.
fn route_order_key(p: &Path, base: &Path) -> PathBuf {
    p.strip_prefix(parent(base)).unwrap_or(p).to_path_buf()
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The base file of the config at `path` (a file, or a directory's base), parsed alone.
pub fn base_raw(path: &Path) -> Result<Arc<Parsed<RawConfig>>, ConfigError> {
    let base = match path.is_dir() {
        true => base_of(path)?,
        false => path.to_path_buf(),
    };
    parse_file::<RawConfig>(&base, None, EnvAccess::All)
}

/// The base file of a directory: `gateway.yaml`, or else the one file with `listen`.
pub fn base_of(dir: &Path) -> Result<PathBuf, ConfigError> {
    let named = dir.join(BASE_NAME);
    if named.is_file() {
        return Ok(named);
    }
    let with_listen: Vec<PathBuf> = yaml_files(dir)
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            text.lines().any(|l| l.starts_with("listen:"))
        })
        .collect();
    match with_listen.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(single(
            dir,
            Pos { line: 1, col: 1 },
            "no base file in the config directory".into(),
            Some(format!("name the file with `listen` and `server` `{BASE_NAME}`")),
        )),
        several => Err(single(
            dir,
            Pos { line: 1, col: 1 },
            format!(
                "{} files say `listen`: {}",
                several.len(),
                several
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(format!(
                "one base file holds the listeners: name it `{BASE_NAME}`, or remove `listen` from the others"
            )),
        )),
    }
}

/// The `*.yaml` and `*.yml` files of a directory (not hidden ones: a ConfigMap's `..data`).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_config_name(p) && p.is_file())
        .collect();
    files.sort();
    files
}

/// A name a config file may have: `*.yaml` or `*.yml`, not hidden.
pub fn is_config_name(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The files the base's `include` globs name (`*` and `?` in the file name).
fn included(base: &Parsed<RawConfig>) -> Result<Vec<PathBuf>, ConfigError> {
    let root = parent(&base.path);
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for (i, pattern) in base.raw.include.iter().enumerate() {
        let pattern_path = root.join(pattern);
        let (dir, name) = (parent(&pattern_path), pattern_path.file_name());
        let name = name.and_then(|n| n.to_str()).unwrap_or_default();
        if dir.to_string_lossy().contains(['*', '?']) || name.is_empty() {
            errors.push(Diagnostic {
                severity: Severity::Error,
                file: base.path.clone(),
                pos: base.locator.find(&format!("include[{i}]")),
                message: format!("`{pattern}`: only a file name may have wildcards"),
                help: Some("name a directory and a file pattern, e.g. `teams/*.yaml`".into()),
            });
            continue;
        }
        files.extend(yaml_files(&dir).into_iter().filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| wildcard(name, n))
        }));
        if !name.contains(['*', '?']) && !dir.join(name).is_file() {
            errors.push(Diagnostic {
                severity: Severity::Error,
                file: base.path.clone(),
                pos: base.locator.find(&format!("include[{i}]")),
                message: format!("`{pattern}` is not a file"),
                help: Some("paths in `include` are relative to the base file's directory".into()),
            });
        }
    }
    match errors.is_empty() {
        true => Ok(files),
        false => Err(ConfigError(errors)),
    }
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match, backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            (i, j) = (i + 1, j + 1);
        } else if i < p.len() && p[i] == '*' {
            (star, mark, i) = (Some(i), j, i + 1);
        } else if let Some(s) = star {
            (i, mark, j) = (s + 1, mark + 1, mark + 1);
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The sections whose entries are named (and whose names are global).
pub const NAMED_SECTIONS: [&str; 8] = [
    "upstreams",
    "rate_limits",
    "quotas",
    "auth",
    "cors",
    "ip_access",
    "caches",
    "compression",
];

/// Merges the base and the parts (in route order) into one config; a name defined twice
/// is refused, naming both places.
pub fn assemble(
    path: &Path,
    base: Arc<Parsed<RawConfig>>,
    parts: Vec<Arc<Parsed<RawPart>>>,
) -> Result<Source, ConfigError> {
    let mut raw = base.raw.clone();
    let mut places = Places::default();
    places.add_file(&base.path, base.locator.clone());
    let mut errors = Vec::new();
    let base_defaults = raw.defaults.clone();
    raw.routes = place_routes(&mut places, 0, &base.raw.routes, base_defaults.as_ref());
    for section in NAMED_SECTIONS {
        for name in names_in(&base.raw, section) {
            places.add_named(section, &name, 0);
        }
    }
    let mut digest = Sha256::new();
    digest.update(&base.hash);
    for part in &parts {
        let file = places.add_file(&part.path, part.locator.clone());
        let mut add = Merge {
            places: &mut places,
            errors: &mut errors,
            part,
            file,
        };
        let p = &part.raw;
        add.named("upstreams", &mut raw.upstreams, &p.upstreams);
        add.named("rate_limits", &mut raw.rate_limits, &p.rate_limits);
        add.named("quotas", &mut raw.quotas, &p.quotas);
        add.named("auth", &mut raw.auth, &p.auth);
        add.named("cors", &mut raw.cors, &p.cors);
        add.named("ip_access", &mut raw.ip_access, &p.ip_access);
        add.named("caches", &mut raw.caches, &p.caches);
        add.named("compression", &mut raw.compression, &p.compression);
        if p.version.is_some_and(|v| v != 1) {
            errors.push(at(
                part,
                "version",
                "unsupported config version".into(),
                "this Portico reads `version: 1`",
            ));
        }
        let routes = place_routes(&mut places, file, &p.routes, p.defaults.as_ref());
        raw.routes.extend(routes);
        let name = route_order_key(&part.path, &base.path);
        digest.update(name.as_os_str().as_encoded_bytes());
        digest.update(&part.hash);
    }
    reserved_names(&raw, &places, &mut errors);
    let all_defaults = std::iter::once((base.path.as_path(), &base.locator, raw.defaults.as_ref()))
        .chain(
            parts
                .iter()
                .map(|p| (p.path.as_path(), &p.locator, p.raw.defaults.as_ref())),
        );
    for (file, locator, defaults) in all_defaults {
        if let Some(defaults) = defaults {
            unknown_defaults(&raw, defaults, file, locator, &mut errors);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    let hash = match parts.is_empty() {
        true => base.hash.clone(),
        false => hex::encode(&digest.finalize()[..8]),
    };
    Ok(Source {
        path: path.to_path_buf(),
        raw: Arc::new(raw),
        places,
        hash,
        base,
        parts,
    })
}

/// A diagnostic at a config path of one part.
fn at(part: &Parsed<RawPart>, path: &str, message: String, help: &str) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: part.path.clone(),
        pos: part.locator.find(path),
        message,
        help: Some(help.into()),
    }
}

struct Merge<'a> {
    places: &'a mut Places,
    errors: &'a mut Vec<Diagnostic>,
    part: &'a Parsed<RawPart>,
    file: usize,
}

impl Merge<'_> {
    fn named<T: Clone>(
        &mut self,
        section: &str,
        into: &mut BTreeMap<String, T>,
        from: &BTreeMap<String, T>,
    ) {
        for (name, value) in from {
            let path = format!("{section}.{name}");
            if into.contains_key(name) {
                let first = self.places.describe(&path);
                let message = format!("`{name}` is defined twice in `{section}`");
                let help = format!("the first is at {first}; names are global across a config's files, so rename one");
                self.errors.push(at(self.part, &path, message, &help));
                continue;
            }
            into.insert(name.clone(), value.clone());
            self.places.add_named(section, name, self.file);
        }
    }
}

/// The names a base file defines in a section.
fn names_in(raw: &RawConfig, section: &str) -> Vec<String> {
    fn keys<T>(m: &BTreeMap<String, T>) -> Vec<String> {
        m.keys().cloned().collect()
    }
    match section {
        "upstreams" => keys(&raw.upstreams),
        "rate_limits" => keys(&raw.rate_limits),
        "quotas" => keys(&raw.quotas),
        "auth" => keys(&raw.auth),
        "cors" => keys(&raw.cors),
        "ip_access" => keys(&raw.ip_access),
        "caches" => keys(&raw.caches),
        "compression" => keys(&raw.compression),
        _ => Vec::new(),
    }
}

/// A default naming a policy that does not exist is refused even when no route takes it.
fn unknown_defaults(
    raw: &RawConfig,
    defaults: &RawDefaults,
    file: &Path,
    locator: &Locator,
    errors: &mut Vec<Diagnostic>,
) {
    let named = [
        ("auth", &defaults.auth, "auth"),
        ("cors", &defaults.cors, "cors"),
        ("rate_limit", &defaults.rate_limit, "rate_limits"),
        ("ip_access", &defaults.ip_access, "ip_access"),
        ("cache", &defaults.cache, "caches"),
        ("compression", &defaults.compression, "compression"),
    ];
    for (key, name, section) in named {
        let Some(name) = name.as_deref().filter(|n| *n != "none") else {
            continue;
        };
        if !names_in(raw, section).iter().any(|n| n == name) {
            errors.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                pos: locator.find(&format!("defaults.{key}")),
                message: format!("defaults: no `{section}` entry is named `{name}`"),
                help: Some(format!(
                    "define `{name}` under `{section}` (in any file), or fix the name"
                )),
            });
        }
    }
}

/// `none` opts a route out of a default: no policy may be named so.
fn reserved_names(raw: &RawConfig, places: &Places, errors: &mut Vec<Diagnostic>) {
    for section in NAMED_SECTIONS {
        if names_in(raw, section).iter().any(|n| n == "none") {
            let (file, pos) = places.find(&format!("{section}.none"));
            errors.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                pos,
                message: format!("`none` cannot name an entry of `{section}`"),
                help: Some(
                    "`none` is how a route opts out of its file's defaults: rename the entry"
                        .into(),
                ),
            });
        }
    }
}

/// A file's routes with its defaults applied, each placed in the file.
fn place_routes(
    places: &mut Places,
    file: usize,
    routes: &[RawRoute],
    defaults: Option<&RawDefaults>,
) -> Vec<RawRoute> {
    let empty = RawDefaults::default();
    let defaults = defaults.unwrap_or(&empty);
    routes
        .iter()
        .enumerate()
        .map(|(index, route)| {
            let mut route = route.clone();
            let defaulted = apply_defaults(&mut route, defaults);
            places.add_route(RouteOrigin {
                file,
                index,
                defaulted,
            });
            route
        })
        .collect()
}

/// Fills what the route does not say from `defaults`; `none` clears a policy. Returns
/// the keys that came from the defaults.
fn apply_defaults(route: &mut RawRoute, defaults: &RawDefaults) -> Vec<&'static str> {
    let mut defaulted = Vec::new();
    let policies = [
        ("auth", &mut route.auth, &defaults.auth),
        ("cors", &mut route.cors, &defaults.cors),
        ("rate_limit", &mut route.rate_limit, &defaults.rate_limit),
        ("ip_access", &mut route.ip_access, &defaults.ip_access),
        ("cache", &mut route.cache, &defaults.cache),
        ("compression", &mut route.compression, &defaults.compression),
    ];
    for (key, slot, default) in policies {
        match slot.as_deref() {
            Some("none") => *slot = None,
            Some(_) => {}
            None if default.is_some() => {
                slot.clone_from(default);
                defaulted.push(key);
            }
            None => {}
        }
    }
    if route.timeout.is_none() && defaults.timeout.is_some() {
        route.timeout = defaults.timeout;
        defaulted.push("timeout");
    }
    if route.max_body.is_none() && defaults.max_body.is_some() {
        route.max_body.clone_from(&defaults.max_body);
        defaulted.push("max_body");
    }
    defaulted
}

#[cfg(test)]
mod tests {
    use super::wildcard;

    #[test]
    fn wildcards_match_file_names() {
        assert!(wildcard("*.yaml", "team-a.yaml"));
        assert!(wildcard("team-?.yaml", "team-a.yaml"));
        assert!(wildcard("*", "x"));
        assert!(!wildcard("*.yaml", "team-a.yml"));
        assert!(!wildcard("a*b*c", "abx"));
        assert!(wildcard("a*b*c", "axxbyyc"));
    }
}
