//! Client connections cannot be held forever. Pingora reads a request head with a timeout
//! per read (a byte every few seconds keeps it alive) and keeps HTTP/1.1 connections open
//! indefinitely between requests. This wraps Pingora's proxy app, which serves a whole
//! connection (every keep-alive request) in one call on one task: the proxy signals when a
//! request head has arrived and when the request is done, and between those signals the
//! wrapper holds a deadline — `server.timeouts.header` for the first head, `idle` for each
//! later one (the wait included). At most `server.max_connections` client connections are
//! open at once. Limits come from the live snapshot.

use crate::snapshot::SnapshotHolder;
use crate::telemetry::Telemetry;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, UniqueIDType};
use pingora::server::ShutdownWatch;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What the proxy tells the guard of the connection whose task it runs on.
#[derive(Default)]
struct Signals {
    head: Notify,
    done: Notify,
}

tokio::task_local! {
    static SIGNALS: Arc<Signals>;
}

/// Called by the proxy when a request head has been read (on the connection's task).
pub fn head_received() {
    let _ = SIGNALS.try_with(|s| s.head.notify_one());
}

/// Called by the proxy when a request is done (its log line written).
pub fn request_done() {
    let _ = SIGNALS.try_with(|s| s.done.notify_one());
}

pub struct Guarded<A> {
    inner: Arc<A>,
    holder: SnapshotHolder,
    telemetry: Arc<Telemetry>,
    open: AtomicUsize,
    /// Connections handed back for another call (Pingora does so for some protocols):
    /// already counted, and their next head may first wait `idle`.
    kept_alive: Mutex<HashSet<UniqueIDType>>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, holder: SnapshotHolder, telemetry: Arc<Telemetry>) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            holder,
            telemetry,
            open: AtomicUsize::new(0),
            kept_alive: Mutex::new(HashSet::new()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashSet<UniqueIDType>> {
        self.kept_alive.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Uncounts an open connection when it ends (not when it is handed back for reuse).
struct Open<'a> {
    count: &'a AtomicUsize,
    telemetry: &'a Telemetry,
    ends: bool,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.ends {
            self.count.fetch_sub(1, Ordering::SeqCst);
            self.telemetry.metrics.connections_open.dec();
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let id = stream.id();
        let reused = self.kept().remove(&id);
        let settings = &self.holder.load().settings;
        let metrics = &self.telemetry.metrics;
        if !reused {
            if self.open.fetch_add(1, Ordering::SeqCst) >= settings.max_connections {
                self.open.fetch_sub(1, Ordering::SeqCst);
                metrics.connections_refused.inc();
                return None;
            }
            metrics.connections_open.inc();
        }
        let mut open = Open {
            count: &self.open,
            telemetry: &self.telemetry,
            ends: true,
        };
        let (header, idle) = (settings.header_timeout, settings.idle_timeout);
        let mut deadline = if reused {
            (idle, "idle")
        } else {
            (header, "header")
        };
        let signals = Arc::new(Signals::default());
        let work = SIGNALS.scope(signals.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(work);
        let reusable = loop {
            tokio::select! {
                done = &mut work => break done,
                _ = signals.head.notified() => {}
                _ = tokio::time::sleep(deadline.0) => {
                    // Dropping the unfinished read closes the connection.
                    metrics.connections_timed_out.with_label_values(&[deadline.1]).inc();
                    return None;
                }
            }
            // A request is being served: its own timeouts apply until it is done.
            tokio::select! {
                done = &mut work => break done,
                _ = signals.done.notified() => {}
            }
            deadline = (idle, "idle");
        };
        if let Some(stream) = &reusable {
            self.kept().insert(stream.id());
            open.ends = false;
        }
        reusable
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
