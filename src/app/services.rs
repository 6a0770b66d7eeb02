//! Every background loop over the active snapshot: DNS re-resolution, health checks, JWKS
//! refresh and readiness. Domain modules expose the state and one step each
//! (`resolve_target`, `health::check`, `RemoteJwks::refresh_if_due`); only these loops
//! hold the snapshot holder.

use crate::snapshot::SnapshotHolder;
use crate::upstream::health;
use crate::upstream::resolve::resolve_target;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits `period`; false when shutdown began instead (the loop then ends).
async fn pause(shutdown: &mut ShutdownWatch, period: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(period) => true,
        _ = shutdown.changed() => false,
    }
}

/// Resolves every DNS target of the active snapshot.
pub async fn resolve_all(holder: &SnapshotHolder) {
    let snapshot = holder.load();
    for upstream in snapshot.upstreams.values() {
        for target in upstream.targets.iter().filter(|t| t.is_dns()) {
            resolve_target(target).await;
        }
    }
}

/// Re-resolves DNS targets every `server.resolve_interval`.
pub struct Resolver {
    pub holder: SnapshotHolder,
}

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            resolve_all(&self.holder).await;
            let every = self
                .holder
                .load()
                .settings
                .resolve_interval
                .max(Duration::from_secs(1));
            if !pause(&mut shutdown, every).await {
                return;
            }
        }
    }
}

/// Probes the targets of every upstream with a health check, each at its interval.
pub struct HealthChecker {
    pub holder: SnapshotHolder,
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_run: HashMap<String, Instant> = HashMap::new();
        loop {
            let snapshot = self.holder.load();
            let mut checks = tokio::task::JoinSet::new();
            for upstream in snapshot.upstreams.values() {
                let Some(cfg) = upstream.health_check.clone() else {
                    continue;
                };
                let due = last_run
                    .get(&*upstream.name)
                    .is_none_or(|t| t.elapsed() >= cfg.interval);
                if !due {
                    continue;
                }
                last_run.insert(upstream.name.to_string(), Instant::now());
                for target in &upstream.targets {
                    let (target, cfg) = (Arc::clone(target), cfg.clone());
                    checks.spawn(async move { health::check(&target, &cfg).await });
                }
            }
            while checks.join_next().await.is_some() {}
            if !pause(&mut shutdown, Duration::from_millis(100)).await {
                return;
            }
        }
    }
}

/// Connects the Redis link at start (so the first limited request is counted like any
/// other instead of passing unchecked), reconnects it when down, and probes it for
/// `/health` and `portico_redis_connected`.
pub struct RedisConnector {
    pub holder: SnapshotHolder,
}

#[async_trait]
impl BackgroundService for RedisConnector {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            if let Some(link) = self.holder.load().redis.clone() {
                link.probe().await;
            }
            if !pause(&mut shutdown, Duration::from_millis(500)).await {
                return;
            }
        }
    }
}

/// Refreshes every remote JWKS of the active snapshot when its interval has passed.
pub struct JwksRefresher {
    pub holder: SnapshotHolder,
}

#[async_trait]
impl BackgroundService for JwksRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let snapshot = self.holder.load();
            for remote in &snapshot.remote_jwks {
                remote.refresh_if_due().await;
            }
            if !pause(&mut shutdown, Duration::from_secs(1)).await {
                return;
            }
        }
    }
}

/// Once shutdown has begun (SIGTERM, or the end of an upgrade's handover), ends the process
/// as soon as no request is in flight, instead of waiting out the whole grace period
/// (Pingora still ends it when the grace period is over).
pub struct Drain {
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    pub holder: SnapshotHolder,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("drained: no request in flight");
        super::finish(&self.telemetry, &self.holder);
        std::process::exit(0);
    }
}

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
