//! What a reload sees as changed: it restarts a source or target whose new settings are
//! not equal to those it runs with, and leaves the others alone. Every key a source or
//! target takes, changed alone, must make it unequal; the same text loaded twice must
//! not. The keys are the ones `raw` declares, so a key added there needs a case here.

use std::collections::BTreeSet;

use super::*;

const ONE: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TWO: &str = "whsec_dGhlIG90aGVyIHNlY3JldA==";

/// `SECRET_1` and `SECRET_2`, the same values as the files `secret-1` and `secret-2`;
/// `PROXY_1` and `PROXY_2` as `proxy-1` and `proxy-2`.
fn env(name: &str) -> Option<String> {
    match name {
        "SECRET_1" => Some(ONE.into()),
        "SECRET_2" => Some(TWO.into()),
        "PROXY_1" => Some("http://proxy-1.internal:3128".into()),
        "PROXY_2" => Some("http://proxy-2.internal:3128".into()),
        _ => None,
    }
}

/// A directory with the files the cases name: two secrets, two CA files, two proxy
/// URLs, two client certificates with their keys, and the first pair in one file.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (super::network::client_pair(), super::network::client_pair());
    for (name, text) in [
        ("secret-1", ONE.to_string()),
        ("secret-2", TWO.to_string()),
        ("ca-1.pem", super::ca_pem()),
        ("ca-2.pem", super::ca_pem()),
        ("proxy-1", "http://proxy-1.internal:3128".to_string()),
        ("proxy-2", "http://proxy-2.internal:3128".to_string()),
        ("both-1.pem", format!("{}{}", one.cert, one.key)),
        ("client-1.pem", one.cert),
        ("client-1.key", one.key),
        ("client-2.pem", two.cert),
        ("client-2.key", two.key),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A config in `dir` with source `s` and target `t` as written (TOML of their tables),
/// filled in to be valid where they do not say (a url, an interval, a secret), and a
/// second target `u`.
fn load(dir: &Path, source: &str, target: &str) -> Config {
    let mut s: toml::Table = source.parse().unwrap();
    if !s.contains_key("url") && !s.contains_key("command") {
        s.insert("url".into(), "https://api.example.com/s".into());
    }
    if !s.contains_key("interval") && !s.contains_key("cron") {
        s.insert("interval".into(), "1m".into());
    }
    let mut t: toml::Table = target.parse().unwrap();
    t.entry("url")
        .or_insert("https://hooks.example.com/t".into());
    if !["secret", "secret_env", "secret_file"]
        .iter()
        .any(|k| t.contains_key(*k))
    {
        t.insert("secret".into(), ONE.into());
    }
    let u: toml::Table = format!("url = \"https://hooks.example.com/u\"\nsecret = \"{ONE}\"")
        .parse()
        .unwrap();
    let mut doc = toml::Table::new();
    doc.insert(
        "sources".into(),
        toml::Table::from_iter([("s".into(), s.into())]).into(),
    );
    doc.insert(
        "targets".into(),
        toml::Table::from_iter([("t".into(), t.into()), ("u".into(), u.into())]).into(),
    );
    let text = doc.to_string();
    Config::parse(&text, &dir.join("config.toml"), &env).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The keys a raw table takes, as serde's derive names them (it hands them to
/// `deserialize_struct`, which is all this deserializer answers).
fn keys_of<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the names are wanted"))
        }
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    assert!(
        !names.is_empty(),
        "{} names no keys",
        std::any::type_name::<T>()
    );
    names
}

/// Every key of the tables given as (prefix, keys), dotted; a key that is itself a table
/// (another prefix) is not listed, its keys are.
fn leaf_keys(tables: &[(&str, &[&str])]) -> BTreeSet<String> {
    let all: BTreeSet<String> = tables
        .iter()
        .flat_map(|(prefix, keys)| keys.iter().map(move |k| format!("{prefix}{k}")))
        .collect();
    all.iter()
        .filter(|k| !tables.iter().any(|(prefix, _)| *prefix == format!("{k}.")))
        .cloned()
        .collect()
}

