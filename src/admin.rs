//! The admin listener: `/health` (liveness, version, config hash, last reload), `/ready`
//! `/config` (the active config, redacted, and reload status), `/routes`, `/upstreams` and
//! `/metrics` (Prometheus).

use crate::reload::Reloader;
use crate::router::Action;
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

    /// The active config (credentials in URLs redacted), its hash and the reload status.
    fn config(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        json_response(
            StatusCode::OK,
            json!({
                "config_hash": snapshot.hash,
                "config_path": snapshot.path.display().to_string(),
                "last_reload": self.reloader.status(),
                "config": snapshot.redacted,
            }),
        )
    }

    /// The compiled route table, in match order.
    fn routes(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        let routes: Vec<serde_json::Value> = snapshot
            .router
            .routes()
            .iter()
            .zip(snapshot.redacted["routes"].as_array().into_iter().flatten())
            .map(|(route, raw)| {
                let action = match &route.action {
                    Action::Proxy(up) => json!({"upstream": &*up.name}),
                    Action::Respond(r) => json!({"respond": r.status}),
                };
                json!({
                    "name": &*route.name,
                    "match": raw["match"],
                    "action": action,
                    "auth": route.auth.as_ref().map(|a| &*a.name),
                    "rate_limit": route.rate_limit.as_ref().map(|r| &*r.name),
                    "cors": route.cors.as_ref().map(|c| c.name.as_str()),
                    "timeout_ms": route.timeout.map(|t| t.as_millis() as u64),
                    "max_body": route.max_body,
                })
            })
            .collect();
        json_response(
            StatusCode::OK,
            json!({"config_hash": snapshot.hash, "routes": routes}),
        )
    }

    /// Upstream targets with their addresses, health, breaker state and load.
    fn upstreams(&self) -> Response<Vec<u8>> {
        let snapshot = self.holder.load();
        let upstreams: serde_json::Map<String, serde_json::Value> = snapshot
            .upstreams
            .iter()
            .map(|(name, up)| {
                let targets: Vec<serde_json::Value> = up
                    .targets
                    .iter()
                    .map(|t| {
                        json!({
                            "target": t.label,
                            "addresses": t.addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
                            "healthy": t.health.is_healthy(),
                            "breaker": t.breaker.state().as_str(),
                            "in_flight": t.in_flight(),
                        })
                    })
                    .collect();
                (name.clone(), json!({"balance": format!("{:?}", up.balance), "targets": targets}))
            })
            .collect();
        json_response(StatusCode::OK, json!({"upstreams": upstreams}))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let body = crate::telemetry::render(&self.holder.load()).into_bytes();
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static parts are valid")
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
            "/routes" => self.routes(),
            "/upstreams" => self.upstreams(),
            "/metrics" => self.metrics(),
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"error": {"status": 404, "code": "not_found", "message": "admin endpoints: /health, /ready, /config, /routes, /upstreams, /metrics"}}),
            ),
        }
    }
}
