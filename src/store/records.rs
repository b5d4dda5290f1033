//! How records are laid out in the database. Versioned tree names (`outbox-v1`) let a
//! later release migrate by reading old trees and writing new ones.
//!
//! - `sources-v1`: source name → [`SourceState`] as JSON.
//! - `snap-v1`: source name, 0x00, bucket (u32 big-endian) → the items of that bucket:
//!   repeated `u32 id length, id, 32-byte fingerprint, u32 JSON length, item JSON`, sorted
//!   by id. An item's bucket is FNV-1a-64 of its id modulo the source's bucket count
//!   ([`SourceState::buckets`], chosen by [`buckets_for`] at its first commit and raised
//!   when the source outgrows them). Buckets,
//!   not one key per item, because sled 0.34 holds several KiB of memory per key written:
//!   a 100,000-item baseline as single keys took over 500 MiB. Buckets of about 32 items
//!   keep the rewrite of a poll that changes 1% of a large source to a few MB, and a
//!   small source is one key.
//! - `dead-v1`: target name, 0x00, sequence (u64 big-endian, so keys sort in detection
//!   order) → a delivery record: u32 big-endian header length, header JSON, event body
//!   bytes.
//! - `outbox-v1`: the same single records, and batches of up to 32 records (7 KiB) under one key
//!   with the state of their later attempts next to it (see `sled_outbox.rs`).
//! - `stage-v1`: source name, 0x00, chunk (u32 big-endian), part (u32 big-endian) → part
//!   of the events of one chunk of a poll with more than [`crate::poll::CHUNK`] events,
//!   not yet in the outbox: repeated `u32 record length, delivery record (as in the
//!   outbox), u16 target count, then per target u16 length, name`. Written before the
//!   poll's snapshot commit and moved to the outbox after it (see
//!   `SledStore::commit_poll`). A release before parts wrote a chunk as one value under
//!   the chunk's key, which is read the same way.
//!
//! Snapshot buckets, the records of outbox batches and staged parts of
//! [`super::sled_pack::PACK_MIN`] bytes or more are written LZ4-compressed when that
//! makes them smaller (see `sled_pack.rs`); the layouts above are those unpacked. The 7 KiB limit
//! of batches and parts is of the unpacked bytes, so a leaf of them stays under the size
//! sled writes to a file of its own even when nothing compresses.
//!
//! A name in a key is escaped so that it holds no 0x00 (0x01 → 0x01 0x02, 0x00 → 0x01
//! 0x01) and the first 0x00 ends it: no name's keys are a prefix of another name's, so a
//! prefix scan of one name never reaches another's keys, whatever bytes the name has
//! (`"s\0"` included). The names config validation allows have neither byte, so their
//! keys are the plain name bytes, as in every earlier release.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::diff::Seen;
use crate::event::Event;
use crate::extract::Collection;

use super::StoreError;

/// What the store knows about a source between polls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// Incremented by every commit that changed something; part of event ids.
    pub generation: u64,
    /// Whether a poll has ever committed (the baseline is done).
    pub initialized: bool,
    /// Items held after the last commit.
    pub items: u64,
    /// Snapshot buckets, set at the first commit and raised as the source grows (0
    /// before the first commit).
    pub buckets: u32,
    /// What the items came in at the last commit that saw a collection (None before,
    /// for document sources, and for states written before this was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<Collection>,
    /// Chunks of events the last commit left staged, to be moved to the outbox (a poll
    /// with more than [`crate::poll::CHUNK`] events; 0 once they are, or for a smaller
    /// one). Set by the commit that writes the snapshot, so staged chunks without it are
    /// those of a poll that never committed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub staged: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One event queued for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub target: String,
    /// Position in the outbox: detection order.
    pub seq: u64,
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub item_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, unix milliseconds.
    pub next_at_ms: i64,
    /// When the change was detected, unix milliseconds.
    pub created_ms: i64,
    pub last_error: Option<String>,
    /// The exact bytes to POST.
    pub body: Vec<u8>,
}

/// Where a delivery is: still queued for its target, or given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// In the outbox: its target's worker will (re)try it.
    Pending,
    /// In the dead letters: no more attempts unless replayed.
    Dead,
}

/// One target's queue at a glance, for metrics and the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TargetStats {
    /// Deliveries in the outbox.
    pub pending: u64,
    /// When the first pending delivery in outbox order was detected, unix milliseconds:
    /// how far behind the target is (None when nothing is pending).
    pub oldest_pending_ms: Option<i64>,
    /// Deliveries in the dead letters.
    pub dead: u64,
}

/// A delivery record's header as read back.
#[derive(Deserialize)]
struct Header {
    event_id: String,
    event_type: String,
    source: String,
    item_id: String,
    attempts: u32,
    next_at_ms: i64,
    created_ms: i64,
    #[serde(default)]
    last_error: Option<String>,
}

