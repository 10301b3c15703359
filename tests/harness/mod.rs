//! The one harness of the integration tests: real brokers and stores, the
//! `outboxd` binary as a child process, an HTTP client, a topic checker and
//! a concurrent workload. Each test crate includes it with `mod harness;`.
#![allow(dead_code, unused_imports)]

pub mod cdc_rig;
pub mod check;
pub mod cli_db;
pub mod config_check;
pub mod counting;
pub mod cql;
pub mod daemon;
pub mod docs;
pub mod domain;
pub mod evidence;
pub mod fault;
pub mod http;
pub mod kafka;
pub mod load;
pub mod metrics;
pub mod oauth;
pub mod read_models;
pub mod relay;
pub mod requests;
pub mod sqlite;

pub use check::*;
pub use counting::*;
pub use cql::*;
pub use daemon::*;
pub use docs::*;
pub use domain::*;
pub use evidence::*;
pub use fault::*;
pub use http::*;
pub use kafka::*;
pub use load::*;
pub use metrics::*;
pub use relay::*;
pub use requests::*;
pub use sqlite::*;

use std::path::{Path, PathBuf};
use uuid::Uuid;

use outboxd::config::Config;

/// A skip at run time: the `SKIPPED: reason` line on stderr (libtest shows
/// it only for a failing test), and, when `OUTBOXD_SKIP_LOG` names a file
/// (`make test` sets it), one line `<test>\t<whole|part>\t<reason>` there,
/// so the run's summary counts the test as skipped (`whole`: it did nothing
/// else) or lists the part it skipped (`part`), never as plainly passed.
pub fn skipped(whole: bool, reason: &str) {
    eprintln!("SKIPPED{}: {reason}", if whole { "" } else { " (part)" });
    if let Some(path) = std::env::var_os("OUTBOXD_SKIP_LOG").filter(|p| !p.is_empty()) {
        if let Err(e) = record_skip(Path::new(&path), whole, reason) {
            eprintln!("cannot record the skip in {}: {e}", Path::new(&path).display());
        }
    }
}

/// Appends the skip line of the running test (its thread's name) to `path`.
pub fn record_skip(path: &Path, whole: bool, reason: &str) -> std::io::Result<()> {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("{test}\t{}\t{}\n", if whole { "whole" } else { "part" }, reason.replace(['\t', '\n'], " "));
    std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(line.as_bytes())
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config for one test: its own topics (prefix), fast polling.
pub fn test_config(brokers: &str, db: &Path) -> Config {
    let mut c = Config::default();
    c.store.path = db.to_path_buf();
    c.kafka.brokers = brokers.to_string();
    c.kafka.topic_prefix = format!("t{}.", Uuid::now_v7().simple());
    c.kafka.partitions = 3;
    c.relay.poll_interval_ms = 50;
    c
}

/// The config as OUTBOX_* variables for a child `outboxd` process.
pub fn config_env(c: &Config) -> Vec<(String, String)> {
    vec![
        ("OUTBOX_STORE__PATH".into(), c.store.path.display().to_string()),
        ("OUTBOX_KAFKA__BROKERS".into(), c.kafka.brokers.clone()),
        ("OUTBOX_KAFKA__TOPIC_PREFIX".into(), c.kafka.topic_prefix.clone()),
        ("OUTBOX_KAFKA__PARTITIONS".into(), c.kafka.partitions.to_string()),
        ("OUTBOX_KAFKA__COMPRESSION".into(), c.kafka.compression.as_str().to_string()),
        ("OUTBOX_KAFKA__MESSAGE_TIMEOUT_MS".into(), c.kafka.message_timeout_ms.to_string()),
        ("OUTBOX_RELAY__POLL_INTERVAL_MS".into(), c.relay.poll_interval_ms.to_string()),
        ("OUTBOX_HTTP__LISTEN".into(), c.http.listen.clone()),
        ("OUTBOX_HTTP__ADMIN_LISTEN".into(), c.http.admin_listen.clone()),
    ]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
