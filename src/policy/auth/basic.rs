//! HTTP Basic (`type: basic`) against an htpasswd file of bcrypt or SHA-512-crypt hashes.
//! A bcrypt check costs tens of milliseconds of CPU, so a flood of guesses must not buy
//! them: failed attempts are counted per client IP (per /64 for IPv6) and per user, each
//! charged before its hash runs, and past the limit a request is refused before any hash;
//! a few hashes at most run at once, off the event loop; verified pairs are cached
//! (bounded, briefly, by a digest of the pair) and dropped when the file changes.

use super::*;
use crate::bounded::Bounded;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    /// The realm browsers show in their login prompt.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// `user:hash` lines, bcrypt (`htpasswd -B`) or SHA-512-crypt (`openssl passwd -6`);
    /// relative to the config file. A change to it reloads the config.
    pub htpasswd_file: String,
    /// Identity headers for the upstream, e.g. `{ sub: X-User }` (the user name is `sub`);
    /// every client's own copies are removed.
    #[serde(default)]
    pub forward: BTreeMap<String, String>,
    /// Failed attempts allowed per client IP, and per user, in a minute; past it, requests
    /// get 429 without their password being checked.
    #[serde(default = "default_failures")]
    pub failures_per_minute: u32,
}

fn default_realm() -> String {
    "portico".into()
}
fn default_failures() -> u32 {
    10
}

#[derive(Clone)]
enum Hash {
    Bcrypt(String),
    Sha512(String),
}

impl Hash {
    fn verify(&self, password: &str) -> bool {
        match self {
            Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            Hash::Sha512(h) => sha_crypt::sha512_check(password, h).is_ok(),
        }
    }
}

/// How long a verified pair is taken on trust.
const VERIFIED_FOR: Duration = Duration::from_secs(60);
const VERIFIED_ENTRIES: usize = 10_000;
/// The window failures are counted in.
const FAILURE_WINDOW: u64 = 60;

/// Verified pairs by a digest of `user:password`, each with when it was verified.
pub struct Verified(Bounded<Instant>);

/// Failed attempts per `ip:ADDR` and `u:USER`: the window's start and the count.
pub struct Failures(Bounded<(u64, u32)>);

impl Failures {
    fn count(&self, key: &str, now: u64) -> u32 {
        let shard = self.0.shard(key.as_bytes());
        match shard.get(key) {
            Some((start, n)) if now.saturating_sub(*start) < FAILURE_WINDOW => *n,
            _ => 0,
        }
    }

    fn add(&self, key: &str, now: u64) {
        let mut shard = self.0.shard(key.as_bytes());
        let next = match shard.get(key) {
            Some((start, n)) if now.saturating_sub(*start) < FAILURE_WINDOW => (*start, n + 1),
            _ => (now, 1),
        };
        shard.insert(key, next, |(start, _)| {
            now.saturating_sub(*start) >= FAILURE_WINDOW
        });
    }

    /// Takes back one failure charged before a check that then succeeded.
    fn refund(&self, key: &str) {
        let mut shard = self.0.shard(key.as_bytes());
        if let Some((_, n)) = shard.get_mut(key) {
            *n = n.saturating_sub(1);
        }
    }
}

pub struct Basic {
    pub name: Arc<str>,
    realm: String,
    users: HashMap<String, Hash>,
    pub forward: Vec<(String, HeaderName)>,
    failures_allowed: u32,
    failures: Arc<Failures>,
    verified: Arc<Verified>,
    /// What an unknown user's password is checked against: the file's costliest hash, so
    /// the answer takes as long as for a known user (no user enumeration by timing).
    decoy: Hash,
    /// Hashes computed at once, at most (each holds a blocking thread and a core).
    hashing: Arc<tokio::sync::Semaphore>,
    /// Every hash computed (`portico_auth_password_checks_total`).
    checks: IntCounter,
}

/// Hashes one policy computes at once: a flood of checks gets 503s rather than every core.
const HASHING_AT_ONCE: usize = 4;

enum BasicError {
    Missing,
    Malformed,
    Wrong,
    TooManyFailures,
    Busy,
}

