//! The compiled, immutable config every request reads (built by `compile`), and the
//! `ArcSwap` holder it is swapped through whole. Data only: no parsing, no loops.

use crate::diag::Diagnostic;
use crate::policy::Policy;
use crate::router::{PathRewrite, Router};
use crate::state::Kept;
use crate::telemetry::RouteMetrics;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Settings {
    pub proxy_addr: Option<SocketAddr>,
    pub proxy_tls_addr: Option<SocketAddr>,
    pub h2c: bool,
    pub redirect_https: bool,
    pub admin_addr: SocketAddr,
    pub threads: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub grace_period: Duration,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    pub log_format: crate::telemetry::LogFormat,
    pub resolve_interval: Duration,
    pub upgrade_socket: String,
    pub pid_file: Option<String>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    /// Longest a write to the client may make no progress.
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_per_connection: usize,
    pub max_streams_per_connection: u32,
}

impl Settings {
    /// Settings that only take effect on restart and differ from `other`'s.
    pub fn restart_needed(&self, other: &Settings) -> Vec<String> {
        let (a, b) = (self, other);
        let mut out = Vec::new();
        if a.proxy_addr != b.proxy_addr {
            out.push(format!(
                "listen.proxy: {:?} → {:?}",
                a.proxy_addr, b.proxy_addr
            ));
        }
        if a.proxy_tls_addr != b.proxy_tls_addr {
            out.push(format!(
                "listen.proxy_tls: {:?} → {:?}",
                a.proxy_tls_addr, b.proxy_tls_addr
            ));
        }
        if a.h2c != b.h2c {
            out.push(format!("listen.h2c: {} → {}", a.h2c, b.h2c));
        }
        if a.admin_addr != b.admin_addr {
            out.push(format!("listen.admin: {} → {}", a.admin_addr, b.admin_addr));
        }
        if a.threads != b.threads {
            out.push(format!("server.threads: {} → {}", a.threads, b.threads));
        }
        if a.grace_period != b.grace_period || a.shutdown_timeout != b.shutdown_timeout {
            out.push("server.grace_period/shutdown_timeout".to_string());
        }
        if a.upgrade_socket != b.upgrade_socket || a.pid_file != b.pid_file {
            out.push("server.upgrade_socket/pid_file".to_string());
        }
        if a.max_streams_per_connection != b.max_streams_per_connection {
            out.push(format!(
                "server.max_streams_per_connection: {} → {}",
                a.max_streams_per_connection, b.max_streams_per_connection
            ));
        }
        if a.log_format != b.log_format {
            out.push("server.log_format".to_string());
        }
        out
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Fields an access-log line can carry (any may be excluded).
pub const ACCESS_FIELDS: [&str; 24] = [
    "time",
    "request_id",
    "trace_id",
    "span_id",
    "client_ip",
    "method",
    "protocol",
    "host",
    "user_agent",
    "referer",
    "path",
    "route",
    "upstream",
    "target",
    "tries",
    "status",
    "duration_ms",
    "upstream_ms",
    "bytes_in",
    "bytes_out",
    "user",
    "error",
    "calls",
    "upgraded",
];

pub struct AccessLogSettings {
    pub enabled: bool,
    pub sample: f64,
    pub exclude: Vec<String>,
    pub query: bool,
}

/// What a matched route does with the request.
pub enum Action {
    Proxy(Backends),
    Respond(Arc<StaticResponse>),
    Aggregate(Arc<crate::aggregate::Aggregate>),
    Redirect(Arc<crate::redirect::Redirect>),
}

/// Where a proxy route sends requests: one upstream, or several sharing its traffic by
/// weight (smooth weighted round robin, see `upstream::weighted`).
pub struct Backends {
    pub list: Vec<Backend>,
    /// The backends' turns in one cycle; empty with a single backend.
    order: Box<[u16]>,
    next: AtomicUsize,
}

pub struct Backend {
    pub upstream: Arc<Upstream>,
    pub weight: u32,
    /// The route's metric handles labelled with this upstream.
    pub metrics: RouteMetrics,
}

impl Backends {
    pub fn new(list: Vec<Backend>) -> Backends {
        let order = match list.len() {
            1 => Box::default(),
            _ => crate::upstream::weighted::smooth_order(
                &list.iter().map(|b| b.weight).collect::<Vec<_>>(),
            ),
        };
        Backends {
            list,
            order,
            next: AtomicUsize::new(0),
        }
    }

    /// The backend a request goes to: the next turn, or the turn after it whose upstream
    /// has a target to take it (so a failing canary does not fail its share of requests).
    pub fn choose(&self) -> usize {
        if self.order.is_empty() {
            return 0;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        (0..self.order.len())
            .map(|i| self.order[(k + i) % self.order.len()] as usize)
            .find(|b| self.list[*b].upstream.can_take())
            .unwrap_or(self.order[k % self.order.len()] as usize)
    }

    /// The backend for a request a sticky route keeps (see `sticky`), and whether the
    /// client must be told again (its cookie named none, or a backend that cannot take it).
    pub fn choose_kept(&self, keep: &crate::sticky::Keep) -> (usize, bool) {
        use crate::sticky::Keep;
        let usable = |i: usize| self.list[i].weight > 0 && self.list[i].upstream.can_take();
        match keep {
            Keep::Backend(name) => {
                let named = self.list.iter().position(|b| *b.upstream.name == **name);
                match named.filter(|i| usable(*i)) {
                    Some(i) => (i, false),
                    None => (self.choose(), true),
                }
            }
            Keep::Hash(h) if !self.order.is_empty() => {
                let len = self.order.len();
                let start = (*h % len as u64) as usize;
                let found = (0..len)
                    .map(|i| self.order[(start + i) % len] as usize)
                    .find(|b| usable(*b));
                (found.unwrap_or(self.order[start] as usize), false)
            }
            Keep::Hash(_) => (0, false),
            Keep::Nothing => (self.choose(), true),
        }
    }

    /// The upstreams' names, for views and metric labels.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.list.iter().map(|b| &*b.upstream.name).collect();
        names.join(",")
    }
}

pub struct StaticResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: bytes::Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A compiled route; `Snapshot::routes[i]` is the route the router's match `i` names.
pub struct Route {
    pub name: Arc<str>,
    pub action: Action,
    pub rewrite: PathRewrite,
    /// In running order (see `policy::Stage`).
    pub policies: Vec<Policy>,
    /// Total time for the request, across retries.
    pub timeout: Option<Duration>,
    pub max_body: u64,
    /// `;` path parameters are accepted.
    pub allow_path_params: bool,
    /// Chunked request bodies go upstream as they arrive instead of being read whole first.
    pub stream_request_body: bool,
    /// Longest an upgraded connection may be silent both ways.
    pub upgrade_idle_timeout: Duration,
    /// How a split route keeps a client on its backend.
    pub sticky: Option<crate::sticky::Sticky>,
    /// What failed tries are tried again (the upstream's connect retries when absent).
    pub retry: Option<crate::retry::RetryPolicy>,
    /// Where copies of the route's requests go, and how their answers are compared.
    pub mirror: Option<Arc<crate::mirror::Mirror>>,
    pub metrics: RouteMetrics,
    /// The route's dashboard figures (None with the dashboard off).
    pub live: Option<Arc<crate::live::Ring>>,
    /// Query parameters holding credentials (API keys): never sent upstream.
    pub query_secrets: Vec<String>,
}

impl Route {
    /// The backend a request was sent to (`chosen`); a route with one has it from the start.
    pub fn backend(&self, chosen: Option<usize>) -> Option<&Backend> {
        match &self.action {
            Action::Proxy(b) => b.list.get(chosen.or((b.list.len() == 1).then_some(0))?),
            Action::Respond(_) | Action::Aggregate(_) | Action::Redirect(_) => None,
        }
    }

    pub fn cache(&self) -> Option<&crate::policy::cache::CachePolicy> {
        self.policies.iter().find_map(|p| match p {
            Policy::Cache(c) => Some(&**c),
            _ => None,
        })
    }

    /// The query parameters the route's auth policy reads credentials from.
    pub fn credential_params(policies: &[Policy]) -> Vec<String> {
        policies
            .iter()
            .flat_map(|p| match p {
                Policy::Auth(a) => a.policy.query_params(),
                _ => Vec::new(),
            })
            .collect()
    }

    pub fn auth(&self) -> Option<&crate::policy::auth::RouteAuth> {
        self.policies.iter().find_map(|p| match p {
            Policy::Auth(a) => Some(&**a),
            _ => None,
        })
    }

    pub fn cors(&self) -> Option<&crate::policy::cors::CorsPolicy> {
        self.policies.iter().find_map(|p| match p {
            Policy::Cors(c) => Some(&**c),
            _ => None,
        })
    }
}

pub struct Snapshot {
    pub hash: String,
    pub path: PathBuf,
    pub settings: Settings,
    pub router: Router,
    pub routes: Vec<Route>,
    /// Where each route is written (`file:line:col`), in route order.
    pub defined_at: Vec<String>,
    /// Metrics of requests no route took.
    pub unrouted: RouteMetrics,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The Redis link shared by `backend: redis` limits (connected in the background).
    pub redis: Option<Arc<crate::redis_link::RedisLink>>,
    /// Every remote JWKS some auth policy uses (refreshed in the background).
    pub remote_jwks: Vec<Arc<crate::policy::auth::RemoteJwks>>,
    /// The certificates the TLS listener serves (swapped with the snapshot).
    pub tls: Option<Arc<crate::tls::Certificates>>,
    /// The response caches, by name (for purges).
    pub caches: BTreeMap<String, Arc<crate::policy::cache::CachePolicy>>,
    /// Every header some auth policy forwards claims in: removed from every client request.
    pub identity_headers: Vec<HeaderName>,
    /// Query parameters any policy reads credentials from: redacted in the access log.
    pub query_secrets: Vec<String>,
    /// Referenced files, and the digest of their contents when compiled.
    pub inputs: Vec<PathBuf>,
    pub inputs_digest: String,
    pub metrics: bool,
    /// The dashboard is served and its figures kept (`admin.dashboard`).
    pub dashboard: bool,
    /// The bearer token state-changing admin calls need (`admin.token_env`).
    pub admin_token: Option<String>,
    pub access_log: AccessLogSettings,
    /// The file model it was compiled from (a directory's files merged).
    pub raw: Arc<crate::config::RawConfig>,
    /// The base file: schema files named by routes are read from its directory.
    pub base: PathBuf,
    /// The config with credentials in URLs redacted (`/config`, `/routes`, `diff`), made
    /// when first asked: a large config's JSON costs more than compiling it.
    pub redacted: std::sync::OnceLock<serde_json::Value>,
    /// The OpenAPI document of the routes (admin `/openapi.json`, `portico openapi`), made
    /// when first asked (`openapi::of`).
    pub openapi: std::sync::OnceLock<serde_json::Value>,
    /// Where sampled requests' spans go (`telemetry.tracing`).
    pub tracing: Option<Arc<crate::otlp::Tracing>>,
    pub warnings: Vec<Diagnostic>,
    /// The long-lived state this snapshot uses, kept across reloads once it is live.
    pub state: Kept,
}

/// The active snapshot, shared by all phases and swapped whole on reload.
impl Snapshot {
    /// The config as loaded, with credentials in URLs redacted.
    pub fn redacted(&self) -> &serde_json::Value {
        self.redacted.get_or_init(|| redact(&self.raw))
    }
}

#[derive(Clone)]
pub struct SnapshotHolder(Arc<ArcSwap<Snapshot>>);

impl SnapshotHolder {
    pub fn new(snapshot: Snapshot) -> Self {
        SnapshotHolder(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

/// The config as JSON, with the credentials of URLs (Redis, JWKS) taken out.
fn redact(raw: &crate::config::RawConfig) -> serde_json::Value {
    use crate::diag::redact_url;
    let mut value = serde_json::to_value(raw).unwrap_or_default();
    if let Some(url) = value.pointer_mut("/redis/url") {
        *url = redact_url(url.as_str().unwrap_or_default()).into();
    }
    if let Some(policies) = value.get_mut("auth").and_then(|a| a.as_object_mut()) {
        for policy in policies.values_mut() {
            if let Some(url) = policy.get_mut("jwks_url").filter(|u| u.is_string()) {
                *url = redact_url(url.as_str().unwrap_or_default()).into();
            }
        }
    }
    value
}
