//! Admin routes for the relay's operators (on the admin server):
//!
//! - GET /dlq?limit=N: parked aggregates (first held event, error, held
//!   count) and dead letters.
//! - POST /dlq/replay: `{"aggregate_id": ID}`, `{"all_parked": true}`,
//!   `{"ids": [...]}` (dead letters) or `{"all": true}` (every parked
//!   aggregate and dead letter).
//! - POST /dlq/discard: `{"event_id": ID, "reason": TEXT}`.
//! - POST /relay/rewind: `{"to_position": N}` (SQLite) or `{"to_time": RFC 3339}` (CQL).
//! - GET /relay/requests/{id}: a request's status and result.
//! - GET /leases: every lease (holder, epoch, renewals, checkpoint).
//! - POST /debug/store?fail_reads_ms=N, POST /debug/pause/relay?ms=N: fault
//!   injection (only with `OUTBOXD_ENABLE_FAULT_INJECTION=1`; N at most a day).
//!
//! Guarantee: a write route never publishes itself: it writes a request row
//! (through the DlqActor) that the instance holding the relay lease carries
//! out; with `"wait": true` (the default) the answer comes when it is done
//! (200) or after 30 s (202 with the request to poll).

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::actors::{ListDeadLetters, SubmitRequest};
use crate::relay::operator::{self, Waited};
use crate::store::requests::{RelayRequest, RequestKind, RequestStatus};

use super::admin::AdminState;
use super::errors::ApiError;
use super::input::Input;
use super::json_body::JsonBody;
use super::query::Params;

/// How long a write route waits for the relay before answering 202.
const WAIT: Duration = Duration::from_secs(30);

/// Shortest discard reason, in characters after trimming.
const MIN_DISCARD_REASON: usize = 3;

/// The rule for a discard's reason (kept in the audit row), shared by
/// `POST /dlq/discard` and `outboxd dlq discard --reason`: no control
/// characters (terminal escapes reach operators' logs) and at least
/// [`MIN_DISCARD_REASON`] characters (not bytes) after trimming. `Err` says
/// what is wrong, without the field's name (each entry point adds its own).
pub fn check_discard_reason(reason: &str) -> Result<(), &'static str> {
    // The message's "3" is MIN_DISCARD_REASON (a &'static str cannot format it).
    const _: () = assert!(MIN_DISCARD_REASON == 3);
    if reason.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if reason.trim().chars().count() < MIN_DISCARD_REASON {
        return Err("at least 3 characters: say why the event is discarded (kept in the audit row)");
    }
    Ok(())
}

pub(super) async fn dlq_list(
    st: web::Data<AdminState>,
    q: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let limit = Params::new(&q, &["limit"])?
        .parsed::<usize>("limit", |n| (1..=10_000).contains(n), "limit must be an integer from 1 to 10000")?
        .unwrap_or(100);
    let view = st
        .dlq
        .send(ListDeadLetters { limit })
        .await
        .map_err(|_| ApiError::unavailable("dead-letter actor unavailable"))?
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot list dead letters");
            ApiError::unavailable("the store is unavailable")
        })?;
    Ok(HttpResponse::Ok().json(json!({
        "count": view.dead_letters.len(),
        "dead_letters": view.dead_letters,
        "parked_count": view.parked_total,
        "parked": view.parked,
    })))
}

/// A boolean member: absent is `default`; anything but true/false is a 422.
fn flag(body: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(key, format!("{key} must be true or false"))),
    }
}

fn wants_wait(body: &Value) -> Result<bool, ApiError> {
    flag(body, "wait", true)
}

/// Writes the request row for `kind`; a replay or discard of nothing parked
/// is refused here, naming the field, and writes nothing.
async fn submit_row(st: &AdminState, kind: RequestKind) -> Result<RelayRequest, ApiError> {
    match operator::check_parked(&st.store, &st.consumer, &kind).await {
        Ok(Ok(())) => {}
        Ok(Err(nothing)) => return Err(ApiError::invalid(nothing.field, nothing.message)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the parked aggregates");
            return Err(ApiError::unavailable("the store is unavailable"));
        }
    }
    st.dlq
        .send(SubmitRequest { kind, requested_by: "admin-api".into() })
        .await
        .map_err(|_| ApiError::unavailable("dead-letter actor unavailable"))?
        .map_err(|e| ApiError::from_actor(e, "relay request"))
}

