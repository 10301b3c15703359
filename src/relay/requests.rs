//! Operator requests carried out by the active relay, with its own producer
//! and its window (so replayed events obey the same per-aggregate fence):
//! replay a parked aggregate, discard its poison event, re-publish dead
//! letters, rewind the checkpoint.
//!
//! Guarantees:
//! - A parked aggregate's held events are published in sequence order, then
//!   its later events; it is unparked (store row deleted) only after every
//!   held event was confirmed. If one fails for good again, it is parked
//!   again at that event and the request fails with the error.
//! - A discard writes its audit row before anything is published; the marker
//!   record (`ce_type = outboxd.EventDiscarded`, same `ce_id`, key and
//!   `ce_sequence`) takes the event's place, then the rest flows.
//! - A rewind moves the checkpoint back (fenced) after in-flight deliveries
//!   settled; the next term re-publishes from there (same `ce_id`s). The
//!   request is recorded done only once that write succeeded: failed if it
//!   did not, left to the next leader if the lease moved.

use chrono::Utc;
use serde_json::json;
use std::collections::BTreeSet;
use uuid::Uuid;

use crate::relay::encode::Discarded;
use crate::relay::pipeline::{Exit, Item};
use crate::relay::run::Run;
use crate::relay::window::{AggKey, Slot};
use crate::store::feed::{FeedRow, RawEvent};
use crate::store::parking::DiscardRecord;
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
            if !self.requests.take(&r, &self.backoff).await {
                continue;
            }
            self.relay.metrics.relay_requests.with_label_values(&[kind_label(&r.kind)]).inc();
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
        };
        let plans = plan(&ctx, r).await?;
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
                        self.unpark(&agg).await.map_err(|e| e.to_string())?;
                        self.window.unpark(&agg, Vec::new());
                        self.unparked();
                        continue;
                    }
                    tracing::info!(request = %r.id, aggregate = %agg, events = items.len(), "replaying a parked aggregate");
                    progress.events += items.len();
                    let slots = self.window.unpark(&agg, items).into_iter().collect();
                    self.replays.insert((r.id, agg), slots);
                    progress.parts += 1;
                }
                Plan::Letters { items } => {
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
            self.finish_request(r.id, RequestStatus::Done, json!({ "aggregates": 0, "events": 0 })).await;
        } else {
            self.request_parts.insert(r.id, progress);
        }
        Ok(())
    }

    /// A confirmed (or skipped) slot: advance the replays waiting for it.
    pub(super) async fn replay_progress(&mut self, slot: Slot) {
        if let Some(letter) = self.letter_slots.remove(&slot) {
            if let Err(e) = self.relay.store.dlq_remove(letter).await {
                tracing::warn!(error = %e, %letter, "replayed dead letter could not be removed; it may be replayed again");
            }
            self.relay.metrics.dlq_depth.dec();
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
                        self.producer.purge();
                        self.exit = Some(Exit::LeaseLost);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, aggregate = %agg, "held events were published but the park record could not be removed; a later replay re-sends them");
                        let error =
                            format!("the held events were published but the park record could not be removed: {e}");
                        self.fail_request(request, json!({ "aggregate_id": agg.to_string(), "error": error })).await;
                        continue;
                    }
                }
            }
            self.part_done(request, &agg).await;
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

    /// Request `id` failed with `result`: what is left of it is dropped.
    async fn fail_request(&mut self, id: Uuid, result: serde_json::Value) {
        self.request_parts.remove(&id);
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
            self.finish_request(
                request,
                RequestStatus::Done,
                json!({ "aggregates": p.aggregates.len(), "unparked": p.aggregates, "events": p.events }),
            )
            .await;
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
}

/// What carrying out a request takes, independent of how the relay publishes.
#[derive(Debug)]
pub enum Plan {
    /// Publish `items` in order (the held events of parked `agg`, a discard
    /// marker first where one replaces the poison event), then unpark `agg`.
    Unpark { agg: AggKey, items: Vec<Item> },
    /// Publish these dead letters, then delete each confirmed one.
    Letters { items: Vec<(Item, Uuid)> },
    /// Move the checkpoint back to `position` (re-publish after it).
    Rewind { position: i64 },
    /// The event at `position` was discarded before this term read it: the
    /// feed brings it later, and `discarded`'s marker takes its place there
    /// (`relay::discards`).
    MarkerAhead { position: i64, discarded: Discarded },
    /// Nothing to publish: finished with this result.
    Done(serde_json::Value),
}

