//! Webhook request signing and verification for pollhook.
//!
//! Each target picks a signature scheme so that existing receivers can check
//! our POSTs with the libraries they already use:
//! - `standard`: Standard Webhooks 1.0 (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature: v1,<base64>`), keys are `whsec_`+base64 secrets.
//! - `github`: `X-Hub-Signature-256: sha256=<hex>` over the raw body.
//! - `stripe`: `Stripe-Signature: t=<unix>,v1=<hex>` over `"{t}.{body}"`.
//!
//! Several secrets (newest first) support key rotation: standard and stripe
//! emit one signature per secret so receivers holding either key accept.
//! Verification (used in tests and for a local receiver) is constant time and
//! takes `now` as a parameter so this module never reads the clock.

use std::fmt;
use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Secrets are typed by humans: accept the base64 part with or without `=` padding.
const SECRET_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const STANDARD_PREFIX: &str = "whsec_";

/// Which signature format a target expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks 1.0 (the default).
    #[default]
    Standard,
    /// GitHub's `X-Hub-Signature-256`.
    Github,
    /// Stripe's `Stripe-Signature`.
    Stripe,
}

/// Error for an unrecognised scheme name; the name is config, not a secret.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown signature scheme {0:?} (valid: standard, github, stripe)")]
pub struct UnknownScheme(pub String);

impl FromStr for Scheme {
    type Err = UnknownScheme;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(Scheme::Standard),
            "github" => Ok(Scheme::Github),
            "stripe" => Ok(Scheme::Stripe),
            other => Err(UnknownScheme(other.to_string())),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Standard => "standard",
            Scheme::Github => "github",
            Scheme::Stripe => "stripe",
        })
    }
}

/// A configured secret is unusable. `index` is 1-based; messages never
/// include the secret itself because they end up in logs.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No secrets were configured.
    #[error("no signing secrets configured")]
    NoSecrets,
    /// The secret (or its decoded key) is empty.
    #[error("{} secret is empty", ordinal(.index))]
    Empty { index: usize },
    /// A standard-scheme secret lacks the `whsec_` prefix.
    #[error("{} secret does not start with \"whsec_\"", ordinal(.index))]
    MissingPrefix { index: usize },
    /// The part after `whsec_` is not valid base64.
    #[error("{} secret is not valid base64 after \"whsec_\"", ordinal(.index))]
    InvalidBase64 { index: usize },
}

fn ordinal(n: &usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Signs webhook bodies for one target. Debug prints the scheme and the
/// number of keys, never key material.
#[derive(Clone, PartialEq, Eq)]
pub struct Signer {
    scheme: Scheme,
    /// HMAC keys, newest first; never empty.
    keys: Vec<Vec<u8>>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("scheme", &self.scheme)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Signer {
    /// Builds a signer from `secrets`, newest first. Standard secrets must be
    /// `whsec_` + base64 (padding optional) and the key is the decoded bytes;
    /// github/stripe use the secret string's bytes as the key.
    pub fn new(scheme: Scheme, secrets: &[String]) -> Result<Signer, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::NoSecrets);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| parse_key(scheme, i + 1, s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Signer { scheme, keys })
    }

    /// The scheme this signer produces.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Headers (name, value) to add to one delivery attempt. `timestamp` is
    /// the attempt's unix time; `id` is only signed by the standard scheme.
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
        let ts = timestamp.to_string();
        match self.scheme {
            Scheme::Standard => {
                // Written into one string: this runs for every attempt.
                let mut sigs = String::with_capacity(self.keys.len() * 48);
                for k in &self.keys {
                    let tag = hmac(k, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
                    if !sigs.is_empty() {
                        sigs.push(' ');
                    }
                    sigs.push_str("v1,");
                    STANDARD.encode_string(tag, &mut sigs);
                }
                vec![
                    ("webhook-id", id.to_string()),
                    ("webhook-timestamp", ts),
                    ("webhook-signature", sigs),
                ]
            }
            Scheme::Github => {
                // GitHub's format has room for one signature only: use the newest key.
                let tag = hmac(&self.keys[0], &[body]);
                vec![(
                    "X-Hub-Signature-256",
                    format!("sha256={}", hex_encode(&tag)),
                )]
            }
            Scheme::Stripe => {
                let mut value = format!("t={ts}");
                for k in &self.keys {
                    let tag = hmac(k, &[ts.as_bytes(), b".", body]);
                    value.push_str(",v1=");
                    value.push_str(&hex_encode(&tag));
                }
                vec![("Stripe-Signature", value)]
            }
        }
    }
}

