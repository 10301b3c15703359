//! Topic naming: which topic an event goes to, and every topic of a routing.
//!
//! Guarantee: every event of one aggregate goes to one topic with the
//! aggregate id as key under the default `per-aggregate` routing, so its
//! events stay in one partition in order. `per-event-type` reproduces the
//! seeds' topics and gives up cross-type order (documented trade-off).
//!
//! Here, below the relay, so that loading the configuration can check
//! `relay.progress_topic` against the event topics; `relay::topics`
//! re-exports it. Plain arguments only (`per_event_type`, `prefix`:
//! `KafkaConfig::per_event_type()` and `kafka.topic_prefix`); event type
//! names come from the domain (`OrderEvent::CREATED`, ...,
//! `domain::EVENT_TYPES`). The seeds' topic names below are topic names,
//! not event types.

use crate::domain::{Aggregate, Customer, CustomerEvent, Order, OrderEvent};

use super::{ConfigError, KafkaConfig, RelayConfig};

/// The seeds' per-event-type topics.
pub const ORDER_CREATED_TOPIC: &str = "OrderCreated";
pub const ORDER_UPDATED_TOPIC: &str = "OrderUpdated";
pub const ORDER_CANCELLED_TOPIC: &str = "OrderCancelled";
pub const CUSTOMER_REGISTERED_TOPIC: &str = "CustomerRegistered";
pub const CUSTOMER_UPDATED_TOPIC: &str = "CustomerUpdated";

/// Every per-event-type topic, in the seeds' order.
pub const SEED_TOPICS: [&str; 5] = [
    ORDER_CREATED_TOPIC,
    ORDER_UPDATED_TOPIC,
    ORDER_CANCELLED_TOPIC,
    CUSTOMER_REGISTERED_TOPIC,
    CUSTOMER_UPDATED_TOPIC,
];

/// The seeds' topic of one event type (an unknown type keeps its own name).
pub fn seed_topic(event_type: &str) -> &str {
    match event_type {
        OrderEvent::CREATED => ORDER_CREATED_TOPIC,
        OrderEvent::CANCELLED => ORDER_CANCELLED_TOPIC,
        OrderEvent::ITEMS_UPDATED | OrderEvent::CONFIRMED | OrderEvent::SHIPPED | OrderEvent::DELIVERED => {
            ORDER_UPDATED_TOPIC
        }
        CustomerEvent::REGISTERED => CUSTOMER_REGISTERED_TOPIC,
        CustomerEvent::EMAIL_CHANGED => CUSTOMER_UPDATED_TOPIC,
        other => other,
    }
}

/// Topic for one event.
pub fn topic_for(per_event_type: bool, prefix: &str, aggregate_type: &str, event_type: &str) -> String {
    if per_event_type {
        format!("{prefix}{}", seed_topic(event_type))
    } else {
        format!("{prefix}{aggregate_type}-events")
    }
}

/// Every topic the relay may write to, with what goes there.
pub fn all_topics(per_event_type: bool, prefix: &str) -> Vec<(String, &'static str)> {
    if per_event_type {
        SEED_TOPICS.into_iter().map(|t| (format!("{prefix}{t}"), "events of this type")).collect()
    } else {
        vec![
            (topic_for(false, prefix, Order::TYPE, ""), "all Order events"),
            (topic_for(false, prefix, Customer::TYPE, ""), "all Customer events"),
        ]
    }
}

/// The names of [`all_topics`].
pub fn topic_names(per_event_type: bool, prefix: &str) -> Vec<String> {
    all_topics(per_event_type, prefix).into_iter().map(|(t, _)| t).collect()
}

/// `relay.progress_topic` is none of the event topics: its records would
/// be mixed into that topic's events. Checked whatever `relay.delivery`
/// says (like the name itself): the default never collides, so only a name
/// set by hand can, a mistake in every mode that would spring when the
/// delivery becomes exactly-once.
pub(super) fn validate_progress_topic(kafka: &KafkaConfig, relay: &RelayConfig) -> Result<(), ConfigError> {
    let topic = &relay.progress_topic;
    if topic_names(kafka.per_event_type(), &kafka.topic_prefix).contains(topic) {
        return Err(ConfigError(format!(
            "relay.progress_topic = {topic:?}: an event topic (of kafka.topic_routing and kafka.topic_prefix); the relay's progress records would be mixed into its events: choose another name"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{validate_topic, MAX_TOPIC_PREFIX_LEN};
    use crate::domain::EVENT_TYPES;

    #[test]
    fn routing() {
        assert_eq!(topic_for(false, "", "order", "OrderShipped"), "order-events");
        assert_eq!(topic_for(false, "prod.", "customer", "CustomerRegistered"), "prod.customer-events");
        assert_eq!(topic_for(true, "", "order", "OrderShipped"), "OrderUpdated");
        assert_eq!(topic_for(true, "", "order", "OrderCancelled"), "OrderCancelled");
        assert_eq!(topic_for(true, "", "order", "OrderCreated"), "OrderCreated");
        assert_eq!(topic_for(true, "", "customer", "CustomerEmailChanged"), "CustomerUpdated");
        assert_eq!(all_topics(false, "").len(), 2);
        assert_eq!(all_topics(true, "").len(), 5);
    }

    #[test]
    fn every_domain_event_type_has_a_seed_topic() {
        for t in EVENT_TYPES {
            assert!(SEED_TOPICS.contains(&seed_topic(t)), "{t} -> {}", seed_topic(t));
        }
        let used: std::collections::BTreeSet<_> = EVENT_TYPES.iter().map(|t| seed_topic(t)).collect();
        assert_eq!(used.len(), SEED_TOPICS.len(), "every seed topic receives some event type");
    }

    /// `config` checks only the prefix; this keeps every name it allows legal.
    #[test]
    fn the_longest_allowed_prefix_gives_legal_topic_names() {
        let prefix = "p".repeat(MAX_TOPIC_PREFIX_LEN);
        for per_event_type in [false, true] {
            for t in topic_names(per_event_type, &prefix) {
                validate_topic(&t).unwrap();
            }
        }
    }
}
