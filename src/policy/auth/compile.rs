//! `auth.NAME` compiled once: keys read and decoded, one validation per algorithm, the
//! OpenAPI scheme; and a route's `auth` + `require` applied.

use super::*;

/// The OpenAPI security scheme of an auth policy, from its text in the file.
pub(super) fn security_scheme(a: &RawJwt) -> Value {
    let description = format!("JWT ({}), verified by the gateway", a.algorithms.join(", "));
    match a.token.split_once(':') {
        Some(("header", h)) => {
            serde_json::json!({"type": "apiKey", "in": "header", "name": h, "description": description})
        }
        Some(("cookie", c)) => {
            serde_json::json!({"type": "apiKey", "in": "cookie", "name": c, "description": description})
        }
        _ => {
            serde_json::json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": description})
        }
    }
}

/// Applies `auth: NAME` (and `require`) on a route.
pub fn compile_route(
    d: &mut Diags,
    at: &str,
    policy: Option<Arc<AuthPolicy>>,
    named: bool,
    require: Option<&RawRequire>,
) -> Option<RouteAuth> {
    let require = match (require, named) {
        (Some(req), true) => compile_require(d, &format!("{at}.require"), req),
        (Some(_), false) => {
            d.error(
                &format!("{at}.require"),
                "`require` checks token claims, but this route has no `auth`",
                Some("add `auth: POLICY` to the route".into()),
            );
            Vec::new()
        }
        (None, _) => Vec::new(),
    };
    if let (Some(AuthPolicy::Forward(f)), false) = (policy.as_deref(), require.is_empty()) {
        d.error(
            &format!("{at}.require"),
            format!("auth `{}` asks an auth service, which makes no claims to check", f.name),
            Some("let the auth service decide (it sees the method, host and path), or use a token-based policy".into()),
        );
    }
    policy.map(|policy| RouteAuth { policy, require })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

pub(super) fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

pub(super) const KEY_HELP: &str = "HS* algorithms take `secret_env` or `secret_file`; RS/PS/ES/EdDSA take one of `public_key_file`, `jwks_file`, `jwks_url`";

/// Compiles the named policy `auth.NAME`, whatever its kind.
pub fn compile(cx: &mut CompileCx, name: &str, a: &RawAuth) -> Option<AuthPolicy> {
    Some(match a {
        RawAuth::Jwt(j) => AuthPolicy::Jwt(compile_jwt(cx, name, j)?),
        RawAuth::ApiKey(k) => AuthPolicy::ApiKey(api_key::compile(cx, name, k)?),
        RawAuth::Basic(b) => AuthPolicy::Basic(basic::compile(cx, name, b)?),
        RawAuth::Forward(f) => AuthPolicy::Forward(forward::compile(cx, name, f)?),
        RawAuth::Introspection(i) => {
            AuthPolicy::Introspection(introspection::compile(cx, name, i)?)
        }
        RawAuth::Oidc(o) => AuthPolicy::Oidc(Box::new(oidc::compile(cx, name, o)?)),
    })
}

/// Identity headers (`{ claim: Header }`), each name checked at its key.
pub(super) fn forward_headers(
    d: &mut Diags,
    at: &str,
    map: &BTreeMap<String, String>,
) -> Vec<(String, HeaderName)> {
    map.iter()
        .filter_map(
            |(claim, header)| match HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) => Some((claim.clone(), h)),
                Err(_) => {
                    d.error(
                        &format!("{at}.{claim}"),
                        format!("`{header}` is not a valid header name"),
                        Some(crate::diag::HEADER_NAME_HELP.into()),
                    );
                    None
                }
            },
        )
        .collect()
}

/// Compiles a JWT policy: keys are read and decoded here, once, so a request only looks
/// them up. A remote JWKS cache is kept across reloads per URL.
fn compile_jwt(cx: &mut CompileCx, name: &str, a: &RawJwt) -> Option<Jwt> {
    let (d, state, inputs) = (&mut *cx.d, &mut *cx.state, &mut *cx.inputs);
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
    let keys = compile_keys(d, &at, a, hmac, &families, inputs, state)?;
    let source = TokenSource::parse(&a.token)
        .map_err(|e| {
            d.error(
                &format!("{at}.token"),
                e,
                Some("use bearer, cookie:NAME or header:NAME".into()),
            )
        })
        .ok()?;
    let forward = forward_headers(d, &format!("{at}.forward_claims"), &a.forward_claims);
    let validations = algorithms
        .iter()
        .map(|alg| (*alg, validation(*alg, a)))
        .collect();
    Some(Jwt {
        name: name.into(),
        source,
        keys,
        validations,
        required_claims: a.required_claims.clone(),
        forward,
        verified: TokenCache::default(),
        scheme: security_scheme(a),
    })
}

pub(super) fn validation(alg: Algorithm, a: &RawJwt) -> Validation {
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

pub(super) fn compile_keys(
    d: &mut Diags,
    at: &str,
    a: &RawJwt,
    hmac: bool,
    families: &[Family],
    inputs: &mut Inputs,
    state: &mut StateCx,
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
                format!("`{}` is not an http(s) URL", crate::diag::redact_url(url)),
                Some("give the identity provider's JWKS address, e.g. https://idp.example.com/.well-known/jwks.json".into()),
            );
            return None;
        }
        let refresh = a.jwks_refresh;
        let cache = state.keep("jwks", url, &refresh, || RemoteJwks::new(url, refresh));
        return Some(Keys::Remote(cache));
    }
    if let Some(file) = &a.jwks_file {
        let text = inputs.read(d, &format!("{at}.jwks_file"), file)?;
        return match parse_jwks(&text) {
            Ok(keys) => Some(Keys::Set(keys)),
            Err(e) => {
                d.error(&format!("{at}.jwks_file"), format!("{file}: {e}"), Some("a JWKS file is a JSON object with a `keys` array (RFC 7517); the path is relative to the config file".into()));
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
                Some("give the PEM public key (-----BEGIN PUBLIC KEY-----) that matches the algorithms listed".into()),
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
                    Some("list the values the claim may take, or drop the rule".into()),
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
