//! `bench append`: the SQLite store's append against a raw batched INSERT of
//! the same rows (`--raw-batch` rows per commit), same machine, same run:
//! an untimed warm-up of both sides, then 3 interleaved rounds (raw, store,
//! store with a lease renewed) on fresh files, median with min/max. Each
//! store pass waits for its writer thread to close its connection (SQLite's
//! final checkpoint) before the next pass starts.
//!
//! Guarantee: only measures and prints.

use std::time::Instant;

use super::cpu::CpuMeter;
use super::{sample_events, tempdir, Report};
use crate::config::Config;
use crate::envelope::EventEnvelope;
use crate::store::sqlite::{SqliteStore, MIGRATIONS};

/// Raw rusqlite INSERTs of the same rows in transactions of `batch`; events/s.
/// Like the store's callers, the loop owns its events and frees each one
/// after its insert, inside the timed loop (the store's `append` takes its
/// events by value, so the store pass frees them there too).
async fn raw_pass(
    cfg: &Config,
    path: std::path::PathBuf,
    rows: Vec<Vec<EventEnvelope>>,
    batch: usize,
) -> anyhow::Result<(f64, f64)> {
    let sync = cfg.store.sqlite.synchronous;
    tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, f64)> {
        let c = rusqlite::Connection::open(&path)?;
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        c.execute_batch(&format!("PRAGMA synchronous={};", if sync == crate::store::sqlite::Synchronous::Full { "FULL" } else { "NORMAL" }))?;
        // The store's table as the store has it (every step: v3's trace
        // columns, v4's per-row id check), so both sides write the same rows
        // into the same table.
        for (_, ddl) in MIGRATIONS {
            c.execute_batch(ddl)?;
        }
        let total: usize = rows.iter().map(Vec::len).sum();
        let (start, cpu) = (Instant::now(), CpuMeter::start());
        let mut st = c.prepare_cached("INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp, trace_parent, trace_state) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)")?;
        let mut in_tx = 0;
        for e in rows.into_iter().flatten() {
            if in_tx == 0 {
                c.execute_batch("BEGIN")?;
            }
            st.execute(rusqlite::params![e.event_id.to_string(), e.aggregate_type, e.aggregate_id.to_string(), e.sequence, e.event_type, e.schema_version,
                serde_json::to_string(&e.payload)?, e.causation_id.map(|c| c.to_string()), e.correlation_id.to_string(), crate::store::sqlite::ts(&e.timestamp),
                e.trace.as_ref().map(|t| t.traceparent.clone()), e.trace.as_ref().and_then(|t| t.tracestate.clone())])?;
            in_tx += 1;
            if in_tx == batch.max(1) {
                c.execute_batch("COMMIT")?;
                in_tx = 0;
            }
        }
        if in_tx > 0 {
            c.execute_batch("COMMIT")?;
        }
        Ok((total as f64 / start.elapsed().as_secs_f64(), cpu.per_item(total)))
    })
    .await?
}

