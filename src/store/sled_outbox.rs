//! The sled outbox: how a commit's deliveries are written, and how they are read back
//! in detection order.
//!
//! A commit writes each target's deliveries in batches of up to [`BATCH_MAX`] (and
//! [`BATCH_BYTES`]) under one key each, not one key per delivery: sled 0.34 spends about
//! 10-20 µs on every key written or removed whatever its size, so 100,000 deliveries
//! as single keys cost seconds to queue and as much again to acknowledge, and 6,000
//! batches a fraction of that. A delivery written alone (a commit's last one for a target
//! that fills no batch, a replayed one) keeps a key of its own.
//!
//! A batch is never rewritten. What happens to its deliveries afterwards goes into its
//! state key, next to it: which are finished (acknowledged or buried) and the attempts,
//! next attempt time and last error of those that failed. When every delivery of a batch
//! is finished, the batch and its state are removed together. A batch's records are
//! packed together (`sled_pack.rs`) behind its table of sequences, which an
//! acknowledgement reads without unpacking them. Each delivery is in
//! exactly one place (its own key, or one batch), so reading the outbox in key order
//! reads it in detection order.
//!
//! Keys (see `records.rs` for the name prefix): a single delivery is `target, 0x00, seq`;
//! a batch is `target, 0x00, seq of its last delivery, b'b'`, its state the same with
//! `b's'`. Keying a batch by its last sequence puts it in a range scan from any of its
//! deliveries, and sorts it after every delivery before it and before every one after.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::records::{decode_record_in, encode_delivery, encode_new_delivery, prefix, Record};
use super::sled_pack::{pack, unpack};
use super::sled_store::{db_err, SledStore};
use super::{Delivery, StoreError};
use crate::event::Event;

/// Deliveries per batch at most (the state's finished set is a `u64` mask).
pub(super) const BATCH_MAX: usize = 32;
/// Bytes of records per batch at most: a larger delivery closes the batch it joins. A
/// leaf page of up to 17 batches stays under the size sled writes to a file of its own
/// (see `state_dir::SEGMENT_SIZE`).
pub(super) const BATCH_BYTES: usize = 7 * 1024;

/// The first bytes of a batch value. A single delivery's value starts with its header's
/// length as a big-endian u32, which is never this large.
const BATCH_MAGIC: [u8; 2] = [0xff, b'B'];

const KIND_BATCH: u8 = b'b';
const KIND_STATE: u8 = b's';

/// What an outbox key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// One delivery, of this sequence.
    Single(u64),
    /// A batch whose last delivery has this sequence.
    Batch(u64),
    /// The state of the batch keyed by this sequence.
    State(u64),
}

/// The key of a single delivery.
pub(super) fn delivery_key(target: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(target);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn slot_key(target: &str, last: u64, kind: u8) -> Vec<u8> {
    let mut k = delivery_key(target, last);
    k.push(kind);
    k
}

/// The first key after every key of `target`.
pub(super) fn target_end(target: &str) -> Vec<u8> {
    let mut end = prefix(target);
    // The byte after 0x00 bounds every key of this target.
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    end
}

/// Splits an outbox key into its target and what it holds.
pub(super) fn split_outbox_key(key: &[u8]) -> Result<(Cow<'_, str>, Slot), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    };
    let (target, rest) = super::records::split_name(key)
        .ok_or_else(|| corrupt("no separator, or the target name is not UTF-8"))?;
    let seq = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or_default());
    let slot = match rest.len() {
        8 => Slot::Single(seq(rest)),
        9 if rest[8] == KIND_BATCH => Slot::Batch(seq(&rest[..8])),
        9 if rest[8] == KIND_STATE => Slot::State(seq(&rest[..8])),
        _ => return Err(corrupt("not a delivery, batch or batch state key")),
    };
    Ok((target, slot))
}

/// One target's deliveries of a commit, gathered into batches as they are added.
#[derive(Default)]
struct Open {
    seqs: Vec<u64>,
    records: Vec<sled::IVec>,
    bytes: usize,
}

/// A commit's writes to the outbox: each target's deliveries in batches.
pub(super) struct OutboxWrite {
    open: std::collections::BTreeMap<String, Open>,
    pub(super) batch: sled::Batch,
}

impl OutboxWrite {
    pub(super) fn new() -> OutboxWrite {
        OutboxWrite {
            open: Default::default(),
            batch: sled::Batch::default(),
        }
    }

