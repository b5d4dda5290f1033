use super::*;
use crate::sign::Scheme;

mod network;
mod paginate;
mod reload;
mod store;

fn env(name: &str) -> Option<String> {
    match name {
        "API_TOKEN" => Some("tok-123".into()),
        "HOOK_SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        "STATE_DIRECTORY" => Some("/var/lib/pollhook:/other".into()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/pollhook/config.toml"), &env)
}

const GOOD: &str = r#"
[targets.hooks]
url = "https://example.com/hooks"
secret_env = "HOOK_SECRET"

[targets.gh]
url = "https://example.com/gh"
secret = "It's a Secret to Everybody"
signature = "github"
timeout = "3s"
retry = ["1s", "2m"]
headers = { "X-Env" = "prod" }
max_in_flight = 4

[sources.things]
url = "https://api.example.com/things?token=${API_TOKEN}"
headers = { Authorization = "Bearer ${API_TOKEN}" }
interval = "1m"
items = "/data"
ignore = ["/updated_at"]
events = ["created", "deleted"]
targets = ["gh"]

[sources.weekly]
url = "https://api.example.com/weekly"
cron = "0 9 * * 1"
baseline = false
allow_empty = true
max_body = "1MiB"
"#;

#[test]
fn a_good_config_loads_with_defaults_filled_in() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/pollhook"));
    assert_eq!(c.shutdown_grace, Duration::from_secs(10));
    let hooks = &c.targets["hooks"];
    assert_eq!(hooks.signer.scheme(), Scheme::Standard);
    assert_eq!(hooks.retry, DEFAULT_RETRY.to_vec());
    assert_eq!(hooks.timeout, Duration::from_secs(10));
    assert_eq!(hooks.max_in_flight, 16);
    let gh = &c.targets["gh"];
    assert_eq!(gh.signer.scheme(), Scheme::Github);
    assert_eq!(
        gh.retry,
        vec![Duration::from_secs(1), Duration::from_secs(120)]
    );
    assert_eq!(gh.headers["x-env"], "prod");
    let things = &c.sources["things"];
    let req = things.http().unwrap();
    assert_eq!(req.url.query(), Some("token=tok-123"));
    assert_eq!(req.headers["authorization"], "Bearer tok-123");
    assert_eq!(
        things.events,
        vec![ChangeKind::Created, ChangeKind::Deleted]
    );
    assert_eq!(things.targets, vec!["gh".to_string()]);
    assert_eq!(things.id, "/id");
    assert!(things.baseline && !things.allow_empty);
    assert_eq!(things.max_body, DEFAULT_MAX_BODY);
    assert_eq!(things.max_items, DEFAULT_MAX_ITEMS);
    let weekly = &c.sources["weekly"];
    assert_eq!(weekly.targets, vec!["gh".to_string(), "hooks".to_string()]);
    assert!(!weekly.baseline && weekly.allow_empty);
    assert_eq!(weekly.max_body, 1 << 20);
    assert_eq!(weekly.http().unwrap().method, reqwest::Method::GET);
}

#[test]
fn debug_output_hides_secrets() {
    let c = parse(GOOD).unwrap();
    let dbg = format!("{c:?}");
    for secret in [
        "tok-123",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "It's a Secret",
    ] {
        assert!(!dbg.contains(secret), "{secret} leaked into {dbg}");
    }
    assert!(dbg.contains("things"));
}

