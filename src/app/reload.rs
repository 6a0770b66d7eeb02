//! Live reload: the config's directory is watched (so editor renames, `cp`/`mv` and the
//! Kubernetes ConfigMap `..data` symlink swap all count) and SIGHUP forces a reload. A new
//! config is loaded, checked and compiled off the request path, then swapped in whole; a
//! refused one leaves the running snapshot serving.

use crate::compile::compile_with;
use crate::config::{ConfigError, Source};
use crate::diag::inputs_digest;
use crate::snapshot::{Snapshot, SnapshotHolder};
use crate::state::Stores;
use crate::telemetry::Telemetry;
use crate::units::unix_now;
use crate::upstream::resolve::resolve_target;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use notify::{EventKind, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a certificate whose key does not match (yet) is waited for before the reload
/// is refused: long enough for a copy of the key after its certificate.
const PAIR_SETTLE: Duration = Duration::from_secs(2);

/// Whether every error is a certificate and key that do not go together.
fn only_unsettled_pairs(e: &ConfigError) -> bool {
    let errors =
        e.0.iter()
            .filter(|d| d.severity == crate::diag::Severity::Error);
    let mut errors = errors.peekable();
    errors.peek().is_some() && errors.all(crate::tls::is_mismatched_pair)
}

/// Bursts of file events closer than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(200);
const MAX_SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    /// "ok", "failed" or "unchanged"; empty before the first reload.
    pub result: String,
    pub trigger: String,
    /// Unix seconds.
    pub at: u64,
    pub error: Option<String>,
    pub succeeded: u64,
    pub failed: u64,
    /// Changed settings that the running process cannot apply without a restart.
    pub pending_restart: Vec<String>,
    /// Unix seconds of the last successful load (the startup load counts).
    pub last_success_at: u64,
}

struct Inner {
    path: PathBuf,
    holder: SnapshotHolder,
    stores: Arc<Stores>,
    telemetry: Arc<Telemetry>,
    status: Mutex<ReloadStatus>,
    busy: tokio::sync::Mutex<()>,
    /// The settings the process started with: what a restart-only change is measured
    /// against (a change made and then undone needs no restart).
    started: crate::snapshot::Settings,
}

#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
    watch: bool,
}

impl Reloader {
    pub fn new(
        path: &Path,
        holder: SnapshotHolder,
        stores: Arc<Stores>,
        telemetry: Arc<Telemetry>,
        watch: bool,
    ) -> Reloader {
        // Present from the start: a dashboard sees 0, not a missing series.
        let metrics = &telemetry.metrics;
        for result in ["ok", "failed"] {
            metrics.reloads.with_label_values(&[result]);
        }
        metrics.last_reload_success.set(unix_now() as f64);
        // The startup load is the first: /health never shows an empty result.
        let status = ReloadStatus {
            result: "ok".into(),
            trigger: "startup".into(),
            at: unix_now(),
            last_success_at: unix_now(),
            ..ReloadStatus::default()
        };
        let started = holder.load().settings.clone();
        Reloader {
            inner: Arc::new(Inner {
                // Watch events name absolute paths: `-c gateway.yaml` must be compared as
                // the file in the working directory, not as a bare name.
                path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
                holder,
                stores,
                telemetry,
                status: Mutex::new(status),
                busy: tokio::sync::Mutex::new(()),
                started,
            }),
            watch,
        }
    }

