//! JWT authentication, claim authorization, identity headers and CORS through the real
//! gateway, with tokens signed in the test by test-only keys (tests/keys).

mod common;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn key_path(file: &str) -> String {
    keys().join(file).display().to_string()
}

const HS_SECRET_ENV: &str = "PORTICO_TEST_JWT_SECRET";
const HS_SECRET: &str = "an-hmac-secret-only-the-tests-know";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"sub": "user-1", "iss": "https://auth.test", "aud": "api", "exp": now() + 600,
           "role": "user", "amr": ["pwd", "mfa"], "org": {"teams": ["red", "blue"]}})
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// Signs `claims` with `alg`; `key` is a test key file (or the HMAC secret for HS*).
fn sign(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let pem = || std::fs::read(keys().join(key)).unwrap();
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(key.as_bytes())
        }
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem()).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem()).unwrap(),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key).unwrap()
}

fn config(up: &TestUpstream, jwks_file: &str, extra: &str) -> String {
    let common = "issuer: https://auth.test, audience: api, forward_claims: { sub: X-User-Id, role: X-User-Role, org.teams: X-Teams }";
    format!(
        r#"server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{up}"] }}
auth:
  hs: {{ algorithms: [HS256, HS384, HS512], secret_env: {HS_SECRET_ENV}, {common} }}
  rs: {{ algorithms: [RS256, RS384, RS512, PS256], public_key_file: "{rsa}", {common} }}
  es256: {{ algorithms: [ES256], public_key_file: "{ec256}", {common} }}
  es384: {{ algorithms: [ES384], public_key_file: "{ec384}", {common} }}
  ed: {{ algorithms: [EdDSA], public_key_file: "{ed}", {common} }}
  jwks: {{ algorithms: [RS256, ES256, EdDSA], jwks_file: "{jwks_file}", {common}, required_claims: [role] }}
  cookie: {{ algorithms: [RS256], public_key_file: "{rsa}", token: "cookie:session", {common} }}
  header: {{ algorithms: [RS256], public_key_file: "{rsa}", token: "header:x-token", {common} }}
cors:
  web: {{ allow_origins: ["https://app.example.com", "https://*.example.org"], allow_methods: [GET, POST], allow_headers: [Authorization, Content-Type], expose_headers: [X-Request-Id], allow_credentials: true, max_age: 10m }}
routes:
  - {{ name: public, match: {{ path_prefix: /public/ }}, upstream: svc }}
  - {{ name: hs, match: {{ path_prefix: /hs/ }}, upstream: svc, auth: hs }}
  - {{ name: rs, match: {{ path_prefix: /rs/ }}, upstream: svc, auth: rs }}
  - {{ name: es256, match: {{ path_prefix: /es256/ }}, upstream: svc, auth: es256 }}
  - {{ name: es384, match: {{ path_prefix: /es384/ }}, upstream: svc, auth: es384 }}
  - {{ name: ed, match: {{ path_prefix: /ed/ }}, upstream: svc, auth: ed }}
  - {{ name: jwks, match: {{ path_prefix: /jwks/ }}, upstream: svc, auth: jwks }}
  - {{ name: cookie, match: {{ path_prefix: /cookie/ }}, upstream: svc, auth: cookie }}
  - {{ name: header, match: {{ path_prefix: /header/ }}, upstream: svc, auth: header }}
  - {{ name: admin, match: {{ path_prefix: /admin/ }}, upstream: svc, auth: rs, require: {{ claims: {{ role: [admin, ops] }} }} }}
  - {{ name: mfa, match: {{ path_prefix: /mfa/ }}, upstream: svc, auth: rs, require: {{ claims: {{ amr: {{ any_of: [mfa] }}, org.teams: {{ all_of: [red, blue] }} }} }} }}
  - {{ name: web, match: {{ path_prefix: /web/, methods: [GET, POST] }}, upstream: svc, auth: rs, cors: web }}
{extra}"#,
        up = up.addr,
        rsa = key_path("rsa1.pub.pem"),
        ec256 = key_path("ec256.pub.pem"),
        ec384 = key_path("ec384.pub.pem"),
        ed = key_path("ed25519.pub.pem"),
    )
}

fn start(up: &TestUpstream) -> Gateway {
    start_cfg(&config(up, &key_path("jwks.json"), ""))
}

