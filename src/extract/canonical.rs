//! Whether an item's JSON text is already in the canonical form the diff fingerprints
//! (`crate::diff::canonical_json`): compact, object keys in byte order at every level,
//! strings escaped and numbers written as serde_json writes them. That is what a
//! serialiser of sorted maps writes in compact mode (serde_json's own `to_vec`, Go's
//! `encoding/json` for maps, jq `-cS`, and so the store's own copies).
//!
//! Such an item needs no parsing: its text is its canonical form, so its fingerprint is
//! the hash of its bytes and the store keeps the bytes as they came. For any other text
//! the scan stops at the first byte where it differs from the canonical form (usually
//! the second: a space, or a key out of order), and the item is parsed as before.

use super::{array_index, number_text};

/// Nesting deeper than this is left to the parser (and its limit of 128 levels).
const MAX_DEPTH: usize = 128;

/// What [`scan`] found in a canonical text.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Id<'t> {
    /// The text of the id at the id pointer: a non-empty string without escapes, or a
    /// number (whose canonical text is the id's text).
    Found(&'t str),
    /// The id pointer names no string or number there, or an empty or escaped string:
    /// the item is parsed, which gives the id or the error that says why not.
    Parse,
}

/// Scans `text` (one JSON value, already validated by serde_json, nothing around it):
/// None if it is not in canonical form; otherwise the id at `id_tokens` inside it (a
/// parsed JSON Pointer; None when the id comes from elsewhere, as an object
/// collection's member names do).
pub(super) fn scan<'t>(text: &'t str, id_tokens: Option<&[String]>) -> Option<Id<'t>> {
    let mut s = Scan {
        text: text.as_bytes(),
        pos: 0,
        id_tokens,
        id: None,
    };
    s.value(0, id_tokens.is_some())?;
    if s.pos != s.text.len() {
        return None;
    }
    let Some((start, end)) = s.id else {
        return Some(Id::Parse);
    };
    // The span lies on ASCII bytes of valid UTF-8 (a quote or a number's ends).
    let id = text.get(start..end)?;
    Some(match id.as_bytes()[0] {
        b'"' if id.len() > 2 && !id.contains('\\') => Id::Found(&id[1..id.len() - 1]),
        b'-' | b'0'..=b'9' => Id::Found(id),
        _ => Id::Parse,
    })
}

struct Scan<'t, 'p> {
    text: &'t [u8],
    pos: usize,
    id_tokens: Option<&'p [String]>,
    /// Where the value at the id pointer starts and ends.
    id: Option<(usize, usize)>,
}

impl Scan<'_, '_> {
    fn next(&mut self) -> Option<u8> {
        let b = *self.text.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    /// One value at `depth`; `on_path` says that its place matches the id pointer's
    /// first `depth` tokens.
    fn value(&mut self, depth: usize, on_path: bool) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        let start = self.pos;
        match self.peek()? {
            b'{' => self.object(depth, on_path)?,
            b'[' => self.array(depth, on_path)?,
            b'"' => {
                self.string()?;
            }
            b'-' | b'0'..=b'9' => self.number()?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            _ => return None,
        }
        if on_path && self.id_tokens.is_some_and(|t| t.len() == depth) {
            self.id = Some((start, self.pos));
        }
        Some(())
    }

    /// The token of the id pointer below `depth`, if the place at `depth` is on it.
    fn token(&self, depth: usize, on_path: bool) -> Option<&str> {
        if !on_path {
            return None;
        }
        self.id_tokens?.get(depth).map(String::as_str)
    }

