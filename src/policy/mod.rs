//! Per-route policies, each behind a narrow interface the proxy phases call.

pub mod ratelimit;
