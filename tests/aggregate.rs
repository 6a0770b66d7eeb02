//! Aggregate routes and path templates through the real gateway, against real upstreams:
//! calls in parallel, composition, filters, failures that are never silent, placeholders
//! that cannot move a path, and `check`/`route` for them.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn header(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

fn upstreams(users: &TestUpstream, orders: &TestUpstream) -> String {
    format!(
        "server: {{ threads: 2 }}\nupstreams:\n  users: {{ targets: [\"{}\"], retries: {{ attempts: 0 }} }}\n  orders: {{ targets: [\"{}\"], retries: {{ attempts: 0 }} }}\n",
        users.addr, orders.addr
    )
}

#[test]
fn calls_run_in_parallel_and_compose_one_answer() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    let gw = Gateway::start(&format!(
        r#"{}routes:
  - name: dashboard
    match: {{ path_template: "/dashboard/{{id}}", methods: [GET] }}
    aggregate:
      timeout: 3s
      calls:
        - {{ name: user, upstream: users, path: "/users/{{id}}?rendezvous=dash&of=2", deny: [headers, body_sha256] }}
        - {{ name: orders, upstream: orders, path: "/orders?user={{id}}&rendezvous=dash&of=2", allow: [method, uri] }}
        - {{ name: prefs, upstream: users, path: "/users/{{id}}/prefs", merge: true, allow: [server, uri] }}
"#,
        upstreams(&users, &orders)
    ));
    let resp = client()
        .get(gw.url("/dashboard/7"))
        .header("x-request-id", "agg-1")
        .send()
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "sequential calls would each wait for the other"
    );
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(header(&resp, "x-portico-partial"), None);
    let body: Value = resp.json().unwrap();
    assert_eq!(
        body,
        json!({
            "user": {"server": "users", "method": "GET", "uri": "/users/7?rendezvous=dash&of=2", "body_len": 0},
            "orders": {"method": "GET", "uri": "/orders?user=7&rendezvous=dash&of=2"},
            "server": "users",
            "uri": "/users/7/prefs",
        })
    );
    let seen = orders.last();
    assert_eq!(seen.headers["x-request-id"], ["agg-1"]);
    assert_eq!(seen.headers["x-forwarded-for"], ["127.0.0.1"]);
    assert_eq!(seen.headers["x-forwarded-proto"], ["http"]);
    assert!(seen.headers.contains_key("traceparent"));
    assert_eq!(users.count(), 2);
}

fn two_calls(users: &TestUpstream, orders: &TestUpstream, user: &str, order: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{}routes:
  - name: dash
    match: {{ path_template: "/dash/{{id}}" }}
    aggregate:
      calls:
        - {{ name: user, upstream: users, path: "{user}" }}
        - {{ name: orders, upstream: orders, path: "{order}", required: false, timeout: 300ms }}
"#,
        upstreams(users, orders)
    ))
}

#[test]
fn a_required_call_that_fails_fails_the_answer_naming_it() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    users.serve("/text", "this is not JSON");
    let c = client();
    let failing = Gateway::start(&format!(
        "{}routes:\n  - {{ name: bad, match: {{ path: /bad }}, aggregate: {{ calls: [{{ name: user, upstream: users, path: \"/users/1?status=500\" }}, {{ name: orders, upstream: orders, path: /o }}] }} }}\n  - {{ name: text, match: {{ path: /text }}, aggregate: {{ calls: [{{ name: doc, upstream: users, path: /text }}] }} }}\n  - {{ name: big, match: {{ path: /big }}, aggregate: {{ max_body: 1KiB, calls: [{{ name: blob, upstream: users, path: \"/x?download=4096\" }}] }} }}\n",
        upstreams(&users, &orders)
    ));
    let body = assert_json_error(
        c.get(failing.url("/bad")).send().unwrap(),
        502,
        "aggregate_call_failed",
    );
    assert_eq!(body["error"]["call"], "user");
    assert_eq!(
        body["error"]["message"],
        "the required call `user` failed: it answered 500"
    );
    let body = assert_json_error(
        c.get(failing.url("/text")).send().unwrap(),
        502,
        "aggregate_call_failed",
    );
    assert_eq!(
        body["error"]["message"],
        "the required call `doc` failed: its body is not JSON"
    );
    let body = assert_json_error(
        c.get(failing.url("/big")).send().unwrap(),
        502,
        "aggregate_call_failed",
    );
    assert_eq!(
        body["error"]["message"],
        "the required call `blob` failed: its body is over 1024 bytes"
    );
}

#[test]
fn an_optional_call_that_fails_or_is_slow_is_left_out_and_named() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    let c = client();
    for orders_path in ["/orders?status=503", "/orders?sleep_ms=3000"] {
        let gw = two_calls(&users, &orders, "/users/{id}", orders_path);
        let resp = c.get(gw.url("/dash/1")).send().unwrap();
        assert_eq!(resp.status(), 200, "{orders_path}");
        assert_eq!(
            header(&resp, "x-portico-partial").as_deref(),
            Some("orders")
        );
        let body: Value = resp.json().unwrap();
        assert_eq!(
            body,
            json!({"user": {
                "server": "users", "method": "GET", "uri": "/users/1", "body_len": 0,
                "body_sha256": body["user"]["body_sha256"], "headers": body["user"]["headers"],
            }})
        );
    }
}

