//! `bench relay`: the relay against a bare producer in the same run (a
//! warm-up pass, then 3 interleaved rounds: bare, relay at-least-once, relay
//! exactly-once, bare and relay on one hot aggregate), median with min/max;
//! the at-least-once passes also timed from the relay's report of running,
//! with its start apart (the bare producer is built before its clock);
//! then e2e latency in both delivery modes at each rate, and for events
//! appended through a second store instance (a standby's), (`latency.rs`).
//!
//! Guarantee: only measures and prints.
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::cpu::CpuMeter;
use super::Report;
use crate::config::{Config, DeliveryMode};
use crate::domain::{Aggregate, Customer, CustomerCommand, Email};
use crate::envelope::{now_millis, EventEnvelope, Metadata};
use crate::metrics::Metrics;
use crate::relay::encode::Encoder;
use crate::relay::producer::{producer_config, Delivery};
use crate::relay::topics::{topic_names, topic_of};
use crate::relay::Relay;
use crate::shutdown::Trigger;
use crate::store::feed::RawEvent;
use crate::store::sqlite::SqliteStore;
use crate::store::DynStore;

/// A customer registration whose JSON envelope is about `size` bytes.
pub(super) fn event(size: usize) -> EventEnvelope {
    let c = Customer::default();
    let pad = size.saturating_sub(420).clamp(1, 199);
    let cmd = CustomerCommand::Register {
        name: "x".repeat(pad),
        email: Email::new("bench@example.com").expect("email"),
        phone: None,
    };
    let e = c.handle(&cmd).expect("valid").remove(0);
    let mut env =
        EventEnvelope::new::<Customer>(Uuid::now_v7(), 1, &e, &Metadata::default(), now_millis()).expect("encodable");
    // Top up to the requested size with an extra field consumers ignore
    // (`,"padding":"…"` costs PADDING_FIELD bytes around its text); when
    // less than that is missing, the event stays a little short.
    let len = serde_json::to_vec(&env).map(|v| v.len()).unwrap_or(0);
    let fill = size.saturating_sub(len.saturating_add(PADDING_FIELD));
    if fill > 0 {
        if let Some(o) = env.payload.as_object_mut() {
            o.insert("padding".into(), serde_json::Value::String("p".repeat(fill)));
        }
    }
    env
}

/// The bytes the `padding` member adds besides its text: `,"padding":""`.
const PADDING_FIELD: usize = 13;

/// `n` events of one hot aggregate (sequences 1..=n): the cost of the
/// per-aggregate fence (one event of an aggregate at the producer at a time).
fn hot_events(n: usize, size: usize) -> Vec<EventEnvelope> {
    let id = Uuid::now_v7();
    (1..=n as i64)
        .map(|seq| {
            let mut e = event(size);
            e.aggregate_id = id;
            e.sequence = seq;
            e
        })
        .collect()
}

/// The baseline's topics: the relay's names under their own prefix (with
/// either `kafka.topic_routing`), never the relay's topics themselves.
fn baseline_prefix(cfg: &Config) -> String {
    format!("{}baseline.", cfg.kafka.topic_prefix)
}

/// The same records as the relay sends (same encoder), for the bare producer,
/// on the baseline's topics.
fn baseline_records(cfg: &Config, events: &[EventEnvelope]) -> Vec<(String, String, Vec<u8>, OwnedHeaders)> {
    let mut encoder = Encoder::from_config(&cfg.kafka);
    events
        .iter()
        .map(|e| {
            let raw = RawEvent::from_envelope(e, 0).expect("encodable");
            let mut value = Vec::new();
            encoder.value(&raw, &mut value);
            (
                topic_of(cfg.kafka.per_event_type(), &baseline_prefix(cfg), e),
                e.aggregate_id.to_string(),
                value,
                encoder.headers(&raw),
            )
        })
        .collect()
}

/// One timed pass of a bare FutureProducer: every record in flight at once.
async fn bare_pass(
    producer: &FutureProducer,
    records: &[(String, String, Vec<u8>, OwnedHeaders)],
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    for (t, k, v, h) in records {
        loop {
            match producer.send_result(FutureRecord::to(t).key(k).payload(v).headers(h.clone())) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    if let Some(r) = pending.next().await {
                        anyhow::ensure!(matches!(r, Ok(Ok(_))), "baseline delivery failed");
                    }
                }
                Err((e, _)) => anyhow::bail!("baseline send failed: {e}"),
            }
        }
    }
    while let Some(r) = pending.next().await {
        anyhow::ensure!(matches!(r, Ok(Ok(_))), "baseline delivery failed");
    }
    Ok(records.len() as f64 / start.elapsed().as_secs_f64())
}

