//! Live reload: the config's directory is watched (so editor renames, `cp`/`mv` and the
//! Kubernetes ConfigMap `..data` symlink swap all count) and SIGHUP forces a reload. A new
//! config is loaded, checked and compiled off the request path, then swapped in whole; a
//! refused one leaves the running snapshot serving.

use super::isolate::{self, Good, Refused};
use crate::compile::compile_with;
use crate::config::files::{config_dirs, is_config_name};
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
use std::collections::BTreeMap;
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
    /// "ok", "partial" (some files refused, the rest applied), "failed" or "unchanged";
    /// empty before the first reload.
    pub result: String,
    pub trigger: String,
    /// Unix seconds.
    pub at: u64,
    pub error: Option<String>,
    /// Reloads that put a new config live (with some files refused, too).
    pub succeeded: u64,
    /// Reloads refused whole.
    pub failed: u64,
    /// Changed settings that the running process cannot apply without a restart.
    pub pending_restart: Vec<String>,
    /// Unix seconds of the last successful load (the startup load counts).
    pub last_success_at: u64,
    /// How long the last reload took to read, check and compile the config, in ms.
    pub took_ms: u64,
}

/// A file of the config as `/health` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub file: String,
    /// `ok`; `stale` (its current text is refused, its last good version is live); or
    /// `refused` (refused, and never live).
    pub status: &'static str,
    /// Unix seconds since the file has been stale or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The config's files: each team file's live version and every file's status.
#[derive(Default)]
struct Files {
    good: Good,
    /// Each file's status as the last applied reload left it.
    applied: BTreeMap<PathBuf, FileStatus>,
    /// What `/health` shows: `applied`, with a refused reload's errors on its files.
    status: BTreeMap<PathBuf, FileStatus>,
    /// The config's files (base first) and the directories where a new one joins it.
    config: Relevant,
}

/// What the watcher reacts to: these files, and config files appearing in these dirs.
#[derive(Default, Clone)]
struct Relevant {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

/// What a reload read: the config to run (None when it is the running one), the files
/// left out, and every file's version.
struct Load {
    snapshot: Option<Snapshot>,
    refused: Vec<Refused>,
    good: Good,
    config: Relevant,
}

impl Relevant {
    /// A file as the metric names it: relative to the base file's directory, as deployed.
    fn label(&self, p: &Path) -> String {
        let root = self.files.first().and_then(|b| b.parent());
        let relative = root.and_then(|r| p.strip_prefix(r).ok());
        relative.unwrap_or(p).display().to_string()
    }
}

fn relevant_of(src: &Source) -> Relevant {
    let files = std::iter::once(src.base.path.clone())
        .chain(src.parts.iter().map(|p| p.path.clone()))
        .collect();
    Relevant {
        files,
        dirs: config_dirs(src),
    }
}

struct Inner {
    /// The config's path made absolute (watch events name absolute paths).
    path: PathBuf,
    /// The config's path as given: files are named (in logs, `/health`) as `check` names them.
    given: PathBuf,
    holder: SnapshotHolder,
    stores: Arc<Stores>,
    telemetry: Arc<Telemetry>,
    status: Mutex<ReloadStatus>,
    busy: tokio::sync::Mutex<()>,
    /// The settings the process started with: what a restart-only change is measured
    /// against (a change made and then undone needs no restart).
    started: crate::snapshot::Settings,
    files: Mutex<Files>,
    /// The last reloads, oldest first, at most [`HISTORY`].
    history: Mutex<std::collections::VecDeque<Reload>>,
    /// What the reload under way changed (taken when its status is set).
    changes: Mutex<Option<String>>,
}

/// Reloads the dashboard lists.
const HISTORY: usize = 50;

/// One reload as the dashboard shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Reload {
    /// Unix seconds.
    pub at: u64,
    pub trigger: String,
    pub result: String,
    pub took_ms: u64,
    /// An applied reload's changes, field by field (`portico diff`'s text).
    pub changes: Option<String>,
    /// A refused reload's (or refused files') diagnostics.
    pub errors: Option<String>,
}

#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
    watch: bool,
}

