//! Route matching, path normalization and path rewriting through the real gateway.

mod common;
use common::*;

fn text(resp: reqwest::blocking::Response) -> String {
    resp.text().unwrap()
}

const MATCHERS: &str = r#"
server: { threads: 1 }
routes:
  - name: exact
    match: { path: /exact }
    respond: { text: exact }
  - name: regex
    match: { path_regex: "/items/[0-9]+" }
    respond: { text: regex }
  - name: host-exact
    match: { path_prefix: /h/, host: api.example.com }
    respond: { text: host-exact }
  - name: host-wild
    match: { path_prefix: /h/, host: "*.example.com" }
    respond: { text: host-wild }
  - name: cookie
    match: { path_prefix: /hdr/, cookies: { beta: always } }
    respond: { text: cookie }
  - name: header-equals
    match: { path_prefix: /hdr/, headers: { X-Env: staging } }
    respond: { text: header-equals }
  - name: header-present
    match: { path_prefix: /hdr/, headers: { X-Debug: { present: true } } }
    respond: { text: header-present }
  - name: header-absent
    match: { path_prefix: /hdr/, headers: { X-Block: { present: false } } }
    respond: { text: header-absent }
  - name: write
    match: { path_prefix: /m/, methods: [POST, PUT] }
    respond: { text: write, status: 201, headers: { X-Route: write } }
  - name: read
    match: { path_prefix: /m/, methods: [GET] }
    respond: { text: read }
  - name: prefix
    match: { path_prefix: /items/ }
    respond: { json: { route: prefix } }
"#;

#[test]
fn every_matcher_selects_the_first_matching_route() {
    let gw = Gateway::start(MATCHERS);
    let c = client();
    assert_eq!(text(c.get(gw.url("/exact")).send().unwrap()), "exact");
    let with_cookie = |value: &str| {
        let r = c
            .get(gw.url("/hdr/x"))
            .header("cookie", value)
            .send()
            .unwrap();
        text(r)
    };
    assert_eq!(with_cookie("a=1; beta=always"), "cookie");
    assert_ne!(with_cookie("beta=never"), "cookie");
    assert_ne!(with_cookie("xbeta=always"), "cookie");
    assert_json_error(
        c.get(gw.url("/exact/more")).send().unwrap(),
        404,
        "route_not_found",
    );
    assert_eq!(text(c.get(gw.url("/items/42")).send().unwrap()), "regex");
    let prefix: serde_json::Value = c.get(gw.url("/items/abc")).send().unwrap().json().unwrap();
    assert_eq!(prefix["route"], "prefix");
    assert_eq!(
        text(
            c.get(gw.url("/h/x"))
                .header("host", "API.example.com:8080")
                .send()
                .unwrap()
        ),
        "host-exact"
    );
    assert_eq!(
        text(
            c.get(gw.url("/h/x"))
                .header("host", "eu.api.example.com")
                .send()
                .unwrap()
        ),
        "host-wild"
    );
    assert_json_error(
        c.get(gw.url("/h/x"))
            .header("host", "example.com")
            .send()
            .unwrap(),
        404,
        "route_not_found",
    );
    assert_eq!(
        text(
            c.get(gw.url("/hdr/"))
                .header("x-env", "staging")
                .header("x-block", "1")
                .send()
                .unwrap()
        ),
        "header-equals"
    );
    assert_eq!(
        text(
            c.get(gw.url("/hdr/"))
                .header("x-env", "prod")
                .header("x-debug", "")
                .header("x-block", "1")
                .send()
                .unwrap()
        ),
        "header-present"
    );
    assert_eq!(
        text(
            c.get(gw.url("/hdr/"))
                .header("x-env", "prod")
                .send()
                .unwrap()
        ),
        "header-absent"
    );
    assert_json_error(
        c.get(gw.url("/hdr/"))
            .header("x-block", "1")
            .send()
            .unwrap(),
        404,
        "route_not_found",
    );
    let write = c.put(gw.url("/m/1")).send().unwrap();
    assert_eq!(write.status(), 201);
    assert_eq!(write.headers()["x-route"], "write");
    assert_eq!(text(write), "write");
    assert_eq!(text(c.get(gw.url("/m/1")).send().unwrap()), "read");
    assert_eq!(c.head(gw.url("/m/1")).send().unwrap().status(), 200);
    let resp = c.delete(gw.url("/m/1")).send().unwrap();
    assert_eq!(resp.headers()["allow"], "POST, PUT, GET, HEAD");
    assert_json_error(resp, 405, "method_not_allowed");
}

const NORMALIZE: &str = r#"
server: { threads: 1 }
routes:
  - name: admin
    match: { path: /admin }
    respond: { text: admin }
  - name: public
    match: { path_prefix: /public/ }
    respond: { text: public }
  - name: fallback
    match: { path_prefix: / }
    respond: { text: fallback }
"#;