#[test]
fn every_problem_is_reported_with_key_and_line() {
    let text = r#"
[targets.hooks]
url = "https://example.com/hooks"
secret = "not-whsec"
signatur = "github"

[sources.a]
url = "https://api.example.com/a"
interval = "1 fortnight"
cron = "* * * *"

[sources.b]
url = "https://api.example.com/b?k=${NOPE}"
cron = "0 9 * * 8"
items = "data"
targets = ["hooks", "nowhere"]

[sources.c]
url = "https://api.example.com/c"
"#;
    let err = parse(text).unwrap_err();
    let problems = err.problems();
    let find = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"))
    };
    assert_eq!(find("targets.hooks.signatur").line, Some(5));
    assert_eq!(find("targets.hooks.secret").line, Some(4));
    assert!(find("targets.hooks.secret").message.contains("whsec_"));
    assert_eq!(find("sources.a.cron").line, Some(10));
    assert!(find("sources.a.cron").message.contains("not both"));
    assert_eq!(find("sources.b.url").line, Some(13));
    assert!(find("sources.b.url").message.contains("NOPE"));
    assert_eq!(find("sources.b.cron").line, Some(14));
    assert_eq!(find("sources.b.items").line, Some(15));
    assert_eq!(find("sources.b.targets[1]").line, Some(16));
    assert!(find("sources.b.targets[1]").message.contains("nowhere"));
    assert!(find("sources.c").message.contains("schedule"));
    let text = err.to_string();
    assert!(
        text.contains("/etc/pollhook/config.toml:5: targets.hooks.signatur:"),
        "{text}"
    );
    // The bad secret itself is never echoed.
    assert!(!text.contains("not-whsec"), "{text}");
}

#[test]
fn bad_durations_and_cron_are_errors() {
    let text = r#"
[targets.t]
url = "http://127.0.0.1:1/h"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
retry = ["5s", "soon"]
timeout = "ten"

[sources.s]
url = "http://127.0.0.1:1/s"
cron = "61 * * * *"
timeout = "-1s"
"#;
    let keys: Vec<String> = parse(text)
        .unwrap_err()
        .problems()
        .into_iter()
        .map(|p| p.key)
        .collect();
    for k in [
        "targets.t.retry[1]",
        "targets.t.timeout",
        "sources.s.cron",
        "sources.s.timeout",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
}

#[test]
fn secrets_come_from_exactly_one_place() {
    let base = "[sources.s]\nurl = \"http://127.0.0.1:1/s\"\ninterval = \"1m\"\n[targets.t]\nurl = \"http://127.0.0.1:1/h\"\n";
    let none = parse(base).unwrap_err().to_string();
    assert!(none.contains("missing secret"), "{none}");
    let both = parse(&format!(
        "{base}secret = \"x\"\nsecret_env = \"HOOK_SECRET\"\nsignature = \"github\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(both.contains("only one"), "{both}");
    let unset = parse(&format!("{base}secret_env = \"UNSET_VAR\"\n"))
        .unwrap_err()
        .to_string();
    assert!(unset.contains("UNSET_VAR"), "{unset}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let from_file = format!("{base}secret_file = {:?}\n", file.display().to_string());
    assert!(parse(&from_file).is_ok());
    let missing = format!("{base}secret_file = \"/nonexistent/secret\"\n");
    assert!(parse(&missing)
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/secret"));
    // Rotation: several secrets.
    let many = format!(
        "{base}secret = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_dGVzdA==\"]\n"
    );
    assert!(parse(&many).is_ok());
}

#[test]
fn syntax_errors_name_file_and_line() {
    let err = parse("[sources.a]\nurl = \"x\"\ninterval = 5\n").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("/etc/pollhook/config.toml:3:"), "{text}");
    let err = parse("[sources.a\n").unwrap_err().to_string();
    assert!(err.contains("config.toml:1"), "{err}");
}

#[test]
fn syntax_errors_without_a_parser_message_still_explain() {
    for text in [
        "0=",
        "[targets.a]\n# a \0 comment\nurl = \"x\"\n",
        "[targets.a]\nurl =",
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("TOML syntax error at column"), "{err:?}");
    }
}

#[test]
fn empty_config_says_what_is_missing() {
    let text = parse("").unwrap_err().to_string();
    assert!(
        text.contains("no targets") && text.contains("no sources"),
        "{text}"
    );
}

#[test]
fn state_dir_defaults_and_resolves_relative_to_the_file() {
    let mut text = GOOD.to_string();
    text.insert_str(0, "state_dir = \"state\"\n");
    assert_eq!(
        parse(&text).unwrap().state_dir,
        PathBuf::from("/etc/pollhook/state")
    );
    let no_env = Config::parse(GOOD, Path::new("c.toml"), &|n| {
        env(n).filter(|_| n != "STATE_DIRECTORY")
    })
    .unwrap();
    // Next to the config file (made absolute), not in the working directory of the
    // moment: see `the_default_state_dir_is_next_to_the_config_file`.
    assert_eq!(
        no_env.state_dir,
        std::env::current_dir().unwrap().join("pollhook-state")
    );
}

#[test]
fn names_are_checked() {
    let text = GOOD.replace("[sources.weekly]", "[sources.\"bad name!\"]");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("names must be"), "{err}");
}

#[test]
fn the_example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = Config::parse(&text, &path, &|name| match name {
        "GITHUB_TOKEN" => Some("ghp_example".into()),
        _ => None,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.sources.is_empty() && !c.targets.is_empty());
}

#[test]
fn the_example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let env =
        |name: &str| Some(format!("whsec_dGVzdA==-{name}")).filter(|_| name != "STATE_DIRECTORY");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            // Secrets from the environment are arbitrary strings here; only the
            // standard scheme checks their form, so give those a valid one.
            let env = |n: &str| match n {
                "MY_APP_SECRET" | "APP_WEBHOOK_SECRET" => Some("whsec_dGVzdA==".to_string()),
                other => env(other),
            };
            Config::parse(&text, &path, &env).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 3, "no example configs found in {}", dir.display());
}

