//! TLS and HTTP/2 to upstreams, through the real gateway, against real upstreams (hyper
//! over tokio-rustls, certificates made here with rcgen): verification by a custom CA,
//! refusal of an unverifiable upstream, mutual TLS, and HTTP/2 over TLS and cleartext.

mod common;
use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

fn leaf(ca: &Ca, names: &[&str], cn: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    (params.signed_by(&key, &ca.cert, &ca.key).unwrap(), key)
}

/// An upstream that answers with what it saw: the HTTP version and the client certificate.
struct Upstream {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

fn serve(tls: Option<rustls::ServerConfig>) -> Upstream {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let reply = |client: Option<String>| {
                    move |req: Request<hyper::body::Incoming>| {
                        let body = json!({
                            "version": format!("{:?}", req.version()),
                            "client": client.clone(),
                            "path": req.uri().path(),
                        });
                        async move {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(body.to_string()),
                            )))
                        }
                    }
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    None => {
                        let svc = hyper::service::service_fn(reply(None));
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let client = stream.get_ref().1.peer_certificates().and_then(|c| {
                            let (_, cert) =
                                x509_parser::parse_x509_certificate(c[0].as_ref()).ok()?;
                            let cn = cert
                                .subject()
                                .iter_common_name()
                                .next()?
                                .as_str()
                                .ok()?
                                .to_string();
                            Some(cn)
                        });
                        let svc = hyper::service::service_fn(reply(client));
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Upstream { addr, _rt: rt }
}

fn server_config(ca: &Ca, client_ca: Option<&Ca>) -> rustls::ServerConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (cert, key) = leaf(ca, &["localhost", "127.0.0.1"], "upstream");
    let chain = vec![CertificateDer::from(cert.der().to_vec())];
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let mut config = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from(client_ca.cert.der().to_vec()))
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    }
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn route_config(upstreams: &str) -> String {
    let names: Vec<&str> = upstreams
        .lines()
        .filter_map(|l| l.trim().split_once(':').map(|(n, _)| n))
        .collect();
    let routes: String = names
        .iter()
        .map(|n| format!("  - {{ name: {n}, match: {{ path_prefix: /{n}/ }}, upstream: {n} }}\n"))
        .collect();
    format!("upstreams:\n{upstreams}routes:\n{routes}")
}

fn get(gw: &Gateway, path: &str) -> (u16, Value) {
    let r = client().get(gw.url(path)).send().unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

#[test]
fn https_upstreams_are_verified_against_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_ok = ca("upstream CA");
    let up = serve(Some(server_config(&ca_ok, None)));
    let ca_file = write(dir.path(), "ca.pem", &ca_ok.cert.pem());
    let other_ca = write(dir.path(), "other.pem", &ca("another CA").cert.pem());
    let a = up.addr;
    let gw = Gateway::start(&route_config(&format!(
        "  good: {{ targets: [\"https://{a}\"], tls: {{ sni: localhost, ca_file: \"{ca_file}\" }} }}\n  byip: {{ targets: [\"https://{a}\"], tls: {{ ca_file: \"{ca_file}\" }} }}\n  h2: {{ targets: [\"https://{a}\"], tls: {{ ca_file: \"{ca_file}\" }}, protocol: h2 }}\n  wrongca: {{ targets: [\"https://{a}\"], tls: {{ sni: localhost, ca_file: \"{other_ca}\" }} }}\n  system: {{ targets: [\"https://{a}\"] }}\n  wrongname: {{ targets: [\"https://{a}\"], tls: {{ sni: payments.internal, ca_file: \"{ca_file}\" }} }}\n"
    )));
    let (status, body) = get(&gw, "/good/x");
    assert_eq!(
        (status, &body["version"]),
        (200, &json!("HTTP/1.1")),
        "{body}"
    );
    assert_eq!(
        get(&gw, "/byip/x").0,
        200,
        "an IP target is verified by its IP name"
    );
    let (status, body) = get(&gw, "/h2/x");
    assert_eq!(
        (status, &body["version"]),
        (200, &json!("HTTP/2.0")),
        "{body}"
    );
    for path in ["/wrongca/x", "/system/x", "/wrongname/x"] {
        let r = client().get(gw.url(path)).send().unwrap();
        assert_json_error(r, 502, "upstream_tls_failed");
    }
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("upstream CA");
    let client_ca = ca("client CA");
    let up = serve(Some(server_config(&server_ca, Some(&client_ca))));
    let ca_file = write(dir.path(), "ca.pem", &server_ca.cert.pem());
    let (cert, key) = leaf(&client_ca, &["gateway"], "portico-gateway");
    let cert_file = write(dir.path(), "client.pem", &cert.pem());
    let key_file = write(dir.path(), "client.key", &key.serialize_pem());
    let a = up.addr;
    let gw = Gateway::start(&route_config(&format!(
        "  mtls: {{ targets: [\"https://{a}\"], tls: {{ sni: localhost, ca_file: \"{ca_file}\", client_cert: \"{cert_file}\", client_key: \"{key_file}\" }} }}\n  anon: {{ targets: [\"https://{a}\"], tls: {{ sni: localhost, ca_file: \"{ca_file}\" }} }}\n"
    )));
    let (status, body) = get(&gw, "/mtls/x");
    assert_eq!(
        (status, &body["client"]),
        (200, &json!("portico-gateway")),
        "{body}"
    );
    let r = client().get(gw.url("/anon/x")).send().unwrap();
    assert_eq!(
        r.status(),
        502,
        "the upstream refuses a gateway without a certificate"
    );
}

