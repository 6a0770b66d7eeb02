//! Proxying to real upstreams: balancing, retries, timeouts, JSON errors, forwarded
//! headers and large streaming bodies.

mod common;
use common::upstream::pattern_byte;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

fn served_by(resp: reqwest::blocking::Response) -> String {
    assert_eq!(resp.status(), 200);
    resp.headers()["x-upstream"].to_str().unwrap().to_string()
}

fn pool(balance: &str, ups: &[&TestUpstream]) -> String {
    let targets: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    format!(
        "server: {{ threads: 2 }}\nupstreams:\n  pool: {{ targets: [{}], balance: \"{balance}\" }}\nroutes:\n  - name: all\n    match: {{ path_prefix: / }}\n    upstream: pool\n",
        targets.join(", ")
    )
}

#[test]
fn round_robin_spreads_evenly_over_three_targets() {
    let ups = [
        TestUpstream::start("a"),
        TestUpstream::start("b"),
        TestUpstream::start("c"),
    ];
    let gw = Gateway::start(&pool("round_robin", &ups.iter().collect::<Vec<_>>()));
    let c = client();
    for _ in 0..30 {
        served_by(c.get(gw.url("/x")).send().unwrap());
    }
    assert_eq!(
        ups.iter().map(|u| u.count()).collect::<Vec<_>>(),
        vec![10, 10, 10]
    );
}

#[test]
fn random_reaches_every_target() {
    let ups = [
        TestUpstream::start("a"),
        TestUpstream::start("b"),
        TestUpstream::start("c"),
    ];
    let gw = Gateway::start(&pool("random", &ups.iter().collect::<Vec<_>>()));
    let c = client();
    for _ in 0..150 {
        served_by(c.get(gw.url("/x")).send().unwrap());
    }
    let counts: Vec<usize> = ups.iter().map(|u| u.count()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 150);
    assert!(counts.iter().all(|n| *n > 10), "{counts:?}");
}

