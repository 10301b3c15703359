//! The application service: runs one command against one aggregate.
//!
//! load (snapshot + later events, upcast) -> `handle` -> append at the loaded
//! version; a creating command (`Aggregate::creates`) skips the load and
//! appends at version 0, the compare-and-set being its existence check.
//! Guarantee: a command's events are appended only on top of the
//! exact state they were decided from. When another writer wins the race
//! (`Conflict`) and the caller did not pin a version, the command is re-run
//! on the fresh state, at most `max_conflict_retries` times; a pinned version
//! (`If-Match`) is never retried.

use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use crate::domain::{Aggregate, DecodeError, DomainError};
use crate::envelope::{now_millis, EventEnvelope, Metadata};
use crate::store::{DynEvents, Snapshot, StoreError};

/// Errors of the application layer: business refusal or infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("version conflict: expected version {expected}, actual version {actual}")]
    Conflict { expected: i64, actual: i64 },
    #[error(transparent)]
    Store(StoreError),
    #[error("stored event cannot be decoded: {0}")]
    Decode(#[from] DecodeError),
    #[error("event cannot be encoded: {0}")]
    Encode(String),
    /// Refused before it ran: the process is shutting down (nothing written).
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The aggregate's stream has an event missing (a row deleted by hand):
    /// nothing is decided on it.
    #[error("{0}")]
    DamagedStream(String),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { expected, actual, .. } => AppError::Conflict { expected, actual },
            other => AppError::Store(other),
        }
    }
}

/// An aggregate's state at a version.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub version: i64,
}

/// What a successful command did.
#[derive(Debug, Clone)]
pub struct Outcome<A> {
    pub state: A,
    pub version: i64,
    pub events: Vec<EventEnvelope>,
    /// Feed position of the last event appended (None when nothing changed).
    pub last_position: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub max_conflict_retries: u32,
    /// Save a snapshot every this many events (0 = never).
    pub snapshot_every: i64,
    /// Currency assumed for v1 events written without one.
    pub default_currency: String,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions { max_conflict_retries: 3, snapshot_every: 100, default_currency: "EUR".into() }
    }
}

/// The `[service]` keys of the configuration, as the service takes them.
impl From<&crate::config::ServiceConfig> for ServiceOptions {
    fn from(s: &crate::config::ServiceConfig) -> Self {
        ServiceOptions {
            max_conflict_retries: s.max_conflict_retries,
            snapshot_every: s.snapshot_every,
            default_currency: s.default_currency.clone(),
        }
    }
}

/// Observes store appends (for metrics); the HTTP/actor layer plugs one in.
/// Every attempt is observed, whatever its result: the slowest appends (a
/// compare-and-set that timed out, a conflict) are the ones that matter.
pub trait AppendObserver: Send + Sync {
    fn append_took(&self, seconds: f64, events: &[EventEnvelope]);
}

/// The Prometheus catalogue observes appends as `store_append_duration_seconds`.
impl AppendObserver for crate::metrics::Metrics {
    fn append_took(&self, seconds: f64, _events: &[EventEnvelope]) {
        self.store_append_duration.observe(seconds);
    }
}

#[derive(Clone)]
pub struct CommandService {
    store: DynEvents,
    opts: ServiceOptions,
    observer: Option<Arc<dyn AppendObserver>>,
}

impl CommandService {
    pub fn new(store: DynEvents, opts: ServiceOptions) -> Self {
        CommandService { store, opts, observer: None }
    }

    pub fn with_observer(mut self, o: Arc<dyn AppendObserver>) -> Self {
        self.observer = Some(o);
        self
    }

    pub fn store(&self) -> &DynEvents {
        &self.store
    }

