//! Token verification: any bytes as a bearer token are refused or accepted without
//! panicking, and nothing but a token signed with the policy's key is accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portico::config::Source;
use portico::policy::{auth::AuthPolicy, Policy};
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn policy() -> &'static Arc<AuthPolicy> {
    static POLICY: OnceLock<Arc<AuthPolicy>> = OnceLock::new();
    POLICY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("portico-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hs.secret"), "fuzz-secret").unwrap();
        let text = format!(
            "version: 1\nlisten: {{ proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }}\nauth:\n  hs: {{ algorithms: [HS256], secret_file: \"{}\", forward_claims: {{ sub: X-User }} }}\nroutes:\n  - {{ name: r, match: {{ path: /r }}, respond: {{ text: x }}, auth: hs }}\n",
            dir.join("hs.secret").display()
        );
        let src = Source::parse(Path::new("f.yaml"), &text, |_| None).unwrap();
        let snapshot = portico::compile::compile(&src).unwrap();
        match &snapshot.routes[0].policies[0] {
            Policy::Auth(a) => a.policy.clone(),
            _ => unreachable!("the route has one policy"),
        }
    })
}

fuzz_target!(|token: &str| {
    let verdict = futures::executor::block_on(policy().verify(token));
    // The fuzzer cannot sign with the secret: every token it makes is refused.
    assert!(
        verdict.is_err(),
        "accepted a token the fuzzer made: {token}"
    );
});
