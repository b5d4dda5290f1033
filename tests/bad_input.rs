//! Bad input: property tests that throw malformed, hostile and merely odd input at the
//! pure front of the pipeline and check that it never panics, never hangs, and answers
//! with an error an operator can act on.
//!
//! - `config_loader`: `Config::parse` on arbitrary text, on byte-mutations of
//!   `config.example.toml`, and on random documents built from the real key names.
//! - `extraction`: `serde_json::from_slice` + `extract` on random bodies: nesting around
//!   the parser's depth limit, huge numbers, invalid UTF-8, duplicate and mixed-type ids.
//! - `diffing`: `diff` on random snapshots (patches replay, self-diff is empty, output is
//!   deterministic) and `fingerprint` of values nested 10 000 deep.
//! - `signatures`: every mutation of a valid signature header (truncation, a flipped
//!   byte, another version prefix, a timestamp beyond tolerance) is rejected, and the
//!   unmutated header verifies.
//!
//! Parsing, extraction and diffing run on a thread of their own with a 2 MiB stack (the
//! size of tokio's workers) and a deadline, so a hang fails the test instead of stalling
//! the run; the 10 000-deep cases run in a child process, since a stack overflow aborts
//! the whole process.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use proptest::prelude::*;

/// The stack of a tokio worker (and of a default spawned thread).
const STACK: usize = 2 << 20;
/// Far beyond what any single case needs, even in a debug build on a busy machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `f` on a fresh 2 MiB thread; a panic there is re-raised here (so proptest
/// shrinks it), and no answer within [`DEADLINE`] is a failure naming `what`.
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::Builder::new()
        .name(what.to_string())
        .stack_size(STACK)
        .spawn(move || {
            // The receiver may have given up after the deadline; nothing to do then.
            let _ = tx.send(f());
        })
        .expect("spawning a test thread");
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(payload) => std::panic::resume_unwind(payload),
            Ok(()) => unreachable!("the thread sends before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {DEADLINE:?}; it hangs")
        }
    }
}

