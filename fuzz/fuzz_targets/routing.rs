//! Path normalization and routing: normalizing twice changes nothing, no dot segment
//! survives, and a path routes like its normal form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portico::config::Source;
use portico::router::normalize::normalize;
use std::path::Path;
use std::sync::OnceLock;

fn snapshot() -> &'static portico::snapshot::Snapshot {
    static SNAPSHOT: OnceLock<portico::snapshot::Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let text = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nroutes:\n  - { name: e, match: { path: /a/b }, respond: { text: x } }\n  - { name: p, match: { path_prefix: /a/ }, respond: { text: x } }\n  - { name: t, match: { path_template: \"/u/{id}/{rest...}\" }, respond: { text: x } }\n  - { name: r, match: { path_regex: \"/r/[0-9]+\" }, respond: { text: x } }\n  - { name: i, match: { path_prefix: /Admin, ignore_case: true }, respond: { text: x } }\n";
        let src = Source::parse(Path::new("f.yaml"), text, |_| None).unwrap();
        portico::compile::compile(&src).unwrap()
    })
}

fn route(path: &str) -> Option<String> {
    let uri: http::Uri = path.parse().ok()?;
    let (found, _) = snapshot()
        .router
        .route(&http::Method::GET, &uri, &http::HeaderMap::new())
        .ok()?;
    Some(match found {
        portico::router::Match::Route(i) => snapshot().routes[i].name.to_string(),
        portico::router::Match::NotFound => "404".into(),
        portico::router::Match::MethodNotAllowed(a) => a,
    })
}

fuzz_target!(|path: &str| {
    let Ok(once) = normalize(path) else { return };
    assert_eq!(normalize(&once).as_deref(), Ok(&*once), "idempotent");
    assert!(once.split('/').all(|s| s != "." && s != ".."), "{once}");
    if path.parse::<http::Uri>().is_ok_and(|u| u.path() == path) {
        assert_eq!(route(path), route(&once), "{path} routes like {once}");
    }
});
