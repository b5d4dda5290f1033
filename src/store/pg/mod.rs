//! The PostgreSQL store: the [`Store`] trait over tables (`schema.rs`), for several
//! instances sharing one database.
//!
//! Each operation is one transaction, run on the store's own runtime under a time
//! limit (`conn.rs`). A poll's commit is one transaction too, however many chunks the
//! poll commits (`commit.rs`): its items, its state and its deliveries (DESIGN invariant
//! 1), with the source's row locked and the generation it read checked, and the
//! deliveries' sequence numbers drawn last, from one row whose lock it holds until it
//! commits. So sequence order is commit order, and a target worker that loads
//! "everything above the last sequence I have" never misses a delivery that commits
//! later under a lower number; and nothing of a poll that never made its last commit
//! is delivered, with no recovery step after a crash.

mod commit;
mod conn;
mod import;
mod lease;
mod schema;
#[cfg(test)]
mod tests_tls;
pub mod throwaway;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};

use super::sled_store::REPLAY_BATCH;
use super::{
    Delivery, DeliveryStatus, PollCommit, SourceState, Store, StoreError, TargetStats, Work,
};
use crate::config::{PostgresConfig, SslMode};
use crate::diff::Seen;
use crate::extract::Collection;
use crate::health::HealthRecord;
use commit::OpenPolls;
use conn::{Pool, Runner};
pub use import::{ImportReport, ImportedSource, ImportedTarget};
use lease::{fence, Member};
pub use lease::{ClusterView, Held, Instance, Lease, TICKS};
use tls::Tls;

/// How long one store operation may take, connecting included, before it fails (and
/// is retried by its caller). A commit of 100,000 events takes a few seconds.
const OPERATION_LIMIT: Duration = Duration::from_secs(60);

/// Why an operation failed, before the store names the database and the operation.
pub(super) enum Fail {
    Pg(tokio_postgres::Error),
    Store(StoreError),
    Newer { found: usize, known: usize },
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

/// State in a PostgreSQL database.
pub struct PgStore {
    runner: Runner,
    /// This instance in the cluster, once it joined (see [`PgStore::join`]).
    member: Option<Arc<Member>>,
    /// Polls between their chunks, each inside its transaction (`commit.rs`).
    open: Arc<OpenPolls>,
}

const DELIVERY_COLUMNS: &str =
    "target, seq, event_id, event_type, source, item_id, attempts, next_at_ms, created_ms, last_error, body";

impl PgStore {
    /// Connects to the database at `url` (a `postgres://` URL) and brings its tables to
    /// this release's schema. `shown` names the database in messages (no password).
    /// The URL's sslmode is one of tokio-postgres's three (disable, prefer, require),
    /// none of which checks the server's certificate; [`PgStore::connect`] has all five.
    pub fn open(url: &str, shown: &str) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|error| StoreError::Postgres {
            db: shown.to_string(),
            doing: "reading its URL".into(),
            error,
        })?;
        let sslmode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        let tls = Tls::new(sslmode, None).map_err(|reason| StoreError::PostgresConfig {
            db: shown.to_string(),
            reason,
        })?;
        Self::with_config(config, shown, tls)
    }

    /// Connects to the database of `[store]`, with TLS as its sslmode and `ca_file` say
    /// (`tls.rs`), and brings its tables to this release's schema.
    pub fn connect(pg: &PostgresConfig) -> Result<PgStore, StoreError> {
        // tokio-postgres reads only disable, prefer and require from the URL (and refuses
        // the others): the mode is taken from the config, which knows every libpq mode.
        let mut url = url::Url::parse(&pg.url).map_err(|e| StoreError::PostgresConfig {
            db: pg.display.clone(),
            reason: e.to_string(),
        })?;
        let query: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "sslmode")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.query_pairs_mut().clear().extend_pairs(query);
        if url.query() == Some("") {
            url.set_query(None);
        }
        let config: tokio_postgres::Config =
            url.as_str().parse().map_err(|error| StoreError::Postgres {
                db: pg.display.clone(),
                doing: "reading its URL".into(),
                error,
            })?;
        let tls =
            Tls::new(pg.sslmode, pg.ca.as_ref()).map_err(|reason| StoreError::PostgresConfig {
                db: pg.display.clone(),
                reason,
            })?;
        Self::with_config(config, &pg.display, tls)
    }

    fn with_config(
        mut config: tokio_postgres::Config,
        shown: &str,
        tls: Tls,
    ) -> Result<PgStore, StoreError> {
        config
            .application_name("pollhook")
            .connect_timeout(Duration::from_secs(10))
            .keepalives_idle(Duration::from_secs(30))
            .ssl_mode(tls.pg_mode());
        let pool = Pool::new(config, shown.to_string(), tls);
        let runner = Runner::new(pool, OPERATION_LIMIT).map_err(|error| StoreError::OpenIo {
            action: "start the runtime for",
            path: shown.to_string(),
            error,
        })?;
        let store = PgStore {
            runner,
            member: None,
            open: Arc::default(),
        };
        store.runner.run(
            || "creating or upgrading its tables".into(),
            |pool| async move {
                let mut c = pool.conn().await?;
                schema::migrate(&mut c).await?;
                c.done();
                Ok(())
            },
        )?;
        Ok(store)
    }

    /// The outbox's next sequence number: it moves with every commit that queued a
    /// delivery, of any instance, so a daemon of a cluster looks whether it moved before
    /// it has its workers read (one round trip for all of them, every 200 ms).
    pub fn next_seq(&self) -> Result<i64, StoreError> {
        self.run(
            || "reading the outbox's next sequence number".into(),
            |pool| async move {
                let c = pool.conn().await?;
                let row = c
                    .query_typed_one(
                        "SELECT value FROM pollhook_meta WHERE key = 'next_seq'",
                        &[],
                    )
                    .await?;
                c.done();
                Ok(row.get(0))
            },
        )
    }

    fn run<T, Fut>(
        &self,
        doing: impl FnOnce() -> String,
        op: impl FnOnce(Arc<Pool>) -> Fut,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, Fail>> + Send + 'static,
    {
        self.runner.run(doing, op)
    }
}

