//! Which targets take an event, and the bytes each is sent.
//!
//! A target may narrow what it receives with `types` (globs on the event type) and
//! `filter` (a jq predicate on the envelope), and reshape what it is sent with `body` (a
//! jq program from the envelope to the request body, for chat tools and other receivers
//! with a format of their own). All three are applied when an event is queued, never at
//! send time: an event a target does not take is never in its outbox, and the bytes a
//! `body` makes are stored with the delivery, so every attempt sends (and signs) the same
//! bytes, whatever later reloads change.
//!
//! A target that takes everything as the envelope costs nothing here: the events of a
//! source whose targets all do share one target list, as before routing existed.

use std::sync::Arc;

use serde_json::Value;

use crate::event::Event;
use crate::transform::{Transform, TransformError};

/// One of a target's `types`: an event type with `*` standing for any run of characters
/// (`github.issue.*`, `*.deleted`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeGlob(String);

impl TypeGlob {
    /// Checks `glob`: event types are made of letters, digits, `.`, `_` and `-`, so a
    /// glob is too, plus `*`; anything else (`[a-z]`, `{a,b}`, `?`) would never match as
    /// its writer meant, and is refused with the reason.
    pub fn new(glob: &str) -> Result<TypeGlob, String> {
        if glob.is_empty() {
            return Err(
                "an empty glob matches no event type; remove it, or write \"*\" for every type"
                    .into(),
            );
        }
        if let Some(c) = glob
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*')))
        {
            return Err(format!(
                "{glob:?} has {c:?}, which no event type has; a glob is an event type in which \
                 `*` stands for any characters (\"github.issue.*\", \"*.deleted\"), with no other wildcards"
            ));
        }
        Ok(TypeGlob(glob.to_string()))
    }

    /// Whether `event_type` matches: `*` matches any run of characters, dots included;
    /// everything else matches itself.
    pub fn matches(&self, event_type: &str) -> bool {
        let mut parts = self.0.split('*');
        // split always yields at least one part.
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = event_type.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            // No `*`: the whole type must be the glob.
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What one target takes and how it wants it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Accepts {
    /// Globs on the event type; empty: every type.
    pub types: Vec<TypeGlob>,
    /// A jq predicate on the envelope: the event is taken unless it yields `false` or
    /// `null` (jq's truth, as in `select`).
    pub filter: Option<Transform>,
    /// A jq program from the envelope to the request body.
    pub body: Option<Transform>,
    /// Whether the target's `content_type` is JSON (`application/json` or `…+json`):
    /// then `body`'s result is sent as JSON; else a string result is sent as is.
    pub json: bool,
}

impl Accepts {
    /// Every event, as its envelope.
    fn everything(&self) -> bool {
        self.types.is_empty() && self.filter.is_none() && self.body.is_none()
    }

    fn takes_type(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|g| g.matches(event_type))
    }
}

/// A `filter` or `body` that failed on one event. The poll that built the event fails
/// with it and commits nothing, so no event is lost or sent in a shape the target did
/// not ask for; the next poll tries again (after a reload with the program fixed).
#[derive(Debug, thiserror::Error)]
#[error("targets.{target}.{key} failed on event {event_id} ({event_type}): {error}; nothing of this poll is committed and the next poll tries again: fix the program (a reload is enough), or try it with `jq` on the envelope from `pollhook dry-run`")]
pub struct RouteError {
    pub target: String,
    /// "filter" or "body".
    pub key: &'static str,
    pub event_id: String,
    pub event_type: String,
    #[source]
    pub error: TransformError,
}

/// The targets one source's (or pollhook's own) events go to, each with what it takes.
/// Cheap to clone; equal when the targets and their rules are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routes {
    /// Every target, in order: the list shared by events that every target takes as
    /// their envelope.
    all: Arc<[String]>,
    /// Each target's rules; empty when every target takes everything.
    rules: Arc<[(String, Accepts)]>,
}

