//! `compression:` and a route's `compression: NAME`: responses compressed with zstd, br or
//! gzip, as the client's `Accept-Encoding` (with q-values) and the server's order choose.
//!
//! The streaming gzip and zstd encoders are Pingora's own (`pingora-core`'s
//! `protocols::http::compression`, zlib-ng and zstd). Its brotli encoder only flushes at the
//! end and never closes the stream (no last meta-block: decoders report truncated data), so
//! brotli goes through [`Brotli`], on the same `brotli` crate. Pingora's ready-made module
//! is not used: it ignores q-values, takes the client's first coding rather than the
//! server's order, has fixed types and a 20-byte minimum, and as a downstream module it
//! would cost every request on every route.
//!
//! The decision is made on the head of each proxied answer, after the cache: a cached
//! entry is stored as the upstream sent it and compressed per client, so one entry serves
//! every `Accept-Encoding` (and `Vary: Accept-Encoding` is added to the client's copy only).

use super::cache::REVALIDATED;
use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::errors::GatewayError;
use crate::units::ByteSize;
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY,
};
use http::{HeaderName, HeaderValue, Method, Version};
use pingora::http::ResponseHeader;
use pingora::protocols::http::compression::{Algorithm, Encode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `compression.NAME`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    /// Codings offered, in the server's order of preference when the client's q-values
    /// tie: `zstd`, `br`, `gzip`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Smaller bodies (by Content-Length) are sent as they are; a body of unknown length is
    /// compressed as it streams.
    #[serde(default = "default_min_size")]
    pub min_size: ByteSize,
    /// Media types compressed: exact (`application/json`) or a whole type (`text/*`).
    #[serde(default = "default_types")]
    pub types: Vec<String>,
    /// Level per coding: gzip 1-9, br 1-11, zstd 1-12.
    #[serde(default)]
    pub level: RawLevels,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLevels {
    /// gzip level, 1-9 (default 5).
    pub gzip: Option<u32>,
    /// brotli level, 1-11 (default 4).
    pub br: Option<u32>,
    /// zstd level, 1-12 (default 3; higher levels take tens of MB or more per response).
    pub zstd: Option<u32>,
}

fn default_algorithms() -> Vec<String> {
    ["zstd", "br", "gzip"].map(String::from).to_vec()
}

fn default_min_size() -> ByteSize {
    ByteSize(1024)
}

fn default_types() -> Vec<String> {
    [
        "application/json",
        "text/*",
        "application/javascript",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

/// A coding offered, with its level.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Coding {
    algorithm: Algorithm,
    level: u32,
}

pub struct Compression {
    pub name: String,
    /// In the server's order of preference.
    codings: Vec<Coding>,
    min_size: u64,
    /// Lower-case `type/subtype`, or `type/` for `type/*`.
    types: Vec<String>,
}

/// What compression knows of one request.
#[derive(Default)]
pub enum State {
    /// Not a compression route, or the client takes no coding offered.
    #[default]
    Off,
    /// The coding the client's `Accept-Encoding` chose.
    Accepts(Algorithm, u32),
    /// The response body is being encoded.
    Encoding(Box<dyn Encode + Send + Sync>),
}

/// The coding names this gateway offers, with their level range and default level.
const CODINGS: [(&str, Algorithm, u32, u32); 3] = [
    ("gzip", Algorithm::Gzip, 9, 5),
    ("br", Algorithm::Brotli, 11, 4),
    // Above 12, zstd's window and tables take tens to hundreds of MB per response.
    ("zstd", Algorithm::Zstd, 12, 3),
];

/// The q-value an `Accept-Encoding` gives `name` (explicitly, else through `*`), or None
/// when it names neither. Malformed items are skipped.
fn quality(accept: &str, name: &str) -> Option<f32> {
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let mut q = Some(1.0);
        for param in parts {
            if let Some((key, value)) = param.split_once('=') {
                if key.trim().eq_ignore_ascii_case("q") {
                    q = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q));
                }
            }
        }
        let Some(q) = q else { continue };
        let is = |n: &str| coding.eq_ignore_ascii_case(n);
        if is(name) || (name == "gzip" && is("x-gzip")) {
            return Some(q);
        }
        if coding == "*" {
            star = Some(q);
        }
    }
    star
}

