//! TLS (issue 3): server certificates are verified by default, for sources and targets
//! alike; a server whose certificate no public CA signed is refused with an error that
//! says what is wrong and what to set, unless the config names its CA in `ca_file`.
//! Client certificates (mutual TLS): a server that requires one refuses a source or
//! target without `client_cert`, with an error that says so, and accepts it with one,
//! also when a reload adds it.
//!
//! Each test makes a fresh CA and a server certificate for 127.0.0.1 and localhost with
//! rcgen, and puts a TLS front on 127.0.0.1 before the demo's sample API or receiver: the
//! front completes the handshake and passes the plain bytes through, so what sits behind
//! HTTPS is the same code the other integration tests use (and the receiver still
//! verifies every signature).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use pollhook::config::Config;
use pollhook::daemon::Options;
use pollhook::poll::Poller;
use pollhook::source::Fetcher;
use pollhook::store::{SharedStore, Store};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{crypto::ring, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::support::{wait_for, Harness, WAIT};

/// What an operator reads when a server's certificate does not chain to a trusted root.
const NOT_TRUSTED: &str = "TLS certificate not trusted (self-signed or unknown CA)";

/// A private CA: its certificate in PEM (what `ca_file` holds), and a server certificate
/// it signed for 127.0.0.1 and localhost, ready to serve, with or without asking the
/// client for a certificate this CA signed.
pub(crate) struct TestCa {
    pub(crate) pem: String,
    server: Arc<ServerConfig>,
    /// The same server certificate, requiring a client certificate from this CA.
    mutual: Arc<ServerConfig>,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A client certificate in PEM and its private key, what `client_cert` and
/// `client_key` name.
pub(crate) struct ClientCert {
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a trust anchor is found by subject name, and two test CAs
        // with the same one would fail as a bad signature rather than an unknown issuer.
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();

        let provider = Arc::new(ring::default_provider());
        let chain = vec![leaf_cert.der().clone()];
        let server_key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), server_key())
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let mutual = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, server_key())
            .unwrap();
        TestCa {
            pem: ca_cert.pem(),
            server: Arc::new(server),
            mutual: Arc::new(mutual),
            cert: ca_cert,
            key: ca_key,
        }
    }

    /// A client certificate this CA signed, for a client named `name`.
    pub(crate) fn client(&self, name: &str) -> ClientCert {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        ClientCert {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Serves HTTPS on 127.0.0.1 for the plain HTTP server at `plain` (an `http://` URL),
/// until `shutdown`; returns the same URL with `https` and the front's port. A failed
/// handshake (the client refused the certificate) ends only that connection.
pub(crate) async fn https_front(plain: &str, ca: &TestCa, shutdown: CancellationToken) -> String {
    tls_front(plain, ca.server.clone(), shutdown).await
}

/// [`https_front`] that requires a client certificate signed by `ca`: a client without
/// one, or with one from another CA, fails the handshake and reaches nothing behind.
pub(crate) async fn mutual_tls_front(
    plain: &str,
    ca: &TestCa,
    shutdown: CancellationToken,
) -> String {
    tls_front(plain, ca.mutual.clone(), shutdown).await
}

async fn tls_front(plain: &str, server: Arc<ServerConfig>, shutdown: CancellationToken) -> String {
    let mut url = reqwest::Url::parse(plain).unwrap();
    let upstream: SocketAddr = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
    .parse()
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(server);
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    url.set_scheme("https").unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

/// What one test needs: the harness (the sample API, the receiver, a directory for the
/// config, the CA file and the state), and the API and the receiver each also behind
/// HTTPS with a certificate from `ca`.
struct Setup {
    h: Harness,
    /// The sample API over HTTPS.
    api_tls: String,
    /// The receiver over HTTPS.
    rx_tls: String,
    /// Stops the HTTPS fronts.
    _fronts: DropGuard,
}

impl Setup {
    async fn new(ca: &TestCa) -> Setup {
        let h = Harness::new().await.expect("sled needs no server");
        h.api.set("1", json!({"name": "apple"}));
        let fronts = CancellationToken::new();
        Setup {
            api_tls: https_front(&h.api.url(), ca, fronts.clone()).await,
            rx_tls: https_front(&h.rx.url(), ca, fronts.clone()).await,
            h,
            _fronts: fronts.drop_guard(),
        }
    }

    /// Writes `pem` to `name` beside the config.
    fn write_ca(&self, name: &str, pem: &str) {
        std::fs::write(self.h.dir.path().join(name), pem).unwrap();
    }

    /// The harness's config with target `t` posting to `target_url` and source `s`
    /// polling `source_url`, without a baseline (its first poll sends the item as
    /// created); `target_extra`, `source_extra` and `extra` are appended to the target's
    /// table, the source's table and the file.
    fn config(
        &self,
        target_url: &str,
        target_extra: &str,
        source_url: &str,
        source_extra: &str,
        extra: &str,
    ) -> Config {
        let source_extra = format!("baseline = false\n{source_extra}");
        self.h.parse_config(&self.h.config_text_for(
            target_url,
            target_extra,
            source_url,
            &source_extra,
            extra,
        ))
    }

    fn open_store(&self) -> SharedStore {
        self.h.store()
    }
}

/// Polls every source of `config` once, in-process, with the daemon's fetcher.
async fn poll_all(config: &Config, store: &SharedStore) -> HashMap<String, Result<usize, String>> {
    let poller = Poller::new(
        store.clone(),
        Fetcher::new(&config.sources).unwrap(),
        pollhook::poll::Wakes::default(),
    );
    let mut out = HashMap::new();
    for (name, source) in &config.sources {
        let result = poller.poll(source).await;
        out.insert(
            name.clone(),
            result.map(|r| r.items).map_err(|e| e.to_string()),
        );
    }
    out
}

/// Runs the daemon on `config` until `done` holds for the store (checked every 20 ms),
/// then stops it; fails the test after [`WAIT`].
async fn run_daemon_until(config: Config, store: &SharedStore, done: impl Fn(&dyn Store) -> bool) {
    let token = CancellationToken::new();
    let daemon = tokio::spawn(pollhook::daemon::run_with_store(
        config,
        store.clone(),
        token.clone(),
    ));
    wait_for(|| done(&**store)).await;
    token.cancel();
    tokio::time::timeout(WAIT, daemon)
        .await
        .expect("daemon did not stop")
        .unwrap()
        .unwrap();
}

/// The last error recorded on target `t`'s pending deliveries, if an attempt failed.
fn last_error(store: &dyn Store) -> Option<String> {
    store
        .pending("t", None, 10)
        .unwrap()
        .into_iter()
        .find_map(|d| d.last_error)
}

/// (a) A source served with a certificate from an unknown CA, no `ca_file`: the poll
/// fails with the TLS error and its fix, the URL's token stays out of it, and nothing
/// is committed (invariant 3).
#[tokio::test]
async fn a_source_with_an_untrusted_certificate_fails_clearly_and_commits_nothing() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    let source_url = format!("{}?token=s3cret", s.api_tls);
    let config = s.config(&s.h.rx.url(), "", &source_url, "", "");
    let store = s.open_store();

    let results = poll_all(&config, &store).await;
    let err = results["s"].as_ref().unwrap_err();
    assert!(err.contains(NOT_TRUSTED), "{err}");
    assert!(err.contains("set ca_file for this source"), "{err}");
    assert!(!err.contains("s3cret"), "the URL's query leaked: {err}");

    // The handshake stopped it: the API behind the front never saw a request.
    assert_eq!(s.h.api.requests(), 0);
    assert!(!store.source_state("s").unwrap().initialized);
    assert!(store.snapshot("s").unwrap().is_empty());
    assert!(store.pending_counts().unwrap().is_empty());
}

/// (b) The same source with `ca_file` naming the CA polls normally. The roots are the
/// source's own: another source polling the same server without `ca_file` is still
/// refused, so one source's CA never widens what the others trust.
#[tokio::test]
async fn a_source_with_ca_file_polls_and_only_that_source_trusts_the_ca() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    s.write_ca("ca.pem", &ca.pem);
    let strict = format!(
        "[sources.strict]\nurl = \"{}\"\ninterval = \"1m\"\nitems = \"/items\"\n",
        s.api_tls
    );
    let config = s.config(
        &s.h.rx.url(),
        "",
        &s.api_tls,
        "ca_file = \"ca.pem\"",
        &strict,
    );
    let store = s.open_store();

    let results = poll_all(&config, &store).await;
    assert_eq!(results["s"], Ok(1), "{results:?}");
    assert!(store.source_state("s").unwrap().initialized);
    assert_eq!(
        store.pending("t", None, 10).unwrap().len(),
        1,
        "the new item is queued for delivery"
    );
    let err = results["strict"].as_ref().unwrap_err();
    assert!(err.contains(NOT_TRUSTED), "{err}");
    assert!(!store.source_state("strict").unwrap().initialized);
}

/// A `ca_file` holding some other CA: the error says the file is set but wrong, rather
/// than telling the operator to set what they already set.
#[tokio::test]
async fn a_ca_file_with_the_wrong_ca_says_so() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    s.write_ca("other.pem", &TestCa::new("some other CA").pem);
    let config = s.config(&s.h.rx.url(), "", &s.api_tls, "ca_file = \"other.pem\"", "");
    let store = s.open_store();

    let results = poll_all(&config, &store).await;
    let err = results["s"].as_ref().unwrap_err();
    assert!(err.contains(NOT_TRUSTED), "{err}");
    assert!(
        err.contains("other.pem is set but does not hold the CA"),
        "{err}"
    );
}

