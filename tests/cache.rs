//! The response cache through the real gateway, against a real upstream that counts what
//! reaches it and sets the response headers each test asks for (`h_NAME=VALUE`).

mod common;
use common::*;
use reqwest::blocking::Response;
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "a-cache-test-secret";

/// A gateway with one cache route (`/c/`) and one per-user cache route (`/me/`).
fn config(up: &TestUpstream, secret: &std::path::Path, extra: &str) -> String {
    format!(
        r#"server: {{ threads: 2 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  hs: {{ algorithms: [HS256], secret_file: "{secret}", forward_claims: {{ sub: X-User }} }}
admin: {{ token_env: PORTICO_TEST_ADMIN_TOKEN }}
caches:
  api: {{ max_size: 8MiB, ttl: 60s, max_ttl: 1h, stale_if_error: 5m, vary: [X-Tenant] }}
  users: {{ max_size: 1MiB, key: ["claim:sub"] }}
routes:
  - {{ name: cached, match: {{ path_prefix: /c/ }}, upstream: svc, cache: api }}
  - {{ name: mine, match: {{ path_prefix: /me/ }}, upstream: svc, auth: hs, cache: users }}
  - {{ name: plain, match: {{ path_prefix: / }}, upstream: svc }}
{extra}"#,
        up = up.addr,
        secret = secret.display()
    )
}

