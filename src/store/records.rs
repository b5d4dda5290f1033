//! How records are laid out in the database. Versioned tree names (`outbox-v1`) let a
//! later release migrate by reading old trees and writing new ones.
//!
//! - `sources-v1`: source name → [`SourceState`] as JSON.
//! - `items-v1`: source name, 0x00, item id → 32-byte fingerprint, then the item's JSON.
//! - `outbox-v1` and `dead-v1`: target name, 0x00, sequence (u64 big-endian, so keys sort
//!   in detection order) → u32 big-endian header length, header JSON, event body bytes.
//!
//! Names cannot contain 0x00 (config validation), so the first 0x00 splits a key.

use serde::{Deserialize, Serialize};

use crate::diff::Seen;

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

#[derive(Serialize, Deserialize)]
struct Header {
    event_id: String,
    event_type: String,
    source: String,
    item_id: String,
    attempts: u32,
    next_at_ms: i64,
    created_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    last_error: Option<String>,
}

pub(super) fn prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

pub(super) fn item_key(source: &str, id: &str) -> Vec<u8> {
    let mut k = prefix(source);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(super) fn delivery_key(target: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(target);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Splits a delivery key into target and sequence.
pub(super) fn split_delivery_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    };
    let zero = key
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("no separator"))?;
    let seq: [u8; 8] = key[zero + 1..]
        .try_into()
        .map_err(|_| corrupt("sequence is not 8 bytes"))?;
    let target = std::str::from_utf8(&key[..zero]).map_err(|_| corrupt("target is not UTF-8"))?;
    Ok((target.to_string(), u64::from_be_bytes(seq)))
}

pub(super) fn encode_seen(seen: &Seen) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + seen.raw.len());
    v.extend_from_slice(&seen.hash);
    v.extend_from_slice(&seen.raw);
    v
}

pub(super) fn decode_seen(key: &[u8], value: &[u8]) -> Result<Seen, StoreError> {
    if value.len() < 32 {
        return Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "item record shorter than its fingerprint".into(),
        });
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&value[..32]);
    Ok(Seen {
        hash,
        raw: value[32..].to_vec(),
    })
}

pub(super) fn encode_delivery(d: &Delivery) -> Vec<u8> {
    encode_parts(
        &Header {
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            source: d.source.clone(),
            item_id: d.item_id.clone(),
            attempts: d.attempts,
            next_at_ms: d.next_at_ms,
            created_ms: d.created_ms,
            last_error: d.last_error.clone(),
        },
        &d.body,
    )
}

fn encode_parts(header: &Header, body: &[u8]) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    let h = serde_json::to_vec(header).unwrap_or_default();
    let mut v = Vec::with_capacity(4 + h.len() + body.len());
    v.extend_from_slice(&(h.len() as u32).to_be_bytes());
    v.extend_from_slice(&h);
    v.extend_from_slice(body);
    v
}

pub(super) fn decode_delivery(key: &[u8], value: &[u8]) -> Result<Delivery, StoreError> {
    let (target, seq) = split_delivery_key(key)?;
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
    let h: Header =
        serde_json::from_slice(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;
    Ok(Delivery {
        target,
        seq,
        event_id: h.event_id,
        event_type: h.event_type,
        source: h.source,
        item_id: h.item_id,
        attempts: h.attempts,
        next_at_ms: h.next_at_ms,
        created_ms: h.created_ms,
        last_error: h.last_error,
        body: value[4 + len..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let key = delivery_key("hooks", 258);
        assert_eq!(decode_delivery(&key, &encode_delivery(&d)).unwrap(), d);
        assert!(delivery_key("hooks", 255) < delivery_key("hooks", 256));
        assert!(decode_delivery(&key, b"\0\0").is_err());
        assert!(decode_delivery(&key, b"\0\0\0\x09{}").is_err());
    }
}
