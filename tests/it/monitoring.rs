//! The monitoring examples (`examples/monitoring`) against what pollhook exports: every
//! metric the Grafana dashboard, the alert rules and the rules' promtool tests name is a
//! series `/metrics` serves, selected by labels it has (and by values it uses, for the
//! fixed words of `outcome` and `kind`); and the dashboard is one Grafana imports as is.
//! A metric renamed in `src/metrics.rs` fails here, not silently in someone's Grafana.
//! And the Debian package ships both files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use pollhook::metrics::{Metrics, PollOutcome};
use pollhook::store::TargetStats;
use serde_json::Value;

/// Labels that Prometheus adds at scrape time, not pollhook.
const SCRAPE_LABELS: &[&str] = &["job", "instance"];

/// Labels whose values are fixed words: a value the examples select must be one pollhook
/// writes. Other values are names from a config (sources, targets) or the version.
const FIXED_VALUES: &[&str] = &["outcome", "kind"];

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/monitoring")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text format of a `Metrics` with every family written, every outcome and kind
/// included.
fn exposition() -> String {
    let m = Metrics::new();
    let ok = PollOutcome::Ok {
        items: 3,
        created: 1,
        updated: 1,
        deleted: 1,
    };
    for outcome in [
        ok,
        PollOutcome::NotModified,
        PollOutcome::HeldBack { deletions: 2 },
        PollOutcome::Error,
    ] {
        m.poll_done("s", 0.1, outcome);
    }
    m.set_source_failing("s", true);
    for outcome in ["delivered", "failed", "dead"] {
        m.attempt_done("t", 0.05, outcome);
    }
    m.set_target_failing("t", false);
    m.lease_round(2, 1, 1);
    m.lease_round_failed();
    let stats = BTreeMap::from([(
        "t".to_string(),
        TargetStats {
            pending: 1,
            oldest_pending_ms: Some(0),
            dead: 1,
        },
    )]);
    m.encode(&["t".to_string()], &stats, 1_000)
}

type Labels = BTreeMap<String, String>;

/// Series name -> the label sets of its samples, from the text format.
fn samples(text: &str) -> BTreeMap<String, Vec<Labels>> {
    let mut out: BTreeMap<String, Vec<Labels>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at(end);
        let labels = match rest.strip_prefix('{') {
            Some(r) => matchers(&r[..r.find('}').expect("a closed label set")])
                .into_iter()
                .map(|m| (m.label, m.value))
                .collect(),
            None => Labels::new(),
        };
        out.entry(name.to_string()).or_default().push(labels);
    }
    out
}

/// One label matcher of a selector: `outcome=~"failed|dead"`.
struct Matcher {
    label: String,
    /// `=`, `!=`, `=~` or `!~`.
    op: String,
    value: String,
}

/// `k="v", k2=~"a|b"` as matchers. Values here hold no `,` or `"`.
fn matchers(set: &str) -> Vec<Matcher> {
    set.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(|m| {
            let op_at = m
                .find(['=', '!'])
                .unwrap_or_else(|| panic!("no operator in {m:?}"));
            let (key, rest) = m.split_at(op_at);
            let value_at = rest
                .find('"')
                .unwrap_or_else(|| panic!("no value in {m:?}"));
            let (op, value) = rest.split_at(value_at);
            Matcher {
                label: key.trim().to_string(),
                op: op.trim().to_string(),
                value: value.trim_matches('"').to_string(),
            }
        })
        .collect()
}

/// Every `pollhook_…` metric named in `text`, with the label matchers written right
/// after it (`pollhook_polls_total{outcome="error"}`), if any.
fn references(text: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (at, _) in text.match_indices("pollhook_") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let end = (at..bytes.len())
            .find(|&i| !word(bytes[i]))
            .unwrap_or(bytes.len());
        let name = text[at..end].to_string();
        let selector = text[end..]
            .strip_prefix('{')
            .and_then(|r| r.find('}').map(|close| matchers(&r[..close])))
            .unwrap_or_default();
        out.push((name, selector));
    }
    out
}

/// Whether `text` is a query (PromQL, or a test's input series), which must name series
/// as Prometheus stores them (`pollhook_polls_total`, `…_seconds_bucket`), or prose, which
/// may name a histogram by its family (`pollhook_poll_duration_seconds`).
#[derive(Clone, Copy, PartialEq)]
enum Text {
    Query,
    Prose,
}

/// The problems with the metrics `text` names, against the exposition's samples.
fn unknown_metrics(
    what: &str,
    text: &str,
    kind: Text,
    exported: &BTreeMap<String, Vec<Labels>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, selector) in references(text) {
        let histogram = exported.get(&format!("{name}_bucket"));
        let Some(series) = exported
            .get(&name)
            .or(histogram.filter(|_| kind == Text::Prose))
        else {
            problems.push(format!("{what}: {name} is not a series pollhook exports"));
            continue;
        };
        for Matcher {
            label: key,
            op,
            value,
        } in selector
        {
            if SCRAPE_LABELS.contains(&key.as_str()) {
                continue;
            }
            if !series.iter().any(|labels| labels.contains_key(&key)) {
                problems.push(format!("{what}: {name} has no label {key:?}"));
                continue;
            }
            if !FIXED_VALUES.contains(&key.as_str()) || value.contains('$') {
                continue;
            }
            // `=` takes one word, `=~` an alternation of words ("failed|dead").
            let words: Vec<&str> = match op.as_str() {
                "=" | "!=" => vec![value.as_str()],
                _ => value.split('|').collect(),
            };
            for word in words {
                if !series
                    .iter()
                    .any(|labels| labels.get(&key).map(String::as_str) == Some(word))
                {
                    problems.push(format!("{what}: {name} never has {key}=\"{word}\""));
                }
            }
        }
    }
    problems
}

