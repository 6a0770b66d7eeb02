//! `portico import ingress` on real manifests (tests/data/ingress-nginx, from the
//! ingress-nginx documentation: see its SOURCE.md): every supported annotation has a case,
//! the report lists what is not translated, the result passes `check`, and the rewrites and
//! redirects the documentation promises happen on real requests through the gateway.

mod common;
use common::*;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

const STICKY_KEY: (&str, &str) = ("PORTICO_STICKY_KEY", "0123456789abcdef0123456789abcdef");

fn data(file: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/ingress-nginx");
    dir.join(file).display().to_string()
}

/// `portico import ingress FILES --out OUT ...` in `cwd`: (report on stdout, exit code).
fn import(cwd: &Path, files: &[&str], extra: &[&str]) -> (String, i32) {
    let paths: Vec<String> = files.iter().map(|f| data(f)).collect();
    let mut args = vec!["import", "ingress"];
    args.extend(paths.iter().map(String::as_str));
    args.extend(["--out", "out"]);
    args.extend(extra);
    let (code, out, err) = portico(&args, cwd);
    assert_eq!(code, 0, "{err}");
    (out, code)
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn route<'a>(file: &'a Value, name: &str) -> &'a Value {
    file["routes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no route {name}"))
}

/// A certificate and key for each Secret the base names (as the user would mount them).
fn mount_secrets(out: &Path) {
    let base = yaml(&out.join("gateway.yaml"));
    for cert in base["tls"]["certificates"].as_sequence().unwrap() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["example.com".to_string()]).unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let cert_path = out.join(cert["cert"].as_str().unwrap());
        std::fs::create_dir_all(cert_path.parent().unwrap()).unwrap();
        std::fs::write(&cert_path, pem).unwrap();
        std::fs::write(out.join(cert["key"].as_str().unwrap()), key.serialize_pem()).unwrap();
    }
}

const ALL: [&str; 9] = [
    "affinity-cookie.yaml",
    "annotations.yaml",
    "canary.yaml",
    "configuration-snippet.yaml",
    "docker-registry-tls.yaml",
    "external-auth.yaml",
    "multi-tls.yaml",
    "rewrite.yaml",
    "tls-termination.yaml",
];

