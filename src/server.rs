//! Assembles the Pingora server: proxy and admin listeners, DNS resolver, readiness.

use crate::admin::{Admin, Readiness};
use crate::config::ConfigError;
use crate::policy::auth::JwksRefresher;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::snapshot::{Snapshot, SnapshotHolder, Stores};
use crate::upstream::health::HealthChecker;
use crate::upstream::resolve::{resolve_all, Resolver};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::Path;
use std::sync::Arc;

pub struct RunOptions<'a> {
    pub config: &'a Path,
    /// Reload when the config's directory changes (SIGHUP always reloads).
    pub watch: bool,
    /// Take over the listeners of a running Portico (Pingora graceful upgrade).
    pub upgrade: bool,
}

/// Loads the config, printing its warnings; a refused config is returned whole.
pub fn load_config(path: &Path) -> Result<Snapshot, ConfigError> {
    let snapshot = Snapshot::load(path)?;
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    Ok(snapshot)
}

fn server_conf(snapshot: &Snapshot) -> ServerConf {
    let s = &snapshot.settings;
    ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.as_secs_f64().ceil() as u64),
        upgrade_sock: "/tmp/portico_upgrade.sock".into(),
        pid_file: "/tmp/portico.pid".into(),
        ..ServerConf::default()
    }
}

/// Builds the server for a loaded snapshot; extra services (the demo's) can be added before
/// [`serve`].
pub fn build(snapshot: Snapshot, opts: &RunOptions) -> (Server, SnapshotHolder) {
    let conf = server_conf(&snapshot);
    let stores = Arc::new(Stores::default());
    stores.remember(&snapshot);
    let proxy_addr = snapshot.settings.proxy_addr.to_string();
    let admin_addr = snapshot.settings.admin_addr.to_string();
    let holder = SnapshotHolder::new(snapshot);
    resolve_now(&holder);

    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let gateway = Gateway {
        holder: holder.clone(),
    };
    let mut proxy =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, gateway, "portico");
    proxy.add_tcp(&proxy_addr);

    let readiness = Readiness::default();
    let reloader = Reloader::new(opts.config, holder.clone(), stores, opts.watch);
    let admin = Admin {
        holder: holder.clone(),
        readiness: readiness.clone(),
        reloader: reloader.clone(),
    };
    let mut admin = Service::new("admin".to_string(), admin);
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("readiness", readiness));
    server.add_service(background_service(
        "dns",
        Resolver {
            holder: holder.clone(),
        },
    ));
    server.add_service(background_service("reload", reloader));
    server.add_service(background_service(
        "jwks",
        JwksRefresher {
            holder: holder.clone(),
        },
    ));
    server.add_service(background_service(
        "health-checks",
        HealthChecker {
            holder: holder.clone(),
        },
    ));
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, "portico listening");
    (server, holder)
}

/// Resolves DNS targets before the first request so names work from the start.
fn resolve_now(holder: &SnapshotHolder) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(resolve_all(holder)),
        Err(e) => tracing::warn!(error = %e, "could not resolve targets at startup"),
    }
}

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let snapshot = load_config(opts.config)?;
    let (server, _holder) = build(snapshot, &opts);
    serve(server);
    Ok(())
}

/// Runs until shut down (SIGTERM drains, SIGQUIT hands over to an upgrade), then writes out
/// the access-log lines still buffered.
pub fn serve(server: Server) {
    server.run(RunArgs::default());
    crate::telemetry::flush_access_log();
}