#[test]
fn hash_balancing_is_sticky_per_key() {
    let ups = [
        TestUpstream::start("a"),
        TestUpstream::start("b"),
        TestUpstream::start("c"),
    ];
    // A header is hashed only when a trusted proxy sent it (a client's own copy would let
    // it choose its target): the test client is the trusted proxy here.
    let trusted = pool("hash(header:x-user-id)", &ups.iter().collect::<Vec<_>>()).replace(
        "server: { threads: 2 }",
        "server: { threads: 2, trusted_proxies: [127.0.0.1/32] }",
    );
    let gw = Gateway::start(&trusted);
    let c = client();
    let mut homes: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..20 {
            let got = served_by(
                c.get(gw.url("/x"))
                    .header("x-user-id", format!("user-{user}"))
                    .send()
                    .unwrap(),
            );
            let home = homes.entry(format!("user-{user}")).or_insert(got.clone());
            assert_eq!(*home, got, "user-{user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert!(distinct.len() >= 2, "20 keys all landed on one target");

    let gw = Gateway::start(&pool("hash(client_ip)", &ups.iter().collect::<Vec<_>>()));
    let first = served_by(c.get(gw.url("/x")).send().unwrap());
    for _ in 0..10 {
        assert_eq!(served_by(c.get(gw.url("/x")).send().unwrap()), first);
    }
}

#[test]
fn least_requests_avoids_the_busy_target() {
    let ups = [
        TestUpstream::start("a"),
        TestUpstream::start("b"),
        TestUpstream::start("c"),
    ];
    let gw = Gateway::start(&pool("least_requests", &ups.iter().collect::<Vec<_>>()));
    let slow_url = gw.url("/slow?sleep_ms=1500");
    let slow = std::thread::spawn(move || served_by(client().get(slow_url).send().unwrap()));
    // Wait until the slow request reached its upstream.
    let arrived = wait_until(Duration::from_secs(10), || {
        ups.iter().map(|u| u.count()).sum::<usize>() > 0
    });
    assert!(
        arrived.is_some(),
        "the slow request never reached an upstream"
    );
    let c = client();
    let fast: Vec<String> = (0..12)
        .map(|_| served_by(c.get(gw.url("/fast")).send().unwrap()))
        .collect();
    let busy = slow.join().unwrap();
    assert!(
        !fast.contains(&busy),
        "fast requests went to busy {busy}: {fast:?}"
    );
}

#[test]
fn connect_failures_retry_idempotent_requests_on_another_target() {
    let live = TestUpstream::start("live");
    let dead = dead_addr();
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  pool:\n    targets: [\"{dead}\", \"{}\"]\n    retries: {{ attempts: 1, on: [connect_failure] }}\n  noretry:\n    targets: [\"{dead}\", \"{}\"]\n    retries: {{ attempts: 0 }}\nroutes:\n  - name: r\n    match: {{ path_prefix: /r/ }}\n    upstream: pool\n  - name: n\n    match: {{ path_prefix: /n/ }}\n    upstream: noretry\n",
        live.addr, live.addr
    ));
    let c = client();
    for _ in 0..10 {
        assert_eq!(served_by(c.get(gw.url("/r/x")).send().unwrap()), "live");
    }
    let post_statuses: Vec<u16> = (0..10)
        .map(|_| {
            c.post(gw.url("/r/x"))
                .body("x")
                .send()
                .unwrap()
                .status()
                .as_u16()
        })
        .collect();
    assert!(
        post_statuses.contains(&502) && post_statuses.contains(&200),
        "POST is never retried: {post_statuses:?}"
    );
    let get_statuses: Vec<u16> = (0..10)
        .map(|_| c.get(gw.url("/n/x")).send().unwrap().status().as_u16())
        .collect();
    assert!(
        get_statuses.contains(&502),
        "attempts: 0 disables retries: {get_statuses:?}"
    );
    let resp = (0..4)
        .map(|_| c.get(gw.url("/n/x")).send().unwrap())
        .find(|r| r.status() == 502)
        .unwrap();
    assert_json_error(resp, 502, "upstream_unreachable");
}

#[test]
fn errors_are_json_with_the_right_status() {
    let up = TestUpstream::start("svc");
    // An upstream that accepts and immediately closes: a reset mid-request.
    let closer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closer_addr = closer.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in closer.incoming().flatten() {
            drop(s);
        }
    });
    let gw = Gateway::start(&format!(
        r#"
server: {{ threads: 1, max_body: 1KiB }}
upstreams:
  svc: {{ targets: ["{up}"], timeouts: {{ read: 300ms }} }}
  dead: {{ targets: ["{dead}"] }}
  closer: {{ targets: ["{closer_addr}"], retries: {{ attempts: 0 }} }}
  nowhere: {{ targets: ["nowhere.invalid:80"] }}
routes:
  - name: timed
    match: {{ path_prefix: /timed/ }}
    upstream: svc
    timeout: 200ms
  - name: svc
    match: {{ path_prefix: /svc/, methods: [GET, POST] }}
    upstream: svc
    max_body: 100
  - name: dead
    match: {{ path_prefix: /dead/ }}
    upstream: dead
  - name: closer
    match: {{ path_prefix: /closer/ }}
    upstream: closer
  - name: nowhere
    match: {{ path_prefix: /nowhere/ }}
    upstream: nowhere
"#,
        up = up.addr,
        dead = dead_addr()
    ));
    let c = client();
    assert_json_error(
        c.get(gw.url("/missing")).send().unwrap(),
        404,
        "route_not_found",
    );
    assert_json_error(
        c.delete(gw.url("/svc/x")).send().unwrap(),
        405,
        "method_not_allowed",
    );
    assert_json_error(
        c.post(gw.url("/svc/x"))
            .body(vec![b'x'; 101])
            .send()
            .unwrap(),
        413,
        "body_too_large",
    );
    assert_eq!(
        up.count(),
        0,
        "an oversized body never reaches the upstream"
    );
    assert_eq!(
        c.post(gw.url("/svc/x"))
            .body(vec![b'x'; 100])
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_json_error(
        c.get(gw.url("/dead/x")).send().unwrap(),
        502,
        "upstream_unreachable",
    );
    assert_json_error(
        c.get(gw.url("/closer/x")).send().unwrap(),
        502,
        "upstream_unreachable",
    );
    assert_json_error(
        c.get(gw.url("/nowhere/x")).send().unwrap(),
        503,
        "no_upstream_available",
    );
    let started = std::time::Instant::now();
    assert_json_error(
        c.get(gw.url("/svc/x?sleep_ms=3000")).send().unwrap(),
        504,
        "upstream_timeout",
    );
    assert_json_error(
        c.get(gw.url("/timed/x?sleep_ms=3000")).send().unwrap(),
        504,
        "route_timeout",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "timeouts cut the wait short"
    );
    let bad = raw_request(gw.proxy, "GET /svc/x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").unwrap();
    assert_eq!(bad.status, 400, "{}", bad.head);
}

