//! Rollouts: traffic split by weight across backends (smooth weighted round robin) and
//! across an upstream's targets, drained by weight 0, changed by a live reload.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// A folder holding `g.yaml`: `body` after a `listen` that is never bound (for the CLI).
fn config_dir(body: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("version: 1\nlisten: {{ proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }}\n{body}");
    std::fs::write(dir.path().join("g.yaml"), text).unwrap();
    dir
}

/// How many of `n` requests to `path` each upstream served (by its `x-upstream` header).
fn spread(gw: &Gateway, path: &str, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let resp = c.get(gw.url(path)).send().unwrap();
        assert_eq!(resp.status(), 200);
        let who = resp.headers()["x-upstream"].to_str().unwrap().to_string();
        *counts.entry(who).or_default() += 1;
    }
    counts
}

fn split(stable: &TestUpstream, canary: &TestUpstream, weights: (u32, u32)) -> String {
    format!(
        "upstreams:\n  orders: {{ targets: [\"{}\"] }}\n  orders-v2: {{ targets: [\"{}\"] }}\nroutes:\n  - name: orders\n    match: {{ path_prefix: / }}\n    backends:\n      - {{ upstream: orders, weight: {} }}\n      - {{ upstream: orders-v2, weight: {} }}\n",
        stable.addr, canary.addr, weights.0, weights.1
    )
}

#[test]
fn a_ninety_ten_split_sends_exactly_ninety_ten() {
    let (stable, canary) = (TestUpstream::start("v1"), TestUpstream::start("v2"));
    let gw = Gateway::start(&split(&stable, &canary, (90, 10)));
    let counts = spread(&gw, "/api/orders", 1000);
    assert_eq!((counts["v1"], counts["v2"]), (900, 100), "{counts:?}");
    // Each backend's requests are counted under its upstream.
    let series = |up: &str| {
        format!("portico_requests_total{{method=\"GET\",route=\"orders\",status=\"200\",upstream=\"{up}\"}}")
    };
    assert_eq!(
        metric(&gw, &series("orders")),
        900.0,
        "{}",
        metrics_text(&gw)
    );
    assert_eq!(metric(&gw, &series("orders-v2")), 100.0);
    let latency =
        "portico_upstream_duration_seconds_count{route=\"orders\",upstream=\"orders-v2\"}";
    assert_eq!(metric(&gw, latency), 100.0);
}

#[test]
fn weight_zero_drains_a_backend_and_weights_change_by_reload() {
    let (stable, canary) = (TestUpstream::start("v1"), TestUpstream::start("v2"));
    let gw = Gateway::start(&split(&stable, &canary, (90, 10)));
    assert_eq!(spread(&gw, "/x", 10).len(), 2);
    gw.write_config(&split(&stable, &canary, (0, 1)));
    let reloaded = wait_until(Duration::from_secs(10), || {
        gw.admin_json("/routes")["routes"][0]["action"]["backends"][0]["weight"] == 0
    });
    assert!(reloaded.is_some(), "{}", gw.log());
    let counts = spread(&gw, "/x", 50);
    assert_eq!(counts.get("v2"), Some(&50), "{counts:?}");
}

#[test]
fn target_weights_split_an_upstream_three_to_one() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let gw = Gateway::start(&format!(
        "upstreams:\n  svc: {{ targets: [{{ addr: \"{}\", weight: 3 }}, \"{}\"] }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        a.addr, b.addr
    ));
    let counts = spread(&gw, "/x", 400);
    assert_eq!((counts["a"], counts["b"]), (300, 100), "{counts:?}");
}

#[test]
fn a_split_route_is_explained_with_its_weights() {
    let dir = config_dir(
        "upstreams:\n  orders: { targets: [{ addr: 10.0.0.1:80, weight: 3 }, 10.0.0.2:80] }\n  orders-v2: { targets: [10.0.1.1:80] }\nroutes:\n  - name: orders\n    match: { path_prefix: /api/orders }\n    backends: [{ upstream: orders, weight: 90 }, { upstream: orders-v2, weight: 10 }]\n",
    );
    let (code, out, err) = portico(
        &["route", "-c", "g.yaml", "GET", "/api/orders/1"],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("upstream: orders (round_robin) → 10.0.0.1:80 (weight 3), 10.0.0.2:80; weight 90 of 100"),
        "{out}"
    );
    assert!(
        out.contains("upstream: orders-v2 (round_robin) → 10.0.1.1:80; weight 10 of 100"),
        "{out}"
    );
    // A weight change is a change to `diff`.
    let text = std::fs::read_to_string(dir.path().join("g.yaml")).unwrap();
    std::fs::write(
        dir.path().join("h.yaml"),
        text.replace("weight: 90", "weight: 80"),
    )
    .unwrap();
    let (code, out, _) = portico(&["diff", "g.yaml", "h.yaml"], dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("\"weight\":90},") && out.contains("\"weight\":80},"),
        "{out}"
    );
}