/// A CA certificate in PEM, made fresh: the tests must not depend on a checked-in
/// certificate that expires.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[test]
fn ca_file_is_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = format!("{}{}", ca_pem(), ca_pem());
    std::fs::write(dir.path().join("ca.pem"), &bundle).unwrap();
    let text = GOOD
        .replace(
            "max_in_flight = 4",
            "max_in_flight = 4\nca_file = \"ca.pem\"",
        )
        .replace(
            "allow_empty = true",
            "allow_empty = true\nca_file = \"ca.pem\"",
        );
    let c = Config::parse(&text, &dir.path().join("config.toml"), &env).unwrap();
    let gh = &c.targets["gh"];
    assert_eq!(
        gh.ca_file.as_deref(),
        Some(dir.path().join("ca.pem").as_path())
    );
    assert_eq!(gh.ca.len(), 2, "both certificates of the bundle");
    assert_eq!(c.sources["weekly"].ca.len(), 2);
    // Without the key: no extra roots.
    assert!(c.targets["hooks"].ca.is_empty() && c.targets["hooks"].ca_file.is_none());
    assert!(c.sources["things"].ca.is_empty());
    // Debug names the file and counts the certificates, nothing more.
    let dbg = format!("{gh:?}");
    assert!(
        dbg.contains("ca.pem") && dbg.contains("ca_certificates: 2"),
        "{dbg}"
    );
    assert!(!dbg.contains("BEGIN CERTIFICATE"), "{dbg}");
}

#[test]
fn an_unusable_ca_file_is_a_problem_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBv0\n-----END PRIVATE KEY-----\n",
    );
    write("empty.pem", "");
    write(
        "damaged.pem",
        "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    );
    // Valid PEM armour around bytes that are not a certificate.
    write(
        "not-x509.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let text = r#"
[targets.t]
url = "https://127.0.0.1:1/h"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ca_file = "missing.pem"

[targets.u]
url = "https://127.0.0.1:1/h"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ca_file = "key.pem"

[sources.a]
url = "https://127.0.0.1:1/s"
interval = "1m"
ca_file = "empty.pem"

[sources.b]
url = "https://127.0.0.1:1/s"
interval = "1m"
ca_file = "damaged.pem"

[sources.c]
url = "https://127.0.0.1:1/s"
interval = "1m"
ca_file = "not-x509.pem"
"#;
    let problems = Config::parse(text, &dir.path().join("config.toml"), &env)
        .unwrap_err()
        .problems();
    let find = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"))
    };
    let missing = find("targets.t.ca_file");
    assert_eq!(missing.line, Some(5));
    assert!(
        missing.message.contains("cannot read") && missing.message.contains("missing.pem"),
        "{missing:?}"
    );
    let key = find("targets.u.ca_file");
    assert_eq!(key.line, Some(10));
    assert!(key.message.contains("holds no certificate"), "{key:?}");
    let empty = find("sources.a.ca_file");
    assert_eq!(empty.line, Some(15));
    assert!(empty.message.contains("holds no certificate"), "{empty:?}");
    let damaged = find("sources.b.ca_file");
    assert_eq!(damaged.line, Some(20));
    assert!(damaged.message.contains("not a valid PEM"), "{damaged:?}");
    let not_x509 = find("sources.c.ca_file");
    assert_eq!(not_x509.line, Some(25));
    assert!(
        not_x509.message.contains("certificate 1 of 1") && not_x509.message.contains("X.509"),
        "{not_x509:?}"
    );
}