#[test]
fn a_slow_required_call_hits_its_timeout_and_an_open_breaker_fails_fast() {
    let users = TestUpstream::start("users");
    let gw = Gateway::start(&format!(
        r#"server: {{ threads: 2 }}
upstreams:
  users:
    targets: ["{}"]
    retries: {{ attempts: 0 }}
    breaker: {{ consecutive_failures: 1, open_for: 1h }}
routes:
  - name: slow
    match: {{ path: /slow }}
    aggregate: {{ calls: [{{ name: user, upstream: users, path: "/u?sleep_ms=3000", timeout: 300ms }}] }}
"#,
        users.addr
    ));
    let c = client();
    let body = assert_json_error(
        c.get(gw.url("/slow")).send().unwrap(),
        504,
        "aggregate_call_timeout",
    );
    assert_eq!(body["error"]["call"], "user");
    let seen = users.count();
    let body = assert_json_error(
        c.get(gw.url("/slow")).send().unwrap(),
        502,
        "aggregate_call_failed",
    );
    assert_eq!(
        body["error"]["message"],
        "the required call `user` failed: its upstream's circuit breaker is open"
    );
    assert_eq!(users.count(), seen, "an open circuit is not called");
}

#[test]
fn auth_runs_before_any_call_and_claims_fill_placeholders() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, "aggregate-secret").unwrap();
    let gw = Gateway::start(&format!(
        "{}auth:\n  hs: {{ algorithms: [HS256], secret_file: \"{}\" }}\nroutes:\n  - {{ name: me, match: {{ path: /me }}, auth: hs, aggregate: {{ calls: [{{ name: orders, upstream: orders, path: \"/orders?owner={{claim.sub}}\" }}] }} }}\n",
        upstreams(&users, &orders),
        secret.display()
    ));
    let c = client();
    assert_json_error(c.get(gw.url("/me")).send().unwrap(), 401, "token_missing");
    assert_eq!(orders.count(), 0, "no call is made for a refused request");
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "a&b=c", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"aggregate-secret"),
    )
    .unwrap();
    let resp = c.get(gw.url("/me")).bearer_auth(token).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(orders.last().uri, "/orders?owner=a%26b%3Dc");
}

