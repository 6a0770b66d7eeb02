//! Per-route policies, each behind a narrow interface the proxy phases call.

pub mod auth;
pub mod cors;
pub mod ratelimit;
pub mod validate;
