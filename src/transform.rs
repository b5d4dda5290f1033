//! The `transform` source option: a jq program run on the parsed response before
//! items are extracted, for APIs whose items a JSON Pointer alone cannot reach
//! (they need filtering, reshaping or collecting first), e.g.
//! `.data | map(select(.state == "open") | {id, title, state})`.
//!
//! jq is provided by jaq (`jaq-core`, with the standard library of `jaq-std` and
//! `jaq-json`). This module compiles a program once, at config load, and runs it
//! on one document at a time, converting between `serde_json::Value` and jaq's
//! value type on the way in and out. No I/O.
//!
//! Values: integers stay integers (jaq keeps machine-size and big integers apart
//! from floats, so 2^53 + 1 survives), floats stay floats, strings are UTF-8. The
//! order of object members is whatever `serde_json::Map` keeps: sorted by key in
//! this build (no `preserve_order`), both going in and coming out.
//!
//! The program has jq's standard library as jaq provides it, including `env`
//! (the daemon's environment variables) and `now` (which would make every poll's
//! items differ). Not available: `input`/`inputs`, `$ENV`, `$__loc__`, `@csv`,
//! `@tsv`, and modules (`import`, `include`).

use std::fmt;
use std::sync::Arc;

use jaq_core::data::JustLut;
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{compile, Compiler, Ctx, Exn, Vars};
use jaq_json::{Num, Rc, Val};
use serde_json::Value;

/// Deepest nesting of arrays and objects accepted in a program's output: the
/// deepest serde_json's parser accepts, so the output is no deeper than a parsed
/// response body could be. The rest of pollhook relies on that: serde_json's own
/// clone, `==`, drop and printing recurse, and what is stored as JSON must parse
/// back. A transform can build far deeper values
/// (`reduce range(100000) as $i (null; [.])`).
pub const MAX_DEPTH: usize = 127;

/// Longest message taken from a jq runtime error, in characters. jaq's messages
/// embed the offending value (`cannot index <value> with "a"`), which can be the
/// whole response; these messages end up in logs.
const MAX_MESSAGE_CHARS: usize = 300;

/// A program compiled for jaq's JSON values, with data that is only the program.
type Filter = jaq_core::Filter<JustLut<Val>>;

/// A compiled jq program. Cheap to clone (the compiled program is shared);
/// `Send + Sync`: it is compiled once at config load and run from blocking
/// threads.
///
/// The compiled filter is a lookup table of terms and native-function pointers
/// with no `Rc` in it, so it is `Send + Sync` as is. jaq's values do use `Rc`
/// (jaq-json's `sync` feature would switch them to `Arc`), but they never leave
/// the thread that runs [`Transform::apply`]: they are made from the input and
/// turned back into a `serde_json::Value` there, so that feature is not needed.
#[derive(Clone)]
pub struct Transform {
    program: Arc<str>,
    filter: Arc<Filter>,
}

// The promise in `Transform`'s documentation; a jaq upgrade that broke it would
// stop the build here rather than in the code that moves transforms to threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Transform>();
};

/// Why a transform failed on one document. The messages are for an operator; the
/// caller adds the source and the config key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransformError {
    /// The program yielded nothing (e.g. `.[] | select(...)` with no match).
    #[error(
        "the jq program produced no output, but it must produce exactly one value; \
         wrap it in `[ ... ]` to collect its outputs into an array"
    )]
    NoOutput,
    /// The program yielded a second value (e.g. `.[]`).
    #[error(
        "the jq program produced more than one output, but it must produce exactly one \
         value; wrap it in `[ ... ]` to collect its outputs into an array"
    )]
    MultipleOutputs,
    /// jq raised an error: a type error such as `.a` on a number, or `error(...)`.
    #[error("jq error: {0}")]
    Runtime(String),
    /// The program called `halt` or `halt_error`, which in jq ends the process.
    #[error("the jq program called halt (exit code {0}); a transform cannot halt")]
    Halted(i32),
    /// The output has an object key that is not a string (jaq allows those, JSON
    /// does not).
    #[error("the jq program's output has an object key that is not a string: {0}")]
    NonStringKey(String),
    /// The output nests arrays and objects more than [`MAX_DEPTH`] levels deep.
    #[error("the jq program's output nests arrays and objects more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

