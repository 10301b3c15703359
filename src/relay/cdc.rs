//! Scylla CDC feed (scylla-cdc): CDC rows of `event_store` -> envelopes -> `Deliverer`.
