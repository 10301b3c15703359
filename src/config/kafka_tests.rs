//! Tests of the `[kafka]` checks that stand in for librdkafka's own: the
//! producer settings `outboxd config` accepts are the ones librdkafka takes.

use crate::config::{Config, DeliveryMode};

/// One combination of the settings librdkafka checks against each other.
#[derive(Debug, Clone, Copy)]
struct Case {
    linger_ms: u32,
    message_timeout_ms: u64,
    /// `relay.transaction_timeout_ms` with exactly-once; `None`: at-least-once.
    transaction_timeout_ms: Option<u64>,
    /// `kafka.extra."socket.timeout.ms"`.
    socket_timeout_ms: Option<u64>,
}

fn case(linger_ms: u32, message_timeout_ms: u64, transaction_timeout_ms: Option<u64>) -> Case {
    Case { linger_ms, message_timeout_ms, transaction_timeout_ms, socket_timeout_ms: None }
}

fn config(c: Case) -> Config {
    let mut cfg = Config::default();
    cfg.kafka.linger_ms = c.linger_ms;
    cfg.kafka.message_timeout_ms = c.message_timeout_ms;
    if let Some(t) = c.transaction_timeout_ms {
        cfg.relay.delivery = DeliveryMode::ExactlyOnce;
        cfg.relay.transaction_timeout_ms = t;
    }
    if let Some(s) = c.socket_timeout_ms {
        cfg.kafka.extra.insert("socket.timeout.ms".into(), s.to_string());
    }
    cfg
}

/// librdkafka's verdict on the producer the relay builds from `c` (its
/// settings that take part in these rules), without a broker.
fn librdkafka_takes(c: Case) -> Result<(), String> {
    let mut k = rdkafka::ClientConfig::new();
    k.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", c.linger_ms.to_string())
        .set("message.timeout.ms", c.message_timeout_ms.to_string());
    if let Some(t) = c.transaction_timeout_ms {
        k.set("transactional.id", "outboxd-config-test").set("transaction.timeout.ms", t.to_string());
    }
    if let Some(s) = c.socket_timeout_ms {
        k.set("socket.timeout.ms", s.to_string());
    }
    k.create::<rdkafka::producer::BaseProducer>().map(drop).map_err(|e| e.to_string())
}

/// Review finding: `kafka.linger_ms` was never checked, so a value
/// librdkafka refuses (above 900 000, or not below the message timeout, or
/// a message timeout beyond the transaction timeout with exactly-once) was
/// accepted at load and failed every producer creation of `outboxd run`.
#[test]
fn producer_settings_are_refused_at_load_exactly_when_librdkafka_refuses_them() {
    let max = i32::MAX as u64;
    let socket = |t: u64, s: u64| Case { socket_timeout_ms: Some(s), ..case(5, 10_000, Some(t)) };
    let cases = [
        (case(5, 10_000, None), true),
        (case(0, 1_000, None), true),
        (case(9_999, 10_000, None), true),
        (case(10_000, 10_000, None), false),
        (case(20_000, 10_000, None), false),
        (case(899_999, 900_000, None), true),
        (case(900_000, 900_001, None), true),
        (case(900_001, 1_000_000, None), false),
        (case(u32::MAX, max, None), false),
        (case(5, max, None), true),
        (case(5, max + 1, None), false),
        (case(5, 10_000, Some(60_000)), true),
        (case(5, 60_000, Some(60_000)), true),
        (case(5, 60_001, Some(60_000)), false),
        (case(5, 10_000, Some(5_000)), false),
        (case(5, 1_000, Some(1_000)), true),
        (socket(60_000, 60_100), true),
        (socket(60_000, 60_101), false),
        (socket(5_000, 10_000), false),
    ];
    for (c, ok) in cases {
        let ours = config(c).validate().map_err(|e| e.to_string());
        let theirs = librdkafka_takes(c);
        assert_eq!(theirs.is_ok(), ok, "{c:?}: librdkafka says {theirs:?}");
        assert_eq!(ours.is_ok(), ok, "{c:?}: outboxd says {ours:?}, librdkafka {theirs:?}");
    }
}

#[test]
fn refused_producer_settings_name_their_keys() {
    let refused = |c: Case| {
        let e = config(c).validate().unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        e
    };
    let e = refused(case(900_001, 1_000_000, None));
    assert!(e.contains("kafka.linger_ms = 900001: must be 0..=900000"), "{e}");
    let e = refused(case(20_000, 10_000, None));
    assert!(e.contains("kafka.message_timeout_ms (10000) must be greater than kafka.linger_ms (20000)"), "{e}");
    let e = refused(case(5, 3_000_000_000, None));
    assert!(e.contains("kafka.message_timeout_ms = 3000000000: must be 1000..=2147483647"), "{e}");
    let e = refused(case(5, 999, None));
    assert!(e.contains("kafka.message_timeout_ms = 999"), "{e}");
    let e = refused(case(5, 10_000, Some(5_000)));
    assert!(
        e.contains("kafka.message_timeout_ms (10000) must be <= relay.transaction_timeout_ms (5000)")
            && e.contains("exactly-once"),
        "{e}"
    );
    let e = refused(Case { socket_timeout_ms: Some(70_000), ..case(5, 10_000, Some(60_000)) });
    assert!(e.contains("kafka.extra.\"socket.timeout.ms\" (70000)"), "{e}");
    // At-least-once has no transaction: its message timeout is not bounded by one.
    config(case(5, 120_000, None)).validate().unwrap();
}

