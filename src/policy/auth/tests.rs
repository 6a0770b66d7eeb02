use super::*;
use serde_json::json;

#[test]
fn claim_paths_and_rules() {
    let claims = json!({"role": "admin", "amr": ["pwd", "mfa"], "realm": {"roles": ["a", "b"]}, "https://x.io/tier": 3});
    assert_eq!(claim(&claims, "realm.roles"), Some(&json!(["a", "b"])));
    assert_eq!(claim(&claims, "https://x.io/tier"), Some(&json!(3)));
    let rule = |c: &str, v: &[&str], all| ClaimRule {
        claim: c.into(),
        values: v.iter().map(|s| s.to_string()).collect(),
        all,
    };
    assert!(rule("role", &["user", "admin"], false).holds(&claims));
    assert!(rule("amr", &["mfa"], false).holds(&claims));
    assert!(rule("realm.roles", &["a", "b"], true).holds(&claims));
    assert!(!rule("realm.roles", &["a", "c"], true).holds(&claims));
    assert!(rule("https://x.io/tier", &["3"], false).holds(&claims));
    assert!(!rule("missing", &["x"], false).holds(&claims));
    assert_eq!(header_text(&json!(["a", 1])), "a,1");
}

#[test]
fn token_sources() {
    let mut h = HeaderMap::new();
    h.insert("authorization", "Bearer abc".parse().unwrap());
    h.insert("cookie", "a=1; session=tok; b=2".parse().unwrap());
    assert_eq!(TokenSource::Bearer.find(&h), Ok(Some("abc")));
    let cookie = TokenSource::parse("cookie:session").unwrap();
    assert_eq!(cookie.find(&h), Ok(Some("tok")));
    assert_eq!(
        TokenSource::parse("header:x-token").unwrap().find(&h),
        Ok(None)
    );
    h.append("cookie", "session=other".parse().unwrap());
    assert_eq!(cookie.find(&h), Err(SentTwice), "the cookie twice");
    h.append("authorization", "Bearer def".parse().unwrap());
    assert_eq!(
        TokenSource::Bearer.find(&h),
        Err(SentTwice),
        "two Authorization lines"
    );
}

#[test]
fn require_without_auth_is_an_error_at_its_key() {
    let places = crate::diag::Places::one("g.yaml".as_ref(), Default::default());
    let mut d = Diags::new(&places);
    let require: RawRequire = serde_yaml::from_str("claims: { role: [] }").unwrap();
    assert!(compile_route(&mut d, "routes[0]", None, false, Some(&require)).is_none());
    assert!(d.items[0].message.contains("this route has no `auth`"));
}

#[test]
fn compile_pins_algorithms_and_refuses_mixed_families() {
    let raw: RawAuth =
        serde_yaml::from_str("{ algorithms: [HS256, RS256], secret_env: X }").unwrap();
    let (policy, items) = crate::policy::with_test_cx(|cx| compile(cx, "p", &raw));
    assert!(policy.is_none());
    assert!(items[0].message.contains("cannot share a policy"));
    let raw: RawAuth = serde_yaml::from_str("{ algorithms: [none], secret_env: X }").unwrap();
    let (policy, items) = crate::policy::with_test_cx(|cx| compile(cx, "p", &raw));
    assert!(policy.is_none());
    assert!(items.iter().any(|x| x
        .message
        .contains("`none` is not a supported JWT algorithm")));
}

fn hs_policy() -> Jwt {
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_nbf = true;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp"]);
    Jwt {
        name: "hs".into(),
        source: TokenSource::Bearer,
        keys: Keys::Single(DecodingKey::from_secret(b"s3cret")),
        validations: vec![(Algorithm::HS256, v)],
        required_claims: Vec::new(),
        forward: Vec::new(),
        verified: TokenCache::default(),
        scheme: Value::Null,
    }
}

/// Signs any header and claims, so tests can write what jsonwebtoken's encoder would not.
fn forge(header: serde_json::Value, claims: serde_json::Value) -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let message = format!("{}.{}", b64(&header), b64(&claims));
    let key = jsonwebtoken::EncodingKey::from_secret(b"s3cret");
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{message}.{signature}")
}

