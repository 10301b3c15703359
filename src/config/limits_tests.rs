//! Review findings: values `Config::load` accepted that then panicked at
//! startup (`http.workers` over actix-server's 512, a
//! `store.sqlite.queue_capacity` beyond what tokio's channel takes), passed
//! a check as NaN (`relay.retry.multiplier`), or mixed the relay's progress
//! records into an event topic (`relay.progress_topic`). Each is refused at
//! load, in one line naming the key.

use std::path::Path;

use super::topics::SEED_TOPICS;
use super::{Config, DeliveryMode, TopicRouting};

/// The default config changed by `f` is refused in one line containing `needle`.
fn refused(f: &dyn Fn(&mut Config), needle: &str) {
    let mut c = Config::default();
    f(&mut c);
    let e = c.validate().expect_err(needle).to_string();
    assert!(e.contains(needle) && e.lines().count() == 1, "{needle}: {e}");
}

/// The default config changed by `f` is valid.
fn accepted(f: &dyn Fn(&mut Config)) {
    let mut c = Config::default();
    f(&mut c);
    c.validate().unwrap();
}

#[test]
fn http_workers_beyond_actix_servers_most_are_refused() {
    refused(&|c| c.http.workers = 513, "http.workers = 513: must be 1..=512");
    refused(&|c| c.http.workers = usize::MAX, "http.workers");
    accepted(&|c| c.http.workers = 512);
}

#[test]
fn the_sqlite_writer_queue_has_an_upper_bound() {
    refused(&|c| c.store.sqlite.queue_capacity = 1_000_001, "store.sqlite.queue_capacity = 1000001");
    refused(&|c| c.store.sqlite.queue_capacity = usize::MAX, "store.sqlite.queue_capacity");
    accepted(&|c| c.store.sqlite.queue_capacity = 1_000_000);
}

#[test]
fn the_retry_multiplier_is_a_finite_number_of_at_least_one() {
    for m in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.5, -1.0] {
        refused(&|c| c.relay.retry.multiplier = m, "relay.retry.multiplier");
    }
    accepted(&|c| c.relay.retry.multiplier = 1.0);
    accepted(&|c| c.relay.retry.multiplier = 1e300);
}

/// In either delivery mode (see `topics::validate_progress_topic`).
#[test]
fn the_progress_topic_is_none_of_the_event_topics() {
    for delivery in [DeliveryMode::AtLeastOnce, DeliveryMode::ExactlyOnce] {
        for topic in ["order-events", "customer-events"] {
            refused(
                &|c| (c.relay.delivery = delivery, c.relay.progress_topic = topic.into()).1,
                &format!("relay.progress_topic = {topic:?}"),
            );
        }
        let prefixed = |c: &mut Config| {
            c.relay.delivery = delivery;
            c.kafka.topic_prefix = "prod.".into();
        };
        refused(&|c| (prefixed(c), c.relay.progress_topic = "prod.order-events".into()).1, "relay.progress_topic");
        accepted(&|c| (prefixed(c), c.relay.progress_topic = "order-events".into()).1);
        let seeds = |c: &mut Config| {
            c.relay.delivery = delivery;
            c.kafka.topic_routing = TopicRouting::PerEventType;
        };
        for topic in SEED_TOPICS {
            refused(&|c| (seeds(c), c.relay.progress_topic = topic.into()).1, "relay.progress_topic");
        }
        accepted(&|c| (seeds(c), c.relay.progress_topic = "order-events".into()).1);
    }
}

/// The same from the environment and a file, through `Config::load`.
#[test]
#[allow(clippy::result_large_err)] // figment::Error is large; only in this test
fn they_are_refused_by_load() {
    figment::Jail::expect_with(|jail| {
        let cases: &[(&str, &str, &str)] = &[
            ("OUTBOX_HTTP__WORKERS", "513", "http.workers = 513"),
            ("OUTBOX_STORE__SQLITE__QUEUE_CAPACITY", "18446744073709551615", "store.sqlite.queue_capacity"),
            ("OUTBOX_RELAY__PROGRESS_TOPIC", "order-events", "relay.progress_topic"),
        ];
        for (var, value, needle) in cases {
            jail.clear_env();
            jail.set_env(var, value);
            let e = Config::load(None).expect_err(needle).to_string();
            assert!(e.contains(needle) && e.lines().count() == 1, "{var}={value}: {e}");
        }
        // Review finding: `outbox_config` (any other spelling of the file
        // variable) named no file and was silently ignored.
        jail.clear_env();
        jail.create_file("p.toml", "[kafka]\npartitions = 9\n")?;
        jail.set_env("outbox_config", "p.toml");
        let e = Config::load(None).expect_err("outbox_config").to_string();
        assert!(e.contains("environment variable outbox_config") && e.contains("OUTBOX_CONFIG"), "{e}");
        jail.clear_env();
        jail.create_file("nan.toml", "[relay.retry]\nmultiplier = nan\n")?;
        let e = Config::load(Some(Path::new("nan.toml"))).expect_err("nan").to_string();
        assert!(e.contains("relay.retry.multiplier = NaN"), "{e}");
        Ok(())
    });
}

