//! Leases: which instance polls each source and sends each target's deliveries.
//!
//! The database is the only coordinator; there is no leader. Each instance runs
//! [`PgStore::tick`] every quarter lease (see `daemon/cluster.rs`): it renews its row in
//! `pollhook_instances` and its unexpired leases, counts the live instances, and claims
//! free or expired leases up to its share (`UPDATE … WHERE (kind, name) IN (SELECT …
//! FOR UPDATE SKIP LOCKED) RETURNING …`, the epoch incremented by every claim), or
//! reports the leases it holds beyond its share, which the daemon stops and hands back
//! at the next tick. Time is the database's (`now()`): the instances' clocks are never
//! compared.
//!
//! A lease is written to expire three quarters of a lease after its renewal, and
//! renewed every quarter: a holder survives two failed renewals, and another instance
//! takes a dead holder's work over within one lease of its last renewal (three quarters
//! for the lease to expire, at most a quarter until the next instance's tick).
//!
//! Fencing: the epochs an instance claimed are kept here, with the local instant until
//! which the instance may act on each (measured from before the renewal was sent, so
//! never later than the database's expiry). A poll's commit, and an acknowledgement,
//! rescheduling or burial of a delivery, take the lease row `FOR SHARE` in their
//! transaction and commit only if this instance still holds it at that epoch and it
//! has not expired; the share lock keeps any takeover waiting until they end. An
//! instance that wakes from a pause past its lease can write nothing stale: its epoch
//! is gone, or its lease expired. One frozen or cut off inside such a transaction does
//! not keep the lock past its lease either: the fence tells the server to end the
//! session once it sits idle in the transaction for longer than the lease has left.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_postgres::GenericClient;

use super::{Fail, PgStore};
use crate::store::{StoreError, Work};

/// The part of a lease a holder may use: it expires this fraction of `lease` after a
/// renewal, which comes every `lease / TICKS`.
pub const TICKS: u32 = 4;

/// This instance, as a member of the cluster.
pub(super) struct Member {
    pub(super) name: String,
    lease: Duration,
    /// The leases held: (kind, name) → (epoch, instant until which this instance may
    /// act on it).
    held: Mutex<HashMap<(Work, String), (i64, Instant)>>,
}

impl Member {
    pub(super) fn new(name: String, lease: Duration) -> Member {
        Member {
            name,
            lease,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// How long after a renewal a lease expires.
    fn ttl(&self) -> Duration {
        self.lease * (TICKS - 1) / TICKS
    }

    /// The epoch of `name`'s lease, if held and not past its local deadline.
    pub(super) fn epoch(&self, kind: Work, name: &str) -> Option<i64> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (epoch, until) = held.get(&(kind, name.to_string()))?;
        (Instant::now() < *until).then_some(*epoch)
    }
}

/// What one [`PgStore::tick`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Held {
    /// The sources and targets this instance holds now.
    pub sources: BTreeSet<String>,
    pub targets: BTreeSet<String>,
    /// Of those, the ones beyond this instance's share: the daemon stops them and
    /// passes them to the next tick, which hands them back.
    pub excess_sources: BTreeSet<String>,
    pub excess_targets: BTreeSet<String>,
    /// Instances alive, this one included.
    pub instances: usize,
}

impl Held {
    /// The sources to run here: those held, but for those being handed back.
    pub fn running_sources(&self) -> BTreeSet<String> {
        self.sources
            .difference(&self.excess_sources)
            .cloned()
            .collect()
    }

    /// The targets to run here: those held, but for those being handed back.
    pub fn running_targets(&self) -> BTreeSet<String> {
        self.targets
            .difference(&self.excess_targets)
            .cloned()
            .collect()
    }
}

/// The cluster as the database records it, and which instance asks.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterView {
    /// The instance whose store this is (None: a store opened outside the cluster, such
    /// as an operator command's).
    pub instance: Option<String>,
    pub instances: Vec<Instance>,
    pub leases: Vec<Lease>,
}