/// Submits `kind` and (if asked) waits for the relay to carry it out.
async fn submit(st: &AdminState, kind: RequestKind, wait: bool) -> Result<HttpResponse, ApiError> {
    let r = submit_row(st, kind).await?;
    answer(st, r, wait.then(|| Instant::now() + WAIT), None).await
}

/// The answer for request `r`: 202 at once without a deadline, else 200
/// when it is done, 409 when it failed, 202 when it is not done by
/// `deadline` ([`WAIT`] after the request came, for every request it wrote).
/// `all`, when given, is added as `requests` (the `all: true` replay's two),
/// each as the store has it when the answer is made (not as written).
async fn answer(
    st: &AdminState,
    r: RelayRequest,
    deadline: Option<Instant>,
    all: Option<&[RelayRequest]>,
) -> Result<HttpResponse, ApiError> {
    let Some(deadline) = deadline else {
        let all = as_stored(st, all).await;
        return Ok(HttpResponse::Accepted().json(with_all(json!({ "request": r }), &all)));
    };
    // The row is written: a store that does not answer now is no reason to
    // tell the client to submit again (a second rewind would re-publish the
    // range twice). Read again until the deadline, then answer 202 naming it.
    let waited = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match operator::wait(&st.store, &r.consumer, r.id, left, left, |_| {}).await {
            Err(e) if !left.is_zero() => {
                tracing::warn!(error = %e, request = %r.id, "cannot read back a relay request; trying again");
                tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            }
            other => break other,
        }
    };
    let all = as_stored(st, all).await;
    match waited {
        Ok(Waited::Finished(done)) if done.status == RequestStatus::Done => {
            Ok(HttpResponse::Ok().json(with_all(json!({ "request": done }), &all)))
        }
        Ok(Waited::Finished(failed)) => {
            let mut extra = vec![("request", json!(failed))];
            if let Some(all) = all {
                extra.push(("requests", json!(all)));
            }
            Ok(ApiError::new(
                actix_web::http::StatusCode::CONFLICT,
                "request_failed",
                "the relay could not carry out the request; see request.result",
            )
            .response_with(&extra))
        }
        Ok(Waited::Unclaimed(p) | Waited::TimedOut(p)) => Ok(HttpResponse::Accepted().json(with_all(
            json!({
                "request": p,
                "message": "not finished yet (is a relay running?); poll GET /relay/requests/{id}",
            }),
            &all,
        ))),
        Err(e) => {
            tracing::warn!(error = %e, request = %r.id, "cannot read back a relay request");
            Ok(HttpResponse::Accepted().json(with_all(
                json!({
                    "request": r,
                    "message": "written; its progress could not be read back (the store did not answer); poll GET /relay/requests/{id}",
                }),
                &all,
            )))
        }
    }
}

/// `all` re-read from the store (a row it cannot read now stays as given).
async fn as_stored(st: &AdminState, all: Option<&[RelayRequest]>) -> Option<Vec<RelayRequest>> {
    let mut out = Vec::new();
    for r in all? {
        out.push(st.store.request_get(r.id).await.ok().flatten().unwrap_or_else(|| r.clone()));
    }
    Some(out)
}

fn with_all(mut body: Value, all: &Option<Vec<RelayRequest>>) -> Value {
    if let Some(all) = all {
        body["requests"] = json!(all);
    }
    body
}

/// `{"all": true}`: two requests, both written before any wait, so a first
/// one still running at the 202 (or failing) never leaves the dead letters
/// unrequested. The relay carries out requests one at a time, oldest first
/// (ties by id, which this process makes increasing): every parked
/// aggregate, then every dead letter. The answer is the first one's when it
/// did not finish well, else the second's (without `wait`, the second's:
/// it finishes last); `requests` lists both. Both share one [`WAIT`].
/// When only the first could be written the answer is an error to retry:
/// a second replay of every parked aggregate finds what the first left,
/// nothing once it ran.
async fn replay_all(st: &AdminState, wait: bool) -> Result<HttpResponse, ApiError> {
    let deadline = wait.then(|| Instant::now() + WAIT);
    let parked = submit_row(st, RequestKind::ReplayAllParked).await?;
    let letters = submit_row(st, RequestKind::ReplayDeadLetters { ids: None }).await?;
    let both = [parked.clone(), letters.clone()];
    if deadline.is_some() {
        let first = answer(st, parked, deadline, Some(&both)).await?;
        if first.status() != actix_web::http::StatusCode::OK {
            return Ok(first);
        }
    }
    answer(st, letters, deadline, Some(&both)).await
}