#[test]
fn admin_listen_and_log_format() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.admin_listen, Some("127.0.0.1:9187".parse().unwrap()));
    assert_eq!(c.log_format, LogFormat::Text);
    let c = parse(&format!(
        "log_format = \"json\"\n[admin]\nlisten = \"\"\n{GOOD}"
    ))
    .unwrap();
    assert_eq!(c.admin_listen, None);
    assert_eq!(c.log_format, LogFormat::Json);
    let c = parse(&format!("[admin]\nlisten = \"[::1]:9000\"\n{GOOD}")).unwrap();
    assert_eq!(c.admin_listen, Some("[::1]:9000".parse().unwrap()));

    let e = parse(&format!(
        "log_format = \"xml\"\n[admin]\nlisten = \"localhost\"\n{GOOD}"
    ))
    .unwrap_err();
    let problems = e.problems();
    let keys: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    assert_eq!(keys, [("log_format", Some(1)), ("admin.listen", Some(3))]);
}

#[test]
fn peeking_the_log_format_never_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    assert_eq!(peek_log_format(&path), LogFormat::Text, "missing file");
    std::fs::write(&path, "log_format = \"json\"\n[targets").unwrap();
    assert_eq!(peek_log_format(&path), LogFormat::Text, "broken file");
    std::fs::write(&path, "log_format = \"json\"\n").unwrap();
    assert_eq!(peek_log_format(&path), LogFormat::Json);
}

#[test]
fn equality_sees_every_change_including_secrets() {
    let a = parse(GOOD).unwrap();
    let b = parse(GOOD).unwrap();
    assert_eq!(a.targets["gh"], b.targets["gh"]);
    assert_eq!(a.sources["things"], b.sources["things"]);
    let c = parse(&GOOD.replace("It's a Secret to Everybody", "rotated")).unwrap();
    assert_ne!(a.targets["gh"], c.targets["gh"]);
    let c = parse(&GOOD.replace("interval = \"1m\"", "interval = \"2m\"")).unwrap();
    assert_ne!(a.sources["things"], c.sources["things"]);
    assert_eq!(a.sources["weekly"], c.sources["weekly"]);
    let other = |name: &str| match name {
        "API_TOKEN" => Some("tok-456".into()),
        n => env(n),
    };
    let c = Config::parse(GOOD, Path::new("/etc/pollhook/config.toml"), &other).unwrap();
    assert_ne!(
        a.sources["things"], c.sources["things"],
        "a new token in the environment is a change"
    );
}

#[test]
fn cron_time_zones() {
    let zoned = GOOD.replace(
        "cron = \"0 9 * * 1\"",
        "cron = \"0 9 * * 1\"\ntimezone = \"Europe/Berlin\"",
    );
    let c = parse(&zoned).unwrap();
    let weekly = &c.sources["weekly"];
    assert_eq!(weekly.schedule_text(), "cron \"0 9 * * 1\" (Europe/Berlin)");
    // `check` shows the zone's wall clock and UTC: Monday 09:00 in Berlin is 08:00Z in
    // winter, 07:00Z in summer (which one depends on today's date).
    let shown = describe(&c);
    assert!(
        shown.contains("T09:00:00+01:00 (") && shown.contains("T08:00:00Z)")
            || shown.contains("T09:00:00+02:00 (") && shown.contains("T07:00:00Z)"),
        "{shown}"
    );
    // Unzoned cron stays UTC.
    assert_eq!(
        parse(GOOD).unwrap().sources["weekly"].schedule_text(),
        "cron \"0 9 * * 1\" (UTC)"
    );

    let e = parse(&GOOD.replace(
        "cron = \"0 9 * * 1\"",
        "cron = \"0 9 * * 1\"\ntimezone = \"Berlin\"",
    ))
    .unwrap_err();
    let p = &e.problems()[0];
    assert_eq!(p.key, "sources.weekly.timezone");
    assert!(p.message.contains("Europe/Berlin"), "{}", p.message);
    let e = parse(&GOOD.replace("interval = \"1m\"", "interval = \"1m\"\ntimezone = \"UTC\""))
        .unwrap_err();
    assert_eq!(e.problems()[0].key, "sources.things.timezone");
}