/// The same header as written, borrowing its strings (the same JSON).
#[derive(Serialize)]
struct HeaderRef<'a> {
    event_id: &'a str,
    event_type: &'a str,
    source: &'a str,
    item_id: &'a str,
    attempts: u32,
    next_at_ms: i64,
    created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<&'a str>,
}

/// The key prefix of every record of `name`: the escaped name, then 0x00.
pub(super) fn prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    for &b in name.as_bytes() {
        match b {
            0 => k.extend_from_slice(&[1, 1]),
            1 => k.extend_from_slice(&[1, 2]),
            b => k.push(b),
        }
    }
    k.push(0);
    k
}

/// The name escaped in `key` before its first 0x00, and the bytes after that 0x00.
/// None if the escaping is broken or the name is not UTF-8.
pub(super) fn split_name(key: &[u8]) -> Option<(Cow<'_, str>, &[u8])> {
    let zero = key.iter().position(|b| *b == 0)?;
    let (escaped, rest) = (&key[..zero], &key[zero + 1..]);
    if !escaped.contains(&1) {
        return Some((Cow::Borrowed(std::str::from_utf8(escaped).ok()?), rest));
    }
    let mut out = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            1 => match bytes.next() {
                Some(1) => 0,
                Some(2) => 1,
                _ => return None,
            },
            b => b,
        });
    }
    Some((Cow::Owned(String::from_utf8(out).ok()?), rest))
}

/// Buckets for a source first seen with `items` items: about 32 items a bucket, a
/// power of two up to 65,536 (a small source is one key). Raised again when the source
/// outgrows [`MAX_PER_BUCKET`].
pub fn buckets_for(items: u64) -> u32 {
    (items / 32).next_power_of_two().clamp(1, 65_536) as u32
}

/// Items a bucket may average before the source's buckets are multiplied (rewritten
/// once, at the commit that crosses it).
pub(super) const MAX_PER_BUCKET: u64 = 256;

/// The bucket of an item id: FNV-1a 64-bit, stable across releases and platforms.
pub(super) fn bucket_of(id: &str, buckets: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(buckets.max(1))) as u32
}

pub(super) fn bucket_key(source: &str, bucket: u32) -> Vec<u8> {
    let mut k = prefix(source);
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

/// One item as stored in a bucket, borrowed from the bucket's bytes or a commit.
pub(super) type Entry<'a> = (&'a [u8; 32], &'a [u8]);

/// Appends the entries of bucket `value` (read under `key`) to `out`.
pub(super) fn decode_bucket<'a>(
    key: &[u8],
    value: &'a [u8],
    out: &mut impl Extend<(&'a str, Entry<'a>)>,
) -> Result<(), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    };
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        *rest = tail;
        Some(head)
    }
    fn take_len(rest: &mut &[u8]) -> Option<usize> {
        let b = take(rest, 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut rest = value;
    let mut items = Vec::new();
    while !rest.is_empty() {
        let cut = || corrupt("bucket record cut short");
        let id_len = take_len(&mut rest).ok_or_else(cut)?;
        let id = take(&mut rest, id_len).ok_or_else(cut)?;
        let id = std::str::from_utf8(id).map_err(|_| corrupt("item id is not UTF-8"))?;
        let hash: &[u8; 32] = take(&mut rest, 32)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(cut)?;
        let raw_len = take_len(&mut rest).ok_or_else(cut)?;
        let raw = take(&mut rest, raw_len).ok_or_else(cut)?;
        items.push((id, (hash, raw)));
    }
    out.extend(items);
    Ok(())
}

/// Encodes the entries of one bucket (an iterator in id order).
pub(super) fn encode_bucket<'a>(entries: impl Iterator<Item = (&'a str, Entry<'a>)>) -> Vec<u8> {
    let mut v = Vec::new();
    for (id, (hash, raw)) in entries {
        v.extend_from_slice(&(id.len() as u32).to_be_bytes());
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(hash);
        v.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        v.extend_from_slice(raw);
    }
    v
}

/// An owned [`Seen`] from a stored entry.
pub(super) fn to_seen((hash, raw): Entry<'_>) -> Seen {
    Seen {
        hash: *hash,
        raw: raw.to_vec(),
    }
}

/// Splits a delivery key into target and sequence.
pub(super) fn split_delivery_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let (target, seq) = split_delivery_key_ref(key)?;
    Ok((target.into_owned(), seq))
}