fn delivery(row: &Row) -> Delivery {
    Delivery {
        target: row.get(0),
        seq: row.get::<_, i64>(1) as u64,
        event_id: row.get(2),
        event_type: row.get(3),
        source: row.get(4),
        item_id: row.get(5),
        attempts: row.get::<_, i32>(6) as u32,
        next_at_ms: row.get(7),
        created_ms: row.get(8),
        last_error: row.get(9),
        body: row.get(10),
    }
}

fn state(row: &Row, source: &str) -> Result<SourceState, StoreError> {
    let collection: Option<String> = row.get("collection");
    let collection = collection
        .map(|c| {
            serde_json::from_str::<Collection>(&c).map_err(|e| StoreError::Corrupt {
                key: format!("pollhook_sources/{source}"),
                reason: format!("collection {c:?}: {e}"),
            })
        })
        .transpose()?;
    Ok(SourceState {
        generation: row.get::<_, i64>("generation") as u64,
        initialized: row.get("initialized"),
        items: row.get::<_, i64>("items") as u64,
        buckets: 0,
        collection,
        staged: 0,
    })
}

pub(super) async fn read_state(
    c: &impl GenericClient,
    source: &str,
    lock: bool,
) -> Result<SourceState, Fail> {
    let sql = if lock {
        "SELECT generation, initialized, items, collection FROM pollhook_sources WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT generation, initialized, items, collection FROM pollhook_sources WHERE name = $1"
    };
    match c.query_opt(sql, &[&source]).await? {
        Some(row) => Ok(state(&row, source)?),
        None => Ok(SourceState::default()),
    }
}

/// Draws `n` consecutive sequence numbers; the row stays locked until the transaction
/// ends, so no other commit draws (and commits) numbers in between.
pub(super) async fn draw_seqs(c: &impl GenericClient, n: usize) -> Result<i64, Fail> {
    let row = c
        .query_one(
            "UPDATE pollhook_meta SET value = value + $1 WHERE key = 'next_seq' RETURNING value - $1",
            &[&(n as i64)],
        )
        .await?;
    Ok(row.get(0))
}

/// The columns of new deliveries, one entry per delivery.
#[derive(Default)]
pub(super) struct NewDeliveries {
    target: Vec<String>,
    seq: Vec<i64>,
    event_id: Vec<String>,
    event_type: Vec<String>,
    source: Vec<String>,
    item_id: Vec<String>,
    attempts: Vec<i32>,
    next_at_ms: Vec<i64>,
    created_ms: Vec<i64>,
    last_error: Vec<Option<String>>,
    body: Vec<Vec<u8>>,
}

