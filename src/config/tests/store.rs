//! `[store]`: sled by default; a PostgreSQL URL from exactly one of three places, checked,
//! with its lease, instance name, CA file and sslmode; every problem at its key and line,
//! and the password in no message and no Debug output.

use super::*;

/// The password of every URL here, as written (percent-encoded) and as the server gets it.
const PASSWORD: &str = "hunter2%3Fx";
const DECODED: &str = "hunter2?x";
const URL: &str = "postgres://pollhook:hunter2%3Fx@db.internal:5432/pollhook?sslmode=require";
const SHOWN: &str = "postgres://pollhook:***@db.internal:5432/pollhook?sslmode=require";

fn env(name: &str) -> Option<String> {
    match name {
        "DB_URL" => Some(format!("{URL}\n")),
        "DB_PASSWORD" => Some(PASSWORD.into()),
        "EMPTY" => Some(" ".into()),
        // A URL missing its database, from the environment: its error must not show it.
        "DB_URL_NO_DB" => Some("postgres://pollhook:hunter2%3Fx@db.internal:5432".into()),
        _ => None,
    }
}

/// One target and one source, after the text under test (so its lines are the file's).
const REST: &str = r#"
[targets.t]
url = "https://hooks.example.com/t"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.s]
url = "https://api.example.com/s"
interval = "1m"
"#;

fn load_in(dir: &Path, store: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{store}\n{REST}"), &dir.join("config.toml"), &env)
}

fn load(store: &str) -> Result<Config, ConfigError> {
    load_in(Path::new("/etc/pollhook"), store)
}

fn postgres(store: &str) -> PostgresConfig {
    match load(store).unwrap_or_else(|e| panic!("{e}")).store {
        StoreConfig::Postgres(pg) => pg,
        StoreConfig::Sled => panic!("sled from {store}"),
    }
}

/// The one problem loading `store` finds, with the whole error's text.
fn problem(store: &str) -> (Problem, String) {
    let err = load(store).expect_err(store);
    let problems = err.problems();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    (problems[0].clone(), err.to_string())
}

fn assert_no_password(text: &str) {
    for secret in [PASSWORD, DECODED, "hunter2"] {
        assert!(!text.contains(secret), "{secret} leaked into {text}");
    }
}

#[test]
fn without_a_postgres_key_the_store_is_sled_in_state_dir() {
    assert_eq!(load("").unwrap().store, StoreConfig::Sled);
    assert_eq!(load("[store]").unwrap().store, StoreConfig::Sled);
    let c = load("state_dir = \"/var/lib/pollhook\"").unwrap();
    assert!(
        describe(&c).contains("store: sled in /var/lib/pollhook\n"),
        "{}",
        describe(&c)
    );
}

#[test]
fn a_postgres_url_loads_with_defaults_filled_in() {
    let pg = postgres(&format!("[store]\npostgres = \"{URL}\""));
    assert_eq!(pg.url, URL);
    assert_eq!(pg.display, SHOWN);
    assert_eq!(pg.lease, Duration::from_secs(15));
    assert_eq!(pg.instance, None);
    assert!(pg.ca.is_none());
    assert_eq!(pg.sslmode, SslMode::Require);
    let pg = postgres("[store]\npostgres = \"postgresql://db/pollhook\"\nlease = \"1m\"\ninstance = \"web-1.a_b\"");
    assert_eq!(pg.display, "postgresql://db/pollhook");
    assert_eq!(pg.lease, Duration::from_secs(60));
    assert_eq!(pg.instance.as_deref(), Some("web-1.a_b"));
    assert_eq!(pg.sslmode, SslMode::Prefer, "libpq's default");
}

#[test]
fn the_url_comes_from_a_value_an_environment_variable_or_a_file() {
    let from_value = postgres(&format!("[store]\npostgres = \"{URL}\""));
    let expanded = postgres(
        "[store]\npostgres = \"postgres://pollhook:${DB_PASSWORD}@db.internal:5432/pollhook?sslmode=require\"",
    );
    let from_env = postgres("[store]\npostgres_env = \"DB_URL\"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/db-url"), format!("{URL}\n")).unwrap();
    let from_file = match load_in(dir.path(), "[store]\npostgres_file = \"secrets/db-url\"")
        .unwrap_or_else(|e| panic!("{e}"))
        .store
    {
        StoreConfig::Postgres(pg) => pg,
        StoreConfig::Sled => panic!("sled"),
    };
    // The same URL each way, the trailing newline trimmed: equal, as a reload compares.
    for pg in [&expanded, &from_env, &from_file] {
        assert_eq!(pg, &from_value);
    }
}

