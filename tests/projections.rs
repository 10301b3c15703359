//! Read models, snapshots and upcasting on real SQLite files: projection
//! queries and paging, replay idempotence, kill -9 of a projector process
//! under load compared row by row with a rebuild, raw v1 rows that load,
//! project and relay (real Kafka when `KAFKA_BROKERS` is set) as v2, stale
//! snapshots, projection lag in the metrics, and the v1 -> v2 file upgrade.

mod harness;

use harness::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

use outboxd::app::{CommandService, ServiceOptions};
use outboxd::domain::{Aggregate, Order, OrderCommand, OrderStatus};
use outboxd::envelope::{now_millis, Metadata};
use outboxd::metrics::Metrics;
use outboxd::projection::{self, DynReadModels, PageRequest, Projector, ProjectorOptions, CONSUMER};
use outboxd::shutdown::Trigger;
use outboxd::store::sqlite::{SqliteOptions, SqliteStore, Synchronous, SCHEMA_V1};
use outboxd::store::{DynStore, Snapshot};

const CHILD_ENV: &str = "OUTBOXD_PROJECTOR_CHILD_DB";

struct Db {
    store: DynStore,
    models: DynReadModels,
}

async fn open(path: &Path) -> Db {
    open_with(path, SqliteOptions::default()).await
}

async fn open_with(path: &Path, opts: SqliteOptions) -> Db {
    let s = SqliteStore::open(path, opts).await.unwrap();
    Db { store: s.clone(), models: s }
}

fn fast() -> SqliteOptions {
    SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() }
}

fn service(store: &DynStore) -> CommandService {
    CommandService::new(store.clone(), ServiceOptions::default())
}

fn projector(db: &Db, metrics: Metrics, batch_size: usize) -> Projector {
    let opts = ProjectorOptions { batch_size, poll_interval: Duration::from_millis(20), ..ProjectorOptions::default() };
    Projector::new(db.store.clone(), db.models.clone(), metrics, opts)
}

/// A consistent copy of a live database file (WAL included).
fn vacuum_copy(from: &Path, to: &Path) {
    let c = rusqlite::Connection::open(from).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute("VACUUM INTO ?1", [to.to_str().unwrap()]).unwrap();
}

/// Rebuilds the read models in a copy of `path` and returns the copy's dump.
async fn rebuild_in_copy(path: &Path, dir: &Path) -> (Vec<serde_json::Value>, projection::RebuildReport) {
    let copy = dir.join(format!("copy-{}.db", Uuid::now_v7().simple()));
    vacuum_copy(path, &copy);
    let db = open(&copy).await;
    let report = projection::rebuild(db.store.clone(), db.models.clone(), "EUR", false).await.unwrap();
    (projection::dump_read_models(&*db.models).await.unwrap(), report)
}

fn assert_same_rows(live: &[serde_json::Value], rebuilt: &[serde_json::Value]) {
    for (i, (a, b)) in live.iter().zip(rebuilt).enumerate() {
        assert_eq!(a, b, "row {i} differs between the live read models and a rebuild");
    }
    assert_eq!(live.len(), rebuilt.len(), "row counts differ: live {} vs rebuild {}", live.len(), rebuilt.len());
}

fn count_table(rows: &[serde_json::Value], table: &str) -> usize {
    rows.iter().filter(|r| r["table"] == table).count()
}

