//! The CPU a benchmark pass cost: the process's CPU clock (every thread,
//! librdkafka's and SQLite's included) read before and after the pass. On
//! a machine whose cores are shared with the broker, CPU per event is a far
//! steadier figure than a rate, and it is what a rate is bounded by once
//! the cores are busy.
//!
//! Guarantee: only measures; `None` where the clock cannot be read.

use std::time::Duration;

/// CPU time consumed by this process so far (all threads, user + system).
pub fn process_cpu() -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).ok()?;
    Some(Duration::new(u64::try_from(t.tv_sec()).ok()?, u32::try_from(t.tv_nsec()).ok()?))
}

/// Started before a pass; `per_item` after it gives microseconds of CPU per item.
pub struct CpuMeter(Option<Duration>);

impl CpuMeter {
    pub fn start() -> CpuMeter {
        CpuMeter(process_cpu())
    }

    /// Microseconds of process CPU per item since `start` (NaN if unreadable).
    pub fn per_item(&self, items: usize) -> f64 {
        match (self.0, process_cpu()) {
            (Some(a), Some(b)) if items > 0 => b.saturating_sub(a).as_secs_f64() * 1e6 / items as f64,
            _ => f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_advances_with_work_and_splits_it_per_item() {
        let m = CpuMeter::start();
        let wall = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until this process has used 5 ms of CPU (other test threads
        // may add to it; the bound only guards against a clock that stands still).
        while m.per_item(1).is_nan() || m.per_item(1) < 5_000.0 {
            assert!(wall.elapsed() < Duration::from_secs(30), "the process CPU clock did not advance");
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        // Ten first: the clock only moves on between the two reads, so the
        // later read for one item is at least ten times the earlier per-ten figure.
        let ten = m.per_item(10);
        let one = m.per_item(1);
        assert!(ten > 0.0 && ten <= one / 9.0, "per item: {one} us for 1, {ten} us for 10");
        assert!(m.per_item(0).is_nan());
    }
}