#[test]
fn a_missing_variable_or_file_is_a_problem_naming_it() {
    let (p, _) = problem("[store]\npostgres_env = \"NO_SUCH_VAR\"");
    assert_eq!((p.key.as_str(), p.line), ("store.postgres_env", Some(2)));
    assert!(p.message.contains("NO_SUCH_VAR"), "{}", p.message);
    let (p, _) = problem("[store]\npostgres_env = \"EMPTY\"");
    assert!(
        p.message.contains("EMPTY") && p.message.contains("empty"),
        "{}",
        p.message
    );
    let (p, _) = problem("[store]\npostgres_file = \"no/such/file\"");
    assert_eq!((p.key.as_str(), p.line), ("store.postgres_file", Some(2)));
    assert!(
        p.message.contains("/etc/pollhook/no/such/file"),
        "{}",
        p.message
    );
    let (p, _) = problem("[store]\npostgres = \"postgres://u:${NOPE}@db/pollhook\"");
    assert_eq!((p.key.as_str(), p.line), ("store.postgres", Some(2)));
    assert!(p.message.contains("NOPE"), "{}", p.message);
}

#[test]
fn only_one_way_of_giving_the_url() {
    let (p, _) = problem(&format!(
        "[store]\npostgres = \"{URL}\"\npostgres_env = \"DB_URL\""
    ));
    assert_eq!((p.key.as_str(), p.line), ("store.postgres_env", Some(3)));
    assert!(p.message.contains("only one of"), "{}", p.message);
}

#[test]
fn store_keys_without_a_url_are_problems() {
    let err = load("[store]\nlease = \"30s\"\ninstance = \"a\"").unwrap_err();
    let problems = err.problems();
    let keys: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(
        keys,
        [("store.lease", Some(2)), ("store.instance", Some(3))]
    );
    assert!(problems[0].message.contains("PostgreSQL store only"));
}

#[test]
fn bad_urls_are_problems_with_key_and_line_that_never_show_the_password() {
    let cases = [
        (
            "postgres = \"mysql://pollhook:hunter2%3Fx@db/pollhook\"",
            "store.postgres",
            "postgres:// or postgresql://",
        ),
        (
            "postgres = \"postgres://pollhook:hunter2%3Fx@db.internal:5432\"",
            "store.postgres",
            "name the database, e.g. postgres://user@host:5432/pollhook",
        ),
        (
            "postgres = \"postgres://pollhook:hunter2%3Fx@db.internal:5432/\"",
            "store.postgres",
            "name the database",
        ),
        (
            "postgres = \"postgres:///pollhook\"",
            "store.postgres",
            "no host",
        ),
        (
            "postgres = \"host=db.internal dbname=pollhook password=hunter2%3Fx\"",
            "store.postgres",
            "write it as a URL",
        ),
        ("postgres = \"db.internal\"", "store.postgres", "not a PostgreSQL URL"),
        (
            "postgres = \"postgres://pollhook:hunter2%3Fx@db.internal:99999/pollhook\"",
            "store.postgres",
            "not a valid URL",
        ),
        (
            "postgres = \"postgres://pollhook:hunter2%3Fx@db/pollhook?sslmode=verify_full\"",
            "store.postgres",
            "\"verify_full\" in the URL is not one of disable, prefer, require, verify-ca, verify-full",
        ),
        ("postgres_env = \"DB_URL_NO_DB\"", "store.postgres_env", "name the database"),
    ];
    for (line, key, says) in cases {
        let (p, text) = problem(&format!("# the store\n[store]\n{line}"));
        assert_eq!((p.key.as_str(), p.line), (key, Some(3)), "{line}");
        assert!(p.message.contains(says), "{line}: {}", p.message);
        assert_no_password(&text);
    }
    // From a file, too.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("db-url"),
        "postgres://pollhook:hunter2%3Fx@db.internal/\n",
    )
    .unwrap();
    let err = load_in(dir.path(), "[store]\npostgres_file = \"db-url\"").unwrap_err();
    assert!(err.to_string().contains("name the database"), "{err}");
    assert_no_password(&err.to_string());
}

