//! `portico import`: another controller's objects translated into a config directory (a
//! base `gateway.yaml` and one file per namespace), with a report of everything that was
//! not translated and why. Nothing an object says is executed: raw nginx snippets are
//! listed, never copied.

pub mod gateway_api;
pub mod ingress;

use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How cluster names become addresses.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Named Service ports: `NAMESPACE/SERVICE:NAME` (or `SERVICE:NAME`, any namespace)
    /// → port number.
    pub port_map: BTreeMap<String, u16>,
    /// The Ingress class imported (others are another controller's).
    pub ingress_class: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster_domain: "cluster.local".into(),
            port_map: BTreeMap::new(),
            ingress_class: "nginx".into(),
        }
    }
}

impl Options {
    /// Parses `--port-map` entries (`[NS/]SVC:NAME=PORT`).
    pub fn add_port_map(&mut self, entry: &str) -> Result<(), String> {
        let bad = || {
            format!(
                "`{entry}`: write [NAMESPACE/]SERVICE:PORT_NAME=NUMBER, e.g. shop/orders:http=8080"
            )
        };
        let (key, port) = entry.split_once('=').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if !key.contains(':') {
            return Err(bad());
        }
        self.port_map.insert(key.to_string(), port);
        Ok(())
    }

    fn named_port(&self, namespace: &str, service: &str, name: &str) -> Option<u16> {
        let scoped = format!("{namespace}/{service}:{name}");
        let any = format!("{service}:{name}");
        self.port_map
            .get(&scoped)
            .or(self.port_map.get(&any))
            .copied()
    }
}

/// What happened to one part of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Translated, with a remark the user should read.
    Translated,
    /// Not translated: Portico has no equivalent, or the value cannot be.
    NotTranslated,
    /// Raw controller configuration: never executed.
    NeverExecuted,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Translated => "translated, note",
            Outcome::NotTranslated => "not translated",
            Outcome::NeverExecuted => "never executed",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// `namespace/name` of the object.
    pub object: String,
    /// The annotation or field.
    pub what: String,
    pub outcome: Outcome,
    pub why: String,
}

/// A translation: file name → YAML text, and the report.
#[derive(Debug, Default)]
pub struct Output {
    pub files: BTreeMap<String, String>,
    pub notes: Vec<Note>,
    /// Objects read, by kind, and how many were translated.
    pub read: usize,
    pub translated: usize,
}

impl Output {
    /// The report as Markdown (also what `import` prints).
    pub fn report(&self) -> String {
        let mut out = format!(
            "# portico import report\n\n{} object(s) read, {} translated into {} file(s).\n",
            self.read,
            self.translated,
            self.files.len()
        );
        let mut notes = self.notes.clone();
        notes.sort();
        notes.dedup();
        for outcome in [
            Outcome::NeverExecuted,
            Outcome::NotTranslated,
            Outcome::Translated,
        ] {
            let these: Vec<&Note> = notes.iter().filter(|n| n.outcome == outcome).collect();
            if these.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n## {} ({})\n", outcome.label(), these.len());
            for n in these {
                let _ = writeln!(out, "- `{}` {}: {}", n.object, n.what, n.why);
            }
        }
        out
    }

    /// Writes the files and `REPORT.md` into `dir` (made if missing).
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        for (name, text) in &self.files {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            written.push(path);
        }
        std::fs::write(dir.join("REPORT.md"), self.report())?;
        Ok(written)
    }
}

/// Every object of the YAML files: multi-document streams, and `kind: List` flattened.
pub fn read_objects(files: &[PathBuf]) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| format!("{}: not YAML: {e}", file.display()))?;
            flatten(value, &mut objects);
        }
    }
    Ok(objects)
}

fn flatten(value: Value, out: &mut Vec<Value>) {
    match value.get("items").and_then(Value::as_sequence) {
        Some(items) if value.get("kind").and_then(Value::as_str) == Some("List") => {
            for item in items {
                flatten(item.clone(), out);
            }
        }
        _ if value.is_mapping() => out.push(value),
        _ => {}
    }
}

/// A YAML mapping from pairs, skipping nulls (what the file would leave out).
pub(crate) fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        if !v.is_null() {
            m.insert(Value::from(k), v);
        }
    }
    Value::Mapping(m)
}

/// The text of a config file: a header comment, then the YAML.
pub(crate) fn yaml_file(header: &str, body: &Value) -> String {
    let mut text = String::new();
    for line in header.lines() {
        let _ = writeln!(text, "# {line}");
    }
    text.push_str(&serde_yaml::to_string(body).unwrap_or_default());
    text
}

/// The base file of an import: `listen` (its proxy, TLS and admin listeners added here)
/// and a certificate for each TLS Secret `(namespace, name)`, each noted as one to mount.
pub(crate) fn base_file(
    tool: &str,
    mut listen: Vec<(&str, Value)>,
    certificates: &[(String, String)],
    out: &mut Output,
) -> String {
    let tls_listener = match certificates.is_empty() {
        true => Value::Null,
        false => "0.0.0.0:8443".into(),
    };
    listen.splice(
        0..0,
        [
            ("proxy", "0.0.0.0:8080".into()),
            ("proxy_tls", tls_listener),
            ("admin", "0.0.0.0:9901".into()),
        ],
    );
    let mut entries = Vec::new();
    for (ns, secret) in certificates {
        let dir = format!("tls/{ns}/{secret}");
        entries.push(map(vec![
            ("cert", format!("{dir}/tls.crt").into()),
            ("key", format!("{dir}/tls.key").into()),
        ]));
        out.notes.push(Note {
            object: format!("{ns}/{secret}"),
            what: "Secret".into(),
            outcome: Outcome::Translated,
            why: format!("mount the TLS Secret at {dir}/ beside gateway.yaml (tls.crt, tls.key)"),
        });
    }
    let tls = match entries.is_empty() {
        true => Value::Null,
        false => map(vec![("certificates", Value::Sequence(entries))]),
    };
    let base = map(vec![
        ("version", 1.into()),
        ("listen", map(listen)),
        ("tls", tls),
    ]);
    let header = format!("Imported by `portico import {tool}`: the listeners and certificates.\nEach namespace's routes are in ns-NAMESPACE.yaml beside this file; REPORT.md lists\nwhat was not translated. Check it all with `portico check DIR`.");
    yaml_file(&header, &base)
}

/// `wanted`, or `wanted-2`, `wanted-3`... the first that `taken` does not hold.
pub(crate) fn unique(wanted: &str, taken: impl Fn(&str) -> bool) -> String {
    (1..)
        .map(|n| match n {
            1 => wanted.to_string(),
            n => format!("{wanted}-{n}"),
        })
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

/// The file of a namespace: `ns-NAMESPACE.yaml`. The prefix keeps every namespace's
/// file between the base and the files tried after them (`zz-...`), whatever its name.
pub(crate) fn file_for(namespace: &str) -> String {
    format!("ns-{namespace}.yaml")
}

/// A name Portico accepts (letters, digits, `-`, `_`) made from Kubernetes names.
pub(crate) fn name_of(parts: &[&str]) -> String {
    let joined = parts.join("-");
    joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}
