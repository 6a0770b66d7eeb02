//! DNS for targets written as names (e.g. Kubernetes services): resolved at startup and
//! re-resolved periodically, off the request path (the loop runs in `app`).

use super::Target;

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
