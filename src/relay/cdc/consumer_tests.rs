//! The consumer with real scylla-cdc rows (built as scylla-cdc builds them
//! from a page of the log table): batches released at `cdc$end_of_batch` in
//! sequence order, positions handed to the sink, undecodable rows, fencing,
//! and (against Cassandra) the progress hold while a batch is buffered.

use super::*;
use crate::relay::cdc::progress::StreamKey;
use crate::relay::cdc::testkit::{
    cdc_row_parts, event_row_columns, events, live_store, set_epoch, static_row_columns, timeuuid_at,
};
use crate::shutdown::Trigger;
use scylla::value::CqlValue;
use scylla_cdc::consumer::OperationType;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(i64, Option<RowPosition>)>>,
    bad: Mutex<Vec<(Option<Uuid>, Option<i64>)>>,
    park_bad: bool,
}

#[async_trait]
impl EnvelopeSink for Recorder {
    async fn handle(&self, env: EventEnvelope, _: &mut Shutdown) -> Result<(), CdcError> {
        self.events.lock().unwrap().push((env.sequence, None));
        Ok(())
    }

    async fn handle_row(&self, env: EventEnvelope, at: &RowPosition, _: &mut Shutdown) -> Result<(), CdcError> {
        self.events.lock().unwrap().push((env.sequence, Some(at.clone())));
        Ok(())
    }

    async fn undecodable(&self, row: UndecodableRow, _: &mut Shutdown) -> Result<(), CdcError> {
        self.bad.lock().unwrap().push((row.aggregate_id, row.sequence));
        if self.park_bad {
            Ok(())
        } else {
            Err(row.error)
        }
    }
}

impl Recorder {
    fn sequences(&self) -> Vec<i64> {
        self.events.lock().unwrap().iter().map(|(s, _)| *s).collect()
    }
}

fn order_events(id: Uuid, n: usize) -> Vec<EventEnvelope> {
    events(id, 0, n)
}

struct Rig {
    consumer: Box<dyn Consumer>,
    _trigger: Trigger,
}

async fn consumer(sink: Arc<Recorder>, saver: Option<Arc<LeaseCheckpointSaver>>) -> Rig {
    let trigger = Trigger::new();
    let factory = SinkConsumerFactory::new(sink, saver, trigger.subscribe());
    Rig { consumer: factory.new_consumer().await, _trigger: trigger }
}

const STREAM: [u8; 16] = [7; 16];

/// The N + 1 rows of one N-event append, as Scylla writes them.
fn append_rows(
    events: &[EventEnvelope],
    time: Uuid,
    seq_of: impl Fn(usize) -> i32,
) -> Vec<(scylla_cdc::consumer::CDCRowSchema, scylla::value::Row)> {
    append_rows_on(&STREAM, events, time, seq_of)
}

/// [`append_rows`] in the log partition of `stream`.
fn append_rows_on(
    stream: &[u8],
    events: &[EventEnvelope],
    time: Uuid,
    seq_of: impl Fn(usize) -> i32,
) -> Vec<(scylla_cdc::consumer::CDCRowSchema, scylla::value::Row)> {
    let n = events.len();
    let mut rows = vec![cdc_row_parts(
        OperationType::RowUpdate,
        stream,
        time,
        0,
        false,
        static_row_columns(events[0].aggregate_id, n as i64),
    )];
    for (i, e) in events.iter().enumerate() {
        rows.push(cdc_row_parts(OperationType::RowInsert, stream, time, seq_of(i), i + 1 == n, event_row_columns(e)));
    }
    rows
}

