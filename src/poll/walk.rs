//! A page walk: the requests of a paginated source, one page after another until the
//! API says there are no more, and reading one page (or any single document) into items.
//! Each pagination style's "next page" is a small function of the page just read.

use std::collections::HashSet;
use std::sync::Arc;

use reqwest::Url;
use serde_json::Value;

use super::{cpu, Fetched, PollError, Poller, DOCUMENT_ID};
use crate::config::{Format, HttpRequest, Mode, PageStyle, Pagination, Source};
use crate::extract::{Collection, ExtractError, Item};
use crate::source::Page;

impl Poller {
    /// Fetches page after page until the API says there are no more, gathering items.
    pub(super) async fn walk(
        &self,
        source: &Arc<Source>,
        req: &HttpRequest,
        p: &Pagination,
    ) -> Result<Fetched, PollError> {
        let mut at = Position::first(&req.url, &p.style);
        let mut fetched_urls = HashSet::new();
        let mut items = Vec::new();
        let mut collection = None;
        let mut pages = 0;
        let mut walked: u64 = 0;
        loop {
            pages += 1;
            let page_loop = || PollError::PageLoop {
                url: source.location(),
                page: pages,
            };
            if !fetched_urls.insert(at.url.clone()) {
                return Err(page_loop());
            }
            let Page::Body { body, next, .. } =
                self.fetcher.fetch(source, req, &at.url, None).await?
            else {
                // Only a conditional request gets a 304, and pages are never conditional.
                return Err(page_loop());
            };
            // max_body caps the whole walk: its items are all held until the diff.
            walked += body.len() as u64;
            if walked > source.max_body {
                return Err(PollError::WalkTooLarge {
                    url: source.location(),
                    page: pages,
                    limit: source.max_body,
                });
            }
            let s = source.clone();
            let style = p.style.clone();
            let page = cpu(source, move || read_page(&s, &body, Some(&style))).await?;
            collection = collection.or(page.collection);
            let held = page.items.len();
            items.extend(page.items);
            let next = (at.next(&p.style, next, page.token, held)).map_err(|error| {
                PollError::NextUrl {
                    url: source.location(),
                    page: pages,
                    error,
                }
            })?;
            let complete = match next {
                None => true,
                Some(_) if pages >= p.max_pages => false,
                Some(u) if u.origin() != req.url.origin() => {
                    return Err(PollError::ForeignPage {
                        url: source.location(),
                        page: pages,
                        next: u.origin().ascii_serialization(),
                    })
                }
                Some(u) => {
                    at.url = u;
                    continue;
                }
            };
            return Ok(Fetched::Items {
                items,
                pages,
                complete,
                collection,
            });
        }
    }
}

/// Where a walk is: the URL of the page to fetch next and, for `page` pagination, its
/// number, for `offset` pagination, the offset of its first item.
#[derive(Debug)]
struct Position {
    url: Url,
    number: u64,
}

impl Position {
    /// The first page: the source's URL, with the start page or offset (and size) for
    /// `page` and `offset` pagination.
    fn first(url: &Url, style: &PageStyle) -> Position {
        let mut url = url.clone();
        let (param, start, size) = match style {
            PageStyle::Page { param, start, size } => (param, *start, size.as_ref()),
            PageStyle::Offset { param, start, size } => (param, *start, Some(size)),
            _ => return Position { url, number: 0 },
        };
        set_param(&mut url, param, &start.to_string());
        if let Some((name, value)) = size {
            set_param(&mut url, name, &value.to_string());
        }
        Position { url, number: start }
    }

    /// The page after the one just read (None: it was the last), given its `Link`
    /// header's next URL, the token its body held (see [`read_page`]) and how many
    /// items it held. Err: a next URL that is not one.
    fn next(
        &mut self,
        style: &PageStyle,
        link: Option<Url>,
        token: Option<String>,
        held: usize,
    ) -> Result<Option<Url>, url::ParseError> {
        Ok(match style {
            PageStyle::Link => link,
            PageStyle::NextUrl(_) => next_url(&self.url, token)?,
            PageStyle::Cursor { param, .. } => next_cursor(&self.url, param, token),
            PageStyle::Page { param, .. } => {
                next_number(&self.url, param, &mut self.number, held == 0)
            }
            PageStyle::Offset {
                param,
                size: (_, size),
                ..
            } => next_offset(&self.url, param, &mut self.number, held, *size),
        })
    }
}

/// `next_url`: the URL the body names, relative to the page it came in.
fn next_url(current: &Url, token: Option<String>) -> Result<Option<Url>, url::ParseError> {
    token.map(|t| current.join(&t)).transpose()
}

/// `cursor`: this page's URL with the cursor the body names as query parameter `param`.
fn next_cursor(current: &Url, param: &str, token: Option<String>) -> Option<Url> {
    token.map(|c| {
        let mut u = current.clone();
        set_param(&mut u, param, &c);
        u
    })
}

/// `page`: the next page number, until a page comes back without items.
fn next_number(current: &Url, param: &str, number: &mut u64, empty: bool) -> Option<Url> {
    (!empty).then(|| {
        *number += 1;
        let mut u = current.clone();
        set_param(&mut u, param, &number.to_string());
        u
    })
}

/// `offset`: the offset after this page's items, until a page holds fewer than the
/// `size` it was asked for (an empty page included). An API that sends more than it was
/// asked for is followed by what it sent, so no item is skipped.
fn next_offset(
    current: &Url,
    param: &str,
    offset: &mut u64,
    held: usize,
    size: u64,
) -> Option<Url> {
    ((held as u64) >= size).then(|| {
        *offset += held as u64;
        let mut u = current.clone();
        set_param(&mut u, param, &offset.to_string());
        u
    })
}

