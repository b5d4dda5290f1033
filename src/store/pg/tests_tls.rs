//! The store's TLS against throwaway servers with TLS on, each sslmode doing what libpq's
//! does: which certificates each mode takes, that the connection is encrypted where it
//! should be and plain where it may be, and what a refused connection tells the operator.
//!
//! The configs go through `Config::parse`, as an operator's would: the URL's sslmode and
//! `ca_file` are read there.

use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::throwaway::{Server, TlsFiles};
use super::*;
use crate::config::{Config, StoreConfig};
use crate::store::tests::{all_pending, created, events_commit};

/// The password of every URL here: the servers trust any, and no message may show it.
const PASSWORD: &str = "s3cret-pw";

/// A test CA: its certificate in PEM (what `ca_file` holds) and its key.
struct TestCa {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: two test CAs of one name would fail as a bad signature
        // rather than an unknown issuer.
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A server certificate this CA signed for `names` (host names or addresses).
    fn issue(&self, names: &[&str], only: bool) -> TlsFiles {
        let key = KeyPair::generate().unwrap();
        let cert = leaf(names).signed_by(&key, &self.cert, &self.key).unwrap();
        TlsFiles {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            only,
        }
    }
}

fn leaf(names: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// A self-signed certificate for 127.0.0.1, signed by no CA.
fn self_signed(only: bool) -> TlsFiles {
    let key = KeyPair::generate().unwrap();
    let cert = leaf(&["127.0.0.1"]).self_signed(&key).unwrap();
    TlsFiles {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        only,
    }
}

/// A TLS server, the CA that signed its certificate, and a CA that did not.
struct TlsServer {
    server: Server,
    ca: TestCa,
    other_ca: TestCa,
}

/// The TLS server of a kind, started once for the test process: `names` are its
/// certificate's, signed by a test CA, or self-signed without. `None` (the test is
/// skipped) where PostgreSQL is not installed.
fn tls_server(
    cell: &'static OnceLock<TlsServer>,
    test: &str,
    names: Option<&[&str]>,
    only: bool,
) -> Option<&'static TlsServer> {
    Server::for_test(test)?;
    Some(cell.get_or_init(|| {
        let ca = TestCa::new("pollhook test CA");
        let files = match names {
            Some(names) => ca.issue(names, only),
            None => self_signed(only),
        };
        TlsServer {
            server: Server::start_tls(&files).unwrap_or_else(|e| panic!("{e}")),
            ca,
            other_ca: TestCa::new("another test CA"),
        }
    }))
}

/// A server whose certificate, signed by its CA, names 127.0.0.1 and localhost.
fn for_localhost(test: &str) -> Option<&'static TlsServer> {
    static CELL: OnceLock<TlsServer> = OnceLock::new();
    tls_server(&CELL, test, Some(&["127.0.0.1", "localhost"]), false)
}

/// A server whose certificate, signed by its CA, names another host only.
fn for_another_host(test: &str) -> Option<&'static TlsServer> {
    static CELL: OnceLock<TlsServer> = OnceLock::new();
    tls_server(&CELL, test, Some(&["db.example.invalid"]), false)
}

/// A server with a self-signed certificate that refuses connections without TLS.
fn self_signed_tls_only(test: &str) -> Option<&'static TlsServer> {
    static CELL: OnceLock<TlsServer> = OnceLock::new();
    tls_server(&CELL, test, None, true)
}

/// `[store]` for a new database on `server` with `sslmode` and, if given, `ca_file`
/// holding `ca_pem`, read as a config file is.
fn store_config(server: &Server, sslmode: &str, ca_pem: Option<&str>) -> PostgresConfig {
    let url = server
        .new_database("tls")
        .replace("postgres@", &format!("postgres:{PASSWORD}@"));
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("[store]\npostgres = \"{url}?sslmode={sslmode}\"\n");
    if let Some(pem) = ca_pem {
        std::fs::write(dir.path().join("db-ca.pem"), pem).unwrap();
        text.push_str("ca_file = \"db-ca.pem\"\n");
    }
    text.push_str(
        r#"
[targets.t]
url = "https://hooks.example.com/t"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.s]
url = "https://api.example.com/s"
interval = "1m"
"#,
    );
    let config = Config::parse(&text, &dir.path().join("config.toml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    match config.store {
        StoreConfig::Postgres(pg) => pg,
        StoreConfig::Sled => panic!("sled"),
    }
}

fn connect(pg: &PostgresConfig) -> PgStore {
    PgStore::connect(pg).unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)))
}

/// The store's connections are encrypted (from the server's side: pg_stat_ssl).
fn encrypted(store: &PgStore) -> bool {
    store
        .run(
            || "reading pg_stat_ssl".into(),
            |pool| async move {
                let c = pool.conn().await?;
                let row = c
                    .query_one(
                        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                        &[],
                    )
                    .await?;
                c.done();
                Ok(row.get::<_, bool>(0))
            },
        )
        .unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)))
}

/// Connecting with `pg` fails for TLS; the message, which names the database and the
/// sslmode and never the password, is returned.
fn refused(pg: &PostgresConfig) -> String {
    let e = match PgStore::connect(pg) {
        Ok(_) => panic!("{} with sslmode={} connected", pg.display, pg.sslmode),
        Err(e) => e,
    };
    let text = crate::error::chain(&e).to_string();
    assert!(matches!(e, StoreError::PostgresTls { .. }), "{text}");
    assert!(text.contains(&pg.display), "names the database: {text}");
    assert!(pg.display.contains(":***@"), "{}", pg.display);
    assert!(
        text.contains(&format!("sslmode={}", pg.sslmode)),
        "names the sslmode: {text}"
    );
    assert!(!text.contains(PASSWORD), "shows the password: {text}");
    text
}

