//! The lease decision rules, pure: given the row last read from the store
//! and this instance's own monotonic clock, what to write next.
//!
//! Guarantees (unit-tested below), with no clock shared between instances:
//! - A standby takes a lease over only after it has seen the very same
//!   (holder, epoch, counter) for one full TTL on its own monotonic clock;
//!   the takeover writes `epoch + 1` with a compare-and-set on the observed
//!   (epoch, counter), so of two standbys at most one wins.
//! - The holder renews every `ttl / 3` (counter + 1, same epoch) and counts
//!   itself active only until `renew_deadline` (< TTL) after the *send time*
//!   of its last successful renewal. A standby that saw that renewal's value
//!   saw it after it was sent, and waits a whole TTL from then: the holder
//!   has stopped publishing `TTL - renew_deadline` before anyone can take
//!   over (the margin covers clock-rate drift between the hosts).
//! - A holder that stops cleanly releases the lease (holder cleared, same
//!   epoch): a standby may take a released lease at once.
//! - A write that did not answer is remembered with its send time: read
//!   back exactly (ours: only this instance writes its name), it counts as
//!   applied then, so a takeover or renewal whose reply was lost does not
//!   make the instance wait a TTL on its own row.
//! - An epoch only grows; every checkpoint write is conditional on it (see
//!   the stores), so a former holder can never move a checkpoint. A row that
//!   disappears (deleted by hand) after one was read is treated like a row
//!   nobody renews: the holder steps down at once, and it is created again
//!   only after one TTL of absence, at the highest epoch read + 1. Only an
//!   instance that never read a row and whose store names no earlier epoch
//!   (`epoch_floor`: the CQL fences) creates epoch 1 at once.

use std::time::{Duration, Instant};

use crate::store::lease::{Lease, LeaseCas};

/// Timing of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: Duration,
    /// How often the holder renews (and a standby re-reads).
    pub renew_every: Duration,
    /// The holder stops acting as leader this long after its last successful renewal was sent.
    pub renew_deadline: Duration,
}

impl Timing {
    pub fn from_ttl(ttl: Duration) -> Timing {
        Timing { ttl, renew_every: ttl / 3, renew_deadline: ttl * 2 / 3 }
    }
}

/// This instance's view of one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// Nothing read yet.
    Unknown,
    /// Someone else holds it (or held it): the row as first seen unchanged at `since`.
    Standby { row: Lease, since: Instant },
    /// We hold it at `epoch`; `counter` is the last value we wrote; `renewed` is when that write was sent.
    Active { epoch: i64, counter: i64, renewed: Instant },
}

/// The next step for the keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to write now; read again after the pause.
    Wait,
    /// Compare-and-set this row (creation, renewal or takeover).
    Write(LeaseCas),
}

#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub me: String,
    pub timing: Timing,
    pub view: View,
    /// Writes sent that did not answer (oldest first), with their send times.
    unanswered: Vec<(LeaseCas, Instant)>,
    /// The highest epoch read or written so far (0: no row seen yet).
    highest_epoch: i64,
    /// Since when the row has been missing, after one was seen.
    missing_since: Option<Instant>,
}

/// Unanswered writes remembered (older ones are forgotten).
const UNANSWERED_KEPT: usize = 8;

impl Machine {
    pub fn new(name: impl Into<String>, me: impl Into<String>, timing: Timing) -> Machine {
        Machine {
            name: name.into(),
            me: me.into(),
            timing,
            view: View::Unknown,
            unanswered: Vec::new(),
            highest_epoch: 0,
            missing_since: None,
        }
    }

    /// No row seen yet: a missing row is the first ever only if no fence
    /// outside it says otherwise (`LeaseStore::lease_epoch_floor`).
    pub fn knows_no_epoch(&self) -> bool {
        self.highest_epoch == 0
    }

    /// Terms up to `floor` existed (their fences say so): a missing row is
    /// one that went, created after a TTL above `floor` (a term that still
    /// acts may hold it; a lower epoch would be refused by every fence).
    pub fn epoch_floor(&mut self, floor: i64) {
        self.highest_epoch = self.highest_epoch.max(floor);
    }

    /// The instant this instance's hold ends unless renewed (the renewal
    /// deadline of the last applied write), while active.
    pub fn held_until(&self) -> Option<Instant> {
        match &self.view {
            View::Active { renewed, .. } => Some(*renewed + self.timing.renew_deadline),
            _ => None,
        }
    }

    /// The epoch held at `now`: active and before the renewal deadline.
    pub fn is_active(&self, now: Instant) -> Option<i64> {
        match &self.view {
            View::Active { epoch, renewed, .. }
                if now.saturating_duration_since(*renewed) < self.timing.renew_deadline =>
            {
                Some(*epoch)
            }
            _ => None,
        }
    }

