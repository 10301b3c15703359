//! Leases: exactly one active instance per consumer name, fenced by epoch.
//!
//! [`machine`] holds the pure rules (when to renew, when a standby may take
//! over, when a holder must stop); [`keeper`] runs them against a
//! [`crate::store::lease::LeaseStore`] and publishes this instance's role.

pub mod gate;
pub mod keeper;
pub mod machine;
