//! The file model of gateway.yaml: exactly what a user writes, nothing compiled yet.
//! Every struct denies unknown fields so a typo is an error, never a silent default.

use crate::policy::auth::RawAuth;
use crate::policy::cache::RawCache;
use crate::policy::cors::RawCors;
use crate::policy::headers::RawHeaders;
use crate::policy::ip_access::RawIpAccess;
use crate::policy::ratelimit::RawRateLimit;
use crate::policy::validate::RawValidate;
use crate::units::ByteSize;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The config format version; this Portico reads 1.
    pub version: u32,
    /// The addresses Portico listens on.
    pub listen: Listen,
    /// Process-wide settings: threads, client deadlines, shutdown.
    #[serde(default)]
    pub server: ServerSettings,
    /// The services behind the gateway, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// The Redis server shared by `backend: redis` rate limits and cache purges.
    pub redis: Option<RawRedis>,
    /// Named rate limits that routes refer to with `rate_limit: NAME`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    /// Named auth policies (JWT, API keys, Basic, forward auth, introspection, OIDC)
    /// that routes refer to with `auth: NAME`.
    #[serde(default)]
    pub auth: BTreeMap<String, RawAuth>,
    /// Named quotas (requests per calendar window) that routes apply with `quota: NAME`
    /// and API-key consumers name as their own.
    #[serde(default)]
    pub quotas: BTreeMap<String, crate::policy::quota::RawQuota>,
    /// Named CORS policies that routes refer to with `cors: NAME`.
    #[serde(default)]
    pub cors: BTreeMap<String, RawCors>,
    /// Named client-network rules that routes refer to with `ip_access: NAME`.
    #[serde(default)]
    pub ip_access: BTreeMap<String, RawIpAccess>,
    /// Named response caches that routes refer to with `cache: NAME`.
    #[serde(default)]
    pub caches: BTreeMap<String, RawCache>,
    /// Named response compression that routes apply with `compression: NAME`.
    #[serde(default)]
    pub compression: BTreeMap<String, crate::policy::compression::RawCompression>,
    /// The certificates of the TLS listener (`listen.proxy_tls`).
    pub tls: Option<crate::tls::RawTls>,
    /// Metrics and the access log.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// The admin listener's dashboard and the token its state-changing calls need.
    #[serde(default)]
    pub admin: RawAdmin,
    /// The routes, tried in file order; the first match takes the request.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// More config files (team files) by glob, relative to this file's directory, e.g.
    /// `[teams/*.yaml]`; each may define upstreams, named policies, routes and defaults.
    #[serde(default)]
    pub include: Vec<String>,
    /// Policies and limits for this file's routes that do not name their own.
    pub defaults: Option<RawDefaults>,
    /// Environment variables team files may use as `${VAR}` (none by default: a team file
    /// cannot read the gateway's environment, its secrets included).
    #[serde(default)]
    pub team_env: Vec<String>,
}

/// A file of a config directory beside the base (or one the base includes): one team's
/// upstreams, named policies and routes. Names are global across files.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPart {
    /// Always 1 when given (a team file may leave it out).
    pub version: Option<u32>,
    /// Policies and limits for this file's routes that do not name their own.
    pub defaults: Option<RawDefaults>,
    /// The services behind the gateway, by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Named rate limits that routes refer to with `rate_limit: NAME`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    /// Named auth policies (JWT, API keys, Basic, forward auth, introspection, OIDC)
    /// that routes refer to with `auth: NAME`.
    #[serde(default)]
    pub auth: BTreeMap<String, RawAuth>,
    /// Named quotas (requests per calendar window) that routes apply with `quota: NAME`
    /// and API-key consumers name as their own.
    #[serde(default)]
    pub quotas: BTreeMap<String, crate::policy::quota::RawQuota>,
    /// Named CORS policies that routes refer to with `cors: NAME`.
    #[serde(default)]
    pub cors: BTreeMap<String, RawCors>,
    /// Named client-network rules that routes refer to with `ip_access: NAME`.
    #[serde(default)]
    pub ip_access: BTreeMap<String, RawIpAccess>,
    /// Named response caches that routes refer to with `cache: NAME`.
    #[serde(default)]
    pub caches: BTreeMap<String, RawCache>,
    /// Named response compression that routes apply with `compression: NAME`.
    #[serde(default)]
    pub compression: BTreeMap<String, crate::policy::compression::RawCompression>,
    /// The routes, tried after the base file's and those of files earlier by name.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// What a file's routes get when they do not say: a route naming its own policy keeps
