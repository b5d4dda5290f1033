//! `[sources.<name>.paginate]`: how a walk finds its next page, and the validation of
//! the table (exactly one style, and only the settings that style reads).

use crate::config::raw::RawPaginate;
use crate::config::validate::Validator;
use crate::config::KeyPath;

/// `[sources.<name>.paginate]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pagination {
    pub style: PageStyle,
    /// Pages fetched at most in one poll; a walk cut short emits no deletions.
    pub max_pages: u32,
}

/// How the next page is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStyle {
    /// The RFC 8288 `Link: <…>; rel="next"` header.
    Link,
    /// A JSON Pointer to the next page's URL in the body.
    NextUrl(String),
    /// A JSON Pointer to a cursor, passed as query parameter `param`.
    Cursor { pointer: String, param: String },
    /// Page numbers in query parameter `param` from `start`, optionally with a page
    /// size parameter; ends at the first page without items.
    Page {
        param: String,
        start: u64,
        size: Option<(String, u64)>,
    },
    /// An item offset in query parameter `param` from `start`, advanced by the items
    /// each page held, with page size parameter `size` (name, value) always sent; ends
    /// at the first page with fewer items than the size asked for.
    Offset {
        param: String,
        start: u64,
        size: (String, u64),
    },
}

/// Default pages per walk.
pub const DEFAULT_MAX_PAGES: u32 = 100;

impl Validator<'_> {
    /// The table at `key`, or None when it names no style, several, or a style without
    /// the settings it needs (each reported).
    pub(super) fn pagination(&mut self, key: &KeyPath, p: &RawPaginate) -> Option<Pagination> {
        let max_pages = match p.max_pages {
            None => DEFAULT_MAX_PAGES,
            Some(n) if (1..=100_000).contains(&n) => n as u32,
            Some(_) => {
                self.problem(&key.key("max_pages"), "must be between 1 and 100000");
                DEFAULT_MAX_PAGES
            }
        };
        let styles = [
            p.next.is_some(),
            p.cursor.is_some(),
            p.page.is_some(),
            p.offset.is_some(),
        ];
        if styles.iter().filter(|s| **s).count() != 1 {
            self.problem(key, "set exactly one of next = \"link\" (or a JSON Pointer to the next URL), cursor = \"<pointer>\" with param, page = \"<query parameter>\", or offset = \"<query parameter>\" with size and size_value");
            return None;
        }
        let unused = |v: &mut Self, what: &str, set: bool, style: &str| {
            if set {
                v.problem(&key.key(what), format!("is not used with {style}"));
            }
        };
        let style = if let Some(next) = &p.next {
            unused(self, "param", p.param.is_some(), "next");
            if next == "link" {
                PageStyle::Link
            } else {
                self.pointer(&key.key("next"), next);
                PageStyle::NextUrl(next.clone())
            }
        } else if let Some(cursor) = &p.cursor {
            self.pointer(&key.key("cursor"), cursor);
            let Some(param) = p.param.clone().filter(|p| !p.is_empty()) else {
                self.problem(
                    &key.key("param"),
                    "missing: the query parameter that takes the cursor, e.g. param = \"cursor\"",
                );
                return None;
            };
            PageStyle::Cursor {
                pointer: cursor.clone(),
                param,
            }
        } else if let Some(param) = &p.page {
            if param.is_empty() {
                self.problem(
                    &key.key("page"),
                    "names the query parameter of the page number, e.g. page = \"page\"",
                );
            }
            let start = self.page_start(key, p.start, 1);
            let size = match (&p.size, p.size_value) {
                (None, None) => None,
                (Some(name), Some(v)) if v > 0 => Some((name.clone(), v as u64)),
                _ => {
                    self.problem(&key.key("size"), "set both size (the query parameter) and size_value (a positive number), or neither");
                    None
                }
            };
            PageStyle::Page {
                param: param.clone(),
                start,
                size,
            }
        } else {
            let param = p.offset.clone().unwrap_or_default();
            unused(
                self,
                "param",
                p.param.is_some(),
                "offset (the offset parameter is named by offset itself)",
            );
            if param.is_empty() {
                self.problem(
                    &key.key("offset"),
                    "names the query parameter of the item offset, e.g. offset = \"offset\" (PostgREST) or offset = \"startAt\" (Jira)",
                );
            }
            let start = self.page_start(key, p.start, 0);
            let size = self.offset_size(key, &param, p);
            PageStyle::Offset {
                param,
                start,
                size: size?,
            }
        };
        Some(Pagination { style, max_pages })
    }

    /// `start` of page-number or offset pagination: 0 or more, `default` when unset.
    fn page_start(&mut self, key: &KeyPath, start: Option<i64>, default: u64) -> u64 {
        match start {
            None => default,
            Some(n) if n >= 0 => n as u64,
            Some(_) => {
                self.problem(&key.key("start"), "must be 0 or more");
                default
            }
        }
    }

    /// `size` and `size_value` of offset pagination: both required, since a walk by
    /// offset ends at the first page with fewer items than it asked for; without a
    /// size it sent, pollhook could not tell the last page from a full one.
    fn offset_size(
        &mut self,
        key: &KeyPath,
        offset: &str,
        p: &RawPaginate,
    ) -> Option<(String, u64)> {
        let name = match p.size.as_deref() {
            None => {
                self.problem(&key.key("size"), "missing: offset pagination sends the page size and ends at the first page with fewer items; name its query parameter, e.g. size = \"limit\" (PostgREST) or size = \"maxResults\" (Jira)");
                None
            }
            Some("") => {
                self.problem(
                    &key.key("size"),
                    "names the query parameter of the page size, e.g. size = \"limit\"",
                );
                None
            }
            Some(name) if name == offset => {
                self.problem(
                    &key.key("size"),
                    "names the same query parameter as offset; the page size needs its own",
                );
                None
            }
            Some(name) => Some(name.to_string()),
        };
        let value = match p.size_value {
            None => {
                self.problem(&key.key("size_value"), "missing: the page size to ask for (a positive number no larger than the API's own maximum page size); the walk ends at the first page with fewer items than this");
                None
            }
            Some(v) if v > 0 => Some(v as u64),
            Some(_) => {
                self.problem(&key.key("size_value"), "must be a positive number");
                None
            }
        };
        Some((name?, value?))
    }
}
