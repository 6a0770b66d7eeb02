//! The CLI: `check` on broken configs (exact file:line:col), `route` and `route --test`,
//! and `demo` serving real traffic.

mod common;
use common::*;
use std::path::Path;

const HEAD: &str = "version: 1\nlisten:\n  proxy: 127.0.0.1:18080\n  admin: 127.0.0.1:19901\n";

fn check(body: &str) -> (i32, String) {
    check_text(&format!("{HEAD}{body}"))
}

/// `portico check` on a whole config text: (exit code, stdout + stderr).
fn check_text(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("g.yaml"), text).unwrap();
    let (code, out, err) = portico(&["check", "g.yaml"], dir.path());
    (code, format!("{out}{err}"))
}

/// Asserts that `check` refuses a whole config text with an error containing `what`.
fn refused_whole(text: &str, what: &str) {
    let (code, out) = check_text(text);
    assert_eq!(code, 1, "expected refusal:\n{out}");
    assert!(out.contains(what), "expected `{what}` in:\n{out}");
}

/// Asserts that `check` refuses `body` with an error at line:col containing `what`.
fn refused(body: &str, line: usize, col: usize, what: &str) {
    let (code, out) = check(body);
    assert_eq!(code, 1, "expected refusal:\n{out}");
    let prefix = format!("g.yaml:{line}:{col}: error: ");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(what)),
        "expected `{prefix}...{what}` in:\n{out}"
    );
}

const UPSTREAM: &str = "upstreams:\n  users: { targets: [\"127.0.0.1:8001\"] }\n";

#[test]
fn yaml_syntax_error() {
    refused("routes: [\n  - name: a\n", 6, 3, "");
}

#[test]
fn unknown_field() {
    refused(
        &format!("{UPSTREAM}routes:\n  - name: a\n    mach: {{ path: / }}\n    upstream: users\n"),
        9,
        5,
        "unknown field `mach`",
    );
}

#[test]
fn invalid_duration() {
    refused(
        "server:\n  grace_period: 10 parsecs\n",
        6,
        17,
        "invalid duration `10 parsecs`",
    );
}

#[test]
fn unknown_upstream() {
    refused(
        &format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    upstream: userz\n"),
        10,
        15,
        "unknown upstream `userz`",
    );
}

#[test]
fn duplicate_route_name() {
    let body = format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n  - name: a\n    match: {{ path: /b }}\n    upstream: users\n");
    refused(&body, 11, 11, "duplicate route name `a`");
}

#[test]
fn invalid_regex() {
    refused(&format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path_regex: \"/(x\" }}\n    upstream: users\n"), 9, 26, "invalid regex");
}

#[test]
fn invalid_cidr() {
    refused(
        "server:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.0/33]\n",
        6,
        33,
        "`10.0.0.0/33` is not an IP network",
    );
}

#[test]
fn invalid_listen_address() {
    let text = "version: 1
listen:
  proxy: localhost
  admin: 127.0.0.1:9
";
    refused_whole(
        text,
        "g.yaml:3:10: error: `localhost` is not a listen address",
    );
}

#[test]
fn target_without_port() {
    refused(
        "upstreams:\n  users: { targets: [users-service] }\n",
        6,
        22,
        "has no port",
    );
}

#[test]
fn unset_environment_variable() {
    refused(
        "upstreams:\n  users: { targets: [\"${PORTICO_TEST_SURELY_UNSET}:80\"] }\n",
        6,
        23,
        "`PORTICO_TEST_SURELY_UNSET` is not set",
    );
}

