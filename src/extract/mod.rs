//! Pulls the items out of a parsed response document with JSON Pointers
//! (RFC 6901) and gives each one a string id. No I/O: the caller parses the
//! HTTP body and hands us a `serde_json::Value`.

use std::collections::HashMap;

mod canonical;
mod stream;
pub use stream::{extract_each, extract_each_text, Each, EachError, Found};

use serde_json::Value;

/// One item of a poll: its id (unique within the response) and its full JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item's id: a string id as-is, a numeric id as its JSON text.
    pub id: String,
    /// The whole item as it appeared in the response.
    pub value: Value,
}

/// What the items of a response came in: the collection at the items pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Collection {
    /// An array of items, each with its id inside.
    Array,
    /// An object whose members are the items, keyed by id.
    Object,
}

impl Collection {
    /// The collection `v` is, if it is one.
    pub fn of(v: &Value) -> Option<Collection> {
        match v {
            Value::Array(_) => Some(Collection::Array),
            Value::Object(_) => Some(Collection::Object),
            _ => None,
        }
    }

    /// "an array" or "an object", for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Collection::Array => "an array",
            Collection::Object => "an object",
        }
    }
}

/// The JSON type of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

impl Kind {
    pub fn of(v: &Value) -> Kind {
        match v {
            Value::Object(_) => Kind::Object,
            Value::Array(_) => Kind::Array,
            Value::String(_) => Kind::String,
            Value::Number(_) => Kind::Number,
            Value::Bool(_) => Kind::Bool,
            Value::Null => Kind::Null,
        }
    }

    /// The type of the compact JSON text `raw` (as the store keeps items), from its
    /// first byte; None if that is no JSON value's first byte.
    pub fn of_json(raw: &[u8]) -> Option<Kind> {
        Some(match raw.first()? {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b'-' | b'0'..=b'9' => Kind::Number,
            b't' | b'f' => Kind::Bool,
            b'n' => Kind::Null,
            _ => return None,
        })
    }

    /// "objects", "strings", …, for messages.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Object => "objects",
            Kind::Array => "arrays",
            Kind::String => "strings",
            Kind::Number => "numbers",
            Kind::Bool => "booleans",
            Kind::Null => "nulls",
        }
    }
}

/// The types of the items seen so far: a set of [`Kind`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kinds(u8);

impl Kinds {
    pub fn add(&mut self, kind: Kind) {
        self.0 |= 1 << kind as u8;
    }

    /// The one type every item had; None if there were none or several.
    pub fn single(self) -> Option<Kind> {
        let mut kinds = self.iter();
        match (kinds.next(), kinds.next()) {
            (Some(k), None) => Some(k),
            _ => None,
        }
    }

    /// A type some item had other than `kind`, if any.
    pub fn other_than(self, kind: Kind) -> Option<Kind> {
        self.iter().find(|k| *k != kind)
    }

    fn iter(self) -> impl Iterator<Item = Kind> {
        const ALL: [Kind; 6] = [
            Kind::Object,
            Kind::Array,
            Kind::String,
            Kind::Number,
            Kind::Bool,
            Kind::Null,
        ];
        ALL.into_iter()
            .filter(move |k| self.0 & (1 << *k as u8) != 0)
    }
}

