//! `outboxd`: the command-line entry point. CLI parsing and configuration only;
//! everything else lives in the library.
//!
//! Exit codes: 0 success, 1 infrastructure failure (store/broker), 2 bad
//! input (arguments, configuration, a command the domain refuses, unknown
//! id), 3 version conflict.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use uuid::Uuid;

use outboxd::app::{AppError, CommandService, ServiceOptions};
use outboxd::config::Config;
use outboxd::domain::{
    Currency, Customer, CustomerCommand, Email, Money, Order, OrderCommand, OrderItem, PhoneNumber, Sku,
};
use outboxd::envelope::Metadata;
use outboxd::store::DynStore;

#[derive(Parser)]
#[command(
    name = "outboxd",
    version,
    about = "Transactional outbox daemon: event-sourced orders, an atomic event store, and a relay to Kafka",
    long_about = "Commands change Order and Customer aggregates; their events are appended atomically to an event store \
(embedded SQLite by default, or ScyllaDB/Cassandra over CQL); `outboxd run` relays every stored event to Kafka in order per aggregate.\n\n\
Configuration: defaults <- --config FILE (TOML) <- OUTBOX_* environment variables (nested keys joined with __, e.g. OUTBOX_KAFKA__BROKERS)."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "OUTBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Override store.path (SQLite database file).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create or upgrade the store's tables (idempotent).
    Schema,
    /// Order commands and queries.
    #[command(subcommand)]
    Order(OrderCmd),
    /// Customer commands and queries.
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// Print the event feed (global commit order) as JSON lines.
    Events {
        /// Print events with position greater than this.
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Run the daemon: relay, command API and admin server, until SIGINT/SIGTERM.
    Run,
    /// Dead-letter queue: list and replay.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Benchmarks that print ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(outboxd::bench::BenchCmd),
    /// Read models (order_read_model, orders_by_customer).
    #[command(subcommand)]
    Projections(ProjectionsCmd),
    /// Print the effective configuration as JSON (secrets redacted).
    Config,
}

#[derive(Subcommand)]
enum ProjectionsCmd {
    /// Clear the read models and rebuild them from event 0; reports events/s.
    Rebuild {
        /// No progress bar (for logs and scripts).
        #[arg(long)]
        no_progress: bool,
    },
}

#[derive(Args)]
struct Meta {
    /// Correlation id to stamp on the events (default: a new one).
    #[arg(long)]
    correlation_id: Option<Uuid>,
    /// Fail with a conflict unless the aggregate is at this version.
    #[arg(long)]
    expected_version: Option<i64>,
}

#[derive(Subcommand)]
enum OrderCmd {
    /// Create an order; prints its id.
    Create {
        #[arg(long)]
        customer: Uuid,
        /// An item as SKU:QUANTITY:UNIT_PRICE_MINOR (repeatable), e.g. BOOK-1:2:1999.
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        /// Currency of every price (ISO 4217).
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Use this order id instead of a new one.
        #[arg(long)]
        id: Option<Uuid>,
        #[command(flatten)]
        meta: Meta,
    },
    /// Replace the items of a created (unconfirmed) order.
    UpdateItems {
        id: Uuid,
        #[arg(long = "item", required = true)]
        items: Vec<String>,
        #[arg(long, default_value = "EUR")]
        currency: String,
        #[command(flatten)]
        meta: Meta,
    },
    Confirm {
        id: Uuid,
        #[command(flatten)]
        meta: Meta,
    },
    Ship {
        id: Uuid,
        #[arg(long)]
        tracking_number: String,
        #[arg(long)]
        carrier: String,
        #[command(flatten)]
        meta: Meta,
    },
    Deliver {
        id: Uuid,
        #[arg(long)]
        signature: String,
        #[command(flatten)]
        meta: Meta,
    },
    Cancel {
        id: Uuid,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        meta: Meta,
    },
    /// Print state and events of one order as JSON.
    Show { id: Uuid },
}

