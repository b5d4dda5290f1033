//! `proxy` (and `proxy_env`, `proxy_file`), `client_cert` and `client_key` on sources
//! and targets: what loads, what is a problem with its key and line, and that a proxy's
//! credentials show nowhere (Debug, `pollhook check`, problems) but are redacted.

use super::*;

/// A client certificate signed by a fresh CA, its key, and another key that is not its.
pub(super) struct ClientPair {
    pub cert: String,
    pub key: String,
    pub other_key: String,
}

pub(super) fn client_pair() -> ClientPair {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    ClientPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
        other_key: rcgen::KeyPair::generate().unwrap().serialize_pem(),
    }
}

fn env(name: &str) -> Option<String> {
    match name {
        "CORP_PROXY" => Some("http://env-user:env-pass-1@proxy.internal:3128".into()),
        "PROXY_PASSWORD" => Some("var-pass-2".into()),
        _ => None,
    }
}

/// `text` as the config file `config.toml` in `dir`.
fn load(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.join("config.toml"), &env)
}

const HEAD: &str = r#"
[targets.t]
url = "https://hooks.example.com/t"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

#[test]
fn proxies_load_from_value_variable_or_file_and_none_turns_them_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy-url"),
        "https://file-user:file-pass-3@proxy.internal:8443\n",
    )
    .unwrap();
    let text = format!(
        r#"{HEAD}proxy = "http://pollhook:${{PROXY_PASSWORD}}@proxy.internal:3128"

[targets.u]
url = "https://hooks.example.com/u"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
proxy = "none"

[sources.a]
url = "https://api.example.com/a"
interval = "1m"
proxy_env = "CORP_PROXY"

[sources.b]
url = "https://api.example.com/b"
interval = "1m"
proxy_file = "proxy-url"

[sources.c]
url = "https://api.example.com/c"
interval = "1m"
"#
    );
    let c = load(dir.path(), &text).unwrap_or_else(|e| panic!("{e}"));
    let shown = |p: &ProxySetting| p.url().map(|u| u.shown().to_string());
    assert_eq!(
        shown(&c.targets["t"].proxy).as_deref(),
        Some("http://proxy.internal:3128")
    );
    assert_eq!(c.targets["u"].proxy, ProxySetting::Off);
    assert_eq!(
        shown(&c.sources["a"].proxy).as_deref(),
        Some("http://proxy.internal:3128")
    );
    assert_eq!(
        shown(&c.sources["b"].proxy).as_deref(),
        Some("https://proxy.internal:8443")
    );
    assert_eq!(c.sources["c"].proxy, ProxySetting::Environment);

    // The credentials show nowhere ...
    let check = describe(&c);
    let dbg = format!("{c:?}");
    for secret in [
        "var-pass-2",
        "env-user",
        "env-pass-1",
        "file-user",
        "file-pass-3",
    ] {
        assert!(!check.contains(secret), "{secret} in check:\n{check}");
        assert!(!dbg.contains(secret), "{secret} in Debug: {dbg}");
    }
    assert!(
        check.contains("via proxy http://proxy.internal:3128"),
        "{check}"
    );
    assert!(check.contains("no proxy"), "{check}");
    // ... and are taken out of errors, as written and as the Proxy-Authorization
    // header's base64 carries them.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let t = &c.targets["t"].redactor;
    let echoed = format!("407: got Basic {}", b64("pollhook:var-pass-2"));
    assert_eq!(t.redact(&echoed), "407: got Basic <redacted>");
    assert!(!t.redact("pw var-pass-2").contains("var-pass-2"));
    let a = &c.sources["a"].http().unwrap().redactor;
    let echoed = format!("{} env-pass-1", b64("env-user:env-pass-1"));
    assert_eq!(a.redact(&echoed), "<redacted> <redacted>");
    let b = &c.sources["b"].http().unwrap().redactor;
    assert!(!b.redact("file-pass-3").contains("file-pass-3"));
}