    pub fn status(&self) -> ReloadStatus {
        self.inner
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the file (or a file it refers to) is not what the running config was built
    /// from; a file that does not load counts as different.
    fn differs_from_running(&self) -> bool {
        let current = self.inner.holder.load();
        Source::load(&self.inner.path).map_or(true, |src| !built_from(&src, &current))
    }

    /// Loads, checks and compiles the file, then swaps it in. `force` reloads even when the
    /// text did not change (SIGHUP: referenced files may have).
    pub async fn reload(&self, trigger: &str, force: bool) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.busy.lock().await;
        let current = self.inner.holder.load();
        let mut outcome = self.load(&current, force);
        // A certificate and its key are two files, rarely replaced at the same instant:
        // a pair that does not match yet is given a moment to settle before it is refused.
        let settle_until = tokio::time::Instant::now() + PAIR_SETTLE;
        if outcome.as_ref().is_err_and(only_unsettled_pairs) {
            tracing::info!(
                trigger,
                "a certificate and its key do not match yet: waiting for the pair to settle"
            );
        }
        while outcome.as_ref().is_err_and(only_unsettled_pairs)
            && tokio::time::Instant::now() < settle_until
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
            outcome = self.load(&current, force);
        }
        let mut status = self.status();
        status.trigger = trigger.to_string();
        status.at = unix_now();
        match outcome {
            Ok(None) => {
                if status.error.take().is_some() {
                    // The refused edit was undone: the file is the running config again.
                    tracing::info!(
                        trigger,
                        "config file is back to the running config; the refused version is gone"
                    );
                } else {
                    tracing::debug!(
                        trigger,
                        "config and referenced files unchanged; nothing to reload"
                    );
                }
                status.result = "unchanged".into();
                self.set_status(status);
                Ok(())
            }
            Ok(Some(snapshot)) => {
                for target in snapshot.upstreams.values().flat_map(|u| &u.targets) {
                    if target.is_dns() && target.addrs().is_empty() {
                        resolve_target(target).await;
                    }
                }
                // A warning the running config already had was logged when it first came.
                let known: Vec<String> = current.warnings.iter().map(|w| w.one_line()).collect();
                for line in snapshot.warnings.iter().map(|w| w.one_line()) {
                    if known.contains(&line) {
                        tracing::debug!("{line}");
                    } else {
                        tracing::warn!("{line}");
                    }
                }
                let pending = self.inner.started.restart_needed(&snapshot.settings);
                for p in pending
                    .iter()
                    .filter(|p| !status.pending_restart.contains(p))
                {
                    tracing::warn!("config change needs a restart to take effect: {p}");
                }
                if pending.is_empty() && !status.pending_restart.is_empty() {
                    tracing::info!("the settings that needed a restart are back to those running");
                }
                tracing::info!(trigger, hash = %snapshot.hash, routes = snapshot.routes.len(), "config reloaded");
                self.inner.stores.remember(&snapshot.state);
                self.inner.holder.store(snapshot);
                let metrics = &self.inner.telemetry.metrics;
                metrics.reloads.with_label_values(&["ok"]).inc();
                metrics.last_reload_success.set(status.at as f64);
                status.result = "ok".into();
                status.error = None;
                status.succeeded += 1;
                status.last_success_at = status.at;
                status.pending_restart = pending;
                self.set_status(status);
                Ok(())
            }
            Err(e) => {
                // One record on one line, the diagnostics as a field.
                let errors = e.one_line();
                tracing::error!(trigger, errors, "config refused, the running config stays");
                let metrics = &self.inner.telemetry.metrics;
                metrics.reloads.with_label_values(&["failed"]).inc();
                status.result = "failed".into();
                status.error = Some(e.to_string());
                status.failed += 1;
                self.set_status(status);
                Err(e)
            }
        }
    }

    /// The config file compiled, or None when it (and every file it names) is what
    /// `current` was built from and `force` is not set.
    fn load(&self, current: &Snapshot, force: bool) -> Result<Option<Snapshot>, ConfigError> {
        let src = Source::load(&self.inner.path)?;
        if !force && built_from(&src, current) {
            return Ok(None);
        }
        compile_with(&src, &self.inner.stores, &self.inner.telemetry.metrics).map(Some)
    }

    fn set_status(&self, status: ReloadStatus) {
        *self.inner.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Directories whose changes may change the config: the config file's own and those of
    /// the files it refers to (keys, JWKS, schemas).
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let snapshot = self.inner.holder.load();
        let mut dirs: Vec<PathBuf> = std::iter::once(&self.inner.path)
            .chain(&snapshot.inputs)
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Adds watches for directories not watched yet (after a reload brought new inputs).
    fn watch_new_dirs(&self, watcher: &mut notify::RecommendedWatcher, watched: &mut Vec<PathBuf>) {
        for dir in self.watched_dirs() {
            if watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => watched.push(dir),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot watch directory; reload with SIGHUP")
                }
            }
        }
    }

    /// The files whose changes matter: the config and the files it refers to.
    fn relevant_files(&self) -> Vec<PathBuf> {
        let snapshot = self.inner.holder.load();
        std::iter::once(self.inner.path.clone())
            .chain(snapshot.inputs.iter().cloned())
            .collect()
    }

    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<()>,
        relevant: Arc<ArcSwap<Vec<PathBuf>>>,
    ) -> Option<notify::RecommendedWatcher> {
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(ev) = event else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let files = relevant.load();
            if ev.paths.iter().any(|p| is_relevant(p, &files)) {
                tracing::debug!(kind = ?ev.kind, paths = ?ev.paths, "config change seen");
                let _ = tx.send(());
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the config; reload with SIGHUP");
                None
            }
        }
    }
}

/// `snapshot` was compiled from this text, and the files it refers to are unchanged.
fn built_from(src: &Source, snapshot: &Snapshot) -> bool {
    src.hash == snapshot.hash && inputs_digest(&snapshot.inputs) == snapshot.inputs_digest
}

/// A change to one of `files` (compared by name within the same directory, so a file
/// replaced by rename counts), or to a Kubernetes volume's `..data`-style entry.
fn is_relevant(path: &Path, files: &[PathBuf]) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.starts_with("..")
        || files
            .iter()
            .any(|f| f == path || (f.file_name() == path.file_name() && same_dir(f, path)))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let dir = |p: &Path| {
        p.parent()
            .map(|d| d.canonicalize().unwrap_or_else(|_| d.to_path_buf()))
    };
    dir(a) == dir(b)
}

/// Waits until events stop arriving for [`DEBOUNCE`] (at most [`MAX_SETTLE`], so a
/// steady stream of changes cannot postpone a reload forever); false when the channel closed.
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) -> bool {
    let started = tokio::time::Instant::now();
    loop {
        if started.elapsed() >= MAX_SETTLE {
            return true;
        }
        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let relevant = Arc::new(ArcSwap::from_pointee(self.relevant_files()));
        let mut watcher = if self.watch {
            self.start_watcher(tx, relevant.clone())
        } else {
            None
        };
        let mut watched = Vec::new();
        if let Some(w) = watcher.as_mut() {
            self.watch_new_dirs(w, &mut watched);
            // A change made between the first load and the watch has no event: look once.
            if self.differs_from_running() {
                let _ = self.reload("file_change", false).await;
            }
        }
        loop {
            relevant.store(Arc::new(self.relevant_files()));
            if let Some(w) = watcher.as_mut() {
                self.watch_new_dirs(w, &mut watched);
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = self.reload("sighup", true).await;
                }
                Some(()) = rx.recv() => {
                    if settle(&mut rx).await {
                        let _ = self.reload("file_change", false).await;
                    }
                }
            }
        }
    }
}
