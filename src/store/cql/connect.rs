//! Connecting to a CQL cluster: configuration strings, the session, and what
//! the server is (ScyllaDB or Apache Cassandra, CDC log or not).
//!
//! Guarantee: `connect` creates nothing (that is `migrate`); a bad
//! consistency or keyspace name is refused before connecting, an unreachable
//! cluster is `Unavailable` naming `store.cql.uri`. Metadata queries use their
//! own 10 s timeout, not a (possibly tight) configured request timeout.
//! Production shape: password authentication (`store.cql.username`,
//! `password`), TLS (`store.cql.tls`, see `security`), and DC-aware load
//! balancing (`store.cql.local_dc`, checked against the cluster's
//! datacenters at connect); a refused login or certificate says which key
//! to look at and never shows the password.

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::statement::{Consistency, SerialConsistency, Statement};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

use super::append::{BatchExecutor, SessionBatches};
use super::security;
use super::{codec, exec_err, unavailable, CqlStore, CDC_LOG_TABLE};
use crate::config::CqlConfig;
use crate::store::StoreError;
use scylla::policies::load_balancing::DefaultPolicy;

/// Parses `store.cql.consistency` (`config::parse_consistency`), as a store error.
pub fn parse_consistency(s: &str) -> Result<Consistency, StoreError> {
    crate::config::parse_consistency(s).map_err(unsupported)
}

/// Parses `store.cql.serial_consistency` (`config::parse_serial_consistency`), as a store error.
pub fn parse_serial_consistency(s: &str) -> Result<SerialConsistency, StoreError> {
    crate::config::parse_serial_consistency(s).map_err(unsupported)
}

fn unsupported(e: crate::config::ConfigError) -> StoreError {
    StoreError::Unsupported { backend: "cql", what: e.0 }
}

fn valid_keyspace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl CqlStore {
    /// Connects to the contact points of `cfg.uri`. Does not create anything;
    /// call `migrate` for that.
    pub async fn connect(cfg: &CqlConfig) -> Result<Arc<CqlStore>, StoreError> {
        CqlStore::connect_with(cfg, Arc::new(SessionBatches)).await
    }

    /// Like [`CqlStore::connect`], with the appends' conditional batches sent
    /// through `batches` (the fault-injection seam of the append tests).
    pub async fn connect_with(cfg: &CqlConfig, batches: Arc<dyn BatchExecutor>) -> Result<Arc<CqlStore>, StoreError> {
        let consistency = parse_consistency(&cfg.consistency)?;
        let serial = parse_serial_consistency(&cfg.serial_consistency)?;
        // Unquoted CQL identifiers are case-insensitive (stored lower-case).
        let keyspace = cfg.keyspace.to_ascii_lowercase();
        if !valid_keyspace(&keyspace) {
            return Err(StoreError::Unsupported {
                backend: "cql",
                what: format!(
                    "store.cql.keyspace {:?}: use 1-48 letters, digits or '_', starting with a letter",
                    cfg.keyspace
                ),
            });
        }
        let hosts: Vec<&str> = cfg.uri.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err(unavailable(format!("store.cql.uri {:?} lists no host:port", cfg.uri)));
        }
        let timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
        let mut profile = ExecutionProfile::builder()
            .consistency(consistency)
            .serial_consistency(Some(serial))
            .request_timeout(Some(timeout))
            .retry_policy(std::sync::Arc::new(super::retry::NoBlindRetry));
        if let Some(dc) = &cfg.local_dc {
            // Token-aware within the local DC first; no silent failover to
            // remote DCs (LOCAL_* consistencies would not hold there).
            profile = profile.load_balancing_policy(DefaultPolicy::builder().prefer_datacenter(dc.clone()).build());
        }
        let mut builder = SessionBuilder::new()
            .known_nodes(&hosts)
            .connection_timeout(timeout.min(Duration::from_secs(5)))
            .keyspaces_to_fetch([keyspace.clone()])
            .default_execution_profile_handle(profile.build().into_handle());
        if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
            builder = builder.user(user.clone(), password.clone());
        }
        if let Some(tls) = &cfg.tls {
            builder = builder.tls_context(Some(security::client_config(tls)?));
        }
        let session = builder.build().await.map_err(|e| {
            unavailable(security::explain_connect_error(&cfg.uri, cfg.username.as_deref(), &e.to_string()))
        })?;
        if let Some(dc) = &cfg.local_dc {
            check_local_dc(&session, dc)?;
        }
        let session = Arc::new(session);
        let scylla = detect_scylla(&session).await.map_err(|e| unavailable(format!("CQL at {}: {e}", cfg.uri)))?;
        let store = CqlStore {
            session,
            keyspace,
            replication_factor: cfg.replication_factor.max(1),
            page_size: cfg.page_size.max(1),
            serial,
            scylla,
            cdc: AtomicBool::new(false),
            log_ttl_seconds: cfg.cdc.log_ttl_seconds,
            stmts: OnceCell::new(),
            reconcile: OnceCell::new(),
            batches,
            faults: Arc::new(crate::store::StoreFaults::named_only()),
        };
        store.refresh_cdc_flag().await?;
        Ok(Arc::new(store))
    }

    pub(super) async fn refresh_cdc_flag(&self) -> Result<bool, StoreError> {
        let on = cdc_log_exists(&self.session, &self.keyspace).await?;
        self.cdc.store(on, Ordering::Relaxed);
        Ok(on)
    }
}

