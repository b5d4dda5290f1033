//! The instances of the cluster scenario, and what the harness sees of their leases:
//! starting one (under a new name), kill -9, SIGSTOP and SIGCONT, a database restart, and
//! the takeovers each fault causes, timed from the leases table (`PgStore::cluster`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollhook::store::throwaway::Server;
use pollhook::store::{Instance, Lease, PgStore};

use super::{Feed, LEASE, SOURCES};
use crate::daemon::Daemon;
use crate::scenarios::retry_schedule;
use crate::world::SECRET;

/// One lease round: every quarter lease.
const ROUND: Duration = Duration::from_millis(500);
/// How often the harness reads the leases; a takeover is seen at most this (and one
/// read) late.
const WATCH: Duration = Duration::from_millis(50);
/// The protocol's promise: a dead instance's work is claimed within one lease of its
/// death (its leases expire at most ¾ lease after its last renewal, and another
/// instance's round comes within ¼ lease); a round more for an instance just starting,
/// and the harness's lag in seeing it.
pub const TAKEOVER_LIMIT: Duration =
    Duration::from_millis((LEASE.as_millis() + ROUND.as_millis() + 2 * WATCH.as_millis()) as u64);

/// A takeover being waited for: everything `victim` held, to be held by another
/// running instance.
pub struct Takeover {
    what: &'static str,
    pub victim: String,
    pub work: BTreeSet<(String, String)>,
    at: Instant,
    /// The last fault that came before it ended, if one did: its time is then not one
    /// takeover's alone, but it must still end within the limit of that fault.
    last_fault: Option<Instant>,
}

/// A takeover that ended.
pub struct Took {
    pub what: &'static str,
    pub victim: String,
    pub took: Duration,
    pub overlapped: bool,
    /// From the last fault before it ended (its own, if it was alone).
    pub since_last_fault: Duration,
}

/// The instances, the database, and what the harness saw of their leases.
pub struct Pool {
    pub dir: PathBuf,
    db: String,
    store: Arc<PgStore>,
    feeds: Arc<Vec<Feed>>,
    pub members: Vec<Daemon>,
    /// Instances started so far (the next one is `n<started + 1>`).
    pub started: u32,
    /// The instance frozen by SIGSTOP, if one is.
    paused: Option<String>,
    /// Takeovers not yet seen complete.
    pub waiting: Vec<Takeover>,
    pub took: Vec<Took>,
    /// Kills of instances that held nothing yet (killed during start-up).
    pub held_nothing: u32,
    pub violations: Vec<String>,
}

impl Pool {
    /// No instance yet, on database `db` (read through `store`), with `feeds`.
    pub fn new(dir: PathBuf, db: String, store: Arc<PgStore>, feeds: Arc<Vec<Feed>>) -> Pool {
        Pool {
            dir,
            db,
            store,
            feeds,
            members: Vec::new(),
            started: 0,
            paused: None,
            waiting: Vec::new(),
            took: Vec::new(),
            held_nothing: 0,
            violations: Vec::new(),
        }
    }