    /// Queues `record` (a delivery record) under `seq` for `target`. Sequences must
    /// come in increasing order.
    pub(super) fn push(&mut self, target: &str, seq: u64, record: sled::IVec) {
        let open = match self.open.get_mut(target) {
            Some(open) => open,
            None => self.open.entry(target.to_string()).or_default(),
        };
        open.bytes += record.len();
        open.seqs.push(seq);
        open.records.push(record);
        if open.seqs.len() >= BATCH_MAX || open.bytes >= BATCH_BYTES {
            let full = std::mem::take(open);
            write_open(&mut self.batch, target, full);
        }
    }

    /// The writes, every batch closed.
    pub(super) fn finish(mut self) -> sled::Batch {
        for (target, open) in std::mem::take(&mut self.open) {
            write_open(&mut self.batch, &target, open);
        }
        self.batch
    }
}

fn write_open(batch: &mut sled::Batch, target: &str, open: Open) {
    match open.seqs.len() {
        0 => {}
        1 => batch.insert(delivery_key(target, open.seqs[0]), open.records[0].clone()),
        _ => {
            let last = open.seqs[open.seqs.len() - 1];
            batch.insert(
                slot_key(target, last, KIND_BATCH),
                encode_batch(&open.seqs, &open.records),
            );
        }
    }
}

/// `magic, u32 count, count × u64 seq, count × u32 record length, the records`, the
/// records together packed when that shrinks them (`sled_pack.rs`). The table before
/// them reads without unpacking them, which is all an acknowledgement needs.
fn encode_batch(seqs: &[u64], records: &[sled::IVec]) -> Vec<u8> {
    let body_len: usize = records.iter().map(|r| r.len()).sum();
    let mut body = Vec::with_capacity(body_len);
    for r in records {
        body.extend_from_slice(r);
    }
    let body = pack(body);
    let mut v = Vec::with_capacity(6 + seqs.len() * 12 + body.len());
    v.extend_from_slice(&BATCH_MAGIC);
    v.extend_from_slice(&(seqs.len() as u32).to_be_bytes());
    for s in seqs {
        v.extend_from_slice(&s.to_be_bytes());
    }
    for r in records {
        v.extend_from_slice(&(r.len() as u32).to_be_bytes());
    }
    v.extend_from_slice(&body);
    v
}

/// A batch's table: each delivery's sequence and where its record lies in the records
/// (unpacked), which start at `body_at` in the value.
struct BatchIndex {
    seqs: Vec<u64>,
    ranges: Vec<Range<usize>>,
    body_at: usize,
}

impl BatchIndex {
    /// The records of batch `value` (as [`batch_value`] gives it), unpacked.
    fn records(
        &self,
        target: &str,
        last: u64,
        value: &sled::IVec,
    ) -> Result<sled::IVec, StoreError> {
        let packed = value.subslice(self.body_at, value.len() - self.body_at);
        let body = unpack(packed, || batch_name(target, last))?;
        if body.len() != self.ranges.last().map_or(0, |r| r.end) {
            return Err(corrupt_at(
                target,
                last,
                "batch lengths or sequences do not match",
            ));
        }
        Ok(body)
    }
}

fn batch_name(target: &str, last: u64) -> String {
    format!("outbox-v1/{target}/batch {last}")
}

fn corrupt_at(target: &str, last: u64, reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: batch_name(target, last),
        reason: reason.into(),
    }
}

/// Batch `last` of `target` as stored, its table read.
fn batch_value(
    target: &str,
    last: u64,
    v: sled::IVec,
) -> Result<(BatchIndex, sled::IVec), StoreError> {
    Ok((decode_batch(target, last, &v)?, v))
}

/// Batch value `v` as a release before packing wrote it, if its records are packed.
#[cfg(test)]
pub(super) fn unpacked_batch(key: &[u8], v: &[u8]) -> Option<Vec<u8>> {
    let (target, Slot::Batch(last)) = split_outbox_key(key).ok()? else {
        return None;
    };
    let index = decode_batch(&target, last, v).ok()?;
    if !super::sled_pack::is_packed(&v[index.body_at..]) {
        return None;
    }
    let records = index.records(&target, last, &sled::IVec::from(v)).ok()?;
    Some([&v[..index.body_at], &records[..]].concat())
}