#[derive(Subcommand)]
enum CustomerCmd {
    /// Register a customer; prints its id.
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        phone: Option<String>,
        #[arg(long)]
        id: Option<Uuid>,
        #[command(flatten)]
        meta: Meta,
    },
    ChangeEmail {
        id: Uuid,
        #[arg(long)]
        email: String,
        #[command(flatten)]
        meta: Meta,
    },
    Show {
        id: Uuid,
    },
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List dead letters as JSON lines.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Re-publish dead letters and remove the ones Kafka confirmed.
    Replay {
        #[arg(long, conflicts_with = "all")]
        id: Option<Uuid>,
        #[arg(long)]
        all: bool,
    },
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    err: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let err = e.into();
        let code = match err.downcast_ref::<AppError>() {
            Some(AppError::Domain(_)) | Some(AppError::Decode(_)) => 2,
            Some(AppError::Conflict { .. }) => 3,
            _ if err.downcast_ref::<outboxd::config::ConfigError>().is_some() => 2,
            _ if err.downcast_ref::<outboxd::domain::DomainError>().is_some() => 2,
            _ if err.downcast_ref::<BadInput>().is_some() => 2,
            _ => 1,
        };
        Failure { code, err }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon and benchmarks log at info; one-shot commands keep stderr for errors.
    let default_level = if matches!(cli.cmd, Cmd::Run | Cmd::Bench(_)) { "info" } else { "warn" };
    init_tracing(cli.log_format, default_level);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async_main(cli));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", format!("{:#}", f.err).replace('\n', " "));
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},rdkafka=warn,librdkafka=warn")));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(db) = &cli.db {
        cfg.store.path = db.clone();
        cfg.validate()?;
    }
    Ok(cfg)
}

async fn async_main(cli: Cli) -> Result<u8, Failure> {
    let cfg = load_config(&cli)?;
    match cli.cmd {
        Cmd::Config => {
            println!("{}", serde_json::to_string_pretty(&redacted(&cfg))?);
            Ok(0)
        }
        Cmd::Schema => {
            let store = outboxd::store::open(&cfg).await.context("cannot open the store")?;
            store.migrate().await?;
            println!("schema of the {} store is up to date", store.backend());
            Ok(0)
        }
        Cmd::Events { after, limit } => {
            let store = open(&cfg).await?;
            for e in store.read_feed(after, limit).await? {
                println!("{}", serde_json::to_string(&e)?);
            }
            Ok(0)
        }
        Cmd::Order(c) => order(&cfg, c).await,
        Cmd::Customer(c) => customer(&cfg, c).await,
        Cmd::Run => Ok(outboxd::daemon::run(cfg).await?),
        Cmd::Dlq(c) => dlq(&cfg, c).await,
        Cmd::Bench(b) => Ok(outboxd::bench::run(&cfg, b).await.map(|_| 0)?),
        Cmd::Projections(ProjectionsCmd::Rebuild { no_progress }) => {
            if cfg.store.backend == outboxd::config::Backend::Cql {
                return Err(BadInput(
                    "on the CQL backend the read models are built by the daemon's CDC projection (from the CDC log, 24 h TTL); rebuild is for the sqlite store".into(),
                )
                .into());
            }
            let (store, models) = outboxd::projection::open_stores(&cfg).await.context("cannot open the store")?;
            let models = models
                .ok_or_else(|| BadInput("read models need the sqlite store (store.backend = \"sqlite\")".into()))?;
            let report =
                outboxd::projection::rebuild(store, models, &cfg.service.default_currency, !no_progress).await?;
            println!("{report}");
            Ok(0)
        }
    }
}

fn redacted(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    if c.http.api_token.is_some() {
        c.http.api_token = Some("<redacted>".into());
    }
    c
}

async fn open(cfg: &Config) -> Result<DynStore, Failure> {
    Ok(outboxd::store::open(cfg).await.context("cannot open the store")?)
}

fn service(cfg: &Config, store: DynStore) -> CommandService {
    CommandService::new(
        store,
        ServiceOptions {
            max_conflict_retries: cfg.service.max_conflict_retries,
            snapshot_every: cfg.service.snapshot_every,
            default_currency: cfg.service.default_currency.clone(),
        },
    )
}

fn meta(m: &Meta) -> Metadata {
    Metadata { correlation_id: m.correlation_id.unwrap_or_else(Uuid::now_v7), causation_id: None, trace: None }
}

/// Parses `SKU:QUANTITY:UNIT_PRICE_MINOR` items.
fn parse_items(raw: &[String], currency: &str) -> Result<Vec<OrderItem>, Failure> {
    let currency = Currency::new(currency)?;
    raw.iter()
        .map(|s| {
            let parts: Vec<&str> = s.split(':').collect();
            let [sku, qty, price] = parts[..] else {
                return Err(BadInput(format!(
                    "--item {s:?}: expected SKU:QUANTITY:UNIT_PRICE_MINOR, e.g. BOOK-1:2:1999"
                ))
                .into());
            };
            let qty: i64 =
                qty.parse().map_err(|_| BadInput(format!("--item {s:?}: quantity {qty:?} is not a whole number")))?;
            let price: i64 = price.parse().map_err(|_| {
                BadInput(format!("--item {s:?}: unit price {price:?} is not a whole number of minor units"))
            })?;
            Ok(OrderItem::new(Sku::new(sku)?, qty, Money::new(price, currency)?)?)
        })
        .collect()
}

