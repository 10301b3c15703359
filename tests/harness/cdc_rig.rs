//! The CDC request rig (`tests/cdc_requests.rs`, `tests/cdc_rewind.rs`):
//! the CQL store on the Cassandra of `CASSANDRA_URI` in a fresh keyspace,
//! the shared Kafka, the request server a CDC relay runs, the relay's saved
//! CDC progress, and `outboxd` request commands run with no relay running.

use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use outboxd::config::CqlConfig;
use outboxd::metrics::Metrics;
use outboxd::relay::cdc::progress::StreamKey;
use outboxd::relay::cdc::reconciler::ReconcilingSink;
use outboxd::relay::cdc::requests::{CdcRequestParts, CdcRequests, Rewinder};
use outboxd::relay::cdc::saver::{read_progress, LeaseCheckpointSaver};
use outboxd::relay::deliver::Deliverer;
use outboxd::relay::sink::DeadLetterSink;
use outboxd::relay::{RelayStatus, StatusTx};
use outboxd::store::cql::progress::generation_floor;
use outboxd::store::cql::reconcile::ReconcileTable;
use outboxd::store::cql::CqlStore;
use outboxd::store::parking::Parked;
use outboxd::store::{DynStore, EventStore};

use super::{config_env, create_topic, shared_brokers, test_config, topics, RELAY};

pub const LOG_TTL: Duration = Duration::from_secs(86_400);
pub const MIN: i64 = 60_000;

/// A config on the shared broker (one partition, topics created) and a
/// fresh keyspace on the Cassandra of `CASSANDRA_URI`; `None` (SKIPPED)
/// without either server.
pub struct Rig {
    pub brokers: String,
    pub cfg: outboxd::config::Config,
    pub cql: CqlConfig,
    pub store: Arc<CqlStore>,
    pub _dir: tempfile::TempDir,
}

