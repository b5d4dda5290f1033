//! `client_cert` and `client_key`: the certificate a source or target shows a server
//! that asks for one (mutual TLS), and its private key, both PEM files.
//!
//! Both files are read and checked at load, as `ca_file` is: a missing file, a file
//! without a certificate or key, an encrypted key, or a key that is not the
//! certificate's is a config problem naming the file and what to do, not a handshake
//! that fails at every poll. A server may still refuse the certificate (another CA, an
//! expired one): that shows at the request, in words ([`crate::http`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The most a certificate or key file may hold: a chain of a few certificates is a
/// few KiB, and `/dev/zero` named by mistake must be a config error, not a load
/// that never ends.
const MAX_FILE: u64 = 1024 * 1024;

/// A client certificate and its key, checked and ready for reqwest. Two are equal when
/// they were read from the same paths and bytes, so that a reload sees a certificate
/// renewed in place.
#[derive(Clone)]
pub struct ClientIdentity {
    /// `client_cert` as resolved against the config file's directory.
    pub cert_file: PathBuf,
    /// `client_key` as resolved against the config file's directory.
    pub key_file: PathBuf,
    identity: reqwest::Identity,
    /// SHA-256 of the certificate file's bytes, then the key file's.
    digest: Arc<[u8; 32]>,
}

impl PartialEq for ClientIdentity {
    fn eq(&self, other: &ClientIdentity) -> bool {
        self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.digest == other.digest
    }
}

// Debug shows the files, never the key.
impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

impl ClientIdentity {
    /// What reqwest's client builder takes.
    pub fn identity(&self) -> reqwest::Identity {
        self.identity.clone()
    }
}

/// Which of the two keys a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// The certificate (with any intermediates after it) at `cert_file` and the private
/// key at `key_file`, checked to belong together. The error names the file at fault
/// and says what to do.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<ClientIdentity, (Which, String)> {
    let cert_pem = read(cert_file).map_err(|e| (Which::Cert, e))?;
    let key_pem = read(key_file).map_err(|e| (Which::Key, e))?;
    let cert_shown = cert_file.display();
    let key_shown = key_file.display();

    let cert_sections = sections(&cert_pem).map_err(|_| (Which::Cert, damaged(cert_file)))?;
    let certs: Vec<CertificateDer<'static>> = cert_sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    if certs.is_empty() {
        let swapped = if cert_sections.iter().any(|(kind, _)| is_key(*kind)) {
            " (it holds a private key: are client_cert and client_key swapped?)"
        } else {
            ""
        };
        return Err((
            Which::Cert,
            format!(
                "{cert_shown} holds no certificate{swapped}: client_cert takes the client certificate in PEM form (\"-----BEGIN CERTIFICATE-----\"), any intermediate certificates after it"
            ),
        ));
    }

    if is_encrypted(&key_pem) {
        return Err((
            Which::Key,
            format!(
                "the private key in {key_shown} is encrypted, and pollhook cannot ask for its passphrase: decrypt it (openssl pkey -in {key_shown} -out <new file>) and keep the new file readable only by pollhook"
            ),
        ));
    }
    let key_sections = sections(&key_pem).map_err(|_| (Which::Key, damaged(key_file)))?;
    let mut keys = key_sections
        .into_iter()
        .filter_map(|(kind, der)| match kind {
            SectionKind::PrivateKey => Some(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => Some(PrivateKeyDer::Pkcs1(der.into())),
            SectionKind::EcPrivateKey => Some(PrivateKeyDer::Sec1(der.into())),
            _ => None,
        });
    let Some(key) = keys.next() else {
        let swapped = if CertificateDer::pem_slice_iter(&key_pem).next().is_some() {
            " (it holds a certificate: are client_cert and client_key swapped?)"
        } else {
            ""
        };
        return Err((
            Which::Key,
            format!(
                "{key_shown} holds no private key{swapped}: client_key takes the certificate's unencrypted private key in PEM form (\"-----BEGIN PRIVATE KEY-----\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")"
            ),
        ));
    };
    if keys.next().is_some() {
        return Err((
            Which::Key,
            format!("{key_shown} holds more than one private key: keep only the key of the certificate in {cert_shown}"),
        ));
    }

    check_pair(&certs, &key, cert_file, key_file)?;

    let mut pem = String::new();
    for cert in &certs {
        pem.push_str(&pem_block("CERTIFICATE", cert.as_ref()));
    }
    let (label, der) = match &key {
        PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        // Only the three kinds above are ever made here.
        _ => return Err((Which::Key, format!("{key_shown}: unsupported key format"))),
    };
    pem.push_str(&pem_block(label, der));
    let unusable = |e: &(dyn std::error::Error + 'static)| {
        (
            Which::Cert,
            format!(
                "{cert_shown} and {key_shown} cannot be used as a client certificate: {}",
                crate::error::chain(e)
            ),
        )
    };
    let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| unusable(&e))?;
    // What the real clients will do with it, so that building them cannot fail later.
    reqwest::Client::builder()
        .identity(identity.clone())
        .build()
        .map_err(|e| unusable(&e))?;

    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for bytes in [&cert_pem, &key_pem] {
        digest.update((bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    }
    Ok(ClientIdentity {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        identity,
        digest: Arc::new(digest.finalize().into()),
    })
}

/// The file at `path`, at most [`MAX_FILE`] bytes.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!(
            "{shown} is larger than {} KiB, too large for a certificate or key in PEM form",
            MAX_FILE / 1024
        ));
    }
    Ok(bytes)
}

/// Every PEM section of `pem` of a kind rustls knows (others, such as an
/// `ENCRYPTED PRIVATE KEY`, are skipped).
fn sections(pem: &[u8]) -> Result<Vec<(SectionKind, Vec<u8>)>, rustls::pki_types::pem::Error> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(pem).collect()
}

/// A file that is not PEM. The parser's own message is not used: it may quote a line
/// of the file, a line of a private key.
fn damaged(path: &Path) -> String {
    format!(
        "{} is not a valid PEM file (a block is damaged or cut short)",
        path.display()
    )
}

fn is_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// A PKCS #8 encrypted key, or an OpenSSL-style one (`Proc-Type: 4,ENCRYPTED`).
fn is_encrypted(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

/// That rustls can sign with `key`, and that it is the key of the first certificate.
fn check_pair(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<(), (Which, String)> {
    use rustls::{Error, InconsistentKeys};
    let signing = rustls::crypto::ring::sign::any_supported_type(key).map_err(|_| {
        (
            Which::Key,
            format!(
                "the private key in {} is damaged or of a kind pollhook cannot use (RSA, ECDSA P-256 or P-384, and Ed25519 keys work)",
                key_file.display()
            ),
        )
    })?;
    match rustls::sign::CertifiedKey::new(certs.to_vec(), signing).keys_match() {
        // Unknown: the key cannot tell its public half; the server will judge.
        Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err((
            Which::Key,
            format!(
                "the private key in {} is not the key of the certificate in {} (the first certificate there must be the client's own): check that both files are from the same certificate request",
                key_file.display(),
                cert_file.display()
            ),
        )),
        Err(_) => Err((
            Which::Cert,
            format!(
                "the first certificate in {} is not a valid X.509 certificate",
                cert_file.display()
            ),
        )),
    }
}

/// `der` as a PEM block with `label`, 64 characters a line.
fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 is ASCII, so every chunk is UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
