//! `sticky` on a split route: keeps a client on the backend it first got, by a cookie the
//! gateway signs, by a verified claim, or by a header only a trusted proxy may set.
//!
//! A cookie names the backend and its expiry, signed with HMAC-SHA256 under the first key of
//! the environment variable `key_env` (keys separated by commas: every one verifies, so a
//! key can be rotated in); a forged, expired or unknown one is ignored, never trusted. A
//! claim or header value picks a backend by hashing into the route's weighted cycle, so each
//! value keeps its backend and the shares hold across many values. When the chosen backend
//! has no target able to take the request (drained to weight 0, unhealthy, circuit open),
//! the next in the cycle takes it and the cookie is written again.

use crate::diag::Diags;
use crate::units::duration;
use ring::hmac;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `sticky: { cookie: NAME, ttl: 1h }`, `{ claim: sub }` or `{ header: X-Session }`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    /// A cookie the gateway sets, naming the backend (signed).
    pub cookie: Option<String>,
    /// How long the cookie holds (default 1h).
    #[schemars(with = "Option<crate::units::DurationText>")]
    #[serde(default, with = "duration::option")]
    pub ttl: Option<Duration>,
    /// The environment variable holding the cookie's signing keys, comma-separated: the
    /// first signs, all verify (default PORTICO_STICKY_KEY).
    pub key_env: Option<String>,
    /// A claim of the verified token (the route needs `auth`).
    pub claim: Option<String>,
    /// A header, used only when a trusted proxy (server.trusted_proxies) sent the request.
    pub header: Option<String>,
}

pub enum Sticky {
    Cookie {
        name: String,
        ttl: Duration,
        keys: Vec<hmac::Key>,
    },
    Claim(String),
    Header(http::HeaderName),
}

/// What a sticky route knows of a request.
pub struct Seen<'a> {
    pub route: &'a str,
    pub claims: Option<&'a serde_json::Value>,
    pub headers: &'a http::HeaderMap,
    pub trusted_peer: bool,
}

/// How a request is kept: a backend named by a valid cookie, or a key to hash.
pub enum Keep {
    Backend(String),
    Hash(u64),
    Nothing,
}

impl Sticky {
    /// What keeps this request on a backend, if anything.
    pub fn keep(&self, seen: &Seen<'_>) -> Keep {
        match self {
            Sticky::Cookie { name, keys, .. } => cookies(seen.headers, name)
                .find_map(|v| verify(keys, seen.route, v))
                .map_or(Keep::Nothing, Keep::Backend),
            Sticky::Claim(claim) => claim_key(seen.claims, claim).map_or(Keep::Nothing, |k| {
                Keep::Hash(crate::hashing::fnv1a(k.as_bytes()))
            }),
            Sticky::Header(name) if seen.trusted_peer => {
                seen.headers.get(name).map_or(Keep::Nothing, |v| {
                    Keep::Hash(crate::hashing::fnv1a(v.as_bytes()))
                })
            }
            Sticky::Header(_) => Keep::Nothing,
        }
    }

    /// The `Set-Cookie` that names `backend`, for a cookie policy.
    pub fn set_cookie(&self, route: &str, backend: &str, tls: bool) -> Option<String> {
        let Sticky::Cookie { name, ttl, keys } = self else {
            return None;
        };
        let expires = SystemTime::now().duration_since(UNIX_EPOCH).ok()? + *ttl;
        let signed = sign(&keys[0], route, backend, expires.as_secs());
        let secure = if tls { "; Secure" } else { "" };
        Some(format!(
            "{name}={signed}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            ttl.as_secs()
        ))
    }

    /// One line for `portico route`.
    pub fn explain(&self) -> String {
        match self {
            Sticky::Cookie { name, ttl, .. } => format!(
                "sticky: by the signed cookie `{name}` (for {})",
                humantime::format_duration(*ttl)
            ),
            Sticky::Claim(c) => format!("sticky: by the verified claim `{c}`"),
            Sticky::Header(h) => format!("sticky: by the header `{h}` from trusted proxies"),
        }
    }
}

/// `BACKEND.EXPIRES.SIGNATURE` (hex), signed over the route, backend and expiry.
fn sign(key: &hmac::Key, route: &str, backend: &str, expires: u64) -> String {
    let tag = hmac::sign(key, format!("{route}\n{backend}\n{expires}").as_bytes());
    format!("{backend}.{expires}.{}", hex::encode(tag.as_ref()))
}