/// it, and `none` (e.g. `auth: none`) opts one route out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// A named auth policy.
    pub auth: Option<String>,
    /// A named CORS policy.
    pub cors: Option<String>,
    /// A named rate limit.
    pub rate_limit: Option<String>,
    /// A named client-network rule.
    pub ip_access: Option<String>,
    /// A `caches:` entry.
    pub cache: Option<String>,
    /// A `compression:` entry.
    pub compression: Option<String>,
    /// Total time for each request, across retries.
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub timeout: Option<Duration>,
    /// The request body limit.
    pub max_body: Option<ByteSize>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Serve Prometheus metrics on the admin listener at /metrics (default true).
    #[serde(default = "yes")]
    pub metrics: bool,
    /// The JSON access log on stdout.
    #[serde(default)]
    pub access_log: RawAccessLog,
    /// OpenTelemetry spans (one per request and per upstream attempt) exported over OTLP.
    pub tracing: Option<crate::otlp::RawTracing>,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            metrics: true,
            access_log: RawAccessLog::default(),
            tracing: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The environment variable holding the bearer token that state-changing admin calls
    /// (cache purges) need; without it, they are refused.
    pub token_env: Option<String>,
    /// Serve the read-only dashboard at /ui/ and keep its live figures (default true).
    #[serde(default = "yes")]
    pub dashboard: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            token_env: None,
            dashboard: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// Write one JSON line per request to stdout (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Share of requests logged, 0.0 to 1.0.
    #[serde(default = "one")]
    pub sample: f64,
    /// Fields left out of every line.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Log the query string too (off by default: queries often carry tokens).
    #[serde(default)]
    pub query: bool,
}

