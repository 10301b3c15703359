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
//! - It waits with visible progress and prints the outcome; exit 0 when
//!   done, 1 when the request failed or is still pending at the timeout.

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

use super::{open, Failure};

/// How long a request may run on the relay before the CLI gives up waiting.
const MAX_WAIT: Duration = Duration::from_secs(600);

fn who() -> String {
    format!("cli@{}", outboxd::daemon::instance_id(&Config::default()))
}

/// Submits `kind`, waits for it (carrying it out here when no relay runs), prints the outcome.
pub async fn request(cfg: &Config, kind: RequestKind, progress: Option<indicatif::ProgressBar>) -> Result<u8, Failure> {
    let store = open(cfg).await?;
    let consumer = cfg.relay.consumer_name.clone();
    let r = operator::submit(&store, &consumer, kind, &who()).await?;
    let bar = progress.unwrap_or_else(indicatif::ProgressBar::hidden);
    bar.set_message(format!("request {} submitted; waiting for the active relay", r.id));
    let ttl = Duration::from_millis(cfg.relay.lease_ttl_ms);
    // No live relay (no lease row, or a released one): carry it out here at once.
    let lease = store.lease_get(&consumer).await?;
    let unclaimed_after =
        if lease.as_ref().is_none_or(|l| l.holder.is_empty()) { Duration::ZERO } else { ttl + Duration::from_secs(2) };
    let on_change = |req: &RelayRequest| bar.set_message(format!("request {}: {}", req.id, req.status.as_str()));
    let waited = operator::wait(&store, r.id, unclaimed_after, MAX_WAIT, on_change).await?;
    let done = match waited {
        Waited::Finished(done) => done,
        Waited::TimedOut(p) => {
            bar.finish_and_clear();
            eprintln!(
                "request {} is still {} on the relay after {MAX_WAIT:?}; see GET /relay/requests/{}",
                p.id,
                p.status.as_str(),
                p.id
            );
            return Ok(1);
        }
        Waited::Unclaimed(_) => {
            bar.set_message("no relay is running: carrying the request out here under the relay lease");
            run_here(cfg, store.clone()).await?;
            // Done here, or (a relay started meanwhile) by that relay.
            match operator::wait(&store, r.id, MAX_WAIT, MAX_WAIT, on_change).await? {
                Waited::Finished(d) => d,
                Waited::Unclaimed(d) | Waited::TimedOut(d) => {
                    bar.finish_and_clear();
                    eprintln!("request {} is still {} after {MAX_WAIT:?}", d.id, d.status.as_str());
                    return Ok(1);
                }
            }
        }
    };
    bar.finish_and_clear();
    let result = done.result.clone().unwrap_or(serde_json::Value::Null);
    match done.status {
        RequestStatus::Done => {
            println!("{}", serde_json::json!({ "request": done.id, "status": "done", "result": result }));
            Ok(0)
        }
        _ => {
            let why =
                result.get("error").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| result.to_string());
            eprintln!("error: request {} failed: {why}", done.id);
            Ok(1)
        }
    }
}

/// Takes the relay lease (waiting at most a few TTLs for a stale holder to
/// expire) and runs one requests-only relay term under it, then releases it.
async fn run_here(cfg: &Config, store: DynStore) -> Result<(), Failure> {
    let consumer = cfg.relay.consumer_name.clone();
    let ttl = Duration::from_millis(cfg.relay.lease_ttl_ms);
    let mut stop = Trigger::new();
    let lease_store: Arc<dyn outboxd::store::lease::LeaseStore> = store.clone();
    let handle =
        keeper::spawn(lease_store, &consumer, &who(), ttl, Metrics::new(), Default::default(), stop.subscribe());
    let mut rx = handle.state();
    let epoch = tokio::time::timeout(ttl * 3, async {
        loop {
            if let Some(e) = rx.borrow_and_update().active_epoch() {
                return Some(e);
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten();
    let res = match epoch {
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
            // lease is lost, or MAX_WAIT (a delivery retries while Kafka is down).
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
                let _ = tokio::time::timeout(MAX_WAIT, lost).await;
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
            let (tx, _) = tokio::sync::watch::channel(Default::default());
            let relay = Relay::new(Arc::new(cfg.clone()), store, Metrics::new(), StatusTx::new(tx))
                .with_fence(Fence { epoch, lease: handle.state() })
                .requests_only();
            let res = match cfg.relay.delivery {
                DeliveryMode::AtLeastOnce => relay.run(Shutdown::never()).await,
                DeliveryMode::ExactlyOnce => relay.run_exactly_once(Shutdown::never()).await,
            };
            res.map(|_| ()).map_err(|e| Failure::from(anyhow::anyhow!("{e}")))
        }
    };
    stop.fire();
    let _ = tokio::time::timeout(Duration::from_secs(3), stop.wait_drained()).await;
    res
}
