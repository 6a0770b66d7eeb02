//! The policy pipeline through the real gateway: every answer the gateway writes carries
//! the route's CORS headers, cheap refusals run before signature checks, state survives a
//! reload that does not redefine it, and the `ip_access` and `headers` policies.

mod common;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ORIGIN: &str = "https://app.example.com";
const SECRET: &str = "a-secret-for-the-policy-tests";

fn header(resp: &reqwest::blocking::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// A secret file the config can name (absolute, so it is found from any config dir).
fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("hs.secret");
    std::fs::write(&path, SECRET).unwrap();
    path
}

fn token(claims: Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = claims;
    claims["exp"] = json!(exp);
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A 502 and a 504 written by the gateway on a CORS route carry the CORS headers, so a
/// browser shows the page the JSON error instead of hiding it.
#[test]
fn gateway_errors_on_a_cors_route_carry_the_cors_headers() {
    let slow = TestUpstream::start("slow");
    let dead = dead_addr();
    let gw = Gateway::start(&format!(
        r#"server: {{ threads: 1 }}
upstreams:
  dead: {{ targets: ["{dead}"], retries: {{ attempts: 0 }} }}
  slow: {{ targets: ["{slow}"], timeouts: {{ read: 200ms }} }}
cors:
  web: {{ allow_origins: ["{ORIGIN}"], expose_headers: [X-Request-Id] }}
routes:
  - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: dead, cors: web }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: slow, cors: web }}
"#,
        slow = slow.addr
    ));
    let c = client();
    let cases = [
        ("/dead", 502, "upstream_unreachable"),
        ("/slow?sleep_ms=2000", 504, "upstream_timeout"),
    ];
    for (path, status, code) in cases {
        let resp = c.get(gw.url(path)).header("origin", ORIGIN).send().unwrap();
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some(ORIGIN),
            "{path}"
        );
        assert_eq!(
            header(&resp, "access-control-expose-headers").as_deref(),
            Some("X-Request-Id")
        );
        assert_eq!(header(&resp, "vary").as_deref(), Some("Origin"), "{path}");
        assert_json_error(resp, status, code);
    }
    let other = c
        .get(gw.url("/dead"))
        .header("origin", "https://evil.example")
        .send()
        .unwrap();
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    assert_json_error(other, 502, "upstream_unreachable");
}

/// State is kept by the fields that define it: a reload that changes an upstream's
/// timeout keeps its targets' open breaker open (and the upstream untouched).
#[test]
fn a_timeout_change_by_reload_keeps_an_open_breaker_open() {
    let up = TestUpstream::start("svc");
    let body = |read: &str| {
        format!(
            "server: {{ threads: 1 }}\nupstreams:\n  svc:\n    targets: [\"{}\"]\n    timeouts: {{ read: {read} }}\n    retries: {{ attempts: 0 }}\n    breaker: {{ consecutive_failures: 2, open_for: 1h }}\nroutes:\n  - {{ name: svc, match: {{ path_prefix: / }}, upstream: svc }}\n",
            up.addr
        )
    };
    let gw = Gateway::start(&body("5s"));
    let c = client();
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/x?status=500")).send().unwrap().status(), 500);
    }
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");
    let before = gw.admin_config()["config_hash"].clone();
    gw.write_config(&body("7s"));
    let reloaded = wait_until(Duration::from_secs(10), || {
        gw.admin_config()["config_hash"] != before
    });
    assert!(
        reloaded.is_some(),
        "the new config was not loaded:\n{}",
        gw.log()
    );
    let seen = up.count();
    assert_json_error(c.get(gw.url("/x")).send().unwrap(), 503, "circuit_open");
    assert_eq!(up.count(), seen, "the open circuit still fails fast");
}

/// Cheap refusals come first: a flood of invalid tokens uses up the client-IP limit
/// instead of costing a signature check each.
#[test]
fn invalid_tokens_use_up_the_client_ip_limit_before_any_signature_check() {
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nauth:\n  hs: {{ algorithms: [HS256], secret_file: \"{}\" }}\nrate_limits:\n  ip: {{ requests: 2, per: 1m }}\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: svc, auth: hs, rate_limit: ip }}\n",
        up.addr,
        secret.display()
    ));
    let c = client();
    let bad = |_| c.get(gw.url("/x")).bearer_auth("not.a.jwt").send().unwrap();
    assert_json_error(bad(0), 401, "token_malformed");
    assert_json_error(bad(1), 401, "token_malformed");
    assert_json_error(bad(2), 429, "rate_limited");
    let good = c
        .get(gw.url("/x"))
        .bearer_auth(token(json!({"sub": "u1"})))
        .send()
        .unwrap();
    assert_json_error(good, 429, "rate_limited");
    assert_eq!(up.count(), 0);
}