    fn ttl_ms(&self) -> i64 {
        self.timing.ttl.as_millis().min(i64::MAX as u128) as i64
    }

    fn row(&self, epoch: i64, counter: i64) -> Lease {
        Lease { name: self.name.clone(), holder: self.me.clone(), epoch, counter, ttl_ms: self.ttl_ms() }
    }

    /// Decides what to do with the row just read (`None`: no row yet).
    pub fn decide(&mut self, read: Option<&Lease>, now: Instant) -> Step {
        let Some(row) = read else { return self.decide_missing(now) };
        self.missing_since = None;
        self.highest_epoch = self.highest_epoch.max(row.epoch);
        // A write of ours that landed unanswered: applied when it was sent
        // (the earliest such send, if the same row was sent twice).
        if let Some((cas, sent)) = self.unanswered.iter().find(|(c, _)| same(&c.new, row)).cloned() {
            self.applied(&cas, sent);
        }
        if let View::Active { epoch, counter, .. } = self.view {
            if row.holder == self.me && row.epoch == epoch {
                // Ours (the counter may be ahead if a renewal's reply was lost).
                return Step::Write(LeaseCas {
                    expected: Some((epoch, row.counter)),
                    new: self.row(epoch, row.counter.max(counter) + 1),
                });
            }
            // Someone took it over: we are a standby from now on.
            self.view = View::Standby { row: row.clone(), since: now };
            return Step::Wait;
        }
        if row.holder.is_empty() {
            // Released by a holder that stopped cleanly: take it at once.
            return Step::Write(LeaseCas { expected: Some((row.epoch, row.counter)), new: self.row(row.epoch + 1, 0) });
        }
        match &self.view {
            View::Standby { row: seen, since } if same(seen, row) => {
                if now.saturating_duration_since(*since)
                    >= self.timing.ttl.max(Duration::from_millis(row.ttl_ms.max(0) as u64))
                {
                    Step::Write(LeaseCas { expected: Some((row.epoch, row.counter)), new: self.row(row.epoch + 1, 0) })
                } else {
                    Step::Wait
                }
            }
            _ => {
                self.view = View::Standby { row: row.clone(), since: now };
                Step::Wait
            }
        }
    }

    /// No row. The first ever (no epoch read, no floor): created at once (epoch 1). One that was
    /// there and went: whoever held it may still act until its deadline, and
    /// a fence that never goes down (CQL) refuses a lower epoch: created
    /// after one TTL of absence, above every epoch seen.
    fn decide_missing(&mut self, now: Instant) -> Step {
        if self.highest_epoch == 0 {
            return Step::Write(LeaseCas { expected: None, new: self.row(1, 0) });
        }
        if matches!(self.view, View::Active { .. }) {
            // Our row is gone: nothing to renew; stop acting at once.
            self.view = View::Unknown;
        }
        let since = *self.missing_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.timing.ttl {
            Step::Write(LeaseCas { expected: None, new: self.row(self.highest_epoch + 1, 0) })
        } else {
            Step::Wait
        }
    }

    /// The write `cas`, sent at `sent`, was applied.
    pub fn applied(&mut self, cas: &LeaseCas, sent: Instant) {
        self.highest_epoch = self.highest_epoch.max(cas.new.epoch);
        self.missing_since = None;
        self.view = View::Active { epoch: cas.new.epoch, counter: cas.new.counter, renewed: sent };
        self.unanswered.clear();
    }

    /// The write `cas`, sent at `sent`, failed or did not answer: it may
    /// have been applied all the same (`decide` adopts it if read back).
    pub fn unanswered(&mut self, cas: LeaseCas, sent: Instant) {
        if self.unanswered.len() == UNANSWERED_KEPT {
            self.unanswered.remove(0);
        }
        self.unanswered.push((cas, sent));
    }

    /// The last write sent that has not answered (it may have landed).
    pub fn last_unanswered(&self) -> Option<&LeaseCas> {
        self.unanswered.last().map(|(cas, _)| cas)
    }

    /// The write was not applied (the row changed): forget what we believed; the next read decides.
    pub fn rejected(&mut self, now: Instant) {
        if matches!(self.view, View::Active { .. }) {
            self.view = View::Unknown;
        }
        let _ = now;
    }

    /// How long to wait before the next read/renewal.
    pub fn pause(&self) -> Duration {
        self.timing.renew_every.max(Duration::from_millis(10))
    }

