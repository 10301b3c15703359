//! A CDC feed of `event_store`: one consumer's reader, its progress and its
//! sink, opened and run until shutdown.
//!
//! Guarantees:
//! - Refused with `CdcError::Unavailable` when the server has no CDC log
//!   (Apache Cassandra, or CDC off), before anything is read.
//! - Progress lives in the consumer's partition of `relay_leases` (its own
//!   saver: never backwards, fenced by `epoch` when given, no CREATE), taken
//!   over once from the consumer's former scylla-cdc table if it has none.
//! - `run` reads with [`run_reader`] (start point, catch-up, normal run)
//!   until `shutdown`, then stops the reader gracefully (finish the window,
//!   save progress) within 10 s, else abandons it: deliveries in flight are
//!   dropped unconfirmed and re-sent after a restart (same `ce_id`).
//! - A reader that stalls (`watchdog`) is restarted after
//!   `stall_restart_ms`, counted in the feed's restart counter when given.

use prometheus::IntCounter;
use scylla::client::session::Session;
use std::sync::Arc;
use std::time::Duration;

use super::consumer::{EnvelopeSink, SinkConsumerFactory};
use super::rewind::RewindRx;
use super::runner::{run_reader, RunnerSettings};
use super::saver::LeaseCheckpointSaver;
use super::start::ReadSettings;
use super::CdcError;
use crate::config::CdcConfig;
use crate::shutdown::{Shutdown, Trigger};
use crate::store::cql::cdc_log_exists;
use crate::store::cql::cdc_options::progress_row_ttl;

/// How long a graceful stop may take before the reader is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Which consumer a feed reads for.
#[derive(Debug, Clone, Copy)]
pub struct FeedSpec<'a> {
    /// The consumer name: its partition of `relay_leases`.
    pub consumer: &'a str,
    /// The lease epoch that fences progress writes (`None`: unfenced).
    pub epoch: Option<i64>,
    /// The table scylla-cdc's own saver used for this consumer before.
    pub legacy_table: Option<&'a str>,
}

/// The reader settings of `cfg` for `keyspace`.
pub fn runner_settings(keyspace: &str, cfg: &CdcConfig) -> RunnerSettings {
    let ms = Duration::from_millis;
    RunnerSettings {
        keyspace: keyspace.to_string(),
        log_ttl: cfg.log_ttl(),
        skew: ms(cfg.clock_skew_allowance_ms),
        safety_interval: ms(cfg.safety_interval_ms),
        normal: ReadSettings { window: ms(cfg.window_size_ms), sleep: ms(cfg.sleep_interval_ms) },
        catch_up: ReadSettings { window: ms(cfg.catch_up_window_ms), sleep: ms(cfg.catch_up_sleep_ms) },
        catch_up_threshold: ms(cfg.catch_up_threshold_ms),
        checkpoint_interval: ms(cfg.checkpoint_interval_ms),
        stop_grace: STOP_GRACE,
        stall_restart: cfg.stall_restart(),
    }
}

/// One consumer's CDC feed.
pub struct CdcFeed {
    session: Arc<Session>,
    settings: RunnerSettings,
    saver: Arc<LeaseCheckpointSaver>,
    restarts: Option<IntCounter>,
}

impl CdcFeed {
    pub async fn open(
        session: Arc<Session>,
        keyspace: &str,
        cfg: &CdcConfig,
        spec: FeedSpec<'_>,
    ) -> Result<CdcFeed, CdcError> {
        let keyspace = keyspace.to_ascii_lowercase();
        if !cdc_log_exists(&session, &keyspace).await? {
            return Err(CdcError::Unavailable { keyspace });
        }
        let row_ttl = progress_row_ttl(cfg.log_ttl());
        let saver = LeaseCheckpointSaver::open(
            session.clone(),
            &keyspace,
            spec.consumer,
            spec.epoch,
            row_ttl,
            spec.legacy_table,
        )
        .await?;
        Ok(CdcFeed { session, settings: runner_settings(&keyspace, cfg), saver, restarts: None })
    }

    /// The feed's progress (the oldest per-stream progress is the CDC lag).
    pub fn saver(&self) -> &Arc<LeaseCheckpointSaver> {
        &self.saver
    }

    /// Counts the stall watchdog's reader restarts in `restarts`.
    pub fn count_restarts(mut self, restarts: IntCounter) -> CdcFeed {
        self.restarts = Some(restarts);
        self
    }

    /// Reads the log into `sink` until `shutdown` (see the module doc),
    /// carrying out the operator rewinds sent on `rewinds` (the relay's feed).
    pub async fn run<S: EnvelopeSink>(
        &self,
        sink: Arc<S>,
        rewinds: Option<RewindRx>,
        shutdown: Shutdown,
    ) -> Result<(), CdcError> {
        let abandon = Trigger::new();
        let factory = SinkConsumerFactory::new(sink, Some(self.saver.clone()), abandon.subscribe());
        let consumer = self.saver.name().to_string();
        tracing::info!(keyspace = %self.settings.keyspace, %consumer, "CDC feed of {}.event_store starting", self.settings.keyspace);
        let res = run_reader(
            self.session.clone(),
            self.settings.clone(),
            factory,
            self.saver.clone(),
            self.restarts.clone(),
            rewinds,
            shutdown,
        )
        .await;
        abandon.fire();
        match &res {
            Ok(()) => tracing::info!(%consumer, "CDC feed stopped"),
            Err(e) => tracing::error!(%consumer, error = %e, "CDC feed failed"),
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against Apache Cassandra (`CASSANDRA_URI`): no Scylla CDC log, a clear error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_on_cassandra_reports_cdc_unavailable() {
        let Some(store) = super::super::testkit::live_store("CDC feed on Cassandra").await else { return };
        assert!(!store.is_scylla() && !store.cdc_enabled());
        let spec = FeedSpec { consumer: "kafka-relay", epoch: None, legacy_table: None };
        let err = CdcFeed::open(store.session(), store.keyspace(), &CdcConfig::default(), spec)
            .await
            .err()
            .expect("no CDC log");
        assert!(matches!(err, CdcError::Unavailable { .. }), "{err:?}");
        let want = format!("CDC feed needs ScyllaDB with cdc enabled on {}.event_store", store.keyspace());
        assert!(err.to_string().contains(&want), "{err}");
    }

    #[test]
    fn settings_come_from_the_config() {
        let s = runner_settings("ks", &CdcConfig::default());
        assert_eq!(s.safety_interval, Duration::from_secs(30));
        assert_eq!(s.normal, ReadSettings { window: Duration::from_secs(30), sleep: Duration::from_secs(1) });
        assert_eq!(s.catch_up, ReadSettings { window: Duration::from_secs(300), sleep: Duration::from_millis(100) });
        assert_eq!((s.log_ttl, s.skew), (Duration::from_secs(86_400), Duration::from_secs(10)));
        assert_eq!(s.stall_restart, Duration::from_secs(300));
        let off = CdcConfig { stall_restart_ms: Some(0), ..CdcConfig::default() };
        assert_eq!(runner_settings("ks", &off).stall_restart, Duration::ZERO, "0: never");
    }
}