#[test]
fn source_shapes_validate_with_every_problem_named() {
    let text = r#"
[targets.t]
url = "https://example.com/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.a]
url = "https://api.example.com/a"
command = ["/bin/true"]
interval = "1m"

[sources.b]
url = "https://api.example.com/b"
interval = "1m"
body = "x"
json = { q = 1 }
format = "xml"
mode = "rows"
event_type = "no spaces please"
transform = ".data |"

[sources.b.paginate]
next = "link"
page = "page"

[sources.c]
url = "https://api.example.com/c"
interval = "1m"
[sources.c.paginate]
cursor = "/next"

[sources.h]
url = "https://api.example.com/h"
interval = "1m"
transform = "[.[] | select(.open)]"
[sources.h.paginate]
page = "page"

[sources.d]
url = "https://api.example.com/d"
interval = "1m"
[sources.d.auth]
bearer = "x"
basic = { username = "u", password = "p" }

[sources.e]
command = ["/usr/bin/list", "--json"]
interval = "1m"
headers = { X = "y" }

[sources.f]
url = "https://api.example.com/f"
interval = "1m"
[sources.f.auth]
oauth2 = { token_url = "https://auth.example.com/token", client_id = "id", client_secret_env = "NOPE" }
"#;
    let e = parse(text).unwrap_err();
    let keys: Vec<String> = e.problems().iter().map(|p| p.key.clone()).collect();
    for want in [
        "sources.a.command",
        "sources.b.json",
        "sources.b.format",
        "sources.b.mode",
        "sources.b.event_type",
        "sources.b.transform",
        "sources.b.paginate",
        "sources.c.paginate.param",
        "sources.d.auth",
        "sources.e.command",
        "sources.f.auth.oauth2.client_secret_env",
        "sources.h.transform",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "no problem at {want}: {keys:?}"
        );
    }
    // Secrets named by the problems are never shown.
    assert!(!e.to_string().contains("whsec_"), "{e}");

    // And a good one, with every part.
    let good = r#"
max_per_host = 2
[targets.t]
url = "https://example.com/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.g]
url = "https://api.example.com/graphql"
interval = "5m"
json = { query = "{ viewer { login } }" }
query = { per_page = "100" }
transform = ".data.viewer | [.]"
event_type = "gh.viewer"
max_backoff = "10m"
[sources.g.auth]
bearer_env = "API_TOKEN"
[sources.g.paginate]
cursor = "/meta/next"
param = "after"
max_pages = 7
"#;
    let c = parse(good).unwrap();
    assert_eq!(c.max_per_host, 2);
    let g = &c.sources["g"];
    let req = g.http().unwrap();
    assert_eq!(
        req.method,
        reqwest::Method::POST,
        "a json body makes a POST"
    );
    assert_eq!(req.url.query(), Some("per_page=100"));
    assert_eq!(req.auth, Some(Auth::Bearer("tok-123".into())));
    assert!(!format!("{g:?}").contains("tok-123"), "{g:?}");
    assert_eq!(
        g.pagination,
        Some(Pagination {
            style: PageStyle::Cursor {
                pointer: "/meta/next".into(),
                param: "after".into()
            },
            max_pages: 7
        })
    );
    assert_eq!(g.event_type, "gh.viewer");
    assert_eq!(g.max_backoff, Duration::from_secs(600));
}

