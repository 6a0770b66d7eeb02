//! Every background loop over the active snapshot: DNS re-resolution, health checks, JWKS
//! refresh and readiness. Domain modules expose the state and one step each
//! (`resolve_target`, `health::check`, `RemoteJwks::refresh_if_due`); only these loops
//! hold the snapshot holder.

use crate::policy::cache;
use crate::snapshot::SnapshotHolder;
use crate::upstream::health;
use crate::upstream::resolve::resolve_target;
use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
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
                    let name = Arc::clone(&upstream.name);
                    checks.spawn(async move { health::check(&name, &target, &cfg).await });
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
/// as soon as no request is in flight and none can arrive, instead of waiting out the whole
/// grace period (Pingora still ends it when the grace period is over). A connection still
/// awaiting its first head counts as a request (the guard holds it), so its client is
/// answered.
pub struct Drain {
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The proxy's listeners have stopped accepting (see `Guarded::stopped_accepting`).
    pub stopped_accepting: Arc<AtomicBool>,
    pub holder: SnapshotHolder,
    pub telemetry: Arc<crate::telemetry::Telemetry>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        // Once the listeners have stopped, a connection they accepted last is counted when
        // its task first runs: five looks in a row (100 ms) that find nothing in flight.
        let mut quiet = 0;
        while quiet < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let stopped = self.stopped_accepting.load(Ordering::SeqCst);
            let idle = stopped && self.in_flight.load(Ordering::SeqCst) == 0;
            quiet = if idle { quiet + 1 } else { 0 };
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

/// Pingora's shutdown signals, with `server.drain_delay` before a SIGTERM's drain: `/ready`
/// turns 503 at once while requests and new connections are still served, so load
/// balancers (a Kubernetes Service) stop routing here before the listeners close.
pub struct DrainSignal {
    pub readiness: Readiness,
    pub holder: SnapshotHolder,
}

#[async_trait]
impl ShutdownSignalWatch for DrainSignal {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut upgrade), Ok(mut terminate), Ok(mut interrupt)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot watch shutdown signals");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = upgrade.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            _ = terminate.recv() => {}
        }
        self.readiness.0.store(false, Ordering::Relaxed);
        let delay = self.holder.load().settings.drain_delay;
        if delay.is_zero() {
            return ShutdownSignal::GracefulTerminate;
        }
        tracing::info!(
            ?delay,
            "SIGTERM: /ready is 503; still serving until the drain starts"
        );
        // A second SIGTERM starts the drain now; SIGINT stops at once.
        tokio::select! {
            _ = tokio::time::sleep(delay) => ShutdownSignal::GracefulTerminate,
            _ = terminate.recv() => ShutdownSignal::GracefulTerminate,
            _ = interrupt.recv() => ShutdownSignal::FastShutdown,
        }
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

/// Applies the cache purges other replicas publish on Redis. Pub/sub delivers at most
/// once: a replica that is disconnected when a purge is published misses it (its entries
/// still expire by their TTL).
pub struct PurgeListener {
    pub holder: SnapshotHolder,
    /// This process's id in broadcasts: its own purges were applied already.
    pub origin: u64,
    /// Whether the subscription is live (`/health`).
    pub subscribed: Arc<AtomicBool>,
}

impl PurgeListener {
    /// Receives purges until the connection ends, the Redis link is replaced by a reload,
    /// or shutdown begins (false).
    async fn listen(&self, shutdown: &mut ShutdownWatch) -> bool {
        let snapshot = self.holder.load();
        let Some(link) = snapshot
            .redis
            .clone()
            .filter(|_| !snapshot.caches.is_empty())
        else {
            return pause(shutdown, Duration::from_secs(1)).await;
        };
        drop(snapshot);
        let mut pubsub = match link.subscribe(cache::PURGE_CHANNEL).await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to cache purges");
                return pause(shutdown, Duration::from_secs(1)).await;
            }
        };
        self.subscribed.store(true, Ordering::Relaxed);
        let mut messages = pubsub.on_message();
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.apply(&message.get_payload::<String>().unwrap_or_default()),
                    None => break,
                },
                _ = check.tick() => {
                    let current = self.holder.load().redis.clone();
                    if !current.is_some_and(|c| Arc::ptr_eq(&c, &link)) {
                        break;
                    }
                }
                _ = shutdown.changed() => return false,
            }
        }
        self.subscribed.store(false, Ordering::Relaxed);
        true
    }

    fn apply(&self, payload: &str) {
        let Ok(broadcast) = serde_json::from_str::<cache::Broadcast>(payload) else {
            tracing::warn!("ignored a malformed cache purge from redis");
            return;
        };
        if broadcast.origin == self.origin {
            return;
        }
        match broadcast.purge.apply(&self.holder.load().caches) {
            Ok(purged) => {
                tracing::info!(cache = %broadcast.purge.cache, purged, "cache purge from another replica")
            }
            Err(why) => tracing::warn!(why, "ignored a cache purge from another replica"),
        }
    }
}

#[async_trait]
impl BackgroundService for PurgeListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while self.listen(&mut shutdown).await {}
        self.subscribed.store(false, Ordering::Relaxed);
    }
}