/// The HMAC secret is in the gateway's environment only, never the test process's.
fn start_cfg(cfg: &str) -> Gateway {
    Gateway::start_with_env(&[(HS_SECRET_ENV, HS_SECRET)], cfg)
}

fn get(gw: &Gateway, path: &str, token: &str) -> reqwest::blocking::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .unwrap()
}

/// A gateway whose `/remote/` route checks tokens against a JWKS that `idp` serves
/// (the test key set first), refreshed every `refresh`.
fn remote_jwks(up: &TestUpstream, idp: &TestUpstream, refresh: &str) -> Gateway {
    idp.serve(
        "/jwks.json",
        &std::fs::read_to_string(keys().join("jwks.json")).unwrap(),
    );
    let extra =
        "  - { name: remote, match: { path_prefix: /remote/ }, upstream: svc, auth: remote }\n";
    let cfg = config(up, &key_path("jwks.json"), extra).replace(
        "cors:\n",
        &format!("  remote: {{ algorithms: [RS256], jwks_url: \"http://{}/jwks.json\", jwks_refresh: {refresh} }}\ncors:\n", idp.addr),
    );
    start_cfg(&cfg)
}

/// Asserts a refusal: 403 for unmet claim rules, 401 for every token problem.
fn refused(resp: reqwest::blocking::Response, code: &str) {
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let status = match code {
        "insufficient_claims" => 403,
        c if c.starts_with("token_") => 401,
        other => panic!("no status known for `{other}`"),
    };
    assert_json_error(resp, status, code);
    if status == 401 {
        let www = www.expect("401 carries WWW-Authenticate");
        assert!(www.starts_with("Bearer realm=\"portico\""), "{www}");
        assert_eq!(
            www.contains("error=\"invalid_token\""),
            code != "token_missing",
            "{www}"
        );
    }
}

#[test]
fn every_algorithm_family_verifies() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let c = claims();
    let cases = [
        ("/hs/x", Algorithm::HS256, HS_SECRET, None),
        ("/hs/x", Algorithm::HS384, HS_SECRET, None),
        ("/hs/x", Algorithm::HS512, HS_SECRET, None),
        ("/rs/x", Algorithm::RS256, "rsa1.key.pem", None),
        ("/rs/x", Algorithm::RS384, "rsa1.key.pem", None),
        ("/rs/x", Algorithm::RS512, "rsa1.key.pem", None),
        ("/rs/x", Algorithm::PS256, "rsa1.key.pem", None),
        ("/es256/x", Algorithm::ES256, "ec256.key.pem", None),
        ("/es384/x", Algorithm::ES384, "ec384.key.pem", None),
        ("/ed/x", Algorithm::EdDSA, "ed25519.key.pem", None),
        ("/jwks/x", Algorithm::RS256, "rsa1.key.pem", Some("rsa1")),
        ("/jwks/x", Algorithm::ES256, "ec256.key.pem", Some("ec256")),
        (
            "/jwks/x",
            Algorithm::EdDSA,
            "ed25519.key.pem",
            Some("ed25519"),
        ),
    ];
    for (path, alg, key, kid) in cases {
        let resp = get(&gw, path, &sign(alg, key, kid, &c));
        assert_eq!(resp.status(), 200, "{alg:?} on {path}");
        let seen = up.last();
        assert_eq!(seen.headers["x-user-id"], vec!["user-1"]);
        assert_eq!(seen.headers["x-user-role"], vec!["user"]);
        assert_eq!(seen.headers["x-teams"], vec!["red,blue"]);
    }
}