#[test]
fn deletion_guard_defaults_off_and_bad_values() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.sources["weekly"].deletion_guard, DeletionGuard::default());
    assert!(c.sources["weekly"].deletion_guard.holds_back(11, 20));
    assert!(!c.sources["weekly"].deletion_guard.holds_back(10, 20));
    assert!(!c.sources["weekly"].deletion_guard.holds_back(19, 19));
    let with = |table: &str| {
        GOOD.replace(
            "max_body = \"1MiB\"",
            &format!("max_body = \"1MiB\"\n\n[sources.weekly.deletion_guard]\n{table}"),
        )
    };
    let c = parse(&with("share = \"10%\"\nmin_items = 0\nconfirm = 5")).unwrap();
    assert_eq!(
        c.sources["weekly"].deletion_guard,
        DeletionGuard {
            share: Some(0.1),
            min_items: 0,
            confirm: 5
        }
    );
    let c = parse(&with("share = \"off\"")).unwrap();
    assert!(!c.sources["weekly"].deletion_guard.holds_back(1_000, 1_000));
    let e = parse(&with("share = \"half\"\nmin_items = -1\nconfirm = 1000")).unwrap_err();
    let keys: Vec<String> = e.problems().into_iter().map(|p| p.key).collect();
    for k in ["share", "min_items", "confirm"] {
        let key = format!("sources.weekly.deletion_guard.{k}");
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    // A reload sees a changed guard.
    let a = parse(GOOD).unwrap();
    let b = parse(&with("confirm = 3")).unwrap();
    assert_ne!(a.sources["weekly"], b.sources["weekly"]);
}

#[test]
fn secret_files_are_read_up_to_64_kib() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, "a".repeat(64 * 1024 + 1)).unwrap();
    let limit = dir.path().join("limit");
    std::fs::write(&limit, "a".repeat(64 * 1024)).unwrap();
    let config = |target_file: &std::path::Path, bearer_file: &str| {
        format!(
            "[sources.s]\nurl = \"http://127.0.0.1:1/s\"\ninterval = \"1m\"\nauth = {{ bearer_file = {bearer_file:?} }}\n\
             [targets.t]\nurl = \"http://127.0.0.1:1/h\"\nsignature = \"github\"\nsecret_file = {:?}\n",
            target_file.display().to_string()
        )
    };
    let err = parse(&config(&big, "/dev/null")).unwrap_err();
    let problems = err.problems();
    let target = problems
        .iter()
        .find(|p| p.key == "targets.t.secret_file")
        .unwrap_or_else(|| panic!("no secret_file problem: {err}"));
    assert!(
        target.message.contains(&big.display().to_string()) && target.message.contains("64 KiB"),
        "{}",
        target.message
    );
    assert!(parse(&config(&limit, limit.to_str().unwrap())).is_ok());
    // An endless file is read only up to the cap.
    let err = parse(&config(&limit, "/dev/zero")).unwrap_err().to_string();
    assert!(
        err.contains("sources.s.auth.bearer_file") && err.contains("/dev/zero is larger"),
        "{err}"
    );
}

