//! `portico import gateway-api` on the Gateway API conformance suite's HTTPRoute manifests
//! (tests/data/gateway-api, see its SOURCE.md): each manifest is imported with the suite's
//! `same-namespace` Gateway, served by the real gateway with loopback echo upstreams as
//! infra-backend-v1/v2/v3, and the requests the suite's Go tests send must reach the
//! backends, paths and headers they expect (expectations.yaml, transcribed from them).

mod common;
use common::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Deserialize)]
struct Conformance {
    test: String,
    manifest: String,
    #[serde(default)]
    cases: Vec<Case>,
    #[serde(default)]
    weights: BTreeMap<String, u64>,
}

#[derive(Deserialize, Debug)]
struct Case {
    request: Req,
    backend: Option<String>,
    #[serde(default = "ok")]
    status: u16,
    upstream_path: Option<String>,
    upstream_host: Option<String>,
    #[serde(default)]
    upstream_headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_upstream_headers: Vec<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    #[serde(default)]
    absent_response_headers: Vec<String>,
    redirect: Option<Redirect>,
    #[serde(default)]
    mirrored_to: Vec<String>,
    /// Response headers the echo backend is asked to set (`X-Echo-Set-Header`).
    #[serde(default)]
    backend_response_headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

#[derive(Deserialize, Debug)]
struct Req {
    #[serde(default = "get")]
    method: String,
    path: String,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn get() -> String {
    "GET".into()
}

#[derive(Deserialize, Debug)]
struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
}

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gateway-api")
}

const BACKENDS: [&str; 3] = ["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"];

/// Imports `manifest` with the base Gateway and serves it with `backends` standing in for
/// the suite's Services.
fn serve(manifest: &str, backends: &BTreeMap<&str, TestUpstream>) -> Gateway {
    let addrs: Vec<(&str, String)> = backends
        .iter()
        .map(|(n, u)| (*n, u.addr.to_string()))
        .collect();
    serve_files(&data().join(manifest), &addrs, "")
}

/// Imports `manifest` with the base Gateway; each `(service, address)` stands in for the
/// Service's port 8080 (a GRPCRoute's 50051), and `listen` goes under the listeners.
fn serve_files(manifest: &std::path::Path, services: &[(&str, String)], listen: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let files = [data().join("base.yaml"), manifest.to_path_buf()];
    let mut args = vec!["import".to_string(), "gateway-api".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--out".into(), "out".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report, err) = portico(&args, dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        !report.contains("## not translated"),
        "{}: {report}",
        manifest.display()
    );
    let team = dir.path().join("out/ns-gateway-conformance-infra.yaml");
    let mut text = std::fs::read_to_string(&team).unwrap();
    for (name, addr) in services {
        for port in [8080, 50051] {
            let service = format!("{name}.gateway-conformance-infra.svc.cluster.local:{port}");
            text = text.replace(&service, addr);
        }
    }
    Gateway::start_with(&["run"], listen, move |gw_dir, base| {
        let conf = gw_dir.join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(conf.join("gateway.yaml"), base).unwrap();
        std::fs::write(conf.join("routes.yaml"), &text).unwrap();
        PathBuf::from("conf")
    })
}

/// A header's values joined with `,`, as the suite compares them.
fn header(seen: &BTreeMap<String, Vec<String>>, name: &str) -> Option<String> {
    seen.get(&name.to_ascii_lowercase()).map(|v| v.join(","))
}