/// Proptest settings: `cases` per property, and no regression files written next to
/// the sources (a failure prints its minimal input instead).
fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Takes a (possibly very deep) value apart without recursion: `Value`'s own drop
/// recurses once per level, which would overflow long before 10 000 levels.
fn drop_iteratively(v: serde_json::Value) {
    use serde_json::Value;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(m) => stack.extend(m.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

mod config_loader {
    use std::fmt::Write as _;
    use std::path::{Path, PathBuf};

    use pollhook::config::{Config, ConfigError};
    use proptest::prelude::*;
    use proptest::sample::{select, subsequence, Index};

    use super::{cases, guarded};

    /// Values that must never show up in an error message (invariant 6).
    const SECRET: &str = "whsec_c2VrcmV0LW1hcmtlci1ieXRlcw==";
    const ENV_SECRET: &str = "env-secret-marker";
    const FILE_SECRET: &str = "whsec_ZmlsZS1zZWNyZXQtbWFya2Vy";

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" | "GITHUB_TOKEN" => Some(ENV_SECRET.to_string()),
            "PROXY_URL" => Some(format!("http://user:{ENV_SECRET}@proxy.example:3128")),
            "GOOD_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    /// A directory with a config path and the secret files the generated configs name.
    fn config_dir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), format!("{FILE_SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("empty.txt"), "  \n").unwrap();
        std::fs::write(
            dir.path().join("proxy.txt"),
            format!("http://user:{FILE_SECRET}@proxy.example:3128\n"),
        )
        .unwrap();
        let path = dir.path().join("config.toml");
        (dir, path)
    }

    /// Parses `text` on a guarded thread and checks what any outcome must satisfy:
    /// an error has a message, names the file, gives each keyed problem a line inside
    /// the text, and never echoes a secret.
    fn parse_checked(text: String) -> Result<Result<(), String>, TestCaseError> {
        let (_dir, path) = config_dir();
        let shown = path.display().to_string();
        let outcome = guarded("Config::parse", move || {
            Config::parse(&text, &path, &env)
                .map(drop)
                .map_err(|e| check_error(&text, &e))
        });
        match outcome {
            Ok(()) => Ok(Ok(())),
            Err(Ok(message)) => {
                prop_assert!(message.contains(&shown), "file not named: {message}");
                Ok(Err(message))
            }
            Err(Err(violation)) => Err(TestCaseError::fail(violation)),
        }
    }

    /// `Ok(display text)` if the error is a good one, else `Err(what is wrong)`.
    fn check_error(text: &str, e: &ConfigError) -> Result<String, String> {
        let shown = e.to_string();
        for secret in [SECRET, ENV_SECRET, FILE_SECRET] {
            if shown.contains(secret) {
                return Err(format!("secret {secret:?} leaked: {shown}"));
            }
        }
        let lines = text.matches('\n').count() + 1;
        let on_a_line = |l: Option<usize>| l.is_some_and(|l| (1..=lines).contains(&l));
        match e {
            ConfigError::Read { .. } => return Err(format!("parse never reads: {e:?}")),
            // Every syntax error is somewhere in the text: at a character or a key.
            ConfigError::Syntax { line, message, .. } => {
                if message.trim().is_empty() || !on_a_line(*line) {
                    let at = line.and_then(|l| text.lines().nth(l.wrapping_sub(1)));
                    return Err(format!(
                        "unclear syntax error {e:?}, shown as {shown:?}; the line is {at:?}"
                    ));
                }
            }
            ConfigError::Invalid { problems, .. } => {
                if problems.is_empty() {
                    return Err(format!("no problems listed: {shown}"));
                }
                for p in problems {
                    // Only whole-file problems ("no targets") have no key and no line.
                    let placed = p.key.is_empty() || on_a_line(p.line);
                    if p.message.trim().is_empty() || !placed {
                        return Err(format!("unclear problem {p:?} in:\n{shown}"));
                    }
                }
            }
        }
        Ok(shown)
    }

    fn example() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        std::fs::read_to_string(path).unwrap()
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        FlipBit(Index, u8),
        SetByte(Index, u8),
        Insert(Index, u8),
        Delete(Index),
        DuplicateLine(Index),
        Truncate(Index),
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
            (any::<Index>(), select(b"\"'[]{}=.,#\n\\ \x00\xff".to_vec()))
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<Index>().prop_map(Mutation::Delete),
            any::<Index>().prop_map(Mutation::DuplicateLine),
            any::<Index>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
        if bytes.is_empty() {
            return;
        }
        match m {
            Mutation::FlipBit(i, bit) => {
                let at = i.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Mutation::SetByte(i, b) => {
                let at = i.index(bytes.len());
                bytes[at] = *b;
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            Mutation::Delete(i) => drop(bytes.remove(i.index(bytes.len()))),
            Mutation::DuplicateLine(i) => {
                let lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
                let line = lines[i.index(lines.len())].to_vec();
                let at = i.index(bytes.len() + 1);
                bytes.splice(at..at, line);
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }

    /// A TOML value of any type, for a key that expects one type in particular.
    #[derive(Debug, Clone)]
    enum Toml {
        Str(String),
        Int(i64),
        Float(f64),
        Bool(bool),
        /// Text written as-is: huge numbers, dates, odd spellings.
        Raw(&'static str),
        Array(Vec<Toml>),
        Table(Vec<(String, Toml)>),
    }

    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => write!(out, "\\u{:04X}", c as u32).unwrap(),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn render(v: &Toml, out: &mut String) {
        match v {
            Toml::Str(s) => out.push_str(&quoted(s)),
            Toml::Int(n) => write!(out, "{n}").unwrap(),
            Toml::Float(f) if f.is_nan() => out.push_str("nan"),
            Toml::Float(f) if f.is_infinite() => {
                out.push_str(if *f > 0.0 { "inf" } else { "-inf" })
            }
            // Debug always has a '.' or an exponent, as TOML floats need.
            Toml::Float(f) => write!(out, "{f:?}").unwrap(),
            Toml::Bool(b) => write!(out, "{b}").unwrap(),
            Toml::Raw(r) => out.push_str(r),
            Toml::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    render(item, out);
                }
                out.push(']');
            }
            Toml::Table(members) => {
                out.push('{');
                for (i, (k, item)) in members.iter().enumerate() {
                    out.push_str(if i > 0 { ", " } else { " " });
                    write!(out, "{} = ", quoted(k)).unwrap();
                    render(item, out);
                }
                out.push_str(" }");
            }
        }
    }

    fn arb_toml() -> impl Strategy<Value = Toml> {
        let leaf = prop_oneof![
            ".{0,12}".prop_map(Toml::Str),
            any::<i64>().prop_map(Toml::Int),
            any::<f64>().prop_map(Toml::Float),
            any::<bool>().prop_map(Toml::Bool),
            select(vec![
                "99999999999999999999",
                "-9223372036854775809",
                "1e400",
                "0x7fffffffffffffff",
                "1979-05-27T07:32:00Z",
                "07:32:00",
                "nan",
                "-0",
            ])
            .prop_map(Toml::Raw),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Toml::Array),
                prop::collection::btree_map("[a-zA-Z _-]{0,6}", inner, 0..4)
                    .prop_map(|m| Toml::Table(m.into_iter().collect())),
            ]
        })
    }

    fn strs(options: &[&'static str]) -> BoxedStrategy<Toml> {
        select(options.to_vec())
            .prop_map(|s| Toml::Str(s.to_string()))
            .boxed()
    }

    /// A list of 1 to 3 of `options`; `odd_list` may also be empty.
    fn str_list(options: &[&'static str]) -> BoxedStrategy<Toml> {
        prop::collection::vec(strs(options), 1..4)
            .prop_map(Toml::Array)
            .boxed()
    }

    fn odd_list(options: &[&'static str]) -> BoxedStrategy<Toml> {
        prop::collection::vec(strs(options), 0..4)
            .prop_map(Toml::Array)
            .boxed()
    }

    fn headers(names: &[&'static str], values: &[&'static str]) -> BoxedStrategy<Toml> {
        prop::collection::btree_map(select(names.to_vec()), strs(values), 0..3)
            .prop_map(|m| Toml::Table(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
            .boxed()
    }

    fn ints(options: &[i64]) -> BoxedStrategy<Toml> {
        select(options.to_vec()).prop_map(Toml::Int).boxed()
    }

    const GOOD_DURATIONS: &[&str] = &["30s", "5m", "1h 30m", "250ms"];
    const ODD_DURATIONS: &[&str] = &[
        "50ms",
        "0s",
        "",
        "-1s",
        "1 fortnight",
        "soon",
        "99999999999999999999h",
        "18446744073709551615s",
    ];

    /// Values for `key` that validation accepts, and odd ones it must reject (or take).
    fn pools(key: &str) -> (BoxedStrategy<Toml>, BoxedStrategy<Toml>) {
        match key {
            "url" => (
                strs(&[
                    "https://example.com/hooks",
                    "http://127.0.0.1:1/x",
                    "https://user:env-secret-marker@example.com/p?token=env-secret-marker",
                    "https://example.com/p?token=${SET}",
                ]),
                strs(&[
                    "https://example.com/${UNSET}",
                    "https://example.com/${",
                    "https://example.com/${1X}",
                    "ftp://example.com/",
                    "http://",
                    "not a url",
                    "",
                ]),
            ),
            "secret" => (
                prop_oneof![strs(&[SECRET]), str_list(&[SECRET, FILE_SECRET])].boxed(),
                prop_oneof![
                    strs(&["whsec_", "whsec_!!", "plain", ""]),
                    odd_list(&[SECRET, "x"])
                ]
                .boxed(),
            ),
            "secret_env" => (
                strs(&["GOOD_SECRET"]),
                prop_oneof![
                    strs(&["SET", "UNSET", "EMPTY", ""]),
                    odd_list(&["GOOD_SECRET", "UNSET"])
                ]
                .boxed(),
            ),
            "secret_file" => (
                strs(&["secret.txt"]),
                prop_oneof![
                    strs(&["empty.txt", "missing.txt", "${UNSET}", ""]),
                    odd_list(&["secret.txt", "missing.txt"]),
                ]
                .boxed(),
            ),
            "signature" => (
                strs(&["standard", "github", "stripe"]),
                strs(&["GitHub", "", "v1"]),
            ),
            "timeout" | "shutdown_grace" | "interval" => {
                (strs(GOOD_DURATIONS), strs(ODD_DURATIONS))
            }
            "retry" => (str_list(GOOD_DURATIONS), odd_list(ODD_DURATIONS)),
            "headers" => (
                headers(
                    &["X-Env", "Authorization"],
                    &["prod", "Bearer ${SET}", ENV_SECRET],
                ),
                headers(
                    &["bad name", "", "X-É", "X-Env"],
                    &["${UNSET}", "line\nbreak", "é"],
                ),
            ),
            "max_in_flight" => (
                ints(&[1, 16, 1024]),
                ints(&[0, 1025, -1, i64::MAX, i64::MIN]),
            ),
            "method" => (
                strs(&["GET", "post", "PATCH"]),
                strs(&["NOT A METHOD", "", "G\u{e9}T"]),
            ),
            "cron" => (
                strs(&[
                    "*/5 * * * *",
                    "30 6 * * 1-5",
                    "0 0 * * 7",
                    "@daily",
                    "1,2,3-7/2 0 * * 0",
                ]),
                strs(&[
                    "0 0 31 2 *",
                    "@fortnightly",
                    "* * * *",
                    "61 * * * *",
                    "5-1 * * * *",
                    "*/0 * * * *",
                    "0 0 0 * * * *",
                    "",
                ]),
            ),
            "max_body" => (
                prop_oneof![strs(&["16MiB", "512 KiB", "1000"]), ints(&[1, 1 << 20])].boxed(),
                prop_oneof![
                    strs(&["0", "1 parsec", "99999999999999999999GiB", ""]),
                    ints(&[0, -5, i64::MIN]),
                ]
                .boxed(),
            ),
            "items" | "id" => (
                strs(&["", "/", "/data", "/id", "/a~1b"]),
                strs(&["data", "/a~2", "/~", "~0"]),
            ),
            "ignore" => (
                str_list(&["/updated_at", "/0/-", ""]),
                odd_list(&["bad", "/a~", "/x"]),
            ),
            "events" => (
                str_list(&["created", "updated", "deleted"]),
                odd_list(&["Created", "", "created"]),
            ),
            "targets" => (str_list(&["a", "my-app"]), odd_list(&["nowhere", "", "a"])),
            "baseline" | "allow_empty" => (
                any::<bool>().prop_map(Toml::Bool).boxed(),
                strs(&["yes", "true"]),
            ),
            "state_dir" => (
                strs(&["state", "/var/lib/pollhook"]),
                strs(&["", "${SET}", "${UNSET}"]),
            ),
            // A valid CA file needs a real certificate; here the key only ever comes
            // as a wrong one (a file that is missing or not PEM).
            "ca_file" => (
                strs(&["missing.pem", "secret.txt"]),
                strs(&["", "${UNSET}"]),
            ),
            "fail_after" => (
                ints(&[1, 3, 1_000_000]),
                ints(&[0, -1, 1_000_001, i64::MAX]),
            ),
            "types" => (
                str_list(&["*", "s.*", "*.deleted", "github.issue.created"]),
                odd_list(&["", "s.[ab]", "{a,b}", "s?", "é"]),
            ),
            "filter" => (
                strs(&[
                    ".type == \"s.created\"",
                    "true",
                    ".data.object | has(\"id\")",
                ]),
                strs(&[".data |", "{a: }", "((", "$undefined"]),
            ),
            "body" => (
                strs(&["{text: .type}", ".type", "\"\\(.type): \\(.data.id)\""]),
                strs(&["{text: }", "[.[", "undefined_filter(1)"]),
            ),
            "content_type" => (
                strs(&[
                    "text/plain",
                    "application/json",
                    "text/markdown; charset=utf-8",
                ]),
                strs(&["", "a\u{1}b", "\u{e9}"]),
            ),
            // A proxy URL's password is a secret: no problem may quote it.
            "proxy" => (
                strs(&[
                    "http://127.0.0.1:3128",
                    "none",
                    "https://proxy.example",
                    "http://user:env-secret-marker@proxy.example:3128",
                    "http://user:${SET}@proxy.example:3128",
                ]),
                strs(&[
                    "socks5://user:env-secret-marker@proxy.example:1080",
                    "ftp://proxy.example",
                    "proxy.example:3128",
                    "http://user:env-secret-marker@proxy.example:99999",
                    "http://proxy.example:1/p?token=env-secret-marker",
                    "http://",
                    "None",
                    "${UNSET}",
                    "",
                ]),
            ),
            "proxy_env" => (strs(&["PROXY_URL"]), strs(&["SET", "UNSET", "EMPTY", ""])),
            "proxy_file" => (
                strs(&["proxy.txt"]),
                strs(&["secret.txt", "empty.txt", "missing.txt", "${UNSET}", ""]),
            ),
            // As for ca_file: only ever a wrong file here (missing, or not PEM).
            "client_cert" | "client_key" => (
                strs(&["missing.pem", "secret.txt"]),
                strs(&["", "${UNSET}", "empty.txt"]),
            ),
            // Misspelled and unknown keys: any value is wrong.
            _ => (arb_toml().boxed(), arb_toml().boxed()),
        }
    }

    /// A value for `key`. With `oddness` 0 one that validation accepts; above that,
    /// more and more often an odd one or any TOML at all, so that some documents load,
    /// most get past the types to the checks behind them, and some fail on types.
    fn value_for(key: &'static str, oddness: u32) -> BoxedStrategy<Toml> {
        let (good, odd) = pools(key);
        if oddness == 0 {
            return good;
        }
        prop_oneof![24 => good, 2 * oddness => odd, oddness => arb_toml()].boxed()
    }

    /// The keys of one kind of table: those a working table needs (one of the
    /// alternatives each), those it may have, and wrong ones (misspelled, an
    /// alternative too many, or one never valid here), which a few tables get.
    struct Keys {
        required: &'static [&'static [&'static str]],
        optional: &'static [&'static str],
        wrong: &'static [&'static str],
    }

    const TOP_KEYS: Keys = Keys {
        required: &[],
        optional: &["state_dir", "shutdown_grace"],
        wrong: &["workers", "targets"],
    };
    const TARGET_KEYS: Keys = Keys {
        required: &[&["url"], &["secret", "secret", "secret_env", "secret_file"]],
        optional: &[
            "signature",
            "timeout",
            "retry",
            "headers",
            "max_in_flight",
            "types",
            "filter",
            "body",
            "content_type",
            "proxy",
        ],
        wrong: &[
            "urll",
            "secret_env",
            "secret_file",
            "Secret",
            "ca_file",
            "proxy_env",
            "proxy_file",
            "client_cert",
            "client_key",
        ],
    };
    const SOURCE_KEYS: Keys = Keys {
        required: &[&["url"], &["interval", "interval", "cron"]],
        optional: &[
            "method",
            "headers",
            "timeout",
            "max_body",
            "items",
            "id",
            "ignore",
            "events",
            "targets",
            "baseline",
            "allow_empty",
            "fail_after",
            "proxy",
        ],
        wrong: &[
            "Interval",
            "cron",
            "interval",
            "urls",
            "ca_file",
            "proxy_env",
            "proxy_file",
            "client_cert",
            "client_key",
        ],
    };

    /// The members of one table; duplicate keys are dropped (they are a TOML error
    /// that the arbitrary-text properties already cover).
    fn arb_members(keys: &'static Keys, oddness: u32) -> BoxedStrategy<Vec<(&'static str, Toml)>> {
        let required: Vec<_> = keys
            .required
            .iter()
            .map(|alts| select(alts.to_vec()))
            .collect();
        // Now and then (never at oddness 0) a required key is left out and a wrong one
        // put in.
        let odd_chance = f64::from(oddness) / 40.0;
        let all_required = prop::bool::weighted(1.0 - odd_chance);
        let optional = subsequence(keys.optional.to_vec(), 0..=keys.optional.len().min(6));
        // (`option::weighted` refuses a probability of 0, hence the filter.)
        let wrong = prop::option::weighted(odd_chance.max(0.01), select(keys.wrong.to_vec()))
            .prop_map(move |w| w.filter(|_| oddness > 0));
        (all_required, required, optional, wrong)
            .prop_flat_map(move |(all, required, optional, wrong)| {
                let mut names: Vec<&'static str> = Vec::new();
                let chosen = required.into_iter().skip(usize::from(!all));
                for k in chosen.chain(optional).chain(wrong) {
                    if !names.contains(&k) {
                        names.push(k);
                    }
                }
                (names.into_iter())
                    .map(move |k| value_for(k, oddness).prop_map(move |v| (k, v)))
                    .collect::<Vec<_>>()
            })
            .boxed()
    }

    fn arb_tables(
        keys: &'static Keys,
        oddness: u32,
    ) -> impl Strategy<Value = Vec<(String, Vec<(&'static str, Toml)>)>> {
        let good_names = select(vec!["a", "my-app", "a-b_c.d"]);
        let (name, count) = if oddness == 0 {
            (good_names.boxed(), Just(1..3).boxed())
        } else {
            let odd_names = select(vec!["x y", "bad name!", "", "é", "-a"]);
            (
                prop_oneof![24 => good_names, oddness => odd_names].boxed(),
                prop_oneof![24 => Just(1..3), oddness => Just(0..1)].boxed(),
            )
        };
        count.prop_flat_map(move |n| {
            prop::collection::btree_map(name.clone(), arb_members(keys, oddness), n)
                .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        })
    }

    /// A config file made of the real tables and keys with random values.
    fn arb_document() -> impl Strategy<Value = String> {
        select(vec![0, 1, 3, 8])
            .prop_flat_map(|oddness| {
                (
                    arb_members(&TOP_KEYS, oddness),
                    arb_tables(&TARGET_KEYS, oddness),
                    arb_tables(&SOURCE_KEYS, oddness),
                )
            })
            .prop_map(|(top, targets, sources)| {
                let mut out = String::new();
                let mut table = |header: Option<String>, members: &[(&str, Toml)]| {
                    if let Some(h) = header {
                        writeln!(out, "\n[{h}]").unwrap();
                    }
                    for (k, v) in members {
                        write!(out, "{k} = ").unwrap();
                        render(v, &mut out);
                        out.push('\n');
                    }
                };
                table(None, &top);
                for (kind, tables) in [("targets", &targets), ("sources", &sources)] {
                    for (name, members) in tables {
                        table(Some(format!("{kind}.{}", quoted(name))), members);
                    }
                }
                out
            })
    }

    /// Two syntax errors for which the TOML parser's own message is empty: a control
    /// character in a comment, and a file that ends right after `key =` (a truncated
    /// write). Neither may reach the operator as a bare "config.toml:2: ".
    #[test]
    fn syntax_errors_the_parser_leaves_unexplained_still_get_a_message() {
        let mut texts: Vec<String> = ['\0', '\u{1}', '\u{1b}', '\u{7f}']
            .iter()
            .map(|c| format!("[targets.a]\n# a comment with {c} in it\nurl = \"x\"\n"))
            .collect();
        texts.push("[targets.a]\nurl =".to_string());
        for text in texts {
            let err = Config::parse(&text, Path::new("/etc/pollhook.toml"), &env).unwrap_err();
            let ConfigError::Syntax { line, message, .. } = &err else {
                panic!("{err:?}")
            };
            assert_eq!(*line, Some(2), "{text:?}: {err:?}");
            assert!(!message.trim().is_empty(), "{text:?}: {err:?}");
        }
    }

    proptest! {
        #![proptest_config(cases(1024))]

        #[test]
        fn arbitrary_text_is_an_error_not_a_panic(
            text in prop_oneof![
                any::<String>(),
                "[\\[\\]a-z_.=\"' \n{}#0-9,\\\\-]{0,200}",
            ],
        ) {
            let outcome = parse_checked(text)?;
            prop_assert!(outcome.is_err(), "random text made a valid config");
        }

        #[test]
        fn mutated_example_config_is_loaded_or_rejected_clearly(
            mutations in prop::collection::vec(arb_mutation(), 0..6),
        ) {
            let mut bytes = example().into_bytes();
            for m in &mutations {
                mutate(&mut bytes, m);
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let unchanged = text == example();
            let outcome = parse_checked(text)?;
            // The control: the example itself must load, or every case is vacuous.
            prop_assert!(!unchanged || outcome.is_ok(), "{:?}", outcome);
        }

        #[test]
        fn random_documents_from_real_keys_load_or_name_key_and_line(doc in arb_document()) {
            parse_checked(doc)?.ok();
        }
    }
}

mod extraction {
    use std::collections::HashMap;

    use pollhook::diff::{diff, fingerprint, Diff, Seen};
    use pollhook::extract::{extract, validate_pointer, ExtractError, Item};
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use serde_json::Value;

    use super::{cases, guarded};

    /// serde_json refuses documents nested deeper than this (arrays and objects).
    const PARSER_DEPTH_LIMIT: usize = 127;

    /// A JSON number as text: ordinary, huge (out of f64 range), or with 400 digits.
    fn arb_number_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:?}")),
            "-?[1-9][0-9]{15,25}",
            "-?[1-9][0-9]{300,420}",
            "-?[0-9]\\.[0-9]{1,3}[eE][+-]?[0-9]{1,3}",
            select(vec![
                "1e400", "-1e400", "1e-400", "-0", "0.0", "-0.0", "1.0", "1E2"
            ])
            .prop_map(str::to_string),
        ]
    }

    fn arb_string_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,8}".prop_map(|s| Value::from(s).to_string()),
            select(vec![
                "\"1\"",
                "\"\"",
                "\"\\ud800\"",
                "\"\\udc00x\"",
                "\"\\u00e9\"",
                "\"a\\/b\""
            ])
            .prop_map(str::to_string),
        ]
    }

    /// JSON text built token by token, so that it can hold what no `Value` serialises
    /// to: duplicate object keys, numbers beyond f64, lone surrogate escapes.
    fn arb_json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            select(vec!["null", "true", "false"]).prop_map(str::to_string),
            arb_number_text(),
            arb_string_text(),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            let key = select(vec!["id", "data", "a", "", "~", "/", "0"]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key, inner), 0..5).prop_map(|members| {
                    let members: Vec<String> =
                        members.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn arb_pointer() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => select(vec!["", "/data", "/id", "/0", "/data/0"]).prop_map(str::to_string),
            4 => "(/(id|data|a|0|1|01|-|~0|~1|~|99999999999999999999|)){1,3}",
            1 => ".{0,6}",
        ]
    }

    /// Invalid UTF-8: a stray continuation byte, a truncated sequence, an encoded
    /// surrogate, a code point past U+10FFFF, an overlong encoding, a byte never valid.
    const INVALID_UTF8: &[&[u8]] = &[
        b"\x80",
        b"\xc3",
        b"\xe2\x82",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xc0\xaf",
        b"\xff",
    ];

    /// The id text of an id value, the way the daemon promises to derive it.
    fn id_text(v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(number_id(&n.to_string())),
            _ => None,
        }
    }

    /// The id of a number written as `text`: an integer's digits (also past 64 bits;
    /// within them as the integer prints, so "-0" is "0"), any other number as the
    /// nearest f64 prints (so 1.50 is 1.5); a float beyond f64 as written.
    fn number_id(text: &str) -> String {
        if !text.contains(['.', 'e', 'E']) {
            if let Ok(i) = text.parse::<i64>() {
                return i.to_string();
            }
            if let Ok(u) = text.parse::<u64>() {
                return u.to_string();
            }
            return text.to_string();
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => serde_json::Number::from_f64(f).unwrap().to_string(),
            _ => text.to_string(),
        }
    }

    /// Checks a successful extraction against serde_json's own pointer resolution, and
    /// a failed one for a message that names what it must name.
    fn check_extraction(doc: &Value, items_ptr: &str, id_ptr: &str) -> Result<(), TestCaseError> {
        match extract(doc, items_ptr, id_ptr) {
            Ok(items) => {
                let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
                let unique: std::collections::HashSet<&str> = ids.iter().copied().collect();
                prop_assert_eq!(unique.len(), ids.len(), "duplicate ids {:?}", ids);
                prop_assert!(ids.iter().all(|id| !id.is_empty()));
                match doc.pointer(items_ptr) {
                    Some(Value::Array(elements)) => {
                        prop_assert_eq!(items.len(), elements.len());
                        for (item, element) in items.iter().zip(elements) {
                            prop_assert_eq!(&item.value, element);
                            let id = element.pointer(id_ptr).and_then(id_text);
                            prop_assert_eq!(Some(&item.id), id.as_ref());
                        }
                    }
                    Some(Value::Object(members)) => {
                        let want: Vec<Item> = (members.iter())
                            .map(|(k, v)| Item {
                                id: k.clone(),
                                value: v.clone(),
                            })
                            .collect();
                        prop_assert_eq!(items, want);
                    }
                    other => prop_assert!(false, "extracted from {:?}", other),
                }
            }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.trim().is_empty());
                let valid = validate_pointer(items_ptr).is_ok() && validate_pointer(id_ptr).is_ok();
                if valid && doc.pointer(items_ptr).is_none() {
                    prop_assert!(matches!(e, ExtractError::ItemsNotFound { .. }), "{e:?}");
                }
                match &e {
                    ExtractError::MissingId { index, .. }
                    | ExtractError::BadIdType { index, .. }
                    | ExtractError::EmptyId { index, .. } => {
                        prop_assert!(message.contains(&format!("index {index}")), "{message}");
                    }
                    ExtractError::DuplicateId { id, first, second } => {
                        prop_assert!(first < second);
                        let (both, quoted) =
                            (format!("index {first} and {second}"), format!("{id:?}"));
                        prop_assert!(
                            message.contains(&both) && message.contains(&quoted),
                            "{}",
                            message
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Parses `body` the way a poll does and extracts; a parse error must say where.
    fn parse_and_extract(
        body: Vec<u8>,
        items_ptr: String,
        id_ptr: String,
    ) -> Result<(), TestCaseError> {
        guarded("parse and extract", move || {
            match serde_json::from_slice::<Value>(&body) {
                Err(e) => {
                    prop_assert!(!e.to_string().trim().is_empty());
                    prop_assert!(e.line() >= 1, "{e}");
                }
                Ok(doc) => check_extraction(&doc, &items_ptr, &id_ptr)?,
            }
            Ok(())
        })
    }

    fn arb_id_text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => arb_number_text(),
            3 => arb_string_text(),
            1 => select(vec!["null", "true", "false", "{}", "[]", "{\"id\":1}", "[1]"])
                .prop_map(str::to_string),
        ]
    }

    /// What `extract` must say for array items with these ids, worked out one rule at a
    /// time: the first item whose id is not a string or number, is empty, or repeats an
    /// earlier id's text decides the error.
    fn expected(ids: &[Value]) -> Result<Vec<String>, ExtractError> {
        let mut seen: Vec<String> = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            let id_ptr = "/id".to_string();
            let Some(text) = id_text(id) else {
                let found = match id {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Array(_) => "an array",
                    _ => "an object",
                };
                return Err(ExtractError::BadIdType {
                    index,
                    id_ptr,
                    found: found.into(),
                });
            };
            if text.is_empty() {
                return Err(ExtractError::EmptyId { index, id_ptr });
            }
            if let Some(first) = seen.iter().position(|s| *s == text) {
                return Err(ExtractError::DuplicateId {
                    id: text,
                    first,
                    second: index,
                });
            }
            seen.push(text);
        }
        Ok(seen)
    }

    proptest! {
        #![proptest_config(cases(1024))]

        #[test]
        fn random_bodies_parse_and_extract_or_fail_clearly(
            body in arb_json_text(),
            wrap in select(vec![
                "%",
                "[%]",
                r#"{"data":%}"#,
                r#"{"data":[{"id":%},{"id":"x","v":%}]}"#,
                r#"{"data":[{"id":1,"v":%},{"id":2,"v":%},{"id":"3","v":%}]}"#,
            ]),
            (items_ptr, id_ptr) in prop_oneof![
                2 => Just(("/data".to_string(), "/id".to_string())),
                3 => (arb_pointer(), arb_pointer()),
            ],
        ) {
            // `%` marks where the random JSON goes.
            let body = wrap.replace('%', &body).into_bytes();
            parse_and_extract(body, items_ptr, id_ptr)?;
        }

        #[test]
        fn invalid_utf8_anywhere_in_a_body_is_a_parse_error(
            body in arb_json_text(),
            bad in select(INVALID_UTF8.to_vec()),
            at in any::<Index>(),
        ) {
            let mut bytes = format!("[{{\"id\":\"x\",\"v\":{body}}}]").into_bytes();
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, bad.iter().copied());
            let err = serde_json::from_slice::<Value>(&bytes);
            prop_assert!(err.is_err(), "accepted {:?}", String::from_utf8_lossy(&bytes));
            let err = err.unwrap_err();
            prop_assert!(err.line() >= 1 && err.column() >= 1, "{}", err);
        }

        #[test]
        fn ids_of_every_type_give_the_ids_or_the_right_error(
            ids in prop::collection::vec(arb_id_text(), 1..8),
            dup in prop::option::of((any::<Index>(), any::<Index>())),
        ) {
            let mut ids = ids;
            if let Some((from, to)) = dup {
                // Repeat one id, as text, somewhere else: a guaranteed duplicate.
                let id = ids[from.index(ids.len())].clone();
                ids.insert(to.index(ids.len() + 1), id);
            }
            let items: Vec<String> =
                ids.iter().enumerate().map(|(i, id)| format!("{{\"id\":{id},\"n\":{i}}}")).collect();
            let body = format!("{{\"data\":[{}]}}", items.join(","));
            let parsed: Result<Vec<Value>, _> =
                ids.iter().map(|t| serde_json::from_str::<Value>(t)).collect();
            let doc = serde_json::from_slice::<Value>(body.as_bytes());
            match (parsed, doc) {
                (Ok(id_values), Ok(doc)) => {
                    let got = extract(&doc, "/data", "/id")
                        .map(|items| items.into_iter().map(|i| i.id).collect::<Vec<_>>());
                    let want = expected(&id_values);
                    match (&got, &want) {
                        // The description carries a preview; the kind is what matters.
                        (Err(ExtractError::BadIdType { index: a, found, .. }),
                         Err(ExtractError::BadIdType { index: b, found: kind, .. })) => {
                            prop_assert_eq!(a, b);
                            prop_assert!(found.starts_with(kind.as_str()), "{} vs {}", found, kind);
                        }
                        _ => prop_assert_eq!(&got, &want),
                    }
                    // An integer id that fits 64 bits keeps its exact digits.
                    if let Ok(got) = got {
                        for (text, id) in ids.iter().zip(&got) {
                            if text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok() {
                                // ("-0" is the one integer text JSON has twice.)
                                prop_assert!(text == "-0" || text == id, "{} became {}", text, id);
                            }
                        }
                    }
                }
                // A body holding an id the parser refuses (a number beyond f64, a lone
                // surrogate) is refused as a whole, with a position.
                (Err(id_err), Err(doc_err)) => {
                    prop_assert!(doc_err.line() == 1 && doc_err.column() > 0, "{}", doc_err);
                    prop_assert_eq!(id_err.classify(), doc_err.classify());
                }
                (parsed, doc) => prop_assert!(false, "ids {:?} but document {:?}", parsed, doc),
            }
        }
    }

    /// `depth` levels of arrays (`[…]`) or objects (`{"a": …}`) around two items,
    /// and the items pointer that reaches them.
    fn nested_body(depth: usize, arrays: bool) -> (String, String) {
        let (open, close, step) = if arrays {
            ("[", "]", "/0")
        } else {
            ("{\"a\":", "}", "/a")
        };
        let body = format!(
            "{}[{{\"id\":1}},{{\"id\":\"2\"}}]{}",
            open.repeat(depth),
            close.repeat(depth)
        );
        (body, step.repeat(depth))
    }

    /// serde_json's parser (what a poll uses) refuses more than 127 levels with an
    /// error; up to that, the rest of the pipeline, whose `Value` clones, comparisons and
    /// drops recurse, must cope on a worker-sized stack.
    #[test]
    fn nesting_past_the_parser_limit_is_an_error_and_below_it_extracts() {
        guarded("nesting 100..=200", || {
            for depth in 100..=200 {
                for arrays in [false, true] {
                    let (body, items_ptr) = nested_body(depth, arrays);
                    // The items array and its elements add two levels.
                    let levels = depth + 2;
                    let doc = match serde_json::from_slice::<Value>(body.as_bytes()) {
                        Ok(doc) => doc,
                        Err(e) => {
                            assert!(levels > PARSER_DEPTH_LIMIT, "{levels} levels: {e}");
                            assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
                            assert!(e.line() == 1 && e.column() > 0, "{e}");
                            continue;
                        }
                    };
                    assert!(levels <= PARSER_DEPTH_LIMIT, "parsed {levels} levels");
                    let items = extract(&doc, &items_ptr, "/id").unwrap();
                    let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
                    assert_eq!(ids, ["1", "2"]);
                    // The whole document as one item, changed at the bottom: the diff
                    // reports one update whose patch reaches all the way down.
                    let seen = Seen {
                        hash: fingerprint(&doc, &[]),
                        raw: serde_json::to_vec(&doc).unwrap(),
                    };
                    let prev = HashMap::from([("doc".to_string(), seen)]);
                    let changed: Value =
                        serde_json::from_str(&body.replace("\"2\"", "\"3\"")).unwrap();
                    let item = Item {
                        id: "doc".into(),
                        value: changed,
                    };
                    let ignore = [format!("{items_ptr}/1/id")];
                    let d = diff(&prev, vec![item.clone()], &[]).unwrap();
                    let patch =
                        serde_json::json!([{"op": "replace", "path": ignore[0], "value": "3"}]);
                    assert_eq!(d.changes.len(), 1);
                    assert_eq!(d.changes[0].changes.as_ref(), Some(&patch));
                    // Ignoring exactly that field, the change is no change.
                    let prev = HashMap::from([(
                        "doc".to_string(),
                        Seen {
                            hash: fingerprint(&doc, &ignore),
                            raw: serde_json::to_vec(&doc).unwrap(),
                        },
                    )]);
                    assert_eq!(diff(&prev, vec![item], &ignore).unwrap(), Diff::default());
                }
            }
        });
    }

    #[test]
    fn huge_numbers() {
        let digits400 = format!("1{}", "0".repeat(399));
        let digits300 = format!("1{}", "0".repeat(299));
        // Numbers beyond f64 and integers beyond 64 bits keep their exact text: no
        // two distinct ids an API sends become one.
        // (serde_json keeps an exponent with its sign.)
        for (big, id) in [
            ("1e400", "1e+400"),
            ("-1e400", "-1e+400"),
            (&digits400, &digits400),
            (&digits300, &digits300),
        ] {
            let doc: Value = serde_json::from_str(&format!("[{{\"id\":{big}}}]")).unwrap();
            assert_eq!(extract(&doc, "", "/id").unwrap()[0].id, id);
        }
        let doc: Value = serde_json::from_str(
            r#"[{"id":18446744073709551615},{"id":18446744073709551616},{"id":18446744073709551617}]"#,
        )
        .unwrap();
        let ids: Vec<String> = extract(&doc, "", "/id")
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(
            ids,
            [
                "18446744073709551615",
                "18446744073709551616",
                "18446744073709551617"
            ]
        );
        // 1 and "1" are one id; 1 and 1.0 are two.
        let doc: Value = serde_json::from_str(r#"[{"id":1},{"id":1.0},{"id":"1"}]"#).unwrap();
        let err = extract(&doc, "", "/id").unwrap_err();
        assert_eq!(
            err,
            ExtractError::DuplicateId {
                id: "1".into(),
                first: 0,
                second: 2
            }
        );
    }
}

