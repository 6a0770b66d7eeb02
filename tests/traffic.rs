//! Traffic control against real upstreams and a real Redis: rate limits (local and shared),
//! circuit breakers, active health checks.

mod common;
use common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

fn header(resp: &reqwest::blocking::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn limited(policy: &str) -> String {
    format!("server: {{ threads: 1, trusted_proxies: [127.0.0.1] }}\nrate_limits:\n  p: {policy}\nroutes:\n  - {{ name: a, match: {{ path_prefix: /a }}, respond: {{ text: a }}, rate_limit: p }}\n  - {{ name: b, match: {{ path_prefix: /b }}, respond: {{ text: b }}, rate_limit: p }}\n")
}

#[test]
fn exact_count_at_the_boundary_with_headers_and_retry_after() {
    let gw = Gateway::start(&limited("{ requests: 5, per: 1m }"));
    let c = client();
    for remaining in (0..5).rev() {
        let resp = c.get(gw.url("/a")).send().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "ratelimit-limit"), "5");
        assert_eq!(header(&resp, "ratelimit-remaining"), remaining.to_string());
    }
    let resp = c.get(gw.url("/a")).send().unwrap();
    assert_eq!(
        header(&resp, "retry-after"),
        "12",
        "one request refills every 60s/5"
    );
    assert_eq!(header(&resp, "ratelimit-remaining"), "0");
    assert_json_error(resp, 429, "rate_limited");
    assert_eq!(
        c.get(gw.url("/b")).send().unwrap().status(),
        429,
        "one policy, one bucket per client across routes"
    );
}

