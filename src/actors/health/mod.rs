//! Health: Healthy / Degraded / Unhealthy per component and overall
//! (seed 001).
//!
//! - [`report`]: what /health returns (read by the HTTP layer);
//! - [`rules`]: the pure rules, probes -> verdict per component;
//! - [`actor`]: the HealthCheckActor that probes, evaluates and publishes.

pub mod actor;
pub mod report;
pub mod rules;

pub use actor::{CheckNow, GetSystemHealth, HealthCheckActor, MarkShuttingDown, RegisterComponents};
pub use report::{ComponentHealth, HealthReport, HealthStatus, COMPONENTS};
pub use rules::{evaluate, Probes, Reported, Thresholds};
