//! DNS for targets written as names (e.g. Kubernetes services): resolved at startup and
//! re-resolved periodically, off the request path.

use super::Target;
use crate::snapshot::SnapshotHolder;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

/// Resolves one target; keeps the old addresses when the lookup fails.
pub async fn resolve_target(target: &Target) {
    match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
        Ok(addrs) => {
            let mut addrs: Vec<_> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                tracing::warn!(target = %target.label, "DNS returned no addresses");
            } else if *target.addrs() != addrs {
                tracing::info!(target = %target.label, ?addrs, "resolved");
                target.set_addrs(addrs);
            }
        }
        Err(e) => tracing::warn!(target = %target.label, error = %e, "DNS lookup failed"),
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
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