impl Transform {
    /// Compiles `program` with jq's standard library (jaq-core, jaq-std and
    /// jaq-json definitions and native filters). The error names each problem and
    /// where it is (line and column, and the offending text), e.g. `expected term,
    /// found end of program at line 1, column 8`, for config validation to report
    /// with the config key.
    pub fn compile(program: &str) -> Result<Transform, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let code = File {
            code: program,
            path: (),
        };
        let modules = Loader::new(defs)
            .load(&arena, code)
            .map_err(|errs| describe_load_errors(program, errs))?;
        let filter: Filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errs| describe_compile_errors(program, errs))?;
        Ok(Transform {
            program: program.into(),
            filter: Arc::new(filter),
        })
    }

    /// Runs the program on `input` and returns its one output.
    ///
    /// Exactly one output is required: none, or a second one, is an error that
    /// suggests wrapping the program in `[ ... ]`. A runtime error before a second
    /// output, or instead of it, is a [`TransformError::Runtime`] with jq's message.
    ///
    /// Guarded: the program is run only until its second output, so a program
    /// with endless outputs (`repeat(1)`, `range(infinite)`) fails at once; an
    /// output nested deeper than [`MAX_DEPTH`] is refused; `halt` is an error,
    /// not the end of the process.
    ///
    /// Not guarded (jaq takes no countermeasures against resource exhaustion, and
    /// there is no cheap way to interrupt it): a program that loops without
    /// producing output (`last(range(infinite))`, `[repeat(1)]`, `until(false; .)`)
    /// runs, and may allocate, until the process ends; infinite or very deep
    /// non-tail recursion (`def f: 1 + f; f`) and building then dropping a very
    /// deeply nested value inside the program overflow the stack, which aborts
    /// the process. The poll runs this on a blocking thread under a time limit
    /// (`poll::cpu`), which fails the poll but cannot stop the thread.
    pub fn apply(&self, input: Value) -> Result<Value, TransformError> {
        let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, from_json(input)));
        let output = match outputs.next() {
            None => return Err(TransformError::NoOutput),
            Some(result) => result.map_err(from_exception)?,
        };
        let json = match outputs.next() {
            None => to_json(&output, 0),
            Some(Ok(second)) => {
                dismantle(second);
                Err(TransformError::MultipleOutputs)
            }
            Some(Err(e)) => Err(from_exception(e)),
        };
        // Outputs are dismantled rather than dropped even when they convert: a
        // value too deep to convert, or never converted, could be too deep to drop.
        // The run goes first, so that it no longer shares parts of the output.
        drop(outputs);
        dismantle(output);
        json
    }

    /// The program text as written.
    pub fn program(&self) -> &str {
        &self.program
    }
}

// The compiled filter is made from the program text alone (and cannot be compared
// itself): two transforms of the same text do the same.
impl PartialEq for Transform {
    fn eq(&self, other: &Transform) -> bool {
        self.program == other.program
    }
}

impl Eq for Transform {}

impl fmt::Debug for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Transform").field(&&*self.program).finish()
    }
}

