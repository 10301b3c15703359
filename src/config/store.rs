//! `[store]`: which backend holds the events, and its options.
//!
//! Guarantee: plain option types with their defaults and the checks of their
//! own keys; the store layer reads them, nothing here opens anything.

use scylla::statement::{Consistency, SerialConsistency};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use super::{valid_cql_ident, validate_hosts, CdcConfig, ConfigError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Cql,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: Backend,
    /// SQLite database file.
    pub path: PathBuf,
    pub sqlite: SqliteOptions,
    pub cql: CqlConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Sqlite,
            path: PathBuf::from("data/outbox.db"),
            sqlite: SqliteOptions::default(),
            cql: CqlConfig::default(),
        }
    }
}

impl StoreConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.backend == Backend::Cql {
            validate_hosts("store.cql.uri", &self.cql.uri)?;
            self.cql.validate_security()?;
            if !valid_cql_ident(&self.cql.keyspace) {
                return Err(ConfigError(format!(
                    "store.cql.keyspace {:?}: use 1-48 letters, digits or '_', starting with a letter",
                    self.cql.keyspace
                )));
            }
            self.cql.cdc.validate()?;
            self.cql.validate_numbers()?;
        }
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError("store.path must not be empty".into()));
        }
        if self.sqlite.group_commit_max == 0 {
            return Err(ConfigError("store.sqlite.group_commit_max must be >= 1".into()));
        }
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.sqlite.queue_capacity) {
            return Err(ConfigError(format!(
                "store.sqlite.queue_capacity = {}: must be 1..={MAX_QUEUE_CAPACITY}",
                self.sqlite.queue_capacity
            )));
        }
        if self.sqlite.busy_timeout_ms > MAX_BUSY_TIMEOUT_MS {
            return Err(ConfigError(format!(
                "store.sqlite.busy_timeout_ms = {}: must be 0..={MAX_BUSY_TIMEOUT_MS} (10 minutes)",
                self.sqlite.busy_timeout_ms
            )));
        }
        Ok(())
    }
}

/// Longest `store.sqlite.busy_timeout_ms`: 10 minutes, like the longest
/// `relay.lease_ttl_ms` (SQLite itself takes at most `i32::MAX` ms; beyond
/// that opening the store would fail, not wait).
const MAX_BUSY_TIMEOUT_MS: u64 = 600_000;

/// Most `store.sqlite.queue_capacity`: far beyond any useful backlog of
/// appends waiting for the one writer (tokio's channel panics past
/// `usize::MAX >> 3`).
const MAX_QUEUE_CAPACITY: usize = 1_000_000;

/// Tuning of the SQLite backend (`[store.sqlite]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteOptions {
    /// `full` (fsync every commit; default, nothing acknowledged is lost on
    /// power failure) or `normal` (WAL default; survives process crashes).
    pub synchronous: Synchronous,
    /// How long a write waits for another process holding the lock
    /// (0..=600 000; 0: not at all).
    pub busy_timeout_ms: u64,
    /// Most appends group-committed in one transaction.
    pub group_commit_max: usize,
    /// Bound of the writer queue: appends waiting for the writer thread
    /// (1..=1 000 000).
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    Full,
    Normal,
}

impl Synchronous {
    /// The value of `PRAGMA synchronous`.
    pub fn pragma(&self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            busy_timeout_ms: 5_000,
            group_commit_max: 256,
            queue_capacity: 4_096,
        }
    }
}

/// `[store.cql]`: the ScyllaDB / Cassandra cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CqlConfig {
    /// Contact points, comma separated `host:port`.
    pub uri: String,
    pub keyspace: String,
    /// Replication used when `outboxd schema` creates the keyspace.
    pub replication_factor: u32,
    /// Consistency of writes and reads (`local_quorum`, `quorum`, `one`, ...).
    pub consistency: String,
    /// Serial consistency of the conditional append (`local_serial` or `serial`).
    pub serial_consistency: String,
    pub request_timeout_ms: u64,
    /// Rows per page when loading an aggregate.
    pub page_size: i32,
    /// Password authentication (PasswordAuthenticator): both or neither.
    pub username: Option<String>,
    /// A secret: redacted in `outboxd config`, scrubbed from logs and errors.
    pub password: Option<String>,
    /// Client-to-node encryption; absent: plaintext.
    pub tls: Option<CqlTls>,
    /// The local datacenter: requests go to its nodes first (DC-aware load
    /// balancing); absent: every node alike. Checked against the cluster at
    /// connect.
    pub local_dc: Option<String>,
    pub cdc: CdcConfig,
}

