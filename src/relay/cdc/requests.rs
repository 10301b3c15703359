//! Operator requests on the Scylla CDC relay: the instance holding the relay
//! lease claims them (fenced by its epoch, like the position relay) and
//! carries out what this path supports.
//!
//! Guarantees:
//! - `dlq replay --aggregate` / `--all-parked`: the parked aggregate's events
//!   from its park record on are loaded from `event_store` and published in
//!   sequence order through the one delivery call, while the aggregate's turn
//!   is held ([`ReconcilingSink::exclusive`]): the reader cannot publish a
//!   later event of it in between, and skips the replayed ones when their
//!   rows come again. The park record is removed (fenced) only after every
//!   event was confirmed; an event that still fails for good parks the
//!   aggregate again at that event and the request fails naming it. A held
//!   row that `event_store` cannot decode either fails the request before
//!   anything is published, naming the row: it must be repaired first, or
//!   the event discarded when it is the first held one. A first held event
//!   whose discard was interrupted after its audit row goes out as its
//!   marker, never as it is.
//! - `dlq replay --id` / `--all` (dead letters): each letter's event is
//!   published again through the same delivery call, the letters of one
//!   aggregate in sequence order, each while the aggregate's turn is held;
//!   a letter is removed only once the broker confirmed its event. A letter
//!   whose event fails for good again stays (its error and failure count
//!   updated), whatever `relay.on_permanent_failure` says: its aggregate is
//!   not parked; the request fails naming it (what was confirmed before
//!   stays confirmed and removed, the letters after it are not tried); a letter
//!   whose stored payload is not an event is reported and left alone.
//! - `dlq discard --id EVENT --reason ...`: the first held event of a
//!   parked aggregate (whose row may be unreadable) is replaced by a marker
//!   (`outboxd.EventDiscarded`, same key, `ce_id` and `ce_sequence`), as on
//!   the position relay: the audit row first (once per consumer and event
//!   id), then the marker and the events held behind it, in order under the
//!   aggregate's turn, then the park record goes. Interrupted before that,
//!   it is carried out again from the start (the marker may then appear
//!   twice, with the same `ce_id`). A later held row that cannot be decoded
//!   fails it before anything is written.
//! - `relay rewind --to-time T`: every stream published past T goes back to
//!   T and the changes after it are published again (`cdc::rewind`: the
//!   checks, and why it is carried out only while no reader runs). The
//!   relay's server hands it to the feed's runner; the CLI's writes it on
//!   the saved progress itself. `--to-position` fails at once with the
//!   reason (it is the position relay's).
//! - The loop polls every `every` until shutdown; a store error is logged and
//!   retried at the next poll.

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use super::generations::TIMESTAMPS_TABLE;
use super::reconciler::ReconcilingSink;
use super::rewind::{precheck, rewind_progress, RewindTx};
use super::saver::LeaseCheckpointSaver;
use super::CdcError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::deliver::Deliverer;
use crate::relay::operator::{TermRequests, Unsaved};
use crate::relay::plan::{chosen_letters, discard_of, letter_event, parked_behind, record_discard};
use crate::relay::requests::kind_label;
use crate::relay::sink::DeadLetterSink;
use crate::relay::{RelayStatus, StatusTx};
use crate::shutdown::Shutdown;
use crate::store::cql::reconcile::ReconcileTable;
use crate::store::cql::CqlStore;
use crate::store::feed::{FeedRow, RawEvent};
use crate::store::requests::{RelayRequest, RequestKind, RequestStatus};
use crate::store::DynStore;

/// What the request server needs.
pub struct CdcRequests {
    sink: Arc<ReconcilingSink<Deliverer>>,
    deliverer: Arc<Deliverer>,
    store: DynStore,
    consumer: String,
    /// The relay lease's epoch (0 without a lease, as the position relay).
    epoch: i64,
    /// How a rewind is carried out (replaceable: tests hand it a runner).
    pub rewind: Rewinder,
    /// The requests this server claimed, and the outcomes of this epoch's
    /// former servers not recorded yet (as the position relay's term).
    requests: TermRequests,
}

