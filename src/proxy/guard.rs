//! Client connections cannot be held forever. Pingora reads a request head with a timeout
//! per read (a byte every few seconds keeps it alive) and keeps HTTP/1.1 connections open
//! indefinitely between requests. This wraps Pingora's proxy app, which serves a whole
//! connection (every keep-alive request) in one call on one task: the proxy records when a
//! request head has arrived and when the request is done, and while a head is awaited the
//! wrapper holds a deadline — `server.timeouts.header` for the first head, `idle` for each
//! later one (the wait included). At most `server.max_connections` client connections are
//! open at once. Limits come from the live snapshot.

use crate::snapshot::SnapshotHolder;
use crate::telemetry::Telemetry;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the proxy tells the guard of the connection whose task it runs on: whether a
/// request is being served, or since when a head has been awaited. Plain atomics, so a
/// request costs two stores; the guard looks only when its timer fires.
struct Signals {
    epoch: Instant,
    /// `SERVING`, or 1 + the milliseconds (from `epoch`) since which a head is awaited.
    state: AtomicU64,
    /// A request on this connection has been served (so the next head is an idle wait).
    served: AtomicBool,
}

const SERVING: u64 = 0;

tokio::task_local! {
    static SIGNALS: Arc<Signals>;
}

/// Called by the proxy when a request head has been read (on the connection's task).
pub fn head_received() {
    let _ = SIGNALS.try_with(|s| s.state.store(SERVING, Ordering::Relaxed));
}

/// Called by the proxy when a request is done (its log line written).
pub fn request_done() {
    let _ = SIGNALS.try_with(|s| {
        let waited_from = s.epoch.elapsed().as_millis() as u64 + 1;
        s.state.store(waited_from, Ordering::Relaxed);
        s.served.store(true, Ordering::Relaxed);
    });
}

pub struct Guarded<A> {
    inner: Arc<A>,
    holder: SnapshotHolder,
    telemetry: Arc<Telemetry>,
    open: AtomicUsize,
    /// Cleartext HTTP/2 is served (the app looks for its preface too).
    h2c: bool,
}

impl<A> Guarded<A> {
    pub fn new(
        inner: A,
        holder: SnapshotHolder,
        telemetry: Arc<Telemetry>,
        h2c: bool,
    ) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            holder,
            telemetry,
            open: AtomicUsize::new(0),
            h2c,
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection speaks HTTP/2: by ALPN, or by the cleartext preface. HTTP/2 serves
/// its streams on tasks of their own, which the head deadlines cannot see, and has its own
/// settings instead. The preface is awaited for at most `within`.
async fn is_h2(stream: &mut Stream, h2c: bool, within: Duration) -> Option<bool> {
    if stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
        return Some(true);
    }
    if !h2c {
        return Some(false);
    }
    let mut buf = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout(within, stream.try_peek(&mut buf)).await {
        Ok(Ok(true)) => Some(buf == H2_PREFACE),
        Ok(Ok(false)) => Some(false),
        // Nothing (or an error) before the header timeout: closed like a slow head.
        _ => None,
    }
}

/// Uncounts an open connection however its call ends (a timeout drops the call).
struct Open<'a>(&'a AtomicUsize, &'a Telemetry);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        self.1.metrics.connections_open.dec();
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Pingora's HTTP apps serve a whole connection (every keep-alive request) per
        // call, so a call is a connection.
        let settings = &self.holder.load().settings;
        let metrics = &self.telemetry.metrics;
        if self.open.fetch_add(1, Ordering::SeqCst) >= settings.max_connections {
            self.open.fetch_sub(1, Ordering::SeqCst);
            metrics.connections_refused.inc();
            return None;
        }
        metrics.connections_open.inc();
        let _open = Open(&self.open, &self.telemetry);
        let (header, idle) = (settings.header_timeout, settings.idle_timeout);
        if let Some(digest) = stream.get_ssl_digest() {
            let snapshot = self.holder.load();
            if !snapshot
                .tls
                .as_ref()
                .is_some_and(|t| t.allows(&digest.version))
            {
                tracing::debug!(version = %digest.version, "TLS version below min_version refused");
                return None;
            }
        }
        match is_h2(&mut stream, self.h2c, header).await {
            Some(true) => return self.inner.process_new(stream, shutdown).await,
            Some(false) => {}
            None => {
                metrics
                    .connections_timed_out
                    .with_label_values(&["header"])
                    .inc();
                return None;
            }
        }
        let signals = Arc::new(Signals {
            epoch: Instant::now(),
            state: AtomicU64::new(1),
            served: AtomicBool::new(false),
        });
        let work = SIGNALS.scope(signals.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(work);
        // Never sleeps past a due time: a request that ends between two looks has its next
        // head due `idle` later, and the timer looks again within `tick`.
        let tick = header.min(idle);
        let timer = tokio::time::sleep(tick);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = &mut timer => {}
            }
            // A request being served has its own timeouts: look again later.
            let state = signals.state.load(Ordering::Relaxed);
            let served = signals.served.load(Ordering::Relaxed);
            let (limit, reason) = if served {
                (idle, "idle")
            } else {
                (header, "header")
            };
            let now = tokio::time::Instant::now();
            if state == SERVING {
                timer.as_mut().reset(now + tick);
                continue;
            }
            let due = tokio::time::Instant::from_std(signals.epoch)
                + Duration::from_millis(state - 1)
                + limit;
            if now >= due {
                // Dropping the unfinished read closes the connection.
                metrics
                    .connections_timed_out
                    .with_label_values(&[reason])
                    .inc();
                return None;
            }
            timer.as_mut().reset(due);
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
