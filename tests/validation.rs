//! Request validation through the real gateway to a real upstream that records what it
//! received: valid bodies arrive byte-for-byte, invalid ones never arrive.

mod common;
use common::*;
use sha2::{Digest, Sha256};

fn start(up: &TestUpstream) -> Gateway {
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");
    Gateway::start(&format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{}"] }}
routes:
  - name: users
    match: {{ path_prefix: /users/ }}
    upstream: svc
    validate: {{ body: "{schemas}/user.create.json", methods: [POST, PUT], max_body_bytes: 4KiB }}
  - name: messages
    match: {{ path_prefix: /messages/ }}
    upstream: svc
    validate: {{ body: "{schemas}/message.create.json", headers: [X-Tenant], query: [channel] }}
"#,
        up.addr
    ))
}

/// The `path` of every violation in a `validation_failed` body.
fn violation_paths(body: &serde_json::Value) -> Vec<&str> {
    body["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const VALID: &str = r#"{"name": "Ada", "email": "ada@example.com",  "address": {"city": "London", "zip": "12345"}}"#;

#[test]
fn a_valid_body_reaches_the_upstream_intact() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let resp = client()
        .post(gw.url("/users/"))
        .header("content-type", "application/json")
        .body(VALID)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().unwrap();
    assert_eq!(echo["body_len"], VALID.len());
    assert_eq!(
        echo["body_sha256"],
        sha(VALID.as_bytes()),
        "byte-for-byte, whitespace included"
    );

    let chunks = [&VALID[..20], &VALID[20..50], &VALID[50..]];
    let mut raw = String::from("POST /users/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for c in chunks {
        raw.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    raw.push_str("0\r\n\r\n");
    let resp = raw_request(gw.proxy, &raw).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.head);
    let echo: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(
        echo["body_sha256"],
        sha(VALID.as_bytes()),
        "a chunked body arrives intact"
    );
    assert_eq!(up.last().body_len, VALID.len() as u64);

    let draft7 = r#"{"to": 2, "text": "hi"}"#;
    let resp = client()
        .post(gw.url("/messages/?channel=email"))
        .header("x-tenant", "t1")
        .header("content-type", "application/json")
        .body(draft7)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200, "draft-07 schemas work too");
    assert_eq!(
        client().get(gw.url("/users/1")).send().unwrap().status(),
        200,
        "GET is not validated"
    );
}

#[test]
fn invalid_requests_get_the_right_error_and_never_reach_the_upstream() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let post = |body: &str, ct: &str| {
        client()
            .post(gw.url("/users/"))
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .unwrap()
    };

    let body = assert_json_error(
        post(
            r#"{"name": "", "email": "nope", "address": {"city": "X", "zip": "ABC"}, "extra": 1}"#,
            "application/json",
        ),
        400,
        "validation_failed",
    );
    let paths = violation_paths(&body);
    for want in ["/name", "/email", "/address/zip", ""] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    assert!(body["error"]["violations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| !v["message"].as_str().unwrap().is_empty()));
    let body = assert_json_error(
        post(r#"{"email": "a@b.c"}"#, "application/json"),
        400,
        "validation_failed",
    );
    assert!(body["error"]["violations"][0]["message"]
        .as_str()
        .unwrap()
        .contains("name"));
    assert_json_error(
        post(r#"{"name": "Ada", "#, "application/json"),
        400,
        "invalid_json",
    );
    assert_json_error(post(VALID, "text/plain"), 415, "unsupported_media_type");
    assert_json_error(
        post(
            &format!(r#"{{"name": "{}", "email": "a@b.c"}}"#, "x".repeat(5000)),
            "application/json",
        ),
        413,
        "body_too_large",
    );
    let big = "y".repeat(3000);
    let raw = format!("PUT /users/1 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{0:x}\r\n{big}\r\n{0:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    assert_eq!(
        raw_request(gw.proxy, &raw).unwrap().status,
        413,
        "a chunked body over the limit"
    );
    let body = assert_json_error(
        client()
            .post(gw.url("/messages/"))
            .header("content-type", "application/json")
            .body(r#"{"to": 1, "text": "x"}"#)
            .send()
            .unwrap(),
        400,
        "validation_failed",
    );
    let paths = violation_paths(&body);
    assert_eq!(paths, ["header:x-tenant", "query:channel"]);
    assert_eq!(up.count(), 0, "nothing invalid reached the upstream");
}

/// The access log's `bytes_in` counts the body read for a request that was then refused,
/// and the body of one that passed.
#[test]
fn bytes_in_counts_a_refused_body_too() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let invalid = r#"{"name": 7}"#;
    let post = |body: &'static str| {
        client()
            .post(gw.url("/users/"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(post(invalid), 400);
    assert_eq!(post(VALID), 200);
    let lines = || -> Vec<serde_json::Value> {
        gw.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["route"] == "users")
            .collect()
    };
    let logged = wait_until(std::time::Duration::from_secs(10), || lines().len() == 2);
    assert!(logged.is_some(), "{}", gw.log());
    let seen: Vec<(u64, u64)> = lines()
        .iter()
        .map(|l| {
            (
                l["status"].as_u64().unwrap(),
                l["bytes_in"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![(400, invalid.len() as u64), (200, VALID.len() as u64)]
    );
}
