//! Tests of the `[service]` and `[health]` checks: `service.default_currency`
//! takes the currencies a command may use, nothing else; the health
//! thresholds refuse values that would make every check fail.

use crate::config::Config;

fn with_currency(code: &str) -> Result<(), String> {
    let mut cfg = Config::default();
    cfg.service.default_currency = code.into();
    cfg.validate().map_err(|e| e.to_string())
}

/// Review finding: `service.default_currency` checked only the shape (three
/// upper-case letters), so a code the domain refuses for every command
/// (`ZZZ`) was accepted at load.
#[test]
fn default_currency_must_be_an_iso_4217_code() {
    for ok in ["EUR", "USD", "JPY", "XCG"] {
        with_currency(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in ["ZZZ", "ABC", "eur", "EURO", "", "€"] {
        let e = with_currency(bad).unwrap_err();
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.contains("service.default_currency") && e.contains("ISO 4217"), "{bad}: {e}");
    }
}

/// Review finding: `health.lag_degraded_seconds = 0` made the relay always
/// Degraded, and `health.feed_unhealthy_after_ms = 0` made the first
/// transient feed error Unhealthy (a restart by an orchestrator's probe).
#[test]
fn zero_health_thresholds_are_refused_by_name() {
    let refused = |f: &dyn Fn(&mut Config), key: &str| {
        let mut cfg = Config::default();
        f(&mut cfg);
        let e = cfg.validate().expect_err(key).to_string();
        assert!(e.contains(key) && e.lines().count() == 1, "{key}: {e}");
    };
    refused(&|c| c.health.lag_degraded_seconds = 0, "health.lag_degraded_seconds must be >= 1");
    refused(&|c| c.health.feed_unhealthy_after_ms = 0, "health.feed_unhealthy_after_ms = 0: must be >= 1000");
    refused(&|c| c.health.feed_unhealthy_after_ms = 999, "health.feed_unhealthy_after_ms = 999");
    let mut cfg = Config::default();
    cfg.health.lag_degraded_seconds = 1;
    cfg.health.feed_unhealthy_after_ms = 1_000;
    cfg.validate().unwrap();
}
