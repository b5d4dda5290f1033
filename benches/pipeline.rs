//! Benchmarks of the pure stages (criterion): extraction, canonical fingerprints and the
//! diff of a large poll with 1% of items changed (parsed, and as canonical text);
//! signing per scheme.
//!
//! ```text
//! cargo bench --bench pipeline
//! ```

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pollhook::diff::{fingerprint, Diff, Differ, Seen};
use pollhook::extract::{extract, extract_each, extract_each_text, Each};
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

/// What the store holds after polling `doc` with `ignore` (fingerprints depend on it).
fn snapshot(doc: &Value, ignore: &[String]) -> HashMap<String, Seen> {
    extract(doc, "/items", "/id")
        .expect("extract")
        .into_iter()
        .map(|item| {
            let seen = Seen {
                hash: fingerprint(&item.value, ignore),
                raw: serde_json::to_vec(&item.value).expect("serialise"),
            };
            (item.id, seen)
        })
        .collect()
}

/// The production path: items streamed out of the response bytes and diffed one by one.
fn stream_diff(previous: &HashMap<String, Seen>, body: &[u8], ignore: &[String]) -> Diff {
    let mut differ = Differ::new(previous, ignore);
    extract_each(body, "/items", "/id", &mut |item| differ.push(item)).expect("extract");
    differ.finish().expect("diff")
}

/// The production path for text already in canonical form (this document's: compact,
/// keys sorted): items validated and hashed as they are, not parsed.
fn text_diff(previous: &HashMap<String, Seen>, body: &[u8]) -> Diff {
    let mut differ = Differ::new(previous, &[]);
    extract_each_text(body, "/items", "/id", &mut |item| match item {
        Each::Parsed(item) => differ.push(item),
        Each::Canonical { id, text } => differ.push_text(id, text),
    })
    .expect("extract");
    differ.finish().expect("diff")
}

fn poll(c: &mut Criterion) {
    for n in [10_000usize, 100_000] {
        let before = doc(n, |_| false);
        let after = serde_json::to_vec(&doc(n, |i| i % 100 == 0)).expect("serialise");
        let previous = snapshot(&before, &[]);
        let mut group = c.benchmark_group(format!("poll_{}k_items_1pct_changed", n / 1000));
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(10);
        // The baseline the issue sets: parsing the same bytes with serde_json alone.
        group.bench_function("baseline: serde_json parse", |b| {
            b.iter(|| serde_json::from_slice::<Value>(&after).expect("parse"))
        });
        group.bench_function("extract+fingerprint+diff (streamed from bytes)", |b| {
            b.iter(|| stream_diff(&previous, &after, &[]))
        });
        group.bench_function("extract+diff, canonical text (not parsed)", |b| {
            b.iter(|| text_diff(&previous, &after))
        });
        let ignore = vec!["/stock/count".to_string()];
        let previous_ignoring = snapshot(&before, &ignore);
        group.bench_function("extract+fingerprint+diff, 1 ignored field", |b| {
            b.iter(|| stream_diff(&previous_ignoring, &after, &ignore))
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
