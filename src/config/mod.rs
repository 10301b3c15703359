//! Configuration: defaults <- TOML file <- `OUTBOX_*` environment variables.
//!
//! Nested keys use `__` in variable names: `OUTBOX_KAFKA__BROKERS`,
//! `OUTBOX_STORE__BACKEND`, `OUTBOX_RELAY__RETRY__MAX_ATTEMPTS`.
//! Guarantee: `Config::load` either returns a validated configuration or a
//! `ConfigError` whose message names the key and what is wrong with it (the
//! CLI prints it and exits 2); unknown keys in the file are errors, not
//! silently ignored typos.
//!
//! One file per section ([`store`] with [`cdc`], [`kafka`], [`relay`], [`http`],
//! [`service`]); each owns its option types, defaults and key checks, and the
//! types are re-exported here (`crate::config::KafkaConfig`, ...). [`topics`]
//! names the event topics (re-exported by `relay::topics`), so that
//! `relay.progress_topic` can be checked against them. [`env`] checks the
//! `OUTBOX_*` variable names figment would drop. This layer holds plain
//! option types only: it imports nothing but the domain (to check
//! `service.default_currency`, and for the event types of the topic names).

mod cdc;
mod env;
mod errors;
mod http;
mod kafka;
mod relay;
mod secrets;
mod service;
mod store;
pub mod topics;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub use cdc::{CdcConfig, MAX_TTL_SECONDS};
pub use http::HttpConfig;
pub use kafka::{
    validate_topic, validate_topic_prefix, Compression, KafkaConfig, TopicRouting, MAX_TOPIC_LEN, MAX_TOPIC_PREFIX_LEN,
    QUEUE_MAX_KBYTES, QUEUE_MAX_MESSAGES,
};
pub use relay::{BreakerConfig, DeliveryMode, PermanentFailurePolicy, RelayConfig, RetryConfig, PROJECTION_CONSUMER};
pub use secrets::{is_secret_key, scrub, REDACTED};
pub use service::{HealthConfig, ServiceConfig, SupervisionConfig, MAX_RESTART_BACKOFF};
pub use store::{
    parse_consistency, parse_serial_consistency, Backend, CqlConfig, CqlTls, SqliteOptions, StoreConfig, Synchronous,
};

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

