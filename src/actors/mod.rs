//! Thin Actix shells around the application service and the relay.
//!
//! Supervision tree (seed 002):
//!
//! ```text
//! CoordinatorActor (root: starts, answers lookups, shuts down)
//! ├── HealthCheckActor    resume  (errors are logged, it keeps checking)
//! ├── DlqActor            resume  (owns dead-letter writes, listing, replay)
//! ├── OrderActor          restart (actix Supervisor; runs app::CommandService)
//! ├── CdcStreamProcessor  restart (SupervisedTask<RelayBody>: relay::Relay::run on SQLite,
//! │                       the Scylla CDC reader of relay::cdc on CQL)
//! └── ProjectionActor     restart (SupervisedTask<ProjectionBody>: projection::Projector::run
//!                         on SQLite, projection::cql's CDC projection on ScyllaDB;
//!                         only when the backend has read models)
//! ```
//!
//! Files: the shared protocol in [`messages`] (names, lifecycles, the
//! messages every child answers, [`ActorError`]); a message only one actor
//! handles lives next to that actor. [`supervision`] holds the restart
//! policy and the one generic supervised-task shell both task actors use.
//!
//! Guarantees:
//! - No business rule lives here: commands go through [`crate::app::CommandService`],
//!   publishing through [`crate::relay::Relay`]; actors only route, supervise
//!   and report.
//! - A restarting actor gets `supervision.restart_backoff_ms * 2^(n-1)` of
//!   backoff and at most `supervision.max_restarts` restarts within
//!   `supervision.restart_window_ms`; each restart increments
//!   `actor_restarts_total{actor}`. When the budget is exhausted the component
//!   is Unhealthy and the coordinator shuts the system down with
//!   [`EXIT_RESTART_BUDGET`].
//! - Shutdown: intake stops first, in-flight commands finish, then children
//!   stop in reverse start order (the projector stops first, CDC flushes in-flight deliveries and
//!   persists its checkpoint before the DLQ and health actors stop).

pub mod cdc_processor;
pub mod coordinator;
pub mod dlq_actor;
pub mod health;
pub mod messages;
pub mod order_actor;
pub mod projection_actor;
pub mod supervision;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::projection::{DynReadModels, ProjectionStatus};
use crate::relay::RelayStatus;
use crate::store::DynStore;

pub use cdc_processor::{CdcStreamProcessor, RelayBody};
pub use coordinator::{
    CoordinatorActor, GetCdcProcessor, GetDlqActor, GetHealthCheckActor, GetOrderActor, GetProjectionActor,
    InjectFailureInto, ShutdownSystem,
};
pub use dlq_actor::{CountDeadLetters, DlqActor, DlqSink, DlqView, ListDeadLetters, SubmitRequest, WriteDeadLetter};
pub use health::{
    CheckNow, ComponentHealth, GetSystemHealth, HealthCheckActor, HealthReport, HealthStatus, MarkShuttingDown,
    RegisterComponents,
};
pub use messages::{
    ActorError, ActorName, ChildGaveUp, ComponentEvent, FailureMode, InjectFailure, Lifecycle, Ping, StopActor,
};
pub use order_actor::{DrainCommands, ExecuteCommand, LoadAggregate, OrderActor};
pub use projection_actor::{ProjectionActor, ProjectionBody};
pub use supervision::{GetTaskStatus, RestartBudget, SupervisedTask, TaskBody, TaskInfo, TaskStatus};

/// Exit code of `outboxd run` when a supervised actor used up its restart
/// budget (EX_SOFTWARE).
pub const EXIT_RESTART_BUDGET: u8 = 70;

/// Whether the command API accepts requests (false once shutdown began).
#[derive(Debug)]
pub struct Intake(AtomicBool);