/// Why the items could not be pulled out of a response. The messages are meant
/// to be read by an operator: they name the pointer, the position and what was
/// actually found, and hint at the fix.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExtractError {
    /// A configured pointer is not valid RFC 6901 syntax.
    #[error("{which} {pointer:?} is not a valid JSON Pointer: {reason}")]
    InvalidPointer {
        /// Which setting: "items pointer" or "id pointer".
        which: &'static str,
        /// The pointer as configured.
        pointer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The items pointer leads nowhere in this document.
    #[error(
        "items pointer {pointer:?} does not resolve in the response: {detail}; \
         check the items pointer against an actual response body"
    )]
    ItemsNotFound {
        /// The items pointer.
        pointer: String,
        /// Where resolution stopped and what was there.
        detail: String,
    },
    /// The items pointer resolves, but not to an array or object.
    #[error(
        "items pointer {pointer:?} resolves to {found}, but it must point at an array \
         or object holding the items; point it at the collection itself"
    )]
    NotACollection {
        /// The items pointer.
        pointer: String,
        /// A description of the value found, e.g. `a string "oops"`.
        found: String,
    },
    /// An array element has nothing at the id pointer.
    #[error(
        "item at index {index} has no id at id pointer {id_ptr:?} ({detail}); \
         check the id pointer, or whether every item carries an id"
    )]
    MissingId {
        /// Index of the element in the items array.
        index: usize,
        /// The id pointer, relative to the element.
        id_ptr: String,
        /// Where resolution stopped inside the element.
        detail: String,
    },
    /// The id exists but is not a string or a number.
    #[error(
        "item at index {index} has {found} at id pointer {id_ptr:?}; ids must be \
         strings or numbers, so point the id pointer at a string or number field"
    )]
    BadIdType {
        /// Index of the element in the items array.
        index: usize,
        /// The id pointer, relative to the element.
        id_ptr: String,
        /// A description of the value found, e.g. `null`.
        found: String,
    },
    /// An array element's id is the empty string.
    #[error(
        "item at index {index} has an empty string as id at id pointer {id_ptr:?}; \
         ids must be non-empty"
    )]
    EmptyId {
        /// Index of the element in the items array.
        index: usize,
        /// The id pointer, relative to the element.
        id_ptr: String,
    },
    /// An object collection has a member with the empty key, which would be an empty id.
    #[error(
        "the member at position {index} of the object at items pointer {pointer:?} has \
         an empty key; the member keys are the ids, and ids must be non-empty"
    )]
    EmptyKey {
        /// Position of the member in the object.
        index: usize,
        /// The items pointer.
        pointer: String,
    },
    /// Two items share an id.
    #[error(
        "duplicate id {id:?}: the items at index {first} and {second} both have it \
         (string \"1\" and number 1 count as the same id); ids must be unique within \
         one response, so check that the id pointer selects a unique field"
    )]
    DuplicateId {
        /// The shared id.
        id: String,
        /// Index of the first item with that id.
        first: usize,
        /// Index of the second item with that id.
        second: usize,
    },
}

/// A number's text for ids and fingerprints: integers exactly as written (also those
/// beyond 64 bits, which serde_json keeps as text), other numbers as serde_json prints
/// the nearest f64 (`9.90` and `9.9` are one value). The same text earlier releases
/// gave every number they could hold, so stored ids and fingerprints stay valid.
pub fn number_text(n: &serde_json::Number) -> std::borrow::Cow<'_, str> {
    if let Some(i) = n.as_i64() {
        return i.to_string().into();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string().into();
    }
    if n.is_f64() {
        if let Some(f) = n.as_f64().and_then(serde_json::Number::from_f64) {
            return f.to_string().into();
        }
    }
    // An integer beyond 64 bits: its digits.
    n.as_str().into()
}

/// Validates an RFC 6901 pointer string: `""` or starting with `'/'`, and every
/// `'~'` followed by `0` or `1`. Used by config validation; the error is the reason.
pub fn validate_pointer(p: &str) -> Result<(), String> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!(
            "must be empty (the whole document) or start with '/', e.g. \"/{p}\""
        ));
    }
    let bytes = p.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(format!(
                "'~' at byte {i} must be followed by '0' or '1' \
                 (write '~0' for a literal '~' and '~1' for a literal '/')"
            ));
        }
    }
    Ok(())
}

