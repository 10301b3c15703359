//! Operator requests from the command line (`dlq replay`, `dlq discard`,
//! `relay rewind`): submitted as request rows for the active relay.
//!
//! Guarantees:
//! - The active relay (whichever instance holds the lease) carries the
//!   request out with its own producer; the CLI never races it with a
//!   second producer.
//! - When no relay runs (no lease, a released one, or one nobody renews),
//!   the CLI takes the lease itself and carries the request out under it,
//!   fenced like a relay, then releases it.
//! - It waits with visible progress, at most `--timeout`, and prints the
//!   outcome; exit 0 when done, 1 when the request failed or is not done
//!   by then, 130 on SIGINT/SIGTERM. One [`Deadline`] covers the whole
//!   command: each step (and each request of `dlq replay --all`) waits
//!   only for what is left of it.
//! - A request it gives up on while carrying it out here (or that is still
//!   pending when it is interrupted) is withdrawn, under the lease, before
//!   the lease is released: no relay carries it out at a later start.

use std::sync::Arc;
use std::time::Duration;

use outboxd::config::{Backend, Config, DeliveryMode};
use outboxd::lease::keeper::{self, LeaseState};
use outboxd::metrics::Metrics;
use outboxd::relay::operator::{self, Waited};
use outboxd::relay::pipeline::{Fence, Relay};
use outboxd::relay::StatusTx;
use outboxd::shutdown::{Shutdown, Trigger};
use outboxd::store::requests::{RelayRequest, RequestKind, RequestStatus};
use outboxd::store::DynStore;

pub use super::wait::{Deadline, Interrupt};
use super::{open_existing, BadInput, Failure};

/// The default of `--timeout`: how long the CLI waits for a request.
pub const DEFAULT_WAIT_SECS: usize = 600;

/// Exit code after SIGINT/SIGTERM (128 + SIGINT, the shell's convention).
pub const INTERRUPTED: u8 = 130;

fn who() -> String {
    format!("cli@{}", outboxd::daemon::instance_id(&Config::default()))
}