struct Setup {
    up: TestUpstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

fn setup(extra: &str) -> Setup {
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let gw = Gateway::start_with_env(ADMIN_ENV, &config(&up, &secret, extra));
    Setup { up, gw, _dir: dir }
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = client().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().unwrap()
}

fn x_cache(r: &Response) -> &str {
    r.headers()
        .get("x-cache")
        .map_or("(none)", |v| v.to_str().unwrap())
}

/// Status, X-Cache and the id of the request that reached the upstream for this body.
fn fetch(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let r = get(gw, path, headers);
    let status = r.status().as_u16();
    let cache = x_cache(&r).to_string();
    let body: Value = r.json().unwrap_or(Value::Null);
    let origin = body["headers"]["x-request-id"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (status, cache, origin)
}

/// The same URL twice: what each answer said, and how many requests reached the upstream.
fn twice(s: &Setup, path: &str) -> (String, String, usize) {
    let before = s.up.count();
    let (a, first, _) = fetch(&s.gw, path, &[]);
    let (b, second, _) = fetch(&s.gw, path, &[]);
    let want = if path.contains("status=500") {
        500
    } else {
        200
    };
    assert_eq!((a, b), (want, want), "{path}");
    (first, second, s.up.count() - before)
}

#[test]
fn cache_control_rules_decide_what_is_stored() {
    let s = setup("");
    let hit = |path: &str| twice(&s, path);
    let stored = ("MISS".to_string(), "HIT".to_string(), 1);
    let passed = ("MISS".to_string(), "MISS".to_string(), 2);
    assert_eq!(hit("/c/1?h_cache-control=max-age%3D60"), stored);
    assert_eq!(
        hit("/c/2?h_cache-control=max-age%3D0,%20s-maxage%3D60"),
        stored
    );
    assert_eq!(hit("/c/3"), stored, "no freshness given: the cache's ttl");
    assert_eq!(hit("/c/4?h_cache-control=no-store"), passed);
    assert_eq!(hit("/c/5?h_cache-control=private,%20max-age%3D60"), passed);
    assert_eq!(
        hit("/c/6?h_cache-control=max-age%3D60&h_set-cookie=a%3Db"),
        passed
    );
    assert_eq!(hit("/c/7?h_cache-control=max-age%3D60&h_vary=*"), passed);
    assert_eq!(
        hit("/c/8?h_expires=Thu,%2001%20Jan%202099%2000:00:00%20GMT"),
        stored
    );
    assert_eq!(
        hit("/c/9?h_expires=Thu,%2001%20Jan%201970%2000:00:00%20GMT"),
        passed,
        "expired on arrival"
    );
    assert_eq!(hit("/c/10?status=500"), passed, "no ttl for a 500");
    // no-cache: stored, but every use is revalidated upstream.
    let (first, second, reached) = hit("/c/11?h_cache-control=no-cache&etag=v1");
    assert_eq!(
        (first.as_str(), second.as_str(), reached),
        ("MISS", "REVALIDATED", 2)
    );
    assert_eq!(s.up.last().headers["if-none-match"], vec!["\"v1\""]);
    // must-revalidate is stored like any fresh response.
    assert_eq!(
        hit("/c/12?h_cache-control=max-age%3D60,%20must-revalidate"),
        stored
    );
    // Not cached: other methods, and routes without a cache.
    let post = client()
        .post(s.gw.url("/c/1?h_cache-control=max-age%3D60"))
        .send()
        .unwrap();
    assert_eq!((post.status().as_u16(), x_cache(&post)), (200, "BYPASS"));
    let plain = get(&s.gw, "/p?h_cache-control=max-age%3D60", &[]);
    assert_eq!(x_cache(&plain), "(none)");
}

#[test]
fn hits_carry_age_and_head_is_answered_from_the_get_entry() {
    let s = setup("");
    let path = "/c/age?h_cache-control=max-age%3D60";
    let miss = get(&s.gw, path, &[]);
    assert_eq!((miss.status().as_u16(), x_cache(&miss)), (200, "MISS"));
    let hit = get(&s.gw, path, &[]);
    assert_eq!((hit.status().as_u16(), x_cache(&hit)), (200, "HIT"));
    let age: u64 = hit.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 60, "{age}");
    assert_ne!(
        hit.headers()["x-request-id"],
        miss.headers()["x-request-id"]
    );
    let head = client().head(s.gw.url(path)).send().unwrap();
    assert_eq!((head.status().as_u16(), x_cache(&head)), (200, "HIT"));
    assert_eq!(s.up.count(), 1);
}

#[test]
fn vary_keeps_one_entry_per_variant() {
    let s = setup("");
    let path = "/c/vary?h_cache-control=max-age%3D60&h_vary=Accept-Language";
    let lang = |l: &str| fetch(&s.gw, path, &[("accept-language", l)]);
    let (_, en1, en_origin) = lang("en");
    let (_, de1, de_origin) = lang("de");
    let (_, en2, en_again) = lang("en");
    let (_, de2, de_again) = lang("de");
    assert_eq!([en1, de1, en2, de2], ["MISS", "MISS", "HIT", "HIT"]);
    assert_eq!((en_again, de_again), (en_origin.clone(), de_origin.clone()));
    assert_ne!(en_origin, de_origin);
    // `vary: [X-Tenant]` keys by that header even when the response does not say so.
    let tenant = |t: &str| {
        fetch(
            &s.gw,
            "/c/t?h_cache-control=max-age%3D60",
            &[("x-tenant", t)],
        )
    };
    let (_, a, a_origin) = tenant("a");
    let (_, b, b_origin) = tenant("b");
    let (_, a2, a_again) = tenant("a");
    assert_eq!([a, b, a2], ["MISS", "MISS", "HIT"]);
    assert_eq!(a_again, a_origin);
    assert_ne!(a_origin, b_origin);
    assert_eq!(s.up.count(), 4);
}

#[test]
fn per_user_entries_never_reach_another_user() {
    let s = setup("");
    let (alice, bob) = (hs256_token(SECRET, "alice"), hs256_token(SECRET, "bob"));
    let me = |t: &str| {
        let r = get(
            &s.gw,
            "/me/profile?h_cache-control=max-age%3D60",
            &[("authorization", &format!("Bearer {t}"))],
        );
        let cache = x_cache(&r).to_string();
        let body: Value = r.json().unwrap();
        (
            cache,
            body["headers"]["x-user"][0].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(me(&alice), ("MISS".into(), "alice".into()));
    assert_eq!(me(&bob), ("MISS".into(), "bob".into()));
    assert_eq!(me(&alice), ("HIT".into(), "alice".into()));
    assert_eq!(me(&bob), ("HIT".into(), "bob".into()));
    assert_eq!(s.up.count(), 2);
    // Without a token the route refuses before any lookup.
    assert_json_error(get(&s.gw, "/me/profile", &[]), 401, "token_missing");
}

#[test]
fn credentials_are_only_served_public_entries_on_a_shared_cache() {
    let s = setup("");
    let auth = [("authorization", "Bearer opaque-upstream-token")];
    let private = "/c/acct?h_cache-control=max-age%3D60";
    let (_, first, _) = fetch(&s.gw, private, &auth);
    let (_, second, _) = fetch(&s.gw, private, &auth);
    assert_eq!(
        (first.as_str(), second.as_str(), s.up.count()),
        ("MISS", "MISS", 2)
    );
    // An anonymous entry is not handed to a credentialed request either.
    let (_, anon, _) = fetch(&s.gw, private, &[]);
    let (_, anon_hit, _) = fetch(&s.gw, private, &[]);
    let (_, with_auth, _) = fetch(&s.gw, private, &auth);
    assert_eq!([anon, anon_hit, with_auth], ["MISS", "HIT", "MISS"]);
    let public = "/c/pub?h_cache-control=public,%20max-age%3D60";
    let (_, p1, _) = fetch(&s.gw, public, &auth);
    let (_, p2, _) = fetch(&s.gw, public, &auth);
    assert_eq!([p1, p2], ["MISS", "HIT"]);
}

#[test]
fn unkeyed_forwarding_headers_cannot_poison_an_entry() {
    let s = setup("");
    let path = "/c/home?h_cache-control=max-age%3D60";
    let host_seen = |r: Response| {
        let cache = x_cache(&r).to_string();
        let body: Value = r.json().unwrap();
        (cache, body["headers"]["x-forwarded-host"][0].clone())
    };
    let evil = [("x-forwarded-host", "evil.example")];
    let (first, seen) = host_seen(get(&s.gw, path, &evil));
    let real = s.gw.proxy.to_string();
    assert_eq!((first.as_str(), seen), ("MISS", json!(real)));
    let (second, seen) = host_seen(get(&s.gw, path, &[]));
    assert_eq!((second.as_str(), seen), ("HIT", json!(real)));
}

/// Headers that make origins answer another URL, scheme or method (X-Original-URL,
/// Forwarded: host=, X-HTTP-Method-Override, ...) are not in the key: from a client that is
/// not a trusted proxy they never reach the upstream on a cache route, so no client can
/// store an answer for others.
#[test]
fn rewriting_headers_from_clients_never_reach_a_cached_upstream() {
    let s = setup("");
    let path = "/c/poison?h_cache-control=max-age%3D60";
    let hostile = [
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("forwarded", "host=evil.example;proto=https"),
        ("x-forwarded-scheme", "https"),
        ("x-http-method-override", "DELETE"),
    ];
    let r = get(&s.gw, path, &hostile);
    assert_eq!(x_cache(&r), "MISS");
    let seen = s.up.last();
    for (name, _) in hostile {
        assert!(
            !seen.headers.contains_key(name),
            "{name} reached the upstream"
        );
    }
    let second = get(&s.gw, path, &[]);
    assert_eq!(x_cache(&second), "HIT");
    // A route without a cache forwards them as they came.
    get(&s.gw, "/plain", &hostile);
    assert_eq!(s.up.last().headers["x-original-url"], ["/admin"]);
}

#[test]
fn a_trusted_proxys_forwarding_headers_are_part_of_the_key() {
    let s = setup("");
    s.gw.write_config(&format!(
        "{}\n",
        config(&s.up, &s._dir.path().join("hs.secret"), "").replace(
            "server: { threads: 2 }",
            "server: { threads: 2, trusted_proxies: [127.0.0.1/32] }"
        )
    ));
    let before = s.gw.admin_config()["config_hash"].clone();
    wait_until(Duration::from_secs(10), || {
        s.gw.admin_config()["config_hash"] != before
    })
    .expect("reloaded");
    let path = "/c/fwd?h_cache-control=max-age%3D60";
    let (_, evil, _) = fetch(&s.gw, path, &[("x-forwarded-host", "evil.example")]);
    let (_, plain, origin) = fetch(&s.gw, path, &[]);
    let (_, again, again_origin) = fetch(&s.gw, path, &[]);
    assert_eq!([evil, plain, again], ["MISS", "MISS", "HIT"]);
    assert_eq!(origin, again_origin);
}

#[test]
fn fifty_concurrent_misses_reach_the_upstream_once() {
    let s = setup("");
    let path = "/c/herd?h_cache-control=max-age%3D60&sleep_ms=300";
    let barrier = std::sync::Barrier::new(50);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let (status, _, origin) = fetch(&s.gw, path, &[]);
                    (status, origin)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(s.up.count(), 1, "one request went upstream");
    let first = &answers[0];
    assert!(!first.1.is_empty());
    assert!(answers.iter().all(|a| a == first), "{answers:?}");
    assert_eq!(first.0, 200);
}

#[test]
fn stale_if_error_serves_the_stored_answer_while_the_upstream_is_down() {
    let mut s = setup("");
    let path = "/c/sie?h_cache-control=max-age%3D1";
    let strict = "/c/strict?h_cache-control=max-age%3D1,%20must-revalidate";
    let (_, miss, origin) = fetch(&s.gw, path, &[]);
    let (_, strict_miss, _) = fetch(&s.gw, strict, &[]);
    assert_eq!([miss, strict_miss], ["MISS", "MISS"]);
    // Stopped: its port is closed, so every fetch fails to connect.
    drop(std::mem::replace(&mut s.up, TestUpstream::start("other")));
    let mut last = (0, String::new(), String::new());
    let stale = wait_until(Duration::from_secs(10), || {
        last = fetch(&s.gw, path, &[]);
        last.1 == "STALE"
    });
    assert!(stale.is_some(), "never served stale: {last:?}");
    assert_eq!((last.0, last.2), (200, origin));
    // must-revalidate: once stale, an upstream failure is an error, never the old answer.
    let failed = wait_until(Duration::from_secs(10), || {
        get(&s.gw, strict, &[]).status() == 502
    });
    assert!(failed.is_some());
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let s = setup("");
    let path = "/c/swr?h_cache-control=max-age%3D1,%20stale-while-revalidate%3D60";
    let (_, miss, origin) = fetch(&s.gw, path, &[]);
    assert_eq!(miss, "MISS");
    let mut last = (0, String::new(), String::new());
    let stale = wait_until(Duration::from_secs(10), || {
        last = fetch(&s.gw, path, &[]);
        last.1 == "STALE"
    });
    assert!(stale.is_some(), "never served stale: {last:?}");
    assert_eq!(
        (last.0, &last.2),
        (200, &origin),
        "the stale answer is the stored one"
    );
    let refreshed = wait_until(Duration::from_secs(10), || {
        last = fetch(&s.gw, path, &[]);
        last.1 == "HIT" && last.2 != origin
    });
    assert!(refreshed.is_some(), "never refreshed: {last:?}");
    assert_eq!(s.up.count(), 2, "one background refresh");
}

#[test]
fn conditional_requests_get_304_and_stale_entries_are_revalidated() {
    let s = setup("");
    let path = "/c/etag?h_cache-control=max-age%3D1&etag=v1";
    let (_, miss, origin) = fetch(&s.gw, path, &[]);
    assert_eq!(miss, "MISS");
    let mut last = (0, String::new(), String::new());
    let revalidated = wait_until(Duration::from_secs(10), || {
        last = fetch(&s.gw, path, &[]);
        last.1 == "REVALIDATED"
    });
    assert!(revalidated.is_some(), "never revalidated: {last:?}");
    assert_eq!(
        (last.0, last.2),
        (200, origin),
        "the stored body, still valid"
    );
    assert_eq!(s.up.last().headers["if-none-match"], vec!["\"v1\""]);
    // A fresh entry answers a matching If-None-Match itself.
    let fresh = "/c/etag2?h_cache-control=max-age%3D60&etag=v2";
    fetch(&s.gw, fresh, &[]);
    let seen = s.up.count();
    let r = get(&s.gw, fresh, &[("if-none-match", "\"v2\"")]);
    assert_eq!((r.status().as_u16(), x_cache(&r)), (304, "HIT"));
    let r = get(&s.gw, fresh, &[("if-none-match", "\"other\"")]);
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "HIT"));
    assert_eq!(s.up.count(), seen);
}

/// Purges need the admin token (`admin.token_env`).
const ADMIN_ENV: &[(&str, &str)] = &[(
    "PORTICO_TEST_ADMIN_TOKEN",
    "purge-token-for-the-cache-tests",
)];

fn purge(gw: &Gateway, body: Value) -> (u16, Value) {
    let r = client()
        .post(gw.admin_url("/cache/purge"))
        .bearer_auth(ADMIN_ENV[0].1)
        .json(&body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

#[test]
fn purge_by_path_and_prefix() {
    let s = setup("");
    let cc = "?h_cache-control=max-age%3D60";
    for p in ["/c/p/1", "/c/p/2", "/c/q"] {
        fetch(&s.gw, &format!("{p}{cc}"), &[]);
        fetch(&s.gw, &format!("{p}{cc}&v=2"), &[]);
    }
    let state = |p: &str| fetch(&s.gw, &format!("{p}{cc}"), &[]).1;
    let (status, body) = purge(&s.gw, json!({"cache": "api", "path": "/c/p/1"}));
    assert_eq!((status, body["purged"].clone()), (200, json!(2)), "{body}");
    assert_eq!([state("/c/p/1"), state("/c/p/2")], ["MISS", "HIT"]);
    let (status, body) = purge(&s.gw, json!({"cache": "api", "prefix": "/c/p/"}));
    assert_eq!((status, body["purged"].clone()), (200, json!(3)), "{body}");
    assert_eq!([state("/c/p/2"), state("/c/q")], ["MISS", "HIT"]);

    let (status, body) = purge(&s.gw, json!({"cache": "nope", "path": "/x"}));
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!("invalid_purge"))
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("api, users"));
    let (status, _) = purge(&s.gw, json!({"cache": "api", "path": "/x", "prefix": "/"}));
    assert_eq!(status, 400);
    let (status, _) = purge(&s.gw, json!({"cache": "api", "path": "x"}));
    assert_eq!(status, 400);
    let r = client().get(s.gw.admin_url("/cache/purge")).send().unwrap();
    assert_eq!(r.status(), 405);
}

#[test]
fn a_purge_reaches_every_replica_through_redis() {
    let redis = RedisServer::start();
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cfg = config(
        &up,
        &secret,
        &format!("redis: {{ url: \"{}\" }}\n", redis.url()),
    );
    let (a, b) = (
        Gateway::start_with_env(ADMIN_ENV, &cfg),
        Gateway::start_with_env(ADMIN_ENV, &cfg),
    );
    for gw in [&a, &b] {
        let subscribed = wait_until(Duration::from_secs(10), || {
            gw.admin_json("/health")["redis"]["cache_purges_subscribed"] == json!(true)
        });
        assert!(subscribed.is_some(), "{}", gw.log());
    }
    let path = "/c/shared?h_cache-control=max-age%3D600";
    for gw in [&a, &b] {
        assert_eq!(fetch(gw, path, &[]).1, "MISS");
        assert_eq!(fetch(gw, path, &[]).1, "HIT");
    }
    let (status, body) = purge(&a, json!({"cache": "api", "path": "/c/shared"}));
    assert_eq!((status, &body["replicas"]), (200, &json!(true)), "{body}");
    assert_eq!(fetch(&a, path, &[]).1, "MISS");
    let purged = wait_until(Duration::from_secs(10), || fetch(&b, path, &[]).1 == "MISS");
    assert!(
        purged.is_some(),
        "the other replica kept its entry:\n{}",
        b.log()
    );
}

#[test]
fn max_size_holds_after_ten_thousand_distinct_100kb_responses() {
    let s = setup("");
    let limit = 8 * 1024 * 1024;
    std::thread::scope(|scope| {
        for t in 0..4 {
            let gw = &s.gw;
            scope.spawn(move || {
                let c = client();
                for i in (t..10_000).step_by(4) {
                    let url = gw.url(&format!(
                        "/c/big/{i}?download=102400&h_cache-control=max-age%3D600"
                    ));
                    let r = c.get(url).send().unwrap();
                    assert_eq!(r.status(), 200);
                    assert_eq!(r.bytes().unwrap().len(), 102400);
                }
            });
        }
    });
    let size = metric(&s.gw, "portico_cache_size_bytes{cache=\"api\"}");
    let evictions = metric(&s.gw, "portico_cache_evictions_total{cache=\"api\"}");
    assert!(size > 0.0 && size <= limit as f64, "size {size}");
    // TinyUFO also refuses to admit some one-off entries: those are not evictions.
    assert!(evictions > 1000.0, "evictions {evictions}");
    let rss_mib = s.gw.peak_rss_kib() / 1024;
    eprintln!("cache size {size} B, {evictions} evictions, peak RSS {rss_mib} MiB");
    assert!(rss_mib < 150, "peak RSS {rss_mib} MiB for an 8 MiB cache");
}

#[test]
fn entries_survive_a_reload_unless_the_cache_is_redefined() {
    let s = setup("");
    let path = "/c/keep?h_cache-control=max-age%3D600";
    assert_eq!(fetch(&s.gw, path, &[]).1, "MISS");
    let secret = s._dir.path().join("hs.secret");
    let reload = |cfg: String| {
        let before = s.gw.admin_config()["config_hash"].clone();
        s.gw.write_config(&cfg);
        wait_until(Duration::from_secs(10), || {
            s.gw.admin_config()["config_hash"] != before
        })
        .expect("reloaded");
    };
    // ttl and routes change; the cache's size does not: entries stay.
    reload(config(&s.up, &secret, "").replace("ttl: 60s", "ttl: 30s"));
    assert_eq!(fetch(&s.gw, path, &[]).1, "HIT");
    reload(config(&s.up, &secret, "").replace("max_size: 8MiB", "max_size: 4MiB"));
    assert_eq!(fetch(&s.gw, path, &[]).1, "MISS");
    assert_eq!(s.up.count(), 2);
}

#[test]
fn cache_metrics_routes_and_check() {
    let s = setup("");
    let path = "/c/m?h_cache-control=max-age%3D60";
    fetch(&s.gw, path, &[]);
    fetch(&s.gw, path, &[]);
    let hits = metric(
        &s.gw,
        "portico_cache_requests_total{result=\"HIT\",route=\"cached\"}",
    );
    assert_eq!(hits, 1.0);
    assert!(metric(&s.gw, "portico_cache_size_bytes{cache=\"api\"}") > 0.0);
    let routes = s.gw.admin_json("/routes");
    let cached = &routes["routes"][0];
    assert_eq!(
        (&cached["name"], &cached["cache"]),
        (&json!("cached"), &json!("api"))
    );
    assert_eq!(cached["policies"], json!(["cache:api"]));
}

#[test]
fn check_refuses_a_per_user_cache_without_auth_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nupstreams:\n  svc: { targets: [\"127.0.0.1:3\"] }\ncaches:\n  users: { max_size: 1MiB, key: [\"claim:sub\"] }\n  bad: { max_size: 1MiB, key: [\"cookie:x\"], vary: [\"a b\"] }\nroutes:\n  - name: r\n    match: { path_prefix: / }\n    upstream: svc\n    cache: users\n";
    std::fs::write(dir.path().join("gateway.yaml"), cfg).unwrap();
    let (code, _out, err) = portico(&["check", "-c", "gateway.yaml"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("gateway.yaml:12:12"), "{err}");
    assert!(
        err.contains("keys entries by a claim, but this route has no `auth`"),
        "{err}"
    );
    assert!(err.contains("unknown cache key part `cookie:x`"), "{err}");
    assert!(err.contains("`a b` is not a valid header name"), "{err}");
}
