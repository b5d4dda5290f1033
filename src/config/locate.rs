//! Where a problem is in the config file: maps a key path such as
//! `sources.github.cron` to the line it is written on, so every error can say
//! "config.toml:12: sources.github.cron: …" instead of leaving the operator to search.

use toml_edit::{ImDocument, Item};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path inside the config, printed dotted (`targets.hooks.retry[2]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }

    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    // Keys that are not bare TOML keys are quoted so the path can be
                    // pasted back into the file.
                    if !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// Finds the lines of key paths in the original text of a config file.
pub struct Locator {
    doc: Option<ImDocument<String>>,
    line_starts: Vec<usize>,
}

impl Locator {
    /// Builds a locator; a text that does not parse yields a locator that knows no lines
    /// (the parse error itself carries the position then).
    pub fn new(text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Locator {
            doc: ImDocument::parse(text.to_string()).ok(),
            line_starts,
        }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The 1-based line of the deepest part of `path` that exists in the file: the key
    /// itself when present, else the table that should hold it.
    pub fn line(&self, path: &KeyPath) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &Item = doc.as_item();
        let mut best: Option<usize> = None;
        for seg in &path.0 {
            match seg {
                Seg::Key(k) => {
                    let Some(table) = item.as_table_like() else {
                        break;
                    };
                    let Some((key, next)) = table.get_key_value(k) else {
                        break;
                    };
                    if let Some(span) = key.span().or_else(|| next.span()) {
                        best = Some(self.line_of(span.start));
                    }
                    item = next;
                }
                Seg::Index(i) => {
                    let Some(value) = item.as_array().and_then(|a| a.get(*i)) else {
                        break;
                    };
                    if let Some(span) = value.span() {
                        best = Some(self.line_of(span.start));
                    }
                    // Arrays in our config hold only scalars, so the walk ends here.
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_tables_inline_tables_and_arrays() {
        let text = "state_dir = \"x\"\n\n[sources.a]\nurl = \"u\"\nheaders = { A = \"1\" }\nretry = [\n \"1s\",\n \"2s\",\n]\n";
        let loc = Locator::new(text);
        let p = KeyPath::root().key("sources").key("a");
        assert_eq!(loc.line(&KeyPath::root().key("state_dir")), Some(1));
        assert_eq!(loc.line(&p.key("url")), Some(4));
        assert_eq!(loc.line(&p.key("headers").key("A")), Some(5));
        assert_eq!(loc.line(&p.key("retry").index(1)), Some(8));
        // A missing key points at its table.
        assert_eq!(loc.line(&p.key("cron")), Some(3));
    }

    #[test]
    fn paths_print_dotted_and_quote_odd_keys() {
        let p = KeyPath::root()
            .key("sources")
            .key("my.api")
            .key("retry")
            .index(2);
        assert_eq!(p.to_string(), "sources.\"my.api\".retry[2]");
    }
}
