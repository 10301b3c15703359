//! `outboxd bench ...`: throughput and latency measured against a baseline
//! in the same run, printed as ratios (see docs/BENCHMARKS.md).
//!
//! Guarantee: benchmarks only print numbers; nothing here is a pass/fail test.

use clap::Subcommand;
use std::time::Instant;
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{Aggregate, Currency, Money, Order, OrderCommand, OrderItem, Sku};
use crate::envelope::{now_millis, EventEnvelope, Metadata};
use crate::store::sqlite::{SqliteStore, SCHEMA_V1};
use crate::store::EventStore;

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// SQLite store append vs a raw batched INSERT of the same rows.
    Append {
        /// Aggregates (each gets `events_per_aggregate` events, one append per event).
        #[arg(long, default_value_t = 20_000)]
        aggregates: usize,
        #[arg(long, default_value_t = 5)]
        events_per_aggregate: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Directory for the benchmark databases (default: a temp dir).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

pub async fn run(cfg: &Config, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Append { aggregates, events_per_aggregate, concurrency, dir } => bench_append(cfg, aggregates, events_per_aggregate, concurrency, dir).await,
    }
}

/// Envelopes for `n` orders with `k` events each (created + updates).
pub fn sample_events(n: usize, k: usize) -> Vec<Vec<EventEnvelope>> {
    let eur = Currency::new("EUR").expect("EUR");
    let meta = Metadata::default();
    let at = now_millis();
    (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            let mut order = Order::default();
            let mut out = Vec::with_capacity(k);
            for seq in 1..=k as i64 {
                let items = vec![OrderItem::new(Sku::new(format!("SKU-{i}-{seq}")).expect("sku"), seq, Money::new(1999, eur).expect("money")).expect("item")];
                let cmd = if seq == 1 { OrderCommand::Create { customer_id: Uuid::from_u128(i as u128), items } } else { OrderCommand::UpdateItems { items } };
                let e = order.handle(&cmd).expect("valid command").remove(0);
                order.apply(&e);
                out.push(EventEnvelope::new::<Order>(id, seq, &e, meta, at).expect("encodable"));
            }
            out
        })
        .collect()
}

async fn bench_append(cfg: &Config, n: usize, k: usize, concurrency: usize, dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let tmp = tempdir(dir)?;
    let events = sample_events(n, k);
    let total = n * k;
    println!("bench append: {n} aggregates x {k} events = {total} events, one append per event, {concurrency} concurrent appenders, synchronous={:?}", cfg.store.sqlite.synchronous);

    // Baseline: raw rusqlite INSERTs of the same rows, batched in transactions of 256 appends.
    let raw_path = tmp.join("raw.db");
    let rows = events.clone();
    let sync = cfg.store.sqlite.synchronous;
    let raw_secs = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let mut c = rusqlite::Connection::open(&raw_path)?;
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
        c.execute_batch(&format!("PRAGMA synchronous={};", if sync == crate::store::sqlite::Synchronous::Full { "FULL" } else { "NORMAL" }))?;
        c.execute_batch(SCHEMA_V1)?;
        let flat: Vec<&EventEnvelope> = rows.iter().flatten().collect();
        let start = Instant::now();
        for chunk in flat.chunks(256) {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached("INSERT INTO event_store (event_id, aggregate_type, aggregate_id, sequence_number, event_type, event_version, payload, causation_id, correlation_id, timestamp) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)")?;
                for e in chunk {
                    st.execute(rusqlite::params![e.event_id.to_string(), e.aggregate_type, e.aggregate_id.to_string(), e.sequence, e.event_type, e.schema_version,
                        serde_json::to_string(&e.payload)?, e.causation_id.map(|c| c.to_string()), e.correlation_id.to_string(), crate::store::sqlite::ts(&e.timestamp)])?;
                }
            }
            tx.commit()?;
        }
        Ok(start.elapsed().as_secs_f64())
    })
    .await??;

    // The store: every event is its own compare-and-set append.
    let store = SqliteStore::open(tmp.join("store.db"), cfg.store.sqlite.clone()).await?;
    let start = Instant::now();
    let mut per_worker: Vec<Vec<Vec<EventEnvelope>>> = (0..concurrency.max(1)).map(|_| Vec::new()).collect();
    for (i, agg) in events.into_iter().enumerate() {
        per_worker[i % concurrency.max(1)].push(agg);
    }
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
    let store_secs = start.elapsed().as_secs_f64();
    let stored = store.head_position().await?;
    anyhow::ensure!(stored as usize == total, "store holds {stored} events, expected {total}");
    let raw_rate = total as f64 / raw_secs;
    let store_rate = total as f64 / store_secs;
    println!("raw batched insert : {raw_rate:>10.0} events/s ({raw_secs:.3} s)");
    println!("store append (CAS) : {store_rate:>10.0} events/s ({store_secs:.3} s)");
    println!("ratio store/raw    : {:.2}x (goal >= 0.8x)", store_rate / raw_rate);
    Ok(())
}

pub(crate) fn tempdir(dir: Option<std::path::PathBuf>) -> anyhow::Result<std::path::PathBuf> {
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let p = base.join(format!("outboxd-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
