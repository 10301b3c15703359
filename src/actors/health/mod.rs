//! Health: Healthy / Degraded / Unhealthy per component and overall
//! (seed 001).
//!
//! - [`report`]: what /health returns (read by the HTTP layer);
//! - [`rules`]: the pure rules, probes -> verdict per component;
//! - [`lag`]: the lag gauges' figures from the same probes;
//! - [`actor`]: the HealthCheckActor that probes, evaluates and publishes.

pub mod actor;
pub mod lag;
pub mod report;
pub mod rules;

pub use actor::{CheckNow, GetSystemHealth, HealthCheckActor, MarkShuttingDown, RegisterComponents};
pub use report::{ComponentHealth, HealthReport, HealthStatus, COMPONENTS};
pub use rules::{evaluate, Probes, Reported, Thresholds};
