//! The configuration as `outboxd` loads it: a bad value, an unknown key or
//! a missing file is refused before anything is opened, in one line naming
//! the key, exit 2, and creates no store; `OUTBOX_CONFIG` and `--config`
//! select the file; an `OUTBOX_*` variable figment would drop or misread is
//! refused naming the variable. A listen address `outboxd run` cannot bind
//! is a configuration error (exit 2). A CQL keyspace at another replication
//! factor is reported.

mod harness;

use std::process::{Command, Output};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--db")
        .arg(&db)
        .arg("events")
        .env("OUTBOX_RELAY__BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // Walkthrough finding: "invalid type: found string "lots", expected u64"
    // (a Rust type) and keys as "default.kafka.bogus" (figment's profile):
    // now in the words of the configuration.
    assert_eq!(
        stderr(&o),
        "error: invalid configuration: environment variable OUTBOX_RELAY__BATCH_SIZE (relay.batch_size): expected an integer, found string \"lots\""
    );
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[kafka]\nbrokerz = \"x:1\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--config").arg(&cfg).arg("events").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: invalid configuration: unknown key `kafka.brokerz`; expected one of: brokers, "),
        "{err}"
    );
    assert!(err.ends_with(&format!("(in {})", cfg.display())), "{err}");
    std::fs::write(&cfg, "[kafka]\npartitions = \"x\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--config").arg(&cfg).arg("events").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        format!(
            "error: invalid configuration: kafka.partitions: expected an integer, found string \"x\" (in {})",
            cfg.display()
        )
    );
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["--config", "/nonexistent/outboxd.toml", "events"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--config").arg(dir.path()).arg("events").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not a file"), "{}", stderr(&o));
    assert!(!db.exists(), "a refused configuration creates no store");
}

/// `OUTBOX_CONFIG` (as docker-compose.yml and README use it) selects the file
/// and is not mistaken for a configuration key; `--config FILE` selects one too.
#[test]
fn outbox_config_variable_selects_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("o.toml");
    std::fs::write(&cfg, "[kafka]\npartitions = 7\n").unwrap();
    // `outboxd <args>` with OUTBOX_CONFIG=o.toml: its partitions.
    let partitions = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .args(args)
            .env("OUTBOX_CONFIG", &cfg)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()["kafka"]["partitions"].clone()
    };
    assert_eq!(partitions(&["config"]), 7, "the file named by OUTBOX_CONFIG was read");
    // `--config FILE` (README, "Configuration") reads it too, and wins over the variable.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "[kafka]\npartitions = 9\n").unwrap();
    assert_eq!(partitions(&["--config", other.to_str().unwrap(), "config"]), 9, "the file named by --config was read");
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("config")
        .env("OUTBOX_CONFIG", dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    // Set but empty: named as the variable (clap named `--config`), with or without `--config`.
    for args in [&["config"][..], &["--config", other.to_str().unwrap(), "config"]] {
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd")).args(args).env("OUTBOX_CONFIG", "").output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).starts_with("error: OUTBOX_CONFIG is set but empty"), "{}", stderr(&o));
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    }
}

/// The CDC settings of the compose file are valid, and `outboxd config`
/// refuses a safety interval below the clock-skew allowance (docs/OPERATIONS.md,
/// "Safety interval and clock skew") or a CDC log TTL of 0, in one line, exit 2.
#[test]
fn cdc_settings_are_checked() {
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/outboxd.docker.toml");
    let run = |env: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        c.arg("config").env("OUTBOX_CONFIG", compose).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["store"]["cql"]["cdc"]["safety_interval_ms"], 30_000);
    assert_eq!(v["store"]["cql"]["cdc"]["log_ttl_seconds"], 86_400);
    let o = run(&[("OUTBOX_STORE__CQL__CDC__SAFETY_INTERVAL_MS", "5000")]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("store.cql.cdc.safety_interval_ms (5000) must be at least clock_skew_allowance_ms"),
        "{}",
        stderr(&o)
    );
    let o = run(&[("OUTBOX_STORE__CQL__CDC__LOG_TTL_SECONDS", "0")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("store.cql.cdc.log_ttl_seconds = 0"), "{}", stderr(&o));
}

