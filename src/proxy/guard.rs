//! Client connections cannot be held forever. Pingora reads a request head with a timeout
//! per read (a byte every few seconds keeps it alive) and keeps HTTP/1.1 connections open
//! indefinitely between requests. This wraps Pingora's proxy app, which serves a whole
//! connection (every keep-alive request) in one call on one task: the proxy records when a
//! request head has arrived and when the request is done, and while a head is awaited the
//! wrapper holds a deadline — `server.timeouts.header` for the first head, `idle` for each
//! later one (the wait included). At most `server.max_connections` client connections are
//! open at once (fewer when descriptors are short: see `descriptors`). Limits come from the
//! live snapshot. A new connection is handed to Pingora once its first bytes are there, and
//! counts as in flight until its first head is read, so shutdown never drops a client that
//! connected just before it.

use crate::descriptors::{Descriptors, Held};
use crate::snapshot::SnapshotHolder;
use crate::telemetry::Telemetry;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::SocketDigest;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
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
    /// Request heads read on this connection.
    requests: AtomicUsize,
    /// The connection holds one count of `in_flight` until its first head has arrived, so
    /// a shutdown's drain waits for a client that has connected but not yet sent.
    awaiting_first: AtomicBool,
    in_flight: Arc<AtomicUsize>,
}