#[test]
fn the_fetched_manifests_import_with_a_report_and_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let (report, _) = import(dir.path(), &ALL, &["--port-map", "shop/orders:http=8080"]);
    let out = dir.path().join("out");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".md"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        files,
        [
            "REPORT.md",
            "gateway.yaml",
            "ns-default.yaml",
            "ns-shop.yaml",
            "zz-default-backends.yaml"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("REPORT.md")).unwrap(),
        report
    );
    for line in [
        "27 object(s) read, 23 translated into 5 file(s).",
        "## never executed (2)",
        "- `default/nginx-configuration-snippet` nginx.ingress.kubernetes.io/configuration-snippet: raw nginx configuration: Portico never runs it",
        "- `shop/api` nginx.ingress.kubernetes.io/server-snippet: raw nginx configuration",
        "- `default/external-auth` nginx.ingress.kubernetes.io/auth-url: the auth service gets Authorization and Cookie",
        "- `shop/admin` nginx.ingress.kubernetes.io/auth-secret: the users go in `shop.admin-basic-auth.htpasswd` beside gateway.yaml (empty until filled: every request is refused): kubectl -n shop get secret admin-basic-auth -o json, then its `auth` key",
        "- `docker-registry/docker-registry` spec.rules.host: host `registry.<your domain>` is not a host name",
        "- `docker-registry/docker-registry` nginx.ingress.kubernetes.io/proxy-body-size: `0` (no limit)",
        "- `shop/legacy` backend.service.port: Service `checkout` port `web` is named: give its number with `--port-map shop/checkout:web=NUMBER`",
        "- `shop/legacy` nginx.ingress.kubernetes.io/proxy-buffering: no Portico equivalent is translated; review it by hand",
        "- `default/nginx-test` nginx.ingress.kubernetes.io/affinity: per-pod session affinity",
        "- `shop/checkout-canary` nginx.ingress.kubernetes.io/affinity: the split keeps each client on its backend with a signed cookie: set PORTICO_STICKY_KEY",
        "- `shop/partners` nginx.ingress.kubernetes.io/backend-protocol: Portico verifies the backend's certificate",
        "- `default/foobar` Secret: mount the TLS Secret at tls/default/foobar/ beside gateway.yaml (tls.crt, tls.key)",
        "- `*` listen.redirect_https: on for every host of the plain listener (Portico's is global, ingress-nginx's per host); `/.well-known/acme-challenge/` requests are redirected too; hosts without a TLS section are redirected as well: admin.shop.example, api.shop.example,",
    ] {
        assert!(report.contains(line), "`{line}` in:\n{report}");
    }
    mount_secrets(&out);
    let (code, _, err) = portico_env(&["check", "out"], dir.path(), &[STICKY_KEY]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn every_supported_annotation_has_a_case() {
    let dir = tempfile::tempdir().unwrap();
    import(
        dir.path(),
        &[
            "annotations.yaml",
            "rewrite.yaml",
            "canary.yaml",
            "tls-termination.yaml",
        ],
        &[
            "--port-map",
            "shop/orders:http=8080",
            "--cluster-domain",
            "k8s.example",
        ],
    );
    let out = dir.path().join("out");
    let shop = yaml(&out.join("ns-shop.yaml"));
    let default = yaml(&out.join("ns-default.yaml"));
    let base = yaml(&out.join("gateway.yaml"));
    let up = |name: &str| shop["upstreams"][name].clone();
    // Services, named ports, timeouts, backend-protocol.
    assert_eq!(
        up("shop-orders-8080")["targets"][0],
        "orders.shop.svc.k8s.example:8080"
    );
    let timeouts = &up("shop-orders-8080")["timeouts"];
    assert_eq!(
        (&timeouts["connect"], &timeouts["read"], &timeouts["write"]),
        (&"5s".into(), &"120s".into(), &"60s".into())
    );
    assert!(up("shop-partners-443")["tls"].is_mapping());
    // Where an Ingress says nothing, ingress-nginx's defaults are kept, not Portico's.
    let plain = &up("shop-inventory-50051")["timeouts"];
    assert_eq!(
        (&plain["connect"], &plain["read"], &plain["write"]),
        (&"5s".into(), &"60s".into(), &"60s".into())
    );
    assert_eq!(route(&shop, "shop-grpc-r0p0")["max_body"], "1MiB");
    assert_eq!(up("shop-inventory-50051")["protocol"], "h2");
    assert!(up("shop-inventory-50051")["tls"].is_null());
    assert_eq!(up("shop-inventory-50052")["protocol"], "h2");
    assert!(up("shop-inventory-50052")["tls"].is_mapping());
    // CORS, limits, source ranges, body size, upstream-vhost; Prefix is exact + under.
    let api = route(&shop, "shop-api-r0p0");
    assert_eq!(api["match"]["path_prefix"], "/orders/");
    assert_eq!(
        route(&shop, "shop-api-r0p0-exact")["match"]["path"],
        "/orders"
    );
    assert_eq!(
        route(&shop, "shop-api-r0p1")["match"]["path"],
        "/orders/export"
    );
    assert_eq!(api["max_body"], "8MiB");
    assert_eq!(api["headers"]["request"]["set"]["Host"], "api.internal");
    let cors = &shop["cors"][api["cors"].as_str().unwrap()];
    assert_eq!(cors["allow_origins"][1], "https://admin.example.com");
    assert_eq!(
        cors["allow_methods"],
        serde_yaml::from_str::<Value>("[GET, POST]").unwrap()
    );
    assert_eq!(cors["allow_headers"][1], "Authorization");
    assert_eq!(cors["expose_headers"][0], "X-Request-Id");
    assert_eq!(
        (&cors["allow_credentials"], &cors["max_age"]),
        (&true.into(), &"600s".into())
    );
    let limit = &shop["rate_limits"][api["rate_limit"].as_str().unwrap()];
    assert_eq!(
        (&limit["requests"], &limit["per"], &limit["burst"]),
        (&20.into(), &"1s".into(), &100.into())
    );
    let ip = &shop["ip_access"][api["ip_access"].as_str().unwrap()];
    assert_eq!(
        ip["allow"],
        serde_yaml::from_str::<Value>("[10.0.0.0/8, 127.0.0.1]").unwrap()
    );
    // The admin Ingress's basic auth: its users go in a file beside the config, which
    // refuses every request until it is filled from the Secret.
    let admin = route(&shop, "shop-admin-r0p0");
    let auth = &shop["auth"][admin["auth"].as_str().unwrap()];
    assert_eq!(
        (&auth["type"], &auth["htpasswd_file"], &auth["realm"]),
        (
            &"basic".into(),
            &"shop.admin-basic-auth.htpasswd".into(),
            &"Authentication Required".into()
        )
    );
    assert!(admin["respond"].is_null());
    assert!(out.join("shop.admin-basic-auth.htpasswd").is_file());
    let partners = route(&shop, "shop-partners-r0p0");
    let limit = &shop["rate_limits"][partners["rate_limit"].as_str().unwrap()];
    assert_eq!(
        (&limit["requests"], &limit["per"], &limit["burst"]),
        (&600.into(), &"1m".into(), &1200.into())
    );
    let ip = &shop["ip_access"][partners["ip_access"].as_str().unwrap()];
    assert_eq!(ip["deny"][0], "192.0.2.0/24");
    assert_eq!(ip["allow"][0], "203.0.113.0/24");
    // Canary by weight (with the cookie), by header, by header value.
    let checkout = route(&shop, "shop-checkout-r0p0");
    assert_eq!(checkout["backends"][0]["weight"], 990);
    assert_eq!(checkout["backends"][1]["weight"], 10);
    assert_eq!(checkout["sticky"]["ttl"], "3600s");
    assert_eq!(checkout["backends"][1]["upstream"], "shop-checkout-v2-80");
    assert_eq!(checkout["sticky"]["cookie"], "shop-backend");
    assert_eq!(
        route(&shop, "shop-checkout-r0p1-header-canary")["match"]["headers"]["X-Beta"],
        "always"
    );
    assert_eq!(
        route(&shop, "shop-checkout-r0p1-header-main")["match"]["headers"]["X-Beta"],
        "never"
    );
    let by_cookie = route(&shop, "shop-checkout-r0p1-cookie-canary");
    assert_eq!(by_cookie["match"]["cookies"]["beta"], "always");
    assert_eq!(by_cookie["upstream"], "shop-checkout-v2-80");
    let names: Vec<&str> = shop["routes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at("shop-checkout-r0p1-header-canary") < at("shop-checkout-r0p1-cookie-canary"));
    assert!(at("shop-checkout-r0p1-cookie-main") < at("shop-checkout-r0p1"));
    assert_eq!(
        route(&shop, "shop-region-r0p0-header-canary")["match"]["headers"]["X-Region"],
        "eu"
    );
    // Redirects.
    let moved = &route(&shop, "shop-moved-r0p0")["redirect"];
    assert_eq!(
        (&moved["status"], &moved["host"], &moved["path"]),
        (&308.into(), &"www.shop.example".into(), &"/new-home".into())
    );
    assert_eq!(
        route(&shop, "shop-maintenance-r0p0")["redirect"]["status"],
        302
    );
    assert_eq!(
        route(&default, "default-approot-r0p0-app-root")["redirect"]["path"],
        "/app1"
    );
    // A rewrite-target makes the path an anchored, case-insensitive regex whose groups
    // build the whole path sent upstream, as nginx's `rewrite` does.
    let rewrite = route(&default, "default-rewrite-r0p0");
    assert_eq!(
        rewrite["match"]["path_regex"],
        "(?i)(?:/something(/|$)(.*)).*"
    );
    assert_eq!(rewrite["rewrite"], "/{2}");
    let legacy = route(&shop, "shop-legacy-r0p0");
    assert_eq!(legacy["match"]["path_regex"], "(?i)(?:/old/([0-9]+)).*");
    assert_eq!(legacy["rewrite"], "/items/{1}");
    // The default backend sorts after every namespace; TLS and the redirect in the base.
    let defaults = yaml(&out.join("zz-default-backends.yaml"));
    // The legacy Ingress has rules for one host: its default backend is that host's.
    let fallback = route(&defaults, "shop-legacy-default0");
    assert_eq!(fallback["match"]["path_prefix"], "/");
    assert_eq!(fallback["match"]["host"], "legacy.shop.example");
    assert_eq!(defaults["routes"].as_sequence().unwrap().len(), 1);
    assert_eq!(base["listen"]["redirect_https"], true);
    assert_eq!(
        base["tls"]["certificates"][0]["cert"],
        "tls/default/tls-secret/tls.crt"
    );
}

/// The imported files, with each Service's address replaced by a loopback upstream's and
/// the base replaced by one with the test's listeners.
fn serve_import(files: &[&str], services: &[(&str, &TestUpstream)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    import(dir.path(), files, &[]);
    let out = dir.path().join("out");
    let mut texts = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "gateway.yaml" {
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (service, upstream) in services {
                text = text.replace(service, &upstream.addr.to_string());
            }
            texts.push((name, text));
        }
    }
    Gateway::start_with(&["run"], "", move |gw_dir, base| {
        let conf = gw_dir.join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("gateway.yaml"), base).unwrap();
        for (name, text) in &texts {
            std::fs::write(conf.join(name), text).unwrap();
        }
        PathBuf::from("conf")
    })
}

#[test]
fn the_documented_rewrites_redirects_and_canary_happen_on_real_requests() {
    let svc = TestUpstream::start("http-svc");
    let production = TestUpstream::start("production");
    let canary = TestUpstream::start("canary");
    let gw = serve_import(
        &["rewrite.yaml", "canary.yaml"],
        &[
            ("http-svc.default.svc.cluster.local:80", &svc),
            ("production.default.svc.cluster.local:80", &production),
            ("canary.default.svc.cluster.local:80", &canary),
        ],
    );
    // Redirects are the answers under test, not to be followed.
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |host: &str, path: &str| c.get(gw.url(path)).header("host", host).send().unwrap();
    // docs/examples/rewrite: "rewrite.bar.com/something rewrites to rewrite.bar.com/", and so on.
    for (path, upstream_path) in [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
    ] {
        let r = get("rewrite.bar.com", path);
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["x-upstream"], "http-svc");
        let seen = svc.seen.lock().unwrap().last().unwrap().uri.clone();
        assert_eq!(seen, upstream_path, "{path}");
    }
    // "curl -I -k http://approot.bar.com/ → 302, Location: http://approot.bar.com/app1"
    let r = get("approot.bar.com", "/");
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "http://approot.bar.com/app1");
    let r = get("approot.bar.com", "/app1/x");
    assert_eq!(r.headers()["x-upstream"], "http-svc");
    // docs/examples/canary: canary-weight 50 splits the host's requests evenly.
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let r = get("echo.prod.mydomain.com", "/");
        assert_eq!(r.status(), 200);
        *counts
            .entry(r.headers()["x-upstream"].to_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        [("canary".to_string(), 2), ("production".to_string(), 2)].into()
    );
}