#[test]
fn placeholder_values_cannot_change_the_called_path() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    let gw = Gateway::start(&format!(
        "{}routes:\n  - {{ name: p, match: {{ path_template: \"/p/{{id}}\" }}, aggregate: {{ calls: [{{ name: item, upstream: users, path: \"/items/{{id}}?q={{query.q}}\" }}] }} }}\n",
        upstreams(&users, &orders)
    ));
    let c = client();
    let resp = c.get(gw.url("/p/a%20b?q=../x%26admin=1")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(users.last().uri, "/items/a%20b?q=..%2Fx%26admin%3D1");
    assert_eq!(c.get(gw.url("/p/x?q=..")).send().unwrap().status(), 200);
    assert_eq!(users.last().uri, "/items/x?q=%2E%2E");
    let seen = users.count();
    let resp = raw_request(
        gw.proxy,
        "GET /p/..%2Fadmin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(resp.status, 400, "{}", resp.head);
    assert!(resp.body.contains("\"bad_path\""), "{}", resp.body);
    let resp = raw_request(
        gw.proxy,
        "GET /p/../admin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        resp.status, 404,
        "`/p/../admin` is `/admin`, which no route takes"
    );
    assert_eq!(users.count(), seen);
}

#[test]
fn path_templates_route_and_rewrite_with_bindings() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: order, match: {{ path_template: \"/users/{{id}}/orders/{{order}}\" }}, upstream: svc, rewrite: \"/internal/orders/{{order}}?user={{id}}\" }}\n  - {{ name: files, match: {{ path_template: \"/files/{{rest...}}\" }}, upstream: svc, rewrite: \"/store/{{rest}}\" }}\n",
        up.addr
    ));
    let c = client();
    assert_eq!(
        c.get(gw.url("/users/7/orders/x1?y=2"))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(up.last().uri, "/internal/orders/x1?user=7&y=2");
    assert_json_error(
        c.get(gw.url("/users/7/orders")).send().unwrap(),
        404,
        "route_not_found",
    );
    assert_json_error(
        c.get(gw.url("/users/7/orders/x1/more")).send().unwrap(),
        404,
        "route_not_found",
    );
    assert_eq!(
        c.get(gw.url("/files/a/b.txt")).send().unwrap().status(),
        200
    );
    assert_eq!(up.last().uri, "/store/a/b.txt");
    let resp = c.get(gw.url("/users/a&admin=1/orders/x1")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().uri,
        "/internal/orders/x1?user=a%26admin%3D1",
        "a bound value cannot add a query parameter"
    );
}

#[test]
fn metrics_and_the_access_log_name_each_call_and_its_outcome() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    let gw = two_calls(&users, &orders, "/users/{id}", "/orders?status=500");
    let resp = client().get(gw.url("/dash/3")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = metrics_text(&gw);
    for (call, outcome) in [("user", "ok"), ("orders", "bad_status")] {
        let line = format!(
            "portico_aggregate_calls_total{{call=\"{call}\",outcome=\"{outcome}\",route=\"dash\"}} 1"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let logged = wait_until(Duration::from_secs(5), || {
        gw.log().contains(r#""calls":"user:ok,orders:bad_status""#)
    });
    assert!(logged.is_some(), "{}", gw.log());
}

#[test]
fn check_and_route_explain_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let head = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nupstreams:\n  users: { targets: [\"127.0.0.1:9\"] }\nroutes:\n";
    let bad = format!(
        "{head}  - name: d\n    match: {{ path_template: \"/d/{{id}}\" }}\n    aggregate:\n      calls:\n        - {{ name: a, upstream: nope, path: /a }}\n        - {{ name: a, upstream: users, path: \"/b/{{other}}\" }}\n"
    );
    std::fs::write(dir.path().join("g.yaml"), &bad).unwrap();
    let (code, out, err) = portico(&["check", "g.yaml"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    for want in [
        "g.yaml:10:32: error: unknown upstream `nope`",
        "g.yaml:11:19: error: duplicate call name `a`",
        "g.yaml:11:45: error: `{other}` is neither bound by the route's path_template",
    ] {
        assert!(err.contains(want), "`{want}` in:\n{err}");
    }
    assert!(!err.contains("not used by any route"), "{err}");
    let good = format!(
        "{head}  - name: d\n    match: {{ path_template: \"/d/{{id}}\" }}\n    aggregate:\n      calls:\n        - {{ name: user, upstream: users, path: \"/users/{{id}}?q={{query.q}}\" }}\n        - {{ name: mine, upstream: users, path: \"/o?owner={{claim.sub}}\", required: false }}\n  - {{ name: e, match: {{ path_template: \"/d/{{name}}\" }}, respond: {{ text: x }} }}\n"
    );
    std::fs::write(dir.path().join("g.yaml"), &good).unwrap();
    let (code, _, err) = portico(&["check", "g.yaml"], dir.path());
    assert_eq!(code, 0, "{err}");
    let want =
        "g.yaml:12:25: warning: route `e` is shadowed by the earlier route `d` (g.yaml:6:5) and never matches";
    assert!(err.contains(want), "`{want}` in:\n{err}");
    let (code, out, err) = portico(
        &["route", "-c", "g.yaml", "GET", "/d/7?q=a%20b"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    for want in [
        "  bound: id = 7",
        "    user (required) → upstream users: GET /users/7?q=a%20b",
        "    mine (optional) → upstream users: GET /o?owner={claim.sub}",
    ] {
        assert!(out.lines().any(|l| l == want), "`{want}` in:\n{out}");
    }
}

/// An HTTP/2 client's aggregate calls go to an HTTP/1.1 upstream as HTTP/1.1 requests, with
/// the `Host` the client named in `:authority` (they were sent as `GET /a HTTP/2`: 505).
#[test]
fn an_http2_client_gets_its_aggregate_answer() {
    let (users, orders) = (TestUpstream::start("users"), TestUpstream::start("orders"));
    let gw = Gateway::start(&format!(
        r#"  h2c: true
{}routes:
  - name: both
    match: {{ path_template: "/both/{{id}}" }}
    aggregate:
      calls:
        - {{ name: user, upstream: users, path: "/users/{{id}}", allow: [uri] }}
        - {{ name: orders, upstream: orders, path: "/orders?user={{id}}", allow: [uri] }}
"#,
        upstreams(&users, &orders)
    ));
    let h2 = reqwest::blocking::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/both/7")).send().unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(
        body,
        json!({"user": {"uri": "/users/7"}, "orders": {"uri": "/orders?user=7"}})
    );
    let host = users.last().headers["host"].clone();
    assert_eq!(host, [gw.proxy.to_string()]);
}

/// A client that leaves while its aggregate calls run cancels them: the request ends at
/// once instead of holding its upstream connections until the slowest call answers.
#[test]
fn a_client_that_leaves_cancels_its_calls() {
    use std::io::Write;
    let users = TestUpstream::start("users");
    let gw = Gateway::start(&format!(
        r#"upstreams:
  users: {{ targets: ["{}"], timeouts: {{ read: 2m }} }}
routes:
  - name: slow
    match: {{ path: /slow }}
    aggregate:
      timeout: 2m
      calls:
        - {{ name: user, upstream: users, path: "/users/1?sleep_ms=60000" }}
"#,
        users.addr
    ));
    let mut conn = std::net::TcpStream::connect(gw.proxy).unwrap();
    conn.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let called = wait_until(Duration::from_secs(10), || users.count() == 1);
    assert!(called.is_some(), "{}", gw.log());
    drop(conn);
    let in_flight = || metric(&gw, "portico_requests_in_flight");
    let ended = wait_until(Duration::from_secs(20), || in_flight() == 0.0);
    assert!(
        ended.is_some(),
        "the calls still run for a client that left"
    );
}
