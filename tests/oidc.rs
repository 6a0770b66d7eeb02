//! OIDC login against a real OpenID Certified provider: `oidc-provider` from npm
//! (tests/browser/provider.mjs), driven by an HTTP client that follows the redirects and fills
//! in the provider's login and consent forms as a browser would; and once by a real headless
//! Chromium (tests/browser/browser_login.mjs, playwright-core).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CLIENT_ID: &str = "portico-web";
const CLIENT_SECRET: &str = "a-client-secret-only-the-tests-know";
const SESSION_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The provider, a node process; it exits when its stdin closes (dropped with the test).
struct Idp {
    child: Child,
    port: u16,
}

impl Idp {
    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser's part that matters here: it follows redirects itself, keeps cookies (one
/// jar: the provider and the gateway share the host 127.0.0.1, as they would in a
/// browser), and submits forms.
struct Browser {
    client: reqwest::blocking::Client,
    cookies: BTreeMap<String, String>,
}

struct Page {
    status: u16,
    url: String,
    location: Option<String>,
    set_cookies: Vec<String>,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            client: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
        }
    }

    fn request(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut req = self.client.request(method.parse().unwrap(), url);
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
        {
            req = req.header("Accept", "text/html,application/xhtml+xml");
        }
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("Cookie", jar.join("; "));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(form) = form {
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form.to_string());
        }
        let resp = req.send().unwrap();
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &set_cookies {
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.to_ascii_lowercase().contains("max-age=0") || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.to_string());
            }
        }
        let location = resp
            .headers()
            .get("location")
            .map(|l| resolve(url, l.to_str().unwrap()));
        Page {
            status: resp.status().as_u16(),
            url: url.to_string(),
            location,
            set_cookies,
            headers: resp.headers().clone(),
            body: resp.text().unwrap_or_default(),
        }
    }

    /// GETs `url` and follows redirects until an answer that is not one; every page seen.
    fn visit(&mut self, url: &str) -> Vec<Page> {
        let mut pages = vec![self.request("GET", url, None, &[])];
        while let Some(next) = pages.last().unwrap().location.clone() {
            assert!(pages.len() < 20, "a redirect loop");
            pages.push(self.request("GET", &next, None, &[]));
        }
        pages
    }

    /// Submits the page's form with `fields`, then follows the redirects.
    fn submit(&mut self, page: &Page, fields: &str) -> Vec<Page> {
        let action = page
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("a form on {}: {}", page.url, page.body));
        let target = resolve(&page.url, action);
        let mut pages = vec![self.request("POST", &target, Some(fields), &[])];
        while let Some(next) = pages.last().unwrap().location.clone() {
            assert!(pages.len() < 20, "a redirect loop");
            pages.push(self.request("GET", &next, None, &[]));
        }
        pages
    }

    /// Logs in as `user` from `start`: the provider's login form, then its consent form.
    /// Returns every page from the consent on (the last is where the login lands).
    fn login(&mut self, start: &str, user: &str) -> Vec<Page> {
        let pages = self.visit(start);
        let login = pages.last().unwrap();
        assert!(
            login.body.contains("name=\"login\""),
            "the provider's login form: {}",
            login.body
        );
        let pages = self.submit(
            login,
            &format!("prompt=login&login={user}&password=anything"),
        );
        let consent = pages.last().unwrap();
        assert!(
            consent.body.contains("value=\"consent\""),
            "the consent form: {}",
            consent.body
        );
        self.submit(consent, "prompt=consent")
    }
}

fn resolve(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let origin: String = base.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    format!("{origin}{location}")
}

/// The gateway, with its proxy port fixed first so the provider knows the callback.
fn gateway_for(up: &TestUpstream, issuer_port: u16, refresh_before: &str) -> Gateway {
    let body = format!(
        r#"server: {{ threads: 1 }}
upstreams:
  app: {{ targets: ["{up}"] }}
auth:
  web:
    type: oidc
    issuer: http://127.0.0.1:{issuer_port}
    client_id_env: OIDC_ID
    client_secret_env: OIDC_SECRET
    scopes: [openid, profile, email]
    session: {{ cookie: portico_session, key_env: SESSION_KEY, ttl: 8h, refresh_before: {refresh_before} }}
    logout_path: /oauth2/logout
    forward: {{ email: X-User-Email, sub: X-User-Id }}
routes:
  - {{ name: admin, match: {{ path_prefix: /admin/ }}, upstream: app, auth: web, require: {{ claims: {{ groups: [admins] }} }} }}
  - {{ name: app, match: {{ path_prefix: / }}, upstream: app, auth: web, require: {{ claims: {{ groups: [staff] }} }} }}
"#,
        up = up.addr
    );
    let envs = [
        ("OIDC_ID", CLIENT_ID),
        ("OIDC_SECRET", CLIENT_SECRET),
        ("SESSION_KEY", SESSION_KEY),
    ];
    Gateway::start_env(&["run"], &envs, &body, |dir, text| {
        let config = dir.join("gateway.yaml");
        std::fs::write(&config, text).unwrap();
        config
    })
}