// ---- queries, paging, idempotence -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projects_orders_and_customers_pages_and_replays_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("s.db")).await;
    let svc = service(&db.store);
    let mut orders = Vec::new();
    for i in 0..40 {
        orders.push(order_lifecycle(&svc, i).await);
    }
    let customer = register_customer(&svc, 1).await;
    let head = db.store.head_position().await.unwrap();

    let metrics = Metrics::new();
    let mut p = projector(&db, metrics.clone(), 64);
    p.catch_up().await.unwrap();
    assert_eq!(db.models.projection_checkpoint(CONSUMER).await.unwrap(), head);

    // A delivered order (i = 0) and a cancelled one (i = 3).
    let v = db.models.get_order(orders[0]).await.unwrap().expect("order 0 projected");
    assert_eq!((v.status.as_str(), v.version, v.stream_version), ("delivered", 5, 5));
    assert_eq!(v.customer_id, Some(Uuid::from_u128(0)));
    assert_eq!(v.item_count, 3);
    assert_eq!(v.total_minor, Some(999 + 1000 * 2 + 1001 * 3));
    assert_eq!(v.currency.as_deref(), Some("EUR"));
    assert_eq!(v.tracking_number.as_deref(), Some("TRK0"));
    assert_eq!(v.carrier.as_deref(), Some("DHL"));
    assert_eq!(v.projection, projection::Freshness { checkpoint: head, head, lag_events: 0 });
    let events = db.store.load(orders[0]).await.unwrap();
    assert_eq!(v.created_at, events[0].timestamp);
    assert_eq!(v.updated_at, events[4].timestamp);
    assert_eq!(v.state, svc.load::<Order>(orders[0]).await.unwrap().state, "the stored state is the domain's state");
    let c = db.models.get_order(orders[3]).await.unwrap().unwrap();
    assert_eq!((c.status.as_str(), c.version, c.cancel_reason.as_deref()), ("cancelled", 3, Some("customer asked")));
    assert!(db.models.get_order(Uuid::now_v7()).await.unwrap().is_none());
    let cv = db.models.get_customer(customer).await.unwrap().expect("customer projected");
    assert_eq!((cv.name.as_deref(), cv.email.as_deref(), cv.version), (Some("Customer 1"), Some("c1@example.com"), 1));

    // Customer 1 has orders 1, 18 and 35: page by cursor and by offset.
    let cust = Uuid::from_u128(1);
    let want: BTreeSet<Uuid> = [orders[1], orders[18], orders[35]].into_iter().collect();
    let p1 = db.models.orders_by_customer(cust, PageRequest::first(2)).await.unwrap();
    assert_eq!((p1.orders.len(), p1.total), (2, 3));
    let cursor = p1.next_after.expect("a second page");
    let p2 = db.models.orders_by_customer(cust, PageRequest::after(cursor, 2)).await.unwrap();
    assert_eq!((p2.orders.len(), p2.next_after), (1, None));
    let got: BTreeSet<Uuid> = p1.orders.iter().chain(&p2.orders).map(|o| o.order_id).collect();
    assert_eq!(got, want);
    let by_offset = db.models.orders_by_customer(cust, PageRequest { after: None, offset: 2, limit: 2 }).await.unwrap();
    assert_eq!(by_offset.orders, p2.orders);
    assert_eq!(p1.orders[0].status, "delivered");
    assert!(db.models.orders_by_customer(Uuid::now_v7(), PageRequest::default()).await.unwrap().orders.is_empty());

    // The same feed applied again (checkpoint reset, rows kept) changes nothing.
    let once = projection::dump_read_models(&*db.models).await.unwrap();
    assert_eq!(count_table(&once, "order_read_model"), 40);
    assert_eq!(count_table(&once, "orders_by_customer"), 40);
    assert_eq!(count_table(&once, "customer_read_model"), 1);
    db.store.set_checkpoint(CONSUMER, 0).await.unwrap();
    let mut again = projector(&db, Metrics::new(), 7);
    let status = again.status();
    again.catch_up().await.unwrap();
    let twice = projection::dump_read_models(&*db.models).await.unwrap();
    assert_same_rows(&twice, &once);
    let s = status.borrow().clone();
    assert_eq!((s.applied, s.duplicates, s.checkpoint, s.lag), (0, head as u64, head, 0));

    // And a rebuild from scratch gives the same rows.
    let report = projection::rebuild(db.store.clone(), db.models.clone(), "EUR", false).await.unwrap();
    assert_eq!((report.events, report.checkpoint), (head as u64, head));
    assert_same_rows(&projection::dump_read_models(&*db.models).await.unwrap(), &once);
}