impl Routes {
    /// Routes to `names`, with the rules of each found by `accepts` (a target not found
    /// takes everything).
    pub fn new<'a>(names: &[String], accepts: impl Fn(&str) -> Option<&'a Accepts>) -> Routes {
        let rules: Vec<(String, Accepts)> = names
            .iter()
            .map(|n| (n.clone(), accepts(n).cloned().unwrap_or_default()))
            .collect();
        let plain = rules.iter().all(|(_, a)| a.everything());
        Routes {
            all: names.to_vec().into(),
            rules: if plain {
                Arc::from(Vec::new())
            } else {
                rules.into()
            },
        }
    }

    /// Every target, whether or not it takes a given event.
    pub fn targets(&self) -> &[String] {
        &self.all
    }

    /// These routes to `names` only (those of them it has), each with its rules.
    pub fn only(&self, names: &[String]) -> Routes {
        let kept: Vec<String> = self
            .all
            .iter()
            .filter(|t| names.contains(t))
            .cloned()
            .collect();
        Routes::new(&kept, |n| {
            self.rules.iter().find(|(m, _)| m == n).map(|(_, a)| a)
        })
    }

    /// These routes without `name`.
    pub fn without(&self, name: &str) -> Routes {
        let kept: Vec<String> = self.all.iter().filter(|t| *t != name).cloned().collect();
        self.only(&kept)
    }

    /// Queues `event` in `out`: once with the targets that take its envelope as it is,
    /// and once more for each target with a `body` that takes it, with that target's
    /// bytes (so the stores need not know about bodies: each entry is an event and its
    /// targets). An event no target takes queues nothing.
    pub fn route(
        &self,
        event: Event,
        out: &mut Vec<(Event, Arc<[String]>)>,
    ) -> Result<(), RouteError> {
        if self.rules.is_empty() {
            if !self.all.is_empty() {
                out.push((event, self.all.clone()));
            }
            return Ok(());
        }
        let mut envelope: Option<Value> = None;
        let mut plain: Vec<String> = Vec::new();
        let mut shaped: Vec<(String, Vec<u8>)> = Vec::new();
        for (name, accepts) in self.rules.iter() {
            if !accepts.takes_type(&event.event_type) {
                continue;
            }
            let fail = |key: &'static str, error: TransformError| RouteError {
                target: name.clone(),
                key,
                event_id: event.id.clone(),
                event_type: event.event_type.clone(),
                error,
            };
            if let Some(filter) = &accepts.filter {
                let input = parsed(&mut envelope, &event).clone();
                let verdict = filter.apply(input).map_err(|e| fail("filter", e))?;
                if matches!(verdict, Value::Null | Value::Bool(false)) {
                    continue;
                }
            }
            match &accepts.body {
                None => plain.push(name.clone()),
                Some(program) => {
                    let input = parsed(&mut envelope, &event).clone();
                    let made = program.apply(input).map_err(|e| fail("body", e))?;
                    shaped.push((name.clone(), render(made, accepts.json)));
                }
            }
        }
        if !plain.is_empty() {
            let targets = if plain.len() == self.all.len() {
                self.all.clone()
            } else {
                plain.into()
            };
            out.push((event.clone(), targets));
        }
        for (name, body) in shaped {
            let one = Event {
                body,
                ..event.clone()
            };
            out.push((one, Arc::from(vec![name])));
        }
        Ok(())
    }
}

/// The envelope of `event` as a value, parsed the first time it is asked for.
fn parsed<'a>(envelope: &'a mut Option<Value>, event: &Event) -> &'a Value {
    // The body is the envelope serde_json wrote, so it parses.
    envelope.get_or_insert_with(|| serde_json::from_slice(&event.body).unwrap_or(Value::Null))
}

/// A body program's result as the bytes to send: JSON, or for a target whose
/// content_type is not JSON, a string as it is (anything else still as JSON).
fn render(value: Value, json: bool) -> Vec<u8> {
    match value {
        Value::String(s) if !json => s.into_bytes(),
        // A value made from parsed JSON by a transform (string keys, bounded depth)
        // always serialises.
        v => serde_json::to_vec(&v).unwrap_or_default(),
    }
}