fn response_header(r: &reqwest::blocking::Response, name: &str) -> Option<String> {
    let values: Vec<&str> = r
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Where Portico answers differently from the suite on purpose, and what it answers:
/// - a route for GET takes HEAD too (HTTP's rule: HEAD is GET without the body), where the
///   Gateway API's method match is exact (the import's report says so for every GET match);
/// - a path that routes only for other methods is answered 405 with `Allow`, not 404.
fn deviation(test: &str, case: &Case) -> Option<u16> {
    match (test, case.request.method.as_str(), case.status) {
        ("HTTPRouteMethodMatching", "HEAD", 404) => Some(200),
        ("HTTPRouteMethodMatching", _, 404) => Some(405),
        _ => None,
    }
}

fn check_case(test: &str, gw: &Gateway, backends: &BTreeMap<&str, TestUpstream>, case: &Case) {
    let what = format!("{test}: {case:?}");
    if let Some(status) = deviation(test, case) {
        let method = reqwest::Method::from_bytes(case.request.method.as_bytes()).unwrap();
        let r = client()
            .request(method, gw.url(&case.request.path))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "deviation: {what}");
        return;
    }
    let c = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let before: BTreeMap<&str, usize> = backends
        .iter()
        .map(|(n, u)| (*n, u.seen.lock().unwrap().len()))
        .collect();
    let method = reqwest::Method::from_bytes(case.request.method.as_bytes()).unwrap();
    let mut req = c.request(method, gw.url(&case.request.path));
    if let Some(host) = &case.request.host {
        req = req.header("host", host);
    }
    for (k, v) in &case.request.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if !case.backend_response_headers.is_empty() {
        let pairs: Vec<String> = case
            .backend_response_headers
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        req = req.header("x-echo-set-header", pairs.join(","));
    }
    let r = req.send().unwrap();
    assert_eq!(r.status().as_u16(), case.status, "{what}");
    for (k, v) in &case.response_headers {
        assert_eq!(
            response_header(&r, k).as_deref(),
            Some(v.as_str()),
            "response header {k}: {what}"
        );
    }
    for k in &case.absent_response_headers {
        assert!(
            r.headers().get(k.as_str()).is_none(),
            "response header {k} absent: {what}"
        );
    }
    if let Some(redirect) = &case.redirect {
        // As the suite checks: what a case leaves unset is the request's own (scheme http,
        // the request's path) and the port is the listener's, 80, or none.
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let uri: http::Uri = location.parse().unwrap();
        let scheme = redirect.scheme.as_deref().unwrap_or("http");
        assert_eq!(uri.scheme_str(), Some(scheme), "{location}: {what}");
        if let Some(host) = &redirect.host {
            assert_eq!(uri.host(), Some(host.as_str()), "{location}: {what}");
        }
        match redirect.port {
            Some(port) => assert_eq!(uri.port_u16(), Some(port), "{location}: {what}"),
            None => assert!(
                matches!(uri.port_u16(), None | Some(80)),
                "{location}: {what}"
            ),
        }
        let path = redirect
            .path
            .as_deref()
            .unwrap_or(case.request.path.split('?').next().unwrap());
        assert_eq!(uri.path(), path, "{location}: {what}");
    }
    let Some(backend) = &case.backend else { return };
    assert_eq!(r.headers()["x-upstream"], backend.as_str(), "{what}");
    let upstream = &backends[backend.as_str()];
    let seen = upstream.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.method, case.request.method, "{what}");
    match &case.upstream_path {
        Some(path) => assert_eq!(
            seen.uri.split('?').next().unwrap_or_default(),
            path,
            "{what}"
        ),
        // Not rewritten: the backend sees the request's path and query as sent.
        None => assert_eq!(seen.uri, case.request.path, "{what}"),
    }
    if let Some(host) = &case.upstream_host {
        assert_eq!(
            header(&seen.headers, "host").as_deref(),
            Some(host.as_str()),
            "{what}"
        );
    }
    for (k, v) in &case.upstream_headers {
        assert_eq!(
            header(&seen.headers, k).as_deref(),
            Some(v.as_str()),
            "upstream header {k}: {what}"
        );
    }
    let named = |k: &str| {
        let listed = case
            .upstream_headers
            .keys()
            .chain(&case.absent_upstream_headers);
        listed.into_iter().any(|h| h.eq_ignore_ascii_case(k))
    };
    for (k, v) in &case.request.headers {
        if !named(k) {
            assert_eq!(
                header(&seen.headers, k).as_deref(),
                Some(v.as_str()),
                "request header {k} passed on: {what}"
            );
        }
    }
    for k in &case.absent_upstream_headers {
        assert!(
            header(&seen.headers, k).is_none(),
            "upstream header {k} absent: {what}"
        );
    }
    for mirror in &case.mirrored_to {
        let shadow = &backends[mirror.as_str()];
        let copied = wait_until(Duration::from_secs(10), || {
            shadow.seen.lock().unwrap().len() > before[mirror.as_str()]
        });
        assert!(copied.is_some(), "mirrored to {mirror}: {what}");
        let copy = shadow.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            (copy.method.as_str(), copy.uri.as_str()),
            (seen.method.as_str(), seen.uri.as_str()),
            "the copy: {what}"
        );
    }
}