impl Default for RawAccessLog {
    fn default() -> Self {
        RawAccessLog {
            enabled: true,
            sample: 1.0,
            exclude: Vec::new(),
            query: false,
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// redis://[user:password@]HOST:PORT[/DB]; credentials are never shown.
    pub url: String,
    /// Longest a request waits for Redis before `on_redis_error` applies.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_redis_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Plain HTTP (optional when `proxy_tls` is given).
    pub proxy: Option<String>,
    /// The admin listener, IP:PORT: /health, /ready, /metrics, /config, /routes, cache purges.
    pub admin: String,
    /// A TLS listener (needs `tls:`), serving HTTP/2 and HTTP/1.1 by ALPN.
    pub proxy_tls: Option<String>,
    /// Cleartext HTTP/2 (prior knowledge) on `proxy`, besides HTTP/1.1.
    #[serde(default)]
    pub h2c: bool,
    /// Answer plain-HTTP requests on `proxy` with a 308 to the same URL on `proxy_tls`.
    #[serde(default)]
    pub redirect_https: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Pingora worker threads; defaults to the number of CPUs.
    pub threads: Option<usize>,
    /// CIDRs or IPs whose X-Forwarded-For (and -Host, -Proto) is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// After SIGTERM, how long in-flight requests may take to finish (default 10s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_grace", with = "crate::units::duration")]
    pub grace_period: Duration,
    /// After the grace period, how long the runtimes get to stop (default 5s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_shutdown_timeout", with = "crate::units::duration")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, `/ready` answers 503 and everything is still served for this long
    /// before the drain starts, so load balancers stop sending first (default 0s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default, with = "crate::units::duration")]
    pub drain_delay: Duration,
    /// The default request body limit of every route (default 100MiB).
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// How often DNS-named targets are resolved again (default 30s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_resolve_interval", with = "crate::units::duration")]
    pub resolve_interval: Duration,
    /// Deadlines for client connections.
    #[serde(default)]
    pub timeouts: ClientTimeouts,
    /// Most client connections open at once; more are closed at accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most requests one client connection may make (HTTP/1.1 keep-alive requests, HTTP/2
    /// streams, accepted or reset); then the connection is closed after its answer (HTTP/1.1)
    /// or sent GOAWAY (HTTP/2), as nginx's `keepalive_requests` does. Default 1000.
    #[serde(default = "default_max_requests_per_connection")]
    pub max_requests_per_connection: usize,
    /// Most HTTP/2 streams one client connection may have open at once (advertised as
    /// SETTINGS_MAX_CONCURRENT_STREAMS; more are refused). Each open stream may hold an
    /// upstream connection. Default 100; a change needs a restart.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// Where a new process (`run --upgrade`) takes over the listening sockets (default
    /// `/tmp/portico-upgrade-PORT.sock`, PORT of `listen.proxy`: one per gateway on a host).
    pub upgrade_socket: Option<String>,
    /// Portico writes its process id here at start (and removes it at exit), e.g. for
    /// `kill -QUIT $(cat FILE)` in an upgrade. Not written when absent.
    pub pid_file: Option<String>,
    /// The gateway's own log records on stderr: `text`, `json` (one object per line) or
    /// `auto` (default: text on a terminal, JSON otherwise). `PORTICO_LOG_FORMAT` wins; a
    /// change needs a restart.
    #[serde(default)]
    pub log_format: crate::telemetry::LogFormat,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: None,
            trusted_proxies: Vec::new(),
            grace_period: default_grace(),
            shutdown_timeout: default_shutdown_timeout(),
            drain_delay: Duration::ZERO,
            max_body: default_max_body(),
            resolve_interval: default_resolve_interval(),
            timeouts: ClientTimeouts::default(),
            max_connections: default_max_connections(),
            max_requests_per_connection: default_max_requests_per_connection(),
            max_streams_per_connection: default_max_streams_per_connection(),
            upgrade_socket: None,
            pid_file: None,
            log_format: Default::default(),
        }
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_requests_per_connection() -> usize {
    1000
}
fn default_max_streams_per_connection() -> u32 {
    100
}

fn default_max_body() -> ByteSize {
    ByteSize(100 * 1024 * 1024)
}
fn default_max_connections() -> usize {
    10_000
}

/// `server.timeouts`: how long a client may take.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientTimeouts {
    /// For a whole request head on a new connection (default 10s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_header_timeout", with = "crate::units::duration")]
    pub header: Duration,
    /// For the next request head on a kept-alive connection, waiting included (default 60s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_idle_timeout", with = "crate::units::duration")]
    pub idle: Duration,
    /// Between two reads of a request body (default 60s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_idle_timeout", with = "crate::units::duration")]
    pub body: Duration,
    /// Longest a write to the client may make no progress (a client that stops reading,
    /// an HTTP/2 stream at window 0) before the request is ended, freeing both sides
    /// (default 60s, as nginx's send_timeout).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_idle_timeout", with = "crate::units::duration")]
    pub send: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            header: default_header_timeout(),
            idle: default_idle_timeout(),
            body: default_idle_timeout(),
            send: default_idle_timeout(),
        }
    }
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// HOST:PORT of each instance (or https://HOST:PORT for TLS); DNS names are re-resolved.
    /// `{ addr: HOST:PORT, weight: 3 }` gives one a weight (default 1; 0 drains it).
    pub targets: Vec<RawTarget>,
    /// round_robin (default), random, least_requests, hash(header:NAME) (from trusted
    /// proxies), hash(client_ip), hash(claim:NAME) (verified) or hash(cookie:NAME).
    #[serde(default = "default_balance")]
    #[schemars(pattern(r"^\s*(round_robin|random|least_requests|hash\(client_ip\)|hash\(header:\s*[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*\)|hash\((claim|cookie):\s*[0-9A-Za-z._-]+\s*\))\s*$"))]
    pub balance: String,
    /// Connect, read and write timeouts per try.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries on another target when connecting fails (idempotent methods only).
    #[serde(default)]
    pub retries: Retries,
    /// Active health checks per target (plain HTTP).
    pub health_check: Option<RawHealthCheck>,
    /// A circuit breaker per target.
    pub breaker: Option<RawBreaker>,
    /// Outlier ejection: targets failing in a row are taken out for a while.
    pub outlier: Option<RawOutlier>,
    /// TLS to the targets (also implied by `https://` targets).
    pub tls: Option<RawUpstreamTls>,
    /// `h2` speaks HTTP/2 to the targets (gRPC needs it): by ALPN over TLS, else cleartext
    /// with prior knowledge.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

/// A target: `HOST:PORT`, or `{ addr: HOST:PORT, weight: N }`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum RawTarget {
    Addr(String),
    Weighted(WeightedTarget),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedTarget {
    /// HOST:PORT (or https://HOST:PORT).
    pub addr: String,
    /// Its share of the traffic against the others' weights (0 to 1000; 0 drains it).
    pub weight: u32,
}

