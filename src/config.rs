//! Configuration: defaults <- TOML file <- `OUTBOX_*` environment variables.
//!
//! Nested keys use `__` in variable names: `OUTBOX_KAFKA__BROKERS`,
//! `OUTBOX_STORE__BACKEND`, `OUTBOX_RELAY__RETRY__MAX_ATTEMPTS`.
//! Guarantee: `Config::load` either returns a validated configuration or a
//! `ConfigError` whose message names the key and what is wrong with it (the
//! CLI prints it and exits 2); unknown keys in the file are errors, not
//! silently ignored typos.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::store::sqlite::SqliteOptions;

/// `OUTBOX_CONFIG` without its prefix: the variable that names the config
/// file. figment would otherwise read it as a top-level key `config`.
const CONFIG_FILE_VAR_KEY: &str = "config";

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub kafka: KafkaConfig,
    pub relay: RelayConfig,
    pub http: HttpConfig,
    pub health: HealthConfig,
    pub service: ServiceConfig,
    pub supervision: SupervisionConfig,
    pub shutdown_deadline_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            store: StoreConfig::default(),
            kafka: KafkaConfig::default(),
            relay: RelayConfig::default(),
            http: HttpConfig::default(),
            health: HealthConfig::default(),
            service: ServiceConfig::default(),
            supervision: SupervisionConfig::default(),
            shutdown_deadline_ms: 30_000,
        }
    }
}

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
    pub cdc: CdcConfig,
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
            cdc: CdcConfig::default(),
        }
    }
}