/// What a plan needs to know about the running relay.
pub struct PlanCtx<'a> {
    pub store: &'a dyn crate::store::Store,
    /// `relay_discards_total` counts the audit rows a discard writes.
    pub metrics: &'a crate::metrics::Metrics,
    pub consumer: &'a str,
    /// Aggregates parked right now (in the relay's memory).
    pub parked: Vec<AggKey>,
    /// Held events up to this feed position are replayed; later ones come through the feed.
    pub last_pushed: i64,
    pub checkpoint: i64,
    /// The feed has positions (SQLite); CDC feeds rewind by time.
    pub positions: bool,
    /// Discarded events ahead of the feed: a replay publishes their markers too.
    pub discards: &'a crate::relay::discards::Discards,
}

/// Turns a request into plans (writing the discard audit row where asked).
pub async fn plan(ctx: &PlanCtx<'_>, r: &RelayRequest) -> Result<Vec<Plan>, String> {
    match &r.kind {
        RequestKind::ReplayAggregate { aggregate_id } => {
            let key = crate::store::feed::aggregate_key(aggregate_id);
            Ok(vec![unpark_plan(ctx, &key, None).await?])
        }
        RequestKind::ReplayAllParked => {
            let mut plans = Vec::new();
            for agg in &ctx.parked {
                plans.push(unpark_plan(ctx, agg, None).await?);
            }
            if plans.is_empty() {
                plans.push(Plan::Done(json!({ "replayed_aggregates": 0 })));
            }
            Ok(plans)
        }
        RequestKind::Discard { event_id, reason } => discard_plan(ctx, event_id, reason).await,
        RequestKind::ReplayDeadLetters { ids } => letters_plan(ctx, ids.as_deref()).await,
        RequestKind::RewindToPosition { position } => {
            if !ctx.positions {
                return Err("--to-position rewinds a position feed (SQLite); this relay reads the Scylla CDC log: use --to-time".into());
            }
            if *position < 0 || *position > ctx.checkpoint {
                return Err(format!(
                    "cannot rewind to position {position}: it must be between 0 and the checkpoint {}",
                    ctx.checkpoint
                ));
            }
            Ok(vec![Plan::Rewind { position: *position }])
        }
        RequestKind::RewindToTime { .. } => {
            Err("--to-time rewinds a CDC feed (CQL backend); this relay reads feed positions: use --to-position".into())
        }
    }
}

async fn unpark_plan(ctx: &PlanCtx<'_>, agg: &AggKey, first: Option<Item>) -> Result<Plan, String> {
    if !ctx.parked.contains(agg) {
        return Err(format!("aggregate {agg} is not parked"));
    }
    let parked = ctx.store.parked(ctx.consumer).await.map_err(|e| e.to_string())?;
    let Some(p) = parked.into_iter().find(|p| *p.parked.aggregate_id == **agg) else {
        return Err(format!("aggregate {agg} has no park record"));
    };
    let up_to = ctx.positions.then_some(ctx.last_pushed);
    let rows =
        ctx.store.aggregate_rows(agg, p.parked.position, p.parked.sequence, up_to).await.map_err(|e| e.to_string())?;
    let mut items: Vec<Item> = Vec::with_capacity(rows.len() + 1);
    let skip = usize::from(first.is_some());
    items.extend(first);
    for row in rows.into_iter().skip(skip) {
        // A held event an operator discarded goes out as its marker.
        items.push(ctx.discards.replace(row));
    }
    Ok(Plan::Unpark { agg: agg.clone(), items })
}

async fn discard_plan(ctx: &PlanCtx<'_>, event_id: &str, reason: &str) -> Result<Vec<Plan>, String> {
    let p = parked_behind(ctx.store, ctx.consumer, event_id).await?;
    let agg = crate::store::feed::aggregate_key(&p.aggregate_id);
    let first = ctx.store.aggregate_rows(&agg, p.position, p.sequence, p.position).await.map_err(|e| e.to_string())?;
    let (record, discarded) = discard_of(ctx.consumer, &p, first.first(), event_id, reason);
    record_discard(ctx.store, ctx.metrics, &record).await?;
    let position = p.position.unwrap_or(0);
    if ctx.positions && position > ctx.last_pushed {
        // Not read by this term yet (it restarted below it, or is the CLI's
        // with no feed): published from here, the event would come again
        // through the feed after the unpark. Its marker waits for it there.
        return Ok(vec![Plan::MarkerAhead { position, discarded }, unpark_plan(ctx, &agg, None).await?]);
    }
    let marker = Item::Marker { position, discarded };
    Ok(vec![unpark_plan(ctx, &agg, Some(marker)).await?])
}