/// (key, its table before, after): each changes that key alone.
const SOURCE_CASES: &[(&str, &str, &str)] = &[
    ("url", "", "url = 'https://api.example.com/other'"),
    ("command", "command = ['list', 'a']", "command = ['list', 'b']"),
    ("method", "", "method = 'POST'"),
    ("headers", "headers = { X-A = '1' }", "headers = { X-A = '2' }"),
    ("query", "", "query = { state = 'open' }"),
    ("body", "body = 'a'", "body = 'b'"),
    ("json", "json = { q = 1 }", "json = { q = 2 }"),
    ("interval", "", "interval = '2m'"),
    ("cron", "cron = '0 9 * * 1'", "cron = '0 10 * * 1'"),
    (
        "timezone",
        "cron = '0 9 * * 1'",
        "cron = '0 9 * * 1'\ntimezone = 'Europe/Berlin'",
    ),
    ("timeout", "", "timeout = '5s'"),
    ("max_body", "", "max_body = '1MiB'"),
    ("max_items", "", "max_items = 10"),
    ("items", "", "items = '/data'"),
    ("id", "", "id = '/key'"),
    ("ignore", "", "ignore = ['/updated_at']"),
    ("events", "", "events = ['created']"),
    ("targets", "", "targets = ['t']"),
    ("baseline", "", "baseline = false"),
    ("allow_empty", "", "allow_empty = true"),
    ("ca_file", "ca_file = 'ca-1.pem'", "ca_file = 'ca-2.pem'"),
    ("max_backoff", "", "max_backoff = '5m'"),
    ("fail_after", "", "fail_after = 5"),
    ("format", "", "format = 'feed'"),
    ("transform", "transform = '.'", "transform = '.data'"),
    ("mode", "", "mode = 'document'"),
    ("event_type", "", "event_type = 'renamed'"),
    (
        "auth.bearer",
        "auth = { bearer = 'tok-1' }",
        "auth = { bearer = 'tok-2' }",
    ),
    (
        "auth.bearer_env",
        "auth = { bearer_env = 'SECRET_1' }",
        "auth = { bearer_env = 'SECRET_2' }",
    ),
    (
        "auth.bearer_file",
        "auth = { bearer_file = 'secret-1' }",
        "auth = { bearer_file = 'secret-2' }",
    ),
    (
        "auth.basic.username",
        "auth.basic = { username = 'a', password = 'pw-1' }",
        "auth.basic = { username = 'b', password = 'pw-1' }",
    ),
    (
        "auth.basic.password",
        "auth.basic = { username = 'a', password = 'pw-1' }",
        "auth.basic = { username = 'a', password = 'pw-2' }",
    ),
    (
        "auth.basic.password_env",
        "auth.basic = { username = 'a', password_env = 'SECRET_1' }",
        "auth.basic = { username = 'a', password_env = 'SECRET_2' }",
    ),
    (
        "auth.basic.password_file",
        "auth.basic = { username = 'a', password_file = 'secret-1' }",
        "auth.basic = { username = 'a', password_file = 'secret-2' }",
    ),
    (
        "auth.oauth2.token_url",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret = 's-1' }",
        "auth.oauth2 = { token_url = 'https://auth.example.com/b', client_id = 'c', client_secret = 's-1' }",
    ),
    (
        "auth.oauth2.client_id",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret = 's-1' }",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'd', client_secret = 's-1' }",
    ),
    (
        "auth.oauth2.client_secret",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret = 's-1' }",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret = 's-2' }",
    ),
    (
        "auth.oauth2.client_secret_env",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret_env = 'SECRET_1' }",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret_env = 'SECRET_2' }",
    ),
    (
        "auth.oauth2.client_secret_file",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret_file = 'secret-1' }",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret_file = 'secret-2' }",
    ),
    (
        "auth.oauth2.scopes",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret = 's-1' }",
        "auth.oauth2 = { token_url = 'https://auth.example.com/a', client_id = 'c', client_secret = 's-1', scopes = ['read'] }",
    ),
    (
        "paginate.next",
        "paginate = { next = 'link' }",
        "paginate = { next = '/next' }",
    ),
    (
        "paginate.cursor",
        "paginate = { cursor = '/a', param = 'c' }",
        "paginate = { cursor = '/b', param = 'c' }",
    ),
    (
        "paginate.param",
        "paginate = { cursor = '/a', param = 'c' }",
        "paginate = { cursor = '/a', param = 'd' }",
    ),
    (
        "paginate.page",
        "paginate = { page = 'page' }",
        "paginate = { page = 'p' }",
    ),
    (
        "paginate.offset",
        "paginate = { offset = 'offset', size = 'limit', size_value = 10 }",
        "paginate = { offset = 'startAt', size = 'limit', size_value = 10 }",
    ),
    (
        "paginate.start",
        "paginate = { page = 'page' }",
        "paginate = { page = 'page', start = 0 }",
    ),
    (
        "paginate.size",
        "paginate = { page = 'page', size = 'per_page', size_value = 10 }",
        "paginate = { page = 'page', size = 'limit', size_value = 10 }",
    ),
    (
        "paginate.size_value",
        "paginate = { page = 'page', size = 'per_page', size_value = 10 }",
        "paginate = { page = 'page', size = 'per_page', size_value = 20 }",
    ),
    (
        "paginate.max_pages",
        "paginate = { next = 'link' }",
        "paginate = { next = 'link', max_pages = 5 }",
    ),
    (
        "deletion_guard.share",
        "",
        "deletion_guard = { share = '10%' }",
    ),
    (
        "deletion_guard.min_items",
        "",
        "deletion_guard = { min_items = 5 }",
    ),
    ("deletion_guard.confirm", "", "deletion_guard = { confirm = 3 }"),
    (
        "proxy",
        "proxy = 'http://u:pw-1@proxy.internal:3128'",
        "proxy = 'http://u:pw-2@proxy.internal:3128'",
    ),
    ("proxy_env", "proxy_env = 'PROXY_1'", "proxy_env = 'PROXY_2'"),
    ("proxy_file", "proxy_file = 'proxy-1'", "proxy_file = 'proxy-2'"),
    (
        "client_cert",
        "client_cert = 'client-1.pem'\nclient_key = 'client-1.key'",
        "client_cert = 'client-2.pem'\nclient_key = 'client-2.key'",
    ),
    (
        "client_key",
        "client_cert = 'both-1.pem'\nclient_key = 'both-1.pem'",
        "client_cert = 'both-1.pem'\nclient_key = 'client-1.key'",
    ),
];