#[test]
fn chunked_body_over_the_limit_gets_413() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n    max_body: 1000\n",
        up.addr
    ));
    let chunk = format!("{:x}\r\n{}\r\n", 600, "y".repeat(600));
    let req = format!("POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}0\r\n\r\n");
    let resp = raw_request(gw.proxy, &req).unwrap();
    assert_eq!(resp.status, 413, "{}", resp.head);
    let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(body["error"]["code"], "body_too_large");
}

/// Sends a request and reads the answer while the rest of it is still being written, as a
/// client streaming a body does.
fn send_while_reading(addr: std::net::SocketAddr, head: &str, body: Vec<u8>) -> RawResponse {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    sender.join().unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    RawResponse {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[test]
fn chunked_bodies_are_read_whole_before_the_upstream_is_contacted() {
    // An upstream that is only a listening socket: a connection to it is queued by the
    // kernel whether or not it is accepted, so an empty queue means none was made.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  silent: {{ targets: [\"{}\"] }}\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - name: silent\n    match: {{ path_prefix: /silent/ }}\n    upstream: silent\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        silent.local_addr().unwrap(),
        up.addr
    ));
    let head = |path: &str, extra: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n{extra}Connection: close\r\n\r\n")
    };
    let malformed = [
        "5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5;\r\nhello\r\n0\r\nbad trailer\n\r\n",
    ];
    for body in malformed {
        let resp = raw_request(gw.proxy, &(head("/silent/x", "") + body)).unwrap();
        assert_eq!(resp.status, 400, "{body:?}: {}", resp.head);
        let json: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(json["error"]["code"], "bad_framing", "{body:?}");
        assert!(json["error"]["request_id"].is_string());
    }
    // Over 64 KiB a chunked body is not held: 411, and still nothing upstream.
    let big = format!("{:x}\r\n{}\r\n0\r\n\r\n", 70_000, "b".repeat(70_000));
    let resp = send_while_reading(gw.proxy, &head("/silent/x", ""), big.into_bytes());
    assert_eq!(resp.status, 411, "{}", resp.head);
    let json: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(json["error"]["code"], "length_required");
    assert_eq!(
        silent.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the upstream was never contacted"
    );

    // A well-formed chunked body arrives whole; `Expect: 100-continue` is answered here.
    let body = "x".repeat(30_000);
    let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head("/up", "Expect: 100-continue\r\n").as_bytes())
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    let chunks = format!(
        "{:x}\r\n{body}\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len(),
        body.len()
    );
    s.write_all(chunks.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.last();
    assert_eq!(seen.body_len, 60_000);
    assert_eq!(seen.headers.get("expect"), None, "the body is already here");
    assert_eq!(up.count(), 1);
}

