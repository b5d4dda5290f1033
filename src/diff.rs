//! Compares the items of a poll with what the store holds from the last one
//! and says what was created, updated and deleted. Pure and deterministic: the
//! same inputs always give the same changes in the same order.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::extract::{array_index, pointer_tokens, Item, Kind, Kinds};

/// A sha256 fingerprint of an item's canonical JSON.
pub type Hash = [u8; 32];

/// What the store keeps per item: the fingerprint and the item's JSON as bytes
/// (`serde_json::to_vec` of the full item, ignored fields included).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Fingerprint of the item with the ignored fields removed.
    pub hash: Hash,
    /// The full item as compact JSON.
    pub raw: Vec<u8>,
}

/// The kind of change an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The id was not in the store.
    Created,
    /// The id was in the store with a different fingerprint.
    Updated,
    /// The id was in the store but is missing from this poll.
    Deleted,
}

impl ChangeKind {
    /// The lowercase name used in events and config: "created", "updated", "deleted".
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A config value that is not "created", "updated" or "deleted".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown change kind {0:?}; expected one of \"created\", \"updated\", \"deleted\"")]
pub struct UnknownChangeKind(pub String);

impl FromStr for ChangeKind {
    type Err = UnknownChangeKind;

    /// Parses the exact lowercase names, the same text `as_str` produces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "created" => Ok(ChangeKind::Created),
            "updated" => Ok(ChangeKind::Updated),
            "deleted" => Ok(ChangeKind::Deleted),
            other => Err(UnknownChangeKind(other.to_string())),
        }
    }
}

/// One event to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The item's id.
    pub id: String,
    /// The item now; for `Deleted`, the item as last seen.
    pub object: Value,
    /// The item as last seen; set for `Updated` and `Deleted`.
    pub previous: Option<Value>,
    /// For `Updated`: the RFC 6902 patch from `previous` to `object`
    /// (covering all fields, ignored ones included).
    pub changes: Option<Value>,
    /// `Created`/`Updated`: the new fingerprint; `Deleted`: the last seen one.
    pub version: Hash,
}

impl Change {
    /// A created (`previous` None) or updated item's change, with the patch from
    /// `previous` to `object` for an update; `version` is the new fingerprint.
    pub fn upserted(
        kind: ChangeKind,
        id: String,
        object: Value,
        previous: Option<Value>,
        version: Hash,
    ) -> Change {
        let changes = previous
            .as_ref()
            .map(|old| Value::Array(json_patch(old, &object)));
        Change {
            kind,
            id,
            object,
            previous,
            changes,
            version,
        }
    }

    /// A deleted item's change: the item as last seen, with its last fingerprint.
    pub fn deleted(id: String, last: Value, version: Hash) -> Change {
        Change {
            kind: ChangeKind::Deleted,
            id,
            object: last.clone(),
            previous: Some(last),
            changes: None,
            version,
        }
    }
}

/// The outcome of comparing one poll with the store.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    /// Created and updated items in document order, then deleted ones in ascending id order.
    pub changes: Vec<Change>,
    /// Store writes: every created or updated item, in document order (plus
    /// silent hash refreshes, see [`diff`]). An unchanged poll writes nothing.
    pub upserts: Vec<(String, Seen)>,
    /// What each upsert is, in the same order: `Created`, `Updated`, or None for a
    /// stale fingerprint refreshed silently.
    pub upsert_kinds: Vec<Option<ChangeKind>>,
    /// Ids to delete from the store, ascending.
    pub removals: Vec<String>,
    /// Changes found of each kind, including those not kept in `changes` (see
    /// [`Differ::keep_only`]).
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// Why a diff could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// The store's bytes for an item are not JSON, so there is no previous
    /// object to report. Deleting that id from the store lets the next poll
    /// report it as created.
    #[error("stored state for id {id:?} is corrupt ({reason}); delete that entry from the store to recover")]
    CorruptState {
        /// The item's id.
        id: String,
        /// The JSON parse error.
        reason: String,
    },
    /// More distinct items than the differ may hold (a source's `max_items`).
    #[error("more than {limit} items")]
    TooManyItems { limit: usize },
    /// An item handed over as text ([`Differ::push_text`]) is not JSON: a bug of the
    /// caller, which should pass the text the parser validated.
    #[error("the text given for item {id:?} is not JSON ({reason})")]
    NotJson { id: String, reason: String },
}

