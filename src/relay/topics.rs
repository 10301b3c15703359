//! Topic routing: which topic an event goes to.
//!
//! Guarantee: every event of one aggregate goes to one topic with the
//! aggregate id as key under the default `per-aggregate` routing, so its
//! events stay in one partition in order. `per-event-type` reproduces the
//! seeds' topics and gives up cross-type order (documented trade-off).
//!
//! The naming itself lives in `config::topics` (loading the configuration
//! checks `relay.progress_topic` against it) and is re-exported here; this
//! file adds the topic of an envelope.

use crate::envelope::EventEnvelope;

pub use crate::config::topics::{
    all_topics, seed_topic, topic_for, topic_names, CUSTOMER_REGISTERED_TOPIC, CUSTOMER_UPDATED_TOPIC,
    ORDER_CANCELLED_TOPIC, ORDER_CREATED_TOPIC, ORDER_UPDATED_TOPIC, SEED_TOPICS,
};

/// Topic of one envelope.
pub fn topic_of(per_event_type: bool, prefix: &str, e: &EventEnvelope) -> String {
    topic_for(per_event_type, prefix, &e.aggregate_type, &e.event_type)
}
