//! Starting and stopping scylla-cdc readers of `event_store`'s CDC log.
//!
//! Guarantee: a reader resumes from its saved progress (its own checkpoint
//! table), never starts before `max(now - 24 h, cdc:origin - 1 min)`, and is
//! refused with `CdcError::Unavailable` when the server has no CDC log; the
//! handle resolves `Ok` after `CDCLogReader::stop` or shutdown and `Err` when
//! scylla-cdc failed (the caller restarts it).

use scylla::client::session::Session;
use scylla_cdc::checkpoints::TableBackedCheckpointSaver;
use scylla_cdc::consumer::ConsumerFactory;
use scylla_cdc::log_reader::{CDCLogReader, CDCLogReaderBuilder};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

use super::consumer::{EnvelopeSink, SinkConsumerFactory};
use super::{CdcError, CDC_CHECKPOINT_TABLE, CDC_LOG_TTL, EVENT_TABLE, ORIGIN_MARGIN};
use crate::config::CdcConfig;
use crate::relay::deliver::Deliverer;
use crate::shutdown::{Shutdown, Trigger};

/// How long a graceful stop may take before the reader is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(10);
use crate::store::cql::{cdc_log_exists, CDC_ORIGIN_CHECKPOINT};

/// Resolves when the reader ends: `Ok` after `CDCLogReader::stop` or
/// shutdown, `Err` when scylla-cdc failed (the relay should restart it).
pub type CdcReaderHandle = JoinHandle<Result<(), CdcError>>;

fn is_shutdown(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref::<CdcError>(), Some(CdcError::Shutdown)))
}

/// Where a reader starts when a stream has no saved progress (see module doc).
async fn start_timestamp(session: &Session, keyspace: &str) -> Duration {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let floor = now.saturating_sub(CDC_LOG_TTL);
    let origin = session
        .query_unpaged(
            format!("SELECT position FROM {keyspace}.checkpoints WHERE consumer = ?"),
            (CDC_ORIGIN_CHECKPOINT,),
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_rows_result().map_err(|e| e.to_string()))
        .and_then(|r| r.maybe_first_row::<(Option<i64>,)>().map_err(|e| e.to_string()));
    match origin {
        Ok(Some((Some(ms),))) if ms > 0 => floor.max(Duration::from_millis(ms as u64).saturating_sub(ORIGIN_MARGIN)),
        Ok(_) => floor,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the CDC origin; reading the CDC log from {} h back", CDC_LOG_TTL.as_secs() / 3600);
            floor
        }
    }
}

/// Starts reading the CDC log of `<keyspace>.event_store` and delivering
/// every event through `deliverer`, resuming from scylla-cdc's saved progress
/// (`<keyspace>.cdc_checkpoints`, saved every `checkpoint_interval_ms`).
///
/// Stop it with `CDCLogReader::stop` (finishes the current window, saves
/// progress) or by firing `shutdown` (deliveries in flight are abandoned
/// unconfirmed and the reader is cancelled; progress stays at the last saved
/// window start). Await the handle in both cases.
pub async fn start_cdc_reader(
    session: Arc<Session>,
    keyspace: &str,
    cfg: &CdcConfig,
    deliverer: Arc<Deliverer>,
    shutdown: Shutdown,
) -> Result<(CDCLogReader, CdcReaderHandle), CdcError> {
    let factory = Arc::new(SinkConsumerFactory::new(deliverer.clone(), shutdown.clone()));
    let (reader, remote) = build_reader(session, keyspace, cfg, CDC_CHECKPOINT_TABLE, factory).await?;
    deliverer.update(|s| s.running = true);
    let handle = spawn_reader(remote, shutdown, "CDC reader", move |res| {
        deliverer.update(|s| {
            s.running = false;
            if let Err(e) = res {
                s.last_error = Some(e.to_string());
            }
        })
    });
    Ok((reader, handle))
}

/// Like [`start_cdc_reader`], but every event goes to `sink` and progress is
/// kept in `<keyspace>.<checkpoint_table>`, so this reader is independent of
/// the relay's (used by the read-model projection on CQL).
pub async fn start_cdc_sink_reader<S: EnvelopeSink>(
    session: Arc<Session>,
    keyspace: &str,
    cfg: &CdcConfig,
    checkpoint_table: &str,
    sink: Arc<S>,
    shutdown: Shutdown,
) -> Result<(CDCLogReader, CdcReaderHandle), CdcError> {
    let factory = Arc::new(SinkConsumerFactory::new(sink, shutdown.clone()));
    let (reader, remote) = build_reader(session, keyspace, cfg, checkpoint_table, factory).await?;
    let handle = spawn_reader(remote, shutdown, "CDC projection reader", |_| {});
    Ok((reader, handle))
}