/// scylla-cdc reader tuning (see docs/OPERATIONS.md for the latency floor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdcConfig {
    /// Width of each CDC log query window.
    pub window_size_ms: u64,
    /// Rows younger than this are not read yet (lets in-flight writes land).
    pub safety_interval_ms: u64,
    /// Pause between window queries once caught up.
    pub sleep_interval_ms: u64,
    /// How often scylla-cdc saves stream progress.
    pub checkpoint_interval_ms: u64,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            window_size_ms: 30_000,
            safety_interval_ms: 5_000,
            sleep_interval_ms: 1_000,
            checkpoint_interval_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TopicRouting {
    /// `order-events`, `customer-events` (default; keeps one aggregate's events in one topic).
    PerAggregate,
    /// The seeds' `OrderCreated`, `OrderUpdated`, `OrderCancelled`, ... topics.
    PerEventType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn as_str(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated `host:port`.
    pub brokers: String,
    pub topic_routing: TopicRouting,
    /// Prepended to every topic name (e.g. `prod.`).
    pub topic_prefix: String,
    /// Partitions for topics the relay creates.
    pub partitions: i32,
    pub replication_factor: i32,
    pub compression: Compression,
    /// librdkafka `max.in.flight.requests.per.connection` (<= 5 with idempotence).
    pub max_in_flight_requests: u32,
    /// librdkafka `linger.ms`.
    pub linger_ms: u32,
    /// How long one delivery may take before it counts as failed.
    pub message_timeout_ms: u64,
    /// `ce_source` header value.
    pub source: String,
    /// Extra librdkafka properties (e.g. security settings).
    pub extra: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_routing: TopicRouting::PerAggregate,
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
            compression: Compression::Lz4,
            max_in_flight_requests: 5,
            linger_ms: 5,
            message_timeout_ms: 10_000,
            source: "/outboxd".into(),
            extra: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts per event before the breaker / DLQ decides (seed: 5).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 500, multiplier: 2.0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (seed: 5).
    pub failure_threshold: u32,
    /// Time the circuit stays open before a half-open probe (seed: 30 s).
    pub open_timeout_ms: u64,
    /// Successes in half-open that close it (seed: 3).
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, open_timeout_ms: 30_000, success_threshold: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Checkpoint name of this relay in the `checkpoints` table.
    pub consumer_name: String,
    /// Events read from the feed per query.
    pub batch_size: usize,
    /// Most events published but not yet confirmed.
    pub max_in_flight: usize,
    /// Fallback poll when no in-process wake-up arrives (other writers).
    pub poll_interval_ms: u64,
    /// Seed behaviour: dead-letter even transient failures after the retries.
    /// Off by default: an outage must pause the relay, not empty it into the DLQ.
    pub dlq_on_transient_exhaustion: bool,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            consumer_name: "kafka-relay".into(),
            batch_size: 1000,
            max_in_flight: 10_000,
            poll_interval_ms: 500,
            dlq_on_transient_exhaustion: false,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Command API address.
    pub listen: String,
    /// Admin server (/metrics, /health).
    pub admin_listen: String,
    /// When set, the command API requires `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
    pub max_body_bytes: usize,
    pub workers: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            api_token: None,
            max_body_bytes: 64 * 1024,
            workers: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub interval_ms: u64,
    /// Relay lag (events) above which the relay is Degraded.
    pub lag_degraded_events: i64,
    /// Projection lag (events committed but not yet in the read models)
    /// above which the `projections` component is Degraded.
    pub projection_lag_degraded_events: i64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { interval_ms: 10_000, lag_degraded_events: 10_000, projection_lag_degraded_events: 10_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub max_conflict_retries: u32,
    pub snapshot_every: i64,
    pub default_currency: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig { max_conflict_retries: 3, snapshot_every: 100, default_currency: "EUR".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window_ms` before giving up.
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    pub restart_backoff_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig { max_restarts: 5, restart_window_ms: 60_000, restart_backoff_ms: 200 }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given; must exist), then `OUTBOX_*`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("config file {} does not exist", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        // `OUTBOX_CONFIG` names the file (read by the CLI as `--config`); it is not a key.
        fig = fig.merge(Env::prefixed("OUTBOX_").ignore(&[CONFIG_FILE_VAR_KEY]).split("__"));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string().replace('\n', "; ")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        validate_hosts("kafka.brokers", &self.kafka.brokers)?;
        if self.store.backend == Backend::Cql {
            validate_hosts("store.cql.uri", &self.store.cql.uri)?;
            if !valid_cql_ident(&self.store.cql.keyspace) {
                return err(format!(
                    "store.cql.keyspace {:?}: use 1-48 letters, digits or '_', starting with a letter",
                    self.store.cql.keyspace
                ));
            }
        }
        if self.store.path.as_os_str().is_empty() {
            return err("store.path must not be empty".into());
        }
        for (t, _) in crate::relay::topics::all_topics(self) {
            validate_topic(&t)?;
        }
        if !(1..=10_000).contains(&self.kafka.partitions) {
            return err(format!("kafka.partitions = {}: must be 1..=10000", self.kafka.partitions));
        }
        if self.kafka.replication_factor < 1 {
            return err("kafka.replication_factor must be >= 1".into());
        }
        if !(1..=5).contains(&self.kafka.max_in_flight_requests) {
            return err(format!(
                "kafka.max_in_flight_requests = {}: must be 1..=5 (idempotent producer)",
                self.kafka.max_in_flight_requests
            ));
        }
        if self.kafka.message_timeout_ms < 1_000 {
            return err("kafka.message_timeout_ms must be >= 1000".into());
        }
        let r = &self.relay;
        if r.batch_size == 0 || r.max_in_flight == 0 || r.poll_interval_ms == 0 {
            return err("relay.batch_size, relay.max_in_flight and relay.poll_interval_ms must be > 0".into());
        }
        if r.consumer_name.trim().is_empty() {
            return err("relay.consumer_name must not be empty".into());
        }
        if r.retry.max_attempts == 0
            || r.retry.initial_backoff_ms == 0
            || r.retry.multiplier < 1.0
            || r.retry.max_backoff_ms < r.retry.initial_backoff_ms
        {
            return err("relay.retry: max_attempts >= 1, initial_backoff_ms >= 1, multiplier >= 1, max_backoff_ms >= initial_backoff_ms".into());
        }
        if r.breaker.failure_threshold == 0 || r.breaker.success_threshold == 0 || r.breaker.open_timeout_ms == 0 {
            return err("relay.breaker: failure_threshold, success_threshold and open_timeout_ms must be > 0".into());
        }
        for (k, v) in [("http.listen", &self.http.listen), ("http.admin_listen", &self.http.admin_listen)] {
            if v.parse::<std::net::SocketAddr>().is_err() {
                return err(format!("{k} = {v:?}: expected ip:port, e.g. 127.0.0.1:8080"));
            }
        }
        if self.http.max_body_bytes < 1024 {
            return err("http.max_body_bytes must be >= 1024".into());
        }
        if let Some(t) = &self.http.api_token {
            if t.len() < 16 {
                return err("http.api_token must be at least 16 characters".into());
            }
        }
        if self.health.interval_ms < 100 {
            return err("health.interval_ms must be >= 100".into());
        }
        if self.health.projection_lag_degraded_events < 1 {
            return err("health.projection_lag_degraded_events must be >= 1 (some lag is normal while events are being applied)".into());
        }
        crate::domain::Currency::new(&self.service.default_currency).map_err(|_| {
            ConfigError(format!(
                "service.default_currency {:?}: expected a code like EUR",
                self.service.default_currency
            ))
        })?;
        if self.supervision.max_restarts == 0 {
            return err("supervision.max_restarts must be >= 1".into());
        }
        Ok(())
    }
}

fn validate_hosts(key: &str, list: &str) -> Result<(), ConfigError> {
    let hosts: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if hosts.is_empty() {
        return Err(ConfigError(format!("{key} must list at least one host:port")));
    }
    for h in hosts {
        let ok =
            h.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(ConfigError(format!("{key}: {h:?} is not host:port")));
        }
    }
    Ok(())
}

/// Kafka's legal topic names: 1-249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic(t: &str) -> Result<(), ConfigError> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!("topic name {t:?} is not valid for Kafka: use 1-249 of letters, digits, '.', '_' or '-' (check kafka.topic_prefix)")))
    }
}

fn valid_cql_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = Config::default();
        c.kafka.topic_prefix = "bad topic/".into();
        assert!(c.validate().unwrap_err().to_string().contains("kafka.topic_prefix"));
        let mut c = Config::default();
        c.kafka.brokers = "localhost".into();
        assert!(c.validate().unwrap_err().to_string().contains("kafka.brokers"));
        let mut c = Config::default();
        c.http.listen = "nope".into();
        assert!(c.validate().unwrap_err().to_string().contains("http.listen"));
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Error is large; only in this test
    fn file_and_env_layering() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("o.toml", "[kafka]\nbrokers = \"10.0.0.1:9092\"\npartitions = 3\n")?;
            jail.set_env("OUTBOX_KAFKA__PARTITIONS", "12");
            let c = Config::load(Some(Path::new("o.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.brokers, "10.0.0.1:9092");
            assert_eq!(c.kafka.partitions, 12);
            jail.set_env("OUTBOX_KAFKA__PARTITIONS", "many");
            let e = Config::load(Some(Path::new("o.toml"))).unwrap_err().to_string();
            assert!(e.to_lowercase().contains("partitions"), "{e}");
            // OUTBOX_CONFIG names the file; it is not a configuration key.
            jail.set_env("OUTBOX_KAFKA__PARTITIONS", "12");
            jail.set_env("OUTBOX_CONFIG", "o.toml");
            let c = Config::load(Some(Path::new("o.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.partitions, 12);
            jail.create_file("typo.toml", "[kafka]\nbrokerz = \"x:1\"\n")?;
            let e = Config::load(Some(Path::new("typo.toml"))).unwrap_err().to_string();
            assert!(e.contains("brokerz"), "{e}");
            Ok(())
        });
    }
}
