//! Per-request cost of policies: a local rate-limit check (hot key and spread keys).

use criterion::{criterion_group, criterion_main, Criterion};
use portico::policy::ratelimit::LocalStore;
use std::hint::black_box;

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

criterion_group!(benches, rate_limit);
criterion_main!(benches);