/// Review findings: values accepted by `outboxd config` that then panicked
/// (`store.sqlite.busy_timeout_ms` beyond what rusqlite takes, CDC intervals
/// whose sum overflowed) or failed every producer creation of `outboxd run`
/// (`kafka.linger_ms` librdkafka refuses) are refused at load: exit 2, one
/// line naming the key, no panic, no store created.
#[test]
fn out_of_range_values_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let run = |cmd: &str, env: &[(&str, &str)], key: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        c.arg("--db").arg(&db).arg(cmd).env_remove("RUST_LOG");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd} {env:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd} {env:?}: one line, got {err:?}");
        assert!(err.contains(key) && !err.contains("panicked"), "{cmd} {env:?}: {err:?} should name {key}");
    };
    let busy = [("OUTBOX_STORE__SQLITE__BUSY_TIMEOUT_MS", "3000000000")];
    run("config", &busy, "store.sqlite.busy_timeout_ms = 3000000000");
    run("schema", &busy, "store.sqlite.busy_timeout_ms = 3000000000");
    run("config", &[("OUTBOX_KAFKA__LINGER_MS", "1000000")], "kafka.linger_ms = 1000000");
    run("config", &[("OUTBOX_KAFKA__LINGER_MS", "20000")], "kafka.linger_ms (20000)");
    let eos = [("OUTBOX_RELAY__DELIVERY", "exactly-once"), ("OUTBOX_KAFKA__MESSAGE_TIMEOUT_MS", "120000")];
    run("config", &eos, "relay.transaction_timeout_ms (60000)");
    let cdc =
        [("OUTBOX_STORE__BACKEND", "cql"), ("OUTBOX_STORE__CQL__CDC__SAFETY_INTERVAL_MS", "18446744073709551615")];
    run("config", &cdc, "store.cql.cdc.safety_interval_ms = 18446744073709551615");
    let cdc = [("OUTBOX_STORE__BACKEND", "cql"), ("OUTBOX_STORE__CQL__CDC__WINDOW_SIZE_MS", "18446744073709551615")];
    run("config", &cdc, "store.cql.cdc.window_size_ms = 18446744073709551615");
    // `run` panicked in actix-server ("Workers must not exceed 512"), exit 101.
    let workers = [
        ("OUTBOX_HTTP__WORKERS", "513"),
        ("OUTBOX_HTTP__LISTEN", "127.0.0.1:0"),
        ("OUTBOX_HTTP__ADMIN_LISTEN", "127.0.0.1:0"),
        ("OUTBOX_KAFKA__BROKERS", "127.0.0.1:1"),
    ];
    run("run", &workers, "http.workers = 513");
    // The store's writer queue panicked in tokio ("more than MAX_PERMITS permits").
    let queue = [("OUTBOX_STORE__SQLITE__QUEUE_CAPACITY", "18446744073709551615")];
    run("schema", &queue, "store.sqlite.queue_capacity = 18446744073709551615");
    // Progress records would be published into an event topic.
    run("config", &[("OUTBOX_RELAY__PROGRESS_TOPIC", "order-events")], "relay.progress_topic = \"order-events\"");
    let seeds = [("OUTBOX_KAFKA__TOPIC_ROUTING", "per-event-type"), ("OUTBOX_RELAY__PROGRESS_TOPIC", "OrderCreated")];
    run("config", &seeds, "relay.progress_topic = \"OrderCreated\"");
    assert!(!db.exists(), "a refused configuration creates no store");
}

/// Review finding: `relay.retry.multiplier = nan` (TOML has nan and inf)
/// passed `multiplier < 1.0` and `outboxd config` printed it as null.
#[test]
fn a_retry_multiplier_that_is_not_a_finite_number_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["nan", "inf", "-nan", "0.5"] {
        let file = dir.path().join("retry.toml");
        std::fs::write(&file, format!("[relay.retry]\nmultiplier = {value}\n")).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd")).arg("--config").arg(&file).arg("config").output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains("relay.retry.multiplier") && err.lines().count() == 1, "{value}: {err}");
    }
}