// ---- lag in the metrics ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projection_lag_appears_in_metrics_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(&dir.path().join("s.db"), fast()).await;
    let svc = service(&db.store);
    for i in 0..100 {
        order_lifecycle(&svc, i).await;
    }
    let head = db.store.head_position().await.unwrap();
    let metrics = Metrics::new();
    let mut p = projector(&db, metrics.clone(), 100);
    p.step().await.unwrap();
    assert_eq!(metrics.projection_checkpoint_position.get(), 100);
    assert_eq!(metrics.projection_lag_events.get(), head - 100, "lag while behind");
    assert!(metrics.projection_lag_events.get() > 0);
    assert!(metrics.encode().contains(&format!("projection_lag_events {}", head - 100)));

    // Running: catches up, then follows new appends (woken by the store).
    let mut status = p.status();
    let trigger = Trigger::new();
    let task = tokio::spawn(p.run(trigger.subscribe()));
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.checkpoint == head))
        .await
        .expect("caught up")
        .expect("status channel open");
    assert_eq!(metrics.projection_lag_events.get(), 0, "no lag after catching up");
    for i in 100..110 {
        order_lifecycle(&svc, i).await;
    }
    let head2 = db.store.head_position().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.checkpoint == head2 && s.lag == 0))
        .await
        .expect("follows appends")
        .expect("status channel open");
    assert_eq!((metrics.projection_lag_events.get(), metrics.projection_checkpoint_position.get()), (0, head2));
    assert!(status.borrow().running);
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops on shutdown").unwrap();
    assert!(!status.borrow().running);
}

// ---- kill -9 of a projector process under load --------------------------------

/// Not a test on its own: returns at once unless `OUTBOXD_PROJECTOR_CHILD_DB`
/// is set, in which case this process runs only a Projector on that
/// database until it is killed (the crash test below spawns it).
#[test]
fn projector_child() {
    let Ok(db) = std::env::var(CHILD_ENV) else { return };
    let batch: usize = std::env::var("OUTBOXD_PROJECTOR_CHILD_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(50);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let db = open(Path::new(&db)).await;
        let trigger = Trigger::new();
        projector(&db, Metrics::new(), batch).run(trigger.subscribe()).await;
    });
}