/// `portico route` and `/routes` show the chain in the order it runs, whatever the order
/// of the keys in the file.
#[test]
fn the_policy_order_is_visible_in_route_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let body = format!(
        r#"upstreams:
  svc: {{ targets: ["127.0.0.1:9"] }}
auth:
  hs: {{ algorithms: [HS256], secret_file: "{}" }}
rate_limits:
  per_user: {{ requests: 5, per: 1s, key: "claim:sub" }}
cors:
  web: {{ allow_origins: ["{ORIGIN}"] }}
ip_access:
  office: {{ allow: [127.0.0.0/8] }}
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    upstream: svc
    headers: {{ response: {{ set: {{ x-frame-options: DENY }} }} }}
    rate_limit: per_user
    auth: hs
    ip_access: office
    cors: web
"#,
        secret.display()
    );
    let chain = "cors:web → ip_access:office → auth:hs → rate_limit:per_user → headers";
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!("version: 1\nlisten: {{ proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }}\n{body}"),
    )
    .unwrap();
    let (code, out, err) = portico(
        &["route", "-c", "gateway.yaml", "GET", "/api/x"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l == format!("  policies, in order: {chain}")),
        "{out}"
    );
    let gw = Gateway::start(&body);
    let routes = gw.admin_json("/routes");
    assert_eq!(
        routes["routes"][0]["policies"],
        json!(chain.split(" → ").collect::<Vec<_>>())
    );
}

#[test]
fn ip_access_allows_and_denies_by_the_client_ip_trusted_proxies_decide() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1, trusted_proxies: [127.0.0.1] }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nip_access:\n  office: {{ allow: [10.0.0.0/8], deny: [10.6.0.0/16] }}\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: svc, ip_access: office }}\n",
        up.addr
    ));
    let c = client();
    let from = |xff: Option<&str>| {
        let req = c.get(gw.url("/x"));
        match xff {
            Some(ip) => req.header("x-forwarded-for", ip),
            None => req,
        }
        .send()
        .unwrap()
    };
    assert_eq!(from(Some("10.1.2.3")).status(), 200);
    assert_eq!(
        up.last().headers["x-forwarded-for"],
        ["10.1.2.3, 127.0.0.1"]
    );
    assert_json_error(from(Some("10.6.0.9")), 403, "ip_forbidden");
    assert_json_error(from(Some("192.0.2.1")), 403, "ip_forbidden");
    assert_json_error(from(None), 403, "ip_forbidden");
    assert_eq!(
        from(Some("192.0.2.1, 10.1.2.3")).status(),
        200,
        "the right-most untrusted hop is the client"
    );
    assert_eq!(up.count(), 2, "refused requests never reach the upstream");
}

#[test]
fn ip_access_problems_are_refused_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nip_access:\n  office:\n    allow: [10.0.0.0/33]\nroutes:\n  - { name: a, match: { path: /a }, respond: { text: a }, ip_access: nope }\n";
    std::fs::write(dir.path().join("g.yaml"), text).unwrap();
    let (code, out, err) = portico(&["check", "g.yaml"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("g.yaml:5:13: error: `10.0.0.0/33` is not an IP network"),
        "{err}"
    );
    assert!(
        err.contains("error: unknown ip_access policy `nope`"),
        "{err}"
    );
}

/// Header edits reach the upstream and the client; a claim that would put CR/LF into a
/// header is never sent, and the client's own copy of that header is gone too.
#[test]
fn header_edits_reach_both_sides_and_never_carry_control_bytes() {
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let gw = Gateway::start(&format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{}"] }}
auth:
  hs: {{ algorithms: [HS256], secret_file: "{}" }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: svc
    auth: hs
    headers:
      request:
        set: {{ x-user: "user=${{claim.sub}}", x-client: "${{client_ip}}" }}
        add: {{ x-tag: "gw" }}
        remove: [x-debug]
      response:
        set: {{ x-frame-options: DENY, x-trace: "${{request_id}}" }}
        remove: [x-upstream]
"#,
        up.addr,
        secret.display()
    ));
    let c = client();
    let resp = c
        .get(gw.url("/x"))
        .bearer_auth(token(json!({"sub": "alice"})))
        .header("x-user", "forged")
        .header("x-debug", "1")
        .header("x-tag", "client")
        .header("x-request-id", "rid-42")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header(&resp, "x-trace").as_deref(), Some("rid-42"));
    let seen = up.last();
    assert_eq!(seen.headers["x-user"], ["user=alice"]);
    assert_eq!(seen.headers["x-client"], ["127.0.0.1"]);
    assert_eq!(seen.headers["x-tag"], ["client", "gw"]);
    assert!(!seen.headers.contains_key("x-debug"));

    let hostile = c
        .get(gw.url("/x"))
        .bearer_auth(token(json!({"sub": "alice\r\nx-admin: true"})))
        .header("x-user", "forged")
        .send()
        .unwrap();
    assert_eq!(hostile.status(), 200);
    let seen = up.last();
    assert!(!seen.headers.contains_key("x-user"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("x-admin"));

    let refused = c.get(gw.url("/x")).send().unwrap();
    assert_eq!(
        header(&refused, "x-frame-options").as_deref(),
        Some("DENY"),
        "the gateway's own answers get the response edits too"
    );
    assert_json_error(refused, 401, "token_missing");
}