/// One timed relay pass: events/s from the spawn (the relay's start
/// included: its producer, the checkpoint read, the topic check) and from
/// the moment it reported running (the bare producer's own start is outside
/// its timed pass), the start itself in ms, and the relay task still running
/// (caught up) with its stop trigger.
struct Pass {
    rate: f64,
    /// CPU per event of this process over the timed span (spawn -> caught up).
    cpu: f64,
    running_rate: f64,
    start_ms: f64,
    trigger: Trigger,
    task: tokio::task::JoinHandle<Result<(), crate::relay::pipeline::RelayError>>,
}

/// A relay of `mode` under its own consumer name (so it reads the store from
/// 0): until its checkpoint reaches the head.
async fn relay_pass(cfg: &Config, store: &DynStore, consumer: &str, mode: DeliveryMode) -> anyhow::Result<Pass> {
    let mut cfg = cfg.clone();
    // Unique to this run (its topic prefix's id): the exactly-once
    // transactional id derives from it, and another bench on the same
    // broker under the same name would fence this one.
    let run = cfg.kafka.topic_prefix.trim_start_matches("bench").trim_end_matches('.').to_string();
    let consumer = &format!("{consumer}-{run}");
    cfg.relay.consumer_name = consumer.to_string();
    cfg.relay.delivery = mode;
    cfg.relay.progress_topic = format!("{}{consumer}.progress", cfg.kafka.topic_prefix);
    if mode == DeliveryMode::ExactlyOnce {
        // Made before the clock starts, as the event topics are: a deployed
        // relay creates it once, not at every start this pass times.
        crate::relay::admin::ensure_progress_topic(&cfg.kafka, &cfg.relay.progress_topic, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let (tx, mut status) = tokio::sync::watch::channel(crate::relay::RelayStatus::default());
    let relay = Relay::new(Arc::new(cfg), store.clone(), Metrics::new(), crate::relay::StatusTx::new(tx));
    let trigger = Trigger::new();
    let sd = trigger.subscribe();
    let head = store.head_position().await?;
    let (start, cpu) = (Instant::now(), CpuMeter::start());
    let task = tokio::spawn(async move {
        match mode {
            DeliveryMode::AtLeastOnce => relay.run(sd).await.map(|_| ()),
            DeliveryMode::ExactlyOnce => relay.run_exactly_once(sd).await.map(|_| ()),
        }
    });
    let caught_up = async {
        status.wait_for(|s| s.running || s.checkpoint.unwrap_or(0) >= head).await?;
        let running = Instant::now();
        status.wait_for(|s| s.checkpoint.unwrap_or(0) >= head).await?;
        anyhow::Ok((running, Instant::now()))
    };
    let Ok((running, end)) = caught_up.await else {
        // The status closes when the relay ends: say why it did.
        let ended = task.await?;
        anyhow::bail!("the {mode:?} relay {consumer} stopped before it caught up: {ended:?}");
    };
    // A checkpoint also passes parked and dead-lettered events: a rate
    // counts only events the broker took.
    let s = status.borrow().clone();
    anyhow::ensure!(
        s.parked_aggregates == 0 && s.dead_lettered == 0,
        "the {mode:?} relay {consumer} did not publish every event: {} aggregates parked, {} dead-lettered ({:?})",
        s.parked_aggregates,
        s.dead_lettered,
        s.last_error
    );
    Ok(Pass {
        rate: head as f64 / (end - start).as_secs_f64(),
        cpu: cpu.per_item(head.max(0) as usize),
        running_rate: head as f64 / (end - running).as_secs_f64(),
        start_ms: (running - start).as_secs_f64() * 1e3,
        trigger,
        task,
    })
}

/// Ends a pass, and lets its producer's teardown (dropped off the runtime:
/// a purge, a flush of up to 500 ms, a thread joined) finish before the next
/// timed pass, so it is charged to neither.
async fn stop(trigger: Trigger, task: tokio::task::JoinHandle<Result<(), crate::relay::pipeline::RelayError>>) {
    trigger.fire();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(600)).await;
}

/// Stores `events` one append each in a fresh SQLite file `name` under `dir`.
async fn seeded(cfg: &Config, dir: &std::path::Path, name: &str, events: &[EventEnvelope]) -> anyhow::Result<DynStore> {
    let store: DynStore = SqliteStore::open(&dir.join(name), cfg.store.sqlite.clone()).await?;
    for e in events {
        store.append(e.aggregate_id, e.sequence - 1, vec![e.clone()]).await?;
    }
    Ok(store)
}

/// The relay bench under a fresh topic prefix `bench<uuid>.`, whose topics
/// (event, baseline and progress topics) are deleted at its end, measured or not.
pub async fn run(
    r: &mut Report,
    base: &Config,
    n: usize,
    size: usize,
    rates: &[u64],
    seconds: u64,
) -> anyhow::Result<()> {
    let dir = super::tempdir(None)?;
    let mut cfg = base.clone();
    cfg.store.path = dir.join("relay.db");
    cfg.kafka.topic_prefix = format!("bench{}.", Uuid::now_v7().simple());
    let measured = measure(r, &cfg, &dir, n, size, rates, seconds).await;
    let p = &cfg.kafka.topic_prefix;
    match crate::relay::admin::delete_prefixed(&cfg.kafka, p, Duration::from_secs(30)).await {
        Ok(deleted) => {
            r.say(format!("deleted the bench's {} topics ({p}*)", deleted.len()));
            r.set("topics_deleted", deleted);
        }
        Err(e) => {
            r.say(format!("the bench's topics {p}* were not deleted: {}", e.message));
            r.set("topics_cleanup_error", format!("{p}*: {}", e.message));
        }
    }
    measured
}

async fn measure(
    r: &mut Report,
    cfg: &Config,
    dir: &std::path::Path,
    n: usize,
    size: usize,
    rates: &[u64],
    seconds: u64,
) -> anyhow::Result<()> {
    let sample = serde_json::to_vec(&event(size))?.len();
    let hot_n = (n / 10).max(1);
    r.say(format!(
        "bench relay: {n} events of ~{sample} bytes (+ {hot_n} of one hot aggregate), brokers {}, compression {}, acks=all, idempotent; warm-up, then 3 interleaved rounds",
        cfg.kafka.brokers,
        cfg.kafka.compression.as_str()
    ));
    r.set("events", n);
    r.set("event_bytes", sample);
    r.set("hot_events", hot_n);
    r.set("brokers", &cfg.kafka.brokers);
    r.set("compression", cfg.kafka.compression.as_str());
    let events: Vec<EventEnvelope> = (0..n).map(|_| event(size)).collect();
    let hot = hot_events(hot_n, size);
    let store = seeded(cfg, dir, "relay.db", &events).await?;
    let hot_store = seeded(cfg, dir, "hot.db", &hot).await?;

    // Topics exist before anything is timed.
    let topics: Vec<String> = topic_names(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix);
    let base_topics: Vec<String> = topic_names(cfg.kafka.per_event_type(), &baseline_prefix(cfg));
    // Where the relay puts the bench's events (the latency consumer's topic).
    let bench_topic = topic_of(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix, &event(size));
    for t in [&topics, &base_topics] {
        crate::relay::admin::ensure_topics(&cfg.kafka, t, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    let producer: FutureProducer = producer_config(&cfg.kafka, &Delivery::AtLeastOnce).create()?;
    let (records, hot_records) = (baseline_records(cfg, &events), baseline_records(cfg, &hot));

    // Warm-up (untimed): the first pass meets a cold broker (and, for
    // exactly-once, a transaction coordinator not loaded yet).
    bare_pass(&producer, &records).await?;
    for (name, mode) in [("bench-warmup", DeliveryMode::AtLeastOnce), ("bench-warmup-eos", DeliveryMode::ExactlyOnce)] {
        let warm = relay_pass(cfg, &store, name, mode).await?;
        stop(warm.trigger, warm.task).await;
    }

    let (mut bare, mut alo, mut eos, mut bare_hot, mut relay_hot) = (vec![], vec![], vec![], vec![], vec![]);
    // The at-least-once relay timed from its report of running, and that start.
    let (mut alo_running, mut alo_start) = (vec![], vec![]);
    // CPU per event of each pass (this process: every thread, librdkafka's included).
    let (mut cpu_bare, mut cpu_alo, mut cpu_eos) = (vec![], vec![], vec![]);
    for round in 1..=3 {
        let cpu = CpuMeter::start();
        bare.push(bare_pass(&producer, &records).await?);
        cpu_bare.push(cpu.per_item(records.len()));
        let p = relay_pass(cfg, &store, &format!("bench-alo-{round}"), DeliveryMode::AtLeastOnce).await?;
        cpu_alo.push(p.cpu);
        stop(p.trigger, p.task).await;
        alo.push(p.rate);
        alo_running.push(p.running_rate);
        alo_start.push(p.start_ms);
        let p = relay_pass(cfg, &store, &format!("bench-eos-{round}"), DeliveryMode::ExactlyOnce).await?;
        cpu_eos.push(p.cpu);
        stop(p.trigger, p.task).await;
        eos.push(p.rate);
        bare_hot.push(bare_pass(&producer, &hot_records).await?);
        let p = relay_pass(cfg, &hot_store, &format!("bench-hot-{round}"), DeliveryMode::AtLeastOnce).await?;
        stop(p.trigger, p.task).await;
        relay_hot.push(p.rate);
    }
    r.rates("bare", "bare producer", "events/s", &bare, None);
    r.rates("relay_at_least_once", "relay at-least-once", "events/s", &alo, Some(&bare));
    r.rates("relay_at_least_once_running", "relay at-least-once, once running", "events/s", &alo_running, Some(&bare));
    r.rates("relay_start_ms", "relay start (spawn -> running)", "ms", &alo_start, None);
    r.rates("relay_exactly_once", "relay exactly-once", "events/s", &eos, Some(&bare));
    r.rates("bare_hot", "bare producer, one hot aggregate", "events/s", &bare_hot, None);
    r.rates("relay_hot", "relay, one hot aggregate", "events/s", &relay_hot, Some(&bare_hot));
    r.say("(goal: relay at-least-once >= 0.8x of the bare producer)");
    r.costs("cpu_bare", "CPU per event, bare producer", &cpu_bare, None);
    r.costs("cpu_relay_at_least_once", "CPU per event, relay at-least-once", &cpu_alo, Some(&cpu_bare));
    r.costs("cpu_relay_exactly_once", "CPU per event, relay exactly-once", &cpu_eos, Some(&cpu_bare));

    let mut e2e = serde_json::Map::new();
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::ExactlyOnce] {
        let Pass { trigger: t, task, .. } =
            relay_pass(cfg, &store, &format!("bench-e2e-{}", mode.as_str()), mode).await?;
        let mut phases: Vec<(String, u64, DynStore)> =
            rates.iter().map(|&rate| (format!("{}@{rate}", mode.as_str()), rate, store.clone())).collect();
        if mode == DeliveryMode::AtLeastOnce {
            // Appended through another store instance (what a standby does):
            // no in-process wake-up, only the cross-process change watcher.
            let standby: DynStore = SqliteStore::open(&dir.join("relay.db"), cfg.store.sqlite.clone()).await?;
            let rate = rates.first().copied().unwrap_or(500);
            phases.push((format!("{}@{rate} via standby", mode.as_str()), rate, standby));
        }
        for (name, rate, via) in phases {
            let l = super::latency::e2e(cfg, &via, &bench_topic, size, rate, seconds, event).await;
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    stop(t, task).await;
                    return Err(e);
                }
            };
            r.say(format!(
                "e2e {name:<28} append -> consumed for {seconds} s ({} samples, offered {:.0}/s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (goal p50 < 10 ms, p99 < 50 ms)",
                l.samples, l.offered_per_s, l.p50_ms, l.p99_ms, l.max_ms
            ));
            e2e.insert(name, serde_json::to_value(l)?);
        }
        stop(t, task).await;
    }
    r.set("e2e", e2e);
    r.set("e2e_seconds", seconds);
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Review finding: `size - len - 12` underflowed (a panic) for a
    /// `--size` just above the unpadded event (379..=389 bytes).
    #[test]
    fn events_of_every_size_near_the_unpadded_one_are_built_without_overflow() {
        for size in 0..=1_000 {
            let e = super::event(size);
            let len = serde_json::to_vec(&e).unwrap().len();
            let unpadded = !e.payload.as_object().unwrap().contains_key("padding");
            // Padded: exactly the requested size; otherwise never padded past it.
            assert!(len == size || unpadded, "size {size}: {len} bytes");
        }
    }
}
