//! Operator requests from the outside (CLI, admin API): submit one, wait for
//! the active relay to carry it out, report progress.
//!
//! Guarantees:
//! - Requests are rows (`store::requests`): whichever instance holds the
//!   relay lease carries them out with its own producer; there is never a
//!   second producer racing the relay.
//! - `wait` returns when the request is done or failed, or reports that no
//!   relay has claimed it yet (none runs: the CLI then carries it out itself
//!   under the lease, see `cli::relay_ops`), never pretends success.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::store::requests::{RelayRequest, RequestKind, RequestStatus};
use crate::store::{DynStore, StoreError};

/// Whether taking `r` starts it, which `relay_requests_total` counts: a
/// request already `running` was started, and counted, by whoever claimed
/// it first (this term before a release, a former term, another instance
/// before a takeover), so a sum over instances counts each request once.
pub fn starts_anew(r: &RelayRequest) -> bool {
    r.status != RequestStatus::Running
}

/// Writes a request for `consumer`'s relay; returns it (with its id).
pub async fn submit(
    store: &DynStore,
    consumer: &str,
    kind: RequestKind,
    requested_by: &str,
) -> Result<RelayRequest, StoreError> {
    let r = RelayRequest::new(consumer, kind.canonical(), requested_by);
    store.request_submit(&r).await?;
    Ok(r)
}

/// Claims `r` for the relay at lease `epoch`: true when it is now this
/// relay's to carry out (logged); false when another relay took it or the
/// store refused (logged; the next poll tries again). The one claim step of
/// every relay path (position feed, exactly-once, Scylla CDC).
pub async fn claim(store: &DynStore, r: &RelayRequest, epoch: i64) -> bool {
    match store.request_claim(r, epoch).await {
        Ok(true) => {
            tracing::info!(request = %r.id, kind = ?r.kind, by = %r.requested_by, "carrying out a relay request");
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!(error = %e, request = %r.id, "cannot claim a relay request");
            false
        }
    }
}

/// Records a request's outcome at lease `epoch` (logged first), retrying a
/// store that does not answer (5 tries, `backoff`); a refusal because the
/// request is no longer claimed at this epoch is final (the new leader
/// carries it out). The one finish step of the relay's request servers.
/// False when the store never answered: the outcome is not recorded.
pub async fn finish(
    store: &DynStore,
    consumer: &str,
    id: Uuid,
    epoch: i64,
    status: RequestStatus,
    result: serde_json::Value,
    backoff: &crate::relay::retry::Backoff,
) -> bool {
    match status {
        RequestStatus::Failed => tracing::warn!(request = %id, %result, "relay request failed"),
        _ => tracing::info!(request = %id, %result, "relay request done"),
    }
    for attempt in 1..=5u32 {
        match store.request_finish(consumer, id, epoch, status, result.clone()).await {
            Ok(true) => return true,
            Ok(false) => {
                tracing::warn!(request = %id, epoch, "request outcome not recorded: it is no longer claimed at this relay's lease epoch (the new leader carries it out)");
                return true;
            }
            Err(e) if attempt == 5 => {
                tracing::error!(error = %e, request = %id, "cannot record the outcome of a relay request")
            }
            Err(_) => tokio::time::sleep(backoff.delay(attempt)).await,
        }
    }
    false
}

/// Outcomes of requests a relay carried out but could not record (the
/// store did not answer), kept across its terms and (held by the relay
/// actor's body) its restarts: a later term at the same
/// lease epoch, which takes over the requests left running at it, records
/// these instead of carrying them out again (a second rewind, a replay
/// reported failed because its aggregate is no longer parked).
#[derive(Debug, Clone, Default)]
pub struct Unsaved(Arc<Mutex<HashMap<Uuid, Outcome>>>);

/// A request's outcome: (the epoch it was carried out at, status, result).
type Outcome = (i64, RequestStatus, serde_json::Value);

impl Unsaved {
    pub fn put(&self, id: Uuid, epoch: i64, status: RequestStatus, result: serde_json::Value) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, (epoch, status, result));
        }
    }

    /// The unrecorded outcome of `id`, carried out at `epoch`, if any.
    pub fn take(&self, id: Uuid, epoch: i64) -> Option<(RequestStatus, serde_json::Value)> {
        let mut m = self.0.lock().ok()?;
        match m.get(&id) {
            Some((e, ..)) if *e == epoch => m.remove(&id).map(|(_, s, r)| (s, r)),
            _ => None,
        }
    }
}

