//! The dashboard on the admin listener: its JSON endpoints on their own, and its pages in a
//! real headless Chromium (tests/browser/dashboard.mjs) after real traffic: a 401, a 404
//! and the 5xx of a stopped upstream, whose breaker the page shows opening by itself.

mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "an-admin-token-for-tests-0123456789";

fn config(up: &TestUpstream) -> String {
    format!(
        r#"server: {{ threads: 1 }}
admin: {{ token_env: ADMIN_TOKEN }}
upstreams:
  orders:
    targets: ["{up}"]
    timeouts: {{ connect: 300ms, read: 1s }}
    retries: {{ attempts: 0 }}
    breaker: {{ consecutive_failures: 2, open_for: 5m }}
auth:
  partners: {{ type: api_key, keys_file: partners.yaml }}
routes:
  - {{ name: orders, match: {{ path_prefix: /api/orders }}, upstream: orders }}
  - {{ name: partner, match: {{ path_prefix: /partner/ }}, upstream: orders, auth: partners }}
"#,
        up = up.addr
    )
}

fn start(up: &TestUpstream) -> Gateway {
    start_body(&config(up))
}

/// The gateway on `body`, with the admin token and an empty keys file beside it.
fn start_body(body: &str) -> Gateway {
    Gateway::start_env(&["run"], &[("ADMIN_TOKEN", TOKEN)], body, |dir, text| {
        std::fs::write(dir.join("partners.yaml"), "[]\n").unwrap();
        let config = dir.join("gateway.yaml");
        std::fs::write(&config, text).unwrap();
        config
    })
}

/// What `portico route` says of the probe the tests explain, on the gateway's own config.
fn portico_route(gw: &Gateway) -> (i32, String, String) {
    let config = gw.config.to_str().unwrap();
    let args = ["route", "-c", config, "GET", "/api/orders/7"];
    portico_env(&args, gw.dir.path(), &[("ADMIN_TOKEN", TOKEN)])
}

fn traffic(gw: &Gateway) {
    let c = client();
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/api/orders/1")).send().unwrap().status(), 200);
    }
    assert_eq!(c.get(gw.url("/partner/x")).send().unwrap().status(), 401);
    assert_eq!(c.get(gw.url("/api/order/1")).send().unwrap().status(), 404);
}

