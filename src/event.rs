//! Events: the JSON envelope every webhook carries, and its stable id.
//!
//! The id is derived from what was detected, never from the clock or randomness
//! (DESIGN invariant 2): the source, the source's commit generation, the item id, the kind
//! of change and the item's version. A crash before a poll commits leaves the generation
//! and the stored snapshot as they were, so the next poll re-detects the same change under
//! the same id. The generation makes a repeated change (v1 → v2 → v1 → v2) a new event.

use chrono::{DateTime, SecondsFormat, Utc};
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

/// An item in an envelope: parsed, or the compact JSON bytes a [`crate::diff::Seen`]
/// holds (which serde_json wrote from a parsed value, so they are what serialising that
/// value again would write).
#[derive(Debug, Clone, Copy)]
pub enum Json<'a> {
    Value(&'a serde_json::Value),
    Bytes(&'a [u8]),
}

impl Json<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            // Writing a value into a Vec cannot fail: every map key is a string.
            Json::Value(v) => serde_json::to_writer(&mut *out, v).unwrap_or_default(),
            Json::Bytes(b) => out.extend_from_slice(b),
        }
    }
}

/// A change to put in an envelope, its items parsed or as stored bytes.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    pub kind: ChangeKind,
    pub id: &'a str,
    pub object: Json<'a>,
    pub previous: Option<Json<'a>>,
    pub changes: Option<&'a serde_json::Value>,
    pub version: &'a Hash,
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
    let parts = Parts {
        kind: change.kind,
        id: &change.id,
        object: Json::Value(&change.object),
        previous: change.previous.as_ref().map(Json::Value),
        changes: change.changes.as_ref(),
        version: &change.version,
    };
    build_parts(
        source,
        type_prefix,
        generation,
        &parts,
        &detected_text(detected),
    )
}

/// How an envelope writes its detection time; one poll's events share it.
pub fn detected_text(detected: DateTime<Utc>) -> String {
    detected.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// [`build`] from parts, the detection time written by [`detected_text`]. The envelope is
/// written field by field, items as they are: a created or deleted item's stored bytes
/// go in without being parsed (what parsing and writing them again cost was most of a
/// large poll's commit).
pub fn build_parts(
    source: &str,
    type_prefix: &str,
    generation: u64,
    c: &Parts<'_>,
    detected: &str,
) -> Event {
    let id = event_id(source, generation, c.id, c.kind, c.version);
    let event_type = format!("{type_prefix}.{}", c.kind.as_str());
    let size = |j: &Json<'_>| match j {
        Json::Bytes(b) => b.len(),
        Json::Value(_) => 256,
    };
    let mut body = Vec::with_capacity(
        160 + source.len() * 2 + c.id.len() + size(&c.object) + c.previous.as_ref().map_or(0, size),
    );
    // Strings go through serde_json for their escaping; writing into a Vec cannot fail.
    let string = |out: &mut Vec<u8>, s: &str| serde_json::to_writer(out, s).unwrap_or_default();
    body.extend_from_slice(b"{\"id\":");
    string(&mut body, &id);
    body.extend_from_slice(b",\"type\":");
    string(&mut body, &event_type);
    body.extend_from_slice(b",\"timestamp\":");
    string(&mut body, detected);
    body.extend_from_slice(b",\"source\":");
    string(&mut body, source);
    body.extend_from_slice(b",\"data\":{\"id\":");
    string(&mut body, c.id);
    body.extend_from_slice(b",\"object\":");
    c.object.write(&mut body);
    if let Some(p) = &c.previous {
        body.extend_from_slice(b",\"previous\":");
        p.write(&mut body);
    }
    if let Some(changes) = c.changes {
        body.extend_from_slice(b",\"changes\":");
        Json::Value(changes).write(&mut body);
    }
    body.extend_from_slice(b"}}");
    Event {
        id,
        event_type,
        source: source.to_string(),
        item_id: c.id.to_string(),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use serde_json::json;

    // The envelope as serde_json writes it, for `build_parts` to be held to.
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

    #[test]
    fn the_written_envelope_is_what_serde_json_writes() {
        let at = DateTime::parse_from_rfc3339("2026-11-26T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let objects = [
            json!({"id": "1", "name": "plain"}),
            json!({"a\"b": "quote \" and \\ and \n", "ü": "ünïcödé ✓", "n": 18446744073709551617u128.to_string()}),
            serde_json::from_str(r#"{"big": 18446744073709551617, "f": 1.50, "e": 1e400, "neg": -0, "arr": [1, {"x": null}]}"#).unwrap(),
            json!("a string item"),
            json!(null),
        ];
        for (i, object) in objects.iter().enumerate() {
            for kind in [
                ChangeKind::Created,
                ChangeKind::Updated,
                ChangeKind::Deleted,
            ] {
                let previous = (kind != ChangeKind::Created).then(|| json!({"old": i}));
                let changes = (kind == ChangeKind::Updated)
                    .then(|| json!([{"op": "replace", "path": "/x", "value": 1}]));
                let change = Change {
                    kind,
                    id: format!("id \"{i}\" \u{1}"),
                    object: object.clone(),
                    previous: previous.clone(),
                    changes: changes.clone(),
                    version: [i as u8; 32],
                };
                let (source, prefix) = ("s\"ource", "type\\prefix");
                let e = build(source, prefix, 7, &change, at);
                let id = event_id(source, 7, &change.id, kind, &change.version);
                let event_type = format!("{prefix}.{}", kind.as_str());
                let expected = serde_json::to_vec(&Envelope {
                    id: &id,
                    event_type: &event_type,
                    timestamp: "2026-11-26T18:00:00Z".into(),
                    source,
                    data: Data {
                        id: &change.id,
                        object: &change.object,
                        previous: change.previous.as_ref(),
                        changes: change.changes.as_ref(),
                    },
                })
                .unwrap();
                assert_eq!(
                    String::from_utf8(e.body.clone()).unwrap(),
                    String::from_utf8(expected).unwrap()
                );
                // Stored bytes (compact serde_json of the item) give the same envelope.
                let raw = object.to_string().into_bytes();
                let prev_raw = previous.as_ref().map(|p| p.to_string().into_bytes());
                let parts = Parts {
                    kind,
                    id: &change.id,
                    object: Json::Bytes(&raw),
                    previous: prev_raw.as_deref().map(Json::Bytes),
                    changes: changes.as_ref(),
                    version: &change.version,
                };
                let spliced = build_parts(source, prefix, 7, &parts, &detected_text(at));
                assert_eq!(spliced, e);
            }
        }
    }
}