/// `[store.cql.tls]`: TLS to the CQL nodes (rustls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CqlTls {
    /// PEM file with the CA certificate(s) the nodes' certificates chain to.
    pub ca_file: PathBuf,
    /// PEM client certificate (chain), for nodes that require one; with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Check that the node's certificate names the address connected to
    /// (default true). False still verifies the chain against `ca_file`.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// Parses `store.cql.consistency` (any case): the one reading of the key,
/// used when the configuration is loaded and when the store connects.
/// Only a quorum or more: the relay decides on what it reads (the parked
/// aggregates at a term's start, requests, leases), and a read below a
/// quorum can miss a row a compare-and-set committed (a park it would then
/// publish past, out of order); `any` cannot read at all. `each_quorum`
/// is refused too: ScyllaDB takes it for writes only, so every read (the
/// store's and scylla-cdc's) would fail.
pub fn parse_consistency(s: &str) -> Result<Consistency, ConfigError> {
    Ok(match s.trim().to_ascii_lowercase().as_str() {
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        low @ ("any" | "one" | "two" | "three" | "local_one") => {
            return Err(ConfigError(format!(
                "store.cql.consistency = {low:?}: below a quorum, a read can miss what a compare-and-set committed (a parked aggregate, a lease); use local_quorum, quorum or all"
            )))
        }
        "each_quorum" => {
            return Err(ConfigError(
                "store.cql.consistency = \"each_quorum\": ScyllaDB refuses reads at EACH_QUORUM (writes only) and this setting serves reads too; use quorum for several datacenters".into(),
            ))
        }
        _ => {
            return Err(ConfigError(format!(
                "store.cql.consistency = {s:?}: expected one of local_quorum, quorum, all"
            )))
        }
    })
}

/// Parses `store.cql.serial_consistency` (any case).
pub fn parse_serial_consistency(s: &str) -> Result<SerialConsistency, ConfigError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "serial" => Ok(SerialConsistency::Serial),
        "local_serial" => Ok(SerialConsistency::LocalSerial),
        _ => Err(ConfigError(format!("store.cql.serial_consistency = {s:?}: expected serial or local_serial"))),
    }
}

impl CqlConfig {
    fn validate_numbers(&self) -> Result<(), ConfigError> {
        let reads = parse_consistency(&self.consistency)?;
        let serial = parse_serial_consistency(&self.serial_consistency)?;
        // `serial` decides compare-and-sets across datacenters; a read in one
        // of them then needs a global quorum to see them: at local_quorum it
        // can miss a park, lease or request committed in another one (a
        // leader there parked an aggregate this one would publish past).
        if serial == SerialConsistency::Serial && reads == Consistency::LocalQuorum {
            return Err(ConfigError(
                "store.cql.serial_consistency = \"serial\" (instances in several datacenters) needs store.cql.consistency = quorum or all: a local_quorum read can miss what a compare-and-set committed in another datacenter".into(),
            ));
        }
        if self.replication_factor == 0 {
            return Err(ConfigError("store.cql.replication_factor must be >= 1".into()));
        }
        if self.page_size < 1 {
            return Err(ConfigError(format!("store.cql.page_size = {}: must be >= 1", self.page_size)));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError("store.cql.request_timeout_ms must be >= 1".into()));
        }
        Ok(())
    }

    fn validate_security(&self) -> Result<(), ConfigError> {
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(ConfigError("store.cql.username must not be empty".into()));
            }
            (Some(_), None) => return Err(ConfigError("store.cql.username is set: set store.cql.password too".into())),
            (None, Some(_)) => return Err(ConfigError("store.cql.password is set: set store.cql.username too".into())),
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.ca_file.as_os_str().is_empty() {
                return Err(ConfigError("store.cql.tls.ca_file must name a PEM file".into()));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError(
                    "store.cql.tls: cert_file and key_file go together (a client certificate and its key)".into(),
                ));
            }
        }
        if self.local_dc.as_deref().is_some_and(|dc| dc.trim().is_empty()) {
            return Err(ConfigError("store.cql.local_dc must not be empty (leave it out for no preference)".into()));
        }
        Ok(())
    }
}

impl Default for CqlConfig {
    fn default() -> Self {
        CqlConfig {
            uri: "127.0.0.1:9042".into(),
            keyspace: "outbox".into(),
            replication_factor: 1,
            consistency: "local_quorum".into(),
            serial_consistency: "local_serial".into(),
            request_timeout_ms: 10_000,
            page_size: 1000,
            username: None,
            password: None,
            tls: None,
            local_dc: None,
            cdc: CdcConfig::default(),
        }
    }
}