/// Sets query parameter `name` of `url` to `value`, replacing any it had.
fn set_param(url: &mut Url, name: &str, value: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair(name, value);
}

/// What one parsed document (a page, a feed, a command's output) holds.
pub(super) struct PageRead {
    pub(super) items: Vec<Item>,
    /// What the items came in (None for a document source).
    pub(super) collection: Option<Collection>,
    /// For pagination by body: the next page's URL or cursor.
    pub(super) token: Option<String>,
}

/// Reads one parsed document's items. Blocking: CPU work.
pub(super) fn read_page(
    source: &Source,
    body: &[u8],
    style: Option<&PageStyle>,
) -> Result<PageRead, PollError> {
    let url = source.location();
    let doc: Value = match source.format {
        Format::Feed => crate::feed::entries_of(source, body).map_err(|error| PollError::Feed {
            url: url.clone(),
            error,
        })?,
        Format::Json => serde_json::from_slice(body).map_err(|error| PollError::Json {
            url: url.clone(),
            error,
        })?,
    };
    // The next page is found in the document as the API sent it, before any transform.
    let token = match style {
        Some(PageStyle::NextUrl(p)) | Some(PageStyle::Cursor { pointer: p, .. }) => {
            match doc.pointer(p) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            }
        }
        _ => None,
    };
    let doc = match &source.transform {
        Some(t) => t.apply(doc).map_err(|error| PollError::Transform {
            url: url.clone(),
            error,
        })?,
        None => doc,
    };
    let mut collection = None;
    let items = match source.mode {
        Mode::Items => {
            collection = doc.pointer(&source.items).and_then(Collection::of);
            crate::extract::extract(&doc, &source.items, &source.id)
                .map_err(|error| PollError::Extract { url, error })?
        }
        Mode::Document => {
            let Some(value) = doc.pointer(&source.items) else {
                return Err(PollError::Extract {
                    url,
                    error: ExtractError::ItemsNotFound {
                        pointer: source.items.clone(),
                        detail: "nothing is there".into(),
                    },
                });
            };
            vec![Item {
                id: DOCUMENT_ID.to_string(),
                value: value.clone(),
            }]
        }
    };
    Ok(PageRead {
        items,
        collection,
        token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_link_header_is_taken_as_it_is() {
        let mut at = Position::first(&url("http://h/items"), &PageStyle::Link);
        let next = Some(url("http://h/items?page=2"));
        assert_eq!(at.next(&PageStyle::Link, next.clone(), None, 1), Ok(next));
        assert_eq!(at.next(&PageStyle::Link, None, None, 1), Ok(None));
    }

    #[test]
    fn a_next_url_resolves_against_the_page_it_came_in() {
        let current = url("http://h/api/items?page=1");
        assert_eq!(
            next_url(&current, Some("?page=2".into())),
            Ok(Some(url("http://h/api/items?page=2")))
        );
        assert_eq!(
            next_url(&current, Some("/v2/items".into())),
            Ok(Some(url("http://h/v2/items")))
        );
        assert_eq!(next_url(&current, None), Ok(None));
        assert!(next_url(&current, Some("http://[::1".into())).is_err());
    }

    #[test]
    fn a_cursor_replaces_the_one_before_and_keeps_other_parameters() {
        let current = url("http://h/items?limit=50&after=abc");
        assert_eq!(
            next_cursor(&current, "after", Some("d e".into())),
            Some(url("http://h/items?limit=50&after=d+e"))
        );
        assert_eq!(next_cursor(&current, "after", None), None);
    }

    #[test]
    fn page_numbers_start_where_configured_and_stop_at_an_empty_page() {
        let style = PageStyle::Page {
            param: "page".into(),
            start: 1,
            size: Some(("per_page".into(), 100)),
        };
        let mut at = Position::first(&url("http://h/items?page=9&q=x"), &style);
        assert_eq!(at.url, url("http://h/items?q=x&page=1&per_page=100"));
        let second = at.next(&style, None, None, 2).unwrap().unwrap();
        assert_eq!(second, url("http://h/items?q=x&per_page=100&page=2"));
        at.url = second;
        assert_eq!(at.number, 2);
        assert_eq!(at.next(&style, None, None, 0), Ok(None));
    }

    #[test]
    fn offsets_start_where_configured_advance_by_the_items_held_and_stop_at_a_short_page() {
        let style = PageStyle::Offset {
            param: "startAt".into(),
            start: 0,
            size: ("maxResults".into(), 50),
        };
        let mut at = Position::first(&url("http://h/search?startAt=7&jql=x"), &style);
        assert_eq!(at.url, url("http://h/search?jql=x&startAt=0&maxResults=50"));
        let second = at.next(&style, None, None, 50).unwrap().unwrap();
        assert_eq!(
            second,
            url("http://h/search?jql=x&maxResults=50&startAt=50")
        );
        at.url = second;
        // More than asked for: the next offset follows what came, skipping nothing.
        let third = at.next(&style, None, None, 60).unwrap().unwrap();
        assert_eq!(
            third,
            url("http://h/search?jql=x&maxResults=50&startAt=110")
        );
        at.url = third;
        assert_eq!(at.next(&style, None, None, 49), Ok(None), "a short page");
        assert_eq!(at.next(&style, None, None, 0), Ok(None), "an empty page");

        let from = PageStyle::Offset {
            param: "offset".into(),
            start: 10,
            size: ("limit".into(), 5),
        };
        let at = Position::first(&url("http://h/rows"), &from);
        assert_eq!(at.url, url("http://h/rows?offset=10&limit=5"));
    }
}