fn raw_get(gw: &Gateway, path: &str) -> RawResponse {
    raw_request(
        gw.proxy,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    )
    .unwrap()
}

#[test]
fn equivalent_paths_match_exactly_what_the_canonical_path_matches() {
    let gw = Gateway::start(NORMALIZE);
    for path in [
        "/admin",
        "//admin",
        "/public/../admin",
        "/%61dmin",
        "/%2e%2e/admin",
        "/public/./../admin",
        "/./admin",
        "///public/..//admin",
    ] {
        let resp = raw_get(&gw, path);
        assert_eq!((resp.status, resp.body.as_str()), (200, "admin"), "{path}");
    }
    assert_eq!(raw_get(&gw, "/public/x").body, "public");
    assert_eq!(
        raw_get(&gw, "/public/%2e%2e").body,
        "fallback",
        "`/public/..` is `/`"
    );
    assert_eq!(raw_get(&gw, "/admin/").body, "fallback");
}

#[test]
fn unsafe_paths_get_400_json() {
    let gw = Gateway::start(NORMALIZE);
    for path in [
        "/admin%2Fx",
        "/public%2f..%2fadmin",
        "/a%00",
        "/a%5Cb",
        "/bad%zz",
    ] {
        let resp = raw_get(&gw, path);
        assert_eq!(resp.status, 400, "{path}: {}", resp.head);
        let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(body["error"]["code"], "bad_path", "{path}");
        assert!(body["error"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()));
    }
}

#[test]
fn strip_prefix_and_rewrite_change_only_the_upstream_path() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        r#"
server: {{ threads: 1 }}
upstreams:
  svc: {{ targets: ["{}"] }}
routes:
  - name: strip
    match: {{ path_prefix: /api/users/ }}
    strip_prefix: /api
    upstream: svc
  - name: rewrite
    match: {{ path_prefix: /v1/ }}
    rewrite: /internal/v2/
    upstream: svc
  - name: groups
    match: {{ path_regex: "/old/([0-9]+)/(?<kind>[a-z]+)(/.*)?" }}
    rewrite: "/items/{{1}}/{{kind}}{{3}}"
    upstream: svc
  - name: plain
    match: {{ path_prefix: / }}
    upstream: svc
"#,
        up.addr
    ));
    let c = client();
    c.get(gw.url("/api/users/7?fields=name&x=%2F"))
        .send()
        .unwrap();
    assert_eq!(up.last().uri, "/users/7?fields=name&x=%2F");
    c.get(gw.url("/v1/orders/9")).send().unwrap();
    assert_eq!(up.last().uri, "/internal/v2/orders/9");
    // A regex's groups, by number and name; one that took no part is empty.
    c.get(gw.url("/old/42/book/a/b?q=1")).send().unwrap();
    assert_eq!(up.last().uri, "/items/42/book/a/b?q=1");
    c.get(gw.url("/old/42/book")).send().unwrap();
    assert_eq!(up.last().uri, "/items/42/book");
    let raw = raw_request(
        gw.proxy,
        "GET /a//b/../c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(raw.status, 200);
    assert_eq!(
        up.last().uri,
        "/a/c",
        "the upstream sees the normalized path"
    );
}

/// Paths other servers read differently never reach an upstream: `..;` and `.;` segments,
/// segments ending in `.` or a space, and `;` parameters unless the route accepts them.
/// `ignore_case` routes match any letter case.
#[test]
fn path_parameters_trailing_dots_and_case() {
    let up = TestUpstream::start("svc");
    let gw = Gateway::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  svc: {{ targets: [\"{}\"] }}\nroutes:\n  - {{ name: admin, match: {{ path_prefix: /admin, ignore_case: true }}, respond: {{ status: 403, text: no }} }}\n  - {{ name: matrix, match: {{ path_prefix: /matrix/ }}, upstream: svc, allow_path_params: true }}\n  - {{ name: public, match: {{ path_prefix: / }}, upstream: svc }}\n",
        up.addr
    ));
    let get = |path: &str| {
        raw_request(
            gw.proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .unwrap()
    };
    for path in [
        "/public/..;/admin",
        "/public/.;x/admin",
        "/admin.",
        "/x/admin%20",
        "/public;x",
        "/admin;jsessionid=1",
    ] {
        let resp = get(path);
        assert_eq!(resp.status, 400, "{path}: {}", resp.head);
        assert!(resp.body.contains("\"bad_path\""), "{path}: {}", resp.body);
    }
    for path in ["/ADMIN/users", "/Admin", "/admin/x"] {
        assert_eq!(
            get(path).status,
            403,
            "{path} takes the case-insensitive admin route"
        );
    }
    assert_eq!(up.count(), 0, "nothing above reached the upstream");
    assert_eq!(get("/matrix/a;v=1").status, 200);
    assert_eq!(up.last().uri, "/matrix/a;v=1");
}