/// `store.cql.local_dc` must be one of the cluster's datacenters: a typo
/// would otherwise send every request nowhere ("no nodes in the plan").
fn check_local_dc(session: &Session, dc: &str) -> Result<(), StoreError> {
    let state = session.get_cluster_state();
    let mut known: Vec<String> = state.get_nodes_info().iter().filter_map(|n| n.datacenter.clone()).collect();
    known.sort();
    known.dedup();
    if known.iter().any(|k| k == dc) {
        return Ok(());
    }
    Err(StoreError::Unsupported {
        backend: "cql",
        what: format!("store.cql.local_dc = {dc:?}: no such datacenter; the cluster has {}", known.join(", ")),
    })
}

/// A metadata query: not subject to a (possibly tight) configured request timeout.
fn meta_stmt(cql: &str) -> Statement {
    let mut st = Statement::new(cql);
    st.set_request_timeout(Some(Duration::from_secs(10)));
    st.set_is_idempotent(true);
    st
}

/// ScyllaDB has `system.scylla_local`; Apache Cassandra answers "unconfigured
/// table". A role not allowed to read it gets `Unauthorized`, which the
/// server only checks for a table that exists: ScyllaDB too.
async fn detect_scylla(session: &Session) -> Result<bool, String> {
    match session.query_unpaged(meta_stmt("SELECT key FROM system.scylla_local LIMIT 1"), ()).await {
        Ok(_) => Ok(true),
        Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, msg))) => scylla_from_refusal(&e, &msg),
        Err(e) => Err(format!("cannot query the server: {e}")),
    }
}

/// What a refused read of `system.scylla_local` says: only "no such table"
/// (Invalid) is Cassandra. Any other refusal (overloaded, a timeout, a
/// server error) says nothing: taken for Cassandra, `migrate` made the
/// tables without CDC on a ScyllaDB node that was only busy.
fn scylla_from_refusal(e: &DbError, msg: &str) -> Result<bool, String> {
    match e {
        DbError::Unauthorized => Ok(true),
        DbError::Invalid => Ok(false),
        _ if msg.to_lowercase().contains("unconfigured table") => Ok(false),
        other => {
            Err(format!("cannot tell ScyllaDB from Apache Cassandra: the server refused the check ({other}: {msg})"))
        }
    }
}

/// True when `keyspace.event_store` has its Scylla CDC log table.
pub async fn cdc_log_exists(session: &Session, keyspace: &str) -> Result<bool, StoreError> {
    let res = session
        .query_unpaged(
            meta_stmt("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = ?"),
            (keyspace, CDC_LOG_TABLE),
        )
        .await
        .map_err(|e| exec_err("cannot read system_schema.tables", e))?;
    Ok(res.into_rows_result().map_err(codec)?.rows_num() > 0)
}

