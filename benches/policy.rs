//! Per-request cost of policies: a local rate-limit check (hot key and spread keys) and JWT
//! verification (HS256, RS256) through the compiled auth policy.

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portico::compile::compile;
use portico::config::Source;
use portico::policy::auth::{AuthPolicy, Jwt};
use portico::policy::ratelimit::LocalStore;
use portico::policy::Policy;
use std::hint::black_box;
use std::path::Path;

fn rate_limit(c: &mut Criterion) {
    let store = LocalStore::new(100_000);
    let interval = 1_000_000; // 1000 requests/s
    c.bench_function("ratelimit_local/same_key", |b| {
        b.iter(|| black_box(store.check(black_box("ip:10.0.0.1"), interval, 1_000_000)))
    });
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
        .collect();
    let mut i = 0;
    c.bench_function("ratelimit_local/10k_keys", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(store.check(&keys[i], interval, 1_000_000))
        })
    });
}

fn policy(kind: &str) -> std::sync::Arc<AuthPolicy> {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let auth = match kind {
        "hs" => format!("{{ algorithms: [HS256], secret_file: \"{keys}/hs.secret\" }}"),
        _ => format!("{{ algorithms: [RS256], public_key_file: \"{keys}/rsa1.pub.pem\" }}"),
    };
    let text = format!(
        "version: 1\nlisten: {{ proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }}\nauth:\n  p: {auth}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, respond: {{ status: 200 }}, auth: p }}\n"
    );
    let snap = compile(&Source::parse(Path::new("bench.yaml"), &text, |_| None).unwrap()).unwrap();
    match &snap.routes[0].policies[0] {
        Policy::Auth(a) => a.policy.clone(),
        _ => unreachable!("the route has one policy: auth"),
    }
}

fn jwt(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let claims = serde_json::json!({"sub": "u1", "exp": 4_000_000_000u64, "role": "user"});
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let secret = std::fs::read(format!("{keys}/hs.secret")).unwrap();
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let rsa = std::fs::read(format!("{keys}/rsa1.key.pem")).unwrap();
    let rs = encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&rsa).unwrap(),
    )
    .unwrap();
    for (name, token) in [("hs", hs), ("rs", rs)] {
        let p = policy(name);
        let AuthPolicy::Jwt(p) = &*p else {
            unreachable!("a JWT policy")
        };
        let p: &Jwt = p;
        assert!(rt.block_on(p.verify(&token)).is_ok());
        c.bench_function(
            &format!(
                "jwt_verify/{}",
                if name == "hs" { "HS256" } else { "RS256" }
            ),
            |b| b.iter(|| black_box(rt.block_on(p.verify(black_box(&token))).is_ok())),
        );
    }
}

criterion_group!(benches, rate_limit, jwt);
criterion_main!(benches);