#[test]
fn the_conformance_suites_requests_reach_the_expected_backends() {
    let text = std::fs::read_to_string(data().join("expectations.yaml")).unwrap();
    let suites: Vec<Conformance> = serde_yaml::from_str(&text).unwrap();
    assert!(suites.len() >= 10, "{} suites", suites.len());
    let mut cases = 0;
    for suite in &suites {
        let backends: BTreeMap<&str, TestUpstream> = BACKENDS
            .iter()
            .map(|n| (*n, TestUpstream::start(n)))
            .collect();
        let gw = serve(&suite.manifest, &backends);
        for case in &suite.cases {
            check_case(&suite.test, &gw, &backends, case);
            cases += 1;
        }
        if !suite.weights.is_empty() {
            check_weights(&suite.test, &gw, &suite.weights);
        }
    }
    assert!(cases >= 60, "{cases} cases");
}

/// A weighted rule: over one turn of the weighted cycle (the weights' sum), each backend
/// gets exactly its weight (Portico's split is a smooth weighted round robin).
fn check_weights(test: &str, gw: &Gateway, weights: &BTreeMap<String, u64>) {
    let total: u64 = weights.values().sum();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..total {
        let r = client().get(gw.url("/")).send().unwrap();
        assert_eq!(r.status(), 200, "{test}");
        *got.entry(r.headers()["x-upstream"].to_str().unwrap().to_string())
            .or_default() += 1;
    }
    let want: BTreeMap<String, u64> = weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(k, w)| (k.clone(), *w))
        .collect();
    assert_eq!(got, want, "{test}");
}

#[test]
fn routes_not_attached_to_a_gateway_and_unsupported_matches_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: lonely, namespace: apps }\nspec:\n  parentRefs: [{ name: elsewhere }]\n  rules:\n  - backendRefs: [{ name: web, port: 80 }]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: regex, namespace: gateway-conformance-infra }\nspec:\n  parentRefs: [{ name: same-namespace }]\n  rules:\n  - matches:\n    - headers: [{ type: RegularExpression, name: X-Id, value: '[0-9]+' }]\n    backendRefs: [{ name: web, port: 80 }]\n";
    std::fs::write(dir.path().join("routes.yaml"), route).unwrap();
    let base = data().join("base.yaml").display().to_string();
    let (code, out, err) = portico(
        &[
            "import",
            "gateway-api",
            &base,
            "routes.yaml",
            "--out",
            "out",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "- `apps/lonely` spec.parentRefs: attached to no listener among the files read"
        ),
        "{out}"
    );
    assert!(out.contains("- `gateway-conformance-infra/regex` headers: a `RegularExpression` headers match on `X-Id`"), "{out}");
    let (code, _, err) = portico(&["check", "out"], dir.path());
    assert_eq!(code, 0, "{err}");
}