#[test]
fn urls_with_variables_are_shown_as_written_and_their_values_are_redacted() {
    let text = r#"
[targets.slack]
url = "https://hooks.example.com/services/${API_TOKEN}"
secret_env = "HOOK_SECRET"

[sources.bot]
url = "https://api.telegram.org/bot${API_TOKEN}/getUpdates"
headers = { "X-Api-Key" = "literal-key-42", Accept = "application/json" }
query = { api_key = "query-key-77", state = "open" }
interval = "1m"
"#;
    let c = parse(text).unwrap();
    let bot = &c.sources["bot"];
    assert_eq!(
        bot.location(),
        "https://api.telegram.org/bot${API_TOKEN}/getUpdates?…"
    );
    assert!(bot.http().unwrap().url.path().contains("tok-123"));
    assert!(!format!("{bot:?}").contains("tok-123"), "{bot:?}");
    let r = &bot.http().unwrap().redactor;
    assert_eq!(
        r.redact("tok-123 literal-key-42 query-key-77 open application/json"),
        "<redacted> <redacted> <redacted> open application/json"
    );
    let slack = &c.targets["slack"];
    assert_eq!(
        slack.display_url,
        "https://hooks.example.com/services/${API_TOKEN}"
    );
    assert!(!format!("{slack:?}").contains("tok-123"), "{slack:?}");
    assert_eq!(
        slack.redactor.redact(
            "tok-123 whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        ),
        "<redacted> <redacted> <redacted>"
    );
    let described = describe(&c);
    assert!(
        described.contains("bot${API_TOKEN}/getUpdates"),
        "{described}"
    );
    assert!(described.contains("services/${API_TOKEN}"), "{described}");
    assert!(!described.contains("tok-123"), "{described}");
}

#[test]
fn the_default_state_dir_is_next_to_the_config_file() {
    let no_state_env = |n: &str| env(n).filter(|_| n != "STATE_DIRECTORY");
    let c = Config::parse(GOOD, Path::new("/srv/hooks/config.toml"), &no_state_env).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/srv/hooks/pollhook-state"));
    // A relative config path is made absolute once, at load: every relative path in it
    // means the same later, whatever the working directory is then.
    let c = Config::parse(GOOD, Path::new("conf/config.toml"), &no_state_env).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(c.state_dir, cwd.join("conf/pollhook-state"));
    let text = format!("state_dir = \"state\"\n{GOOD}");
    let c = Config::parse(&text, Path::new("conf/config.toml"), &no_state_env).unwrap();
    assert_eq!(c.state_dir, cwd.join("conf/state"));
    assert!(c.state_dir.is_absolute());
}

#[test]
fn a_schedule_with_interval_and_cron_reports_every_problem_of_both() {
    let text = r#"
[targets.t]
url = "http://127.0.0.1:1/h"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.s]
url = "http://127.0.0.1:1/s"
interval = "banana"
cron = "61 * * * *"
timezone = "Mars/Olympus_Mons"
"#;
    let problems = parse(text).unwrap_err().problems();
    let at = |key: &str, what: &str| {
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(what) && p.line.is_some()),
            "no problem at {key} saying {what:?} in {problems:#?}"
        )
    };
    at("sources.s.cron", "not both");
    at("sources.s.interval", "\"banana\" is not a duration");
    at("sources.s.cron", "61");
    at("sources.s.timezone", "Mars/Olympus_Mons");
    assert_eq!(problems.len(), 4, "{problems:#?}");
}

#[test]
fn durations_longer_than_ten_years_are_problems_with_key_and_line() {
    let text = r#"shutdown_grace = "11years"

[targets.t]
url = "http://127.0.0.1:1/h"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
retry = ["5s", "292000000y"]
timeout = "20y"

[sources.s]
url = "http://127.0.0.1:1/s"
interval = "100000000y"
max_backoff = "3650d 1h"
"#;
    let err = parse(text).unwrap_err();
    let problems = err.problems();
    for (key, line) in [
        ("shutdown_grace", 1),
        ("targets.t.retry[1]", 6),
        ("targets.t.timeout", 7),
        ("sources.s.interval", 11),
        ("sources.s.max_backoff", 12),
    ] {
        let p = problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"));
        assert_eq!(p.line, Some(line), "{p:?}");
        assert!(p.message.contains("10 years"), "{p:?}");
    }
    assert_eq!(problems.len(), 5, "{problems:#?}");
    // Ten years exactly is allowed: the bound is for typos, not for long retries.
    let ok = text
        .replace("\"11years\"", "\"10s\"")
        .replace("\"292000000y\"", "\"3650d\"")
        .replace("\"20y\"", "\"10s\"")
        .replace("\"100000000y\"", "\"1m\"")
        .replace("\"3650d 1h\"", "\"1h\"");
    let c = parse(&ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.targets["t"].retry[1], Duration::from_secs(3650 * 86400));
}

#[test]
fn a_config_file_that_cannot_be_read_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = Config::load(&path).unwrap_err();
    // As the binary prints it: the message and its causes, `{:#}`.
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert_eq!(shown.matches("No such file").count(), 1, "{shown}");
    assert!(shown.contains("pass --config FILE"), "{shown}");
}

