//! Dry runs through the admin API: at most one per source at a time, and the answer
//! streamed. A dry run holds the poll's plan (the diff: each changed item once) and one
//! chunk of built events at a time; a second one of the same source would only double
//! that, so it is refused with 409 until the first one's answer is sent. The answer is
//! the [`super::PollResponse`] JSON, written event by event as the chunks are built,
//! never assembled into one buffer.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;

use super::ApiError;
use crate::event::Event;
use crate::poll::{PollError, PollReport};
use crate::running::RunningSource;

/// The sources with a dry run in progress.
#[derive(Default)]
pub(super) struct InProgress(Arc<Mutex<HashSet<String>>>);

impl InProgress {
    /// Claims `source`'s dry run; `None` while another one runs.
    pub(super) fn start(&self, source: &str) -> Option<Slot> {
        let mut running = lock(&self.0);
        if !running.insert(source.to_string()) {
            return None;
        }
        Some(Slot {
            running: self.0.clone(),
            source: source.to_string(),
        })
    }
}

fn lock(m: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // A poisoned lock only means a panic elsewhere while holding it; the set is
    // consistent after every single insert or remove.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One source's dry run in progress; the next one may start when this is dropped
/// (answer sent, or the client gone).
pub(super) struct Slot {
    running: Arc<Mutex<HashSet<String>>>,
    source: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.source);
    }
}

/// Fetches and diffs `running`'s source, committing nothing, and answers with a body
/// that streams the events. Like [`crate::poll::Poller::dry_run`]: a first poll shows
/// its items as created even with `baseline = true`.
pub(super) async fn respond(running: &RunningSource, slot: Slot) -> Result<Response, ApiError> {
    let plan = running
        .poller
        .dry_plan(&running.source)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, crate::error::chain(&e).to_string()))?;
    let report = plan.report.clone();
    let body = Events::new(
        &running.source.name,
        &report,
        Box::new(plan.into_events()),
        slot,
    )
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::error::chain(&e).to_string(),
        )
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::new(body),
    )
        .into_response())
}

/// The head of the answer: every field but `events`.
#[derive(serde::Serialize)]
struct Head<'a> {
    source: &'a str,
    dry_run: bool,
    report: &'a PollReport,
}

/// The events of a plan, built a chunk at a time as the answer is sent.
type EventStream = Box<dyn Iterator<Item = Result<Event, PollError>> + Send>;

/// `{"source": …, "dry_run": true, "report": {…}, "events": [` then each event's
/// envelope as stored, comma-separated, then `]}`: one frame at a time. If building an
/// event fails midway (a stored item that no longer parses), the answer ends with
/// `], "error": "…"}` instead.
struct Events {
    head: Option<Bytes>,
    events: EventStream,
    /// An event waiting for the comma before it to be sent.
    next: Option<Bytes>,
    sent_one: bool,
    ended: bool,
    _slot: Slot,
}

impl Events {
    fn new(
        source: &str,
        report: &PollReport,
        events: EventStream,
        slot: Slot,
    ) -> serde_json::Result<Events> {
        let mut head = serde_json::to_vec(&Head {
            source,
            dry_run: true,
            report,
        })?;
        // A serialized struct ends with its closing brace; the events go before it.
        head.pop();
        head.extend_from_slice(br#","events":["#);
        Ok(Events {
            head: Some(head.into()),
            events,
            next: None,
            sent_one: false,
            ended: false,
            _slot: slot,
        })
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        if let Some(event) = self.next.take() {
            return Some(event);
        }
        match self.events.next() {
            // The envelope bytes serde_json wrote when the event was made: valid JSON.
            Some(Ok(event)) => {
                let body = Bytes::from(event.body);
                if std::mem::replace(&mut self.sent_one, true) {
                    self.next = Some(body);
                    Some(Bytes::from_static(b","))
                } else {
                    Some(body)
                }
            }
            Some(Err(e)) => {
                self.ended = true;
                let error =
                    serde_json::to_string(&crate::error::chain(&e).to_string()).unwrap_or_default();
                Some(Bytes::from(format!(r#"],"error":{error}}}"#)))
            }
            None if !self.ended => {
                self.ended = true;
                Some(Bytes::from_static(b"]}"))
            }
            None => None,
        }
    }
}

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().next_chunk().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> (crate::event::Event, Arc<[String]>) {
        let e = crate::event::Event {
            id: format!("evt_{n}"),
            event_type: "s.created".into(),
            source: "s".into(),
            item_id: n.to_string(),
            body: format!(r#"{{"id":"evt_{n}"}}"#).into_bytes(),
        };
        (e, Arc::from(vec!["t".to_string()]))
    }

    fn chunks(events: Vec<(crate::event::Event, Arc<[String]>)>) -> Vec<Bytes> {
        let runs = InProgress::default();
        let events = Box::new(events.into_iter().map(|(e, _)| Ok(e)));
        let report = PollReport::default();
        let mut body = Events::new("s", &report, events, runs.start("s").unwrap()).unwrap();
        std::iter::from_fn(|| body.next_chunk()).collect()
    }

    #[test]
    fn the_answer_is_a_poll_response_sent_event_by_event() {
        let chunks = chunks((0..3).map(event).collect());
        // head, evt_0, ",", evt_1, ",", evt_2, tail: no chunk holds two events.
        assert_eq!(chunks.len(), 7, "{chunks:?}");
        assert!(chunks.iter().all(|c| c.len() < 256), "{chunks:?}");
        let whole: Vec<u8> = chunks.concat();
        let r: super::super::PollResponse = serde_json::from_slice(&whole).unwrap();
        assert!(r.dry_run);
        assert_eq!(r.source, "s");
        let ids: Vec<&str> = r.events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["evt_0", "evt_1", "evt_2"]);
        let empty: Vec<u8> = super::tests::chunks(Vec::new()).concat();
        let r: super::super::PollResponse = serde_json::from_slice(&empty).unwrap();
        assert!(r.events.is_empty());
    }

    #[test]
    fn one_dry_run_per_source_until_its_answer_is_dropped() {
        let runs = InProgress::default();
        let first = runs.start("s").unwrap();
        assert!(runs.start("s").is_none());
        let other = runs.start("s2");
        assert!(other.is_some(), "another source's dry run is not held back");
        drop(first);
        assert!(runs.start("s").is_some());
    }
}
