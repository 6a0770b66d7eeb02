//! The book and the README, tested: generated reference pages are the code's, links resolve,
//! YAML examples pass `portico check`, and the getting-started page and how-tos run
//! (docs/book/src/development/docs.md says how blocks are marked).

mod common;

use common::{bin, portico, Gateway};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn book() -> PathBuf {
    root().join("docs/book/src")
}

/// Every Markdown page of the book, relative to its `src`, and the README.
fn pages() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    walk(&book(), &mut all);
    all.sort();
    all.push(root().join("README.md"));
    all
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// A fenced block or a hidden `<!-- check ... -->` step of a page.
#[derive(Debug)]
struct Block {
    /// The info string (`yaml,fragment`, `sh`); `check` for a hidden step.
    info: String,
    text: String,
    line: usize,
}

impl Block {
    fn language(&self) -> &str {
        self.info.split(',').next().unwrap_or("").trim()
    }

    fn marks(&self) -> Vec<&str> {
        self.info.split(',').skip(1).map(str::trim).collect()
    }
}

fn blocks(page: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, String, usize)> = None; // fence, line, info, indent
    let mut text = String::new();
    let mut check: Option<usize> = None;
    for (n, line) in page.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some((fence, at, info, indent)) = &open {
            if trimmed.starts_with(fence.as_str()) && trimmed.trim_end() == fence {
                out.push(Block {
                    info: info.clone(),
                    text: std::mem::take(&mut text),
                    line: *at,
                });
                open = None;
            } else {
                let strip = line.len() - line.trim_start().len();
                text.push_str(&line[strip.min(*indent)..]);
                text.push('\n');
            }
            continue;
        }
        if let Some(at) = check {
            if trimmed.starts_with("-->") {
                out.push(Block {
                    info: "check".into(),
                    text: std::mem::take(&mut text),
                    line: at,
                });
                check = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if trimmed.starts_with("<!-- check") {
            check = Some(n + 1);
        } else if trimmed.starts_with("```") {
            let ticks = trimmed.chars().take_while(|c| *c == '`').count();
            let indent = line.len() - trimmed.len();
            let info = trimmed[ticks..].trim().to_string();
            open = Some(("`".repeat(ticks), n + 1, info, indent));
        }
    }
    assert!(open.is_none() && check.is_none(), "an unclosed block");
    out
}

// ---------------------------------------------------------------- generated reference

/// Each generated page is what the code prints now, and generating it found nothing
/// undescribed (the command fails, naming them, otherwise).
#[test]
fn the_generated_reference_pages_are_the_codes_and_describe_everything() {
    for page in ["config", "cli", "metrics", "errors"] {
        let (code, out, err) = portico(&["reference", page], &root());
        assert_eq!(code, 0, "portico reference {page}: {err}");
        let file = book().join(format!("reference/{page}.md"));
        assert!(
            read(&file) == out,
            "{} is stale: run `cargo run -q -- reference {page} > {}`",
            shown(&file),
            shown(&file)
        );
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| `")).collect();
        let empty: Vec<&&str> = rows.iter().filter(|r| r.ends_with("|  |")).collect();
        assert!(empty.is_empty(), "{page}: rows without meaning: {empty:?}");
        let least = match page {
            "config" => 250,
            "cli" => 30,
            "metrics" => 30,
            _ => 60,
        };
        assert!(rows.len() > least, "{page}: {} rows", rows.len());
    }
    let config = read(&book().join("reference/config.md"));
    for key in ["`routes[].match.path_prefix`", "`upstreams.NAME.breaker`"] {
        assert!(config.contains(key), "{key}");
    }
    let cli = read(&book().join("reference/cli.md"));
    for heading in [
        "## `portico run`",
        "## `portico keys hash`",
        "## `portico import ingress`",
    ] {
        assert!(cli.contains(heading), "{heading}");
    }
}

/// What a running gateway exports is on the metrics page, label for label.
#[test]
fn every_metric_a_running_gateway_exports_is_on_the_metrics_page() {
    let page = read(&book().join("reference/metrics.md"));
    let gw = Gateway::start(
        "routes:\n  - { name: ping, match: { path: /ping }, respond: { json: { ok: true } } }\n",
    );
    let _ = common::client().get(gw.url("/ping")).send().unwrap();
    let text = common::metrics_text(&gw);
    let names: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("portico_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let row = |n: &str| page.contains(&format!("| `{n}` |"));
    for name in names {
        let series_of = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s));
        assert!(
            row(name) || series_of.is_some_and(row),
            "{name} is not on reference/metrics.md"
        );
    }
}

// ---------------------------------------------------------------- links

/// An anchor as mdBook makes it from a heading.
fn anchor(heading: &str) -> String {
    let text = heading.trim_start_matches('#').trim();
    let text = text.replace('`', "");
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line));
        }
    }
    out
}

