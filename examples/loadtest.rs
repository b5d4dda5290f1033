//! End-to-end load figures for docs/PERFORMANCE.md, each printed beside a baseline
//! measured in the same run (these machines are shared; absolute times drift).
//!
//! ```text
//! cargo build --release && cargo run --release --example loadtest -- [--quick] <scenario>…
//! ```
//!
//! Scenarios (default: all):
//! - `throughput`: one poll yields 100,000 new items; time until one target acknowledged
//!   them all, against a plain reqwest loop POSTing the same bodies, same concurrency.
//! - `large-poll`: a 100,000-item document (~30 MB) with 1% changed between polls; a
//!   whole poll (parse, extract, diff, commit) against parsing the same bytes alone.
//! - `large-poll-rss`: peak RSS of the daemon polling that document, against its size.
//! - `mass-change-rss`: 300,000 small items (~5 MB) all updated by one poll; peak RSS
//!   of the daemon until every update is delivered, against the document's size.
//! - `many-sources`: 10,000 sources on 60 s intervals; the daemon's CPU and RSS.
//! - `latency`: 1,000 changes per second; commit to the receiver's 2xx, p50 and p99.
//!
//! Everything runs on 127.0.0.1. The subprocess scenarios run `target/release/pollhook`.
//!
//! `LOADTEST_STORE=postgres` runs `throughput` and `latency` on the PostgreSQL store
//! instead of sled: a throwaway server (initdb in a temp dir, as for the tests), the
//! store joined as one instance of a cluster, its leases renewed as the daemon does, so
//! every commit and acknowledgement is fenced as in production.
//!
//! `LOADTEST_PRETTY=1` serves the item documents pretty-printed instead of compact with
//! sorted keys: the items are then parsed, not hashed as canonical text.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pollhook::config::Config;
use pollhook::deliver::TargetWorker;
use pollhook::poll::{plan_response, Poller};
use pollhook::source::Fetcher;
use pollhook::store::throwaway::Server;
use pollhook::store::{Held, PgStore, SharedStore, SledStore};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut chosen: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    if chosen.is_empty() || chosen == ["all"] {
        chosen = vec![
            "throughput",
            "large-poll",
            "large-poll-rss",
            "many-sources",
            "latency",
        ];
    }
    println!(
        "machine: {} cores, {} MiB memory; {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        mem_total_mib(),
        if quick { "quick mode" } else { "full mode" }
    );
    for s in chosen {
        println!("\n== {s} ==");
        match s {
            "throughput" => throughput(if quick { 20_000 } else { 100_000 }).await?,
            "large-poll" => large_poll(if quick { 20_000 } else { 100_000 }).await?,
            "large-poll-rss" => large_poll_rss(if quick { 20_000 } else { 100_000 }).await?,
            "mass-change-rss" => mass_change_rss(if quick { 60_000 } else { 300_000 }).await?,
            "many-sources" => {
                many_sources(
                    if quick { 2_000 } else { 10_000 },
                    if quick { 30 } else { 180 },
                )
                .await?
            }
            "latency" => latency(if quick { 5 } else { 20 }).await?,
            other => bail!("unknown scenario {other:?}"),
        }
    }
    Ok(())
}

fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// A document of `n` items of about 300 bytes; items whose index is in `changed`
/// carry `rev` in their price.
fn items_doc(n: usize, rev: u64, changed: impl Fn(usize) -> bool) -> Bytes {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("item number {i}"),
                "price": if changed(i) { rev * 1000 + (i % 1000) as u64 } else { (i % 1000) as u64 },
                "tags": ["alpha", "beta", "gamma"],
                "stock": {"warehouse": i % 7, "count": i % 100},
                "description": "A moderately long description so that each item weighs about three hundred bytes, like a typical API object with some text in it.",
            })
        })
        .collect();
    let doc = json!({ "items": items });
    // LOADTEST_PRETTY=1: the document pretty-printed, as many APIs send it; items not in
    // canonical form are parsed (README, Performance).
    let text = if std::env::var_os("LOADTEST_PRETTY").is_some_and(|v| v == "1") {
        serde_json::to_vec_pretty(&doc)
    } else {
        serde_json::to_vec(&doc)
    };
    Bytes::from(text.expect("serialise"))
}

/// Serves whatever document is current at `/items`, without re-serialising.
#[derive(Clone, Default)]
struct Doc(Arc<Mutex<Bytes>>);