#[test]
fn burst_adds_to_what_may_come_at_once() {
    let gw = Gateway::start(&limited("{ requests: 2, per: 1m, burst: 3 }"));
    let c = client();
    let statuses: Vec<u16> = (0..7)
        .map(|_| c.get(gw.url("/a")).send().unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
}

#[test]
fn keys_are_counted_separately() {
    let c = client();
    let gw = Gateway::start(&limited(
        "{ requests: 2, per: 1m, key: \"header:x-api-key\" }",
    ));
    let get = |key: &str| {
        c.get(gw.url("/a"))
            .header("x-api-key", key)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((get("k1"), get("k1"), get("k1")), (200, 200, 429));
    assert_eq!((get("k2"), get("k2"), get("k2")), (200, 200, 429));

    let gw = Gateway::start(&limited("{ requests: 1, per: 1m, key: client_ip }"));
    let from = |ip: &str| {
        c.get(gw.url("/a"))
            .header("x-forwarded-for", ip)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(
        (from("1.1.1.1"), from("1.1.1.1"), from("2.2.2.2")),
        (200, 429, 200),
        "client IP from a trusted proxy's XFF"
    );

    let gw = Gateway::start(&limited("{ requests: 1, per: 1m, key: route }"));
    let path = |p: &str| c.get(gw.url(p)).send().unwrap().status().as_u16();
    assert_eq!(
        (path("/a"), path("/a"), path("/b")),
        (200, 429, 200),
        "`key: route` counts each route apart"
    );
}

#[test]
fn retry_after_is_when_a_request_is_allowed_again() {
    let gw = Gateway::start(&limited("{ requests: 2, per: 2s }"));
    let c = client();
    assert_eq!(c.get(gw.url("/a")).send().unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/a")).send().unwrap().status(), 200);
    let resp = c.get(gw.url("/a")).send().unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = header(&resp, "retry-after").parse().unwrap();
    assert_eq!(wait, 1);
    // Refused requests use up nothing: polling finds the moment one is allowed again.
    let allowed = wait_until(Duration::from_secs(5), || {
        c.get(gw.url("/a")).send().unwrap().status() == 200
    });
    assert!(allowed.is_some(), "never allowed again");
    assert_eq!(c.get(gw.url("/a")).send().unwrap().status(), 429);
}

#[test]
fn a_reload_does_not_reset_a_rate_limit() {
    let gw = Gateway::start(&limited("{ requests: 3, per: 1h }"));
    let c = client();
    let statuses: Vec<u16> = (0..4)
        .map(|_| c.get(gw.url("/a")).send().unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    gw.write_config(&format!(
        "{}  - {{ name: new, match: {{ path: /new }}, respond: {{ text: new }} }}\n",
        limited("{ requests: 3, per: 1h }")
    ));
    assert!(wait_until(Duration::from_secs(2), || c
        .get(gw.url("/new"))
        .send()
        .unwrap()
        .status()
        == 200)
    .is_some());
    assert_eq!(
        c.get(gw.url("/a")).send().unwrap().status(),
        429,
        "the bucket survived the reload"
    );
}

fn redis_config(redis: &str, policies: &str) -> String {
    format!("server: {{ threads: 1 }}\nredis: {{ url: \"{redis}\", timeout: 100ms }}\nrate_limits:\n{policies}routes:\n  - {{ name: allow, match: {{ path_prefix: /allow }}, respond: {{ text: a }}, rate_limit: open }}\n  - {{ name: deny, match: {{ path_prefix: /deny }}, respond: {{ text: d }}, rate_limit: closed }}\n")
}

const POLICIES: &str = "  open: { requests: 10, per: 1m, key: route, backend: redis, on_redis_error: allow }\n  closed: { requests: 10, per: 1m, key: route, backend: redis, on_redis_error: deny }\n";

/// Waits until the gateway's Redis connection is up (it connects in the background).
fn until_redis_answers(gw: &Gateway) {
    let c = client();
    let up = wait_until(Duration::from_secs(5), || {
        !header(
            &c.get(gw.url("/deny/warmup")).send().unwrap(),
            "ratelimit-limit",
        )
        .is_empty()
    });
    assert!(up.is_some(), "gateway never reached redis:\n{}", gw.log());
}

#[test]
fn two_gateways_share_one_redis_limit() {
    let redis = RedisServer::start();
    let cfg = redis_config(&redis.url(), POLICIES);
    let (g1, g2) = (Gateway::start(&cfg), Gateway::start(&cfg));
    until_redis_answers(&g1);
    until_redis_answers(&g2);
    let c = client();
    let mut allowed = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        if c.get(gw.url("/allow")).send().unwrap().status() == 200 {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 10,
        "the sum across both gateways honours the limit"
    );
}

#[test]
fn redis_failure_follows_on_redis_error_without_hanging() {
    let mut redis = RedisServer::start();
    let gw = Gateway::start(&redis_config(&redis.url(), POLICIES));
    until_redis_answers(&gw);
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let statuses: Vec<u16> = (0..11)
        .map(|_| c.get(gw.url("/allow")).send().unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "redis counts while up: {statuses:?}"
    );

    redis.kill();
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            c.get(gw.url("/allow")).send().unwrap().status(),
            200,
            "allow: requests pass unchecked"
        );
        assert_json_error(
            c.get(gw.url("/deny")).send().unwrap(),
            503,
            "rate_limit_unavailable",
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a dead redis must not stall requests"
        );
    }
}

fn breaker_config(targets: &str, breaker: &str) -> String {
    format!("server: {{ threads: 1 }}\nupstreams:\n  svc:\n    targets: [{targets}]\n    timeouts: {{ read: 300ms, connect: 300ms }}\n    retries: {{ attempts: 0 }}\n    breaker: {breaker}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n")
}

#[test]
fn breaker_opens_fails_fast_probes_and_closes() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&breaker_config(
        &format!("\"{}\"", up.addr),
        "{ consecutive_failures: 3, open_for: 700ms }",
    ));
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/x?status=500")).send().unwrap().status(), 500);
    }
    let seen = up.count();
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");
    assert_eq!(
        up.count(),
        seen,
        "an open circuit fails fast without touching the upstream"
    );

    // Once open_for has passed, one probe goes through (and fails: open again).
    let probed = wait_until(Duration::from_secs(5), || {
        let status = c.get(gw.url("/x?status=503")).send().unwrap().status();
        up.count() > seen && status == 503
    });
    assert!(probed.is_some(), "the half-open probe never went through");
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");

    let closed = wait_until(Duration::from_secs(5), || {
        c.get(gw.url("/x")).send().unwrap().status() == 200
    });
    assert!(closed.is_some(), "a good probe closes the circuit");
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);
    }
}

#[test]
fn timeouts_and_resets_count_and_traffic_moves_to_the_healthy_target() {
    let good = TestUpstream::start("good");
    let dead = dead_addr();
    let gw = Gateway::start(&breaker_config(
        &format!("\"{dead}\", \"{}\"", good.addr),
        "{ consecutive_failures: 2, open_for: 1m }",
    ));
    let c = client();
    let first: Vec<u16> = (0..6)
        .map(|_| c.get(gw.url("/x")).send().unwrap().status().as_u16())
        .collect();
    assert_eq!(
        first.iter().filter(|s| **s == 502).count(),
        2,
        "two connect failures open the dead target: {first:?}"
    );
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);
    }

    let slow = TestUpstream::start("slow");
    let gw = Gateway::start(&breaker_config(
        &format!("\"{}\"", slow.addr),
        "{ consecutive_failures: 2, open_for: 1m }",
    ));
    for _ in 0..2 {
        let started = Instant::now();
        assert_json_error(
            c.get(gw.url("/x?sleep_ms=2000")).send().unwrap(),
            504,
            "upstream_timeout",
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "no request hangs past its timeout"
        );
    }
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");
}

