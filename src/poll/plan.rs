//! Planning a poll: the diff of what was fetched against the stored snapshot, the checks
//! that refuse answers that only look like data (another shape, a snapshot read back
//! short), and the commits that turn the changes into events.
//!
//! Memory stays bounded by the response, whatever the number of changes: the diff keeps
//! each changed item once, as the JSON text it is stored as, and no event. Events are
//! built when their commit is. A poll with at most [`CHUNK`] events is one commit: its
//! snapshot changes, events and deliveries in one transaction. A poll with more stages
//! its events first, [`CHUNK`] at a time, each chunk one transaction that changes no
//! state and queues nothing, then commits the snapshot with the last chunk; only then
//! does the store move the staged events to the outbox (see
//! [`crate::store::PollCommit::chunk`]). Every event carries the poll's generation (the
//! ids one commit would give). A crash before the snapshot commit leaves the state as it
//! was and delivers nothing of the poll: the next poll detects the changes again, as
//! they are then (invariant 1); a crash after it loses no staged event.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Fetched, PollError, PollReport};
use crate::config::{Mode, Source};
use crate::diff::{check_seen, parse_seen, Change, ChangeKind, DiffError, Differ, Seen};
use crate::event::{self, Event, Json, Parts};
use crate::extract::{extract_each, extract_each_text, Collection, Each, EachError, Kind, Kinds};
use crate::route::Routes;
use crate::store::{PollCommit, Queued, SourceState};

/// Changes (items written or removed) per commit of a large poll. A commit holds its
/// events in memory until it is written (about three times the item's JSON each), and
/// the store holds a transaction's writes until it commits.
pub const CHUNK: usize = 5_000;

/// What a poll found, before it is committed.
pub struct Plan {
    pub report: PollReport,
    /// Items the source held before this poll.
    pub held: usize,
    /// Items created or updated, in document order.
    upserts: Vec<(String, Seen)>,
    /// What each upsert is (None: a stale fingerprint refreshed silently).
    kinds: Vec<Option<ChangeKind>>,
    /// Items gone, ascending.
    removals: Vec<String>,
    /// How far events have been built: upserts, then removals.
    next_upsert: usize,
    next_removal: usize,
    /// The snapshot the poll was diffed against: the previous state of updated and
    /// deleted items.
    previous: HashMap<String, Seen>,
    /// Which kinds become events (none on a baseline).
    emit: Vec<ChangeKind>,
    source: String,
    event_type: String,
    /// The targets of the source's events, and what each takes.
    routes: Routes,
    /// The generation the poll read: every commit of the plan expects it.
    expected: u64,
    /// Items held after the poll.
    item_count: u64,
    collection: Option<Collection>,
    now: DateTime<Utc>,
    /// `now` as the envelopes write it.
    detected: String,
    /// The commit that writes the snapshot is made.
    done: bool,
    /// Commits made so far.
    chunks: u32,
    /// The source never committed: its first poll records that it did, changes or not.
    baseline_record: bool,
}

impl Plan {
    /// A plan that commits nothing (a 304).
    pub fn nothing(report: PollReport) -> Plan {
        Plan {
            report,
            held: 0,
            upserts: Vec::new(),
            kinds: Vec::new(),
            removals: Vec::new(),
            next_upsert: 0,
            next_removal: 0,
            previous: HashMap::new(),
            emit: Vec::new(),
            source: String::new(),
            event_type: String::new(),
            routes: Routes::default(),
            expected: 0,
            item_count: 0,
            collection: None,
            now: DateTime::<Utc>::UNIX_EPOCH,
            detected: String::new(),
            done: true,
            chunks: 0,
            baseline_record: false,
        }
    }

    /// The generation the poll read (what the store holds if nothing is written).
    pub fn generation_read(&self) -> u64 {
        self.expected
    }

    /// Ids of the items this plan removes from the snapshot, ascending.
    pub fn removals(&self) -> &[String] {
        &self.removals
    }

    /// Whether the plan has anything (more) to write.
    pub fn writes(&self) -> bool {
        !self.done
            && (self.baseline_record || !self.upserts.is_empty() || !self.removals.is_empty())
    }