fn uuid_list(b: &Input<'_>, field: &str) -> Result<Vec<Uuid>, ApiError> {
    let raw = b.array(field)?;
    raw.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .and_then(super::input::uuid_text)
                .ok_or_else(|| ApiError::invalid(format!("{field}[{i}]"), "must be a UUID"))
        })
        .collect()
}

pub(super) async fn dlq_replay(st: web::Data<AdminState>, body: web::Json<JsonBody>) -> Result<HttpResponse, ApiError> {
    let b = Input::request(&body, &["ids", "all", "aggregate_id", "all_parked", "wait"])?;
    let wait = wants_wait(&body)?;
    let given = |k: &str| body.get(k).is_some();
    // Exactly one selector: a body that names two would silently do one of them.
    let (all_parked, all) = (flag(&body, "all_parked", false)?, flag(&body, "all", false)?);
    let selected: Vec<&str> =
        [("aggregate_id", given("aggregate_id")), ("ids", given("ids")), ("all_parked", all_parked), ("all", all)]
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect();
    if let [_, second, ..] = selected[..] {
        // The field at fault is the second one given (the body names it).
        return Err(ApiError::invalid(second, "give exactly one of aggregate_id, ids, all_parked: true or all: true"));
    }
    let kind = if given("aggregate_id") {
        let agg = b.string("aggregate_id")?;
        RequestKind::ReplayAggregate { aggregate_id: agg }
    } else if given("ids") {
        let ids = uuid_list(&b, "ids")?;
        // A request that names nothing would be written and do nothing.
        if ids.is_empty() {
            return Err(ApiError::invalid("ids", "must name at least one dead letter (see GET /dlq)"));
        }
        RequestKind::ReplayDeadLetters { ids: Some(ids) }
    } else if all_parked {
        RequestKind::ReplayAllParked
    } else if all {
        return replay_all(&st, wait).await;
    } else {
        return Err(ApiError::invalid(
            "$",
            "say what to replay: {\"aggregate_id\": ID}, {\"all_parked\": true}, {\"ids\": [...]} or {\"all\": true}",
        ));
    };
    submit(&st, kind, wait).await
}

pub(super) async fn dlq_discard(
    st: web::Data<AdminState>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    let b = Input::request(&body, &["event_id", "reason", "wait"])?;
    let event_id = b.string("event_id")?;
    let reason = b.string("reason")?;
    check_discard_reason(&reason).map_err(|why| ApiError::invalid("reason", why))?;
    submit(&st, RequestKind::Discard { event_id, reason }, wants_wait(&body)?).await
}

pub(super) async fn relay_rewind(
    st: web::Data<AdminState>,
    body: web::Json<JsonBody>,
) -> Result<HttpResponse, ApiError> {
    let _ = Input::request(&body, &["to_position", "to_time", "wait"])?;
    // A member that is present counts, even as null: `{"to_position": 0, "to_time": null}` names both.
    let kind = match (body.get("to_position"), body.get("to_time")) {
        (Some(p), None) => match super::input::whole_number(p) {
            Some(n) if n >= 0 => RequestKind::RewindToPosition { position: n },
            _ => return Err(ApiError::invalid("to_position", "must be a non-negative feed position")),
        },
        (None, Some(t)) => match t.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()) {
            Some(t) => RequestKind::RewindToTime { time: t.with_timezone(&Utc) },
            None => return Err(ApiError::invalid("to_time", "must be an RFC 3339 time")),
        },
        _ => return Err(ApiError::invalid("to_position", "give exactly one of to_position or to_time")),
    };
    // A rewind this backend's relay cannot carry out is refused here, as the
    // CLI refuses it, not written to fail (or wait unclaimed) later.
    match (&kind, st.store.backend()) {
        (RequestKind::RewindToPosition { .. }, "cql") => {
            return Err(ApiError::invalid(
                "to_position",
                "the CQL store's CDC relay has no feed positions: rewind with to_time",
            ))
        }
        (RequestKind::RewindToTime { .. }, "sqlite") => {
            return Err(ApiError::invalid(
                "to_time",
                "the SQLite store's relay rewinds by feed position: rewind with to_position",
            ))
        }
        _ => {}
    }
    // Past the last stored event there is nothing to go back to (as the CLI
    // refuses it): a 422 now, not a request that fails later. A head that
    // cannot be read skips this check (the relay makes its own).
    if let RequestKind::RewindToPosition { position } = kind {
        match operator::rewind_past_head(&st.store, position).await {
            Ok(Some(why)) => return Err(ApiError::invalid("to_position", why)),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the feed head; the relay checks the rewind's position"),
        }
    }
    submit(&st, kind, wants_wait(&body)?).await
}

