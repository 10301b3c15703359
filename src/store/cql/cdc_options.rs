//! The CDC options of `event_store` and everything derived from the CDC log
//! TTL (pure): the `cdc = {...}` clause of the schema, the drift check
//! against what the server holds, and the TTL of the relay's progress rows.
//!
//! Guarantees:
//! - One source: `store.cql.cdc.log_ttl_seconds` gives the log TTL in the
//!   schema (`schema.cql`, `migrate`), the TTL guard (`relay::cdc::health`),
//!   the read start floor (`relay::cdc::start`) and the progress rows' TTL, so
//!   code and table cannot drift apart; `migrate` corrects a drifted table.
//! - The options are explicit (`'delta': 'full'`, no pre/post-images), so a
//!   change of Scylla's defaults cannot change what the relay reads.

use std::collections::BTreeMap;
use std::time::Duration;

/// Scylla's default CDC log TTL, and ours.
pub const DEFAULT_LOG_TTL_SECS: u64 = 86_400;

/// The options outboxd wants, as `(name, value)` in Scylla's spelling.
pub fn wanted_options(ttl_secs: u64) -> [(&'static str, String); 5] {
    [
        ("enabled", "true".into()),
        ("delta", "full".into()),
        ("preimage", "false".into()),
        ("postimage", "false".into()),
        ("ttl", ttl_secs.to_string()),
    ]
}

/// The map literal of `WITH cdc = ...` for `ttl_secs`.
pub fn cdc_options_cql(ttl_secs: u64) -> String {
    let body: Vec<String> = wanted_options(ttl_secs)
        .iter()
        .map(|(k, v)| if *k == "delta" { format!("'{k}': '{v}'") } else { format!("'{k}': {v}") })
        .collect();
    format!("{{{}}}", body.join(", "))
}

/// The options whose value on the server (`system_schema.scylla_tables.cdc`,
/// missing keys meaning Scylla's defaults) differs from the wanted one.
pub fn options_drift(current: &BTreeMap<String, String>, ttl_secs: u64) -> Vec<String> {
    let default = |k: &str| match k {
        "enabled" | "preimage" | "postimage" => "false".to_string(),
        "delta" => "full".to_string(),
        "ttl" => DEFAULT_LOG_TTL_SECS.to_string(),
        _ => String::new(),
    };
    wanted_options(ttl_secs)
        .into_iter()
        .filter(|(k, want)| {
            current.get(*k).map(|v| v.trim().to_ascii_lowercase()).unwrap_or_else(|| default(k)) != *want
        })
        .map(|(k, want)| format!("{k}: {} -> {want}", current.get(k).cloned().unwrap_or_else(|| default(k))))
        .collect()
}

/// The longest TTL Scylla (and Cassandra) accept: 20 years. A write with a
/// longer one is refused ("ttl is too large"). The config's widest log TTL.
pub const MAX_ROW_TTL_SECS: u64 = crate::config::MAX_TTL_SECONDS;

/// TTL of the relay's CDC progress rows: 7 x the log TTL (7 days at the
/// default, scylla-cdc's own default), at most [`MAX_ROW_TTL_SECS`]. A
/// progress row must outlive every log row it points into; the margin lets
/// a relay that was stopped for longer than the log TTL still find its
/// progress and report the gap (`StartFrom::SavedBeyondTtl`) instead of
/// silently starting at the floor. Rows of finished generations expire with
/// it. The cap keeps every progress write acceptable to the server, whatever
/// log TTL the config accepts (up to that same maximum).
pub fn progress_row_ttl(log_ttl: Duration) -> Duration {
    log_ttl.saturating_mul(7).max(Duration::from_secs(3_600)).min(Duration::from_secs(MAX_ROW_TTL_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_clause_is_explicit() {
        assert_eq!(
            cdc_options_cql(86_400),
            "{'enabled': true, 'delta': 'full', 'preimage': false, 'postimage': false, 'ttl': 86400}"
        );
        assert_eq!(
            cdc_options_cql(3_600),
            "{'enabled': true, 'delta': 'full', 'preimage': false, 'postimage': false, 'ttl': 3600}"
        );
    }

    #[test]
    fn drift_names_each_differing_option() {
        let m =
            |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let same = m(&[
            ("enabled", "true"),
            ("delta", "full"),
            ("preimage", "false"),
            ("postimage", "false"),
            ("ttl", "86400"),
        ]);
        assert!(options_drift(&same, 86_400).is_empty());
        // `{'enabled': true}` alone: the defaults are the wanted values.
        assert!(options_drift(&m(&[("enabled", "true")]), 86_400).is_empty());
        assert_eq!(options_drift(&m(&[("enabled", "true")]), 3_600), vec!["ttl: 86400 -> 3600"]);
        assert_eq!(
            options_drift(&m(&[("enabled", "TRUE"), ("preimage", "true"), ("delta", "keys")]), 86_400),
            vec!["delta: keys -> full", "preimage: true -> false"]
        );
        assert_eq!(options_drift(&BTreeMap::new(), 86_400), vec!["enabled: false -> true"]);
    }

    #[test]
    fn progress_rows_outlive_the_log() {
        assert_eq!(progress_row_ttl(Duration::from_secs(86_400)), Duration::from_secs(7 * 86_400));
        assert_eq!(progress_row_ttl(Duration::from_secs(60)), Duration::from_secs(3_600));
    }

    /// Review finding: a log TTL above a seventh of the server's maximum
    /// (`store.cql.cdc.log_ttl_seconds` accepts up to 630 720 000) gave
    /// progress rows a TTL Scylla refuses ("ttl is too large"): every
    /// progress write, the generation row's included, failed, so the reader
    /// failed at its first generation and never saved progress.
    #[test]
    fn progress_rows_never_ask_for_more_than_the_servers_maximum_ttl() {
        let max = Duration::from_secs(MAX_ROW_TTL_SECS);
        for log_ttl in [MAX_ROW_TTL_SECS / 7 + 1, 100_000_000, MAX_ROW_TTL_SECS] {
            let ttl = progress_row_ttl(Duration::from_secs(log_ttl));
            assert!(ttl <= max, "log TTL {log_ttl} s: progress rows {ttl:?}");
            assert!(ttl >= Duration::from_secs(log_ttl), "still outlives the log");
        }
        assert_eq!(
            progress_row_ttl(Duration::from_secs(MAX_ROW_TTL_SECS / 7)),
            Duration::from_secs(MAX_ROW_TTL_SECS / 7 * 7)
        );
    }
}
