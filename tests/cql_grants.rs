//! Least privilege on the CQL store: the relay's CDC side runs as a role that
//! has exactly the grants docs/OPERATIONS.md lists ("Grants of the relay
//! role"), and no CREATE: the checkpoint saver, the reconciliation table, the
//! CDC origin, the event table reads, the schema checks all work; creating a
//! table is refused, and so is scylla-cdc's own `TableBackedCheckpointSaver`
//! (it runs CREATE TABLE), which outboxd therefore does not use.
//!
//! Needs the auth-enabled Cassandra of `scripts/cassandra-local.sh start --secure`
//! (`CASSANDRA_SECURE_URI`, user cassandra/cassandra; `make test` exports it).
//! Cassandra has no Scylla CDC log and no `system_distributed.cdc_*` tables:
//! the grants on those are checked on ScyllaDB by `make integration-test`.

mod harness;

use scylla::client::session::Session;
use std::time::Duration;
use uuid::Uuid;

use outboxd::config::CqlConfig;
use outboxd::relay::cdc::progress::StreamKey;
use outboxd::relay::cdc::runner::read_origin;
use outboxd::relay::cdc::saver::{Flushed, LeaseCheckpointSaver};
use outboxd::store::cql::reconcile::ReconcileTable;
use outboxd::store::cql::{cdc_log_exists, schema_statements, CqlStore};
use outboxd::store::EventStore;

struct Secure {
    uri: String,
    user: String,
    password: String,
}

fn secure() -> Option<Secure> {
    let get = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    let Some(uri) = get("CASSANDRA_SECURE_URI") else {
        crate::harness::skipped(true, "least-privilege grants test: set CASSANDRA_SECURE_URI (scripts/cassandra-local.sh start --secure; make test exports it)");
        return None;
    };
    Some(Secure {
        uri,
        user: get("CASSANDRA_SECURE_USER").unwrap_or("cassandra".into()),
        password: get("CASSANDRA_SECURE_PASSWORD").unwrap_or("cassandra".into()),
    })
}

async fn table_exists(admin: &Session, qualified: &str) -> bool {
    let (ks, t) = qualified.split_once('.').unwrap();
    let res = admin
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?",
            (ks, t),
        )
        .await
        .unwrap();
    res.into_rows_result().unwrap().rows_num() > 0
}

/// Grants `role` exactly the documented relay grants on `ks` (those on
/// tables this server has); returns the resources granted.
async fn grant_documented(admin: &Session, ks: &str, role: &str) -> Vec<String> {
    let mut granted = Vec::new();
    let all = harness::relay_grants(ks, role);
    assert!(all.len() >= 18, "the documented list: {all:#?}");
    for g in all {
        let resource = harness::grant_resource(&g);
        if resource.starts_with("KEYSPACE") || table_exists(admin, &resource).await {
            admin.query_unpaged(g.clone(), ()).await.unwrap_or_else(|e| panic!("{g}: {e}"));
            granted.push(resource);
        } else {
            eprintln!("not on this server (Scylla only): {g}");
        }
    }
    granted
}

