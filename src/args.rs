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

/// A duration in seconds (`--timeout`, `bench --seconds`): 1 to 31 536 000
/// (a year); more would overflow the clock's deadline (a panic, exit 101).
pub fn seconds(s: &str) -> Result<usize, String> {
    match at_least_one(s)? {
        n if n > 31_536_000 => Err("must be 31536000 (a year) or less".into()),
        n => Ok(n),
    }
}

/// How many rows a listing shows: 1 to 100 000 (what a store reads at once).
pub fn list_limit(s: &str) -> Result<usize, String> {
    match at_least_one(s)? {
        n if n > 100_000 => Err("must be 100000 or less".into()),
        n => Ok(n),
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
        assert_eq!(super::list_limit("100000"), Ok(100_000));
        assert_eq!(super::list_limit("100001").unwrap_err(), "must be 100000 or less");
    }
}
