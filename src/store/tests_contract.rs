//! The behaviour every [`Store`] promises, written once over `&dyn Store` and run on both
//! stores: each test is a function of a [`Fixture`], and [`on_both_stores!`] makes
//! `sled::<test>` (a `SledStore` in a temporary directory) and `postgres::<test>` (a
//! `PgStore` in a new database of the shared throwaway server, skipped loudly where
//! there is none) of it. A restart is [`Fixture::reopen`]: the same directory, the same
//! database URL.
//!
//! Only what the trait promises is compared. Sequence numbers are compared within one
//! store, never across stores; [`SourceState::buckets`] is sled's snapshot layout
//! (PgStore reports 0) and is left out of every comparison (see [`promised`]). What only
//! one store has (sled's raw checksums and crash points, PostgreSQL's migrations and lost
//! connections) stays in `tests.rs`, `tests_staged.rs`, `tests_damage.rs` and
//! `tests_pg.rs`.
//!
//! - `polls`: commits (items, state, deliveries, the baseline, unchanged polls,
//!   conflicts), forgetting a source, listing sources, names with odd bytes.
//! - `outbox`: the delivery lifecycle (pending, ack, reschedule, bury), the operator's
//!   listings, finding an event, replaying dead letters, queue statistics.
//! - `staged`: polls committed in chunks, and commits racing a reader of the outbox.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;

use super::tests::{created, events_commit, seen};
use super::throwaway::Server;
use super::{Delivery, PgStore, PollCommit, SourceState, Store, StoreError, TargetStats};
use crate::diff::Seen;
use crate::event::Event;
use crate::extract::Collection;