impl Compression {
    /// The coding to use for a request: the highest q-value among those offered, ties
    /// going to the server's order; None when the client takes none of them.
    fn negotiate(&self, accept: &str) -> Option<Coding> {
        let mut best: Option<(f32, Coding)> = None;
        for coding in &self.codings {
            let q = quality(accept, coding.algorithm.as_str()).unwrap_or(0.0);
            if q > 0.0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, *coding));
            }
        }
        best.map(|(_, c)| c)
    }

    fn compressible_type(&self, resp: &ResponseHeader) -> bool {
        let Some(ct) = resp.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        // gRPC frames its own messages (and compresses them itself); server-sent events
        // must reach the client as each is written, and an encoder holds small writes back.
        !media.starts_with("application/grpc")
            && media != "text/event-stream"
            && self
                .types
                .iter()
                .any(|t| media == *t || (t.ends_with('/') && media.starts_with(t.as_str())))
    }

    /// Whether this answer's body may be compressed at all (for any client): a final,
    /// whole, unencoded body of a listed type, large enough, that allows transformation.
    fn applies(&self, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if matches!(status, 100..=199 | 204 | 206 | 304) {
            return false;
        }
        let h = &resp.headers;
        let encoded = h
            .get(CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let no_transform = h.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("no-transform"))
        });
        let small = content_length(resp).is_some_and(|len| len < self.min_size);
        !encoded
            && !no_transform
            && !small
            && !h.contains_key(CONTENT_RANGE)
            && self.compressible_type(resp)
    }
}

/// A streaming brotli encoder whose last call closes the stream.
struct Brotli {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
}

impl Brotli {
    /// Window of 2^19 bytes, as Pingora's: plenty for API bodies, bounded memory.
    fn new(level: u32) -> Brotli {
        Brotli {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, level, 19)),
            total_in: 0,
            total_out: 0,
        }
    }
}

impl Encode for Brotli {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        use pingora::{ErrorType, OrErr};
        use std::io::Write;
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        writer
            .write_all(input)
            .or_err(ErrorType::InternalError, "while compressing with brotli")?;
        let out = match end {
            true => self
                .writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default(),
            false => std::mem::take(writer.get_mut()),
        };
        self.total_out += out.len();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        (
            "brotli",
            self.total_in,
            self.total_out,
            std::time::Duration::ZERO,
        )
    }
}

/// The encoder for a coding at a level.
fn encoder(algorithm: Algorithm, level: u32) -> Option<Box<dyn Encode + Send + Sync>> {
    match algorithm {
        Algorithm::Brotli => Some(Box::new(Brotli::new(level))),
        other => other.compressor(level),
    }
}

/// The body's length as `Content-Length` gives it.
fn content_length(resp: &ResponseHeader) -> Option<u64> {
    let value = resp.headers.get(CONTENT_LENGTH)?;
    value.to_str().ok()?.trim().parse().ok()
}

/// Adds `Accept-Encoding` to the response's `Vary` unless it is there (or `*`) already.
fn vary_on_accept_encoding(resp: &mut ResponseHeader) -> pingora::Result<()> {
    let listed = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|n| n.trim() == "*" || n.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !listed {
        resp.append_header(VARY, "Accept-Encoding")?;
    }
    Ok(())
}