    /// The next commit, its events built now; None once the snapshot is committed. All
    /// but the last carry [`CHUNK`] events and nothing else (`events_only`); the last
    /// carries the remaining events and every snapshot change. A source's first poll
    /// commits even without changes (the baseline is recorded).
    pub fn next_commit(&mut self) -> Result<Option<PollCommit>, PollError> {
        self.next_commit_routed(true)
    }

    /// As [`Plan::next_commit`]; with `route` false, each event once as its envelope,
    /// whatever its targets take (a dry run shows the events, not the deliveries).
    fn next_commit_routed(&mut self, route: bool) -> Result<Option<PollCommit>, PollError> {
        if !self.writes() {
            return Ok(None);
        }
        let mut events = Vec::new();
        let (routes, source) = (self.routes.clone(), self.source.clone());
        let mut built = 0;
        // Chunks count events built, not entries queued (an event may queue one per
        // target with a body of its own, or none).
        let queue = |event: Event, events: &mut Vec<_>| -> Result<(), PollError> {
            if route {
                routes
                    .route(event, events)
                    .map_err(|error| PollError::Route {
                        source_name: source.clone(),
                        error: Box::new(error),
                    })?;
            } else {
                events.push((event, Arc::from(Vec::new())));
            }
            Ok(())
        };
        while built < CHUNK && self.next_upsert < self.upserts.len() {
            let i = self.next_upsert;
            self.next_upsert += 1;
            if let Some(kind) = self.kinds[i].filter(|k| self.emit.contains(k)) {
                built += 1;
                queue(self.upsert_event(i, kind)?, &mut events)?;
            }
        }
        while built < CHUNK && self.next_removal < self.removals.len() {
            let i = self.next_removal;
            self.next_removal += 1;
            if self.emit.contains(&ChangeKind::Deleted) {
                if let Some(event) = self.removal_event(i)? {
                    built += 1;
                    queue(event, &mut events)?;
                }
            }
        }
        let mut commit = PollCommit {
            source: self.source.clone(),
            expected_generation: self.expected,
            events,
            collection: self.collection,
            now_ms: self.now.timestamp_millis(),
            chunk: self.chunks,
            ..PollCommit::default()
        };
        self.chunks += 1;
        let last =
            self.next_upsert == self.upserts.len() && self.next_removal == self.removals.len();
        if last {
            self.done = true;
            commit.upserts = std::mem::take(&mut self.upserts);
            commit.removals = std::mem::take(&mut self.removals);
            commit.item_count = self.item_count;
        } else {
            commit.events_only = true;
        }
        Ok(Some(commit))
    }

    fn upsert_event(&self, i: usize, kind: ChangeKind) -> Result<Event, PollError> {
        let (id, seen) = &self.upserts[i];
        let old = match self.previous.get(id) {
            Some(old) if kind == ChangeKind::Updated => old,
            // A created item's bytes were written by this poll from its parsed value:
            // they go into the envelope as they are.
            _ => {
                return Ok(self.event(&Parts {
                    kind,
                    id,
                    object: Json::Bytes(&seen.raw),
                    previous: None,
                    changes: None,
                    version: &seen.hash,
                }))
            }
        };
        // An update carries the patch from the old item to the new: both parsed.
        let (object, previous) = (parse_seen(id, seen)?, parse_seen(id, old)?);
        let change = Change::upserted(kind, id.clone(), object, Some(previous), seen.hash);
        Ok(self.event(&Parts {
            kind,
            id,
            object: Json::Value(&change.object),
            previous: change.previous.as_ref().map(Json::Value),
            changes: change.changes.as_ref(),
            version: &change.version,
        }))
    }

    fn removal_event(&self, i: usize) -> Result<Option<Event>, PollError> {
        let id = &self.removals[i];
        let Some(last) = self.previous.get(id) else {
            return Ok(None);
        };
        // Stored bytes go into the envelope unparsed, but only once they are known to be
        // JSON (a damaged record fails the poll, as parsing it would).
        check_seen(id, last)?;
        Ok(Some(self.event(&Parts {
            kind: ChangeKind::Deleted,
            id,
            object: Json::Bytes(&last.raw),
            previous: Some(Json::Bytes(&last.raw)),
            changes: None,
            version: &last.hash,
        })))
    }