/// Submits `kind`, waits for it until `deadline` (carrying it out here
/// when no relay runs), prints the outcome. Interrupted (SIGINT/SIGTERM),
/// or out of time while carrying it out here, it withdraws the request so
/// that no relay carries it out later, and says so (exit 130 / 1).
pub async fn request(
    cfg: &Config,
    kind: RequestKind,
    progress: Option<indicatif::ProgressBar>,
    deadline: Deadline,
    interrupt: &Interrupt,
) -> Result<u8, Failure> {
    let max_wait = deadline.total();
    let mut interrupted = interrupt.0.clone();
    if interrupted.is_shutdown() {
        // Between two requests of one command (`dlq replay --all`): the
        // next one is not submitted.
        eprintln!("interrupted: request not submitted");
        return Ok(INTERRUPTED);
    }
    let store = open_existing(cfg).await?;
    let consumer = cfg.relay.consumer_name.clone();
    if let Err(nothing) = operator::check_parked(&store, &consumer, &kind).await? {
        let flag = if nothing.field == "aggregate_id" { "--aggregate" } else { "--id" };
        return Err(BadInput(format!("{flag}: {}", nothing.message)).into());
    }
    let r = operator::submit(&store, &consumer, kind, &who()).await?;
    let bar = progress.unwrap_or_else(indicatif::ProgressBar::hidden);
    bar.set_message(format!("request {} submitted; waiting for the active relay", r.id));
    let ttl = Duration::from_millis(cfg.relay.lease_ttl_ms);
    // No live relay (no lease row, or a released one): carry it out here at once.
    let lease = store.lease_get(&consumer).await?;
    let unclaimed_after =
        if lease.as_ref().is_none_or(|l| l.holder.is_empty()) { Duration::ZERO } else { ttl + Duration::from_secs(2) };
    let on_change = |req: &RelayRequest| bar.set_message(format!("request {}: {}", req.id, req.status.as_str()));
    let waited = match wait_unless_interrupted(
        &store,
        (&consumer, r.id),
        (unclaimed_after, deadline.left()),
        on_change,
        &mut interrupted,
        &bar,
    )
    .await?
    {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let done = match waited {
        Waited::Finished(done) => done,
        Waited::TimedOut(p) => {
            bar.finish_and_clear();
            return out_of_time(&store, &p, max_wait).await;
        }
        Waited::Unclaimed(_) => {
            bar.set_message("no relay is running: carrying the request out here under the relay lease");
            let ended = loop {
                let ended = run_here(cfg, store.clone(), r.id, deadline, interrupted.clone()).await?;
                // A term can end before it reached this request (an older
                // one ended it: a rewind, taken over from a relay that died;
                // or the requests could not be read): another one, while
                // the request still waits and no relay took it meanwhile.
                if ended.is_some() || !still_unclaimed(&store, &consumer, r.id, &deadline).await? {
                    break ended;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            if let Some((left, code, held)) = ended {
                bar.finish_and_clear();
                let how = if code == INTERRUPTED { "interrupted" } else { "out of time" };
                return Ok(gave_up(&left, how, code, left_open(cfg, &left, held)));
            }
            // Done here, or (a relay started meanwhile) by that relay.
            let left = deadline.left();
            let waited =
                wait_unless_interrupted(&store, (&consumer, r.id), (left, left), on_change, &mut interrupted, &bar)
                    .await?;
            match waited {
                Err(code) => return Ok(code),
                Ok(Waited::Finished(d)) => d,
                Ok(Waited::Unclaimed(d) | Waited::TimedOut(d)) => {
                    bar.finish_and_clear();
                    return out_of_time(&store, &d, max_wait).await;
                }
            }
        }
    };
    bar.finish_and_clear();
    Ok(outcome(&done).unwrap_or(1))
}

/// Whether request `id` of `consumer` still waits for this CLI: pending,
/// time left, and no relay holds the lease (one that does carries it out).
async fn still_unclaimed(
    store: &DynStore,
    consumer: &str,
    id: uuid::Uuid,
    deadline: &Deadline,
) -> Result<bool, Failure> {
    if deadline.left().is_zero() {
        return Ok(false);
    }
    let pending = store.request_get(id).await?.is_some_and(|r| r.status == RequestStatus::Pending);
    Ok(pending && store.lease_get(consumer).await?.is_none_or(|l| l.holder.is_empty()))
}

/// `--timeout` ran out while request `p` waited on a relay. Still pending,
/// no relay claimed it (a live one usually claims within a second; one whose
/// holder died, its lease not expired yet, never does): it is withdrawn as
/// on an interrupt, else the next `outboxd run`, maybe days later, would
/// carry out what the operator gave up on. A claimed one is its relay's.
async fn out_of_time(store: &DynStore, p: &RelayRequest, max_wait: Duration) -> Result<u8, Failure> {
    if p.status == RequestStatus::Pending {
        let why = format!("not done within the CLI's --timeout ({max_wait:?})");
        let left = operator::withdraw(store, p.id, None, &why, false).await?;
        return Ok(gave_up(&left, "out of time", 1, false));
    }
    eprintln!(
        "request {} is still {} on the relay when --timeout ({max_wait:?}) ran out; see GET /relay/requests/{}",
        p.id,
        p.status.as_str(),
        p.id
    );
    Ok(1)
}

/// `operator::wait` (`limits`: unclaimed after, timeout), unless a signal
/// comes first (the installed handler keeps it from ending the process):
/// then the request is withdrawn and reported, and `Err` holds the exit code.
async fn wait_unless_interrupted(
    store: &DynStore,
    (consumer, id): (&str, uuid::Uuid),
    (unclaimed_after, max_wait): (Duration, Duration),
    on_change: impl FnMut(&RelayRequest),
    interrupted: &mut Shutdown,
    bar: &indicatif::ProgressBar,
) -> Result<Result<Waited, u8>, Failure> {
    tokio::select! {
        w = operator::wait(store, consumer, id, unclaimed_after, max_wait, on_change) => Ok(Ok(w?)),
        _ = interrupted.recv() => {
            bar.finish_and_clear();
            // Not claimed here (`held` None): a claimed request is the relay's.
            let left = operator::withdraw(store, id, None, "the CLI was interrupted", false).await?;
            Ok(Err(gave_up(&left, "interrupted", INTERRUPTED, false)))
        }
    }
}

/// Prints a finished request's outcome; its exit code (None: not finished).
fn outcome(done: &RelayRequest) -> Option<u8> {
    let result = done.result.clone().unwrap_or(serde_json::Value::Null);
    match done.status {
        RequestStatus::Done => {
            out!("{}", serde_json::json!({ "request": done.id, "status": "done", "result": result }));
            // Done, but some of what it chose did not go out (a dead letter
            // that is not an event, an aggregate the relay refused, its
            // park kept): the command did not do what was asked.
            match not_done(&result) {
                Some(what) => {
                    eprintln!(
                        "error: request {} done, but not all of it: {what}; see GET /relay/requests/{}",
                        done.id, done.id
                    );
                    Some(1)
                }
                None => Some(0),
            }
        }
        RequestStatus::Failed => {
            let why =
                result.get("error").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| result.to_string());
            let which = result.get("id").map(|id| format!(" (dead letter {})", id.as_str().unwrap_or(&id.to_string())));
            let partly = not_done(&result).map(|w| format!("; also {w}")).unwrap_or_default();
            eprintln!(
                "error: request {} failed{}: {why}{partly}; see GET /relay/requests/{}",
                done.id,
                which.unwrap_or_default(),
                done.id
            );
            Some(1)
        }
        RequestStatus::Pending | RequestStatus::Running => None,
    }
}

/// What a request's result says it could not carry out (its `failed`
/// list: `{id, error}` of dead letters, or aggregates), in one line.
fn not_done(result: &serde_json::Value) -> Option<String> {
    let failed = result.get("failed")?.as_array().filter(|f| !f.is_empty())?;
    let each: Vec<String> = failed
        .iter()
        .map(|f| match (f.get("id").or_else(|| f.get("aggregate_id")), f.get("error")) {
            (Some(id), Some(e)) => {
                format!("{} ({})", id.as_str().unwrap_or(&id.to_string()), e.as_str().unwrap_or(&e.to_string()))
            }
            _ => f.to_string(),
        })
        .collect();
    Some(format!("{} not replayed: {}", failed.len(), each.join(", ")))
}

fn exactly_once(cfg: &Config) -> bool {
    cfg.relay.delivery == DeliveryMode::ExactlyOnce
}

/// Whether `row` is an exactly-once request this CLI's own term (at lease
/// epoch `held`) began: the CLI leaves it open (`operator::withdraw`).
fn left_open(cfg: &Config, row: &RelayRequest, held: Option<i64>) -> bool {
    exactly_once(cfg) && row.status == RequestStatus::Running && held.is_some() && row.claimed_epoch == held
}

/// Says that `row` stays open (see [`left_open`]); `how` leads the line.
fn say_left_open(how: &str, row: &RelayRequest) {
    eprintln!(
        "{how}request {} stays open: exactly-once, its replay may have committed part of its events, which only its own resumption skips; the next relay term (outboxd run) carries it to its end; see GET /relay/requests/{}",
        row.id, row.id
    );
}

/// Reports what became of a request the CLI gave up on (`how`:
/// interrupted, out of time; `left_open`: see [`left_open`]); the exit code
/// (`code`, or the outcome's when it finished just before).
fn gave_up(left: &RelayRequest, how: &str, code: u8, left_open: bool) -> u8 {
    match left.status {
        _ if left_open => say_left_open(&format!("{how}: "), left),
        RequestStatus::Pending | RequestStatus::Running => eprintln!(
            "{how}: request {} is {} on the active relay, which carries it out; see GET /relay/requests/{}",
            left.id,
            left.status.as_str(),
            left.id
        ),
        _ if operator::is_withdrawn(left) => {
            eprintln!("{how}: request {} withdrawn; no relay will carry it out (submit it again)", left.id)
        }
        _ => return outcome(left).unwrap_or(code),
    }
    code
}

/// Takes the relay lease (waiting at most a few TTLs for a stale holder to
/// expire) and runs one requests-only relay term under it, then releases it.
/// The term ends when request `id` is done, the lease is lost, `deadline`
/// has passed or `interrupted` fires; in the last two cases the request is
/// withdrawn under the lease (before it is released; in exactly-once mode
/// one this term began stays open, `operator::withdraw`) and the row is
/// returned with the exit code (1 out of time, 130 interrupted) and the
/// lease epoch this CLI held (None: it never held it).
async fn run_here(
    cfg: &Config,
    store: DynStore,
    id: uuid::Uuid,
    deadline: Deadline,
    mut interrupted: Shutdown,
) -> Result<Option<(RelayRequest, u8, Option<i64>)>, Failure> {
    let max_wait = deadline.total();
    let consumer = cfg.relay.consumer_name.clone();
    let ttl = Duration::from_millis(cfg.relay.lease_ttl_ms);
    let mut stop = Trigger::new();
    let lease_store: Arc<dyn outboxd::store::lease::LeaseStore> = store.clone();
    let handle =
        keeper::spawn(lease_store, &consumer, &who(), ttl, Metrics::new(), Default::default(), stop.subscribe());
    let mut rx = handle.state();
    // Fired at the deadline or on a signal (first one wins): ends the term.
    let stop_term = Trigger::new();
    let end_term = stop_term.subscribe();
    let timer = tokio::spawn(async move {
        let code = tokio::select! {
            _ = tokio::time::sleep(deadline.left()) => 1,
            _ = interrupted.recv() => INTERRUPTED,
        };
        stop_term.fire();
        code
    });
    let take = tokio::time::timeout(ttl * 3, async {
        loop {
            if let Some(e) = rx.borrow_and_update().active_epoch() {
                return Some(e);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    });
    let mut gave = end_term.clone();
    let epoch = tokio::select! {
        e = take => e.ok().flatten(),
        _ = gave.recv() => None,
    };
    // The term's relay status: why a replay carried out here did not finish.
    let (status_tx, status) = tokio::sync::watch::channel(Default::default());
    let res = match epoch {
        None if end_term.is_shutdown() => Ok(()),
        None => {
            let holder = match handle.current() {
                LeaseState::Standby { holder, .. } => holder,
                _ => "another instance".into(),
            };
            eprintln!("the relay lease is held by {holder}, which keeps renewing it: leaving the request to it");
            Ok(())
        }
        Some(epoch) if cfg.store.backend == Backend::Cql => {
            // The Scylla CDC relay's request server, once, until done, the
            // lease is lost, or the CLI gives up (a delivery retries while Kafka is down).
            let end = Trigger::new();
            let until = end.subscribe();
            let mut lease = handle.state();
            let watcher = tokio::spawn(async move {
                let lost = async {
                    while lease.borrow_and_update().active_epoch() == Some(epoch) {
                        if lease.changed().await.is_err() {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = lost => {}
                    _ = gave.recv() => {}
                }
                end.fire();
            });
            let res = match outboxd::store::cql::CqlStore::connect(&cfg.store.cql).await {
                Ok(cql) => outboxd::relay::cdc::requests::serve_once(cql, cfg, epoch, until)
                    .await
                    .map_err(|e| Failure::from(anyhow::anyhow!("{e}"))),
                Err(e) => Err(Failure::from(anyhow::anyhow!("{e}"))),
            };
            watcher.abort();
            res
        }
        Some(epoch) => {
            let relay = Relay::new(Arc::new(cfg.clone()), store.clone(), Metrics::new(), StatusTx::new(status_tx))
                .with_fence(Fence { epoch, lease: handle.state() })
                .requests_only();
            let res = match cfg.relay.delivery {
                DeliveryMode::AtLeastOnce => relay.run(end_term.clone()).await,
                DeliveryMode::ExactlyOnce => relay.run_exactly_once(end_term.clone()).await,
            };
            res.map(|_| ()).map_err(|e| Failure::from(anyhow::anyhow!("{e}")))
        }
    };
    // Gave up (deadline or signal), or the term failed: withdraw the request
    // while the lease is still held, so no later relay carries it out.
    let gave_up_code = if end_term.is_shutdown() {
        Some(timer.await.unwrap_or(1))
    } else {
        timer.abort();
        None
    };
    let why = match (&res, gave_up_code) {
        (_, Some(INTERRUPTED)) => Some("the CLI was interrupted".to_string()),
        (_, Some(_)) => Some(format!("not done within the CLI's --timeout ({max_wait:?})")),
        (Err(e), None) => Some(format!("the CLI could not carry it out: {:#}", e.err)),
        (Ok(()), None) => None,
    };
    // (The CQL request server reports no broker state here.)
    if gave_up_code == Some(1) && epoch.is_some() && cfg.store.backend != Backend::Cql {
        unreachable_broker_note(cfg, &status.borrow());
    }
    let withdrawn = match why {
        Some(why) => Some(operator::withdraw(&store, id, epoch, &why, exactly_once(cfg)).await),
        None => None,
    };
    stop.fire();
    let _ = tokio::time::timeout(Duration::from_secs(3), stop.wait_drained()).await;
    if let (Err(_), Some(Ok(row))) = (&res, &withdrawn) {
        if left_open(cfg, row, epoch) {
            say_left_open("", row);
        }
    }
    res?;
    Ok(withdrawn.transpose()?.map(|row| (row, gave_up_code.unwrap_or(1), epoch)))
}

/// Out of time carrying a request out here: when this process never
/// reached the brokers, says so (the request only said "withdrawn").
fn unreachable_broker_note(cfg: &Config, status: &outboxd::relay::status::RelayStatus) {
    use outboxd::relay::producer::BrokerState;
    let why = match &status.broker {
        BrokerState::Reachable { .. } => return,
        BrokerState::Unreachable { error, .. } => error.clone(),
        BrokerState::Unknown => "no broker answered".to_string(),
    };
    eprintln!(
        "this process could not publish to kafka.brokers ({}): {why}; check that they are reachable from this host, or run the request where `outboxd run` runs",
        cfg.kafka.brokers
    );
}
