//! Properties of path normalization and routing, over generated paths: normalization is
//! idempotent and leaves no dot segments, and every spelling of a path (escaped unreserved
//! characters, doubled slashes, `.` and `x/..` detours) routes like its normalized form.

use http::{HeaderMap, Method, Uri};
use portico::config::Source;
use portico::router::normalize::normalize;
use portico::router::Match;
use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

fn snapshot() -> &'static portico::snapshot::Snapshot {
    static SNAPSHOT: OnceLock<portico::snapshot::Snapshot> = OnceLock::new();
    SNAPSHOT.get_or_init(|| {
        let text = "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nroutes:\n  - { name: exact, match: { path: /a/b }, respond: { text: x } }\n  - { name: prefix, match: { path_prefix: /a/ }, respond: { text: x } }\n  - { name: template, match: { path_template: \"/u/{id}/x\" }, respond: { text: x } }\n  - { name: regex, match: { path_regex: \"/r/[0-9]+\" }, respond: { text: x } }\n  - { name: getonly, match: { path_prefix: /g, methods: [GET] }, respond: { text: x } }\n";
        let src = Source::parse(Path::new("p.yaml"), text, |_| None).unwrap();
        portico::compile::compile(&src).unwrap()
    })
}

fn route(path: &str) -> Option<String> {
    let uri: Uri = path.parse().ok()?;
    let (found, _) = snapshot()
        .router
        .route(&Method::GET, &uri, &HeaderMap::new())
        .ok()?;
    Some(match found {
        Match::Route(i) => snapshot().routes[i].name.to_string(),
        Match::NotFound => "404".into(),
        Match::MethodNotAllowed(_) => "405".into(),
    })
}

/// Path segments of characters routes care about (unreserved, and a few others).
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("u".to_string()),
        Just("r".to_string()),
        Just("g".to_string()),
        Just("x".to_string()),
        "[a-z0-9_~-]{1,6}",
    ]
}

/// Another spelling of the same path: escapes of unreserved characters, `//`, `/./`,
/// and `/z/..` detours.
fn respell(path: &str, choices: &[u8]) -> String {
    let mut out = String::new();
    for (i, c) in path.chars().enumerate() {
        let pick = choices.get(i % choices.len().max(1)).copied().unwrap_or(0) % 5;
        match (c, pick) {
            ('/', 1) => out.push_str("//"),
            ('/', 2) => out.push_str("/./"),
            ('/', 3) => out.push_str("/zz/../"),
            (c, 4) if c.is_ascii_alphanumeric() => out.push_str(&format!("%{:02X}", c as u8)),
            (c, _) => out.push(c),
        }
    }
    out
}

proptest! {
    #[test]
    fn normalization_is_idempotent_and_leaves_no_dot_segments(raw in "(/[a-z.%0-9A-F]{0,5}){0,6}") {
        let raw = if raw.is_empty() { "/".to_string() } else { raw };
        if let Ok(once) = normalize(&raw) {
            let twice = normalize(&once).expect("a normal path stays valid");
            prop_assert_eq!(&twice, &once);
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"), "{}", once);
            for seg in once.split('/') {
                prop_assert!(seg != "." && seg != "..", "{}", once);
            }
        }
    }

    #[test]
    fn every_spelling_routes_like_the_normal_form(
        segs in proptest::collection::vec(segment(), 1..5),
        choices in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let path = format!("/{}", segs.join("/"));
        let spelled = respell(&path, &choices);
        prop_assert_eq!(route(&spelled), route(&path), "{} vs {}", spelled, path);
    }
}
