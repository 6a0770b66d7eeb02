//! Portico: a declarative API gateway on Pingora, driven by one `gateway.yaml`.
//!
//! Data flow: `config` (file model, located errors) → `compile` → `snapshot` (immutable,
//! swapped whole) → `proxy` (Pingora phases reading one snapshot per request, running each
//! route's `policy` chain). `app` assembles the server and runs every background loop.
//! See docs/ARCHITECTURE.md.

pub mod aggregate;
pub mod app;
pub mod bounded;
pub mod compile;
pub mod config;
pub mod descriptors;
pub mod diag;
pub mod diff;
pub mod errors;
pub mod explain;
pub mod hashing;
pub mod import;
pub mod live;
pub mod mirror;
pub mod openapi;
pub mod otlp;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod redis_link;
pub mod reference;
pub mod retry;
pub mod router;
pub mod snapshot;
pub mod state;
pub mod sticky;
pub mod telemetry;
pub mod tls;
pub mod units;
pub mod upstream;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