impl Doc {
    async fn serve(&self) -> Result<SocketAddr> {
        async fn get(State(doc): State<Doc>) -> ([(&'static str, &'static str); 1], Bytes) {
            let body = doc.0.lock().expect("doc lock").clone();
            ([("content-type", "application/json")], body)
        }
        let app = axum::Router::new()
            .route("/items", axum::routing::get(get))
            .with_state(self.clone());
        Ok(pollhook::demo::serve_loopback(app, CancellationToken::new(), "doc server").await?)
    }

    fn set(&self, b: Bytes) {
        *self.0.lock().expect("doc lock") = b;
    }
}

/// Counts POSTs and notes when each webhook id arrived.
#[derive(Default)]
struct Counter {
    n: AtomicU64,
    arrivals: Mutex<HashMap<String, Instant>>,
    done: Notify,
}

async fn serve_counter(record: bool) -> Result<(SocketAddr, Arc<Counter>)> {
    async fn hook(
        State((c, record)): State<(Arc<Counter>, bool)>,
        headers: HeaderMap,
    ) -> StatusCode {
        if record {
            if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                c.arrivals
                    .lock()
                    .expect("arrivals")
                    .insert(id.to_string(), Instant::now());
            }
        }
        c.n.fetch_add(1, Ordering::Relaxed);
        c.done.notify_waiters();
        StatusCode::OK
    }
    let counter = Arc::new(Counter::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state((counter.clone(), record));
    let addr = pollhook::demo::serve_loopback(app, CancellationToken::new(), "counter").await?;
    Ok((addr, counter))
}