    fn object(&mut self, depth: usize, on_path: bool) -> Option<()> {
        self.pos += 1;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        let mut previous: Option<(usize, usize)> = None;
        loop {
            let start = self.pos;
            if self.peek()? != b'"' || self.string()? {
                // Keys with escapes would be compared unescaped: left to the parser.
                return None;
            }
            let key = (start + 1, self.pos - 1);
            // Strictly increasing: a repeated key is one member once parsed.
            if let Some((a, b)) = previous {
                if self.text[a..b] >= self.text[key.0..key.1] {
                    return None;
                }
            }
            previous = Some(key);
            if self.next()? != b':' {
                return None;
            }
            let token = self.token(depth, on_path);
            let child = token.is_some_and(|t| t.as_bytes() == &self.text[key.0..key.1]);
            self.value(depth + 1, child)?;
            match self.next()? {
                b',' => {}
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize, on_path: bool) -> Option<()> {
        self.pos += 1;
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        let wanted = self.token(depth, on_path).and_then(array_index);
        let mut index = 0;
        loop {
            self.value(depth + 1, wanted == Some(index))?;
            index += 1;
            match self.next()? {
                b',' => {}
                b']' => return Some(()),
                _ => return None,
            }
        }
    }

    /// A string, at its opening quote; whether it holds escapes. None if one of them
    /// is not the one serde_json writes for that character.
    fn string(&mut self) -> Option<bool> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        // `\u00XX` (serde_json's form for the other control
                        // characters) and `\/` are rare: left to the parser.
                        _ => return None,
                    }
                }
                _ => {}
            }
        }
    }

    /// A number: canonical if its text is the one the fingerprint writes for it.
    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        let text = &self.text[start..self.pos];
        if text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            let text = std::str::from_utf8(text).ok()?;
            let n: serde_json::Number = text.parse().ok()?;
            if number_text(&n) != text {
                return None;
            }
        } else if text == b"-0" {
            // Integers are written as they came (the grammar allows no leading zeros
            // or plus sign), except minus zero, which is 0.
            return None;
        }
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        if self.text.get(self.pos..end)? != word {
            return None;
        }
        self.pos = end;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::canonical_json;
    use crate::extract::pointer_tokens;
    use proptest::prelude::*;
    use serde_json::Value;

    fn id_of<'t>(text: &'t str, pointer: &str) -> Option<Id<'t>> {
        scan(text, Some(&pointer_tokens(pointer).unwrap()))
    }

    #[test]
    fn canonical_texts_are_recognised_with_their_ids() {
        let text = r#"{"a":[1,-2,3.5,"x\"y\n"],"b":{"c":true,"d":null},"id":12}"#;
        assert_eq!(id_of(text, "/id"), Some(Id::Found("12")));
        assert_eq!(id_of(text, "/b/c"), Some(Id::Parse));
        assert_eq!(id_of(text, "/a/3"), Some(Id::Parse), "escaped id");
        assert_eq!(id_of(text, "/a/1"), Some(Id::Found("-2")));
        assert_eq!(id_of(text, "/missing"), Some(Id::Parse));
        assert_eq!(
            id_of(r#"{"k":{"id":"abc"}}"#, "/k/id"),
            Some(Id::Found("abc"))
        );
        assert_eq!(id_of(r#"{"id":""}"#, "/id"), Some(Id::Parse), "empty id");
        assert_eq!(id_of(r#""x""#, ""), Some(Id::Found("x")));
        assert_eq!(scan("[]", None), Some(Id::Parse));
    }

    #[test]
    fn other_texts_are_not_canonical() {
        for text in [
            r#"{"b":1,"a":2}"#,
            r#"{"a":1,"a":2}"#,
            r#"{ "a":1}"#,
            "[1, 2]",
            r#"{"a":1.50}"#,
            r#"{"a":1e3}"#,
            r#"{"a":-0}"#,
            r#""\/""#,
            r#""\u0041""#,
            r#"{"\n":1}"#,
        ] {
            assert_eq!(scan(text, None), None, "{text}");
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-c\"\\\\\n\u{1}é]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-cé]{0,3}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Compact text of `v` with every object's members in reverse order.
    fn reversed(v: &Value) -> String {
        let join = |parts: Vec<String>| parts.join(",");
        match v {
            Value::Object(m) => {
                let members = m.iter().rev();
                let members =
                    members.map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), reversed(v)));
                format!("{{{}}}", join(members.collect()))
            }
            Value::Array(a) => format!("[{}]", join(a.iter().map(reversed).collect())),
            other => other.to_string(),
        }
    }

    proptest! {
        // The point of the scan: a text it calls canonical is byte for byte the
        // canonical form of the value it holds (pretty text and members out of order
        // are not), and compact serde_json output of any value without escapes of the
        // rare kinds is one.
        #[test]
        fn a_text_called_canonical_is_its_canonical_form(v in arb_json(), form in 0..3u8) {
            let text = match form {
                0 => v.to_string(),
                1 => serde_json::to_string_pretty(&v).unwrap(),
                _ => reversed(&v),
            };
            let parsed: Value = serde_json::from_str(&text).unwrap();
            match scan(&text, None) {
                Some(_) => prop_assert_eq!(canonical_json(&parsed), text.as_bytes()),
                None => prop_assert!(
                    form != 0 || canonical_json(&parsed) != text.as_bytes() || text.contains("\\u"),
                    "compact text not recognised: {}", text
                ),
            }
        }
    }
}