/// What a [`CdcRequests`] server is made of.
pub struct CdcRequestParts {
    pub sink: Arc<ReconcilingSink<Deliverer>>,
    pub deliverer: Arc<Deliverer>,
    pub store: DynStore,
    pub consumer: String,
    /// The relay lease's epoch (0 without a lease, as the position relay).
    pub epoch: i64,
    pub rewind: Rewinder,
    /// Outcomes the store did not take, kept across this epoch's terms.
    pub unsaved: Unsaved,
}

impl CdcRequests {
    pub fn new(p: CdcRequestParts) -> CdcRequests {
        let requests = TermRequests::new(p.store.clone(), &p.consumer, p.epoch, p.unsaved);
        CdcRequests {
            sink: p.sink,
            deliverer: p.deliverer,
            store: p.store,
            consumer: p.consumer,
            epoch: p.epoch,
            rewind: p.rewind,
            requests,
        }
    }
}

/// How a rewind is carried out (`cdc::rewind`): on `saver`, the relay's
/// progress, directly when no reader runs (the CLI under the lease it
/// took), or by the running feed's `runner` between two reader runs (checked
/// against `saver` before the reader is stopped).
pub struct Rewinder {
    pub saver: Arc<LeaseCheckpointSaver>,
    pub log_ttl: Duration,
    pub runner: Option<RewindTx>,
}

/// Carries out the open requests once, outside a running relay (the CLI
/// when no relay holds the lease): its own delivery call and reconciling
/// sink, under the lease epoch the caller took; `shutdown` ends it early
/// (the caller fires it when the lease is lost or its patience runs out:
/// with the broker down a delivery retries until then).
pub async fn serve_once(cql: Arc<CqlStore>, cfg: &Config, epoch: i64, mut shutdown: Shutdown) -> Result<(), CdcError> {
    let store = cql.clone() as DynStore;
    let letters: Arc<dyn DeadLetterSink> = Arc::new(store.clone());
    let status = StatusTx::new(tokio::sync::watch::channel(RelayStatus::default()).0);
    let deliverer = Arc::new(
        Deliverer::new(cfg, store.clone(), letters, Metrics::new(), status)
            .await
            .map_err(|e| CdcError::Producer(e.message))?
            .with_epoch(Some(epoch)),
    );
    let table = ReconcileTable::open(cql.session(), cql.keyspace()).await?;
    let cdc = &cfg.store.cql.cdc;
    let consumer = cfg.relay.consumer_name.clone();
    let row_ttl = crate::store::cql::cdc_options::progress_row_ttl(cdc.log_ttl());
    let keyspace = cql.keyspace().to_ascii_lowercase();
    let saver = LeaseCheckpointSaver::open(cql.session(), &keyspace, &consumer, Some(epoch), row_ttl, None).await?;
    let sink = ReconcilingSink::new(
        deliverer.clone(),
        store.clone(),
        table,
        cdc.reconcile_bound(),
        cdc.reconcile_remember_aggregates,
        None,
        Arc::new(|| None),
    );
    let rewind = Rewinder { saver, log_ttl: cdc.log_ttl(), runner: None };
    let unsaved = Unsaved::default();
    let mut server = CdcRequests::new(CdcRequestParts { sink, deliverer, store, consumer, epoch, rewind, unsaved });
    server.poll(&mut shutdown).await;
    Ok(())
}

/// Serves requests every `every` until shutdown.
pub async fn serve_requests(mut r: CdcRequests, every: Duration, mut shutdown: Shutdown) {
    while shutdown.sleep(every).await {
        r.poll(&mut shutdown).await;
    }
}

