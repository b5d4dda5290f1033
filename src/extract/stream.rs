//! Extraction while parsing: walks the response along the items pointer and hands each
//! item to a callback as soon as it is parsed, so a poll holds one item at a time
//! instead of the whole document as a `serde_json::Value` (which takes several times
//! the size of the JSON text). Everything outside the path is validated and skipped.
//!
//! The results are those of [`super::extract`] on the parsed document, with one
//! difference: an object collection with a repeated member key is a duplicate id here,
//! where a parsed `Value` would silently keep the last member.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::canonical::{self, Id};
use super::{array_index, describe, item_id, pointer_tokens, Collection, ExtractError, Item};

/// Why [`extract_each`] stopped.
#[derive(Debug)]
pub enum EachError<E> {
    /// The body is not JSON (or has trailing data); the error says where.
    Json(serde_json::Error),
    /// The body is JSON, but the items or their ids are not where the config says.
    Extract(ExtractError),
    /// The callback refused an item.
    Stopped(E),
}

/// What [`extract_each`] found: how many items, in what collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub count: usize,
    pub collection: Collection,
}

/// One item as [`extract_each_text`] hands it on.
#[derive(Debug, Clone, PartialEq)]
pub enum Each<'t> {
    /// The item parsed: its text was not in canonical form.
    Parsed(Item),
    /// The item's JSON text as it is in the body, which is the canonical form
    /// ([`crate::diff::canonical_json`]) of the value it holds: it needs no parsing.
    Canonical { id: String, text: &'t [u8] },
}

/// Parses `body` and calls `each` with every item of the collection at `items_ptr`, in
/// document order; returns how many there were. See [`super::extract`] for the rules.
pub fn extract_each<E>(
    body: &[u8],
    items_ptr: &str,
    id_ptr: &str,
    each: &mut dyn FnMut(Item) -> Result<(), E>,
) -> Result<Found, EachError<E>> {
    walk(body, items_ptr, id_ptr, Sink::Parsed(each))
}

/// [`extract_each`], handing on as text every item whose text is already in canonical
/// form: validated, not parsed. Once an item's text is not, the rest of the document is
/// parsed (a response is written by one serialiser), so a body that is not in that form
/// costs one item's second look.
pub fn extract_each_text<'t, E>(
    body: &'t [u8],
    items_ptr: &str,
    id_ptr: &str,
    each: &mut dyn FnMut(Each<'t>) -> Result<(), E>,
) -> Result<Found, EachError<E>> {
    walk(body, items_ptr, id_ptr, Sink::Texts(each))
}

/// Where a walk hands its items.
enum Sink<'a, 't, E> {
    Parsed(&'a mut dyn FnMut(Item) -> Result<(), E>),
    /// Items as text while they are canonical (`texts` of the walk).
    Texts(&'a mut dyn FnMut(Each<'t>) -> Result<(), E>),
}

