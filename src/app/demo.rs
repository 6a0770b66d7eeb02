//! `portico demo`: the gateway plus small sample services (users, messages, or an echo for
//! any other upstream) listening on the loopback targets the config points at.

use crate::snapshot::Snapshot;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

struct SampleService {
    upstream: String,
    addr: String,
}

fn users() -> Value {
    json!([
        {"id": 1, "name": "Ada Lovelace", "role": "admin"},
        {"id": 2, "name": "Alan Turing", "role": "user"},
        {"id": 3, "name": "Grace Hopper", "role": "user"}
    ])
}

fn messages() -> Value {
    json!([
        {"id": 1, "from": 1, "to": 2, "text": "Have you seen the new gateway?"},
        {"id": 2, "from": 2, "to": 1, "text": "It reloads without dropping requests."}
    ])
}

impl SampleService {
    /// The collection a path names (`/users/2` → users item 2), or an echo.
    fn data(&self, path: &str) -> (StatusCode, Value) {
        let collection = match self.upstream.as_str() {
            "users" => users(),
            "messages" => messages(),
            _ => return (StatusCode::OK, json!({"echo": true})),
        };
        let id = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        match id {
            None => (StatusCode::OK, collection),
            Some(id) => collection
                .as_array()
                .and_then(|items| items.iter().find(|item| item["id"] == id))
                .map_or(
                    (StatusCode::NOT_FOUND, json!({"error": "not found"})),
                    |item| (StatusCode::OK, item.clone()),
                ),
        }
    }
}

#[async_trait]
impl ServeHttp for SampleService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut received = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            received += chunk.len();
        }
        let req = session.req_header();
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (status, data) = self.data(req.uri.path());
        let body = json!({
            "served_by": format!("{}@{}", self.upstream, self.addr),
            "request": {
                "method": req.method.as_str(),
                "path": req.uri.to_string(),
                "body_bytes": received,
                "x_request_id": header("x-request-id"),
                "x_forwarded_for": header("x-forwarded-for"),
                "x_forwarded_host": header("x-forwarded-host"),
            },
            "data": data,
        });
        let body = serde_json::to_vec_pretty(&body).unwrap_or_default();
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static parts are valid")
    }
}

/// Adds a sample service on every loopback (or 0.0.0.0) target of the config's upstreams.
pub fn add_sample_services(server: &mut Server, snapshot: &Snapshot) -> Vec<String> {
    let mut started = Vec::new();
    for (name, upstream) in &snapshot.upstreams {
        for target in &upstream.targets {
            let local = target
                .addrs()
                .first()
                .is_some_and(|a| a.ip().is_loopback() || a.ip().is_unspecified());
            if !local {
                continue;
            }
            let app = SampleService {
                upstream: name.clone(),
                addr: target.label.clone(),
            };
            let mut service = Service::new(format!("demo-{name}-{}", target.label), app);
            service.threads = Some(1);
            service.add_tcp(&target.label);
            server.add_service(service);
            started.push(format!("{name} on {}", target.label));
        }
    }
    started
}

/// Says "ready" once the gateway's listener accepts connections (not before, as Pingora
/// binds listeners after the services are built), with addresses a browser can open.
struct Announce {
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// `0.0.0.0:8080` → `localhost:8080`: a wildcard address is not one a browser can open.
fn openable(addr: SocketAddr) -> String {
    match addr.ip().is_unspecified() {
        true => format!("localhost:{}", addr.port()),
        false => addr.to_string(),
    }
}

#[async_trait]
impl BackgroundService for Announce {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let probe = SocketAddr::new(
            match self.proxy.ip().is_unspecified() {
                true => std::net::Ipv4Addr::LOCALHOST.into(),
                false => self.proxy.ip(),
            },
            self.proxy.port(),
        );
        // Bounded: a gateway whose listener never comes up has failed loudly already.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(probe).await.is_ok() {
                let (proxy, admin) = (openable(self.proxy), openable(self.admin));
                tracing::info!(
                    "demo ready: the gateway is at http://{proxy}/ and its routes at \
                     http://{admin}/routes (Ctrl-C stops)"
                );
                return;
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// Adds the "ready" announcement for a gateway listening on `proxy`.
pub fn announce_when_ready(server: &mut Server, snapshot: &Snapshot) {
    if let Some(proxy) = snapshot.settings.proxy_addr {
        let admin = snapshot.settings.admin_addr;
        server.add_service(background_service("demo-ready", Announce { proxy, admin }));
    }
}
