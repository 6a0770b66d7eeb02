//! TLS and HTTP/2 at the client side, through the real gateway: certificates made here
//! (rcgen), real HTTPS clients (reqwest over rustls, with HTTP/2 by ALPN, and curl).

mod common;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use reqwest::blocking::{Client, Response};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Portico test CA");
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

/// A leaf for `names`, signed by `ca`: (certificate PEM, key PEM, certificate DER).
fn leaf(
    ca: &Ca,
    names: &[&str],
    edit: impl FnOnce(&mut CertificateParams),
) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    edit(&mut params);
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

struct Certs {
    dir: tempfile::TempDir,
    ca: Ca,
    api: Vec<u8>,
    wild: Vec<u8>,
}

impl Certs {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn write(&self, name: &str, (cert, key, der): (String, String, Vec<u8>)) -> Vec<u8> {
        // The key first: a reload between the two writes sees a mismatched pair, which is
        // refused, and the next one sees the matched pair.
        std::fs::write(self.path(&format!("{name}.key")), key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert).unwrap();
        der
    }
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let mut certs = Certs {
        dir,
        api: Vec::new(),
        wild: Vec::new(),
        ca,
    };
    certs.api = certs.write("api", leaf(&certs.ca, &["api.test"], |_| {}));
    certs.wild = certs.write("wild", leaf(&certs.ca, &["*.wild.test"], |_| {}));
    certs
}

fn config(up: &TestUpstream, certs: &Certs, tls_port: u16, extra: &str) -> String {
    format!(
        r#"  proxy_tls: 127.0.0.1:{tls_port}
{extra}tls:
  certificates:
    - {{ cert: "{api}.pem", key: "{api}.key" }}
    - {{ cert: "{wild}.pem", key: "{wild}.key" }}
upstreams:
  svc: {{ targets: ["{up}"] }}
routes:
  - {{ name: all, match: {{ path_prefix: / }}, upstream: svc }}
"#,
        api = certs.path("api").display(),
        wild = certs.path("wild").display(),
        up = up.addr,
    )
}

fn https_client(certs: &Certs, tls: SocketAddr) -> Client {
    let ca = reqwest::Certificate::from_pem(certs.ca.cert.pem().as_bytes()).unwrap();
    Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("api.test", tls)
        .resolve("a.wild.test", tls)
        .resolve("unknown.test", tls)
        .tls_info(true)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn peer_cert(r: &Response) -> Vec<u8> {
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("the peer certificate")
        .to_vec()
}

fn start(certs: &Certs, extra: &str) -> (TestUpstream, Gateway, SocketAddr) {
    let up = TestUpstream::start("svc");
    let tls_port = free_port();
    let gw = Gateway::start(&config(&up, certs, tls_port, extra));
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    wait_listening(&gw, tls);
    (up, gw, tls)
}

fn wait_listening(gw: &Gateway, addr: SocketAddr) {
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    assert!(up.is_some(), "the TLS listener did not open:\n{}", gw.log());
}

#[test]
fn https_with_http2_by_alpn_and_certificates_by_sni() {
    let certs = certs();
    let (up, gw, tls) = start(&certs, "");
    let c = https_client(&certs, tls);
    let r = c
        .get(format!("https://api.test:{}/x", tls.port()))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );
    assert_eq!(peer_cert(&r), certs.api);
    assert!(r.headers().contains_key("x-request-id"));
    let seen = up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], vec!["https"]);
    let r = c
        .get(format!("https://a.wild.test:{}/x", tls.port()))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), peer_cert(&r)),
        (200, certs.wild.clone())
    );
    // No name matches: the first certificate (which this client then refuses by name).
    let lax = Client::builder()
        .danger_accept_invalid_hostnames(true)
        .add_root_certificate(
            reqwest::Certificate::from_pem(certs.ca.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("unknown.test", tls)
        .tls_info(true)
        .build()
        .unwrap();
    let r = lax
        .get(format!("https://unknown.test:{}/x", tls.port()))
        .send()
        .unwrap();
    assert_eq!(peer_cert(&r), certs.api);
    // HTTP/1.1 over TLS still works, and plain HTTP on `proxy` says http upstream.
    let h1 = Client::builder()
        .http1_only()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certs.ca.cert.pem().as_bytes()).unwrap(),
        )
        .resolve("api.test", tls)
        .build()
        .unwrap();
    let r = h1
        .get(format!("https://api.test:{}/x", tls.port()))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_11)
    );
    let r = client().get(gw.url("/plain")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().headers["x-forwarded-proto"], vec!["http"]);
}

#[test]
fn curl_speaks_http2_to_the_tls_listener() {
    let certs = certs();
    let (_up, _gw, tls) = start(&certs, "");
    std::fs::write(certs.path("ca.pem"), certs.ca.cert.pem()).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .arg("--cacert")
        .arg(certs.path("ca.pem"))
        .arg("--resolve")
        .arg(format!("api.test:{}:127.0.0.1", tls.port()))
        .arg(format!("https://api.test:{}/curl", tls.port()))
        .output()
        .expect("curl is installed (make deps)");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
}