impl NewDeliveries {
    /// A delivery per event and target, the events numbered from `first` in order (the
    /// caller adds the base it draws), detected at `now_ms`.
    pub(super) fn of_events(
        events: &[(crate::event::Event, Arc<[String]>)],
        first: usize,
        now_ms: i64,
    ) -> NewDeliveries {
        let mut rows = NewDeliveries::default();
        for (i, (event, targets)) in events.iter().enumerate() {
            for target in targets.iter() {
                rows.push(commit::new_delivery(
                    target,
                    (first + i) as u64,
                    event,
                    now_ms,
                ));
            }
        }
        rows
    }

    pub(super) fn push(&mut self, d: Delivery) {
        self.target.push(d.target);
        self.seq.push(d.seq as i64);
        self.event_id.push(d.event_id);
        self.event_type.push(d.event_type);
        self.source.push(d.source);
        self.item_id.push(d.item_id);
        self.attempts.push(d.attempts as i32);
        self.next_at_ms.push(d.next_at_ms);
        self.created_ms.push(d.created_ms);
        self.last_error.push(d.last_error);
        self.body.push(d.body);
    }

    pub(super) async fn insert(&self, c: &impl GenericClient, table: &str) -> Result<(), Fail> {
        if self.seq.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO {table} ({DELIVERY_COLUMNS}) SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::int8[], $9::int8[], $10::text[], $11::bytea[])"
        );
        c.execute(
            &sql,
            &[
                &self.target,
                &self.seq,
                &self.event_id,
                &self.event_type,
                &self.source,
                &self.item_id,
                &self.attempts,
                &self.next_at_ms,
                &self.created_ms,
                &self.last_error,
                &self.body,
            ],
        )
        .await?;
        Ok(())
    }
}

/// Deliveries of `table`, optionally of one target, in (target, seq) order.
async fn list(
    pool: Arc<Pool>,
    table: &'static str,
    target: Option<String>,
    limit: usize,
) -> Result<Vec<Delivery>, Fail> {
    let c = pool.conn().await?;
    let limit = limit.min(i64::MAX as usize) as i64;
    let rows = match target {
        Some(t) => {
            c.query(
                &format!("SELECT {DELIVERY_COLUMNS} FROM {table} WHERE target = $1 ORDER BY seq LIMIT $2"),
                &[&t, &limit],
            )
            .await?
        }
        None => {
            c.query(
                &format!("SELECT {DELIVERY_COLUMNS} FROM {table} ORDER BY target, seq LIMIT $1"),
                &[&limit],
            )
            .await?
        }
    };
    c.done();
    Ok(rows.iter().map(delivery).collect())
}

impl Store for PgStore {
    fn cluster(&self) -> Result<Option<ClusterView>, StoreError> {
        self.cluster_view().map(Some)
    }

    fn holds(&self, kind: Work, name: &str) -> bool {
        self.member
            .as_ref()
            .is_none_or(|m| m.epoch(kind, name).is_some())
    }

    fn source_state(&self, source: &str) -> Result<SourceState, StoreError> {
        let s = source.to_string();
        self.run(
            || format!("reading the state of source {source}"),
            |pool| async move {
                let c = pool.conn().await?;
                let state = read_state(&*c, &s, false).await?;
                c.done();
                Ok(state)
            },
        )
    }

    fn snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError> {
        let s = source.to_string();
        self.run(
            || format!("reading the stored items of source {source}"),
            |pool| async move {
                let c = pool.conn().await?;
                let rows = c
                    .query(
                        "SELECT id, hash, raw FROM pollhook_items WHERE source = $1",
                        &[&s],
                    )
                    .await?;
                c.done();
                let mut out = HashMap::with_capacity(rows.len());
                for r in rows {
                    let id: String = r.get(0);
                    let hash: &[u8] = r.get(1);
                    let hash = hash.try_into().map_err(|_| StoreError::Corrupt {
                        key: format!("pollhook_items/{s}/{id}"),
                        reason: format!("the hash is {} bytes, not 32", hash.len()),
                    })?;
                    out.insert(
                        id,
                        Seen {
                            hash,
                            raw: r.get(2),
                        },
                    );
                }
                Ok(out)
            },
        )
    }

    fn commit_poll(&self, c: PollCommit) -> Result<u64, StoreError> {
        let source = c.source.clone();
        self.run(
            || format!("committing a poll of source {source}"),
            |pool| commit::commit(pool, self.member.clone(), self.open.clone(), c),
        )
    }

    fn abandon_poll(&self, source: &str) {
        // Its connection closes, and the database rolls the transaction back.
        drop(self.open.take(source));
    }

