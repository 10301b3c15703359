//! Operator requests carried out by the active relay, with its own producer
//! and its window (so replayed events obey the same per-aggregate fence):
//! replay a parked aggregate, discard its poison event, re-publish dead
//! letters, rewind the checkpoint.
//!
//! Guarantees:
//! - A parked aggregate's held events are published in sequence order, then
//!   its later events; it is unparked (store row deleted) only after every
//!   held event was confirmed. If one fails for good again, it is parked
//!   again at that event and the request fails with the error. A park
//!   record that cannot be removed then is tried again at every request
//!   poll; the request is done once it goes (a term ending first leaves it
//!   open with the record: the next holder replays again).
//! - A discard writes its audit row before anything is published; the marker
//!   record (`ce_type = outboxd.EventDiscarded`, same `ce_id`, key and
//!   `ce_sequence`) takes the event's place, then the rest flows.
//! - A rewind moves the checkpoint back (fenced) after in-flight deliveries
//!   settled; the next term re-publishes from there (same `ce_id`s). The
//!   request is recorded done only once that write succeeded: failed if it
//!   did not, left to the next leader if the lease moved.

use serde_json::json;
use std::collections::BTreeSet;
use uuid::Uuid;

use crate::relay::pipeline::Exit;
use crate::relay::plan::{plan, Plan, PlanCtx};
use crate::relay::run::Run;
use crate::relay::window::{AggKey, Slot};
use crate::store::requests::{RelayRequest, RequestKind, RequestStatus};
use crate::store::StoreError;

impl Run {
    fn epoch(&self) -> i64 {
        self.relay.fence.as_ref().map(|f| f.epoch).unwrap_or(0)
    }

