//! Small value parsers for the config: durations, sizes, `${VAR}` expansion, and the
//! credential-free form of a URL that is safe to log (for a URL written with `${VAR}`,
//! the template as written, never the values).

use std::time::Duration;

use reqwest::Url;

/// The longest duration any setting takes. Longer ones are typos or tests of limits,
/// and past a few hundred million years the millisecond arithmetic of due times wraps,
/// which turned `retry = ["292000000y"]` into a retry at once.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"` (humantime syntax), at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "{text:?} is not a duration ({e}); write it like \"30s\", \"5m\", \"2h\" or \"1h 30m\""
        )
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than the 10 years a duration may be; write it like \"30s\", \"5m\", \"2h\" or \"1h 30m\""
        ));
    }
    Ok(d)
}

/// `"16MiB"`, `"512 KiB"`, `"1MB"`, `"1000"` (bytes).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!("{text:?} is not a size; write it like \"16MiB\", \"512KiB\", \"1MB\" or a number of bytes")
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1024,
        "mb" => 1000 * 1000,
        "mib" | "m" => 1024 * 1024,
        "gb" => 1000 * 1000 * 1000,
        "gib" | "g" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Replaces every `${NAME}` with the variable's value. A variable that is not set is an
/// error naming it (never its neighbours, which may be secrets).
pub fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed \"${\": write ${NAME} to use an environment variable".into());
        };
        let name = &after[..end];
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "${{{name}}} is not an environment variable name (letters, digits and '_')"
            ));
        }
        match env(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "environment variable {name} is not set (it is used as ${{{name}}}); set it in the service's environment"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The values of the `${NAME}`s in `text` that `env` has: what [`expand_env`] put in,
/// which the config treats as secrets (a token in a URL path, a header).
pub fn env_values(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        out.extend(env(&after[..end]));
        rest = &after[end + 1..];
    }
    out
}

/// How a URL the config wrote as `template` is shown, `url` being what it expanded to:
/// without `${VAR}`s, [`redact_url`] of `url`; with them, the template as written, so
/// `https://api.telegram.org/bot${BOT_TOKEN}/getUpdates` never shows the token. Either
/// way without user, password, query and fragment (`?…` when `url` has a query).
pub fn display_url(template: &str, url: &Url) -> String {
    if !template.contains("${") {
        return redact_url(url);
    }
    let t = template.trim();
    let t = t.split_once('#').map_or(t, |(before, _)| before);
    let t = t.split_once('?').map_or(t, |(before, _)| before);
    let mut shown = match t.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => t.to_string(),
    };
    if url.query().is_some() {
        shown.push_str("?…");
    }
    shown
}

/// `url` without user, password, query and fragment: what may be shown or reused.
pub fn without_credentials(url: &Url) -> Url {
    let mut u = url.clone();
    // These setters only fail for URLs that cannot have credentials, which is fine.
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u
}

/// The URL without user, password, query and fragment, which may carry tokens:
/// `https://api.example.com/v1/things`. Use it in every log line and error.
pub fn redact_url(url: &Url) -> String {
    let mut s = without_credentials(url).to_string();
    if url.query().is_some() {
        s.push_str("?…");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1 parsec").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn env_expansion() {
        let env = |n: &str| (n == "TOKEN").then(|| "abc".to_string());
        assert_eq!(
            expand_env("Bearer ${TOKEN}!", &env),
            Ok("Bearer abc!".into())
        );
        assert_eq!(
            expand_env("no vars $HOME", &env),
            Ok("no vars $HOME".into())
        );
        let err = expand_env("${MISSING}", &env).unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
        assert!(expand_env("${TOKEN", &env).is_err());
        assert!(expand_env("${1X}", &env).is_err());
    }

    #[test]
    fn a_url_with_variables_is_shown_as_written() {
        let env = |n: &str| (n == "BOT_TOKEN").then(|| "123456:ABC-def".to_string());
        let template = "https://api.telegram.org/bot${BOT_TOKEN}/getUpdates";
        let url = Url::parse(&expand_env(template, &env).unwrap()).unwrap();
        assert_eq!(display_url(template, &url), template);
        assert_eq!(env_values(template, &env), ["123456:ABC-def"]);
        // Credentials, query and fragment go as they do from any URL.
        let template = "https://u:${PW}@hooks.example.com/services/${HOOK}?k=${K}#x";
        let url = Url::parse("https://u:pw@hooks.example.com/services/T1/B2?k=v#x").unwrap();
        assert_eq!(
            display_url(template, &url),
            "https://hooks.example.com/services/${HOOK}?…"
        );
        // Without variables: the parsed URL, redacted.
        let url = Url::parse("https://Api.Example.com/v1?key=s3cret").unwrap();
        assert_eq!(
            display_url("https://Api.Example.com/v1?key=s3cret", &url),
            "https://api.example.com/v1?…"
        );
    }

    #[test]
    fn redaction_drops_credentials_and_query() {
        let u = Url::parse("https://user:pw@api.example.com:8443/v1/x?token=s3cret#frag").unwrap();
        let r = redact_url(&u);
        assert_eq!(r, "https://api.example.com:8443/v1/x?…");
        assert!(!r.contains("s3cret") && !r.contains("pw"));
    }
}