#[test]
fn upstream_and_respond_together() {
    refused(&format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    upstream: users\n    respond: {{ text: hi }}\n"), 8, 5, "both `upstream` and `respond`");
}

/// A config with a cache is checked and explained without Pingora's warning about a header
/// compression dictionary (meaningless for an in-memory cache); one error is "1 error".
#[test]
fn check_and_route_print_only_their_own_findings() {
    let body = "upstreams:\n  svc: { targets: [\"127.0.0.1:9\"] }\ncaches:\n  c: { max_size: 1MiB, ttl: 10s }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: svc, cache: c }\n";
    let (code, out) = check(body);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("dictionary"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("g.yaml"), format!("{HEAD}{body}")).unwrap();
    let (code, _, err) = portico(&["route", "-c", "g.yaml", "GET", "/x"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    let (code, out) =
        check("routes:\n  - { name: r, match: { path: / }, respond: { text: a }, bogus: 1 }\n");
    assert_eq!(code, 1);
    assert!(out.contains("refused: 1 error\n"), "{out}");
}

/// Every problem at once: an unknown upstream is reported beside unknown keys (the file
/// without them is checked as a whole config). A part that is wrong otherwise is not taken
/// out for that check: a limit missing `per` is not also an "unknown rate limit".
#[test]
fn semantic_errors_come_with_the_key_errors() {
    let body = "upstreams:\n  svc: { targets: [\"127.0.0.1:9\"], bogus_key: 1 }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: missing, bogus: 1 }\n";
    let (code, out) = check(body);
    assert_eq!(code, 1, "{out}");
    for what in [
        "unknown field `bogus_key`",
        "unknown upstream `missing`",
        "unknown field `bogus`",
        "refused: 3 errors",
    ] {
        assert!(out.contains(what), "`{what}` in:\n{out}");
    }
    let body = "rate_limits:\n  api: { requests: 10 }\nroutes:\n  - { name: r, match: { path: / }, respond: { text: a }, rate_limit: api, bogus: 1 }\n";
    let (code, out) = check(body);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing field"), "{out}");
    assert!(!out.contains("unknown rate limit"), "{out}");
}

/// Action keys are counted: none, or all three, is one error naming them.
#[test]
fn a_route_does_exactly_one_thing() {
    refused(
        &format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    upstream: users\n    respond: {{ text: hi }}\n    aggregate: {{ calls: [{{ name: u, upstream: users, path: /u }}] }}\n"),
        8,
        5,
        "route `a` has `upstream`, `respond` and `aggregate`",
    );
    refused(
        "routes:\n  - name: a\n    match: { path: / }\n",
        6,
        5,
        "route `a` says nothing to do with a request",
    );
}

#[test]
fn lower_case_method() {
    refused("routes:\n  - name: a\n    match: { path: /, methods: [GET, get] }\n    respond: { text: hi }\n", 7, 38, "`get` is not an HTTP method");
}

#[test]
fn bad_host_pattern() {
    refused(
        "routes:\n  - name: a\n    match: { host: \"api.*.com\" }\n    respond: { text: hi }\n",
        7,
        20,
        "not a host name or pattern",
    );
}

#[test]
fn unknown_balance() {
    refused(
        "upstreams:\n  users:\n    targets: [\"127.0.0.1:1\"]\n    balance: sticky\n",
        8,
        14,
        "unknown balance `sticky`",
    );
}

#[test]
fn unnormalized_path() {
    refused(
        "routes:\n  - name: a\n    match: { path_prefix: /a/../b }\n    respond: { text: hi }\n",
        7,
        27,
        "`/a/../b` is not in normalized form",
    );
}

#[test]
fn status_out_of_range() {
    refused(
        "routes:\n  - name: a\n    match: { path: / }\n    respond: { status: 700 }\n",
        8,
        24,
        "700 is not an HTTP status",
    );
}

#[test]
fn duplicate_key() {
    refused(
        &format!("{UPSTREAM}{UPSTREAM}"),
        7,
        1,
        "duplicate key `upstreams`",
    );
    refused(
        "upstreams:\n  a: { targets: [\"127.0.0.1:1\"] }\n  a: { targets: [\"127.0.0.1:2\"] }\n",
        7,
        3,
        "duplicate key `upstreams.a`",
    );
}

#[test]
fn unsupported_version() {
    let text = HEAD.replace("version: 1", "version: 2");
    refused_whole(&text, "g.yaml:1:10: error: unsupported config version 2");
}

#[test]
fn every_error_is_reported_at_once() {
    let body = format!("server:\n  trusted_proxies: [nope]\n{UPSTREAM}routes:\n  - name: a\n    match: {{ path_regex: \"(\" }}\n    upstream: ghost\n");
    let (code, out) = check(&body);
    assert_eq!(code, 1);
    for want in [
        "g.yaml:6:21: error",
        "g.yaml:11:26: error: invalid regex",
        "g.yaml:12:15: error: unknown upstream `ghost`",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
    assert!(out.contains("refused: 3 errors"), "{out}");
}

#[test]
fn shadowed_route_is_a_warning() {
    let body = "routes:\n  - name: all\n    match: { path_prefix: /api/ }\n    respond: { text: a }\n  - name: users\n    match: { path_prefix: /api/users/, methods: [GET] }\n    respond: { text: b }\n";
    let (code, out) = check(body);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("g.yaml:10:14: warning: route `users` is shadowed by the earlier route `all`"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("g.yaml"), format!("{HEAD}{body}")).unwrap();
    let (code, _, _) = portico(&["check", "--deny-warnings", "g.yaml"], dir.path());
    assert_eq!(code, 1);
}

#[test]
fn bundled_config_is_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = portico(&["check", "gateway.yaml"], root);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gateway.yaml: OK"), "{out}");
}

#[test]
fn route_explains_and_tests_a_route_table() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = portico(
        &[
            "route",
            "-c",
            "gateway.yaml",
            "GET",
            "/api/messages/../messages/1?x=1",
        ],
        root,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("→ route `messages` (gateway.yaml:"), "{out}");
    assert!(
        out.contains("matched because: path_prefix = /api/messages/; methods = GET, POST"),
        "{out}"
    );
    assert!(out.contains("upstream path: /messages/1"), "{out}");
    assert!(out.contains("127.0.0.1:8003"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("  upstream: messages (round_robin) → ")),
        "config names, not Rust debug names:\n{out}"
    );
    assert!(
        out.contains("  timeouts: connect 1s, read 10s, route total none"),
        "{out}"
    );

    let (_, out, _) = portico(&["route", "-c", "gateway.yaml", "PATCH", "/users/1"], root);
    assert!(out.contains("→ 405"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "- { request: GET /ping, route: ping }\n- { request: GET //users/1, route: users, upstream_path: /users/1 }\n- { request: GET /api/messages/7, route: messages, upstream_path: /messages/7 }\n- { request: GET /nope, status: 404 }\n- { request: DELETE /api/messages/1, status: 405 }\n",
    )
    .unwrap();
    let (code, out, err) = route_test(&cases, root);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("5 cases, 5 passed, 0 failed"), "{out}");

    std::fs::write(&cases, "- { request: GET /ping, route: users }\n- { request: GET /users/1, route: users, upstream_path: /1 }\n").unwrap();
    let (code, out, _) = route_test(&cases, root);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL GET /ping (case 1): expected route `users`, got route `ping`"),
        "{out}"
    );
    assert!(
        out.contains("expected upstream path `/1`, got `/users/1`"),
        "{out}"
    );
    // The same results as JUnit XML for CI, beside the report.
    let junit = dir.path().join("routes.xml");
    let (code, _, _) = portico(
        &[
            "route",
            "-c",
            "gateway.yaml",
            "--test",
            cases.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
        root,
    );
    assert_eq!(code, 1);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuite name="portico route --test" tests="2" failures="2">"#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase classname="routes" name="GET /ping"><failure message="expected route `users`, got route `ping`"/></testcase>"#),
        "{xml}"
    );

    std::fs::write(&cases, "- { request: GET /ping, route: pnig }\n").unwrap();
    let (code, out, _) = route_test(&cases, root);
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL GET /ping (case 1): no route is named `pnig` (did you mean `ping`?)"),
        "{out}"
    );
}

