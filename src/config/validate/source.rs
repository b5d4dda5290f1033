//! A source's part of validation: `[sources.<name>]` checked step by step (its request
//! and response shape, schedule, limits, extraction, events and targets, and the
//! deletion guard), each step reporting its problems with their keys and returning its
//! piece of the [`Source`].

use std::time::Duration;

use super::network::RawReach;
use super::Validator;
use crate::config::raw::{self, RawSource};
use crate::config::{
    parse_duration, parse_size, DeletionGuard, KeyPath, Origin, Source, DEFAULT_MAX_BODY,
    DEFAULT_MAX_ITEMS, DEFAULT_SOURCE_TIMEOUT,
};
use crate::diff::ChangeKind;
use crate::schedule::Schedule;

/// A source's `timeout`, `max_body` and `max_items`, checked and defaulted.
struct SourceLimits {
    timeout: Duration,
    max_body: u64,
    max_items: u64,
}

impl Validator<'_> {
    /// `[sources.<name>]`: its request and response shape, schedule, limits, extraction
    /// and where its changes go, checked in that order (the order problems are reported).
    pub(super) fn source(
        &mut self,
        key: &KeyPath,
        name: &str,
        s: RawSource,
        target_names: &[String],
    ) -> Option<Source> {
        let shape = self.shape(key, name, &s);
        let schedule = self.schedule(key, &s);
        let limits = self.source_limits(key, &s);
        let (ca_file, ca) = self.ca_file(&key.key("ca_file"), s.ca_file.as_deref());
        let reach = self.reach(key, RawReach::of_source(&s));
        let deletion_guard = self.deletion_guard(&key.key("deletion_guard"), s.deletion_guard);
        let (items, id) = self.extraction(key, s.items, s.id, &s.ignore);
        let events = self.events(&key.key("events"), s.events);
        let targets = self.source_targets(&key.key("targets"), s.targets, target_names);
        let mut origin = shape.origin?;
        if let Origin::Http(request) = &mut origin {
            // The proxy's credentials are the request's secrets too: they go with it.
            request.redactor = request.redactor.with(&reach.secrets);
        }
        Some(Source {
            name: name.to_string(),
            origin,
            pagination: shape.pagination,
            format: shape.format,
            transform: shape.transform,
            mode: shape.mode,
            event_type: shape.event_type,
            max_backoff: shape.max_backoff,
            schedule: schedule?,
            timeout: limits.timeout,
            max_body: limits.max_body,
            max_items: limits.max_items,
            items,
            id,
            ignore: s.ignore,
            events,
            targets,
            // Set once every target is known (`Validator::config`).
            routes: crate::route::Routes::default(),
            fail_after: match s.fail_after {
                None => 0,
                Some(n) if (1..=1_000_000).contains(&n) => n as u32,
                Some(_) => {
                    self.problem(
                        &key.key("fail_after"),
                        "must be between 1 and 1000000 (failed polls in a row)",
                    );
                    0
                }
            },
            baseline: s.baseline.unwrap_or(true),
            allow_empty: s.allow_empty.unwrap_or(false),
            deletion_guard,
            ca_file,
            ca,
            proxy: reach.proxy,
            client_identity: reach.client_identity,
        })
    }

    /// `interval` or `cron` (with `timezone`): exactly one must be set. Each is checked
    /// even when both are set, so one run reports every problem with them.
    fn schedule(&mut self, key: &KeyPath, s: &RawSource) -> Option<Schedule> {
        if s.interval.is_some() && s.cron.is_some() {
            self.problem(&key.key("cron"), "set either interval or cron, not both");
        }
        let interval = s.interval.as_deref().and_then(|i| match parse_duration(i) {
            Ok(d) if d >= Duration::from_millis(100) => Some(Schedule::Interval(d)),
            Ok(_) => {
                self.problem(&key.key("interval"), "must be at least 100ms");
                None
            }
            Err(e) => {
                self.problem(&key.key("interval"), e);
                None
            }
        });
        let cron = s
            .cron
            .as_deref()
            .and_then(|c| self.cron(key, c, s.timezone.as_deref()));
        let schedule = match (&s.interval, &s.cron) {
            (Some(_), Some(_)) => None,
            (None, None) => {
                self.problem(
                    key,
                    "missing schedule: set interval = \"1m\" or cron = \"*/5 * * * *\"",
                );
                None
            }
            (Some(_), None) => interval,
            (None, Some(_)) => cron,
        };
        if s.timezone.is_some() && s.cron.is_none() {
            self.problem(
                &key.key("timezone"),
                "applies to cron schedules only; an interval is the same in every zone",
            );
        }
        schedule
    }

    /// `cron` in `timezone` (UTC when absent). A bad zone is reported before the
    /// expression, which is still checked (in UTC) so both problems show at once.
    fn cron(&mut self, key: &KeyPath, cron: &str, timezone: Option<&str>) -> Option<Schedule> {
        let zone = match timezone {
            None => Some(chrono_tz::Tz::UTC),
            Some(name) => match crate::schedule::parse_timezone(name) {
                Ok(tz) => Some(tz),
                Err(e) => {
                    self.problem(&key.key("timezone"), e.to_string());
                    None
                }
            },
        };
        match Schedule::cron_in(cron, zone.unwrap_or(chrono_tz::Tz::UTC)) {
            Ok(s) => zone.map(|_| s),
            Err(e) => {
                self.problem(&key.key("cron"), e.to_string());
                None
            }
        }
    }

    /// `timeout`, `max_body` and `max_items`, each its default when absent or wrong.
    fn source_limits(&mut self, key: &KeyPath, s: &RawSource) -> SourceLimits {
        let timeout = self.duration(
            &key.key("timeout"),
            s.timeout.as_deref(),
            DEFAULT_SOURCE_TIMEOUT,
        );
        let max_body = match &s.max_body {
            None => DEFAULT_MAX_BODY,
            Some(raw::RawSize::Bytes(n)) if *n > 0 => *n,
            Some(raw::RawSize::Text(t)) => match parse_size(t) {
                Ok(n) if n > 0 => n,
                Ok(_) => {
                    self.problem(&key.key("max_body"), "must be more than 0 bytes");
                    DEFAULT_MAX_BODY
                }
                Err(e) => {
                    self.problem(&key.key("max_body"), e);
                    DEFAULT_MAX_BODY
                }
            },
            Some(_) => {
                self.problem(&key.key("max_body"), "must be more than 0 bytes");
                DEFAULT_MAX_BODY
            }
        };
        let max_items = match s.max_items {
            None => DEFAULT_MAX_ITEMS,
            Some(n) if n > 0 => n as u64,
            Some(_) => {
                self.problem(&key.key("max_items"), "must be at least 1");
                DEFAULT_MAX_ITEMS
            }
        };
        SourceLimits {
            timeout,
            max_body,
            max_items,
        }
    }

    /// `items`, `id` and `ignore`: the JSON Pointers that find the items in a response and
    /// each item's id. Returns `items` and `id` with their defaults (the whole document,
    /// `/id`) filled in.
    fn extraction(
        &mut self,
        key: &KeyPath,
        items: Option<String>,
        id: Option<String>,
        ignore: &[String],
    ) -> (String, String) {
        let items = items.unwrap_or_default();
        let id = id.unwrap_or_else(|| "/id".to_string());
        self.pointer(&key.key("items"), &items);
        self.pointer(&key.key("id"), &id);
        for (i, p) in ignore.iter().enumerate() {
            self.pointer(&key.key("ignore").index(i), p);
        }
        (items, id)
    }

    /// `events` at `key`: the kinds of change sent, all three when absent; repeats count once.
    fn events(&mut self, key: &KeyPath, list: Option<Vec<String>>) -> Vec<ChangeKind> {
        let Some(list) = list else {
            return vec![
                ChangeKind::Created,
                ChangeKind::Updated,
                ChangeKind::Deleted,
            ];
        };
        if list.is_empty() {
            self.problem(key, "lists no events; remove the key for all three, or name some of created, updated, deleted");
        }
        let mut kinds = Vec::new();
        for (i, e) in list.iter().enumerate() {
            match e.parse::<ChangeKind>() {
                Ok(k) if !kinds.contains(&k) => kinds.push(k),
                Ok(_) => {}
                Err(_) => self.problem(
                    &key.index(i),
                    format!("{e:?} is not an event kind; use created, updated or deleted"),
                ),
            }
        }
        kinds
    }

    /// A source's `targets` at `key`: names from `target_names`, every target when absent;
    /// repeats count once.
    fn source_targets(
        &mut self,
        key: &KeyPath,
        list: Option<Vec<String>>,
        target_names: &[String],
    ) -> Vec<String> {
        let Some(list) = list else {
            return target_names.to_vec();
        };
        if list.is_empty() {
            self.problem(key, "lists no targets, so nothing would be sent; remove the key to send to every target");
        }
        for (i, t) in list.iter().enumerate() {
            if !target_names.contains(t) {
                let known = if target_names.is_empty() {
                    "none are configured".to_string()
                } else {
                    format!("known targets: {}", target_names.join(", "))
                };
                self.problem(&key.index(i), format!("unknown target {t:?} ({known})"));
            }
        }
        let mut uniq: Vec<String> = Vec::new();
        for t in list {
            if !uniq.contains(&t) {
                uniq.push(t);
            }
        }
        uniq
    }

    fn deletion_guard(
        &mut self,
        key: &KeyPath,
        raw: Option<raw::RawDeletionGuard>,
    ) -> DeletionGuard {
        let mut guard = DeletionGuard::default();
        let Some(raw) = raw else {
            return guard;
        };
        if let Some(text) = raw.share {
            let share = match text.trim() {
                "off" => Ok(None),
                t => t
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .map(|p| Some(p / 100.0))
                    .ok_or(()),
            };
            match share {
                Ok(s) => guard.share = s,
                Err(()) => self.problem(
                    &key.key("share"),
                    format!("{text:?} is not a share of the held items such as \"50%\" (0% to 100%), or \"off\" to commit every deletion at once"),
                ),
            }
        }
        if let Some(n) = raw.min_items {
            match usize::try_from(n) {
                Ok(n) => guard.min_items = n,
                Err(_) => self.problem(&key.key("min_items"), "must be 0 or more items"),
            }
        }
        if let Some(n) = raw.confirm {
            match u32::try_from(n) {
                Ok(n) if n <= 100 => guard.confirm = n,
                _ => self.problem(
                    &key.key("confirm"),
                    "must be 0 to 100 further polls (0 commits every deletion at once, as share = \"off\" does)",
                ),
            }
        }
        guard
    }
}