/// Batch `last` of `target`: its table, and its records unpacked (the ranges of the
/// table are theirs).
fn open_batch(
    target: &str,
    last: u64,
    v: sled::IVec,
) -> Result<(BatchIndex, sled::IVec), StoreError> {
    let (index, v) = batch_value(target, last, v)?;
    let records = index.records(target, last, &v)?;
    Ok((index, records))
}

fn decode_batch(target: &str, last: u64, v: &[u8]) -> Result<BatchIndex, StoreError> {
    let cut = || corrupt_at(target, last, "batch record cut short");
    if v.get(..2) != Some(&BATCH_MAGIC[..]) {
        return Err(corrupt_at(target, last, "not a batch record"));
    }
    let n =
        u32::from_be_bytes(v.get(2..6).ok_or_else(cut)?.try_into().unwrap_or_default()) as usize;
    if n == 0 || n > BATCH_MAX.max(64) {
        return Err(corrupt_at(target, last, "batch of an impossible size"));
    }
    let seqs_at = 6;
    let body_at = seqs_at + 12 * n;
    let table = v.get(seqs_at..body_at).ok_or_else(cut)?;
    let (mut seqs, mut ranges) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut at = 0;
    for i in 0..n {
        let s = &table[8 * i..8 * i + 8];
        seqs.push(u64::from_be_bytes(s.try_into().unwrap_or_default()));
        let l = &table[8 * n + 4 * i..8 * n + 4 * i + 4];
        let len = u32::from_be_bytes(l.try_into().unwrap_or_default()) as usize;
        ranges.push(at..at + len);
        at += len;
    }
    if seqs.last() != Some(&last) || seqs.windows(2).any(|w| w[0] >= w[1]) {
        return Err(corrupt_at(
            target,
            last,
            "batch lengths or sequences do not match",
        ));
    }
    Ok(BatchIndex {
        seqs,
        ranges,
        body_at,
    })
}

/// A later attempt's record of a batched delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Retry {
    pub attempts: u32,
    pub next_at_ms: i64,
    pub last_error: String,
}

/// What happened to a batch's deliveries since it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct BatchState {
    /// Bit i: delivery i is finished (acknowledged or buried).
    done: u64,
    /// Deliveries that failed an attempt, by index.
    retries: Vec<(u8, Retry)>,
}

impl BatchState {
    fn decode(target: &str, last: u64, v: &[u8]) -> Result<BatchState, StoreError> {
        let cut = || corrupt_at(target, last, "batch state cut short");
        fn take<'a>(v: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (v.get(..n)?, v.get(n..)?);
            *v = rest;
            Some(head)
        }
        let mut v = v;
        let done = u64::from_be_bytes(
            take(&mut v, 8)
                .ok_or_else(cut)?
                .try_into()
                .unwrap_or_default(),
        );
        let mut retries = Vec::new();
        while !v.is_empty() {
            let head = take(&mut v, 17).ok_or_else(cut)?;
            let index = head[0];
            let attempts = u32::from_be_bytes(head[1..5].try_into().unwrap_or_default());
            let next_at_ms = i64::from_be_bytes(head[5..13].try_into().unwrap_or_default());
            let len = u32::from_be_bytes(head[13..17].try_into().unwrap_or_default()) as usize;
            let error = take(&mut v, len).ok_or_else(cut)?;
            let last_error = String::from_utf8_lossy(error).into_owned();
            retries.push((
                index,
                Retry {
                    attempts,
                    next_at_ms,
                    last_error,
                },
            ));
        }
        Ok(BatchState { done, retries })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.done.to_be_bytes().to_vec();
        for (index, r) in &self.retries {
            v.push(*index);
            v.extend_from_slice(&r.attempts.to_be_bytes());
            v.extend_from_slice(&r.next_at_ms.to_be_bytes());
            v.extend_from_slice(&(r.last_error.len() as u32).to_be_bytes());
            v.extend_from_slice(r.last_error.as_bytes());
        }
        v
    }

    fn is_done(&self, i: usize) -> bool {
        self.done & (1 << i) != 0
    }

    fn retry(&self, i: usize) -> Option<&Retry> {
        self.retries
            .iter()
            .find(|(index, _)| usize::from(*index) == i)
            .map(|(_, r)| r)
    }

    fn finish(&mut self, i: usize) {
        self.done |= 1 << i;
        self.retries.retain(|(index, _)| usize::from(*index) != i);
    }

    fn set_retry(&mut self, i: usize, retry: Retry) {
        self.retries.retain(|(index, _)| usize::from(*index) != i);
        self.retries.push((i as u8, retry));
    }

    fn all_done(&self, n: usize) -> bool {
        self.done.count_ones() as usize >= n
    }
}

