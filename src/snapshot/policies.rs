//! Compiling the named auth and CORS policies: keys are read and decoded here, once, so
//! the request path only looks them up.

use super::Inputs;
use crate::config::model::{RawAuth, RawClaimRule, RawCors, RawRequire, RawValidate};
use crate::config::Diags;
use crate::policy::auth::{parse_jwks, AuthPolicy, ClaimRule, Keys, RemoteJwks, TokenSource};
use crate::policy::cors::{CorsPolicy, CorsSpec};
use crate::policy::validate::{compile_schema, RequestValidation, MAX_BUFFERED_BODY};
use http::{HeaderName, Method};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::str::FromStr;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

const KEY_HELP: &str = "HS* algorithms take `secret_env` or `secret_file`; RS/PS/ES/EdDSA take one of `public_key_file`, `jwks_file`, `jwks_url`";

pub(super) fn compile_auth(
    d: &mut Diags,
    name: &str,
    a: &RawAuth,
    inputs: &mut Inputs,
    remote: impl Fn(&str, std::time::Duration) -> Arc<RemoteJwks>,
) -> Option<AuthPolicy> {
    let at = format!("auth.{name}");
    let algorithms: Vec<Algorithm> = a
        .algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let alg = Algorithm::from_str(text).ok();
            if alg.is_none() {
                d.error(&format!("{at}.algorithms[{i}]"), format!("`{text}` is not a supported JWT algorithm"), Some("use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA; `none` is never accepted".into()));
            }
            alg
        })
        .collect();
    if a.algorithms.is_empty() {
        d.error(
            &format!("{at}.algorithms"),
            "list the accepted algorithms, e.g. [RS256]",
            Some("pinning the algorithms is what stops alg-confusion attacks".into()),
        );
    }
    let families: Vec<Family> = algorithms.iter().map(|a| family(*a)).collect();
    let hmac = families.contains(&Family::Hmac);
    if hmac && families.iter().any(|f| *f != Family::Hmac) {
        d.error(
            &format!("{at}.algorithms"),
            "HS* and public-key algorithms cannot share a policy",
            Some("make two policies: mixing them invites HS/RS key confusion".into()),
        );
        return None;
    }
    let keys = compile_keys(d, &at, a, hmac, &families, inputs, remote)?;
    let source = TokenSource::parse(&a.token)
        .map_err(|e| {
            d.error(
                &format!("{at}.token"),
                e,
                Some("use bearer, cookie:NAME or header:NAME".into()),
            )
        })
        .ok()?;
    let forward = a
        .forward_claims
        .iter()
        .filter_map(
            |(claim, header)| match HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) => Some((claim.clone(), h)),
                Err(_) => {
                    d.error(
                        &format!("{at}.forward_claims.{claim}"),
                        format!("`{header}` is not a valid header name"),
                        None,
                    );
                    None
                }
            },
        )
        .collect();
    let validations = algorithms
        .iter()
        .map(|alg| (*alg, validation(*alg, a)))
        .collect();
    Some(AuthPolicy {
        name: name.into(),
        source,
        keys,
        validations,
        required_claims: a.required_claims.clone(),
        forward,
    })
}

fn validation(alg: Algorithm, a: &RawAuth) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = a.leeway.as_secs();
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    match &a.issuer {
        Some(iss) => {
            v.set_issuer(&iss.items());
            required.push("iss");
        }
        None => v.iss = None,
    }
    match &a.audience {
        Some(aud) => {
            v.set_audience(&aud.items());
            required.push("aud");
        }
        None => v.validate_aud = false,
    }
    v.set_required_spec_claims(&required);
    v
}

fn compile_keys(
    d: &mut Diags,
    at: &str,
    a: &RawAuth,
    hmac: bool,
    families: &[Family],
    inputs: &mut Inputs,
    remote: impl Fn(&str, std::time::Duration) -> Arc<RemoteJwks>,
) -> Option<Keys> {
    let sources = [
        a.secret_env.is_some(),
        a.secret_file.is_some(),
        a.public_key_file.is_some(),
        a.jwks_file.is_some(),
        a.jwks_url.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        d.error(at, "give exactly one key source", Some(KEY_HELP.into()));
        return None;
    }
    let wrong = if hmac {
        a.secret_env.is_none() && a.secret_file.is_none()
    } else {
        a.secret_env.is_some() || a.secret_file.is_some()
    };
    if wrong {
        d.error(
            at,
            "the key source does not fit the algorithms",
            Some(KEY_HELP.into()),
        );
        return None;
    }
    if let Some(var) = &a.secret_env {
        return match std::env::var(var) {
            Ok(secret) if !secret.is_empty() => {
                Some(Keys::Single(DecodingKey::from_secret(secret.as_bytes())))
            }
            _ => {
                d.error(
                    &format!("{at}.secret_env"),
                    format!("environment variable `{var}` is not set"),
                    Some(format!(
                        "export {var}=... (the secret itself never goes in the file)"
                    )),
                );
                None
            }
        };
    }
    if let Some(file) = &a.secret_file {
        let secret = inputs.read(d, &format!("{at}.secret_file"), file)?;
        return Some(Keys::Single(DecodingKey::from_secret(
            secret.trim_end_matches(['\n', '\r']).as_bytes(),
        )));
    }
    if let Some(url) = &a.jwks_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            d.error(
                &format!("{at}.jwks_url"),
                format!("`{url}` is not an http(s) URL"),
                None,
            );
            return None;
        }
        return Some(Keys::Remote(remote(url, a.jwks_refresh)));
    }
    if let Some(file) = &a.jwks_file {
        let text = inputs.read(d, &format!("{at}.jwks_file"), file)?;
        return match parse_jwks(&text) {
            Ok(keys) => Some(Keys::Set(keys)),
            Err(e) => {
                d.error(&format!("{at}.jwks_file"), format!("{file}: {e}"), None);
                None
            }
        };
    }
    let file = a.public_key_file.as_ref()?;
    let path = format!("{at}.public_key_file");
    let pem = inputs.read(d, &path, file)?;
    let mut distinct = families.to_vec();
    distinct.dedup();
    let key = match distinct.as_slice() {
        [Family::Rsa] => DecodingKey::from_rsa_pem(pem.as_bytes()),
        [Family::Ec] => DecodingKey::from_ec_pem(pem.as_bytes()),
        [Family::Ed] => DecodingKey::from_ed_pem(pem.as_bytes()),
        _ => {
            d.error(
                &format!("{at}.algorithms"),
                "one public key serves one algorithm family",
                Some("use a JWKS to accept several key types".into()),
            );
            return None;
        }
    };
    match key {
        Ok(k) => Some(Keys::Single(k)),
        Err(e) => {
            d.error(
                &path,
                format!("{file} is not a PEM public key for {:?}: {e}", distinct[0]),
                None,
            );
            None
        }
    }
}