/// Review finding: `CREATE KEYSPACE IF NOT EXISTS` kept a keyspace created
/// at another replication factor silently (the default 1, then 3 set for
/// production). `outboxd schema` says so. Against the local Cassandra.
#[test]
fn a_keyspace_at_another_replication_factor_is_reported() {
    let Some(uri) = std::env::var("CASSANDRA_URI").ok().filter(|u| !u.is_empty()) else {
        crate::harness::skipped(true, "replication factor check: set CASSANDRA_URI (make test starts Cassandra)");
        return;
    };
    let keyspace = format!("rf{}", uuid::Uuid::now_v7().simple());
    let schema = |rf: &str| {
        Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("schema")
            .env("NO_COLOR", "1")
            .env("OUTBOX_STORE__BACKEND", "cql")
            .env("OUTBOX_STORE__CQL__URI", &uri)
            .env("OUTBOX_STORE__CQL__KEYSPACE", &keyspace)
            .env("OUTBOX_STORE__CQL__REPLICATION_FACTOR", rf)
            .output()
            .unwrap()
    };
    let o = schema("1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("replication_factor"), "{}", stderr(&o));
    let o = schema("3");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the keyspace has replication_factor 1, store.cql.replication_factor is 3"),
        "{}",
        stderr(&o)
    );
}

/// Review finding (security): figment drops a variable whose key has an
/// empty part without a word, so `OUTBOX_HTTP__API_TOKEN__=...` ran the API
/// without a token (exit 0). Each is refused: exit 2, one line naming the
/// variable. A variable with a key that does not exist names the variable,
/// not a line of the source.
#[test]
fn variables_figment_would_drop_or_misread_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let run = |var: &str, value: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("--db")
            .arg(&db)
            .arg("config")
            .env(var, value)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{var}: {err}");
        assert_eq!(err.lines().count(), 1, "{var}: one line, got {err:?}");
        assert!(err.contains(&format!("environment variable {var}:")), "{var}: {err}");
        assert!(!err.contains("src/") && !err.contains(value), "{var}: {err}");
        err
    };
    let token = "0123456789abcdef-secret";
    for var in [
        "OUTBOX_HTTP__API_TOKEN__",
        "OUTBOX_HTTP____API_TOKEN",
        "OUTBOX_HTTP__API_TOKEN.",
        "OUTBOX_HTTP__.API_TOKEN",
        "OUTBOX___HTTP__API_TOKEN",
        "outbox_http__api_token__",
        "OUTBOX_CONFIG__",
    ] {
        let err = run(var, token);
        assert!(err.contains("empty part"), "{var}: {err}");
    }
    run("OUTBOX_KAFKA____BROKERS", "10.0.0.1:9092");
    let err = run("OUTBOX__HTTP__API_TOKEN", token);
    assert!(err.contains("unknown key `_http`; expected one of: store, kafka"), "{err}");
    run("OUTBOX_HTTP__NOPE", "yes");
    // The same key spelt right is taken.
    let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--db")
        .arg(&db)
        .arg("config")
        .env("OUTBOX_HTTP__API_TOKEN", token)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_ne!(v["http"]["api_token"], serde_json::Value::Null, "the token is set");
}

/// Review findings: `kafka.extra."topic.partitioner"` (librdkafka's topic
/// property behind the `topic.` prefix) passed the reserved-key check; a
/// replication factor above librdkafka's 10 000 and a `relay.batch_size`
/// above one feed read were accepted. Each is refused, naming the key.
#[test]
fn reserved_and_out_of_range_settings_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("o.toml");
    std::fs::write(&file, "[kafka.extra]\n\"topic.partitioner\" = \"random\"\n").unwrap();
    let run = |env: &[(&str, &str)], config: Option<&std::path::Path>, needle: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        c.arg("config").env_remove("RUST_LOG").env_remove("OUTBOX_CONFIG");
        if let Some(f) = config {
            c.arg("--config").arg(f);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert_eq!(err.lines().count(), 1, "{needle}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
    };
    run(&[], Some(&file), "kafka.extra.\"topic.partitioner\": not settable here");
    run(&[("OUTBOX_KAFKA__REPLICATION_FACTOR", "100000")], None, "kafka.replication_factor = 100000");
    run(&[("OUTBOX_RELAY__BATCH_SIZE", "100001")], None, "relay.batch_size = 100001");
}