impl Basic {
    pub(super) async fn identify(
        &self,
        req: &RequestHeader,
        info: &RequestInfo<'_>,
    ) -> Result<Arc<Value>, GatewayError> {
        let (user, password) = credentials(&req.headers).map_err(|e| self.refusal(e))?;
        let pair: [u8; 32] = Sha256::digest(format!("{user}:{password}")).into();
        let pair = hex::encode(pair);
        if self.was_verified(&pair) {
            return Ok(identity(&user));
        }
        let now = crate::units::unix_now();
        let ip_key = format!("ip:{}", info.client_ip.map_or_else(String::new, network));
        let user_key = format!("u:{user}");
        let over = |k: &str| self.failures.count(k, now) >= self.failures_allowed;
        if over(&ip_key) || over(&user_key) {
            return Err(self.refusal(BasicError::TooManyFailures));
        }
        let Ok(permit) = self.hashing.clone().try_acquire_owned() else {
            return Err(self.refusal(BasicError::Busy));
        };
        // Charged before the hash runs, so concurrent guesses cannot all pass the limit
        // meanwhile; a success takes the charge back.
        self.failures.add(&ip_key, now);
        self.failures.add(&user_key, now);
        let known = self.users.get(&user).cloned();
        let hash = known.clone().unwrap_or_else(|| self.decoy.clone());
        self.checks.inc();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&password) && known.is_some()
        })
        .await
        .unwrap_or(false);
        if !ok {
            return Err(self.refusal(BasicError::Wrong));
        }
        self.failures.refund(&ip_key);
        self.failures.refund(&user_key);
        self.verified
            .0
            .shard(pair.as_bytes())
            .insert(&pair, Instant::now(), |t| t.elapsed() >= VERIFIED_FOR);
        Ok(identity(&user))
    }

    fn was_verified(&self, pair: &str) -> bool {
        let shard = self.verified.0.shard(pair.as_bytes());
        shard.get(pair).is_some_and(|t| t.elapsed() < VERIFIED_FOR)
    }

    fn refusal(&self, e: BasicError) -> GatewayError {
        let (status, code, message) = match e {
            BasicError::Missing => (
                401,
                Code::CredentialsMissing,
                "no user name and password were sent",
            ),
            BasicError::Malformed => (
                401,
                Code::CredentialsMalformed,
                "the Authorization header is not well-formed Basic credentials",
            ),
            BasicError::Wrong => (
                401,
                Code::CredentialsInvalid,
                "the user name or password is wrong",
            ),
            BasicError::TooManyFailures => (
                429,
                Code::TooManyFailedLogins,
                "too many failed logins from this address or for this user; retry in a minute",
            ),
            BasicError::Busy => (
                503,
                Code::AuthBusy,
                "too many passwords are being checked at once; retry shortly",
            ),
        };
        let mut refusal = Refusal::new(status, code, message).counted(Counted::AuthFailure);
        match status {
            429 => refusal = refusal.header(http::header::RETRY_AFTER, FAILURE_WINDOW.into()),
            503 => refusal = refusal.header(http::header::RETRY_AFTER, 1.into()),
            _ => {}
        }
        let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm);
        match HeaderValue::try_from(challenge) {
            Ok(v) if status == 401 => refusal.header(http::header::WWW_AUTHENTICATE, v).into(),
            _ => refusal.into(),
        }
    }

    pub fn scheme(&self) -> Value {
        serde_json::json!({"type": "http", "scheme": "basic", "description": format!("user name and password (realm {})", self.realm)})
    }

    pub fn details(&self) -> Value {
        serde_json::json!({"realm": self.realm, "users": self.users.len(), "failures_per_minute": self.failures_allowed})
    }
}

/// Failures are counted per address, and per /64 for IPv6 (one host's usual share).
fn network(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The costliest hash of the file (bcrypt by cost, then SHA-512-crypt by rounds), or a
/// bcrypt hash of cost 10 when the file has no user.
fn costliest(users: &HashMap<String, Hash>) -> Hash {
    let cost = |h: &Hash| match h {
        Hash::Bcrypt(t) => (
            1,
            t.get(4..6).and_then(|c| c.parse::<u32>().ok()).unwrap_or(0),
        ),
        Hash::Sha512(t) => {
            let rounds = t
                .strip_prefix("$6$rounds=")
                .and_then(|r| r.split('$').next()?.parse().ok());
            (0, rounds.unwrap_or(5000))
        }
    };
    let decoy = "$2y$10$/Ys/fB8ZHzl84aJPVVNgc.rBWkbnSXEexHR6WpVvEYQNLwUO5LBfm";
    users
        .values()
        .max_by_key(|h| cost(h))
        .cloned()
        .unwrap_or_else(|| Hash::Bcrypt(decoy.into()))
}

fn identity(user: &str) -> Arc<Value> {
    Arc::new(serde_json::json!({ "sub": user }))
}

/// The user and password of `Authorization: Basic ...` (sent once).
fn credentials(headers: &HeaderMap) -> Result<(String, String), BasicError> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = all.next().ok_or(BasicError::Missing)?;
    if all.next().is_some() {
        return Err(BasicError::Malformed);
    }
    let text = value.to_str().map_err(|_| BasicError::Malformed)?;
    let (scheme, encoded) = text.trim().split_once(' ').ok_or(BasicError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::Missing);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| BasicError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| BasicError::Malformed)?;
    let (user, password) = decoded.split_once(':').ok_or(BasicError::Malformed)?;
    if user.is_empty() || decoded.len() > 4096 {
        return Err(BasicError::Malformed);
    }
    Ok((user.to_string(), password.to_string()))
}

