//! How an operator request's publication on the CDC relay ended, and why
//! one aggregate's replay did not: refused for that aggregate alone (a replay
//! of every parked aggregate goes on past it) or stopped by the store or the
//! lease (the request ends there).

use serde_json::{json, Value};

use crate::relay::deliver::Delivered;
use crate::store::feed::{FeedRow, RawEvent};
use crate::store::requests::RequestStatus;

/// Why one aggregate's replay did not finish (it stays parked).
#[derive(Debug)]
pub(super) enum NotReplayed {
    /// This aggregate cannot be replayed as it is (not parked, a held row
    /// that cannot be decoded, an event that still fails for good).
    Refused(String),
    /// The store or the lease failed: nothing more is carried out.
    Stopped(String),
}

impl From<String> for NotReplayed {
    fn from(e: String) -> Self {
        NotReplayed::Stopped(e)
    }
}

impl From<NotReplayed> for String {
    fn from(e: NotReplayed) -> Self {
        match e {
            NotReplayed::Refused(s) | NotReplayed::Stopped(s) => s,
        }
    }
}

/// How one operator-requested publication ended: `Ok(true)` confirmed,
/// `Ok(false)` on shutdown, `Err` the reason it was not (`not_published`
/// when it still fails for good).
pub(super) fn confirmed(d: Delivered, not_published: impl FnOnce() -> String) -> Result<bool, NotReplayed> {
    match d {
        Delivered::Delivered => Ok(true),
        Delivered::Shutdown => Ok(false),
        Delivered::Fenced => Err(NotReplayed::Stopped("another instance holds the relay lease".into())),
        Delivered::Held | Delivered::Parked | Delivered::DeadLettered => Err(NotReplayed::Refused(not_published())),
    }
}

/// The held rows as events, or the reason nothing may be published: a row
/// `event_store` cannot decode must be repaired first.
pub(super) fn readable(agg: &str, rows: Vec<FeedRow>) -> Result<Vec<RawEvent>, String> {
    rows.into_iter()
        .map(|row| match row {
            FeedRow::Event(e) => Ok(e),
            FeedRow::Unreadable(u) => Err(format!(
                "event {agg}#{} cannot be decoded from event_store ({}); nothing was published: repair the row, then replay",
                u.sequence.unwrap_or_default(),
                u.error
            )),
        })
        .collect()
}

pub(super) fn failed(error: String) -> (RequestStatus, Value) {
    (RequestStatus::Failed, json!({ "error": error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Last read: a replay of every parked aggregate went on past any
    /// error, a lost lease or a failing store too, listing it under
    /// `failed` and reporting the request done. Only an aggregate's own
    /// refusal lets the others go on.
    #[test]
    fn a_lost_lease_stops_and_an_event_failing_again_is_the_aggregates_own() {
        let why = || "still fails".to_string();
        assert!(matches!(confirmed(Delivered::Fenced, why), Err(NotReplayed::Stopped(_))));
        for d in [Delivered::Held, Delivered::Parked, Delivered::DeadLettered] {
            assert!(matches!(confirmed(d, why), Err(NotReplayed::Refused(m)) if m == "still fails"));
        }
        assert!(matches!(confirmed(Delivered::Delivered, why), Ok(true)));
        assert!(matches!(confirmed(Delivered::Shutdown, why), Ok(false)));
        assert!(matches!(NotReplayed::from("store down".to_string()), NotReplayed::Stopped(_)));
    }
}