async fn feed(
    rig: &mut Rig,
    rows: Vec<(scylla_cdc::consumer::CDCRowSchema, scylla::value::Row)>,
) -> anyhow::Result<()> {
    for (schema, row) in rows {
        rig.consumer.consume_cdc(CDCRow::from_row(row, &schema)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_append_is_handled_after_its_end_of_batch_row_in_sequence_order() {
    let sink = Arc::new(Recorder::default());
    let mut rig = consumer(sink.clone(), None).await;
    let events = order_events(Uuid::now_v7(), 3);
    let t = timeuuid_at(1_700_000_000_000, 1);
    // Scylla numbered the inserts in reverse (its docs leave the order open).
    let mut rows = append_rows(&events, t, |i| 3 - i as i32);
    let last = rows.pop().unwrap();
    feed(&mut rig, rows).await.unwrap();
    assert!(sink.sequences().is_empty(), "nothing before cdc$end_of_batch");
    feed(&mut rig, vec![last]).await.unwrap();
    assert_eq!(sink.sequences(), vec![1, 2, 3]);
    let positions: Vec<RowPosition> = sink.events.lock().unwrap().iter().map(|(_, p)| p.clone().unwrap()).collect();
    assert!(positions.iter().all(|p| p.stream == StreamKey(STREAM.to_vec()) && p.time == t && p.generation.is_none()));
    assert_eq!(
        positions.iter().map(|p| p.batch_seq_no).collect::<Vec<_>>(),
        vec![3, 2, 1],
        "each event keeps its row's position"
    );
}

#[tokio::test]
async fn an_unterminated_batch_is_handled_when_the_next_one_begins() {
    let sink = Arc::new(Recorder::default());
    let mut rig = consumer(sink.clone(), None).await;
    let a = order_events(Uuid::now_v7(), 2);
    let mut rows = append_rows(&a, timeuuid_at(1_000, 0), |i| i as i32 + 1);
    rows.pop(); // the end-of-batch row never comes
    let b = order_events(Uuid::now_v7(), 1);
    rows.extend(append_rows(&b, timeuuid_at(2_000, 0), |i| i as i32 + 1));
    feed(&mut rig, rows).await.unwrap();
    assert_eq!(sink.sequences(), vec![1, 1]);
}

#[tokio::test]
async fn an_undecodable_row_goes_to_the_sink_with_its_aggregate_and_sequence() {
    let events = order_events(Uuid::now_v7(), 2);
    let rows = || {
        let mut rows = append_rows(&events, timeuuid_at(1_000, 0), |i| i as i32 + 1);
        // The payload of event 1 is not JSON (written by hand): column 7 after the 6 cdc$ ones.
        rows[1].1.columns[6 + 7] = Some(CqlValue::Text("{not json".into()));
        rows
    };

    // The default: an error that stops the reader.
    let stop = Arc::new(Recorder::default());
    let mut rig = consumer(stop.clone(), None).await;
    let err = feed(&mut rig, rows()).await.unwrap_err();
    assert!(err.to_string().contains("payload is not JSON"), "{err}");
    assert_eq!(stop.bad.lock().unwrap().clone(), vec![(Some(events[0].aggregate_id), Some(1))]);
    assert!(stop.sequences().is_empty(), "nothing after the bad row of its batch");

    // A sink that parks it: the rest of the batch flows on.
    let park = Arc::new(Recorder { park_bad: true, ..Recorder::default() });
    let mut rig = consumer(park.clone(), None).await;
    feed(&mut rig, rows()).await.unwrap();
    assert_eq!(park.sequences(), vec![2]);
}

#[tokio::test]
async fn shutdown_refuses_the_next_event() {
    let sink = Arc::new(Recorder::default());
    let trigger = Trigger::new();
    let factory = SinkConsumerFactory::new(sink.clone(), None, trigger.subscribe());
    let mut c = factory.new_consumer().await;
    trigger.fire();
    let events = order_events(Uuid::now_v7(), 1);
    let mut err = None;
    for (schema, row) in append_rows(&events, timeuuid_at(1_000, 0), |_| 1) {
        if let Err(e) = c.consume_cdc(CDCRow::from_row(row, &schema)).await {
            err = Some(e);
        }
    }
    assert!(err.unwrap().chain().any(|c| matches!(c.downcast_ref::<CdcError>(), Some(CdcError::Shutdown))));
    assert!(sink.sequences().is_empty());
}

/// Against Cassandra: the saver's hold while a batch is buffered, the
/// generation in the positions, and fencing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_batch_holds_its_stream_and_a_fenced_saver_stops_the_consumer() {
    let Some(store) = live_store("CDC consumer with its saver").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    set_epoch(&session, &ks, "kafka-relay", None, 1).await;
    let saver =
        LeaseCheckpointSaver::open(session.clone(), &ks, "kafka-relay", Some(1), Duration::from_secs(86_400), None)
            .await
            .unwrap();
    saver.start_generation(1_000).await.unwrap();
    let stream = StreamKey(STREAM.to_vec());
    saver.record(&stream, 500).unwrap();
    let sink = Arc::new(Recorder::default());
    let mut rig = consumer(sink.clone(), Some(saver.clone())).await;
    let events = order_events(Uuid::now_v7(), 2);
    let mut rows = append_rows(&events, timeuuid_at(5_000, 0), |i| i as i32 + 1);
    let last = rows.pop().unwrap();
    feed(&mut rig, rows).await.unwrap();
    // scylla-cdc reports a later window end: held at the buffered batch.
    saver.record(&stream, 9_000).unwrap();
    assert_eq!(saver.progress().loaded(&stream), Some(5_000));
    feed(&mut rig, vec![last]).await.unwrap();
    saver.record(&stream, 9_000).unwrap();
    assert_eq!(saver.progress().loaded(&stream), Some(9_000), "released once handled");
    assert_eq!(sink.events.lock().unwrap()[0].1.as_ref().unwrap().generation, Some(1_000));

    // Another instance takes the lease over; the next flush is refused.
    set_epoch(&session, &ks, "kafka-relay", Some(1), 2).await;
    saver.flush().await.unwrap();
    let more = order_events(events[0].aggregate_id, 3);
    let err = feed(&mut rig, append_rows(&more[2..], timeuuid_at(10_000, 0), |_| 1)).await.unwrap_err();
    assert!(err.to_string().contains("fenced"), "{err}");
    assert_eq!(sink.sequences(), vec![1, 2], "nothing handled after fencing");
}

/// Review finding: a batch still buffered when a run ended released its
/// hold as the consumer was dropped, and the catch-up's advance of every
/// stream then moved past it: its rows were never read again. The hold now
/// outlives the consumer; the next run reads the batch again and releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_left_buffered_when_a_run_ends_keeps_its_hold() {
    let Some(store) = live_store("CDC consumer: buffered at the end of a run").await else { return };
    let (session, ks) = (store.session(), store.keyspace().to_string());
    let saver =
        LeaseCheckpointSaver::open(session, &ks, "kafka-relay", None, Duration::from_secs(86_400), None).await.unwrap();
    saver.start_generation(1_000).await.unwrap();
    let stream = StreamKey(STREAM.to_vec());
    saver.record(&stream, 500).unwrap();
    let sink = Arc::new(Recorder::default());
    let events = order_events(Uuid::now_v7(), 2);
    let rows = || append_rows(&events, timeuuid_at(5_000, 0), |i| i as i32 + 1);
    let mut first = rows();
    first.pop(); // its cdc$end_of_batch row is not read in this run
    let mut run1 = consumer(sink.clone(), Some(saver.clone())).await;
    feed(&mut run1, first).await.unwrap();
    drop(run1); // the catch-up run ends with the batch buffered
    saver.advance_all(20_000);
    assert_eq!(saver.progress().loaded(&stream), Some(5_000), "not past the unread batch");
    assert!(sink.sequences().is_empty());
    // The next run reads the batch again from there, whole this time.
    let mut run2 = consumer(sink.clone(), Some(saver.clone())).await;
    feed(&mut run2, rows()).await.unwrap();
    assert_eq!(sink.sequences(), vec![1, 2]);
    saver.record(&stream, 20_000).unwrap();
    assert_eq!(saver.progress().loaded(&stream), Some(20_000), "released once handled");
}

/// A sink whose deliveries wait for the test (a broker outage).
struct Gated(tokio::sync::Semaphore);

#[async_trait]
impl EnvelopeSink for Gated {
    async fn handle(&self, _: EventEnvelope, _: &mut Shutdown) -> Result<(), CdcError> {
        self.0.acquire().await.expect("open").forget();
        Ok(())
    }
}

/// The relay's checkpoint saver in `store`, in a generation started at 1 s.
async fn relay_saver_in_generation(store: &crate::store::cql::CqlStore) -> Arc<LeaseCheckpointSaver> {
    let saver = LeaseCheckpointSaver::open(
        store.session(),
        store.keyspace(),
        "kafka-relay",
        None,
        Duration::from_secs(86_400),
        None,
    )
    .await
    .unwrap();
    saver.start_generation(1_000).await.unwrap();
    saver
}

/// The relay's saver (one stream at 0.5 s) and a consumer factory whose
/// deliveries wait on the returned sink (and the factory's shutdown trigger).
async fn gated_relay(
    store: &crate::store::cql::CqlStore,
) -> (Arc<LeaseCheckpointSaver>, Arc<Gated>, Arc<SinkConsumerFactory<Gated>>, Trigger) {
    let saver = relay_saver_in_generation(store).await;
    saver.record(&StreamKey(STREAM.to_vec()), 500).unwrap();
    let sink = Arc::new(Gated(tokio::sync::Semaphore::new(0)));
    let trigger = Trigger::new();
    let factory = SinkConsumerFactory::new(sink.clone(), Some(saver.clone()), trigger.subscribe());
    (saver, sink, factory, trigger)
}

/// Against Cassandra: a consumer call waiting on its sink, and a batch held
/// for a row its window did not bring, are activity the stall watchdog sees
/// (never a stall, however long they last); a batch held while its window
/// is still being read is not (its reader may be stuck on the next page); a
/// finished call counts as movement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_the_sink_is_busy_for_the_stall_watchdog() {
    use crate::relay::cdc::watchdog::StallWatch;
    let Some(store) = live_store("CDC consumer: activity for the stall watchdog").await else { return };
    let (saver, sink, factory, _trigger) = gated_relay(&store).await;
    let mut consumer = factory.new_consumer().await;
    let events = order_events(Uuid::now_v7(), 1);
    let mut rows = append_rows(&events, timeuuid_at(5_000, 0), |_| 1).into_iter();
    let (schema, row) = rows.next().unwrap();
    consumer.consume_cdc(CDCRow::from_row(row, &schema)).await.unwrap(); // the static row
    let before = saver.stall_sample();
    assert_eq!((before.busy, before.done), (0, 1), "held, its window still being read: no activity");
    saver.record(&StreamKey(STREAM.to_vec()), 9_000).unwrap(); // the window ended without the rest
    let before = saver.stall_sample();
    assert_eq!((before.busy, before.oldest_ms), (1, Some(5_000)), "its batch is held, waiting for the rest");
    let (schema, row) = rows.next().unwrap();
    let call = consumer.consume_cdc(CDCRow::from_row(row, &schema));
    tokio::pin!(call);
    assert!(tokio::time::timeout(Duration::from_millis(200), &mut call).await.is_err(), "waits on the sink");
    let waiting = saver.stall_sample();
    assert_eq!((waiting.busy, waiting.oldest_ms), (2, Some(5_000)), "a call in progress and the hold");
    let t0 = tokio::time::Instant::now();
    let mut watch = StallWatch::new(Duration::from_secs(300), t0);
    for hour in [0, 1, 2] {
        assert_eq!(watch.observe(t0 + Duration::from_secs(3_600 * hour), saver.stall_sample()), None);
    }
    sink.0.add_permits(1);
    call.await.unwrap();
    let after = saver.stall_sample();
    assert_eq!((after.busy, after.done), (0, 2), "finished and released: counted as movement");
    assert_eq!(watch.observe(t0 + Duration::from_secs(3 * 3_600 + 1), after), None);
}