/// (c) A target served with a certificate from an unknown CA, no `ca_file`: the delivery
/// fails with the TLS error and its fix, stays pending for its retries, and the receiver
/// behind the front gets nothing.
#[tokio::test]
async fn a_target_with_an_untrusted_certificate_fails_clearly() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    let target_url = format!("{}?key=s3cret", s.rx_tls);
    let config = s.config(&target_url, "", &s.h.api.url(), "", "");
    let store = s.open_store();

    run_daemon_until(config, &store, |st| last_error(st).is_some()).await;
    let err = last_error(&*store).unwrap();
    assert!(err.contains(NOT_TRUSTED), "{err}");
    assert!(err.contains("set ca_file for this target"), "{err}");
    assert!(!err.contains("s3cret"), "the URL's query leaked: {err}");
    assert!(s.h.rx.received().is_empty(), "{:?}", s.h.rx.received());
    assert_eq!(store.pending_counts().unwrap().get("t"), Some(&1));
}

/// (d) The same target with `ca_file` naming the CA: the webhook is delivered, signed,
/// and leaves the outbox.
#[tokio::test]
async fn a_target_with_ca_file_gets_its_webhooks() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    let ca_path = s.h.dir.path().join("ca.pem");
    s.write_ca("ca.pem", &ca.pem);
    // An absolute path this time; (b) uses one relative to the config file.
    let target_extra = format!("ca_file = {:?}", ca_path.display().to_string());
    let config = s.config(&s.rx_tls, &target_extra, &s.h.api.url(), "", "");
    let store = s.open_store();
    let rx = s.h.rx.clone();

    run_daemon_until(config, &store, |st| {
        !rx.accepted().is_empty() && st.pending("t", None, 10).unwrap().is_empty()
    })
    .await;
    let got = s.h.rx.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].event_type, "s.created");
    assert!(got[0].verified, "signature did not verify");
}