/// A gateway and its provider (the provider is started second: it must know the
/// gateway's callback address, and the gateway finds the provider only when first asked).
fn setup(id_token_ttl: u64, refresh_before: &str) -> (TestUpstream, Gateway, Idp) {
    let up = TestUpstream::start("app");
    let idp_port = free_port();
    let gw = gateway_for(&up, idp_port, refresh_before);
    let idp = Idp::start(idp_port, &gw.proxy.to_string(), id_token_ttl);
    (up, gw, idp)
}

impl Idp {
    fn start(port: u16, gateway: &str, ttl: u64) -> Idp {
        let mut child = Command::new("node")
            .current_dir(browser_dir())
            .arg("provider.mjs")
            .arg(port.to_string())
            .args([CLIENT_ID, CLIENT_SECRET])
            .arg(format!("http://{gateway}/oauth2/callback"))
            .arg(format!("http://{gateway}/"))
            .arg(ttl.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs tests/browser/provider.mjs (`make deps` installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the provider did not start");
        Idp { child, port }
    }
}

#[test]
fn a_browser_logs_in_and_its_session_carries_the_claims() {
    let (up, gw, idp) = setup(3600, "60s");
    let mut b = Browser::new();
    let start = gw.url("/reports/q3?year=2026");
    let first = b.request("GET", &start, None, &[]);
    assert_eq!(first.status, 302);
    let to_idp = first.location.clone().unwrap();
    assert!(
        to_idp.starts_with(&format!("{}/auth?", idp.issuer())),
        "{to_idp}"
    );
    for part in [
        "response_type=code",
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "scope=openid%20profile%20email",
        "client_id=portico-web",
    ] {
        assert!(to_idp.contains(part), "{part} in {to_idp}");
    }
    let flow = first
        .set_cookies
        .iter()
        .find(|c| c.starts_with("portico_session_flow="))
        .unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/oauth2/callback",
    ] {
        assert!(flow.contains(attr), "{attr} in {flow}");
    }

    b.cookies.clear();
    let pages = b.login(&start, "alice");
    let callback = pages
        .iter()
        .find(|p| p.url.contains("/oauth2/callback"))
        .expect("the provider calls back");
    assert_eq!(callback.status, 302);
    assert_eq!(
        callback.location.as_deref(),
        Some(gw.url("/reports/q3?year=2026").as_str()),
        "back where the login started"
    );
    let session = callback
        .set_cookies
        .iter()
        .find(|c| c.starts_with("portico_session="))
        .unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=28800",
    ] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    let landed = pages.last().unwrap();
    assert_eq!(landed.status, 200, "{}", landed.body);
    let seen = up.last();
    assert_eq!(seen.uri, "/reports/q3?year=2026");
    assert_eq!(seen.headers["x-user-email"], ["alice@example.test"]);
    assert_eq!(seen.headers["x-user-id"], ["alice"]);

    // The session works for API calls too; client copies of identity headers are dropped.
    let api = b.request(
        "GET",
        &gw.url("/api/me"),
        None,
        &[
            ("Accept", "application/json"),
            ("X-User-Email", "root@evil"),
        ],
    );
    assert_eq!(api.status, 200);
    assert_eq!(up.last().headers["x-user-email"], ["alice@example.test"]);
    // `require` reads the ID token's claims: alice is staff, not an admin.
    let admin = b.request("GET", &gw.url("/admin/"), None, &[]);
    assert_eq!(admin.status, 403, "{}", admin.body);
    let log = gw.log();
    assert!(
        !log.contains(&b.cookies["portico_session"]),
        "the session cookie was logged"
    );
}