#[test]
fn bad_tokens_get_401_with_the_reason() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let rs = |c: &Value| sign(Algorithm::RS256, "rsa1.key.pem", None, c);
    refused(
        client().get(gw.url("/rs/x")).send().unwrap(),
        "token_missing",
    );
    refused(get(&gw, "/rs/x", "not.a.jwt"), "token_malformed");
    for missing in ["iss", "aud", "exp"] {
        let token = rs(&with(claims(), json!({ missing: null })));
        refused(get(&gw, "/rs/x", &token), "token_missing_claim");
    }
    refused(
        get(
            &gw,
            "/rs/x",
            &rs(&with(claims(), json!({"exp": now() - 120}))),
        ),
        "token_expired",
    );
    assert_eq!(
        get(
            &gw,
            "/rs/x",
            &rs(&with(claims(), json!({"exp": now() - 5})))
        )
        .status(),
        200,
        "within the 30s leeway"
    );
    refused(
        get(
            &gw,
            "/rs/x",
            &rs(&with(claims(), json!({"nbf": now() + 300}))),
        ),
        "token_not_yet_valid",
    );
    refused(
        get(
            &gw,
            "/rs/x",
            &rs(&with(claims(), json!({"iss": "https://evil.test"}))),
        ),
        "token_wrong_issuer",
    );
    refused(
        get(&gw, "/rs/x", &rs(&with(claims(), json!({"aud": "other"})))),
        "token_wrong_audience",
    );
    refused(
        get(&gw, "/rs/x", &rs(&with(claims(), json!({"exp": null})))),
        "token_missing_claim",
    );
    refused(
        get(
            &gw,
            "/jwks/x",
            &sign(
                Algorithm::RS256,
                "rsa1.key.pem",
                Some("rsa1"),
                &with(claims(), json!({"role": null})),
            ),
        ),
        "token_missing_claim",
    );
    assert_eq!(
        get(
            &gw,
            "/rs/x",
            &rs(&with(claims(), json!({"extra": {"any": 1}})))
        )
        .status(),
        200,
        "extra claims are fine"
    );

    // Tampered: a valid token with its payload swapped for another's.
    let good = rs(&claims());
    let other = rs(&with(claims(), json!({"role": "admin"})));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    refused(get(&gw, "/rs/x", &forged), "token_bad_signature");
    // Signed by a key the policy does not know.
    refused(
        get(
            &gw,
            "/rs/x",
            &sign(Algorithm::RS256, "rsa2.key.pem", None, &claims()),
        ),
        "token_bad_signature",
    );

    // alg: none, unsigned.
    let b64 = |v: &Value| {
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.to_string(),
        )
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    refused(get(&gw, "/rs/x", &none), "token_algorithm_not_allowed");
    // HS/RS confusion: HMAC keyed with the RSA public key the gateway holds.
    let public_pem = std::fs::read_to_string(keys().join("rsa1.pub.pem")).unwrap();
    refused(
        get(
            &gw,
            "/rs/x",
            &sign(Algorithm::HS256, &public_pem, None, &claims()),
        ),
        "token_algorithm_not_allowed",
    );
    // An accepted family but an algorithm the policy did not list.
    refused(
        get(
            &gw,
            "/es256/x",
            &sign(Algorithm::ES384, "ec384.key.pem", None, &claims()),
        ),
        "token_algorithm_not_allowed",
    );
    refused(
        get(
            &gw,
            "/jwks/x",
            &sign(Algorithm::RS256, "rsa2.key.pem", Some("rsa2"), &claims()),
        ),
        "token_unknown_key",
    );
    assert_eq!(
        up.count(),
        2,
        "only the two valid tokens reached the upstream"
    );
    assert!(!gw.log().contains(&good[..40]), "tokens are never logged");
}

#[test]
fn claim_requirements_give_403() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let rs = |c: &Value| sign(Algorithm::RS256, "rsa1.key.pem", None, c);
    refused(get(&gw, "/admin/x", &rs(&claims())), "insufficient_claims");
    assert_eq!(
        get(
            &gw,
            "/admin/x",
            &rs(&with(claims(), json!({"role": "ops"})))
        )
        .status(),
        200
    );
    assert_eq!(get(&gw, "/mfa/x", &rs(&claims())).status(), 200);
    refused(
        get(&gw, "/mfa/x", &rs(&with(claims(), json!({"amr": ["pwd"]})))),
        "insufficient_claims",
    );
    refused(
        get(
            &gw,
            "/mfa/x",
            &rs(&with(claims(), json!({"org": {"teams": ["red"]}}))),
        ),
        "insufficient_claims",
    );
    refused(
        get(&gw, "/mfa/x", &rs(&with(claims(), json!({"org": null})))),
        "insufficient_claims",
    );
}