/// Splits a pointer into unescaped reference tokens (`""` gives no tokens).
/// Shared with `diff` so both modules agree on pointer syntax.
pub(crate) fn pointer_tokens(p: &str) -> Result<Vec<String>, String> {
    validate_pointer(p)?;
    // `skip(1)` drops the empty text before the leading '/'. Unescape `~1`
    // before `~0`, as RFC 6901 requires, so that "~01" becomes "~1", not "/".
    Ok(p.split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// RFC 6901 array index: "0" or digits without a leading zero. "-" (past the
/// end) never names an existing element, so it is not an index here.
pub(crate) fn array_index(token: &str) -> Option<usize> {
    let digits_ok = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// Resolves tokens against `root`. On failure, says where it stopped and what
/// was there, relative to `root` (`pointer` is the original text, for messages).
fn resolve<'a>(root: &'a Value, pointer: &str, tokens: &[String]) -> Result<&'a Value, String> {
    let mut cur = root;
    // Raw (still escaped) segments, to quote the prefix that did resolve.
    let raw: Vec<&str> = pointer.split('/').skip(1).collect();
    for (depth, token) in tokens.iter().enumerate() {
        let here = if depth == 0 {
            "the top level".to_string()
        } else {
            format!("{:?}", format!("/{}", raw[..depth].join("/")))
        };
        cur = match cur {
            Value::Object(m) => m
                .get(token)
                .ok_or_else(|| format!("{here} is an object with no member {token:?}"))?,
            Value::Array(a) => match array_index(token) {
                Some(i) if i < a.len() => &a[i],
                Some(i) => {
                    return Err(format!(
                        "{here} is an array of {} elements, index {i} is past its end",
                        a.len()
                    ))
                }
                None => {
                    return Err(format!(
                        "{here} is an array and {token:?} is not an array index"
                    ))
                }
            },
            other => {
                return Err(format!(
                    "{here} is {}, which has no member {token:?}",
                    describe(other)
                ))
            }
        };
    }
    Ok(cur)
}

/// A short description of a value for error messages: its type, and for
/// scalars a (truncated) preview, since "found a string" alone rarely helps.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => {
            let preview: String = s.chars().take(40).collect();
            let more = if preview.len() < s.len() { "..." } else { "" };
            format!("a string ({preview:?}{more})")
        }
        Value::Array(a) => format!("an array of {} elements", a.len()),
        Value::Object(m) => format!("an object with {} members", m.len()),
    }
}

/// The id of the array element at `index`: the string or number at `id_ptr` inside it.
fn item_id(
    index: usize,
    element: &Value,
    id_ptr: &str,
    id_tokens: &[String],
) -> Result<String, ExtractError> {
    let id_value =
        resolve(element, id_ptr, id_tokens).map_err(|detail| ExtractError::MissingId {
            index,
            id_ptr: id_ptr.to_string(),
            detail: format!("inside the item, {detail}"),
        })?;
    let id = match id_value {
        Value::String(s) => s.clone(),
        // A number's id is its JSON text, so 1 and "1" collide (duplicates are caught
        // by the callers) while 1 and 1.0 stay distinct.
        Value::Number(n) => number_text(n).into_owned(),
        other => {
            return Err(ExtractError::BadIdType {
                index,
                id_ptr: id_ptr.to_string(),
                found: describe(other),
            })
        }
    };
    if id.is_empty() {
        return Err(ExtractError::EmptyId {
            index,
            id_ptr: id_ptr.to_string(),
        });
    }
    Ok(id)
}