impl Intake {
    pub fn new() -> Intake {
        Intake(AtomicBool::new(true))
    }
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn close(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Default for Intake {
    fn default() -> Self {
        Intake::new()
    }
}

/// What every actor may use: configuration, the store, metrics, and the
/// multi-threaded tokio runtime that runs command and relay work (the actix
/// system thread only routes messages).
#[derive(Clone)]
pub struct ActorDeps {
    pub cfg: Arc<Config>,
    pub store: DynStore,
    pub metrics: Metrics,
    pub runtime: tokio::runtime::Handle,
    pub intake: Arc<Intake>,
    /// Relay status; the sender outlives relay restarts.
    pub relay_status: watch::Sender<RelayStatus>,
    /// The latest health report, published by the HealthCheckActor.
    pub health: watch::Sender<HealthReport>,
    /// The CQL store when `store.backend = cql`: its feed is Scylla CDC
    /// (`relay::cdc`), read with the store's session.
    pub cql: Option<Arc<crate::store::cql::CqlStore>>,
    /// The read models when the backend has them (SQLite always; CQL when
    /// the server has Scylla CDC, fed by the CDC projection); None: no
    /// ProjectionActor, and GET /orders/{id} reads the event stream.
    pub read_models: Option<DynReadModels>,
    /// Projector status; the sender outlives projector restarts.
    pub projection_status: watch::Sender<ProjectionStatus>,
    /// The leases this instance keeps (None: single instance, unfenced).
    pub leases: Leases,
    /// The relay's pause hook (fault injection: a "zombie" leader in tests).
    pub relay_pause: crate::lease::pause::PauseHook,
}

/// The lease keepers of this instance, one per consumer name; they outlive
/// actor restarts (a restarted relay keeps its lease) and release on shutdown.
#[derive(Clone, Default)]
pub struct Leases {
    pub relay: Option<crate::lease::keeper::LeaseHandle>,
    pub projection: Option<crate::lease::keeper::LeaseHandle>,
}

impl ActorDeps {
    pub fn new(cfg: Config, store: DynStore, metrics: Metrics, runtime: tokio::runtime::Handle) -> ActorDeps {
        let (relay_status, _) = watch::channel(RelayStatus::default());
        let (health, _) = watch::channel(HealthReport::starting());
        let (projection_status, _) = watch::channel(ProjectionStatus::default());
        ActorDeps {
            cfg: Arc::new(cfg),
            store,
            metrics,
            runtime,
            intake: Arc::new(Intake::new()),
            relay_status,
            health,
            cql: None,
            read_models: None,
            projection_status,
            leases: Leases::default(),
            relay_pause: Default::default(),
        }
    }

    /// Runs the relay and the projection under these leases.
    pub fn with_leases(mut self, leases: Leases) -> ActorDeps {
        self.leases = leases;
        self
    }

    /// Maintains these read models with a supervised ProjectionActor.
    pub fn with_read_models(mut self, models: DynReadModels) -> ActorDeps {
        self.read_models = Some(models);
        self
    }

    /// Uses the Scylla CDC feed of this CQL store instead of the position feed.
    pub fn with_cql(mut self, cql: Arc<crate::store::cql::CqlStore>) -> ActorDeps {
        self.cql = Some(cql);
        self
    }

    /// Counts one message received by `actor` (`messages_received_total`).
    pub fn received(&self, actor: ActorName) {
        self.metrics.messages_received.with_label_values(&[actor.as_str()]).inc();
    }
}

/// Starts the coordinator (which starts its children) on the current actix
/// system. `exit` receives the process exit code once the system has shut
/// down (0 after `ShutdownSystem`, [`EXIT_RESTART_BUDGET`] when a child gave up).
pub fn start_system(deps: ActorDeps, exit: oneshot::Sender<u8>) -> actix::Addr<CoordinatorActor> {
    use actix::Actor;
    CoordinatorActor::new(deps, exit).start()
}

/// Creates every labelled series whose labels are known up front at 0, so
/// /metrics lists the whole catalogue from the first scrape (Prometheus
/// practice: initialise known label values).
pub fn prime_metrics(m: &Metrics, cfg: &Config) {
    for et in crate::domain::EVENT_TYPES {
        m.cdc_events_processed.with_label_values(&[et]);
        m.cdc_processing_duration.with_label_values(&[et]);
        m.dlq_messages_by_event_type.with_label_values(&[et]);
        m.cdc_events_failed.with_label_values(&[et, "message_timed_out"]);
    }
    let op = "publish";
    m.retry_attempts.with_label_values(&[op]);
    m.retry_success.with_label_values(&[op]);
    m.retry_failure.with_label_values(&[op]);
    for (from, to) in [("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")] {
        m.circuit_breaker_transitions.with_label_values(&[from, to]);
    }
    for a in ActorName::ALL {
        m.messages_received.with_label_values(&[a.as_str()]);
    }
    for a in [ActorName::Order, ActorName::Cdc, ActorName::Projection] {
        m.actor_restarts.with_label_values(&[a.as_str()]);
    }
    // Unknown until the first check: 0 would claim healthy before anything was looked at.
    for c in health::COMPONENTS.into_iter().chain(["system"]) {
        m.actor_health_status.with_label_values(&[c]).set(health::HealthStatus::Unknown.gauge());
    }
    for t in crate::relay::topics::topic_names(cfg.kafka.per_event_type(), &cfg.kafka.topic_prefix) {
        m.messages_sent.with_label_values(&[&t]);
    }
    for k in crate::relay::requests::KIND_LABELS {
        m.relay_requests.with_label_values(&[k]);
    }
    for consumer in [cfg.relay.consumer_name.as_str(), crate::projection::CONSUMER] {
        m.relay_lease_takeovers.with_label_values(&[consumer]);
    }
    if cfg.relay.delivery == crate::config::DeliveryMode::ExactlyOnce {
        for outcome in ["committed", "aborted"] {
            m.relay_transactions.with_label_values(&[outcome]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walkthrough finding: operator requests, lease takeovers and (in
    /// exactly-once mode) transactions had no series until their first
    /// count, so a dashboard's `rate()` showed "no data", not 0.
    #[test]
    fn request_takeover_and_transaction_series_exist_at_zero() {
        let mut cfg = Config::default();
        cfg.relay.delivery = crate::config::DeliveryMode::ExactlyOnce;
        let m = Metrics::new();
        prime_metrics(&m, &cfg);
        let text = m.encode();
        for k in crate::relay::requests::KIND_LABELS {
            assert!(text.contains(&format!("relay_requests_total{{kind=\"{k}\"}} 0")), "{k}");
        }
        for c in [cfg.relay.consumer_name.as_str(), crate::projection::CONSUMER] {
            assert!(text.contains(&format!("relay_lease_takeovers_total{{consumer=\"{c}\"}} 0")), "{c}");
        }
        for o in ["committed", "aborted"] {
            assert!(text.contains(&format!("relay_transactions_total{{outcome=\"{o}\"}} 0")), "{o}");
        }
        let m = Metrics::new();
        prime_metrics(&m, &Config::default());
        assert!(!m.encode().contains("relay_transactions_total{"), "at-least-once has no transactions");
    }

    /// Before the first check every component reads unknown (3), not
    /// healthy (0): the series existed at 0 from the first scrape.
    #[test]
    fn health_gauges_start_unknown() {
        let m = Metrics::new();
        prime_metrics(&m, &Config::default());
        for c in health::COMPONENTS.into_iter().chain(["system"]) {
            assert_eq!(m.actor_health_status.with_label_values(&[c]).get(), 3, "{c}");
        }
    }
}
