//! An error with its causes, as one line: how pollhook shows every error it logs,
//! records as a source's `last_error` or answers over the admin API.
//!
//! pollhook's errors follow one rule: a variant either names its cause in its own
//! message (when a hint must come after the cause, as in "cannot read {path}: {error}
//! (pass --config FILE …)") or keeps the cause as its [`source`](Error::source), never
//! both. [`chain`] then prints the message and every source after it, joined by `": "`,
//! exactly as `anyhow`'s `{:#}` does for the binary's final error, so a cause reads the
//! same in a log line, in `pollhook status` and on the terminal.

use std::error::Error;
use std::fmt;

/// `error` and its causes, `outer: cause: its cause`.
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain(error)
}

/// Displays an error and its causes on one line; see [`chain`].
#[derive(Clone, Copy)]
pub struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the feed failed")]
    struct Outer {
        #[source]
        inner: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("line 3 is cut short")]
    struct Middle {
        #[source]
        io: std::io::Error,
    }

    #[test]
    fn prints_every_cause_once_in_order() {
        let e = Outer {
            inner: Middle {
                io: std::io::Error::other("disk on fire"),
            },
        };
        assert_eq!(
            chain(&e).to_string(),
            "reading the feed failed: line 3 is cut short: disk on fire"
        );
        // The same words as anyhow's alternate form, which the binary prints.
        assert_eq!(
            chain(&e).to_string(),
            format!("{:#}", anyhow::Error::new(e))
        );
    }

    #[test]
    fn an_error_without_a_source_is_its_message() {
        let e = std::io::Error::other("no such file");
        assert_eq!(chain(&e).to_string(), "no such file");
    }
}
