//! What a command waits under: one `--timeout` for the whole command
//! ([`Deadline`]: each step gets what the steps before it left), and one
//! SIGINT/SIGTERM listener ([`Interrupt`]: a signal between two requests of
//! `dlq replay --all` is not lost between two listeners).

use std::time::{Duration, Instant};

use outboxd::shutdown::{Shutdown, Trigger};

/// The end of a command's `--timeout`, shared by everything it waits for.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// `total` from now.
    pub fn after(total: Duration) -> Deadline {
        Deadline::from(Instant::now(), total)
    }

    fn from(start: Instant, total: Duration) -> Deadline {
        Deadline { at: start + total, total }
    }

    /// What is left at `now` (zero once it passed).
    fn left_at(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// What is left of it.
    pub fn left(&self) -> Duration {
        self.left_at(Instant::now())
    }

    /// The whole `--timeout`, for messages.
    pub fn total(&self) -> Duration {
        self.total
    }
}

/// SIGINT/SIGTERM, listened for once per command: a signal between two
/// of its requests (`dlq replay --all`) is not lost between two listeners.
pub struct Interrupt(pub(super) Shutdown);

impl Interrupt {
    /// Installs the signal handlers (they keep a signal from ending the
    /// process: the command withdraws its request and reports it).
    pub fn install() -> Interrupt {
        let trigger = Trigger::new();
        let interrupted = trigger.subscribe();
        let mut signals = outboxd::daemon::Signals::install();
        tokio::spawn(async move {
            signals.recv().await;
            trigger.fire();
        });
        Interrupt(interrupted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding: `dlq replay --all` gave each of its two requests the
    /// whole `--timeout`. The second gets what the first left, none once it passed.
    #[test]
    fn requests_share_one_deadline() {
        let start = Instant::now();
        let d = Deadline::from(start, Duration::from_secs(10));
        assert_eq!(d.left_at(start), Duration::from_secs(10));
        // The first request took 7 s: 3 s are left for the second.
        assert_eq!(d.left_at(start + Duration::from_secs(7)), Duration::from_secs(3));
        assert_eq!(d.left_at(start + Duration::from_secs(12)), Duration::ZERO);
        assert_eq!(d.total(), Duration::from_secs(10), "messages name the whole --timeout");
    }
}