/// Runs a started reader until `shutdown`, then stops it gracefully
/// (`CDCLogReader::stop`: finish the window, save progress). If that takes
/// longer than 10 s it is abandoned (`abandon`, the shutdown the reader was
/// started with, fires): progress stays at the last saved window, whose tail
/// is read again after a restart. `what` names the reader in logs.
pub async fn run_until_shutdown(
    mut reader: CDCLogReader,
    mut handle: CdcReaderHandle,
    abandon: Trigger,
    mut shutdown: Shutdown,
    what: &str,
) -> Result<(), CdcError> {
    let joined =
        |r: Result<Result<(), CdcError>, tokio::task::JoinError>| r.map_err(|e| CdcError::Reader(e.to_string()))?;
    tokio::select! {
        r = &mut handle => return joined(r),
        _ = shutdown.recv() => {}
    }
    reader.stop();
    match tokio::time::timeout(STOP_GRACE, &mut handle).await {
        Ok(r) => joined(r),
        Err(_) => {
            tracing::warn!("{what} did not stop within {STOP_GRACE:?}; abandoning it (the unsaved tail is read again after restart)");
            abandon.fire();
            let _ = handle.await;
            Ok(())
        }
    }
}

type RemoteReader = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

async fn build_reader(
    session: Arc<Session>,
    keyspace: &str,
    cfg: &CdcConfig,
    checkpoint_table: &str,
    factory: Arc<dyn ConsumerFactory>,
) -> Result<(CDCLogReader, RemoteReader), CdcError> {
    let keyspace = keyspace.to_ascii_lowercase();
    if !cdc_log_exists(&session, &keyspace).await? {
        return Err(CdcError::Unavailable { keyspace });
    }
    let saver = TableBackedCheckpointSaver::new_with_default_ttl(session.clone(), &keyspace, checkpoint_table)
        .await
        .map_err(|e| CdcError::Reader(format!("checkpoint table {keyspace}.{checkpoint_table}: {e:#}")))?;
    let start = start_timestamp(&session, &keyspace).await;
    let ms = |v: u64| Duration::from_millis(v.max(1));
    let (reader, remote) = CDCLogReaderBuilder::new()
        .session(session)
        .keyspace(&keyspace)
        .table_name(EVENT_TABLE)
        .start_timestamp(start)
        .window_size(ms(cfg.window_size_ms))
        .safety_interval(ms(cfg.safety_interval_ms))
        .sleep_interval(ms(cfg.sleep_interval_ms))
        .consumer_factory(factory)
        .checkpoint_saver(Arc::new(saver))
        .should_load_progress(true)
        .should_save_progress(true)
        .pause_between_saves(ms(cfg.checkpoint_interval_ms))
        .build()
        .await
        .map_err(|e| CdcError::Reader(format!("cannot start reading {keyspace}.{EVENT_TABLE}: {e:#}")))?;
    tracing::info!(%keyspace, checkpoint_table, start_ms = start.as_millis() as u64, "CDC reader started on {keyspace}.{EVENT_TABLE}");
    Ok((reader, Box::pin(remote)))
}

fn spawn_reader(
    remote: RemoteReader,
    shutdown: Shutdown,
    what: &'static str,
    on_end: impl FnOnce(&Result<(), CdcError>) + Send + 'static,
) -> CdcReaderHandle {
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        let res = tokio::select! {
            r = remote => match r {
                Ok(()) => Ok(()),
                Err(e) if is_shutdown(&e) => Ok(()),
                Err(e) => Err(CdcError::Reader(format!("{e:#}"))),
            },
            // Dropping `remote` cancels the reader and its stream tasks.
            _ = shutdown.recv() => Ok(()),
        };
        on_end(&res);
        match &res {
            Ok(()) => tracing::info!("{what} stopped"),
            Err(e) => tracing::error!(error = %e, "{what} failed"),
        }
        res
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// Against Apache Cassandra (`CASSANDRA_URI`): no Scylla CDC log, a clear error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reader_on_cassandra_reports_cdc_unavailable() {
        use crate::store::EventStore;
        let Some(uri) = std::env::var("CASSANDRA_URI").ok().filter(|s| !s.is_empty()) else {
            eprintln!("SKIPPED: set CASSANDRA_URI to check the CDC reader's error on Apache Cassandra");
            return;
        };
        let keyspace = format!("c_{}", Uuid::now_v7().simple());
        let cfg = crate::config::CqlConfig { uri, keyspace: keyspace.clone(), ..Default::default() };
        let store = crate::store::cql::CqlStore::connect(&cfg).await.unwrap();
        store.migrate().await.unwrap();
        assert!(!store.is_scylla() && !store.cdc_enabled());
        let sink: Arc<dyn crate::relay::deliver::DeadLetterSink> = Arc::new(store.clone() as crate::store::DynStore);
        let (status, _) = tokio::sync::watch::channel(Default::default());
        let deliverer = Arc::new(
            Deliverer::new(&crate::config::Config::default(), sink, crate::metrics::Metrics::new(), status).unwrap(),
        );
        let trigger = crate::shutdown::Trigger::new();
        let err = start_cdc_reader(store.session(), &keyspace, &cfg.cdc, deliverer, trigger.subscribe())
            .await
            .err()
            .expect("Cassandra has no CDC log");
        assert!(matches!(err, CdcError::Unavailable { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("CDC feed needs ScyllaDB with cdc enabled on {keyspace}.event_store")),
            "{err}"
        );
    }

    #[test]
    fn unavailable_error_names_the_table() {
        let e = CdcError::Unavailable { keyspace: "outbox".into() };
        assert!(e.to_string().starts_with("CDC feed needs ScyllaDB with cdc enabled on outbox.event_store"), "{e}");
        assert!(is_shutdown(&anyhow::Error::from(CdcError::Shutdown).context("stream reader")));
        assert!(!is_shutdown(&anyhow::anyhow!("boom")));
    }
}