/// Tests: the CQL server of `CASSANDRA_URI` (or `SCYLLA_URI`), or `None`
/// after a "SKIPPED: `what`" line saying what to set.
#[cfg(test)]
pub(crate) fn test_server_uri(what: &str) -> Option<String> {
    let uri =
        std::env::var("CASSANDRA_URI").ok().or_else(|| std::env::var("SCYLLA_URI").ok()).filter(|s| !s.is_empty());
    if uri.is_none() {
        test_skipped(&format!("{what}: set CASSANDRA_URI (make test starts one) or SCYLLA_URI"));
    }
    uri
}

/// Tests: a skip at run time, as tests/harness's `skipped(true, ..)`: the
/// SKIPPED line, and one line `<test>\twhole\t<reason>` in the file
/// `OUTBOXD_SKIP_LOG` names (`make test` sets it) for the run's summary.
#[cfg(test)]
pub(crate) fn test_skipped(reason: &str) {
    use std::io::Write;
    eprintln!("SKIPPED: {reason}");
    let Some(path) = std::env::var_os("OUTBOXD_SKIP_LOG").filter(|p| !p.is_empty()) else { return };
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{test}\twhole\t{}\n", reason.replace(['\t', '\n'], " "));
    let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
    if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
        eprintln!("cannot record the skip in {}: {e}", std::path::Path::new(&path).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_strings() {
        assert_eq!(parse_consistency("LOCAL_QUORUM").unwrap(), Consistency::LocalQuorum);
        assert_eq!(parse_consistency("quorum").unwrap(), Consistency::Quorum);
        // Review finding: `any` (reads fail) and levels below a quorum (a
        // read can miss a committed park row) were accepted.
        for low in ["any", "one", "ONE", "two", "three", "local_one"] {
            assert!(parse_consistency(low).unwrap_err().to_string().contains("below a quorum"), "{low}");
        }
        assert!(parse_consistency("most").unwrap_err().to_string().contains("store.cql.consistency"));
        // Review finding: ScyllaDB refuses reads at EACH_QUORUM (writes
        // only), and this level serves every read.
        assert!(parse_consistency("EACH_QUORUM").unwrap_err().to_string().contains("ScyllaDB refuses reads"));
        assert_eq!(parse_serial_consistency("local_serial").unwrap(), SerialConsistency::LocalSerial);
        assert_eq!(parse_serial_consistency("SERIAL").unwrap(), SerialConsistency::Serial);
        assert!(parse_serial_consistency("quorum").unwrap_err().to_string().contains("serial_consistency"));
    }

    /// Review finding: any refusal of the check (Overloaded, a timeout)
    /// read as "Apache Cassandra", so a busy ScyllaDB node got its tables
    /// made without CDC and the daemon refused to start ("not ScyllaDB").
    #[test]
    fn only_no_such_table_says_cassandra() {
        assert_eq!(scylla_from_refusal(&DbError::Invalid, "unconfigured table scylla_local"), Ok(false));
        assert_eq!(scylla_from_refusal(&DbError::Unauthorized, "no SELECT permission"), Ok(true));
        assert_eq!(scylla_from_refusal(&DbError::SyntaxError, "unconfigured table scylla_local"), Ok(false));
        for busy in [DbError::Overloaded, DbError::ServerError, DbError::IsBootstrapping, DbError::TruncateError] {
            let e = scylla_from_refusal(&busy, "try later").unwrap_err();
            assert!(e.contains("cannot tell ScyllaDB from Apache Cassandra"), "{e}");
        }
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable_and_names_the_uri() {
        let cfg = CqlConfig { uri: "127.0.0.1:1".into(), request_timeout_ms: 500, ..CqlConfig::default() };
        let err = CqlStore::connect(&cfg).await.err().expect("nothing listens on port 1");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }
}