impl RawTarget {
    pub fn addr(&self) -> &str {
        match self {
            RawTarget::Addr(a) | RawTarget::Weighted(WeightedTarget { addr: a, .. }) => a,
        }
    }

    pub fn weight(&self) -> u32 {
        match self {
            RawTarget::Addr(_) => 1,
            RawTarget::Weighted(w) => w.weight,
        }
    }
}

/// One of a route's `backends`: an upstream and its share of the route's traffic.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// The upstream.
    pub upstream: String,
    /// Its share against the other backends' weights (0 to 1000; 0 drains it). Default 1.
    #[serde(default = "weight_one")]
    pub weight: u32,
}

fn weight_one() -> u32 {
    1
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    H2,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// The name sent in SNI and verified in the certificate (default: the target's host).
    pub sni: Option<String>,
    /// CA certificates (PEM) to verify the targets with, instead of the system's.
    pub ca_file: Option<String>,
    /// Verify the certificate chain and name (on by default; off is logged as a warning).
    #[serde(default = "yes")]
    pub verify: bool,
    /// A client certificate chain and key (PEM) for mutual TLS.
    pub client_cert: Option<String>,
    /// The private key (PEM) of `client_cert`.
    pub client_key: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// The path probed with GET; 2xx and 3xx pass.
    pub path: String,
    /// Time between checks of one target.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_hc_interval", with = "crate::units::duration")]
    pub interval: Duration,
    /// Longest a check may take.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_hc_timeout", with = "crate::units::duration")]
    pub timeout: Duration,
    /// Failing checks in a row that take a target out.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Passing checks in a row that make an unhealthy target healthy again.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_hc_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_hc_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_after() -> u32 {
    3
}
fn default_healthy_after() -> u32 {
    2
}

/// `outlier: { consecutive_failures: 5, base_ejection: 30s, max_ejected: 50% }`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Failures in a row (5xx, resets, timeouts, connect failures) that eject a target.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// How long a first ejection lasts; the n-th lasts n times as long.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_open_for", with = "crate::units::duration")]
    pub base_ejection: Duration,
    /// At most this share of the upstream's targets are out at once (default 50%).
    #[serde(default = "default_max_ejected")]
    pub max_ejected: String,
}

fn default_max_ejected() -> String {
    "50%".into()
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Failures in a row (5xx, resets, timeouts) that open the circuit.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Also open when this share of requests in `window` failed (at least `min_requests`).
    pub failure_ratio: Option<f64>,
    /// The window over which `failure_ratio` is measured.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_window", with = "crate::units::duration")]
    pub window: Duration,
    /// Requests in the window before `failure_ratio` applies.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// How long an open circuit refuses requests before probing.
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_open_for", with = "crate::units::duration")]
    pub open_for: Duration,
    /// Probe requests let through once `open_for` has passed.
    #[serde(default = "default_half_open")]
    pub half_open_requests: u32,
}

fn default_consecutive() -> u32 {
    5
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_min_requests() -> u32 {
    10
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}
fn default_half_open() -> u32 {
    1
}

fn default_balance() -> String {
    "round_robin".to_string()
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Longest a connection to a target may take (default 2s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_connect", with = "crate::units::duration")]
    pub connect: Duration,
    /// Longest to wait for the target to answer or send more (default 30s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_read", with = "crate::units::duration")]
    pub read: Duration,
    /// Longest a write to the target may take (default 30s).
    #[schemars(with = "crate::units::DurationText")]
    #[serde(default = "default_read", with = "crate::units::duration")]
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: default_connect(),
            read: default_read(),
            write: default_read(),
        }
    }
}

fn default_connect() -> Duration {
    Duration::from_secs(2)
}
fn default_read() -> Duration {
    Duration::from_secs(30)
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra tries after the first one.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// What is retried: connect_failure.
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: default_attempts(),
            on: default_retry_on(),
        }
    }
}

