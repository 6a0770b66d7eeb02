//! Response compression through the real gateway: curl `--compressed`, and a Rust client
//! decoding gzip, br and zstd itself; q-values, `Vary`, ETags, answers left alone, the
//! upstream's own encoding passed through, and one cached entry served compressed to one
//! client and plain to another.

mod common;
use common::*;
use reqwest::blocking::Response;
use std::io::Read;

/// A JSON document of about 17.7 KB, as the load benchmark serves.
fn document() -> String {
    let items: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"id":{i},"name":"item {i}","tags":["a","b","c"],"price":{}.5,"in_stock":true}}"#, i * 3))
        .collect();
    format!(r#"{{"items":[{}]}}"#, items.join(","))
}

struct Setup {
    up: TestUpstream,
    gw: Gateway,
}

fn setup() -> Setup {
    let up = TestUpstream::start("svc");
    up.serve("/z/doc", &document());
    up.serve("/c/doc", &document());
    up.serve("/plain/doc", &document());
    up.serve("/g/doc", &document());
    let gw = Gateway::start(&format!(
        r#"upstreams:
  svc: {{ targets: ["{}"] }}
compression:
  web: {{ min_size: 512 }}
  gzip_only: {{ algorithms: [gzip], level: {{ gzip: 6 }} }}
caches:
  api: {{ max_size: 8MiB, ttl: 60s }}
routes:
  - {{ name: z, match: {{ path_prefix: /z/ }}, upstream: svc, compression: web }}
  - {{ name: g, match: {{ path_prefix: /g/ }}, upstream: svc, compression: gzip_only }}
  - {{ name: c, match: {{ path_prefix: /c/ }}, upstream: svc, compression: web, cache: api }}
  - {{ name: plain, match: {{ path_prefix: / }}, upstream: svc }}
"#,
        up.addr
    ));
    Setup { up, gw }
}

fn get(gw: &Gateway, path: &str, accept: Option<&str>) -> Response {
    let mut req = client().get(gw.url(path));
    if let Some(a) = accept {
        req = req.header("accept-encoding", a);
    }
    req.send().unwrap()
}

fn header(r: &Response, name: &str) -> Option<String> {
    let all: Vec<&str> = r
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

fn decode(coding: &str, bytes: &[u8]) -> String {
    let mut out = String::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut out)
            .unwrap(),
        "br" => brotli::Decompressor::new(bytes, 4096)
            .read_to_string(&mut out)
            .unwrap(),
        "zstd" => zstd::stream::read::Decoder::new(bytes)
            .unwrap()
            .read_to_string(&mut out)
            .unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    out
}

#[test]
fn each_coding_decodes_to_the_upstream_body() {
    let s = setup();
    for coding in ["gzip", "br", "zstd"] {
        let r = get(&s.gw, "/z/doc", Some(coding));
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-encoding").as_deref(), Some(coding));
        assert_eq!(header(&r, "vary").as_deref(), Some("Accept-Encoding"));
        assert_eq!(header(&r, "content-length"), None, "{coding} streams");
        let bytes = r.bytes().unwrap();
        assert!(
            bytes.len() < document().len() / 3,
            "{coding}: {} bytes",
            bytes.len()
        );
        assert_eq!(decode(coding, &bytes), document(), "{coding}");
    }
}

#[test]
fn curl_compressed_gets_the_servers_first_choice() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--compressed", "-D"])
        .arg(&headers)
        .arg(s.gw.url("/z/doc"))
        .output()
        .expect("curl is installed by `make deps`");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), document());
    let head = std::fs::read_to_string(headers)
        .unwrap()
        .to_ascii_lowercase();
    // curl offers deflate, gzip, br and zstd with equal weight: the server's order decides.
    assert!(head.contains("content-encoding: zstd\r\n"), "{head}");
}