/// jaq's value for a serde_json value. Recurses once per level of nesting, which
/// a parsed response bounds (see [`MAX_DEPTH`]).
fn from_json(value: Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Number(n) => Val::Num(if let Some(i) = n.as_i64() {
            Num::from_integral(i)
        } else if let Some(u) = n.as_u64() {
            Num::from_integral(u)
        } else if let Some(big) = (!n.is_f64())
            .then(|| Num::from_str_radix(n.as_str(), 10))
            .flatten()
        {
            // An integer beyond 64 bits (serde_json keeps its text): exact.
            big
        } else {
            // A float literal that parses (serde_json checked it), so never NaN.
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Value::String(s) => Val::from(s),
        Value::Array(items) => items.into_iter().map(from_json).collect(),
        Value::Object(members) => Val::obj(
            members
                .into_iter()
                .map(|(k, v)| (Val::from(k), from_json(v)))
                .collect(),
        ),
    }
}

/// The serde_json value for jaq's value `v`, found `depth` levels deep in the
/// output. Recursion is bounded by [`MAX_DEPTH`].
fn to_json(v: &Val, depth: usize) -> Result<Value, TransformError> {
    let nested = || {
        if depth >= MAX_DEPTH {
            Err(TransformError::TooDeep)
        } else {
            Ok(depth + 1)
        }
    };
    Ok(match v {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => number(n),
        // Text strings may hold invalid UTF-8 (`@base64d` of arbitrary bytes), and
        // byte strings (`tobytes`) are not JSON at all: as jq does, invalid UTF-8
        // becomes U+FFFD.
        Val::TStr(s) | Val::BStr(s) => Value::String(String::from_utf8_lossy(s).into_owned()),
        Val::Arr(items) => {
            let depth = nested()?;
            let items = items.iter().map(|item| to_json(item, depth));
            Value::Array(items.collect::<Result<_, _>>()?)
        }
        Val::Obj(members) => {
            let depth = nested()?;
            let mut object = serde_json::Map::with_capacity(members.len());
            for (k, v) in members.iter() {
                let Val::TStr(key) = k else {
                    return Err(TransformError::NonStringKey(clip(k.to_string())));
                };
                let key = String::from_utf8_lossy(key).into_owned();
                object.insert(key, to_json(v, depth)?);
            }
            Value::Object(object)
        }
    })
}

/// A jaq number as JSON: integers as integers where serde_json can hold them
/// (i64 and u64; larger ones become the nearest f64), floats as floats. JSON has
/// no NaN or infinities: as jq prints them, NaN becomes null and ±infinity the
/// largest finite float of that sign.
fn number(n: &Num) -> Value {
    match n {
        Num::Int(i) => Value::from(*i),
        Num::Float(f) => float(*f),
        // Big integers, and decimals that come from number literals in the program
        // (`1.5`), in their exact text.
        Num::BigInt(i) => number_text(&i.to_string()),
        Num::Dec(d) => number_text(d),
    }
}

fn number_text(text: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(text)
        .map(Value::Number)
        .unwrap_or_else(|_| float(text.parse().unwrap_or(f64::NAN)))
}

fn float(f: f64) -> Value {
    let f = if f.is_infinite() {
        f64::MAX.copysign(f)
    } else {
        f
    };
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Drops `v` without recursion. Dropping jaq's values recurses once per level of
/// nesting, and an output refused as too deep may be nested far deeper than the
/// stack allows.
fn dismantle(v: Val) {
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        match v {
            // A shared array or object only loses one reference here; its last
            // holder drops it the usual way.
            Val::Arr(items) => {
                if let Ok(items) = Rc::try_unwrap(items) {
                    pending.extend(items);
                }
            }
            Val::Obj(members) => {
                if let Ok(members) = Rc::try_unwrap(members) {
                    pending.extend(members.into_iter().flat_map(|(k, v)| [k, v]));
                }
            }
            _ => {}
        }
    }
}

/// The error for a jaq exception: an error raised by the program, or `halt`.
fn from_exception(e: Exn<'_, Val>) -> TransformError {
    // Not `jaq_core::unwrap_valr`: it calls `std::process::exit` on `halt`.
    match e.get_err() {
        Ok(error) => TransformError::Runtime(clip(match error.into_val() {
            // `error("msg")`: the message as text, as jq prints it.
            Val::TStr(s) => String::from_utf8_lossy(&s).into_owned(),
            other => other.to_string(),
        })),
        Err(e) => match e.get_halt() {
            Ok(code) => TransformError::Halted(code),
            // jaq documents its other exceptions (tail calls, `break`) as never
            // escaping a program; if one did, that is jaq's bug, reported as such.
            Err(e) => TransformError::Runtime(clip(format!("internal jaq exception: {e:?}"))),
        },
    }
}

/// `s`, cut to [`MAX_MESSAGE_CHARS`] characters.
fn clip(mut s: String) -> String {
    if let Some((cut, _)) = s.char_indices().nth(MAX_MESSAGE_CHARS) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Lexing and parsing errors (and `import`s, which cannot be loaded), one a
/// clause.
fn describe_load_errors(program: &str, errs: load::Errors<&str, ()>) -> String {
    let mut problems = Vec::new();
    for (_file, error) in errs {
        match error {
            load::Error::Io(imports) => {
                for (path, reason) in imports {
                    problems.push(format!(
                        "cannot import {path:?}{}: {reason}",
                        at(program, path)
                    ));
                }
            }
            load::Error::Lex(errors) => {
                for (expected, rest) in errors {
                    let unclosed = match expected {
                        load::lex::Expect::Delim(open) => {
                            format!(" (to close `{open}`{})", at(program, open))
                        }
                        _ => String::new(),
                    };
                    problems.push(format!(
                        "expected {}{unclosed}, found {}{}",
                        expected.as_str(),
                        found(rest),
                        at(program, rest)
                    ));
                }
            }
            load::Error::Parse(errors) => {
                for (expected, token) in errors {
                    problems.push(format!(
                        "expected {}, found {}{}",
                        expected.as_str(),
                        found(token),
                        at(program, token)
                    ));
                }
            }
        }
    }
    problems.join("; ")
}

/// Undefined filters, variables and labels.
fn describe_compile_errors(program: &str, errs: compile::Errors<&str, ()>) -> String {
    let mut problems = Vec::new();
    for (_file, errors) in errs {
        for (name, undefined) in errors {
            let arity = match undefined {
                compile::Undefined::Filter(arity) => format!("/{arity}"),
                _ => String::new(),
            };
            problems.push(format!(
                "undefined {} `{name}{arity}`{}",
                undefined.as_str(),
                at(program, name)
            ));
        }
    }
    problems.join("; ")
}

/// What the parser found, for a message: the start of `text` (a token, or the
/// rest of the program), or "end of program".
fn found(text: &str) -> String {
    let first_line = text.lines().next().unwrap_or("").trim_end();
    if first_line.is_empty() {
        return "end of program".to_string();
    }
    match first_line.char_indices().nth(20) {
        Some((cut, _)) => format!("`{}…`", &first_line[..cut]),
        None => format!("`{first_line}`"),
    }
}

/// " at line L, column C" for `part`, a slice of `program` (columns count
/// characters, both from 1); empty if `part` is not part of `program`.
fn at(program: &str, part: &str) -> String {
    let start = program.as_ptr() as usize;
    let offset = (part.as_ptr() as usize).wrapping_sub(start);
    if offset > program.len() || !program.is_char_boundary(offset) {
        return String::new();
    }
    let before = &program[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    format!(" at line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(program: &str, input: Value) -> Result<Value, TransformError> {
        Transform::compile(program).unwrap().apply(input)
    }

    fn compile_error(program: &str) -> String {
        Transform::compile(program).unwrap_err()
    }

    #[test]
    fn issue_example_filters_and_reshapes_open_items() {
        let response = json!({
            "data": [
                {"id": 1, "title": "Crash on start", "state": "open",
                 "labels": ["bug"], "user": {"login": "ann"}},
                {"id": 2, "title": "Typo in README", "state": "closed",
                 "labels": [], "user": {"login": "bob"}},
                {"id": 3, "title": "Add --quiet", "state": "open",
                 "labels": ["feature"], "user": {"login": "cy"}}
            ],
            "meta": {"page": 1, "total": 3}
        });
        let program = r#".data | map(select(.state == "open") | {id, title, state})"#;
        assert_eq!(
            run(program, response).unwrap(),
            json!([
                {"id": 1, "title": "Crash on start", "state": "open"},
                {"id": 3, "title": "Add --quiet", "state": "open"}
            ])
        );
    }

    #[test]
    fn object_shorthand_picks_keys() {
        let doc = json!({"id": "a1", "title": "T", "body": "long"});
        assert_eq!(
            run("{id, title}", doc).unwrap(),
            json!({"id": "a1", "title": "T"})
        );
    }

    #[test]
    fn select_and_map() {
        let doc = json!([{"n": 1}, {"n": 5}, {"n": 10}]);
        assert_eq!(
            run("map(select(.n > 2) | .n * 10)", doc).unwrap(),
            json!([50, 100])
        );
    }

    #[test]
    fn to_entries_turns_a_keyed_object_into_items() {
        let doc = json!({"items": {"x": {"v": 1}, "y": {"v": 2}}});
        assert_eq!(
            run(".items | to_entries | map({id: .key} + .value)", doc).unwrap(),
            json!([{"id": "x", "v": 1}, {"id": "y", "v": 2}])
        );
    }

    #[test]
    fn std_functions_base64d_ascii_downcase_and_regex() {
        let doc = json!({"payload": "aGVsbG8gd29ybGQ=", "name": "ABC-12"});
        assert_eq!(
            run(
                r#"{text: (.payload | @base64d), name: (.name | ascii_downcase),
                    digits: (.name | test("[0-9]+$"))}"#,
                doc
            )
            .unwrap(),
            json!({"text": "hello world", "name": "abc-12", "digits": true})
        );
    }

    #[test]
    fn compile_error_says_what_and_where() {
        let message = compile_error(".data |");
        assert_eq!(
            message,
            "expected term, found end of program at line 1, column 8"
        );
    }

    #[test]
    fn compile_error_on_a_later_line_names_line_column_and_token() {
        let message = compile_error(".data\n  | map(.a ])");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains('`'), "{message}");
    }

    #[test]
    fn compile_error_for_unclosed_delimiter_points_at_it() {
        let message = compile_error("map(.a");
        assert!(
            message.starts_with("expected closing parenthesis (to close `(` at line 1, column 4)"),
            "{message}"
        );
    }

    #[test]
    fn compile_error_for_undefined_filter_and_variable() {
        assert_eq!(
            compile_error(".a | nosuchfilter(1)"),
            "undefined filter `nosuchfilter/1` at line 1, column 6"
        );
        assert_eq!(
            compile_error("$x"),
            "undefined variable `$x` at line 1, column 1"
        );
    }

    #[test]
    fn imports_are_not_supported() {
        let message = compile_error(r#"import "foo" as foo; ."#);
        assert!(message.contains("cannot import"), "{message}");
    }

    #[test]
    fn runtime_type_error_has_jqs_message() {
        assert_eq!(
            run(".a", json!(5)),
            Err(TransformError::Runtime("cannot index 5 with \"a\"".into()))
        );
    }

    #[test]
    fn error_builtin_message_is_the_string() {
        assert_eq!(
            run(r#"error("no data")"#, json!({})),
            Err(TransformError::Runtime("no data".into()))
        );
        assert_eq!(
            run(r#"error({code: 7})"#, json!({})),
            Err(TransformError::Runtime("{\"code\":7}".into()))
        );
    }

    #[test]
    fn long_runtime_error_messages_are_clipped() {
        let doc = json!(vec!["x".repeat(100); 100]);
        let Err(TransformError::Runtime(message)) = run(".a", doc) else {
            panic!("expected a runtime error");
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(message.starts_with("cannot index [\"xxx"), "{message}");
        assert!(message.ends_with('…'));
    }

    #[test]
    fn zero_outputs_is_an_error_suggesting_brackets() {
        let error = run("empty", json!(1)).unwrap_err();
        assert_eq!(error, TransformError::NoOutput);
        assert!(error.to_string().contains("[ ... ]"));
        let error = run(".[] | select(.open)", json!([{"open": false}])).unwrap_err();
        assert_eq!(error, TransformError::NoOutput);
    }

    #[test]
    fn multiple_outputs_is_an_error_suggesting_brackets() {
        let error = run(".[]", json!([1, 2, 3])).unwrap_err();
        assert_eq!(error, TransformError::MultipleOutputs);
        assert!(error.to_string().contains("[ ... ]"));
        assert_eq!(run("[.[]]", json!([1, 2, 3])).unwrap(), json!([1, 2, 3]));
    }

    #[test]
    fn endless_outputs_stop_at_the_second() {
        for program in ["repeat(1)", "range(infinite)", "recurse(. + 1)"] {
            assert_eq!(
                run(program, json!(0)),
                Err(TransformError::MultipleOutputs),
                "{program}"
            );
        }
    }

    #[test]
    fn error_after_the_first_output_is_reported_as_the_error() {
        assert_eq!(
            run(r#"1, error("late")"#, json!(null)),
            Err(TransformError::Runtime("late".into()))
        );
    }

    #[test]
    fn halt_is_an_error_not_an_exit() {
        assert_eq!(run("halt", json!(null)), Err(TransformError::Halted(0)));
        assert_eq!(
            run("halt_error(3)", json!("bye")),
            Err(TransformError::Halted(3))
        );
    }

    #[test]
    fn large_integers_stay_integers() {
        let above_f64 = 9_007_199_254_740_993_u64; // 2^53 + 1
        let doc = json!({"id": above_f64, "max": u64::MAX, "min": i64::MIN});
        let out = run(".", doc.clone()).unwrap();
        assert_eq!(out, doc);
        assert_eq!(out["id"].as_u64(), Some(above_f64));
        assert_eq!(out["max"].as_u64(), Some(u64::MAX));
        assert_eq!(out["min"].as_i64(), Some(i64::MIN));
        // Integer arithmetic stays exact as well.
        assert_eq!(run(".id + 1", doc).unwrap().as_u64(), Some(above_f64 + 1));
    }

    #[test]
    fn integers_beyond_u64_become_floats() {
        let out = run("100000000000000000000", json!(null)).unwrap();
        assert_eq!(out.as_f64(), Some(1e20));
        assert!(!out.is_u64() && !out.is_i64());
    }

    #[test]
    fn floats_stay_floats_and_non_finite_follow_jq() {
        let out = run(".x * 2", json!({"x": 1.25}));
        assert_eq!(out.unwrap(), json!(2.5));
        assert_eq!(run(".x", json!({"x": 3.0})).unwrap(), json!(3.0));
        assert_eq!(run("1.5", json!(null)).unwrap(), json!(1.5));
        assert_eq!(run("nan", json!(null)).unwrap(), Value::Null);
        assert_eq!(run("infinite", json!(null)).unwrap(), json!(f64::MAX));
        assert_eq!(run("-infinite", json!(null)).unwrap(), json!(-f64::MAX));
    }

    #[test]
    fn unicode_strings_round_trip() {
        let doc = json!({"title": "Grüße, 世界 🚀", "emoji": "\u{1F600}"});
        assert_eq!(run(".", doc.clone()).unwrap(), doc);
        assert_eq!(run(".title | length", doc.clone()).unwrap(), json!(11));
        assert_eq!(
            run(".title | ascii_upcase", doc).unwrap(),
            json!("GRüßE, 世界 🚀")
        );
    }

    #[test]
    fn invalid_utf8_from_base64d_becomes_replacement_characters() {
        // "/w==" is the single byte 0xFF.
        assert_eq!(run("@base64d", json!("/w==")).unwrap(), json!("\u{FFFD}"));
    }

    #[test]
    fn nested_objects_keep_every_member() {
        let doc = json!({"z": {"y": {"x": [1, {"b": 2, "a": 1}]}}, "a": null});
        assert_eq!(run(".", doc.clone()).unwrap(), doc);
        // Built in the program in one order, compared as serde_json compares
        // (and, without `preserve_order`, stores) objects: by key.
        assert_eq!(
            run("{z: 1, a: {d: 2, c: 3}}", json!(null)).unwrap(),
            json!({"a": {"c": 3, "d": 2}, "z": 1})
        );
    }

    #[test]
    fn max_depth_is_the_deepest_serde_json_parses() {
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn output_deeper_than_the_limit_is_refused() {
        let build = |levels: usize| format!("reduce range({levels}) as $i (0; [.])");
        let out = run(&build(MAX_DEPTH), json!(null)).unwrap();
        assert!(out.pointer(&"/0".repeat(MAX_DEPTH)).is_some());
        assert_eq!(
            run(&build(MAX_DEPTH + 1), json!(null)),
            Err(TransformError::TooDeep)
        );
        // Far deeper than a recursive drop could survive on a test thread's stack,
        // whether the deep value is the output or the first of several.
        let deep = build(200_000);
        assert_eq!(run(&deep, json!(null)), Err(TransformError::TooDeep));
        let two = format!("({deep}), 1");
        assert_eq!(run(&two, json!(null)), Err(TransformError::MultipleOutputs));
        let two = format!("1, ({deep})");
        assert_eq!(run(&two, json!(null)), Err(TransformError::MultipleOutputs));
    }

    #[test]
    fn non_string_object_keys_are_refused() {
        assert_eq!(
            run("{(1): 2}", json!(null)),
            Err(TransformError::NonStringKey("1".into()))
        );
        assert_eq!(
            run("{a: {([1]): 2}}", json!(null)),
            Err(TransformError::NonStringKey("[1]".into()))
        );
    }

    #[test]
    fn clones_share_the_program_and_show_it_in_debug() {
        let transform = Transform::compile(".a").unwrap();
        let clone = transform.clone();
        assert_eq!(clone.program(), ".a");
        assert_eq!(format!("{transform:?}"), r#"Transform(".a")"#);
        let handle = std::thread::spawn(move || clone.apply(json!({"a": 1})));
        assert_eq!(handle.join().unwrap().unwrap(), json!(1));
        assert_eq!(transform.apply(json!({"a": 2})).unwrap(), json!(2));
    }

    #[test]
    fn integers_beyond_64_bits_pass_through_exactly() {
        let t = Transform::compile("[.[] | {id, next: (.id + 1)}]").unwrap();
        let input: Value = serde_json::from_str(r#"[{"id": 18446744073709551617}]"#).unwrap();
        let out = t.apply(input).unwrap().to_string();
        assert_eq!(
            out,
            r#"[{"id":18446744073709551617,"next":18446744073709551618}]"#
        );
    }
}