#[test]
fn without_a_session_api_calls_get_401_and_forged_cookies_are_no_session() {
    let (up, gw, _idp) = setup(3600, "60s");
    let c = client();
    let api = c
        .get(gw.url("/api/me"))
        .header("Accept", "application/json")
        .send()
        .unwrap();
    assert_json_error(api, 401, "login_required");
    let xhr = c
        .get(gw.url("/page"))
        .header("Accept", "text/html")
        .header("X-Requested-With", "XMLHttpRequest")
        .send()
        .unwrap();
    assert_json_error(xhr, 401, "login_required");

    // A real session, then tampered with: one byte changed.
    let mut b = Browser::new();
    b.login(&gw.url("/"), "bob");
    let real = b.cookies["portico_session"].clone();
    let mut bytes = real.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    for forged in [tampered.as_str(), "bm90IGEgc2Vzc2lvbg", ""] {
        let resp = c
            .get(gw.url("/api/me"))
            .header("Accept", "application/json")
            .header("Cookie", format!("portico_session={forged}"))
            .send()
            .unwrap();
        assert_json_error(resp, 401, "login_required");
    }
    let before = up.count();
    let nav = c
        .get(gw.url("/page"))
        .header("Accept", "text/html")
        .header("Cookie", format!("portico_session={tampered}"))
        .send();
    drop(nav);
    assert_eq!(up.count(), before, "a forged session reached the upstream");
    let ok = c
        .get(gw.url("/api/me"))
        .header("Accept", "application/json")
        .header("Cookie", format!("portico_session={real}"))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[test]
fn state_mismatch_and_a_replayed_code_are_refused() {
    let (up, gw, _idp) = setup(3600, "60s");
    let mut b = Browser::new();
    // A callback this browser did not start (or started with another state).
    let first = b.request("GET", &gw.url("/x"), None, &[]);
    assert_eq!(first.status, 302);
    let wrong = b.request(
        "GET",
        &gw.url("/oauth2/callback?code=abc&state=not-mine"),
        None,
        &[],
    );
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("login_state_mismatch"),
        "{}",
        wrong.body
    );
    let mut stranger = Browser::new();
    let no_flow = stranger.request(
        "GET",
        &gw.url("/oauth2/callback?code=abc&state=x"),
        None,
        &[],
    );
    assert!(no_flow.body.contains("login_expired"), "{}", no_flow.body);

    // A real login; its callback (code, state and the flow cookie) replayed.
    let mut b = Browser::new();
    let pages = b.visit(&gw.url("/x"));
    let flow_cookie = b.cookies["portico_session_flow"].clone();
    let pages = b.submit(pages.last().unwrap(), "prompt=login&login=carol&password=x");
    let consent = pages.last().unwrap();
    let pages = b.submit(consent, "prompt=consent");
    let callback = pages
        .iter()
        .find(|p| p.url.contains("/oauth2/callback"))
        .unwrap();
    assert_eq!(callback.status, 302);
    let seen = up.count();
    let mut attacker = Browser::new();
    attacker
        .cookies
        .insert("portico_session_flow".into(), flow_cookie);
    let replay = attacker.request("GET", &callback.url, None, &[]);
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(replay.body.contains("login_refused"), "{}", replay.body);
    assert!(
        !attacker.cookies.contains_key("portico_session"),
        "a replayed code made a session"
    );
    assert_eq!(up.count(), seen);
}

#[test]
fn the_return_url_is_always_a_path_on_this_host() {
    let (_up, gw, _idp) = setup(3600, "60s");
    let mut b = Browser::new();
    // Whatever the request's target, the login comes back to a path of this host: an
    // encoded `//` is refused outright, a literal one is a path here.
    let encoded = b.request("GET", &gw.url("/%2F%2Fevil.example/x"), None, &[]);
    assert_eq!(encoded.status, 400);
    let pages = b.login(&gw.url("//evil.example/steal"), "dave");
    let callback = pages
        .iter()
        .find(|p| p.url.contains("/oauth2/callback"))
        .unwrap();
    let back = callback.location.clone().unwrap();
    let origin = gw.url("/");
    assert!(
        back.starts_with(&origin) && !back[origin.len()..].starts_with('/'),
        "{back}"
    );
}