/// (key, its table before, after), as for sources.
const TARGET_CASES: &[(&str, &str, &str)] = &[
    ("url", "", "url = 'https://hooks.example.com/other'"),
    (
        "secret",
        "secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'",
        "secret = ['whsec_dGhlIG90aGVyIHNlY3JldA==', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw']",
    ),
    (
        "secret_env",
        "secret_env = 'SECRET_1'",
        "secret_env = 'SECRET_2'",
    ),
    (
        "secret_file",
        "secret_file = 'secret-1'",
        "secret_file = 'secret-2'",
    ),
    ("signature", "signature = 'github'", "signature = 'stripe'"),
    ("timeout", "", "timeout = '3s'"),
    ("retry", "", "retry = ['1s']"),
    (
        "headers",
        "headers = { X-Env = 'prod' }",
        "headers = { X-Env = 'test' }",
    ),
    ("max_in_flight", "", "max_in_flight = 4"),
    ("ca_file", "ca_file = 'ca-1.pem'", "ca_file = 'ca-2.pem'"),
    ("types", "", "types = ['s.*']"),
    ("filter", "", "filter = '.type != \"x\"'"),
    ("body", "", "body = '{text: .type}'"),
    ("content_type", "", "content_type = 'text/plain'"),
    (
        "proxy",
        "proxy = 'http://u:pw-1@proxy.internal:3128'",
        "proxy = 'http://u:pw-2@proxy.internal:3128'",
    ),
    (
        "proxy_env",
        "proxy_env = 'PROXY_1'",
        "proxy_env = 'PROXY_2'",
    ),
    (
        "proxy_file",
        "proxy_file = 'proxy-1'",
        "proxy_file = 'proxy-2'",
    ),
    (
        "client_cert",
        "client_cert = 'client-1.pem'\nclient_key = 'client-1.key'",
        "client_cert = 'client-2.pem'\nclient_key = 'client-2.key'",
    ),
    (
        "client_key",
        "client_cert = 'both-1.pem'\nclient_key = 'both-1.pem'",
        "client_cert = 'both-1.pem'\nclient_key = 'client-1.key'",
    ),
];

/// Target keys that decide which events a target is queued and in what bytes: a source
/// routes its events when it queues them, so it restarts with the new rules too
/// (`content_type` only with a `body`; alone it is a header of the target's).
const ROUTING_KEYS: &[&str] = &["types", "filter", "body"];

