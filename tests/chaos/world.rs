//! The world around the daemon: a sample API changed continuously by a mutator that
//! remembers every change, and ledger receivers that verify, record and check every
//! webhook against it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use pollhook::demo::api::SampleApi;
use pollhook::sign::{verify_request, Scheme};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the source side did.
#[derive(Default)]
pub struct SourceBook {
    next_id: u64,
    /// Live items and their current version.
    pub items: BTreeMap<u64, u64>,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// When each (item, version) appeared, for latency.
    changed_at: HashMap<(u64, u64), Instant>,
}

/// The sample API and the book of every change made to it.
#[derive(Clone)]
pub struct Source {
    pub api: SampleApi,
    pub book: Arc<Mutex<SourceBook>>,
    pad: usize,
}

impl Source {
    pub async fn start(shutdown: CancellationToken, pad: usize) -> Source {
        Source {
            api: SampleApi::start(shutdown).await.expect("sample API"),
            book: Arc::new(Mutex::new(SourceBook::default())),
            pad,
        }
    }

    fn put(&self, b: &mut SourceBook, id: u64, v: u64) {
        self.api.set(
            &id.to_string(),
            json!({"v": v, "pad": "p".repeat(self.pad)}),
        );
        b.items.insert(id, v);
        b.changed_at.insert((id, v), Instant::now());
    }

    pub fn create(&self) -> u64 {
        let mut b = self.book.lock().unwrap();
        b.next_id += 1;
        let id = b.next_id;
        self.put(&mut b, id, 1);
        b.created += 1;
        id
    }

    pub fn update(&self, id: u64) {
        let mut b = self.book.lock().unwrap();
        if let Some(v) = b.items.get(&id).copied() {
            self.put(&mut b, id, v + 1);
            b.updated += 1;
        }
    }

    pub fn delete(&self, id: u64) {
        let mut b = self.book.lock().unwrap();
        if b.items.remove(&id).is_some() {
            self.api.remove(&id.to_string());
            b.deleted += 1;
        }
    }

    pub fn live(&self) -> Vec<u64> {
        self.book.lock().unwrap().items.keys().copied().collect()
    }

    pub fn summary(&self) -> String {
        let b = self.book.lock().unwrap();
        format!(
            "created {}, updated {}, deleted {} ({} live)",
            b.created,
            b.updated,
            b.deleted,
            b.items.len()
        )
    }
}

/// How a mutator changes the source.
#[derive(Clone, Copy)]
pub struct Churn {
    pub tick: Duration,
    pub max_items: usize,
    pub deletes: bool,
    /// Update every live item each tick (maximum event rate).
    pub update_all: bool,
}

/// Changes the source every tick until `stop`. Items are deleted only once every
/// receiver has accepted their creation, so "every created item is delivered as
/// created" is checkable.
pub async fn mutate(src: Source, churn: Churn, receivers: Vec<Receiver>, stop: CancellationToken) {
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(churn.tick) => {}
        }
        n += 1;
        let live = src.live();
        if churn.update_all {
            if live.len() < churn.max_items {
                src.create();
            }
            for id in live {
                src.update(id);
            }
            continue;
        }
        let pick = live.get((n as usize * 7919) % live.len().max(1)).copied();
        match n % 20 {
            0..=7 if live.len() < churn.max_items => {
                src.create();
            }
            8..=16 => {
                if let Some(id) = pick {
                    src.update(id);
                }
            }
            17..=19 if churn.deletes => {
                if let Some(id) = pick {
                    if receivers.iter().all(|r| r.has_seen(id)) {
                        src.delete(id);
                    }
                }
            }
            _ => {
                if let Some(id) = pick {
                    src.update(id);
                }
            }
        }
    }
}

/// How a receiver answers, switchable at runtime.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Status for every request (0 = 200).
    pub status: u16,
    pub delay: Duration,
    /// Retry-After seconds with 429/503.
    pub retry_after: Option<u64>,
    /// Answer 410 to events of items whose id is divisible by this.
    pub gone_every: Option<u64>,
}

#[derive(Default)]
struct Book {
    requests: u64,
    accepted: u64,
    kinds: BTreeMap<String, u64>,
    duplicates: u64,
    unverified: u64,
    /// Every event id with the hash of its body: one id, one body.
    bodies: HashMap<String, u64>,
    /// Every change seen, (kind, item, version), with the event ids it came under: one
    /// change, one id. Versions only grow and item ids are never reused, so a change
    /// that came under a second id was detected and committed twice.
    change_ids: HashMap<(String, u64, u64), Vec<String>>,
    /// Event ids that a change came under after its first.
    twice: u64,
    /// First deliveries older than one the receiver had already applied.
    order_breaks: u64,
    accepted_ids: HashSet<String>,
    /// The receiver's copy of the source: item → (alive, version).
    replica: HashMap<u64, (bool, u64)>,
    gone: HashSet<u64>,
    violations: Vec<String>,
    latencies: Vec<Duration>,
}