fn parse_key(scheme: Scheme, index: usize, secret: &str) -> Result<Vec<u8>, SecretError> {
    if secret.is_empty() {
        return Err(SecretError::Empty { index });
    }
    if scheme != Scheme::Standard {
        return Ok(secret.as_bytes().to_vec());
    }
    let b64 = secret
        .strip_prefix(STANDARD_PREFIX)
        .ok_or(SecretError::MissingPrefix { index })?;
    let key = SECRET_B64
        .decode(b64)
        .map_err(|_| SecretError::InvalidBase64 { index })?;
    if key.is_empty() {
        return Err(SecretError::Empty { index });
    }
    Ok(key)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length (long keys are hashed), so
    // new_from_slice cannot fail for Hmac<Sha256>.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes hex (either case); `None` on odd length or a non-hex digit.
fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Constant time in the contents; lengths are public (always 32 for a match).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a received webhook was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is present but unparsable (empty, bad timestamp, bad encoding).
    #[error("malformed signature headers: {0}")]
    Malformed(&'static str),
    /// The header carries only signature versions we do not support.
    #[error("no supported signature version (expected {0})")]
    UnsupportedVersion(&'static str),
    /// The signed timestamp is too far from `now` (replay protection).
    #[error("timestamp {timestamp} is more than {tolerance_secs}s from now ({now})")]
    StaleTimestamp {
        timestamp: i64,
        now: i64,
        tolerance_secs: i64,
    },
    /// Well-formed, but no signature matches any secret.
    #[error("no signature matches")]
    NoMatch,
    /// The receiver's own secrets are unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// [`verify`] over the headers of an HTTP request, as axum, hyper and reqwest hand them
/// over (they share the `http` crate's `HeaderMap`, which looks names up
/// case-insensitively). This is what a Rust receiver calls.
pub fn verify_request(
    scheme: Scheme,
    secrets: &[String],
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    verify(scheme, secrets, &header, body, now, tolerance_secs)
}

/// Verifies a received webhook. `header(name)` must look names up
/// case-insensitively; lowercase names are passed. Timestamps (standard,
/// stripe) must be within `tolerance_secs` of `now` (300 is the usual value).
pub fn verify(
    scheme: Scheme,
    secrets: &[String],
    header: &dyn Fn(&str) -> Option<String>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let keys = Signer::new(scheme, secrets)?.keys;
    let get = |name: &'static str| header(name).ok_or(VerifyError::MissingHeader(name));
    match scheme {
        Scheme::Standard => {
            let id = get("webhook-id")?;
            let ts = get("webhook-timestamp")?;
            let sig = get("webhook-signature")?;
            if sig.trim().is_empty() {
                return Err(VerifyError::Malformed("empty webhook-signature"));
            }
            check_time(&ts, now, tolerance_secs)?;
            // Strict (padded, canonical) base64: a truncated signature must not decode.
            let v1: Vec<_> = sig
                .split_whitespace()
                .filter_map(|e| e.strip_prefix("v1,"))
                .map(|b| STANDARD.decode(b).ok())
                .collect();
            if v1.is_empty() {
                return Err(VerifyError::UnsupportedVersion("v1"));
            }
            let msg: &[&[u8]] = &[id.as_bytes(), b".", ts.as_bytes(), b".", body];
            match_any(&keys, &v1, msg)
        }
        Scheme::Github => {
            let sig = get("x-hub-signature-256")?;
            let (version, hex) = sig
                .trim()
                .split_once('=')
                .ok_or(VerifyError::Malformed("x-hub-signature-256 lacks '='"))?;
            if version != "sha256" {
                return Err(VerifyError::UnsupportedVersion("sha256"));
            }
            match_any(&keys, &[hex_decode(hex)], &[body])
        }
        Scheme::Stripe => {
            let sig = get("stripe-signature")?;
            let mut ts = None;
            let mut v1 = Vec::new();
            for item in sig.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                match item.split_once('=') {
                    Some(("t", t)) if ts.is_none() => ts = Some(t),
                    Some(("t", _)) => return Err(VerifyError::Malformed("repeated t=")),
                    Some(("v1", hex)) => v1.push(hex_decode(hex)),
                    Some(_) => {} // other schemes (v0, ...) are ignored, as Stripe does
                    None => return Err(VerifyError::Malformed("stripe-signature item lacks '='")),
                }
            }
            let ts = ts.ok_or(VerifyError::Malformed("stripe-signature lacks t="))?;
            check_time(ts, now, tolerance_secs)?;
            if v1.is_empty() {
                return Err(VerifyError::UnsupportedVersion("v1"));
            }
            match_any(&keys, &v1, &[ts.as_bytes(), b".", body])
        }
    }
}

/// Ok if any decodable candidate equals the HMAC of `msg` under any key.
/// Undecodable candidates (`None`) simply never match.
fn match_any(
    keys: &[Vec<u8>],
    candidates: &[Option<Vec<u8>>],
    msg: &[&[u8]],
) -> Result<(), VerifyError> {
    for key in keys {
        let tag = hmac(key, msg);
        if candidates.iter().flatten().any(|c| ct_eq(c, &tag)) {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

/// Parses a unix-seconds timestamp (digits only) and enforces the tolerance.
fn check_time(ts: &str, now: i64, tolerance_secs: i64) -> Result<(), VerifyError> {
    if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed(
            "timestamp is not a unix-seconds integer",
        ));
    }
    let timestamp: i64 = ts
        .parse()
        .map_err(|_| VerifyError::Malformed("timestamp out of range"))?;
    // abs_diff avoids overflow; a negative tolerance means "no skew allowed".
    if now.abs_diff(timestamp) > u64::try_from(tolerance_secs).unwrap_or(0) {
        return Err(VerifyError::StaleTimestamp {
            timestamp,
            now,
            tolerance_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const STD_TS: i64 = 1614265330;
    const STD_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const STD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    // Computed independently with python3 on this machine:
    //   hmac.new(b"whsec_stripe_test_secret", b'1700000000.{"id":"evt_1","object":"event"}',
    //            hashlib.sha256).hexdigest()
    const ST_SECRET: &str = "whsec_stripe_test_secret";
    const ST_TS: i64 = 1700000000;
    const ST_BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const ST_HEX: &str = "f0b45ad397b7d5f0c0a066aba48c4fdbf1e7da80b9ce240806f9bd530f378263";

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    /// Runs `verify` against a header list, looking names up case-insensitively.
    fn check(
        scheme: Scheme,
        secrets: &[&str],
        hs: &[(&str, String)],
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let hs: Vec<(String, String)> =
            hs.iter().map(|(n, v)| (n.to_string(), v.clone())).collect();
        let lookup = move |name: &str| {
            hs.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        verify(scheme, &s(secrets), &lookup, body, now, 300)
    }

    fn std_headers(sig: &str) -> Vec<(&'static str, String)> {
        vec![
            ("webhook-id", STD_ID.to_string()),
            ("webhook-timestamp", STD_TS.to_string()),
            ("webhook-signature", sig.to_string()),
        ]
    }

    fn std_check(sig: &str) -> Result<(), VerifyError> {
        check(
            Scheme::Standard,
            &[STD_SECRET],
            &std_headers(sig),
            STD_BODY,
            STD_TS,
        )
    }

    fn gh_check(sig: &str) -> Result<(), VerifyError> {
        check(
            Scheme::Github,
            &[GH_SECRET],
            &[("X-Hub-Signature-256", sig.to_string())],
            b"Hello, World!",
            0,
        )
    }

    fn st_check(sig: &str) -> Result<(), VerifyError> {
        check(
            Scheme::Stripe,
            &[ST_SECRET],
            &[("Stripe-Signature", sig.to_string())],
            ST_BODY,
            ST_TS,
        )
    }

    #[test]
    fn standard_known_answer() {
        let signer = Signer::new(Scheme::Standard, &s(&[STD_SECRET])).unwrap();
        assert_eq!(
            signer.headers(STD_ID, STD_TS, STD_BODY),
            std_headers(STD_SIG)
        );
        assert_eq!(std_check(STD_SIG), Ok(()));
    }

    #[test]
    fn github_known_answer() {
        let signer = Signer::new(Scheme::Github, &s(&[GH_SECRET])).unwrap();
        let hs = signer.headers("ignored", 0, b"Hello, World!");
        assert_eq!(hs, vec![("X-Hub-Signature-256", GH_SIG.to_string())]);
        assert_eq!(gh_check(GH_SIG), Ok(()));
        assert_eq!(
            gh_check(&GH_SIG.to_uppercase().replacen("SHA256", "sha256", 1)),
            Ok(())
        );
    }

    #[test]
    fn stripe_known_answer() {
        let signer = Signer::new(Scheme::Stripe, &s(&[ST_SECRET])).unwrap();
        let expected = format!("t={ST_TS},v1={ST_HEX}");
        assert_eq!(
            signer.headers("ignored", ST_TS, ST_BODY),
            vec![("Stripe-Signature", expected.clone())]
        );
        assert_eq!(st_check(&expected), Ok(()));
        // Stripe also sends v0 (test-mode) entries; they are ignored, not errors.
        assert_eq!(st_check(&format!("t={ST_TS},v1={ST_HEX},v0=abcd")), Ok(()));
    }

    #[test]
    fn round_trip_each_scheme() {
        for (scheme, secret) in [
            (Scheme::Standard, STD_SECRET),
            (Scheme::Github, "gh"),
            (Scheme::Stripe, "sk"),
        ] {
            let signer = Signer::new(scheme, &s(&[secret])).unwrap();
            assert_eq!(signer.scheme(), scheme);
            let hs = signer.headers("msg_1", 1_000_000, b"payload");
            assert_eq!(
                check(scheme, &[secret], &hs, b"payload", 1_000_010),
                Ok(()),
                "{scheme}"
            );
            assert_eq!(
                check(scheme, &[secret], &hs, b"payloaD", 1_000_010),
                Err(VerifyError::NoMatch),
                "{scheme}"
            );
        }
    }

    #[test]
    fn rotation_two_signatures_old_key_still_verifies() {
        let new = "whsec_bmV3LWtleS1ieXRlcw=="; // "new-key-bytes"
        for (scheme, secrets) in [
            (Scheme::Standard, [new, STD_SECRET]),
            (Scheme::Stripe, ["sk_new", "sk_old"]),
        ] {
            let signer = Signer::new(scheme, &s(&secrets)).unwrap();
            let hs = signer.headers("msg_1", 1000, b"body");
            let (_, value) = hs.last().unwrap();
            let sigs = if scheme == Scheme::Standard {
                value.split(' ').count()
            } else {
                value.matches("v1=").count()
            };
            assert_eq!(sigs, 2, "{value}");
            // Order follows the secrets: the first signature is the newest key's.
            let newest = Signer::new(scheme, &s(&secrets[..1]))
                .unwrap()
                .headers("msg_1", 1000, b"body");
            assert!(value.starts_with(&newest.last().unwrap().1), "{value}");
            assert_eq!(check(scheme, &secrets[1..], &hs, b"body", 1000), Ok(()));
            assert_eq!(check(scheme, &secrets[..1], &hs, b"body", 1000), Ok(()));
            // Receiver-side rotation: it holds [unrelated newer, old] and the
            // sender still signs with old only.
            let old_only = Signer::new(scheme, &s(&secrets[1..]))
                .unwrap()
                .headers("m", 1000, b"body");
            assert_eq!(check(scheme, &secrets, &old_only, b"body", 1000), Ok(()));
            // A key that was never used must not verify.
            let other = if scheme == Scheme::Standard {
                "whsec_b3RoZXI="
            } else {
                "sk_other"
            };
            assert_eq!(
                check(scheme, &[other], &hs, b"body", 1000),
                Err(VerifyError::NoMatch)
            );
        }
        // GitHub has room for one signature: the newest secret's.
        let gh = Signer::new(Scheme::Github, &s(&[GH_SECRET, "old"])).unwrap();
        assert_eq!(gh.headers("", 0, b"Hello, World!")[0].1, GH_SIG);
    }

    #[test]
    fn rejects_empty_and_truncated_and_flipped() {
        assert_eq!(
            std_check(""),
            Err(VerifyError::Malformed("empty webhook-signature"))
        );
        assert_eq!(std_check("v1,"), Err(VerifyError::NoMatch));
        for cut in 1..4 {
            assert_eq!(
                std_check(&STD_SIG[..STD_SIG.len() - cut]),
                Err(VerifyError::NoMatch),
                "cut {cut}"
            );
            assert!(
                gh_check(&GH_SIG[..GH_SIG.len() - cut]).is_err(),
                "cut {cut}"
            );
            assert!(st_check(&format!("t={ST_TS},v1={}", &ST_HEX[..ST_HEX.len() - cut])).is_err());
        }
        let flip = |sig: &str, at: usize| {
            let mut b = sig.as_bytes().to_vec();
            b[at] = if b[at] == b'a' { b'b' } else { b'a' };
            String::from_utf8(b).unwrap()
        };
        assert_eq!(std_check(&flip(STD_SIG, 10)), Err(VerifyError::NoMatch));
        assert_eq!(gh_check(&flip(GH_SIG, 20)), Err(VerifyError::NoMatch));
        assert_eq!(
            st_check(&format!("t={ST_TS},v1={}", flip(ST_HEX, 5))),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            gh_check(""),
            Err(VerifyError::Malformed("x-hub-signature-256 lacks '='"))
        );
        assert_eq!(gh_check("sha256="), Err(VerifyError::NoMatch));
        assert_eq!(
            st_check(""),
            Err(VerifyError::Malformed("stripe-signature lacks t="))
        );
        assert_eq!(
            st_check(&format!("t={ST_TS},v1=")),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn rejects_wrong_versions() {
        let v2 = STD_SIG.replacen("v1,", "v2,", 1);
        assert_eq!(std_check(&v2), Err(VerifyError::UnsupportedVersion("v1")));
        // Unknown versions alongside a valid v1 are ignored.
        assert_eq!(std_check(&format!("{v2} {STD_SIG}")), Ok(()));
        let sha1 = GH_SIG.replacen("sha256=", "sha1=", 1);
        assert_eq!(
            gh_check(&sha1),
            Err(VerifyError::UnsupportedVersion("sha256"))
        );
        assert_eq!(
            st_check(&format!("t={ST_TS},v0={ST_HEX}")),
            Err(VerifyError::UnsupportedVersion("v1"))
        );
    }

    #[test]
    fn rejects_stale_and_bad_timestamps() {
        let hs = std_headers(STD_SIG);
        for now in [STD_TS + 301, STD_TS - 301] {
            let err = check(Scheme::Standard, &[STD_SECRET], &hs, STD_BODY, now);
            assert!(
                matches!(err, Err(VerifyError::StaleTimestamp { .. })),
                "{now}"
            );
        }
        // Exactly at the tolerance is still accepted.
        assert_eq!(
            check(Scheme::Standard, &[STD_SECRET], &hs, STD_BODY, STD_TS + 300),
            Ok(())
        );
        let st = [("stripe-signature", format!("t={ST_TS},v1={ST_HEX}"))];
        for now in [ST_TS + 301, ST_TS - 301] {
            let err = check(Scheme::Stripe, &[ST_SECRET], &st, ST_BODY, now);
            assert!(
                matches!(err, Err(VerifyError::StaleTimestamp { .. })),
                "{now}"
            );
        }
        for bad in [
            "abc",
            "",
            "-5",
            "+1614265330",
            "1614265330.0",
            "99999999999999999999",
        ] {
            let mut hs = std_headers(STD_SIG);
            hs[1].1 = bad.to_string();
            let err = check(Scheme::Standard, &[STD_SECRET], &hs, STD_BODY, STD_TS);
            assert!(
                matches!(err, Err(VerifyError::Malformed(_))),
                "{bad}: {err:?}"
            );
        }
        assert!(matches!(
            st_check(&format!("t=now,v1={ST_HEX}")),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_missing_headers() {
        for (i, name) in ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .enumerate()
        {
            let mut hs = std_headers(STD_SIG);
            hs.remove(i);
            let err = check(Scheme::Standard, &[STD_SECRET], &hs, STD_BODY, STD_TS);
            assert_eq!(err, Err(VerifyError::MissingHeader(name)));
        }
        assert_eq!(
            check(Scheme::Github, &["x"], &[], b"", 0),
            Err(VerifyError::MissingHeader("x-hub-signature-256"))
        );
        assert_eq!(
            check(Scheme::Stripe, &["x"], &[], b"", 0),
            Err(VerifyError::MissingHeader("stripe-signature"))
        );
    }

    #[test]
    fn debug_hides_key_material() {
        let signer = Signer::new(Scheme::Standard, &s(&[STD_SECRET, STD_SECRET])).unwrap();
        let dbg = format!("{signer:?}");
        assert_eq!(dbg, "Signer { scheme: Standard, keys: 2 }");
        let key = SECRET_B64.decode(&STD_SECRET[6..]).unwrap();
        assert!(
            !dbg.contains("MfKQ9r8G") && !dbg.contains(&format!("{key:?}")[1..10]),
            "{dbg}"
        );
        let gh = format!(
            "{:?}",
            Signer::new(Scheme::Github, &s(&[GH_SECRET])).unwrap()
        );
        assert!(!gh.contains("Secret") && !gh.contains("73, 116"), "{gh}"); // 73,116 = "It"
    }

    #[test]
    fn secret_validation() {
        let bad_b64 = "whsec_not*base64!";
        assert_eq!(
            Signer::new(Scheme::Standard, &s(&[STD_SECRET, bad_b64])).unwrap_err(),
            SecretError::InvalidBase64 { index: 2 }
        );
        for (secret, want) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                SecretError::MissingPrefix { index: 1 },
            ),
            ("whsec_", SecretError::Empty { index: 1 }),
            ("", SecretError::Empty { index: 1 }),
            (bad_b64, SecretError::InvalidBase64 { index: 1 }),
        ] {
            let err = Signer::new(Scheme::Standard, &s(&[secret])).unwrap_err();
            assert_eq!(err, want);
            let msg = err.to_string();
            assert!(msg.contains("1st"), "{msg}");
            assert!(secret.len() < 7 || !msg.contains(&secret[6..]), "{msg}");
        }
        assert_eq!(
            Signer::new(Scheme::Github, &[]).unwrap_err(),
            SecretError::NoSecrets
        );
        assert_eq!(
            Signer::new(Scheme::Stripe, &s(&["x", ""])).unwrap_err(),
            SecretError::Empty { index: 2 }
        );
        // github/stripe take any non-empty string, including non-base64 text.
        for scheme in [Scheme::Github, Scheme::Stripe] {
            assert!(Signer::new(scheme, &s(&[GH_SECRET, "whsec_x", "*"])).is_ok());
        }
        assert_eq!(ordinal(&3), "3rd");
        assert_eq!(ordinal(&12), "12th");
        assert_eq!(ordinal(&22), "22nd");
        // A receiver's bad secret surfaces as a VerifyError, not a panic.
        assert_eq!(
            std_check_with(&["nope"]),
            Err(VerifyError::Secret(SecretError::MissingPrefix { index: 1 }))
        );
    }

    fn std_check_with(secrets: &[&str]) -> Result<(), VerifyError> {
        check(
            Scheme::Standard,
            secrets,
            &std_headers(STD_SIG),
            STD_BODY,
            STD_TS,
        )
    }

    #[test]
    fn standard_secret_padding_optional() {
        let key = b"0123456789abcdefghijklmnopqrstu"; // 31 bytes -> one '=' of padding
        let padded = format!("whsec_{}", STANDARD.encode(key));
        assert!(padded.ends_with('='));
        let unpadded = padded.trim_end_matches('=').to_string();
        let a = Signer::new(Scheme::Standard, &[padded])
            .unwrap()
            .headers("m", 1, b"x");
        let b = Signer::new(Scheme::Standard, &[unpadded])
            .unwrap()
            .headers("m", 1, b"x");
        assert_eq!(a, b);
    }

    #[test]
    fn scheme_names() {
        for scheme in [Scheme::Standard, Scheme::Github, Scheme::Stripe] {
            assert_eq!(scheme.to_string().parse::<Scheme>(), Ok(scheme));
        }
        assert_eq!(Scheme::default(), Scheme::Standard);
        let msg = "GitHub".parse::<Scheme>().unwrap_err().to_string();
        assert!(msg.contains("standard, github, stripe"), "{msg}");
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex_encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(hex_decode("00ABff"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"ab"));
    }
}
