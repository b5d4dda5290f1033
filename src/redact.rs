//! Known secrets out of text that leaves the process (invariant 6). An API that answers
//! 401 often echoes what it was sent ("invalid token abc…", the `Authorization` header,
//! the query string), and that answer becomes an error message: a log line, a source's
//! `last_error`, the admin API. A [`Redactor`] holds the secret values one source or
//! target was configured with (and the OAuth2 access tokens it obtained at run time)
//! and replaces each, and its base64 and percent-encoded forms, with `<redacted>`
//! wherever outside text enters an error. Pure.
//!
//! Values shorter than [`MIN_LEN`] are not redacted: replacing every `abc` in a message
//! would garble it and hide nothing worth hiding.

use std::fmt;
use std::sync::Arc;

use base64::Engine;

/// What a secret is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Secrets shorter than this (in bytes) are left alone.
pub const MIN_LEN: usize = 4;

/// The secret values of one source or target, in every form they may come back in.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Distinct, at least [`MIN_LEN`] long, longest first: a secret that contains
    /// another is replaced whole before the shorter one could break it apart.
    forms: Arc<[String]>,
}

// Debug never shows the secrets it exists to hide.
impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} forms)", self.forms.len())
    }
}

impl Redactor {
    /// A redactor for `secrets` (as configured, before any encoding).
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Redactor::default().with(secrets)
    }

    /// This redactor and `more` secrets (an access token obtained at run time).
    pub fn with<I, S>(&self, more: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut forms: Vec<String> = self.forms.to_vec();
        let before = forms.len();
        for secret in more {
            let secret = secret.as_ref();
            if secret.len() < MIN_LEN {
                continue;
            }
            forms.extend(encodings(secret));
        }
        if forms.len() == before {
            return self.clone();
        }
        forms.retain(|f| f.len() >= MIN_LEN);
        forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        forms.dedup();
        Redactor {
            forms: forms.into(),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// The longest form of any secret, in bytes: text cut to a length must be read this
    /// much further before redacting, or a secret at the cut would lose only its tail.
    pub fn longest(&self) -> usize {
        self.forms.first().map_or(0, String::len)
    }

    /// `text` with every known secret replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for form in self.forms.iter() {
            if out.contains(form.as_str()) {
                out = out.replace(form.as_str(), REDACTED);
            }
        }
        out
    }
}

/// `secret` as written, in the four base64 alphabets-and-paddings (an `Authorization:
/// Basic` header, a JWT segment) and percent-encoded (a query string).
fn encodings(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut forms = vec![
        secret.to_string(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    let mut url = reqwest::Url::parse("http://form.invalid/").expect("a valid constant URL");
    url.query_pairs_mut().append_pair("", secret);
    if let Some(q) = url.query() {
        forms.push(q.trim_start_matches('=').to_string());
    }
    let percent: String = bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    forms.push(percent);
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    #[test]
    fn replaces_the_secret_and_its_encodings() {
        // Bytes that make the four base64 forms differ: '+' vs '-', '/' vs '_', padding.
        let secret = "s3cr?t>>>~~";
        let r = Redactor::new([secret]);
        let forms = [
            secret.to_string(),
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            "s3cr%3Ft%3E%3E%3E%7E%7E".to_string(),
            "s3cr%3Ft%3E%3E%3E~~".to_string(),
        ];
        assert_ne!(
            forms[1], forms[3],
            "the test secret must tell the alphabets apart"
        );
        for form in forms {
            let text = format!("401: invalid credential {form} (see docs)");
            let out = r.redact(&text);
            assert_eq!(
                out, "401: invalid credential <redacted> (see docs)",
                "{form}"
            );
        }
    }

    #[test]
    fn basic_credentials_are_redacted_as_the_pair() {
        let r = Redactor::new(["pa55word", "alice:pa55word"]);
        let header = format!("Basic {}", STANDARD.encode("alice:pa55word"));
        let out = r.redact(&format!("you sent {header}"));
        assert_eq!(out, "you sent Basic <redacted>");
    }

    #[test]
    fn longer_secrets_go_first_and_every_occurrence_goes() {
        let r = Redactor::new(["token", "token-and-more"]);
        assert_eq!(
            r.redact("token-and-more, token, token"),
            "<redacted>, <redacted>, <redacted>"
        );
    }

    #[test]
    fn short_secrets_and_empty_redactors_leave_text_alone() {
        let r = Redactor::new(["abc", ""]);
        assert!(r.is_empty());
        assert_eq!(r.redact("abc abc"), "abc abc");
        assert_eq!(Redactor::default().redact("x"), "x");
    }

    #[test]
    fn runtime_secrets_add_to_configured_ones() {
        let r = Redactor::new(["configured"]).with(["obtained-token"]);
        assert_eq!(
            r.redact("configured obtained-token"),
            "<redacted> <redacted>"
        );
        assert!(r.longest() >= "obtained-token".len());
        assert!(!format!("{r:?}").contains("configured"));
    }
}