/// A relay term's side of the operator requests (position feed, both
/// delivery modes): the ones it claimed (never taken over again by it; one
/// left running by a former term at this epoch is), and its runner's
/// outcomes not recorded yet (recorded, never carried out again).
pub struct TermRequests {
    store: DynStore,
    consumer: String,
    epoch: i64,
    claimed: HashSet<Uuid>,
    unsaved: Unsaved,
    /// Released by [`TermRequests::release`] and how often (taken again
    /// later; a resumed replay's planning is bounded by it).
    released: HashMap<Uuid, u32>,
}

impl TermRequests {
    pub fn new(store: DynStore, consumer: &str, epoch: i64, unsaved: Unsaved) -> TermRequests {
        TermRequests {
            store,
            consumer: consumer.to_string(),
            epoch,
            claimed: HashSet::new(),
            unsaved,
            released: HashMap::new(),
        }
    }

    /// Whether this term carries `r` out now (claimed here, under its epoch);
    /// an outcome kept from a former term at this epoch is recorded instead.
    /// An outcome not recorded yet (the store did not answer at the time)
    /// is recorded now, by this term or a later one at its epoch: the
    /// request is never carried out again, nor left running for good.
    pub async fn take(&mut self, r: &RelayRequest) -> bool {
        if let Some((status, result)) = self.unsaved.take(r.id, self.epoch) {
            // Carried out at this epoch; only its outcome is missing: one
            // try per poll (the store did not answer five before; retrying
            // them at every poll would hold the relay's loop each time).
            match self.store.request_finish(&self.consumer, r.id, self.epoch, status, result.clone()).await {
                Ok(true) => tracing::info!(request = %r.id, "request outcome recorded"),
                Ok(false) => {
                    tracing::warn!(request = %r.id, epoch = self.epoch, "request outcome not recorded: it is no longer claimed at this relay's lease epoch (the new leader carries it out)")
                }
                Err(e) => {
                    tracing::warn!(error = %e, request = %r.id, "cannot record a request outcome yet; trying again at the next poll");
                    self.unsaved.put(r.id, self.epoch, status, result);
                }
            }
            return false;
        }
        if self.claimed.contains(&r.id) {
            return false;
        }
        if !claim(&self.store, r, self.epoch).await {
            return false;
        }
        self.claimed.insert(r.id);
        true
    }

    /// Lets `id` be taken again later in this term (it stays claimed in the
    /// store at this term's epoch, which a claim at the same epoch renews);
    /// how many times it was released so far, this one included.
    pub fn release(&mut self, id: Uuid) -> u32 {
        self.claimed.remove(&id);
        let n = self.released.entry(id).or_default();
        *n += 1;
        *n
    }

    /// Records `id`'s outcome ([`finish`]); kept for the next term when the store never answered.
    pub async fn finish(
        &self,
        id: Uuid,
        status: RequestStatus,
        result: serde_json::Value,
        backoff: &crate::relay::retry::Backoff,
    ) {
        if !finish(&self.store, &self.consumer, id, self.epoch, status, result.clone(), backoff).await {
            self.unsaved.put(id, self.epoch, status, result);
        }
    }
}

/// Removes dead letter `id` once its event was published again; only a
/// letter actually removed leaves `dlq_depth` (the gauge follows the
/// table). The one removal step of every dead-letter replay (position
/// feed, exactly-once, CDC); what a store error means is the caller's.
pub async fn remove_replayed(store: &DynStore, metrics: &crate::metrics::Metrics, id: Uuid) -> Result<(), StoreError> {
    if store.dlq_remove(id).await? {
        metrics.dlq_depth.dec();
    }
    Ok(())
}

