//! A real HTTP/1.1 upstream (hyper) that records what it receives and answers with JSON.
//! Query parameters steer it: `sleep_ms=N`, `status=N`, `download=BYTES`, `h_NAME=VALUE`
//! (a response header, percent-decoded) and `etag=TAG` (sets `ETag: "TAG"` and answers a
//! matching `If-None-Match` with 304). Like the Gateway API conformance suite's echo
//! server, a request header `X-Echo-Set-Header: Name:value,Name2:value2` adds response
//! headers too.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body_len: u64,
}

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// What `GET /health` answers (200 unless set).
    pub health: Arc<AtomicU16>,
    /// Fixed bodies served at given paths (e.g. a JWKS document).
    pub files: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestUpstream {
    pub fn start(name: &str) -> TestUpstream {
        TestUpstream::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts on a given address (e.g. to bring a stopped upstream back on its port).
    pub fn start_on(name: &str, addr: SocketAddr) -> TestUpstream {
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(AtomicU16::new(200));
        let health_c = health.clone();
        let files = Arc::new(Mutex::new(BTreeMap::new()));
        let files_c = files.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (name_c, seen_c) = (Arc::<str>::from(name), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (name, seen, health, files) = (name_c.clone(), seen_c.clone(), health_c.clone(), files_c.clone());
                            tokio::spawn(async move {
                                let svc = service_fn(move |req| {
                                    let served = files.lock().unwrap().get(req.uri().path()).cloned();
                                    handle(name.clone(), seen.clone(), health.clone(), served, req)
                                });
                                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                            });
                        }
                    }
                }
            });
        });
        TestUpstream {
            addr,
            name: name.to_string(),
            seen,
            health,
            files,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn serve(&self, path: &str, body: &str) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), body.to_string());
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::Relaxed);
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Reply = Response<http_body_util::combinators::BoxBody<Bytes, Infallible>>;

fn query(uri: &hyper::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn handle(
    name: Arc<str>,
    seen: Arc<Mutex<Vec<Seen>>>,
    health: Arc<AtomicU16>,
    served: Option<String>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    if let Some(body) = served {
        // Counted like any request, so a test can tell how often a document was fetched.
        seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: BTreeMap::new(),
            body_len: 0,
        });
        let reply = Response::builder().header("content-type", "application/json");
        return Ok(reply.body(Full::new(Bytes::from(body)).boxed()).unwrap());
    }
    if req.uri().path() == "/health" {
        let status = health.load(Ordering::Relaxed);
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    let q = query(req.uri());
    let mut extra: Vec<(String, String)> = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("h_")?.to_string(), decode(v))))
        .collect();
    let echo = req
        .headers()
        .get("x-echo-set-header")
        .and_then(|v| v.to_str().ok());
    for pair in echo.into_iter().flat_map(|v| v.split(',')) {
        if let Some((name, value)) = pair.split_once(':') {
            extra.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let etag = q.get("etag").map(|t| format!("\"{t}\""));
    let not_modified = etag.is_some()
        && req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            == etag.as_deref();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.to_string())
            .or_default()
            .push(v.to_str().unwrap_or("?").to_string());
    }
    let (method, uri) = (req.method().to_string(), req.uri().to_string());
    let mut body = req.into_body();
    let (mut len, mut hasher) = (0u64, Sha256::new());
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            hasher.update(&data);
        }
    }
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        uri: uri.clone(),
        headers: headers.clone(),
        body_len: len,
    });
    if let (Some(key), Some(n)) = (
        q.get("rendezvous"),
        q.get("of").and_then(|n| n.parse().ok()),
    ) {
        rendezvous(key, n).await;
    }
    if let Some(ms) = q.get("sleep_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut reply = Response::builder();
    for (name, value) in &extra {
        reply = reply.header(name.as_str(), value.as_str());
    }
    if let Some(etag) = &etag {
        reply = reply.header("etag", etag.as_str());
    }
    if not_modified {
        return Ok(reply
            .status(304)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    if let Some(n) = q.get("download").and_then(|v| v.parse().ok()) {
        let body = Pattern { left: n };
        return Ok(reply
            .header("content-type", "application/octet-stream")
            .header("content-length", n)
            .body(body.boxed())
            .unwrap());
    }
    let status: u16 = q.get("status").and_then(|v| v.parse().ok()).unwrap_or(200);
    let answer = serde_json::json!({
        "server": &*name,
        "method": method,
        "uri": uri,
        "headers": headers,
        "body_len": len,
        "body_sha256": hex::encode(hasher.finalize()),
    });
    Ok(reply
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", &*name)
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(answer.to_string())).boxed())
        .unwrap())
}

fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v)
        .decode_utf8_lossy()
        .into_owned()
}

/// Waits until `n` requests (to any test upstream of this process) named `key`, or 5 s.
/// Requests made one after another cannot all be waiting at once: proof of parallelism
/// without a timing assertion.
async fn rendezvous(key: &str, n: usize) {
    static ARRIVED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    *ARRIVED.lock().unwrap().entry(key.to_string()).or_default() += 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ARRIVED.lock().unwrap()[key] < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The download body: `left` bytes in 64 KiB chunks; byte `o` is `pattern_byte(o)`.
pub struct Pattern {
    pub left: u64,
}

pub fn pattern_byte(offset: u64) -> u8 {
    ((offset % CHUNK) % 251) as u8
}

const CHUNK: u64 = 64 * 1024;

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK);
        let chunk: Vec<u8> = (0..n).map(pattern_byte).collect();
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }
}
