//! `outboxd`: the command-line entry point. CLI parsing and configuration only:
//! each subcommand's handler lives in its own file under `cli/`, everything
//! else in the library.
//!
//! Exit codes: 0 success, 1 infrastructure failure (store/broker), 2 bad
//! input (arguments, configuration, a command the domain refuses, unknown
//! id), 3 version conflict.
#![forbid(unsafe_code)]

mod cli;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

use outboxd::config::Config;

use cli::Failure;

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
    /// Override store.path (SQLite database file; refused with store.backend = "cql").
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
    Schema {
        /// Print the DDL for the configured backend and exit; connects to nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Order commands and queries.
    #[command(subcommand)]
    Order(OrderCmd),
    /// Customer commands and queries.
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// Print the event feed (global commit order) as JSON lines, 100 by default (a full page names the next).
    Events {
        /// Print events with position greater than this (0 or more).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i64).range(0..))]
        after: i64,
        /// At most this many events (1 to 100000).
        #[arg(long, default_value_t = 100, value_parser = outboxd::args::list_limit)]
        limit: usize,
    },
    /// Run the daemon: relay, command API and admin server, until SIGINT/SIGTERM.
    Run,
    /// Parked aggregates and dead letters: list, replay, discard.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// The relay: rewind its checkpoint (carried out by the active relay).
    #[command(subcommand)]
    Relay(RelayCmd),
    /// List the leases (which instance runs each consumer) as JSON lines.
    Leases,
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench(outboxd::bench::BenchArgs),
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
    /// Checkpoint, head, lag and parked aggregates of the read models, as JSON.
    Status,
}

#[derive(Subcommand)]
enum RelayCmd {
    /// Re-publish everything after an earlier point (the same ce_ids), on an operator's decision.
    Rewind {
        /// Feed position to rewind to (SQLite store).
        #[arg(long, conflicts_with = "to_time", allow_negative_numbers = true)]
        to_position: Option<i64>,
        /// Time to rewind to, RFC 3339 (CQL store, within the CDC log TTL).
        #[arg(long)]
        to_time: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
}

/// How long an operator request waits (`dlq replay`, `dlq discard`, `relay rewind`).
#[derive(Args)]
pub struct Wait {
    /// Seconds to wait for the outcome. A request no relay has claimed by then, or one this
    /// process carries out itself (no relay runs), is withdrawn at that point (and on
    /// SIGINT/SIGTERM), never left for later (exactly-once: one it began stays open).
    #[arg(long, default_value_t = cli::relay_ops::DEFAULT_WAIT_SECS, value_parser = outboxd::args::seconds)]
    timeout: usize,
}

impl Wait {
    /// The end of `--timeout` from now: one for the whole command.
    pub fn deadline(&self) -> cli::relay_ops::Deadline {
        cli::relay_ops::Deadline::after(std::time::Duration::from_secs(self.timeout as u64))
    }
}

use cli::commands::{CustomerCmd, DlqCmd, Meta, OrderCmd};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The daemon and benchmarks log at info; one-shot commands keep stderr for
    // errors (their error line already carries the CQL driver's reason).
    let default_level =
        if matches!(cli.cmd, Cmd::Run | Cmd::Bench(_)) { "info" } else { "warn,scylla=off,scylla_cdc=off" };
    init_tracing(cli.log_format, default_level);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let log_format = cli.log_format;
    let result = rt.block_on(async_main(cli));
    let code = match result {
        Ok(code) => code,
        Err(f) => {
            let message = cli::redact::clean(&format!("{:#}", f.err).replace('\n', " "));
            final_error(log_format, &message, f.code);
            f.code
        }
    };
    // Blocking work still running (a Kafka transaction call its aborted term
    // left on the blocking pool, up to transaction_timeout_ms) must not hold
    // the exit past the shutdown deadline: dropping the runtime waits for it
    // without bound (and 5 s here took an exactly-once stop in a broker
    // outage to 35 s). What it leaves open, the next term's init_transactions
    // aborts; what is committed is on disk.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    ExitCode::from(code)
}

/// The last line of a failed command: `error: ...`, or with `--log-format
/// json` one JSON line like the log's own (a JSON log pipeline would choke
/// on a plain-text last line).
fn final_error(format: LogFormat, message: &str, code: u8) {
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "message": message,
                "exit_code": code,
                "target": "outboxd",
            })
        ),
    }
}

/// `--log-format json` among the arguments clap could not parse (their
/// error line follows it too).
fn json_asked(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<std::ffi::OsString> = args.collect();
    args.windows(2).any(|w| w[0] == "--log-format" && w[1] == "json") || args.iter().any(|a| a == "--log-format=json")
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},rdkafka=warn,librdkafka=warn")));
    // Colours only for a terminal that wants them: log files and
    // `docker logs` got raw escape codes.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(|| cli::redact::ScrubbingStderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    cli::redact::set_secrets(cfg.secret_values());
    if let Some(db) = &cli.db {
        // It would name a file nothing opens: the command would act on the cluster.
        if cfg.store.backend == outboxd::config::Backend::Cql {
            return Err(cli::BadInput(
                "--db applies to the sqlite store only, and store.backend = \"cql\": leave --db out".into(),
            )
            .into());
        }
        cfg.store.path = db.clone();
        cfg.validate()?;
    }
    Ok(cfg)
}

