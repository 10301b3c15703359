//! The driver's retry policy for this store: the driver's default, except
//! that a request not marked idempotent is never sent again after
//! `Unavailable`.
//!
//! Why: the default policy retries `Unavailable` on the next node whatever
//! the request. A conditional write (every LWT here) can be answered
//! `Unavailable` after a quorum accepted its proposal (the commit phase
//! found too few live replicas; the next Paxos round completes it), and the
//! blind retry then finds its own write and answers "not applied": an
//! append reported as a conflict, its command run again. Not retried, the
//! store sees the first answer: an append resolves it
//! (`append::unavailable_after_accept`); the other conditional writes
//! return it as an error their callers retry.
//!
//! Guarantee: reads and other idempotent requests keep the default retries;
//! no non-idempotent request is retried on `Unavailable`.

use scylla::errors::{DbError, RequestAttemptError};
use scylla::policies::retry::{DefaultRetrySession, RequestInfo, RetryDecision, RetryPolicy, RetrySession};

#[derive(Debug, Default)]
pub struct NoBlindRetry;

impl RetryPolicy for NoBlindRetry {
    fn new_session(&self) -> Box<dyn RetrySession> {
        Box::new(NoBlindRetrySession(DefaultRetrySession::new()))
    }
}

struct NoBlindRetrySession(DefaultRetrySession);

/// A request not marked idempotent that failed with `Unavailable`: its
/// outcome is the caller's to resolve, never a blind second send.
fn never_again(is_idempotent: bool, error: &RequestAttemptError) -> bool {
    !is_idempotent && unavailable(error)
}

/// Too few live replicas for the consistency asked (a conditional write
/// may have been accepted by a quorum before it).
pub(super) fn unavailable(error: &RequestAttemptError) -> bool {
    matches!(error, RequestAttemptError::DbError(DbError::Unavailable { .. }, _))
}

impl RetrySession for NoBlindRetrySession {
    fn decide_should_retry(&mut self, info: RequestInfo) -> RetryDecision {
        if never_again(info.is_idempotent, info.error) {
            return RetryDecision::DontRetry;
        }
        self.0.decide_should_retry(info)
    }

    fn reset(&mut self) {
        self.0.reset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::statement::Consistency;

    /// Review finding: the driver's default policy re-sent a conditional
    /// write answered `Unavailable` (possibly applied) to another node.
    #[test]
    fn a_conditional_write_answered_unavailable_is_not_sent_again() {
        let unavailable = RequestAttemptError::DbError(
            DbError::Unavailable { consistency: Consistency::LocalQuorum, required: 2, alive: 1 },
            "injected".into(),
        );
        assert!(never_again(false, &unavailable));
        // A read (idempotent) keeps the default retry on the next node.
        assert!(!never_again(true, &unavailable));
        // Everything else as the default (a bootstrapping node is tried past).
        let booting = RequestAttemptError::DbError(DbError::IsBootstrapping, "injected".into());
        assert!(!never_again(false, &booting));
    }
}
