//! `ca_file`: extra CA certificates a source or target trusts, for servers whose
//! certificate a public CA did not sign (self-signed, or a company's internal CA).
//!
//! The file is read and checked at load, so a wrong path or a key file given by mistake
//! is a config problem with its key and line, not a failed poll hours later.

use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use reqwest::Certificate;

/// The certificates read from a `ca_file` (none without one), trusted in addition to the
/// built-in roots. Two bundles are equal when they were read from the same bytes (by
/// SHA-256): a `Certificate` cannot be compared, and a reload must see a file rewritten
/// in place.
#[derive(Clone, Default)]
pub struct CaBundle {
    certs: Vec<Certificate>,
    /// The file as read, for clients that take PEM rather than reqwest's certificates
    /// (the PostgreSQL store's TLS); empty without one.
    pem: Arc<[u8]>,
    /// SHA-256 of the file as read; zeros without one (a file read holds at least one
    /// certificate, so its digest is never that of nothing).
    digest: [u8; 32],
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &CaBundle) -> bool {
        self.digest == other.digest
    }
}

impl Eq for CaBundle {}

impl CaBundle {
    /// The PEM file the certificates were read from (empty without one), for a TLS
    /// client other than reqwest's.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

impl Deref for CaBundle {
    type Target = [Certificate];

    fn deref(&self) -> &[Certificate] {
        &self.certs
    }
}

/// The certificates in the PEM file at `path` (one or more `BEGIN CERTIFICATE` blocks),
/// each checked to be one a TLS client can trust. The error says what is wrong with the
/// file, naming it.
pub fn load(path: &Path) -> Result<CaBundle, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = Certificate::from_pem_bundle(&pem)
        .map_err(|_| format!("{shown} is not a valid PEM file (a certificate block is damaged)"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate: ca_file takes the CA's certificate in PEM form \
             (\"-----BEGIN CERTIFICATE-----\"), not a key or a DER file"
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        // `from_pem_bundle` only decodes the PEM armour; whether the block is an X.509
        // certificate shows when a client takes it as a root. Building one without the
        // built-in roots is cheap and is exactly the check the real clients will make.
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert.clone())
            .build()
            .map_err(|_| {
                format!(
                    "certificate {} of {} in {shown} is not a valid X.509 certificate",
                    i + 1,
                    certs.len()
                )
            })?;
    }
    Ok(CaBundle {
        certs,
        digest: sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&pem))
            .into(),
        pem: pem.into(),
    })
}