/// Reads one response with a Content-Length body from a kept-alive connection.
fn read_one(s: &mut std::net::TcpStream) -> (u16, String) {
    let head = read_head(s);
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[test]
fn a_refused_upload_is_drained_so_the_answer_arrives_and_the_connection_serves_on() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: /svc/ }}\n    upstream: svc\n",
        up.addr
    ));
    let mut s = std::net::TcpStream::connect(gw.proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![b'u'; 300_000];
    s.write_all(
        format!(
            "POST /elsewhere HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&body).is_ok());
    let (status, answer) = read_one(&mut s);
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("\"code\":\"route_not_found\""), "{answer}");
    assert!(sender.join().unwrap(), "the whole body was taken");
    s.write_all(b"GET /svc/next HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (status, answer) = read_one(&mut s);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(up.last().uri, "/svc/next");
}

#[test]
fn forwarded_headers_request_id_and_hop_by_hop() {
    let up = TestUpstream::start("svc");
    let cfg = |trusted: &str| {
        format!(
            "server: {{ threads: 1, trusted_proxies: [{trusted}] }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
            up.addr
        )
    };
    let c = client();
    let header =
        |seen: &common::upstream::Seen, name: &str| seen.headers.get(name).map(|v| v.join(","));

    let gw = Gateway::start(&cfg("10.0.0.0/8"));
    let resp = c
        .get(gw.url("/x"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "req-123")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .send()
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    assert!(
        resp.headers().get("keep-alive").is_none(),
        "hop-by-hop response headers are dropped"
    );
    let seen = up.last();
    assert_eq!(
        header(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1"),
        "untrusted peers cannot forge XFF"
    );
    assert_eq!(header(&seen, "x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(header(&seen, "x-forwarded-host"), header(&seen, "host"));
    assert_eq!(header(&seen, "x-request-id").as_deref(), Some("req-123"));
    for hop in ["x-secret", "te", "proxy-authorization"] {
        assert!(
            header(&seen, hop).is_none(),
            "{hop} must not reach the upstream"
        );
    }

    let resp = c
        .get(gw.url("/x"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(header(&up.last(), "x-request-id"), Some(generated));

    let gw = Gateway::start(&cfg("127.0.0.1/32"));
    c.get(gw.url("/x"))
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .send()
        .unwrap();
    let seen = up.last();
    assert_eq!(
        header(&seen, "x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1"),
        "trusted peers are appended to"
    );
    assert_eq!(header(&seen, "x-forwarded-proto").as_deref(), Some("https"));
}

#[test]
fn dns_named_targets_are_resolved() {
    let up = TestUpstream::start("named");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1, resolve_interval: 1s }}\nupstreams:\n  svc: {{ targets: [\"localhost:{}\"] }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n",
        up.addr.port()
    ));
    let resp = client().get(gw.url("/x")).send().unwrap();
    // localhost may resolve to ::1 first; the target rotates over its addresses.
    let ok = resp.status() == 200
        || (0..3).any(|_| client().get(gw.url("/x")).send().unwrap().status() == 200);
    assert!(ok);
    assert!(up.count() >= 1);
}

const FIFTY_MB: u64 = 50 * 1024 * 1024;

#[test]
fn fifty_megabyte_bodies_stream_both_ways_with_bounded_memory() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1, max_body: 60MiB }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - name: svc\n    match: {{ path_prefix: / }}\n    upstream: svc\n    stream_request_body: true\n",
        up.addr
    ));
    let before = gw.peak_rss_kib();
    let c = client();

    let upload = reqwest::blocking::Body::sized(
        PatternReader {
            offset: 0,
            len: FIFTY_MB,
        },
        FIFTY_MB,
    );
    let resp: serde_json::Value = c
        .post(gw.url("/upload"))
        .body(upload)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["body_len"], FIFTY_MB);
    let mut expect = PatternReader {
        offset: 0,
        len: FIFTY_MB,
    };
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    std::io::copy(&mut expect, &mut HashWriter(&mut hasher)).unwrap();
    assert_eq!(
        resp["body_sha256"],
        hex::encode(sha2::Digest::finalize(hasher))
    );

    // The same body without a length: streamed chunked, never gathered.
    let chunked = reqwest::blocking::Body::new(PatternReader {
        offset: 0,
        len: FIFTY_MB,
    });
    let resp: serde_json::Value = c
        .post(gw.url("/upload-chunked"))
        .body(chunked)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(resp["body_len"], FIFTY_MB);
    assert_eq!(
        resp["headers"]["transfer-encoding"],
        serde_json::json!(["chunked"])
    );

    let mut resp = c
        .get(gw.url(&format!("/download?download={FIFTY_MB}")))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut offset, mut buf) = (0u64, vec![0u8; 256 * 1024]);
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            assert_eq!(*b, pattern_byte(offset), "byte {offset} differs");
            offset += 1;
        }
    }
    assert_eq!(offset, FIFTY_MB);
    let growth_mib = (gw.peak_rss_kib() - before) / 1024;
    eprintln!("peak before {before} KiB, growth {growth_mib} MiB");
    assert!(
        growth_mib < 12,
        "gateway peak memory grew by {growth_mib} MiB moving 150 MiB"
    );
}