/// Against Cassandra: the last batch of a generation, handed over as the
/// next one starts, is delivered after its consumer is gone; while that
/// delivery waits on the broker it is a call in progress of its stream (its
/// hold alone no longer counts: the reader did not report past its window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_delivery_waiting_on_the_sink_is_busy_for_the_stall_watchdog() {
    let Some(store) = live_store("CDC consumer: a leftover delivery for the stall watchdog").await else { return };
    let (saver, sink, factory, _trigger) = gated_relay(&store).await;
    let mut consumer = factory.new_consumer().await;
    let mut rows = append_rows(&order_events(Uuid::now_v7(), 2), timeuuid_at(5_000, 0), |i| i as i32 + 1);
    rows.pop(); // its cdc$end_of_batch row never comes
    for (schema, row) in rows {
        consumer.consume_cdc(CDCRow::from_row(row, &schema)).await.unwrap();
    }
    drop(consumer); // the generation was read to its end
    assert_eq!(saver.stall_sample().busy, 0, "nothing in progress yet");
    let ending = saver.clone();
    let next = tokio::spawn(async move { ending.start_generation(2_000).await });
    let mut busy = 0;
    for _ in 0..50 {
        busy = saver.stall_sample().busy;
        if busy > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(busy, 1, "the leftover's delivery waits on the sink: a call in progress");
    sink.0.add_permits(2);
    next.await.unwrap().unwrap();
    assert_eq!(saver.generation_ms(), Some(2_000));
}