/// The park record of the aggregate held behind `event_id` (its first held
/// event), or the reason a discard of it cannot be.
pub async fn parked_behind(
    store: &dyn crate::store::Store,
    consumer: &str,
    event_id: &str,
) -> Result<crate::store::parking::Parked, String> {
    let parked = store.parked(consumer).await.map_err(|e| e.to_string())?;
    parked.into_iter().map(|p| p.parked).find(|p| p.event_id.as_deref() == Some(event_id)).ok_or_else(|| {
        format!(
            "no parked aggregate is held behind event {event_id} (outboxd dlq list shows the first held event of each)"
        )
    })
}

/// The audit row and the marker of discarding `event_id`, the first held
/// event of `p` (`first`: its row, when it could be read).
pub fn discard_of(
    consumer: &str,
    p: &crate::store::parking::Parked,
    first: Option<&FeedRow>,
    event_id: &str,
    reason: &str,
) -> (DiscardRecord, Discarded) {
    let (payload, sequence, aggregate_type) = match first {
        Some(FeedRow::Event(e)) => {
            (Some(e.payload.get().to_string()), Some(e.sequence), Some(e.aggregate_type.clone()))
        }
        _ => (None, p.sequence, p.aggregate_type.clone()),
    };
    let now = Utc::now();
    let record = DiscardRecord {
        consumer: consumer.to_string(),
        event_id: event_id.to_string(),
        aggregate_id: p.aggregate_id.clone(),
        aggregate_type: aggregate_type.clone(),
        sequence,
        position: p.position,
        event_type: p.event_type.clone(),
        payload,
        error: p.error.clone(),
        reason: reason.to_string(),
        discarded_at: now,
    };
    let discarded = crate::relay::discards::marker_of(&record);
    (record, discarded)
}

/// Writes a discard's audit row (once per consumer and event id).
pub async fn record_discard(
    store: &dyn crate::store::Store,
    metrics: &crate::metrics::Metrics,
    record: &DiscardRecord,
) -> Result<(), String> {
    store.record_discard(record).await.map_err(|e| format!("cannot write the discard audit row: {e}"))?;
    metrics.relay_discards.inc();
    tracing::warn!(event_id = %record.event_id, aggregate = %record.aggregate_id, reason = %record.reason, "event discarded on an operator's decision; a marker record takes its place");
    Ok(())
}

/// The dead letters a replay request names (`ids`), or all of them; an
/// error when some of the named ones do not exist.
pub async fn chosen_letters(
    store: &dyn crate::store::Store,
    ids: Option<&[Uuid]>,
) -> Result<Vec<crate::store::DeadLetter>, String> {
    let letters = store.dlq_list(100_000).await.map_err(|e| e.to_string())?;
    let chosen: Vec<_> = match ids {
        Some(ids) => letters.into_iter().filter(|l| ids.contains(&l.id)).collect(),
        None => letters,
    };
    if ids.is_some_and(|ids| chosen.len() != ids.len()) {
        return Err("some of the given dead letters do not exist".into());
    }
    Ok(chosen)
}

/// The event a dead letter holds, or the `{id, error}` entry reported for a
/// letter whose stored payload is not a valid event (it is not published).
pub fn letter_event(l: &crate::store::DeadLetter) -> Result<RawEvent, serde_json::Value> {
    serde_json::from_str::<crate::envelope::EventEnvelope>(&l.payload)
        .map_err(|e| e.to_string())
        .and_then(|env| RawEvent::from_envelope(&env, l.position.unwrap_or(0)).map_err(|e| e.to_string()))
        .map_err(|e| json!({ "id": l.id, "error": format!("stored payload is not a valid event: {e}") }))
}

async fn letters_plan(ctx: &PlanCtx<'_>, ids: Option<&[Uuid]>) -> Result<Vec<Plan>, String> {
    let chosen = chosen_letters(ctx.store, ids).await?;
    let mut items = Vec::new();
    let mut bad = Vec::new();
    for l in &chosen {
        match letter_event(l) {
            Ok(raw) => items.push((Item::Event(raw), l.id)),
            Err(e) => bad.push(e),
        }
    }
    if items.is_empty() {
        return Ok(vec![Plan::Done(json!({ "replayed": 0, "failed": bad }))]);
    }
    Ok(vec![Plan::Letters { items }])
}