pub(super) async fn request_status(
    st: web::Data<AdminState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = super::input::uuid_text(&path)
        .ok_or_else(|| ApiError::bad_request("id", "the id in the path must be a UUID"))?;
    match st.store.request_get(id).await {
        Ok(Some(r)) => Ok(HttpResponse::Ok().json(json!({ "request": r }))),
        Ok(None) => Err(ApiError::not_found(format!("relay request {id} does not exist"))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a relay request");
            Err(ApiError::unavailable("the store is unavailable"))
        }
    }
}

pub(super) async fn leases(st: web::Data<AdminState>) -> Result<HttpResponse, ApiError> {
    match st.store.lease_list().await {
        Ok(l) => Ok(HttpResponse::Ok().json(json!({ "leases": l, "this_instance": st.instance }))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list leases");
            Err(ApiError::unavailable("the store is unavailable"))
        }
    }
}

/// Longest fault a test route arms: a day, in milliseconds.
const MAX_FAULT_MS: u64 = 86_400_000;

/// The one query parameter `name` of a fault-injection route: 0 to
/// [`MAX_FAULT_MS`] milliseconds (a larger one would overflow the deadline
/// `Instant::now() + ms`, a panic), else a 400 naming it; `missing` when absent.
fn fault_ms(q: &[(String, String)], name: &str, missing: &str) -> Result<u64, ApiError> {
    Params::new(q, &[name])?
        .parsed::<u64>(
            name,
            |n| *n <= MAX_FAULT_MS,
            &format!("{name} must be an integer from 0 to {MAX_FAULT_MS} (milliseconds)"),
        )?
        .ok_or_else(|| ApiError::bad_request(name, missing))
}

pub(super) async fn debug_store(
    st: web::Data<AdminState>,
    q: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let ms = fault_ms(&q, "fail_reads_ms", "say how long reads fail: ?fail_reads_ms=N")?;
    // The CQL store fails named operations only (library tests), never its reads.
    let faults = st
        .store
        .faults()
        .filter(|f| f.fails_reads())
        .ok_or_else(|| ApiError::not_found("this store backend has no fault-injection seam for its reads"))?;
    faults.fail_reads_for(Duration::from_millis(ms));
    Ok(HttpResponse::Accepted().json(json!({ "fail_reads_ms": ms })))
}

pub(super) async fn debug_pause(
    st: web::Data<AdminState>,
    q: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let ms = fault_ms(&q, "ms", "say how long the relay loop freezes: ?ms=N")?;
    st.relay_pause.pause_for(Duration::from_millis(ms));
    Ok(HttpResponse::Accepted().json(json!({ "paused_ms": ms })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: `POST /debug/pause/relay?ms=18446744073709551615` (and
    /// `/debug/store?fail_reads_ms=` the same) armed `Instant::now() + ms`,
    /// which overflows: the handler panicked instead of answering 400.
    #[test]
    fn a_fault_longer_than_a_day_is_a_400_not_a_panic() {
        let q = |v: &str| vec![("ms".to_string(), v.to_string())];
        for bad in [u64::MAX.to_string(), (MAX_FAULT_MS + 1).to_string(), "-1".into(), "x".into()] {
            let e = fault_ms(&q(&bad), "ms", "say how long").unwrap_err();
            assert_eq!((e.status.as_u16(), e.body.field.as_deref()), (400, Some("ms")), "{bad}");
        }
        assert_eq!(fault_ms(&[], "ms", "say how long").unwrap_err().body.field.as_deref(), Some("ms"));
        // Whatever is accepted arms both hooks without overflowing.
        for ok in ["0", "250", &MAX_FAULT_MS.to_string()] {
            let ms = fault_ms(&q(ok), "ms", "say how long").unwrap();
            crate::lease::pause::PauseHook::default().pause_for(Duration::from_millis(ms));
            crate::store::faults::StoreFaults::default().fail_reads_for(Duration::from_millis(ms));
        }
    }
}