#[test]
fn the_cases_cover_every_key_of_a_source_and_a_target() {
    use super::raw::*;
    let source = leaf_keys(&[
        ("", keys_of::<RawSource>()),
        ("auth.", keys_of::<RawAuth>()),
        ("auth.basic.", keys_of::<RawBasic>()),
        ("auth.oauth2.", keys_of::<RawOAuth2>()),
        ("paginate.", keys_of::<RawPaginate>()),
        ("deletion_guard.", keys_of::<RawDeletionGuard>()),
    ]);
    let target = leaf_keys(&[("", keys_of::<RawTarget>())]);
    for (what, keys, list) in [
        ("source", source, SOURCE_CASES),
        ("target", target, TARGET_CASES),
    ] {
        let cases: BTreeSet<String> = list.iter().map(|(k, _, _)| k.to_string()).collect();
        let missing: Vec<_> = keys.difference(&cases).collect();
        let unknown: Vec<_> = cases.difference(&keys).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "{what} keys without a case: {missing:?}; cases of no key: {unknown:?}"
        );
    }
}

#[test]
fn changing_any_one_key_of_a_source_or_target_restarts_it_on_reload() {
    let dir = files();
    let dir = dir.path();
    for (key, before, after) in SOURCE_CASES {
        let (a, again, b) = (
            load(dir, before, ""),
            load(dir, before, ""),
            load(dir, after, ""),
        );
        assert_eq!(a.sources["s"], again.sources["s"], "{key}: loaded twice");
        assert_ne!(a.sources["s"], b.sources["s"], "{key}: changed");
        assert_eq!(a.targets["t"], b.targets["t"], "{key} is the source's");
    }
    for (key, before, after) in TARGET_CASES {
        let (a, again, b) = (
            load(dir, "", before),
            load(dir, "", before),
            load(dir, "", after),
        );
        assert_eq!(a.targets["t"], again.targets["t"], "{key}: loaded twice");
        assert_ne!(a.targets["t"], b.targets["t"], "{key}: changed");
        if ROUTING_KEYS.contains(key) {
            assert_ne!(
                a.sources["s"], b.sources["s"],
                "{key} routes the source's events"
            );
        } else {
            assert_eq!(a.sources["s"], b.sources["s"], "{key} is the target's");
        }
    }
}

#[test]
fn a_file_rewritten_in_place_is_a_change() {
    let dir = files();
    let source = "ca_file = 'ca-1.pem'\nauth = { bearer_file = 'secret-1' }";
    let target = "ca_file = 'ca-1.pem'\nsecret_file = 'secret-1'";
    let a = load(dir.path(), source, target);
    std::fs::write(dir.path().join("ca-1.pem"), super::ca_pem()).unwrap();
    let b = load(dir.path(), source, target);
    assert_ne!(a.sources["s"], b.sources["s"], "a new CA file");
    assert_ne!(a.targets["t"], b.targets["t"], "a new CA file");
    std::fs::write(dir.path().join("secret-1"), TWO).unwrap();
    let c = load(dir.path(), source, target);
    assert_ne!(b.sources["s"], c.sources["s"], "a new secret file");
    assert_ne!(b.targets["t"], c.targets["t"], "a new secret file");

    // A client certificate renewed in place (new certificate, new key, same paths).
    let reach = "client_cert = 'client-1.pem'\nclient_key = 'client-1.key'\nproxy_file = 'proxy-1'";
    let d = load(dir.path(), reach, reach);
    let renewed = super::network::client_pair();
    std::fs::write(dir.path().join("client-1.pem"), renewed.cert).unwrap();
    std::fs::write(dir.path().join("client-1.key"), renewed.key).unwrap();
    let e = load(dir.path(), reach, reach);
    assert_ne!(
        d.sources["s"], e.sources["s"],
        "a renewed client certificate"
    );
    assert_ne!(
        d.targets["t"], e.targets["t"],
        "a renewed client certificate"
    );
    std::fs::write(dir.path().join("proxy-1"), "http://elsewhere.internal:3128").unwrap();
    let f = load(dir.path(), reach, reach);
    assert_ne!(e.sources["s"], f.sources["s"], "a new proxy file");
    assert_ne!(e.targets["t"], f.targets["t"], "a new proxy file");
}
