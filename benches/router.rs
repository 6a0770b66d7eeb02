//! Route matching cost at 10, 1,000 and 10,000 prefix routes (plus a regex and header
//! route), for a request that matches the last route and one that matches none.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use portico::config::Source;
use portico::router::RequestView;
use portico::snapshot::{compile, Snapshot};
use std::hint::black_box;
use std::path::Path;

fn snapshot(routes: usize) -> Snapshot {
    let mut text = String::from(
        "version: 1\nlisten: { proxy: 127.0.0.1:1, admin: 127.0.0.1:2 }\nupstreams:\n  svc: { targets: [\"127.0.0.1:3\"] }\nroutes:\n",
    );
    text.push_str("  - { name: regex, match: { path_regex: \"/items/[0-9]+\" }, upstream: svc }\n");
    text.push_str("  - { name: canary, match: { path_prefix: /svc0/, headers: { X-Canary: \"1\" } }, upstream: svc }\n");
    for i in 0..routes {
        text.push_str(&format!(
            "  - {{ name: r{i}, match: {{ path_prefix: /svc{i}/, methods: [GET, POST] }}, upstream: svc }}\n"
        ));
    }
    compile(&Source::parse(Path::new("bench.yaml"), &text, |_| None).unwrap()).unwrap()
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    let headers = HeaderMap::new();
    for n in [10, 1_000, 10_000] {
        let snap = snapshot(n);
        let last = format!("/svc{}/users/42", n - 1);
        group.bench_with_input(BenchmarkId::new("last_route", n), &last, |b, path| {
            b.iter(|| {
                let req = RequestView {
                    method: &Method::GET,
                    host: None,
                    path: black_box(path),
                    headers: &headers,
                };
                black_box(snap.router.find(&req))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("no_route", n),
            "/nothing/here",
            |b, path| {
                b.iter(|| {
                    let req = RequestView {
                        method: &Method::GET,
                        host: None,
                        path: black_box(path),
                        headers: &headers,
                    };
                    black_box(snap.router.find(&req))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, matching);
criterion_main!(benches);
