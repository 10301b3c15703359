//! The Prometheus metric catalogue (names from the seed's code walkthrough,
//! plus relay lag, checkpoint, end-to-end latency, append and HTTP metrics).
//!
//! Guarantee: one `Metrics` per process, registered in its own `Registry`;
//! components only update it and the admin server only encodes it, so
//! /metrics never touches a store or the broker. The registry also carries
//! the standard `process_*` metrics (CPU, memory, open fds, threads, start
//! time; Linux) and, once the daemon knows its store,
//! `outboxd_build_info{version, backend} 1`.

use std::cell::RefCell;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Seed buckets for processing durations (1 ms .. 5 s).
pub const SEED_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
/// Finer buckets for end-to-end and append latency.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Registered by [`Metrics::set_build_info`], once the store is known.
const BUILD_INFO: &str = "outboxd_build_info";

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The names registered by `new` (see [`Metrics::catalogue`]).
    catalogue: std::sync::Arc<[String]>,
    pub cdc_events_processed: IntCounterVec,
    pub cdc_events_failed: IntCounterVec,
    pub cdc_processing_duration: HistogramVec,
    pub retry_attempts: IntCounterVec,
    pub retry_success: IntCounterVec,
    pub retry_failure: IntCounterVec,
    pub dlq_messages: IntCounter,
    pub dlq_messages_by_event_type: IntCounterVec,
    pub dlq_depth: IntGauge,
    pub circuit_breaker_state: IntGauge,
    pub circuit_breaker_transitions: IntCounterVec,
    pub actor_health_status: IntGaugeVec,
    pub actor_restarts: IntCounterVec,
    pub messages_sent: IntCounterVec,
    pub messages_received: IntCounterVec,
    /// Committed events not yet confirmed by the broker (parked ones included), by role.
    pub relay_lag_events: IntGaugeVec,
    /// Age of the oldest unpublished event (0 when caught up), by role.
    pub relay_lag_seconds: GaugeVec,
    pub relay_checkpoint_position: IntGauge,
    pub relay_feed_errors: IntCounter,
    pub dlq_parked_aggregates: IntGauge,
    pub relay_leader: IntGaugeVec,
    pub relay_lease_epoch: IntGaugeVec,
    pub relay_lease_takeovers: IntCounterVec,
    pub relay_requests: IntCounterVec,
    pub relay_rewinds: IntCounter,
    pub relay_discards: IntCounter,
    pub relay_transactions: IntCounterVec,
    /// Scylla CDC log TTL in seconds (0: the backend has no CDC log).
    pub cdc_log_ttl_seconds: IntGauge,
    pub event_end_to_end_latency: Histogram,
    pub store_append_duration: Histogram,
    pub http_requests: IntCounterVec,
    pub projection_lag_events: IntGauge,
    pub projection_lag_seconds: Gauge,
    pub projection_checkpoint_position: IntGauge,
    pub cdc_unreconciled_appends: IntGauge,
    /// CDC readers restarted by the stall watchdog, by consumer.
    pub cdc_reader_restarts: IntCounterVec,
}

