//! `outboxd run`: wires the store, the actor system and both HTTP servers,
//! and turns SIGINT/SIGTERM into one shutdown.
//!
//! Threads: the caller's multi-threaded tokio runtime runs the relay and the
//! commands; a dedicated `actix-system` thread runs the actors (an actix
//! `System`) and owns the HTTP servers (actix-web runs its workers on their
//! own threads). The two sides talk through actor addresses and channels.
//!
//! Guarantees:
//! - On a signal: intake stops (the command API answers 503), commands
//!   already accepted finish, the relay stops reading, settles in-flight
//!   deliveries and persists its checkpoint, the actors stop in reverse
//!   start order, the servers stop, and `run` returns `Ok(0)` within
//!   `shutdown_deadline_ms` (past it, with a warning: whatever was not
//!   confirmed is re-sent after restart, nothing committed is lost).
//! - When a supervised actor exhausts its restart budget the same shutdown
//!   runs and `run` returns `Ok(EXIT_RESTART_BUDGET)` (70), within the same
//!   deadline; a signal meanwhile, or HTTP servers that outlast the deadline
//!   after the actors stopped, do not change the code (`wait_for_exit`).
//! - A port that cannot be bound is an error naming the config key:
//!   [`DaemonError::Listen`] when the operator must change the address
//!   (taken, not an address of this host, not permitted: the CLI exits 2),
//!   found before the store, the actors or the leases are touched.
//! - An active relay that stops with events unpublished says how many.
//! - Read models (SQLite; CQL when the server has Scylla CDC): a supervised
//!   ProjectionActor keeps them up to date; GET /orders/{id} and
//!   GET /customers/{id}/orders read them.
//! - Feeds: the SQLite store's position feed (`relay::Relay`); for
//!   `store.backend = cql` the Scylla CDC log (`relay::cdc`). A CQL server
//!   without a CDC log on `event_store` (Apache Cassandra) is refused at
//!   startup: nothing would ever be published.

use std::future::Future;
use std::time::Duration;
use tokio::sync::oneshot;

use crate::actors::{ActorDeps, GetDlqActor, GetOrderActor, ShutdownSystem};
use crate::config::{Backend, Config};
use crate::http::{AdminState, ApiState};
use crate::lease::keeper;
use crate::metrics::Metrics;

/// Set to `1` to enable `POST /debug/fail/{actor}` on the admin server (tests only).
pub const FAULT_INJECTION_ENV: &str = "OUTBOXD_ENABLE_FAULT_INJECTION";
/// With fault injection on: the crash point the process aborts at (tests).
pub const ABORT_AT_ENV: &str = "OUTBOXD_ABORT_AT";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Relay(#[from] crate::relay::pipeline::RelayError),
    /// `http.listen` or `http.admin_listen` cannot be bound as configured
    /// (the address is taken, not this host's, or not permitted).
    #[error("{0}")]
    Listen(String),
    #[error("{0}")]
    Other(String),
}

impl DaemonError {
    /// A failed bind: [`DaemonError::Listen`] when the address itself is at
    /// fault, otherwise [`DaemonError::Other`].
    fn bind(e: &std::io::Error) -> DaemonError {
        use std::io::ErrorKind::{AddrInUse, AddrNotAvailable, PermissionDenied};
        match e.kind() {
            AddrInUse | AddrNotAvailable | PermissionDenied => DaemonError::Listen(e.to_string()),
            _ => DaemonError::Other(e.to_string()),
        }
    }
}

/// Where the servers listen (reported once the actor system is up).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub api: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

