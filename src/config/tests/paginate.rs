//! `[paginate]` with `offset`: the settings it needs, and every mixed or invalid table
//! reported with its key and line.

use super::*;

const TARGET: &str = r#"
[targets.t]
url = "https://example.com/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
"#;

#[test]
fn offset_pagination_loads_with_start_defaulting_to_zero() {
    let text = format!(
        r#"{TARGET}
[sources.jira]
url = "https://jira.example.com/rest/api/2/search?jql=project%3DOPS"
interval = "5m"
items = "/issues"
[sources.jira.paginate]
offset = "startAt"
size = "maxResults"
size_value = 50

[sources.rows]
url = "https://db.example.com/tickets"
interval = "5m"
items = ""
[sources.rows.paginate]
offset = "offset"
start = 10
size = "limit"
size_value = 1000
max_pages = 20
"#
    );
    let c = parse(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.sources["jira"].pagination,
        Some(Pagination {
            style: PageStyle::Offset {
                param: "startAt".into(),
                start: 0,
                size: ("maxResults".into(), 50),
            },
            max_pages: DEFAULT_MAX_PAGES,
        })
    );
    assert_eq!(
        c.sources["rows"].pagination,
        Some(Pagination {
            style: PageStyle::Offset {
                param: "offset".into(),
                start: 10,
                size: ("limit".into(), 1000),
            },
            max_pages: 20,
        })
    );
}

#[test]
fn offset_pagination_without_its_size_or_mixed_with_other_styles_is_refused() {
    // `{TARGET}` is lines 1-5.
    let text = format!(
        r#"{TARGET}
[sources.a]
url = "https://api.example.com/a"
interval = "1m"
[sources.a.paginate]
offset = "offset"

[sources.b]
url = "https://api.example.com/b"
interval = "1m"
[sources.b.paginate]
offset = "offset"
page = "page"
size = "limit"
size_value = 10

[sources.c]
url = "https://api.example.com/c"
interval = "1m"
[sources.c.paginate]
offset = "offset"
param = "offset"
size = "limit"
size_value = 10

[sources.d]
url = "https://api.example.com/d"
interval = "1m"
[sources.d.paginate]
offset = ""
start = -1
size = ""
size_value = 0

[sources.e]
url = "https://api.example.com/e"
interval = "1m"
[sources.e.paginate]
offset = "offset"
size = "offset"
size_value = 10

[sources.f]
url = "https://api.example.com/f"
interval = "1m"
transform = "[.[] | select(.open)]"
[sources.f.paginate]
offset = "offset"
size = "limit"
size_value = 10

[sources.g]
url = "https://api.example.com/g"
interval = "1m"
mode = "document"
[sources.g.paginate]
offset = "offset"
size = "limit"
size_value = 10

[sources.h]
command = ["/usr/bin/list"]
interval = "1m"
[sources.h.paginate]
offset = "offset"
size = "limit"
size_value = 10

[sources.i]
url = "https://api.example.com/i"
interval = "1m"
[sources.i.paginate]
offset = "offset"
size = "limit"
"#
    );
    let err = parse(&text).unwrap_err();
    let problems = err.problems();
    let find = |key: &str, line: usize, words: &str| {
        let p = problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem for {key} in {problems:#?}"));
        assert_eq!(p.line, Some(line), "{key}: {p:?}");
        assert!(p.message.contains(words), "{key}: {}", p.message);
    };
    // Missing keys are placed at their table.
    find("sources.a.paginate.size", 9, "missing");
    find("sources.a.paginate.size_value", 9, "fewer items");
    find("sources.b.paginate", 15, "exactly one of");
    find("sources.c.paginate.param", 26, "not used with offset");
    find(
        "sources.d.paginate.offset",
        34,
        "query parameter of the item offset",
    );
    find("sources.d.paginate.start", 35, "0 or more");
    find(
        "sources.d.paginate.size",
        36,
        "query parameter of the page size",
    );
    find("sources.d.paginate.size_value", 37, "positive");
    find(
        "sources.e.paginate.size",
        44,
        "same query parameter as offset",
    );
    find("sources.f.transform", 50, "offset pagination");
    find("sources.g.mode", 59, "cannot be combined with [paginate]");
    find("sources.h.paginate", 68, "command source has no pages");
    find("sources.i.paginate.size_value", 76, "missing");
    // Every problem names one of these sources' keys: nothing else is wrong.
    let unexpected: Vec<_> = problems
        .iter()
        .filter(|p| {
            ![
                "sources.a.paginate.size",
                "sources.a.paginate.size_value",
                "sources.b.paginate",
                "sources.c.paginate.param",
                "sources.d.paginate.offset",
                "sources.d.paginate.start",
                "sources.d.paginate.size",
                "sources.d.paginate.size_value",
                "sources.e.paginate.size",
                "sources.f.transform",
                "sources.g.mode",
                "sources.h.paginate",
                "sources.i.paginate.size_value",
            ]
            .contains(&p.key.as_str())
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");
    // The message shows where: the file, the line and the key.
    assert!(
        err.to_string()
            .contains("config.toml:26: sources.c.paginate.param"),
        "{err}"
    );
}
