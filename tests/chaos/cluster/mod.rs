//! The cluster scenario: three instances of the binary on one PostgreSQL database, three
//! sources that change all the time, each delivered to a healthy target and a flaky one.
//! At random instants a random instance is killed (kill -9) and a replacement started;
//! once in the run one instance is frozen (SIGSTOP) for two leases and then let go
//! (SIGCONT), and once the database is restarted as by a crash (`pg_ctl -m immediate`).
//!
//! The ledger is the single-node one, per target (nothing lost, per-item order, one body
//! per event id, repeats counted), and what a cluster must keep besides: no change
//! committed twice (under two event ids, by two instances' polls), and work never left
//! unowned for long: from each kill, the time until everything the dead instance held
//! is held again by a running instance, read from the leases table every 50 ms.
//!
//! A replacement joins under a new instance name. With the default name (host name and
//! pid) every restarted process is a new instance, so this is what a restart by a service
//! manager looks like, and it makes every kill a real takeover: the dead instance's
//! leases expire and another instance claims them. (Under the same name, which a config
//! with a fixed `instance` gives, the replacement renews the dead one's unexpired leases
//! at its first round: no takeover to measure.)
//!
//! When an invariant breaks (or with `CHAOS_KEEP_LOGS=1`), every instance's log and
//! config is copied out of the temporary directory, and the ledger says where.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollhook::store::throwaway::Server;
use pollhook::store::{PgStore, Store};
use tokio_util::sync::CancellationToken;

use crate::proxy::{NetFault, Proxy};
use crate::scenarios::{start_mutator, stop, Rng, Setup, CONVERGE};
use crate::world::{Behaviour, Churn, Ledger, Receiver, Source};
use crate::Mode;
use pool::{Pool, Took, TAKEOVER_LIMIT};

mod pool;

/// `[store] lease`: the shortest allowed, so that a run is mostly takeovers.
const LEASE: Duration = Duration::from_secs(2);
/// Instances running at once.
const POOL: usize = 3;
const SOURCES: [&str; 3] = ["s1", "s2", "s3"];

/// One source and its two targets: `<source>-ok`, healthy, and `<source>-flaky`, behind
/// a proxy and answering with errors, slowly, or not at all, by turns.
struct Feed {
    name: &'static str,
    src: Source,
    ok: Receiver,
    flaky: Receiver,
    proxy: Proxy,
}

impl Feed {
    fn receivers(&self) -> [&Receiver; 2] {
        [&self.ok, &self.flaky]
    }
}

/// Switches each flaky target between healthy, 503, connection resets, answers slower
/// than its 1 s timeout and 429 with Retry-After, every 0.3-1.5 s, until `stop`.
async fn flake(feeds: Arc<Vec<Feed>>, mut rng: Rng, stop: CancellationToken) {
    loop {
        for f in feeds.iter() {
            let (behaviour, net) = match rng.below(10) {
                0..=4 => (Behaviour::default(), NetFault::Forward),
                5 | 6 => (
                    Behaviour {
                        status: 503,
                        ..Behaviour::default()
                    },
                    NetFault::Forward,
                ),
                7 => (Behaviour::default(), NetFault::Reset),
                8 => (
                    Behaviour {
                        delay: Duration::from_millis(1500),
                        ..Behaviour::default()
                    },
                    NetFault::Forward,
                ),
                _ => (
                    Behaviour {
                        status: 429,
                        retry_after: Some(1),
                        ..Behaviour::default()
                    },
                    NetFault::Forward,
                ),
            };
            f.flaky.set(behaviour);
            f.proxy.set(net);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))) => {}
        }
    }
    for f in feeds.iter() {
        f.flaky.set(Behaviour::default());
        f.proxy.set(NetFault::Forward);
    }
}