/// Registers `c` in `r` and notes its names in `names` (the catalogue).
fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, names: &RefCell<Vec<String>>, c: T) -> T {
    names.borrow_mut().extend(c.desc().iter().map(|d| d.fq_name.clone()));
    r.register(Box::new(c.clone())).expect("metric names are unique and valid");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let names = RefCell::new(Vec::new());
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics register once");
        let cv = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, &names, IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"))
        };
        let g = |name: &str, help: &str| reg(&r, &names, IntGauge::new(name, help).expect("valid gauge"));
        let gv = |name: &str, help: &str, labels: &[&str]| {
            reg(&r, &names, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"))
        };
        let h = |name: &str, help: &str, b: &[f64]| {
            reg(
                &r,
                &names,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(b.to_vec())).expect("valid histogram"),
            )
        };
        Metrics {
            cdc_events_processed: cv(
                "cdc_events_processed_total",
                "Events the relay published and the broker confirmed",
                &["event_type"],
            ),
            cdc_events_failed: cv(
                "cdc_events_failed_total",
                "Failed publish attempts of events",
                &["event_type", "error_kind"],
            ),
            cdc_processing_duration: reg(&r, &names,
                HistogramVec::new(
                    HistogramOpts::new("cdc_processing_duration_seconds", "Time from publish to broker confirmation")
                        .buckets(SEED_BUCKETS.to_vec()),
                    &["event_type"],
                )
                .expect("valid histogram"),
            ),
            retry_attempts: cv("retry_attempts_total", "Retries of failed operations", &["operation"]),
            retry_success: cv("retry_success_total", "Operations that succeeded after retrying", &["operation"]),
            retry_failure: cv("retry_failure_total", "Operations that failed after all retries", &["operation"]),
            dlq_messages: g_counter(&r, &names, "dlq_messages_total", "Events moved to the dead-letter queue"),
            dlq_messages_by_event_type: cv(
                "dlq_messages_by_event_type_total",
                "Events moved to the dead-letter queue by event type",
                &["event_type"],
            ),
            dlq_depth: g("dlq_depth", "Rows currently in dead_letter_queue"),
            circuit_breaker_state: g(
                "circuit_breaker_state",
                "Producer circuit breaker: 0 closed, 1 open, 2 half-open",
            ),
            circuit_breaker_transitions: cv(
                "circuit_breaker_transitions_total",
                "Circuit breaker state changes",
                &["from", "to"],
            ),
            actor_health_status: reg(&r, &names,
                IntGaugeVec::new(
                    Opts::new("actor_health_status", "Component health: 0 healthy, 1 degraded, 2 unhealthy, 3 unknown"),
                    &["component"],
                )
                .expect("valid gauge"),
            ),
            actor_restarts: cv("actor_restarts_total", "Supervised actor restarts", &["actor"]),
            messages_sent: cv("messages_sent_total", "Messages handed to the Kafka producer", &["topic"]),
            messages_received: cv("messages_received_total", "Messages received by actors", &["actor"]),
            relay_lag_events: gv("relay_lag_events", "Events committed to the store but not yet confirmed by the broker (held events of parked aggregates included)", &["role"]),
            relay_lag_seconds: reg(&r, &names,
                GaugeVec::new(Opts::new("relay_lag_seconds", "Age of the oldest event not yet confirmed by the broker (0 when caught up)"), &["role"]).expect("valid gauge"),
            ),
            relay_checkpoint_position: g("relay_checkpoint_position", "Feed position of the relay's persisted checkpoint"),
            relay_feed_errors: g_counter(&r, &names, "relay_feed_errors_total", "Failed reads of the store feed by the relay"),
            dlq_parked_aggregates: g("dlq_parked_aggregates", "Aggregates whose delivery is held behind an event that can never be published"),
            relay_leader: gv("relay_leader", "1 when this instance holds the lease of the consumer (publishes), 0 otherwise", &["consumer"]),
            relay_lease_epoch: gv("relay_lease_epoch", "Epoch of the consumer's lease as this instance last saw it", &["consumer"]),
            relay_lease_takeovers: cv("relay_lease_takeovers_total", "Leases this instance took over from another holder", &["consumer"]),
            relay_requests: cv("relay_requests_total", "Operator requests (replay, discard, rewind) this relay started (one taken over running is not counted again)", &["kind"]),
            relay_rewinds: g_counter(&r, &names, "relay_rewinds_total", "Checkpoint rewinds carried out on an operator's request"),
            relay_discards: g_counter(&r, &names, "relay_discards_total", "Events discarded on an operator's decision (audit rows written)"),
            relay_transactions: cv("relay_transactions_total", "Kafka transactions of the exactly-once relay by outcome", &["outcome"]),
            cdc_log_ttl_seconds: g("cdc_log_ttl_seconds", "TTL of the Scylla CDC log (0: the store has no CDC log)"),
            event_end_to_end_latency: h("event_end_to_end_latency_seconds", "Time from event timestamp (append) to broker acknowledgement", LATENCY_BUCKETS),
            store_append_duration: h("store_append_duration_seconds", "Duration of event store appends (every attempt, whatever its result)", LATENCY_BUCKETS),
            http_requests: cv("http_requests_total", "HTTP requests by route and status", &["route", "status"]),
            projection_lag_events: g("projection_lag_events", "Events not yet applied to the read models"),
            projection_lag_seconds: reg(&r, &names, Gauge::new("projection_lag_seconds", "Age of the oldest event not yet applied to the read models (0 when caught up)").expect("valid gauge")),
            projection_checkpoint_position: g("projection_checkpoint_position", "Feed position of the projection checkpoint"),
            cdc_unreconciled_appends: g(
                "cdc_unreconciled_appends",
                "Appends whose outcome was unknown, resolved as applied, and not yet confirmed published (CQL backend)",
            ),
            cdc_reader_restarts: cv(
                "cdc_reader_restarts_total",
                "Scylla CDC readers restarted after making no progress while their consumer was idle (store.cql.cdc.stall_restart_ms)",
                &["consumer"],
            ),
            registry: r,
            catalogue: names.into_inner().into(),
        }
    }

    /// Every metric name this process can expose (`process_*` aside), the
    /// families without series yet included: what OPERATIONS.md lists.
    pub fn catalogue(&self) -> Vec<String> {
        self.catalogue.iter().cloned().chain([BUILD_INFO.to_string()]).collect()
    }

    /// `projection_lag_events` (held events included; unknown counts 0) and
    /// `projection_checkpoint_position` (when known) from the projection's
    /// backlog: the projector and the health check write them alike.
    pub fn set_projection_backlog(&self, events: Option<i64>, checkpoint: Option<i64>) {
        self.projection_lag_events.set(events.unwrap_or(0));
        if let Some(c) = checkpoint {
            self.projection_checkpoint_position.set(c);
        }
    }

    /// `outboxd_build_info{version, backend} 1`: which build serves which
    /// store backend (`sqlite`, `cql`). Call once per process.
    pub fn set_build_info(&self, backend: &str) {
        let g = reg(
            &self.registry,
            &RefCell::default(),
            IntGaugeVec::new(
                Opts::new(BUILD_INFO, "Build and store backend of this process (always 1)"),
                &["version", "backend"],
            )
            .expect("valid gauge"),
        );
        g.with_label_values(&[env!("CARGO_PKG_VERSION"), backend]).set(1);
    }

    /// Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn g_counter(r: &Registry, names: &RefCell<Vec<String>>, name: &str, help: &str) -> IntCounter {
    reg(r, names, IntCounter::new(name, help).expect("valid counter"))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A metric family with one label.
