//! `outboxd bench ...`: throughput and latency measured against a baseline
//! in the same run, printed as ratios (see docs/BENCHMARKS.md).
//!
//! Guarantee: benchmarks only print numbers; nothing here is a pass/fail test.
//!
//! One file per benchmark: `append` (SQLite store vs raw INSERT), `relay`
//! (relay vs bare producer, e2e latency), `http` (command API vs bare
//! append), `cql` (CQL append vs raw LWT), `backlog` (memory of a real
//! `outboxd run` draining a large backlog); `snapshots` and `rebuild` live
//! in `projection::bench`. `report.rs` prints the figures (or, with
//! `--json`, one JSON object).

mod append;
mod backlog;
mod cpu;
mod cql;
mod daemon;
mod http;
mod latency;
mod relay;
mod report;

pub use report::{Report, Spread};

use clap::{Args, Subcommand};
use uuid::Uuid;

use crate::config::Config;
use crate::domain::{Aggregate, Currency, Money, Order, OrderCommand, OrderItem, Sku};
use crate::envelope::{now_millis, EventEnvelope, Metadata};

/// `outboxd bench [--json] <benchmark>`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Print the figures as one JSON object on stdout (the lines go to stderr).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: BenchCmd,
    /// The `--config` file, handed to the `outboxd run` children (set by main).
    #[arg(skip)]
    pub config_file: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchCmd {
    /// SQLite store append vs a raw batched INSERT of the same rows.
    #[command(args_override_self = true)]
    Append {
        /// Aggregates (each gets `events_per_aggregate` events, one append per event).
        #[arg(long, default_value_t = 20_000, value_parser = crate::args::at_least_one)]
        aggregates: usize,
        #[arg(long, default_value_t = 5, value_parser = crate::args::at_least_one)]
        events_per_aggregate: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 64, value_parser = crate::args::at_least_one)]
        concurrency: usize,
        /// Rows per transaction of the raw baseline (the store's own groups
        /// hold at most `concurrency` rows: `--raw-batch` equal to it
        /// compares the two at the same commit size).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        raw_batch: u32,
        /// Directory for the benchmark databases (default: a temp dir).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Relay throughput vs a bare rdkafka producer with identical settings,
    /// then append -> consumed latency in both delivery modes at each rate,
    /// and for events appended through a second store (a standby instance).
    #[command(args_override_self = true)]
    Relay {
        #[arg(long, default_value_t = 100_000, value_parser = crate::args::at_least_one)]
        events: usize,
        /// Approximate size of each event's JSON in bytes.
        #[arg(long, default_value_t = 1024, value_parser = crate::args::event_size)]
        size: usize,
        /// Events per second for the latency phase (comma-separated list;
        /// a later `--rate` replaces an earlier one, like every other flag).
        #[arg(long, value_delimiter = ',', default_value = "500,10000", action = clap::ArgAction::Set, value_parser = crate::args::rate)]
        rate: Vec<u64>,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10, value_parser = crate::args::seconds)]
        seconds: usize,
    },
    /// The command API under concurrent clients (a real `outboxd run` child
    /// with relay to kafka.brokers) next to the bare store append rate.
    #[command(args_override_self = true)]
    Http {
        #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
        clients: usize,
        #[arg(long, default_value_t = 300, value_parser = crate::args::at_least_one)]
        requests_per_client: usize,
    },
    /// Memory of a real `outboxd run` child relaying a backlog of N events
    /// (seeded before it starts): VmRSS sampled while it drains, VmHWM.
    #[command(args_override_self = true)]
    Backlog {
        #[arg(long, default_value_t = 1_000_000, value_parser = crate::args::at_least_one)]
        events: usize,
        /// Approximate size of each event's JSON in bytes.
        #[arg(long, default_value_t = 1024, value_parser = crate::args::event_size)]
        size: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Loading one aggregate of N events with and without snapshots.
    #[command(args_override_self = true)]
    Snapshots {
        #[arg(long, default_value_t = 10_000, value_parser = crate::args::at_least_one)]
        events: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Read-model rebuild throughput.
    #[command(args_override_self = true)]
    Rebuild {
        #[arg(long, default_value_t = 20_000, value_parser = crate::args::at_least_one)]
        orders: usize,
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// CQL store append vs a raw single-partition conditional insert, same
    /// server (store.cql.uri), same concurrency.
    #[command(args_override_self = true)]
    Cql {
        #[arg(long, default_value_t = 3_000, value_parser = crate::args::at_least_one)]
        events: usize,
        #[arg(long, default_value_t = 32, value_parser = crate::args::at_least_one)]
        concurrency: usize,
    },
}

pub async fn run(cfg: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let name = format!("{:?}", args.cmd).split([' ', '{']).next().unwrap_or_default().to_lowercase();
    let mut r = Report::new(&name, args.json);
    match args.cmd {
        BenchCmd::Append { aggregates, events_per_aggregate, concurrency, raw_batch, dir } => {
            let shape =
                append::Shape { n: aggregates, k: events_per_aggregate, concurrency, raw_batch: raw_batch as usize };
            append::bench_append(&mut r, cfg, shape, dir).await?
        }
        BenchCmd::Relay { events, size, rate, seconds } => {
            relay::run(&mut r, cfg, events, size, &rate, seconds as u64).await?
        }
        BenchCmd::Cql { events, concurrency } => cql::cql_bench(&mut r, cfg, events, concurrency).await?,
        BenchCmd::Http { clients, requests_per_client } => {
            let file = args.config_file.as_deref();
            http::run(&mut r, cfg, file, clients, requests_per_client).await?
        }
        BenchCmd::Backlog { events, size, dir } => {
            backlog::run(&mut r, cfg, args.config_file.as_deref(), events, size, dir).await?
        }
        BenchCmd::Snapshots { events, dir } => {
            let d = tempdir(dir)?;
            let s = crate::projection::bench::bench_snapshots(&d, events).await?;
            r.say(&s);
            r.set("snapshots", s);
        }
        BenchCmd::Rebuild { orders, dir } => {
            let d = tempdir(dir)?;
            let (text, report) = crate::projection::bench::bench_rebuild(&d, orders).await?;
            r.say(text);
            r.set("rebuild", report);
        }
    }
    r.finish();
    Ok(())
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
                let items = vec![OrderItem::new(
                    Sku::new(format!("SKU-{i}-{seq}")).expect("sku"),
                    seq,
                    Money::new(1999, eur).expect("money"),
                )
                .expect("item")];
                let cmd = if seq == 1 {
                    OrderCommand::Create { customer_id: Uuid::from_u128(i as u128), items }
                } else {
                    OrderCommand::UpdateItems { items }
                };
                let e = order.handle(&cmd).expect("valid command").remove(0);
                order.apply(&e);
                out.push(EventEnvelope::new::<Order>(id, seq, &e, &meta, at).expect("encodable"));
            }
            out
        })
        .collect()
}