/// `[text](target)` links outside code, with their line.
fn links(page: &str) -> Vec<(usize, String)> {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in page.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let outside_code: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        for c in link.captures_iter(&outside_code) {
            out.push((n + 1, c[1].to_string()));
        }
    }
    out
}

#[test]
fn every_link_of_the_book_and_the_readme_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        for (line, target) in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let file = match file {
                "" => page.clone(),
                f => page.parent().unwrap().join(f),
            };
            let found = match file.canonicalize() {
                Err(_) => Err("no such file"),
                Ok(_) if fragment.is_empty() => Ok(()),
                Ok(f) if f.extension().is_some_and(|e| e == "md") => {
                    match anchors(&read(&f)).contains(fragment) {
                        true => Ok(()),
                        false => Err("no such heading"),
                    }
                }
                Ok(_) => Ok(()),
            };
            if let Err(why) = found {
                broken.push(format!("{}:{line}: {target}: {why}", shown(&page)));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// mdBook builds only what SUMMARY.md lists: a page left out would never be published.
#[test]
fn every_page_is_in_the_summary() {
    let summary = read(&book().join("SUMMARY.md"));
    let listed: BTreeSet<String> = links(&summary).into_iter().map(|(_, t)| t).collect();
    let missing: Vec<String> = pages()
        .iter()
        .filter(|p| p.starts_with(book()))
        .map(|p| p.strip_prefix(book()).unwrap().display().to_string())
        .filter(|p| p != "SUMMARY.md" && !listed.contains(p))
        .collect();
    assert!(missing.is_empty(), "pages not in SUMMARY.md: {missing:?}");
}

/// The runbook has a section for each shipped alert and each status it promises.
#[test]
fn the_runbook_covers_every_shipped_alert() {
    let runbook = read(&book().join("operations/runbook.md"));
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .collect();
    let alerts = read(&root().join("deploy/observability/alerts.yaml"));
    let shipped: Vec<&str> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(shipped.len() >= 8, "{shipped:?}");
    let missing: Vec<_> = shipped.iter().filter(|a| !headings.contains(*a)).collect();
    assert!(
        missing.is_empty(),
        "alerts without a runbook section: {missing:?}"
    );
    for status in [401, 403, 404, 405, 413, 429, 502, 503, 504] {
        let prefix = format!("{status} ");
        assert!(
            headings.iter().any(|h| h.starts_with(&prefix)),
            "no runbook section for {status}"
        );
    }
}

// ---------------------------------------------------------------- YAML examples

fn fixtures() -> PathBuf {
    root().join("docs/book/fixtures")
}

fn base() -> serde_yaml::Value {
    serde_yaml::from_str(&read(&fixtures().join("base.yaml"))).unwrap()
}

/// `b`'s keys into `a`: mappings merge, lists append, anything else is replaced.
fn merge(a: &mut serde_yaml::Value, b: serde_yaml::Value) {
    use serde_yaml::Value;
    match (a, b) {
        (Value::Mapping(a), Value::Mapping(b)) => {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(old) => merge(old, v),
                    None => {
                        a.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) => a.extend(b),
        (a, b) => *a = b,
    }
}

/// A directory holding the fixtures, for one check.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(fixtures().join("."))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

/// The environment the examples' `${VAR}`s and `secret_env`s name.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("JWT_SECRET", "a-secret-of-at-least-32-bytes-for-hs256!"),
    ("OIDC_CLIENT_SECRET", "example-client-secret"),
    ("PORTICO_ADMIN_TOKEN", "an-admin-token-of-some-length"),
    (
        "PORTICO_STICKY_KEY",
        "a-sticky-key-of-at-least-32-bytes-long!!",
    ),
    ("REGION", "eu-west-1"),
    ("INTROSPECT_ID", "gateway"),
    ("INTROSPECT_SECRET", "example-introspection-secret"),
    ("OIDC_ID", "gateway"),
    ("OIDC_SECRET", "example-oidc-secret"),
    (
        "SESSION_KEY",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
];

fn check(config: &Path, cwd: &Path) -> Result<(), String> {
    let (code, _, err) =
        common::portico_env(&["check", config.to_str().unwrap()], cwd, EXAMPLE_ENV);
    match code {
        0 => Ok(()),
        _ => Err(err),
    }
}

fn check_block(block: &Block) -> Result<(), String> {
    let dir = workdir();
    let config = dir.path().join("gateway.yaml");
    let yaml = |t: &str| serde_yaml::from_str::<serde_yaml::Value>(t).map_err(|e| e.to_string());
    let marks = block.marks();
    let text = match marks.first().copied() {
        None => block.text.clone(),
        Some("fragment") => {
            let mut config = base();
            merge(&mut config, yaml(&block.text)?);
            serde_yaml::to_string(&config).unwrap()
        }
        Some("route") => {
            let mut config = base();
            let mut route: serde_yaml::Value =
                serde_yaml::from_str("{ name: example, match: { path_prefix: /example/ }, upstream: users, auth: users_jwt }")
                    .unwrap();
            merge(&mut route, yaml(&block.text)?);
            merge(&mut config, serde_yaml::from_str("routes: []").unwrap());
            config["routes"].as_sequence_mut().unwrap().insert(0, route);
            serde_yaml::to_string(&config).unwrap()
        }
        Some("team") => {
            // The team's own names replace the base's (base.yaml defines `orders` too).
            let mut base = base();
            if let serde_yaml::Value::Mapping(sections) = yaml(&block.text)? {
                for (section, names) in sections {
                    let (Some(names), Some(ours)) = (names.as_mapping(), base.get_mut(&section))
                    else {
                        continue;
                    };
                    if let Some(ours) = ours.as_mapping_mut() {
                        names.keys().for_each(|k| drop(ours.remove(k)));
                    }
                }
            }
            let team = dir.path().join("conf");
            std::fs::create_dir(&team).unwrap();
            std::fs::write(
                team.join("gateway.yaml"),
                serde_yaml::to_string(&base).unwrap(),
            )
            .unwrap();
            std::fs::write(team.join("team.yaml"), &block.text).unwrap();
            return check(&team, dir.path());
        }
        Some(other) => return Err(format!("unknown mark `{other}`")),
    };
    std::fs::write(&config, text).unwrap();
    check(&config, dir.path())
}

#[test]
fn every_yaml_example_passes_check() {
    let mut failed = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for block in blocks(&read(&page)) {
            if block.language() != "yaml" {
                continue;
            }
            let marks = block.marks();
            let skip = marks
                .first()
                .is_some_and(|m| *m == "other" || m.starts_with("file="));
            if skip {
                continue;
            }
            checked += 1;
            if let Err(why) = check_block(&block) {
                failed.push(format!(
                    "{}:{}: {}\n{why}",
                    shown(&page),
                    block.line,
                    block.info
                ));
            }
        }
    }
    assert!(checked > 15, "{checked} examples");
    assert!(
        failed.is_empty(),
        "examples refused:\n\n{}",
        failed.join("\n\n")
    );
}

// ---------------------------------------------------------------- runnable pages

/// The ports a page writes, each replaced by a free one.
const PAGE_PORTS: &[u16] = &[
    8080, 8443, 9901, 9000, 9001, 9002, 9003, 9004, 9005, 9006, 9007, 9008, 9009,
];

/// The page's `sh`, `yaml,file=` and hidden check blocks as one script.
fn script(page: &str) -> String {
    let mut script = String::from("set -euo pipefail\n");
    for block in blocks(page) {
        let marks = block.marks();
        match (block.language(), marks.first().copied()) {
            ("sh", None) | ("check", None) => {
                script.push_str(&format!("# line {}\n{}", block.line, block.text));
            }
            ("sh", Some("cluster" | "setup")) => {}
            ("yaml", Some(m)) if m.starts_with("file=") => {
                let path = &m["file=".len()..];
                script.push_str(&format!(
                    "# line {}\nmkdir -p \"$(dirname '{path}')\"\ncat > '{path}.tmp' <<'PORTICO_DOC_EOF'\n{}PORTICO_DOC_EOF\nmv '{path}.tmp' '{path}'\n",
                    block.line, block.text
                ));
            }
            ("sh", Some(other)) => panic!("line {}: unknown mark `{other}`", block.line),
            _ => {}
        }
    }
    script
}

fn with_free_ports(script: &str) -> String {
    let listeners: Vec<_> = PAGE_PORTS
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut out = script.to_string();
    for (port, l) in PAGE_PORTS.iter().zip(&listeners) {
        let re = regex::Regex::new(&format!(r"\b{port}\b")).unwrap();
        let free = l.local_addr().unwrap().port().to_string();
        out = re.replace_all(&out, free.as_str()).into_owned();
    }
    out
}

fn run_page(relative: &str) {
    let page = book().join(relative);
    let script = with_free_ports(&script(&read(&page)));
    let dir = tempfile::tempdir().unwrap();
    for shared in ["deploy", "schemas"] {
        std::os::unix::fs::symlink(root().join(shared), dir.path().join(shared)).unwrap();
    }
    std::fs::write(dir.path().join(".script.sh"), &script).unwrap();
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = std::fs::File::create(dir.path().join(".output")).unwrap();
    let mut child = Command::new("bash")
        .arg(".script.sh")
        .current_dir(dir.path())
        .env("PATH", path)
        .env("PORTICO_LOG_FORMAT", "text")
        .env_remove("PORTICO_CONFIG")
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The page's background jobs (gateway, upstreams) are in the script's process group.
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let log = read(&dir.path().join(".output"));
    let tail: String = log
        .chars()
        .rev()
        .take(6000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let numbered: String = script
        .lines()
        .enumerate()
        .map(|(n, l)| format!("{:4} {l}\n", n + 1))
        .collect();
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("{relative} failed ({s}); output:\n{tail}\n\nscript:\n{numbered}"),
        None => panic!("{relative} ran over two minutes; output:\n{tail}\n\nscript:\n{numbered}"),
    }
}

use std::os::unix::process::CommandExt;

/// The pages that run, each its own test so they run in parallel and fail by name.
macro_rules! runnable {
    ($($test:ident => $page:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run_page($page);
            }
        )*

        /// Every how-to is one of the pages above.
        #[test]
        fn runnable_every_how_to_runs() {
            let listed: BTreeSet<&str> = [$($page),*].into_iter().collect();
            let mut how_tos = BTreeMap::new();
            for page in pages() {
                if let Ok(rel) = page.strip_prefix(book()) {
                    let rel = rel.display().to_string();
                    if rel.starts_with("how-to/") || rel == "getting-started.md" {
                        how_tos.insert(rel.clone(), listed.contains(rel.as_str()));
                    }
                }
            }
            let missing: Vec<_> = how_tos.iter().filter(|(_, l)| !**l).map(|(p, _)| p).collect();
            assert!(missing.is_empty(), "how-tos that do not run: {missing:?}");
        }
    };
}

runnable! {
    runnable_getting_started => "getting-started.md",
    runnable_how_to_tls => "how-to/tls.md",
    runnable_how_to_canary => "how-to/canary.md",
    runnable_how_to_auth => "how-to/auth.md",
    runnable_how_to_kubernetes => "how-to/kubernetes.md",
    runnable_how_to_ingress_nginx => "how-to/ingress-nginx.md",
    runnable_how_to_observability => "how-to/observability.md",
}
