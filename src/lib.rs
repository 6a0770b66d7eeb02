//! Portico: a declarative API gateway on Pingora, driven by one `gateway.yaml`.
//!
//! Data flow: `config` (file model, located errors) → `snapshot` (compiled, immutable,
//! swapped whole) → `proxy` (Pingora phases reading one snapshot per request).

pub mod admin;
pub mod config;
pub mod demo;
pub mod errors;
pub mod explain;
pub mod forwarding;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;