/// Closes a pass's store and waits for its writer thread's end (its
/// connection's close: SQLite's final checkpoint, fsyncs included), so that
/// work is not left running into the next timed pass. Every other handle of
/// the store must be dropped first.
pub(crate) async fn close(store: std::sync::Arc<crate::store::sqlite::SqliteStore>) -> anyhow::Result<()> {
    let store = std::sync::Arc::into_inner(store)
        .ok_or_else(|| anyhow::anyhow!("a bench store is still in use when its pass ends"))?;
    Ok(store.close().await?)
}

/// A benchmark's own directory, removed when dropped: at the end, on an
/// error, or when SIGINT/SIGTERM drops the benchmark (`main`).
pub(crate) struct BenchDir(std::path::PathBuf);

impl std::ops::Deref for BenchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for BenchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn tempdir(dir: Option<std::path::PathBuf>) -> anyhow::Result<BenchDir> {
    let base = dir.unwrap_or_else(std::env::temp_dir);
    let p = base.join(format!("outboxd-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&p)?;
    Ok(BenchDir(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn rates(args: &[&str]) -> Vec<u64> {
        let cli = Cli::try_parse_from(["outboxd"].iter().chain(args)).unwrap();
        match cli.bench.cmd {
            BenchCmd::Relay { rate, .. } => rate,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_later_rate_replaces_an_earlier_one() {
        assert_eq!(rates(&["relay"]), vec![500, 10_000]);
        assert_eq!(rates(&["relay", "--rate", "500"]), vec![500]);
        assert_eq!(rates(&["relay", "--rate", "500", "--rate", "200,1000"]), vec![200, 1000]);
    }

    #[test]
    fn a_later_count_replaces_an_earlier_one() {
        let cli = Cli::try_parse_from(["outboxd", "relay", "--events", "50000", "--events", "300"]).unwrap();
        assert!(matches!(cli.bench.cmd, BenchCmd::Relay { events: 300, .. }));
    }
}
