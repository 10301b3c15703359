//! CQL helpers: the CQL backend's environment for `outboxd`, sessions
//! logged in as a role, and the relay role's grants as
//! docs/OPERATIONS.md lists them (tests run exactly the documented block).

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

use super::repo_root;

/// The GRANT statements of docs/OPERATIONS.md ("Grants of the relay role",
/// the block after `<!-- relay-grants -->`) for `keyspace` and `role`.
pub fn relay_grants(keyspace: &str, role: &str) -> Vec<String> {
    let ops = std::fs::read_to_string(repo_root().join("docs/OPERATIONS.md")).unwrap();
    let block = ops.split("<!-- relay-grants -->").nth(1).expect("docs/OPERATIONS.md has the relay-grants block");
    let block = block.split("```").nth(1).expect("a fenced block follows the marker");
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GRANT "))
        .map(|l| l.trim_end_matches(';').replace(" outbox.", &format!(" {keyspace}.")).replace("outboxd_relay", role))
        .collect()
}

/// The resource a GRANT statement names (`ks.table`, or `KEYSPACE`).
pub fn grant_resource(grant: &str) -> String {
    grant.split(" ON ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or_default().to_string()
}

/// The environment that puts `outboxd` on the CQL store at `uri`, `keyspace`.
pub fn cql_env(uri: &str, keyspace: &str) -> [(&'static str, String); 3] {
    [
        ("OUTBOX_STORE__BACKEND", "cql".into()),
        ("OUTBOX_STORE__CQL__URI", uri.into()),
        ("OUTBOX_STORE__CQL__KEYSPACE", keyspace.into()),
    ]
}

/// A CQL session logged in as `user`.
pub async fn cql_login(uri: &str, user: &str, password: &str) -> Arc<Session> {
    let session = SessionBuilder::new().known_node(uri).user(user, password).build().await;
    Arc::new(session.unwrap_or_else(|e| panic!("connect to {uri} as {user}: {e}")))
}

/// The CQL server the tests use (`CASSANDRA_URI`, else `SCYLLA_URI`), or
/// `None` after printing why `what` is skipped.
pub fn cql_uri_or_skip(what: &str) -> Option<String> {
    let uri =
        std::env::var("CASSANDRA_URI").ok().or_else(|| std::env::var("SCYLLA_URI").ok()).filter(|s| !s.is_empty());
    if uri.is_none() {
        super::skipped(true, &format!("{what}: set CASSANDRA_URI (make test starts Cassandra) or SCYLLA_URI"));
    }
    uri
}

/// A migrated CQL store in a keyspace of its own (`<prefix>_<uuid>`), and a
/// plain session on the same server (for the faults a test makes itself).
pub async fn fresh_cql_store(uri: &str, prefix: &str) -> (Arc<outboxd::store::cql::CqlStore>, String, Arc<Session>) {
    let keyspace = format!("{prefix}_{}", uuid::Uuid::now_v7().simple());
    let cfg = outboxd::config::CqlConfig { uri: uri.into(), keyspace: keyspace.clone(), ..Default::default() };
    let store = outboxd::store::cql::CqlStore::connect(&cfg).await.expect("connect to CQL");
    outboxd::store::EventStore::migrate(&*store).await.expect("create keyspace and tables");
    let session = SessionBuilder::new().known_node(uri).build().await.expect("a plain session");
    (store, keyspace, Arc::new(session))
}