async fn async_main(cli: Cli) -> Result<u8, Failure> {
    let cfg = load_config(&cli)?;
    match cli.cmd {
        Cmd::Config => cli::config::print(&cfg),
        Cmd::Schema { dry_run } => cli::store::schema(&cfg, dry_run).await,
        Cmd::Events { after, limit } => cli::store::events(&cfg, after, limit).await,
        Cmd::Order(c) => cli::order::run(&cfg, c).await,
        Cmd::Customer(c) => cli::customer::run(&cfg, c).await,
        Cmd::Run => Ok(outboxd::daemon::run(cfg).await?),
        Cmd::Dlq(c) => cli::dlq::run(&cfg, c).await,
        Cmd::Relay(RelayCmd::Rewind { to_position, to_time, wait }) => {
            cli::relay::rewind(&cfg, to_position, to_time, wait.deadline()).await
        }
        Cmd::Leases => cli::relay::leases(&cfg).await,
        Cmd::Bench(mut b) => {
            if let outboxd::bench::BenchCmd::Append { aggregates, events_per_aggregate, .. } = &b.cmd {
                // Each flag is capped; their product is what is allocated.
                if aggregates.saturating_mul(*events_per_aggregate) > outboxd::args::MAX_COUNT {
                    return Err(cli::BadInput(format!(
                        "'--events-per-aggregate <N>' times '--aggregates <N>' must be {} or less (got {events_per_aggregate} x {aggregates})",
                        outboxd::args::MAX_COUNT
                    ))
                    .into());
                }
            }
            // Its `outboxd run` children read the same file.
            b.config_file = cli.config.clone();
            // SIGINT/SIGTERM drops the benchmark: its `outboxd run` child is
            // killed and its directories removed (dropped), never left behind.
            let mut signals = outboxd::daemon::Signals::install();
            tokio::select! {
                r = outboxd::bench::run(&cfg, b) => Ok(r.map(|_| 0)?),
                _ = signals.recv() => {
                    eprintln!("bench interrupted: its daemon child stopped and its files removed");
                    Ok(130)
                }
            }
        }
        Cmd::Projections(ProjectionsCmd::Rebuild { no_progress }) => cli::projections::rebuild(&cfg, no_progress).await,
        Cmd::Projections(ProjectionsCmd::Status) => cli::projections::status(&cfg).await,
    }
}

/// A command-line error as one line on stderr, exit 2 (help and version as clap prints them).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let format = if json_asked(std::env::args_os()) { LogFormat::Json } else { LogFormat::Text };
    if matches!(e.kind(), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand) {
        // clap prints the whole help for the first (exit 2; the second when
        // a flag was given): one line instead, naming the subcommands.
        final_error(
            format,
            &missing_subcommand(std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned())),
            2,
        );
        return ExitCode::from(2);
    }
    // `OUTBOX_CONFIG=` (set, but empty) is what clap reports as `--config`
    // given no value (even with `--config FILE`): name the variable.
    let config_var_empty = std::env::var_os("OUTBOX_CONFIG").is_some_and(|v| v.is_empty());
    if config_var_empty && e.kind() == ErrorKind::InvalidValue && e.to_string().contains("'--config ") {
        let format = if json_asked(std::env::args_os()) { LogFormat::Json } else { LogFormat::Text };
        final_error(
            format,
            "OUTBOX_CONFIG is set but empty: name a TOML configuration file, or unset it (try '--help')",
            2,
        );
        return ExitCode::from(2);
    }
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    // "...not provided:" then one line per argument: a list after the colon.
    let mut message = String::new();
    for p in &parts {
        if !message.is_empty() {
            message.push_str(if message.ends_with(':') { " " } else { "; " });
        }
        message.push_str(p);
    }
    let message = format!("{message} (try '--help')");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    final_error(format, message, 2);
    ExitCode::from(2)
}

/// "'outboxd order' requires a subcommand: ..." for the deepest command
/// `args` name (other words, flags and their values, are passed over).
fn missing_subcommand(args: impl Iterator<Item = String>) -> String {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut path = vec!["outboxd".to_string()];
    for a in args {
        if let Some(sub) = cmd.find_subcommand(&a).cloned() {
            path.push(a);
            cmd = sub;
        }
    }
    let names: Vec<&str> =
        cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").map(|s| s.get_name()).collect();
    let path = path.join(" ");
    format!("'{path}' requires a subcommand: {} (try '{path} --help')", names.join(", "))
}
