//! Logging setup: `tracing` to stderr, with Pingora's `log` records captured too.
//! The level comes from `PORTICO_LOG` (e.g. `debug`, `portico=debug,pingora=warn`).

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("PORTICO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