/// The head of a compressed answer: its coding, no length (it streams), no ranges, and a
/// strong ETag made weak (the bytes differ from the plain representation's).
fn mark_encoded(resp: &mut ResponseHeader, coding: Algorithm) -> pingora::Result<()> {
    resp.insert_header(CONTENT_ENCODING, coding.as_str())?;
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    resp.insert_header(TRANSFER_ENCODING, "chunked")?;
    if let Some(etag) = resp.headers.get(ETAG).cloned() {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                resp.insert_header(ETAG, weak)?;
            }
        } else if !etag.as_bytes().starts_with(b"W/") {
            resp.remove_header(&ETAG);
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Unit for Compression {
    fn kind(&self) -> &'static str {
        "compression"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn stage(&self) -> Stage {
        Stage::Compress
    }

    fn details(&self) -> Value {
        let codings: Vec<Value> = self
            .codings
            .iter()
            .map(|c| serde_json::json!({"coding": c.algorithm.as_str(), "level": c.level}))
            .collect();
        let types: Vec<String> = self
            .types
            .iter()
            .map(|t| match t.strip_suffix('/') {
                Some(whole) => format!("{whole}/*"),
                None => t.clone(),
            })
            .collect();
        serde_json::json!({"codings": codings, "min_size": self.min_size, "types": types})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc::default()
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    /// Chooses the coding now; HEAD requests and HTTP/1.0 clients (no chunked bodies) get
    /// none.
    async fn on_request(
        &self,
        session: &mut pingora::proxy::Session,
        _info: &RequestInfo<'_>,
        state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        let req = session.req_header();
        if req.method == Method::HEAD || req.version == Version::HTTP_10 {
            return Ok(());
        }
        let accept = req.headers.get_all(ACCEPT_ENCODING).iter();
        let accept: Vec<&str> = accept.filter_map(|v| v.to_str().ok()).collect();
        if let Some(coding) = self.negotiate(&accept.join(",")) {
            state.compression = State::Accepts(coding.algorithm, coding.level);
        }
        Ok(())
    }

    fn on_proxied_response(
        &self,
        resp: &mut ResponseHeader,
        state: &mut PolicyState,
    ) -> pingora::Result<()> {
        if !self.applies(resp) {
            state.compression = State::Off;
            return Ok(());
        }
        vary_on_accept_encoding(resp)?;
        // A revalidated entry is sent by Pingora without a last body chunk marked as the
        // end (the response just ends), so an encoder could not close its stream: plain.
        if state.cache.result == Some(REVALIDATED) {
            state.compression = State::Off;
            return Ok(());
        }
        let State::Accepts(algorithm, level) = state.compression else {
            return Ok(());
        };
        state.compression = match encoder(algorithm, level) {
            Some(encoder) => {
                mark_encoded(resp, algorithm)?;
                State::Encoding(encoder)
            }
            None => State::Off,
        };
        Ok(())
    }

    fn on_response_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        state: &mut PolicyState,
    ) -> pingora::Result<()> {
        if let State::Encoding(encoder) = &mut state.compression {
            let input = body.as_deref().unwrap_or_default();
            *body = Some(encoder.encode(input, end)?);
        }
        Ok(())
    }
}

/// Compiles `compression.NAME`.
pub fn compile(cx: &mut CompileCx, name: &str, raw: &RawCompression) -> Option<Compression> {
    let d = &mut *cx.d;
    let at = format!("compression.{name}");
    let errors = d.errors();
    if raw.algorithms.is_empty() {
        d.error(
            &format!("{at}.algorithms"),
            "no coding is offered",
            Some("list at least one of zstd, br, gzip".into()),
        );
    }
    let mut codings = Vec::new();
    for (i, text) in raw.algorithms.iter().enumerate() {
        let found = CODINGS.iter().find(|(n, ..)| text.eq_ignore_ascii_case(n));
        let Some(&(coding, algorithm, max, default)) = found else {
            d.error(
                &format!("{at}.algorithms[{i}]"),
                format!("`{text}` is not a coding Portico offers"),
                Some("use zstd, br or gzip".into()),
            );
            continue;
        };
        if codings.iter().any(|c: &Coding| c.algorithm == algorithm) {
            d.error(
                &format!("{at}.algorithms[{i}]"),
                format!("`{coding}` is listed twice"),
                Some("list each coding once, in order of preference".into()),
            );
            continue;
        }
        let level = match coding {
            "gzip" => raw.level.gzip,
            "br" => raw.level.br,
            _ => raw.level.zstd,
        };
        let level = level.unwrap_or(default);
        if !(1..=max).contains(&level) {
            d.error(
                &format!("{at}.level.{coding}"),
                format!("{coding} level {level} is out of range"),
                Some(format!("use 1 to {max}")),
            );
        }
        codings.push(Coding { algorithm, level });
    }
    let mut types = Vec::new();
    for (i, t) in raw.types.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        let valid = t
            .split_once('/')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && a != "*" && !b.contains('/'));
        if !valid {
            d.error(
                &format!("{at}.types[{i}]"),
                format!("`{t}` is not a media type"),
                Some("write type/subtype (application/json) or type/* (text/*)".into()),
            );
            continue;
        }
        types.push(match t.strip_suffix('*') {
            Some(whole) => whole.to_string(),
            None => t,
        });
    }
    (d.errors() == errors).then(|| Compression {
        name: name.to_string(),
        codings,
        min_size: raw.min_size.0,
        types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(yaml: &str) -> (Option<Compression>, Vec<String>) {
        let raw: RawCompression = serde_yaml::from_str(yaml).unwrap();
        let (policy, items) = crate::policy::with_test_cx(|cx| compile(cx, "c", &raw));
        (policy, items.into_iter().map(|x| x.message).collect())
    }

    fn policy(yaml: &str) -> Compression {
        compiled(yaml).0.expect("compiles")
    }

    fn chosen(p: &Compression, accept: &str) -> Option<&'static str> {
        p.negotiate(accept).map(|c| c.algorithm.as_str())
    }

    #[test]
    fn q_values_choose_and_ties_go_to_the_server_order() {
        let p = policy("{}");
        assert_eq!(chosen(&p, "gzip, br, zstd"), Some("zstd"));
        assert_eq!(chosen(&p, "gzip;q=1, br;q=0.5"), Some("gzip"));
        assert_eq!(chosen(&p, "br;q=0.8, gzip;q=0.8"), Some("br"));
        assert_eq!(chosen(&p, "*"), Some("zstd"));
        assert_eq!(chosen(&p, "*;q=0.5, zstd;q=0"), Some("br"));
        assert_eq!(chosen(&p, "identity"), None);
        assert_eq!(chosen(&p, "gzip;q=0"), None);
        assert_eq!(chosen(&p, "x-gzip"), Some("gzip"));
        assert_eq!(chosen(&p, "deflate, gzip;q=bad"), None);
        assert_eq!(chosen(&p, ""), None);
        let gzip_only = policy("{ algorithms: [gzip] }");
        assert_eq!(chosen(&gzip_only, "br, zstd, gzip;q=0.1"), Some("gzip"));
    }

    fn response(ct: &str, len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header(CONTENT_TYPE, ct).unwrap();
        if let Some(len) = len {
            r.insert_header(CONTENT_LENGTH, len).unwrap();
        }
        r
    }

    /// Each encoder's output, fed in two chunks, decodes whole: the stream is closed.
    #[test]
    fn streams_are_complete() {
        use std::io::Read;
        let text = "portico ".repeat(2000);
        for algorithm in [Algorithm::Gzip, Algorithm::Brotli, Algorithm::Zstd] {
            let mut enc = encoder(algorithm, 3).unwrap();
            let (a, b) = text.as_bytes().split_at(5000);
            let mut out = enc.encode(a, false).unwrap().to_vec();
            out.extend_from_slice(&enc.encode(b, true).unwrap());
            let mut back = String::new();
            match algorithm {
                Algorithm::Gzip => flate2::read::GzDecoder::new(&out[..]).read_to_string(&mut back),
                Algorithm::Brotli => {
                    brotli::Decompressor::new(&out[..], 4096).read_to_string(&mut back)
                }
                _ => zstd::stream::read::Decoder::new(&out[..])
                    .unwrap()
                    .read_to_string(&mut back),
            }
            .unwrap();
            assert_eq!(back, text, "{algorithm:?}");
        }
    }

    #[test]
    fn what_is_left_alone() {
        let p = policy("{ min_size: 100 }");
        assert!(p.applies(&response("application/json; charset=utf-8", Some(100))));
        assert!(
            p.applies(&response("text/html", None)),
            "unknown length streams"
        );
        assert!(!p.applies(&response("application/json", Some(99))));
        assert!(!p.applies(&response("image/png", Some(5000))));
        assert!(!p.applies(&response("application/grpc", None)));
        assert!(
            !p.applies(&response("text/event-stream", None)),
            "events stream as written"
        );
        let mut gz = response("text/plain", None);
        gz.insert_header(CONTENT_ENCODING, "gzip").unwrap();
        assert!(!p.applies(&gz));
        let mut nt = response("text/plain", None);
        nt.insert_header(CACHE_CONTROL, "public, No-Transform")
            .unwrap();
        assert!(!p.applies(&nt));
        let mut partial = response("text/plain", None);
        partial.set_status(206).unwrap();
        assert!(!p.applies(&partial));
    }

    #[test]
    fn a_compressed_head_streams_with_a_weak_etag() {
        let mut r = response("text/plain", Some(5000));
        r.insert_header(ETAG, "\"v1\"").unwrap();
        r.insert_header(VARY, "Origin").unwrap();
        vary_on_accept_encoding(&mut r).unwrap();
        vary_on_accept_encoding(&mut r).unwrap();
        mark_encoded(&mut r, Algorithm::Gzip).unwrap();
        assert_eq!(r.headers["content-encoding"], "gzip");
        assert_eq!(r.headers["etag"], "W/\"v1\"");
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        let vary: Vec<_> = r.headers.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
    }

    #[test]
    fn bad_settings_are_refused() {
        let (_, errors) = compiled("{ level: { zstd: 13 } }");
        assert_eq!(errors, ["zstd level 13 is out of range"]);
        let (policy, errors) =
            compiled("{ algorithms: [gzip, lz4, gzip], level: { gzip: 12 }, types: [json] }");
        assert!(policy.is_none());
        assert_eq!(
            errors,
            [
                "gzip level 12 is out of range",
                "`lz4` is not a coding Portico offers",
                "`gzip` is listed twice",
                "`json` is not a media type",
            ]
        );
    }
}