/// `check` finds the config like `run` and `route` do (`-c`, `PORTICO_CONFIG`, then
/// `gateway.yaml`), and the shipped deployment config checks from the repository root.
#[test]
fn check_finds_the_config_like_run_does() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        &["check"][..],
        &["check", "-c", "gateway.yaml"],
        &["check", "deploy/gateway.yaml"],
    ] {
        let (code, out, err) = portico(args, root);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(out.contains(": OK: "), "{args:?}: {out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .env("PORTICO_CONFIG", root.join("deploy/gateway.yaml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("deploy/gateway.yaml: OK"));
}

/// `portico route -c gateway.yaml --test CASES` in `root`.
fn route_test(cases: &Path, root: &Path) -> (i32, String, String) {
    portico(
        &[
            "route",
            "-c",
            "gateway.yaml",
            "--test",
            cases.to_str().unwrap(),
        ],
        root,
    )
}

#[test]
fn demo_serves_sample_services_through_the_gateway() {
    let (u1, u2, m) = (free_port(), free_port(), free_port());
    let gw = Gateway::start_cmd(
        "demo",
        &format!(
            "server: {{ threads: 1 }}\nupstreams:\n  users: {{ targets: [\"127.0.0.1:{u1}\", \"127.0.0.1:{u2}\"] }}\n  messages: {{ targets: [\"127.0.0.1:{m}\"] }}\nroutes:\n  - name: users\n    match: {{ path_prefix: /users/ }}\n    upstream: users\n  - name: messages\n    match: {{ path_prefix: /api/messages/ }}\n    strip_prefix: /api\n    upstream: messages\n"
        ),
    );
    let c = client();
    let mut servers = std::collections::HashSet::new();
    for _ in 0..4 {
        let body: serde_json::Value = c.get(gw.url("/users/2")).send().unwrap().json().unwrap();
        assert_eq!(body["data"]["name"], "Alan Turing");
        servers.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(servers.len(), 2, "both users instances serve: {servers:?}");
    let body: serde_json::Value = c
        .get(gw.url("/api/messages/1"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(body["request"]["path"], "/messages/1");
    // "ready" comes once the listener accepts, with the addresses to open.
    let ready = wait_until(std::time::Duration::from_secs(10), || {
        gw.log().contains("demo ready")
    });
    assert!(ready.is_some(), "{}", gw.log());
    let log = gw.log();
    let line = log.lines().find(|l| l.contains("demo ready")).unwrap();
    assert!(
        line.contains(&format!("http://{}/", gw.proxy))
            && line.contains(&format!("http://{}/routes", gw.admin)),
        "{line}"
    );
    let bound = log.find("Starting service: portico").unwrap();
    assert!(log.find("demo ready").unwrap() > bound, "{log}");
}

#[test]
fn cors_star_with_credentials_is_refused() {
    let body = "cors:\n  web: { allow_origins: [\"*\"], allow_credentials: true }\n";
    refused(body, 6, 25, "`*` cannot be combined with allow_credentials");
}

#[test]
fn auth_policies_are_checked() {
    refused(
        "auth:\n  a: { algorithms: [HS256, RS256], secret_env: X }\n",
        6,
        20,
        "HS* and public-key algorithms cannot share a policy",
    );
    refused(
        "auth:\n  a: { algorithms: [none], secret_env: X }\n",
        6,
        21,
        "`none` is not a supported JWT algorithm",
    );
    refused(
        "auth:\n  a: { algorithms: [HS256], secret_env: PORTICO_TEST_SURELY_UNSET_SECRET }\n",
        6,
        41,
        "`PORTICO_TEST_SURELY_UNSET_SECRET` is not set",
    );
    refused(
        "auth:\n  a: { algorithms: [RS256], public_key_file: keys/missing.pem }\n",
        6,
        46,
        "cannot read",
    );
    refused(
        "auth:\n  a: { algorithms: [RS256], secret_file: keys/hs.secret }\n",
        6,
        8,
        "the key source does not fit the algorithms",
    );
    let routes = "routes:\n  - { name: a, match: { path: /a }, respond: { text: a }, require: { claims: { role: admin } } }\n  - { name: b, match: { path: /b }, respond: { text: b }, auth: ghost }\n";
    refused(
        routes,
        6,
        70,
        "`require` checks token claims, but this route has no `auth`",
    );
    refused(routes, 7, 65, "unknown auth policy `ghost`");
}

#[test]
fn broken_schemas_and_limits_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        r#"{"type": "object", "properties": {"a": {"type": "strin"}}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("refs.json"), r#"{"$ref": "missing.json"}"#).unwrap();
    let route = |validate: &str| {
        format!("{HEAD}routes:\n  - name: a\n    match: {{ path: /a }}\n    respond: {{ text: a }}\n    validate: {validate}\n")
    };
    for (validate, line, col, what) in [
        (
            "{ body: bad.json }",
            9,
            23,
            "schema `bad.json` does not compile",
        ),
        (
            "{ body: refs.json }",
            9,
            23,
            "schema `refs.json` does not compile",
        ),
        ("{ body: nope.json }", 9, 23, "cannot read"),
        (
            "{ body: bad.json, max_body_bytes: 1MiB }",
            9,
            49,
            "max_body_bytes must be between 1 and 65536",
        ),
    ] {
        std::fs::write(dir.path().join("g.yaml"), route(validate)).unwrap();
        let (code, out, err) = portico(&["check", "g.yaml"], dir.path());
        assert_eq!(code, 1, "{validate}: {out}{err}");
        let want = format!("g.yaml:{line}:{col}: error: ");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&want) && l.contains(what)),
            "{validate}: expected `{want}...{what}` in:\n{err}"
        );
    }
}