/// The `expr:` of each rule in a rules file: on its line, or the block under `expr: >-`.
fn rule_exprs(rules: &str) -> Vec<String> {
    let lines: Vec<&str> = rules.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if ["|", "|-", ">", ">-"].contains(&rest) {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(rest.to_string());
        }
    }
    out
}

#[test]
fn the_exposition_used_here_writes_every_family() {
    // Otherwise a family left out of `exposition` would make its valid names look unknown,
    // or, worse, a suffix check pass on a family that no sample shows.
    let text = exposition();
    let exported = samples(&text);
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for family in [
        "pollhook_polls",
        "pollhook_source_failing",
        "pollhook_target_failing",
    ] {
        assert!(families.contains(&family), "{families:?}");
    }
    for family in families {
        let shown = exported.keys().any(|name| {
            name.strip_prefix(family)
                .is_some_and(|rest| ["", "_total", "_bucket", "_count", "_sum"].contains(&rest))
        });
        assert!(shown, "family {family} has no sample in:\n{text}");
    }
}

#[test]
fn the_dashboard_and_the_alert_rules_name_only_metrics_pollhook_exports() {
    let exported = samples(&exposition());
    let dashboard = example("grafana-dashboard.json");
    let rules = example("alerts.yml");
    let rule_tests = example("alerts.test.yml");

    // Every expression of the rules was found, and each names what it watches.
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), rules.matches("- alert:").count(), "{exprs:#?}");
    for expr in &exprs {
        assert!(
            expr.contains("pollhook_") || expr.starts_with("up{"),
            "an expression of no pollhook metric: {expr}"
        );
    }
    // The dashboard's queries (panels' and variables'), and every string of it.
    let d: Value = serde_json::from_str(&dashboard).unwrap();
    let mut queries: Vec<String> = (d["panels"].as_array().unwrap().iter())
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap_or_default().to_string())
        .collect();
    queries.extend(
        (d["templating"]["list"].as_array().unwrap().iter())
            .filter_map(|v| v["definition"].as_str().map(String::from)),
    );
    let queries = queries.join("\n");
    assert!(references(&queries).len() > 20, "{queries}");
    let mut strings = Vec::new();
    collect_strings(&d, &mut strings);
    let prose = strings.join("\n");

    let mut problems = Vec::new();
    for (what, text, kind) in [
        ("dashboard query", &queries, Text::Query),
        ("dashboard", &prose, Text::Prose),
        ("alerts.yml expr", &exprs.join("\n"), Text::Query),
        ("alerts.yml", &rules, Text::Prose),
        ("alerts.test.yml", &rule_tests, Text::Query),
    ] {
        problems.extend(unknown_metrics(what, text, kind, &exported));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_is_one_grafana_imports_as_is() {
    let d: Value = serde_json::from_str(&example("grafana-dashboard.json")).unwrap();
    assert!(
        d["title"].is_string() && d["uid"].is_string(),
        "title and uid"
    );
    assert!(
        d["id"].is_null(),
        "an id would clash with the importing Grafana's own"
    );

    // The data source is a variable (works imported and provisioned alike); source and
    // target are variables over pollhook's own labels.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    for (name, label) in [("source", "source"), ("target", "target")] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "{name}");
        let q = v["definition"].as_str().unwrap();
        assert!(q.starts_with("label_values(pollhook_") && q.ends_with(&format!(", {label})")));
    }

    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() > 10);
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    let mut shown = 0;
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().expect("a numeric id")),
            "{title}: id reused"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        );
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            panic!("{title}: gridPos {g}");
        };
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g}");
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            assert!(
                cells.insert(cell),
                "{title} overlaps another panel at {cell:?}"
            );
        }
        if p["type"] == "row" {
            // An open row holds no panels of its own: they follow it in the list.
            assert_eq!(p["panels"], serde_json::json!([]), "{title}");
            continue;
        }
        shown += 1;
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: datasource"
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}: datasource");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(expr.contains("pollhook_"), "{title}: expr {expr:?}");
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId reused"
            );
            assert_eq!(
                t["datasource"], p["datasource"],
                "{title}: target datasource"
            );
        }
    }
    assert!(shown > 10, "{shown} panels with queries");
}

#[test]
fn the_debian_package_ships_the_dashboard_and_the_rules() {
    let manifest: toml::Table =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    let assets: Vec<(&str, &str)> = assets
        .iter()
        .map(|a| (a[0].as_str().unwrap(), a[1].as_str().unwrap()))
        .collect();
    for file in ["grafana-dashboard.json", "alerts.yml"] {
        let from = format!("examples/monitoring/{file}");
        let to = format!("usr/share/doc/pollhook/examples/monitoring/{file}");
        assert!(
            assets.contains(&(&from, &to)),
            "{from} -> {to} in {assets:?}"
        );
    }
    // Every asset but the binary (built by cargo deb) is a file of the repository.
    for (from, _) in assets.iter().filter(|(f, _)| !f.starts_with("target/")) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(from);
        assert!(path.is_file(), "asset {from} is not a file");
    }
}