/// Against Cassandra: two stream groups (scylla-cdc gives each its own
/// consumer) on one saver. The group of the oldest stream read one append and
/// then hung; the other group delivered an append every 30 s all along. The
/// stuck group is a stall one limit later (the other group's calls used to
/// hide it), and its next finished call is movement again. Before the stuck
/// group's first row, its stream belongs to no known consumer and every
/// consumer's calls count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_group_stuck_while_another_delivers_is_a_stall() {
    use crate::relay::cdc::watchdog::StallWatch;
    const OTHER: [u8; 16] = [9; 16];
    const LIMIT: Duration = Duration::from_secs(300);
    let Some(store) = live_store("CDC consumer: one stuck stream group").await else { return };
    let saver = relay_saver_in_generation(&store).await;
    let sink = Arc::new(Recorder::default());
    let mut stuck = consumer(sink.clone(), Some(saver.clone())).await;
    let mut busy = consumer(sink.clone(), Some(saver.clone())).await;
    // Before the stuck group read a row, its stream is not known to any
    // consumer: every consumer's calls count.
    saver.record(&StreamKey(STREAM.to_vec()), 300).unwrap();
    let first = append_rows_on(&OTHER, &order_events(Uuid::now_v7(), 2), timeuuid_at(1_500, 0), |i| i as i32 + 1);
    feed(&mut busy, first).await.unwrap();
    saver.record(&StreamKey(OTHER.to_vec()), 1_600).unwrap();
    let sample = saver.stall_sample();
    assert_eq!((sample.oldest_ms, sample.done), (Some(300), 3), "the other group's three calls");
    feed(&mut stuck, append_rows_on(&STREAM, &order_events(Uuid::now_v7(), 1), timeuuid_at(400, 0), |_| 1))
        .await
        .unwrap();
    saver.record(&StreamKey(STREAM.to_vec()), 500).unwrap();
    let t0 = tokio::time::Instant::now();
    let mut watch = StallWatch::new(LIMIT, t0);
    for (i, secs) in (0..=300u64).step_by(30).enumerate() {
        let at = 2_000 + i as i64 * 1_000;
        let append = append_rows_on(&OTHER, &order_events(Uuid::now_v7(), 2), timeuuid_at(at, 0), |i| i as i32 + 1);
        feed(&mut busy, append).await.unwrap();
        saver.record(&StreamKey(OTHER.to_vec()), at + 500).unwrap();
        let sample = saver.stall_sample();
        assert_eq!(sample.oldest_ms, Some(500), "the stuck group's stream is the oldest");
        let verdict = watch.observe(t0 + Duration::from_secs(secs), sample);
        assert_eq!(verdict, (secs == 300).then_some(LIMIT), "at {secs} s");
    }
    assert_eq!(sink.sequences().len(), 2 + 1 + 11 * 2, "the other group delivered all along");
    feed(&mut stuck, append_rows_on(&STREAM, &order_events(Uuid::now_v7(), 1), timeuuid_at(450, 0), |_| 1))
        .await
        .unwrap();
    assert_eq!(watch.observe(t0 + LIMIT + Duration::from_secs(1), saver.stall_sample()), None);
}