#[test]
fn tokens_from_cookies_and_headers() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let token = sign(Algorithm::RS256, "rsa1.key.pem", None, &claims());
    let c = client();
    let resp = c
        .get(gw.url("/cookie/x"))
        .header("cookie", format!("theme=dark; session={token}"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    refused(
        c.get(gw.url("/cookie/x"))
            .bearer_auth(&token)
            .send()
            .unwrap(),
        "token_missing",
    );
    assert_eq!(
        c.get(gw.url("/header/x"))
            .header("x-token", &token)
            .send()
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn client_sent_identity_headers_never_reach_the_upstream() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let c = client();
    c.get(gw.url("/public/x"))
        .header("x-user-id", "admin")
        .header("X-User-Role", "admin")
        .send()
        .unwrap();
    let seen = up.last();
    assert!(
        !seen.headers.contains_key("x-user-id") && !seen.headers.contains_key("x-user-role"),
        "{:?}",
        seen.headers
    );
    let token = sign(Algorithm::RS256, "rsa1.key.pem", None, &claims());
    c.get(gw.url("/rs/x"))
        .bearer_auth(&token)
        .header("x-user-id", "admin")
        .header("x-teams", "root")
        .send()
        .unwrap();
    let seen = up.last();
    assert_eq!(
        seen.headers["x-user-id"],
        vec!["user-1"],
        "only the token's value"
    );
    assert_eq!(seen.headers["x-teams"], vec!["red,blue"]);
}

#[test]
fn a_new_kid_in_the_jwks_file_is_picked_up_without_restart() {
    let up = TestUpstream::start("svc");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(keys().join("jwks.json"), &jwks).unwrap();
    let gw = start_cfg(&config(&up, &jwks.display().to_string(), ""));
    let rotated = sign(Algorithm::RS256, "rsa2.key.pem", Some("rsa2"), &claims());
    refused(get(&gw, "/jwks/x", &rotated), "token_unknown_key");
    std::fs::copy(keys().join("jwks-rotated.json"), &jwks).unwrap();
    let live = wait_until(Duration::from_secs(3), || {
        get(&gw, "/jwks/x", &rotated).status() == 200
    });
    assert!(
        live.is_some(),
        "the new key was not picked up:\n{}",
        gw.log()
    );
}

#[test]
fn jwks_url_is_fetched_cached_and_refreshed() {
    let up = TestUpstream::start("svc");
    let idp = TestUpstream::start("idp");
    let gw = remote_jwks(&up, &idp, "1s");
    let old = sign(Algorithm::RS256, "rsa1.key.pem", Some("rsa1"), &claims());
    let new = sign(Algorithm::RS256, "rsa2.key.pem", Some("rsa2"), &claims());
    assert_eq!(get(&gw, "/remote/x", &old).status(), 200);
    refused(get(&gw, "/remote/x", &new), "token_unknown_key");
    idp.serve(
        "/jwks.json",
        &std::fs::read_to_string(keys().join("jwks-rotated.json")).unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(4), || get(&gw, "/remote/x", &new)
            .status()
            == 200)
        .is_some()
    );
    let fetches = idp.count();
    for _ in 0..5 {
        assert_eq!(get(&gw, "/remote/x", &old).status(), 200);
    }
    assert!(
        idp.count() <= fetches + 1,
        "keys are cached, not fetched per request"
    );
}

#[test]
fn cors_preflight_and_simple_requests() {
    let up = TestUpstream::start("svc");
    let gw = start(&up);
    let c = client();
    let preflight = |origin: &str, method: &str, headers: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url("/web/items"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
            .unwrap()
    };
    let resp = preflight(
        "https://app.example.com",
        "POST",
        "authorization, content-type",
    );
    assert_eq!(resp.status(), 204, "answered before auth, without a token");
    let h = |r: &reqwest::blocking::Response, n: &str| {
        r.headers().get(n).map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(
        h(&resp, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        h(&resp, "access-control-allow-methods").as_deref(),
        Some("GET, POST")
    );
    assert_eq!(
        h(&resp, "access-control-allow-headers").as_deref(),
        Some("Authorization, Content-Type")
    );
    assert_eq!(
        h(&resp, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(h(&resp, "access-control-max-age").as_deref(), Some("600"));
    assert!(h(&resp, "vary").unwrap().contains("Origin"));
    assert_eq!(
        preflight("https://eu.example.org", "GET", "").status(),
        204,
        "wildcard origin pattern"
    );
    assert_eq!(up.count(), 0, "preflights never touch the upstream");

    let bad = preflight("https://evil.example.com", "POST", "");
    assert!(h(&bad, "access-control-allow-origin").is_none());
    assert_json_error(bad, 403, "cors_rejected");
    let no_route = preflight("https://app.example.com", "DELETE", "");
    assert!(h(&no_route, "access-control-allow-origin").is_none());
    assert_json_error(no_route, 405, "method_not_allowed");
    assert_json_error(
        preflight("https://app.example.com", "GET", "x-secret"),
        403,
        "cors_rejected",
    );

    let token = sign(Algorithm::RS256, "rsa1.key.pem", None, &claims());
    let ok = c
        .get(gw.url("/web/items"))
        .bearer_auth(&token)
        .header("origin", "https://app.example.com")
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        h(&ok, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        h(&ok, "access-control-expose-headers").as_deref(),
        Some("X-Request-Id")
    );
    assert!(h(&ok, "vary").unwrap().contains("Origin"));
    let denied = c
        .get(gw.url("/web/items"))
        .bearer_auth(&token)
        .header("origin", "https://evil.io")
        .send()
        .unwrap();
    assert_eq!(
        denied.status(),
        200,
        "the request itself is the upstream's business"
    );
    assert!(
        h(&denied, "access-control-allow-origin").is_none(),
        "a disallowed origin gets no CORS headers"
    );
    let unauth = c
        .get(gw.url("/web/items"))
        .header("origin", "https://app.example.com")
        .send()
        .unwrap();
    assert_eq!(
        h(&unauth, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com"),
        "errors are readable by the page"
    );
    assert_json_error(unauth, 401, "token_missing");
}

/// An unknown `kid` refetches the JWKS (rotation without waiting for the refresh), at
/// most once per 10 s however many unknown-kid tokens arrive.
#[test]
fn an_unknown_kid_refetches_the_jwks_at_most_every_ten_seconds() {
    let up = TestUpstream::start("svc");
    let idp = TestUpstream::start("idp");
    let gw = remote_jwks(&up, &idp, "1h");
    let old = sign(Algorithm::RS256, "rsa1.key.pem", Some("rsa1"), &claims());
    assert!(
        wait_until(Duration::from_secs(5), || get(&gw, "/remote/x", &old)
            .status()
            == 200)
        .is_some()
    );
    let fetched = idp.count();
    idp.serve(
        "/jwks.json",
        &std::fs::read_to_string(keys().join("jwks-rotated.json")).unwrap(),
    );
    let new = sign(Algorithm::RS256, "rsa2.key.pem", Some("rsa2"), &claims());
    let mut accepted = false;
    for _ in 0..20 {
        accepted |= get(&gw, "/remote/x", &new).status() == 200;
    }
    // Right after a fetch, a flood of unknown kids fetches nothing more.
    assert!(!accepted, "refetched within 10 s of the last fetch");
    assert_eq!(idp.count(), fetched, "rate-limited refetch");
    let live = wait_until(Duration::from_secs(25), || {
        get(&gw, "/remote/x", &new).status() == 200
    });
    assert!(
        live.is_some(),
        "the unknown kid never triggered a refetch:\n{}",
        gw.log()
    );
    assert_eq!(idp.count(), fetched + 1, "one refetch, not one per request");
}

/// A verified token is cached, but not past its key: once the key leaves the fetched
/// JWKS, the same token is refused.
#[test]
fn a_cached_token_is_refused_once_its_key_leaves_the_jwks() {
    let up = TestUpstream::start("svc");
    let idp = TestUpstream::start("idp");
    let gw = remote_jwks(&up, &idp, "1s");
    let token = sign(Algorithm::RS256, "rsa1.key.pem", Some("rsa1"), &claims());
    let ok = wait_until(Duration::from_secs(5), || {
        get(&gw, "/remote/x", &token).status() == 200
    });
    assert!(ok.is_some());
    for _ in 0..3 {
        assert_eq!(get(&gw, "/remote/x", &token).status(), 200);
    }
    let mut rotated: Value =
        serde_json::from_str(&std::fs::read_to_string(keys().join("jwks-rotated.json")).unwrap())
            .unwrap();
    rotated["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["kid"] != "rsa1");
    idp.serve("/jwks.json", &rotated.to_string());
    let gone = wait_until(Duration::from_secs(10), || {
        get(&gw, "/remote/x", &token).status() == 401
    });
    assert!(gone.is_some(), "a cached token outlived its key");
    refused(get(&gw, "/remote/x", &token), "token_unknown_key");
}