/// Review finding: exactly-once always parks an event it cannot publish and
/// retries transient failures behind the breaker, so `skip` and
/// `dlq_on_transient_exhaustion` were silently ignored there.
#[test]
fn dead_letter_settings_exactly_once_would_ignore_are_refused() {
    use super::relay::PermanentFailurePolicy;
    let eos = |c: &mut Config| c.relay.delivery = DeliveryMode::ExactlyOnce;
    refused(
        &|c| {
            eos(c);
            c.relay.on_permanent_failure = PermanentFailurePolicy::Skip;
        },
        "relay.on_permanent_failure = \"skip\" needs relay.delivery = \"at-least-once\"",
    );
    refused(
        &|c| {
            eos(c);
            c.relay.dlq_on_transient_exhaustion = true;
        },
        "relay.dlq_on_transient_exhaustion = true needs relay.delivery",
    );
    accepted(&|c| c.relay.on_permanent_failure = PermanentFailurePolicy::Skip);
    accepted(&|c| c.relay.dlq_on_transient_exhaustion = true);
    accepted(&eos);
}

/// Review findings: a `kafka.replication_factor` above librdkafka's 10 000
/// was accepted and failed at topic creation; a `relay.batch_size` above
/// what one feed read returns was silently clamped. Both are refused.
#[test]
fn replication_factor_and_batch_size_have_upper_bounds() {
    refused(&|c| c.kafka.replication_factor = 10_001, "kafka.replication_factor = 10001: must be 1..=10000");
    refused(&|c| c.kafka.replication_factor = 0, "kafka.replication_factor = 0");
    accepted(&|c| c.kafka.replication_factor = 10_000);
    refused(&|c| c.relay.batch_size = 100_001, "relay.batch_size = 100001: must be 1..=100000");
    refused(&|c| c.relay.batch_size = usize::MAX, "relay.batch_size");
    accepted(&|c| c.relay.batch_size = 100_000);
}

/// Review finding: at a 1000 ms TTL one busy SQLite renewal (250 ms busy
/// timeout + a retry a quarter interval later) reached the renewal
/// deadline and the holder stepped down for nothing.
#[test]
fn the_lease_ttl_leaves_room_for_one_busy_renewal() {
    refused(&|c| c.relay.lease_ttl_ms = 1_000, "relay.lease_ttl_ms must be between 3000 and 600000");
    refused(&|c| c.relay.lease_ttl_ms = 2_999, "relay.lease_ttl_ms");
    accepted(&|c| c.relay.lease_ttl_ms = 3_000);
    refused(&|c| c.relay.lease_ttl_ms = 600_001, "relay.lease_ttl_ms");
}

/// Review finding: for several datacenters the docs said "use `serial`"
/// and left reads at `local_quorum`, which can miss a park or lease that a
/// compare-and-set committed in another datacenter (LWT commits get no
/// hints): the pair is refused; `serial` with `quorum` (or `all`) is the
/// multi-datacenter setting. Checked only where the CQL store is used.
#[test]
fn serial_compare_and_set_needs_quorum_reads() {
    use super::store::Backend;
    let cql = |c: &mut Config| {
        c.store.backend = Backend::Cql;
        c.store.cql.serial_consistency = "serial".into();
    };
    refused(&|c| cql(c), "store.cql.serial_consistency = \"serial\" (instances in several datacenters) needs store.cql.consistency = quorum or all");
    accepted(&|c| {
        cql(c);
        c.store.cql.consistency = "quorum".into();
    });
    accepted(&|c| {
        cql(c);
        c.store.cql.consistency = "ALL".into();
    });
    accepted(&|c| c.store.backend = Backend::Cql);
    refused(
        &|c| {
            c.store.backend = Backend::Cql;
            c.store.cql.consistency = "each_quorum".into();
        },
        "ScyllaDB refuses reads at EACH_QUORUM",
    );
}

/// Review finding: `kafka.extra."queue.buffering.max.kbytes" = "1"` was
/// accepted; librdkafka then refuses every record over 1 KiB as
/// QUEUE_FULL even with an empty queue, and the relay retried the first
/// such event for ever, every event behind it held. The queue must hold
/// one record of `message.max.bytes`.
#[test]
fn the_local_queue_must_hold_one_record_of_the_largest_size() {
    let extra = |pairs: &'static [(&'static str, &'static str)]| {
        move |c: &mut Config| {
            for (k, v) in pairs {
                c.kafka.extra.insert((*k).into(), (*v).into());
            }
        }
    };
    refused(
        &extra(&[("queue.buffering.max.kbytes", "1")]),
        "kafka.extra.\"queue.buffering.max.kbytes\" = 1: must hold one record of message.max.bytes (1000000 bytes): at least 977",
    );
    accepted(&extra(&[("queue.buffering.max.kbytes", "977")]));
    refused(&extra(&[("queue.buffering.max.kbytes", "977"), ("message.max.bytes", "2000000")]), "at least 1954");
    accepted(&extra(&[("queue.buffering.max.kbytes", "64"), ("message.max.bytes", "65536")]));
}

/// Review findings: a retry backoff as long as `health.feed_unhealthy_after_ms`
/// made one failed store read an Unhealthy /health; a negative
/// `service.snapshot_every` silently turned snapshots off.
#[test]
fn backoff_under_the_feed_threshold_and_no_negative_snapshot_interval() {
    refused(
        &|c| {
            c.relay.retry.initial_backoff_ms = 120_000;
            c.relay.retry.max_backoff_ms = 120_000;
        },
        "relay.retry.max_backoff_ms (120000) must be less than health.feed_unhealthy_after_ms (60000)",
    );
    accepted(&|c| c.relay.retry.max_backoff_ms = 59_999);
    refused(&|c| c.service.snapshot_every = -5, "service.snapshot_every = -5: must be >= 0");
    accepted(&|c| c.service.snapshot_every = 0);
}