/// The backend a cookie value names, if a key signed it for this route and it has not expired.
fn verify(keys: &[hmac::Key], route: &str, value: &str) -> Option<String> {
    let (rest, signature) = value.rsplit_once('.')?;
    let (backend, expires) = rest.rsplit_once('.')?;
    let expires_at: u64 = expires.parse().ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let signature = hex::decode(signature).ok()?;
    let message = format!("{route}\n{backend}\n{expires}");
    let valid = keys
        .iter()
        .any(|k| hmac::verify(k, message.as_bytes(), &signature).is_ok());
    (valid && expires_at > now).then(|| backend.to_string())
}

/// The values of cookie `name` in every `Cookie` field (HTTP/2 clients send one per cookie).
pub fn cookies<'h>(headers: &'h http::HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// A verified claim as a key to hash: a string as it is, another value as JSON.
pub fn claim_key<'c>(claims: Option<&'c serde_json::Value>, name: &str) -> Option<Cow<'c, str>> {
    match claims?.get(name)? {
        serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
        serde_json::Value::Null => None,
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Compiles a route's `sticky` (its cookie keys read from the environment, as `secret_env`).
pub fn compile(d: &mut Diags, at: &str, raw: &RawSticky, has_auth: bool) -> Option<Sticky> {
    let env = |var: &str| std::env::var(var).ok();
    let at = format!("{at}.sticky");
    let set = [
        raw.cookie.is_some(),
        raw.claim.is_some(),
        raw.header.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        d.error(
            &at,
            "sticky keeps by one of `cookie`, `claim` or `header`",
            Some("e.g. sticky: { cookie: portico-orders, ttl: 1h }".into()),
        );
        return None;
    }
    if let Some(name) = &raw.cookie {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !token {
            d.error(
                &format!("{at}.cookie"),
                format!("`{name}` is not a cookie name"),
                Some("use letters, digits, `-`, `_` and `.`".into()),
            );
            return None;
        }
        let var = raw.key_env.as_deref().unwrap_or("PORTICO_STICKY_KEY");
        let keys: Vec<hmac::Key> = env(var)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_bytes()))
            .collect();
        if keys.is_empty() || env(var).is_some_and(|v| v.split(',').any(|k| k.trim().len() < 32)) {
            d.error(
                &format!("{at}.cookie"),
                format!("the sticky cookie needs signing keys of 32 bytes or more in ${var}"),
                Some(format!("set {var} (keys separated by commas: the first signs, all verify), or name another variable in `key_env`")),
            );
            return None;
        }
        let ttl = raw.ttl.unwrap_or(Duration::from_secs(3600));
        if ttl.is_zero() {
            d.error(
                &format!("{at}.ttl"),
                "ttl must be longer than 0",
                Some("e.g. ttl: 1h".into()),
            );
            return None;
        }
        return Some(Sticky::Cookie {
            name: name.clone(),
            ttl,
            keys,
        });
    }
    if let Some(claim) = &raw.claim {
        if !has_auth {
            d.error(
                &format!("{at}.claim"),
                "sticky by claim needs the route's `auth` to verify the token",
                Some("add `auth: NAME` to the route, or keep by `cookie`".into()),
            );
            return None;
        }
        return Some(Sticky::Claim(claim.clone()));
    }
    let header = raw.header.as_deref().unwrap_or_default();
    match http::HeaderName::from_bytes(header.as_bytes()) {
        Ok(h) => Some(Sticky::Header(h)),
        Err(_) => {
            d.error(
                &format!("{at}.header"),
                format!("`{header}` is not a valid header name"),
                Some(crate::diag::HEADER_NAME_HELP.into()),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_verify_under_any_key_and_nothing_forged_passes() {
        let old = hmac::Key::new(hmac::HMAC_SHA256, b"an-old-key-of-at-least-32-bytes!!");
        let new = hmac::Key::new(hmac::HMAC_SHA256, b"a-new-key-of-at-least-32-bytes!!!");
        let far = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let value = sign(&old, "orders", "orders-v2", far);
        let keys = [new.clone(), old];
        assert_eq!(
            verify(&keys, "orders", &value).as_deref(),
            Some("orders-v2")
        );
        assert_eq!(verify(&keys, "other", &value), None, "bound to its route");
        let forged = value.replacen("orders-v2", "orders", 1);
        assert_eq!(verify(&keys, "orders", &forged), None);
        let expired = sign(&new, "orders", "orders-v2", 1);
        assert_eq!(verify(&keys, "orders", &expired), None);
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1".parse().unwrap());
        headers.append(
            http::header::COOKIE,
            "b=2; portico-orders=x.y.z".parse().unwrap(),
        );
        assert_eq!(
            cookies(&headers, "portico-orders").collect::<Vec<_>>(),
            ["x.y.z"]
        );
    }
}
