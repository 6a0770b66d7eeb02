//! `tls:`: the certificates the TLS listener serves, read and checked when a config is
//! compiled (so a bad pair is refused like any bad config and the running one stays), and
//! chosen per handshake by SNI against each certificate's names.

use crate::diag::{Diags, Inputs};
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::PemObject;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate chains and keys (PEM); the first is served when no name matches.
    pub certificates: Vec<RawCertificate>,
    /// "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// The certificate chain: the server's certificate first.
    pub cert: String,
    /// The private key (PEM) of `cert`.
    pub key: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V12,
    #[serde(rename = "1.3")]
    V13,
}

/// A loaded certificate: what the handshake serves and what operators are told about it.
pub struct Certificate {
    /// The `cert` path as written (the metric's `name`).
    pub name: String,
    pub key: Arc<CertifiedKey>,
    /// DNS names from the subject alternative names (lower case).
    pub names: Vec<String>,
    /// notAfter, in Unix seconds.
    pub not_after: i64,
}

/// The compiled `tls:` section.
pub struct Certificates {
    pub certificates: Vec<Certificate>,
    exact: HashMap<String, usize>,
    /// `*.example.com` certificates by `example.com`.
    wildcard: HashMap<String, usize>,
    pub min_version: TlsVersion,
}

impl Certificates {
    /// The certificate for a handshake: the exact name, then a wildcard one label up,
    /// then the first.
    pub fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let index = server_name
            .map(str::to_ascii_lowercase)
            .and_then(|name| {
                let parent = name.split_once('.').map(|(_, rest)| rest.to_string());
                self.exact
                    .get(&name)
                    .or_else(|| parent.and_then(|p| self.wildcard.get(&p)))
                    .copied()
            })
            .unwrap_or(0);
        self.certificates[index].key.clone()
    }

    /// Whether a connection's negotiated version (as Pingora names it, `TLSv1_3`) is
    /// allowed. rustls offers 1.2 and 1.3 on one listener, so 1.3-only is enforced here,
    /// before the connection serves anything.
    pub fn allows(&self, version: &str) -> bool {
        self.min_version == TlsVersion::V12 || version == "TLSv1_3"
    }
}

/// Expiry within this many seconds is a warning at `check` and reload.
const EXPIRY_WARNING: i64 = 14 * 24 * 3600;

pub fn compile(d: &mut Diags, inputs: &mut Inputs, raw: &RawTls) -> Option<Certificates> {
    if raw.certificates.is_empty() {
        d.error(
            "tls.certificates",
            "tls needs at least one certificate",
            Some("add `- { cert: certs/api.pem, key: certs/api.key }`".into()),
        );
        return None;
    }
    let errors = d.errors();
    let mut certificates = Vec::new();
    for (i, c) in raw.certificates.iter().enumerate() {
        let at = format!("tls.certificates[{i}]");
        if let Some(cert) = load(d, inputs, &at, c) {
            certificates.push(cert);
        }
    }
    if d.errors() > errors {
        return None;
    }
    let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
    for (i, cert) in certificates.iter().enumerate() {
        for name in &cert.names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                None => exact.entry(name.clone()).or_insert(i),
            };
        }
    }
    Some(Certificates {
        certificates,
        exact,
        wildcard,
        min_version: raw.min_version,
    })
}

/// Reads a PEM file of certificates (at least one), reporting problems at `at`.
pub fn read_certificates(
    d: &mut Diags,
    inputs: &mut Inputs,
    at: &str,
    file: &str,
) -> Option<Vec<CertificateDer<'static>>> {
    let pem = inputs.read(d, at, file)?;
    match CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>() {
        Ok(chain) if !chain.is_empty() => Some(chain),
        Ok(_) => {
            let help = "a PEM file with `-----BEGIN CERTIFICATE-----` blocks, the leaf first";
            d.error(
                at,
                format!("`{file}` holds no certificate"),
                Some(help.into()),
            );
            None
        }
        Err(e) => {
            d.error(
                at,
                format!("`{file}` is not PEM certificates: {e}"),
                Some(
                    "give PEM certificates (-----BEGIN CERTIFICATE-----), the server's own first"
                        .into(),
                ),
            );
            None
        }
    }
}

/// A certificate chain and its private key, read from PEM files and checked to be a pair
/// (the server's certificates and an upstream's client certificate alike).
pub struct Pair {
    pub key: CertifiedKey,
    pub key_der: PrivateKeyDer<'static>,
}

/// `cert` and `key` are (config path, file) each.
pub fn read_pair(
    d: &mut Diags,
    inputs: &mut Inputs,
    cert: (&str, &str),
    key: (&str, &str),
) -> Option<Pair> {
    let chain = read_certificates(d, inputs, cert.0, cert.1)?;
    let key_pem = inputs.read(d, key.0, key.1)?;
    let Ok(key_der) = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) else {
        // The key file's text is never quoted: it is a secret.
        d.error(
            key.0,
            format!("`{}` holds no PEM private key", key.1),
            Some("a PKCS#8, PKCS#1 or SEC1 PEM key".into()),
        );
        return None;
    };
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()?;
    match CertifiedKey::from_der(chain, key_der.clone_key(), provider) {
        Ok(certified) => Some(Pair {
            key: certified,
            key_der,
        }),
        Err(e) => {
            d.error(
                key.0,
                format!("`{}` {MISMATCHED} `{}`: {e}", key.1, cert.1),
                Some("give the private key of the chain's first certificate".into()),
            );
            None
        }
    }
}

fn load(d: &mut Diags, inputs: &mut Inputs, at: &str, c: &RawCertificate) -> Option<Certificate> {
    let cert_at = format!("{at}.cert");
    let key_at = format!("{at}.key");
    let pair = read_pair(d, inputs, (&cert_at, &c.cert), (&key_at, &c.key))?;
    let (names, not_after) = match describe(&pair.key.cert[0]) {
        Ok(facts) => facts,
        Err(e) => {
            d.error(
                &cert_at,
                format!("`{}`: {e}", c.cert),
                Some(
                    "give a readable PEM certificate chain; paths are relative to the config file"
                        .into(),
                ),
            );
            return None;
        }
    };
    let left = not_after - crate::units::unix_now() as i64;
    if left <= 0 {
        d.error(
            &format!("{at}.cert"),
            format!("`{}` expired {} days ago", c.cert, -left / 86400),
            Some("renew it".into()),
        );
        return None;
    }
    if left < EXPIRY_WARNING {
        d.warn(
            &format!("{at}.cert"),
            format!("`{}` expires in {} days", c.cert, left / 86400),
            Some("renew it soon".into()),
        );
    }
    Some(Certificate {
        name: c.cert.clone(),
        key: Arc::new(pair.key),
        names,
        not_after,
    })
}

/// A certificate's DNS names and notAfter.
fn describe(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        // Old certificates name their host in the subject's CN only.
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}
/// What a key that is not the certificate's says: the reloader waits a moment for such a
/// pair to settle (the two files are copied one after the other).
const MISMATCHED: &str = "does not go with";

/// Whether a diagnostic is a key that does not go with its certificate.
pub fn is_mismatched_pair(d: &crate::diag::Diagnostic) -> bool {
    d.message.contains(MISMATCHED)
}