/// Review finding: `kafka.extra."transaction.timeout.ms"` was applied after
/// the relay set `transaction.timeout.ms` from `relay.transaction_timeout_ms`,
/// so it bypassed the exactly-once check of `kafka.message_timeout_ms`
/// against the transaction timeout. It is refused, pointing at the key to use.
#[test]
fn extra_transaction_timeout_is_refused_pointing_at_the_relay_key() {
    for delivery in [DeliveryMode::ExactlyOnce, DeliveryMode::AtLeastOnce] {
        let mut cfg = config(case(5, 10_000, Some(60_000)));
        cfg.relay.delivery = delivery;
        cfg.kafka.extra.insert("transaction.timeout.ms".into(), "5000".into());
        let e = cfg.validate().unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.contains("kafka.extra.\"transaction.timeout.ms\": not settable here"), "{e}");
        assert!(e.contains("use relay.transaction_timeout_ms"), "{e}");
    }
}

/// Review finding: `kafka.extra` was checked key by key, so a setting the
/// relay's producer refuses together with its own (`retries = "0"` with the
/// idempotence it always enables) passed `outboxd config` and failed every
/// producer creation of `outboxd run`. It is refused at load, naming
/// `kafka.extra` with librdkafka's reason, never a secret's value.
#[test]
#[allow(clippy::result_large_err)] // figment::Error is large; only in this test
fn extras_the_relays_producer_refuses_are_refused_at_load() {
    figment::Jail::expect_with(|jail| {
        let secret = "sasl-secret-0123456789";
        jail.create_file(
            "o.toml",
            &format!("[kafka.extra]\nretries = \"0\"\n\"sasl.username\" = \"svc\"\n\"sasl.password\" = \"{secret}\"\n"),
        )?;
        let e = Config::load(Some(std::path::Path::new("o.toml"))).expect_err("retries = 0").to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.contains("kafka.extra") && e.contains("`retries` must be set >= 1"), "{e}");
        assert!(!e.contains(secret), "{e}");
        jail.create_file("ok.toml", "[kafka.extra]\nretries = \"3\"\n")?;
        Config::load(Some(std::path::Path::new("ok.toml"))).map_err(|e| e.to_string())?;
        Ok(())
    });
}

/// Review finding: librdkafka takes an unknown global property `topic.<p>`
/// as the topic property `<p>`, so `topic.partitioner`, `topic.acks`, ...
/// set a reserved setting past the exact-name check (and `topic.acks`
/// against `acks` in whatever order they were applied). Each is refused
/// by its own name, as the key without the prefix is; a global property
/// that really is named `topic.*` still passes.
#[test]
fn reserved_keys_behind_the_topic_prefix_are_refused() {
    let cases = [
        ("topic.partitioner", "random", "per-aggregate order"),
        ("topic.acks", "0", "acks=all"),
        ("topic.request.required.acks", "1", "acks=all"),
        ("topic.message.timeout.ms", "5000", "use kafka.message_timeout_ms"),
        ("topic.delivery.timeout.ms", "5000", "use kafka.message_timeout_ms"),
        ("topic.compression.type", "none", "use kafka.compression"),
        ("topic.compression.codec", "none", "use kafka.compression"),
    ];
    for (key, value, why) in cases {
        // librdkafka itself takes it: nothing but this check stands in the way.
        let mut k = rdkafka::ClientConfig::new();
        k.set(key, value);
        k.create_native_config().unwrap_or_else(|e| panic!("{key}: librdkafka refuses it: {e}"));
        let mut cfg = Config::default();
        cfg.kafka.extra.insert(key.into(), value.into());
        let e = cfg.validate().expect_err(key).to_string();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.contains(&format!("kafka.extra.{key:?}: not settable here")), "{key}: {e}");
        assert!(e.contains(why), "{key}: {e}");
        // The same setting without the prefix: refused alike.
        let mut cfg = Config::default();
        cfg.kafka.extra.insert(key.trim_start_matches("topic.").into(), value.into());
        assert!(cfg.validate().is_err(), "{key} without the prefix");
    }
    let mut cfg = Config::default();
    cfg.kafka.extra.insert("topic.metadata.refresh.interval.ms".into(), "60000".into());
    cfg.validate().expect("a global property named topic.*");
}