/// Removes `aggregate`'s park record for `consumer`, fenced at lease
/// `epoch` (0: unfenced, a relay without a lease), retrying a store that
/// does not answer (5 tries, 0.1-0.4 s apart: at most 1 s, whatever the
/// retry settings, since a CDC replay holds the aggregate's turn meanwhile);
/// a refusal by the lease is final. The one unpark step of every replay
/// (position feed, exactly-once, CDC).
pub async fn unpark(store: &DynStore, consumer: &str, aggregate: &str, epoch: i64) -> Result<bool, StoreError> {
    let mut attempt = 1u32;
    loop {
        match unpark_once(store, consumer, aggregate, epoch).await {
            Err(e @ StoreError::Fenced { .. }) => return Err(e),
            Err(e) if attempt < 5 => {
                tracing::warn!(error = %e, %aggregate, attempt, "cannot remove a park record; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One attempt of [`unpark`]: fenced at `epoch` (0: unfenced).
pub async fn unpark_once(store: &DynStore, consumer: &str, aggregate: &str, epoch: i64) -> Result<bool, StoreError> {
    match epoch {
        0 => store.unpark(consumer, aggregate).await,
        e => store.unpark_fenced(consumer, aggregate, e).await,
    }
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    /// Done or failed: the final row.
    Finished(RelayRequest),
    /// Still pending after `unclaimed_after`: no relay picked it up.
    Unclaimed(RelayRequest),
    /// Claimed but not finished within the timeout.
    TimedOut(RelayRequest),
}

/// Polls request `id` until it finishes; `on_change` sees each new status.
pub async fn wait(
    store: &DynStore,
    consumer: &str,
    id: Uuid,
    unclaimed_after: Duration,
    timeout: Duration,
    mut on_change: impl FnMut(&RelayRequest),
) -> Result<Waited, StoreError> {
    let started = Instant::now();
    let mut last: Option<RequestStatus> = None;
    loop {
        let Some(r) = store.request_get_of(consumer, id).await? else {
            return Err(StoreError::NotFound(format!("relay request {id}")));
        };
        if last != Some(r.status) {
            on_change(&r);
            last = Some(r.status);
        }
        match r.status {
            RequestStatus::Done | RequestStatus::Failed => return Ok(Waited::Finished(r)),
            RequestStatus::Pending if started.elapsed() >= unclaimed_after => return Ok(Waited::Unclaimed(r)),
            _ if started.elapsed() >= timeout => return Ok(Waited::TimedOut(r)),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Withdraws request `id` because its submitter gave up (interrupted, or
/// out of time), so no relay carries it out later: a pending one, or (with
/// `held` = the caller's own lease epoch, its relay term stopped) one
/// claimed at that epoch. It is recorded `failed` with `{"error":
/// "cancelled: <why>"}`. A request another executor claimed meanwhile is
/// left to it. With `exactly_once`, a claimed one stays open too: its
/// replay may have committed part of its events, which only the request's
/// own resumption by the next relay term skips (withdrawn, it would be
/// submitted again and publish them twice). Returns the row as it ends up,
/// to report truthfully.
pub async fn withdraw(
    store: &DynStore,
    id: Uuid,
    held: Option<i64>,
    why: &str,
    exactly_once: bool,
) -> Result<RelayRequest, StoreError> {
    let get =
        || async { store.request_get(id).await?.ok_or_else(|| StoreError::NotFound(format!("relay request {id}"))) };
    let r = get().await?;
    let epoch = held.unwrap_or(0);
    let ours = match r.status {
        RequestStatus::Pending => store.request_claim(&r, epoch).await?,
        RequestStatus::Running => !exactly_once && held.is_some() && r.claimed_epoch == held,
        RequestStatus::Done | RequestStatus::Failed => false,
    };
    if ours {
        let result = serde_json::json!({ "error": format!("{WITHDRAWN}{why}") });
        store.request_finish(&r.consumer, id, epoch, RequestStatus::Failed, result).await?;
    }
    get().await
}

/// How the error of a withdrawn request begins.
const WITHDRAWN: &str = "cancelled: ";

/// Whether `r` ended withdrawn (`withdraw`), not carried out or failed.
pub fn is_withdrawn(r: &RelayRequest) -> bool {
    r.status == RequestStatus::Failed
        && r.result
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|v| v.as_str())
            .is_some_and(|e| e.starts_with(WITHDRAWN))
}

/// A replay or discard that names nothing parked: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct NothingParked {
    pub field: String,
    pub message: String,
}

/// Checks, before a request is written, that a replay of one aggregate or
/// a discard names something parked for `consumer`, and a replay of named
/// dead letters names existing ones (the relay checks again when it carries
/// the request out); other kinds pass.
pub async fn check_parked(
    store: &DynStore,
    consumer: &str,
    kind: &RequestKind,
) -> Result<Result<(), NothingParked>, StoreError> {
    type Names = fn(&crate::store::parking::Parked, &str) -> bool;
    // As `submit` writes it (an id in upper case names what it names in lower).
    let kind = &kind.clone().canonical();
    let (field, wanted, what, names): (_, _, _, Names) = match kind {
        RequestKind::ReplayAggregate { aggregate_id } => {
            ("aggregate_id", aggregate_id, "a parked aggregate", |p, w| p.aggregate_id == w)
        }
        RequestKind::Discard { event_id, .. } => {
            ("event_id", event_id, "the first held event of a parked aggregate", |p, w| {
                p.event_id.as_deref() == Some(w)
            })
        }
        RequestKind::ReplayDeadLetters { ids: Some(ids) } => {
            let letters: HashSet<Uuid> = store.dlq_get(ids).await?.into_iter().map(|l| l.id).collect();
            let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !letters.contains(id)) else { return Ok(Ok(())) };
            let message = format!("{id} is not a dead letter (see GET /dlq or outboxd dlq list)");
            return Ok(Err(NothingParked { field: format!("ids[{i}]"), message }));
        }
        _ => return Ok(Ok(())),
    };
    if store.parked(consumer).await?.iter().any(|p| names(&p.parked, wanted)) {
        return Ok(Ok(()));
    }
    let message = format!("{wanted:?} is not {what} (see GET /dlq or outboxd dlq list)");
    Ok(Err(NothingParked { field: field.to_string(), message }))
}

/// Why a rewind to feed `position` has nothing to go back to (it is past
/// the last stored event), checked before the request is written by the
/// CLI and the admin API alike; None: it may go (the relay checks it
/// against its own checkpoint, which it alone knows up to date).
pub async fn rewind_past_head(store: &DynStore, position: i64) -> Result<Option<String>, StoreError> {
    let head = store.head_position().await?;
    Ok((position > head).then(|| {
        format!(
            "beyond the last event in the store (position {head}); a rewind goes back to a position already published"
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unrecorded outcome is handed to a later term at the same epoch
    /// (which records it instead of carrying the request out again), once;
    /// under another epoch the request is the new holder's to carry out.
    #[test]
    fn an_unsaved_outcome_goes_to_the_next_term_at_its_epoch_once() {
        let (u, id) = (Unsaved::default(), Uuid::now_v7());
        let shared = u.clone();
        u.put(id, 4, RequestStatus::Done, serde_json::json!({ "rewound_to": 7 }));
        assert_eq!(shared.take(id, 5), None, "another epoch: not this holder's outcome to record");
        assert_eq!(shared.take(id, 4), Some((RequestStatus::Done, serde_json::json!({ "rewound_to": 7 }))));
        assert_eq!(shared.take(id, 4), None, "handed over once");
        assert_eq!(u.take(Uuid::now_v7(), 4), None);
    }

    /// A request carried out by this term whose outcome the store did not
    /// take is recorded at this term's next poll (not left running until
    /// the term ends), and never carried out again.
    #[tokio::test]
    async fn an_unrecorded_outcome_is_recorded_at_the_same_terms_next_poll() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore =
            crate::store::sqlite::SqliteStore::open(dir.path().join("s.db"), Default::default()).await.unwrap();
        let r = submit(&store, "relay", RequestKind::RewindToPosition { position: 0 }, "test").await.unwrap();
        let unsaved = Unsaved::default();
        let mut term = TermRequests::new(store.clone(), "relay", 0, unsaved.clone());
        assert!(term.take(&r).await, "claimed");
        // Carried out; the store did not take its outcome then.
        unsaved.put(r.id, 0, RequestStatus::Done, serde_json::json!({ "rewound_to": 0 }));
        let open = store.requests_open("relay", 0).await.unwrap();
        assert_eq!(open.len(), 1);
        assert!(!term.take(&open[0]).await, "not carried out again");
        let row = store.request_get(r.id).await.unwrap().unwrap();
        assert_eq!(row.status, RequestStatus::Done);
        assert_eq!(row.result, Some(serde_json::json!({ "rewound_to": 0 })));
    }

    /// Review finding: park records hold ids as the store writes them
    /// (lower case), and the pre-check compared the id as typed: an
    /// aggregate id in upper case, or with blanks around it, was "not a
    /// parked aggregate" (422) though it was parked. Checked and written
    /// canonical now.
    #[tokio::test]
    async fn an_aggregate_id_in_upper_case_names_its_parked_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore =
            crate::store::sqlite::SqliteStore::open(dir.path().join("s.db"), Default::default()).await.unwrap();
        let agg = Uuid::now_v7();
        let mut parked = crate::store::parking::Parked {
            consumer: "relay".into(),
            aggregate_id: agg.to_string(),
            aggregate_type: Some("Order".into()),
            position: Some(1),
            sequence: Some(1),
            event_id: Some(Uuid::now_v7().to_string()),
            event_type: None,
            error: "refused by the broker".into(),
            parked_at: chrono::Utc::now(),
        };
        store.park(&parked).await.unwrap();
        let typed = format!(" {} ", agg.to_string().to_uppercase());
        let kind = RequestKind::ReplayAggregate { aggregate_id: typed };
        assert_eq!(check_parked(&store, "relay", &kind).await.unwrap(), Ok(()));
        let r = submit(&store, "relay", kind, "test").await.unwrap();
        assert_eq!(r.kind, RequestKind::ReplayAggregate { aggregate_id: agg.to_string() }, "written canonical");
        let event = parked.event_id.take().unwrap();
        let kind = RequestKind::Discard { event_id: event.to_uppercase(), reason: "bad".into() };
        assert_eq!(check_parked(&store, "relay", &kind).await.unwrap(), Ok(()), "an event id too");
        // Not an id: compared as typed (and refused, naming the field).
        let kind = RequestKind::ReplayAggregate { aggregate_id: "order-7".into() };
        assert_eq!(check_parked(&store, "relay", &kind).await.unwrap().unwrap_err().field, "aggregate_id");
    }
}