/// Writes `s` as a JSON string, escaped exactly as serde_json does.
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Cannot fail: `Vec<u8>`'s io::Write never errors, and serde_json only
    // fails otherwise for maps with non-string keys.
    serde_json::to_writer(out, s).expect("writing a JSON string to a Vec cannot fail");
}

/// Compact JSON with object keys sorted by their UTF-8 bytes at every level,
/// strings escaped and numbers printed as serde_json does. Independent of the
/// member order in `serde_json::Map` (which `preserve_order` would change).
///
/// Iterative, with an explicit stack, so nesting depth costs heap, not call
/// stack. (serde_json's own clone, `==` and printing do recurse; they are
/// bounded by its parser's 128-level limit on the values we get.)
pub fn canonical_json(v: &Value) -> Vec<u8> {
    canonical_without(v, &[])
}

/// [`canonical_json`] of `v` as if every value named by `ignore` (parsed pointers,
/// each non-empty) had been removed, without cloning `v`: the walk skips those
/// members and elements. Pointers refer to `v` as given. Only nodes on the path of
/// some pointer carry the list of pointers still in play; elsewhere it is empty.
fn canonical_without(v: &Value, ignore: &[Vec<String>]) -> Vec<u8> {
    let mut out = Vec::new();
    canonical_into(v, ignore, &mut out);
    out
}

/// [`canonical_without`], appending to `out`.
fn canonical_into(v: &Value, ignore: &[Vec<String>], out: &mut Vec<u8>) {
    enum Work<'a> {
        /// A value, its depth, and the ignore pointers whose prefix is its path.
        Value(&'a Value, usize, Vec<usize>),
        Key(&'a str),
        Byte(u8),
    }
    // Which pointers still apply below a child reached by `token`, or None when one
    // of them names that very child (it is skipped).
    let descend = |active: &[usize], depth: usize, matches: &dyn Fn(&str) -> bool| {
        let mut next = Vec::new();
        for &i in active {
            if matches(&ignore[i][depth]) {
                if ignore[i].len() == depth + 1 {
                    return None;
                }
                next.push(i);
            }
        }
        Some(next)
    };
    let mut stack = vec![Work::Value(v, 0, (0..ignore.len()).collect())];
    while let Some(work) = stack.pop() {
        match work {
            Work::Byte(b) => out.push(b),
            Work::Key(k) => {
                write_json_str(out, k);
                out.push(b':');
            }
            Work::Value(Value::Array(a), depth, active) => {
                out.push(b'[');
                let kept: Vec<(&Value, Vec<usize>)> = a
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        descend(&active, depth, &|t| array_index(t) == Some(i)).map(|n| (e, n))
                    })
                    .collect();
                // Pushed in reverse so they pop in order.
                stack.push(Work::Byte(b']'));
                for (i, (e, next)) in kept.into_iter().enumerate().rev() {
                    stack.push(Work::Value(e, depth + 1, next));
                    if i > 0 {
                        stack.push(Work::Byte(b','));
                    }
                }
            }
            Work::Value(Value::Object(m), depth, active) => {
                out.push(b'{');
                let mut members: Vec<(&String, &Value, Vec<usize>)> = m
                    .iter()
                    .filter_map(|(k, e)| descend(&active, depth, &|t| t == k).map(|n| (k, e, n)))
                    .collect();
                // `str` ordering is byte-wise, i.e. by UTF-8 bytes. serde_json's map
                // is usually sorted already; checking is cheaper than sorting.
                if !members.is_sorted_by(|a, b| a.0 <= b.0) {
                    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
                }
                stack.push(Work::Byte(b'}'));
                for (i, (k, e, next)) in members.into_iter().enumerate().rev() {
                    stack.push(Work::Value(e, depth + 1, next));
                    stack.push(Work::Key(k));
                    if i > 0 {
                        stack.push(Work::Byte(b','));
                    }
                }
            }
            Work::Value(Value::String(s), ..) => write_json_str(out, s),
            Work::Value(Value::Number(n), ..) => {
                out.extend_from_slice(crate::extract::number_text(n).as_bytes())
            }
            Work::Value(Value::Bool(b), ..) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" })
            }
            Work::Value(Value::Null, ..) => out.extend_from_slice(b"null"),
        }
    }
}

