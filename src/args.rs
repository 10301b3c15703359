//! Command-line value parsers shared by the CLI and the benchmarks.
//!
//! Guarantee: a count that must be positive is refused at parse time, as a
//! clap error naming the flag (one line, exit 2), never worked around later;
//! every count has an upper bound, so no product or allocation sized from
//! one can overflow (a panic, exit 101).

/// Largest count of [`at_least_one`]: events, aggregates, orders, clients,
/// appenders of a benchmark (the product of two, `bench append
/// --aggregates N --events-per-aggregate K`, stays far below `usize::MAX`).
pub const MAX_COUNT: usize = 100_000_000;

/// Largest `bench relay --size` / `bench backlog --size` (bytes): 1 MiB.
pub const MAX_EVENT_SIZE: usize = 1 << 20;

/// A whole number in `1..=max`.
fn bounded(s: &str, max: usize) -> Result<usize, String> {
    bounded_as(s, max, &max.to_string())
}

/// A whole number in `1..=max`; `shown` is how the error names `max`.
fn bounded_as(s: &str, max: usize, shown: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be 1 or more".into()),
        Ok(n) if n > max => Err(format!("must be {shown} or less")),
        Ok(n) => Ok(n),
        // Digits beyond usize: too large, not "not a number".
        Err(_) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Err(format!("must be {shown} or less")),
        Err(e) => Err(format!("expected a whole number ({e})")),
    }
}

/// A count of 1 to [`MAX_COUNT`] (`bench --events`, `--aggregates`,
/// `--concurrency`, ...).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    bounded(s, MAX_COUNT)
}

/// A duration in seconds (`--timeout`, `bench --seconds`): 1 to 31 536 000
/// (a year); more would overflow the clock's deadline (a panic, exit 101).
pub fn seconds(s: &str) -> Result<usize, String> {
    bounded_as(s, 31_536_000, "31536000 (a year)")
}

/// How many rows a listing shows: 1 to 100 000 (what a store reads at once).
pub fn list_limit(s: &str) -> Result<usize, String> {
    bounded(s, 100_000)
}

/// A rate of 1 to [`MAX_COUNT`] per second (`bench relay --rate 500,10000`).
pub fn rate(s: &str) -> Result<u64, String> {
    at_least_one(s).map(|n| n as u64)
}

/// An event size in bytes, 1 to [`MAX_EVENT_SIZE`] (`bench relay --size`,
/// `bench backlog --size`).
pub fn event_size(s: &str) -> Result<usize, String> {
    bounded(s, MAX_EVENT_SIZE)
}

/// A UUID in its canonical 36-character hyphenated form (either case), the
/// one the HTTP API takes (`format: uuid`): the other spellings
/// `Uuid::parse_str` accepts (32 bare digits, braces, `urn:uuid:`) are
/// refused, so an id is written the same way everywhere it is shown.
pub fn uuid(s: &str) -> Result<uuid::Uuid, String> {
    const FORM: &str = "expected a UUID as 36 characters, 8-4-4-4-12 hex digits with hyphens (e.g. 0191f5a6-8f4e-7c3b-9a1d-2b3c4d5e6f70)";
    if s.len() != 36 {
        return Err(FORM.into());
    }
    uuid::Uuid::parse_str(s).map_err(|e| format!("{FORM}: {e}"))
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

    /// The CLI takes ids only as the API does: 36 characters, hyphenated.
    #[test]
    fn uuids_in_the_one_hyphenated_form() {
        let id = "0191f5a6-8f4e-7c3b-9a1d-2b3c4d5e6f70";
        assert_eq!(super::uuid(id).unwrap().to_string(), id);
        assert_eq!(super::uuid(&id.to_uppercase()).unwrap().to_string(), id);
        for loose in [id.replace('-', ""), format!("{{{id}}}"), format!("urn:uuid:{id}"), "".into()] {
            assert!(super::uuid(&loose).unwrap_err().starts_with("expected a UUID as 36 characters"), "{loose}");
        }
        let bad = "0191f5a6-8f4e-7c3b-9a1d-2b3c4d5e6f7g";
        assert!(super::uuid(bad).unwrap_err().contains("invalid character"), "{:?}", super::uuid(bad));
    }

    /// Review finding: `bench append --aggregates 18446744073709551615
    /// --events-per-aggregate 2` overflowed their product (a panic); every
    /// count now has an upper bound.
    #[test]
    fn every_count_has_an_upper_bound() {
        let max = u64::MAX.to_string();
        assert_eq!(super::at_least_one("100000000"), Ok(100_000_000));
        assert_eq!(super::at_least_one("100000001").unwrap_err(), "must be 100000000 or less");
        assert_eq!(super::at_least_one(&max).unwrap_err(), "must be 100000000 or less");
        assert_eq!(super::at_least_one("1000000000000000000000").unwrap_err(), "must be 100000000 or less");
        assert_eq!(super::rate(&max).unwrap_err(), "must be 100000000 or less");
        assert_eq!(super::seconds(&max).unwrap_err(), "must be 31536000 (a year) or less");
        assert_eq!(super::seconds("31536000"), Ok(31_536_000));
        assert_eq!(super::event_size("1048576"), Ok(1 << 20));
        assert_eq!(super::event_size("1048577").unwrap_err(), "must be 1048576 or less");
        assert_eq!(super::event_size(&max).unwrap_err(), "must be 1048576 or less");
        let (n, k) = (super::at_least_one("100000000").unwrap(), super::at_least_one("100000000").unwrap());
        assert!(n.checked_mul(k).is_some(), "the largest product does not overflow");
    }
}
