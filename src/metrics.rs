//! The numbers `/metrics` serves in the Prometheus text format, through the Prometheus
//! project's own client crate (`prometheus-client`).
//!
//! Counters and histograms are updated where the work happens (a poll's end, an
//! attempt's end). The outbox figures (pending, age of the oldest, dead) are read from
//! the store at scrape time instead of being tracked, so they are right after a restart,
//! a replay or a reload without any bookkeeping that could drift.
//!
//! Labels are source and target names from the config, and fixed words; never URLs, ids
//! or error texts, which could hold secrets (invariant 6) or grow without bound.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::TargetStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    source: String,
    /// `ok`, `not_modified`, `held_back` or `error`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    source: String,
    /// `created`, `updated` or `deleted`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    target: String,
    /// `delivered`, `failed` (another attempt is scheduled) or `dead`.
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 5 ms to about 80 s: a local API answers in milliseconds, a slow paginated one or a
/// timing-out target takes tens of seconds.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// How a poll ended, as counted.
#[derive(Debug, Clone, Copy)]
pub enum PollOutcome {
    Ok {
        items: usize,
        created: usize,
        updated: usize,
        deleted: usize,
    },
    /// 304 Not Modified.
    NotModified,
    /// The deletion guard held the poll back: nothing committed.
    HeldBack {
        deletions: usize,
    },
    Error,
}

impl PollOutcome {
    /// The word in metrics' `outcome` label and in the source status.
    pub fn label(self) -> &'static str {
        match self {
            PollOutcome::Ok { .. } => "ok",
            PollOutcome::NotModified => "not_modified",
            PollOutcome::HeldBack { .. } => "held_back",
            PollOutcome::Error => "error",
        }
    }

    /// Its place among the four outcomes.
    fn index(self) -> usize {
        match self {
            PollOutcome::Ok { .. } => 0,
            PollOutcome::NotModified => 1,
            PollOutcome::HeldBack { .. } => 2,
            PollOutcome::Error => 3,
        }
    }
}