#[test]
fn a_bad_proxy_is_a_problem_with_key_and_line_that_never_quotes_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{HEAD}proxy = "socks5://user:quoted-pass@proxy.internal:1080"

[targets.u]
url = "https://hooks.example.com/u"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
proxy = "http://user:quoted-pass@proxy.internal:99999"

[sources.a]
url = "https://api.example.com/a"
interval = "1m"
proxy = "proxy.internal:3128"
proxy_env = "CORP_PROXY"

[sources.b]
url = "https://api.example.com/b"
interval = "1m"
proxy_env = "UNSET_PROXY"

[sources.c]
url = "https://api.example.com/c"
interval = "1m"
proxy_file = "missing"

[sources.d]
url = "https://api.example.com/d"
interval = "1m"
proxy = "http://user:quoted-pass@proxy.internal:3128/path"

[sources.e]
command = ["/bin/true"]
interval = "1m"
proxy = "none"
"#
    );
    let err = load(dir.path(), &text).unwrap_err();
    let problems = err.problems();
    let find = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"))
    };
    let socks = find("targets.t.proxy");
    assert_eq!(socks.line, Some(5));
    assert!(socks.message.contains("SOCKS"), "{socks:?}");
    let port = find("targets.u.proxy");
    assert_eq!(port.line, Some(10));
    assert!(port.message.contains("invalid port"), "{port:?}");
    let both = find("sources.a.proxy_env");
    assert_eq!(both.line, Some(16));
    assert!(both.message.contains("only one of proxy"), "{both:?}");
    let unset = find("sources.b.proxy_env");
    assert_eq!(unset.line, Some(21));
    assert!(unset.message.contains("UNSET_PROXY"), "{unset:?}");
    let missing = find("sources.c.proxy_file");
    assert_eq!(missing.line, Some(26));
    assert!(missing.message.contains("cannot read"), "{missing:?}");
    let path = find("sources.d.proxy");
    assert_eq!(path.line, Some(31));
    assert!(path.message.contains("no path"), "{path:?}");
    let command = problems
        .iter()
        .find(|p| p.key == "sources.e.command" && p.message.contains("proxy"))
        .unwrap_or_else(|| panic!("{problems:#?}"));
    assert_eq!(command.line, Some(34));
    assert!(command.message.contains("HTTP sources only"), "{command:?}");
    let text = err.to_string();
    assert!(!text.contains("quoted-pass"), "{text}");
    assert!(
        text.contains("config.toml:5: targets.t.proxy:"),
        "file, line and key: {text}"
    );
}

#[test]
fn a_client_certificate_loads_from_its_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let pair = client_pair();
    std::fs::write(dir.path().join("client.pem"), &pair.cert).unwrap();
    std::fs::write(dir.path().join("client.key"), &pair.key).unwrap();
    // One file holding both, named by both keys, works too.
    std::fs::write(
        dir.path().join("both.pem"),
        format!("{}{}", pair.cert, pair.key),
    )
    .unwrap();
    let text = format!(
        r#"{HEAD}client_cert = "client.pem"
client_key = "client.key"

[sources.a]
url = "https://api.example.com/a"
interval = "1m"
client_cert = "both.pem"
client_key = "both.pem"

[sources.b]
url = "https://api.example.com/b"
interval = "1m"
"#
    );
    let c = load(dir.path(), &text).unwrap_or_else(|e| panic!("{e}"));
    let t = c.targets["t"].client_identity.as_ref().unwrap();
    assert_eq!(t.cert_file, dir.path().join("client.pem"));
    assert_eq!(t.key_file, dir.path().join("client.key"));
    assert!(c.sources["a"].client_identity.is_some());
    assert!(c.sources["b"].client_identity.is_none());
    let check = describe(&c);
    assert!(
        check.contains(&format!(
            "client certificate {}",
            dir.path().join("client.pem").display()
        )),
        "{check}"
    );
    // Debug names the files, never the key.
    let dbg = format!("{c:?}");
    assert!(dbg.contains("client.key"), "{dbg}");
    assert!(!dbg.contains("PRIVATE KEY"), "{dbg}");
}