/// What an operator reads when a server requires a client certificate and none is set.
const NEEDS_CLIENT_CERT: &str = "the server requires a client certificate (mutual TLS)";

/// `client` written beside the config as `<name>.pem` and `<name>.key`; returns the
/// table lines that name them.
fn write_client(s: &Setup, name: &str, client: &ClientCert) -> String {
    std::fs::write(s.h.dir.path().join(format!("{name}.pem")), &client.cert).unwrap();
    std::fs::write(s.h.dir.path().join(format!("{name}.key")), &client.key).unwrap();
    format!("client_cert = \"{name}.pem\"\nclient_key = \"{name}.key\"")
}

/// A source whose API requires a client certificate from the CA: without `client_cert`
/// the poll fails saying so and what to set, and the API behind sees nothing; with one
/// the CA signed it polls; with one from another CA the error names the file the
/// server refused.
#[tokio::test]
async fn a_source_polls_a_server_that_requires_a_client_certificate_only_with_one() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    let fronts = CancellationToken::new();
    let _stop = fronts.clone().drop_guard();
    let api_mtls = mutual_tls_front(&s.h.api.url(), &ca, fronts.clone()).await;
    s.write_ca("ca.pem", &ca.pem);
    let ours = write_client(&s, "ours", &ca.client("pollhook"));
    let stranger = write_client(
        &s,
        "stranger",
        &TestCa::new("another CA").client("pollhook"),
    );
    let table = |name: &str, extra: &str| {
        format!("[sources.{name}]\nurl = \"{api_mtls}\"\ninterval = \"1m\"\nitems = \"/items\"\nca_file = \"ca.pem\"\n{extra}\n")
    };
    let extra = format!(
        "{}{}",
        table("certified", &ours),
        table("stranger", &stranger)
    );
    let config = s.config(&s.h.rx.url(), "", &api_mtls, "ca_file = \"ca.pem\"", &extra);
    let store = s.open_store();

    let results = poll_all(&config, &store).await;
    let err = results["s"].as_ref().unwrap_err();
    assert!(err.contains(NEEDS_CLIENT_CERT), "{err}");
    assert!(err.contains("set client_cert and client_key"), "{err}");
    let err = results["stranger"].as_ref().unwrap_err();
    assert!(
        err.contains("the server refused the client certificate in")
            && err.contains("stranger.pem"),
        "{err}"
    );
    assert_eq!(results["certified"], Ok(1), "{results:?}");
    // Only the certified source's request got through the handshake.
    assert_eq!(s.h.api.requests(), 1);
    assert!(!store.source_state("s").unwrap().initialized);
    assert!(store.source_state("certified").unwrap().initialized);
}