/// `portico health` asks the admin listener the config names: 0 when it answers healthy,
/// 1 when nothing answers.
#[test]
fn health_asks_the_admin_listener_of_the_config() {
    let gw =
        Gateway::start("routes:\n  - { name: p, match: { path: /p }, respond: { text: ok } }\n");
    let (code, out, err) = portico(
        &["health", "-c", gw.config.to_str().unwrap()],
        gw.dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("{}: healthy", gw.admin));
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_addr();
    std::fs::write(
        dir.path().join("g.yaml"),
        format!("version: 1\nlisten: {{ proxy: 127.0.0.1:1, admin: \"{dead}\" }}\n"),
    )
    .unwrap();
    let (code, _, err) = portico(&["health", "-c", "g.yaml"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("connecting to the admin listener {dead}")),
        "{err}"
    );
}

/// The image's HEALTHCHECK (`portico health`, no arguments) asks the running process at the
/// address it wrote, not the config file: a bad edit since, or an env var the health check
/// lacks, does not make a healthy gateway unhealthy.
#[test]
fn health_asks_the_running_gateway_not_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin.addr");
    let file = file.to_str().unwrap();
    let gw = Gateway::start_with_env(
        &[("PORTICO_ADMIN_FILE", file), ("HEALTH_TEST_TEXT", "ok")],
        "routes:\n  - { name: p, match: { path: /p }, respond: { text: \"${HEALTH_TEST_TEXT}\" } }\n",
    );
    gw.overwrite_config("routes: [ this is not yaml\n");
    let env = [("PORTICO_ADMIN_FILE", file)];
    let (code, out, err) = portico_env(&["health"], gw.dir.path(), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("{}: healthy", gw.admin));
    let dead = dead_addr().to_string();
    let (code, _, err) = portico_env(&["health", "--admin", &dead], gw.dir.path(), &env);
    assert_eq!(code, 1, "{err}");
    let missing = [("PORTICO_ADMIN_FILE", "/nonexistent/portico-admin")];
    let (code, _, err) = portico_env(&["health"], gw.dir.path(), &missing);
    assert_eq!(code, 1);
    assert!(
        err.contains("no running gateway wrote its admin address"),
        "{err}"
    );
}