    /// Commits every chunk of the plan to `store`, one after the other, calling
    /// `queued` after each commit that queued deliveries (to wake their targets), and
    /// handing it to the store, which may call it sooner (see [`PollCommit::queued`]).
    /// Blocking. Returns the generation stored.
    pub fn commit_all(
        mut self,
        store: &dyn crate::store::Store,
        queued: impl Fn() + Send + Sync + 'static,
    ) -> Result<u64, PollError> {
        let queued = Queued::new(queued);
        let mut generation = self.generation_read();
        loop {
            let mut commit = match self.next_commit() {
                Ok(Some(commit)) => commit,
                Ok(None) => break,
                Err(e) => {
                    store.abandon_poll(&self.source);
                    return Err(e);
                }
            };
            let events = !commit.events.is_empty();
            // The wake follows the commit even when it failed: a last commit may have
            // moved some of its staged chunks to the outbox before its error.
            commit.queued = queued.clone();
            let result = store.commit_poll(commit);
            if events {
                queued.call();
            }
            generation = result?;
        }
        Ok(generation)
    }

    /// Every event of the plan, built a chunk at a time and committed nowhere (a dry
    /// run). Stops at the first stored item that does not parse.
    pub fn into_events(mut self) -> impl Iterator<Item = Result<Event, PollError>> {
        let mut chunk = Vec::new().into_iter();
        let mut failed = false;
        std::iter::from_fn(move || loop {
            if let Some((event, _)) = chunk.next() {
                return Some(Ok(event));
            }
            if failed {
                return None;
            }
            match self.next_commit_routed(false) {
                Ok(Some(commit)) => chunk = commit.events.into_iter(),
                Ok(None) => return None,
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        })
    }

    fn event(&self, parts: &Parts<'_>) -> Event {
        event::build_parts(
            &self.source,
            &self.event_type,
            self.expected + 1,
            parts,
            &self.detected,
        )
    }
}

/// Works out what a poll that fetched `fetched` would commit. Blocking.
pub fn plan_fetched(
    store: &dyn crate::store::Store,
    source: &Source,
    fetched: Fetched,
    now: DateTime<Utc>,
) -> Result<Plan, PollError> {
    match fetched {
        Fetched::Body(body) => plan_response(store, source, &body, now),
        Fetched::Items {
            items,
            pages,
            complete,
            collection,
        } => {
            let mut plan = plan_with(store, source, now, complete, |differ| {
                for item in items {
                    differ.push(item)?;
                }
                Ok(collection)
            })?;
            plan.report.pages = pages;
            plan.report.truncated = !complete;
            Ok(plan)
        }
        Fetched::NotModified => Ok(Plan::nothing(PollReport {
            not_modified: true,
            ..PollReport::default()
        })),
    }
}

/// Works out what a poll that got `body` would commit: parse, extract, diff against the
/// stored snapshot. Blocking (store reads, CPU work on the document).
pub fn plan_response(
    store: &dyn crate::store::Store,
    source: &Source,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Plan, PollError> {
    let url = source.location();
    // Items are diffed as they are parsed: memory holds the changed items, not the
    // whole document. Items already in canonical form are not parsed at all (their
    // text is what the fingerprint hashes), unless fields are ignored: the fingerprint
    // must leave those out.
    let mut plan = plan_with(store, source, now, true, |differ| {
        let found = if source.ignore.is_empty() {
            extract_each_text(body, &source.items, &source.id, &mut |item| match item {
                Each::Parsed(item) => differ.push(item),
                Each::Canonical { id, text } => differ.push_text(id, text),
            })
        } else {
            extract_each(body, &source.items, &source.id, &mut |item| {
                differ.push(item)
            })
        };
        found
            .map(|found| Some(found.collection))
            .map_err(|e| match e {
                EachError::Json(error) => PollError::Json {
                    url: url.clone(),
                    error,
                },
                EachError::Extract(error) => PollError::Extract {
                    url: url.clone(),
                    error,
                },
                EachError::Stopped(e) => PollError::Diff(e),
            })
    })?;
    plan.report.pages = 1;
    Ok(plan)
}

/// The diff of a poll whose items `push` feeds to the differ (returning the collection
/// they came in). With `complete` false, items not seen are kept, not deleted.
fn plan_with(
    store: &dyn crate::store::Store,
    source: &Source,
    now: DateTime<Utc>,
    complete: bool,
    push: impl FnOnce(&mut Differ<'_>) -> Result<Option<Collection>, PollError>,
) -> Result<Plan, PollError> {
    let (state, previous) = stored(store, source)?;
    let baseline = !state.initialized && source.baseline;
    let emit: Vec<ChangeKind> = if baseline {
        Vec::new()
    } else {
        source.events.clone()
    };
    // The differ keeps no change as a parsed value: events are built per commit.
    let mut differ = Differ::new(&previous, &source.ignore)
        .keep_only(&[])
        .limit(usize::try_from(source.max_items).unwrap_or(usize::MAX));
    let collection = push(&mut differ).map_err(|e| match e {
        PollError::Diff(DiffError::TooManyItems { .. }) => PollError::TooManyItems {
            url: source.location(),
            limit: source.max_items,
        },
        e => e,
    })?;
    // Items as the snapshot will hold them: a page walk may see an item on two pages.
    let count = differ.distinct();
    if source.mode == Mode::Items {
        check_shape(source, &state, &previous, collection, differ.kinds())?;
    }
    if count == 0 && !previous.is_empty() && !source.allow_empty {
        return Err(PollError::SuddenlyEmpty {
            url: source.location(),
            previous: previous.len(),
        });
    }
    let d = if complete {
        differ.finish()?
    } else {
        differ.finish_without_deletions()
    };
    let events = emitted(&d, &emit);
    let report = PollReport {
        items: count,
        first: !state.initialized,
        baseline,
        created: d.created,
        updated: d.updated,
        deleted: d.deleted,
        events,
        ..PollReport::default()
    };
    let held = previous.len();
    // Exactly what the snapshot holds after the last commit (a truncated walk keeps the
    // unseen items and adds the new ones): a later read that finds fewer knows that
    // records are lost.
    let item_count = if complete {
        count as u64
    } else {
        (held + d.created) as u64
    };
    Ok(Plan {
        report,
        held,
        upserts: d.upserts,
        kinds: d.upsert_kinds,
        removals: d.removals,
        next_upsert: 0,
        next_removal: 0,
        previous,
        emit,
        source: source.name.clone(),
        event_type: source.event_type.clone(),
        routes: source.routes.clone(),
        expected: state.generation,
        item_count,
        collection: collection.or(state.collection),
        now,
        detected: event::detected_text(now),
        done: false,
        chunks: 0,
        baseline_record: !state.initialized,
    })
}

/// The source's stored state and snapshot, refused when the snapshot holds fewer items
/// than the state counts (records lost: each would be reported as created).
fn stored(
    store: &dyn crate::store::Store,
    source: &Source,
) -> Result<(crate::store::SourceState, HashMap<String, Seen>), PollError> {
    let state = store.source_state(&source.name)?;
    let previous = store.snapshot(&source.name)?;
    if (previous.len() as u64) < state.items {
        return Err(PollError::SnapshotDamaged {
            source_name: source.name.clone(),
            found: previous.len(),
            stored: state.items,
            state: store.describe(),
        });
    }
    Ok((state, previous))
}

/// How many of the diff's changes become events (those of the kinds in `emit`).
fn emitted(d: &crate::diff::Diff, emit: &[ChangeKind]) -> usize {
    [
        (ChangeKind::Created, d.created),
        (ChangeKind::Updated, d.updated),
        (ChangeKind::Deleted, d.deleted),
    ]
    .iter()
    .filter(|(kind, _)| emit.contains(kind))
    .map(|(_, n)| n)
    .sum()
}

/// Refuses a poll whose items came in another collection than the one the source
/// holds (an array before, an object now), or whose items are of another JSON type
/// than the held ones, all of one type (objects before, strings now). That is the
/// mark of an error answer sent with status 200, which would otherwise read as every
/// held item deleted and the error's members created.
fn check_shape(
    source: &Source,
    state: &SourceState,
    previous: &HashMap<String, Seen>,
    collection: Option<Collection>,
    kinds: Kinds,
) -> Result<(), PollError> {
    if previous.is_empty() {
        return Ok(());
    }
    let mut held_kinds = Kinds::default();
    for seen in previous.values() {
        if let Some(k) = Kind::of_json(&seen.raw) {
            held_kinds.add(k);
        }
    }
    let held_kind = held_kinds.single();
    let new_collection = match (state.collection, collection) {
        (Some(held), Some(now)) if held != now => Some((held, now)),
        _ => None,
    };
    let new_kind = held_kind.and_then(|k| kinds.other_than(k).map(|other| (k, other)));
    if new_collection.is_none() && new_kind.is_none() {
        return Ok(());
    }
    let describe = |c: Option<Collection>, k: Option<Kind>| {
        let c = c.map_or("a collection", Collection::describe);
        match k {
            Some(k) => format!("{c} of {}", k.plural()),
            None => c.to_string(),
        }
    };
    let found_kind = new_kind.map(|(_, other)| other).or(kinds.single());
    Err(PollError::ShapeChanged {
        url: source.location(),
        source_name: source.name.clone(),
        detail: format!(
            "the response's items at items pointer {:?} are {}, but the {} items this source holds came as {}",
            source.items,
            describe(collection, found_kind),
            previous.len(),
            describe(state.collection, held_kind),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SledStore, Store};
    use serde_json::json;

    fn source(options: &str) -> std::sync::Arc<Source> {
        crate::poll::tests::source_with(&format!("items = \"/items\"\nbaseline = false\n{options}"))
    }

    /// Polls `body` into `store`: (created, updated, deleted).
    fn poll(store: &dyn Store, source: &Source, body: &str) -> (usize, usize, usize) {
        let plan = plan_response(store, source, body.as_bytes(), Utc::now())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = (
            plan.report.created,
            plan.report.updated,
            plan.report.deleted,
        );
        plan.commit_all(store, || {}).unwrap();
        r
    }

    /// Items in canonical text (compact, keys sorted: what serde_json writes) are not
    /// parsed, those in any other form are; either way an item is the same item, with
    /// the same fingerprint and the same stored bytes. Were a text's fingerprint not
    /// that of its canonical form, changing the form alone would read as an update.
    #[test]
    fn an_item_is_the_same_in_canonical_text_and_in_any_other_form() {
        let items = json!({"items": [
            {"id": 1, "name": "apple", "tags": ["a", "b"], "price": 1.5},
            {"id": "two", "name": "pear\n\"ripe\"", "stock": {"count": 3, "at": null}},
        ]});
        let canonical = items.to_string();
        let other_forms = [
            // Pretty: parsed from the first item on.
            serde_json::to_string_pretty(&items).unwrap(),
            // Compact, but keys out of order in the first item.
            canonical.replacen(r#""id":1,"name":"apple""#, r#""name":"apple","id":1"#, 1),
            // Compact, sorted, but a number written another way.
            canonical.replacen("1.5", "1.50", 1),
        ];
        for other in &other_forms {
            assert_ne!(other, &canonical);
            for (first, second) in [(&canonical, other), (other, &canonical)] {
                let dir = tempfile::tempdir().unwrap();
                let store = SledStore::open(dir.path()).unwrap();
                let source = source("");
                assert_eq!(poll(&store, &source, first), (2, 0, 0));
                let stored = store.snapshot("s").unwrap();
                assert_eq!(
                    poll(&store, &source, second),
                    (0, 0, 0),
                    "{first} then {second}"
                );
                assert_eq!(store.snapshot("s").unwrap(), stored);
                assert_eq!(
                    stored["two"].raw,
                    serde_json::to_vec(&items["items"][1]).unwrap()
                );
                // A real change is still one, in either form.
                let changed = first.replacen("apple", "apples", 1);
                assert_eq!(poll(&store, &source, &changed), (0, 1, 0));
            }
        }
    }

    /// With fields ignored the fingerprint leaves them out, so canonical text is parsed
    /// too: a change in an ignored field only is no change.
    #[test]
    fn ignored_fields_are_left_out_of_canonical_text_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let source = source(r#"ignore = ["/seen"]"#);
        let body = |seen: u32, name: &str| {
            json!({"items": [{"id": 1, "name": name, "seen": seen}]}).to_string()
        };
        assert_eq!(poll(&store, &source, &body(1, "a")), (1, 0, 0));
        assert_eq!(poll(&store, &source, &body(2, "a")), (0, 0, 0));
        assert_eq!(poll(&store, &source, &body(3, "b")), (0, 1, 0));
    }
}
