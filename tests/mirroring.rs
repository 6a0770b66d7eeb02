//! Mirroring: copies of a route's requests go to a shadow upstream after the client is
//! answered; the shadow's answers are compared (status, JSON body minus ignored pointers)
//! and counted; copies in flight are bounded; a slow shadow never delays a client.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// A route `orders` on `primary`, mirrored to `shadow` with `mirror` (the fields after
/// `upstream: shadow`).
fn mirrored(primary: SocketAddr, shadow: SocketAddr, mirror: &str) -> String {
    format!(
        "upstreams:\n  orders: {{ targets: [\"{primary}\"] }}\n  orders-v3: {{ targets: [\"{shadow}\"] }}\nroutes:\n  - name: orders\n    match: {{ path_prefix: / }}\n    upstream: orders\n    mirror: {{ upstream: orders-v3{mirror} }}\n"
    )
}

fn outcome(gw: &Gateway, outcome: &str) -> f64 {
    metric(
        gw,
        &format!("portico_mirror_requests_total{{outcome=\"{outcome}\",route=\"orders\"}}"),
    )
}

fn header<'a>(seen: &'a common::upstream::Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).map(|v| v[0].as_str())
}

#[test]
fn every_request_is_copied_with_its_body_and_a_mirror_header() {
    let (primary, shadow) = (TestUpstream::start("v1"), TestUpstream::start("v3"));
    let gw = Gateway::start(&mirrored(
        primary.addr,
        shadow.addr,
        ", max_body: 1KiB, compare: { ignore: [/server, /headers] }",
    ));
    let c = client();
    // Over max_body: answered, never copied, counted.
    let big = c
        .post(gw.url("/orders"))
        .header("x-request-id", "big")
        .body(vec![b'x'; 2048])
        .send()
        .unwrap();
    assert_eq!(big.status(), 200);
    assert_eq!(outcome(&gw, "too_large"), 1.0);
    for i in 0..5 {
        let resp = c
            .get(gw.url(&format!("/orders/{i}?page=2")))
            .header("x-request-id", format!("get-{i}"))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-upstream"],
            "v1",
            "the client gets the primary's answer"
        );
    }
    let post = c
        .post(gw.url("/orders"))
        .header("x-request-id", "post")
        .header("content-type", "application/json")
        .header("expect", "100-continue")
        .body("{\"qty\": 3}")
        .send()
        .unwrap();
    assert_eq!(post.status(), 200);
    let empty = c
        .post(gw.url("/orders/empty"))
        .header("x-request-id", "empty")
        .send()
        .unwrap();
    assert_eq!(empty.status(), 200);
    assert!(
        wait_until(WAIT, || outcome(&gw, "match") == 7.0).is_some(),
        "{}",
        metrics_text(&gw)
    );
    let copies = shadow.seen();
    assert_eq!(copies.len(), 7, "{copies:?}");
    for copy in &copies {
        assert_eq!(header(copy, "x-portico-mirror"), Some("1"), "{copy:?}");
    }
    let ids: BTreeSet<&str> = copies
        .iter()
        .filter_map(|s| header(s, "x-request-id"))
        .collect();
    let want: BTreeSet<&str> =
        ["get-0", "get-1", "get-2", "get-3", "get-4", "post", "empty"].into();
    assert_eq!(ids, want, "the large body was not copied");
    let by_id = |id: &str| {
        copies
            .iter()
            .find(|s| header(s, "x-request-id") == Some(id))
            .unwrap()
    };
    let copied_post = by_id("post");
    assert_eq!(
        (copied_post.uri.as_str(), copied_post.body_len),
        ("/orders", 10)
    );
    // The gateway holds the body it sends: no `Expect` for the shadow to answer first.
    assert_eq!(header(copied_post, "expect"), None, "{copied_post:?}");
    assert_eq!(header(by_id("empty"), "content-length"), Some("0"));
    assert_eq!(by_id("get-3").uri, "/orders/3?page=2");
    assert_eq!(primary.count(), 8);
    assert_eq!(outcome(&gw, "body_differs"), 0.0);
    let difference = "portico_mirror_latency_difference_seconds_count{route=\"orders\"}";
    assert_eq!(metric(&gw, difference), 7.0);
}

