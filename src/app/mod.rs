//! Assembles the Pingora server: proxy and admin listeners, and every background service
//! (reload watcher, DNS, health checks, JWKS refresh, readiness). Only this module runs
//! loops over the snapshot holder.

pub mod admin;
mod dashboard;
pub mod demo;
mod isolate;
pub mod reload;
pub mod services;
mod tls;

use crate::compile::compile_with;
use crate::config::{ConfigError, Source};
use crate::descriptors::{self, Descriptors};
use crate::proxy::guard::{Guarded, TlsListener};
use crate::proxy::Gateway;
use crate::snapshot::{Settings, Snapshot, SnapshotHolder};
use crate::state::Stores;
use crate::telemetry::Telemetry;
use admin::Admin;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use reload::Reloader;
use services::{
    Drain, DrainSignal, HealthChecker, JwksRefresher, PurgeListener, Readiness, RedisConnector,
    Resolver,
};
use std::path::Path;
use std::sync::Arc;

pub struct RunOptions<'a> {
    pub config: &'a Path,
    /// Reload when the config's directory changes (SIGHUP always reloads).
    pub watch: bool,
    /// Take over the listeners of a running Portico (Pingora graceful upgrade).
    pub upgrade: bool,
}

/// A built server, its snapshot holder and its telemetry (flushed by [`serve`]).
pub struct Built {
    pub server: Server,
    pub holder: SnapshotHolder,
    pub telemetry: Arc<Telemetry>,
    readiness: Readiness,
}

/// Loads the config with the gateway's state and metrics, printing its warnings; a refused
/// config is returned whole.
fn load_config(
    path: &Path,
    stores: &Stores,
    telemetry: &Telemetry,
) -> Result<(Snapshot, Source), ConfigError> {
    let source = Source::load(path)?;
    let snapshot = compile_with(&source, stores, &telemetry.metrics)?;
    for w in &snapshot.warnings {
        tracing::warn!("{}", w.one_line());
    }
    stores.remember(&snapshot.state);
    Ok((snapshot, source))
}

fn server_conf(snapshot: &Snapshot) -> ServerConf {
    let s = &snapshot.settings;
    ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.as_secs_f64().ceil() as u64),
        upgrade_sock: s.upgrade_socket.clone(),
        ..ServerConf::default()
    }
}

/// Descriptors the process holds whatever the traffic: stdio, listeners, runtimes, the
/// admin port's clients, Redis, logs, the config watcher, health probes.
const FIXED_DESCRIPTORS: usize = 256;

/// Raises the descriptor limit and splits it (see `descriptors`): the reserve is the fixed
/// part plus the idle connections Pingora's pools may keep (the proxy's, and the
/// aggregate calls' connector's).
fn split_descriptors(conf: &ServerConf, settings: &Settings) -> &'static Descriptors {
    let limit = descriptors::raise_limit();
    let pools = conf.upstream_keepalive_pool_size * (conf.threads + 1);
    let descriptors = Descriptors::new(limit, FIXED_DESCRIPTORS + pools);
    let (clients, upstream) = descriptors.shares(settings.max_connections);
    tracing::info!(limit, clients, upstream, "file descriptors split");
    if clients < settings.max_connections {
        tracing::warn!(
            "server.max_connections {} is more than {limit} descriptors allow: at most {clients} \
             client connections will be open (raise `ulimit -n` for more)",
            settings.max_connections
        );
    }
    descriptors
}