/// Streams the upstream's download pattern without holding it in memory.
struct PatternReader {
    offset: u64,
    len: u64,
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len - self.offset).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(self.offset + i as u64);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Raw request bytes for `raw_request` (which takes text): a request line, headers, and
/// an empty line.
fn raw(line: &str, headers: &[&str]) -> String {
    let mut req = format!("{line}\r\nHost: t\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req + "\r\n"
}

/// What the gateway answers: a JSON error of its own, a plain 400 from Pingora's HTTP
/// parser (for bytes that are not a valid HTTP/1.1 request head), or the upstream.
#[derive(Debug, PartialEq)]
enum Answer {
    Json(u16),
    Parser400,
    Upstream,
}

#[test]
fn hostile_requests_get_a_4xx_and_the_gateway_keeps_serving() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  svc: {{ targets: ["{}"] }}
routes:
  - name: svc
    match: {{ path_prefix: /svc/ }}
    upstream: svc
"#,
        up.addr
    ));
    let long_path = format!("/svc/{}", "a".repeat(20_000));
    let huge_header = format!("X-Big: {}", "b".repeat(2_000_000));
    let get = |headers: &[&str]| raw("GET /svc/x HTTP/1.1", headers);
    let cases = [
        (raw("GET /svc/%zz HTTP/1.1", &[]), Answer::Json(400)),
        (
            raw("GET /svc/%2f..%2fadmin HTTP/1.1", &[]),
            Answer::Json(400),
        ),
        (raw("GET /svc/%00 HTTP/1.1", &[]), Answer::Json(400)),
        (
            raw("GET /../../../etc/passwd HTTP/1.1", &[]),
            Answer::Json(404),
        ),
        (raw("GET svc/x HTTP/1.1", &[]), Answer::Json(400)),
        (raw("GET ?svc HTTP/1.1", &[]), Answer::Json(400)),
        (raw("GET http://t/svc/x HTTP/1.1", &[]), Answer::Upstream),
        (raw("BREW /svc/x HTTP/1.1", &[]), Answer::Upstream),
        (
            raw(&format!("GET {long_path} HTTP/1.1"), &[]),
            Answer::Upstream,
        ),
        (get(&["X-Forwarded-For: ::::, not-an-ip"]), Answer::Upstream),
        (
            get(&["traceparent: zz-zz", "X-Request-Id: ../x"]),
            Answer::Upstream,
        ),
        (get(&["Content-Length: abc"]), Answer::Parser400),
        (
            get(&["Content-Length: 1", "Content-Length: 2"]),
            Answer::Parser400,
        ),
        (get(&[&huge_header]), Answer::Parser400),
        (get(&["X-Request-Id: \u{7f}\u{1}"]), Answer::Parser400),
        (raw("GET /svc/x HTTP/9.9", &[]), Answer::Parser400),
        (get(&["Host: other"]), Answer::Parser400),
        // Framing that could be read two ways is refused before the upstream sees anything.
        (
            get(&["Transfer-Encoding: chunked", "Content-Length: 5"]) + "0\r\n\r\n",
            Answer::Json(400),
        ),
        (
            get(&["Content-Length: 5", "Content-Length: 5"]) + "hello",
            Answer::Json(400),
        ),
        (get(&["Content-Length: 5, 5"]) + "hello", Answer::Json(400)),
        (
            get(&["Transfer-Encoding: gzip, chunked"]) + "0\r\n\r\n",
            Answer::Json(400),
        ),
        (
            get(&["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"]) + "0\r\n\r\n",
            Answer::Json(400),
        ),
        (raw("GET /svc/a\tb HTTP/1.1", &[]), Answer::Json(400)),
        (raw("GET /svc/a\u{7f}b HTTP/1.1", &[]), Answer::Json(400)),
        (
            "GET /svc/x HTTP/1.1\nHost: t\nConnection: close\n\n".to_string(),
            Answer::Json(400),
        ),
        (
            get(&["Transfer-Encoding: chunked"]) + "0\r\n\r\n",
            Answer::Upstream,
        ),
        // A chunked body's own framing is judged before the upstream is contacted.
        (
            get(&["Transfer-Encoding: chunked"]) + "5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n",
            Answer::Json(400),
        ),
        (
            get(&["Transfer-Encoding: chunked"]) + "5\nhello\r\n0\r\n\r\n",
            Answer::Json(400),
        ),
        (
            get(&["Transfer-Encoding: chunked"]) + "5\r\nhelloXX0\r\n\r\n",
            Answer::Json(400),
        ),
        ("\u{1}\u{2}garbage\r\n\r\n".to_string(), Answer::Parser400),
    ];
    for (request, expected) in &cases {
        let resp = raw_request(gw.proxy, request).unwrap();
        let answer = match resp.status {
            200 if resp.head.contains("x-upstream: svc") => Answer::Upstream,
            400 if resp.head.contains("Server: Pingora") => Answer::Parser400,
            status if resp.body.contains("\"request_id\"") => Answer::Json(status),
            status => panic!("unexpected answer {status}:\n{}\n{}", resp.head, resp.body),
        };
        assert_eq!(&answer, expected, "{:?}", &request[..request.len().min(60)]);
    }
    let seen = up.seen();
    assert!(
        seen.iter()
            .all(|r| !(r.headers.contains_key("content-length")
                && r.headers.contains_key("transfer-encoding"))),
        "never both framings upstream"
    );
    let paths: Vec<String> = seen.iter().map(|r| r.uri.clone()).collect();
    assert!(paths.contains(&"/svc/x".to_string()), "{paths:?}");
    assert!(
        !paths.iter().any(|p| p.starts_with("http")),
        "absolute-form goes upstream as a path: {paths:?}"
    );
    let ok = client().get(gw.url("/svc/after")).send().unwrap();
    assert_eq!(ok.status(), 200, "still serving after hostile input");
}