/// Makes a `sled` and a `postgres` test of each contract test named (a function taking
/// `&mut Fixture`, in the module that invokes this). `#[sled ...]` before a name adds an
/// attribute to its sled test only.
macro_rules! on_both_stores {
    ($($(#[sled $sled:meta])? $test:ident),+ $(,)?) => {
        mod sled {
            $(
                #[test]
                $(#[$sled])?
                fn $test() {
                    super::$test(&mut $crate::store::tests_contract::Fixture::sled());
                }
            )+
        }
        mod postgres {
            $(
                #[test]
                fn $test() {
                    let name = concat!("postgres::", stringify!($test));
                    if let Some(mut f) = $crate::store::tests_contract::Fixture::postgres(name) {
                        super::$test(&mut f);
                    }
                }
            )+
        }
    };
}

mod health;
mod outbox;
mod polls;
mod staged;

/// A store under test, and where its state lives, to open it again.
pub(super) struct Fixture {
    /// None only inside `reopen`: sled locks its directory, so the old handle goes first.
    store: Option<Box<dyn Store>>,
    place: Place,
}

enum Place {
    Sled(tempfile::TempDir),
    Postgres {
        url: String,
        /// Keeps the shared server up while the test runs.
        _server: Server,
    },
}

impl Fixture {
    pub(super) fn sled() -> Fixture {
        let place = Place::Sled(tempfile::tempdir().expect("a temporary directory"));
        Fixture {
            store: Some(place.open()),
            place,
        }
    }

    /// None (after saying so on stderr) where no PostgreSQL server can be started.
    pub(super) fn postgres(test: &str) -> Option<Fixture> {
        let server = Server::for_test(test)?;
        let place = Place::Postgres {
            url: server.new_database("contract"),
            _server: server,
        };
        Some(Fixture {
            store: Some(place.open()),
            place,
        })
    }

    pub(super) fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("the store is open")
    }

    /// Closes the store and opens it again on the same state, as a restart does.
    pub(super) fn reopen(&mut self) {
        self.store = None;
        self.store = Some(self.place.open());
    }

    /// Whether names may hold NUL, which PostgreSQL's text cannot (config validation and
    /// the admin API refuse such names before they reach a store; sled escapes them).
    pub(super) fn takes_nul(&self) -> bool {
        matches!(self.place, Place::Sled(_))
    }
}

impl Place {
    fn open(&self) -> Box<dyn Store> {
        match self {
            Place::Sled(dir) => Box::new(super::tests::open(dir.path())),
            Place::Postgres { url, .. } => Box::new(
                PgStore::open(url, "the contract test database")
                    .unwrap_or_else(|e| panic!("{}", crate::error::chain(&e))),
            ),
        }
    }
}

/// What both stores promise of a source's state: all of it but sled's bucket count.
pub(super) fn promised(state: SourceState) -> SourceState {
    SourceState {
        buckets: 0,
        ..state
    }
}

/// `source`'s state as promised.
pub(super) fn state(store: &dyn Store, source: &str) -> SourceState {
    promised(store.source_state(source).unwrap())
}

/// The state after a commit that left `items` items at `generation`.
pub(super) fn committed(
    generation: u64,
    items: u64,
    collection: Option<Collection>,
) -> SourceState {
    SourceState {
        generation,
        initialized: true,
        items,
        collection,
        ..SourceState::default()
    }
}

/// Everything the trait shows of the named sources and of every delivery.
#[derive(Debug, PartialEq)]
pub(super) struct Dump {
    sources: Vec<(String, SourceState)>,
    states: Vec<SourceState>,
    snapshots: Vec<HashMap<String, Seen>>,
    outbox: Vec<Delivery>,
    dead: Vec<Delivery>,
    stats: BTreeMap<String, TargetStats>,
}

pub(super) fn dump(store: &dyn Store, sources: &[&str]) -> Dump {
    Dump {
        sources: (store.sources().unwrap().into_iter())
            .map(|(name, s)| (name, promised(s)))
            .collect(),
        states: sources.iter().map(|s| state(store, s)).collect(),
        snapshots: sources.iter().map(|s| store.snapshot(s).unwrap()).collect(),
        outbox: store.outbox(None, usize::MAX).unwrap(),
        dead: store.dead(None, usize::MAX).unwrap(),
        stats: store.target_stats().unwrap(),
    }
}

/// The object of item `id` as `created` describes it, and what the snapshot keeps of it.
pub(super) fn item(id: &str) -> (String, Seen) {
    (
        id.to_string(),
        seen(&json!({"id": id, "name": format!("item {id}")})),
    )
}

/// The commits of a poll of `source` that read generation `expected` with `held` items
/// and found `items` created, one event each to `targets`, cut as `Plan::next_commit`
/// cuts a poll: `per_commit` events a commit, every commit but the last `events_only`,
/// the last with the remaining events and every snapshot change, all with the poll's
/// collection and detection time. Returns the commits and the events in detection order.
pub(super) fn poll_commits(
    source: &str,
    expected: u64,
    held: u64,
    items: &[&str],
    targets: &[&str],
    per_commit: usize,
) -> (Vec<PollCommit>, Vec<Event>) {
    let events: Vec<(Event, Arc<[String]>)> = items
        .iter()
        .map(|id| created(source, expected + 1, id, targets))
        .collect();
    let in_order = events.iter().map(|(e, _)| e.clone()).collect();
    let chunks: Vec<_> = events.chunks(per_commit.max(1)).collect();
    let last = chunks.len().saturating_sub(1);
    let mut commits: Vec<PollCommit> = (chunks.iter().enumerate())
        .map(|(chunk, events)| PollCommit {
            chunk: chunk as u32,
            events_only: chunk < last,
            collection: Some(Collection::Array),
            ..events_commit(source, expected, events.to_vec())
        })
        .collect();
    if let Some(last) = commits.last_mut() {
        last.upserts = items.iter().map(|id| item(id)).collect();
        last.item_count = held + items.len() as u64;
    }
    (commits, in_order)
}

/// Commits `commits` one after the other as `Plan::commit_all` does, stopping at the
/// first that fails; returns the generation stored.
pub(super) fn commit_all(store: &dyn Store, commits: Vec<PollCommit>) -> Result<u64, StoreError> {
    let mut generation = 0;
    for c in commits {
        generation = store.commit_poll(c)?;
    }
    Ok(generation)
}

/// The event ids of `events`, for comparing with deliveries' ids.
pub(super) fn event_ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// A first commit of `source` holding `items` (`item`'s objects), without events.
pub(super) fn items_commit(source: &str, expected: u64, items: &[&str]) -> PollCommit {
    PollCommit {
        upserts: items.iter().map(|id| item(id)).collect(),
        item_count: items.len() as u64,
        ..events_commit(source, expected, Vec::new())
    }
}