fn unauthorized(e: &dyn std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("Unauthorized") || s.contains("has no CREATE permission") || s.contains("permission")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_with_exactly_the_documented_grants_and_no_create() {
    let Some(sec) = secure() else { return };
    let admin = harness::cql_login(&sec.uri, &sec.user, &sec.password).await;
    let ks = format!("g_{}", Uuid::now_v7().simple());
    for stmt in schema_statements(&ks, 1, false, 86_400) {
        admin.query_unpaged(stmt, ()).await.expect("outboxd schema as the admin role");
    }
    admin.await_schema_agreement().await.unwrap();
    let role = format!("relay_{}", Uuid::now_v7().simple());
    admin.query_unpaged(format!("CREATE ROLE {role} WITH PASSWORD = 'relay-pw' AND LOGIN = true"), ()).await.unwrap();
    let granted = grant_documented(&admin, &ks, &role).await;
    for t in [
        "relay_leases",
        "append_reconciliation",
        "checkpoints",
        "event_store",
        "dead_letter_queue",
        "parked_aggregates",
        "relay_requests",
    ] {
        assert!(granted.iter().any(|r| r == &format!("{ks}.{t}")), "{t} is granted: {granted:?}");
    }
    admin
        .query_unpaged(format!("UPDATE {ks}.relay_leases SET epoch = 1 WHERE name = 'kafka-relay' IF epoch = null"), ())
        .await
        .unwrap();
    let a = Uuid::now_v7();
    admin
        .query_unpaged(format!("INSERT INTO {ks}.event_store (aggregate_id, sequence_number, event_id, payload) VALUES (?, 1, ?, '{{}}')"), (a, Uuid::now_v7()))
        .await
        .unwrap();

    let relay = harness::cql_login(&sec.uri, &role, "relay-pw").await;
    // Schema checks and the CDC origin.
    assert!(!cdc_log_exists(&relay, &ks).await.unwrap(), "Cassandra has no CDC log; the check itself is allowed");
    read_origin(&relay, &ks).await;
    relay
        .query_unpaged(format!("SELECT position FROM {ks}.checkpoints WHERE consumer = 'cdc:origin'"), ())
        .await
        .expect("SELECT on checkpoints");
    // The checkpoint saver, fenced by the lease epoch (conditional batches).
    let saver =
        LeaseCheckpointSaver::open(relay.clone(), &ks, "kafka-relay", Some(1), Duration::from_secs(86_400), None)
            .await
            .expect("saver opens without CREATE");
    saver.start_generation(1_000).await.expect("generation row");
    saver.record(&StreamKey(vec![1; 16]), 5_000).unwrap();
    assert_eq!(saver.flush().await.unwrap(), Flushed::Saved(1));
    // Reconciliation rows: list, record (the store side), confirm.
    let table = ReconcileTable::open(relay.clone(), &ks).await.unwrap();
    table.record(a, &[(1, Uuid::now_v7())], chrono::Utc::now()).await.unwrap();
    assert_eq!(table.list().await.unwrap().len(), 1);
    table.confirm(a, 1).await.unwrap();
    // Loading events (reconciliation fills) and the dead-letter tables.
    relay
        .query_unpaged(
            format!("SELECT event_id FROM {ks}.event_store WHERE aggregate_id = ? AND sequence_number > 0"),
            (a,),
        )
        .await
        .expect("SELECT on event_store");
    relay
        .query_unpaged(
            format!("INSERT INTO {ks}.dead_letter_by_event (event_id, id) VALUES (?, ?) IF NOT EXISTS"),
            (Uuid::now_v7(), Uuid::now_v7()),
        )
        .await
        .expect("DLQ lookup LWT");

    // Parking, discarded events and operator requests (read and conditional writes).
    for t in ["parked_aggregates", "discarded_events", "relay_requests"] {
        relay
            .query_unpaged(format!("SELECT * FROM {ks}.{t} WHERE consumer = 'kafka-relay'"), ())
            .await
            .unwrap_or_else(|e| panic!("SELECT on {t}: {e}"));
    }
    relay
        .query_unpaged(
            format!(
                "DELETE FROM {ks}.parked_aggregates WHERE consumer = 'kafka-relay' AND aggregate_id = 'x' IF EXISTS"
            ),
            (),
        )
        .await
        .expect("conditional write on parked_aggregates");

    // No CREATE: a table cannot be created, and scylla-cdc's default saver
    // (CREATE TABLE IF NOT EXISTS) fails where ours works.
    let err = relay.query_unpaged(format!("CREATE TABLE {ks}.sneaky (k int PRIMARY KEY)"), ()).await.unwrap_err();
    assert!(unauthorized(&err), "{err}");
    let err = scylla_cdc::checkpoints::TableBackedCheckpointSaver::new_with_default_ttl(
        relay.clone(),
        &ks,
        "cdc_checkpoints",
    )
    .await
    .err()
    .expect("needs CREATE");
    assert!(unauthorized(&err), "{err:#}");
    // Nothing beyond the list: the role cannot write the event table.
    let err = relay
        .query_unpaged(format!("INSERT INTO {ks}.event_store (aggregate_id, sequence_number) VALUES (?, 2)"), (a,))
        .await
        .unwrap_err();
    assert!(unauthorized(&err), "{err}");
    admin.query_unpaged(format!("DROP ROLE {role}"), ()).await.unwrap();
}

/// Review finding: `outboxd run` migrates at start, and `CREATE KEYSPACE IF
/// NOT EXISTS` is refused to a role without CREATE even when the keyspace
/// exists: under the documented grants (the relay's, plus what `run` adds
/// for the command API) the daemon could not start. A schema in place now
/// needs no statement; a missing one fails naming `outboxd schema`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_under_the_documented_role_migrates_without_schema_statements() {
    let Some(sec) = secure() else { return };
    let admin = harness::cql_login(&sec.uri, &sec.user, &sec.password).await;
    let ks = format!("g_{}", Uuid::now_v7().simple());
    let cfg = |keyspace: &str, user: &str, password: &str| CqlConfig {
        uri: sec.uri.clone(),
        keyspace: keyspace.into(),
        username: Some(user.into()),
        password: Some(password.into()),
        ..CqlConfig::default()
    };
    // `outboxd schema`, as the admin role.
    CqlStore::connect(&cfg(&ks, &sec.user, &sec.password)).await.unwrap().migrate().await.expect("admin migrate");
    let role = format!("run_{}", Uuid::now_v7().simple());
    admin.query_unpaged(format!("CREATE ROLE {role} WITH PASSWORD = 'run-pw' AND LOGIN = true"), ()).await.unwrap();
    grant_documented(&admin, &ks, &role).await;
    // What `run` adds for the command API (docs/OPERATIONS.md, below the list).
    for t in ["event_store", "snapshots"] {
        admin.query_unpaged(format!("GRANT MODIFY ON {ks}.{t} TO {role}"), ()).await.unwrap();
        admin.query_unpaged(format!("GRANT SELECT ON {ks}.{t} TO {role}"), ()).await.unwrap();
    }
    let store = CqlStore::connect(&cfg(&ks, &role, "run-pw")).await.expect("connect as the run role");
    store.migrate().await.expect("a schema in place needs no CREATE or ALTER");
    let a = Uuid::now_v7();
    let ev = harness::order_events(a, 0, 2);
    store.append(a, 0, ev.clone()).await.expect("append as the run role");
    assert_eq!(store.load(a).await.unwrap(), ev);
    // A keyspace without the schema: refused, naming the way out.
    let empty = format!("g_{}", Uuid::now_v7().simple());
    let err = CqlStore::connect(&cfg(&empty, &role, "run-pw")).await.unwrap().migrate().await.unwrap_err();
    assert!(err.to_string().contains("outboxd schema"), "{err}");
    admin.query_unpaged(format!("DROP ROLE {role}"), ()).await.unwrap();
}