fn walk<'t, E>(
    body: &'t [u8],
    items_ptr: &str,
    id_ptr: &str,
    each: Sink<'_, 't, E>,
) -> Result<Found, EachError<E>> {
    let invalid = |which, pointer: &str, reason| {
        EachError::Extract(ExtractError::InvalidPointer {
            which,
            pointer: pointer.to_string(),
            reason,
        })
    };
    let tokens = pointer_tokens(items_ptr).map_err(|r| invalid("items pointer", items_ptr, r))?;
    let id_tokens = pointer_tokens(id_ptr).map_err(|r| invalid("id pointer", id_ptr, r))?;
    let mut walk = Walk {
        items_ptr,
        tokens: &tokens,
        id_ptr,
        id_tokens: &id_tokens,
        texts: matches!(each, Sink::Texts(_)),
        each,
        first_index: HashMap::new(),
        count: 0,
        found: None,
        failure: None,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = At {
        walk: &mut walk,
        depth: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    // A failure recorded by the walk is the real reason the parser was stopped.
    if let Some(failure) = walk.failure {
        return Err(failure);
    }
    parsed.map_err(EachError::Json)?;
    match walk.found {
        Some(Ok(collection)) => Ok(Found {
            count: walk.count,
            collection,
        }),
        Some(Err(e)) => Err(EachError::Extract(e)),
        None => Err(EachError::Extract(ExtractError::ItemsNotFound {
            pointer: items_ptr.to_string(),
            detail: "the response ends before reaching it".into(),
        })),
    }
}

/// The state of one walk through a document.
struct Walk<'a, 's, 't, E> {
    items_ptr: &'a str,
    tokens: &'a [String],
    id_ptr: &'a str,
    id_tokens: &'a [String],
    /// Items are read as text and handed on unparsed while they are canonical.
    texts: bool,
    each: Sink<'s, 't, E>,
    /// id -> position of the item that first had it, to report both on duplicates.
    first_index: HashMap<String, usize>,
    count: usize,
    /// Set once the pointer is resolved: Ok (a collection) or why not.
    found: Option<Result<Collection, ExtractError>>,
    /// Set when the walk stops the parser on purpose.
    failure: Option<EachError<E>>,
}

impl<'t, E> Walk<'_, '_, 't, E> {
    /// Where resolution stands at `depth`, for messages.
    fn here(&self, depth: usize) -> String {
        if depth == 0 {
            return "the top level".into();
        }
        let raw: Vec<&str> = self.items_ptr.split('/').skip(1).take(depth).collect();
        format!("{:?}", format!("/{}", raw.join("/")))
    }

    fn not_found(&mut self, detail: String) {
        self.found.get_or_insert(Err(ExtractError::ItemsNotFound {
            pointer: self.items_ptr.to_string(),
            detail,
        }));
    }

    /// Takes one parsed item; an error stops the parser (the reason is kept in
    /// `failure`). `key` is an object collection's member name, which is the id.
    fn item<D: de::Error>(
        &mut self,
        index: usize,
        key: Option<String>,
        value: Value,
    ) -> Result<(), D> {
        let id = match key {
            Some(key) => key,
            None => match item_id(index, &value, self.id_ptr, self.id_tokens) {
                Ok(id) => id,
                Err(e) => return Err(self.fail(EachError::Extract(e))),
            },
        };
        self.counted(index, &id)?;
        let handed = match &mut self.each {
            Sink::Parsed(each) => each(Item { id, value }),
            Sink::Texts(each) => each(Each::Parsed(Item { id, value })),
        };
        handed.map_err(|e| self.fail(EachError::Stopped(e)))
    }

    /// Takes one item read as text: handed on as it is when canonical, else parsed
    /// (and so is the rest of the document).
    fn text_item<D: de::Error>(
        &mut self,
        index: usize,
        key: Option<String>,
        text: &'t str,
    ) -> Result<(), D> {
        let tokens = key.is_none().then_some(self.id_tokens);
        let found = match &self.each {
            Sink::Texts(_) => canonical::scan(text, tokens),
            Sink::Parsed(_) => None,
        };
        let id = match (found, key) {
            (Some(_), Some(key)) => key,
            (Some(Id::Found(id)), None) => id.to_string(),
            (found, key) => {
                if found.is_none() {
                    self.texts = false;
                }
                // serde_json has validated the text; should parsing it still fail
                // (its nesting limit), that is the response's JSON error.
                let value = serde_json::from_str(text).map_err(D::custom)?;
                return self.item(index, key, value);
            }
        };
        self.counted(index, &id)?;
        let handed = match &mut self.each {
            Sink::Texts(each) => each(Each::Canonical {
                id,
                text: text.as_bytes(),
            }),
            // Not reached: `found` is None for this sink.
            Sink::Parsed(_) => Ok(()),
        };
        handed.map_err(|e| self.fail(EachError::Stopped(e)))
    }

    /// Counts an item, refusing an id seen before.
    fn counted<D: de::Error>(&mut self, index: usize, id: &str) -> Result<(), D> {
        if let Some(&first) = self.first_index.get(id) {
            return Err(self.fail(EachError::Extract(ExtractError::DuplicateId {
                id: id.to_string(),
                first,
                second: index,
            })));
        }
        self.first_index.insert(id.to_string(), index);
        self.count += 1;
        Ok(())
    }

    fn fail<D: de::Error>(&mut self, failure: EachError<E>) -> D {
        self.failure = Some(failure);
        D::custom("extraction stopped")
    }
}

/// The walk at one depth of the items pointer.
struct At<'w, 'a, 's, 't, E> {
    walk: &'w mut Walk<'a, 's, 't, E>,
    depth: usize,
}

impl<'de: 't, 't, E> DeserializeSeed<'de> for At<'_, '_, '_, 't, E> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<E> At<'_, '_, '_, '_, E> {
    fn at_target(&self) -> bool {
        self.depth == self.walk.tokens.len()
    }

    /// A scalar where the pointer needed a collection or a container.
    fn scalar(self, what: String) {
        if self.at_target() {
            self.walk
                .found
                .get_or_insert(Err(ExtractError::NotACollection {
                    pointer: self.walk.items_ptr.to_string(),
                    found: what,
                }));
        } else {
            let here = self.walk.here(self.depth);
            let token = &self.walk.tokens[self.depth];
            let detail = format!("{here} is {what}, which has no member {token:?}");
            self.walk.not_found(detail);
        }
    }
}

impl<'de: 't, 't, E> Visitor<'de> for At<'_, '_, '_, 't, E> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<X: de::Error>(self, v: bool) -> Result<(), X> {
        self.scalar(describe(&Value::Bool(v)));
        Ok(())
    }

    fn visit_i64<X: de::Error>(self, v: i64) -> Result<(), X> {
        self.scalar(describe(&Value::from(v)));
        Ok(())
    }

    fn visit_u64<X: de::Error>(self, v: u64) -> Result<(), X> {
        self.scalar(describe(&Value::from(v)));
        Ok(())
    }

    fn visit_f64<X: de::Error>(self, v: f64) -> Result<(), X> {
        self.scalar(describe(&Value::from(v)));
        Ok(())
    }

    fn visit_str<X: de::Error>(self, v: &str) -> Result<(), X> {
        self.scalar(describe(&Value::String(v.to_string())));
        Ok(())
    }

    fn visit_unit<X: de::Error>(self) -> Result<(), X> {
        self.scalar(describe(&Value::Null));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.at_target() {
            self.walk.found = Some(Ok(Collection::Array));
            let mut index = 0;
            loop {
                if self.walk.texts {
                    let Some(text) = seq.next_element::<&'de RawValue>()? else {
                        break;
                    };
                    self.walk.text_item(index, None, text.get())?;
                } else {
                    let Some(element) = seq.next_element::<Value>()? else {
                        break;
                    };
                    self.walk.item(index, None, element)?;
                }
                index += 1;
            }
            return Ok(());
        }
        let token = self.walk.tokens[self.depth].clone();
        let wanted = array_index(&token);
        let mut len = 0;
        loop {
            if Some(len) == wanted {
                let next = At {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                };
                if seq.next_element_seed(next)?.is_none() {
                    break;
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            len += 1;
        }
        let here = self.walk.here(self.depth);
        match wanted {
            Some(i) if i >= len => self.walk.not_found(format!(
                "{here} is an array of {len} elements, index {i} is past its end"
            )),
            Some(_) => {}
            None => self.walk.not_found(format!(
                "{here} is an array and {token:?} is not an array index"
            )),
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.at_target() {
            self.walk.found = Some(Ok(Collection::Object));
            let mut index = 0;
            while let Some(key) = map.next_key::<String>()? {
                if key.is_empty() {
                    let pointer = self.walk.items_ptr.to_string();
                    let e = ExtractError::EmptyKey { index, pointer };
                    return Err(self.walk.fail(EachError::Extract(e)));
                }
                if self.walk.texts {
                    let text = map.next_value::<&'de RawValue>()?;
                    self.walk.text_item(index, Some(key), text.get())?;
                } else {
                    let value = map.next_value::<Value>()?;
                    self.walk.item(index, Some(key), value)?;
                }
                index += 1;
            }
            return Ok(());
        }
        let token = self.walk.tokens[self.depth].clone();
        let mut matched = false;
        while let Some(key) = map.next_key::<String>()? {
            // The first member of that name, as a parsed Value would see the last: a
            // document with repeated keys on the path is malformed either way.
            if !matched && key == token {
                matched = true;
                let next = At {
                    walk: &mut *self.walk,
                    depth: self.depth + 1,
                };
                map.next_value_seed(next)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !matched {
            let here = self.walk.here(self.depth);
            self.walk
                .not_found(format!("{here} is an object with no member {token:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::extract;

    fn both(
        body: &str,
        items: &str,
        id: &str,
    ) -> (Result<Vec<Item>, String>, Result<Vec<Item>, String>) {
        let parsed: Value = serde_json::from_str(body).unwrap();
        let whole = extract(&parsed, items, id).map_err(|e| e.to_string());
        let mut got = Vec::new();
        let streamed = extract_each::<()>(body.as_bytes(), items, id, &mut |i| {
            got.push(i);
            Ok(())
        })
        .map(|_| got)
        .map_err(|e| match e {
            EachError::Extract(e) => e.to_string(),
            other => format!("{other:?}"),
        });
        (whole, streamed)
    }

    #[test]
    fn agrees_with_extract_on_documents() {
        let cases = [
            (
                r#"{"data":[{"id":1,"x":[1,{"y":2}]},{"id":"b"}],"other":{"deep":[[[]]]}}"#,
                "/data",
                "/id",
            ),
            (
                r#"{"meta":{"n":2},"items":{"a":{"v":1},"b":{"v":2}}}"#,
                "/items",
                "/id",
            ),
            (r#"[{"k":{"id":7}},{"k":{"id":8}}]"#, "", "/k/id"),
            (r#"{"a":[0,{"b":[{"id":1}]}]}"#, "/a/1/b", "/id"),
            (r#"{"a~b":{"c/d":[{"id":1}]}}"#, "/a~0b/c~1d", "/id"),
            // Errors: each must be the same error as extract gives.
            (r#"{"data":[{"id":1},{"id":1}]}"#, "/data", "/id"),
            (r#"{"data":[{"id":1},{"name":"x"}]}"#, "/data", "/id"),
            (r#"{"data":[{"id":null}]}"#, "/data", "/id"),
            (r#"{"data":[{"id":""}]}"#, "/data", "/id"),
            (r#"{"data":"oops"}"#, "/data", "/id"),
            (r#"{"data":[1,2]}"#, "/data/5", "/id"),
            (r#"{"data":[1,2]}"#, "/data/x", "/id"),
            (r#"{"other":1}"#, "/data", "/id"),
            (r#"{"data":5}"#, "/data/x", "/id"),
            (r#"{"items":{"":{}}}"#, "/items", "/id"),
        ];
        for (body, items, id) in cases {
            let (whole, streamed) = both(body, items, id);
            assert_eq!(whole, streamed, "{body} {items} {id}");
            assert_eq!(texts(body, items, id).0, streamed, "as text: {body}");
        }
    }

    /// [`extract_each_text`]'s items, canonical ones parsed; and how many were not
    /// parsed by the walk.
    fn texts(body: &str, items: &str, id: &str) -> (Result<Vec<Item>, String>, usize) {
        let mut got = Vec::new();
        let mut canonical = 0;
        let r = extract_each_text::<()>(body.as_bytes(), items, id, &mut |each| {
            got.push(match each {
                Each::Parsed(item) => item,
                Each::Canonical { id, text } => {
                    canonical += 1;
                    let value = serde_json::from_slice(text).unwrap();
                    assert_eq!(crate::diff::canonical_json(&value), text);
                    Item { id, value }
                }
            });
            Ok(())
        });
        let r = r.map(|_| got).map_err(|e| match e {
            EachError::Extract(e) => e.to_string(),
            other => format!("{other:?}"),
        });
        (r, canonical)
    }

    #[test]
    fn canonical_items_are_handed_on_as_text_until_one_is_not() {
        // Canonical throughout: every item as text, ids from the text.
        let (items, canonical) = texts(
            r#"{"data":[{"id":1,"v":[1,2]},{"id":"b","w":{"x":null}},{"id":3}]}"#,
            "/data",
            "/id",
        );
        let ids: Vec<String> = items.unwrap().into_iter().map(|i| i.id).collect();
        assert_eq!(
            (ids, canonical),
            (vec!["1".into(), "b".into(), "3".into()], 3)
        );
        // An object collection: the member names are the ids.
        let (items, canonical) = texts(r#"{"a":{"v":1},"b":{"v":2}}"#, "", "/id");
        assert_eq!((items.unwrap().len(), canonical), (2, 2));
        // An id the text cannot give (escaped) is parsed, and the walk goes on as text.
        let (items, canonical) = texts(r#"[{"id":"a\"b"},{"id":2}]"#, "", "/id");
        assert_eq!(items.unwrap()[0].id, "a\"b");
        assert_eq!(canonical, 1);
        // The second item out of order: it and all after it are parsed.
        let (items, canonical) = texts(r#"[{"id":1},{"v":1,"id":2},{"id":3}]"#, "", "/id");
        assert_eq!((items.unwrap().len(), canonical), (3, 1));
    }

    #[test]
    fn bad_json_is_a_parse_error_even_outside_the_path() {
        for body in [
            r#"{"data":[{"id":1}], "x": [1,}"#,
            r#"{"data":[]} trailing"#,
            "[1",
        ] {
            let r = extract_each::<()>(body.as_bytes(), "/data", "/id", &mut |_| Ok(()));
            assert!(matches!(r, Err(EachError::Json(_))), "{body}: {r:?}");
        }
    }

    #[test]
    fn repeated_member_keys_in_an_object_collection_are_duplicates() {
        let r = extract_each::<()>(br#"{"a":{},"a":{}}"#, "", "/id", &mut |_| Ok(()));
        assert!(
            matches!(r, Err(EachError::Extract(ExtractError::DuplicateId { .. }))),
            "{r:?}"
        );
    }

    #[test]
    fn the_callback_can_stop_the_walk() {
        let mut n = 0;
        let r = extract_each(br#"[{"id":1},{"id":2},{"id":3}]"#, "", "/id", &mut |_| {
            n += 1;
            if n == 2 {
                Err("enough")
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(EachError::Stopped("enough"))));
        assert_eq!(n, 2);
    }

    #[test]
    fn nesting_past_the_parser_limit_is_an_error() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let r = extract_each::<()>(deep.as_bytes(), "", "/id", &mut |_| Ok(()));
        assert!(matches!(r, Err(EachError::Json(_))), "{r:?}");
        // Inside an item read as text too, whether the scan or the parser meets it.
        for item in [deep.clone(), format!(r#"{{"a":{deep}}}"#)] {
            let body = format!(r#"{{"items":[{{"id":1}},{item}]}}"#);
            let r = extract_each_text::<()>(body.as_bytes(), "/items", "/id", &mut |_| Ok(()));
            assert!(matches!(r, Err(EachError::Json(_))), "{r:?}");
        }
    }
}