#[test]
fn a_stopped_upstream_is_cut_off_and_recovers_when_restored() {
    let up = TestUpstream::start("svc");
    let addr = up.addr;
    let gw = Gateway::start(&breaker_config(
        &format!("\"{addr}\""),
        "{ consecutive_failures: 2, open_for: 500ms }",
    ));
    let c = client();
    assert_eq!(c.get(gw.url("/x")).send().unwrap().status(), 200);
    drop(up);
    assert_json_error(
        c.get(gw.url("/x")).send().unwrap(),
        502,
        "upstream_unreachable",
    );
    assert_json_error(
        c.get(gw.url("/x")).send().unwrap(),
        502,
        "upstream_unreachable",
    );
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");
    let _restored = TestUpstream::start_on("svc", addr);
    let recovered = wait_until(Duration::from_secs(3), || {
        c.get(gw.url("/x")).send().unwrap().status() == 200
    });
    assert!(
        recovered.is_some(),
        "the circuit closes once the upstream is back"
    );
}

#[test]
fn health_checks_remove_and_restore_targets() {
    let (a, b) = (TestUpstream::start("a"), TestUpstream::start("b"));
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc:\n    targets: [\"{}\", \"{}\"]\n    health_check: {{ path: /health, interval: 100ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
        a.addr, b.addr
    ));
    let c = client();
    let served = |n: usize| names(&gw, n);
    a.set_health(503);
    assert!(
        wait_until(Duration::from_secs(3), || served(4)
            .iter()
            .all(|s| s == "b"))
        .is_some(),
        "a is taken out"
    );
    a.set_health(200);
    assert!(
        wait_until(Duration::from_secs(3), || served(4)
            .iter()
            .any(|s| s == "a"))
        .is_some(),
        "a is restored"
    );
    a.set_health(500);
    b.set_health(500);
    let all_down = wait_until(Duration::from_secs(3), || {
        c.get(gw.url("/x")).send().unwrap().status() == 503
    });
    assert!(all_down.is_some());
    let seen = a.count() + b.count();
    assert_json_error(
        c.get(gw.url("/x")).send().unwrap(),
        503,
        "no_healthy_upstream",
    );
    assert_eq!(
        a.count() + b.count(),
        seen,
        "503 at once, no upstream touched"
    );
}

fn redis_state(gw: &Gateway) -> Value {
    gw.admin_json("/health")["redis"].clone()
}

/// Redis is connected at start, in the background, so the first limited request is counted
/// (not let through unchecked); `/health` and a metric say whether it is connected.
#[test]
fn redis_connects_at_start_and_health_says_so() {
    let mut redis = RedisServer::start();
    let gw = Gateway::start(&redis_config(&redis.url(), POLICIES));
    let up = wait_until(Duration::from_secs(10), || {
        redis_state(&gw) == serde_json::json!({"connected": true})
    });
    assert!(up.is_some(), "{}", gw.log());
    let metrics = metrics_text(&gw);
    assert!(
        metrics.lines().any(|l| l == "portico_redis_connected 1"),
        "{metrics}"
    );
    let c = client();
    let statuses: Vec<u16> = (0..14)
        .map(|_| c.get(gw.url("/deny")).send().unwrap().status().as_u16())
        .collect();
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        allowed, 10,
        "the very first request is counted: {statuses:?}"
    );
    redis.kill();
    let down = wait_until(Duration::from_secs(10), || {
        redis_state(&gw) == serde_json::json!({"connected": false})
    });
    assert!(down.is_some(), "{}", gw.log());
}