#[test]
fn an_ingress_nginx_access_log_replays_through_the_import() {
    let dir = tempfile::tempdir().unwrap();
    import(dir.path(), &["rewrite.yaml", "canary.yaml"], &[]);
    // ingress-nginx's default log-format-upstream, then two lines of nginx's `combined`.
    let log = r#"192.168.1.10 - - [03/Dec/2026:10:00:00 +0000] "GET /something/new HTTP/1.1" 200 612 "-" "curl/8.5.0" 89 0.004 [default-http-svc-80] [] 10.244.0.12:8080 612 0.004 200 5f0c0e7a3e4d9b1c
192.168.1.10 - - [03/Dec/2026:10:00:01 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.5.0" 75 0.002 [default-production-80] [default-canary-80] 10.244.0.13:80 612 0.002 200 6a1d1f8b4e5e0c2d
192.168.1.10 - - [03/Dec/2026:10:00:02 +0000] "GET /?v=2 HTTP/1.1" 200 612 "-" "curl/8.5.0" 75 0.002 [default-canary-80] [] 10.244.0.14:80 612 0.002 200 7b2e2a9c5f6f1d3e
192.168.1.10 - - [03/Dec/2026:10:00:03 +0000] "GET /nothing-here HTTP/1.1" 404 146 "-" "curl/8.5.0" 82 0.000 [upstream-default-backend] [] - - - - 8c3f3b0d6a7a2e4f
192.168.1.10 - - [03/Dec/2026:10:00:04 +0000] "POST /orders HTTP/1.1" 201 20 "-" "curl/8.5.0" 120 0.010 [default-orders-8080] [] 10.244.0.15:8080 20 0.010 201 9d4a4c1e7b8b3f5a
192.168.1.10 - - [03/Dec/2026:10:00:05 +0000] "GET /something/new HTTP/1.1" 200 612 "-" "curl/8.5.0" 89 0.004 [default-http-svc-80] [] 10.244.0.12:8080 612 0.004 200 ae5b5d2f8c9c4a6b
10.0.0.7 - - [03/Dec/2026:10:00:06 +0000] "GET /unrouted HTTP/1.1" 200 5 "-" "Mozilla/5.0"
10.0.0.7 - - [03/Dec/2026:10:00:07 +0000] "GET /something HTTP/1.1" 200 5 "-" "Mozilla/5.0"
"#;
    std::fs::write(dir.path().join("access.log"), log).unwrap();
    let (code, out, err) = portico(&["diff", "out", "--requests", "access.log"], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        out,
        "1 of 7 recorded request(s) would be handled differently\n  POST /orders: upstream\n    upstream: default-orders-8080 → (none)\n"
    );
}

/// `portico import ingress` of `text` into `dir/out`: the report.
fn import_text(dir: &Path, text: &str) -> String {
    std::fs::write(dir.join("in.yaml"), text).unwrap();
    let (code, report, err) = portico(&["import", "ingress", "in.yaml", "--out", "out"], dir);
    assert_eq!(code, 0, "{err}");
    report
}

/// `portico route` of `GET path` with `Host: host` on `dir/out`.
fn explain(dir: &Path, host: &str, path: &str) -> String {
    let host = format!("Host: {host}");
    let (code, out, err) = portico(&["route", "-c", "out", "GET", path, "-H", &host], dir);
    assert_eq!(code, 0, "{err}");
    out
}

/// What an adversarial review found: each case imports safely.
#[test]
fn auth_classes_names_and_redirect_variables_import_safely() {
    let dir = tempfile::tempdir().unwrap();
    let ingresses = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: site, namespace: web }
spec:
  ingressClassName: nginx
  rules:
  - host: app.example.com
    http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: frontend, port: { number: 80 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: admin
  namespace: web
  annotations: { nginx.ingress.kubernetes.io/auth-tls-verify-client: "on" }
spec:
  ingressClassName: nginx
  rules:
  - host: app.example.com
    http: { paths: [{ path: /admin, pathType: Prefix, backend: { service: { name: frontend, port: { number: 80 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: both
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/auth-url: "http://authz.web.svc:9000/verify"
    nginx.ingress.kubernetes.io/auth-type: basic
    nginx.ingress.kubernetes.io/auth-secret: users
spec:
  ingressClassName: nginx
  rules:
  - host: app.example.com
    http: { paths: [{ path: /both, pathType: Prefix, backend: { service: { name: frontend, port: { number: 80 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: grafana, namespace: monitoring }
spec:
  ingressClassName: nginx-internal
  rules:
  - http: { paths: [{ path: /grafana, pathType: Prefix, backend: { service: { name: grafana, port: { number: 3000 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: admin.api
  namespace: shop
  annotations: { nginx.ingress.kubernetes.io/whitelist-source-range: 10.0.0.0/8 }
spec:
  rules:
  - host: a.shop.example
    http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 80 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: admin-api
  namespace: shop
  annotations: { nginx.ingress.kubernetes.io/whitelist-source-range: 0.0.0.0/0 }
spec:
  rules:
  - host: b.shop.example
    http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: api, port: { number: 80 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: moved
  namespace: gateway
  annotations: { nginx.ingress.kubernetes.io/permanent-redirect: "https://new.example.com$request_uri" }
spec:
  rules:
  - host: old.example.com
    http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: x, port: { number: 80 } } } }] }
"#;
    let report = import_text(dir.path(), ingresses);
    assert!(
        report.contains(
            "- `monitoring/grafana` ingressClassName: class `nginx-internal`: another controller's"
        ),
        "{report}"
    );
    assert!(
        report.contains("- `web/admin` routes: its routes answer 503: `auth-tls-verify-client`"),
        "{report}"
    );
    assert!(
        report.contains("- `web/both` routes: its routes answer 503: `auth-url` and `auth-type: basic` together"),
        "{report}"
    );
    // The namespace `gateway` does not overwrite the base.
    assert!(dir.path().join("out/ns-gateway.yaml").is_file());
    let (code, _, err) = portico(&["check", "out"], dir.path());
    assert_eq!(code, 0, "{err}");
    let route = |host: &str, path: &str| explain(dir.path(), host, path);
    // The route that needed client certificates answers 503; the wider route does not take it.
    let admin = route("app.example.com", "/admin/users");
    assert!(
        admin.contains("route `web-admin-r0p0`") && admin.contains("status 503"),
        "{admin}"
    );
    assert!(route("app.example.com", "/x").contains("upstream: web-frontend-80"));
    // Each Ingress keeps its own allowlist though their names meet.
    let a = route("a.shop.example", "/");
    let b = route("b.shop.example", "/");
    assert!(a.contains("10.0.0.0/8") && !a.contains("0.0.0.0/0"), "{a}");
    assert!(b.contains("0.0.0.0/0"), "{b}");
    // `$request_uri`: the redirect keeps the request's path.
    let moved = std::fs::read_to_string(dir.path().join("out/ns-gateway.yaml")).unwrap();
    assert!(
        moved.contains("host: new.example.com")
            && !moved.contains("$request_uri")
            && !moved.contains("path: /\n"),
        "{moved}"
    );
}

/// nginx picks the longest match across namespaces; Portico tries the namespace files by
/// name: a broad route of an earlier namespace moves after them, so the later
/// namespace's longer match still takes its requests.
#[test]
fn a_broad_route_of_an_earlier_namespace_does_not_take_a_later_ones_requests() {
    let dir = tempfile::tempdir().unwrap();
    let ingresses = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: shop, namespace: aaa }
spec:
  rules:
  - host: shop.example.com
    http: { paths: [{ path: /, pathType: Prefix, backend: { service: { name: web, port: { number: 80 } } } }] }
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: { name: api, namespace: zzz }
spec:
  rules:
  - host: shop.example.com
    http: { paths: [{ path: /api, pathType: Prefix, backend: { service: { name: api, port: { number: 80 } } } }] }
"#;
    let report = import_text(dir.path(), ingresses);
    assert!(report.contains("- `aaa/shop` route `aaa-shop-r0p0`: moved to zz-broad-routes.yaml: in ns-aaa.yaml it would take the requests of namespace zzz's `zzz-api-r0p0-exact`"), "{report}");
    assert!(
        !report.contains("## portico check"),
        "no shadowing left:\n{report}"
    );
    let route = |path: &str| explain(dir.path(), "shop.example.com", path);
    assert!(route("/api/orders").contains("upstream: zzz-api-80"));
    assert!(route("/cart").contains("upstream: aaa-web-80"));
}