/// Against Cassandra: the last batch of a generation never got its
/// `cdc$end_of_batch` row. The consumer is dropped with it buffered (as
/// scylla-cdc drops a group's consumer at its generation's end), and the
/// batch is handled as the next generation starts, before it is recorded.
/// A batch left by a reader run that ended early is not (that run's
/// successor reads it again); a failed handling leaves the old generation
/// current, so its tail is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unterminated_last_batch_of_a_generation_is_handled_as_the_next_starts() {
    const OTHER: [u8; 16] = [9; 16];
    let Some(store) = live_store("CDC consumer: the last batch of a generation").await else { return };
    let saver = relay_saver_in_generation(&store).await;
    let sink = Arc::new(Recorder::default());
    let trigger = Trigger::new();
    saver.run_starts(1_000);
    let factory = SinkConsumerFactory::new(sink.clone(), Some(saver.clone()), trigger.subscribe());
    // A run that is stopped early with a batch of OTHER buffered; its
    // consumer is dropped only after the next run started.
    let mut early = factory.new_consumer().await;
    let mut rows = append_rows_on(&OTHER, &order_events(Uuid::now_v7(), 2), timeuuid_at(1_200, 0), |i| i as i32 + 1);
    rows.pop();
    for (schema, row) in rows {
        early.consume_cdc(CDCRow::from_row(row, &schema)).await.unwrap();
    }
    saver.run_starts(1_000);
    drop(early);
    // This run reads the generation to its end: the last batch of STREAM
    // lacks its end row (the static row and two of three events arrived).
    let mut last = factory.new_consumer().await;
    let mut rows = append_rows(&order_events(Uuid::now_v7(), 3), timeuuid_at(1_500, 0), |i| i as i32 + 1);
    rows.pop();
    for (schema, row) in rows {
        last.consume_cdc(CDCRow::from_row(row, &schema)).await.unwrap();
    }
    assert!(sink.sequences().is_empty(), "buffered, waiting for the rest");
    assert!(saver.progress().is_held(&StreamKey(STREAM.to_vec())), "the stream's progress is held");
    drop(last);
    saver.start_generation(2_000).await.unwrap();
    assert_eq!(sink.sequences(), vec![1, 2], "what arrived of STREAM's batch, in order; nothing of OTHER's");
    assert_eq!(saver.generation_ms(), Some(2_000));
    assert!(!saver.progress().is_held(&StreamKey(STREAM.to_vec())));

    // Handling fails (the reader is stopping): the old generation stays.
    let mut next = factory.new_consumer().await;
    let mut rows = append_rows(&order_events(Uuid::now_v7(), 2), timeuuid_at(2_500, 0), |i| i as i32 + 1);
    rows.pop();
    for (schema, row) in rows {
        next.consume_cdc(CDCRow::from_row(row, &schema)).await.unwrap();
    }
    drop(next);
    trigger.fire();
    let err = saver.start_generation(3_000).await.unwrap_err();
    assert!(format!("{err:#}").contains("shut"), "{err:#}");
    assert_eq!(saver.generation_ms(), Some(2_000), "not recorded: the tail is read again");
    assert_eq!(sink.sequences(), vec![1, 2]);
}