#[test]
fn check_reports_as_json_and_sarif_for_ci() {
    let dir = tempfile::tempdir().unwrap();
    let body = "upstreams:\n  svc: { targets: [\"127.0.0.1:9\"] }\n  spare: { targets: [\"127.0.0.1:8\"] }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: svc, timeout: 5 seconds }\n";
    std::fs::write(dir.path().join("g.yaml"), format!("{HEAD}{body}")).unwrap();
    let (code, out, _) = portico(&["check", "--format", "json", "g.yaml"], dir.path());
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&report["ok"], &report["errors"]),
        (&serde_json::json!(false), &serde_json::json!(1))
    );
    let d = &report["diagnostics"][0];
    assert_eq!(
        (
            d["severity"].as_str(),
            d["line"].as_u64(),
            d["column"].as_u64()
        ),
        (Some("error"), Some(9), Some(67))
    );
    assert!(d["message"]
        .as_str()
        .unwrap()
        .contains("invalid duration `5 seconds`"));
    assert!(d["help"].is_string());

    // A warning only: accepted, unless warnings are denied.
    let fixed = body.replace("5 seconds", "5s");
    std::fs::write(dir.path().join("g.yaml"), format!("{HEAD}{fixed}")).unwrap();
    let (code, out, _) = portico(&["check", "--format", "sarif", "g.yaml"], dir.path());
    assert_eq!(code, 0, "{out}");
    let sarif: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(
        (&result["level"], &result["ruleId"]),
        (
            &serde_json::json!("warning"),
            &serde_json::json!("portico/warning")
        )
    );
    let region = &result["locations"][0]["physicalLocation"]["region"];
    assert_eq!(
        (region["startLine"].as_u64(), region["startColumn"].as_u64()),
        (Some(7), Some(12))
    );
    assert!(result["message"]["text"]
        .as_str()
        .unwrap()
        .contains("spare"));
    let (code, _, _) = portico(
        &["check", "--format", "json", "--deny-warnings", "g.yaml"],
        dir.path(),
    );
    assert_eq!(code, 1);
}