/// How often the lease is renewed during the `renewing` pass: 330x the
/// default renewal rate (TTL 10 s / 3), so its cost on appends shows if any.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Renews a lease on `store` every `RENEW_EVERY` until `stop`; returns the renewals.
async fn renew_lease(store: crate::store::DynStore, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<u64> {
    use crate::store::lease::{Lease, LeaseCas};
    let mut lease = Lease { name: "bench".into(), holder: "bench".into(), epoch: 1, counter: 0, ttl_ms: 30 };
    store.lease_cas(&LeaseCas { expected: None, new: lease.clone() }).await?;
    let mut renewals = 0;
    while !*stop.borrow() {
        tokio::time::sleep(RENEW_EVERY).await;
        let next = Lease { counter: lease.counter + 1, ..lease.clone() };
        let renewed =
            store.lease_cas(&LeaseCas { expected: Some((lease.epoch, lease.counter)), new: next.clone() }).await?;
        anyhow::ensure!(renewed, "the bench lease was taken by someone else");
        (lease, renewals) = (next, renewals + 1);
    }
    Ok(renewals)
}

/// The store: every event its own compare-and-set append, `concurrency`
/// appenders, optionally while a lease is renewed; events/s and renewals.
async fn store_pass(
    cfg: &Config,
    path: std::path::PathBuf,
    events: Vec<Vec<EventEnvelope>>,
    concurrency: usize,
    renewing: bool,
) -> anyhow::Result<(f64, u64, f64)> {
    let total: usize = events.iter().map(Vec::len).sum();
    let sqlite = SqliteStore::open(path, cfg.store.sqlite.clone()).await?;
    let store: crate::store::DynStore = sqlite.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let renewer = renewing.then(|| tokio::spawn(renew_lease(store.clone(), stopped)));
    let mut per_worker: Vec<Vec<Vec<EventEnvelope>>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
    for (i, agg) in events.into_iter().enumerate() {
        per_worker[i % concurrency.max(1)].push(agg);
    }
    let (start, cpu) = (Instant::now(), CpuMeter::start());
    let mut tasks = Vec::new();
    for work in per_worker {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            for agg in work {
                for (i, e) in agg.into_iter().enumerate() {
                    s.append(e.aggregate_id, i as i64, vec![e]).await?;
                }
            }
            Ok::<_, crate::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let (rate, cpu) = (total as f64 / start.elapsed().as_secs_f64(), cpu.per_item(total));
    let _ = stop.send(true);
    let renewals = match renewer {
        Some(t) => t.await??,
        None => 0,
    };
    let stored = store.head_position().await?;
    anyhow::ensure!(stored as usize == total, "store holds {stored} events, expected {total}");
    // Its writer's close (the final checkpoint's fsyncs) ends before the next pass starts.
    drop(store);
    super::close(sqlite).await?;
    Ok((rate, renewals, cpu))
}

/// Events of the untimed warm-up of each side (same shape as the rounds,
/// at most `--aggregates` of them): the first database work of the process
/// (page cache, allocator, file system) is in neither side's figures.
const WARMUP_EVENTS: usize = 3_000;

/// What `bench append` runs: `n` aggregates of `k` events, `concurrency`
/// appenders, the raw baseline committing `raw_batch` rows at a time.
pub(super) struct Shape {
    pub n: usize,
    pub k: usize,
    pub concurrency: usize,
    pub raw_batch: usize,
}

pub(super) async fn bench_append(
    r: &mut Report,
    cfg: &Config,
    shape: Shape,
    dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let Shape { n, k, concurrency, raw_batch } = shape;
    let tmp = tempdir(dir)?;
    let total = n * k;
    let sync = cfg.store.sqlite.synchronous;
    let warm_k = k.min(WARMUP_EVENTS);
    let warm_n = (WARMUP_EVENTS / warm_k).clamp(1, n);
    r.say(format!("bench append: {n} aggregates x {k} events = {total} events, one append per event, {concurrency} concurrent appenders, raw baseline {raw_batch} rows per commit, synchronous={}; a warm-up of {} events each side, then 3 interleaved rounds", sync.pragma().to_lowercase(), warm_n * warm_k));
    r.set("aggregates", n);
    r.set("events_per_aggregate", k);
    r.set("events", total);
    r.set("concurrency", concurrency);
    r.set("raw_batch", raw_batch);
    r.set("synchronous", sync);
    r.set("warmup_events", warm_n * warm_k);
    // Warm-up (untimed), both sides on files of their own.
    let warm = sample_events(warm_n, warm_k);
    raw_pass(cfg, tmp.join("warm-raw.db"), warm.clone(), raw_batch).await?;
    store_pass(cfg, tmp.join("warm-store.db"), warm, concurrency, false).await?;
    let (mut raw, mut store, mut renewing, mut renewals) = (vec![], vec![], vec![], 0);
    // CPU per event of each pass (this process: callers, writer thread, raw loop).
    let (mut cpu_raw, mut cpu_store) = (vec![], vec![]);
    for round in 1..=3 {
        let events = sample_events(n, k);
        let (rate, cpu) = raw_pass(cfg, tmp.join(format!("raw-{round}.db")), events.clone(), raw_batch).await?;
        raw.push(rate);
        cpu_raw.push(cpu);
        let (rate, _, cpu) =
            store_pass(cfg, tmp.join(format!("store-{round}.db")), events.clone(), concurrency, false).await?;
        store.push(rate);
        cpu_store.push(cpu);
        let (rate, renewed, _) =
            store_pass(cfg, tmp.join(format!("lease-{round}.db")), events, concurrency, true).await?;
        renewing.push(rate);
        renewals += renewed;
    }
    r.rates("raw", "raw batched insert", "events/s", &raw, None);
    r.rates("store", "store append (CAS)", "events/s", &store, Some(&raw));
    r.rates("store_renewing", "store append, lease renewed /10 ms", "events/s", &renewing, Some(&store));
    r.say(format!("(goal: store >= 0.8x of raw; the lease was renewed {renewals} times during the last subject, whose ratio is to the plain store append: renewal takes the write lock beside the writer thread, never through its queue)"));
    r.set("lease_renewals", renewals);
    r.costs("cpu_raw", "CPU per event, raw batched insert", &cpu_raw, None);
    r.costs("cpu_store", "CPU per event, store append", &cpu_store, Some(&cpu_raw));
    Ok(())
}