#[test]
fn a_renewed_certificate_is_served_to_new_connections_while_open_ones_continue() {
    let certs = certs();
    let (_up, gw, tls) = start(&certs, "");
    let old = https_client(&certs, tls);
    let url = format!("https://api.test:{}/x", tls.port());
    assert_eq!(peer_cert(&old.get(&url).send().unwrap()), certs.api);
    let renewed = certs.write("api", leaf(&certs.ca, &["api.test"], |_| {}));
    assert_ne!(renewed, certs.api);
    let mut last = Vec::new();
    let swapped = wait_until(Duration::from_secs(15), || {
        let fresh = https_client(&certs, tls);
        last = peer_cert(&fresh.get(&url).send().unwrap());
        last == renewed
    });
    assert!(
        swapped.is_some(),
        "never served the renewed certificate:\n{}",
        gw.log()
    );
    // The open connection was not dropped: it still works, on its old certificate.
    let r = old.get(&url).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), peer_cert(&r)),
        (200, certs.api.clone())
    );
}

#[test]
fn a_mismatched_pair_is_refused_and_the_old_certificate_stays() {
    let certs = certs();
    let (_up, gw, tls) = start(&certs, "");
    let url = format!("https://api.test:{}/x", tls.port());
    let before = metric(&gw, "portico_config_reloads_total{result=\"failed\"}").max(0.0);
    // The new certificate with another key: not a pair.
    let (cert, _, _) = leaf(&certs.ca, &["api.test"], |_| {});
    let (_, other_key, _) = leaf(&certs.ca, &["api.test"], |_| {});
    std::fs::write(certs.path("api.key"), other_key).unwrap();
    std::fs::write(certs.path("api.pem"), cert).unwrap();
    let refused = wait_until(Duration::from_secs(15), || {
        metric(&gw, "portico_config_reloads_total{result=\"failed\"}").max(0.0) > before
    });
    assert!(
        refused.is_some(),
        "the mismatched pair was not refused:\n{}",
        gw.log()
    );
    let r = https_client(&certs, tls).get(&url).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), peer_cert(&r)),
        (200, certs.api.clone())
    );
    let status = gw.admin_config()["last_reload"].clone();
    let text = status.to_string();
    assert!(text.contains("does not go with"), "{text}");
    // `portico check` says the same, at the key's line.
    let config = gw.config.display().to_string();
    let (code, _, err) = portico(&["check", "-c", &config], gw.dir.path());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("gateway.yaml:8:"), "{err}");
    assert!(err.contains("does not go with"), "{err}");
}

#[test]
fn expired_certificates_and_missing_files_are_config_errors() {
    let certs = certs();
    let expired = leaf(&certs.ca, &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    certs.write("old", expired);
    let dir = certs.dir.path();
    let cfg = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2, proxy_tls: 127.0.0.1:3 }\ntls:\n  certificates:\n    - { cert: old.pem, key: old.key }\n    - { cert: nope.pem, key: nope.key }\n  min_version: \"1.3\"\nupstreams:\n  svc: { targets: [\"127.0.0.1:4\"] }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: svc }\n";
    std::fs::write(dir.join("g.yaml"), cfg).unwrap();
    let (code, _, err) = portico(&["check", "g.yaml"], dir);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("g.yaml:5:15: error: `old.pem` expired"),
        "{err}"
    );
    assert!(err.contains("g.yaml:6:15: error: cannot read"), "{err}");
}

#[test]
fn min_version_1_3_refuses_a_tls_1_2_client() {
    let certs = certs();
    let up = TestUpstream::start("svc");
    let tls_port = free_port();
    let body = config(&up, &certs, tls_port, "").replace(
        "tls:\n  certificates:",
        "tls:\n  min_version: \"1.3\"\n  certificates:",
    );
    let gw = Gateway::start(&body);
    wait_listening(&gw, format!("127.0.0.1:{tls_port}").parse().unwrap());
    let ca = || reqwest::Certificate::from_pem(certs.ca.cert.pem().as_bytes()).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let url = format!("https://api.test:{tls_port}/x");
    let old = Client::builder()
        .add_root_certificate(ca())
        .resolve("api.test", addr)
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(old.get(&url).send().is_err(), "a TLS 1.2 client was served");
    let new = Client::builder()
        .add_root_certificate(ca())
        .resolve("api.test", addr)
        .min_tls_version(reqwest::tls::Version::TLS_1_3)
        .build()
        .unwrap();
    assert_eq!(new.get(&url).send().unwrap().status(), 200);
}

