//! `bench backlog`: memory of a real `outboxd run` child while it relays a
//! backlog of N events (1 000 000 by default) at full speed. The backlog is
//! seeded by this process before the daemon starts, so the figures are the
//! daemon's own: VmRSS sampled as its relay checkpoint advances, and VmHWM
//! (peak resident set) when it has caught up.
//!
//! Guarantee: only measures and prints (goal: RSS < 100 MB, flat).

use std::time::{Duration, Instant};
use uuid::Uuid;

use super::daemon::Daemon;
use super::Report;
use crate::config::Config;
use crate::store::sqlite::SqliteStore;
use crate::store::sqlite::Synchronous;
use crate::store::DynStore;

/// Events per aggregate in the seeded backlog (one append each aggregate).
const PER_AGGREGATE: usize = 10;

/// Appends `n` events of ~`size` bytes, `PER_AGGREGATE` per aggregate.
async fn seed(store: &DynStore, n: usize, size: usize) -> anyhow::Result<()> {
    let writers = 8;
    let aggregates = n.div_ceil(PER_AGGREGATE);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for a in (w..aggregates).step_by(writers) {
                let id = Uuid::now_v7();
                let k = PER_AGGREGATE.min(n - a * PER_AGGREGATE);
                let events = (1..=k as i64)
                    .map(|seq| {
                        let mut e = super::relay::event(size);
                        (e.aggregate_id, e.sequence) = (id, seq);
                        e
                    })
                    .collect();
                store.append(id, 0, events).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn run(
    r: &mut Report,
    base: &Config,
    config_file: Option<&std::path::Path>,
    n: usize,
    size: usize,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let dir = super::tempdir(dir)?;
    let db = dir.join("backlog.db");
    let mut opts = base.store.sqlite.clone();
    opts.synchronous = Synchronous::Normal;
    let store: DynStore = SqliteStore::open(&db, opts).await?;
    let t = Instant::now();
    seed(&store, n, size).await?;
    let head = store.head_position().await?;
    let seeded = t.elapsed().as_secs_f64();
    r.say(format!(
        "bench backlog: {head} events of ~{size} bytes seeded in {seeded:.1} s; a real `outboxd run` (relay to {}, projections on) drains them",
        base.kafka.brokers
    ));
    r.set("size", size);
    r.set("seed_seconds", seeded);
    r.set("brokers", &base.kafka.brokers);
    let consumer = base.relay.consumer_name.clone();
    // Timed from the spawn: the relay drains while the child still starts
    // (before its /health/live answers), and those events count.
    let start = Instant::now();
    let daemon = Daemon::start(&db, &base.kafka, config_file).await?;
    let (mut samples, mut last, mut last_move) = (Vec::new(), 0i64, Instant::now());
    loop {
        let pos = store.get_checkpoint(&consumer).await?.unwrap_or(0);
        let rss = daemon.memory_kb("VmRSS").unwrap_or(0);
        samples.push((start.elapsed().as_secs_f64(), pos, rss));
        if pos >= head {
            break;
        }
        if pos != last {
            (last, last_move) = (pos, Instant::now());
        }
        if last_move.elapsed() > Duration::from_secs(120) {
            let _ = daemon.stop().await;
            anyhow::bail!("the relay made no progress for 120 s at position {pos} of {head}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let hwm = daemon.memory_kb("VmHWM").unwrap_or(0);
    let stopped = daemon.stop().await;
    let mb = |kb: u64| kb as f64 / 1024.0;
    // Resident set at each tenth of the backlog: flat means it does not grow with it.
    let mut at = Vec::new();
    for tenth in 1..=10 {
        let mark = head * tenth / 10;
        if let Some(&(s, _, rss)) = samples.iter().find(|(_, p, _)| *p >= mark) {
            at.push(serde_json::json!({ "percent": tenth * 10, "seconds": s, "rss_mb": mb(rss) }));
            r.say(format!("  {:>3} % relayed at {s:>6.1} s: VmRSS {:>6.1} MB", tenth * 10, mb(rss)));
        }
    }
    let max_rss = samples.iter().map(|s| s.2).max().unwrap_or(0);
    r.say(format!(
        "drained {head} events in {secs:.1} s ({:.0} events/s); VmRSS max sampled {:.1} MB, VmHWM {:.1} MB (goal < 100 MB, flat); {stopped}",
        head as f64 / secs,
        mb(max_rss),
        mb(hwm)
    ));
    r.set("events", head);
    r.set("drain_seconds", secs);
    r.set("drain_events_per_s", head as f64 / secs);
    r.set("vm_hwm_mb", mb(hwm));
    r.set("vm_rss_max_mb", mb(max_rss));
    r.set("rss_by_progress", at);
    r.set("topics_deleted", &stopped.topics_deleted);
    r.set("daemon_stop", &stopped);
    drop(store);
    Ok(())
}