    /// The config of instance `name`: every source polled every 100 ms, to its two
    /// targets, each retrying for minutes.
    fn config(&self, name: &str) -> PathBuf {
        let retry = retry_schedule();
        let mut text = format!(
            "state_dir = {:?}\nshutdown_grace = \"5s\"\n\n[admin]\nlisten = \"\"\n\n[store]\npostgres = {:?}\nlease = \"{}s\"\ninstance = \"{name}\"\n",
            self.dir.join(format!("state-{name}")).display().to_string(),
            self.db,
            LEASE.as_secs(),
        );
        for f in self.feeds.iter() {
            let n = f.name;
            text.push_str(&format!(
                "\n[sources.{n}]\nurl = \"{}\"\ninterval = \"100ms\"\nmax_backoff = \"400ms\"\nitems = \"/items\"\nbaseline = false\ntargets = [\"{n}-ok\", \"{n}-flaky\"]\n",
                f.src.api.url()
            ));
            text.push_str(&format!(
                "\n[targets.{n}-ok]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = {retry:?}\n",
                f.ok.url()
            ));
            text.push_str(&format!(
                "\n[targets.{n}-flaky]\nurl = \"http://{}/hook\"\nsecret = \"{SECRET}\"\nretry = {retry:?}\ntimeout = \"1s\"\n",
                f.proxy.addr
            ));
        }
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts the next instance.
    pub fn start(&mut self) -> Daemon {
        self.started += 1;
        let name = format!("n{}", self.started);
        let config = self.config(&name);
        Daemon::start_instance(&config, &self.dir.join(format!("{name}.log")), &name)
    }

    fn name(&self, i: usize) -> String {
        self.members[i].instance.clone().unwrap_or_default()
    }

    /// The instances running (not frozen).
    fn live(&self) -> BTreeSet<String> {
        (0..self.members.len())
            .map(|i| self.name(i))
            .filter(|n| self.paused.as_ref() != Some(n))
            .collect()
    }

    /// The cluster as the database has it; `None` while it does not answer.
    async fn read(&self) -> Option<(Vec<Instance>, Vec<Lease>)> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.cluster_view())
            .await
            .ok()?
            .ok()
            .map(|c| (c.instances, c.leases))
    }

    /// Every source and target, by who holds it unexpired.
    fn holders(leases: &[Lease]) -> HashMap<(String, String), String> {
        leases
            .iter()
            .filter(|l| l.expires_in_secs > 0.0)
            .filter_map(|l| Some(((l.kind.clone(), l.name.clone()), l.holder.clone()?)))
            .collect()
    }

    /// What `instance` holds (expired or not: it held it when it stopped renewing).
    fn work_of(leases: &[Lease], instance: &str) -> BTreeSet<(String, String)> {
        leases
            .iter()
            .filter(|l| l.holder.as_deref() == Some(instance))
            .map(|l| (l.kind.clone(), l.name.clone()))
            .collect()
    }

    /// Whether every source and target is held, unexpired, by a running instance.
    fn all_held(&self, leases: &[Lease]) -> bool {
        let live = self.live();
        let holders = Pool::holders(leases);
        holders.len() == SOURCES.len() * 3 && holders.values().all(|h| live.contains(h))
    }

    /// Ends the takeovers that `leases` show done.
    fn settle_takeovers(&mut self, leases: &[Lease]) {
        let live = self.live();
        let holders = Pool::holders(leases);
        let now = Instant::now();
        let (done, waiting): (Vec<Takeover>, Vec<Takeover>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|t| {
                t.work.iter().all(|w| {
                    holders
                        .get(w)
                        .is_some_and(|h| *h != t.victim && live.contains(h))
                })
            });
        self.waiting = waiting;
        for t in done {
            let took = now - t.at;
            let since_last_fault = now - t.last_fault.unwrap_or(t.at);
            if since_last_fault > TAKEOVER_LIMIT {
                let logs = self.logs_of(&[&t.victim]);
                self.violations.push(format!(
                    "{} of {}: its work ({:?}) was held again only after {took:?} ({since_last_fault:?} after the last fault), more than a lease and a round; the leases then: {leases:?}\n{logs}",
                    t.what, t.victim, t.work
                ));
            }
            self.took.push(Took {
                what: t.what,
                victim: t.victim,
                took,
                overlapped: t.last_fault.is_some(),
                since_last_fault,
            });
        }
    }

    /// Watches the leases for `d`, ending takeovers as they complete, and replaces an
    /// instance that stopped on its own (a violation: nothing here stops one but the
    /// harness).
    pub async fn watch(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            if let Some((_, leases)) = self.read().await {
                self.settle_takeovers(&leases);
            }
            for i in 0..self.members.len() {
                if !self.members[i].alive() {
                    let name = self.name(i);
                    let logs = self.logs_of(&[&name]);
                    self.violations
                        .push(format!("instance {name} exited on its own\n{logs}"));
                    self.members[i] = self.start();
                }
            }
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep(WATCH.min(until - Instant::now())).await;
        }
    }

    /// Waits (at most `within`) until no takeover is pending and every source and target
    /// is held by a running instance: a quiet cluster, before a fault measured alone.
    pub async fn quiet(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while Instant::now() < until {
            self.watch(WATCH).await;
            if let Some((_, leases)) = self.read().await {
                if self.waiting.is_empty() && self.all_held(&leases) {
                    return true;
                }
            }
        }
        false
    }

    /// The faults to come interrupt the takeovers still pending.
    fn overlap(&mut self) {
        let now = Instant::now();
        for t in &mut self.waiting {
            t.last_fault = Some(now);
        }
    }

    /// kill -9 of member `i`, and a replacement started at once.
    pub async fn kill(&mut self, i: usize) {
        let victim = self.name(i);
        let work = match self.read().await {
            Some((_, leases)) => Pool::work_of(&leases, &victim),
            None => BTreeSet::new(),
        };
        self.overlap();
        self.members[i].kill9();
        let at = Instant::now();
        self.members[i] = self.start();
        if work.is_empty() {
            self.held_nothing += 1;
        } else {
            self.waiting.push(Takeover {
                what: "kill -9",
                victim,
                work,
                at,
                last_fault: None,
            });
        }
    }

    /// SIGSTOP of the member holding the most for two leases, then SIGCONT: its work must
    /// be taken over while it is frozen, and once awake it must write nothing stale and
    /// rejoin. Returns the ledger's line.
    pub async fn pause(&mut self) -> String {
        if !self.quiet(LEASE * 5).await {
            self.violations
                .push("the cluster did not settle before the pause".into());
        }
        let Some((_, leases)) = self.read().await else {
            self.violations
                .push("the database did not answer before the pause".into());
            return "not done: no database".into();
        };
        let i = (0..self.members.len())
            .max_by_key(|&i| Pool::work_of(&leases, &self.name(i)).len())
            .unwrap_or(0);
        let victim = self.name(i);
        let work = Pool::work_of(&leases, &victim);
        self.members[i].pause();
        let at = Instant::now();
        self.paused = Some(victim.clone());
        self.waiting.push(Takeover {
            what: "SIGSTOP",
            victim: victim.clone(),
            work: work.clone(),
            at,
            last_fault: None,
        });
        self.watch(LEASE * 2).await;
        let frozen = at.elapsed();
        if self.waiting.iter().any(|t| t.victim == victim) {
            let logs = self.logs_of(&[&victim]);
            self.violations.push(format!(
                "{victim} frozen for {frozen:?}: its work ({work:?}) was not taken over meanwhile\n{logs}"
            ));
            self.waiting.retain(|t| t.victim != victim);
        }
        let took = self
            .took
            .iter()
            .rev()
            .find(|t| t.victim == victim)
            .map_or("-".into(), |t| format!("{:.2}s", t.took.as_secs_f64()));
        let refused_before = refused(&self.members[i].log);
        self.members[i].resume();
        self.paused = None;
        let resumed = Instant::now();
        // Awake: it renews its row and gets its share again, from the others' excess.
        let mut rejoined = None;
        while resumed.elapsed() < LEASE * 10 {
            self.watch(WATCH).await;
            if let Some((instances, leases)) = self.read().await {
                let renewed = instances.iter().any(|m| {
                    m.name == victim && m.renewed_secs_ago < resumed.elapsed().as_secs_f64()
                });
                if renewed && !Pool::work_of(&leases, &victim).is_empty() && self.all_held(&leases)
                {
                    rejoined = Some(resumed.elapsed());
                    break;
                }
            }
        }
        let refused = refused(&self.members[i].log) - refused_before;
        match rejoined {
            Some(r) => format!(
                "{victim} frozen {:.1}s holding {} leases: taken over after {took}; awake, {refused} stale writes refused (NotHeld), holding work again after {:.2}s",
                frozen.as_secs_f64(),
                work.len(),
                r.as_secs_f64()
            ),
            None => {
                let logs = self.logs_of(&[&victim]);
                self.violations.push(format!(
                    "{victim} did not rejoin within {:?} of SIGCONT\n{logs}",
                    LEASE * 10
                ));
                format!("{victim} frozen {:.1}s: did not rejoin", frozen.as_secs_f64())
            }
        }
    }

    /// Restarts the database (`pg_ctl -m immediate stop`, then it starts again): every
    /// instance must renew again and every source and target must be held again.
    pub async fn restart_database(&mut self, server: &Server) -> String {
        if !self.quiet(LEASE * 5).await {
            self.violations
                .push("the cluster did not settle before the database restart".into());
        }
        self.overlap();
        let at = Instant::now();
        let s = server.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || s.restart()).await {
            self.violations
                .push(format!("the database did not restart: {e}"));
            return "failed".into();
        }
        let down = at.elapsed();
        let back = Instant::now();
        let mut recovered = None;
        while back.elapsed() < Duration::from_secs(30) {
            self.watch(WATCH).await;
            if let Some((instances, leases)) = self.read().await {
                let live = self.live();
                let renewing = live.iter().all(|n| {
                    instances
                        .iter()
                        .any(|m| m.name == *n && m.renewed_secs_ago < back.elapsed().as_secs_f64())
                });
                if renewing && self.all_held(&leases) {
                    recovered = Some(at.elapsed());
                    break;
                }
            }
        }
        match recovered {
            Some(r) => format!(
                "down and back in {:.1}s (pg_ctl -m immediate, crash recovery); every instance renewing and all work held again {:.2}s after the stop",
                down.as_secs_f64(),
                r.as_secs_f64()
            ),
            None => {
                let names: Vec<String> = self.live().into_iter().collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let logs = self.logs_of(&names);
                self.violations.push(format!(
                    "30 s after the database restart, not every instance renews or not all work is held: {:?}\n{logs}",
                    self.read().await
                ));
                "did not recover".into()
            }
        }
    }

    /// The last lines of the logs of `names`, for a violation.
    fn logs_of(&self, names: &[&str]) -> String {
        names
            .iter()
            .map(|n| {
                let text =
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- log of {n} (last lines)\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Writes the store refused because the instance no longer held the lease, in `log`.
fn refused(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("no longer holds the lease")
        .count()
}