impl ClusterView {
    /// The live holder of `kind`'s lease on `name`.
    pub fn holder(&self, kind: &str, name: &str) -> Option<&str> {
        self.leases
            .iter()
            .find(|l| l.kind == kind && l.name == name && l.expires_in_secs > 0.0)
            .and_then(|l| l.holder.as_deref())
    }
}

/// One instance as the cluster sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    pub name: String,
    /// Whether its row is unexpired.
    pub alive: bool,
    /// Seconds since it last renewed.
    pub renewed_secs_ago: f64,
}

/// One lease as the cluster sees it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    /// `source` or `target`.
    pub kind: String,
    pub name: String,
    /// The instance holding it (None: free, or expired and not yet taken over).
    pub holder: Option<String>,
    pub epoch: i64,
    /// Seconds until it expires (negative: expired).
    pub expires_in_secs: f64,
}

fn kind_text(kind: Work) -> &'static str {
    match kind {
        Work::Source => "source",
        Work::Target => "target",
    }
}

/// Fails unless `me` holds `name`'s lease at `epoch`, unexpired; takes the row FOR
/// SHARE, so no takeover commits before this transaction ends.
pub(super) async fn fence(
    tx: &impl GenericClient,
    member: Option<&Member>,
    kind: Work,
    name: &str,
) -> Result<(), Fail> {
    let Some(m) = member else {
        // A store opened outside the cluster (operator commands, tests) is not fenced.
        return Ok(());
    };
    let not_held = || {
        Fail::Store(StoreError::NotHeld {
            kind: kind_text(kind),
            name: name.to_string(),
            instance: m.name.clone(),
        })
    };
    let epoch = m.epoch(kind, name).ok_or_else(not_held)?;
    // The row stays locked until this transaction ends, and a takeover skips locked
    // rows: an instance frozen or cut off between two statements of this transaction
    // would keep its work from every other instance for as long as the server keeps
    // its session (after a lost network, until TCP keepalive gives up: hours). So the
    // server is told to end the session if it sits idle in this transaction for longer
    // than the lease has left: the lock then outlives the lease by no more than the
    // transaction's own working time. `set_config(…, true)` is SET LOCAL: for this
    // transaction only, which works behind transaction pooling too.
    let row = tx
        .query_opt(
            "SELECT set_config('idle_in_transaction_session_timeout', greatest(1, ceil(extract(epoch FROM expires_at - now()) * 1000))::int8::text, true) \
             FROM pollhook_leases WHERE kind = $1 AND name = $2 AND holder = $3 AND epoch = $4 AND expires_at > now() FOR SHARE",
            &[&kind_text(kind), &name, &m.name, &epoch],
        )
        .await?;
    row.map(|_| ()).ok_or_else(not_held)
}

impl PgStore {
    /// Makes this store a member of the cluster as instance `name`, holding its work
    /// under leases of `lease`: from now on its commits and delivery updates are fenced.
    pub fn join(mut self, name: String, lease: Duration) -> PgStore {
        self.member = Some(std::sync::Arc::new(Member::new(name, lease)));
        self
    }

    /// This instance's name in the cluster, if it joined one.
    pub fn instance(&self) -> Option<&str> {
        self.member.as_deref().map(|m| m.name.as_str())
    }

    /// One round of the lease protocol for the configured `sources` and `targets`:
    /// hands back `release`, renews, claims up to this instance's share.
    pub fn tick(
        &self,
        sources: &[String],
        targets: &[String],
        release: &Held,
    ) -> Result<Held, StoreError> {
        let Some(member) = self.member.clone() else {
            return Ok(Held {
                sources: sources.iter().cloned().collect(),
                targets: targets.iter().cloned().collect(),
                instances: 1,
                ..Held::default()
            });
        };
        let (sources, targets) = (sources.to_vec(), targets.to_vec());
        let release = release.clone();
        let me = member.name.clone();
        self.run(
            || format!("renewing the leases of instance {me}"),
            |pool| async move {
                let started = Instant::now();
                let c = pool.conn().await?;
                let held = round(&*c, &member, &sources, &targets, &release).await?;
                c.done();
                let until = started + member.ttl();
                let mut map = member.held.lock().unwrap_or_else(|e| e.into_inner());
                map.clear();
                for (kind, names) in [(Work::Source, &held.0), (Work::Target, &held.1)] {
                    for (name, epoch) in names {
                        map.insert((kind, name.clone()), (*epoch, until));
                    }
                }
                Ok(held.2)
            },
        )
    }