    /// Claims and starts the requests waiting for this relay.
    pub(super) async fn poll_requests(&mut self) {
        let consumer = self.relay.cfg.consumer_name.clone();
        let open = match self.relay.store.requests_open(&consumer, self.epoch()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read relay requests");
                return;
            }
        };
        for r in open {
            if !self.requests.take(&r).await {
                continue;
            }
            if crate::relay::operator::starts_anew(&r) {
                self.relay.metrics.relay_requests.with_label_values(&[kind_label(&r.kind)]).inc();
            }
            if let Err(e) = self.start(&r).await {
                self.finish_request(r.id, RequestStatus::Failed, json!({ "error": e })).await;
            }
            if self.exit.is_some() {
                return;
            }
        }
    }

    async fn start(&mut self, r: &RelayRequest) -> Result<(), String> {
        let ctx = PlanCtx {
            store: &*self.relay.store,
            metrics: &self.relay.metrics,
            consumer: &self.relay.cfg.consumer_name,
            parked: self.window.parked().cloned().collect(),
            last_pushed: self.window.last_pushed(),
            checkpoint: self.checkpoint,
            positions: true,
            discards: &self.discards,
            // Taken over (running already): its former executor may have
            // replayed and removed some of the letters it names.
            resuming: r.status == RequestStatus::Running,
        };
        if ctx.resuming {
            match crate::relay::plan::carried_out_before(&ctx, r).await {
                Ok(false) => {}
                Ok(true) => {
                    // Its former executor did the store's part (the park
                    // record is gone) and stopped before recording the outcome.
                    tracing::info!(request = %r.id, "a request its former executor carried out; recorded as done");
                    let result = crate::relay::plan::carried_out_result();
                    self.finish_request(r.id, RequestStatus::Done, result).await;
                    return Ok(());
                }
                Err(e) => {
                    // Whether it was carried out is unknown: taken again at the next poll.
                    tracing::warn!(request = %r.id, error = %e, "cannot tell whether a taken-over request was carried out; trying again at the next poll");
                    self.requests.release(r.id);
                    return Ok(());
                }
            }
        }
        let plans = plan(&ctx, r).await.map_err(|e| e.to_string())?;
        let mut progress = Progress::default();
        for p in plans {
            match p {
                Plan::Done(result) => {
                    self.finish_request(r.id, RequestStatus::Done, result).await;
                    return Ok(());
                }
                Plan::MarkerAhead { position, discarded } => self.discards.insert(position, discarded),
                Plan::Rewind { position } => {
                    // Recorded done (and counted) by `finish` once the
                    // checkpoint is written back, failed if it cannot be.
                    self.rewind = Some((r.id, self.checkpoint));
                    tracing::warn!(from = self.checkpoint, to = position, request = %r.id, "rewinding the relay checkpoint on an operator's request");
                    self.exit = Some(Exit::Rewound(position));
                    return Ok(());
                }
                Plan::Unpark { agg, items } => {
                    if items.is_empty() {
                        match self.unpark(&agg).await {
                            Ok(_) => {}
                            // Not this term's any more: the request stays
                            // running, the next holder takes it over (as a
                            // replay's own unpark does).
                            Err(StoreError::Fenced { .. }) => {
                                self.step_down();
                                return Ok(());
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                        self.window.unpark(&agg, Vec::new());
                        self.unparked();
                        progress.aggregates.push(agg.to_string());
                        continue;
                    }
                    tracing::info!(request = %r.id, aggregate = %agg, events = items.len(), "replaying a parked aggregate");
                    progress.events += items.len();
                    let slots = self.window.unpark(&agg, items).into_iter().collect();
                    self.replays.insert((r.id, agg), slots);
                    progress.parts += 1;
                }
                Plan::Letters { items, bad } => {
                    progress.failed.extend(bad);
                    let mut slots = BTreeSet::new();
                    for (item, letter) in items {
                        let agg = crate::relay::window::Fenced::aggregate(&item).clone();
                        for s in self.window.inject(&agg, vec![item]) {
                            slots.insert(s);
                            self.letter_slots.insert(s, letter);
                        }
                    }
                    if !slots.is_empty() {
                        progress.events += slots.len();
                        self.replays.insert((r.id, AggKey::from("")), slots);
                        progress.parts += 1;
                    }
                }
            }
        }
        if progress.parts == 0 {
            self.finish_request(r.id, RequestStatus::Done, progress.result()).await;
        } else {
            self.request_parts.insert(r.id, progress);
        }
        Ok(())
    }

    /// A confirmed (or skipped) slot: advance the replays waiting for it.
    pub(super) async fn replay_progress(&mut self, slot: Slot) {
        if let Some(letter) = self.letter_slots.remove(&slot) {
            let removed = crate::relay::operator::remove_replayed(&self.relay.store, &self.relay.metrics, letter).await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, %letter, "replayed dead letter could not be removed; it may be replayed again");
            }
        }
        let done: Vec<(Uuid, AggKey)> = self
            .replays
            .iter_mut()
            .filter_map(|(k, slots)| (slots.remove(&slot) && slots.is_empty()).then(|| k.clone()))
            .collect();
        for k in done {
            self.replays.remove(&k);
            let (request, agg) = k;
            if !agg.is_empty() {
                match self.unpark(&agg).await {
                    Ok(_) => self.unparked(),
                    // The request stays running: the next holder takes it over.
                    Err(StoreError::Fenced { .. }) => {
                        self.request_parts.remove(&request);
                        self.step_down();
                        continue;
                    }
                    Err(e) => {
                        // The window already lets its events flow while the
                        // store still says parked: the removal is retried every
                        // request turn and the request finishes once it lands
                        // (a term that ends first leaves it running: the next
                        // holder replays the held events again, then removes it).
                        tracing::error!(error = %e, aggregate = %agg, %request, "held events were published but the park record could not be removed; retrying at every request poll");
                        self.unpark_later.push((request, agg));
                        continue;
                    }
                }
            }
            self.part_done(request, &agg).await;
        }
    }

    /// `agg` was parked again (a later event failed for good) while its
    /// replayed park record's removal was pending: that record now holds
    /// the new park and must stay. The replay fails with the new error.
    pub(super) async fn parked_again(&mut self, agg: &AggKey, error: &str) {
        let (again, pending): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unpark_later).into_iter().partition(|(_, a)| a == agg);
        self.unpark_later = pending;
        for (request, agg) in again {
            let result =
                json!({ "aggregate_id": agg.to_string(), "error": format!("parked again at a later event: {error}") });
            self.fail_request(request, result).await;
        }
    }

    /// Park records whose removal failed after their replay: one attempt
    /// each per request turn; the replay's part is done once it lands.
    pub(super) async fn retry_unparks(&mut self) {
        for (request, agg) in std::mem::take(&mut self.unpark_later) {
            if self.window.is_parked(&agg) {
                // Parked again (`parked_again` fails its request first): the
                // record is the new park's and stays.
                let error = "parked again at a later event before its park record was removed";
                self.fail_request(request, json!({ "aggregate_id": agg.to_string(), "error": error })).await;
                continue;
            }
            let (store, consumer) = (&self.relay.store, &self.relay.cfg.consumer_name);
            match crate::relay::operator::unpark_once(store, consumer, &agg, self.epoch()).await {
                Ok(_) => {
                    tracing::info!(aggregate = %agg, %request, "park record removed after its replay");
                    self.unparked();
                    self.part_done(request, &agg).await;
                }
                Err(StoreError::Fenced { .. }) => {
                    self.request_parts.remove(&request);
                    self.step_down();
                }
                Err(e) => {
                    tracing::warn!(error = %e, aggregate = %agg, %request, "the park record still cannot be removed; retrying");
                    self.unpark_later.push((request, agg));
                }
            }
        }
    }

    /// A replayed aggregate was parked again: its replay fails.
    pub(super) async fn replay_failed(&mut self, agg: &AggKey, error: &str) {
        let result = json!({ "aggregate_id": agg.to_string(), "error": error });
        self.fail_replays(|(_, a), _| a == agg, result).await;
    }

    /// Replays waiting for slots the window no longer holds (parked with
    /// their aggregate: a dead letter of an aggregate parked meanwhile)
    /// can never finish: they fail with `error`, their dead letters stay.
    pub(super) async fn replays_gone(&mut self, error: &str) {
        let window = &self.window;
        self.letter_slots.retain(|s, _| window.get(*s).is_some());
        let gone: Vec<(Uuid, AggKey)> = self
            .replays
            .iter()
            .filter(|(_, slots)| slots.iter().any(|s| window.get(*s).is_none()))
            .map(|(k, _)| k.clone())
            .collect();
        for (request, _) in &gone {
            tracing::warn!(%request, error, "a replayed event failed for good again and was parked; the request failed");
        }
        self.fail_replays(|k, _| gone.contains(k), json!({ "error": error })).await;
    }

    /// A replayed dead letter's slot failed for good again: the replays
    /// waiting for it fail, naming the letter (which stays).
    pub(super) async fn replay_slot_failed(&mut self, slot: Slot, letter: Uuid, error: &str) {
        self.fail_replays(|_, slots| slots.contains(&slot), json!({ "id": letter, "error": error })).await;
    }

    /// Fails every replay in progress that `which` picks, with `result`.
    async fn fail_replays(
        &mut self,
        which: impl Fn(&(Uuid, AggKey), &BTreeSet<Slot>) -> bool,
        result: serde_json::Value,
    ) {
        let picked: Vec<(Uuid, AggKey)> =
            self.replays.iter().filter(|(k, slots)| which(k, slots)).map(|(k, _)| k.clone()).collect();
        for k in picked {
            self.replays.remove(&k);
            self.fail_request(k.0, result.clone()).await;
        }
    }

    /// Request `id` failed with `result` (what is left of it is dropped),
    /// plus the letters it could not publish for not being events
    /// (`failed`), which stay named whatever ends the request.
    async fn fail_request(&mut self, id: Uuid, mut result: serde_json::Value) {
        // Finished already (another of its aggregates failed first): once.
        let Some(p) = self.request_parts.remove(&id) else { return };
        if !p.failed.is_empty() {
            result["failed"] = json!(p.failed);
        }
        self.finish_request(id, RequestStatus::Failed, result).await;
    }

    fn unparked(&mut self) {
        crate::relay::parking::count_parked(&self.relay.metrics, &self.relay.status, false);
    }

    async fn part_done(&mut self, request: Uuid, agg: &AggKey) {
        let Some(p) = self.request_parts.get_mut(&request) else { return };
        p.parts -= 1;
        if !agg.is_empty() {
            p.aggregates.push(agg.to_string());
        }
        if p.parts == 0 {
            let p = self.request_parts.remove(&request).unwrap_or_default();
            self.finish_request(request, RequestStatus::Done, p.result()).await;
        }
    }

    /// Removes `agg`'s park record at this relay's epoch (retried; see `operator::unpark`).
    async fn unpark(&self, agg: &str) -> Result<bool, StoreError> {
        let (store, consumer) = (&self.relay.store, &self.relay.cfg.consumer_name);
        crate::relay::operator::unpark(store, consumer, agg, self.epoch()).await
    }

    pub(super) async fn finish_request(&self, id: Uuid, status: RequestStatus, result: serde_json::Value) {
        self.requests.finish(id, status, result, &self.backoff).await
    }
}

