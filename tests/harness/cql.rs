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