#[test]
fn the_json_endpoints_report_figures_failures_and_explanations() {
    let up = TestUpstream::start("orders");
    let gw = start(&up);
    traffic(&gw);
    // The logging phase records a request after its answer is sent: wait for all seven.
    let all = wait_until(Duration::from_secs(10), || {
        gw.admin_json("/live?minutes=1")["gateway"]["requests"] == 7
            && gw.admin_json("/errors")["errors"].as_array().map(Vec::len) == Some(2)
    });
    assert!(all.is_some());
    let live = gw.admin_json("/live?minutes=1");
    assert_eq!(live["minutes"], 1);
    assert_eq!(live["routes"]["orders"]["requests"], 5);
    assert_eq!(live["routes"]["partner"]["client_error_pct"], 100.0);
    assert_eq!(live["gateway"]["requests"], 7);
    assert!(live["routes"]["orders"]["p50_ms"].is_u64());

    let errors = gw.admin_json("/errors");
    let list = errors["errors"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{errors}");
    assert_eq!(list[0]["status"], 404, "newest first");
    assert_eq!(list[0]["code"], "route_not_found");
    let reason = list[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("no route: nearest candidates /api/orders (route orders)"),
        "{reason}"
    );
    assert_eq!(list[1]["code"], "api_key_missing");
    assert_eq!(list[1]["route"], "partner");
    assert_eq!(list[1]["reason"], "no API key was sent");

    let overview = gw.admin_json("/overview");
    assert_eq!(overview["reloads"][0]["trigger"], "startup");
    assert_eq!(overview["routes"], 2);
    // A reload's changes are listed field by field.
    gw.write_config(&config(&up).replace("open_for: 5m", "open_for: 4m"));
    let reloaded = wait_until(Duration::from_secs(10), || {
        gw.admin_json("/overview")["reloads"][0]["trigger"] != "startup"
    });
    assert!(reloaded.is_some());
    let changes = gw.admin_json("/overview")["reloads"][0]["changes"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        changes,
        "~ upstreams `orders` changed\n    breaker.open_for: 5m → 4m\n"
    );

    let explained = gw.admin_json("/explain?method=GET&path=/api/orders/7");
    let (code, cli, err) = portico_route(&gw);
    assert_eq!(code, 0, "{err}");
    assert_eq!(explained["explanation"], cli.as_str());

    // Read-only: the one call that changes state needs the token.
    let c = client();
    let purge = |token: Option<&str>| {
        let mut req = c.post(gw.admin_url("/cache/purge")).body("{}");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(purge(None), 401);
    assert_eq!(purge(Some("wrong")), 401);
    assert_eq!(
        purge(Some(TOKEN)),
        400,
        "authorized; the body names no cache"
    );
    // Only by address: a rebound name (DNS rebinding) gets nothing; `/ui` goes to `/ui/`.
    let rebound = c
        .get(gw.admin_url("/errors"))
        .header("Host", "attacker.example:80")
        .send()
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let local = c
        .get(gw.admin_url("/live"))
        .header("Host", "localhost")
        .send()
        .unwrap();
    assert_eq!(local.status(), 200);
    let bare = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(gw.admin_url("/ui"))
        .send()
        .unwrap();
    assert_eq!(
        (
            bare.status().as_u16(),
            bare.headers()["location"].to_str().unwrap()
        ),
        (308, "/ui/")
    );
    let page = c.get(gw.admin_url("/ui/")).send().unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(
        !page.text().unwrap().contains("<script>"),
        "no inline script"
    );
    let config = c
        .get(gw.admin_url("/overview"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!config.contains(TOKEN));
}

#[test]
fn the_pages_show_live_figures_reasons_and_a_breaker_opening_in_chromium() {
    let up = TestUpstream::start("orders");
    let gw = start(&up);
    traffic(&gw);
    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut driver = Command::new("node")
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser"))
        .arg("dashboard.mjs")
        .arg(format!("http://{}", gw.admin))
        .arg(&shots)
        .args(["GET", "/api/orders/7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs tests/browser/dashboard.mjs");
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the driver's first line").unwrap();
    assert_eq!(first, "watching");
    // The upstream stops while the page is open: its breaker opens after two failures.
    drop(up);
    let c = client();
    for _ in 0..3 {
        let status = c
            .get(gw.url("/api/orders/9"))
            .send()
            .unwrap()
            .status()
            .as_u16();
        assert!(status == 502 || status == 503, "{status}");
    }
    assert_eq!(lines.next().expect("the breaker seen").unwrap(), "open");
    // Every request is recorded before the pages are read: 5 answered, 3 failed.
    let recorded = wait_until(Duration::from_secs(10), || {
        let errors = gw.admin_json("/errors").to_string();
        errors.contains("circuit_open")
            && gw.admin_json("/live?minutes=5")["routes"]["orders"]["requests"] == 8
    });
    assert!(recorded.is_some());
    std::io::Write::write_all(&mut driver.stdin.take().unwrap(), b"go\n").unwrap();
    let last = lines.next().expect("the driver's result").unwrap();
    let status = driver.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut driver.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let result: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(result["problems"], serde_json::json!([]), "console errors");
    assert_eq!(
        result["violations"],
        serde_json::json!([]),
        "CSP violations"
    );
    let text = |page: &str| result["texts"][page].as_str().unwrap().to_string();
    let routes = text("routes");
    assert!(
        routes.contains("orders") && routes.contains("partner"),
        "{routes}"
    );
    assert!(routes.contains("auth:partners (type: api_key"), "{routes}");
    let upstreams = text("upstreams");
    assert!(upstreams.contains("open"), "{upstreams}");
    let errors = text("errors");
    for seen in [
        "api_key_missing",
        "no API key was sent",
        "route_not_found",
        "no route: nearest candidates /api/orders",
        "circuit_open",
    ] {
        assert!(errors.contains(seen), "{seen} in {errors}");
    }
    let (_, cli, _) = portico_route(&gw);
    assert_eq!(result["explanation"], cli.as_str());
    for page in [
        "overview",
        "routes",
        "upstreams",
        "traffic",
        "errors",
        "explain",
    ] {
        let png = shots.join(format!("{page}.png"));
        assert!(
            std::fs::metadata(&png).unwrap().len() > 10_000,
            "{page}.png"
        );
    }
}

#[test]
fn with_the_dashboard_off_its_pages_and_endpoints_are_gone() {
    let up = TestUpstream::start("orders");
    let body = config(&up).replace(
        "admin: { token_env: ADMIN_TOKEN }",
        "admin: { token_env: ADMIN_TOKEN, dashboard: false }",
    );
    let gw = start_body(&body);
    for path in ["/ui/", "/live", "/errors", "/overview"] {
        let resp = client().get(gw.admin_url(path)).send().unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    assert_eq!(
        client()
            .get(gw.admin_url("/routes"))
            .send()
            .unwrap()
            .status(),
        200
    );
}