/// Compiles `type: basic`: the htpasswd file is read and each line's scheme checked here.
pub fn compile(cx: &mut CompileCx, name: &str, b: &RawBasic) -> Option<Basic> {
    let at = format!("auth.{name}");
    let forward = forward_headers(cx.d, &format!("{at}.forward"), &b.forward);
    if b.realm.contains(['"', '\\']) || b.realm.chars().any(char::is_control) {
        cx.d.error(
            &format!("{at}.realm"),
            "a realm cannot hold quotes, backslashes or control characters",
            Some("use plain words, e.g. realm: ops".into()),
        );
        return None;
    }
    let text = cx
        .inputs
        .read(cx.d, &format!("{at}.htpasswd_file"), &b.htpasswd_file)?;
    let file = cx.inputs.path_of(&b.htpasswd_file);
    let users = htpasswd(cx.d, &file, &text)?;
    let decoy = costliest(&users);
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    let failures = cx
        .state
        .keep("basic_failures", name, &b.failures_per_minute, || {
            Failures(Bounded::new(16, 100_000))
        });
    // Keyed by the file's content: a changed file (a revoked user) drops every pair.
    let verified = cx.state.keep("basic_verified", name, &digest, || {
        Verified(Bounded::new(16, VERIFIED_ENTRIES))
    });
    Some(Basic {
        name: name.into(),
        realm: b.realm.clone(),
        users,
        forward,
        failures_allowed: b.failures_per_minute.max(1),
        failures,
        verified,
        decoy,
        hashing: Arc::new(tokio::sync::Semaphore::new(HASHING_AT_ONCE)),
        checks: cx.metrics.password_checks.with_label_values(&[name]),
    })
}

/// Reads `user:hash` lines; a weak or unknown scheme is refused at its line.
fn htpasswd(d: &mut Diags, file: &std::path::Path, text: &str) -> Option<HashMap<String, Hash>> {
    let mut users = HashMap::new();
    let mut ok = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pos = crate::diag::Pos {
            line: i + 1,
            col: 1,
        };
        let Some((user, hash)) = line.split_once(':') else {
            d.error_in(
                file,
                pos,
                "an htpasswd line is `user:hash`",
                Some("make the file with `htpasswd -B -c FILE USER`".into()),
            );
            ok = false;
            continue;
        };
        let parsed = if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            Some(Hash::Bcrypt(hash.to_string()))
        } else if hash.starts_with("$6$") {
            Some(Hash::Sha512(hash.to_string()))
        } else {
            None
        };
        let Some(parsed) = parsed else {
            let scheme = match hash {
                h if h.starts_with("$apr1$") => "apr1-MD5",
                h if h.starts_with("$1$") => "MD5-crypt",
                h if h.starts_with("{SHA}") => "unsalted SHA-1",
                h if h.starts_with("$5$") => "SHA-256-crypt",
                _ => "crypt or plain text",
            };
            d.error_in(file, pos, format!("user `{user}`: {scheme} hashes are refused (weak or unsupported)"), Some("hash it again with bcrypt (`htpasswd -B FILE USER`) or SHA-512-crypt (`openssl passwd -6`)".into()));
            ok = false;
            continue;
        };
        if users.insert(user.to_string(), parsed).is_some() {
            d.error_in(
                file,
                pos,
                format!("user `{user}` is listed twice"),
                Some("keep one line per user".into()),
            );
            ok = false;
        }
    }
    ok.then_some(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_read_once_and_strictly() {
        let mut h = HeaderMap::new();
        assert!(matches!(credentials(&h), Err(BasicError::Missing)));
        h.insert(
            http::header::AUTHORIZATION,
            "Basic YWxpY2U6czNjcmV0".parse().unwrap(),
        );
        assert_eq!(
            credentials(&h).ok(),
            Some(("alice".into(), "s3cret".into()))
        );
        h.append(
            http::header::AUTHORIZATION,
            "Basic YWxpY2U6czNjcmV0".parse().unwrap(),
        );
        assert!(matches!(credentials(&h), Err(BasicError::Malformed)));
        h.insert(http::header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(matches!(credentials(&h), Err(BasicError::Malformed)));
    }

    #[test]
    fn the_decoy_is_the_costliest_hash_and_well_formed() {
        let Hash::Bcrypt(empty) = costliest(&HashMap::new()) else {
            panic!("a bcrypt decoy")
        };
        assert_eq!(bcrypt::verify("anything", &empty).ok(), Some(false));
        let users = HashMap::from([
            ("a".to_string(), Hash::Sha512("$6$rounds=9000$s$h".into())),
            ("b".to_string(), Hash::Bcrypt("$2y$05$x".into())),
            ("c".to_string(), Hash::Bcrypt("$2y$12$y".into())),
        ]);
        assert!(matches!(costliest(&users), Hash::Bcrypt(h) if h == "$2y$12$y"));
    }
}