/// A client that does not follow redirects, to see them.
fn no_follow() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[test]
fn redirects_build_their_location_and_keep_the_query() {
    let gw = Gateway::start(
        "routes:\n  - { name: old-docs, match: { path_prefix: /docs/v1/ }, redirect: { prefix: /docs/v2/, status: 301 } }\n  - { name: moved, match: { path: /old }, redirect: { scheme: https, host: new.example.com, port: 8443, path: /new } }\n  - { name: same, match: { path: /here }, redirect: { path: /there } }\n",
    );
    let c = no_follow();
    let resp = c
        .get(gw.url("/docs/v1/guide/intro?lang=en&v=2"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 301);
    let here = format!("http://{}", gw.proxy);
    assert_eq!(
        resp.headers()["location"],
        format!("{here}/docs/v2/guide/intro?lang=en&v=2").as_str()
    );
    assert!(resp.headers().contains_key("x-request-id"));
    // The prefix is replaced on the path as the router matched it (normalized).
    let resp = c.get(gw.url("/%64ocs/v1/guide")).send().unwrap();
    assert_eq!(
        resp.headers()["location"],
        format!("{here}/docs/v2/guide").as_str()
    );
    let resp = c.get(gw.url("/old?q=1")).send().unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(
        resp.headers()["location"],
        "https://new.example.com:8443/new?q=1"
    );
    // The request's host (and port) when none is set; a host that is not one is refused.
    let resp = c.get(gw.url("/here")).send().unwrap();
    assert_eq!(resp.headers()["location"], format!("{here}/there").as_str());
    let raw = raw_request(
        gw.proxy,
        "GET /here HTTP/1.1\r\nHost: evil.com/x@y\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(raw.status, 400);
}

/// A target that answers every request 503.
fn unavailable() -> std::net::SocketAddr {
    scripted_upstream(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
}

/// A target that reads a request and never answers (each connection held 10 s at most).
fn silent() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                std::thread::sleep(Duration::from_secs(10));
            });
        }
    });
    addr
}

fn retry_route(targets: &str, retry: &str) -> String {
    format!(
        "upstreams:\n  svc: {{ targets: [{targets}], retries: {{ attempts: 0 }} }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n    retry: {retry}\n"
    )
}

fn retries(gw: &Gateway, reason: &str) -> f64 {
    let series = format!("portico_upstream_retries_total{{reason=\"{reason}\",route=\"svc\"}}");
    metric(gw, &series).max(0.0)
}