    /// Hands back every lease and removes this instance's row: a clean stop, after
    /// which the others take the work over at their next tick instead of a lease later.
    pub fn leave(&self) -> Result<(), StoreError> {
        let Some(member) = self.member.clone() else {
            return Ok(());
        };
        let me = member.name.clone();
        self.run(
            || format!("handing back the leases of instance {me}"),
            |pool| async move {
                let c = pool.conn().await?;
                c.execute(
                    "UPDATE pollhook_leases SET holder = NULL, expires_at = '-infinity' WHERE holder = $1",
                    &[&member.name],
                )
                .await?;
                c.execute("DELETE FROM pollhook_instances WHERE name = $1", &[&member.name])
                    .await?;
                c.done();
                member.held.lock().unwrap_or_else(|e| e.into_inner()).clear();
                Ok(())
            },
        )
    }

    /// The cluster's instances and leases, for status.
    pub fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        let me = self.instance().map(str::to_string);
        self.run(
            || "reading the cluster's instances and leases".into(),
            |pool| async move {
                let c = pool.conn().await?;
                let instances = c
                    .query(
                        "SELECT name, expires_at > now(), extract(epoch FROM now() - renewed_at)::float8 FROM pollhook_instances ORDER BY name",
                        &[],
                    )
                    .await?;
                let leases = c
                    .query(
                        "SELECT kind, name, holder, epoch, extract(epoch FROM expires_at - now())::float8 FROM pollhook_leases WHERE expires_at > '-infinity' OR holder IS NOT NULL ORDER BY kind, name",
                        &[],
                    )
                    .await?;
                c.done();
                let instances = instances
                    .iter()
                    .map(|r| Instance {
                        name: r.get(0),
                        alive: r.get(1),
                        renewed_secs_ago: r.get(2),
                    })
                    .collect();
                let leases = leases
                    .iter()
                    .map(|r| Lease {
                        kind: r.get(0),
                        name: r.get(1),
                        holder: r.get(2),
                        epoch: r.get(3),
                        expires_in_secs: r.get(4),
                    })
                    .collect();
                Ok(ClusterView {
                    instance: me,
                    instances,
                    leases,
                })
            },
        )
    }
}

type Epochs = Vec<(String, i64)>;