#[test]
fn q_values_and_identity() {
    let s = setup();
    let coding = |accept: &str| header(&get(&s.gw, "/z/doc", Some(accept)), "content-encoding");
    assert_eq!(
        coding("gzip;q=1, br;q=0.5, zstd;q=0.2").as_deref(),
        Some("gzip")
    );
    assert_eq!(coding("br;q=0.5, gzip;q=0.5").as_deref(), Some("br"));
    assert_eq!(coding("*;q=0.3, zstd;q=0").as_deref(), Some("br"));
    assert_eq!(coding("gzip;q=0, identity"), None);
    // Nothing acceptable but identity refused: the plain body, not a 406 (RFC 9110
    // §12.5.3 allows either; a gateway must not turn a good answer into an error).
    let r = get(&s.gw, "/z/doc", Some("identity;q=0, deflate"));
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), None);
    assert_eq!(header(&r, "vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(r.text().unwrap(), document());
    // No Accept-Encoding: any coding would do, and plain is the safe one.
    assert_eq!(
        header(&get(&s.gw, "/z/doc", None), "content-encoding"),
        None
    );
    // A policy offering gzip only.
    let g = get(&s.gw, "/g/doc", Some("br, zstd, gzip;q=0.1"));
    assert_eq!(header(&g, "content-encoding").as_deref(), Some("gzip"));
}

#[test]
fn answers_left_alone() {
    let s = setup();
    let r = |path: &str| get(&s.gw, path, Some("gzip"));
    // The echo answer holds the request's URI: a long query makes it large enough.
    let pad = "p".repeat(1200);
    // The upstream's own gzip goes through as sent: never compressed twice.
    let own = r(&format!("/z/echo?h_content-encoding=gzip&pad={pad}"));
    assert_eq!(header(&own, "content-encoding").as_deref(), Some("gzip"));
    let body: serde_json::Value = serde_json::from_slice(&own.bytes().unwrap()).unwrap();
    assert_eq!(body["server"], "svc", "the upstream's bytes, untouched");
    let large = r(&format!("/z/echo?pad={pad}"));
    assert_eq!(header(&large, "content-encoding").as_deref(), Some("gzip"));
    // Too small by Content-Length; no-transform; a HEAD request.
    assert_eq!(header(&r("/z/echo"), "content-encoding"), None);
    let no_transform = r(&format!("/z/echo?h_cache-control=no-transform&pad={pad}"));
    assert_eq!(header(&no_transform, "content-encoding"), None);
    let head = client()
        .head(s.gw.url("/z/doc"))
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-encoding"), None);
    // A route without compression.
    let plain = r("/plain/doc");
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(header(&plain, "vary"), None);
    assert_eq!(plain.text().unwrap(), document());
}

#[test]
fn a_strong_etag_is_weakened_when_compressed() {
    let s = setup();
    let pad = "p".repeat(1200);
    let r = get(
        &s.gw,
        &format!("/z/echo?etag=v1&h_x-pad={pad}"),
        Some("gzip"),
    );
    assert_eq!(header(&r, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(header(&r, "etag").as_deref(), Some("W/\"v1\""));
    let plain = get(&s.gw, &format!("/z/echo?etag=v1&h_x-pad={pad}"), None);
    assert_eq!(header(&plain, "etag").as_deref(), Some("\"v1\""));
}

/// The cache stores the upstream's plain answer; each client gets it in its own coding.
#[test]
fn one_cached_entry_serves_compressed_and_plain_clients() {
    let s = setup();
    let first = get(&s.gw, "/c/doc", Some("gzip"));
    assert_eq!(header(&first, "x-cache").as_deref(), Some("MISS"));
    assert_eq!(header(&first, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(decode("gzip", &first.bytes().unwrap()), document());
    let plain = get(&s.gw, "/c/doc", None);
    assert_eq!(header(&plain, "x-cache").as_deref(), Some("HIT"));
    assert_eq!(header(&plain, "content-encoding"), None);
    assert_eq!(plain.text().unwrap(), document());
    let br = get(&s.gw, "/c/doc", Some("br"));
    assert_eq!(header(&br, "x-cache").as_deref(), Some("HIT"));
    assert_eq!(header(&br, "content-encoding").as_deref(), Some("br"));
    assert_eq!(header(&br, "vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(decode("br", &br.bytes().unwrap()), document());
    let fetched = s.up.seen().iter().filter(|x| x.uri == "/c/doc").count();
    assert_eq!(fetched, 1, "one upstream fetch served all three");
}

/// A stored entry the upstream confirms (304) is sent by Pingora without a body chunk
/// marked last, so no encoder could close its stream: it goes out plain and whole.
#[test]
fn a_revalidated_entry_is_sent_plain_and_whole() {
    let s = setup();
    let pad = "p".repeat(1200);
    let path = format!("/c/echo?h_cache-control=no-cache&etag=v1&pad={pad}");
    let first = get(&s.gw, &path, Some("gzip"));
    assert_eq!(header(&first, "x-cache").as_deref(), Some("MISS"));
    assert_eq!(header(&first, "content-encoding").as_deref(), Some("gzip"));
    let stored = decode("gzip", &first.bytes().unwrap());
    let again = get(&s.gw, &path, Some("gzip"));
    assert_eq!(header(&again, "x-cache").as_deref(), Some("REVALIDATED"));
    assert_eq!(header(&again, "content-encoding"), None);
    assert_eq!(again.text().unwrap(), stored);
}