fn fault_injection_enabled() -> bool {
    std::env::var(FAULT_INJECTION_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Runs until a signal (or until a supervised actor gives up); returns the
/// process exit code.
pub async fn run(cfg: Config) -> Result<u8, DaemonError> {
    let mut signals = Signals::install();
    // A port taken (or not this host's) ends the start before the store,
    // the actors or the leases are touched; the servers bind again below.
    crate::http::check_listen(&cfg.http).map_err(|e| DaemonError::bind(&e))?;
    let (store, cql, mut read_models) = match cfg.store.backend {
        // The store and its read models: one SQLite instance (one writer).
        Backend::Sqlite => {
            let (store, models) = crate::projection::open_stores(&cfg).await?;
            (store, None, models)
        }
        Backend::Cql => {
            let cql = crate::store::cql::CqlStore::connect(&cfg.store.cql).await?;
            (cql.clone() as crate::store::DynStore, Some(cql), None)
        }
    };
    store.migrate().await?;
    if let Some(c) = &cql {
        // The CQL feed is Scylla CDC: without it nothing would ever be published.
        if !c.cdc_enabled() {
            return Err(DaemonError::Other(
                crate::relay::cdc::CdcError::Unavailable { keyspace: c.keyspace().to_string() }.to_string(),
            ));
        }
        // With CDC the read models are fed by their own CDC reader (projection::cql).
        read_models = Some(c.clone() as crate::projection::DynReadModels);
    }
    let metrics = Metrics::new();
    metrics.set_build_info(store.backend());
    crate::actors::prime_metrics(&metrics, &cfg);
    let deadline = Duration::from_millis(cfg.shutdown_deadline_ms);
    let fault_injection = fault_injection_enabled();
    if fault_injection {
        tracing::warn!(
            "{FAULT_INJECTION_ENV} is set: POST /debug/fail/{{actor}} is enabled on the admin server (tests only)"
        );
    }
    // One lease keeper per consumer name; they outlive actor restarts and
    // release their leases once the actors stopped (before the HTTP
    // servers finish their grace).
    let instance = instance_id(&cfg);
    let lease_stop = crate::shutdown::Trigger::new();
    let ttl = Duration::from_millis(cfg.relay.lease_ttl_ms);
    let lease_store: std::sync::Arc<dyn crate::store::lease::LeaseStore> = store.clone();
    let relay_pause = crate::lease::pause::PauseHook::default();
    if fault_injection {
        if let Ok(point) = std::env::var(ABORT_AT_ENV) {
            relay_pause.abort_at(&point);
        }
    }
    let leases = crate::actors::Leases {
        relay: Some(keeper::spawn(
            lease_store.clone(),
            &cfg.relay.consumer_name,
            &instance,
            ttl,
            metrics.clone(),
            relay_pause.clone(),
            lease_stop.subscribe(),
        )),
        projection: read_models.is_some().then(|| {
            keeper::spawn(
                lease_store,
                crate::projection::CONSUMER,
                &instance,
                ttl,
                metrics.clone(),
                Default::default(),
                lease_stop.subscribe(),
            )
        }),
    };
    tracing::info!(%instance, lease_ttl_ms = cfg.relay.lease_ttl_ms, "instance id in the lease table");
    // What the stop reports: whether the relay held its lease when the
    // leases were let go (their release itself reads as lost), its backlog.
    let active_at_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(mut rx) = leases.relay.as_ref().map(|h| h.state()) {
        let (flag, stopping) = (active_at_stop.clone(), lease_stop.subscribe());
        tokio::spawn(async move {
            while !stopping.is_shutdown() {
                flag.store(rx.borrow_and_update().active_epoch().is_some(), std::sync::atomic::Ordering::SeqCst);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let (report_store, consumer) = (store.clone(), cfg.relay.consumer_name.clone());
    // Released once, by whichever way out comes first.
    let mut lease_stop = Some(lease_stop);
    let mut deps = ActorDeps::new(cfg, store, metrics, tokio::runtime::Handle::current()).with_leases(leases);
    deps.relay_pause = relay_pause;
    if let Some(c) = cql {
        deps = deps.with_cql(c);
    }
    match read_models {
        Some(m) => deps = deps.with_read_models(m),
        None => tracing::info!("read models are not available on the {:?} backend: no projection actor; GET /orders/{{id}} reads the event stream", deps.cfg.store.backend),
    }
    let intake = deps.intake.clone();

    let (bound_tx, bound_rx) = oneshot::channel::<Result<Bound, DaemonError>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (exit_tx, exit_rx) = oneshot::channel::<u8>();
    let (stopped_tx, actors_stopped) = oneshot::channel::<u8>();
    let thread = std::thread::Builder::new()
        .name("actix-system".into())
        .spawn(move || {
            let code =
                actix::System::new().block_on(actor_system(deps, fault_injection, bound_tx, stop_rx, stopped_tx));
            let _ = exit_tx.send(code);
        })
        .map_err(|e| DaemonError::Other(format!("cannot start the actor system thread: {e}")))?;

    let mut signalled = false;
    tokio::select! {
        r = bound_rx => match r {
            Ok(Ok(b)) => tracing::info!(api = %b.api, admin = %b.admin, "outboxd running"),
            // A failed start (a port taken, ...) gives its leases back at
            // once: a process that crash-loops on it must not hold off the
            // instance that can publish for a TTL each time.
            Ok(Err(e)) => {
                // Bounded like every other wait here: the thread's runtime
                // waits for its blocking tasks (a read on a hung file
                // system) when it ends, and the start's error must not.
                let joined = tokio::task::spawn_blocking(move || thread.join());
                if tokio::time::timeout(Duration::from_secs(5), joined).await.is_err() {
                    tracing::warn!("the actor system thread did not end within 5 s of a failed start; exiting anyway");
                }
                release_leases(&mut lease_stop).await;
                return Err(e);
            }
            Err(_) => {
                release_leases(&mut lease_stop).await;
                return Err(DaemonError::Other("the actor system stopped during startup".into()));
            }
        },
        _ = signals.recv() => signalled = true,
    }
    // Either a signal arrives, or the actor system shuts itself down (a
    // supervised actor exhausted its restart budget).
    let channels = Channels { exit: exit_rx, actors_stopped, stop: stop_tx };
    let on_signal = || {
        intake.close();
        tracing::info!("shutdown signal received");
    };
    let grace = deadline + Duration::from_secs(2);
    let exited = wait_for_exit(channels, signals.recv(), signalled, grace, on_signal, &mut lease_stop).await;
    // Every way out releases the leases (a standby takes over at its next read, not after a TTL).
    let code = match exited {
        Exit::Code(code) => {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            Ok(code)
        }
        Exit::Lost => Err(DaemonError::Other("the actor system thread stopped unexpectedly".into())),
        Exit::TimedOut(known) => {
            let deadline_ms = deadline.as_millis() as u64;
            match known {
                // The actors stopped cleanly (their code stands); the HTTP
                // servers' grace (a waiting admin request) outlasted it.
                Some(code) => tracing::warn!(
                    deadline_ms,
                    exit_code = code,
                    "the actors stopped but the HTTP servers did not within the deadline; exiting"
                ),
                None => tracing::warn!(
                    deadline_ms,
                    "shutdown did not finish within the deadline; exiting (unconfirmed events are re-sent after restart)"
                ),
            }
            Ok(exited.exit_code().unwrap_or(0))
        }
    };
    // Side by side, not one after the other: each is bounded (3 s, 2 s), and
    // together they add at most 3 s to the stop.
    let report = async {
        if active_at_stop.load(std::sync::atomic::Ordering::SeqCst) {
            report_unpublished(&report_store, &consumer).await;
        }
    };
    tokio::join!(release_leases(&mut lease_stop), report);
    if let Ok(code) = &code {
        tracing::info!(exit_code = code, "outboxd stopped");
    }
    code
}

/// The active relay's stop with events still unpublished (the broker down,
/// a backlog not drained): a warning with the count, so the log says what
/// the next active relay has to publish. Bounded: a store that does not
/// answer delays no exit.
async fn report_unpublished(store: &crate::store::DynStore, consumer: &str) {
    match tokio::time::timeout(Duration::from_secs(2), store.backlog(consumer)).await {
        Ok(Ok(b)) if b.events.is_some_and(|n| n > 0) => tracing::warn!(
            unpublished = b.events,
            checkpoint = b.checkpoint,
            head = b.head,
            "stopping with events not yet published; the next active relay publishes them"
        ),
        _ => {}
    }
}

// The end of `run`: a signal or the actor system's own shutdown, then the
// actor thread's code. The code the actors stopped with (70: a child
// exhausted its restart budget, even with a signal meanwhile) stands also
// when the HTTP servers outlast the deadline; every wait after the shutdown
// started ends by `grace`; the leases go as soon as the actors stopped.

/// The channels between `run` and the actor system thread.
struct Channels {
    /// The thread's exit code, sent once the servers have stopped too.
    pub exit: oneshot::Receiver<u8>,
    /// The actors' exit code, sent once they have stopped (before the servers).
    pub actors_stopped: oneshot::Receiver<u8>,
    /// Asks the actor system to shut down (on a signal).
    pub stop: oneshot::Sender<()>,
}

/// How the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// The actor thread returned this code (join it).
    Code(u8),
    /// The actor thread ended without a code (it panicked).
    Lost,
    /// The deadline passed first; the actors' code if they had stopped.
    TimedOut(Option<u8>),
}

impl Exit {
    /// The process exit code (`None`: the actor thread was lost). Past the
    /// deadline it is the code the actors stopped with, else 0 (a signal).
    pub fn exit_code(self) -> Option<u8> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Lost => None,
            Exit::TimedOut(known) => Some(known.unwrap_or(0)),
        }
    }
}

/// Waits for `signal` (unless `signalled` already) or the actor system's
/// own shutdown, then for its exit code; `on_signal` runs when the signal is
/// taken (before the stop request). Every wait after the shutdown started
/// ends by `grace` after it started.
async fn wait_for_exit(
    ch: Channels,
    signal: impl Future<Output = ()>,
    mut signalled: bool,
    grace: Duration,
    on_signal: impl FnOnce(),
    lease_stop: &mut Option<crate::shutdown::Trigger>,
) -> Exit {
    let Channels { mut exit, mut actors_stopped, stop } = ch;
    if !signalled {
        tokio::select! {
            _ = signal => signalled = true,
            r = &mut exit => return r.map_or(Exit::Lost, Exit::Code),
            r = &mut actors_stopped => {
                // The system stopped itself (a child used up its restart
                // budget): its actors are down, the leases go now, not
                // after the HTTP servers' grace.
                release_leases(lease_stop).await;
                let until = tokio::time::Instant::now() + grace;
                return finish(until, &mut exit, r.ok()).await;
            }
        }
    }
    debug_assert!(signalled);
    on_signal();
    let _ = stop.send(());
    let until = tokio::time::Instant::now() + grace;
    // The actors (the relay among them) have stopped: the leases go now,
    // not after the HTTP servers' grace (an admin request waiting for the
    // relay may hold them for its whole wait).
    let known = match tokio::time::timeout_at(until, &mut actors_stopped).await {
        Ok(r) => {
            release_leases(lease_stop).await;
            r.ok()
        }
        Err(_) => None,
    };
    finish(until, &mut exit, known).await
}

/// The actor thread's code by `until`, else what the actors stopped with.
async fn finish(until: tokio::time::Instant, exit: &mut oneshot::Receiver<u8>, known: Option<u8>) -> Exit {
    match tokio::time::timeout_at(until, exit).await {
        Ok(r) => r.map_or(Exit::Lost, Exit::Code),
        Err(_) => Exit::TimedOut(known),
    }
}

/// Stops the lease keepers (once: later calls find `stop` taken); each
/// releases its lease if it holds it, so a standby takes over at its next read
/// instead of after a TTL.
async fn release_leases(stop: &mut Option<crate::shutdown::Trigger>) {
    let Some(mut stop) = stop.take() else { return };
    stop.fire();
    if tokio::time::timeout(Duration::from_secs(3), stop.wait_drained()).await.is_err() {
        tracing::warn!("lease keepers did not stop in time; standbys take over after the lease TTL");
    }
}

/// This instance's id in the lease table: `relay.instance_id`, or host, pid
/// and start time (unique per process, readable in `outboxd leases`).
pub fn instance_id(cfg: &Config) -> String {
    if let Some(id) = &cfg.relay.instance_id {
        return id.clone();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}:{}", std::process::id(), chrono::Utc::now().timestamp_millis())
}

/// The actix side: start the actors and the servers, wait for a stop
/// request (or the coordinator's own shutdown), stop everything, return the
/// exit code.
async fn actor_system(
    deps: ActorDeps,
    fault_injection: bool,
    bound: oneshot::Sender<Result<Bound, DaemonError>>,
    stop: oneshot::Receiver<()>,
    actors_stopped: oneshot::Sender<u8>,
) -> u8 {
    let (exit_tx, mut exit_rx) = oneshot::channel::<u8>();
    let coordinator = crate::actors::start_system(deps.clone(), exit_tx);
    let (order, dlq) = match (coordinator.send(GetOrderActor).await, coordinator.send(GetDlqActor).await) {
        (Ok(Some(o)), Ok(Some(d))) => (o, d),
        _ => {
            let _ = bound.send(Err(DaemonError::Other("the actor system did not start".into())));
            return 1;
        }
    };
    let api = ApiState {
        order,
        intake: deps.intake.clone(),
        token: deps.cfg.http.api_token.as_deref().map(Into::into),
        read_models: deps.read_models.clone(),
    };
    let admin = AdminState {
        metrics: deps.metrics.clone(),
        health: deps.health.subscribe(),
        coordinator: coordinator.clone(),
        dlq,
        store: deps.store.clone(),
        consumer: deps.cfg.relay.consumer_name.clone(),
        instance: deps.leases.relay.as_ref().map(|l| l.instance.clone()).unwrap_or_default(),
        relay_pause: deps.relay_pause.clone(),
        health_stale_after: crate::actors::HealthReport::stale_after(deps.cfg.health.interval_ms),
        fault_injection,
        token: deps.cfg.http.api_token.as_deref().map(Into::into),
    };
    let servers =
        match crate::http::start(&deps.cfg.http, deps.cfg.shutdown_deadline_ms, api, admin, deps.metrics.clone()) {
            Ok(s) => s,
            Err(e) => {
                // Taken between the check at the start and now.
                let e = DaemonError::bind(&e);
                let code = if matches!(e, DaemonError::Listen(_)) { 2 } else { 1 };
                let reason = format!("startup failed: {e}");
                let _ = bound.send(Err(e));
                let _ = coordinator.send(ShutdownSystem { reason, exit_code: code }).await;
                return code;
            }
        };
    let _ = bound.send(Ok(Bound { api: servers.api_addr, admin: servers.admin_addr }));

    let code = tokio::select! {
        // The system's own end first: its code (70: a child gave up) stands
        // over a signal that arrives at the same time.
        biased;
        code = &mut exit_rx => code.unwrap_or(1),
        _ = stop => {
            deps.intake.close();
            coordinator.send(ShutdownSystem { reason: "signal".into(), exit_code: 0 }).await.unwrap_or(0)
        }
    };
    // The code goes with it: past the deadline (the servers' grace) the
    // process still exits with it.
    let _ = actors_stopped.send(code);
    servers.stop().await;
    code
}

#[path = "daemon/signals.rs"]
mod signals;
pub use signals::Signals;

#[cfg(test)]
#[path = "daemon/exit_tests.rs"]
mod tests;