    fn pending(
        &self,
        target: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let t = target.to_string();
        // Sequence numbers are bigints: none is above one beyond their range (cast, such
        // an `after` would turn negative and return everything).
        let after = match after.map(i64::try_from) {
            None => -1,
            Some(Ok(after)) => after,
            Some(Err(_)) => return Ok(Vec::new()),
        };
        let limit = limit.min(i64::MAX as usize) as i64;
        self.run(
            || format!("reading pending deliveries of target {target}"),
            |pool| async move {
                let c = pool.conn().await?;
                // Without fresh statistics (an outbox a large commit has just filled,
                // before autovacuum analyzes it) the planner expects a few rows, reads
                // every pending one and sorts them on disk: 150 ms for 100,000, per read.
                // The primary key already yields this order. Three round trips: a worker
                // of a cluster reads every 200 ms, idle or not.
                c.batch_execute(
                    "BEGIN; SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off",
                )
                .await?;
                let rows = c
                    .query_typed(
                        &format!("SELECT {DELIVERY_COLUMNS} FROM pollhook_outbox WHERE target = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
                        &[(&t, Type::TEXT), (&after, Type::INT8), (&limit, Type::INT8)],
                    )
                    .await?;
                c.batch_execute("COMMIT").await?;
                c.done();
                Ok(rows.iter().map(delivery).collect())
            },
        )
    }

    fn delivery(&self, target: &str, seq: u64) -> Result<Option<Delivery>, StoreError> {
        let t = target.to_string();
        self.run(
            || format!("reading delivery {seq} of target {target}"),
            |pool| async move {
                let c = pool.conn().await?;
                let row = c
                    .query_opt(
                        &format!("SELECT {DELIVERY_COLUMNS} FROM pollhook_outbox WHERE target = $1 AND seq = $2"),
                        &[&t, &(seq as i64)],
                    )
                    .await?;
                c.done();
                Ok(row.as_ref().map(delivery))
            },
        )
    }

    fn ack_many(&self, target: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let t = target.to_string();
        let seqs: Vec<i64> = seqs.iter().map(|&s| s as i64).collect();
        let member = self.member.clone();
        self.run(
            || format!("recording acknowledgements of target {target}"),
            |pool| async move {
                let mut c = pool.conn().await?;
                let tx = c.transaction().await?;
                fence(&tx, member.as_deref(), Work::Target, &t).await?;
                // The bounds keep the planner to the batch's stretch of the key: without
                // fresh statistics it would rather read every pending delivery of the
                // target and match each against the list (70 ms a batch at 100,000
                // pending, 0.5 ms this way).
                let (low, high) = (seqs.iter().min(), seqs.iter().max());
                tx.execute(
                    "DELETE FROM pollhook_outbox WHERE target = $1 AND seq >= $3 AND seq <= $4 AND seq = ANY($2)",
                    &[&t, &seqs, &low, &high],
                )
                .await?;
                tx.commit().await?;
                c.done();
                Ok(())
            },
        )
    }

    fn reschedule(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        next_at_ms: i64,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let (t, e) = (target.to_string(), last_error.to_string());
        let member = self.member.clone();
        self.run(
            || format!("rescheduling delivery {seq} of target {target}"),
            |pool| async move {
                let mut c = pool.conn().await?;
                let tx = c.transaction().await?;
                fence(&tx, member.as_deref(), Work::Target, &t).await?;
                tx.execute(
                    "UPDATE pollhook_outbox SET attempts = $3, next_at_ms = $4, last_error = $5 WHERE target = $1 AND seq = $2",
                    &[&t, &(seq as i64), &(attempts as i32), &next_at_ms, &e],
                )
                .await?;
                tx.commit().await?;
                c.done();
                Ok(())
            },
        )
    }

    fn bury(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let (t, e) = (target.to_string(), last_error.to_string());
        let member = self.member.clone();
        self.run(
            || format!("moving delivery {seq} of target {target} to the dead letters"),
            |pool| async move {
                let mut c = pool.conn().await?;
                let tx = c.transaction().await?;
                fence(&tx, member.as_deref(), Work::Target, &t).await?;
                tx.execute(
                    &format!(
                        "WITH gone AS (DELETE FROM pollhook_outbox WHERE target = $1 AND seq = $2 RETURNING {DELIVERY_COLUMNS}) \
                         INSERT INTO pollhook_dead ({DELIVERY_COLUMNS}) SELECT target, seq, event_id, event_type, source, item_id, $3, next_at_ms, created_ms, $4, body FROM gone"
                    ),
                    &[&t, &(seq as i64), &(attempts as i32), &e],
                )
                .await?;
                tx.commit().await?;
                c.done();
                Ok(())
            },
        )
    }

    fn dead(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let t = target.map(str::to_string);
        self.run(
            || "listing dead deliveries".into(),
            |pool| list(pool, "pollhook_dead", t, limit),
        )
    }

    fn outbox(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let t = target.map(str::to_string);
        self.run(
            || "listing pending deliveries".into(),
            |pool| list(pool, "pollhook_outbox", t, limit),
        )
    }

    fn find_event(&self, event_id: &str) -> Result<Vec<(DeliveryStatus, Delivery)>, StoreError> {
        let id = event_id.to_string();
        self.run(
            || format!("looking up event {event_id}"),
            |pool| async move {
                let c = pool.conn().await?;
                let mut out = Vec::new();
                for (status, table) in [
                    (DeliveryStatus::Pending, "pollhook_outbox"),
                    (DeliveryStatus::Dead, "pollhook_dead"),
                ] {
                    let rows = c
                        .query(
                            &format!("SELECT {DELIVERY_COLUMNS} FROM {table} WHERE event_id = $1 ORDER BY target, seq"),
                            &[&id],
                        )
                        .await?;
                    out.extend(rows.iter().map(|r| (status, delivery(r))));
                }
                c.done();
                Ok(out)
            },
        )
    }

    fn replay_dead(
        &self,
        target: Option<&str>,
        event_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut replayed = Vec::new();
        loop {
            let (t, id) = (target.map(str::to_string), event_id.map(str::to_string));
            let batch = self.run(
                || "replaying dead deliveries".into(),
                |pool| replay_batch(pool, t, id, now_ms),
            )?;
            let done = batch.len() < REPLAY_BATCH;
            replayed.extend(batch);
            if done {
                return Ok(replayed);
            }
        }
    }

    fn forget_source(&self, source: &str) -> Result<bool, StoreError> {
        let s = source.to_string();
        // A poll of this process between its chunks ends here (its transaction rolls
        // back), and its next chunk must find the generation moved on, even at the
        // source's first poll, before it has a committed row.
        let polling = self.open.take(source).is_some();
        self.run(
            || format!("forgetting source {source}"),
            |pool| async move {
                let mut c = pool.conn().await?;
                let tx = c.transaction().await?;
                if polling {
                    tx.execute(
                        "INSERT INTO pollhook_sources (name) VALUES ($1) ON CONFLICT DO NOTHING",
                        &[&s],
                    )
                    .await?;
                }
                let had = tx
                    .query_opt(
                        "UPDATE pollhook_sources SET generation = generation + 1, initialized = false, items = 0, collection = NULL WHERE name = $1 RETURNING 1",
                        &[&s],
                    )
                    .await?
                    .is_some();
                tx.execute("DELETE FROM pollhook_items WHERE source = $1", &[&s]).await?;
                tx.commit().await?;
                c.done();
                Ok(had)
            },
        )
    }

    fn sources(&self) -> Result<Vec<(String, SourceState)>, StoreError> {
        self.run(
            || "listing the stored sources".into(),
            |pool| async move {
                let c = pool.conn().await?;
                let rows = c
                    .query(
                        "SELECT name, generation, initialized, items, collection FROM pollhook_sources ORDER BY name",
                        &[],
                    )
                    .await?;
                c.done();
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let name: String = r.get("name");
                    let state = state(r, &name)?;
                    out.push((name, state));
                }
                Ok(out)
            },
        )
    }

