//! The feed reader: a task that reads the store's feed page by page after a
//! position and hands the pages to the relay loop through a small bounded
//! channel (the loop takes a page only when its window has room).
//!
//! Guarantees:
//! - Never stalls: a failed read (store unavailable, busy, file handles
//!   exhausted) is retried with capped exponential backoff, counted in
//!   `relay_feed_errors_total`, reported in the relay status (`feed`
//!   failing since ..., last error), and reading resumes by itself when the
//!   store answers again. The only ways out are shutdown and the receiver
//!   going away.
//! - Pages are decoded row by row by the store: an unreadable row arrives as
//!   `FeedRow::Unreadable` (the loop parks its aggregate), it never fails its page.
//! - In order, without gaps: the next read starts after the last row handed out.
//! - When caught up it waits for the store's commit notification (this
//!   process's appends), a cross-process change signal (`store.changes()`),
//!   or `poll_interval`, whichever comes first.

use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::relay::retry::Backoff;
use crate::relay::status::StatusTx;
use crate::shutdown::Shutdown;
use crate::store::feed::FeedRow;
use crate::store::DynStore;

#[derive(Clone)]
pub struct FeedReader {
    pub store: DynStore,
    /// Read rows with a position greater than this.
    pub after: i64,
    pub page_size: usize,
    pub poll_interval: Duration,
    pub backoff: Backoff,
    pub status: StatusTx,
    pub errors: prometheus::IntCounter,
}

/// Starts the reader; pages arrive on the receiver (at most `depth` pages buffered).
pub fn spawn(reader: FeedReader, depth: usize, shutdown: Shutdown) -> mpsc::Receiver<Vec<FeedRow>> {
    let (tx, rx) = mpsc::channel(depth.max(1));
    tokio::spawn(reader.run(tx, shutdown));
    rx
}

impl FeedReader {
    async fn run(mut self, tx: mpsc::Sender<Vec<FeedRow>>, mut shutdown: Shutdown) {
        let mut wake = self.store.subscribe();
        let mut failures: u32 = 0;
        loop {
            if shutdown.is_shutdown() || tx.is_closed() {
                return;
            }
            match self.store.read_feed(self.after, self.page_size).await {
                Ok(rows) => {
                    if failures > 0 {
                        tracing::info!(after = self.after, failures, "relay reads the store feed again");
                        failures = 0;
                    }
                    self.status.feed_ok();
                    if rows.is_empty() {
                        if !wait_for_more(&mut wake, self.poll_interval, &mut shutdown).await {
                            return;
                        }
                        continue;
                    }
                    self.after = rows.last().map(FeedRow::position).unwrap_or(self.after);
                    tokio::select! {
                        r = tx.send(rows) => if r.is_err() { return },
                        _ = shutdown.recv() => return,
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.errors.inc();
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, after = self.after, failures, "relay cannot read the store feed; retrying");
                    }
                    self.status.feed_failed(e.to_string());
                    if !shutdown.sleep(self.backoff.delay(failures.min(16))).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits for a commit notification or the poll interval; false on shutdown.
async fn wait_for_more(wake: &mut Option<watch::Receiver<i64>>, poll: Duration, shutdown: &mut Shutdown) -> bool {
    let notified = async {
        match wake.as_mut() {
            Some(w) => {
                if w.changed().await.is_err() {
                    // The store is gone; fall back to polling.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = notified => true,
        _ = tokio::time::sleep(poll) => true,
        _ = shutdown.recv() => false,
    }
}

/// Starts (and restarts) the feed reader.
pub(crate) struct FeedHandle {
    template: FeedReader,
    stop: Shutdown,
}

impl FeedHandle {
    pub(crate) fn new(template: FeedReader, stop: Shutdown) -> FeedHandle {
        FeedHandle { template, stop }
    }

    pub(crate) fn respawn(&self, after: i64) -> mpsc::Receiver<Vec<FeedRow>> {
        let mut r = self.template.clone();
        r.after = after;
        spawn(r, 2, self.stop.clone())
    }
}