fn default_attempts() -> u32 {
    1
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure]
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    ConnectFailure,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// A unique name: it labels metrics and logs.
    pub name: String,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// The upstream that serves this route.
    pub upstream: Option<String>,
    /// Several upstreams sharing the route's traffic by weight (instead of `upstream`),
    /// e.g. a canary: `[{ upstream: orders, weight: 90 }, { upstream: orders-v2, weight: 10 }]`.
    pub backends: Option<Vec<RawBackend>>,
    /// Answer directly from the gateway, without an upstream.
    pub respond: Option<RawRespond>,
    /// Answer with the JSON of several upstream calls made in parallel.
    pub aggregate: Option<crate::aggregate::RawAggregate>,
    /// Keep each client on one of the `backends`: by a signed cookie, a claim or a header.
    pub sticky: Option<crate::sticky::RawSticky>,
    /// Copy chosen requests to a shadow upstream and compare its answers with the
    /// client's (the client's answer never waits for it).
    pub mirror: Option<crate::mirror::RawMirror>,
    /// Try failed requests again: on what, how often, within what budget.
    pub retry: Option<crate::retry::RawRetry>,
    /// Answer with a redirect built from the request (301/302/303/307/308).
    pub redirect: Option<crate::redirect::RawRedirect>,
    /// A prefix removed from the path before it goes upstream.
    pub strip_prefix: Option<String>,
    /// The path sent upstream, a template such as /v2/users/{id}.
    pub rewrite: Option<String>,
    /// Total time for the request, across retries (default: none).
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub timeout: Option<Duration>,
    /// The request body limit (overrides server.max_body).
    pub max_body: Option<ByteSize>,
    /// A named rate limit.
    pub rate_limit: Option<String>,
    /// A named auth policy every request must pass.
    pub auth: Option<String>,
    /// A named quota (requests per calendar window).
    pub quota: Option<String>,
    /// Claims the verified token must carry (needs `auth`).
    pub require: Option<crate::policy::auth::RawRequire>,
    /// A named CORS policy.
    pub cors: Option<String>,
    /// Required headers, query parameters and a JSON Schema for the body.
    pub validate: Option<RawValidate>,
    /// A named client-network rule.
    pub ip_access: Option<String>,
    /// Header edits on the request sent upstream and on every response.
    pub headers: Option<RawHeaders>,
    /// How long an upgraded connection (WebSocket) may pass no data either way before it
    /// is closed (default 60s).
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "crate::units::duration::option")]
    pub upgrade_idle_timeout: Option<Duration>,
    /// A `caches:` entry: GET and HEAD answers are stored and served from it.
    pub cache: Option<String>,
    /// A `compression:` entry: answers are compressed as the client accepts.
    pub compression: Option<String>,
    /// Accept `;` path parameters (refused by default: `/admin;x` means `/admin` to some
    /// servers).
    #[serde(default)]
    pub allow_path_params: bool,
    /// Stream chunked request bodies (HTTP/1.1 without Content-Length) to the upstream as
    /// they arrive. Off by default: such a body is read whole (up to 64 KiB) and its chunk
    /// framing checked before the upstream is contacted; a larger one gets 411.
    #[serde(default)]
    pub stream_request_body: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// An exact path.
    pub path: Option<String>,
    /// A path prefix, matched on whole segments.
    pub path_prefix: Option<String>,
    /// A regular expression the whole path must match.
    pub path_regex: Option<String>,
    /// `/users/{id}/orders/{order}`: one segment per `{name}`, `{rest...}` for the rest.
    pub path_template: Option<String>,
    /// The methods accepted (default: all).
    pub methods: Option<Vec<String>>,
    /// The Host to match: exact, or `*.example.com`.
    pub host: Option<String>,
    /// Header conditions: a value to equal, or `{ present: true|false }`.
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderCond>,
    /// Query parameter conditions: a value to equal (`debug: "1"`), `{ regex: "^v[0-9]+$" }`,
    /// or `{ present: true|false }`; percent-decoded, every value of a repeated parameter.
    #[serde(default)]
    pub query: BTreeMap<String, QueryCondText>,
    /// Cookies that must have these values: `{ beta: always }`.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// Match the path regardless of letter case (`/Admin` like `/admin`).
    #[serde(default)]
    pub ignore_case: bool,
}

/// `X-Env: staging` requires that value; `X-Debug: { present: true }` only its presence
/// (`present: false`: its absence).
#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum HeaderCond {
    Equals(String),
    Present {
        /// true: the header must be there; false: it must not.
        present: bool,
    },
}

/// A query parameter's condition as written.
#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum QueryCondText {
    Equals(String),
    Regex {
        /// A regular expression the whole value must match.
        regex: String,
    },
    Present {
        /// true: the parameter must be there; false: it must not.
        present: bool,
    },
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    /// The status code (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// A JSON body (sent as application/json).
    pub json: Option<serde_json::Value>,
    /// A text/plain body.
    pub text: Option<String>,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}