/// [`split_delivery_key`] borrowing the target from the key (every name config
/// validation allows is stored unescaped): for scans over many keys.
pub(super) fn split_delivery_key_ref(key: &[u8]) -> Result<(Cow<'_, str>, u64), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    };
    let (target, seq) =
        split_name(key).ok_or_else(|| corrupt("no separator, or the target name is not UTF-8"))?;
    let seq: [u8; 8] = seq
        .try_into()
        .map_err(|_| corrupt("sequence is not 8 bytes"))?;
    Ok((target, u64::from_be_bytes(seq)))
}

pub(super) fn encode_delivery(d: &Delivery) -> Vec<u8> {
    encode_parts(
        &HeaderRef {
            event_id: &d.event_id,
            event_type: &d.event_type,
            source: &d.source,
            item_id: &d.item_id,
            attempts: d.attempts,
            next_at_ms: d.next_at_ms,
            created_ms: d.created_ms,
            last_error: d.last_error.as_deref(),
        },
        &d.body,
    )
}

/// The record of a new delivery of `event`, detected at `now_ms`. The target and
/// sequence live in the key, so one record serves every target of the event.
pub(super) fn encode_new_delivery(event: &Event, now_ms: i64) -> Vec<u8> {
    encode_parts(
        &HeaderRef {
            event_id: &event.id,
            event_type: &event.event_type,
            source: &event.source,
            item_id: &event.item_id,
            attempts: 0,
            next_at_ms: now_ms,
            created_ms: now_ms,
            last_error: None,
        },
        &event.body,
    )
}

/// The key of chunk `chunk` of `source`'s staged events.
pub(super) fn stage_key(source: &str, chunk: u32) -> Vec<u8> {
    bucket_key(source, chunk)
}

/// Bytes of one staged part at most (a larger event is a part of its own). sled writes a
/// leaf page (up to 17 keys) larger than a quarter of a log segment to a file of its
/// own at every rewrite; parts of this size keep a leaf of them under it.
pub(super) const STAGE_PART_BYTES: usize = 7 * 1024;

/// The key of part `part` of chunk `chunk` of `source`'s staged events: the chunk's key
/// and the part (u32 big-endian), so a prefix scan of the chunk's key reads its parts in
/// order.
pub(super) fn stage_part_key(source: &str, chunk: u32, part: u32) -> Vec<u8> {
    let mut k = stage_key(source, chunk);
    k.extend_from_slice(&part.to_be_bytes());
    k
}

/// A chunk of events detected at `now_ms`, with their targets, as staged: in parts of
/// about [`STAGE_PART_BYTES`], each a run of whole events.
pub(super) fn encode_staged(
    events: &[(Event, std::sync::Arc<[String]>)],
    now_ms: i64,
) -> Vec<Vec<u8>> {
    let mut parts = Vec::new();
    let mut v = Vec::new();
    for (event, targets) in events {
        let record = encode_new_delivery(event, now_ms);
        v.extend_from_slice(&(record.len() as u32).to_be_bytes());
        v.extend_from_slice(&record);
        // Target names are config names: short, and far fewer than 65,536 per event.
        v.extend_from_slice(&(targets.len() as u16).to_be_bytes());
        for t in targets.iter() {
            v.extend_from_slice(&(t.len() as u16).to_be_bytes());
            v.extend_from_slice(t.as_bytes());
        }
        if v.len() >= STAGE_PART_BYTES {
            parts.push(std::mem::take(&mut v));
        }
    }
    if !v.is_empty() {
        parts.push(v);
    }
    parts
}

/// One staged event: its delivery record (as the outbox stores it) and its targets.
pub(super) type StagedEvent<'a> = (&'a [u8], Vec<&'a str>);

/// The events of a staged chunk read under `key`, in detection order.
pub(super) fn decode_staged<'a>(
    key: &[u8],
    mut value: &'a [u8],
) -> Result<Vec<StagedEvent<'a>>, StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: format!("stage-v1/{}", String::from_utf8_lossy(key)),
        reason: reason.into(),
    };
    fn take<'a>(v: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (v.get(..n)?, v.get(n..)?);
        *v = rest;
        Some(head)
    }
    let len = |v: &mut &[u8], n: usize| -> Option<usize> {
        Some(
            take(v, n)?
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b)),
        )
    };
    let mut out = Vec::new();
    while !value.is_empty() {
        let entry = (|| {
            let n = len(&mut value, 4)?;
            let record = take(&mut value, n)?;
            let count = len(&mut value, 2)?;
            let mut targets = Vec::with_capacity(count);
            for _ in 0..count {
                let n = len(&mut value, 2)?;
                targets.push(std::str::from_utf8(take(&mut value, n)?).ok()?);
            }
            Some((record, targets))
        })();
        out.push(
            entry
                .ok_or_else(|| corrupt("a staged event is cut short or its target is not UTF-8"))?,
        );
    }
    Ok(out)
}