    /// Rebuilds an aggregate from its latest usable snapshot plus later events.
    pub async fn load<A: Aggregate>(&self, id: Uuid) -> Result<Loaded<A>, AppError> {
        let mut state = A::default();
        let mut version = 0;
        let events = if self.opts.snapshot_every > 0 {
            let (snapshot, after) = match self.store.load_from_snapshot(id).await {
                Ok(loaded) => loaded,
                // A snapshot row that cannot be read is ignored like one of
                // an older shape: every event is loaded (an event that
                // cannot be decoded fails that load as before).
                Err(StoreError::Codec(e)) => {
                    tracing::warn!(aggregate_id = %id, error = %e, "cannot read the snapshot or the events after it; loading every event");
                    (None, self.store.load_after(id, 0).await?)
                }
                Err(e) => return Err(e.into()),
            };
            match snapshot {
                // No snapshot: `after` holds every event.
                None => after,
                // A snapshot of an older state shape is ignored, never fatal:
                // then every event is loaded.
                Some(s) => match (s.state_schema == A::STATE_SCHEMA && s.aggregate_type == A::TYPE)
                    .then(|| serde_json::from_value::<A>(s.state).ok())
                    .flatten()
                {
                    Some(st) => {
                        (state, version) = (st, s.version);
                        after
                    }
                    None => self.store.load_after(id, 0).await?,
                },
            }
        } else {
            self.store.load_after(id, 0).await?
        };
        if let Some(first) = events.first() {
            if first.aggregate_type != A::TYPE {
                let article = |w: &str| if w.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                return Err(AppError::Store(StoreError::NotFound(format!(
                    "{id} is {} {}, not {} {}",
                    article(&first.aggregate_type),
                    first.aggregate_type,
                    article(A::TYPE),
                    A::TYPE
                ))));
            }
        }
        for env in events {
            let seq = env.sequence;
            // Sequences are gap-free (each append is a compare-and-set at the
            // next one); a missing event (a row deleted by hand) would
            // decide, and append on, a state that never was.
            if seq != version + 1 {
                return Err(AppError::DamagedStream(format!(
                    "the event stream of {id} is damaged: event {} is missing (the next stored one is {seq}); nothing is decided on it",
                    version + 1
                )));
            }
            let env = env.upcast(&self.opts.default_currency)?;
            state.apply(&env.decode::<A::Event>()?);
            version = seq;
        }
        Ok(Loaded { state, version })
    }

    /// Runs `cmd` against aggregate `id`. `expected_version` pins the version
    /// the caller saw (conflict instead of retry when it moved).
    pub async fn execute<A: Aggregate>(
        &self,
        id: Uuid,
        cmd: &A::Command,
        meta: Metadata,
        expected_version: Option<i64>,
    ) -> Result<Outcome<A>, AppError> {
        let mut attempt = 0;
        // A creating command without a pinned version is decided on the
        // empty state without a read: the append at version 0 is the check.
        // If the id is taken after all, that append conflicts and the
        // command runs again on the loaded state (which refuses it), an
        // attempt not counted against `max_conflict_retries`.
        let mut assumed_new = expected_version.is_none() && A::creates(cmd);
        loop {
            let loaded =
                if assumed_new { Loaded { state: A::default(), version: 0 } } else { self.load::<A>(id).await? };
            if let Some(exp) = expected_version {
                if exp != loaded.version {
                    return Err(AppError::Conflict { expected: exp, actual: loaded.version });
                }
            }
            let decided = loaded.state.handle(cmd)?;
            if decided.is_empty() {
                return Ok(Outcome {
                    state: loaded.state,
                    version: loaded.version,
                    events: vec![],
                    last_position: None,
                });
            }
            let at = now_millis();
            let mut envs = Vec::with_capacity(decided.len());
            let mut state = loaded.state.clone();
            for (i, e) in decided.iter().enumerate() {
                envs.push(
                    EventEnvelope::new::<A>(id, loaded.version + 1 + i as i64, e, &meta, at)
                        .map_err(|e| AppError::Encode(e.to_string()))?,
                );
                state.apply(e);
            }
            let started = Instant::now();
            let result = self.store.append(id, loaded.version, envs.clone()).await;
            if let Some(o) = &self.observer {
                o.append_took(started.elapsed().as_secs_f64(), &envs);
            }
            match result {
                Ok(appended) => {
                    self.maybe_snapshot::<A>(id, loaded.version, appended.version, &state).await;
                    return Ok(Outcome {
                        state,
                        version: appended.version,
                        events: envs,
                        last_position: appended.last_position,
                    });
                }
                Err(StoreError::Conflict { .. }) if assumed_new => assumed_new = false,
                Err(StoreError::Conflict { expected, actual, .. }) => {
                    if expected_version.is_some() || attempt >= self.opts.max_conflict_retries {
                        return Err(AppError::Conflict { expected, actual });
                    }
                    attempt += 1;
                    tracing::debug!(%id, attempt, "append conflict, re-running command on fresh state");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn maybe_snapshot<A: Aggregate>(&self, id: Uuid, before: i64, after: i64, state: &A) {
        let n = self.opts.snapshot_every;
        if n <= 0 || before / n == after / n {
            return;
        }
        let Ok(value) = serde_json::to_value(state) else { return };
        let snap = Snapshot {
            aggregate_id: id,
            aggregate_type: A::TYPE.into(),
            version: after,
            state_schema: A::STATE_SCHEMA,
            state: value,
            created_at: now_millis(),
        };
        if let Err(e) = self.store.save_snapshot(snap).await {
            // A missing snapshot only costs load time; the events are committed.
            tracing::warn!(%id, error = %e, "snapshot not saved");
        }
    }
}