/// A header made of a claim by a route's `headers` edit is an identity header: the
/// policy says so itself (no list elsewhere), and the client's own copy is removed from
/// every request, on that route (`add` would otherwise keep it beside the gateway's) and on
/// routes that do not make it (their upstream may trust it too).
#[test]
fn identity_headers_made_by_a_policy_lose_the_clients_copy_everywhere() {
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let gw = Gateway::start(&format!(
        r#"upstreams:
  svc: {{ targets: ["{}"] }}
auth:
  hs: {{ algorithms: [HS256], secret_file: "{}" }}
routes:
  - name: api
    match: {{ path_prefix: /api/ }}
    upstream: svc
    auth: hs
    headers: {{ request: {{ add: {{ x-user: "${{claim.sub}}" }}, set: {{ x-tenant: "t-${{claim.tenant}}", x-tag: fixed }} }} }}
  - {{ name: open, match: {{ path_prefix: / }}, upstream: svc }}
"#,
        up.addr,
        secret.display()
    ));
    let c = client();
    let resp = c
        .get(gw.url("/api/x"))
        .bearer_auth(token(json!({"sub": "alice"})))
        .header("x-user", "forged")
        .header("x-tenant", "forged")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.last();
    assert_eq!(seen.headers["x-user"], ["alice"]);
    assert_eq!(
        seen.headers["x-tenant"],
        ["t-"],
        "no claim: only the fixed text"
    );
    let open = c
        .get(gw.url("/open"))
        .header("x-user", "forged")
        .header("x-tenant", "forged")
        .header("x-tag", "client")
        .send()
        .unwrap();
    assert_eq!(open.status(), 200);
    let seen = up.last();
    assert!(!seen.headers.contains_key("x-user"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("x-tenant"));
    assert_eq!(
        seen.headers["x-tag"],
        ["client"],
        "a fixed value is no identity"
    );
}

/// Behind a front proxy that adds its own `X-Forwarded-For` line, the client's forged
/// line does not decide the client IP: every line counts, as one list.
#[test]
fn every_forwarded_for_line_counts_so_a_client_cannot_choose_its_ip() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1, trusted_proxies: [127.0.0.1] }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nip_access:\n  real: {{ allow: [8.8.8.8] }}\nroutes:\n  - {{ name: api, match: {{ path_prefix: / }}, upstream: svc, ip_access: real }}\n",
        up.addr
    ));
    let resp = client()
        .get(gw.url("/x"))
        .header("x-forwarded-for", "1.2.3.4")
        .header("x-forwarded-for", "8.8.8.8")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        up.last().headers["x-forwarded-for"],
        ["1.2.3.4, 8.8.8.8, 127.0.0.1"],
        "one chain upstream, the peer appended"
    );
    let forged = client()
        .get(gw.url("/x"))
        .header("x-forwarded-for", "8.8.8.8")
        .header("x-forwarded-for", "1.2.3.4")
        .send()
        .unwrap();
    assert_json_error(forged, 403, "ip_forbidden");
}

/// A header a policy reads, sent twice, is refused (the upstream would see both copies); a
/// claim that cannot be forwarded unambiguously fails the token instead of silently
/// sending the request on as authenticated.
#[test]
fn repeated_keyed_headers_and_unforwardable_claims_are_refused() {
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nauth:\n  hs: {{ algorithms: [HS256], secret_file: \"{}\", forward_claims: {{ sub: X-User, roles: X-Roles }} }}\nrate_limits:\n  keyed: {{ requests: 100, per: 1m, key: \"header:x-api-key\" }}\nroutes:\n  - {{ name: keyed, match: {{ path_prefix: /keyed }}, upstream: svc, rate_limit: keyed }}\n  - {{ name: authed, match: {{ path_prefix: /authed }}, upstream: svc, auth: hs }}\n",
        up.addr,
        secret.display()
    ));
    let c = client();
    let twice = c
        .get(gw.url("/keyed"))
        .header("x-api-key", "free-tier")
        .header("x-api-key", "premium")
        .send()
        .unwrap();
    assert_json_error(twice, 400, "ambiguous_header");
    let two_tokens = c
        .get(gw.url("/authed"))
        .header(
            "authorization",
            format!("Bearer {}", token(json!({"sub": "a"}))),
        )
        .header("authorization", "Bearer other")
        .send()
        .unwrap();
    assert_json_error(two_tokens, 400, "ambiguous_header");
    for claims in [
        json!({"sub": "a\r\nx-admin: 1"}),
        json!({"sub": "a", "roles": ["guest,admin"]}),
    ] {
        let resp = c
            .get(gw.url("/authed"))
            .bearer_auth(token(claims))
            .send()
            .unwrap();
        assert_json_error(resp, 401, "token_bad_claim");
    }
    assert_eq!(up.count(), 0, "nothing ambiguous reaches the upstream");
    let ok = c
        .get(gw.url("/authed"))
        .bearer_auth(token(json!({"sub": "a", "roles": ["x", "y"], "org": null})))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(up.last().headers["x-roles"], ["x,y"]);
}