fn encode_parts(header: &HeaderRef<'_>, body: &[u8]) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut v = Vec::with_capacity(4 + h.len() + body.len());
    v.extend_from_slice(&(h.len() as u32).to_be_bytes());
    v.extend_from_slice(&h);
    v.extend_from_slice(body);
    v
}

/// A delivery record decoded up to its header; the body is still borrowed from the
/// stored value, so a scan that only needs headers copies no bodies.
pub(super) struct Record<'a> {
    target: String,
    seq: u64,
    header: Header,
    body: &'a [u8],
}

impl Record<'_> {
    pub(super) fn event_id(&self) -> &str {
        &self.header.event_id
    }

    pub(super) fn created_ms(&self) -> i64 {
        self.header.created_ms
    }

    /// The record as a later failed attempt left it (see `sled_outbox.rs`).
    pub(super) fn retried(&mut self, retry: &super::sled_outbox::Retry) {
        self.header.attempts = retry.attempts;
        self.header.next_at_ms = retry.next_at_ms;
        self.header.last_error = Some(retry.last_error.clone());
    }

    /// The owned delivery, copying the body.
    pub(super) fn into_delivery(self) -> Delivery {
        let h = self.header;
        Delivery {
            target: self.target,
            seq: self.seq,
            event_id: h.event_id,
            event_type: h.event_type,
            source: h.source,
            item_id: h.item_id,
            attempts: h.attempts,
            next_at_ms: h.next_at_ms,
            created_ms: h.created_ms,
            last_error: h.last_error,
            body: self.body.to_vec(),
        }
    }
}

/// Decodes a delivery record's key and header, borrowing its body from `value`.
pub(super) fn decode_record<'a>(key: &[u8], value: &'a [u8]) -> Result<Record<'a>, StoreError> {
    let (target, seq) = split_delivery_key(key)?;
    decode_record_in(target, seq, value)
}

/// Decodes the header of delivery `seq` of `target` (its record `value`, wherever it is
/// stored), borrowing its body.
pub(super) fn decode_record_in(
    target: String,
    seq: u64,
    value: &[u8],
) -> Result<Record<'_>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: format!("{target}/{seq}"),
        reason,
    };
    let len: [u8; 4] = value
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("record shorter than its header length".into()))?;
    let len = u32::from_be_bytes(len) as usize;
    let header_bytes = value
        .get(4..4 + len)
        .ok_or_else(|| corrupt("header runs past the record".into()))?;
    let header: Header =
        serde_json::from_slice(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;
    Ok(Record {
        target,
        seq,
        header,
        body: &value[4 + len..],
    })
}

pub(super) fn decode_delivery(key: &[u8], value: &[u8]) -> Result<Delivery, StoreError> {
    decode_record(key, value).map(Record::into_delivery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_and_reject_truncation() {
        let (h1, h2) = ([1u8; 32], [2u8; 32]);
        let entries = vec![("a", (&h1, &b"{}"[..])), ("b\0c", (&h2, &b"[1]"[..]))];
        let blob = encode_bucket(entries.clone().into_iter());
        let mut back: Vec<(&str, Entry<'_>)> = Vec::new();
        decode_bucket(b"k", &blob, &mut back).unwrap();
        assert_eq!(back, entries);
        let mut none: Vec<(&str, Entry<'_>)> = Vec::new();
        assert!(decode_bucket(b"k", &blob[..blob.len() - 1], &mut none).is_err());
        // The bucket function is part of the layout: pin it.
        assert_eq!(
            bucket_of("", 1024),
            (0xcbf2_9ce4_8422_2325u64 % 1024) as u32
        );
        assert!((0..1000).all(|i| bucket_of(&i.to_string(), 64) < 64));
        assert_eq!(
            (buckets_for(0), buckets_for(10), buckets_for(100_000)),
            (1, 1, 4_096)
        );
        assert_eq!(buckets_for(u64::MAX), 65_536);
    }

    #[test]
    fn delivery_round_trips_and_keys_sort_by_sequence() {
        let d = Delivery {
            target: "hooks".into(),
            seq: 258,
            event_id: "evt_1".into(),
            event_type: "s.created".into(),
            source: "s".into(),
            item_id: "a\0b".into(),
            attempts: 2,
            next_at_ms: 5,
            created_ms: 4,
            last_error: Some("HTTP 500".into()),
            body: b"{\"x\":1}".to_vec(),
        };
        let key = super::super::sled_outbox::delivery_key("hooks", 258);
        assert_eq!(decode_delivery(&key, &encode_delivery(&d)).unwrap(), d);
        assert!(decode_delivery(&key, b"\0\0").is_err());
        assert!(decode_delivery(&key, b"\0\0\0\x09{}").is_err());
    }
}