#[test]
fn typos_get_a_did_you_mean_and_tabs_are_named() {
    let (code, out) = check(&format!(
        "{UPSTREAM}routes:\n  - {{ name: a, match: {{ path: / }}, upstrem: users }}\n"
    ));
    assert_eq!(code, 1);
    assert!(out.contains("unknown field `upstrem`"), "{out}");
    assert!(out.contains("help: did you mean `upstream`?"), "{out}");
    refused(
        &format!("{UPSTREAM}routes:\n  - {{ name: a, match: {{ path: / }}, upstream: user }}\n"),
        8,
        46,
        "unknown upstream `user`",
    );
    let (_, out) = check(&format!(
        "{UPSTREAM}routes:\n  - {{ name: a, match: {{ path: / }}, upstream: user }}\n"
    ));
    assert!(out.contains("help: did you mean `users`?"), "{out}");
    let (_, out) = check(&format!(
        "{UPSTREAM}routes:\n  - {{ name: a, match: {{ path: / }}, upstream: billing }}\n"
    ));
    assert!(
        !out.contains("did you mean"),
        "no guess when nothing is near:\n{out}"
    );
    let (code, out) =
        check_text("version: 1\nlisten:\n\tproxy: 127.0.0.1:1\n  admin: 127.0.0.1:2\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("g.yaml:3:1: error: a tab is used for indentation"),
        "{out}"
    );
    assert!(out.contains("help: YAML indents with spaces only"), "{out}");
}

#[test]
fn a_duplicate_points_at_the_first_definition() {
    let (code, out) = check("routes:\n  - { name: a, match: { path: /a }, respond: { text: x } }\n  - { name: a, match: { path: /b }, respond: { text: y } }\n");
    assert_eq!(code, 1);
    assert!(
        out.contains("g.yaml:7:13: error: duplicate route name `a`"),
        "{out}"
    );
    assert!(out.contains("help: the first is at g.yaml:6:13;"), "{out}");
    let (code, out) = check_text(&format!("{HEAD}routes: []\nlisten: {{}}\n"));
    assert_eq!(code, 1);
    assert!(
        out.contains("g.yaml:6:1: error: duplicate key `listen`"),
        "{out}"
    );
    assert!(out.contains("help: first at line 2, column 1;"), "{out}");
}

#[test]
fn weighted_backends_are_checked() {
    let body = format!(
        "{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    backends:\n      - {{ upstream: users, weight: 0 }}\n      - {{ upstream: ghost, weight: 0 }}\n      - {{ upstream: users, weight: 1001 }}\n"
    );
    refused(&body, 12, 21, "unknown upstream `ghost`");
    refused(&body, 13, 21, "upstream `users` is listed twice");
    refused(&body, 13, 36, "weight 1001 is over 1000");
    let zero = format!(
        "{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    backends: [{{ upstream: users, weight: 0 }}]\n"
    );
    refused(
        &zero,
        10,
        15,
        "every backend has weight 0, so none takes traffic",
    );
    let both = format!(
        "{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    upstream: users\n    backends: [{{ upstream: users }}]\n"
    );
    refused(&both, 8, 5, "has both `upstream` and `backends`");
    refused(
        "upstreams:\n  u: { targets: [{ addr: \"127.0.0.1:1\", weight: 0 }] }\n",
        6,
        17,
        "every target of upstream `u` has weight 0",
    );
}

#[test]
fn redirects_are_checked() {
    refused(
        "routes:\n  - name: a\n    match: { path: /a }\n    redirect: { status: 200 }\n",
        8,
        25,
        "200 is not a redirect status",
    );
    refused(
        "routes:\n  - name: a\n    match: { path: /a }\n    redirect: { prefix: /b/ }\n",
        8,
        25,
        "this route has no `path_prefix`",
    );
    refused(
        "routes:\n  - name: a\n    match: { path: /a }\n    redirect: { path: //evil.com }\n",
        8,
        23,
        "`//evil.com` is not a path to redirect to",
    );
    refused(
        "routes:\n  - name: a\n    match: { path: /a }\n    redirect: { host: \"evil.com:80\" }\n",
        8,
        23,
        "`evil.com:80` is not a host name",
    );
}