/// The statements of one tick; returns the held sources and targets with their epochs.
async fn round(
    c: &impl GenericClient,
    m: &Member,
    sources: &[String],
    targets: &[String],
    release: &Held,
) -> Result<(Epochs, Epochs, Held), Fail> {
    let ttl = m.ttl().as_millis() as i64;
    c.execute(
        "INSERT INTO pollhook_instances (name, expires_at) VALUES ($1, now() + $2::int8 * interval '1 millisecond') \
         ON CONFLICT (name) DO UPDATE SET renewed_at = now(), expires_at = excluded.expires_at",
        &[&m.name, &ttl],
    )
    .await?;
    let live: i64 = c
        .query_one(
            "SELECT count(*) FROM pollhook_instances WHERE expires_at > now()",
            &[],
        )
        .await?
        .get(0);
    let live = live.max(1) as usize;
    let mut held = Held {
        instances: live,
        ..Held::default()
    };
    let mut epochs = (Vec::new(), Vec::new());
    for (kind, names, handed_back) in [
        (Work::Source, sources, &release.excess_sources),
        (Work::Target, targets, &release.excess_targets),
    ] {
        let k = kind_text(kind);
        c.execute(
            "INSERT INTO pollhook_leases (kind, name) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&k, &names],
        )
        .await?;
        let back: Vec<&String> = handed_back.iter().collect();
        if !back.is_empty() {
            c.execute(
                "UPDATE pollhook_leases SET holder = NULL, expires_at = '-infinity' WHERE kind = $1 AND holder = $2 AND name = ANY($3)",
                &[&k, &m.name, &back],
            )
            .await?;
        }
        // Renewed only while unexpired: one that expired (this instance was paused or
        // cut off) may be another's by now, and is claimed again below, at a new epoch.
        let mut mine: Epochs = c
            .query(
                "UPDATE pollhook_leases SET expires_at = now() + $3::int8 * interval '1 millisecond' WHERE kind = $1 AND holder = $2 AND expires_at > now() AND name = ANY($4) RETURNING name, epoch",
                &[&k, &m.name, &ttl, &names],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let share = names.len().div_ceil(live);
        if mine.len() < share {
            let claimed = c
                .query(
                    "UPDATE pollhook_leases SET holder = $2, expires_at = now() + $3::int8 * interval '1 millisecond', epoch = epoch + 1, claimed_at = now() \
                     WHERE (kind, name) IN (SELECT kind, name FROM pollhook_leases \
                        WHERE kind = $1 AND name = ANY($4) AND (holder IS NULL OR expires_at <= now()) \
                        ORDER BY name LIMIT $5 FOR UPDATE SKIP LOCKED) \
                     RETURNING name, epoch",
                    &[&k, &m.name, &ttl, &names, &((share - mine.len()) as i64)],
                )
                .await?;
            mine.extend(claimed.iter().map(|r| (r.get(0), r.get(1))));
        }
        mine.sort();
        let all: BTreeSet<String> = mine.iter().map(|(n, _)| n.clone()).collect();
        // The last names beyond the share go back (after the daemon stopped them).
        let excess: BTreeSet<String> = all.iter().skip(share).cloned().collect();
        match kind {
            Work::Source => {
                held.sources = all;
                held.excess_sources = excess;
                epochs.0 = mine;
            }
            Work::Target => {
                held.targets = all;
                held.excess_targets = excess;
                epochs.1 = mine;
            }
        }
    }
    Ok((epochs.0, epochs.1, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::throwaway::Server;

    /// An instance frozen (SIGSTOP, a VM pause) or cut off in the middle of a fenced
    /// write leaves its transaction open, and the lease row locked FOR SHARE, which a
    /// takeover skips: its work must still be taken over once the lease is out.
    #[test]
    fn a_write_stalled_inside_its_transaction_does_not_keep_the_lease_from_a_takeover() {
        let Some(pg) = Server::for_test("a_write_stalled_inside_its_transaction…") else {
            return;
        };
        let url = pg.new_database("stall");
        let lease = Duration::from_secs(2);
        let open = |name: &str| {
            PgStore::open(&url, "test")
                .unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)))
                .join(name.into(), lease)
        };
        let (a, b) = (open("a"), open("b"));
        let targets = ["t".to_string()];
        let none = Held::default();
        assert!(a.tick(&[], &targets, &none).unwrap().targets.contains("t"));
        let member = a.member.clone().unwrap();
        let started = Instant::now();
        // a's write passes the fence, then a stalls for two leases before its next
        // statement.
        let stalled = std::thread::spawn(move || {
            a.run(
                || "a write that stalls".into(),
                |pool| async move {
                    let mut c = pool.conn().await?;
                    let tx = c.transaction().await?;
                    fence(&tx, Some(&member), Work::Target, "t").await?;
                    tokio::time::sleep(lease * 2).await;
                    tx.commit().await?;
                    Ok(())
                },
            )
        });
        // b claims t once a's lease is out, at its next round: within a lease and a
        // round of a's renewal.
        let took = loop {
            if b.tick(&[], &targets, &none).unwrap().targets.contains("t") {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < lease * 2,
                "b could not take t over while a's write stalled"
            );
            std::thread::sleep(lease / TICKS);
        };
        assert!(took <= lease + lease / TICKS, "{took:?}");
        // The server ended a's transaction: its write fails, and wrote nothing.
        assert!(stalled.join().unwrap().is_err());
    }
}
