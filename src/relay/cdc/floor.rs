//! The resume floor of a CDC generation (pure state): where a stream that
//! has no progress row resumes after a restart.
//!
//! scylla-cdc reads a stream group from the lower time bound it is given,
//! raised to the oldest saved progress of the group's streams; a group none
//! of whose streams has a row starts at that bound. A group whose reader
//! started late in the run that crashed (its statement preparation slower
//! than a checkpoint interval) never had its streams' rows written, while
//! the other groups' progress was written far ahead. Resuming from the
//! oldest row would then skip that group's changes between where it had to
//! start and that row. So the generation row (`stream_id = 0x`) also holds
//! the floor: the lower bound the generation was first read from, and a
//! restart's lower bound never passes it ([`super::start::start_point`]).
//! Groups with rows still resume from their own progress; only a group
//! without rows reads from the floor (duplicates with the same `ce_id`,
//! never a gap).
//!
//! Guarantees:
//! - A loaded floor is kept for the whole generation (a restart within it
//!   never moves it).
//! - A generation without one (rows written before outboxd kept a floor)
//!   gets the lower bound of the run that reads it now.
//! - A newer generation's floor is where scylla-cdc reads it from: the
//!   later of the run's lower bound and the generation's start.
//! - An operator's rewind lowers it to the rewind time, never raises it.
//! - [`Floor::dirty`] says when the generation row must be written again.

/// The floor of the current generation (ms since the epoch).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    value: Option<i64>,
    /// The value the table holds.
    saved: Option<i64>,
    /// The lower bound of the reader run in progress.
    run_lower: Option<i64>,
}

impl Floor {
    /// As read from the generation row (`None`: no row, or none written).
    pub fn loaded(value: Option<i64>) -> Floor {
        Floor { value, saved: value, run_lower: None }
    }

    /// Nothing of it is in the table (the state was taken from elsewhere).
    pub fn unsaved(self) -> Floor {
        Floor { saved: None, ..self }
    }

    /// A reader run starts from `lower` (ms): the floor of a generation
    /// that has none yet.
    pub fn run_starts(&mut self, lower: i64) {
        self.run_lower = Some(lower);
        if self.value.is_none() {
            self.value = Some(lower);
        }
    }

    /// A newer generation starting at `generation` (ms) is read from here on.
    pub fn new_generation(&mut self, generation: i64) {
        self.value = Some(self.run_lower.map_or(generation, |l| l.max(generation)));
    }

    pub fn get(&self) -> Option<i64> {
        self.value
    }

    /// An operator's rewind to `to` (ms): a stream without a row resumes
    /// no later than there either.
    pub fn rewind(&mut self, to: i64) {
        self.value = Some(self.value.map_or(to, |v| v.min(to)));
    }

    /// The table does not hold the current value.
    pub fn dirty(&self) -> bool {
        self.value.is_some() && self.value != self.saved
    }

    /// The table now holds `value`.
    pub fn mark_saved(&mut self, value: Option<i64>) {
        self.saved = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_floor_stays_for_the_generation() {
        let mut f = Floor::loaded(Some(1_000));
        f.run_starts(9_000);
        assert_eq!((f.get(), f.dirty()), (Some(1_000), false), "a restart keeps it");
        assert!(Floor::loaded(Some(1_000)).unsaved().dirty(), "taken from elsewhere: written again");
    }

    #[test]
    fn a_generation_without_one_gets_the_runs_lower_bound() {
        let mut f = Floor::loaded(None);
        assert!(!f.dirty(), "nothing to write before a run starts");
        f.run_starts(5_000);
        assert_eq!((f.get(), f.dirty()), (Some(5_000), true));
        f.mark_saved(Some(5_000));
        assert!(!f.dirty());
        f.run_starts(7_000);
        assert_eq!(f.get(), Some(5_000), "a later run of the same process keeps it");
    }

    #[test]
    fn a_newer_generation_is_read_from_the_later_of_its_start_and_the_runs_bound() {
        let mut f = Floor::loaded(Some(1_000));
        f.run_starts(3_000);
        f.new_generation(8_000);
        assert_eq!((f.get(), f.dirty()), (Some(8_000), true));
        f.mark_saved(Some(8_000));
        // A run that starts after the generation's own start (a process
        // started within it, the table holding no generation row).
        let mut f = Floor::loaded(None);
        f.run_starts(9_000);
        f.new_generation(8_000);
        assert_eq!(f.get(), Some(9_000));
    }

    #[test]
    fn a_rewind_lowers_the_floor_and_never_raises_it() {
        let mut f = Floor::loaded(Some(5_000));
        f.rewind(3_000);
        assert_eq!((f.get(), f.dirty()), (Some(3_000), true));
        f.mark_saved(Some(3_000));
        f.rewind(4_000);
        assert_eq!((f.get(), f.dirty()), (Some(3_000), false), "a later time leaves it");
        let mut none = Floor::loaded(None);
        none.rewind(2_000);
        assert_eq!((none.get(), none.dirty()), (Some(2_000), true));
    }
}