/// Extracts the items of `doc`.
///
/// `items_ptr` resolves to an array (each element is an item; its id is at
/// `id_ptr` inside the element) or an object (each member is an item; the
/// member key is the id and `id_ptr` is unused). `""` means the whole document.
/// Items come back in document order (for objects: member order as serde_json
/// gives it).
pub fn extract(doc: &Value, items_ptr: &str, id_ptr: &str) -> Result<Vec<Item>, ExtractError> {
    let invalid = |which, pointer: &str, reason| ExtractError::InvalidPointer {
        which,
        pointer: pointer.to_string(),
        reason,
    };
    let items_tokens =
        pointer_tokens(items_ptr).map_err(|r| invalid("items pointer", items_ptr, r))?;
    // Validate the id pointer even for object collections, so a typo in the
    // config surfaces now rather than when the API switches to arrays.
    let id_tokens = pointer_tokens(id_ptr).map_err(|r| invalid("id pointer", id_ptr, r))?;

    let collection =
        resolve(doc, items_ptr, &items_tokens).map_err(|detail| ExtractError::ItemsNotFound {
            pointer: items_ptr.to_string(),
            detail,
        })?;

    // id -> index of the item that first had it, to report both on duplicates.
    let mut first_index: HashMap<String, usize> = HashMap::new();
    let mut items = Vec::new();
    match collection {
        Value::Array(elements) => {
            items.reserve(elements.len());
            for (index, element) in elements.iter().enumerate() {
                let id = item_id(index, element, id_ptr, &id_tokens)?;
                if let Some(&first) = first_index.get(&id) {
                    return Err(ExtractError::DuplicateId {
                        id,
                        first,
                        second: index,
                    });
                }
                first_index.insert(id.clone(), index);
                items.push(Item {
                    id,
                    value: element.clone(),
                });
            }
        }
        // Object keys are unique already, so no duplicate check is needed.
        Value::Object(members) => {
            items.reserve(members.len());
            for (index, (key, value)) in members.iter().enumerate() {
                if key.is_empty() {
                    return Err(ExtractError::EmptyKey {
                        index,
                        pointer: items_ptr.to_string(),
                    });
                }
                items.push(Item {
                    id: key.clone(),
                    value: value.clone(),
                });
            }
        }
        other => {
            return Err(ExtractError::NotACollection {
                pointer: items_ptr.to_string(),
                found: describe(other),
            })
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_say_the_one_type_and_the_others() {
        let mut k = Kinds::default();
        assert_eq!(k.single(), None);
        k.add(Kind::Object);
        k.add(Kind::Object);
        assert_eq!(
            (k.single(), k.other_than(Kind::Object)),
            (Some(Kind::Object), None)
        );
        k.add(Kind::String);
        assert_eq!(
            (k.single(), k.other_than(Kind::Object)),
            (None, Some(Kind::String))
        );
        assert_eq!(Kind::of_json(br#"{"a":1}"#), Some(Kind::Object));
        assert_eq!(Kind::of_json(b"-1"), Some(Kind::Number));
        assert_eq!(Kind::of_json(b""), None);
    }

    #[test]
    fn number_text_is_exact_for_integers_and_stable_for_floats() {
        let text = |t: &str| number_text(&serde_json::from_str(t).unwrap()).into_owned();
        assert_eq!(text("18446744073709551617"), "18446744073709551617");
        assert_eq!(text("-18446744073709551617"), "-18446744073709551617");
        assert_eq!(text("18446744073709551615"), "18446744073709551615");
        assert_eq!(text("-5"), "-5");
        // Floats as earlier releases printed them, whatever the literal.
        assert_eq!(text("9.90"), "9.9");
        assert_eq!(text("1e2"), "100.0");
        assert_eq!(text("1.5"), "1.5");
    }

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn ids(items: &[Item]) -> Vec<&str> {
        items.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn array_collection_in_document_order() {
        let doc = json!([{"id": "b", "x": 1}, {"id": "a", "x": 2}]);
        let items = extract(&doc, "", "/id").unwrap();
        assert_eq!(ids(&items), ["b", "a"]);
        assert_eq!(items[1].value, json!({"id": "a", "x": 2}));
    }

    #[test]
    fn object_collection_uses_keys() {
        let doc = json!({"data": {"k1": {"v": 1}, "k2": {"v": 2}}});
        let items = extract(&doc, "/data", "/ignored/anyway").unwrap();
        let mut got = ids(&items);
        got.sort(); // member order depends on serde_json features
        assert_eq!(got, ["k1", "k2"]);
        assert_eq!(
            items.iter().find(|i| i.id == "k2").unwrap().value,
            json!({"v": 2})
        );
    }

    #[test]
    fn nested_items_pointer_and_nested_id() {
        let doc = json!({"data": {"items": [{"meta": {"id": "x"}}]}});
        let items = extract(&doc, "/data/items", "/meta/id").unwrap();
        assert_eq!(ids(&items), ["x"]);
    }

    #[test]
    fn escaped_pointer_segments() {
        let doc = json!({"a/b": {"m~n": [{"i/d": "z"}]}});
        let items = extract(&doc, "/a~1b/m~0n", "/i~1d").unwrap();
        assert_eq!(ids(&items), ["z"]);
        // "~01" is "~1" (unescape ~1 first), not "/".
        let doc = json!({"~1": [{"id": "t"}], "/": []});
        assert_eq!(ids(&extract(&doc, "/~01", "/id").unwrap()), ["t"]);
    }

    #[test]
    fn numeric_and_float_ids_use_json_text() {
        let doc = json!([{"id": 42}, {"id": 1.5}, {"id": -7}]);
        assert_eq!(ids(&extract(&doc, "", "/id").unwrap()), ["42", "1.5", "-7"]);
    }

    #[test]
    fn string_and_number_one_are_duplicates() {
        let doc = json!([{"id": "1"}, {"id": 0}, {"id": 1}]);
        let err = extract(&doc, "", "/id").unwrap_err();
        assert_eq!(
            err,
            ExtractError::DuplicateId {
                id: "1".into(),
                first: 0,
                second: 2
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains("\"1\"") && msg.contains('0') && msg.contains('2'),
            "{msg}"
        );
    }

    #[test]
    fn missing_id_names_index_and_pointer() {
        let doc = json!([{"id": "a"}, {"name": "no id"}]);
        let err = extract(&doc, "", "/id").unwrap_err();
        assert!(
            matches!(&err, ExtractError::MissingId { index: 1, id_ptr, .. } if id_ptr == "/id")
        );
        let msg = err.to_string();
        assert!(msg.contains("index 1") && msg.contains("\"/id\""), "{msg}");
    }

    #[test]
    fn null_and_bool_and_object_ids_are_rejected() {
        for (bad, kind) in [
            (json!(null), "null"),
            (json!(true), "boolean"),
            (json!({}), "object"),
        ] {
            let doc = json!([{"id": bad}]);
            let err = extract(&doc, "", "/id").unwrap_err();
            assert!(
                matches!(&err, ExtractError::BadIdType { index: 0, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains(kind), "{err}");
        }
    }

    #[test]
    fn empty_ids_are_rejected() {
        let err = extract(&json!([{"id": ""}]), "", "/id").unwrap_err();
        assert_eq!(
            err,
            ExtractError::EmptyId {
                index: 0,
                id_ptr: "/id".into()
            }
        );
        let err = extract(&json!({"": {}}), "", "").unwrap_err();
        assert!(
            matches!(err, ExtractError::EmptyKey { index: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn non_collection_target_says_what_it_found() {
        let err = extract(&json!({"data": "oops"}), "/data", "/id").unwrap_err();
        assert!(matches!(&err, ExtractError::NotACollection { .. }));
        assert!(err.to_string().contains("a string (\"oops\")"), "{err}");
    }

    #[test]
    fn unresolved_items_pointer_says_where_it_stopped() {
        let err = extract(&json!({"data": {"list": []}}), "/data/items", "/id").unwrap_err();
        let ExtractError::ItemsNotFound { pointer, detail } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(pointer, "/data/items");
        assert!(
            detail.contains("\"/data\"") && detail.contains("\"items\""),
            "{detail}"
        );
        let err = extract(&json!([1]), "/5", "/id").unwrap_err();
        assert!(err.to_string().contains("past its end"), "{err}");
    }

    #[test]
    fn invalid_pointers_are_reported() {
        let err = extract(&json!([]), "data", "/id").unwrap_err();
        assert!(matches!(
            err,
            ExtractError::InvalidPointer {
                which: "items pointer",
                ..
            }
        ));
        let err = extract(&json!([]), "", "/a~2").unwrap_err();
        assert!(matches!(
            err,
            ExtractError::InvalidPointer {
                which: "id pointer",
                ..
            }
        ));
    }

    #[test]
    fn validate_pointer_good_and_bad() {
        for good in ["", "/", "/data", "/a~0b/c~1d", "/0/-"] {
            assert_eq!(validate_pointer(good), Ok(()), "{good}");
        }
        for bad in ["data", "/a~2", "/a~", "~0"] {
            assert!(validate_pointer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn array_index_follows_rfc() {
        assert_eq!(array_index("0"), Some(0));
        assert_eq!(array_index("12"), Some(12));
        for bad in ["", "01", "+1", "-", "-1", "1a", "99999999999999999999999"] {
            assert_eq!(array_index(bad), None, "{bad}");
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-c0-9~/]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
                prop::collection::btree_map("[a-c0-9~/]{0,2}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_pointer() -> impl Strategy<Value = String> {
        prop_oneof![".*", "(/[a-c0-9~/]{0,2}){0,3}", "(/(0|1|id|a)){0,2}"]
    }

    proptest! {
        #[test]
        fn extract_never_panics(doc in arb_json(), items in arb_pointer(), id in arb_pointer()) {
            if let Ok(got) = extract(&doc, &items, &id) {
                // Whatever succeeds must honour the contract: unique, non-empty ids.
                let mut seen = std::collections::HashSet::new();
                for item in &got {
                    prop_assert!(!item.id.is_empty());
                    prop_assert!(seen.insert(item.id.clone()));
                }
            }
        }
    }
}