/// Loads the config and builds the server; extra services (the demo's) can be added
/// before [`serve`].
pub fn build(opts: &RunOptions) -> anyhow::Result<Built> {
    let stores = Arc::new(Stores::default());
    let telemetry = Telemetry::new();
    let (snapshot, source) = load_config(opts.config, &stores, &telemetry)?;
    if !opts.upgrade {
        // Pingora retries a busy address forever; a second gateway on a taken port should
        // fail at once instead. (An upgrade takes over addresses that are in use.)
        let settings = &snapshot.settings;
        let listeners = [
            ("listen.proxy", settings.proxy_addr),
            ("listen.proxy_tls", settings.proxy_tls_addr),
            ("listen.admin", Some(settings.admin_addr)),
        ];
        for (key, addr) in listeners.into_iter().filter_map(|(k, a)| Some((k, a?))) {
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("{key} {addr} cannot be used: {e}"))?;
        }
    }
    let conf = server_conf(&snapshot);
    let proxy_addr = snapshot.settings.proxy_addr.map(|a| a.to_string());
    let admin_addr = snapshot.settings.admin_addr.to_string();
    let holder = SnapshotHolder::new(snapshot);
    resolve_now(&holder);

    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let descriptors = split_descriptors(&server.configuration, &holder.load().settings);
    let gateway = Gateway {
        holder: holder.clone(),
        telemetry: telemetry.clone(),
        connector: Arc::new(pingora::connectors::http::Connector::new(None)),
        in_flight: in_flight.clone(),
        descriptors,
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, gateway);
    let (h2c, idle) = {
        let settings = &holder.load().settings;
        (settings.h2c, settings.idle_timeout)
    };
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    // The guard's head deadlines are for HTTP/1.1; an HTTP/2 connection with no stream
    // open for `server.timeouts.idle` is closed by Pingora.
    options.h2_idle_timeout = Some(idle);
    app.server_options = Some(options);
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_concurrent_streams(holder.load().settings.max_streams_per_connection);
    app.h2_options = Some(h2);
    let tls_addr = holder.load().settings.proxy_tls_addr;
    // The guard makes TLS handshakes itself (under the header deadline and the connection
    // limit): to Pingora the TLS port is a plain TCP listener.
    let tls_listener = match tls_addr {
        Some(addr) => Some(TlsListener {
            addr,
            acceptor: tls::settings(holder.clone())?.build(),
        }),
        None => None,
    };
    let guarded = Guarded::new(
        app,
        holder.clone(),
        telemetry.clone(),
        h2c,
        in_flight.clone(),
        tls_listener,
        descriptors,
    );
    let stopped_accepting = guarded.stopped_accepting();
    let mut proxy = Service::new("portico".to_string(), guarded);
    if let Some(addr) = &proxy_addr {
        proxy.add_tcp(addr);
    }
    if let Some(addr) = tls_addr {
        proxy.add_tcp(&addr.to_string());
    }

    let readiness = Readiness::default();
    let reloader = Reloader::new(
        &source,
        holder.clone(),
        stores,
        telemetry.clone(),
        opts.watch,
    );
    let purges = PurgeListener {
        holder: holder.clone(),
        origin: fastrand::u64(..),
        subscribed: Arc::default(),
    };
    let admin = Admin {
        holder: holder.clone(),
        readiness: readiness.clone(),
        reloader: reloader.clone(),
        telemetry: telemetry.clone(),
        origin: purges.origin,
        purges_subscribed: purges.subscribed.clone(),
    };
    let mut admin = Service::new("admin".to_string(), admin);
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("readiness", readiness.clone()));
    let drain = Drain {
        in_flight,
        stopped_accepting,
        holder: holder.clone(),
        telemetry: telemetry.clone(),
    };
    server.add_service(background_service("drain", drain));
    let dns = Resolver {
        holder: holder.clone(),
    };
    server.add_service(background_service("dns", dns));
    server.add_service(background_service("reload", reloader));
    let jwks = JwksRefresher {
        holder: holder.clone(),
    };
    server.add_service(background_service("jwks", jwks));
    let redis = RedisConnector {
        holder: holder.clone(),
    };
    server.add_service(background_service("redis", redis));
    server.add_service(background_service("cache-purges", purges));
    let health = HealthChecker {
        holder: holder.clone(),
    };
    server.add_service(background_service("health-checks", health));
    if let Some(file) = &holder.load().settings.pid_file {
        if let Err(e) = std::fs::write(file, std::process::id().to_string()) {
            tracing::warn!(file, error = %e, "cannot write the pid file");
        }
    }
    // The address, then our pid: after `run --upgrade` only the process that wrote it
    // removes it.
    let record = format!("{admin_addr} {}\n", std::process::id());
    if let Err(e) = std::fs::write(admin_file(), record) {
        tracing::warn!(file = %admin_file().display(), error = %e, "cannot write the admin address file");
    }
    let tls_addr = tls_addr.map(|a| a.to_string());
    tracing::info!(proxy = proxy_addr, proxy_tls = tls_addr, admin = %admin_addr, "portico starting");
    Ok(Built {
        server,
        holder,
        telemetry,
        readiness,
    })
}

/// Resolves DNS targets before the first request so names work from the start.
fn resolve_now(holder: &SnapshotHolder) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(services::resolve_all(holder)),
        Err(e) => tracing::warn!(error = %e, "could not resolve targets at startup"),
    }
}

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    serve(build(&opts)?);
    Ok(())
}

/// Runs until shut down (SIGTERM drains, SIGQUIT hands over to an upgrade), then writes out
/// the access-log lines still buffered.
pub fn serve(built: Built) {
    let shutdown_signal = Box::new(DrainSignal {
        readiness: built.readiness.clone(),
        holder: built.holder.clone(),
    });
    built.server.run(RunArgs { shutdown_signal });
    finish(&built.telemetry, &built.holder);
}

/// What exiting leaves done: the access log and queued spans written out, our pid file
/// removed.
fn finish(telemetry: &Telemetry, holder: &SnapshotHolder) {
    telemetry.access_log.flush();
    if let Some(tracing) = &holder.load().tracing {
        tracing.flush();
    }
    // After an upgrade the files name the successor: only our own are removed.
    let ours = std::process::id().to_string();
    let written = std::fs::read_to_string(admin_file());
    if written.is_ok_and(|record| record.split_whitespace().nth(1) == Some(ours.as_str())) {
        let _ = std::fs::remove_file(admin_file());
    }
    if let Some(file) = &holder.load().settings.pid_file {
        let ours = std::process::id().to_string();
        if std::fs::read_to_string(file).is_ok_and(|pid| pid.trim() == ours) {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Where `run` writes the address of its admin listener, for `portico health` (the
/// container's HEALTHCHECK) to ask the running process without reading the config, which
/// may have been edited badly since, or use env vars the health check lacks.
/// `PORTICO_ADMIN_FILE`, or `portico-admin` in the temporary directory.
pub fn admin_file() -> std::path::PathBuf {
    std::env::var_os("PORTICO_ADMIN_FILE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("portico-admin"))
}