#[test]
fn h2c_to_a_cleartext_upstream() {
    let up = serve(None);
    let gw = Gateway::start(&route_config(&format!(
        "  grpcish: {{ targets: [\"{}\"], protocol: h2 }}\n  plain: {{ targets: [\"{}\"] }}\n",
        up.addr, up.addr
    )));
    let (status, body) = get(&gw, "/grpcish/x");
    assert_eq!(
        (status, &body["version"]),
        (200, &json!("HTTP/2.0")),
        "{body}"
    );
    let (status, body) = get(&gw, "/plain/x");
    assert_eq!(
        (status, &body["version"]),
        (200, &json!("HTTP/1.1")),
        "{body}"
    );
}

#[test]
fn upstream_tls_mistakes_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = ca("client CA");
    let (cert, _) = leaf(&client_ca, &["gateway"], "gw");
    let (_, other_key) = leaf(&client_ca, &["gateway"], "gw");
    write(dir.path(), "c.pem", &cert.pem());
    write(dir.path(), "k.key", &other_key.serialize_pem());
    let cfg = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nupstreams:\n  mixed: { targets: [\"https://a:1\", \"b:2\"] }\n  pair: { targets: [\"https://a:1\"], tls: { client_cert: c.pem, client_key: k.key } }\n  half: { targets: [\"a:1\"], tls: { client_cert: c.pem } }\n  lax: { targets: [\"https://a:1\"], tls: { verify: false } }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: mixed }\n  - { name: s, match: { path_prefix: /s }, upstream: pair }\n  - { name: t, match: { path_prefix: /t }, upstream: half }\n  - { name: u, match: { path_prefix: /u }, upstream: lax }\n";
    std::fs::write(dir.path().join("g.yaml"), cfg).unwrap();
    let (code, _, err) = portico(&["check", "g.yaml"], dir.path());
    assert_eq!(code, 1, "{err}");
    for want in [
        "g.yaml:4:21: error: some targets are https:// and some are not",
        "does not go with `c.pem`",
        "g.yaml:6:36: error: mutual TLS needs both `client_cert` and `client_key`",
        "g.yaml:7:51: warning: certificate verification is off",
    ] {
        assert!(err.contains(want), "`{want}` in:\n{err}");
    }
}

/// The gateway's own calls (an aggregate's) go to an upstream as a proxied request does:
/// over verified TLS, in HTTP/2 when it says so; an unverifiable one fails the call.
#[test]
fn aggregate_calls_use_the_upstreams_tls_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let ca_ok = ca("upstream CA");
    let up = serve(Some(server_config(&ca_ok, None)));
    let ca_file = write(dir.path(), "ca.pem", &ca_ok.cert.pem());
    let a = up.addr;
    let gw = Gateway::start(&format!(
        "upstreams:\n  one: {{ targets: [\"https://{a}\"], tls: {{ sni: localhost, ca_file: \"{ca_file}\" }} }}\n  two: {{ targets: [\"https://{a}\"], tls: {{ ca_file: \"{ca_file}\" }}, protocol: h2 }}\n  unverified: {{ targets: [\"https://{a}\"] }}\nroutes:\n  - name: both\n    match: {{ path: /both }}\n    aggregate:\n      calls:\n        - {{ name: one, upstream: one, path: /a }}\n        - {{ name: two, upstream: two, path: /b }}\n        - {{ name: bad, upstream: unverified, path: /c, required: false }}\n"
    ));
    let r = client().get(gw.url("/both")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-portico-partial"], "bad");
    let body: Value = r.json().unwrap();
    assert_eq!(
        body["one"],
        json!({"version": "HTTP/1.1", "client": null, "path": "/a"})
    );
    assert_eq!(body["two"]["version"], "HTTP/2.0", "{body}");
}