/// GRPCRoute basics, with a real gRPC client and server (the standard health service): a
/// method match goes to its backend over HTTP/2, a method no rule takes is UNIMPLEMENTED.
#[test]
fn a_grpc_routes_method_match_reaches_its_backend() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, _reporter) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("shop", tonic_health::ServingStatus::Serving)
            .await;
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        (addr, reporter)
    });
    let dir = tempfile::tempdir().unwrap();
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: { name: health, namespace: gateway-conformance-infra }\nspec:\n  parentRefs: [{ name: same-namespace }]\n  rules:\n  - matches:\n    - method: { service: grpc.health.v1.Health, method: Check }\n    backendRefs: [{ name: grpc-backend, port: 50051 }]\n";
    let manifest = dir.path().join("grpcroute.yaml");
    std::fs::write(&manifest, route).unwrap();
    let gw = serve_files(
        &manifest,
        &[("grpc-backend", addr.to_string())],
        "  h2c: true\n",
    );
    rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.proxy))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let ask = |service: &str| tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        };
        let ok = client.check(ask("shop")).await.unwrap();
        assert_eq!(
            ok.get_ref().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let unrouted = client.watch(ask("shop")).await.unwrap_err();
        assert_eq!(unrouted.code(), tonic::Code::Unimplemented, "{unrouted:?}");
    });
}

/// Which listener a route attaches to decides what it serves: a Gateway's allowed
/// namespaces, its listeners' hostnames and sections, the usual HTTP → HTTPS redirect
/// route, and ReferenceGrants for another namespace's Service.
#[test]
fn attachment_rules_decide_what_a_route_serves() {
    let dir = tempfile::tempdir().unwrap();
    let objects = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: { name: edge, namespace: infra }
spec:
  listeners:
  - { name: http, port: 80, protocol: HTTP, hostname: "*.example.com" }
  - name: https
    port: 443
    protocol: HTTPS
    hostname: "*.example.com"
    tls: { certificateRefs: [{ name: wildcard }] }
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: to-https, namespace: infra }
spec:
  parentRefs: [{ name: edge, sectionName: http }]
  rules:
  - filters: [{ type: RequestRedirect, requestRedirect: { scheme: https, statusCode: 301 } }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: app, namespace: infra }
spec:
  parentRefs: [{ name: edge, sectionName: https }]
  hostnames: [app.example.com, app.other.org]
  rules:
  - backendRefs: [{ name: app, port: 80 }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: tenant, namespace: tenant }
spec:
  parentRefs: [{ name: edge, namespace: infra }]
  rules:
  - backendRefs: [{ name: web, port: 80 }]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: vault, namespace: infra }
spec:
  parentRefs: [{ name: edge }]
  hostnames: [vault.example.com]
  rules:
  - backendRefs: [{ name: vault, namespace: secrets, port: 8200 }]
  - matches: [{ path: { type: PathPrefix, value: /shared } }]
    backendRefs: [{ name: shared, namespace: common, port: 80 }]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: { name: infra-routes, namespace: common }
spec:
  from: [{ group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra }]
  to: [{ group: "", kind: Service }]
"#;
    std::fs::write(dir.path().join("objects.yaml"), objects).unwrap();
    let (code, report, err) = portico(
        &["import", "gateway-api", "objects.yaml", "--out", "out"],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "- `infra/to-https` rules: a redirect to https on HTTP listeners only: translated as listen.redirect_https",
        "- `tenant/tenant` spec.parentRefs: attached to no listener among the files read",
        "- `infra/vault` backendRefs: `secrets/vault` is in another namespace and no ReferenceGrant there allows it",
    ] {
        assert!(report.contains(line), "`{line}` in:\n{report}");
    }
    let base: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.path().join("out/gateway.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(base["listen"]["redirect_https"], true);
    let routes: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.path().join("out/ns-infra.yaml")).unwrap(),
    )
    .unwrap();
    let hosts: Vec<&str> = routes["routes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["match"]["host"].as_str())
        .collect();
    // The listener's `*.example.com` keeps app.example.com and drops app.other.org.
    assert!(
        hosts.contains(&"app.example.com") && !hosts.contains(&"app.other.org"),
        "{hosts:?}"
    );
    let text = std::fs::read_to_string(dir.path().join("out/ns-infra.yaml")).unwrap();
    assert!(
        text.contains("shared.common.svc.cluster.local:80"),
        "{text}"
    );
    assert!(!text.contains("vault.secrets"), "{text}");
    assert!(
        text.contains("status: 500"),
        "the refused backend's rule answers 500:\n{text}"
    );
}