/// Review finding: an address `outboxd run` cannot listen on (not one of
/// this host's: 192.0.2.1 is TEST-NET; or taken) exited 1, as if the
/// infrastructure had failed. The configuration must change: exit 2, one
/// error line naming the key, for `http.listen` and `http.admin_listen`,
/// before anything else starts (no store, no actors, no lease).
#[test]
fn an_address_that_cannot_be_listened_on_is_a_configuration_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cases = [
        ("192.0.2.1:8080", "127.0.0.1:0", "cannot listen on http.listen = 192.0.2.1:8080"),
        ("127.0.0.1:0", "192.0.2.1:9090", "cannot listen on http.admin_listen = 192.0.2.1:9090"),
        ("127.0.0.1:0", taken.as_str(), "cannot listen on http.admin_listen"),
    ];
    for (listen, admin, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let o = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .args(["--db", db.to_str().unwrap(), "run"])
            .env("OUTBOX_HTTP__LISTEN", listen)
            .env("OUTBOX_HTTP__ADMIN_LISTEN", admin)
            .env("OUTBOX_KAFKA__BROKERS", format!("127.0.0.1:{nobody}"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{listen} {admin}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].starts_with(&format!("error: {needle}")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        // Found before the store is opened, the actors started or a lease
        // taken (a taken port touched all three, then gave the leases back).
        assert!(!db.exists(), "{listen} {admin}: the store was not opened: {err}");
    }
}

/// Review finding: a librdkafka property could not be set by a variable of
/// its own (figment split `OUTBOX_KAFKA__EXTRA__SASL__PASSWORD` into
/// `sasl` -> `password`: "expected a string, found map"), only by the whole
/// table as one TOML value; and two spellings of one key (case, `.` for
/// `__`) were both taken silently, whichever the environment listed last.
#[test]
fn a_kafka_property_has_a_variable_of_its_own_and_a_key_one_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = |vars: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_outboxd"));
        c.arg("config").current_dir(dir.path()).env_remove("OUTBOX_CONFIG");
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = config(&[
        ("OUTBOX_KAFKA__EXTRA__QUEUE__BUFFERING__MAX__MESSAGES", "20000"),
        ("OUTBOX_KAFKA__EXTRA__SASL__PASSWORD", "hunter2"),
        ("OUTBOX_KAFKA__EXTRA", r#"{"batch.num.messages"="7000","queue.buffering.max.messages"="1000"}"#),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let shown: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let extra = &shown["kafka"]["extra"];
    assert_eq!(extra["queue.buffering.max.messages"], "20000", "the property's own variable wins: {extra}");
    assert_eq!(extra["sasl.password"], "<redacted>", "{extra}");
    assert_eq!(extra["batch.num.messages"], "7000", "the whole-table form still merges: {extra}");
    // librdkafka checks it as any extra.
    let o = config(&[("OUTBOX_KAFKA__EXTRA__NO__SUCH__PROPERTY", "1")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("kafka.extra.\"no.such.property\""), "{}", stderr(&o));
    for (a, b) in [
        ("OUTBOX_KAFKA__BROKERS", "outbox_kafka__brokers"),
        ("OUTBOX_KAFKA__EXTRA__SASL__PASSWORD", "OUTBOX_KAFKA__EXTRA__SASL.PASSWORD"),
    ] {
        let o = config(&[(a, "x:1"), (b, "y:2")]);
        assert_eq!(o.status.code(), Some(2), "{a} and {b}");
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(a) && err.contains(b) && err.ends_with("keep one"), "{err}");
    }
}
