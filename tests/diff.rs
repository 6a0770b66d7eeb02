//! `portico diff OLD NEW [--requests LOG]`: entity changes field by field, and recorded
//! requests (from a real gateway's access log) replayed through both configs.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;

const OLD: &str = r#"version: 1
listen: { proxy: "127.0.0.1:18080", admin: "127.0.0.1:19901" }
upstreams:
  users: { targets: ["127.0.0.1:9001"] }
  orders: { targets: ["127.0.0.1:9002"] }
auth:
  hs: { algorithms: [HS256], secret_env: JWT_SECRET, issuer: https://idp.example.com }
rate_limits:
  per_ip: { requests: 10, per: 1s, burst: 20, key: client_ip }
routes:
  - name: users
    match: { path_prefix: /users/ }
    upstream: users
    timeout: 2s
  - name: orders
    match: { path_prefix: /orders/ }
    upstream: orders
    auth: hs
    rate_limit: per_ip
  - name: legacy
    match: { path_prefix: /legacy/ }
    upstream: users
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    std::fs::write(dir.join(name), text).unwrap();
    name.to_string()
}

/// `portico diff ARGS` in `dir`, with the secret the auth policy names (diff compiles both
/// configs, as `check` does).
fn diff(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let all: Vec<&str> = std::iter::once("diff")
        .chain(args.iter().copied())
        .collect();
    portico_env(&all, dir, &[("JWT_SECRET", "s3cret-value")])
}

#[test]
fn the_same_behaviour_written_differently_is_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.yaml", OLD);
    // Comments, key order and flow style differ; what the gateway does does not.
    let same = OLD
        .replace("version: 1\n", "# reviewed\nversion: 1\n")
        .replace(
            "{ targets: [\"127.0.0.1:9001\"] }",
            "\n    targets:\n      - 127.0.0.1:9001",
        );
    let new = write(dir.path(), "new.yaml", &same);
    let (code, out, err) = diff(dir.path(), &[&old, &new]);
    assert_eq!(
        (code, out.as_str()),
        (0, "no change in behaviour\n"),
        "{err}"
    );
}

#[test]
fn changes_are_listed_field_by_field_and_replayed_requests_that_change_are_named() {
    let up = TestUpstream::start("svc");
    // A real access log: the old config (with the upstreams pointed at a live server).
    let live = OLD
        .replace("127.0.0.1:9001", &up.addr.to_string())
        .replace("127.0.0.1:9002", &up.addr.to_string())
        .replace("version: 1\n", "")
        .replace(
            "listen: { proxy: \"127.0.0.1:18080\", admin: \"127.0.0.1:19901\" }\n",
            "",
        );
    let mut gw = Gateway::start_with_env(&[("JWT_SECRET", "s3cret-value")], &live);
    let c = client();
    for path in [
        "/users/1",
        "/users/2",
        "/users/1",
        "/orders/7",
        "/legacy/x",
        "/nowhere",
    ] {
        let status = c.get(gw.url(path)).send().unwrap().status().as_u16();
        assert!([200, 401, 404].contains(&status), "{path}: {status}");
    }
    gw.stop();
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), "access.log", &gw.log());

    let changed = OLD
        // users: a longer timeout, and a rewrite.
        .replace(
            "    timeout: 2s\n",
            "    timeout: 5s\n    rewrite: /v2/users/{rest}\n",
        )
        .replace(
            "path_prefix: /users/ }",
            "path_template: \"/users/{rest...}\" }",
        )
        // orders: the limit is gone.
        .replace("    rate_limit: per_ip\n", "")
        // legacy: removed; /legacy/ now matches nothing.
        .replace(
            "  - name: legacy\n    match: { path_prefix: /legacy/ }\n    upstream: users\n",
            "",
        )
        // the auth policy changes its issuer.
        .replace(
            "issuer: https://idp.example.com",
            "issuer: https://login.example.com",
        );
    let (old, new) = (
        write(dir.path(), "old.yaml", OLD),
        write(dir.path(), "new.yaml", &changed),
    );
    let (code, out, err) = diff(dir.path(), &[&old, &new, "--requests", &log]);
    assert_eq!(code, 1, "{out}\n{err}");
    for expected in [
        "~ routes `users` changed\n",
        "    timeout: 2s → 5s\n",
        "    rewrite: (none) → /v2/users/{rest}\n",
        "~ routes `orders` changed\n    rate_limit: per_ip → (none)\n",
        "- routes `legacy` removed\n",
        "~ auth `hs` changed\n    issuer: https://idp.example.com → https://login.example.com\n",
        "4 of 5 recorded request(s) would be handled differently\n",
        "  GET /users/1 (Host: 127.0.0.1:",
        ": upstream_path\n    upstream_path: /users/1 → /v2/users/1\n",
        "  GET /orders/7 (Host: 127.0.0.1:",
        ": auth, limit\n    auth: `hs` is defined differently\n    limit: per_ip → (none)\n",
        ": route, upstream, upstream_path\n    route: legacy → none (404)\n    upstream: users → (none)\n    upstream_path: /legacy/x → (none)\n",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert!(!out.contains("s3cret"), "secrets are never printed");
    assert!(!out.contains("/nowhere"), "404 before and after: unchanged");

    let (code, json, _) = diff(
        dir.path(),
        &[&old, &new, "--requests", &log, "--format", "json"],
    );
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["replayed"], 5);
    assert_eq!(report["requests"].as_array().unwrap().len(), 4);
    let users = report["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["section"] == "routes" && e["name"] == "users")
        .unwrap();
    assert!(users["fields"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"field": "timeout", "old": "2s", "new": "5s"})));
}

#[test]
fn a_config_that_does_not_load_exits_2_with_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "old.yaml", OLD);
    let new = write(
        dir.path(),
        "new.yaml",
        &OLD.replace("timeout: 2s", "timeout: 2 seconds"),
    );
    let (code, out, err) = diff(dir.path(), &[&old, &new]);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("new.yaml:14:14: error: routes[0].timeout: invalid duration `2 seconds`"),
        "{err}"
    );
    let (code, _, err) = diff(dir.path(), &[&old, &old, "--requests", "missing.log"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the access log"), "{err}");
}