/// Whether a content type is JSON: `application/json` or a `+json` type, parameters
/// (`; charset=utf-8`) aside.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(g: &str) -> TypeGlob {
        TypeGlob::new(g).unwrap()
    }

    #[test]
    fn globs_match_as_written() {
        for (g, yes, no) in [
            (
                "github.issue.*",
                "github.issue.created",
                "github.pull.created",
            ),
            ("*.deleted", "shop.deleted", "shop.deleted.x"),
            ("*", "anything.at.all", ""),
            ("shop.created", "shop.created", "shop.created2"),
            ("a*b*c", "a.x.b.y.c", "a.c.b"),
            ("*issue*", "github.issue.updated", "github.pull.updated"),
            ("a**", "ab", "ba"),
        ] {
            assert!(glob(g).matches(yes), "{g} should match {yes}");
            if !no.is_empty() {
                assert!(!glob(g).matches(no), "{g} should not match {no}");
            }
        }
        // The last part must not overlap the first: "ab*ba" needs 4 characters.
        assert!(!glob("ab*ba").matches("aba"));
        assert!(glob("ab*ba").matches("abba"));
    }

    #[test]
    fn globs_with_other_wildcards_are_refused_with_the_reason() {
        for bad in ["", "github.[a-z]", "a?", "{a,b}.created", "a b"] {
            let e = TypeGlob::new(bad).unwrap_err();
            assert!(e.contains("glob") || e.contains("event type"), "{bad}: {e}");
        }
    }

    fn event(ty: &str, object: Value) -> Event {
        let body = serde_json::to_vec(&serde_json::json!({
            "id": "evt_1", "type": ty, "timestamp": "2026-12-02T00:00:00Z", "source": "s",
            "data": {"id": "1", "object": object},
        }))
        .unwrap();
        Event {
            id: "evt_1".into(),
            event_type: ty.into(),
            source: "s".into(),
            item_id: "1".into(),
            body,
        }
    }

    fn accepts(types: &[&str], filter: Option<&str>, body: Option<&str>, json: bool) -> Accepts {
        Accepts {
            types: types.iter().map(|g| glob(g)).collect(),
            filter: filter.map(|f| Transform::compile(f).unwrap()),
            body: body.map(|b| Transform::compile(b).unwrap()),
            json,
        }
    }

    fn routes(rules: Vec<(&str, Accepts)>) -> Routes {
        let names: Vec<String> = rules.iter().map(|(n, _)| n.to_string()).collect();
        let rules: Vec<(String, Accepts)> =
            rules.into_iter().map(|(n, a)| (n.to_string(), a)).collect();
        Routes::new(&names, |n| {
            rules.iter().find(|(m, _)| m == n).map(|(_, a)| a)
        })
    }

    fn queued(r: &Routes, e: Event) -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        r.route(e, &mut out).unwrap();
        out.into_iter()
            .map(|(e, t)| (t.to_vec(), String::from_utf8(e.body).unwrap()))
            .collect()
    }

    #[test]
    fn targets_that_take_everything_share_one_list() {
        let r = routes(vec![("a", Accepts::default()), ("b", Accepts::default())]);
        let mut out = Vec::new();
        r.route(event("s.created", Value::Null), &mut out).unwrap();
        r.route(event("s.deleted", Value::Null), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert!(Arc::ptr_eq(&out[0].1, &out[1].1), "one shared list");
        assert_eq!(&*out[0].1, &["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn types_and_filter_choose_the_targets_and_body_makes_its_own_bytes() {
        let r = routes(vec![
            ("all", Accepts::default()),
            ("deletions", accepts(&["*.deleted"], None, None, true)),
            (
                "open",
                accepts(&[], Some(r#".data.object.state == "open""#), None, true),
            ),
            (
                "chat",
                accepts(
                    &["s.*"],
                    None,
                    Some(r#"{text: "\(.type): \(.data.object.title)"}"#),
                    true,
                ),
            ),
            ("ntfy", accepts(&[], None, Some(r#""\(.type)""#), false)),
        ]);
        let open = event(
            "s.created",
            serde_json::json!({"state": "open", "title": "T"}),
        );
        let got = queued(&r, open.clone());
        assert_eq!(got[0].0, ["all", "open"]);
        assert_eq!(got[0].1, String::from_utf8(open.body.clone()).unwrap());
        assert_eq!(
            got[1],
            (vec!["chat".into()], r#"{"text":"s.created: T"}"#.into())
        );
        assert_eq!(got[2], (vec!["ntfy".into()], "s.created".into()));
        assert_eq!(got.len(), 3);

        let closed = event("s.deleted", serde_json::json!({"state": "closed"}));
        let got = queued(&r, closed);
        assert_eq!(got[0].0, ["all", "deletions"]);
        assert_eq!(got[1].1, r#"{"text":"s.deleted: null"}"#);

        // A type no target takes (but `all`), and a filter that is null: not taken.
        let other = event("t.created", serde_json::json!({}));
        let got = queued(&r, other);
        assert_eq!(got[0].0, ["all"]);
        assert_eq!(got[1].0, ["ntfy"]);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn an_event_no_target_takes_queues_nothing() {
        let r = routes(vec![("d", accepts(&["*.deleted"], None, None, true))]);
        assert!(queued(&r, event("s.created", Value::Null)).is_empty());
    }

    #[test]
    fn a_failing_program_names_the_target_key_and_event() {
        let r = routes(vec![(
            "chat",
            accepts(&[], None, Some(".data.object.n + 1"), true),
        )]);
        let mut out = Vec::new();
        let e = r
            .route(event("s.created", serde_json::json!({"n": "x"})), &mut out)
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("targets.chat.body failed on event evt_1 (s.created): jq error"),
            "{text}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn json_content_types() {
        for (ct, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/cloudevents+json", true),
            ("text/plain", false),
            ("text/markdown; charset=utf-8", false),
        ] {
            assert_eq!(is_json_content_type(ct), json, "{ct}");
        }
        // A string sent to a JSON target is a JSON string.
        assert_eq!(render(Value::String("a\"b".into()), true), br#""a\"b""#);
        assert_eq!(render(Value::String("a\"b".into()), false), b"a\"b");
        assert_eq!(render(serde_json::json!({"k": 1}), false), br#"{"k":1}"#);
    }
}