#[test]
fn max_items_must_be_at_least_one() {
    for bad in ["0", "-3"] {
        let text = format!(
            "[targets.t]\nurl = \"http://127.0.0.1:1/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\n[sources.s]\nurl = \"http://127.0.0.1:1/s\"\ninterval = \"1m\"\nmax_items = {bad}\n"
        );
        let err = parse(&text).unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(
            (p.key.as_str(), p.line),
            ("sources.s.max_items", Some(8)),
            "{p:?}"
        );
        assert!(p.message.contains("at least 1"), "{p:?}");
    }
    let text = "[targets.t]\nurl = \"http://127.0.0.1:1/h\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n\n[sources.s]\nurl = \"http://127.0.0.1:1/s\"\ninterval = \"1m\"\nmax_items = 1_000_000\n";
    assert_eq!(parse(text).unwrap().sources["s"].max_items, 1_000_000);
}

#[test]
fn a_targets_types_filter_body_and_content_type_are_checked_with_their_lines() {
    let text = r#"
[targets.a]
url = "https://hooks.example.com/a"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
types = ["github.issue.*", "github.{a,b}"]
filter = ".data |"
body = "{text: }"
content_type = "text/plain\u0001"
headers = { Content-Type = "text/plain" }

[targets.b]
url = "https://hooks.example.com/b"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
types = []

[sources.s]
url = "https://api.example.com/s"
interval = "1m"
"#;
    let e = parse(text).unwrap_err();
    let find = |key: &str| {
        e.problems()
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem at {key}: {e}"))
            .clone()
    };
    let glob = find("targets.a.types[1]");
    assert_eq!(glob.line, Some(5));
    assert!(
        glob.message.contains("no other wildcards"),
        "{}",
        glob.message
    );
    assert_eq!(find("targets.a.filter").line, Some(6));
    assert!(find("targets.a.filter")
        .message
        .contains("not a valid jq program"));
    assert_eq!(find("targets.a.body").line, Some(7));
    assert_eq!(find("targets.a.content_type").line, Some(8));
    assert!(find("targets.a.headers")
        .message
        .contains("use content_type"));
    assert!(find("targets.b.types")
        .message
        .contains("nothing would be sent"));
    assert!(
        !e.problems().iter().any(|p| p.key == "targets.a.types[0]"),
        "{e}"
    );
}

#[test]
fn health_and_what_each_target_takes_are_checked_and_described() {
    let text = r#"
[health]
targets = ["chat", "nope"]
fail_after = 0
target_alert_after = "500ms"

[targets.chat]
url = "https://hooks.example.com/chat"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.s]
url = "https://api.example.com/s"
interval = "1m"
fail_after = -2
"#;
    let e = parse(text).unwrap_err();
    let at = |key: &str| {
        e.problems()
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem at {key}: {e}"))
            .line
    };
    assert_eq!(at("health.targets[1]"), Some(3));
    assert_eq!(at("health.fail_after"), Some(4));
    assert_eq!(at("health.target_alert_after"), Some(5));
    assert_eq!(at("sources.s.fail_after"), Some(14));

    let good = r#"
[health]
targets = ["chat"]
fail_after = 4

[targets.chat]
url = "https://hooks.example.com/chat"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
types = ["pollhook.*", "s.deleted"]
body = '{text: .type}'

[targets.app]
url = "https://hooks.example.com/app"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.s]
url = "https://api.example.com/s"
interval = "1m"

[sources.r]
url = "https://api.example.com/r"
interval = "1m"
fail_after = 9
"#;
    let c = parse(good).unwrap();
    assert_eq!(c.health.routes.targets(), ["chat"]);
    assert_eq!(c.health.fail_after, 4);
    assert_eq!(
        c.health.target_alert_after,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(c.sources["s"].fail_after, 4, "[health]'s by default");
    assert_eq!(c.sources["r"].fail_after, 9);
    let shown = describe(&c);
    assert!(
        shown.contains(
            "takes types pollhook.*, s.deleted; body \"{text: .type}\" as application/json"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("health: events to chat; a source fails after 4 failed polls"),
        "{shown}"
    );
}