#[test]
fn sslmode_is_read_from_the_url() {
    for (word, mode) in [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-full", SslMode::VerifyFull),
    ] {
        let pg = postgres(&format!(
            "[store]\npostgres = \"postgres://db/pollhook?connect_timeout=5&sslmode={word}\""
        ));
        assert_eq!(pg.sslmode, mode, "{word}");
    }
    let (p, _) = problem("[store]\npostgres = \"postgres://db/pollhook?sslmode=allow\"");
    assert!(p.message.contains("not supported"), "{}", p.message);
}

#[test]
fn verify_ca_needs_ca_file() {
    // Against the public roots, verify-ca would take any certificate any public CA
    // issued; with ca_file it is read (ca_file_is_read_relative_to_the_config_file).
    let (p, _) = problem("[store]\npostgres = \"postgres://db/pollhook?sslmode=verify-ca\"");
    assert_eq!((p.key.as_str(), p.line), ("store.postgres", Some(2)));
    assert!(
        p.message.contains("verify-ca needs ca_file") && p.message.contains("verify-full"),
        "{}",
        p.message
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-ca.pem"), super::ca_pem()).unwrap();
    let store =
        "[store]\npostgres = \"postgres://db/pollhook?sslmode=verify-ca\"\nca_file = \"db-ca.pem\"";
    let StoreConfig::Postgres(pg) = load_in(dir.path(), store).unwrap().store else {
        panic!("sled");
    };
    assert_eq!(
        (pg.sslmode, pg.ca.map(|ca| ca.len())),
        (SslMode::VerifyCa, Some(1))
    );
}

#[test]
fn lease_is_a_duration_from_2s_to_10m() {
    let url = "postgres = \"postgres://db/pollhook\"";
    for (lease, says) in [
        ("1s", "at least 2s"),
        ("1999ms", "at least 2s"),
        ("11m", "at most 10m"),
        ("soon", "not a duration"),
    ] {
        let (p, _) = problem(&format!("[store]\n{url}\nlease = \"{lease}\""));
        assert_eq!(
            (p.key.as_str(), p.line),
            ("store.lease", Some(3)),
            "{lease}"
        );
        assert!(p.message.contains(says), "{lease}: {}", p.message);
    }
    for (lease, secs) in [("2s", 2), ("10m", 600)] {
        let pg = postgres(&format!("[store]\n{url}\nlease = \"{lease}\""));
        assert_eq!(pg.lease, Duration::from_secs(secs));
    }
}

#[test]
fn instance_names_are_checked() {
    let url = "postgres = \"postgres://db/pollhook\"";
    let long = "a".repeat(65);
    for name in ["", "web 1", "web/1", "wëb", long.as_str()] {
        let (p, _) = problem(&format!("[store]\n{url}\ninstance = \"{name}\""));
        assert_eq!(
            (p.key.as_str(), p.line),
            ("store.instance", Some(3)),
            "{name}"
        );
        assert!(p.message.contains("1-64 characters"), "{}", p.message);
    }
    let pg = postgres(&format!(
        "[store]\n{url}\ninstance = \"{}\"",
        "a".repeat(64)
    ));
    assert_eq!(pg.instance.map(|i| i.len()), Some(64));
}

#[test]
fn unknown_store_keys_are_problems_with_their_line() {
    let (p, _) = problem("[store]\npostgres = \"postgres://db/pollhook\"\nleese = \"15s\"");
    assert_eq!((p.key.as_str(), p.line), ("store.leese", Some(3)));
    assert!(p.message.contains("unknown key"), "{}", p.message);
}

#[test]
fn ca_file_is_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let pem = super::ca_pem();
    std::fs::write(dir.path().join("db-ca.pem"), &pem).unwrap();
    let store = "[store]\npostgres = \"postgres://db/pollhook?sslmode=verify-full\"\nca_file = \"db-ca.pem\"";
    let StoreConfig::Postgres(pg) = load_in(dir.path(), store).unwrap().store else {
        panic!("sled");
    };
    let ca = pg.ca.expect("the CA file's certificates");
    assert_eq!(ca.len(), 1);
    assert_eq!(ca.pem(), pem.as_bytes());
    let err = load_in(dir.path(), &store.replace("db-ca.pem", "missing.pem")).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!((p.key.as_str(), p.line), ("store.ca_file", Some(3)));
    assert!(p.message.contains("missing.pem"), "{}", p.message);
    // TLS turned off leaves the CA file unused: a contradiction to point out.
    let store = store.replace("verify-full", "disable");
    let err = load_in(dir.path(), &store).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!((p.key.as_str(), p.line), ("store.ca_file", Some(3)));
    assert!(p.message.contains("sslmode=disable"), "{}", p.message);
    // So does prefer, which does not verify: the operator means the certificate checked.
    for url in [
        "postgres://db/pollhook",
        "postgres://db/pollhook?sslmode=prefer",
    ] {
        let store = format!("[store]\npostgres = \"{url}\"\nca_file = \"db-ca.pem\"");
        let err = load_in(dir.path(), &store).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!((p.key.as_str(), p.line), ("store.ca_file", Some(3)));
        assert!(p.message.contains("sslmode=verify-full"), "{}", p.message);
    }
    // require takes it, and verifies with it (as libpq does).
    let store = store.replace("disable", "require");
    assert!(load_in(dir.path(), &store).is_ok());
}