#[test]
fn an_unusable_client_certificate_is_a_problem_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pair = client_pair();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("client.pem", &pair.cert);
    write("client.key", &pair.key);
    write("other.key", &pair.other_key);
    write(
        "encrypted.key",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    write(
        "damaged.pem",
        "-----BEGIN CERTIFICATE-----\n!!! not base64 !!!\n-----END CERTIFICATE-----\n",
    );
    let table = |name: &str, cert: &str, key: &str| {
        let mut t = format!(
            "\n[sources.{name}]\nurl = \"https://api.example.com/{name}\"\ninterval = \"1m\"\n"
        );
        if !cert.is_empty() {
            t.push_str(&format!("client_cert = \"{cert}\"\n"));
        }
        if !key.is_empty() {
            t.push_str(&format!("client_key = \"{key}\"\n"));
        }
        t
    };
    // A table is 5 lines with one of the keys, 6 with both, after HEAD's 4.
    let text = [
        HEAD.to_string(),
        table("only-cert", "client.pem", ""), // client_cert on line 9
        table("only-key", "", "client.key"),  // client_key on line 14
        table("missing", "missing.pem", "client.key"), // client_cert on line 19
        table("swapped", "client.key", "client.pem"), // client_cert on line 25
        table("mismatch", "client.pem", "other.key"), // client_key on line 32
        table("encrypted", "client.pem", "encrypted.key"), // client_key on line 38
        table("damaged", "damaged.pem", "client.key"), // client_cert on line 43
        table("no-key", "client.pem", "client.pem"), // client_key on line 50
    ]
    .concat();
    let err = load(dir.path(), &text).unwrap_err();
    let problems = err.problems();
    let find = |key: &str| {
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}\n{text}"))
    };
    let cases = [
        ("sources.only-cert.client_cert", 9, "needs client_key"),
        ("sources.only-key.client_key", 14, "needs client_cert"),
        ("sources.missing.client_cert", 19, "cannot read"),
        ("sources.swapped.client_cert", 25, "swapped"),
        (
            "sources.mismatch.client_key",
            32,
            "is not the key of the certificate",
        ),
        ("sources.encrypted.client_key", 38, "encrypted"),
        ("sources.damaged.client_cert", 43, "not a valid PEM file"),
        ("sources.no-key.client_key", 50, "holds no private key"),
    ];
    for (key, line, says) in cases {
        let p = find(key);
        assert!(p.message.contains(says), "{key}: {p:?}");
        assert_eq!(p.line, Some(line), "{key}: {p:?}\n{text}");
    }
    // The files are named: the one at fault, and for a mismatch both.
    assert!(find("sources.missing.client_cert")
        .message
        .contains("missing.pem"));
    let mismatch = &find("sources.mismatch.client_key").message;
    assert!(
        mismatch.contains("other.key") && mismatch.contains("client.pem"),
        "{mismatch}"
    );
    // Exactly one problem each: nothing else is wrong with these tables.
    assert_eq!(problems.len(), cases.len(), "{problems:#?}");
}

#[test]
fn a_command_source_rejects_the_http_only_keys_of_reaching_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let pair = client_pair();
    std::fs::write(dir.path().join("client.pem"), &pair.cert).unwrap();
    std::fs::write(dir.path().join("client.key"), &pair.key).unwrap();
    let text = format!(
        r#"{HEAD}
[sources.cmd]
command = ["/bin/true"]
interval = "1m"
proxy = "http://proxy.internal:3128"
client_cert = "client.pem"
client_key = "client.key"
"#
    );
    let problems = load(dir.path(), &text).unwrap_err().problems();
    for what in ["proxy", "client_cert", "client_key"] {
        assert!(
            problems.iter().any(|p| p.key == "sources.cmd.command"
                && p.line == Some(7)
                && p.message
                    .starts_with(&format!("{what} applies to HTTP sources only"))),
            "{what}: {problems:#?}"
        );
    }
}
