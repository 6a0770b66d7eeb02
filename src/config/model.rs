//! The file model of gateway.yaml: exactly what a user writes, nothing compiled yet.
//! Every struct denies unknown fields so a typo is an error, never a silent default.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub version: u32,
    pub listen: Listen,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub redis: Option<RawRedis>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    #[serde(default)]
    pub auth: BTreeMap<String, RawAuth>,
    #[serde(default)]
    pub cors: BTreeMap<String, RawCors>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    #[serde(default = "yes")]
    pub metrics: bool,
    #[serde(default)]
    pub access_log: RawAccessLog,
}

impl Default for RawTelemetry {
    fn default() -> Self {
        RawTelemetry {
            metrics: true,
            access_log: RawAccessLog::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
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

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub algorithms: Vec<String>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    #[schemars(with = "String")]
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    pub public_key_file: Option<String>,
    /// HMAC secret from this environment variable (never inline in the file).
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub issuer: Option<OneOrMany>,
    pub audience: Option<OneOrMany>,
    #[schemars(with = "String")]
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// `bearer` (default), `cookie:NAME` or `header:NAME`.
    #[serde(default = "default_token_source")]
    pub token: String,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_token_source() -> String {
    "bearer".to_string()
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Option<Vec<String>>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[schemars(with = "Option<String>")]
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// `require: { claims: { role: [admin, user], amr: { all_of: [pwd, mfa] } } }`
#[derive(Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    #[serde(default)]
    pub claims: BTreeMap<String, RawClaimRule>,
}

/// A list or a single value means "any of"; `{all_of: [...]}` needs every value.
#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum RawClaimRule {
    AnyList(Vec<Scalar>),
    AnyOf { any_of: Vec<Scalar> },
    AllOf { all_of: Vec<Scalar> },
    One(Scalar),
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Text(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    /// Longest a request waits for Redis before `on_redis_error` applies.
    #[schemars(with = "String")]
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests: u64,
    #[schemars(with = "String")]
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    #[serde(default)]
    pub burst: u64,
    #[serde(default = "default_limit_key")]
    pub key: String,
    #[serde(default)]
    pub backend: LimitBackend,
    #[serde(default)]
    pub on_redis_error: OnRedisError,
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_limit_key() -> String {
    "client_ip".to_string()
}
fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitBackend {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub proxy: String,
    pub admin: String,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Pingora worker threads; defaults to the number of CPUs.
    pub threads: Option<usize>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[schemars(with = "String")]
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace_period: Duration,
    #[schemars(with = "String")]
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    #[schemars(with = "String")]
    #[serde(default = "default_resolve_interval", with = "humantime_serde")]
    pub resolve_interval: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: None,
            trusted_proxies: Vec::new(),
            grace_period: default_grace(),
            shutdown_timeout: default_shutdown_timeout(),
            max_body: default_max_body(),
            resolve_interval: default_resolve_interval(),
        }
    }
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_body() -> ByteSize {
    ByteSize(100 * 1024 * 1024)
}
fn default_resolve_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Vec<String>,
    #[serde(default = "default_balance")]
    pub balance: String,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retries: Retries,
    pub health_check: Option<RawHealthCheck>,
    pub breaker: Option<RawBreaker>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: String,
    #[schemars(with = "String")]
    #[serde(default = "default_hc_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[schemars(with = "String")]
    #[serde(default = "default_hc_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
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

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// Also open when this share of requests in `window` failed (at least `min_requests`).
    pub failure_ratio: Option<f64>,
    #[schemars(with = "String")]
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    #[schemars(with = "String")]
    #[serde(default = "default_open_for", with = "humantime_serde")]
    pub open_for: Duration,
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

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[schemars(with = "String")]
    #[serde(default = "default_connect", with = "humantime_serde")]
    pub connect: Duration,
    #[schemars(with = "String")]
    #[serde(default = "default_read", with = "humantime_serde")]
    pub read: Duration,
    #[schemars(with = "String")]
    #[serde(default = "default_read", with = "humantime_serde")]
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

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Extra tries after the first one.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
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

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    pub upstream: Option<String>,
    pub respond: Option<RawRespond>,
    pub strip_prefix: Option<String>,
    pub rewrite: Option<String>,
    #[schemars(with = "Option<String>")]
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub max_body: Option<ByteSize>,
    pub rate_limit: Option<String>,
    pub auth: Option<String>,
    pub require: Option<RawRequire>,
    pub cors: Option<String>,
    pub validate: Option<RawValidate>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    /// A JSON Schema file for the request body (relative to the config's directory).
    pub body: Option<String>,
    /// Methods validated (default POST, PUT, PATCH).
    pub methods: Option<Vec<String>>,
    #[serde(default = "default_validate_max")]
    pub max_body_bytes: ByteSize,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub query: Vec<String>,
}

fn default_validate_max() -> ByteSize {
    ByteSize(64 * 1024)
}

#[derive(Debug, Deserialize, Serialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, HeaderCond>,
}

/// `X-Env: staging` requires that value; `X-Debug: { present: true }` only its presence
/// (`present: false`: its absence).
#[derive(Debug, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(untagged)]
pub enum HeaderCond {
    Equals(String),
    Present { present: bool },
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    #[serde(default = "default_status")]
    pub status: u16,
    pub json: Option<serde_json::Value>,
    pub text: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}

/// A size in bytes, written as a number or with a unit: `512KiB`, `10MB`, `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size `{text}`: expected e.g. 1048576, 512KiB or 10MB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1024,
            "MB" => 1000 * 1000,
            "MiB" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`: use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes, as a number or with a unit: 512KiB, 10MB, 1GiB",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+ *(B|KB|kB|KiB|MB|MiB|GB|GiB)?$" }
            ]
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(u64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(n) => Ok(ByteSize(n)),
            Repr::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("10MiB"), Ok(ByteSize(10 << 20)));
        assert_eq!(ByteSize::parse("5 KB"), Ok(ByteSize(5000)));
        assert_eq!(ByteSize::parse("42"), Ok(ByteSize(42)));
        assert!(ByteSize::parse("10 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
    }
}