/// The daemon's metrics; one per process, shared by every task.
pub struct Metrics {
    registry: Registry,
    polls: Family<PollLabels, Counter>,
    poll_duration: Histograms<SourceLabel>,
    items: Family<SourceLabel, Gauge>,
    source_failing: Family<SourceLabel, Gauge>,
    changes: Family<ChangeLabels, Counter>,
    held_back: Family<SourceLabel, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_duration: Histograms<TargetLabel>,
    pending: Family<TargetLabel, Gauge>,
    oldest_pending: Family<TargetLabel, Gauge<f64, AtomicU64>>,
    dead: Family<TargetLabel, Gauge>,
    target_failing: Family<TargetLabel, Gauge>,
    cluster_instances: Gauge,
    leases_held: Family<KindLabel, Gauge>,
    lease_rounds_failed: Counter,
    /// Held while a scrape rewrites the outbox gauges and encodes: two scrapes at once
    /// (a Prometheus HA pair) must not see each other's cleared families.
    scrape: std::sync::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("pollhook"),
            polls: Family::default(),
            poll_duration: Family::new_with_constructor(duration_histogram as fn() -> Histogram),
            items: Family::default(),
            source_failing: Family::default(),
            changes: Family::default(),
            held_back: Family::default(),
            deliveries: Family::default(),
            delivery_duration: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            pending: Family::default(),
            oldest_pending: Family::default(),
            dead: Family::default(),
            target_failing: Family::default(),
            cluster_instances: Gauge::default(),
            leases_held: Family::default(),
            lease_rounds_failed: Counter::default(),
            scrape: std::sync::Mutex::new(()),
        };
        let build = Family::<Vec<(String, String)>, Gauge>::default();
        build
            .get_or_create(&vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )])
            .set(1);
        let r = &mut m.registry;
        r.register("build_info", "pollhook's version", build);
        r.register(
            "polls",
            "Polls by source and outcome (ok, not_modified, held_back, error)",
            m.polls.clone(),
        );
        r.register(
            "poll_duration_seconds",
            "Time from request to commit of each poll, by source",
            m.poll_duration.clone(),
        );
        r.register(
            "source_items",
            "Items each source held after its last successful poll",
            m.items.clone(),
        );
        r.register(
            "source_failing",
            "1 while the source counts as failing (health.fail_after failed polls in a row), else 0",
            m.source_failing.clone(),
        );
        r.register(
            "changes",
            "Changes detected by source and kind (created, updated, deleted)",
            m.changes.clone(),
        );
        r.register(
            "deletions_held_back",
            "Deletions the deletion guard held back (not committed) until later polls confirm them, by source",
            m.held_back.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts by target and outcome (delivered, failed, dead)",
            m.deliveries.clone(),
        );
        r.register(
            "delivery_duration_seconds",
            "Time of each delivery attempt, by target",
            m.delivery_duration.clone(),
        );
        r.register(
            "pending_deliveries",
            "Deliveries waiting in the outbox, by target",
            m.pending.clone(),
        );
        r.register(
            "oldest_pending_age_seconds",
            "Age of the oldest pending delivery (since its change was detected), by target",
            m.oldest_pending.clone(),
        );
        r.register(
            "dead_deliveries",
            "Deliveries that ran out of retries and wait for a replay, by target",
            m.dead.clone(),
        );
        r.register(
            "target_failing",
            "1 while the target's oldest pending delivery is older than health.target_alert_after, else 0",
            m.target_failing.clone(),
        );
        r.register(
            "cluster_instances",
            "Live instances of the cluster, as this one's last lease round counted them (0 for a single node)",
            m.cluster_instances.clone(),
        );
        r.register(
            "leases_held",
            "Leases this instance holds, by kind (source, target); absent for a single node",
            m.leases_held.clone(),
        );
        r.register(
            "lease_rounds_failed",
            "Lease rounds that failed (the database did not answer); this instance stops acting when its leases run out",
            m.lease_rounds_failed.clone(),
        );
        m
    }

    /// A lease round ended: the live instances, and what this one holds.
    pub fn lease_round(&self, instances: usize, sources: usize, targets: usize) {
        self.cluster_instances.set(instances as i64);
        for (kind, n) in [("source", sources), ("target", targets)] {
            self.leases_held
                .get_or_create(&KindLabel { kind: kind.into() })
                .set(n as i64);
        }
    }

    /// A lease round failed.
    pub fn lease_round_failed(&self) {
        self.lease_rounds_failed.inc();
    }

    /// A poll of `source` ended. A source's loop keeps a [`SourceMetrics`] instead,
    /// which finds each series once.
    pub fn poll_done(&self, source: &str, seconds: f64, result: PollOutcome) {
        SourceMetrics::new(source).poll_done(self, seconds, result);
    }

    /// The items a source holds, known before its first poll of this run.
    pub fn set_items(&self, source: &str, items: u64) {
        self.items
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .set(items as i64);
    }

    /// Whether `source` counts as failing now (see `pollhook_source_failing`).
    pub fn set_source_failing(&self, source: &str, failing: bool) {
        self.source_failing
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .set(failing.into());
    }

    /// Whether `target` counts as failing now (see `pollhook_target_failing`).
    pub fn set_target_failing(&self, target: &str, failing: bool) {
        self.target_failing
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .set(failing.into());
    }

    /// A source left the config (or this instance): its series go, so dashboards do not
    /// show it as stuck and a failing one stops alerting where nobody polls it.
    pub fn forget_source(&self, source: &str) {
        let label = SourceLabel {
            source: source.to_string(),
        };
        self.items.remove(&label);
        self.poll_duration.remove(&label);
        self.source_failing.remove(&label);
    }

    /// A target left the config (or this instance): its health series goes, so a target
    /// removed while failing does not alert for ever. Counters and histograms stay.
    pub fn forget_target(&self, target: &str) {
        self.target_failing.remove(&TargetLabel {
            target: target.to_string(),
        });
    }

    /// A delivery attempt ended with `outcome` (`delivered`, `failed` or `dead`).
    pub fn attempt_done(&self, target: &str, seconds: f64, outcome: &'static str) {
        self.delivery_duration
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .observe(seconds);
        self.deliveries
            .get_or_create(&DeliveryLabels {
                target: target.to_string(),
                outcome,
            })
            .inc();
    }

    /// The text format, with the outbox figures as of `stats` (read just before) for
    /// `targets` (configured targets show zeros; others show while they hold deliveries).
    pub fn encode(
        &self,
        targets: &[String],
        stats: &BTreeMap<String, TargetStats>,
        now_ms: i64,
    ) -> String {
        // A poisoned lock only means another scrape panicked; the families are intact.
        let _scrape = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.pending.clear();
        self.oldest_pending.clear();
        self.dead.clear();
        let empty = TargetStats::default();
        let names = targets.iter().chain(stats.keys());
        for name in names {
            let s = stats.get(name).unwrap_or(&empty);
            let label = TargetLabel {
                target: name.clone(),
            };
            self.pending.get_or_create(&label).set(s.pending as i64);
            self.dead.get_or_create(&label).set(s.dead as i64);
            let age = s
                .oldest_pending_ms
                .map(|t| (now_ms - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.oldest_pending.get_or_create(&label).set(age);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One source's series, each found in its family (its labels built, hashed and looked
/// up under the family's lock) the first time it is counted and then updated directly:
/// 10,000 sources polled every minute did that lookup six times a poll. The series are
/// created when first counted, as before, so `/metrics` shows the same ones. The handles
/// share their values with the families; after [`Metrics::forget_source`] (the source
/// was removed) a loop still finishing its last poll counts into series no longer
/// shown, instead of bringing them back.
#[derive(Default)]
pub struct SourceMetrics {
    label: SourceLabel,
    duration: OnceLock<Histogram>,
    /// By [`PollOutcome::index`].
    polls: [OnceLock<Counter>; 4],
    items: OnceLock<Gauge>,
    /// Created, updated, deleted.
    changes: [OnceLock<Counter>; 3],
    held_back: OnceLock<Counter>,
}

const CHANGE_KINDS: [&str; 3] = ["created", "updated", "deleted"];

impl SourceMetrics {
    pub fn new(source: &str) -> SourceMetrics {
        SourceMetrics {
            label: SourceLabel {
                source: source.to_string(),
            },
            ..SourceMetrics::default()
        }
    }

    /// A poll ended, counted in `metrics`.
    pub fn poll_done(&self, metrics: &Metrics, seconds: f64, result: PollOutcome) {
        let source = &self.label;
        self.duration
            .get_or_init(|| metrics.poll_duration.get_or_create(source).clone())
            .observe(seconds);
        let outcome = result.label();
        self.polls[result.index()]
            .get_or_init(|| {
                let labels = PollLabels {
                    source: source.source.clone(),
                    outcome,
                };
                metrics.polls.get_or_create(&labels).clone()
            })
            .inc();
        if let PollOutcome::HeldBack { deletions } = result {
            self.held_back
                .get_or_init(|| metrics.held_back.get_or_create(source).clone())
                .inc_by(deletions as u64);
        }
        if let PollOutcome::Ok {
            items,
            created,
            updated,
            deleted,
        } = result
        {
            self.items
                .get_or_init(|| metrics.items.get_or_create(source).clone())
                .set(items as i64);
            for (i, n) in [created, updated, deleted].into_iter().enumerate() {
                self.changes[i]
                    .get_or_init(|| {
                        let labels = ChangeLabels {
                            source: source.source.clone(),
                            kind: CHANGE_KINDS[i],
                        };
                        metrics.changes.get_or_create(&labels).clone()
                    })
                    .inc_by(n as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_holds_every_family_with_its_labels() {
        let m = Metrics::new();
        m.poll_done(
            "github",
            0.2,
            PollOutcome::Ok {
                items: 10,
                created: 2,
                updated: 1,
                deleted: 0,
            },
        );
        m.poll_done("github", 0.1, PollOutcome::Error);
        m.attempt_done("app", 0.05, "delivered");
        m.attempt_done("app", 0.05, "failed");
        m.set_source_failing("github", true);
        m.set_source_failing("gitlab", true);
        m.set_source_failing("gitlab", false);
        m.set_target_failing("app", true);
        m.set_target_failing("idle", false);
        let stats = BTreeMap::from([(
            "app".to_string(),
            TargetStats {
                pending: 3,
                oldest_pending_ms: Some(1_000),
                dead: 1,
            },
        )]);
        let text = m.encode(&["app".to_string(), "idle".to_string()], &stats, 61_000);
        for line in [
            "pollhook_polls_total{source=\"github\",outcome=\"ok\"} 1",
            "pollhook_polls_total{source=\"github\",outcome=\"error\"} 1",
            "pollhook_poll_duration_seconds_count{source=\"github\"} 2",
            "pollhook_source_items{source=\"github\"} 10",
            "pollhook_changes_total{source=\"github\",kind=\"created\"} 2",
            "pollhook_changes_total{source=\"github\",kind=\"updated\"} 1",
            "pollhook_deliveries_total{target=\"app\",outcome=\"delivered\"} 1",
            "pollhook_delivery_duration_seconds_count{target=\"app\"} 2",
            "pollhook_pending_deliveries{target=\"app\"} 3",
            "pollhook_pending_deliveries{target=\"idle\"} 0",
            "pollhook_oldest_pending_age_seconds{target=\"app\"} 60.0",
            "pollhook_dead_deliveries{target=\"app\"} 1",
            "pollhook_build_info{version=\"",
            "# TYPE pollhook_source_failing gauge",
            "pollhook_source_failing{source=\"github\"} 1",
            "pollhook_source_failing{source=\"gitlab\"} 0",
            "# TYPE pollhook_target_failing gauge",
            "pollhook_target_failing{target=\"app\"} 1",
            "pollhook_target_failing{target=\"idle\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_forgotten_source_or_target_leaves_no_series_that_could_alert() {
        let m = Metrics::new();
        for source in ["gone", "kept"] {
            m.set_items(source, 3);
            m.set_source_failing(source, true);
            m.poll_done(source, 0.1, PollOutcome::Error);
        }
        for target in ["gone", "kept"] {
            m.set_target_failing(target, true);
        }
        m.forget_source("gone");
        m.forget_target("gone");
        let text = m.encode(&[], &BTreeMap::new(), 0);
        for line in [
            "pollhook_source_items{source=\"kept\"} 3",
            "pollhook_source_failing{source=\"kept\"} 1",
            "pollhook_target_failing{target=\"kept\"} 1",
            // Counters stay: a rate over them must not jump back to zero.
            "pollhook_polls_total{source=\"gone\",outcome=\"error\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        for gone in [
            "pollhook_source_items{source=\"gone\"}",
            "pollhook_source_failing{source=\"gone\"}",
            "pollhook_poll_duration_seconds_count{source=\"gone\"}",
            "pollhook_target_failing{target=\"gone\"}",
        ] {
            assert!(!text.contains(gone), "{gone:?} still in:\n{text}");
        }
    }

    /// A source loop's handles count into the families' series, as the lookups did,
    /// and a removed source's loop finishing its last poll brings no series back.
    #[test]
    fn a_source_loops_handles_count_in_the_shown_series() {
        let m = Metrics::new();
        let cached = SourceMetrics::new("s");
        let ok = PollOutcome::Ok {
            items: 4,
            created: 1,
            updated: 0,
            deleted: 0,
        };
        cached.poll_done(&m, 0.1, ok);
        m.poll_done("s", 0.1, ok);
        cached.poll_done(&m, 0.1, ok);
        cached.poll_done(&m, 0.1, PollOutcome::HeldBack { deletions: 7 });
        let text = m.encode(&[], &BTreeMap::new(), 0);
        for line in [
            "pollhook_polls_total{source=\"s\",outcome=\"ok\"} 3",
            "pollhook_polls_total{source=\"s\",outcome=\"held_back\"} 1",
            "pollhook_poll_duration_seconds_count{source=\"s\"} 4",
            "pollhook_changes_total{source=\"s\",kind=\"created\"} 3",
            "pollhook_deletions_held_back_total{source=\"s\"} 7",
            "pollhook_source_items{source=\"s\"} 4",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        // Series are made when first counted, not before.
        assert!(!text.contains("outcome=\"error\""), "{text}");
        m.forget_source("s");
        cached.poll_done(&m, 0.1, ok);
        let text = m.encode(&[], &BTreeMap::new(), 0);
        for gone in [
            "pollhook_source_items{source=\"s\"}",
            "pollhook_poll_duration_seconds_count{source=\"s\"}",
        ] {
            assert!(!text.contains(gone), "{gone:?} back in:\n{text}");
        }
    }

    #[test]
    fn concurrent_scrapes_each_see_every_outbox_series() {
        let m = std::sync::Arc::new(Metrics::new());
        let stats = BTreeMap::from([("app".to_string(), TargetStats::default())]);
        let scrapers: Vec<_> = (0..4)
            .map(|_| {
                let (m, stats) = (m.clone(), stats.clone());
                std::thread::spawn(move || {
                    (0..500).all(|_| {
                        m.encode(&["app".to_string()], &stats, 0)
                            .contains("pollhook_pending_deliveries{target=\"app\"} 0")
                    })
                })
            })
            .collect();
        for s in scrapers {
            assert!(s.join().unwrap(), "a scrape missed the pending gauge");
        }
    }
}
