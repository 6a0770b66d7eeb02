//! Every connection is a file descriptor, and a process may hold only so many (`ulimit -n`;
//! raised to its hard limit at start). They are split so that no kind of traffic can take
//! another's, nginx-style:
//!
//! - a reserve for what the process holds anyway: listeners, the admin port and its
//!   clients, runtimes, idle pooled upstream connections (a pool is bounded), Redis, logs,
//!   health probes;
//! - client connections: at most `server.max_connections`, and at most half of what the
//!   reserve leaves;
//! - upstream connections held by requests (proxied, or an aggregate's calls, and the
//!   duplicate a route deadline's watchdog holds until the answer's head): the rest.
//!
//! A client connection past its share is closed at accept; a request that needs an
//! upstream connection past that share is answered 503 `gateway_overloaded` at once, so
//! the listeners and the admin port keep working. What one client connection may hold is
//! bounded by its streams (`server.max_streams_per_connection`, one upstream connection
//! each at a time; an aggregate request one per call).

use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Descriptors {
    /// Descriptors for client connections and upstream connections in use.
    budget: usize,
    clients: AtomicUsize,
    upstream: AtomicUsize,
}

/// One held descriptor of a kind, given back when dropped.
pub struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream connection held by a request, for as long as the request lives.
pub struct UpstreamHeld(&'static Descriptors);

impl Drop for UpstreamHeld {
    fn drop(&mut self) {
        self.0.upstream.fetch_sub(1, Ordering::Relaxed);
    }
}

fn take(count: &AtomicUsize, share: usize) -> bool {
    if count.fetch_add(1, Ordering::Relaxed) < share {
        return true;
    }
    count.fetch_sub(1, Ordering::Relaxed);
    false
}

impl Descriptors {
    /// `limit` descriptors for the process, of which `reserve` are kept for the rest. One
    /// per process, for its life: requests hold it without counting references.
    pub fn new(limit: usize, reserve: usize) -> &'static Descriptors {
        // A reserve past half the limit (many threads under a low limit) would leave no
        // client a descriptor: it gets half, and the idle pools must keep to what is left.
        let reserve = reserve.min(limit / 2);
        Box::leak(Box::new(Descriptors {
            budget: limit.saturating_sub(reserve),
            clients: AtomicUsize::new(0),
            upstream: AtomicUsize::new(0),
        }))
    }

    /// The client and upstream shares under `max_connections`.
    pub fn shares(&self, max_connections: usize) -> (usize, usize) {
        let clients = max_connections.min(self.budget / 2);
        (clients, self.budget - clients)
    }

    /// A client connection's descriptor, unless the clients' share is taken.
    pub fn client(&self, max_connections: usize) -> Option<Held<'_>> {
        take(&self.clients, self.shares(max_connections).0).then(|| Held(&self.clients))
    }

    /// An upstream connection's descriptor, unless the upstream share is taken.
    pub fn upstream(&'static self, max_connections: usize) -> Option<UpstreamHeld> {
        take(&self.upstream, self.shares(max_connections).1).then(|| UpstreamHeld(self))
    }
}

/// Raises the process's descriptor limit to its hard limit and returns it (the soft one
/// if it cannot be raised).
pub fn raise_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard.min(usize::MAX as u64) as usize;
    }
    soft.min(usize::MAX as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_and_upstream_connections_have_shares_of_their_own() {
        let d = Descriptors::new(1024, 512);
        assert_eq!(d.shares(100), (100, 412));
        assert_eq!(d.shares(10_000), (256, 256));
        let clients: Vec<_> = (0..100).filter_map(|_| d.client(100)).collect();
        assert!(d.client(100).is_none(), "the 101st client is refused");
        let upstream: Vec<_> = (0..412).filter_map(|_| d.upstream(100)).collect();
        assert!(d.upstream(100).is_none());
        drop(clients);
        assert!(
            d.upstream(100).is_none(),
            "clients' descriptors are not the upstreams'"
        );
        drop(upstream);
        assert!(d.upstream(100).is_some() && d.client(100).is_some());
        // 8 threads' pools under a 1024 limit: the reserve is held to half.
        assert_eq!(Descriptors::new(1024, 1408).shares(10_000), (256, 256));
    }
}