impl Counter {
    async fn wait_for(&self, n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.n.load(Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} arrived within {within:?}",
                    self.n.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

fn config_text(
    state: &Path,
    doc: SocketAddr,
    rx: SocketAddr,
    source_extra: &str,
    target_extra: &str,
) -> String {
    format!(
        "state_dir = {:?}\n[admin]\nlisten = \"\"\n[targets.t]\nurl = \"http://{rx}/hook\"\nsecret = \"{SECRET}\"\n{target_extra}\n\n[sources.s]\nurl = \"http://{doc}/items\"\ninterval = \"1h\"\nitems = \"/items\"\nmax_body = \"256MiB\"\nmax_items = 10000000\n{source_extra}\n",
        state.display().to_string()
    )
}

/// The pieces of a daemon, driven by hand so the scenario knows when each commit lands.
struct Bridge {
    config: Config,
    store: SharedStore,
    poller: Poller,
    wake: Arc<Notify>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
    /// The PostgreSQL server, with `LOADTEST_STORE=postgres`.
    _pg: Option<Server>,
}

/// Whether `LOADTEST_STORE=postgres` asks for the PostgreSQL store.
fn on_postgres() -> bool {
    std::env::var("LOADTEST_STORE").as_deref() == Ok("postgres")
}

impl Bridge {
    async fn new(
        doc: SocketAddr,
        rx: SocketAddr,
        source_extra: &str,
        target_extra: &str,
    ) -> Result<Bridge> {
        let dir = tempfile::tempdir()?;
        let text = config_text(
            &dir.path().join("state"),
            doc,
            rx,
            source_extra,
            target_extra,
        );
        let config = Config::parse(&text, Path::new("loadtest.toml"), &|_| None)?;
        let stop = CancellationToken::new();
        let (store, pg): (SharedStore, _) = if on_postgres() {
            let server = Server::start().map_err(|e| anyhow::anyhow!("{e}"))?;
            let url = server.new_database("loadtest");
            let lease = Duration::from_secs(15);
            let pg = Arc::new(PgStore::open(&url, "loadtest")?.join("loadtest".into(), lease));
            let (sources, targets) = (vec!["s".to_string()], vec!["t".to_string()]);
            pg.tick(&sources, &targets, &Held::default())?;
            // Renewed every quarter lease, as the daemon's rounds do.
            let (renew, stopped) = (pg.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stopped.is_cancelled() {
                    std::thread::sleep(lease / 4);
                    let _ = renew.tick(&sources, &targets, &Held::default());
                }
            });
            (pg, Some(server))
        } else {
            (Arc::new(SledStore::open(&config.state_dir)?), None)
        };
        let wakes = pollhook::poll::Wakes::default();
        let wake = wakes.of("t");
        let worker = TargetWorker::new(
            config.targets["t"].clone(),
            store.clone(),
            wake.clone(),
            stop.clone(),
            Duration::from_secs(5),
        )?;
        tokio::spawn(worker.run());
        let poller = Poller::new(store.clone(), Fetcher::new(&config.sources)?, wakes);
        Ok(Bridge {
            config,
            store,
            poller,
            wake,
            stop,
            _dir: dir,
            _pg: pg,
        })
    }

    /// Polls once; returns the committed event ids and the instant the commit landed.
    async fn poll(&self) -> Result<(Vec<String>, Instant)> {
        let (ids, at, _, _) = self.poll_split().await?;
        Ok((ids, at))
    }

    /// A poll, and how long its parts took: fetch + parse + diff, building the events,
    /// the store's commits.
    /// Also when the first events were queued, if the store queued them before the
    /// end of the commits (a large poll on sled: the first moved chunk).
    #[allow(clippy::type_complexity)]
    async fn poll_split(&self) -> Result<(Vec<String>, Instant, [Duration; 3], Option<Duration>)> {
        let source = &self.config.sources["s"];
        let started = Instant::now();
        let mut plan = self.poller.plan(source, chrono::Utc::now()).await?;
        let planned = started.elapsed();
        let store = self.store.clone();
        // As the daemon's poller does: the store wakes the target as soon as a moved
        // chunk of a large poll is in the outbox.
        let (wake, first) = (self.wake.clone(), Arc::new(OnceLock::new()));
        let queued = pollhook::store::Queued::new({
            let first = first.clone();
            move || {
                first.get_or_init(Instant::now);
                wake.notify_one();
            }
        });
        let (ids, build, commit) =
            tokio::task::spawn_blocking(move || -> Result<(Vec<String>, Duration, Duration)> {
                let mut ids = Vec::new();
                let (mut build, mut commit) = (Duration::ZERO, Duration::ZERO);
                loop {
                    let t = Instant::now();
                    let Some(mut c) = plan.next_commit()? else {
                        break;
                    };
                    c.queued = queued.clone();
                    build += t.elapsed();
                    ids.extend(c.events.iter().map(|(e, _)| e.id.clone()));
                    let t = Instant::now();
                    store.commit_poll(c)?;
                    commit += t.elapsed();
                }
                Ok((ids, build, commit))
            })
            .await??;
        let at = Instant::now();
        self.wake.notify_one();
        let first = first.get().map(|t| t.duration_since(started));
        Ok((ids, at, [planned, build, commit], first))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn throughput(n: usize) -> Result<()> {
    let concurrency: usize = std::env::var("CONC")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16);
    let doc = Doc::default();
    doc.set(items_doc(n, 0, |_| false));
    let doc_addr = doc.serve().await?;

    // The same bodies pollhook will send: build them the way pollhook does.
    let parsed: Value = serde_json::from_slice(&doc.0.lock().expect("doc").clone())?;
    let items = pollhook::extract::extract(&parsed, "/items", "/id")?;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        pollhook::diff::diff(&HashMap::new(), items, &[])?
            .changes
            .iter()
            .map(|c| Bytes::from(pollhook::event::build("s", "s", 1, c, chrono::Utc::now()).body))
            .collect(),
    );
    let avg = bodies.iter().map(|b| b.len()).sum::<usize>() / bodies.len();
    println!(
        "{:<34}{}",
        "store",
        if on_postgres() {
            "PostgreSQL (throwaway server, one fenced instance)"
        } else {
            "sled"
        }
    );
    println!(
        "{:<34}{n} events of {avg} bytes, {concurrency} in flight",
        "workload"
    );

    let mut baseline_rates = Vec::new();
    // pollhook's delivery rate and its end-to-end rate.
    let mut rates: Option<(f64, f64)> = None;
    for round in 0..2 {
        let (rx, counter) = serve_counter(false).await?;
        let client = reqwest::Client::new();
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let cpu0 = cpu_ticks(std::process::id());
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (client, next, bodies) = (client.clone(), next.clone(), bodies.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(body) = bodies.get(i) else { break };
                    let resp = client
                        .post(format!("http://{rx}/hook"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if !resp.map(|r| r.status().is_success()).unwrap_or(false) {
                        eprintln!("baseline request failed");
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        counter.wait_for(n as u64, Duration::from_secs(600)).await?;
        let secs = started.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(std::process::id()) - cpu0) as f64 / 100.0 / secs;
        baseline_rates.push(n as f64 / secs);
        println!(
            "{:<34}{:.2}s, {:.0} events/s, CPU {:.0}% (of 200%)",
            format!("baseline (reqwest loop) run {}", round + 1),
            secs,
            n as f64 / secs,
            cpu * 100.0
        );
        if round == 0 {
            // pollhook between the two baseline runs, so drift shows.
            let (rx, counter) = serve_counter(false).await?;
            let bridge = Bridge::new(
                doc_addr,
                rx,
                "baseline = false",
                &format!("max_in_flight = {concurrency}"),
            )
            .await?;
            let started = Instant::now();
            let (ids, committed, [planned, build, commit], first) = bridge.poll_split().await?;
            let poll_secs = started.elapsed().as_secs_f64();
            let cpu0 = cpu_ticks(std::process::id());
            counter
                .wait_for(ids.len() as u64, Duration::from_secs(600))
                .await?;
            let secs = committed.elapsed().as_secs_f64();
            let cpu = (cpu_ticks(std::process::id()) - cpu0) as f64 / 100.0 / secs;
            println!(
                "{:<34}{poll_secs:.2}s (fetch, diff, commit of {} events)",
                "pollhook poll",
                ids.len()
            );
            println!(
                "{:<34}fetch + parse + diff {:.2}s, building events {:.2}s, store commits {:.2}s",
                "  of which",
                planned.as_secs_f64(),
                build.as_secs_f64(),
                commit.as_secs_f64()
            );
            if let Some(first) = first {
                println!(
                    "{:<34}{:.2}s after the poll began (delivery may start)",
                    "  first events queued",
                    first.as_secs_f64()
                );
            }
            println!(
                "{:<34}{secs:.2}s after the commit, {:.0} events/s, CPU {:.0}% (of 200%)",
                "pollhook delivery",
                n as f64 / secs,
                cpu * 100.0
            );
            let total = started.elapsed().as_secs_f64();
            println!(
                "{:<34}{total:.2}s poll begun to last 2xx, {:.0} events/s",
                "pollhook end to end",
                n as f64 / total
            );
            rates = Some((n as f64 / secs, n as f64 / total));
        }
    }
    let (delivery, end_to_end) = rates.unwrap_or_default();
    let base = baseline_rates.iter().sum::<f64>() / baseline_rates.len() as f64;
    println!(
        "{:<34}{:.2}x the baseline's mean rate (goal: at least 0.7x)",
        "ratio, delivery",
        delivery / base
    );
    println!(
        "{:<34}{:.2}x the baseline's mean rate (goal: at least 0.6x)",
        "ratio, end to end",
        end_to_end / base
    );
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn large_poll(n: usize) -> Result<()> {
    let doc = Doc::default();
    let mut body = items_doc(n, 0, |_| false);
    doc.set(body.clone());
    let doc_addr = doc.serve().await?;
    let (rx, _counter) = serve_counter(false).await?;
    let bridge = Bridge::new(doc_addr, rx, "", "").await?;
    let source = bridge.config.sources["s"].clone();
    println!(
        "{:<34}{n} items, {:.1} MB",
        "document",
        body.len() as f64 / 1e6
    );

    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1000.0
    };
    let mut parse = Vec::new();
    let mut polls = Vec::new();
    let store = bridge.store.clone();
    let whole_poll = |body: &Bytes| -> Result<(f64, usize)> {
        let t = Instant::now();
        let plan = plan_response(&*store, &source, body, chrono::Utc::now())?;
        let r = &plan.report;
        let writes = r.created + r.updated + r.deleted + r.events;
        plan.commit_all(&*store, || {})?;
        Ok((t.elapsed().as_secs_f64() * 1000.0, writes))
    };
    let (first, _) = whole_poll(&body)?;
    println!(
        "{:<34}{first:.0} ms (baseline: records {n} items silently)",
        "first poll"
    );
    for rev in 1..=5u64 {
        // 1% of the items change between polls, a different 1% each time.
        body = items_doc(n, rev, |i| i % 100 == rev as usize);
        parse.push(time(&mut || {
            let v: Value = serde_json::from_slice(&body).expect("parse");
            std::hint::black_box(v);
        }));
        let (ms, writes) = whole_poll(&body)?;
        polls.push(ms);
        if rev == 1 {
            println!(
                "{:<34}{writes} (upserts + events)",
                "writes per 1%-changed poll"
            );
        }
    }
    let snap = median(
        (0..5)
            .map(|_| {
                time(&mut || {
                    std::hint::black_box(store.snapshot("s").map(|m| m.len()))
                        .map(drop)
                        .unwrap_or(())
                })
            })
            .collect(),
    );
    let hash = median(
        (0..5)
            .map(|_| {
                time(&mut || {
                    let mut n = 0;
                    let _ = pollhook::extract::extract_each::<()>(
                        &body,
                        "/items",
                        "/id",
                        &mut |item| {
                            n += pollhook::diff::fingerprint(&item.value, &[])[0] as usize;
                            Ok(())
                        },
                    );
                    std::hint::black_box(n);
                })
            })
            .collect(),
    );
    println!("{:<34}{snap:.0} ms", "  of which: reading the snapshot");
    println!("{:<34}{hash:.0} ms", "  streaming parse + fingerprints");
    let before = store.source_state("s")?;
    let (unchanged, writes) = whole_poll(&body)?;
    let after = store.source_state("s")?;
    let (p, w) = (median(parse), median(polls));
    println!(
        "{:<34}{p:.0} ms (median of 5)",
        "baseline: serde_json parse alone"
    );
    println!(
        "{:<34}{w:.0} ms (median of 5)",
        "pollhook: parse+extract+diff+commit"
    );
    println!("{:<34}{:.2}x the parse (goal: at most 2x)", "ratio", w / p);
    println!(
        "{:<34}{unchanged:.0} ms, {writes} writes, generation {} -> {}",
        "unchanged poll", before.generation, after.generation
    );
    if writes != 0 || before != after {
        bail!("an unchanged poll wrote to the database");
    }
    Ok(())
}

fn pollhook_bin() -> Result<PathBuf> {
    // Another build (or a wrapper such as a profiler's) for A/B runs.
    if let Some(bin) = std::env::var_os("POLLHOOK_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("pollhook"))
        .context("locating target dir")?;
    if !bin.exists() {
        bail!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn proc_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) of a process in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else { return 0 };
    stat[end + 2..]
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(config: &Path) -> Result<Child> {
    Ok(Child(
        std::process::Command::new(pollhook_bin()?)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?,
    ))
}

async fn large_poll_rss(n: usize) -> Result<()> {
    let doc = Doc::default();
    let body = items_doc(n, 0, |_| false);
    let size = body.len();
    doc.set(body);
    let doc_addr = doc.serve().await?;
    let (rx, _counter) = serve_counter(false).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        config_text(&dir.path().join("state"), doc_addr, rx, "", "")
            .replace("interval = \"1h\"", "interval = \"2s\""),
    )?;
    let child = spawn_daemon(&path)?;
    let pid = child.0.id();
    let idle = {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proc_field(pid, "VmRSS:")
    };
    // The first poll records the snapshot; the next ones diff against it (1% changes).
    for rev in 1..=4u64 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        doc.set(items_doc(n, rev, |i| i % 100 == rev as usize));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hwm = proc_field(pid, "VmHWM:");
    println!("{:<34}{:.1} MB", "document", size as f64 / 1e6);
    println!(
        "{:<34}{:.1} MB at start",
        "daemon RSS",
        idle as f64 / 1024.0
    );
    println!(
        "{:<34}{:.1} MB after 5 polls",
        "daemon peak RSS (VmHWM)",
        hwm as f64 / 1024.0
    );
    println!(
        "{:<34}{:.2}x the document (goal: at most 3x)",
        "ratio",
        hwm as f64 * 1024.0 / size as f64
    );
    Ok(())
}

async fn mass_change_rss(n: usize) -> Result<()> {
    let small = |v: u64| {
        let items: Vec<Value> = (0..n).map(|i| json!({"id": i, "v": v})).collect();
        Bytes::from(serde_json::to_vec(&json!({ "items": items })).expect("serialise"))
    };
    let doc = Doc::default();
    let body = small(0);
    let size = body.len();
    doc.set(body);
    let doc_addr = doc.serve().await?;
    let (rx, counter) = serve_counter(false).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        config_text(&dir.path().join("state"), doc_addr, rx, "", "")
            .replace("interval = \"1h\"", "interval = \"2s\""),
    )?;
    let child = spawn_daemon(&path)?;
    let pid = child.0.id();
    // The first poll records the baseline silently; then every item changes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let baseline = proc_field(pid, "VmHWM:");
    doc.set(small(1));
    let t = Instant::now();
    counter.wait_for(n as u64, Duration::from_secs(600)).await?;
    let took = t.elapsed();
    let hwm = proc_field(pid, "VmHWM:");
    println!("{:<34}{:.1} MB, {n} items", "document", size as f64 / 1e6);
    println!(
        "{:<34}{:.1} MB after the baseline poll",
        "daemon peak RSS (VmHWM)",
        baseline as f64 / 1024.0
    );
    println!(
        "{:<34}{:.1} MB after {n} updates delivered ({:.1} s)",
        "daemon peak RSS (VmHWM)",
        hwm as f64 / 1024.0,
        took.as_secs_f64()
    );
    println!(
        "{:<34}{:.1}x the document",
        "ratio",
        hwm as f64 * 1024.0 / size as f64
    );
    Ok(())
}

async fn many_sources(k: usize, secs: u64) -> Result<()> {
    let doc = Doc::default();
    doc.set(items_doc(10, 0, |_| false));
    let doc_addr = doc.serve().await?;
    let (rx, _counter) = serve_counter(false).await?;
    let dir = tempfile::tempdir()?;
    let mut text = format!(
        "state_dir = {:?}\n[admin]\nlisten = \"\"\n[targets.t]\nurl = \"http://{rx}/hook\"\nsecret = \"{SECRET}\"\n",
        dir.path().join("state").display().to_string()
    );
    for i in 0..k {
        text.push_str(&format!("\n[sources.s{i}]\nurl = \"http://{doc_addr}/items\"\ninterval = \"60s\"\nitems = \"/items\"\n"));
    }
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text)?;
    let child = spawn_daemon(&path)?;
    let pid = child.0.id();
    // Start-up spreads first polls over 10% of the interval; measure after that.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let cpu = (cpu_ticks(pid) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    println!(
        "{:<34}{k} sources every 60s ({:.0} polls/s)",
        "workload",
        k as f64 / 60.0
    );
    println!(
        "{:<34}{:.1}% of one core over {secs}s (goal: under 3%)",
        "daemon CPU",
        cpu * 100.0
    );
    println!(
        "{:<34}{:.0} MB (peak {:.0} MB; goal: under 100 MB)",
        "daemon RSS",
        proc_field(pid, "VmRSS:") as f64 / 1024.0,
        proc_field(pid, "VmHWM:") as f64 / 1024.0
    );
    Ok(())
}

async fn latency(secs: u64) -> Result<()> {
    let items = 1000;
    // A poll every 10 ms at most. Each marks a window of items and un-marks the previous
    // window, the window as wide as keeps the changes at 1,000 a second since the start
    // however long each poll takes (a poll's changes are the two windows).
    const RATE: f64 = 1000.0;
    let doc = Doc::default();
    doc.set(items_doc(items, 0, |_| false));
    let doc_addr = doc.serve().await?;
    let (rx, counter) = serve_counter(true).await?;
    let bridge = Bridge::new(doc_addr, rx, "", "").await?;
    println!(
        "{:<34}{}",
        "store",
        if on_postgres() { "PostgreSQL" } else { "sled" }
    );
    bridge.poll().await?;
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let started = Instant::now();
    let mut rev = 0u64;
    let (mut first, mut width, mut produced) = (0usize, 0usize, 0usize);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        rev += 1;
        let want = (started.elapsed().as_secs_f64() * RATE) as usize;
        first = (first + width) % items;
        width = want.saturating_sub(produced + width).clamp(1, items / 4);
        let (start, w) = (first, width);
        doc.set(items_doc(items, rev, |i| (i + items - start) % items < w));
        let (ids, at) = bridge.poll().await?;
        produced += ids.len();
        for id in ids {
            committed.insert(id, at);
        }
    }
    let rate = committed.len() as f64 / started.elapsed().as_secs_f64();
    counter
        .wait_for(committed.len() as u64, Duration::from_secs(60))
        .await?;
    let arrivals = counter.arrivals.lock().expect("arrivals");
    let mut lat: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            arrivals
                .get(id)
                .map(|a| a.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "{:<34}{:.0} changes/s for {secs}s ({} events)",
        "workload",
        rate,
        lat.len()
    );
    println!(
        "{:<34}p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (goal: p99 under 25 ms)",
        "commit -> receiver 2xx",
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}
