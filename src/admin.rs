//! The admin listener: `/health` (liveness, version, config hash, last reload), `/ready`
//! and `/config` (the active config's identity and reload status).

use crate::reload::Reloader;
use crate::snapshot::SnapshotHolder;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// False once shutdown starts, so load balancers stop sending new work while we drain.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Marks the gateway ready when services start and unready when shutdown begins.
#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.0.store(true, Ordering::Relaxed);
        let _ = shutdown.changed().await;
        self.0.store(false, Ordering::Relaxed);
        tracing::info!("shutdown started: draining in-flight requests");
    }
}

pub struct Admin {
    pub holder: SnapshotHolder,
    pub readiness: Readiness,
    pub reloader: Reloader,
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static parts are valid")
}

impl Admin {
    fn health(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        json_response(
            StatusCode::OK,
            json!({
                "status": "ok",
                "version": VERSION,
                "config_hash": snapshot.hash,
                "config_path": snapshot.path.display().to_string(),
                "last_reload": self.reloader.status(),
            }),
        )
    }

    fn config(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        let routes: Vec<&str> = snapshot.router.routes().iter().map(|r| &*r.name).collect();
        json_response(
            StatusCode::OK,
            json!({
                "config_hash": snapshot.hash,
                "config_path": snapshot.path.display().to_string(),
                "routes": routes,
                "upstreams": snapshot.upstreams.keys().collect::<Vec<_>>(),
                "last_reload": self.reloader.status(),
            }),
        )
    }

    fn ready(&self) -> Response<Vec<u8>> {
        if self.readiness.is_ready() {
            json_response(StatusCode::OK, json!({"ready": true}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"ready": false, "reason": "draining"}),
            )
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": {"status": 405, "code": "method_not_allowed", "message": "the admin API is read-only: use GET"}}),
            );
        }
        match req.uri.path() {
            "/health" => self.health(),
            "/ready" => self.ready(),
            "/config" => self.config(),
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {"status": 404, "code": "not_found", "message": "admin endpoints: /health, /ready, /config"}}),
            ),
        }
    }
}