    fn health(&self, subject: &str) -> Result<HealthRecord, StoreError> {
        let key = subject.to_string();
        let bytes: Option<Vec<u8>> = self.run(
            || format!("reading the health of {subject}"),
            |pool| async move {
                let c = pool.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT record FROM pollhook_health WHERE subject = $1",
                        &[&key],
                    )
                    .await?;
                c.done();
                Ok(row.map(|r| r.get(0)))
            },
        )?;
        match bytes {
            Some(b) => HealthRecord::decode(subject, &b),
            None => Ok(HealthRecord::default()),
        }
    }

    fn update_health(
        &self,
        subject: &str,
        read: &HealthRecord,
        next: &HealthRecord,
        events: Vec<(crate::event::Event, Arc<[String]>)>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = subject.to_string();
        let healthy = *read == HealthRecord::default();
        let (read, next) = (read.encode(), next.encode());
        self.run(
            || format!("recording the health of {subject}"),
            |pool| async move {
                let mut c = pool.conn().await?;
                let tx = c.transaction().await?;
                // Replaced only if it is still the record read: the row is locked by the
                // update (or the insert) until the commit, so of two writers who read the
                // same record one writes and the other finds it changed.
                let written = if healthy {
                    tx.execute(
                        "INSERT INTO pollhook_health (subject, record) VALUES ($1, $3) \
                         ON CONFLICT (subject) DO UPDATE SET record = excluded.record WHERE pollhook_health.record = $2",
                        &[&key, &read, &next],
                    )
                    .await?
                } else {
                    tx.execute(
                        "UPDATE pollhook_health SET record = $3 WHERE subject = $1 AND record = $2",
                        &[&key, &read, &next],
                    )
                    .await?
                };
                if written == 0 {
                    tx.rollback().await?;
                    c.done();
                    return Ok(false);
                }
                let mut rows = NewDeliveries::of_events(&events, 0, now_ms);
                if !events.is_empty() {
                    let base = draw_seqs(&tx, events.len()).await?;
                    for s in &mut rows.seq {
                        *s += base;
                    }
                    rows.insert(&tx, "pollhook_outbox").await?;
                }
                tx.commit().await?;
                c.done();
                Ok(true)
            },
        )
    }

    fn oldest_pending(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let t = target.to_string();
        self.run(
            || format!("reading the oldest pending delivery of target {target}"),
            |pool| async move {
                let c = pool.conn().await?;
                let row = c
                    .query_opt(
                        "SELECT created_ms FROM pollhook_outbox WHERE target = $1 ORDER BY seq LIMIT 1",
                        &[&t],
                    )
                    .await?;
                c.done();
                Ok(row.map(|r| r.get(0)))
            },
        )
    }

    fn target_stats(&self) -> Result<BTreeMap<String, TargetStats>, StoreError> {
        self.run(
            || "counting deliveries per target".into(),
            |pool| async move {
                let c = pool.conn().await?;
                let pending = c
                    .query(
                        "SELECT target, count(*), (SELECT o.created_ms FROM pollhook_outbox o WHERE o.target = p.target ORDER BY seq LIMIT 1) FROM pollhook_outbox p GROUP BY target",
                        &[],
                    )
                    .await?;
                let dead = c
                    .query("SELECT target, count(*) FROM pollhook_dead GROUP BY target", &[])
                    .await?;
                c.done();
                let mut out: BTreeMap<String, TargetStats> = BTreeMap::new();
                for r in &pending {
                    let s = out.entry(r.get(0)).or_default();
                    s.pending = r.get::<_, i64>(1) as u64;
                    s.oldest_pending_ms = r.get(2);
                }
                for r in &dead {
                    out.entry(r.get(0)).or_default().dead = r.get::<_, i64>(1) as u64;
                }
                Ok(out)
            },
        )
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every transaction is durable when it commits.
        Ok(())
    }

    fn describe(&self) -> String {
        format!("the PostgreSQL database {}", self.runner.pool.shown)
    }
}