/// Every value [`kind_label`] gives (the `kind` label of `relay_requests_total`).
pub const KIND_LABELS: [&str; 5] =
    ["replay_aggregate", "replay_all_parked", "discard", "replay_dead_letters", "rewind"];

/// The `kind` label of `relay_requests_total`.
pub(crate) fn kind_label(k: &RequestKind) -> &'static str {
    match k {
        RequestKind::ReplayAggregate { .. } => "replay_aggregate",
        RequestKind::ReplayAllParked => "replay_all_parked",
        RequestKind::Discard { .. } => "discard",
        RequestKind::ReplayDeadLetters { .. } => "replay_dead_letters",
        RequestKind::RewindToPosition { .. } => "rewind",
        RequestKind::RewindToTime { .. } => "rewind",
    }
}

/// A request being carried out by the at-least-once relay.
#[derive(Debug, Default)]
pub struct Progress {
    /// Aggregates (or dead-letter batches) not finished yet.
    pub parts: usize,
    /// Events published for it.
    pub events: usize,
    /// Aggregates unparked so far.
    pub aggregates: Vec<String>,
    /// Dead letters chosen but not published (`{id, error}`: not an event).
    pub failed: Vec<serde_json::Value>,
}

impl Progress {
    /// The result of a request carried out to its end.
    pub fn result(&self) -> serde_json::Value {
        let mut r = json!({ "aggregates": self.aggregates.len(), "unparked": self.aggregates, "events": self.events });
        if !self.failed.is_empty() {
            r["failed"] = json!(self.failed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The series `prime_metrics` creates at 0 are every label a request can count under.
    #[test]
    fn kind_labels_are_every_kind() {
        // A new kind fails to compile here until it has a sample below.
        let _every_kind_has_a_sample = |k: RequestKind| match k {
            RequestKind::ReplayAggregate { .. }
            | RequestKind::ReplayAllParked
            | RequestKind::Discard { .. }
            | RequestKind::ReplayDeadLetters { .. }
            | RequestKind::RewindToPosition { .. }
            | RequestKind::RewindToTime { .. } => (),
        };
        let kinds = [
            RequestKind::ReplayAggregate { aggregate_id: String::new() },
            RequestKind::ReplayAllParked,
            RequestKind::Discard { event_id: String::new(), reason: String::new() },
            RequestKind::ReplayDeadLetters { ids: None },
            RequestKind::RewindToPosition { position: 0 },
            RequestKind::RewindToTime { time: chrono::Utc::now() },
        ];
        let labels: std::collections::BTreeSet<&str> = kinds.iter().map(kind_label).collect();
        assert_eq!(labels, KIND_LABELS.into_iter().collect());
    }
}