#[test]
fn a_503_is_retried_on_another_target_and_a_post_is_not() {
    let good = TestUpstream::start("good");
    let targets = format!("\"{}\", \"{}\"", unavailable(), good.addr);
    let gw = Gateway::start(&retry_route(
        &targets,
        "{ attempts: 2, on: [503, reset], backoff: 1ms }",
    ));
    let retry = &gw.admin_json("/routes")["routes"][0]["retry"];
    assert_eq!(
        retry,
        "retry: 2 tries in all on reset, 503, backoff 1ms, budget 20%"
    );
    let c = client();
    for _ in 0..10 {
        let resp = c.get(gw.url("/x")).send().unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Round robin starts every request on the failing target, then retries on the other.
    assert_eq!(retries(&gw, "503"), 10.0, "{}", metrics_text(&gw));
    let logged = wait_until(Duration::from_secs(5), || gw.log().contains("\"tries\":2"));
    assert!(logged.is_some(), "{}", gw.log());
    // A POST reached the upstream: its 503 is the answer, never a second try.
    let mut posts = Vec::new();
    for _ in 0..2 {
        posts.push(
            c.post(gw.url("/x"))
                .body("order")
                .send()
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(posts, [503, 200], "the 503 went to the client as it was");
    assert_eq!(retries(&gw, "503"), 10.0);
}

#[test]
fn a_connect_failure_is_retried_even_for_a_post() {
    let good = TestUpstream::start("good");
    let dead = format!("127.0.0.1:{}", free_port());
    let targets = format!("\"{dead}\", \"{}\"", good.addr);
    let gw = Gateway::start(&retry_route(
        &targets,
        "{ attempts: 2, on: [connect], backoff: 1ms }",
    ));
    let resp = client().post(gw.url("/x")).body("order").send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(retries(&gw, "connect"), 1.0);
}

#[test]
fn a_try_that_times_out_is_retried_elsewhere() {
    let good = TestUpstream::start("good");
    let targets = format!("\"{}\", \"{}\"", silent(), good.addr);
    // One failure ejects a target: the retried try must count against the silent one.
    let config = retry_route(
        &targets,
        "{ attempts: 2, on: [timeout], per_try_timeout: 300ms, backoff: 1ms }",
    )
    .replace(
        "retries: { attempts: 0 }",
        "retries: { attempts: 0 }, outlier: { consecutive_failures: 1, base_ejection: 30s }",
    );
    let gw = Gateway::start(&config);
    let resp = client().get(gw.url("/x")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "good");
    assert_eq!(retries(&gw, "timeout"), 1.0);
    let silent_target = &gw.admin_json("/upstreams")["upstreams"]["svc"]["targets"][0];
    assert_eq!(silent_target["times_ejected"], 1, "{silent_target}");
}

/// Every target fails: 50 requests of 3 tries each would make 100 retries; the budget
/// (a reserve of 10, then a fifth of the requests) allows exactly 20.
#[test]
fn the_budget_caps_retries_when_every_target_fails() {
    let targets = format!("\"{}\", \"{}\"", unavailable(), unavailable());
    let gw = Gateway::start(&retry_route(
        &targets,
        "{ attempts: 3, on: [503], backoff: 1ms, budget: 20% }",
    ));
    let c = client();
    for _ in 0..50 {
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 503);
    }
    assert_eq!(retries(&gw, "503"), 20.0, "{}", metrics_text(&gw));
}

#[test]
fn routes_match_on_query_parameters() {
    let gw = Gateway::start(
        "routes:\n  - { name: debug, match: { path_prefix: /api/orders, query: { debug: \"1\" } }, respond: { text: debug } }\n  - { name: versioned, match: { path_prefix: /api/orders, query: { v: { regex: \"v[0-9]+\" } } }, respond: { text: versioned } }\n  - { name: beta, match: { path_prefix: /api/orders, query: { beta: { present: true } } }, respond: { text: beta } }\n  - { name: plain, match: { path_prefix: /api/orders }, respond: { text: plain } }\n",
    );
    let c = client();
    for (query, want) in [
        ("?debug=1", "debug"),
        ("?debug=%31&x=2", "debug"),
        ("?debug=2", "plain"),
        ("?v=v12", "versioned"),
        ("?v=v12x", "plain"),
        ("?beta", "beta"),
        ("", "plain"),
    ] {
        let body = c
            .get(gw.url(&format!("/api/orders/7{query}")))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(body, want, "{query}");
    }
}

/// Two 503s in a row eject the failing target (never more than half of them); it comes
/// back when its time is up, and a second ejection lasts twice as long.
#[test]
fn a_failing_target_is_ejected_and_returns() {
    let good = TestUpstream::start("good");
    let gw = Gateway::start(&format!(
        "upstreams:\n  svc:\n    targets: [\"{}\", \"{}\"]\n    outlier: {{ consecutive_failures: 2, base_ejection: 5s, max_ejected: 50% }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        unavailable(),
        good.addr
    ));
    let c = client();
    let status = || c.get(gw.url("/x")).send().unwrap().status().as_u16();
    let first: Vec<u16> = (0..4).map(|_| status()).collect();
    assert_eq!(first, [503, 200, 503, 200]);
    // Its 5 s out are far longer than these few requests take.
    assert!(
        (0..5).all(|_| status() == 200),
        "the ejected target gets nothing"
    );
    let bad = || gw.admin_json("/upstreams")["upstreams"]["svc"]["targets"][0].clone();
    assert_eq!(bad()["times_ejected"], 1, "{}", bad());
    assert!(bad()["ejected_for_ms"].is_u64());
    let gauge = "portico_upstream_target_ejected{target=";
    assert!(metrics_text(&gw)
        .lines()
        .any(|l| l.starts_with(gauge) && l.ends_with(" 1")));
    let back = wait_until(Duration::from_secs(20), || {
        bad()["ejected_for_ms"].is_null()
    });
    assert!(back.is_some(), "{}", bad());
    // Back in turn: two more failures, and out again for twice as long.
    let mut failures = 0;
    for _ in 0..10 {
        if status() == 503 {
            failures += 1;
        }
        if failures == 2 {
            break;
        }
    }
    assert_eq!(failures, 2);
    assert_eq!(bad()["times_ejected"], 2, "{}", bad());
    assert!(bad()["ejected_for_ms"].is_u64());
}

const STICKY_KEY: &str = "a-sticky-cookie-key-of-32-bytes-or-more";

fn sticky_split(a: &TestUpstream, b: &TestUpstream, weights: (u32, u32), sticky: &str) -> String {
    format!(
        "upstreams:\n  v1: {{ targets: [\"{}\"] }}\n  v2: {{ targets: [\"{}\"] }}\nauth:\n  jwt: {{ algorithms: [HS256], secret_env: STICKY_JWT }}\nroutes:\n  - name: orders\n    match: {{ path_prefix: / }}\n    backends: [{{ upstream: v1, weight: {} }}, {{ upstream: v2, weight: {} }}]\n    sticky: {sticky}\n",
        a.addr, b.addr, weights.0, weights.1
    )
}

/// (backend that answered, the cookie it set if any) for a request with `cookie`.
fn sticky_get(gw: &Gateway, cookie: Option<&str>) -> (String, Option<String>) {
    let mut req = client().get(gw.url("/o"));
    if let Some(c) = cookie {
        req = req.header("cookie", format!("portico-orders={c}"));
    }
    let resp = req.send().unwrap();
    assert_eq!(resp.status(), 200);
    let who = resp.headers()["x-upstream"].to_str().unwrap().to_string();
    let set = resp.headers().get("set-cookie").map(|v| {
        let v = v.to_str().unwrap();
        assert!(v.contains("HttpOnly") && v.contains("Max-Age=3600"), "{v}");
        v.split(';')
            .next()
            .unwrap()
            .trim_start_matches("portico-orders=")
            .to_string()
    });
    (who, set)
}

#[test]
fn a_sticky_cookie_holds_and_moves_when_its_backend_is_drained() {
    let (a, b) = (TestUpstream::start("v1"), TestUpstream::start("v2"));
    let envs = [
        ("PORTICO_STICKY_KEY", STICKY_KEY),
        ("STICKY_JWT", STICKY_KEY),
    ];
    let body = |w| sticky_split(&a, &b, w, "{ cookie: portico-orders, ttl: 1h }");
    let gw = Gateway::start_with_env(&envs, &body((1, 1)));
    // The views say it: `/routes` as `portico route` does, the OpenAPI the cookie.
    let route = &gw.admin_json("/routes")["routes"][0];
    assert_eq!(
        route["sticky"],
        "sticky: by the signed cookie `portico-orders` (for 1h)"
    );
    let api = gw.admin_json("/openapi.json").to_string();
    assert!(api.contains("may set the cookie `portico-orders`"), "{api}");
    let (first, cookie) = sticky_get(&gw, None);
    let cookie = cookie.expect("the first answer sets the cookie");
    for _ in 0..50 {
        let (who, set) = sticky_get(&gw, Some(&cookie));
        assert_eq!((who.as_str(), set), (first.as_str(), None));
    }
    // A forged cookie (another backend's name under the old signature) is ignored.
    let other = if first == "v1" { "v2" } else { "v1" };
    let forged = cookie.replacen(&first, other, 1);
    let (_, set) = sticky_get(&gw, Some(&forged));
    assert!(set.is_some(), "a forged cookie is replaced");
    // Drain the kept backend: the cookie's client moves, and is told.
    let drained = if first == "v1" { (0, 1) } else { (1, 0) };
    gw.write_config(&body(drained));
    let reloaded = wait_until(Duration::from_secs(10), || {
        let w = &gw.admin_json("/routes")["routes"][0]["action"]["backends"];
        w[0]["weight"] == drained.0 && w[1]["weight"] == drained.1
    });
    assert!(reloaded.is_some(), "{}", gw.log());
    let (moved, set) = sticky_get(&gw, Some(&cookie));
    assert_eq!(moved, other);
    assert!(set.unwrap().starts_with(&format!("{other}.")));
}

#[test]
fn sticky_by_claim_keeps_each_user_and_a_client_header_cannot_choose() {
    let (a, b) = (TestUpstream::start("v1"), TestUpstream::start("v2"));
    let envs = [("STICKY_JWT", STICKY_KEY)];
    let gw = Gateway::start_with_env(
        &envs,
        &sticky_split(&a, &b, (1, 1), "{ claim: sub }")
            .replace("    sticky:", "    auth: jwt\n    sticky:"),
    );
    let c = client();
    let mut seen = std::collections::HashSet::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let token = hs256_token(STICKY_KEY, user);
        let backends: std::collections::HashSet<String> = (0..10)
            .map(|_| {
                let resp = c.get(gw.url("/o")).bearer_auth(&token).send().unwrap();
                assert_eq!(resp.status(), 200);
                resp.headers()["x-upstream"].to_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(backends.len(), 1, "{user} moved: {backends:?}");
        seen.extend(backends);
    }
    assert_eq!(seen.len(), 2, "six users spread over both backends");
    // By header: a client's own X-Session is not trusted, so it pins nothing.
    let gw = Gateway::start_with_env(
        &envs,
        &sticky_split(&a, &b, (1, 1), "{ header: X-Session }"),
    );
    let answered: std::collections::HashSet<String> = (0..10)
        .map(|_| {
            let resp = c
                .get(gw.url("/o"))
                .header("x-session", "constant")
                .send()
                .unwrap();
            resp.headers()["x-upstream"].to_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(answered.len(), 2, "the header chose nothing");
}

/// The targets that answered 10 requests made by `send`.
fn answered_by(
    send: impl Fn() -> reqwest::blocking::Response,
) -> std::collections::HashSet<String> {
    (0..10)
        .map(|_| {
            let resp = send();
            assert_eq!(resp.status(), 200);
            resp.headers()["x-upstream"].to_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn hash_balancing_keys_on_verified_claims_and_cookies_never_on_a_client_header() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let pool = |balance: &str, name: &str| {
        format!(
            "  {name}: {{ targets: [\"{}\", \"{}\"], balance: \"{balance}\" }}\n",
            a.addr, b.addr
        )
    };
    let gw = Gateway::start_with_env(
        &[("STICKY_JWT", STICKY_KEY)],
        &format!(
            "upstreams:\n{}{}{}auth:\n  jwt: {{ algorithms: [HS256], secret_env: STICKY_JWT }}\nroutes:\n  - {{ name: claim, match: {{ path_prefix: /claim }}, upstream: by-claim, auth: jwt }}\n  - {{ name: cookie, match: {{ path_prefix: /cookie }}, upstream: by-cookie }}\n  - {{ name: header, match: {{ path_prefix: /header }}, upstream: by-header }}\n",
            pool("hash(claim:sub)", "by-claim"),
            pool("hash(cookie:sid)", "by-cookie"),
            pool("hash(header:X-User-Id)", "by-header"),
        ),
    );
    let c = client();
    let mut users = std::collections::HashSet::new();
    for user in ["alice", "bob", "carol", "dave"] {
        let token = hs256_token(STICKY_KEY, user);
        let got = answered_by(|| c.get(gw.url("/claim")).bearer_auth(&token).send().unwrap());
        assert_eq!(got.len(), 1, "{user}: {got:?}");
        users.extend(got);
    }
    assert_eq!(users.len(), 2, "users spread over both targets");
    let got = answered_by(|| {
        c.get(gw.url("/cookie"))
            .header("cookie", "a=1; sid=s-42")
            .send()
            .unwrap()
    });
    assert_eq!(got.len(), 1);
    // The client is not a trusted proxy: its X-User-Id pins nothing (round robin).
    let got = answered_by(|| {
        c.get(gw.url("/header"))
            .header("x-user-id", "constant")
            .send()
            .unwrap()
    });
    assert_eq!(got.len(), 2, "a client-sent header chose the target");
}

#[test]
fn route_test_cases_can_expect_a_sticky_backend() {
    let dir = config_dir(
        "upstreams:\n  v1: { targets: [10.0.0.1:80] }\n  v2: { targets: [10.0.0.2:80] }\nroutes:\n  - name: orders\n    match: { path_prefix: /o }\n    backends: [{ upstream: v1 }, { upstream: v2 }]\n    sticky: { header: X-Session }\n",
    );
    let case = |session: &str, backend: &str| {
        format!("- {{ request: GET /o, headers: {{ X-Session: {session} }}, route: orders, backend: {backend} }}\n")
    };
    // Each session is kept on one backend: exactly one of the two expectations holds.
    for session in ["s1", "s2", "s3"] {
        let mut passed = 0;
        for backend in ["v1", "v2"] {
            std::fs::write(dir.path().join("cases.yaml"), case(session, backend)).unwrap();
            let (code, _, _) = portico(
                &["route", "-c", "g.yaml", "--test", "cases.yaml"],
                dir.path(),
            );
            passed += usize::from(code == 0);
        }
        assert_eq!(passed, 1, "session {session}");
    }
    std::fs::write(
        dir.path().join("cases.yaml"),
        "- { request: GET /o, route: orders, backend: v1 }\n",
    )
    .unwrap();
    let (code, out, _) = portico(
        &["route", "-c", "g.yaml", "--test", "cases.yaml"],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(out.contains("picks its backend by weight"), "{out}");
}
