//! A poll's commit on PostgreSQL: one transaction for the whole poll, however many
//! commits (chunks) the poll makes.
//!
//! A poll of one commit writes its snapshot changes, its state and its deliveries in one
//! transaction. A poll of several (more events than [`crate::poll::CHUNK`]) begins its
//! transaction at its first chunk and keeps it open, on a connection of its own, until
//! its last: each chunk's events go to a temporary table of that transaction (no WAL, no
//! second copy in a shared table), and the last commit writes the snapshot and moves
//! them all to the outbox. So nothing of a poll that never made its last commit is
//! delivered, and nothing is left behind to clean up: a crash, a lost connection or a
//! new poll of the source ends the transaction, and the database forgets it.
//!
//! The transaction locks the source's row (`FOR UPDATE`, checked against the generation
//! the poll read) and, in a cluster, its lease row (`FOR SHARE`, the fence), from its
//! first chunk to its end; it draws the deliveries' sequence numbers last, from one row
//! whose lock it holds until it commits, so sequence order is commit order and a target
//! worker that loads "everything above the last sequence I have" never misses one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_postgres::GenericClient;

use super::conn::{Conn, Pool};
use super::lease::{fence, Member};
use super::{draw_seqs, read_state, Fail, NewDeliveries};
use crate::store::{Delivery, PollCommit, StoreError, Work};

/// The polls of this store whose transaction is open between their chunks, by source.
#[derive(Default)]
pub(super) struct OpenPolls(Mutex<HashMap<String, OpenPoll>>);

/// A poll between two of its chunks: its connection, inside its transaction.
pub(super) struct OpenPoll {
    /// The connection; with the write under way while a chunk is being written.
    conn: Option<Conn>,
    /// The last chunk, written while the poll builds the next: it hands the connection
    /// back, or fails the poll's next commit with its error.
    writing: Option<JoinHandle<Result<Conn, Fail>>>,
    /// The chunk that comes next.
    next_chunk: u32,
    /// The generation the poll read, checked at its first chunk.
    generation: u64,
    /// Events in the temporary table so far.
    staged: usize,
    /// Items the source held when the poll began.
    held: u64,
}

impl OpenPoll {
    /// Waits for the chunk being written, if any; its error is the poll's.
    async fn settle(&mut self) -> Result<(), Fail> {
        if let Some(write) = self.writing.take() {
            let conn = write.await.map_err(|error| {
                Fail::Store(StoreError::Stopped {
                    task: "chunk write",
                    error,
                })
            })??;
            self.conn = Some(conn);
        }
        Ok(())
    }

    /// The connection, once no chunk is being written.
    fn take_conn(&mut self) -> Conn {
        self.conn
            .take()
            .expect("an open poll has its connection or a chunk write under way")
    }
}

impl Drop for OpenPoll {
    /// An abandoned poll's chunk write stops at once, and its connection closes with it.
    fn drop(&mut self) {
        if let Some(write) = &self.writing {
            write.abort();
        }
    }
}

impl OpenPolls {
    /// Takes the open poll of `source` out, if there is one.
    pub(super) fn take(&self, source: &str) -> Option<OpenPoll> {
        self.lock().remove(source)
    }