/// The shared throwaway server, or the reason there is none: a violation under
/// `POLLHOOK_REQUIRE_POSTGRES=1` (as `.ci/run` sets), else a loud skip.
fn postgres(ledger: &mut Ledger) -> Option<Server> {
    match Server::shared() {
        Ok(s) => Some(s),
        Err(e) if std::env::var("POLLHOOK_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            ledger.violation(format!(
                "the cluster scenario needs PostgreSQL, and POLLHOOK_REQUIRE_POSTGRES=1: {e}"
            ));
            None
        }
        Err(e) => {
            eprintln!("SKIPPED chaos cluster: it needs PostgreSQL: {e}");
            ledger.skipped = Some(format!("it needs PostgreSQL: {e}"));
            None
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Median and max of the takeover times in `took`.
fn spread(took: &[&Took]) -> String {
    let mut t: Vec<Duration> = took.iter().map(|t| t.took).collect();
    t.sort_unstable();
    match (t.get(t.len() / 2), t.last()) {
        (Some(median), Some(max)) => format!(
            "{} takeovers, median {}, max {}",
            t.len(),
            seconds(*median),
            seconds(*max)
        ),
        _ => "none".into(),
    }
}

pub async fn cluster(mode: Mode) -> Ledger {
    let mut ledger = Ledger::default();
    let Some(server) = postgres(&mut ledger) else {
        return ledger;
    };
    let mut rng = Rng::seeded();
    let kills = if mode == Mode::Long { 120 } else { 12 };
    let setup = Setup::new();
    let db = server.new_database("chaos_cluster");
    let store = match PgStore::open(&db, "the chaos database") {
        Ok(s) => Arc::new(s),
        Err(e) => {
            ledger.violation(format!("cannot open the database: {e}"));
            return ledger;
        }
    };
    let mut feeds = Vec::new();
    for name in SOURCES {
        let src = Source::start(setup.servers.clone(), 40).await;
        let ok = Receiver::start(&format!("{name}-ok"), &src, setup.servers.clone()).await;
        let flaky = Receiver::start(&format!("{name}-flaky"), &src, setup.servers.clone()).await;
        let proxy = Proxy::start(flaky.addr).await;
        feeds.push(Feed {
            name,
            src,
            ok,
            flaky,
            proxy,
        });
    }
    let feeds = Arc::new(feeds);
    let mutators: Vec<_> = feeds
        .iter()
        .map(|f| {
            start_mutator(
                &f.src,
                Churn {
                    tick: Duration::from_millis(20),
                    max_items: 100,
                    deletes: true,
                    update_all: false,
                },
                vec![f.ok.clone(), f.flaky.clone()],
            )
        })
        .collect();
    let stop_flakes = CancellationToken::new();
    let flaker = tokio::spawn(flake(feeds.clone(), rng.fork(), stop_flakes.clone()));
    let mut pool = Pool::new(
        setup.dir.path().to_path_buf(),
        db.clone(),
        store.clone(),
        feeds.clone(),
    );
    for _ in 0..POOL {
        let d = pool.start();
        pool.members.push(d);
    }
    let started = Instant::now();
    if !pool.quiet(LEASE * 5).await {
        pool.violations
            .push("the three instances did not share the work out within 5 leases".into());
    }
    let mut paused = String::new();
    let mut restarted = String::new();
    for k in 0..kills {
        if k == kills / 3 {
            paused = pool.pause().await;
        }
        if k == 2 * kills / 3 {
            restarted = pool.restart_database(&server).await;
        }
        // Random instants: now and then during a start-up or a takeover, mostly between.
        pool.watch(Duration::from_millis(50 + rng.below(2500)))
            .await;
        let victim = rng.below(POOL as u64) as usize;
        pool.kill(victim).await;
    }
    stop_flakes.cancel();
    let _ = flaker.await;
    for (stop_mutator, mutator) in mutators {
        stop_mutator.cancel();
        let _ = mutator.await;
    }
    if !pool.quiet(LEASE * 5).await {
        pool.violations.push(format!(
            "after the last kill, takeovers still pending: {:?}",
            pool.waiting
                .iter()
                .map(|t| (&t.victim, &t.work))
                .collect::<Vec<_>>()
        ));
    }
    let faults_took = started.elapsed();

    // Every receiver converges on its source, and the outboxes drain (1 s without a
    // request) before the instances stop.
    let mut lost = Vec::new();
    for f in feeds.iter() {
        for r in f.receivers() {
            lost.push(r.converge(CONVERGE).await);
        }
    }
    let receivers: Vec<&Receiver> = feeds.iter().flat_map(|f| f.receivers()).collect();
    let quiet_by = Instant::now() + CONVERGE;
    let mut last = (0, Instant::now());
    while Instant::now() < quiet_by {
        let n: u64 = receivers.iter().map(|r| r.requests()).sum();
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut slowest = Duration::ZERO;
    for d in &mut pool.members {
        slowest = slowest.max(stop(d, &mut ledger).await);
    }

    ledger.line(
        "instances",
        format!(
            "{POOL} at a time on one database, lease {}s; {} started (replacements under new names)",
            LEASE.as_secs(),
            pool.started
        ),
    );
    ledger.line(
        "kills",
        format!(
            "{kills} (kill -9 of a random instance at a random instant; {} held nothing yet)",
            pool.held_nothing
        ),
    );
    let kill_took: Vec<&Took> = pool.took.iter().filter(|t| t.what == "kill -9").collect();
    let clean: Vec<&Took> = kill_took
        .iter()
        .copied()
        .filter(|t| !t.overlapped)
        .collect();
    let overlapped: Vec<&Took> = kill_took.iter().copied().filter(|t| t.overlapped).collect();
    ledger.line("takeover after kill -9", spread(&kill_took));
    ledger.line(
        "  of which alone",
        format!(
            "{} (limit {}: a lease and a round)",
            spread(&clean),
            seconds(TAKEOVER_LIMIT)
        ),
    );
    let after_fault = overlapped.iter().map(|t| t.since_last_fault).max();
    ledger.line(
        "  overlapped by a fault",
        format!(
            "{} (the next kill came before it ended; at most {} after that kill)",
            spread(&overlapped),
            after_fault.map_or("-".into(), seconds)
        ),
    );
    ledger.line("SIGSTOP past the lease", paused);
    ledger.line("database restart", restarted);
    ledger.line("faults phase", format!("{:.1}s", faults_took.as_secs_f64()));
    let mut changes = (0, 0, 0);
    for f in feeds.iter() {
        let b = f.src.book.lock().unwrap();
        changes.0 += b.created;
        changes.1 += b.updated;
        changes.2 += b.deleted;
    }
    ledger.line(
        "source changes",
        format!(
            "created {}, updated {}, deleted {} (3 sources)",
            changes.0, changes.1, changes.2
        ),
    );
    for (r, lost) in receivers.iter().zip(&lost) {
        r.report(&mut ledger, lost);
    }
    let accepted: u64 = receivers.iter().map(|r| r.accepted()).sum();
    let duplicates: u64 = receivers.iter().map(|r| r.duplicates()).sum();
    let lost_items: usize = lost.iter().map(Vec::len).sum();
    let twice: u64 = receivers.iter().map(|r| r.committed_twice()).sum();
    let order: u64 = receivers.iter().map(|r| r.order_breaks()).sum();
    ledger.line(
        "all targets",
        format!(
            "accepted {accepted}, duplicates {duplicates} ({:.1}%), lost {lost_items}, order breaks {order}, changes committed twice {twice}",
            100.0 * duplicates as f64 / accepted.max(1) as f64
        ),
    );
    // One commit sends one event, under one id and one body, to both targets of its
    // source: a second id for a change, or a second body for an id, between them
    // would be a second commit.
    for f in feeds.iter() {
        cross_check(f, &mut ledger);
    }
    match (store.pending_counts(), store.dead(None, usize::MAX)) {
        (Ok(pending), Ok(dead)) => {
            let pending: u64 = pending.values().sum();
            ledger.line(
                "left in the store",
                format!("pending {pending}, dead {}", dead.len()),
            );
            if pending > 0 {
                ledger.violation(format!(
                    "{pending} deliveries still pending after convergence"
                ));
            }
            if !dead.is_empty() {
                ledger.violation(format!(
                    "{} dead deliveries, though every target retries for minutes",
                    dead.len()
                ));
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            ledger.violation(format!("cannot read what is left in the store: {e}"))
        }
    }
    ledger.line(
        "slowest SIGTERM",
        format!("{} (grace 5s)", seconds(slowest)),
    );
    for v in std::mem::take(&mut pool.violations) {
        ledger.violation(v);
    }
    if !ledger.violations.is_empty() || std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
        keep_logs(&pool, &mut ledger);
    }
    ledger
}

/// The two targets of `f` must have seen each change under the same id, and each id
/// with the same body.
fn cross_check(f: &Feed, ledger: &mut Ledger) {
    let (ok, flaky) = (f.ok.change_ids(), f.flaky.change_ids());
    let split: Vec<_> = ok
        .iter()
        .filter_map(|(change, ids)| {
            let other = flaky.get(change)?;
            (other != ids).then(|| (change.clone(), ids.clone(), other.clone()))
        })
        .take(5)
        .collect();
    if !split.is_empty() {
        ledger.violation(format!(
            "{}: changes under other event ids at its two targets (committed twice): {split:?}",
            f.name
        ));
    }
    let (ok, flaky) = (f.ok.bodies(), f.flaky.bodies());
    let two: BTreeMap<&String, (u64, u64)> = ok
        .iter()
        .filter_map(|(id, h)| Some((id, (*h, *flaky.get(id)?))))
        .filter(|(_, (a, b))| a != b)
        .take(5)
        .collect();
    if !two.is_empty() {
        ledger.violation(format!(
            "{}: event ids sent with other bodies to its two targets: {two:?}",
            f.name
        ));
    }
}

/// Copies the instances' logs and configs out of the temporary directory, which goes
/// when the scenario ends, and says where.
fn keep_logs(pool: &Pool, ledger: &mut Ledger) {
    let kept = std::env::temp_dir().join(format!("pollhook-chaos-cluster-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&kept);
    let mut n = 0;
    for entry in std::fs::read_dir(&pool.dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log" || e == "toml") {
            n += std::fs::copy(&path, kept.join(entry.file_name())).is_ok() as usize;
        }
    }
    ledger.line("logs kept", format!("{n} files in {}", kept.display()));
}