pub trait Family {
    type Handle;
    fn handle(&self, label: &str) -> Self::Handle;
}

impl Family for IntCounterVec {
    type Handle = IntCounter;
    fn handle(&self, label: &str) -> IntCounter {
        self.with_label_values(&[label])
    }
}

impl Family for HistogramVec {
    type Handle = Histogram;
    fn handle(&self, label: &str) -> Histogram {
        self.with_label_values(&[label])
    }
}

/// Handles of one labelled metric family, cached by label value: the relay's
/// hot path looks a label up in its own map instead of hashing, locking and
/// cloning through the family on every event (foldhash: the labels are few,
/// short and ours, and SipHash showed in the relay's profile).
pub struct ByLabel<F: Family> {
    family: F,
    handles: foldhash::HashMap<String, F::Handle>,
}

impl<F: Family + Clone> ByLabel<F> {
    pub fn new(family: &F) -> ByLabel<F> {
        ByLabel { family: family.clone(), handles: foldhash::HashMap::default() }
    }

    /// The handle for `label`.
    pub fn get(&mut self, label: &str) -> &F::Handle {
        if !self.handles.contains_key(label) {
            let h = self.family.handle(label);
            self.handles.insert(label.to_string(), h);
        }
        &self.handles[label]
    }
}

#[cfg(test)]
mod by_label_tests {
    use super::*;

    #[test]
    fn cached_handles_update_the_family() {
        let m = Metrics::new();
        let mut sent = ByLabel::new(&m.messages_sent);
        sent.get("a").inc();
        sent.get("a").inc();
        sent.get("b").inc();
        assert_eq!(m.messages_sent.with_label_values(&["a"]).get(), 2);
        assert_eq!(m.messages_sent.with_label_values(&["b"]).get(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The metric table of OPERATIONS.md ("### Metrics") lists exactly what
    /// the catalogue registers: a metric added, renamed or dropped on one
    /// side only fails here.
    #[test]
    fn the_documented_metric_table_is_the_catalogue() {
        let doc = include_str!("../docs/OPERATIONS.md");
        let from = doc.find("### Metrics").expect("OPERATIONS.md has a Metrics section");
        let section = &doc[from..];
        // Up to the next heading.
        let section = &section[..section[3..].find("\n#").map_or(section.len(), |i| i + 3)];
        let documented: BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_string)
            .collect();
        let registered: BTreeSet<String> = Metrics::new().catalogue().into_iter().collect();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let unregistered: Vec<_> = documented.difference(&registered).collect();
        assert!(undocumented.is_empty(), "registered, missing from OPERATIONS.md's table: {undocumented:?}");
        assert!(unregistered.is_empty(), "in OPERATIONS.md's table, not registered: {unregistered:?}");
    }
}
