//! Authentication beyond JWT through the real gateway: API keys with consumers, their own
//! limits and quotas; HTTP Basic against an htpasswd file made by `htpasswd` and `openssl`
//! (tests/data/auth); forward auth against an auth service and RFC 7662 introspection
//! against an endpoint, both real HTTP servers started here that count their calls.

mod common;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What an auth service saw of one call: method, path, headers and body.
#[derive(Clone, Debug)]
struct Call {
    headers: BTreeMap<String, String>,
    body: String,
}

type Reply = (u16, Vec<(&'static str, String)>, String);

/// A real HTTP server answering with `reply`, keeping every call.
struct AuthService {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    _runtime: tokio::runtime::Runtime,
}

impl AuthService {
    fn start(reply: impl Fn(&Call) -> Reply + Send + Sync + 'static) -> AuthService {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (reply, counted) = (Arc::new(reply), calls.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reply, counted) = (reply.clone(), counted.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (reply, counted) = (reply.clone(), counted.clone());
                            async move {
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let call = Call {
                                    headers,
                                    body: String::from_utf8_lossy(&body).into(),
                                };
                                let (status, headers, body) = reply(&call);
                                counted.lock().unwrap().push(call);
                                if headers.iter().any(|(k, _)| *k == "x-test-delay") {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                }
                                let mut resp = hyper::Response::builder().status(status);
                                for (k, v) in headers {
                                    resp = resp.header(k, v);
                                }
                                Ok::<_, std::convert::Infallible>(
                                    resp.body(Full::new(Bytes::from(body))).unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuthService {
            addr,
            calls,
            _runtime: runtime,
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn last(&self) -> Call {
        self.calls.lock().unwrap().last().cloned().expect("a call")
    }
}

/// Starts the gateway with extra files written beside its config first.
fn start(files: &[(&str, String)], envs: &[(&str, &str)], body: &str) -> Gateway {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    Gateway::start_env(&["run"], envs, body, move |dir, text| {
        for (name, content) in &files {
            std::fs::write(dir.join(name), content).unwrap();
        }
        let config = dir.join("gateway.yaml");
        std::fs::write(&config, text).unwrap();
        config
    })
}

fn digest(key: &str) -> String {
    let (code, out, err) = portico_stdin(&["keys", "hash"], key);
    assert_eq!(code, 0, "{err}");
    out.trim().to_string()
}

/// Runs the binary with `input` on stdin.
fn portico_stdin(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(bin())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

fn keys_file() -> String {
    format!(
        "- {{ consumer: acme, key_sha256: {}, rate_limit: gold, quota: monthly, claims: {{ tier: gold }} }}\n\
         - {{ consumer: beta, key_sha256: [{}, {}], claims: {{ tier: bronze }} }}\n",
        digest("acme-key-1"),
        digest("beta-old-key"),
        digest("beta-key")
    )
}

#[test]
fn keys_hash_prints_the_sha256_of_stdin_without_its_newline() {
    let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(digest("abc\n"), expected);
    assert_eq!(digest("abc"), expected);
    let (code, _, err) = portico_stdin(&["keys", "hash"], "");
    assert_eq!(code, 1);
    assert!(err.contains("no key on stdin"), "{err}");
    let (code, out, _) = portico_stdin(&["keys", "new"], "");
    assert_eq!(code, 0);
    let key = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("key:")
        .trim();
    let stored = out
        .lines()
        .nth(1)
        .unwrap()
        .trim_start_matches("key_sha256:")
        .trim();
    assert_eq!(key.len(), 43, "{out}");
    assert_eq!(digest(key), stored);
}

#[test]
fn api_keys_identify_consumers_with_their_claims_limits_and_quotas() {
    let up = TestUpstream::start("svc");
    let body = format!(
        r#"server: {{ threads: 1 }}
telemetry: {{ access_log: {{ query: true }} }}
upstreams:
  svc: {{ targets: ["{up}"] }}
rate_limits:
  gold: {{ requests: 1000, per: 1m, key: consumer }}
  tight: {{ requests: 1, per: 1h, key: consumer }}
quotas:
  monthly: {{ limit: 3, period: month }}
auth:
  partners:
    type: api_key
    from: [header:X-API-Key, query:api_key]
    keys_file: partners.yaml
    forward: {{ consumer: X-Consumer, tier: X-Tier }}
routes:
  - {{ name: gold, match: {{ path_prefix: /gold/ }}, upstream: svc, auth: partners, require: {{ claims: {{ tier: [gold, silver] }} }} }}
  - {{ name: open, match: {{ path_prefix: /open/ }}, upstream: svc, auth: partners, rate_limit: tight }}
  - {{ name: moved, match: {{ path_prefix: /v1/ }}, strip_prefix: /v1, upstream: svc, auth: partners }}
"#,
        up = up.addr
    );
    let gw = start(&[("partners.yaml", keys_file())], &[], &body);
    let c = client();
    let get = |path: &str, key: Option<&str>| {
        let mut req = c
            .get(gw.url(path))
            .header("X-Consumer", "admin")
            .header("X-Tier", "platinum");
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        req.send().unwrap()
    };

    let missing = get("/gold/a", None);
    assert_eq!(
        missing.headers()["www-authenticate"],
        "ApiKey realm=\"partners\""
    );
    assert_json_error(missing, 401, "api_key_missing");
    assert_json_error(get("/gold/a", Some("acme-key-2")), 401, "api_key_invalid");
    assert_json_error(get("/gold/a", Some("beta-key")), 403, "insufficient_claims");

    let ok = get("/gold/a", Some("acme-key-1"));
    assert_eq!(ok.status(), 200);
    assert_eq!(
        ok.headers()["ratelimit-limit"],
        "3",
        "the quota is the tighter limit"
    );
    assert_eq!(ok.headers()["ratelimit-remaining"], "2");
    let seen = up.last();
    assert_eq!(
        seen.headers["x-consumer"],
        ["acme"],
        "the client's copy never reaches the upstream"
    );
    assert_eq!(seen.headers["x-tier"], ["gold"]);

    // A key in the query string: found, then removed before logging and proxying.
    let ok = c
        .get(gw.url("/gold/q?api_key=acme-key-1&page=2"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(up.last().uri, "/gold/q?page=2");
    // A route that rewrites the path sends the query on, less the key.
    let moved = c
        .get(gw.url("/v1/orders?api_key=beta-key&page=3"))
        .send()
        .unwrap();
    assert_eq!(moved.status(), 200);
    assert_eq!(up.last().uri, "/orders?page=3");
    // A request no route takes never reaches a policy: its key is still not logged.
    let lost = c.get(gw.url("/nowhere?api_key=acme-key-1")).send().unwrap();
    assert_eq!(lost.status(), 404);
    let twice = c
        .get(gw.url("/gold/q?api_key=acme-key-1&api_key=x"))
        .send()
        .unwrap();
    assert_json_error(twice, 400, "ambiguous_header");

    // The quota of 3 a month: the third request of acme is the last.
    assert_eq!(get("/gold/b", Some("acme-key-1")).status(), 200);
    let over = get("/gold/c", Some("acme-key-1"));
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry > 0 && retry <= 31 * 86_400,
        "until the month ends: {retry}"
    );
    assert_eq!(over.headers()["ratelimit-remaining"], "0");
    let body = assert_json_error(over, 429, "quota_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per month"),
        "{body}"
    );

    // The route's limit keyed by consumer applies to beta (who has none of its own); both
    // of beta's keys (one being rotated out) are beta.
    assert_eq!(get("/open/1", Some("beta-old-key")).status(), 200);
    assert_json_error(get("/open/2", Some("beta-key")), 429, "rate_limited");

    // Access lines are written by a background writer: wait for the last one.
    let logged = wait_until(Duration::from_secs(10), || {
        gw.log().contains("\"path\":\"/open/2\"")
    });
    assert!(logged.is_some(), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains("\"path\":\"/gold/q?page=2\""),
        "the logged query lost its key"
    );
    assert!(
        !log.contains("acme-key-1") && !log.contains("beta-key"),
        "a key reached the access log"
    );
    assert!(
        log.contains("\"path\":\"/nowhere?api_key=REDACTED\""),
        "{log}"
    );
    assert!(
        log.contains("\"user\":\"acme\""),
        "the consumer is the logged user"
    );
    for view in ["/config", "/routes", "/openapi.json"] {
        let text = c.get(gw.admin_url(view)).send().unwrap().text().unwrap();
        assert!(
            !text.contains("acme-key-1") && !text.contains(&digest("acme-key-1")),
            "{view}"
        );
    }
    let routes = gw.admin_json("/routes").to_string();
    assert!(routes.contains("\"type\":\"api_key\""), "{routes}");
    assert!(routes.contains("tier in [gold, silver]"), "{routes}");
}

#[test]
fn a_consumers_own_limit_replaces_the_routes_identity_limit() {
    let up = TestUpstream::start("svc");
    let body = format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
rate_limits:
  gold: {{ requests: 1000, per: 1m, key: consumer }}
  tight: {{ requests: 1, per: 1h, key: consumer }}
quotas:
  monthly: {{ limit: 1000, period: month }}
auth:
  partners: {{ type: api_key, keys_file: partners.yaml }}
routes:
  - {{ name: open, match: {{ path_prefix: / }}, upstream: svc, auth: partners, rate_limit: tight }}
"#,
        up = up.addr
    );
    let gw = start(&[("partners.yaml", keys_file())], &[], &body);
    let c = client();
    for i in 0..3 {
        let resp = c
            .get(gw.url(&format!("/{i}")))
            .header("X-API-Key", "acme-key-1")
            .send()
            .unwrap();
        assert_eq!(
            resp.status(),
            200,
            "acme's own limit (gold) applies, not `tight`"
        );
    }
    assert_eq!(
        c.get(gw.url("/a"))
            .header("X-API-Key", "beta-key")
            .send()
            .unwrap()
            .status(),
        200
    );
    let resp = c
        .get(gw.url("/b"))
        .header("X-API-Key", "beta-key")
        .send()
        .unwrap();
    assert_json_error(resp, 429, "rate_limited");
}

#[test]
fn keys_file_errors_point_at_their_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("partners.yaml"),
        format!("- {{ consumer: acme, key_sha256: {} }}\n- {{ consumer: beta, key_sha256: NOT-HEX, quota: nope }}\n", digest("k")),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nauth:\n  partners: { type: api_key, keys_file: partners.yaml }\n  ops: { type: basic, htpasswd_file: weak.htpasswd }\nroutes:\n  - { name: r, match: { path_prefix: / }, respond: { status: 200 }, auth: partners }\n",
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/auth/weak.htpasswd"),
        dir.path().join("weak.htpasswd"),
    )
    .unwrap();
    let (code, _, err) = portico(&["check", "gateway.yaml"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("partners.yaml:2:33: error: consumer `beta`: `key_sha256` is not 64 lowercase hex digits"), "{err}");
    assert!(
        err.contains("weak.htpasswd:1:1: error: user `carol`: apr1-MD5 hashes are refused"),
        "{err}"
    );
    // Names resolve once the digests are fixed: an unknown quota is reported at its line.
    std::fs::write(
        dir.path().join("partners.yaml"),
        format!(
            "- {{ consumer: beta, key_sha256: {}, quota: nope }}\n",
            digest("k")
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("weak.htpasswd"), "").unwrap();
    let (code, _, err) = portico(&["check", "gateway.yaml"], dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("partners.yaml:1:"), "{err}");
    assert!(
        err.contains("consumer `beta`: no `quotas` entry is named `nope`"),
        "{err}"
    );
}

fn htpasswd() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/auth/ops.htpasswd"),
    )
    .unwrap()
}

#[test]
fn basic_auth_checks_bcrypt_and_sha512_and_limits_failed_attempts_before_hashing() {
    let up = TestUpstream::start("svc");
    let body = format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  ops: {{ type: basic, realm: ops, htpasswd_file: ops.htpasswd, forward: {{ sub: X-User }}, failures_per_minute: 5 }}
routes:
  - {{ name: ops, match: {{ path_prefix: /ops/ }}, upstream: svc, auth: ops, require: {{ claims: {{ sub: [alice, bob] }} }} }}
"#,
        up = up.addr
    );
    let gw = start(&[("ops.htpasswd", htpasswd())], &[], &body);
    let c = client();
    let checks = || metric(&gw, "portico_auth_password_checks_total{policy=\"ops\"}");

    let none = c.get(gw.url("/ops/")).send().unwrap();
    assert_eq!(
        none.headers()["www-authenticate"],
        "Basic realm=\"ops\", charset=\"UTF-8\""
    );
    assert_json_error(none, 401, "credentials_missing");
    let alice = c
        .get(gw.url("/ops/"))
        .basic_auth("alice", Some("wonder-land"))
        .header("X-User", "root")
        .send()
        .unwrap();
    assert_eq!(alice.status(), 200);
    assert_eq!(up.last().headers["x-user"], ["alice"]);
    let bob = c
        .get(gw.url("/ops/"))
        .basic_auth("bob", Some("builder-pass"))
        .send()
        .unwrap();
    assert_eq!(bob.status(), 200);
    assert_eq!(checks(), 2.0);
    // A verified pair is not hashed again.
    for _ in 0..3 {
        assert_eq!(
            c.get(gw.url("/ops/"))
                .basic_auth("alice", Some("wonder-land"))
                .send()
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(checks(), 2.0);

    // A flood of guesses: 5 are checked, the rest refused before any hash is computed.
    for i in 0..20 {
        let resp = c
            .get(gw.url("/ops/"))
            .basic_auth("alice", Some(format!("guess-{i}")))
            .send()
            .unwrap();
        let expected = if i < 5 { 401 } else { 429 };
        assert_eq!(resp.status(), expected, "guess {i}");
    }
    assert_eq!(checks(), 7.0);
    let blocked = c
        .get(gw.url("/ops/"))
        .basic_auth("nobody", Some("x"))
        .send()
        .unwrap();
    assert_eq!(blocked.headers()["retry-after"], "60");
    assert_json_error(blocked, 429, "too_many_failed_logins");
    assert_eq!(checks(), 7.0);
    assert!(!gw.log().contains("wonder-land") && !gw.log().contains("guess-1"));
}

#[test]
fn forward_auth_allows_copies_denies_and_caches_per_method_host_and_path() {
    let up = TestUpstream::start("svc");
    let authz = AuthService::start(|call| {
        let uri = call
            .headers
            .get("x-forwarded-uri")
            .cloned()
            .unwrap_or_default();
        match call.headers.get("authorization").map(String::as_str) {
            Some("Bearer good") => (
                200,
                vec![
                    ("x-user-id", "u1".into()),
                    ("x-user-roles", "admin".into()),
                    ("x-other", "no".into()),
                ],
                String::new(),
            ),
            Some("Bearer slow") => (200, vec![("x-test-delay", "1".into())], String::new()),
            Some("Bearer broken") => (500, vec![], "boom".into()),
            Some("Bearer forbidden") => (
                403,
                vec![("content-type", "text/plain".into())],
                "not you".into(),
            ),
            _ => (
                302,
                vec![
                    ("location", format!("https://login.example/?rd={uri}")),
                    ("set-cookie", "flow=1; HttpOnly".into()),
                ],
                String::new(),
            ),
        }
    });
    let body = format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  sso: {{ type: forward, url: "http://{authz}/verify", send: [Authorization, Cookie], copy: [X-User-Id, X-User-Roles], cache: 30s, timeout: 300ms }}
routes:
  - {{ name: app, match: {{ path_prefix: /app/ }}, upstream: svc, auth: sso }}
"#,
        up = up.addr,
        authz = authz.addr
    );
    let gw = start(&[], &[], &body);
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let send = |method: &str, path: &str, token: &str| {
        c.request(method.parse().unwrap(), gw.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .header("X-User-Id", "evil")
            .send()
            .unwrap()
    };

    assert_eq!(send("GET", "/app/a?x=1", "good").status(), 200);
    let seen = up.last();
    assert_eq!(
        seen.headers["x-user-id"],
        ["u1"],
        "the client's copy was replaced"
    );
    assert_eq!(seen.headers["x-user-roles"], ["admin"]);
    assert!(
        !seen.headers.contains_key("x-other"),
        "only `copy` headers are copied"
    );
    assert_eq!(authz.calls(), 1);
    assert_eq!(send("GET", "/app/a?x=1", "good").status(), 200);
    assert_eq!(authz.calls(), 1, "a cached allow costs no call");
    assert_eq!(up.last().headers["x-user-id"], ["u1"]);
    assert_eq!(send("GET", "/app/b", "good").status(), 200);
    assert_eq!(send("POST", "/app/a?x=1", "good").status(), 200);
    assert_eq!(
        authz.calls(),
        3,
        "another path, another method: asked again"
    );
    let asked = authz.last().headers;
    assert_eq!(asked["x-forwarded-method"], "POST");
    assert_eq!(asked["x-forwarded-uri"], "/app/a?x=1");
    assert_eq!(asked["x-forwarded-host"], gw.proxy.to_string());
    assert_eq!(asked["x-forwarded-proto"], "http");
    assert_eq!(asked["x-forwarded-for"], "127.0.0.1");
    assert_eq!(asked["authorization"], "Bearer good");
    assert!(
        !asked.contains_key("x-user-id"),
        "only the `send` headers go to the service"
    );

    // The same request from another address is asked again: the service saw the address.
    let elsewhere = reqwest::blocking::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let from_two = elsewhere
        .get(gw.url("/app/a?x=1"))
        .header("Authorization", "Bearer good")
        .send()
        .unwrap();
    assert_eq!(from_two.status(), 200);
    assert_eq!(
        authz.calls(),
        4,
        "an allow is not shared across client addresses"
    );
    assert_eq!(authz.last().headers["x-forwarded-for"], "127.0.0.2");

    let redirect = c.get(gw.url("/app/page")).send().unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(
        redirect.headers()["location"],
        "https://login.example/?rd=/app/page"
    );
    assert_eq!(redirect.headers()["set-cookie"], "flow=1; HttpOnly");
    let denied = send("GET", "/app/a", "forbidden");
    assert_eq!(denied.status(), 403);
    assert_eq!(denied.headers()["content-type"], "text/plain");
    assert!(denied.headers().contains_key("x-request-id"));
    assert_eq!(denied.text().unwrap(), "not you");
    let before = authz.calls();
    assert_eq!(send("GET", "/app/a", "forbidden").status(), 403);
    assert_eq!(authz.calls(), before + 1, "denials are never cached");

    assert_json_error(send("GET", "/app/a", "broken"), 503, "auth_unavailable");
    assert_json_error(send("GET", "/app/a", "slow"), 503, "auth_unavailable");
    let seen_by_upstream = up.count();
    assert_eq!(
        seen_by_upstream, 5,
        "no denial or failure reached the upstream"
    );
}

#[test]
fn introspection_turns_active_tokens_into_claims_and_caches_them() {
    let up = TestUpstream::start("svc");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let idp = AuthService::start(move |call| {
        // client_secret_basic: base64("gw-client:s3cret/+=")
        let expected = "Basic Z3ctY2xpZW50OnMzY3JldCUyRiUyQiUzRA==";
        if call.headers.get("authorization").map(String::as_str) != Some(expected) {
            return (401, vec![], "{\"error\":\"invalid_client\"}".into());
        }
        let answer = match call.body.as_str() {
            "token=active-token&token_type_hint=access_token" => {
                json!({"active": true, "sub": "svc-1", "scope": "read write", "exp": exp, "client_id": "c1"})
            }
            "token=read-only&token_type_hint=access_token" => {
                json!({"active": true, "sub": "svc-2", "scope": "read", "exp": exp})
            }
            _ => json!({"active": false}),
        };
        (
            200,
            vec![("content-type", "application/json".into())],
            answer.to_string(),
        )
    });
    let body = format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  opaque: {{ type: introspection, url: "http://{idp}/introspect", client_id_env: INTROSPECT_ID, client_secret_env: INTROSPECT_SECRET, cache: 5m, forward: {{ sub: X-User-Id }} }}
  wrong: {{ type: introspection, url: "http://{idp}/introspect", client_id_env: INTROSPECT_ID, client_secret_env: INTROSPECT_ID }}
routes:
  - {{ name: write, match: {{ path_prefix: /write/ }}, upstream: svc, auth: opaque, require: {{ claims: {{ scope: [write] }} }} }}
  - {{ name: wrong, match: {{ path_prefix: /wrong/ }}, upstream: svc, auth: wrong }}
"#,
        up = up.addr,
        idp = idp.addr
    );
    let envs = [
        ("INTROSPECT_ID", "gw-client"),
        ("INTROSPECT_SECRET", "s3cret/+="),
    ];
    let gw = start(&[], &envs, &body);
    let c = client();
    let get = |path: &str, token: &str| {
        c.get(gw.url(path))
            .bearer_auth(token)
            .header("X-User-Id", "evil")
            .send()
            .unwrap()
    };

    assert_eq!(get("/write/1", "active-token").status(), 200);
    assert_eq!(up.last().headers["x-user-id"], ["svc-1"]);
    assert_eq!(get("/write/2", "active-token").status(), 200);
    assert_eq!(idp.calls(), 1, "an active token's answer is cached");
    assert_json_error(get("/write/1", "read-only"), 403, "insufficient_claims");
    let calls = idp.calls();
    let inactive = get("/write/1", "revoked");
    assert!(inactive.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    assert_json_error(inactive, 401, "token_inactive");
    assert_json_error(get("/write/2", "revoked"), 401, "token_inactive");
    assert_eq!(
        idp.calls(),
        calls + 1,
        "an inactive answer is kept briefly too"
    );
    assert_json_error(
        c.get(gw.url("/write/1")).send().unwrap(),
        401,
        "token_missing",
    );
    assert_json_error(get("/wrong/1", "active-token"), 503, "auth_unavailable");
    let config = c
        .get(gw.admin_url("/config"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(!config.contains("s3cret"), "{config}");
    assert!(!gw.log().contains("active-token"));
}

#[test]
fn every_kind_is_in_the_schema_and_unknown_kinds_are_refused() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/gateway.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let text = schema.to_string();
    for kind in ["api_key", "basic", "forward", "introspection"] {
        assert!(text.contains(&format!("\"const\":\"{kind}\"")), "{kind}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gateway.yaml"),
        "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nauth:\n  x: { type: saml, url: x }\n",
    )
    .unwrap();
    let (code, _, err) = portico(&["check", "gateway.yaml"], dir.path());
    assert_eq!(code, 1);
    assert!(err.contains("gateway.yaml:4:"), "{err}");
    assert!(err.contains("unknown variant `saml`"), "{err}");
}

#[test]
fn quotas_in_redis_are_shared_by_replicas_and_fail_as_configured() {
    let mut redis = RedisServer::start();
    let up = TestUpstream::start("svc");
    let body = format!(
        r#"server: {{ threads: 1 }}
redis: {{ url: "{redis}", timeout: 200ms }}
upstreams:
  svc: {{ targets: ["{up}"] }}
quotas:
  daily: {{ limit: 3, period: day, key: client_ip, on_redis_error: deny }}
  lenient: {{ limit: 3, period: day, key: route }}
routes:
  - {{ name: strict, match: {{ path_prefix: /strict/ }}, upstream: svc, quota: daily }}
  - {{ name: lenient, match: {{ path_prefix: /lenient/ }}, upstream: svc, quota: lenient }}
"#,
        redis = redis.url(),
        up = up.addr
    );
    let (a, b) = (start(&[], &[], &body), start(&[], &[], &body));
    let c = client();
    let connected = |gw: &Gateway| metric(gw, "portico_redis_connected") == 1.0;
    assert!(wait_until(Duration::from_secs(10), || connected(&a) && connected(&b)).is_some());
    // Two replicas, one count: 3 a day in all.
    for (i, gw) in [&a, &b, &a].into_iter().enumerate() {
        let resp = c.get(gw.url("/strict/x")).send().unwrap();
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(
            resp.headers()["ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    assert_json_error(
        c.get(b.url("/strict/x")).send().unwrap(),
        429,
        "quota_exceeded",
    );

    // Redis gone: `deny` refuses, the default lets through; both are counted.
    redis.kill();
    assert!(wait_until(Duration::from_secs(10), || !connected(&a)).is_some());
    assert_json_error(
        c.get(a.url("/strict/x")).send().unwrap(),
        503,
        "quota_unavailable",
    );
    assert_eq!(c.get(a.url("/lenient/x")).send().unwrap().status(), 200);
    assert_eq!(
        metric(&a, "portico_quota_unchecked_total{quota=\"daily\"}"),
        1.0
    );
    assert_eq!(
        metric(&a, "portico_quota_unchecked_total{quota=\"lenient\"}"),
        1.0
    );
}

#[test]
fn a_changed_htpasswd_file_drops_the_verified_pairs() {
    let up = TestUpstream::start("svc");
    let body = format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  ops: {{ type: basic, htpasswd_file: ops.htpasswd }}
routes:
  - {{ name: ops, match: {{ path_prefix: / }}, upstream: svc, auth: ops }}
"#,
        up = up.addr
    );
    let gw = start(&[("ops.htpasswd", htpasswd())], &[], &body);
    let c = client();
    let alice = || {
        c.get(gw.url("/"))
            .basic_auth("alice", Some("wonder-land"))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(alice(), 200);
    assert_eq!(alice(), 200, "now from the cache of verified pairs");
    // Alice is removed: the file changes, the config reloads, her cached pair is gone.
    let without_alice: String = htpasswd()
        .lines()
        .filter(|l| !l.starts_with("alice:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(gw.dir.path().join("ops.htpasswd"), without_alice).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || alice() == 401).is_some(),
        "alice is still let in"
    );
    assert_eq!(
        c.get(gw.url("/"))
            .basic_auth("bob", Some("builder-pass"))
            .send()
            .unwrap()
            .status(),
        200
    );
}