#[test]
fn debug_and_check_show_the_store_without_its_password() {
    let c = load(&format!(
        "[store]\npostgres = \"{URL}&password=hunter2-too\"\ninstance = \"web-1\""
    ))
    .unwrap();
    let StoreConfig::Postgres(pg) = &c.store else {
        panic!("sled");
    };
    let shown = format!("{SHOWN}&password=***");
    assert_eq!(pg.display, shown);
    for text in [format!("{c:?}"), format!("{pg:?}"), describe(&c)] {
        assert_no_password(&text);
        assert!(text.contains(&shown), "{text}");
    }
    assert!(
        describe(&c).contains(&format!(
            "store: PostgreSQL at {shown} (lease 15s, instance web-1)\n"
        )),
        "{}",
        describe(&c)
    );
    let c = load("[store]\npostgres = \"postgres://db/pollhook\"").unwrap();
    assert!(
        describe(&c).contains("store: PostgreSQL at postgres://db/pollhook (lease 15s)\n"),
        "{}",
        describe(&c)
    );
}

#[test]
fn store_secrets_list_every_form_of_the_password() {
    let pg = postgres(&format!(
        "[store]\npostgres = \"{URL}&sslpassword=key-pass\""
    ));
    let secrets = store_secrets(&pg);
    for secret in [pg.url.as_str(), PASSWORD, DECODED, "key-pass"] {
        assert!(
            secrets.iter().any(|s| s == secret),
            "{secret} not in {secrets:?}"
        );
    }
    assert!(!secrets
        .iter()
        .any(|s| s == "db.internal" || s == "pollhook"));
    let redactor = crate::redact::Redactor::new(store_secrets(&pg));
    let error = format!("password authentication failed for {DECODED} at {}", pg.url);
    assert_no_password(&redactor.redact(&error));
    // Without a password there is only the URL.
    let pg = postgres("[store]\npostgres = \"postgres://pollhook@db/pollhook\"");
    assert_eq!(store_secrets(&pg), ["postgres://pollhook@db/pollhook"]);
}

#[test]
fn a_reload_sees_a_changed_store() {
    let text = format!("[store]\npostgres = \"{URL}\"");
    let (a, again) = (load(&text).unwrap(), load(&text).unwrap());
    assert_eq!(a.store, again.store, "loaded twice");
    for changed in [
        text.replace("hunter2", "hunter3"),
        format!("{text}\nlease = \"20s\""),
        format!("{text}\ninstance = \"web-2\""),
        text.replace("require", "verify-full"),
        String::new(),
    ] {
        assert_ne!(a.store, load(&changed).unwrap().store, "{changed}");
    }
}