/// A pending delivery as stored: the value it is in and where its record lies there.
pub(super) struct Stored {
    pub target: String,
    pub seq: u64,
    value: sled::IVec,
    range: Range<usize>,
    retry: Option<Retry>,
}

impl Stored {
    /// Its record up to the header, the body borrowed; a batched delivery's later
    /// attempts applied.
    pub(super) fn record(&self) -> Result<Record<'_>, StoreError> {
        let mut record = decode_record_in(
            self.target.clone(),
            self.seq,
            &self.value[self.range.clone()],
        )?;
        if let Some(r) = &self.retry {
            record.retried(r);
        }
        Ok(record)
    }

    pub(super) fn delivery(&self) -> Result<Delivery, StoreError> {
        self.record().map(Record::into_delivery)
    }
}

/// The pending deliveries of a key range of the outbox, in key order: by target, then
/// detection order.
pub(super) struct Walk {
    iter: std::iter::Peekable<sled::Iter>,
    ready: VecDeque<Stored>,
    /// Deliveries up to this sequence are skipped (the range starts in a batch).
    after: Option<u64>,
}

impl Walk {
    fn new(iter: sled::Iter, after: Option<u64>) -> Walk {
        Walk {
            iter: iter.peekable(),
            ready: VecDeque::new(),
            after,
        }
    }

    fn expand(&mut self, key: &[u8], value: sled::IVec) -> Result<(), StoreError> {
        let (target, slot) = split_outbox_key(key)?;
        let target = target.into_owned();
        match slot {
            Slot::Single(seq) => self.ready.push_back(Stored {
                target,
                seq,
                range: 0..value.len(),
                value,
                retry: None,
            }),
            Slot::Batch(last) => {
                let (index, value) = open_batch(&target, last, value)?;
                // The state sorts right after its batch.
                let state_key = slot_key(&target, last, KIND_STATE);
                let state = match self.iter.peek() {
                    Some(Ok((k, _))) if k[..] == state_key[..] => {
                        let (_, v) = self.iter.next().and_then(Result::ok).unwrap_or_default();
                        BatchState::decode(&target, last, &v)?
                    }
                    _ => BatchState::default(),
                };
                for (i, (seq, range)) in index.seqs.into_iter().zip(index.ranges).enumerate() {
                    if !state.is_done(i) && self.after.is_none_or(|after| seq > after) {
                        self.ready.push_back(Stored {
                            target: target.clone(),
                            seq,
                            value: value.clone(),
                            range,
                            retry: state.retry(i).cloned(),
                        });
                    }
                }
            }
            // A state whose batch is gone: left by nothing pollhook writes, and holds
            // nothing pending.
            Slot::State(_) => {}
        }
        Ok(())
    }
}

impl Iterator for Walk {
    type Item = Result<Stored, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(s) = self.ready.pop_front() {
                return Some(Ok(s));
            }
            let (k, v) = match self.iter.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(db_err(e))),
            };
            if let Err(e) = self.expand(&k, v) {
                return Some(Err(e));
            }
        }
    }
}

/// Where one pending delivery is.
enum Found {
    Single(Vec<u8>, sled::IVec),
    Batched {
        last: u64,
        index: usize,
        /// The batch's table, and its value as stored (records still packed: an
        /// acknowledgement never unpacks them).
        table: BatchIndex,
        value: sled::IVec,
        /// The batch's state as read to find it.
        state: BatchState,
    },
}

impl SledStore {
    /// The deliveries of `events`, each to its targets, under sequence numbers drawn
    /// now, in batches. The caller holds `enqueue` until they commit.
    pub(super) fn deliveries(
        &self,
        events: &[(Event, Arc<[String]>)],
        now_ms: i64,
    ) -> Result<sled::Batch, StoreError> {
        let mut write = OutboxWrite::new();
        for (event, targets) in events {
            // Ids from generate_id increase across restarts, so outbox keys keep
            // detection order; gaps after a crash are harmless.
            let seq = self.db.generate_id().map_err(db_err)?;
            // Encoded once; every target's batch shares the bytes until written.
            let record = sled::IVec::from(encode_new_delivery(event, now_ms));
            for target in targets.iter() {
                write.push(target, seq, record.clone());
            }
        }
        Ok(write.finish())
    }

