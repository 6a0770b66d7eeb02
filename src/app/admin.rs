//! The admin listener: `/health` (liveness, version, config hash, last reload), `/ready`
//! `/config` (the active config, redacted, and reload status), `/routes`, `/upstreams` and
//! `/metrics` (Prometheus).

use super::reload::Reloader;
use super::services::Readiness;
use crate::snapshot::{Action, Route, Snapshot, SnapshotHolder};
use crate::telemetry::Telemetry;
use crate::VERSION;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    pub holder: SnapshotHolder,
    pub readiness: Readiness,
    pub reloader: Reloader,
    pub telemetry: Arc<Telemetry>,
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
                "redis": snapshot.redis.as_ref().map(|r| json!({"connected": r.is_connected()})),
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
            .routes
            .iter()
            .zip(snapshot.redacted["routes"].as_array().into_iter().flatten())
            .map(|(route, raw)| {
                let action = match &route.action {
                    Action::Proxy(up) => json!({"upstream": &*up.name}),
                    Action::Respond(r) => json!({"respond": r.status}),
                    Action::Aggregate(a) => {
                        let calls: Vec<&str> = a.calls.iter().map(|c| c.name.as_str()).collect();
                        json!({"aggregate": calls})
                    }
                };
                json!({
                    "name": &*route.name,
                    "match": raw["match"],
                    "action": action,
                    "auth": named(route, "auth"),
                    "rate_limit": named(route, "rate_limit"),
                    "cors": named(route, "cors"),
                    "policies": route.policies.iter().map(|p| p.label()).collect::<Vec<_>>(),
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
                (name.clone(), json!({"balance": up.balance.to_string(), "targets": targets}))
            })
            .collect();
        json_response(StatusCode::OK, json!({"upstreams": upstreams}))
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        refresh_gauges(&self.telemetry, &self.holder.load());
        let body = self.telemetry.metrics.render().into_bytes();
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

/// The name of the route's policy of one kind (`auth`), if it has one.
fn named<'a>(route: &'a Route, kind: &str) -> Option<&'a str> {
    route
        .policies
        .iter()
        .find(|p| p.kind() == kind)
        .and_then(|p| p.name())
}

/// Sets the state gauges (target health, breakers, build info) from the active snapshot.
fn refresh_gauges(telemetry: &Telemetry, snapshot: &Snapshot) {
    let m = &telemetry.metrics;
    m.target_healthy.reset();
    m.breaker_state.reset();
    m.build_info.reset();
    m.build_info
        .with_label_values(&[VERSION, snapshot.hash.as_str()])
        .set(1);
    let redis = snapshot.redis.as_ref().is_some_and(|r| r.is_connected());
    m.redis_connected.set(i64::from(redis));
    for (name, upstream) in &snapshot.upstreams {
        for t in &upstream.targets {
            let labels = [name.as_str(), t.label.as_str()];
            m.target_healthy
                .with_label_values(&labels)
                .set(i64::from(t.health.is_healthy()));
            m.breaker_state
                .with_label_values(&labels)
                .set(t.breaker.state() as i64);
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