    /// How long to wait after a read or write that failed or did not answer:
    /// a quarter of the renew interval. With the plain pause, one transient
    /// failure (a busy store) would put the next renewal exactly at the
    /// renewal deadline, and the holder would step down for nothing.
    pub fn retry_pause(&self) -> Duration {
        (self.timing.renew_every / 4).max(Duration::from_millis(10))
    }
}

fn same(a: &Lease, b: &Lease) -> bool {
    a.holder == b.holder && a.epoch == b.epoch && a.counter == b.counter
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(9_000);

    fn m(me: &str) -> Machine {
        Machine::new("kafka-relay", me, Timing::from_ttl(TTL))
    }

    fn lease(holder: &str, epoch: i64, counter: i64) -> Lease {
        Lease { name: "kafka-relay".into(), holder: holder.into(), epoch, counter, ttl_ms: TTL.as_millis() as i64 }
    }

    fn write(s: Step) -> LeaseCas {
        match s {
            Step::Write(c) => c,
            Step::Wait => panic!("expected a write"),
        }
    }

    #[test]
    fn first_instance_creates_then_renews() {
        let t0 = Instant::now();
        let mut a = m("a");
        let c = write(a.decide(None, t0));
        assert_eq!((c.expected, c.new.epoch, c.new.counter), (None, 1, 0));
        a.applied(&c, t0);
        assert_eq!(a.is_active(t0), Some(1));
        let t1 = t0 + a.pause();
        let r = write(a.decide(Some(&c.new), t1));
        assert_eq!((r.expected, r.new.epoch, r.new.counter), (Some((1, 0)), 1, 1));
        a.applied(&r, t1);
        // Without a successful renewal the holder stops before the deadline.
        assert_eq!(a.is_active(t1 + TTL * 2 / 3 - Duration::from_millis(1)), Some(1));
        assert_eq!(a.is_active(t1 + TTL * 2 / 3), None);
    }

    #[test]
    fn standby_takes_over_only_after_a_full_ttl_of_an_unchanged_row() {
        let t0 = Instant::now();
        let mut b = m("b");
        let held = lease("a", 4, 17);
        assert_eq!(b.decide(Some(&held), t0), Step::Wait);
        assert_eq!(b.decide(Some(&held), t0 + TTL - Duration::from_millis(1)), Step::Wait);
        // A renewal restarts the clock.
        let renewed = lease("a", 4, 18);
        assert_eq!(b.decide(Some(&renewed), t0 + TTL), Step::Wait);
        assert_eq!(b.decide(Some(&renewed), t0 + TTL + TTL / 2), Step::Wait);
        let c = write(b.decide(Some(&renewed), t0 + TTL * 2));
        assert_eq!(c.expected, Some((4, 18)));
        assert_eq!((c.new.holder.as_str(), c.new.epoch, c.new.counter), ("b", 5, 0));
    }

    /// Review finding: a deleted row was re-created at epoch 1 at once by
    /// whoever read it next (a standby, or the holder itself), while the
    /// holder could still act, and below a CQL fence that never goes down.
    #[test]
    fn a_row_that_disappears_is_created_again_after_a_ttl_above_every_epoch_seen() {
        let t0 = Instant::now();
        let mut b = m("b");
        assert_eq!(b.decide(Some(&lease("a", 7, 3)), t0), Step::Wait);
        assert_eq!(b.decide(None, t0 + TTL / 3), Step::Wait, "a standby waits on a missing row");
        assert_eq!(b.decide(None, t0 + TTL / 3 + TTL - Duration::from_millis(1)), Step::Wait);
        let c = write(b.decide(None, t0 + TTL / 3 + TTL));
        assert_eq!((c.expected, c.new.holder.as_str(), c.new.epoch), (None, "b", 8));

        let mut a = m("a");
        let c = write(a.decide(None, t0));
        assert_eq!(c.new.epoch, 1, "the first row ever: at once");
        a.applied(&c, t0);
        let r = write(a.decide(Some(&c.new), t0 + a.pause()));
        a.applied(&r, t0 + a.pause());
        assert_eq!(a.decide(None, t0 + a.pause() * 2), Step::Wait, "the holder of a deleted row waits too");
        assert_eq!(a.is_active(t0 + a.pause() * 2), None, "and stops acting at once");
        let c = write(a.decide(None, t0 + a.pause() * 2 + TTL));
        assert_eq!(c.new.epoch, 2, "above its own epoch");
        // The row back meanwhile (someone else's): the absence clock resets.
        let mut d = m("d");
        assert_eq!(d.decide(Some(&lease("a", 3, 0)), t0), Step::Wait);
        assert_eq!(d.decide(None, t0 + TTL / 3), Step::Wait);
        assert_eq!(d.decide(Some(&lease("e", 4, 0)), t0 + TTL), Step::Wait);
        assert_eq!(d.decide(None, t0 + TTL + TTL / 3), Step::Wait, "absent again: a new TTL from here");
    }

    #[test]
    fn the_holder_steps_down_when_it_sees_a_newer_epoch() {
        let t0 = Instant::now();
        let mut a = m("a");
        let c = write(a.decide(None, t0));
        a.applied(&c, t0);
        let taken = lease("b", 2, 0);
        assert_eq!(a.decide(Some(&taken), t0 + a.pause()), Step::Wait);
        assert_eq!(a.is_active(t0 + a.pause()), None);
        assert!(matches!(a.view, View::Standby { .. }));
    }

    #[test]
    fn a_lost_renewal_reply_is_adopted() {
        let t0 = Instant::now();
        let mut a = m("a");
        let c = write(a.decide(None, t0));
        a.applied(&c, t0);
        // Our renewal to counter 1 was applied but the reply was lost: the row says 1.
        let r = write(a.decide(Some(&lease("a", 1, 1)), t0 + a.pause()));
        assert_eq!((r.expected, r.new.counter), (Some((1, 1)), 2));
    }

    /// A renewal applied late: the retry sent meanwhile lost to it, and the
    /// row read next is the late one. It is ours: renewed at once, not
    /// watched for a TTL as another holder's.
    #[test]
    fn a_renewal_that_landed_unanswered_is_adopted_after_a_rejection() {
        let t0 = Instant::now();
        let mut a = m("a");
        let c = write(a.decide(None, t0));
        a.applied(&c, t0);
        let t1 = t0 + a.pause();
        let late = write(a.decide(Some(&c.new), t1)); // (1,0) -> (1,1): no answer
        a.unanswered(late, t1);
        let t2 = t1 + a.retry_pause();
        let retry = write(a.decide(Some(&c.new), t2)); // read before the late write landed
        assert_eq!(retry.new.counter, 1);
        a.rejected(t2); // the late one landed first
        let r = write(a.decide(Some(&lease("a", 1, 1)), t2 + a.retry_pause()));
        assert_eq!((r.expected, r.new.epoch, r.new.counter), (Some((1, 1)), 1, 2));
        assert_eq!(a.is_active(t2), Some(1), "active from the late write's send time");
        assert_eq!(a.is_active(t1 + TTL * 2 / 3), None, "and only until its deadline");
    }

    /// A takeover (or creation) that landed unanswered: the next read shows
    /// our own row, which is ours at once; another holder's row that merely
    /// resembles it is not.
    #[test]
    fn a_takeover_that_landed_unanswered_is_ours_at_once() {
        let t0 = Instant::now();
        let mut b = m("b");
        let c = write(b.decide(Some(&lease("", 3, 9)), t0));
        b.unanswered(c.clone(), t0);
        assert_eq!(b.decide(Some(&lease("x", 4, 0)), t0 + b.retry_pause()), Step::Wait, "someone else's row");
        let mut b2 = m("b");
        let c2 = write(b2.decide(Some(&lease("", 3, 9)), t0));
        b2.unanswered(c2.clone(), t0);
        let r = write(b2.decide(Some(&c2.new), t0 + b2.retry_pause()));
        assert_eq!((r.expected, r.new.epoch, r.new.counter), (Some((4, 0)), 4, 1));
        assert_eq!(b2.is_active(t0 + b2.retry_pause()), Some(4));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let t0 = Instant::now();
        let mut b = m("b");
        let c = write(b.decide(Some(&lease("", 3, 9)), t0));
        assert_eq!((c.expected, c.new.epoch), (Some((3, 9)), 4));
    }

    /// Safety without a shared clock: the holder's last moment as leader is
    /// before any standby's first moment, even when the standby read the
    /// renewed row the instant it was sent.
    #[test]
    fn holder_and_standby_never_overlap() {
        let t0 = Instant::now();
        let mut a = m("a");
        let mut b = m("b");
        let c = write(a.decide(None, t0));
        a.applied(&c, t0);
        // b reads the row at the moment the renewal was sent (earliest possible).
        assert_eq!(b.decide(Some(&c.new), t0), Step::Wait);
        // a's renewals all fail from now on (store unreachable for a).
        let last_active =
            (0..20_000).map(|ms| t0 + Duration::from_millis(ms)).rfind(|t| a.is_active(*t).is_some()).unwrap();
        let first_takeover = (0..20_000)
            .map(|ms| t0 + Duration::from_millis(ms))
            .find(|t| matches!(b.clone().decide(Some(&c.new), *t), Step::Write(_)))
            .unwrap();
        assert!(
            first_takeover - last_active >= TTL / 3 - Duration::from_millis(1),
            "margin {:?}",
            first_takeover - last_active
        );
    }
}
