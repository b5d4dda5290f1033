//! TLS to the PostgreSQL store: the rustls client each libpq `sslmode` asks for, and what
//! a failed handshake tells the operator.
//!
//! tokio-postgres knows three modes (disable, prefer, require) and leaves the checking of
//! the server's certificate to the TLS connector, so libpq's five are those three and a
//! choice of verifier:
//!
//! | sslmode       | TLS                       | the server's certificate                      |
//! |---------------|---------------------------|-----------------------------------------------|
//! | `disable`     | never                     | -                                             |
//! | `prefer`      | when the server offers it | not checked                                   |
//! | `require`     | always                    | not checked; with `ca_file`, as `verify-ca`   |
//! | `verify-ca`   | always                    | signed by a CA of `ca_file`; any host name    |
//! | `verify-full` | always                    | signed by a CA of `ca_file` (without one, a   |
//! |               |                           | public CA), and naming the host of the URL    |
//!
//! `require` with `ca_file` verifies, as libpq's does when given a root certificate.
//! `prefer` never verifies: tokio-postgres does not fall back to plain after a failed
//! handshake as libpq does, so a check there would make it stricter than `require`.
//! `verify-ca` needs `ca_file`: against the public roots it would accept a certificate
//! any public CA issued for any name (libpq refuses it with `sslrootcert=system` too).
//! With `ca_file`, only its CAs are trusted, not the public ones, as libpq trusts only
//! its root certificate file.
//!
//! The certificate check is in rustls; tokio-postgres-rustls puts it under
//! tokio-postgres and adds SCRAM channel binding, which ties the password exchange to
//! the TLS session: a man in the middle cannot log in with it even where the
//! certificate is not checked. The crypto is ring's, as for reqwest, given to each
//! config rather than installed for the process.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{CaBundle, SslMode};
use crate::store::StoreError;

/// The ALPN protocol PostgreSQL 17 servers expect (and require with
/// `sslnegotiation=direct`); older servers ignore it.
const ALPN: &[u8] = b"postgresql";

/// TLS as `[store]` asks for it: the mode and the connector whose verifier implements it.
pub(super) struct Tls {
    pub(super) sslmode: SslMode,
    /// Whether `ca_file` is set: what to advise depends on it.
    ca_file: bool,
    pub(super) connect: MakeRustlsConnect,
}