    fn put(&self, source: String, poll: OpenPoll) {
        self.lock().insert(source, poll);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OpenPoll>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Commits `c`, a poll's only commit or one of its chunks; returns the source's
/// generation after it. An open poll is put back only after a chunk succeeded: after an
/// error its connection is dropped, which ends its transaction.
pub(super) async fn commit(
    pool: Arc<Pool>,
    member: Option<Arc<Member>>,
    open: Arc<OpenPolls>,
    c: PollCommit,
) -> Result<u64, Fail> {
    let mut poll = if c.chunk == 0 {
        // A poll of this source that never made its last commit ends here, as a new
        // poll of a sled store drops the chunks one left behind.
        drop(open.take(&c.source));
        match begin(&pool, member.as_deref(), &c).await? {
            Some(poll) => poll,
            // An unchanged poll of a committed source writes nothing.
            None => return Ok(c.expected_generation),
        }
    } else {
        match open.take(&c.source) {
            Some(p) if p.next_chunk == c.chunk && p.generation == c.expected_generation => p,
            // A poll out of turn (a chunk of another poll) ends too.
            other => {
                drop(other);
                return Err(lost(&pool, &c).await);
            }
        }
    };
    poll.settle().await?;
    let conn = poll.take_conn();
    if c.events_only {
        // Written while the poll builds its next chunk; an error shows at that commit.
        let (source, generation, before) = (c.source.clone(), c.expected_generation, poll.staged);
        poll.staged += c.events.len();
        poll.next_chunk += 1;
        poll.writing = Some(tokio::spawn(async move {
            stage(&conn, &c, before).await?;
            Ok(conn)
        }));
        open.put(source, poll);
        return Ok(generation);
    }
    let generation = finish(&conn, &poll, &c).await?;
    conn.done();
    Ok(generation)
}

/// Begins the poll's transaction: the fence, the source's row locked, its generation
/// checked. None for an unchanged poll of an initialized source (nothing to write).
async fn begin(
    pool: &Arc<Pool>,
    member: Option<&Member>,
    c: &PollCommit,
) -> Result<Option<OpenPoll>, Fail> {
    let conn = pool.conn().await?;
    conn.batch_execute("BEGIN").await?;
    fence(&*conn, member, Work::Source, &c.source).await?;
    // Creates the row of a source never seen, so that it can be locked.
    conn.execute(
        "INSERT INTO pollhook_sources (name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&c.source],
    )
    .await?;
    let current = read_state(&*conn, &c.source, true).await?;
    if current.generation != c.expected_generation {
        return Err(Fail::Store(StoreError::Conflict {
            source_name: c.source.clone(),
            expected: c.expected_generation,
            found: current.generation,
        }));
    }
    let changed = !(c.upserts.is_empty() && c.removals.is_empty() && c.events.is_empty());
    if !changed && current.initialized && !c.events_only {
        conn.batch_execute("ROLLBACK").await?;
        conn.done();
        return Ok(None);
    }
    if c.events_only {
        conn.batch_execute(
            "CREATE TEMPORARY TABLE pollhook_poll (pos int8 NOT NULL, target text NOT NULL, event_id text NOT NULL, \
             event_type text NOT NULL, item_id text NOT NULL, created_ms int8 NOT NULL, body bytea NOT NULL) ON COMMIT DROP",
        )
        .await?;
    }
    Ok(Some(OpenPoll {
        conn: Some(conn),
        writing: None,
        next_chunk: 0,
        generation: current.generation,
        staged: 0,
        held: current.items,
    }))
}

/// Why a chunk after the first found no open poll: the source moved on (another poll
/// or a forget committed: a conflict), or the transaction ended with its connection.
async fn lost(pool: &Arc<Pool>, c: &PollCommit) -> Fail {
    let found = async {
        let conn = pool.conn().await?;
        let state = read_state(&*conn, &c.source, false).await?;
        conn.done();
        Ok::<_, Fail>(state.generation)
    };
    match found.await {
        Ok(found) if found != c.expected_generation => Fail::Store(StoreError::Conflict {
            source_name: c.source.clone(),
            expected: c.expected_generation,
            found,
        }),
        Ok(_) => Fail::Store(StoreError::PollLost {
            source_name: c.source.clone(),
        }),
        Err(e) => e,
    }
}

/// Adds a chunk's events to the poll's temporary table, one row per event and target,
/// numbered in detection order after the `before` staged so far.
async fn stage(conn: &Conn, c: &PollCommit, before: usize) -> Result<(), Fail> {
    let mut pos = Vec::new();
    let mut target = Vec::new();
    let mut id = Vec::new();
    let mut ty = Vec::new();
    let mut item = Vec::new();
    let mut body: Vec<&[u8]> = Vec::new();
    for (i, (event, targets)) in c.events.iter().enumerate() {
        for t in targets.iter() {
            pos.push((before + i) as i64);
            target.push(t.as_str());
            id.push(event.id.as_str());
            ty.push(event.event_type.as_str());
            item.push(event.item_id.as_str());
            body.push(&event.body);
        }
    }
    if pos.is_empty() {
        return Ok(());
    }
    conn.execute(
        "INSERT INTO pollhook_poll (pos, target, event_id, event_type, item_id, created_ms, body) \
         SELECT p, t, e, y, i, $6, b FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $7::bytea[]) AS u(p, t, e, y, i, b)",
        &[&pos, &target, &id, &ty, &item, &c.now_ms, &body],
    )
    .await?;
    Ok(())
}

/// The poll's last commit: its snapshot changes and state, then every staged event and
/// its own, under sequence numbers drawn now; commits.
async fn finish(conn: &Conn, poll: &OpenPoll, c: &PollCommit) -> Result<u64, Fail> {
    let conn = &**conn;
    write_snapshot(conn, c, poll.held == 0).await?;
    // A staged poll's last commit carries its snapshot changes, so it changed too.
    let changed = !(c.upserts.is_empty() && c.removals.is_empty() && c.events.is_empty());
    let generation = poll.generation + u64::from(changed);
    let collection = c
        .collection
        .as_ref()
        .map(|c| serde_json::to_string(c).unwrap_or_default());
    conn.execute(
        "UPDATE pollhook_sources SET generation = $2, initialized = true, items = $3, collection = coalesce($4, collection) WHERE name = $1",
        &[&c.source, &(generation as i64), &(c.item_count as i64), &collection],
    )
    .await?;
    let mut rows = NewDeliveries::of_events(&c.events, poll.staged, c.now_ms);
    let events = poll.staged + c.events.len();
    if events > 0 {
        // Last, so the sequence row is locked for as short a time as the commit allows.
        let base = draw_seqs(conn, events).await?;
        if poll.staged > 0 {
            conn.execute(
                "INSERT INTO pollhook_outbox (target, seq, event_id, event_type, source, item_id, attempts, next_at_ms, created_ms, body) \
                 SELECT target, $1 + pos, event_id, event_type, $2, item_id, 0, created_ms, created_ms, body FROM pollhook_poll",
                &[&base, &c.source],
            )
            .await?;
        }
        for s in &mut rows.seq {
            *s += base;
        }
        rows.insert(conn, "pollhook_outbox").await?;
    }
    conn.batch_execute("COMMIT").await?;
    Ok(generation)
}

pub(super) fn new_delivery(
    target: &str,
    seq: u64,
    event: &crate::event::Event,
    now_ms: i64,
) -> Delivery {
    Delivery {
        target: target.to_string(),
        seq,
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        source: event.source.clone(),
        item_id: event.item_id.clone(),
        attempts: 0,
        next_at_ms: now_ms,
        created_ms: now_ms,
        last_error: None,
        body: event.body.clone(),
    }
}

/// Writes the snapshot changes. Into a source that held no items (its first poll, or
/// one after a forget), with its row locked, no item can conflict: a plain insert, 40%
/// cheaper than an upsert.
async fn write_snapshot(tx: &impl GenericClient, c: &PollCommit, empty: bool) -> Result<(), Fail> {
    if !c.removals.is_empty() {
        tx.execute(
            "DELETE FROM pollhook_items WHERE source = $1 AND id = ANY($2)",
            &[&c.source, &c.removals],
        )
        .await?;
    }
    if !c.upserts.is_empty() {
        let ids: Vec<&str> = c.upserts.iter().map(|(id, _)| id.as_str()).collect();
        let hashes: Vec<&[u8]> = c.upserts.iter().map(|(_, s)| &s.hash[..]).collect();
        let raws: Vec<&[u8]> = c.upserts.iter().map(|(_, s)| s.raw.as_slice()).collect();
        let insert = "INSERT INTO pollhook_items (source, id, hash, raw) SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::bytea[])";
        let sql = if empty {
            insert.to_string()
        } else {
            format!("{insert} ON CONFLICT (source, id) DO UPDATE SET hash = excluded.hash, raw = excluded.raw")
        };
        tx.execute(&sql, &[&c.source, &ids, &hashes, &raws]).await?;
    }
    Ok(())
}
