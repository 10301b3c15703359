//! Tests of the `[service]` checks: `service.default_currency` takes the
//! currencies a command may use, nothing else.

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
