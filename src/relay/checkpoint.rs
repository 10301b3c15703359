//! The end of a relay term's work: persisting the watermark (fenced by the
//! lease epoch) and finishing a term (shutdown, lease loss, rewind).
//!
//! Guarantees: the checkpoint moves only to the window's watermark (every
//! event before it confirmed or durably parked); a write refused because
//! another instance holds the lease purges the producer and ends the term;
//! on shutdown in-flight deliveries settle (bounded by the message timeout)
//! before the last persist; a rewind moves the checkpoint back only after
//! the window has drained.

use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::relay::pipeline::{Exit, RelayError};
use crate::relay::producer::Completion;
use crate::relay::run::{Clock, Run};
use crate::store::requests::RequestStatus;
use crate::store::StoreError;

/// How often a busy relay persists its watermark.
const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// Fault injection (`OUTBOXD_ABORT_AT`): the process aborts at the first
/// persist call of a term that has confirmed progress (written or not).
pub const CRASH_AFTER_PROGRESS: &str = "after_first_progress";

impl Run {
    /// Persists the watermark: the term's first progress at once, then every
    /// 200 ms while busy, when idle, or when forced. The first at once: a
    /// relay that dies soon after it took over (a crash loop, a quick second
    /// failover) still moves the checkpoint past what it delivered, instead
    /// of every successor publishing the same backlog again.
    pub(super) async fn persist(&mut self, force: bool) {
        let wm = self.window.watermark();
        if wm <= self.checkpoint {
            return;
        }
        let recent = self.last_persist.is_some_and(|t| t.elapsed() < PERSIST_EVERY);
        if !force && !self.window.is_empty() && recent {
            self.relay.pause.crash_point(CRASH_AFTER_PROGRESS);
            return;
        }
        self.last_persist = Some(Instant::now());
        match self.relay.write_checkpoint(wm).await {
            Ok(()) => {
                self.checkpoint = wm;
                self.relay.metrics.relay_checkpoint_position.set(wm);
                self.relay.status.checkpoint(wm);
                if self.window.is_empty() {
                    self.relay.status.flush();
                }
                self.relay.pause.crash_point(CRASH_AFTER_PROGRESS);
            }
            Err(StoreError::Fenced { .. }) => {
                tracing::warn!(consumer = %self.relay.name(), position = wm, "checkpoint write refused: another instance holds the relay lease; stepping down");
                self.step_down();
            }
            Err(e) => {
                tracing::warn!(error = %e, position = wm, "cannot persist the relay checkpoint; will retry");
                self.relay.status.error(format!("cannot persist the checkpoint: {e}"));
            }
        }
    }

    /// Ends the term: on shutdown, lets in-flight deliveries settle (bounded) and persists.
    pub(super) async fn finish(
        &mut self,
        exit: Exit,
        completions: &mut mpsc::UnboundedReceiver<Completion>,
    ) -> Result<Exit, RelayError> {
        if exit == Exit::LeaseLost {
            self.producer.purge();
            return Ok(exit);
        }
        let deadline = Duration::from_millis(self.relay.config.kafka.message_timeout_ms)
            + Duration::from_millis(self.relay.cfg.retry.max_backoff_ms.max(1000));
        let drain = async {
            while self.window.in_flight() > 0 {
                match completions.recv().await {
                    Some(c) => {
                        if self.window.state(c.token) != Some(crate::relay::window::State::InFlight) {
                            continue;
                        }
                        match c.result {
                            Ok(_) => {
                                if let Some(item) = self.window.confirm(c.token) {
                                    self.confirmed(c.token, item, Clock::now()).await;
                                }
                            }
                            Err(_) => {
                                self.window.fail(c.token);
                            }
                        }
                    }
                    None => break,
                }
            }
        };
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!("relay stop: in-flight deliveries did not settle in time; they are re-sent after restart");
        }
        if let Exit::Rewound(to) = exit {
            // Everything after `to` is published again by the next term (same ce_ids).
            let request = self.rewind.take();
            return match self.relay.write_checkpoint(to).await {
                Ok(()) => {
                    self.relay.status.checkpoint(to);
                    self.relay.metrics.relay_checkpoint_position.set(to);
                    self.relay.metrics.relay_rewinds.inc();
                    if let Some((id, from)) = request {
                        let result = serde_json::json!({ "rewound_from": from, "rewound_to": to });
                        self.finish_request(id, RequestStatus::Done, result).await;
                    }
                    Ok(exit)
                }
                // The request stays running at this epoch: the next leader takes it over.
                Err(StoreError::Fenced { .. }) => Ok(Exit::LeaseLost),
                Err(e) => {
                    tracing::error!(error = %e, to, "cannot move the checkpoint back; the rewind did not happen");
                    if let Some((id, _)) = request {
                        let result =
                            serde_json::json!({ "error": format!("the checkpoint could not be moved back: {e}") });
                        self.finish_request(id, RequestStatus::Failed, result).await;
                    }
                    // Nothing was rewound: the deliveries confirmed meanwhile
                    // are persisted if the store takes it, and the term ends
                    // as a failed one (not "rewound": the runner would log a
                    // rewind that did not happen), the next starting from the
                    // persisted checkpoint.
                    self.persist(true).await;
                    if self.exit.take() == Some(Exit::LeaseLost) {
                        return Ok(Exit::LeaseLost);
                    }
                    Err(RelayError::Store(format!(
                        "the rewind to position {to} did not happen: the checkpoint could not be moved back: {e}"
                    )))
                }
            };
        }
        self.persist(true).await;
        if self.exit.take() == Some(Exit::LeaseLost) {
            return Ok(Exit::LeaseLost);
        }
        let _ = self.producer.flush(Duration::from_secs(2)).await;
        self.relay.status.flush();
        tracing::info!(checkpoint = self.checkpoint, "relay stopped");
        Ok(exit)
    }
}
