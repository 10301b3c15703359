//! The term loop's pure helpers (`exhausted`, `solo_refused`) against a
//! real `Window`: a permanent failure is given up only after a solo resend
//! that actually reached the producer.

use super::*;

struct Ev(i64, AggKey);

impl Fenced for Ev {
    fn position(&self) -> i64 {
        self.0
    }
    fn aggregate(&self) -> &AggKey {
        &self.1
    }
}

/// Review finding: a solo resend refused by a full producer queue left
/// the slot marked resent alone (and `Window::fail` of the requeued,
/// ready slot did nothing), so the next solo step gave it up without
/// the confirming resend (under `skip`, dead-lettered it while it stayed
/// ready to be published).
#[test]
fn a_solo_resend_refused_by_a_full_queue_does_not_count() {
    let max = 1;
    let mut w = Window::new(0, 10);
    w.push(Ev(1, "a".into()));
    let (slot, _) = w.take_ready().unwrap();
    assert!(w.fail(slot), "refused by the broker: a suspect");
    let mut resent_alone = BTreeSet::new();
    assert!(!exhausted(&w, &resent_alone, slot, max), "not resent alone yet");
    // The solo step: retry, take, mark, and the producer's queue is full.
    assert!(w.retry(slot));
    assert!(w.take(slot).is_some());
    let newly = resent_alone.insert(slot);
    solo_refused(&mut w, &mut resent_alone, slot, newly);
    assert_eq!(w.state(slot), Some(crate::relay::window::State::Failed), "only the solo path sends it again");
    assert!(w.take_ready().is_none(), "never in a batch");
    assert_eq!((w.attempts(slot), w.in_flight()), (1, 0));
    assert!(!exhausted(&w, &resent_alone, slot, max), "no solo resend happened: not given up");
    // The next solo step resends it; refused again, it may be given up.
    assert!(w.retry(slot));
    assert!(w.take(slot).is_some());
    resent_alone.insert(slot);
    assert!(w.fail(slot));
    assert!(exhausted(&w, &resent_alone, slot, max));
}