#[test]
fn verify_full_with_the_right_ca_connects_encrypted_and_a_commit_round_trips() {
    let Some(tls) = for_localhost("verify_full_with_the_right_ca…") else {
        return;
    };
    let pg = store_config(&tls.server, "verify-full", Some(&tls.ca.pem));
    let store = connect(&pg);
    assert!(encrypted(&store));
    let g = store
        .commit_poll(events_commit("s", 0, vec![created("s", 1, "a", &["t"])]))
        .unwrap();
    assert_eq!(g, 1);
    assert_eq!(store.source_state("s").unwrap().generation, 1);
    assert_eq!(all_pending(&store, "t").len(), 1);
    // verify-ca and require (which verifies with ca_file) take it too.
    for mode in ["verify-ca", "require"] {
        let store = connect(&store_config(&tls.server, mode, Some(&tls.ca.pem)));
        assert!(encrypted(&store), "{mode}");
    }
}

#[test]
fn a_certificate_of_another_ca_is_refused_saying_to_set_ca_file() {
    let Some(tls) = for_localhost("a_certificate_of_another_ca…") else {
        return;
    };
    // require with ca_file verifies the chain, as libpq's does.
    for mode in ["verify-full", "verify-ca", "require"] {
        let text = refused(&store_config(&tls.server, mode, Some(&tls.other_ca.pem)));
        assert!(
            text.contains("TLS certificate not trusted")
                && text.contains("no CA of ca_file signed the database's certificate")
                && text.contains("set ca_file to the PEM file of the CA")
                && text.contains("UnknownIssuer"),
            "{text}"
        );
    }
}

#[test]
fn verify_full_refuses_a_certificate_for_another_host_and_verify_ca_takes_it() {
    let Some(tls) = for_another_host("verify_full_refuses_a_certificate_for_another_host…")
    else {
        return;
    };
    let text = refused(&store_config(&tls.server, "verify-full", Some(&tls.ca.pem)));
    assert!(
        text.contains("TLS certificate rejected")
            && text.contains("db.example.invalid")
            && text.contains("sslmode=verify-ca to check its CA but not its name"),
        "{text}"
    );
    let store = connect(&store_config(&tls.server, "verify-ca", Some(&tls.ca.pem)));
    assert!(encrypted(&store));
    // verify-ca still checks the CA.
    let text = refused(&store_config(
        &tls.server,
        "verify-ca",
        Some(&tls.other_ca.pem),
    ));
    assert!(text.contains("UnknownIssuer"), "{text}");
}

#[test]
fn require_and_prefer_take_a_self_signed_certificate_and_verify_full_does_not() {
    let Some(tls) = self_signed_tls_only("require_and_prefer_take_a_self_signed…") else {
        return;
    };
    for mode in ["require", "prefer"] {
        let store = connect(&store_config(&tls.server, mode, None));
        assert!(encrypted(&store), "{mode}");
    }
    // Without ca_file, verify-full trusts the public CAs, none of which signed it.
    let text = refused(&store_config(&tls.server, "verify-full", None));
    assert!(
        text.contains("TLS certificate not trusted (self-signed or unknown CA)")
            && text.contains("no public CA signed")
            && text.contains("or set sslmode=require to encrypt without verifying"),
        "{text}"
    );
    // The server takes TLS connections only: disable is refused, by the server.
    let pg = store_config(&tls.server, "disable", None);
    let e = PgStore::connect(&pg).err().expect("disable connected");
    let text = crate::error::chain(&e).to_string();
    assert!(matches!(e, StoreError::Postgres { .. }), "{text}");
    assert!(text.contains("no encryption"), "{text}");
}

#[test]
fn a_server_without_tls_fails_require_and_serves_prefer_plain() {
    let Some(plain) = Server::for_test("a_server_without_tls…") else {
        return;
    };
    let ca = TestCa::new("pollhook test CA");
    for (mode, ca) in [("require", None), ("verify-full", Some(ca.pem.as_str()))] {
        let text = refused(&store_config(&plain, mode, ca));
        assert!(
            text.contains("the database server does not offer TLS") && text.contains("turn ssl on"),
            "{text}"
        );
    }
    let store = connect(&store_config(&plain, "prefer", None));
    assert!(!encrypted(&store));
}

#[test]
fn verify_ca_without_ca_file_is_refused_before_connecting() {
    // The config check refuses it too; a config made in code meets the store's.
    let pg = PostgresConfig {
        url: format!("postgres://pollhook:{PASSWORD}@127.0.0.1:1/pollhook?sslmode=verify-ca"),
        display: "postgres://pollhook:***@127.0.0.1:1/pollhook?sslmode=verify-ca".into(),
        lease: crate::config::DEFAULT_LEASE,
        instance: None,
        ca: None,
        sslmode: SslMode::VerifyCa,
    };
    let e = PgStore::connect(&pg).err().expect("connected");
    let text = e.to_string();
    assert!(matches!(e, StoreError::PostgresConfig { .. }), "{text}");
    assert!(text.contains("verify-ca needs ca_file"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}