mod diffing {
    use std::collections::HashMap;

    use pollhook::diff::{canonical_json, diff, fingerprint, ChangeKind, Diff, Seen};
    use pollhook::extract::Item;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use serde_json::{json, Map, Value};
    use sha2::{Digest, Sha256};

    use super::{cases, drop_iteratively, guarded};

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-2i64..3).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            select(vec!["", "é", "a/b", "~", "\u{0}", "\u{10FFFF}", "\"\\"]).prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                // Few distinct keys, so that two random objects share members.
                prop::collection::btree_map(
                    select(vec!["a", "b", "", "~1", "/", "0"]),
                    inner,
                    0..4
                )
                .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            ]
        })
    }

    fn arb_items() -> impl Strategy<Value = Vec<Item>> {
        prop::collection::btree_map("[a-e]|1|01|é", arb_json(), 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(id, value)| Item { id, value })
                .collect()
        })
    }

    fn arb_ignore() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(prop_oneof![".{0,3}", "(/(a|b|0|1|~0|~1|~2|)){1,3}"], 0..3)
    }

    /// The store as a committed poll of `items` leaves it.
    fn store(items: &[Item], ignore: &[String]) -> HashMap<String, Seen> {
        (items.iter())
            .map(|i| {
                let seen = Seen {
                    hash: fingerprint(&i.value, ignore),
                    raw: serde_json::to_vec(&i.value).unwrap(),
                };
                (i.id.clone(), seen)
            })
            .collect()
    }

    /// A separate RFC 6902 applier (add, remove, replace), strict about targets that
    /// must exist, to replay the `changes` of an update.
    fn apply(doc: &mut Value, patch: &Value) -> Result<(), String> {
        for op in patch.as_array().ok_or("patch is not an array")? {
            let name = op["op"].as_str().ok_or(format!("no op in {op}"))?;
            let path = op["path"].as_str().ok_or(format!("no path in {op}"))?;
            let value = op.get("value").cloned();
            if path.is_empty() {
                *doc = value
                    .filter(|_| name == "replace")
                    .ok_or(format!("bad root op {op}"))?;
                continue;
            }
            let tokens: Vec<String> = (path.strip_prefix('/').ok_or(format!("bad path {path}"))?)
                .split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect();
            let (last, parents) = tokens.split_last().ok_or("empty path")?;
            let mut cur = &mut *doc;
            for t in parents {
                cur = match cur {
                    Value::Object(m) => m.get_mut(t),
                    Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
                    _ => None,
                }
                .ok_or(format!("{path}: no parent {t:?}"))?;
            }
            let index = |len: usize| {
                last.parse::<usize>()
                    .ok()
                    .filter(|&i| i < len)
                    .ok_or(format!("{path}: bad index"))
            };
            match (name, cur, value) {
                ("add", Value::Object(m), Some(v)) => drop(m.insert(last.clone(), v)),
                ("add", Value::Array(a), Some(v)) => a.insert(index(a.len() + 1)?, v),
                ("remove", Value::Object(m), None) => {
                    drop(m.remove(last).ok_or(format!("{path}: absent"))?)
                }
                ("remove", Value::Array(a), None) => drop(a.remove(index(a.len())?)),
                ("replace", Value::Object(m), Some(v)) => {
                    *m.get_mut(last).ok_or(format!("{path}: absent"))? = v
                }
                ("replace", Value::Array(a), Some(v)) => {
                    let i = index(a.len())?;
                    a[i] = v;
                }
                _ => return Err(format!("bad op {op}")),
            }
        }
        Ok(())
    }

    /// Checks every change in `d` against the inputs it was computed from.
    fn check_diff(
        prev: &HashMap<String, Seen>,
        cur: &[Item],
        d: &Diff,
    ) -> Result<(), TestCaseError> {
        let cur_by_id: HashMap<&str, &Value> =
            cur.iter().map(|i| (i.id.as_str(), &i.value)).collect();
        for c in &d.changes {
            let stored = prev
                .get(&c.id)
                .map(|s| serde_json::from_slice::<Value>(&s.raw).unwrap());
            match c.kind {
                ChangeKind::Created => {
                    prop_assert!(stored.is_none());
                    prop_assert_eq!(Some(&&c.object), cur_by_id.get(c.id.as_str()));
                }
                ChangeKind::Updated => {
                    prop_assert_eq!(Some(&&c.object), cur_by_id.get(c.id.as_str()));
                    prop_assert_eq!(c.previous.as_ref(), stored.as_ref());
                    let mut replayed = c.previous.clone().unwrap();
                    let patch = c.changes.as_ref().unwrap();
                    prop_assert_eq!(apply(&mut replayed, patch), Ok(()), "patch {}", patch);
                    prop_assert_eq!(&replayed, &c.object, "patch {}", patch);
                }
                ChangeKind::Deleted => {
                    prop_assert!(!cur_by_id.contains_key(c.id.as_str()));
                    prop_assert_eq!(Some(&c.object), stored.as_ref());
                }
            }
        }
        let mut removals = d.removals.clone();
        removals.sort();
        prop_assert_eq!(&removals, &d.removals);
        Ok(())
    }

    proptest! {
        #![proptest_config(cases(512))]

        #[test]
        fn diff_of_random_snapshots_is_consistent_and_deterministic(
            old in arb_items(),
            new in arb_items(),
            ignore in arb_ignore(),
            repeat in prop::option::of(any::<Index>()),
        ) {
            guarded("diff", move || {
                let prev = store(&old, &ignore);
                let mut cur = new.clone();
                if let (Some(i), false) = (repeat, new.is_empty()) {
                    // A repeated id (extract never yields one): the first counts.
                    let mut again = new[i.index(new.len())].clone();
                    again.value = json!({"repeat": again.value});
                    cur.push(again);
                }
                let d = diff(&prev, cur.clone(), &ignore).unwrap();
                check_diff(&prev, &new, &d)?;
                // Same input, same output, whatever the map's iteration order.
                let mut entries: Vec<(String, Seen)> = prev.clone().into_iter().collect();
                entries.reverse();
                let reordered: HashMap<String, Seen> = entries.into_iter().collect();
                prop_assert_eq!(&diff(&reordered, cur, &ignore).unwrap(), &d);
                // Against itself, a snapshot has no changes and writes nothing.
                prop_assert_eq!(diff(&store(&new, &ignore), new.clone(), &ignore).unwrap(), Diff::default());
                Ok(())
            })?;
        }

        #[test]
        fn diff_with_garbage_in_the_store_never_panics(
            old in arb_items(),
            new in arb_items(),
            ignore in arb_ignore(),
            garbage in prop::collection::vec((any::<Index>(), prop::collection::vec(any::<u8>(), 0..12), any::<[u8; 32]>()), 0..3),
        ) {
            guarded("diff over a corrupt store", move || {
                let mut prev = store(&old, &ignore);
                let ids: Vec<String> = prev.keys().cloned().collect();
                for (i, raw, hash) in garbage.into_iter().filter(|_| !ids.is_empty()) {
                    let id = &ids[i.index(ids.len())];
                    prev.insert(id.clone(), Seen { hash, raw });
                }
                match diff(&prev, new.clone(), &ignore) {
                    Ok(d) => check_diff(&prev, &new, &d)?,
                    Err(e) => {
                        let message = e.to_string();
                        prop_assert!(ids.iter().any(|id| message.contains(&format!("{id:?}"))), "{}", message);
                    }
                }
                Ok(())
            })?;
        }
    }

    /// `depth` levels of arrays or objects around `1`, built without the parser (and
    /// therefore without its depth limit).
    fn nested(depth: usize, objects: bool) -> Value {
        let mut v = json!(1);
        for _ in 0..depth {
            v = if objects {
                // Not `json!`, which would serialise `v` again, recursively.
                Value::Object(Map::from_iter([("a".to_string(), v)]))
            } else {
                Value::Array(vec![v])
            };
        }
        v
    }

    const DEEP: usize = 10_000;
    const DEEP_CASE_VAR: &str = "BAD_INPUT_DEEP_CASE";

    /// The deep cases: arrays or objects, times four ignore lists. Each gives a name,
    /// the value's nesting, the ignore list and the canonical text left after it
    /// (built as text, independently of the library).
    fn deep_case(case: usize) -> (String, bool, Vec<String>, String) {
        let objects = case >= 4;
        let (step, open, close, empty) = if objects {
            ("/a", "{\"a\":", "}", "{}")
        } else {
            ("/0", "[", "]", "[]")
        };
        let whole = format!("{}1{}", open.repeat(DEEP), close.repeat(DEEP));
        let innermost_gone = format!("{}{empty}{}", open.repeat(DEEP - 1), close.repeat(DEEP - 1));
        let (what, ignore, canonical) = match case % 4 {
            0 => ("no ignore", vec![], whole),
            1 => (
                "an ignore resolving nowhere",
                vec!["/x/y".to_string()],
                whole,
            ),
            2 => (
                "an ignore at the deepest level",
                vec![step.repeat(DEEP)],
                innermost_gone,
            ),
            _ => (
                "an ignore at the top",
                vec![step.to_string()],
                empty.to_string(),
            ),
        };
        let kind = if objects { "objects" } else { "arrays" };
        let name = format!("fingerprint of {DEEP} levels of {kind} with {what}");
        (name, objects, ignore, canonical)
    }

    /// Runs the deep cases (one if `BAD_INPUT_DEEP_CASE` names it), each on a 2 MiB
    /// thread. The test below runs this in a child process, one case each.
    #[test]
    #[ignore = "the child of fingerprint_of_values_nested_10_000_deep_does_not_overflow"]
    fn deep_fingerprint_case() {
        let cases: Vec<usize> = match std::env::var(DEEP_CASE_VAR) {
            Ok(case) => vec![case.parse().unwrap()],
            Err(_) => (0..8).collect(),
        };
        for case in cases {
            let (name, objects, ignore, canonical) = deep_case(case);
            guarded(&name.clone(), move || {
                let v = nested(DEEP, objects);
                let want: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
                assert_eq!(fingerprint(&v, &ignore), want, "{name}");
                if ignore.is_empty() {
                    assert_eq!(canonical_json(&v), canonical.as_bytes(), "{name}");
                }
                drop_iteratively(v);
            });
        }
    }

    /// `fingerprint` must hash values of any depth (it promises "nesting depth costs
    /// heap, not call stack"). A stack overflow aborts the whole process, so each case
    /// runs in a child process: a failure is then reported here, by name, instead of
    /// taking every other test of this binary down with it.
    #[test]
    fn fingerprint_of_values_nested_10_000_deep_does_not_overflow() {
        let exe = std::env::current_exe().unwrap();
        let mut failures = Vec::new();
        for case in 0..8 {
            let out = std::process::Command::new(&exe)
                .args(["--exact", "diffing::deep_fingerprint_case", "--ignored"])
                .env(DEEP_CASE_VAR, case.to_string())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            // Guards against a filter that matches nothing, which would pass silently.
            assert!(
                stdout.contains("1 passed") || !out.status.success(),
                "{stdout}"
            );
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let why = stderr
                    .lines()
                    .find(|l| l.contains("overflowed") || l.contains("panicked"));
                failures.push(format!(
                    "{}: {} ({})",
                    deep_case(case).0,
                    why.unwrap_or("failed"),
                    out.status
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

mod signatures {
    use base64::Engine as _;
    use pollhook::sign::{verify, Scheme, Signer, VerifyError};
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    use super::cases;

    const TOLERANCE: i64 = 300;

    /// A webhook signed by `Signer` with one secret, as a receiver gets it.
    #[derive(Debug, Clone)]
    struct Signed {
        scheme: Scheme,
        secret: String,
        timestamp: i64,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    }

    impl Signed {
        /// Verifies at `now`, with the signature header's value replaced by `signature`.
        fn verify(&self, signature: Option<&str>, now: i64) -> Result<(), VerifyError> {
            let mut headers = self.headers.clone();
            if let Some(s) = signature {
                headers.last_mut().unwrap().1 = s.to_string();
            }
            self.verify_headers(&headers, now)
        }

        fn verify_headers(
            &self,
            headers: &[(String, String)],
            now: i64,
        ) -> Result<(), VerifyError> {
            let lookup = |name: &str| {
                (headers.iter())
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            verify(
                self.scheme,
                std::slice::from_ref(&self.secret),
                &lookup,
                &self.body,
                now,
                TOLERANCE,
            )
        }

        /// The signature header's value (the last header of every scheme).
        fn signature(&self) -> &str {
            &self.headers.last().unwrap().1
        }

        /// Where the hex digest starts in the signature header, for hex schemes.
        fn hex_start(&self) -> Option<usize> {
            let marker = match self.scheme {
                Scheme::Standard => return None,
                Scheme::Github => "sha256=",
                Scheme::Stripe => ",v1=",
            };
            Some(self.signature().find(marker).unwrap() + marker.len())
        }
    }

    fn arb_scheme() -> impl Strategy<Value = Scheme> {
        select(vec![Scheme::Standard, Scheme::Github, Scheme::Stripe])
    }

    fn arb_signed(scheme: impl Strategy<Value = Scheme>) -> impl Strategy<Value = Signed> {
        (
            scheme,
            prop::collection::vec(any::<u8>(), 1..48),
            "[ -~]{1,32}",
            "[A-Za-z0-9_]{1,24}",
            1i64..4_000_000_000,
            prop::collection::vec(any::<u8>(), 0..160),
        )
            .prop_map(|(scheme, key, text_secret, id, timestamp, body)| {
                let secret = match scheme {
                    Scheme::Standard => {
                        format!(
                            "whsec_{}",
                            base64::engine::general_purpose::STANDARD.encode(key)
                        )
                    }
                    _ => text_secret,
                };
                let signer = Signer::new(scheme, std::slice::from_ref(&secret)).unwrap();
                let headers = (signer.headers(&id, timestamp, &body).into_iter())
                    .map(|(n, v)| (n.to_string(), v))
                    .collect();
                Signed {
                    scheme,
                    secret,
                    timestamp,
                    body,
                    headers,
                }
            })
    }

    proptest! {
        #![proptest_config(cases(512))]

        #[test]
        fn unmutated_signature_verifies_within_tolerance(
            s in arb_signed(arb_scheme()),
            skew in -TOLERANCE..=TOLERANCE,
        ) {
            prop_assert_eq!(s.verify(None, s.timestamp + skew), Ok(()));
        }

        #[test]
        fn truncation_at_any_point_is_rejected(s in arb_signed(arb_scheme())) {
            let sig = s.signature().to_string();
            for cut in 0..sig.len() {
                let r = s.verify(Some(&sig[..cut]), s.timestamp);
                prop_assert!(r.is_err(), "{:?} accepted", &sig[..cut]);
            }
            prop_assert!(s.verify(Some("   "), s.timestamp).is_err());
        }

        #[test]
        fn any_flipped_bit_in_any_header_is_rejected(
            s in arb_signed(arb_scheme()),
            header in any::<Index>(),
            at in any::<Index>(),
            bit in 0u8..8,
        ) {
            let mut headers = s.headers.clone();
            let h = header.index(headers.len());
            let mut bytes = headers[h].1.clone().into_bytes();
            let at = at.index(bytes.len());
            let original = bytes[at];
            bytes[at] ^= 1 << bit;
            headers[h].1 = String::from_utf8_lossy(&bytes).into_owned();
            let r = s.verify_headers(&headers, s.timestamp);
            // Hex digests are read in either case (GitHub's and Stripe's libraries do),
            // so flipping a hex letter's case is the one change that still verifies.
            let case_of_hex_letter = h == headers.len() - 1
                && s.hex_start().is_some_and(|start| at >= start)
                && matches!(original, b'a'..=b'f')
                && bit == 5;
            if case_of_hex_letter {
                prop_assert_eq!(r, Ok(()));
            } else {
                prop_assert!(r.is_err(), "{:?} accepted", headers[h]);
            }
        }

        #[test]
        fn another_version_prefix_is_rejected(
            s in arb_signed(arb_scheme()),
            version in "[a-zA-Z0-9]{0,7}",
        ) {
            let sig = s.signature();
            let (real, changed) = match s.scheme {
                Scheme::Standard => ("v1", sig.replacen("v1,", &format!("{version},"), 1)),
                Scheme::Github => ("sha256", sig.replacen("sha256=", &format!("{version}="), 1)),
                Scheme::Stripe => ("v1", sig.replacen(",v1=", &format!(",{version}="), 1)),
            };
            prop_assume!(version != real);
            let r = s.verify(Some(&changed), s.timestamp);
            prop_assert!(r.is_err(), "{:?} accepted", changed);
        }

        #[test]
        fn timestamp_beyond_tolerance_is_rejected(
            s in arb_signed(select(vec![Scheme::Standard, Scheme::Stripe])),
            beyond in 1i64..1_000_000_000,
            later in any::<bool>(),
        ) {
            let now = if later { s.timestamp + TOLERANCE + beyond } else { s.timestamp - TOLERANCE - beyond };
            let r = s.verify(None, now);
            prop_assert!(matches!(r, Err(VerifyError::StaleTimestamp { .. })), "{:?}", r);
        }
    }
}