struct Inner {
    name: String,
    behaviour: Mutex<Behaviour>,
    book: Mutex<Book>,
    source: Arc<Mutex<SourceBook>>,
}

/// A receiver that verifies, records and checks.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
}

impl Receiver {
    pub async fn start(name: &str, src: &Source, shutdown: CancellationToken) -> Receiver {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            behaviour: Mutex::new(Behaviour::default()),
            book: Mutex::new(Book::default()),
            source: src.book.clone(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(inner.clone());
        let addr = pollhook::demo::serve_loopback(app, shutdown, "ledger receiver")
            .await
            .expect("receiver");
        Receiver { inner, addr }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set(&self, b: Behaviour) {
        *self.inner.behaviour.lock().unwrap() = b;
    }

    /// Whether the creation of `item` was accepted.
    pub fn has_seen(&self, item: u64) -> bool {
        self.inner.book.lock().unwrap().replica.contains_key(&item)
    }

    pub fn accepted(&self) -> u64 {
        self.inner.book.lock().unwrap().accepted
    }

    /// Requests received, answered with any status.
    pub fn requests(&self) -> u64 {
        self.inner.book.lock().unwrap().requests
    }

    /// Accepted events whose id had been accepted before.
    pub fn duplicates(&self) -> u64 {
        self.inner.book.lock().unwrap().duplicates
    }

    /// Event ids that repeat a change already seen under another id (the change was
    /// committed twice).
    pub fn committed_twice(&self) -> u64 {
        self.inner.book.lock().unwrap().twice
    }

    /// Per-item order violations among first deliveries.
    pub fn order_breaks(&self) -> u64 {
        self.inner.book.lock().unwrap().order_breaks
    }

    /// Every change seen, (kind, item, version), with the event ids it came under.
    pub fn change_ids(&self) -> HashMap<(String, u64, u64), Vec<String>> {
        self.inner.book.lock().unwrap().change_ids.clone()
    }

    /// Every event id seen with the hash of its body.
    pub fn bodies(&self) -> HashMap<String, u64> {
        self.inner.book.lock().unwrap().bodies.clone()
    }

    /// Latencies (change at the source → accepted here) since the last call.
    pub fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut self.inner.book.lock().unwrap().latencies)
    }

    /// Items where this receiver's copy differs from the source now, except items it
    /// answered 410 for (their deliveries are dead by request).
    pub fn mismatches(&self) -> Vec<u64> {
        // Lock order everywhere: the receiver's book, then the source's.
        let book = self.inner.book.lock().unwrap();
        let src = self.inner.source.lock().unwrap();
        let mut out: Vec<u64> = src
            .items
            .iter()
            .filter(|(id, v)| book.replica.get(id) != Some(&(true, **v)))
            .map(|(id, _)| *id)
            .filter(|id| !book.gone.contains(id))
            .collect();
        out.extend(
            book.replica
                .iter()
                .filter(|(id, (alive, _))| {
                    *alive && !src.items.contains_key(id) && !book.gone.contains(id)
                })
                .map(|(id, _)| *id),
        );
        out.sort_unstable();
        out
    }

    /// Items this receiver answered 410 for.
    pub fn gone(&self) -> HashSet<u64> {
        self.inner.book.lock().unwrap().gone.clone()
    }

    /// Waits until this receiver's copy equals the source, or `within` passes.
    pub async fn converge(&self, within: Duration) -> Vec<u64> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.mismatches();
            if m.is_empty() || Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds this receiver's lines and violations to the ledger; `lost` are items
    /// whose last change never arrived.
    pub fn report(&self, ledger: &mut Ledger, lost: &[u64]) {
        let b = self.inner.book.lock().unwrap();
        let kinds: Vec<String> = b.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        ledger.line(
            &format!("target {}", self.name()),
            format!(
                "requests {}, accepted {} ({}), duplicates {}, lost {}, dead by 410 {}, changes under two ids {}",
                b.requests,
                b.accepted,
                kinds.join(", "),
                b.duplicates,
                lost.len(),
                b.gone.len(),
                b.twice
            ),
        );
        if b.unverified > 0 {
            ledger.violation(format!(
                "{}: {} requests failed signature verification",
                self.name(),
                b.unverified
            ));
        }
        for v in b.violations.iter().take(10) {
            ledger.violation(format!("{}: {v}", self.name()));
        }
        if !lost.is_empty() {
            ledger.violation(format!(
                "{}: lost the last change of {} items, e.g. {:?}",
                self.name(),
                lost.len(),
                &lost[..lost.len().min(10)]
            ));
        }
    }
}