/// RFC 9110 §8.6: repeated Content-Length values that agree (two headers, or a list) are
/// one length; values that disagree are a framing the gateway cannot trust: 502.
#[test]
fn an_upstreams_repeated_content_length_is_collapsed_or_refused() {
    let twice = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let list = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
    );
    let differ = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!",
    );
    let gw = Gateway::start(&format!(
        r#"upstreams:
  twice: {{ targets: ["{twice}"], retries: {{ attempts: 0 }} }}
  list: {{ targets: ["{list}"], retries: {{ attempts: 0 }} }}
  differ: {{ targets: ["{differ}"], retries: {{ attempts: 0 }} }}
routes:
  - {{ name: twice, match: {{ path: /twice }}, upstream: twice }}
  - {{ name: list, match: {{ path: /list }}, upstream: list }}
  - {{ name: differ, match: {{ path: /differ }}, upstream: differ }}
"#
    ));
    for path in ["/twice", "/list"] {
        let r = raw_request(
            gw.proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.head);
        let lengths: Vec<String> = r
            .head
            .lines()
            .map(|l| l.to_ascii_lowercase())
            .filter(|l| l.starts_with("content-length:"))
            .collect();
        assert_eq!(lengths, ["content-length: 5"], "{path}: {}", r.head);
        assert_eq!(r.body, "hello");
    }
    let r = raw_request(
        gw.proxy,
        "GET /differ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 502, "{}", r.head);
    assert!(r.body.contains("upstream_bad_response"), "{}", r.body);
}

/// An upstream that reads a request, then sends its answer's head a byte every 100 ms
/// without end (each read is quick, the head never completes), until the socket is shut.
fn trickling_upstream() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
        let head = b"HTTP/1.1 200 OK\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        // Bounded: 60 s of bytes at most, far past the client's own timeout.
        for byte in head.take(600) {
            if conn.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    addr
}

#[test]
fn the_route_timeout_bounds_a_response_head_that_trickles_in() {
    let gw = Gateway::start(&format!(
        "upstreams:\n  slow: {{ targets: [\"{}\"], timeouts: {{ read: 1s }} }}\nroutes:\n  - {{ name: slow, match: {{ path_prefix: / }}, upstream: slow, timeout: 2s }}\n",
        trickling_upstream()
    ));
    assert_json_error(
        client().get(gw.url("/x")).send().unwrap(),
        504,
        "route_timeout",
    );
}