/// Parses the ignore pointers once per diff. Every pointer refers to the item as
/// received (skipping happens in one walk, so no removal shifts another's index).
/// Invalid pointers and "" (the root cannot be ignored) are dropped.
fn parse_ignores(ignore: &[String]) -> Vec<Vec<String>> {
    let mut parsed: Vec<Vec<String>> = ignore
        .iter()
        .filter_map(|p| pointer_tokens(p).ok())
        .filter(|t| !t.is_empty())
        .collect();
    parsed.sort();
    parsed.dedup();
    parsed
}

fn fingerprint_parsed(item: &Value, ignore: &[Vec<String>]) -> Hash {
    thread_local! {
        // One buffer per thread, reused: a poll fingerprints every item it sees.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        canonical_into(item, ignore, &mut buf);
        Sha256::digest(&buf[..]).into()
    })
}

/// sha256 over the canonical form (see [`canonical_json`]) of `item` with each
/// `ignore` pointer removed. A pointer that doesn't resolve in this item (or is
/// invalid, or is "" — the root can't be removed) is skipped. Removing "/a/b"
/// from an object removes member b of a; from an array removes that index. All
/// pointers refer to the item as given, not to it after earlier removals.
pub fn fingerprint(item: &Value, ignore: &[String]) -> Hash {
    fingerprint_parsed(item, &parse_ignores(ignore))
}

/// The item `seen` holds, parsed back from its stored bytes.
/// Whether a stored item's bytes are JSON, without building the value (for bytes that go
/// into an envelope as they are).
pub(crate) fn check_seen(id: &str, seen: &Seen) -> Result<(), DiffError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(&seen.raw)
        .map(drop)
        .map_err(|e| DiffError::CorruptState {
            id: id.to_string(),
            reason: e.to_string(),
        })
}