/// A target whose receiver requires a client certificate: without `client_cert` every
/// attempt fails saying so, and the delivery waits; a reload that adds the certificate
/// (to the target, and to a source whose API requires one too) takes effect: the
/// source polls and the webhook is delivered.
#[tokio::test]
async fn a_target_without_a_client_certificate_is_refused_until_a_reload_adds_one() {
    let ca = TestCa::new("pollhook test CA");
    let s = Setup::new(&ca).await;
    let fronts = CancellationToken::new();
    let _stop = fronts.clone().drop_guard();
    let rx_mtls = mutual_tls_front(&s.h.rx.url(), &ca, fronts.clone()).await;
    let api_mtls = mutual_tls_front(&s.h.api.url(), &ca, fronts.clone()).await;
    s.write_ca("ca.pem", &ca.pem);
    let client = write_client(&s, "client", &ca.client("pollhook"));
    // A second source, on the plain API, so that there is a delivery before the reload.
    let plain = format!(
        "[sources.plain]\nurl = \"{}\"\ninterval = \"200ms\"\nitems = \"/items\"\nbaseline = false\n",
        s.h.api.url()
    );
    let text = |with: &str| {
        s.h.config_text_for(
            &rx_mtls,
            &format!("ca_file = \"ca.pem\"\n{with}"),
            &api_mtls,
            &format!("baseline = false\nca_file = \"ca.pem\"\n{with}"),
            &plain,
        )
    };
    let store = s.open_store();
    let config = s.h.write_config(&text(""));
    let reload = Arc::new(Notify::new());
    let token = CancellationToken::new();
    let daemon = tokio::spawn(pollhook::daemon::run_with(
        config,
        Some(store.clone()),
        token.clone(),
        Options {
            reload: Some(reload.clone()),
            ..Options::default()
        },
    ));

    wait_for(|| last_error(&*store).is_some_and(|e| e.contains(NEEDS_CLIENT_CERT))).await;
    let err = last_error(&*store).unwrap();
    assert!(err.contains("set client_cert and client_key"), "{err}");
    assert!(s.h.rx.received().is_empty(), "{:?}", s.h.rx.received());
    // The plain source polled; the one behind mutual TLS did not get through.
    assert!(store.source_state("plain").unwrap().initialized);
    assert!(!store.source_state("s").unwrap().initialized);

    s.h.write_config(&text(&client));
    reload.notify_one();
    let rx = s.h.rx.clone();
    wait_for(|| {
        rx.accepted().iter().any(|r| r.event_type == "s.created")
            && rx
                .accepted()
                .iter()
                .any(|r| r.event_type == "plain.created")
    })
    .await;
    assert!(store.source_state("s").unwrap().initialized);
    assert!(s.h.rx.accepted().iter().all(|r| r.verified));
    token.cancel();
    tokio::time::timeout(WAIT, daemon)
        .await
        .expect("daemon did not stop")
        .unwrap()
        .unwrap();
}
