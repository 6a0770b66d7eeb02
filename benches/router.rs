//! Route matching cost at 10, 1,000 and 10,000 prefix routes (plus a regex and header
//! route), for a request that matches the last route and one that matches none; and the
//! cost of a reload (parse + check + compile + swap) at 10,000 routes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use portico::compile::{compile, compile_with};
use portico::config::Source;
use portico::router::RequestView;
use portico::snapshot::{Snapshot, SnapshotHolder};
use portico::state::Stores;
use portico::telemetry::Metrics;
use std::hint::black_box;
use std::path::Path;

// The allocator the `portico` binary ships with, so compile times match the real thing.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config_text(routes: usize) -> String {
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
    text
}

fn snapshot(routes: usize) -> Snapshot {
    compile(&Source::parse(Path::new("bench.yaml"), &config_text(routes), |_| None).unwrap())
        .unwrap()
}

/// What a reload costs: parse, check and compile a 10,000-route config, then swap it in.
fn reload(c: &mut Criterion) {
    let text = config_text(10_000);
    let holder = SnapshotHolder::new(snapshot(10));
    let stores = Stores::default();
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("reload");
    group.sample_size(10);
    group.bench_function("parse_compile_swap_10000_routes", |b| {
        b.iter(|| {
            let src = Source::parse(Path::new("bench.yaml"), black_box(&text), |_| None).unwrap();
            holder.store(compile_with(&src, &stores, &metrics).unwrap());
        })
    });
    group.finish();
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    let headers = HeaderMap::new();
    for n in [10, 1_000, 10_000] {
        let snap = snapshot(n);
        let last = format!("/svc{}/users/42", n - 1);
        for (case, path) in [("last_route", last.as_str()), ("no_route", "/nothing/here")] {
            group.bench_with_input(BenchmarkId::new(case, n), path, |b, path| {
                b.iter(|| {
                    let req = RequestView {
                        method: &Method::GET,
                        host: None,
                        path: black_box(path),
                        query: None,
                        headers: &headers,
                    };
                    black_box(snap.router.find(&req))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, matching, reload);
criterion_main!(benches);
