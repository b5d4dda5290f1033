//! Events: the JSON envelope every webhook carries, and its stable id.
//!
//! The id is derived from what was detected, never from the clock or randomness
//! (DESIGN invariant 2): the source, the source's commit generation, the item id, the kind
//! of change and the item's version. A crash before a poll commits leaves the generation
//! and the stored snapshot as they were, so the next poll re-detects the same change under
//! the same id. The generation makes a repeated change (v1 → v2 → v1 → v2) a new event.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::diff::{Change, ChangeKind, Hash};

/// An event ready to store and send: its id, type and the exact bytes of its body.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    /// `<source>.created`, `<source>.updated` or `<source>.deleted`.
    pub event_type: String,
    pub source: String,
    pub item_id: String,
    /// The JSON envelope; these bytes are sent on every attempt to every target.
    pub body: Vec<u8>,
}

/// `evt_` and 32 hex digits of SHA-256 over the fields that identify one change.
pub fn event_id(
    source: &str,
    generation: u64,
    item_id: &str,
    kind: ChangeKind,
    version: &Hash,
) -> String {
    let mut h = Sha256::new();
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    for part in [
        source.as_bytes(),
        item_id.as_bytes(),
        kind.as_str().as_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(generation.to_be_bytes());
    h.update(version);
    hex_id(&h.finalize())
}

/// The id of one of pollhook's own events (see `health`): the same for the same
/// transition of the same episode of a source or target, so a transition recorded twice
/// (a retry of its write) queues one id. Kept apart from change ids by a prefix no
/// length-prefixed source name begins with.
pub fn health_event_id(subject: &str, episode: u64, event_type: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"pollhook.health\0");
    for part in [subject.as_bytes(), event_type.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(episode.to_be_bytes());
    hex_id(&h.finalize())
}

/// `evt_` and the first 16 bytes of `digest` in hex.
fn hex_id(digest: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(36);
    id.push_str("evt_");
    // By hand: a `format!` per byte was a fifth of building 100,000 events.
    for b in &digest[..16] {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    timestamp: String,
    source: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    id: &'a str,
    object: &'a serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<&'a serde_json::Value>,
}

/// The event of `change`, detected at `detected` by the commit of `generation`; its
/// type is `<type_prefix>.<kind>` (the source's `event_type`, by default its name).
pub fn build(
    source: &str,
    type_prefix: &str,
    generation: u64,
    change: &Change,
    detected: DateTime<Utc>,
) -> Event {
    let id = event_id(source, generation, &change.id, change.kind, &change.version);
    let event_type = format!("{type_prefix}.{}", change.kind.as_str());
    let envelope = Envelope {
        id: &id,
        event_type: &event_type,
        timestamp: detected.to_rfc3339_opts(SecondsFormat::Secs, true),
        source,
        data: Data {
            id: &change.id,
            object: &change.object,
            previous: change.previous.as_ref(),
            changes: change.changes.as_ref(),
        },
    };
    // Serialising borrowed JSON values into a Vec cannot fail: every map key is a string.
    let body = serde_json::to_vec(&envelope).unwrap_or_default();
    Event {
        id,
        event_type,
        source: source.to_string(),
        item_id: change.id.clone(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(kind: ChangeKind, id: &str, version: u8) -> Change {
        Change {
            kind,
            id: id.into(),
            object: json!({"id": id, "name": "n"}),
            previous: (kind != ChangeKind::Created).then(|| json!({"id": id, "name": "o"})),
            changes: (kind == ChangeKind::Updated)
                .then(|| json!([{"op": "replace", "path": "/name", "value": "n"}])),
            version: [version; 32],
        }
    }

    #[test]
    fn ids_are_stable_and_depend_on_every_field() {
        let v = [7u8; 32];
        let base = event_id("s", 1, "42", ChangeKind::Updated, &v);
        assert_eq!(base, event_id("s", 1, "42", ChangeKind::Updated, &v));
        assert!(base.starts_with("evt_") && base.len() == 36);
        // The same as every release gave (computed apart, with Python's hashlib): an
        // upgrade gives a change detected again the id it had.
        assert_eq!(base, "evt_efde8943595270dc12477bfea5d9028a");
        assert_ne!(base, event_id("t", 1, "42", ChangeKind::Updated, &v));
        assert_ne!(base, event_id("s", 2, "42", ChangeKind::Updated, &v));
        assert_ne!(base, event_id("s", 1, "43", ChangeKind::Updated, &v));
        assert_ne!(base, event_id("s", 1, "42", ChangeKind::Created, &v));
        assert_ne!(base, event_id("s", 1, "42", ChangeKind::Updated, &[8; 32]));
        // Field boundaries matter.
        assert_ne!(
            event_id("ab", 1, "c", ChangeKind::Created, &v),
            event_id("a", 1, "bc", ChangeKind::Created, &v)
        );
    }

    #[test]
    fn envelope_has_the_documented_shape() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = build("shop", "shop", 3, &change(ChangeKind::Updated, "42", 1), at);
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["id"], e.id.as_str());
        assert_eq!(v["type"], "shop.updated");
        assert_eq!(v["timestamp"], "2026-11-26T18:00:00Z");
        assert_eq!(v["source"], "shop");
        assert_eq!(v["data"]["id"], "42");
        assert_eq!(v["data"]["object"]["name"], "n");
        assert_eq!(v["data"]["previous"]["name"], "o");
        assert_eq!(v["data"]["changes"][0]["op"], "replace");
        // Field order as documented: id first, data last.
        let text = String::from_utf8(e.body).unwrap();
        assert!(text.starts_with("{\"id\":\"evt_"), "{text}");
        assert!(text.find("\"type\"") < text.find("\"data\""));
    }

    #[test]
    fn created_has_no_previous_or_changes() {
        let e = build(
            "s",
            "s",
            0,
            &change(ChangeKind::Created, "1", 1),
            Utc::now(),
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["type"], "s.created");
        assert!(v["data"].get("previous").is_none() && v["data"].get("changes").is_none());
    }
}