impl Reloader {
    /// `source` is the config the process started with.
    pub fn new(
        source: &Source,
        holder: SnapshotHolder,
        stores: Arc<Stores>,
        telemetry: Arc<Telemetry>,
        watch: bool,
    ) -> Reloader {
        let path = source.path.as_path();
        // Present from the start: a dashboard sees 0, not a missing series.
        let metrics = &telemetry.metrics;
        for result in ["ok", "partial", "failed"] {
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
        let mut files = Files::default();
        let good = source.parts.iter().map(|p| (p.path.clone(), p.clone()));
        set_files(
            &mut files,
            &telemetry,
            good.collect(),
            &[],
            relevant_of(source),
        );
        Reloader {
            inner: Arc::new(Inner {
                // Watch events name absolute paths: `-c gateway.yaml` must be compared as
                // the file in the working directory, not as a bare name.
                path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
                given: path.to_path_buf(),
                holder,
                stores,
                telemetry,
                status: Mutex::new(status),
                busy: tokio::sync::Mutex::new(()),
                started,
                files: Mutex::new(files),
                history: Mutex::new(std::collections::VecDeque::from([Reload {
                    at: unix_now(),
                    trigger: "startup".into(),
                    result: "ok".into(),
                    took_ms: 0,
                    changes: None,
                    errors: None,
                }])),
                changes: Mutex::new(None),
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
        Source::load(&self.inner.given).map_or(true, |src| !built_from(&src, &current))
    }

    /// Loads, checks and compiles the file, then swaps it in. `force` reloads even when the
    /// text did not change (SIGHUP: referenced files may have).
    pub async fn reload(&self, trigger: &str, force: bool) -> Result<(), ConfigError> {
        let _one_at_a_time = self.inner.busy.lock().await;
        let current = self.inner.holder.load();
        let started = std::time::Instant::now();
        let mut outcome = self.load(&current, force);
        let took_ms = started.elapsed().as_millis() as u64;
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
        status.took_ms = took_ms;
        match outcome {
            Ok(load) => {
                for target in load
                    .snapshot
                    .iter()
                    .flat_map(|s| s.upstreams.values())
                    .flat_map(|u| &u.targets)
                {
                    if target.is_dns() && target.addrs().is_empty() {
                        resolve_target(target).await;
                    }
                }
                let refused = self.apply_files(trigger, &load, status.at);
                let partial = !refused.is_empty();
                match load.snapshot {
                    Some(snapshot) => {
                        self.go_live(trigger, &current, snapshot, &mut status, partial)
                    }
                    None if partial => {}
                    None => self.unchanged(trigger, &mut status),
                }
                if partial {
                    // Some files refused: what the others changed (if anything) is live.
                    status.result = "partial".into();
                    status.error = Some(refused);
                    let metrics = &self.inner.telemetry.metrics;
                    metrics.reloads.with_label_values(&["partial"]).inc();
                }
                self.set_status(status);
                Ok(())
            }
            Err(e) => {
                // One record on one line, the diagnostics as a field.
                let errors = e.one_line();
                tracing::error!(trigger, errors, "config refused, the running config stays");
                self.mark_stale(&e, status.at);
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

    fn unchanged(&self, trigger: &str, status: &mut ReloadStatus) {
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
    }

    fn go_live(
        &self,
        trigger: &str,
        current: &Snapshot,
        snapshot: Snapshot,
        status: &mut ReloadStatus,
        partial: bool,
    ) {
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
        let took_ms = status.took_ms;
        tracing::info!(trigger, hash = %snapshot.hash, routes = snapshot.routes.len(), took_ms, "config reloaded");
        // What changed, field by field, as `portico diff` says it: for the dashboard.
        let report = crate::diff::diff(current, &snapshot, None);
        *self.inner.changes.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::diff::text(&report, false));
        self.inner.stores.remember(&snapshot.state);
        let metrics = &self.inner.telemetry.metrics;
        metrics
            .live
            .keep_only(snapshot.routes.iter().map(|r| &*r.name));
        self.inner.holder.store(snapshot);
        let metrics = &self.inner.telemetry.metrics;
        if !partial {
            metrics.reloads.with_label_values(&["ok"]).inc();
        }
        metrics.last_reload_success.set(status.at as f64);
        status.result = "ok".into();
        status.error = None;
        status.succeeded += 1;
        status.last_success_at = status.at;
        status.pending_restart = pending;
    }

    /// Records which version of each file is live and logs each refused file; returns the
    /// refused files' errors as text (empty when none is refused).
    fn apply_files(&self, trigger: &str, load: &Load, now: u64) -> String {
        for r in &load.refused {
            let errors = ConfigError(r.errors.clone()).one_line();
            let file = r.path.display().to_string();
            match r.kept {
                true => tracing::error!(trigger, file, errors, "config file refused, its last good version stays"),
                false => tracing::error!(trigger, file, errors, "config file refused; it has no good version, so its routes are not in the config"),
            }
        }
        let mut files = self.files();
        let telemetry = &self.inner.telemetry;
        let (good, config) = (load.good.clone(), load.config.clone());
        set_files(&mut files, telemetry, good, &load.refused, config);
        for r in &load.refused {
            if let Some(s) = files.status.get_mut(&r.path) {
                s.since.get_or_insert(now);
            }
        }
        let text: Vec<String> = load
            .refused
            .iter()
            .flat_map(|r| &r.errors)
            .map(ToString::to_string)
            .collect();
        text.join("\n")
    }

    /// A refused reload: the files its errors are in are stale (the running config keeps
    /// their last good version).
    fn mark_stale(&self, e: &ConfigError, now: u64) {
        let mut files = self.files();
        let files = &mut *files;
        files.status = files.applied.clone();
        for (path, status) in files.status.iter_mut() {
            let errors: Vec<String> =
                e.0.iter()
                    .filter(|d| &d.file == path)
                    .map(|d| d.one_line())
                    .collect();
            if !errors.is_empty() {
                status.status = "stale";
                status.since.get_or_insert(now);
                status.errors = errors;
            }
            let metrics = &self.inner.telemetry.metrics;
            let label = files.config.label(path);
            let ok = i64::from(status.status == "ok");
            metrics.config_file_ok.with_label_values(&[&label]).set(ok);
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.inner.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every file of the config: live (`ok`), or refused with its last good version live
    /// (`stale`), or refused without one (`refused`).
    pub fn file_statuses(&self) -> Vec<FileStatus> {
        self.files().status.values().cloned().collect()
    }

    /// The config compiled from each file's current text, or its last good version where
    /// that text is refused; no snapshot when that is what `current` was built from and
    /// `force` is not set.
    fn load(&self, current: &Snapshot, force: bool) -> Result<Load, ConfigError> {
        let good = self.files().good.clone();
        let (stores, metrics) = (&self.inner.stores, &self.inner.telemetry.metrics);
        let chosen = isolate::choose(&self.inner.given, &good, |src| {
            if !force && built_from(src, current) {
                return Ok(None);
            }
            compile_with(src, stores, metrics).map(Some)
        })?;
        let good = chosen
            .source
            .parts
            .iter()
            .map(|p| (p.path.clone(), p.clone()));
        Ok(Load {
            snapshot: chosen.built,
            refused: chosen.refused,
            good: good.collect(),
            config: relevant_of(&chosen.source),
        })
    }

    fn set_status(&self, status: ReloadStatus) {
        let changes = self
            .inner
            .changes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if status.result != "unchanged" {
            let mut history = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
            if history.len() >= HISTORY {
                history.pop_front();
            }
            history.push_back(Reload {
                at: status.at,
                trigger: status.trigger.clone(),
                result: status.result.clone(),
                took_ms: status.took_ms,
                changes,
                errors: status.error.clone(),
            });
        }
        *self.inner.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// The last reloads (the startup load first while it is among them), newest first.
    pub fn history(&self) -> Vec<Reload> {
        let history = self.inner.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().rev().cloned().collect()
    }

    /// Directories whose changes may change the config: the config files' own, those where
    /// a new config file joins it, and those of the files it refers to (keys, JWKS, schemas).
    fn watched_dirs(&self) -> Vec<PathBuf> {
        let relevant = self.relevant();
        let mut dirs: Vec<PathBuf> = relevant
            .files
            .iter()
            .map(|f| match f.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .chain(relevant.dirs.iter().map(|d| existing_ancestor(d)))
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

    /// The files whose changes matter (the config's and those it refers to), and the
    /// directories where a new config file matters.
    fn relevant(&self) -> Relevant {
        let snapshot = self.inner.holder.load();
        let mut relevant = self.files().config.clone();
        if !self.inner.path.is_dir() {
            relevant.files.push(self.inner.path.clone());
        }
        relevant.files.extend(snapshot.inputs.iter().cloned());
        relevant
    }

    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<()>,
        relevant: Arc<ArcSwap<Relevant>>,
    ) -> Option<notify::RecommendedWatcher> {
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(ev) = event else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let relevant = relevant.load();
            if ev.paths.iter().any(|p| is_relevant(p, &relevant)) {
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

/// Records each file's version and status after a reload (or at start); a file no
/// longer in the config leaves the statuses and the metric.
fn set_files(
    files: &mut Files,
    telemetry: &Telemetry,
    good: Good,
    refused: &[Refused],
    config: Relevant,
) {
    let metric = &telemetry.metrics.config_file_ok;
    // The metric names a file relative to the base file's directory, as it is deployed.
    let root = config
        .files
        .first()
        .and_then(|b| b.parent())
        .unwrap_or(Path::new(""));
    let label = |p: &Path| p.strip_prefix(root).unwrap_or(p).display().to_string();
    let mut status = BTreeMap::new();
    for path in config.files.iter().chain(refused.iter().map(|r| &r.path)) {
        let file = path.display().to_string();
        let before = files.applied.remove(path);
        let entry = match refused.iter().find(|r| &r.path == path) {
            Some(r) => FileStatus {
                file,
                status: if r.kept { "stale" } else { "refused" },
                since: before.and_then(|b| b.since),
                errors: r.errors.iter().map(|d| d.one_line()).collect(),
            },
            None => FileStatus {
                file,
                status: "ok",
                since: None,
                errors: Vec::new(),
            },
        };
        let ok = i64::from(entry.status == "ok");
        metric.with_label_values(&[&label(path)]).set(ok);
        status.insert(path.clone(), entry);
    }
    for gone in files.applied.keys() {
        let _ = metric.remove_label_values(&[&label(gone)]);
    }
    files.applied = status.clone();
    files.status = status;
    files.good = good;
    files.config = config;
}

/// `snapshot` was compiled from this text, and the files it refers to are unchanged.
fn built_from(src: &Source, snapshot: &Snapshot) -> bool {
    src.hash == snapshot.hash && inputs_digest(&snapshot.inputs) == snapshot.inputs_digest
}

/// A change to one of the files (compared by name within the same directory, so a file
/// replaced by rename counts), to a config file in one of the dirs (a new team file), or
/// to a Kubernetes volume's `..data`-style entry.
fn is_relevant(path: &Path, relevant: &Relevant) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let in_dir = |d: &PathBuf| path.parent().is_some_and(|p| same_dir_path(d, p));
    // A directory an `include` names (or one above it) is made or moved: its files count.
    let makes_dir = |d: &PathBuf| std::path::absolute(d).is_ok_and(|d| d.starts_with(path));
    name.starts_with("..")
        || (is_config_name(path) && relevant.dirs.iter().any(in_dir))
        || relevant.dirs.iter().any(makes_dir)
        || relevant
            .files
            .iter()
            .any(|f| f == path || (f.file_name() == path.file_name() && same_dir(f, path)))
}

/// `dir`, or its nearest ancestor that exists (watched until `dir` is made).
fn existing_ancestor(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let found = absolute.ancestors().find(|a| a.is_dir());
    found.unwrap_or(Path::new("/")).to_path_buf()
}

fn same_dir_path(a: &Path, b: &Path) -> bool {
    let canon = |d: &Path| d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
    canon(a) == canon(b)
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
        let relevant = Arc::new(ArcSwap::from_pointee(self.relevant()));
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
            relevant.store(Arc::new(self.relevant()));
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
