//! The checkpoint saver's generation side: scylla-cdc's `CDCCheckpointSaver`
//! adapter and the start of a generation, which first has the finished
//! generation's leftover batches handled (`leftover`), then records and
//! writes the new generation, then reads its stream groups for the stall
//! watchdog (`generations`).
//!
//! Guarantees: a new generation is recorded only after what the finished
//! one left was handled (an error leaves the old generation current, so it
//! is read again); a generation is never moved backwards here (only an
//! operator's rewind into an earlier one does, `LeaseCheckpointSaver::rewind`).

use async_trait::async_trait;
use scylla::deserialize::value::DeserializeValue;
use scylla::deserialize::FrameSlice;
use scylla::frame::response::result::{ColumnType, NativeType};
use scylla_cdc::cdc_types::{GenerationTimestamp, StreamID};
use scylla_cdc::checkpoints::{CDCCheckpointSaver, Checkpoint};
use std::sync::Weak;
use std::time::Duration;

use super::{fenced_error, Flushed, LeaseCheckpointSaver};
use crate::relay::cdc::generations;
use crate::relay::cdc::progress::StreamKey;

/// Milliseconds since the epoch of a scylla-cdc generation.
pub fn generation_ms(g: &GenerationTimestamp) -> i64 {
    // Its field is private; `Display` prints the milliseconds.
    g.to_string().parse().unwrap_or(0)
}

/// A scylla-cdc generation at `ms` since the epoch.
pub fn generation_at(ms: i64) -> GenerationTimestamp {
    let bytes = ms.to_be_bytes();
    GenerationTimestamp::deserialize(&ColumnType::Native(NativeType::Timestamp), Some(FrameSlice::new_borrowed(&bytes)))
        .expect("8 bytes always deserialise as a CQL timestamp")
}

impl LeaseCheckpointSaver {
    /// A generation starts: recorded and written at once (if newer).
    pub async fn start_generation(&self, ms: i64) -> anyhow::Result<()> {
        let ends = self.state.lock().unwrap().generation().is_some_and(|g| g < ms);
        let hook = self.generation_end.lock().unwrap().as_ref().and_then(Weak::upgrade);
        if let (true, Some(hook)) = (ends, hook) {
            for stream in hook.generation_ends(self.run_id()).await? {
                self.release(&stream);
            }
        }
        let started = self.state.lock().unwrap().start_generation(ms);
        if let Some(dropped) = started {
            self.activity.forget_streams();
            for (stream, time) in dropped {
                tracing::error!(consumer = %self.name, stream = %stream.hex(), time_ms = time, generation_ms = ms,
                    "a CDC batch of the finished generation never got its cdc$end_of_batch row: its events were not handled (scylla-cdc does not read a finished generation again); check the CDC log of this stream at that time");
            }
        }
        match self.save_generation().await? {
            Flushed::Fenced { current_epoch } => Err(fenced_error(&self.name, current_epoch)),
            Flushed::Saved(_) => {
                if self.activity.groups_of() != Some(ms) {
                    self.load_groups(ms).await;
                }
                Ok(())
            }
        }
    }

    /// The current generation's stream groups when they are not known (a
    /// failed read, or a rewind into an earlier generation), at most once a
    /// minute: until then the watchdog keeps its fallback and the
    /// reconciler's read-through point stays at the generation's floor.
    pub async fn read_groups_again(&self) {
        let Some(ms) = self.state.lock().unwrap().generation() else { return };
        let recent = self.groups_read_at.lock().unwrap().is_some_and(|t| t.elapsed() < Duration::from_secs(60));
        if self.activity.groups_of() != Some(ms) && !recent {
            self.load_groups(ms).await;
        }
    }

    /// The generation's stream groups, for the watchdog and the
    /// reconciler's read-through point (scylla-cdc starts its readers only
    /// after this returns). Not loaded: the watchdog keeps its cautious
    /// fallback and the read-through point the floor, reported once per try.
    async fn load_groups(&self, ms: i64) {
        *self.groups_read_at.lock().unwrap() = Some(std::time::Instant::now());
        let load = generations::load(&self.session, &self.keyspace, generations::DESCRIPTIONS_TABLE, ms);
        let err = match generations::within_limit(load).await {
            // Not if a newer generation started meanwhile (its own read
            // set its groups; a retry's answer for the older one is stale).
            Ok(g) if self.state.lock().unwrap().generation() == Some(ms) => return self.activity.set_groups(ms, g),
            Ok(_) => return,
            Err(e) => e,
        };
        tracing::warn!(consumer = %self.name, generation_ms = ms, error = %err,
            "cannot read the CDC generation's stream groups (tried again in a minute): the stall watchdog will not notice a stream group stuck before its first row while others deliver, and appends of unknown outcome whose CDC rows were not seen wait for the groups to be read before the reconciler publishes them");
    }
}

/// scylla-cdc's side: a thin adapter over `record` / `start_generation`.
#[async_trait]
impl CDCCheckpointSaver for LeaseCheckpointSaver {
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let ms = i64::try_from(checkpoint.timestamp.as_millis()).unwrap_or(i64::MAX);
        self.record(&StreamKey::of(&checkpoint.stream_id), ms).map(|_| ())
    }

    /// Written at once: scylla-cdc calls it before starting a generation's readers.
    async fn save_new_generation(&self, generation: &GenerationTimestamp) -> anyhow::Result<()> {
        self.start_generation(generation_ms(generation)).await
    }

    async fn load_last_generation(&self) -> anyhow::Result<Option<GenerationTimestamp>> {
        Ok(self.state.lock().unwrap().generation().map(generation_at))
    }

    async fn load_last_checkpoint(&self, stream_id: &StreamID) -> anyhow::Result<Option<Duration>> {
        Ok(self
            .state
            .lock()
            .unwrap()
            .loaded(&StreamKey::of(stream_id))
            .map(|ms| Duration::from_millis(ms.max(0) as u64)))
    }
}
