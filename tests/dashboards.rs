//! deploy/observability: the alerting rules pass `promtool check rules` and their unit
//! tests (`promtool test rules`), the Grafana dashboard's queries parse as PromQL, every
//! metric either names is one Portico exports, and a live /metrics passes `promtool check
//! metrics`.
//! promtool comes from Debian's `prometheus` package (`make deps` installs it).

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/observability")
}

/// `promtool ARGS` in `cwd` with `stdin`: (success, stdout + stderr).
fn promtool(args: &[&str], cwd: &Path, stdin: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed: run `make deps` (Debian package `prometheus`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// The dashboard's queries, with Grafana's variables given values Prometheus accepts.
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(dir().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
                .replace("$route", ".*")
        })
        .collect()
}

/// `portico_*` metric names in a text, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"portico_[a-z_]+").unwrap();
    re.find_iter(text)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[test]
fn alerting_rules_pass_promtool_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "alerts.yaml"], &dir(), "");
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
    let (ok, out) = promtool(&["test", "rules", "alerts.test.yaml"], &dir(), "");
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    // promtool parses every query as a recording rule's expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        rules += &format!("      - record: dashboard:query_{i}\n        expr: {q:?}\n");
    }
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("queries.yaml"), rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", "queries.yaml"], scratch.path(), "");
    assert!(ok, "{out}");
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_exported() {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs"))
            .unwrap();
    let exported = metric_names(&source);
    let rules = std::fs::read_to_string(dir().join("alerts.yaml")).unwrap();
    let used: BTreeSet<String> = metric_names(&rules)
        .into_iter()
        .chain(metric_names(&dashboard_queries().join("\n")))
        .collect();
    assert!(used.len() >= 12, "{used:?}");
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "not exported by Portico: {unknown:?}");
}

#[test]
fn live_metrics_pass_promtool_check_metrics() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "upstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ));
    assert_eq!(client().get(gw.url("/x")).send().unwrap().status(), 200);
    let counted = wait_until(std::time::Duration::from_secs(10), || {
        metric(
            &gw,
            "portico_requests_total{method=\"GET\",route=\"svc\",status=\"200\",upstream=\"svc\"}",
        ) == 1.0
    });
    assert!(counted.is_some());
    let (ok, out) = promtool(&["check", "metrics"], &dir(), &metrics_text(&gw));
    assert!(ok && out.trim().is_empty(), "promtool: {out}");
}