async fn order(cfg: &Config, c: OrderCmd) -> Result<u8, Failure> {
    // Validate the input before touching the store.
    let (id, cmd, m) = match c {
        OrderCmd::Show { id } => {
            let svc = service(cfg, open(cfg).await?);
            let loaded = svc.load::<Order>(id).await?;
            if loaded.version == 0 {
                return Err(Failure::from(AppError::Domain(outboxd::domain::DomainError::OrderNotFound))
                    .context(format!("order {id}")));
            }
            let events = svc.store().load(id).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"id": id, "version": loaded.version, "state": loaded.state, "events": events})
                )?
            );
            return Ok(0);
        }
        OrderCmd::Create { customer, items, currency, id, meta: m } => {
            let items = parse_items(&items, &currency)?;
            (id.unwrap_or_else(Uuid::now_v7), OrderCommand::Create { customer_id: customer, items }, m)
        }
        OrderCmd::UpdateItems { id, items, currency, meta: m } => {
            (id, OrderCommand::UpdateItems { items: parse_items(&items, &currency)? }, m)
        }
        OrderCmd::Confirm { id, meta: m } => (id, OrderCommand::Confirm, m),
        OrderCmd::Ship { id, tracking_number, carrier, meta: m } => {
            (id, OrderCommand::Ship { tracking_number, carrier }, m)
        }
        OrderCmd::Deliver { id, signature, meta: m } => (id, OrderCommand::Deliver { signature }, m),
        OrderCmd::Cancel { id, reason, meta: m } => (id, OrderCommand::Cancel { reason }, m),
    };
    let is_create = matches!(cmd, OrderCommand::Create { .. });
    let svc = service(cfg, open(cfg).await?);
    let out = svc
        .execute::<Order>(id, &cmd, meta(&m), m.expected_version)
        .await
        .map_err(|e| Failure::from(e).context(format!("order {id}")))?;
    if is_create {
        println!("{id}");
    } else {
        println!("order {id}: {} (version {})", out.state.status, out.version);
    }
    Ok(0)
}

async fn customer(cfg: &Config, c: CustomerCmd) -> Result<u8, Failure> {
    let (id, cmd, m) = match c {
        CustomerCmd::Show { id } => {
            let svc = service(cfg, open(cfg).await?);
            let loaded = svc.load::<Customer>(id).await?;
            if loaded.version == 0 {
                return Err(Failure::from(AppError::Domain(outboxd::domain::DomainError::CustomerNotFound))
                    .context(format!("customer {id}")));
            }
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"id": id, "version": loaded.version, "state": loaded.state})
                )?
            );
            return Ok(0);
        }
        CustomerCmd::Register { name, email, phone, id, meta: m } => {
            let email = Email::new(&email)?;
            let phone = phone.as_deref().map(PhoneNumber::new).transpose()?;
            (id.unwrap_or_else(Uuid::now_v7), CustomerCommand::Register { name, email, phone }, m)
        }
        CustomerCmd::ChangeEmail { id, email, meta: m } => {
            (id, CustomerCommand::ChangeEmail { email: Email::new(&email)? }, m)
        }
    };
    let is_create = matches!(cmd, CustomerCommand::Register { .. });
    let svc = service(cfg, open(cfg).await?);
    let out = svc
        .execute::<Customer>(id, &cmd, meta(&m), m.expected_version)
        .await
        .map_err(|e| Failure::from(e).context(format!("customer {id}")))?;
    if is_create {
        println!("{id}");
    } else {
        println!("customer {id}: version {}", out.version);
    }
    Ok(0)
}

async fn dlq(cfg: &Config, c: DlqCmd) -> Result<u8, Failure> {
    let store = open(cfg).await?;
    match c {
        DlqCmd::List { limit } => {
            for l in store.dlq_list(limit).await? {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(0)
        }
        DlqCmd::Replay { id, all } => {
            let letters = store.dlq_list(100_000).await?;
            let chosen: Vec<_> = match (id, all) {
                (Some(id), _) => {
                    let l: Vec<_> = letters.into_iter().filter(|l| l.id == id).collect();
                    if l.is_empty() {
                        return Err(BadInput(format!("no dead letter with id {id}")).into());
                    }
                    l
                }
                (None, true) => letters,
                (None, false) => {
                    return Err(BadInput("say which dead letters to replay: --id ID or --all".into()).into())
                }
            };
            let publisher = outboxd::relay::KafkaPublisher::new(&cfg.kafka).map_err(|e| BadInput(e.message))?;
            let report = outboxd::relay::dlq::replay(&store, &publisher, chosen, &cfg.service.default_currency).await?;
            for id in &report.replayed {
                println!("replayed {id}");
            }
            for (id, e) in &report.failed {
                eprintln!("failed {id}: {e}");
            }
            Ok(if report.failed.is_empty() { 0 } else { 1 })
        }
    }
}

impl Failure {
    fn context(mut self, c: String) -> Self {
        self.err = self.err.context(c);
        self
    }
}