/// Moves up to [`REPLAY_BATCH`] dead deliveries back to the outbox in one transaction,
/// in dead-letter order, under new sequence numbers.
async fn replay_batch(
    pool: Arc<Pool>,
    target: Option<String>,
    event_id: Option<String>,
    now_ms: i64,
) -> Result<Vec<Delivery>, Fail> {
    let mut c = pool.conn().await?;
    let tx = c.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "DELETE FROM pollhook_dead WHERE (target, seq) IN (SELECT target, seq FROM pollhook_dead \
                 WHERE ($1::text IS NULL OR target = $1) AND ($2::text IS NULL OR event_id = $2) \
                 ORDER BY target, seq LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING {DELIVERY_COLUMNS}"
            ),
            &[&target, &event_id, &(REPLAY_BATCH as i64)],
        )
        .await?;
    let mut moved: Vec<Delivery> = rows.iter().map(delivery).collect();
    moved.sort_by(|a, b| (&a.target, a.seq).cmp(&(&b.target, b.seq)));
    if moved.is_empty() {
        drop(tx);
        c.done();
        return Ok(moved);
    }
    let base = draw_seqs(&tx, moved.len()).await? as u64;
    let mut rows = NewDeliveries::default();
    for (i, d) in moved.iter_mut().enumerate() {
        d.seq = base + i as u64;
        d.attempts = 0;
        d.next_at_ms = now_ms;
        d.last_error = None;
        rows.push(d.clone());
    }
    rows.insert(&tx, "pollhook_outbox").await?;
    tx.commit().await?;
    c.done();
    Ok(moved)
}