#[test]
fn plain_http_is_redirected_to_https_and_h2c_is_served() {
    let certs = certs();
    let (up, gw, tls) = start(&certs, "  redirect_https: true\n  h2c: true\n");
    let no_redirects = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(format!("http://localhost:{}/a/b?c=1", gw.proxy.port()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://localhost:{}/a/b?c=1", tls.port()).as_str()
    );
    assert_eq!(up.count(), 0);
    // Cleartext HTTP/2 (prior knowledge) is served on the plain listener, and redirected too.
    let h2c = Client::builder()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = h2c.get(gw.url("/h2c")).send().unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (308, reqwest::Version::HTTP_2)
    );
    let expiry = format!(
        "portico_tls_certificate_expiry_seconds{{name=\"{}\"}}",
        certs.path("api.pem").display()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(metric(&gw, &expiry) > now, "notAfter in the future");
}

/// The calendar date `days` after 1970-01-01 (Howard Hinnant's civil-from-days).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[test]
fn a_tls_only_gateway_warns_of_a_certificate_about_to_expire() {
    let certs = certs();
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86400;
    let (y, m, d) = civil(today + 5);
    let soon = leaf(&certs.ca, &["api.test"], |p| {
        p.not_after = rcgen::date_time_ymd(y, m, d);
    });
    let soon = certs.write("api", soon);
    let up = TestUpstream::start("svc");
    let tls_port = free_port();
    let body = config(&up, &certs, tls_port, "");
    // No plain listener at all: `proxy_tls` instead of `proxy`.
    let gw = Gateway::start_with(&["run"], &body, |dir, text| {
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with("  proxy: "))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = dir.join("gateway.yaml");
        std::fs::write(&config, text).unwrap();
        config
    });
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    wait_listening(&gw, tls);
    let r = https_client(&certs, tls)
        .get(format!("https://api.test:{tls_port}/x"))
        .send()
        .unwrap();
    assert_eq!((r.status().as_u16(), peer_cert(&r)), (200, soon));
    assert!(
        std::net::TcpStream::connect(gw.proxy).is_err(),
        "no plain listener"
    );
    let config = gw.config.display().to_string();
    let (code, _, err) = portico(&["check", "-c", &config], gw.dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: `") && err.contains("api.pem` expires in 4 days"),
        "{err}"
    );
}

/// A silent or trickling ClientHello is cut off at the header deadline (Pingora's own
/// handshake allowed 60 s) and counts toward `max_connections`, so such clients cannot lock
/// out HTTPS and plain clients; a real client is served once they are gone.
#[test]
fn silent_tls_handshakes_are_cut_off_and_counted() {
    use std::io::{Read, Write};
    let certs = certs();
    let (_up, gw, tls) = start(
        &certs,
        "server: { timeouts: { header: 3s }, max_connections: 4 }\n",
    );
    let open = || metric(&gw, "portico_downstream_connections");
    assert!(wait_until(Duration::from_secs(10), || open() == 0.0).is_some());
    let mut silent: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(tls).unwrap())
        .collect();
    // One sends half a ClientHello and stops.
    let mut partial = std::net::TcpStream::connect(tls).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    silent.push(partial);
    let held = wait_until(Duration::from_secs(10), || open() == 4.0);
    assert!(held.is_some(), "{}", gw.log());
    let closed = |conn: &mut std::net::TcpStream| {
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    };
    let mut fifth = std::net::TcpStream::connect(tls).unwrap();
    assert!(closed(&mut fifth), "over max_connections: closed at accept");
    for conn in &mut silent {
        assert!(closed(conn), "closed at the header deadline");
    }
    let timed_out = "portico_downstream_timeouts_total{reason=\"tls_handshake\"}";
    assert_eq!(metric(&gw, timed_out), 4.0);
    let r = https_client(&certs, tls)
        .get(format!("https://api.test:{}/x", tls.port()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Certificate rotation as it happens: the new certificate is copied, then its key. The
/// reload waits for the pair to settle instead of refusing it (which logged an ERROR and
/// fired the failed-reload alert), then serves the new certificate.
#[test]
fn a_certificate_copied_before_its_key_is_waited_for() {
    let certs = certs();
    let (_up, gw, tls) = start(&certs, "");
    let url = format!("https://api.test:{}/x", tls.port());
    let failed = || metric(&gw, "portico_config_reloads_total{result=\"failed\"}").max(0.0);
    let before = failed();
    let (cert, key, der) = leaf(&certs.ca, &["api.test"], |_| {});
    std::fs::write(certs.path("api.pem"), cert).unwrap();
    let waiting = wait_until(Duration::from_secs(15), || {
        gw.log().contains("do not match yet")
    });
    assert!(waiting.is_some(), "{}", gw.log());
    std::fs::write(certs.path("api.key"), key).unwrap();
    let renewed = wait_until(Duration::from_secs(15), || {
        let r = https_client(&certs, tls).get(&url).send().unwrap();
        peer_cert(&r) == der
    });
    assert!(renewed.is_some(), "{}", gw.log());
    assert_eq!(failed(), before, "no failed reload");
    assert!(!gw.log().contains("config refused"), "{}", gw.log());
}