fn names(gw: &Gateway, n: usize) -> Vec<String> {
    let c = client();
    (0..n)
        .map(|_| {
            c.get(gw.url("/x")).send().unwrap().headers()["x-upstream"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn reload_and_wait(gw: &Gateway, body: &str) {
    let before = gw.admin_config()["config_hash"].clone();
    gw.write_config(body);
    let live = wait_until(Duration::from_secs(10), || {
        gw.admin_config()["config_hash"] != before
    });
    assert!(live.is_some(), "{}", gw.log());
}

/// A reload that changes only a timeout keeps the balancer's position and the targets'
/// health: round robin goes on where it was, an unhealthy target stays out.
#[test]
fn balancer_and_health_state_survive_a_reload_that_does_not_redefine_them() {
    let (a, b, c) = (
        TestUpstream::start("a"),
        TestUpstream::start("b"),
        TestUpstream::start("c"),
    );
    let body = |read: &str| {
        format!(
            "server: {{ threads: 1 }}\nupstreams:\n  svc:\n    targets: [\"{}\", \"{}\", \"{}\"]\n    timeouts: {{ read: {read} }}\n    health_check: {{ path: /health, interval: 100ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1000 }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
            a.addr, b.addr, c.addr
        )
    };
    let gw = Gateway::start(&body("5s"));
    assert_eq!(names(&gw, 1), ["a"]);
    reload_and_wait(&gw, &body("6s"));
    assert_eq!(
        names(&gw, 2),
        ["b", "c"],
        "round robin goes on where it was"
    );
    c.set_health(503);
    let out = wait_until(Duration::from_secs(5), || {
        names(&gw, 4).iter().all(|n| n != "c")
    });
    assert!(out.is_some(), "c is taken out");
    c.set_health(200);
    reload_and_wait(&gw, &body("7s"));
    assert!(
        names(&gw, 6).iter().all(|n| n != "c"),
        "c stays out: it needs 1000 good checks, not a reload"
    );
}

/// `failure_ratio` opens the circuit when enough of the requests in the window failed,
/// even with no run of consecutive failures.
#[test]
fn a_failure_ratio_opens_the_breaker() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&breaker_config(
        &format!("\"{}\"", up.addr),
        "{ consecutive_failures: 100, failure_ratio: 0.5, window: 1m, min_requests: 4, open_for: 1h }",
    ));
    let c = client();
    for status in [500, 200, 500, 200] {
        let path = format!("/x?status={status}");
        assert_eq!(c.get(gw.url(&path)).send().unwrap().status(), status);
    }
    let seen = up.count();
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");
    assert_eq!(up.count(), seen);
}

/// Redis coming back after a failure is found again, and limits are counted again.
#[test]
fn redis_is_reconnected_after_it_comes_back() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let gw = Gateway::start(&redis_config(&redis.url(), POLICIES));
    let state = |want: bool| {
        wait_until(Duration::from_secs(10), || {
            redis_state(&gw) == serde_json::json!({ "connected": want })
        })
    };
    assert!(state(true).is_some());
    redis.kill();
    assert!(state(false).is_some());
    assert_json_error(
        client().get(gw.url("/deny")).send().unwrap(),
        503,
        "rate_limit_unavailable",
    );
    let _back = RedisServer::start_on(port);
    assert!(state(true).is_some(), "{}", gw.log());
    let counted = wait_until(Duration::from_secs(5), || {
        !header(
            &client().get(gw.url("/deny")).send().unwrap(),
            "ratelimit-remaining",
        )
        .is_empty()
    });
    assert!(counted.is_some(), "limits are checked in Redis again");
}

/// A Redis that accepts but never answers costs a request at most `redis.timeout`:
/// `allow` lets it through unchecked, `deny` refuses it.
#[test]
fn a_slow_redis_costs_at_most_its_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let gw = Gateway::start(&redis_config(&format!("redis://{addr}"), POLICIES));
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(c.get(gw.url("/allow")).send().unwrap().status(), 200);
        assert_json_error(
            c.get(gw.url("/deny")).send().unwrap(),
            503,
            "rate_limit_unavailable",
        );
    }
    assert_eq!(redis_state(&gw), serde_json::json!({"connected": false}));
    drop(silent);
}

/// While Redis is known down (/health says so), a limited request does not send Redis a
/// command it will wait the whole `redis.timeout` for: Redis, paused (SIGSTOP) and then
/// resumed, runs no script sent while it was down.
#[test]
fn a_redis_known_down_is_not_asked() {
    let redis = RedisServer::start();
    let gw = Gateway::start(&redis_config(&redis.url(), POLICIES));
    until_redis_answers(&gw);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let signal = |sig: &str| {
        let pid = redis.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    let down = wait_until(Duration::from_secs(10), || {
        redis_state(&gw) == serde_json::json!({"connected": false})
    });
    assert!(down.is_some(), "{}", gw.log());
    for _ in 0..5 {
        let r = client().get(gw.url("/allow")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            header(&r, "ratelimit-limit").is_empty(),
            "unchecked, not counted"
        );
    }
    signal("-CONT");
    let up = wait_until(Duration::from_secs(10), || {
        redis_state(&gw) == serde_json::json!({"connected": true})
    });
    assert!(up.is_some(), "{}", gw.log());
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    let scripts: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha") || l.starts_with("cmdstat_eval:"))
        .collect();
    assert!(
        scripts.is_empty(),
        "scripts sent while Redis was down: {scripts:?}"
    );
}