async fn hook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let behaviour = inner.behaviour.lock().unwrap().clone();
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let now = chrono::Utc::now().timestamp();
    let secrets = [SECRET.to_string()];
    let verified = verify_request(Scheme::Standard, &secrets, &headers, &body, now, 300).is_ok();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = header("webhook-id").unwrap_or_default();
    let kind = event["type"]
        .as_str()
        .unwrap_or("")
        .rsplit('.')
        .next()
        .unwrap_or("")
        .to_string();
    let item: u64 = event["data"]["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let version = event["data"]["object"]["v"].as_u64().unwrap_or(0);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let body_hash = hasher.finish();

    let status = if !verified {
        401
    } else if behaviour.gone_every.is_some_and(|n| item.is_multiple_of(n)) {
        410
    } else if behaviour.status == 0 {
        200
    } else {
        behaviour.status
    };
    // Looked up before the receiver's own lock is taken: never hold both.
    let changed_at = inner
        .source
        .lock()
        .unwrap()
        .changed_at
        .get(&(item, version))
        .copied();
    let mut b = inner.book.lock().unwrap();
    b.requests += 1;
    if !verified {
        b.unverified += 1;
    }
    match b.bodies.get(&id) {
        Some(h) if *h != body_hash => b
            .violations
            .push(format!("event {id} was sent with two different bodies")),
        Some(_) => {}
        None => {
            b.bodies.insert(id.clone(), body_hash);
        }
    }
    if verified {
        let ids = b
            .change_ids
            .entry((kind.clone(), item, version))
            .or_default();
        if !ids.contains(&id) {
            ids.push(id.clone());
            if ids.len() > 1 {
                let v = format!(
                    "item {item}: {kind} v{version} came under two event ids, {} and {id} (committed twice)",
                    ids[0]
                );
                b.violations.push(v);
                b.twice += 1;
            }
        }
    }
    if status == 410 {
        b.gone.insert(item);
    }
    if status == 200 {
        b.accepted += 1;
        *b.kinds.entry(kind.clone()).or_insert(0) += 1;
        if !b.accepted_ids.insert(id.clone()) {
            // A repeat of an event already accepted (its acknowledgement was lost in a
            // crash). Receivers deduplicate on the id, so repeats are counted, and order
            // and the replica are judged on first deliveries only.
            b.duplicates += 1;
        } else {
            apply(&mut b, changed_at, &kind, item, version);
        }
    }
    drop(b);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match behaviour.retry_after {
        Some(secs) if matches!(status, 429 | 503) => {
            (code, [("retry-after", secs.to_string())]).into_response()
        }
        _ => code.into_response(),
    }
}

/// Applies a first delivery to the receiver's copy, checking per-item order.
fn apply(b: &mut Book, changed_at: Option<Instant>, kind: &str, item: u64, version: u64) {
    let seen = b.replica.get(&item).copied();
    if let Some((_, last)) = seen {
        if version < last {
            b.order_breaks += 1;
            b.violations.push(format!(
                "item {item}: {kind} v{version} arrived after v{last} (order)"
            ));
        }
    }
    match kind {
        "created" => {
            b.replica.insert(item, (true, version));
        }
        "updated" => {
            // An item whose creation the receiver refused with 410 legitimately
            // starts with an update.
            if seen.is_none() && !b.gone.contains(&item) {
                b.violations
                    .push(format!("item {item}: updated before any created"));
            }
            b.replica.insert(item, (true, version));
        }
        "deleted" => {
            b.replica.insert(item, (false, version));
        }
        other => b.violations.push(format!("unknown event kind {other:?}")),
    }
    if kind != "deleted" && seen.map(|(_, v)| v) != Some(version) {
        if let Some(at) = changed_at {
            b.latencies.push(at.elapsed());
        }
    }
}

/// A scenario's result: figures and broken invariants.
#[derive(Default)]
pub struct Ledger {
    lines: Vec<(String, String)>,
    pub violations: Vec<String>,
    /// Why the scenario did not run, if it could not (PostgreSQL missing).
    pub skipped: Option<String>,
}

impl Ledger {
    pub fn line(&mut self, key: &str, value: impl Into<String>) {
        self.lines.push((key.to_string(), value.into()));
    }

    pub fn violation(&mut self, v: impl Into<String>) {
        self.violations.push(v.into());
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.lines {
            writeln!(f, "{k:<24}{v}")?;
        }
        for v in &self.violations {
            writeln!(f, "{:<24}{v}", "VIOLATION")?;
        }
        let result = match &self.skipped {
            _ if !self.violations.is_empty() => "FAIL".to_string(),
            Some(why) => format!("SKIPPED: {why}"),
            None => "PASS".to_string(),
        };
        writeln!(f, "{:<24}{result}", "result")
    }
}

/// p50 and p99 of a sample, in milliseconds.
pub fn percentiles(mut v: Vec<Duration>) -> (u128, u128, usize) {
    if v.is_empty() {
        return (0, 0, 0);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_millis();
    (at(0.5), at(0.99), v.len())
}