impl Tls {
    /// The connector for `sslmode` with the CAs of `ca_file`, or why there is none.
    pub(super) fn new(sslmode: SslMode, ca: Option<&CaBundle>) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca = ca.filter(|ca| !ca.pem().is_empty());
        let roots = ca.map(roots).transpose()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (sslmode, roots) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(NameUnchecked::new(None, &provider))
            }
            (SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
                Arc::new(NameUnchecked::new(Some(roots), &provider))
            }
            (SslMode::VerifyCa, None) => return Err(crate::config::VERIFY_CA_NEEDS_CA.into()),
            (SslMode::VerifyFull, roots) => {
                let roots = roots.unwrap_or_else(|| {
                    Arc::new(RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    })
                });
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("cannot verify with these CA certificates: {e}"))?
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Tls {
            sslmode,
            ca_file: ca.is_some(),
            connect: MakeRustlsConnect::new(config),
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is required.
    pub(super) fn pg_mode(&self) -> tokio_postgres::config::SslMode {
        match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }

    /// `error` (from connecting) as a TLS failure of database `db`, with what to do,
    /// or `None` when it is not one.
    pub(super) fn failure(&self, db: &str, error: &tokio_postgres::Error) -> Option<StoreError> {
        let (problem, advice) = match Failure::of(error)? {
            Failure::NotOffered => (
                "the database server does not offer TLS".to_string(),
                "turn ssl on in the server's postgresql.conf (with its certificate and key), \
                 or set sslmode=prefer in the URL to connect without TLS where the server has none"
                    .to_string(),
            ),
            Failure::Refused(e) => self.refused(&e),
        };
        Some(StoreError::PostgresTls {
            db: db.to_string(),
            sslmode: self.sslmode,
            problem,
            advice,
        })
    }

    /// What a refused handshake (`e`, from rustls) means and what to do.
    fn refused(&self, e: &rustls::Error) -> (String, String) {
        let rustls::Error::InvalidCertificate(why) = e else {
            return (
                format!("the TLS handshake failed: {e}"),
                "check the database server's TLS settings (ssl_min_protocol_version, \
                 ssl_ciphers, its certificate and key) and its log"
                    .to_string(),
            );
        };
        // Where a check can be given up, say how; a CA that was given should rather be
        // fixed than dropped.
        let skip = if self.ca_file {
            "or remove ca_file and set sslmode=require to encrypt without verifying the certificate"
        } else {
            "or set sslmode=require to encrypt without verifying the certificate"
        };
        let rejected = format!("TLS certificate rejected: {e}");
        match why {
            // BadSignature: signed by another CA of the same name (one made anew).
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                let trusted = if self.ca_file {
                    "no CA of ca_file"
                } else {
                    "no public CA"
                };
                (
                    format!("TLS certificate not trusted (self-signed or unknown CA): {trusted} signed the database's certificate ({e})"),
                    format!("set ca_file to the PEM file of the CA that signed the database's certificate, {skip}"),
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
                rejected,
                "connect by a host name or address that the certificate lists (its subject \
                 alternative names), have the database's certificate issued for this one, or \
                 set sslmode=verify-ca to check its CA but not its name"
                    .to_string(),
            ),
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => (
                rejected,
                "renew the database server's certificate, or check this host's clock".to_string(),
            ),
            _ => (
                rejected,
                format!("check the database server's certificate (openssl x509 -noout -text -in its ssl_cert_file), {skip}"),
            ),
        }
    }
}

/// What is wrong with a connection that failed for TLS.
enum Failure {
    /// sslmode needs TLS and the server answered that it has none.
    NotOffered,
    /// The handshake failed: the certificate was refused, or the two sides agree on no
    /// protocol version or cipher.
    Refused(rustls::Error),
}

impl Failure {
    /// `error` as a TLS failure, if it is one.
    fn of(error: &tokio_postgres::Error) -> Option<Failure> {
        let mut cause = std::error::Error::source(error);
        while let Some(e) = cause {
            // tokio-rustls hands rustls's error over inside an io::Error, whose `source`
            // skips it: look inside.
            let inner = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            if let Some(tls) = inner.unwrap_or(e).downcast_ref::<rustls::Error>() {
                return Some(Failure::Refused(tls.clone()));
            }
            // tokio-postgres says this one in a string error of its own, with no type to
            // tell it by. Its wording is in connect_tls.rs since 0.7.0; the test
            // `a_server_without_tls_fails_require_and_serves_prefer_plain` fails if an
            // upgrade changes it, and meanwhile the error is shown as it comes.
            if e.to_string() == "server does not support TLS" {
                return Some(Failure::NotOffered);
            }
            cause = e.source();
        }
        None
    }
}

/// The certificates of `ca` as trust anchors.
fn roots(ca: &CaBundle) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.pem()) {
        let cert = cert.map_err(|e| format!("ca_file cannot be read as PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("a certificate of ca_file cannot be a trust anchor: {e}"))?;
    }
    Ok(Arc::new(roots))
}

/// Checks the server's certificate chain against `roots` when given (`require` with
/// `ca_file`, `verify-ca`), and nothing of it without (`prefer`, `require`); never the
/// host name. The handshake's signature is checked either way: the server holds the key
/// of the certificate it showed, which channel binding relies on.
#[derive(Debug)]
struct NameUnchecked {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl NameUnchecked {
    fn new(roots: Option<Arc<RootCertStore>>, provider: &CryptoProvider) -> NameUnchecked {
        NameUnchecked {
            roots,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