fn spawn_child(db: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["projector_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, db)
        .env("OUTBOXD_PROJECTOR_CHILD_BATCH", "40")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .expect("spawn the projector child")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_projector_under_load_then_read_models_equal_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let log = dir.path().join("child.log");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    // Writers: order lifecycles and customers until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        let (svc, stop) = (svc.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                order_lifecycle(&svc, i).await;
                if i % 10 == 0 {
                    register_customer(&svc, i).await;
                }
                i += 6;
            }
            i / 6
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut kills = Vec::new(); // (checkpoint, head) right after each kill
    for _ in 0..7 {
        let mut child = spawn_child(&path, &log);
        let wait = rand::random_range(200..900);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let cp = db.store.get_checkpoint(CONSUMER).await.unwrap().unwrap_or(0);
        kills.push((cp, db.store.head_position().await.unwrap()));
    }
    stop.store(true, Ordering::Relaxed);
    let mut orders = 0;
    for w in writers {
        orders += w.await.unwrap();
    }
    let head = db.store.head_position().await.unwrap();
    eprintln!(
        "crash test: {} kills (checkpoint, head): {kills:?}; {orders} order lifecycles, head {head}",
        kills.len()
    );
    assert!(kills.windows(2).any(|w| w[1].0 > w[0].0), "the projector made progress between kills: {kills:?}");
    assert!(kills.iter().any(|(cp, head)| cp < head), "some kill happened while the projector was behind: {kills:?}");

    // Restart once more and let it catch up.
    let mut child = spawn_child(&path, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.store.get_checkpoint(CONSUMER).await.unwrap().unwrap_or(0) < head {
        assert!(
            Instant::now() < deadline,
            "projector did not catch up; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let live = projection::dump_read_models(&*db.models).await.unwrap();
    let (rebuilt, report) = rebuild_in_copy(&path, dir.path()).await;
    assert_eq!(report.events, head as u64);
    assert!(
        count_table(&live, "order_read_model") >= 100,
        "enough orders under load: {}",
        count_table(&live, "order_read_model")
    );
    assert_same_rows(&live, &rebuilt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_while_a_projector_runs_still_equals_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open_with(&path, fast()).await;
    let svc = service(&db.store);
    for i in 0..150 {
        order_lifecycle(&svc, i).await;
    }
    let p = projector(&db, Metrics::new(), 25);
    let mut status = p.status();
    let trigger = Trigger::new();
    let task = tokio::spawn(p.run(trigger.subscribe()));
    let writer = {
        let svc = svc.clone();
        tokio::spawn(async move {
            for i in 150..250 {
                order_lifecycle(&svc, i).await;
            }
        })
    };
    for _ in 0..2 {
        projection::rebuild(db.store.clone(), db.models.clone(), "EUR", false).await.unwrap();
    }
    writer.await.unwrap();
    let head = db.store.head_position().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.checkpoint == head))
        .await
        .expect("caught up")
        .expect("status channel open");
    trigger.fire();
    task.await.unwrap();
    let live = projection::dump_read_models(&*db.models).await.unwrap();
    assert_eq!(count_table(&live, "order_read_model"), 250);
    let (rebuilt, _) = rebuild_in_copy(&path, dir.path()).await;
    assert_same_rows(&live, &rebuilt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_read_model_row_is_rederived_from_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let svc = service(&db.store);
    let id = Uuid::now_v7();
    let eur = outboxd::domain::Currency::new("EUR").unwrap();
    let item = outboxd::domain::OrderItem::new(
        outboxd::domain::Sku::new("A").unwrap(),
        2,
        outboxd::domain::Money::new(150, eur).unwrap(),
    )
    .unwrap();
    svc.execute::<Order>(
        id,
        &OrderCommand::Create { customer_id: Uuid::from_u128(5), items: vec![item] },
        Metadata::default(),
        None,
    )
    .await
    .unwrap();
    let mut p = projector(&db, Metrics::new(), 10);
    p.catch_up().await.unwrap();
    // Simulate a row written by an older build: older state shape, unreadable state.
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "UPDATE order_read_model SET state_schema = 0, state = '\"from an older build\"' WHERE order_id = ?1",
        [id.to_string()],
    )
    .unwrap();
    svc.execute::<Order>(id, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap();
    p.catch_up().await.unwrap();
    let v = db.models.get_order(id).await.unwrap().unwrap();
    assert_eq!((v.status.as_str(), v.version, v.total_minor), ("confirmed", 2, Some(300)));
    assert_eq!(v.state, svc.load::<Order>(id).await.unwrap().state);
    let (rebuilt, _) = rebuild_in_copy(&path, dir.path()).await;
    assert_same_rows(&projection::dump_read_models(&*db.models).await.unwrap(), &rebuilt);
}

// ---- upcasting: raw v1 rows ------------------------------------------------------

fn insert_raw_v1_order_created(path: &Path, order: Uuid, customer: Uuid) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let body =
        serde_json::json!({"customer_id": customer, "items": [{"sku": "A", "quantity": 2, "unit_price_minor": 150}]});
    let at = now_millis().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    c.execute(
        "INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp)
         VALUES (?1, 'order', ?2, 1, 'OrderCreated', 1, ?3, NULL, ?4, ?5)",
        rusqlite::params![Uuid::now_v7().to_string(), order.to_string(), body.to_string(), Uuid::now_v7().to_string(), at],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_v1_rows_load_and_project_as_v2_and_relay_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let db = open(&path).await;
    let (order, customer) = (Uuid::now_v7(), Uuid::now_v7());
    insert_raw_v1_order_created(&path, order, customer);
    let stored = db.store.load(order).await.unwrap();
    assert_eq!((stored.len(), stored[0].schema_version), (1, 1), "the row is stored as v1");

    // Load: upcast to v2 with the default currency.
    let svc = service(&db.store);
    let loaded = svc.load::<Order>(order).await.unwrap();
    let total = loaded.state.total.expect("a total");
    assert_eq!((total.amount_minor, total.currency.as_str()), (300, "EUR"));
    assert_eq!(loaded.state.items[0].unit_price.currency.as_str(), "EUR");
    assert_eq!(loaded.state.customer_id, Some(customer));
    // New events are appended on top of the v1 one.
    svc.execute::<Order>(order, &OrderCommand::Confirm, Metadata::default(), None).await.unwrap();

    // Project.
    projector(&db, Metrics::new(), 10).catch_up().await.unwrap();
    let v = db.models.get_order(order).await.unwrap().expect("projected");
    assert_eq!(
        (v.currency.as_deref(), v.total_minor, v.status.as_str(), v.version),
        (Some("EUR"), Some(300), "confirmed", 2)
    );
    assert_eq!(v.items[0].unit_price.currency.as_str(), "EUR");
    let page = db.models.orders_by_customer(customer, PageRequest::first(10)).await.unwrap();
    assert_eq!((page.orders.len(), page.orders[0].currency.as_deref()), (1, Some("EUR")));

    // Relay: published as stored (v1, the stored payload bytes verbatim); upcasting is
    // for rebuilding state only, so what consumers get never depends on this build's
    // upcasters or on service.default_currency.
    let Some(brokers) = shared_brokers() else { return };
    let c = test_config(&brokers, &path);
    let metrics = Metrics::new();
    let (relay, mut status) = outboxd::relay::Relay::standalone(&c, db.store.clone(), metrics);
    let trigger = Trigger::new();
    let task = tokio::spawn(relay.run(trigger.subscribe()));
    let head = db.store.head_position().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.checkpoint.unwrap_or(0) >= head))
        .await
        .expect("relay confirms both events")
        .expect("status channel open");
    trigger.fire();
    task.await.unwrap().unwrap();
    let topics: Vec<String> = outboxd::relay::topics::topic_names(c.kafka.per_event_type(), &c.kafka.topic_prefix);
    let records = consume_all(&brokers, &topics, 2, Duration::from_secs(30));
    let created = records
        .iter()
        .find(|r| r.headers.get("ce_type").map(String::as_str) == Some("OrderCreated"))
        .expect("OrderCreated on the topic");
    assert_eq!(created.headers["ce_dataschemaversion"], "1");
    assert_eq!(created.key, order.to_string());
    assert_eq!(created.value["schema_version"], 1);
    assert_eq!(created.value["payload"]["items"][0]["unit_price_minor"], 150);
    let c = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let stored: Vec<(i64, String)> = c
        .prepare("SELECT sequence_number, payload FROM event_store WHERE aggregate_id = ?1 ORDER BY sequence_number")
        .unwrap()
        .query_map([order.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (seq, payload) in stored {
        let r = records
            .iter()
            .find(|r| r.key == order.to_string() && r.sequence() == seq)
            .expect("every event on the topic");
        let raw = String::from_utf8(r.raw.clone()).unwrap();
        assert!(
            raw.contains(&format!(",\"payload\":{payload},")),
            "the stored payload bytes are on the topic verbatim: {raw}"
        );
    }
}

// ---- snapshots ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_of_an_older_state_schema_or_garbage_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(&dir.path().join("s.db"), fast()).await;
    let writer =
        CommandService::new(db.store.clone(), ServiceOptions { snapshot_every: 0, ..ServiceOptions::default() });
    let with_snapshots =
        CommandService::new(db.store.clone(), ServiceOptions { snapshot_every: 100, ..ServiceOptions::default() });
    let wrong =
        Order { status: OrderStatus::Cancelled, cancel_reason: Some("from a snapshot".into()), ..Order::default() };
    let cases: Vec<(&str, i32, &str, serde_json::Value)> = vec![
        ("older state schema", Order::STATE_SCHEMA - 1, Order::TYPE, serde_json::to_value(&wrong).unwrap()),
        ("garbage state", Order::STATE_SCHEMA, Order::TYPE, serde_json::json!({"not": "an order"})),
        ("another aggregate type", Order::STATE_SCHEMA, "customer", serde_json::to_value(&wrong).unwrap()),
    ];
    for (what, state_schema, aggregate_type, state) in cases {
        let id = order_lifecycle(&writer, 0).await;
        let full = writer.load::<Order>(id).await.unwrap();
        let snap = Snapshot {
            aggregate_id: id,
            aggregate_type: aggregate_type.into(),
            version: 3,
            state_schema,
            state,
            created_at: now_millis(),
        };
        db.store.save_snapshot(snap).await.unwrap();
        let l = with_snapshots.load::<Order>(id).await.unwrap_or_else(|e| panic!("{what}: load failed: {e}"));
        assert_eq!((l.version, &l.state), (full.version, &full.state), "{what}: loaded from events");
        assert_eq!(l.state.status, OrderStatus::Delivered, "{what}");
    }
    // Control: a usable snapshot is used (its state shows through).
    let id = order_lifecycle(&writer, 0).await;
    let snap = Snapshot {
        aggregate_id: id,
        aggregate_type: Order::TYPE.into(),
        version: 5,
        state_schema: Order::STATE_SCHEMA,
        state: serde_json::to_value(&wrong).unwrap(),
        created_at: now_millis(),
    };
    db.store.save_snapshot(snap).await.unwrap();
    assert_eq!(with_snapshots.load::<Order>(id).await.unwrap().state, wrong);
    assert_eq!(
        writer.load::<Order>(id).await.unwrap().state.status,
        OrderStatus::Delivered,
        "snapshots off reads every event"
    );
}

/// What a snapshot saves: loading an order of 10 000 events reads the
/// snapshot and only the events after it; without snapshots it reads all of
/// them, and both give the same state. (The speed-up is measured by
/// `outboxd bench snapshots`, never asserted in a test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_load_of_10k_events_reads_only_the_events_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_with(&dir.path().join("snapshots.db"), fast()).await;
    let counting = Arc::new(CountingStore { inner: db.store.clone(), reads: Default::default() });
    let store: outboxd::store::DynEvents = counting.clone();
    let id = Uuid::now_v7();
    let mut version = 0;
    for chunk in order_events(id, 0, 9_999).chunks(500) {
        version = store.append(id, version, chunk.to_vec()).await.unwrap().version;
    }
    // The 10 000th event goes through the service, which saves the snapshot.
    let with = CommandService::new(store.clone(), ServiceOptions { snapshot_every: 100, ..ServiceOptions::default() });
    let items = vec![outboxd::domain::OrderItem::new(
        outboxd::domain::Sku::new("LAST").unwrap(),
        1,
        outboxd::domain::Money::new(100, outboxd::domain::Currency::new("EUR").unwrap()).unwrap(),
    )
    .unwrap()];
    with.execute::<Order>(id, &OrderCommand::UpdateItems { items }, Metadata::default(), None).await.unwrap();
    assert_eq!(store.load_snapshot(id).await.unwrap().map(|s| s.version), Some(10_000));
    counting.take_reads();

    let from_snapshot = with.load::<Order>(id).await.unwrap();
    assert_eq!(from_snapshot.version, 10_000);
    assert_eq!(counting.take_reads(), vec![(10_000, 0)], "one read after the snapshot's version, no event read");

    let without = CommandService::new(store, ServiceOptions { snapshot_every: 0, ..ServiceOptions::default() });
    let from_events = without.load::<Order>(id).await.unwrap();
    assert_eq!(counting.take_reads(), vec![(0, 10_000)], "snapshots off reads every event");
    assert_eq!((from_events.version, &from_events.state), (from_snapshot.version, &from_snapshot.state));
}

// ---- schema upgrade ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_v1_database_file_is_upgraded_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("v1.db");
    let order = Uuid::now_v7();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(())).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.execute_batch("PRAGMA user_version = 1").unwrap();
    }
    insert_raw_v1_order_created(&path, order, Uuid::from_u128(3));
    let db = open(&path).await;
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, outboxd::store::sqlite::SCHEMA_VERSION);
    assert_eq!(v, 3);
    for t in [
        "order_read_model",
        "orders_by_customer",
        "customer_read_model",
        "relay_leases",
        "parked_aggregates",
        "discarded_events",
        "relay_requests",
    ] {
        let n: i64 = c
            .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1", [t], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "table {t} exists after the upgrade");
    }
    assert_eq!(db.store.load(order).await.unwrap().len(), 1, "v1 events survive the upgrade");
    db.store.migrate().await.unwrap(); // idempotent
    projector(&db, Metrics::new(), 10).catch_up().await.unwrap();
    assert_eq!(db.models.get_order(order).await.unwrap().unwrap().total_minor, Some(300));
}