#[tokio::test]
async fn critical_extensions_and_non_numeric_time_claims_are_refused() {
    let policy = hs_policy();
    let exp = 4_000_000_000u64;
    let ok = forge(json!({"alg": "HS256"}), json!({"sub": "u", "exp": exp}));
    assert!(policy.verify(&ok).await.is_ok());
    let crit = forge(
        json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
        json!({"exp": exp}),
    );
    assert_eq!(
        policy.verify(&crit).await,
        Err(AuthError::CriticalExtension)
    );
    let nbf = forge(
        json!({"alg": "HS256"}),
        json!({"exp": exp, "nbf": "2999-01-01"}),
    );
    assert_eq!(
        policy.verify(&nbf).await,
        Err(AuthError::BadTimeClaim("nbf"))
    );
    let iat = forge(json!({"alg": "HS256"}), json!({"exp": exp, "iat": true}));
    assert_eq!(
        policy.verify(&iat).await,
        Err(AuthError::BadTimeClaim("iat"))
    );
    let future = forge(json!({"alg": "HS256"}), json!({"exp": exp, "nbf": exp - 1}));
    assert_eq!(policy.verify(&future).await, Err(AuthError::NotYetValid));
}

#[test]
fn claims_are_forwarded_only_in_an_unambiguous_form() {
    let forward = |claim: &str| vec![(claim.to_string(), HeaderName::from_static("x-c"))];
    let claims = json!({"roles": ["a", "b"], "bad": ["guest,admin"], "nl": "a\r\nx: y",
                        "none": null, "big": "x".repeat(5000), "org": {"id": 1}});
    let value =
        |c: &str| forwardable(&claims, &forward(c)).map(|v| v.first().map(|(_, h)| h.clone()));
    assert_eq!(value("roles"), Ok(Some(HeaderValue::from_static("a,b"))));
    assert_eq!(
        value("org"),
        Ok(Some(HeaderValue::from_static("{\"id\":1}")))
    );
    assert_eq!(value("none"), Ok(None), "null sends no header");
    assert_eq!(value("missing"), Ok(None));
    for bad in ["bad", "nl", "big"] {
        assert_eq!(value(bad), Err(AuthError::BadClaim(bad.into())), "{bad}");
    }
}

#[tokio::test]
async fn a_verified_token_is_a_lookup_until_its_exp() {
    let policy = hs_policy();
    let exp = unix_now() + 600;
    let token = forge(json!({"alg": "HS256"}), json!({"sub": "u", "exp": exp}));
    let first = policy.verify(&token).await.unwrap();
    assert_eq!(policy.verified.len(), 1);
    let again = policy.verify(&token).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again), "served from the cache");
    assert!(policy.verified.get(&token, exp - 1, None).is_some());
    assert!(
        policy.verified.get(&token, exp, None).is_none(),
        "never at or past exp"
    );
    assert!(policy.verified.is_empty(), "the expired entry is dropped");
    let bad = forge(json!({"alg": "HS256"}), json!({"exp": "soon"}));
    assert!(policy.verify(&bad).await.is_err());
    assert!(policy.verified.is_empty(), "refused tokens are not cached");
}

#[test]
fn an_entry_goes_when_its_key_leaves_the_fetched_set_and_the_cache_stays_bounded() {
    let cache = TokenCache::new(CACHE_SHARDS * 2);
    let claims = Arc::new(json!({"exp": 4_000_000_000u64}));
    cache.put("t1", claims.clone(), Some("k1"), 0);
    let with = HashMap::from([("k1".to_string(), DecodingKey::from_secret(b"x"))]);
    let without = HashMap::from([("k2".to_string(), DecodingKey::from_secret(b"x"))]);
    assert!(cache.get("t1", 1, Some(&with)).is_some());
    assert!(
        cache.get("t1", 1, Some(&without)).is_none(),
        "k1 left the set"
    );
    for i in 0..1000 {
        cache.put(&format!("token-{i}"), claims.clone(), None, 0);
    }
    assert!(cache.len() <= CACHE_SHARDS * 2, "{} entries", cache.len());
}
