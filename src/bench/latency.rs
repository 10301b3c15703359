//! End-to-end latency for `bench relay`: append at a steady rate while a
//! relay runs (each append its own task, so a slow commit does not lower the
//! offered rate), consume `read_committed`, measure append -> consumed per
//! event (matched by `ce_id`). The appends may go through another store
//! instance than the relay's (a standby's), which wakes the relay only
//! through the cross-process change watcher.
//!
//! Guarantee: only measures; returns the quantiles and the rate achieved.

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::config::Config;
use crate::envelope::EventEnvelope;
use crate::store::DynStore;

/// What one latency phase measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
    /// Appends per second actually offered (the target may be out of reach).
    pub offered_per_s: f64,
}

/// Concurrent appends in flight at most (the offered rate's headroom).
const IN_FLIGHT: usize = 1024;

pub async fn e2e(
    cfg: &Config,
    store: &DynStore,
    topic: &str,
    size: usize,
    rate: u64,
    seconds: u64,
    event: fn(usize) -> EventEnvelope,
) -> anyhow::Result<Latency> {
    let mut c = rdkafka::config::ClientConfig::new();
    // The relay's TLS/SASL settings apply to this consumer too.
    for (k, v) in cfg.kafka.client_extra() {
        c.set(k, v);
    }
    let consumer: StreamConsumer = c
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", format!("bench-{}", Uuid::now_v7()))
        .set("auto.offset.reset", "latest")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    // Wait for the assignment before producing.
    let warm = Instant::now();
    while consumer.assignment()?.count() == 0 && warm.elapsed() < Duration::from_secs(20) {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (rate * seconds) as usize;
    let (s2, st) = (sent.clone(), store.clone());
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed2 = failed.clone();
    let producer_task = tokio::spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        let start = Instant::now();
        for _ in 0..total {
            // Latency counts from the instant the append was due, not from
            // when a slot freed up: a stall is measured, not omitted.
            let due = tick.tick().await.into_std();
            let Ok(slot) = slots.clone().acquire_owned().await else { break };
            let e = event(size);
            s2.lock().map(|mut m| m.insert(e.event_id.to_string(), due)).ok();
            let (st, failed) = (st.clone(), failed2.clone());
            tokio::spawn(async move {
                if st.append(e.aggregate_id, 0, vec![e]).await.is_err() {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                drop(slot);
            });
        }
        total as f64 / start.elapsed().as_secs_f64()
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new(3)?;
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    while (hist.len() as usize) < total && Instant::now() < deadline {
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else { continue };
        let id = m.headers().and_then(|h| {
            h.iter().find(|h| h.key == "ce_id").and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).to_string()))
        });
        // Removed once read: a duplicate is not counted as another event.
        if let Some(t0) = id.and_then(|id| sent.lock().ok().and_then(|mut m| m.remove(&id))) {
            hist.record(t0.elapsed().as_micros() as u64)?;
        }
    }
    let offered_per_s = producer_task.await?;
    anyhow::ensure!(
        !hist.is_empty(),
        "no appended event was read back from {topic} within {} s: the latency consumer cannot read the topic",
        seconds + 30
    );
    // Quantiles over the events that arrived would leave out the slowest
    // (late or lost) ones: every appended event must be read back.
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed}/{total} appends failed: the latency would leave them out");
    anyhow::ensure!(
        hist.len() as usize == total,
        "{}/{total} appended events were read back from {topic} within {} s: the latency would leave the others out",
        hist.len(),
        seconds + 30
    );
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
        samples: hist.len(),
        offered_per_s,
    })
}