pub(crate) fn parse_seen(id: &str, seen: &Seen) -> Result<Value, DiffError> {
    serde_json::from_slice(&seen.raw).map_err(|e| DiffError::CorruptState {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

/// An item of this poll as the differ was given it.
enum Pushed<'t> {
    Value(Value),
    /// Canonical JSON text.
    Text(&'t [u8]),
}

impl Pushed<'_> {
    /// The bytes the store keeps: compact JSON of the whole item.
    fn bytes(&self) -> Vec<u8> {
        match self {
            // Value's Display is compact serde_json output, i.e. `to_vec`, minus the
            // impossible error case.
            Pushed::Value(value) => value.to_string().into_bytes(),
            Pushed::Text(text) => text.to_vec(),
        }
    }
}

/// An item given as text, parsed.
fn parse_text(id: &str, text: &[u8]) -> Result<Value, DiffError> {
    serde_json::from_slice(text).map_err(|e| DiffError::NotJson {
        id: id.to_string(),
        reason: e.to_string(),
    })
}

/// Compares `current` (this poll's items) with `previous` (what the store
/// holds, id -> [`Seen`]).
///
/// Equality is decided by fingerprint alone, so stored bytes are parsed only
/// for items that changed or were deleted. If `current` repeats an id (which
/// `extract` never produces), only the first occurrence counts.
///
/// If the fingerprints differ but the stored item fingerprints the same as the
/// new one under `ignore` (the stored hash is stale because the ignore list
/// changed), no event is emitted but the entry is upserted with the fresh
/// fingerprint, so later polls go back to comparing hashes only.
pub fn diff(
    previous: &HashMap<String, Seen>,
    current: Vec<Item>,
    ignore: &[String],
) -> Result<Diff, DiffError> {
    let mut differ = Differ::new(previous, ignore);
    for item in current {
        differ.push(item)?;
    }
    differ.finish()
}

/// [`diff`] one item at a time, so a large poll holds only the items that changed
/// (see [`crate::extract::extract_each`]).
pub struct Differ<'a> {
    previous: &'a HashMap<String, Seen>,
    ignore: Vec<Vec<String>>,
    /// Ids of `previous` seen in this poll (borrowed: no copy per item).
    present: HashSet<&'a str>,
    /// New ids seen in this poll, so a repeated one counts once.
    created: HashSet<String>,
    /// Which kinds of change to return in `changes` (all by default).
    keep: Vec<ChangeKind>,
    /// The JSON types of the items pushed.
    kinds: Kinds,
    /// Distinct items a push may bring the count to.
    limit: usize,
    out: Diff,
}

impl<'a> Differ<'a> {
    pub fn new(previous: &'a HashMap<String, Seen>, ignore: &[String]) -> Differ<'a> {
        Differ {
            previous,
            ignore: parse_ignores(ignore),
            present: HashSet::with_capacity(previous.len()),
            created: HashSet::new(),
            keep: vec![
                ChangeKind::Created,
                ChangeKind::Updated,
                ChangeKind::Deleted,
            ],
            kinds: Kinds::default(),
            limit: usize::MAX,
            out: Diff::default(),
        }
    }

    /// Fails the push that would make more than `limit` distinct items
    /// ([`DiffError::TooManyItems`]): what a poll holds grows with them.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Returns only changes of these kinds in `changes`; the others still update the
    /// store (upserts, removals) and the counts. A baseline keeps none, so a first poll
    /// of a large source does not hold every item as a parsed value.
    pub fn keep_only(mut self, kinds: &[ChangeKind]) -> Self {
        self.keep = kinds.to_vec();
        self
    }

    /// Distinct items pushed so far (an id pushed twice, as two pages of a walk may
    /// both hold it, counts once).
    pub fn distinct(&self) -> usize {
        self.present.len() + self.created.len()
    }

    /// The JSON types of the items pushed so far.
    pub fn kinds(&self) -> Kinds {
        self.kinds
    }

    /// Compares one item of this poll with what was seen before.
    pub fn push(&mut self, Item { id, value }: Item) -> Result<(), DiffError> {
        self.kinds.add(Kind::of(&value));
        let hash = fingerprint_parsed(&value, &self.ignore);
        self.compare(id, hash, Pushed::Value(value))
    }

    /// [`Self::push`] for an item given as its JSON text in canonical form (as
    /// [`crate::extract::extract_each_text`] hands it on), whose fingerprint is the hash
    /// of the text and whose stored bytes are the text: it is not parsed, unless fields
    /// are ignored (the fingerprint must leave them out) or the change is kept.
    pub fn push_text(&mut self, id: String, text: &[u8]) -> Result<(), DiffError> {
        if !self.ignore.is_empty() {
            let value = parse_text(&id, text)?;
            return self.push(Item { id, value });
        }
        if let Some(kind) = Kind::of_json(text) {
            self.kinds.add(kind);
        }
        let hash = Sha256::digest(text).into();
        self.compare(id, hash, Pushed::Text(text))
    }

    fn compare(&mut self, id: String, hash: Hash, item: Pushed<'_>) -> Result<(), DiffError> {
        let (kind, old) = match self.previous.get_key_value(&id) {
            None => {
                if !self.created.insert(id.clone()) {
                    return Ok(());
                }
                self.check_limit()?;
                (ChangeKind::Created, None)
            }
            Some((key, seen)) => {
                if !self.present.insert(key.as_str()) {
                    return Ok(());
                }
                self.check_limit()?;
                if seen.hash == hash {
                    return Ok(());
                }
                let old = parse_seen(&id, seen)?;
                if fingerprint_parsed(&old, &self.ignore) == hash {
                    let raw = item.bytes();
                    self.out.upserts.push((id, Seen { hash, raw }));
                    self.out.upsert_kinds.push(None);
                    return Ok(());
                }
                (ChangeKind::Updated, Some(old))
            }
        };
        let raw = item.bytes();
        self.out.upserts.push((id.clone(), Seen { hash, raw }));
        self.out.upsert_kinds.push(Some(kind));
        match kind {
            ChangeKind::Created => self.out.created += 1,
            _ => self.out.updated += 1,
        }
        if !self.keep.contains(&kind) {
            return Ok(());
        }
        let value = match item {
            Pushed::Value(value) => value,
            Pushed::Text(text) => parse_text(&id, text)?,
        };
        self.out
            .changes
            .push(Change::upserted(kind, id, value, old, hash));
        Ok(())
    }

    fn check_limit(&self) -> Result<(), DiffError> {
        if self.distinct() > self.limit {
            return Err(DiffError::TooManyItems { limit: self.limit });
        }
        Ok(())
    }

    /// The changes of the items pushed, without deletions: for a poll that did not see
    /// every item (a page walk cut short), where an item not seen is not a gone one.
    pub fn finish_without_deletions(self) -> Diff {
        self.out
    }

    /// The changes: what was pushed, then a deletion for every previous item not seen.
    pub fn finish(mut self) -> Result<Diff, DiffError> {
        // HashMap iteration order is random; sort for deterministic output.
        let mut gone: Vec<(&String, &Seen)> = self
            .previous
            .iter()
            .filter(|(id, _)| !self.present.contains(id.as_str()))
            .collect();
        gone.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (id, seen) in gone {
            self.out.removals.push(id.clone());
            self.out.deleted += 1;
            if !self.keep.contains(&ChangeKind::Deleted) {
                continue;
            }
            let last = parse_seen(id, seen)?;
            self.out
                .changes
                .push(Change::deleted(id.clone(), last, seen.hash));
        }
        Ok(self.out)
    }
}

/// Escapes a reference token for a JSON Pointer (RFC 6901): `~`→`~0`, `/`→`~1`.
fn escape_token(t: &str) -> String {
    t.replace('~', "~0").replace('/', "~1")
}

/// One patch operation; `value` is cloned because ops own their values.
fn op(name: &str, path: String, value: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("op".to_string(), Value::from(name));
    m.insert("path".to_string(), Value::String(path));
    if let Some(v) = value {
        m.insert("value".to_string(), v.clone());
    }
    Value::Object(m)
}

/// RFC 6902 JSON Patch that turns `from` into `to`.
///
/// Objects recurse per member in sorted key order (`remove` for keys only in
/// `from`, `add` for keys only in `to`, recursion for common keys). Arrays
/// recurse on the common prefix of indexes, then `remove` surplus elements
/// from the end backwards (so indexes stay valid) or `add` new ones at `/n`.
/// Scalars and type changes give `replace`. Equal values give an empty patch;
/// replacing the root is one op with path "". Iterative, like [`canonical_json`].
pub fn json_patch(from: &Value, to: &Value) -> Vec<Value> {
    enum Work<'a> {
        Compare(&'a Value, &'a Value, String),
        Emit(Value),
    }
    let mut ops = Vec::new();
    let mut stack = vec![Work::Compare(from, to, String::new())];
    while let Some(work) = stack.pop() {
        let (a, b, path) = match work {
            Work::Emit(op) => {
                ops.push(op);
                continue;
            }
            Work::Compare(a, b, path) => (a, b, path),
        };
        if a == b {
            continue;
        }
        // Work for this node, in output order; pushed reversed below so a
        // depth-first walk emits exactly what a recursive one would.
        let mut todo = Vec::new();
        match (a, b) {
            (Value::Object(ma), Value::Object(mb)) => {
                let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
                keys.sort_unstable();
                keys.dedup();
                for k in keys {
                    let p = format!("{path}/{}", escape_token(k));
                    todo.push(match (ma.get(k), mb.get(k)) {
                        (Some(x), Some(y)) => Work::Compare(x, y, p),
                        (Some(_), None) => Work::Emit(op("remove", p, None)),
                        (_, Some(y)) => Work::Emit(op("add", p, Some(y))),
                        // Unreachable: every key came from one of the two maps.
                        (None, None) => continue,
                    });
                }
            }
            (Value::Array(xa), Value::Array(xb)) => {
                for (i, (x, y)) in xa.iter().zip(xb).enumerate() {
                    todo.push(Work::Compare(x, y, format!("{path}/{i}")));
                }
                for i in (xb.len()..xa.len()).rev() {
                    todo.push(Work::Emit(op("remove", format!("{path}/{i}"), None)));
                }
                for (i, y) in xb.iter().enumerate().skip(xa.len()) {
                    let p = format!("{path}/{i}");
                    todo.push(Work::Emit(op("add", p, Some(y))));
                }
            }
            // One value written two ways (9.9 and 9.90) is no change.
            (Value::Number(x), Value::Number(y))
                if crate::extract::number_text(x) == crate::extract::number_text(y) => {}
            _ => todo.push(Work::Emit(op("replace", path, Some(b)))),
        }
        stack.extend(todo.into_iter().rev());
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn item(id: &str, value: Value) -> Item {
        Item {
            id: id.to_string(),
            value,
        }
    }

    /// The store as the daemon would leave it after a poll of `items`.
    fn store(items: &[Item], ignore: &[String]) -> HashMap<String, Seen> {
        let seen = |v: &Value| Seen {
            hash: fingerprint(v, ignore),
            raw: serde_json::to_vec(v).unwrap(),
        };
        items
            .iter()
            .map(|i| (i.id.clone(), seen(&i.value)))
            .collect()
    }

    fn ign(ps: &[&str]) -> Vec<String> {
        ps.iter().map(|p| p.to_string()).collect()
    }

    /// A deliberately separate RFC 6902 applier (add/remove/replace), strict
    /// about targets that must exist, to check `json_patch` against.
    fn apply(doc: &mut Value, patch: &[Value]) -> Result<(), String> {
        for op in patch {
            let (name, path) = (op["op"].as_str().unwrap(), op["path"].as_str().unwrap());
            let value = op.get("value").cloned();
            if path.is_empty() {
                *doc = value.ok_or("root: no value")?;
                continue;
            }
            let unescape = |t: &str| t.replace("~1", "/").replace("~0", "~");
            let mut tokens: Vec<String> = path[1..].split('/').map(unescape).collect();
            let last = tokens.pop().unwrap();
            let mut cur = &mut *doc;
            for t in &tokens {
                cur = match cur {
                    Value::Object(m) => m.get_mut(t),
                    Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                    _ => None,
                }
                .ok_or(format!("{path}: no parent"))?;
            }
            let idx = |len: usize| {
                last.parse::<usize>()
                    .ok()
                    .filter(|&i| i < len)
                    .ok_or(format!("{path}: bad index"))
            };
            match (name, cur, value) {
                ("add", Value::Object(m), Some(v)) => drop(m.insert(last, v)),
                ("add", Value::Array(a), Some(v)) => a.insert(idx(a.len() + 1)?, v),
                ("remove", Value::Object(m), None) => {
                    drop(m.remove(&last).ok_or(format!("{path}: absent"))?)
                }
                ("remove", Value::Array(a), None) => drop(a.remove(idx(a.len())?)),
                ("replace", Value::Object(m), Some(v)) => {
                    *m.get_mut(&last).ok_or(format!("{path}: absent"))? = v
                }
                ("replace", Value::Array(a), Some(v)) => {
                    let i = idx(a.len())?;
                    a[i] = v
                }
                _ => return Err(format!("bad op {op}")),
            }
        }
        Ok(())
    }

    /// Checks that `json_patch` gives `want` and that applying it works.
    fn patch_is(from: Value, to: Value, want: &str) {
        let patch = json_patch(&from, &to);
        assert_eq!(
            Value::Array(patch.clone()),
            serde_json::from_str::<Value>(want).unwrap()
        );
        let mut doc = from;
        apply(&mut doc, &patch).unwrap();
        assert_eq!(doc, to, "patch {patch:?}");
    }

    #[test]
    fn created_updated_deleted() {
        let prev = store(
            &[item("u", json!({"v": 1})), item("d", json!({"v": 9}))],
            &[],
        );
        let cur = vec![item("c", json!({"v": 0})), item("u", json!({"v": 2}))];
        let d = diff(&prev, cur, &[]).unwrap();
        let summary: Vec<Value> = (d.changes.iter())
            .map(|c| json!([c.kind.as_str(), c.id, c.object, c.previous, c.changes]))
            .collect();
        // Deleted carries the object as last seen, as both object and previous.
        let want = json!([
            ["created", "c", {"v": 0}, null, null],
            ["updated", "u", {"v": 2}, {"v": 1}, [{"op": "replace", "path": "/v", "value": 2}]],
            ["deleted", "d", {"v": 9}, {"v": 9}, null]
        ]);
        assert_eq!(Value::from(summary), want);
        let fp = |v| fingerprint(&v, &[]);
        let versions: Vec<Hash> = d.changes.iter().map(|c| c.version).collect();
        assert_eq!(
            versions,
            [fp(json!({"v": 0})), fp(json!({"v": 2})), prev["d"].hash]
        );
        let up: Vec<_> = (d.upserts.iter())
            .map(|(id, s)| (id.as_str(), s.clone()))
            .collect();
        let seen = |v, raw: &[u8]| Seen {
            hash: fp(v),
            raw: raw.to_vec(),
        };
        let (c, u) = (
            seen(json!({"v": 0}), br#"{"v":0}"#),
            seen(json!({"v": 2}), br#"{"v":2}"#),
        );
        assert_eq!(up, [("c", c), ("u", u)]);
        assert_eq!(d.removals, ["d"]);
    }

    #[test]
    fn unchanged_poll_writes_nothing_and_parses_nothing() {
        let items = vec![item("a", json!({"x": [1, 2]})), item("b", json!("s"))];
        let mut prev = store(&items, &[]);
        // Garbage bytes behind a matching hash: proves unchanged items aren't parsed.
        prev.get_mut("a").unwrap().raw = b"not json".to_vec();
        assert_eq!(diff(&prev, items, &[]).unwrap(), Diff::default());
    }

    #[test]
    fn ignored_fields() {
        let ignore = ign(&["/updated_at", "/meta/etag"]);
        let prev = store(
            &[item(
                "a",
                json!({"n": 1, "updated_at": 1, "meta": {"etag": "a"}}),
            )],
            &ignore,
        );
        let only_ignored = json!({"n": 1, "updated_at": 2, "meta": {"etag": "b"}});
        assert_eq!(
            diff(&prev, vec![item("a", only_ignored)], &ignore).unwrap(),
            Diff::default()
        );
        let both = json!({"n": 2, "updated_at": 2, "meta": {"etag": "a"}});
        let d = diff(&prev, vec![item("a", both.clone())], &ignore).unwrap();
        assert_eq!(
            (d.changes.len(), d.changes[0].kind),
            (1, ChangeKind::Updated)
        );
        // The patch covers every field, ignored ones included.
        let patch = json!([{"op": "replace", "path": "/n", "value": 2}, {"op": "replace", "path": "/updated_at", "value": 2}]);
        assert_eq!(d.changes[0].changes, Some(patch));
        assert_eq!(d.upserts[0].1.raw, serde_json::to_vec(&both).unwrap());
    }

    #[test]
    fn stale_hash_after_ignore_list_change_is_refreshed_silently() {
        let prev = store(&[item("a", json!({"n": 1, "t": 1}))], &[]);
        let new = json!({"n": 1, "t": 2});
        let d = diff(&prev, vec![item("a", new.clone())], &ign(&["/t"])).unwrap();
        assert!(d.changes.is_empty() && d.removals.is_empty());
        let seen = Seen {
            hash: fingerprint(&new, &ign(&["/t"])),
            raw: serde_json::to_vec(&new).unwrap(),
        };
        assert_eq!(d.upserts, [("a".to_string(), seen)]);
    }

    #[test]
    fn ignore_pointers_refer_to_the_original_item() {
        let v = json!({"a": (0..12).collect::<Vec<_>>(), "b": {"c": 1, "d": 2}, "x~/": 1});
        // "/a/10" sorts before "/a/2" as text; removal must still hit both.
        let expect = json!({"a": [1, 3, 4, 5, 6, 7, 8, 9, 11], "b": {"d": 2}});
        let ignore = ign(&[
            "/a/2", "/a/10", "/a/0", "/a/0", "/b/c", "/x~0~1", "/no/1", "", "bad", "/a/99",
        ]);
        assert_eq!(fingerprint(&v, &ignore), fingerprint(&expect, &[]));
    }

    #[test]
    fn key_order_is_irrelevant_and_canonical_form_is_sorted() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(fingerprint(&a, &[]), fingerprint(&b, &[]));
        assert_ne!(
            fingerprint(&a, &[]),
            fingerprint(&json!({"a": 1, "b": 3}), &[])
        );
        let v = json!({"é": [1.5, null, true], "Z": "q\"\n", "a": {"y": -1, "x": {}}});
        let want = r#"{"Z":"q\"\n","a":{"x":{},"y":-1},"é":[1.5,null,true]}"#;
        assert_eq!(String::from_utf8(canonical_json(&v)).unwrap(), want);
    }

    #[test]
    fn deterministic_order() {
        let prev = store(&["z", "b", "m", "k"].map(|id| item(id, json!(1))), &[]);
        let cur = || {
            vec![
                item("q", json!(1)),
                item("k", json!(2)),
                item("a", json!(1)),
            ]
        };
        let d = diff(&prev, cur(), &[]).unwrap();
        let ids: Vec<_> = d.changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["q", "k", "a", "b", "m", "z"]);
        assert_eq!(d.removals, ["b", "m", "z"]);
        // A map with a different hasher seed iterates differently; same result.
        assert_eq!(
            d,
            diff(&prev.clone().into_iter().collect(), cur(), &[]).unwrap()
        );
    }

    #[test]
    fn repeated_id_in_current_counts_once() {
        let cur = vec![item("a", json!(1)), item("a", json!(2))];
        let d = diff(&HashMap::new(), cur, &[]).unwrap();
        assert_eq!((d.changes.len(), d.upserts.len()), (1, 1));
        assert_eq!(d.changes[0].object, json!(1));
    }

    #[test]
    fn corrupt_state_is_reported_for_changed_and_deleted_items() {
        let mut prev = store(&[item("a", json!(1))], &[]);
        prev.get_mut("a").unwrap().raw = b"{trunc".to_vec();
        let err = diff(&prev, vec![item("a", json!(2))], &[]).unwrap_err();
        assert!(
            matches!(&err, DiffError::CorruptState { id, .. } if id == "a"),
            "{err}"
        );
        let err = diff(&prev, vec![], &[]).unwrap_err();
        assert!(err.to_string().contains("\"a\""), "{err}");
    }

    #[test]
    fn change_kind_strings_round_trip() {
        for k in [
            ChangeKind::Created,
            ChangeKind::Updated,
            ChangeKind::Deleted,
        ] {
            assert_eq!(k.to_string().parse::<ChangeKind>(), Ok(k));
        }
        let err = "Created".parse::<ChangeKind>();
        assert_eq!(err, Err(UnknownChangeKind("Created".into())));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let text = format!("{}1{}", r#"{"a":["#.repeat(60), "]}".repeat(60));
        let v: Value = serde_json::from_str(&text).unwrap(); // depth 120
        assert_ne!(fingerprint(&v, &ign(&["/a/0/a/0/a"])), fingerprint(&v, &[]));
        assert_eq!(canonical_json(&v), text.as_bytes());
        assert!(json_patch(&v, &json!(null)).len() == 1 && json_patch(&v, &v).is_empty());
    }

    #[test]
    fn json_patch_concrete_cases() {
        let (nested_from, nested_to) = (
            json!({"a": {"b": 1, "c": 2}}),
            json!({"a": {"b": 5, "c": 2}}),
        );
        patch_is(
            nested_from,
            nested_to,
            r#"[{"op":"replace","path":"/a/b","value":5}]"#,
        );
        let want = r#"[{"op":"remove","path":"/a~1b"},{"op":"replace","path":"/m~0n","value":2},
            {"op":"add","path":"/x","value":0}]"#;
        patch_is(json!({"a/b": 1, "m~n": 1}), json!({"m~n": 2, "x": 0}), want);
        let want = r#"[{"op":"add","path":"/1","value":2},{"op":"add","path":"/2","value":3}]"#;
        patch_is(json!([1]), json!([1, 2, 3]), want);
        let want = r#"[{"op":"replace","path":"/0","value":9},{"op":"remove","path":"/3"},
            {"op":"remove","path":"/2"}]"#;
        patch_is(json!([0, 1, 2, 3]), json!([9, 1]), want);
        let want = r#"[{"op":"replace","path":"/a","value":{"0":1}}]"#;
        patch_is(json!({"a": [1]}), json!({"a": {"0": 1}}), want);
        patch_is(
            json!(1),
            json!([1]),
            r#"[{"op":"replace","path":"","value":[1]}]"#,
        );
        patch_is(json!({"a": [1, {}]}), json!({"a": [1, {}]}), "[]");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..3).prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a~/é]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                // Few distinct keys, so two random objects share members.
                prop::collection::btree_map("[ab~/]{0,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_items() -> impl Strategy<Value = Vec<Item>> {
        prop::collection::btree_map("[a-e]", arb_json(), 0..5).prop_map(|m| {
            m.into_iter()
                .map(|(id, value)| Item { id, value })
                .collect()
        })
    }

    fn arb_ignore() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop_oneof![".{0,4}", "(/([ab~/]|0|1|~0|~1)){1,3}"], 0..3)
    }

    proptest! {
        #[test]
        fn json_patch_applies(from in arb_json(), to in arb_json()) {
            let patch = json_patch(&from, &to);
            let mut doc = from.clone();
            prop_assert_eq!(apply(&mut doc, &patch), Ok(()));
            prop_assert_eq!(&doc, &to);
            prop_assert_eq!(patch.is_empty(), from == to);
        }

        #[test]
        fn diff_then_store_then_diff_again_is_empty(old in arb_items(), new in arb_items(), ignore in arb_ignore()) {
            let mut prev = store(&old, &ignore);
            let d = diff(&prev, new.clone(), &ignore).unwrap();
            for id in &d.removals {
                prev.remove(id);
            }
            prev.extend(d.upserts);
            prop_assert_eq!(diff(&prev, new, &ignore).unwrap(), Diff::default());
        }

        #[test]
        fn diff_never_panics(prev in prop::collection::hash_map("[a-e]", (any::<[u8; 32]>(), prop_oneof![".*".prop_map(String::into_bytes), arb_json().prop_map(|v| v.to_string().into_bytes())]), 0..5), cur in arb_items(), ignore in arb_ignore()) {
            let prev = prev.into_iter().map(|(id, (hash, raw))| (id, Seen { hash, raw })).collect();
            let _ = diff(&prev, cur, &ignore);
        }
    }
}
