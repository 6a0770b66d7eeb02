//! `ip_access`: allow and/or deny lists of networks, checked on the client IP as
//! `server.trusted_proxies` decides it (the peer, or the client a trusted proxy names).
//! A denied network always loses; with an `allow` list, only its networks get in.

use super::{ApiDoc, CompileCx, PolicyState, RequestInfo, Stage, Unit};
use crate::diag::cidr;
use crate::errors::{Code, GatewayError, Refusal};
use http::HeaderName;
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// `ip_access: { office: { allow: [10.0.0.0/8], deny: [10.6.0.0/16] } }`
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIpAccess {
    /// Networks (CIDR or single IP) let in; when present, every other client is refused.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Networks refused, even when an `allow` entry also covers them.
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug)]
pub struct IpAccess {
    pub name: String,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

const FORBIDDEN: Refusal = Refusal::fixed(
    403,
    Code::IpForbidden,
    "requests from this address are not allowed on this route",
);

impl IpAccess {
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else {
            // No IP to check (not an inet peer): only an open route lets it in.
            return self.allow.is_empty() && self.deny.is_empty();
        };
        let ip = ip.to_canonical();
        let in_any = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
        !in_any(&self.deny) && (self.allow.is_empty() || in_any(&self.allow))
    }

    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), GatewayError> {
        if self.admits(ip) {
            Ok(())
        } else {
            Err(FORBIDDEN.into())
        }
    }
}

#[async_trait::async_trait]
impl Unit for IpAccess {
    fn kind(&self) -> &'static str {
        "ip_access"
    }

    fn name(&self) -> Option<&str> {
        Some(&self.name)
    }

    fn stage(&self) -> Stage {
        Stage::Network
    }

    fn details(&self) -> serde_json::Value {
        let text = |nets: &[IpNet]| nets.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        serde_json::json!({"allow": text(&self.allow), "deny": text(&self.deny)})
    }

    fn api_doc(&self, _method: &str) -> ApiDoc {
        ApiDoc::refusing(&["403"])
    }

    fn identity_headers(&self) -> Vec<HeaderName> {
        Vec::new()
    }

    async fn on_request(
        &self,
        _session: &mut pingora::proxy::Session,
        info: &RequestInfo<'_>,
        _state: &mut PolicyState,
    ) -> Result<(), GatewayError> {
        self.check(info.client_ip)
    }
}

/// Compiles the named policy `ip_access.NAME`.
pub fn compile(cx: &mut CompileCx, name: &str, raw: &RawIpAccess) -> Option<IpAccess> {
    let d = &mut *cx.d;
    let at = format!("ip_access.{name}");
    if raw.allow.is_empty() && raw.deny.is_empty() {
        d.error(
            &at,
            "an ip_access policy needs an `allow` or a `deny` list",
            Some("e.g. allow: [10.0.0.0/8] or deny: [203.0.113.7]".into()),
        );
        return None;
    }
    let errors = d.errors();
    let mut nets = |list: &[String], key: &str| -> Vec<IpNet> {
        list.iter()
            .enumerate()
            .filter_map(|(i, text)| cidr(d, &format!("{at}.{key}[{i}]"), text))
            .collect()
    };
    let allow = nets(&raw.allow, "allow");
    let deny = nets(&raw.deny, "deny");
    (d.errors() == errors).then(|| IpAccess {
        name: name.to_string(),
        allow,
        deny,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Result<IpAccess, Vec<String>> {
        let raw = RawIpAccess {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        };
        let (policy, items) = crate::policy::with_test_cx(|cx| compile(cx, "p", &raw));
        policy.ok_or_else(|| items.into_iter().map(|x| x.message).collect())
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn deny_wins_and_allow_is_exclusive() {
        let p = policy(&["10.0.0.0/8", "2001:db8::/32"], &["10.6.0.0/16"]).unwrap();
        assert!(p.admits(ip("10.1.2.3")));
        assert!(!p.admits(ip("10.6.0.1")), "deny beats allow");
        assert!(!p.admits(ip("192.0.2.1")), "outside every allow entry");
        assert!(p.admits(ip("2001:db8::1")));
        assert!(
            p.admits(ip("::ffff:10.1.2.3")),
            "IPv4-mapped IPv6 is the IPv4 client"
        );
        assert!(!p.admits(None));
        assert_eq!(p.check(ip("192.0.2.1")).unwrap_err().code(), "ip_forbidden");
    }

    #[test]
    fn deny_only_admits_the_rest() {
        let p = policy(&[], &["203.0.113.7"]).unwrap();
        assert!(!p.admits(ip("203.0.113.7")));
        assert!(p.admits(ip("203.0.113.8")));
    }

    #[test]
    fn bad_networks_and_empty_policies_are_refused() {
        let errors = policy(&["10.0.0.0/33", "nope"], &[]).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("`10.0.0.0/33` is not an IP network"));
        let errors = policy(&[], &[]).unwrap_err();
        assert!(errors[0].contains("needs an `allow` or a `deny` list"));
    }
}