#[test]
fn one_request_in_ten_is_copied_as_its_request_id_decides() {
    let (primary, shadow) = (TestUpstream::start("v1"), TestUpstream::start("v3"));
    let gw = Gateway::start(&mirrored(primary.addr, shadow.addr, ", percent: 10"));
    let c = client();
    let ids: Vec<String> = (0..300).map(|i| format!("req-{i}")).collect();
    for id in &ids {
        let resp = c
            .get(gw.url("/x"))
            .header("x-request-id", id)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let want: BTreeSet<&str> = ids
        .iter()
        .filter(|id| portico::mirror::chosen(id, 1000))
        .map(String::as_str)
        .collect();
    assert!((15..=45).contains(&want.len()), "{} of 300", want.len());
    let copied = || outcome(&gw, "body_differs") + outcome(&gw, "match");
    assert!(
        wait_until(WAIT, || copied() == want.len() as f64).is_some(),
        "{} copies, want {}",
        copied(),
        want.len()
    );
    let seen = shadow.seen();
    let got: BTreeSet<&str> = seen
        .iter()
        .filter_map(|s| header(s, "x-request-id"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn differences_are_counted_and_listed_without_bodies_or_queries() {
    let (primary, shadow) = (TestUpstream::start("v1"), TestUpstream::start("v3"));
    shadow.set_health(503);
    let gw = Gateway::start(&mirrored(
        primary.addr,
        shadow.addr,
        ", compare: { ignore: [/headers, /body_sha256] }",
    ));
    let c = client();
    let get = |path: &str, id: &str| {
        let resp = c
            .get(gw.url(path))
            .header("x-request-id", id)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    };
    // One after the other: copies run on tasks of their own, and "newest" is the one
    // judged last.
    get("/orders/7?token=s3cret", "differs");
    assert!(wait_until(WAIT, || outcome(&gw, "body_differs") == 1.0).is_some());
    get("/health", "status");
    assert!(
        wait_until(WAIT, || outcome(&gw, "status_differs") == 1.0).is_some(),
        "{}",
        metrics_text(&gw)
    );
    let view = gw.admin_json("/mirrors");
    let route = &view["routes"]["orders"];
    assert_eq!(route["upstream"], "orders-v3");
    assert_eq!(route["percent"], 100.0);
    let differences = route["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 2, "{view}");
    // Newest first.
    let (status, body) = (&differences[0], &differences[1]);
    assert_eq!(status["outcome"], "status_differs");
    assert_eq!(status["request_id"], "status");
    assert_eq!(status["primary"]["status"], 200);
    assert_eq!(status["shadow"]["status"], 503);
    assert!(status["shadow"]["latency_ms"].is_number());
    assert_eq!(body["outcome"], "body_differs");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/orders/7");
    // The servers' names differ; the ignored headers and hash do not count.
    assert_eq!(body["pointers"], serde_json::json!(["/server"]));
    let text = view.to_string();
    assert!(
        !text.contains("s3cret") && !text.contains("\"v1\""),
        "{text}"
    );
}

#[test]
fn a_dead_shadow_is_counted_as_an_error_and_costs_the_client_nothing() {
    let primary = TestUpstream::start("v1");
    let gw = Gateway::start(&mirrored(primary.addr, dead_addr(), ""));
    let resp = client().get(gw.url("/x")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "v1");
    assert!(wait_until(WAIT, || outcome(&gw, "error") == 1.0).is_some());
    let view = gw.admin_json("/mirrors");
    let shadow = &view["routes"]["orders"]["differences"][0]["shadow"];
    assert_eq!(shadow["error"], "unreachable", "{view}");
}

/// A shadow that takes each request and holds it, unanswered, until released (or 60 s).
struct HoldingShadow {
    addr: SocketAddr,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
}

impl HoldingShadow {
    fn start() -> HoldingShadow {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (held, release) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (held_c, release_c) = (held.clone(), release.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let (held, release) = (held_c.clone(), release_c.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    held.fetch_add(1, Ordering::SeqCst);
                    let until = Instant::now() + Duration::from_secs(60);
                    while !release.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
                    );
                });
            }
        });
        HoldingShadow {
            addr,
            held,
            release,
        }
    }
}

#[test]
fn a_holding_shadow_delays_no_client_and_copies_past_max_in_flight_are_dropped() {
    let primary = TestUpstream::start("v1");
    let shadow = HoldingShadow::start();
    let gw = Gateway::start(&mirrored(primary.addr, shadow.addr, ", max_in_flight: 2"));
    // A client that waited for its copy would wait for the release, long past this.
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for i in 0..5 {
        let resp = c.get(gw.url(&format!("/x/{i}"))).send().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-upstream"], "v1");
    }
    // Every client was answered while the shadow held its copies, unanswered.
    assert!(wait_until(WAIT, || shadow.held.load(Ordering::SeqCst) == 2).is_some());
    assert_eq!(outcome(&gw, "dropped"), 3.0);
    assert_eq!(
        gw.admin_json("/mirrors")["routes"]["orders"]["in_flight"],
        2
    );
    assert!(!shadow.release.load(Ordering::SeqCst));
    shadow.release.store(true, Ordering::SeqCst);
    assert!(
        wait_until(WAIT, || outcome(&gw, "body_differs") == 2.0).is_some(),
        "{}",
        metrics_text(&gw)
    );
    assert!(wait_until(WAIT, || {
        gw.admin_json("/mirrors")["routes"]["orders"]["in_flight"] == 0
    })
    .is_some());
    // Its place back, a next copy goes out.
    let resp = c.get(gw.url("/x/again")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(wait_until(WAIT, || shadow.held.load(Ordering::SeqCst) == 3).is_some());
}

#[test]
fn every_view_shows_the_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "version: 1\nlisten: {{ proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }}\n{}",
        mirrored(
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.3:80".parse().unwrap(),
            ", percent: 5, compare: { ignore: [/meta] }"
        )
    );
    std::fs::write(dir.path().join("g.yaml"), &config).unwrap();
    let (code, out, err) = portico(&["route", "-c", "g.yaml", "GET", "/a"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("mirror: 5% of requests (by request id) copied to `orders-v3`, at most 64 in flight, bodies up to 65536 bytes, ignoring /meta"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("h.yaml"),
        config.replace("percent: 5", "percent: 50"),
    )
    .unwrap();
    let (code, out, _) = portico(&["diff", "g.yaml", "h.yaml"], dir.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("mirror.percent"), "{out}");
    let (code, out, err) = portico(&["openapi", "-c", "g.yaml"], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("5% of requests are also copied to `orders-v3`"),
        "{out}"
    );
    let gw = Gateway::start(&mirrored(dead_addr(), dead_addr(), ", percent: 5"));
    let routes = gw.admin_json("/routes");
    assert_eq!(
        routes["routes"][0]["mirror"],
        serde_json::json!({"upstream": "orders-v3", "percent": 5.0})
    );
}

#[test]
fn encoded_answers_are_judged_by_status_and_interim_heads_are_skipped() {
    let primary = TestUpstream::start("v1");
    // The shadow sends 100 Continue and 103 Early Hints before its answer.
    let shadow = scripted_upstream(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
    );
    let gw = Gateway::start(&mirrored(primary.addr, shadow, ""));
    let resp = client().get(gw.url("/a")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        wait_until(WAIT, || outcome(&gw, "body_differs") == 1.0).is_some(),
        "{}",
        metrics_text(&gw)
    );
    let (primary, shadow) = (TestUpstream::start("v1"), TestUpstream::start("v3"));
    let gw = Gateway::start(&mirrored(primary.addr, shadow.addr, ""));
    // Both answers say gzip: their bytes are not compared, only their statuses.
    let resp = client()
        .get(gw.url("/a?h_content-encoding=gzip"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(wait_until(WAIT, || outcome(&gw, "match") == 1.0).is_some());
    let resp = client().get(gw.url("/a")).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(wait_until(WAIT, || outcome(&gw, "body_differs") == 1.0).is_some());
}
