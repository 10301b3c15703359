//! The runner with a real scylla-cdc reader stuck inside scylla-cdc: against
//! Apache Cassandra (`CASSANDRA_URI`), which has no CDC generation tables,
//! scylla-cdc's generation fetcher retries its failing query forever and the
//! reader waits for a first generation that never comes (a Scylla that does
//! not answer its queries). The stall watchdog restarts it, counts each
//! restart, and shutdown still ends the runner afterwards. And a reader
//! stopped by its sink's fencing ends the feed as fenced.

use super::*;
use crate::envelope::EventEnvelope;
use crate::relay::cdc::consumer::{EnvelopeSink, SinkConsumerFactory};
use crate::relay::cdc::testkit::live_store;
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts events; a stuck reader must deliver none.
#[derive(Default)]
struct Counted(AtomicUsize);

#[async_trait]
impl EnvelopeSink for Counted {
    async fn handle(&self, _: EventEnvelope, _: &mut Shutdown) -> Result<(), CdcError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_stuck_inside_scylla_cdc_is_restarted_and_shutdown_still_ends_the_runner() {
    let Some(store) = live_store("CDC runner: a reader stuck inside scylla-cdc").await else { return };
    let day = Duration::from_secs(86_400);
    let saver =
        LeaseCheckpointSaver::open(store.session(), store.keyspace(), "kafka-relay", None, day, None).await.unwrap();
    let ms = Duration::from_millis;
    let read = ReadSettings { window: ms(500), sleep: ms(100) };
    // Below the configuration's floor (60 s), so the test takes seconds.
    let settings = RunnerSettings {
        keyspace: store.keyspace().to_string(),
        log_ttl: day,
        skew: ms(0),
        safety_interval: ms(100),
        normal: read,
        catch_up: read,
        catch_up_threshold: Duration::from_secs(3_600),
        checkpoint_interval: ms(200),
        stop_grace: Duration::from_secs(2),
        stall_restart: Duration::from_secs(2),
    };
    let restarts = IntCounter::new("cdc_reader_restarts_test", "restarts").unwrap();
    let sink = Arc::new(Counted::default());
    let (abandon, shutdown) = (Trigger::new(), Trigger::new());
    let factory = SinkConsumerFactory::new(sink.clone(), Some(saver.clone()), abandon.subscribe());
    let runner = tokio::spawn(run_reader(
        store.session(),
        settings,
        factory,
        saver.clone(),
        Some(restarts.clone()),
        None,
        shutdown.subscribe(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while restarts.get() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "restarted {} times in 60 s", restarts.get());
        assert!(!runner.is_finished(), "the runner must keep going after a restart");
        tokio::time::sleep(ms(100)).await;
    }
    shutdown.fire();
    let ended = tokio::time::timeout(Duration::from_secs(10), runner).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "shutdown ends the runner after its restarts: {ended:?}");
    assert_eq!(sink.0.load(Ordering::SeqCst), 0);
    assert_eq!(saver.oldest_progress_ms(), None, "no progress invented");
}

/// A reader stopped by its sink's `CdcError::Fenced` (the relay's park or
/// dead-letter write refused: another instance holds the lease) ends the
/// feed as fenced, before the saver itself had a write refused (it had
/// nothing to write), so the lease gate sees a takeover, not a crash.
#[test]
fn a_reader_stopped_by_its_sinks_fencing_ends_the_feed_as_fenced() {
    let saved = Flushed::Saved(0);
    let fenced: anyhow::Result<()> = Err(anyhow::Error::from(CdcError::Fenced { consumer: "kafka-relay".into() }));
    let end = run_end(&fenced, false, saved, false, false, None);
    assert_eq!(after_run(&end), AfterRun::Fenced, "{end:?}");
    let wrapped = fenced.map_err(|e| e.context("Session returned an error while fetching CDC rows."));
    assert_eq!(after_run(&run_end(&wrapped, false, saved, false, false, Some(9))), AfterRun::Fenced);
    // The other outcomes are as before.
    let shut: anyhow::Result<()> = Err(CdcError::Shutdown.into());
    assert_eq!(after_run(&run_end(&shut, false, saved, false, false, None)), AfterRun::Stop);
    let failed: anyhow::Result<()> = Err(anyhow::anyhow!("read timeout"));
    assert_eq!(after_run(&run_end(&failed, false, saved, false, false, None)), AfterRun::Fail);
    assert_eq!(after_run(&run_end(&Ok(()), false, saved, false, false, Some(9))), AfterRun::CaughtUp(9));
    let refused = Flushed::Fenced { current_epoch: Some(2) };
    assert_eq!(after_run(&run_end(&Ok(()), false, refused, false, false, None)), AfterRun::Fenced);
    assert_eq!(after_run(&run_end(&Ok(()), true, saved, true, false, None)), AfterRun::Fenced);
}
