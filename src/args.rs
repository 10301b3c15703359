//! Command-line value parsers shared by the CLI and the benchmarks.
//!
//! Guarantee: a count that must be positive is refused at parse time, as a
//! clap error naming the flag (one line, exit 2), never worked around later.

/// A count of at least 1 (`--limit`, `--timeout`, `--concurrency`, ...).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be 1 or more".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("expected a whole number ({e})")),
    }
}

/// A rate of at least 1 per second (`bench relay --rate 500,10000`).
pub fn rate(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|n| n as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts() {
        assert_eq!(super::at_least_one("3"), Ok(3));
        assert_eq!(super::at_least_one("0").unwrap_err(), "must be 1 or more");
        assert!(super::at_least_one("-1").unwrap_err().starts_with("expected a whole number"));
        assert_eq!(super::rate("0").unwrap_err(), "must be 1 or more");
    }
}