pub(super) fn compile_require(d: &mut Diags, at: &str, r: &RawRequire) -> Vec<ClaimRule> {
    r.claims
        .iter()
        .map(|(claim, rule)| {
            let (values, all) = match rule {
                RawClaimRule::AnyList(v) | RawClaimRule::AnyOf { any_of: v } => (v.clone(), false),
                RawClaimRule::AllOf { all_of: v } => (v.clone(), true),
                RawClaimRule::One(v) => (vec![v.clone()], false),
            };
            if values.is_empty() {
                d.error(
                    &format!("{at}.claims.{claim}"),
                    "an empty list can never be satisfied",
                    None,
                );
            }
            ClaimRule {
                claim: claim.clone(),
                values: values.iter().map(ToString::to_string).collect(),
                all,
            }
        })
        .collect()
}

pub(super) fn compile_cors(d: &mut Diags, name: &str, c: &RawCors) -> Option<CorsPolicy> {
    let at = format!("cors.{name}");
    let default_methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
        .map(String::from)
        .to_vec();
    let methods = super::parse_methods(
        d,
        &format!("{at}.allow_methods"),
        c.allow_methods.as_ref().unwrap_or(&default_methods),
    );
    let spec = CorsSpec {
        origins: &c.allow_origins,
        methods: &methods,
        headers: &c.allow_headers,
        expose: &c.expose_headers,
        credentials: c.allow_credentials,
        max_age: c.max_age.map(|d| d.as_secs()),
    };
    match CorsPolicy::new(name, spec) {
        Ok(p) => Some(p),
        Err(e) => {
            d.error(&format!("{at}.allow_origins"), e, Some("list exact origins such as https://app.example.com, or patterns like https://*.example.com".into()));
            None
        }
    }
}

pub(super) fn compile_validate(
    d: &mut Diags,
    at: &str,
    v: &RawValidate,
    inputs: &mut Inputs,
) -> Option<RequestValidation> {
    let at = format!("{at}.validate");
    if v.max_body_bytes.0 > MAX_BUFFERED_BODY || v.max_body_bytes.0 == 0 {
        d.error(&format!("{at}.max_body_bytes"), format!("max_body_bytes must be between 1 and {MAX_BUFFERED_BODY} (64KiB)"), Some("a validated body is held whole before the upstream sees the request; larger bodies cannot be replayed".into()));
    }
    let methods = match &v.methods {
        None => vec![Method::POST, Method::PUT, Method::PATCH],
        Some(list) => super::parse_methods(d, &format!("{at}.methods"), list),
    };
    let headers = v
        .headers
        .iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.as_bytes()).ok();
            if name.is_none() {
                d.error(
                    &format!("{at}.headers"),
                    format!("`{h}` is not a valid header name"),
                    None,
                );
            }
            name
        })
        .collect();
    let schema = match &v.body {
        None => None,
        Some(file) => {
            let path = format!("{at}.body");
            let text = inputs.read(d, &path, file)?;
            let full = inputs.files.last().cloned().unwrap_or_default();
            let absolute = std::path::absolute(&full).unwrap_or(full);
            match compile_schema(&absolute, &text) {
                Ok((validator, referenced)) => {
                    inputs.files.extend(referenced);
                    Some(validator)
                }
                Err(e) => {
                    d.error(&path, format!("schema `{file}` does not compile: {e}"), Some("check it with a JSON Schema validator; $ref paths are relative to the schema file".into()));
                    return None;
                }
            }
        }
    };
    Some(RequestValidation {
        methods,
        schema,
        max_body: v.max_body_bytes.0,
        headers,
        query: v.query.clone(),
    })
}