impl Rig {
    pub async fn start(what: &str) -> Option<Rig> {
        let brokers = shared_brokers()?;
        let Some(uri) = std::env::var("CASSANDRA_URI").ok().filter(|s| !s.is_empty()) else {
            super::skipped(true, &format!("{what}: set CASSANDRA_URI (make test does)"));
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(&brokers, &dir.path().join("unused.db"));
        cfg.kafka.partitions = 1;
        let cql = CqlConfig { uri, keyspace: format!("rq_{}", Uuid::now_v7().simple()), ..CqlConfig::default() };
        let store = CqlStore::connect(&cql).await.expect("connect");
        store.migrate().await.expect("schema");
        let (b, ts) = (brokers.clone(), topics(&cfg));
        tokio::task::spawn_blocking(move || ts.iter().for_each(|t| create_topic(&b, t, 1, &[]))).await.unwrap();
        Some(Rig { brokers, cfg, cql, store, _dir: dir })
    }
}

/// The request server a CDC relay runs: its delivery call, reconciling sink
/// and the server over them, at epoch 0 (no lease).
pub async fn request_server(
    cfg: &outboxd::config::Config,
    store: &Arc<CqlStore>,
) -> (Arc<Deliverer>, Arc<ReconcilingSink<Deliverer>>, CdcRequests) {
    let dyn_store = store.clone() as DynStore;
    let sink: Arc<dyn DeadLetterSink> = Arc::new(dyn_store.clone());
    let status = StatusTx::new(tokio::sync::watch::channel(RelayStatus::default()).0);
    let deliverer = Arc::new(Deliverer::new(cfg, dyn_store.clone(), sink, Metrics::new(), status).await.unwrap());
    let table = ReconcileTable::open(store.session(), store.keyspace()).await.unwrap();
    let rsink = ReconcilingSink::new(
        deliverer.clone(),
        dyn_store.clone(),
        table,
        Duration::from_secs(120),
        1_000,
        None,
        Arc::new(|| None),
    );
    let rewind = Rewinder { saver: progress_saver(store, None).await, log_ttl: LOG_TTL, runner: None };
    let server = CdcRequests::new(CdcRequestParts {
        sink: rsink.clone(),
        deliverer: deliverer.clone(),
        store: dyn_store,
        consumer: RELAY.into(),
        epoch: 0,
        rewind,
        unsaved: Default::default(),
    });
    (deliverer, rsink, server)
}

/// The relay consumer's CDC progress saver (`epoch`: fenced by it).
pub async fn progress_saver(store: &Arc<CqlStore>, epoch: Option<i64>) -> Arc<LeaseCheckpointSaver> {
    LeaseCheckpointSaver::open(store.session(), store.keyspace(), RELAY, epoch, LOG_TTL, None).await.unwrap()
}

pub fn stream(b: u8) -> StreamKey {
    StreamKey(vec![b; 16])
}

/// Saved progress as a relay leaves it: a generation begun at `generation`,
/// first read from `lower` (its floor, if later), and `streams` published
/// up to their times.
pub async fn seed_progress(store: &Arc<CqlStore>, generation: i64, lower: i64, streams: &[(u8, i64)]) {
    let s = progress_saver(store, None).await;
    s.run_starts(lower);
    s.start_generation(generation).await.unwrap();
    for (b, t) in streams {
        s.record(&stream(*b), *t).unwrap();
    }
    s.flush().await.unwrap();
}

/// The saved time of each of `streams` and the generation's floor.
pub async fn saved_times(store: &Arc<CqlStore>, streams: &[u8]) -> (Vec<Option<i64>>, Option<i64>) {
    let rows = read_progress(&store.session(), store.keyspace(), RELAY).await.unwrap();
    let time = |b: u8| rows.iter().find(|r| r.stream == stream(b).0).and_then(|r| r.time);
    (streams.iter().map(|b| time(*b)).collect(), generation_floor(&rows))
}

/// Runs `outboxd <args>` on the CQL store with no relay running (the CLI
/// takes the lease and carries the request out) and expects it done.
pub async fn cli_request_done(cfg: &outboxd::config::Config, cql: &CqlConfig, args: &[&str]) {
    let (code, stdout) = cli_request(cfg, cql, args).await;
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("\"status\":\"done\""), "{stdout}");
}

/// `outboxd <args>` on the rig's CQL store, as a command to run.
pub fn cli_command(cfg: &outboxd::config::Config, cql: &CqlConfig, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outboxd"));
    cmd.args(args).envs(config_env(cfg)).envs(super::cql::cql_env(&cql.uri, &cql.keyspace)).env("NO_COLOR", "1");
    cmd
}

/// Runs `outboxd <args>` as above: its exit code, stdout and stderr.
pub async fn cli_request(cfg: &outboxd::config::Config, cql: &CqlConfig, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = cli_command(cfg, cql, args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), output)
}

/// The park record the CDC relay writes when `event` failed for good with `error`.
pub fn park_record(event: &outboxd::envelope::EventEnvelope, error: &str) -> Parked {
    Parked {
        consumer: RELAY.into(),
        aggregate_id: event.aggregate_id.to_string(),
        aggregate_type: Some(event.aggregate_type.clone()),
        position: None,
        sequence: Some(event.sequence),
        event_id: Some(event.event_id.to_string()),
        event_type: Some(event.event_type.clone()),
        error: error.into(),
        parked_at: chrono::Utc::now(),
    }
}

/// Makes the stored row of `aggregate`'s event `sequence` one `event_store`
/// cannot decode (its payload is no longer JSON).
pub async fn corrupt_payload(store: &CqlStore, aggregate: Uuid, sequence: i64) {
    let q = format!(
        "UPDATE {}.event_store SET payload = '{{not json' WHERE aggregate_id = ? AND sequence_number = ?",
        store.keyspace()
    );
    store.session().query_unpaged(q, (aggregate, sequence)).await.unwrap();
}