impl Signals {
    fn first_head_done(&self) {
        if self.awaiting_first.swap(false, Ordering::SeqCst) {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Releases a connection's count if it ends (or turns HTTP/2) before a first head.
struct FirstHead(Arc<Signals>);

impl Drop for FirstHead {
    fn drop(&mut self) {
        self.0.first_head_done();
    }
}

const SERVING: u64 = 0;

tokio::task_local! {
    static SIGNALS: Arc<Signals>;
}

/// Called by the proxy when a request head has been read (on the connection's task), after
/// the request is counted in flight. Returns how many heads this HTTP/1.1 connection has
/// read, this one included (0 for an HTTP/2 stream: see [`h2_stream`]).
pub fn head_received() -> usize {
    SIGNALS
        .try_with(|s| {
            s.state.store(SERVING, Ordering::Relaxed);
            s.first_head_done();
            s.requests.fetch_add(1, Ordering::Relaxed) + 1
        })
        .unwrap_or(0)
}

/// An HTTP/2 connection being served: the streams it has opened, and how to tell it to
/// take no more (a GOAWAY, as at shutdown; open streams finish).
struct H2Conn {
    streams: AtomicUsize,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A TCP connection by its two ends: unique among open connections. (Its streams run on
/// tasks of their own, which carry no task-local: they find it here.)
type ConnKey = (SocketAddr, SocketAddr);

fn h2_conns() -> &'static Mutex<HashMap<ConnKey, Arc<H2Conn>>> {
    static CONNS: OnceLock<Mutex<HashMap<ConnKey, Arc<H2Conn>>>> = OnceLock::new();
    CONNS.get_or_init(Mutex::default)
}

fn conn_key(digest: &SocketDigest) -> Option<ConnKey> {
    let peer = digest.peer_addr()?.as_inet()?;
    let local = digest.local_addr()?.as_inet()?;
    Some((*peer, *local))
}

/// Called by the proxy for each HTTP/2 stream: counts it on its connection, and past
/// `max` streams tells the connection to take no more.
pub fn h2_stream(digest: Option<&SocketDigest>, max: usize) {
    let Some(key) = digest.and_then(conn_key) else {
        return;
    };
    let conn = h2_conns()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    if let Some(conn) = conn {
        if conn.streams.fetch_add(1, Ordering::Relaxed) + 1 >= max {
            let _ = conn.stop.send(true);
        }
    }
}

/// Forgets a connection's entry however its call ends (only its own: a new connection
/// from the same address may have taken the key).
struct Registered(ConnKey, Arc<H2Conn>);

impl Drop for Registered {
    fn drop(&mut self) {
        let mut conns = h2_conns().lock().unwrap_or_else(|e| e.into_inner());
        if conns.get(&self.0).is_some_and(|c| Arc::ptr_eq(c, &self.1)) {
            conns.remove(&self.0);
        }
    }
}

/// Called by the proxy when a request is done (its log line written).
pub fn request_done(ended: Instant) {
    let _ = SIGNALS.try_with(|s| {
        let waited_from = ended.saturating_duration_since(s.epoch).as_millis() as u64 + 1;
        s.state.store(waited_from, Ordering::Relaxed);
        s.served.store(true, Ordering::Relaxed);
    });
}

/// The TLS listener's address, and how its connections' handshakes are made.
pub struct TlsListener {
    pub addr: SocketAddr,
    pub acceptor: Acceptor,
}

impl TlsListener {
    /// Whether a connection accepted at `local` came in on this listener (one on every
    /// address, `0.0.0.0:8443`, is told by its port).
    fn accepted(&self, local: &SocketAddr) -> bool {
        local.port() == self.addr.port()
            && (self.addr.ip().is_unspecified() || local.ip() == self.addr.ip())
    }
}

pub struct Guarded<A> {
    inner: Arc<A>,
    tls: Option<TlsListener>,
    holder: SnapshotHolder,
    telemetry: Arc<Telemetry>,
    /// Client connections hold a descriptor each, from their share.
    descriptors: &'static Descriptors,
    /// Cleartext HTTP/2 is served (the app looks for its preface too).
    h2c: bool,
    /// Requests in flight, which a shutdown's drain waits for (see `Signals`).
    in_flight: Arc<AtomicUsize>,
    /// Set once every listener has stopped accepting (see [`Guarded::stopped_accepting`]).
    stopped_accepting: Arc<AtomicBool>,
}

impl<A> Guarded<A> {
    pub fn new(
        inner: A,
        holder: SnapshotHolder,
        telemetry: Arc<Telemetry>,
        h2c: bool,
        in_flight: Arc<AtomicUsize>,
        tls: Option<TlsListener>,
        descriptors: &'static Descriptors,
    ) -> Guarded<A> {
        Guarded {
            inner: Arc::new(inner),
            tls,
            holder,
            telemetry,
            descriptors,
            h2c,
            in_flight,
            stopped_accepting: Arc::default(),
        }
    }

    /// True once no listener accepts: a connection is counted in flight only when its task
    /// first runs, just after its accept, so a drain that finds nothing in flight before
    /// the listeners have stopped could end the process under a client just accepted.
    pub fn stopped_accepting(&self) -> Arc<AtomicBool> {
        self.stopped_accepting.clone()
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits for a new connection's first bytes (at most `within`), then tells whether it
/// speaks HTTP/2: by ALPN, or by the cleartext preface. HTTP/2 serves its streams on tasks
/// of their own, which the head deadlines cannot see, and has its own settings instead.
/// Waiting first matters at shutdown: Pingora drops a connection still waiting for its
/// first head when shutdown begins, so a client that connected just before would lose its
/// request; once bytes are there, its head is read before shutdown is looked at.
async fn first_bytes(stream: &mut Stream, h2c: bool, within: Duration) -> Option<bool> {
    if stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2) {
        return Some(true);
    }
    // Pingora's peek reads exactly as many bytes as asked for, then puts them back.
    let mut first = [0u8; 1];
    match tokio::time::timeout(within, stream.try_peek(&mut first)).await {
        // Nothing before the header timeout: closed like a slow head.
        Err(_) => return None,
        // Closed by the client, or a stream that cannot peek: Pingora sees it as it is.
        Ok(Err(_) | Ok(false)) => return Some(false),
        Ok(Ok(true)) => {}
    }
    if !h2c {
        return Some(false);
    }
    let mut preface = [0u8; H2_PREFACE.len()];
    match tokio::time::timeout(within, stream.try_peek(&mut preface)).await {
        Ok(Ok(true)) => Some(preface == H2_PREFACE),
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

/// The connection's work, or None once `timer` fires. The timer is polled only to register
/// it and once it has fired, not on every wakeup of the connection's task: polling it each
/// time (as `select!` does) cost about 1,000 instructions per request.
async fn work_or_timer<F: Future>(
    mut work: Pin<&mut F>,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Option<F::Output> {
    let mut registered: Option<Waker> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(done) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        let current = registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if current && !timer.is_elapsed() {
            return Poll::Pending;
        }
        registered = Some(cx.waker().clone());
        // Outside the task's budget: a spent budget would return Pending before the timer
        // is registered, and it would then never be polled again.
        let timer = tokio::task::coop::unconstrained(timer.as_mut());
        std::pin::pin!(timer).poll(cx).map(|()| None)
    })
    .await
}

/// Uncounts an open connection however its call ends (a timeout drops the call).
struct Open<'a> {
    _descriptor: Held<'a>,
    telemetry: &'a Telemetry,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.telemetry.metrics.connections_open.dec();
    }
}

impl<A: ServerApp + Send + Sync + 'static> Guarded<A> {
    /// On the TLS port, the handshake, within the header deadline (Pingora's own allows a
    /// silent or trickling ClientHello 60 s, outside `max_connections`). Other connections
    /// pass as they are; None closes the connection.
    async fn tls_handshake(&self, stream: Stream, within: Duration) -> Option<Stream> {
        let Some(tls) = &self.tls else {
            return Some(stream);
        };
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr()?.as_inet().copied());
        if !local.is_some_and(|l| tls.accepted(&l)) {
            return Some(stream);
        }
        // Pingora's listener gives the TCP stream boxed; its handshake takes it as it is.
        let Ok(tcp) = stream.into_any().downcast::<L4Stream>() else {
            return None;
        };
        match tokio::time::timeout(within, tls.acceptor.tls_handshake(*tcp)).await {
            Ok(Ok(tls_stream)) => Some(Box::new(tls_stream)),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                let metrics = &self.telemetry.metrics;
                let timed_out = metrics
                    .connections_timed_out
                    .with_label_values(&["tls_handshake"]);
                timed_out.inc();
                None
            }
        }
    }

    /// Serves an HTTP/2 connection with a shutdown signal of its own: the process's, or
    /// the proxy's once the connection has opened `max_requests_per_connection` streams.
    async fn serve_h2(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let digest = stream.get_socket_digest();
        let Some(key) = digest.as_deref().and_then(conn_key) else {
            return self.inner.process_new(stream, shutdown).await;
        };
        let (stop, stopped) = tokio::sync::watch::channel(*shutdown.borrow());
        let conn = Arc::new(H2Conn {
            streams: AtomicUsize::new(0),
            stop,
        });
        h2_conns()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, conn.clone());
        let _registered = Registered(key, conn.clone());
        let serve = self.inner.process_new(stream, &stopped);
        tokio::pin!(serve);
        let mut process = shutdown.clone();
        let mut forwarding = true;
        loop {
            tokio::select! {
                done = &mut serve => return done,
                changed = process.changed(), if forwarding => {
                    forwarding = false;
                    if changed.is_ok() && *process.borrow() {
                        let _ = conn.stop.send(true);
                    } else {
                        forwarding = changed.is_ok();
                    }
                }
            }
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
        // Pingora's HTTP apps serve a whole connection (every keep-alive request) per
        // call, so a call is a connection.
        let settings = &self.holder.load().settings;
        let metrics = &self.telemetry.metrics;
        let Some(held) = self.descriptors.client(settings.max_connections) else {
            metrics.connections_refused.inc();
            return None;
        };
        metrics.connections_open.inc();
        let _open = Open {
            _descriptor: held,
            telemetry: &self.telemetry,
        };
        let (header, idle) = (settings.header_timeout, settings.idle_timeout);
        // In flight from the task's first run, TLS handshake included, until its first
        // head (or its end): a drain waits for a client accepted as the listeners stop.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let signals = Arc::new(Signals {
            epoch: Instant::now(),
            state: AtomicU64::new(1),
            served: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
            awaiting_first: AtomicBool::new(true),
            in_flight: self.in_flight.clone(),
        });
        let first_head = FirstHead(signals.clone());
        let mut stream = self.tls_handshake(stream, header).await?;
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
        match first_bytes(&mut stream, self.h2c, header).await {
            Some(true) => {
                // HTTP/2 streams are counted by the proxy, each on its own task.
                drop(first_head);
                return self.serve_h2(stream, shutdown).await;
            }
            Some(false) => {}
            None => {
                metrics
                    .connections_timed_out
                    .with_label_values(&["header"])
                    .inc();
                return None;
            }
        }
        let work = SIGNALS.scope(signals.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(work);
        // Never sleeps past a due time: a request that ends between two looks has its next
        // head due `idle` later, and the timer looks again within `tick`.
        let tick = header.min(idle);
        let timer = tokio::time::sleep(tick);
        tokio::pin!(timer);
        loop {
            if let Some(done) = work_or_timer(work.as_mut(), timer.as_mut()).await {
                return done;
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

    /// Pingora calls this once every listener of the service has stopped accepting.
    async fn cleanup(&self) {
        self.stopped_accepting.store(true, Ordering::SeqCst);
        self.inner.cleanup().await
    }
}