#[test]
fn logout_ends_the_session_and_visits_the_providers_end_session() {
    let (_up, gw, idp) = setup(3600, "60s");
    let mut b = Browser::new();
    b.login(&gw.url("/"), "erin");
    assert!(b.cookies.contains_key("portico_session"));
    let out = b.request("GET", &gw.url("/oauth2/logout"), None, &[]);
    assert_eq!(out.status, 302);
    let to = out.location.unwrap();
    assert!(
        to.starts_with(&format!(
            "{}/session/end?client_id=portico-web&post_logout_redirect_uri=",
            idp.issuer()
        )),
        "{to}"
    );
    assert!(
        !b.cookies.contains_key("portico_session"),
        "the session cookie is cleared"
    );
    let api = b.request(
        "GET",
        &gw.url("/api/me"),
        None,
        &[("Accept", "application/json")],
    );
    assert_eq!(api.status, 401);
}

#[test]
fn a_session_near_its_tokens_expiry_is_refreshed() {
    // ID tokens live 10 minutes; the gateway refreshes 15 minutes before expiry: always.
    let (up, gw, _idp) = setup(600, "15m");
    let mut b = Browser::new();
    b.login(&gw.url("/"), "frank");
    let old = b.cookies["portico_session"].clone();
    let resp = b.request(
        "GET",
        &gw.url("/api/me"),
        None,
        &[("Accept", "application/json")],
    );
    assert_eq!(resp.status, 200);
    assert!(
        resp.set_cookies
            .iter()
            .any(|c| c.starts_with("portico_session=")),
        "{:?}",
        resp.headers
    );
    let new = b.cookies["portico_session"].clone();
    assert_ne!(old, new, "the refreshed session is a new cookie");
    assert_eq!(up.last().headers["x-user-id"], ["frank"]);
    // The refreshed session works; the refresh token was rotated, so it refreshes again.
    let again = b.request(
        "GET",
        &gw.url("/api/me"),
        None,
        &[("Accept", "application/json")],
    );
    assert_eq!(again.status, 200);
    assert!(again
        .set_cookies
        .iter()
        .any(|c| c.starts_with("portico_session=")));
}

#[test]
fn headless_chromium_logs_in_through_the_provider() {
    let (up, gw, _idp) = setup(3600, "60s");
    let out = Command::new("node")
        .current_dir(browser_dir())
        .arg("browser_login.mjs")
        .arg(gw.url("/dashboard/?tab=1"))
        .arg("grace")
        .output()
        .expect("node runs tests/browser/browser_login.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["url"], gw.url("/dashboard/?tab=1"), "{result}");
    assert_eq!(result["status"], 200, "{result}");
    assert!(
        result["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "portico_session"
                && c["httpOnly"] == true
                && c["secure"] == true),
        "{result}"
    );
    assert_eq!(up.last().headers["x-user-email"], ["grace@example.test"]);
}

#[test]
fn check_warns_when_the_callback_is_not_routed_to_the_policy_or_tls_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = r#"version: 1
listen: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }
upstreams:
  app: { targets: ["127.0.0.1:3"] }
auth:
  web:
    type: oidc
    issuer: http://127.0.0.1:4
    client_id_env: OIDC_ID
    client_secret_env: OIDC_SECRET
    session: { key_env: SESSION_KEY }
routes:
  - { name: app, match: { path_prefix: /app/ }, upstream: app, auth: web }
  - { name: rest, match: { path_prefix: / }, upstream: app }
"#;
    std::fs::write(dir.path().join("gateway.yaml"), config).unwrap();
    let envs = [
        ("OIDC_ID", CLIENT_ID),
        ("OIDC_SECRET", CLIENT_SECRET),
        ("SESSION_KEY", SESSION_KEY),
    ];
    let (code, _, err) = portico_env(&["check", "gateway.yaml"], dir.path(), &envs);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("gateway.yaml:13:70: warning"), "{err}");
    assert!(
        err.contains(
            "warning: `GET /oauth2/callback` goes to route `rest`, which does not apply auth `web`"
        ),
        "{err}"
    );
    assert!(
        err.contains("warning: route `app` logs in with OIDC, but Portico has no TLS listener"),
        "{err}"
    );
    let short = [
        ("OIDC_ID", CLIENT_ID),
        ("OIDC_SECRET", CLIENT_SECRET),
        ("SESSION_KEY", "abcd"),
    ];
    let (code, _, err) = portico_env(&["check", "gateway.yaml"], dir.path(), &short);
    assert_eq!(code, 1);
    assert!(err.contains("gateway.yaml:11:"), "{err}");
    assert!(err.contains("`SESSION_KEY` is not a 32-byte key"), "{err}");
}