impl Config {
    /// Loads defaults, then `file` (if given; must exist), then `OUTBOX_*`.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("config file {} does not exist", f.display())));
            }
            if !f.is_file() {
                return Err(ConfigError(format!("config file {} is not a file", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        // A variable figment would drop (an empty part in its key) is refused by name.
        env::check_vars()?;
        // `OUTBOX_CONFIG` names the file (read by the CLI as `--config`); it is not a key.
        let env = || {
            Env::prefixed(env::PREFIX)
                .ignore(&[env::CONFIG_FILE_KEY])
                .filter(|k| !env::is_extra_property(k.as_str()))
                .split("__")
        };
        fig = fig.merge(env());
        // One librdkafka property per variable (`OUTBOX_KAFKA__EXTRA__SASL__PASSWORD`):
        // its dotted name kept whole (figment would nest `sasl` -> `password`).
        let extra: std::collections::BTreeMap<String, String> = env::extra_properties()?.into_iter().collect();
        if !extra.is_empty() {
            fig = fig.merge(Serialized::default("kafka.extra", extra));
        }
        // Secrets exactly as written: figment would parse `000123` as the number 123.
        for (key, value) in env().iter().filter(|(k, _)| is_secret_key(k.as_str())) {
            fig = fig.merge(Serialized::default(key.as_str(), value));
        }
        // Any other text key given a number or a boolean by a variable
        // (`OUTBOX_RELAY__INSTANCE_ID=1`): the text as written, as in TOML
        // with quotes. Each key once; anything else is the error.
        let vars: Vec<(String, String)> = env().iter().map(|(k, v)| (k.as_str().to_string(), v)).collect();
        let mut as_text = std::collections::HashSet::new();
        let cfg: Config = loop {
            let e = match fig.extract::<Config>() {
                Ok(cfg) => break cfg,
                Err(e) => e,
            };
            let key = e.path.join(".");
            let wants_text =
                matches!(&e.kind, figment::error::Kind::InvalidType(_, expected) if expected.contains("string"));
            match vars.iter().find(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                Some((var_key, value)) if wants_text && as_text.insert(key.clone()) => {
                    fig = fig.merge(Serialized::default(var_key, value));
                }
                _ => return Err(errors::config_error(e)),
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section; the first problem found is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.store.validate()?;
        self.relay.validate()?;
        self.http.validate()?;
        self.health.validate()?;
        self.service.validate()?;
        self.supervision.validate()?;
        // The feed reader waits the retry backoff between failed reads: one
        // failed read must not outlast the time after which /health calls
        // the relay Unhealthy (an orchestrator may restart it for that).
        if self.relay.retry.max_backoff_ms >= self.health.feed_unhealthy_after_ms {
            return Err(ConfigError(format!(
                "relay.retry.max_backoff_ms ({}) must be less than health.feed_unhealthy_after_ms ({}): the feed reader waits that long between failed reads, so one failure would make /health Unhealthy",
                self.relay.retry.max_backoff_ms, self.health.feed_unhealthy_after_ms
            )));
        }
        if self.shutdown_deadline_ms == 0 {
            return Err(ConfigError("shutdown_deadline_ms must be >= 1 (in-flight deliveries get that long)".into()));
        }
        if self.store.backend == Backend::Cql && self.relay.delivery == DeliveryMode::ExactlyOnce {
            // The CDC relay has no transactional producer: it would run at-least-once silently.
            return Err(ConfigError(
                "relay.delivery = \"exactly-once\" is not available with store.backend = \"cql\": the Scylla CDC relay publishes at-least-once (duplicates only of unconfirmed events); set relay.delivery = \"at-least-once\"".into(),
            ));
        }
        if self.relay.delivery == DeliveryMode::ExactlyOnce {
            self.kafka.validate_transactional(self.relay.transaction_timeout_ms)?;
        }
        topics::validate_progress_topic(&self.kafka, &self.relay)?;
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

fn valid_cql_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod limits_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The default config changed by `f` is refused, naming `key`.
    fn refused(f: &dyn Fn(&mut Config), key: &str) {
        let mut c = Config::default();
        f(&mut c);
        let e = c.validate().expect_err(key).to_string();
        assert!(e.contains(key), "{key}: {e}");
    }

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
        let mut c = Config::default();
        c.kafka.topic_prefix = "p".repeat(MAX_TOPIC_PREFIX_LEN);
        c.validate().unwrap();
        c.kafka.topic_prefix.push('p');
        assert!(c.validate().unwrap_err().to_string().contains("kafka.topic_prefix"));
    }

    /// Review findings: values no run could work with, refused by name at
    /// load (they failed later, or silently misbehaved).
    #[test]
    fn values_that_could_never_work_are_refused_by_name() {
        // The projection's checkpoint, lease and parks would be the relay's.
        refused(&|c| c.relay.consumer_name = "projections".into(), "relay.consumer_name");
        // No request could send these (the header is trimmed and ASCII).
        refused(&|c| c.http.api_token = Some("0123456789abcdef\n".into()), "http.api_token");
        refused(&|c| c.http.api_token = Some(" 0123456789abcdef".into()), "http.api_token");
        refused(&|c| c.http.api_token = Some("0123456789abcdéf".into()), "http.api_token");
        // Lag 0 "exceeded" it: the relay was always Degraded.
        refused(&|c| c.health.lag_degraded_events = -1, "health.lag_degraded_events");
        // One of the two binds fails at start.
        refused(
            &|c| {
                c.http.listen = "0.0.0.0:8080".into();
                c.http.admin_listen = "127.0.0.1:8080".into();
            },
            "http.admin_listen",
        );
        let mut c = Config::default();
        c.http.listen = "127.0.0.1:8080".into();
        c.http.admin_listen = "127.0.0.2:8080".into();
        c.validate().expect("the same port on two addresses binds");
        c.http.api_token = Some("0123456789abcdef-_.~+/=".into());
        c.validate().expect("a printable token");
        c.http.api_token = Some("0123456789 abcdef".into());
        c.validate().expect("an inner space is sent and matched");
        c.http.listen = "0.0.0.0:8080".into();
        c.http.admin_listen = "[::1]:8080".into();
        c.validate().expect("an IPv4 wildcard and an IPv6 address bind side by side");
    }

    /// Black-box review: values that were accepted at load and then
    /// worked around (or failed) at run time are refused by name.
    #[test]
    fn zero_and_unknown_values_are_refused_at_load() {
        refused(&|c| c.http.workers = 0, "http.workers");
        refused(&|c| c.store.sqlite.queue_capacity = 0, "store.sqlite.queue_capacity");
        refused(&|c| c.store.sqlite.group_commit_max = 0, "store.sqlite.group_commit_max");
        refused(&|c| c.shutdown_deadline_ms = 0, "shutdown_deadline_ms");
        refused(&|c| c.supervision.restart_window_ms = 0, "supervision.restart_window_ms");
        refused(&|c| c.http.admin_listen = c.http.listen.clone(), "http.admin_listen");
        let cql = |c: &mut Config| c.store.backend = Backend::Cql;
        refused(&|c| (cql(c), c.store.cql.consistency = "bogus".into()).1, "store.cql.consistency");
        refused(&|c| (cql(c), c.store.cql.consistency = "local_one".into()).1, "below a quorum");
        refused(&|c| (cql(c), c.store.cql.serial_consistency = "one".into()).1, "store.cql.serial_consistency");
        refused(&|c| (cql(c), c.store.cql.replication_factor = 0).1, "store.cql.replication_factor");
        refused(&|c| (cql(c), c.store.cql.page_size = 0).1, "store.cql.page_size");
        let extra = |k: &str, v: &str| {
            let (k, v) = (k.to_string(), v.to_string());
            move |c: &mut Config| {
                c.kafka.extra.insert(k.clone(), v.clone());
            }
        };
        refused(&extra("no.such.prop", "1"), "kafka.extra.\"no.such.prop\"");
        refused(&extra("enable.idempotence", "false"), "always idempotent");
        refused(&extra("acks", "0"), "acks=all");
        refused(&extra("linger.ms", "50"), "use kafka.linger_ms");
        refused(&extra("partitioner", "random"), "kafka.extra.\"partitioner\": not settable here");
        refused(&extra("socket.timeout.ms", "soon"), "kafka.extra.\"socket.timeout.ms\"");
        // Each valid alone, refused by the producer the relay builds with it.
        refused(&extra("retries", "0"), "kafka.extra: refused by librdkafka");
        refused(&extra("retries", "0"), "`retries` must be set >= 1");
        refused(&extra("reconnect.backoff.ms", "5000"), "`reconnect.backoff.max.ms` must be >=");
        // Case differs from the parser's, same level; a known key passes; port 0 twice is two ports.
        let mut c = Config::default();
        c.store.backend = Backend::Cql;
        c.store.cql.consistency = "LOCAL_QUORUM".into();
        c.kafka.extra.insert("queue.buffering.max.messages".into(), "20000".into());
        c.kafka.extra.insert("sasl.password".into(), "x".into());
        c.http.listen = "127.0.0.1:0".into();
        c.http.admin_listen = "127.0.0.1:0".into();
        c.validate().unwrap();
        // A consumer of the relay's topics takes its security settings, not the producer's own.
        c.kafka.extra.insert("transaction.timeout.ms".into(), "60000".into());
        let client: Vec<_> = c.kafka.client_extra().collect();
        assert_eq!(client, vec![("sasl.password", "x")]);
    }

    /// Review finding: the CDC relay ignored `exactly-once` and published
    /// at-least-once; the combination is now refused by name.
    #[test]
    fn exactly_once_is_refused_on_the_cql_backend() {
        let mut c = Config::default();
        c.relay.delivery = DeliveryMode::ExactlyOnce;
        c.validate().unwrap();
        c.store.backend = Backend::Cql;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("relay.delivery") && e.contains("store.backend = \"cql\""), "{e}");
        c.relay.delivery = DeliveryMode::AtLeastOnce;
        c.validate().unwrap();
    }

    /// Review findings: values accepted at load that panicked or failed
    /// later (a SQLite busy timeout rusqlite refuses with a panic, a
    /// `linger.ms` librdkafka refuses, CDC intervals whose sum overflowed)
    /// are refused by `Config::load` in one line naming the key.
    #[test]
    #[allow(clippy::result_large_err)] // figment::Error is large; only in this test
    fn out_of_range_values_from_the_environment_are_refused_at_load() {
        figment::Jail::expect_with(|jail| {
            let cases: &[(&[(&str, &str)], &str)] = &[
                (&[("OUTBOX_STORE__SQLITE__BUSY_TIMEOUT_MS", "3000000000")], "store.sqlite.busy_timeout_ms"),
                (&[("OUTBOX_STORE__SQLITE__BUSY_TIMEOUT_MS", "600001")], "store.sqlite.busy_timeout_ms = 600001"),
                (&[("OUTBOX_KAFKA__LINGER_MS", "900001")], "kafka.linger_ms = 900001"),
                (&[("OUTBOX_KAFKA__LINGER_MS", "20000")], "must be greater than kafka.linger_ms (20000)"),
                (
                    &[("OUTBOX_RELAY__DELIVERY", "exactly-once"), ("OUTBOX_RELAY__TRANSACTION_TIMEOUT_MS", "5000")],
                    "must be <= relay.transaction_timeout_ms (5000)",
                ),
                (
                    &[
                        ("OUTBOX_STORE__BACKEND", "cql"),
                        ("OUTBOX_STORE__CQL__CDC__SAFETY_INTERVAL_MS", "18446744073709551615"),
                    ],
                    "store.cql.cdc.safety_interval_ms = 18446744073709551615",
                ),
            ];
            for (vars, needle) in cases {
                jail.clear_env();
                for (k, v) in *vars {
                    jail.set_env(k, v);
                }
                let e = Config::load(None).expect_err(needle).to_string();
                assert!(e.contains(needle) && e.lines().count() == 1, "{vars:?}: {e}");
            }
            jail.clear_env();
            for (k, v) in [("OUTBOX_STORE__SQLITE__BUSY_TIMEOUT_MS", "600000"), ("OUTBOX_KAFKA__LINGER_MS", "9999")] {
                jail.set_env(k, v);
            }
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!((c.store.sqlite.busy_timeout_ms, c.kafka.linger_ms), (600_000, 9_999));
            Ok(())
        });
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

    #[test]
    #[allow(clippy::result_large_err)] // figment::Error is large; only in this test
    fn secrets_from_the_environment_are_taken_as_written() {
        figment::Jail::expect_with(|jail| {
            // Text keys given numbers or booleans by variables: the text as written.
            jail.set_env("OUTBOX_RELAY__INSTANCE_ID", "1");
            jail.set_env("OUTBOX_RELAY__CONSUMER_NAME", "42");
            jail.set_env("OUTBOX_KAFKA__TOPIC_PREFIX", "true");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.relay.instance_id.as_deref(), Some("1"));
            assert_eq!(c.relay.consumer_name, "42");
            assert_eq!(c.kafka.topic_prefix, "true");
            // A number key given text stays an error naming it.
            jail.set_env("OUTBOX_KAFKA__PARTITIONS", "many");
            let e = Config::load(None).unwrap_err().to_string();
            assert!(e.to_lowercase().contains("partitions"), "{e}");
            jail.clear_env();
            // figment alone would read these as the numbers 123 and 1234567890123456.
            jail.set_env("OUTBOX_STORE__CQL__USERNAME", "svc");
            jail.set_env("OUTBOX_STORE__CQL__PASSWORD", "000123");
            jail.set_env("OUTBOX_HTTP__API_TOKEN", "1234567890123456");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.store.cql.password.as_deref(), Some("000123"));
            assert_eq!(c.http.api_token.as_deref(), Some("1234567890123456"));
            // A type error about a secret names the key, not the value.
            jail.create_file("s.toml", "[store.cql]\nusername = \"svc\"\npassword = [\"sekrit-value\"]\n")?;
            jail.clear_env();
            let e = Config::load(Some(Path::new("s.toml"))).unwrap_err().to_string();
            assert!(e.contains("store.cql.password") && !e.contains("sekrit-value"), "{e}");
            Ok(())
        });
    }
}
