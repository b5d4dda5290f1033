//! Benchmarks of the pure stages (criterion): extraction, canonical fingerprints and the
//! diff of a large poll with 1% of items changed; signing per scheme.
//!
//! ```text
//! cargo bench --bench pipeline
//! ```

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pollhook::diff::{diff, fingerprint, Seen};
use pollhook::extract::extract;
use pollhook::sign::{Scheme, Signer};
use serde_json::{json, Value};

/// A document of `n` items like a typical API's; items with `changed(i)` differ.
fn doc(n: usize, changed: impl Fn(usize) -> bool) -> Value {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("item number {i}"),
                "price": if changed(i) { 1_000_000 + i } else { i % 1000 },
                "tags": ["alpha", "beta", "gamma"],
                "stock": {"warehouse": i % 7, "count": i % 100},
                "description": "A moderately long description so that each item weighs about three hundred bytes, like a typical API object with some text in it.",
            })
        })
        .collect();
    json!({ "items": items })
}

fn snapshot(doc: &Value) -> HashMap<String, Seen> {
    extract(doc, "/items", "/id")
        .expect("extract")
        .into_iter()
        .map(|item| {
            let seen = Seen {
                hash: fingerprint(&item.value, &[]),
                raw: serde_json::to_vec(&item.value).expect("serialise"),
            };
            (item.id, seen)
        })
        .collect()
}

fn poll(c: &mut Criterion) {
    for n in [10_000usize, 100_000] {
        let before = doc(n, |_| false);
        let after = doc(n, |i| i % 100 == 0);
        let previous = snapshot(&before);
        let mut group = c.benchmark_group(format!("poll_{}k_items_1pct_changed", n / 1000));
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(10);
        group.bench_function("extract", |b| {
            b.iter(|| extract(&after, "/items", "/id").expect("extract"))
        });
        group.bench_function("extract+fingerprint+diff", |b| {
            b.iter(|| {
                let items = extract(&after, "/items", "/id").expect("extract");
                diff(&previous, items, &[]).expect("diff")
            })
        });
        let ignore = vec!["/stock/count".to_string()];
        group.bench_function("extract+fingerprint+diff, 1 ignore", |b| {
            b.iter_batched(
                || extract(&after, "/items", "/id").expect("extract"),
                |items| diff(&previous, items, &ignore).expect("diff"),
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

fn sign(c: &mut Criterion) {
    let body = vec![b'x'; 1024];
    let mut group = c.benchmark_group("sign_1KiB_body");
    group.throughput(Throughput::Bytes(body.len() as u64));
    for (scheme, secret) in [
        (Scheme::Standard, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        (Scheme::Github, "It's a Secret to Everybody"),
        (Scheme::Stripe, "whsec_stripe"),
    ] {
        let signer = Signer::new(scheme, &[secret.to_string()]).expect("signer");
        group.bench_function(scheme.to_string(), |b| {
            b.iter(|| signer.headers("evt_0123456789abcdef", 1_764_000_000, &body))
        });
    }
    group.finish();
}

criterion_group!(benches, poll, sign);
criterion_main!(benches);