    /// The pending deliveries of `target` (every target: None) with sequences above
    /// `after`, in outbox order.
    pub(super) fn walk(&self, target: Option<&str>, after: Option<u64>) -> Walk {
        let iter = match (target, after) {
            (None, _) => self.outbox.iter(),
            (Some(t), None) => self.outbox.range(prefix(t)..target_end(t)),
            (Some(t), Some(seq)) => match seq.checked_add(1) {
                Some(s) => self.outbox.range(delivery_key(t, s)..target_end(t)),
                // An empty range.
                None => self.outbox.range(target_end(t)..target_end(t)),
            },
        };
        Walk::new(iter, after)
    }

    /// Finds pending delivery `seq` of `target`.
    fn find(&self, target: &str, seq: u64) -> Result<Option<Found>, StoreError> {
        let key = delivery_key(target, seq);
        let Some(kv) = self
            .outbox
            .range(key.as_slice()..target_end(target).as_slice())
            .next()
        else {
            return Ok(None);
        };
        let (k, v) = kv.map_err(db_err)?;
        match split_outbox_key(&k)?.1 {
            Slot::Single(s) if s == seq => Ok(Some(Found::Single(key, v))),
            Slot::Batch(last) => {
                let (table, value) = batch_value(target, last, v)?;
                let Some(i) = table.seqs.iter().position(|s| *s == seq) else {
                    return Ok(None);
                };
                let state = self.batch_state(target, last)?;
                if state.is_done(i) {
                    return Ok(None);
                }
                Ok(Some(Found::Batched {
                    last,
                    index: i,
                    table,
                    value,
                    state,
                }))
            }
            _ => Ok(None),
        }
    }

    fn batch_state(&self, target: &str, last: u64) -> Result<BatchState, StoreError> {
        match self
            .outbox
            .get(slot_key(target, last, KIND_STATE))
            .map_err(db_err)?
        {
            Some(v) => BatchState::decode(target, last, &v),
            None => Ok(BatchState::default()),
        }
    }

    /// Writes `state` of batch `last`, or removes the batch with it when every delivery
    /// in it is finished.
    fn put_state(
        batch: &mut sled::Batch,
        target: &str,
        last: u64,
        count: usize,
        state: &BatchState,
    ) {
        if state.all_done(count) {
            batch.remove(slot_key(target, last, KIND_BATCH));
            batch.remove(slot_key(target, last, KIND_STATE));
        } else {
            batch.insert(slot_key(target, last, KIND_STATE), state.encode());
        }
    }

    /// Pending delivery `seq` of `target`, if it is still queued.
    pub(super) fn pending_delivery(
        &self,
        target: &str,
        seq: u64,
    ) -> Result<Option<Delivery>, StoreError> {
        Ok(match self.find(target, seq)? {
            None => None,
            Some(Found::Single(_, v)) => {
                Some(decode_record_in(target.into(), seq, &v)?.into_delivery())
            }
            Some(Found::Batched {
                last,
                index,
                table,
                value,
                state,
            }) => {
                let retry = state.retry(index).cloned();
                let stored = Stored {
                    target: target.into(),
                    seq,
                    value: table.records(target, last, &value)?,
                    range: table.ranges[index].clone(),
                    retry,
                };
                Some(stored.delivery()?)
            }
        })
    }

    /// Removes the acknowledged deliveries `seqs` of `target`, in one write.
    pub(super) fn remove_acked(&self, target: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let _states = self.batch_states.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = sled::Batch::default();
        // The batches touched, by last sequence, with their states as this write leaves
        // them: each is read once and written once.
        let mut touched: std::collections::BTreeMap<u64, (Vec<u64>, BatchState)> =
            Default::default();
        for &seq in seqs {
            // The touched batch holding `seq`, if any: the first whose last is not below.
            if let Some((_, (in_batch, state))) = touched.range_mut(seq..).next() {
                if let Some(i) = in_batch.iter().position(|s| *s == seq) {
                    state.finish(i);
                    continue;
                }
            }
            match self.find(target, seq)? {
                None => {}
                Some(Found::Single(key, _)) => batch.remove(key),
                Some(Found::Batched {
                    last,
                    index,
                    table,
                    mut state,
                    ..
                }) => {
                    state.finish(index);
                    touched.insert(last, (table.seqs, state));
                }
            }
        }
        for (last, (in_batch, state)) in &touched {
            Self::put_state(&mut batch, target, *last, in_batch.len(), state);
        }
        self.outbox.apply_batch(batch).map_err(db_err)
    }