impl CdcRequests {
    /// Claims and carries out the open requests once. One left running at
    /// this epoch by a former server (its claim landed but was not
    /// confirmed, or the server stopped) is claimed again and carried out;
    /// one whose outcome that server could not record gets it recorded.
    pub async fn poll(&mut self, shutdown: &mut Shutdown) {
        let open = match self.store.requests_open(&self.consumer, self.epoch).await {
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
                self.deliverer.metrics().relay_requests.with_label_values(&[kind_label(&r.kind)]).inc();
            }
            if r.status == RequestStatus::Running {
                match self.carried_out_before(&r.kind).await {
                    Ok(false) => {}
                    Ok(true) => {
                        // Its former executor did the store's part (the park
                        // record is gone) and stopped before recording the outcome.
                        tracing::info!(request = %r.id, "a request its former executor carried out; recorded as done");
                        let result = crate::relay::plan::carried_out_result();
                        self.requests.finish(r.id, RequestStatus::Done, result, self.deliverer.backoff()).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(request = %r.id, error = %e, "cannot tell whether a taken-over request was carried out; trying again at the next poll");
                        self.requests.release(r.id);
                        continue;
                    }
                }
            }
            let Some((status, result)) = self.carry_out(&r, shutdown).await else { return };
            self.requests.finish(r.id, status, result, self.deliverer.backoff()).await;
        }
    }

    /// The outcome, or `None` on shutdown (the request stays claimed; the
    /// next leader re-claims it).
    async fn carry_out(&self, r: &RelayRequest, shutdown: &mut Shutdown) -> Option<(RequestStatus, Value)> {
        let aggregates: Vec<String> = match &r.kind {
            RequestKind::ReplayAggregate { aggregate_id } => vec![aggregate_id.clone()],
            RequestKind::ReplayAllParked => match self.store.parked(&self.consumer).await {
                Ok(p) => p.into_iter().map(|p| p.parked.aggregate_id).collect(),
                Err(e) => return Some(failed(format!("cannot read the parked aggregates: {e}"))),
            },
            RequestKind::ReplayDeadLetters { ids } => {
                // Taken over (running already): its former executor may have
                // replayed and removed some of the letters it names.
                let resuming = r.status == RequestStatus::Running;
                return self.replay_letters(ids.as_deref(), resuming, shutdown).await;
            }
            RequestKind::Discard { event_id, reason } => {
                return match self.discard(event_id, reason, shutdown).await {
                    Ok(Some((agg, events))) => {
                        Some((RequestStatus::Done, json!({ "aggregates": 1, "unparked": [agg], "events": events })))
                    }
                    Ok(None) => None,
                    Err(error) => Some(failed(error)),
                }
            }
            RequestKind::RewindToTime { time } => return self.rewind(time.timestamp_millis()).await,
            RequestKind::RewindToPosition { .. } => return Some(failed(
                "--to-position rewinds a position feed (SQLite); this relay reads the Scylla CDC log: use --to-time"
                    .into(),
            )),
        };
        let all = matches!(r.kind, RequestKind::ReplayAllParked);
        let (mut unparked, mut events, mut bad) = (Vec::new(), 0usize, Vec::new());
        for agg in aggregates {
            match self.replay(&agg, shutdown).await {
                Ok(Some(n)) => {
                    unparked.push(agg);
                    events += n;
                }
                Ok(None) => return None,
                // Of every parked aggregate, one that cannot be replayed (it
                // stays parked) does not hold the others back, as on the
                // position relay: named under `failed`. The store or the
                // lease failing ends the request.
                Err(NotReplayed::Refused(error)) if all => bad.push(json!({ "aggregate_id": agg, "error": error })),
                Err(e) => {
                    let error = String::from(e);
                    let mut result = json!({ "aggregate_id": agg, "error": error, "unparked": unparked });
                    if !bad.is_empty() {
                        result["failed"] = json!(bad);
                    }
                    return Some((RequestStatus::Failed, result));
                }
            }
        }
        let mut result = json!({ "aggregates": unparked.len(), "unparked": unparked, "events": events });
        if !bad.is_empty() {
            result["failed"] = json!(bad);
        }
        Some((RequestStatus::Done, result))
    }

    /// Whether a taken-over replay or discard finds its goal reached: no
    /// park record of the aggregate, or the discard's audit row written and
    /// no park held behind the event; an error: the store cannot tell now.
    async fn carried_out_before(&self, kind: &RequestKind) -> Result<bool, crate::store::StoreError> {
        match kind {
            RequestKind::ReplayAggregate { aggregate_id } => {
                let parked = self.store.parked(&self.consumer).await?;
                Ok(parked.iter().all(|p| p.parked.aggregate_id != *aggregate_id))
            }
            RequestKind::Discard { event_id, .. } => {
                crate::relay::plan::discard_carried_out(&*self.store, &self.consumer, event_id).await
            }
            _ => Ok(false),
        }
    }

    /// Rewinds the feed to `to_ms`: the outcome, or `None` when the runner
    /// ended first (shutdown or a lost lease: the request stays claimed).
    async fn rewind(&self, to_ms: i64) -> Option<(RequestStatus, Value)> {
        let Rewinder { saver, log_ttl, runner } = &self.rewind;
        let outcome = match runner {
            None => rewind_progress(saver, to_ms, *log_ttl).await,
            Some(tx) => match precheck(saver, to_ms, *log_ttl, TIMESTAMPS_TABLE).await {
                Err(e) => Err(e),
                Ok(_) => {
                    let sink = self.sink.clone();
                    tx.rewind(to_ms, Box::new(move || sink.forget_published())).await?
                }
            },
        };
        Some(match outcome {
            Ok(result) => {
                self.deliverer.metrics().relay_rewinds.inc();
                (RequestStatus::Done, result)
            }
            Err(error) => failed(error),
        })
    }

    /// Replays one parked aggregate: `Ok(Some(events))`, `Ok(None)` on
    /// shutdown, `Err` when it cannot be (it stays parked): refused for
    /// this aggregate alone, or stopped by the store or the lease.
    async fn replay(&self, agg: &str, shutdown: &mut Shutdown) -> Result<Option<usize>, NotReplayed> {
        let id = Uuid::parse_str(agg).map_err(|_| NotReplayed::Refused(format!("aggregate {agg} is not a UUID")))?;
        let parked = self.store.parked(&self.consumer).await.map_err(|e| e.to_string())?;
        let Some(p) = parked.into_iter().find(|p| p.parked.aggregate_id == agg) else {
            return Err(NotReplayed::Refused(format!("aggregate {agg} is not parked")));
        };
        let from = p.parked.sequence.unwrap_or(1).max(1);
        let _turn = self.sink.exclusive(id).await;
        let mut rows = self.held_rows(id, from).await?;
        // A discard of the first held event interrupted after its audit row:
        // its marker goes out in the event's place, never the event.
        let discarded = self.discard_of_first(&p.parked).await?;
        if discarded.is_some() && rows.first().and_then(|r| r.sequence()) == Some(from) {
            rows.remove(0);
        }
        let held = readable(agg, rows).map_err(NotReplayed::Refused)?;
        tracing::info!(aggregate = %agg, from, events = held.len(), "replaying a parked aggregate from event_store");
        if let Some(d) = discarded {
            let marker = crate::relay::discards::marker_of(&d);
            let delivered = self.deliverer.deliver_marker(&marker, shutdown).await;
            if !confirmed(delivered, || {
                format!("the discard marker of event {} cannot be published; the aggregate stays parked", d.event_id)
            })? {
                return Ok(None);
            }
            self.sink.mark_published(id, marker.sequence).await;
        }
        self.publish_and_unpark(id, agg, &held, shutdown).await
    }

    /// The audit row of a discard of `p`'s first held event, if one was
    /// written (the discard did not finish: the aggregate is still parked).
    async fn discard_of_first(
        &self,
        p: &crate::store::parking::Parked,
    ) -> Result<Option<crate::store::parking::DiscardRecord>, String> {
        let Some(event_id) = p.event_id.as_deref() else { return Ok(None) };
        let audit = self
            .store
            .discards_of(&self.consumer, Some(event_id))
            .await
            .map_err(|e| format!("cannot read the discarded events: {e}"))?;
        Ok(audit.into_iter().next())
    }

    /// Discards the first held event of a parked aggregate: the audit row,
    /// a marker in its place, then the events held behind it, then the park
    /// record goes. `Ok(Some((aggregate, events)))`, `Ok(None)` on shutdown.
    async fn discard(
        &self,
        event_id: &str,
        reason: &str,
        shutdown: &mut Shutdown,
    ) -> Result<Option<(String, usize)>, String> {
        let p = parked_behind(&*self.store, &self.consumer, event_id).await.map_err(|e| e.to_string())?;
        let agg = p.aggregate_id.clone();
        let id = Uuid::parse_str(&agg).map_err(|_| format!("aggregate {agg} is not a UUID"))?;
        let from = p.sequence.unwrap_or(1).max(1);
        let _turn = self.sink.exclusive(id).await;
        let mut rows = self.held_rows(id, from).await?;
        // The discarded event's own row may be unreadable (that is often why).
        let first = (rows.first().and_then(|r| r.sequence()) == Some(from)).then(|| rows.remove(0));
        let held = readable(&agg, rows)?;
        let (record, marker) = discard_of(&self.consumer, &p, first.as_ref(), event_id, reason);
        record_discard(&*self.store, self.deliverer.metrics(), &record).await.map_err(|e| e.to_string())?;
        let d = self.deliverer.deliver_marker(&marker, shutdown).await;
        if !confirmed(d, || {
            format!("the discard marker of event {event_id} cannot be published; the aggregate stays parked")
        })? {
            return Ok(None);
        }
        self.sink.mark_published(id, marker.sequence).await;
        Ok(self.publish_and_unpark(id, &agg, &held, shutdown).await?.map(|n| (agg, n)))
    }

    /// The rows of `id` from `from` on, in sequence order.
    async fn held_rows(&self, id: Uuid, from: i64) -> Result<Vec<FeedRow>, String> {
        let key = crate::store::feed::uuid_key(&id);
        self.store.aggregate_rows(&key, None, Some(from), None).await.map_err(|e| e.to_string())
    }

    /// Publishes `held` in order under the aggregate's turn (the caller
    /// holds it), then removes the park record.
    async fn publish_and_unpark(
        &self,
        id: Uuid,
        agg: &str,
        held: &[RawEvent],
        shutdown: &mut Shutdown,
    ) -> Result<Option<usize>, NotReplayed> {
        for raw in held {
            let d = self.deliverer.deliver_replayed(raw, shutdown).await;
            let why = || {
                format!(
                    "event {} (sequence {}) still cannot be published; the aggregate is parked at it",
                    raw.event_id, raw.sequence
                )
            };
            if !confirmed(d, why)? {
                return Ok(None);
            }
            self.sink.mark_published(id, raw.sequence).await;
        }
        let removed = crate::relay::operator::unpark(&self.store, &self.consumer, agg, self.epoch).await;
        removed.map_err(|e| format!("published {} events but cannot remove the park record: {e}", held.len()))?;
        self.deliverer.unparked(agg);
        Ok(Some(held.len()))
    }

    /// Publishes dead letters again (see the module guarantees); `None` on
    /// shutdown (the letters not confirmed yet stay).
    async fn replay_letters(
        &self,
        ids: Option<&[Uuid]>,
        resuming: bool,
        shutdown: &mut Shutdown,
    ) -> Option<(RequestStatus, Value)> {
        let chosen = match chosen_letters(&*self.store, ids, resuming).await {
            Ok(c) => c,
            Err(e) => return Some(failed(e.to_string())),
        };
        let (mut items, mut bad) = (Vec::new(), Vec::new());
        for l in &chosen {
            match letter_event(l) {
                Ok(raw) => items.push((l.aggregate_id, raw, l.id)),
                Err(e) => bad.push(e),
            }
        }
        items.sort_by_key(|(agg, raw, _)| (*agg, raw.sequence));
        let mut replayed = 0usize;
        for (agg, raw, letter) in items {
            let _turn = self.sink.exclusive(agg).await;
            let d = self.deliverer.deliver_letter(&raw, shutdown).await.map_err(|e| {
                format!(
                    "event {} (sequence {}) of dead letter {letter} still cannot be published: {} ({}); the letter stays",
                    raw.event_id, raw.sequence, e.message, e.kind
                )
            });
            // Sent or stopped (a letter's failure for good is the Err above).
            match d.and_then(|d| confirmed(d, || format!("dead letter {letter}: {d:?}")).map_err(String::from)) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(error) => {
                    let result = json!({ "id": letter, "error": error, "replayed": replayed, "failed": bad });
                    return Some((RequestStatus::Failed, result));
                }
            }
            self.sink.mark_replayed(agg, raw.sequence).await;
            let removed = crate::relay::operator::remove_replayed(&self.store, self.deliverer.metrics(), letter).await;
            if let Err(e) = removed {
                tracing::warn!(error = %e, %letter, "replayed dead letter could not be removed; it may be replayed again");
            }
            replayed += 1;
        }
        Some((RequestStatus::Done, json!({ "replayed": replayed, "events": replayed, "failed": bad })))
    }
}

#[path = "requests_outcome.rs"]
mod outcome;
use outcome::{confirmed, failed, readable, NotReplayed};