#[test]
fn retry_policies_are_checked() {
    let route = |retry: &str| {
        format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n    retry: {retry}\n")
    };
    refused(
        &route("{ attempts: 0 }"),
        11,
        24,
        "attempts must be 1 to 10",
    );
    refused(
        &route("{ on: [connect, 404] }"),
        11,
        28,
        "`404` is not something to retry on",
    );
    refused(
        &route("{ budget: 120% }"),
        11,
        22,
        "`120%` is not a share such as 20%",
    );
    refused(
        "routes:\n  - name: a\n    match: { path: /a }\n    respond: { text: hi }\n    retry: { attempts: 2 }\n",
        9,
        14,
        "`retry` is for routes that proxy",
    );
}

#[test]
fn outlier_settings_are_checked() {
    refused(
        "upstreams:\n  u: { targets: [\"127.0.0.1:1\"], outlier: { consecutive_failures: 0, max_ejected: half } }\n",
        6,
        67,
        "consecutive_failures must be at least 1",
    );
    refused(
        "upstreams:\n  u: { targets: [\"127.0.0.1:1\"], outlier: { consecutive_failures: 0, max_ejected: half } }\n",
        6,
        83,
        "`half` is not a share such as 50%",
    );
}

#[test]
fn sticky_settings_are_checked() {
    refused(
        &format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n    sticky: {{ cookie: c }}\n"),
        11,
        15,
        "this route has none",
    );
    let split = |sticky: &str| {
        format!("{UPSTREAM}routes:\n  - name: a\n    match: {{ path: /a }}\n    backends: [{{ upstream: users }}]\n    sticky: {sticky}\n")
    };
    refused(
        &split("{ claim: sub }"),
        11,
        22,
        "sticky by claim needs the route's `auth`",
    );
    refused(
        &split("{ cookie: c, key_env: PORTICO_TEST_UNSET_KEY }"),
        11,
        23,
        "needs signing keys of 32 bytes or more in $PORTICO_TEST_UNSET_KEY",
    );
    refused(
        &split("{ cookie: c, claim: sub }"),
        11,
        15,
        "one of `cookie`, `claim` or `header`",
    );
}

#[test]
fn mirrors_are_checked() {
    let route = |mirror: &str| {
        format!("{UPSTREAM}  shadow: {{ targets: [\"127.0.0.1:8002\"] }}\nroutes:\n  - name: a\n    match: {{ path: / }}\n    upstream: users\n    mirror: {mirror}\n")
    };
    refused(&route("{ upstream: ghost }"), 12, 25, "ghost");
    refused(
        &route("{ upstream: users }"),
        12,
        25,
        "already serves this route",
    );
    refused(
        &route("{ upstream: shadow, percent: 150 }"),
        12,
        42,
        "percent 150 is outside 0 to 100",
    );
    refused(
        &route("{ upstream: shadow, compare: { ignore: [meta] } }"),
        12,
        53,
        "`meta` is not a JSON pointer",
    );
    refused(
        &route("{ upstream: shadow, max_in_flight: 0 }"),
        12,
        48,
        "max_in_flight must be at least 1",
    );
    let respond = format!(
        "{UPSTREAM}routes:\n  - name: a\n    match: {{ path: / }}\n    respond: {{ status: 200 }}\n    mirror: {{ upstream: users }}\n"
    );
    refused(&respond, 11, 15, "`mirror` copies requests a route proxies");
    // The shadow and a split route's backends count as used: no warning.
    let (code, out) = check(&route("{ upstream: shadow, percent: 5 }"));
    assert_eq!((code, out.contains("warning:")), (0, false), "{out}");
    let split = format!(
        "{UPSTREAM}  canary: {{ targets: [\"127.0.0.1:8002\"] }}\nroutes:\n  - name: a\n    match: {{ path: / }}\n    backends: [{{ upstream: users, weight: 9 }}, {{ upstream: canary, weight: 1 }}]\n"
    );
    let (code, out) = check(&split);
    assert_eq!((code, out.contains("warning:")), (0, false), "{out}");
    // A shadow that serves another route is warned about.
    let shared = format!(
        "{UPSTREAM}  other: {{ targets: [\"127.0.0.1:8002\"] }}\nroutes:\n  - name: a\n    match: {{ path: / }}\n    upstream: users\n    mirror: {{ upstream: other }}\n  - {{ name: b, match: {{ path: /b }}, upstream: other }}\n"
    );
    let (code, out) = check(&shared);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("g.yaml:12:25: warning: `other` also serves route `b`"),
        "{out}"
    );
}