    /// Records a failed attempt of delivery `seq`: its attempts, next attempt and error.
    pub(super) fn record_retry(
        &self,
        target: &str,
        seq: u64,
        retry: Retry,
    ) -> Result<(), StoreError> {
        let _states = self.batch_states.lock().unwrap_or_else(|e| e.into_inner());
        match self.find(target, seq)? {
            // Gone if replay or forget removed it meanwhile, which is not an error.
            None => Ok(()),
            // A delivery is only touched by its target's worker, so read-modify-write
            // is safe.
            Some(Found::Single(key, v)) => {
                let mut d = decode_record_in(target.into(), seq, &v)?.into_delivery();
                d.attempts = retry.attempts;
                d.next_at_ms = retry.next_at_ms;
                d.last_error = Some(retry.last_error);
                self.outbox
                    .insert(key, encode_delivery(&d))
                    .map_err(db_err)?;
                Ok(())
            }
            Some(Found::Batched {
                last,
                index,
                mut state,
                ..
            }) => {
                state.set_retry(index, retry);
                self.outbox
                    .insert(slot_key(target, last, KIND_STATE), state.encode())
                    .map_err(db_err)?;
                Ok(())
            }
        }
    }

    /// Moves delivery `seq` of `target` to the dead letters, with its last attempt.
    pub(super) fn move_to_dead(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        use sled::transaction::ConflictableTransactionError as Abort;
        use sled::Transactional;
        let _states = self.batch_states.lock().unwrap_or_else(|e| e.into_inner());
        let Some(found) = self.find(target, seq)? else {
            return Ok(());
        };
        let (mut d, batched) = match found {
            Found::Single(_, v) => (
                decode_record_in(target.into(), seq, &v)?.into_delivery(),
                None,
            ),
            Found::Batched {
                last,
                index,
                table,
                value,
                mut state,
            } => {
                let stored = Stored {
                    target: target.into(),
                    seq,
                    value: table.records(target, last, &value)?,
                    range: table.ranges[index].clone(),
                    retry: state.retry(index).cloned(),
                };
                let d = stored.delivery()?;
                state.finish(index);
                let mut write = sled::Batch::default();
                Self::put_state(&mut write, target, last, table.seqs.len(), &state);
                (d, Some(write))
            }
        };
        d.attempts = attempts;
        d.last_error = Some(last_error.to_string());
        let dead_record = encode_delivery(&d);
        let key = delivery_key(target, seq);
        let result = (&self.outbox, &self.dead).transaction(|(outbox, dead)| {
            match &batched {
                Some(write) => outbox.apply_batch(write)?,
                None => {
                    if outbox.remove(key.as_slice())?.is_none() {
                        return Ok(());
                    }
                }
            }
            dead.insert(key.as_slice(), dead_record.as_slice())?;
            Ok::<_, Abort<StoreError>>(())
        });
        result.map_err(super::sled_store::tx_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_sort_between_the_deliveries_around_them() {
        let before = delivery_key("t", 9);
        let batch = slot_key("t", 10, KIND_BATCH);
        let state = slot_key("t", 10, KIND_STATE);
        let after = delivery_key("t", 11);
        assert!(before < delivery_key("t", 10));
        assert!(delivery_key("t", 10) < batch && batch < state && state < after);
        assert!(state < target_end("t") && target_end("t") <= prefix("t\u{1}"));
        assert_eq!(split_outbox_key(&batch).unwrap().1, Slot::Batch(10));
        assert_eq!(split_outbox_key(&state).unwrap().1, Slot::State(10));
        assert_eq!(split_outbox_key(&after).unwrap().1, Slot::Single(11));
        assert!(split_outbox_key(b"t\0\0\0").is_err());
    }

    #[test]
    fn batches_and_states_round_trip_and_reject_damage() {
        let open = |last, v: &[u8]| open_batch("t", last, sled::IVec::from(v));
        // Small records as they are, and records that pack.
        let long = format!("{{\"id\":1,\"name\":\"{}\"}}", "item ".repeat(200));
        for records in [
            vec![b"abc".to_vec(), b"".to_vec(), b"de".to_vec()],
            vec![long.clone().into_bytes(), Vec::new(), long.into_bytes()],
        ] {
            let records: Vec<sled::IVec> = records.into_iter().map(Into::into).collect();
            let v = encode_batch(&[3, 5, 9], &records);
            let (index, body) = open(9, &v).unwrap();
            assert_eq!(index.seqs, [3, 5, 9]);
            let parts: Vec<&[u8]> = index.ranges.iter().map(|r| &body[r.clone()]).collect();
            let expected: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
            assert_eq!(parts, expected);
            assert!(open(8, &v).is_err(), "the key's sequence is the last");
            assert!(open(9, &v[..v.len() - 1]).is_err());
            // The table reads without the records, as acknowledgements read it.
            let table_only = &v[..6 + 12 * 3];
            assert_eq!(decode_batch("t", 9, table_only).unwrap().seqs, [3, 5, 9]);
        }
        assert!(decode_batch("t", 9, b"\0\0\0\x01x").is_err());

        let mut state = BatchState::default();
        state.set_retry(
            1,
            Retry {
                attempts: 2,
                next_at_ms: -5,
                last_error: "HTTP 503 ✗".into(),
            },
        );
        state.finish(0);
        assert!(state.is_done(0) && !state.is_done(1) && !state.all_done(2));
        let back = BatchState::decode("t", 9, &state.encode()).unwrap();
        assert_eq!(back, state);
        state.finish(1);
        assert!(state.all_done(2) && state.retries.is_empty());
        assert!(BatchState::decode("t", 9, &[0; 7]).is_err());
    }

    #[test]
    fn a_commit_writes_a_key_per_batch_and_finished_batches_leave_nothing() {
        use crate::store::tests::{all_pending, created, events_commit};
        use crate::store::Store;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        // The sequences of each batch in the outbox, in key order.
        let batches = |store: &SledStore| -> Vec<Vec<u64>> {
            let mut out = Vec::new();
            for kv in store.outbox.iter() {
                let (k, v) = kv.unwrap();
                if let (t, Slot::Batch(last)) = split_outbox_key(&k).unwrap() {
                    out.push(open_batch(&t, last, v).unwrap().0.seqs);
                }
            }
            out
        };
        let events = (0..100)
            .map(|i| created("s", 1, &i.to_string(), &["t"]))
            .collect();
        store.commit_poll(events_commit("s", 0, events)).unwrap();
        let b = batches(&store);
        let in_batches: usize = b.iter().map(Vec::len).sum();
        assert!(
            b.len() >= 3 && b.iter().all(|s| s.len() <= BATCH_MAX),
            "{b:?}"
        );
        // Every delivery in a batch but at most a last one alone.
        assert!(in_batches >= 99);
        let keys = store.outbox.len();
        assert_eq!(keys, b.len() + 100 - in_batches);
        // One more delivery alone under its own key.
        let one = vec![created("s", 2, "x", &["t"])];
        store.commit_poll(events_commit("s", 1, one)).unwrap();
        assert_eq!(store.outbox.len(), keys + 1);
        let t = all_pending(&store, "t");
        assert_eq!(t.len(), 101);
        let (first, second) = (&b[0], &b[1]);
        store.reschedule("t", first[1], 1, 5, "HTTP 500").unwrap();
        store.ack("t", first[2]).unwrap();
        assert_eq!(
            store.outbox.len(),
            keys + 2,
            "a state next to the first batch"
        );
        let both: Vec<u64> = first.iter().chain(second).copied().collect();
        store.ack_many("t", &both).unwrap();
        assert_eq!(
            store.outbox.len(),
            keys - 1,
            "two batches gone with their state"
        );
        let rest: Vec<u64> = t
            .iter()
            .map(|d| d.seq)
            .filter(|s| !both.contains(s))
            .collect();
        store.bury("t", rest[0], 3, "HTTP 410").unwrap();
        store.ack_many("t", &rest[1..]).unwrap();
        assert_eq!(store.outbox.len(), 0);
        assert_eq!(store.dead.len(), 1);
    }
}
