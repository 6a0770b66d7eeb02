//! The one Redis connection a config shares (`redis:`): rate limits with `backend: redis`
//! run their script on it, cache purges are published and subscribed through it. It
//! (re)connects in the background, never on a request; `app/` runs the probe loop.

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A shared Redis connection that (re)connects in the background, never on a request.
pub struct RedisLink {
    client: redis::Client,
    timeout: Duration,
    conn: ArcSwapOption<ConnectionManager>,
    /// Whether the last connection attempt or probe succeeded.
    alive: AtomicBool,
    last_attempt: Mutex<Option<Instant>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("redis is not connected")]
    NotConnected,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl RedisLink {
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLink, String> {
        let client = redis::Client::open(url).map_err(|e| {
            // The redis crate's message can quote the URL: only the kind is kept.
            format!(
                "invalid redis url `{}`: {:?}",
                crate::diag::redact_url(url),
                e.kind()
            )
        })?;
        Ok(RedisLink {
            client,
            timeout,
            conn: ArcSwapOption::empty(),
            alive: AtomicBool::new(false),
            last_attempt: Mutex::new(None),
        })
    }

    pub fn is_connected(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// One step of the background connector: connects when there is no connection, else
    /// pings, and records whether Redis answered. A request never waits for this.
    pub async fn probe(&self) {
        let Some(conn) = self.conn.load_full() else {
            return self.connect().await;
        };
        let mut conn = (*conn).clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        let ok = matches!(
            tokio::time::timeout(self.timeout.max(Duration::from_millis(200)), ping).await,
            Ok(Ok(_))
        );
        self.alive.store(ok, Ordering::Relaxed);
    }

    /// One connection attempt, awaited.
    async fn connect(&self) {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.max(Duration::from_millis(200)))
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        match self.client.get_connection_manager_with_config(config).await {
            Ok(conn) => {
                self.conn.store(Some(Arc::new(conn)));
                self.alive.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                self.alive.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot connect to redis");
            }
        }
    }

    /// Publishes on a channel over the shared connection (cache purges to other replicas).
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), LinkError> {
        let conn = self.conn.load_full().ok_or(LinkError::NotConnected)?;
        let mut conn = (*conn).clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        let publish = cmd.query_async::<i64>(&mut conn);
        let timeout = self.timeout.max(Duration::from_millis(200));
        tokio::time::timeout(timeout, publish)
            .await
            .map_err(|_| LinkError::Timeout(timeout))??;
        Ok(())
    }

    /// A connection of its own subscribed to `channel` (a subscribed connection can do
    /// nothing else).
    pub async fn subscribe(&self, channel: &str) -> Result<redis::aio::PubSub, LinkError> {
        let timeout = self.timeout.max(Duration::from_millis(200));
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        Ok(tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| LinkError::Timeout(timeout))??)
    }

    /// Starts a connection attempt (at most one a second) without waiting for it.
    fn connect_in_background(self: &Arc<Self>) {
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
        }
        let link = self.clone();
        tokio::spawn(async move { link.connect().await });
    }

    /// Runs a script on the shared connection within the link's timeout. Without a
    /// connection it fails at once and starts one in the background; while the background
    /// probe finds Redis down (it asks every 500 ms), it fails at once too, instead of
    /// making every request wait the whole timeout.
    pub async fn invoke<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LinkError> {
        let Some(conn) = self.conn.load_full() else {
            self.connect_in_background();
            return Err(LinkError::NotConnected);
        };
        if !self.is_connected() {
            return Err(LinkError::NotConnected);
        }
        let mut conn = (*conn).clone();
        let call = invocation.invoke_async::<T>(&mut conn);
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| LinkError::Timeout(self.timeout))?
            .map_err(LinkError::from)
    }
}
