//! Topic routing: which topic an event goes to.
//!
//! Guarantee: every event of one aggregate goes to one topic with the
//! aggregate id as key under the default `per-aggregate` routing, so its
//! events stay in one partition in order. `per-event-type` reproduces the
//! seeds' topics and gives up cross-type order (documented trade-off).

use crate::config::{Config, TopicRouting};
use crate::envelope::EventEnvelope;

/// Topic for one event.
pub fn topic_for(routing: TopicRouting, prefix: &str, aggregate_type: &str, event_type: &str) -> String {
    match routing {
        TopicRouting::PerAggregate => format!("{prefix}{aggregate_type}-events"),
        TopicRouting::PerEventType => {
            let t = match event_type {
                "OrderItemsUpdated" | "OrderConfirmed" | "OrderShipped" | "OrderDelivered" => "OrderUpdated",
                "CustomerEmailChanged" => "CustomerUpdated",
                other => other,
            };
            format!("{prefix}{t}")
        }
    }
}

pub fn topic_of(cfg: &crate::config::KafkaConfig, e: &EventEnvelope) -> String {
    topic_for(cfg.topic_routing, &cfg.topic_prefix, &e.aggregate_type, &e.event_type)
}

/// Every topic the relay may write to, with what goes there.
pub fn all_topics(cfg: &Config) -> Vec<(String, &'static str)> {
    let k = &cfg.kafka;
    match k.topic_routing {
        TopicRouting::PerAggregate => vec![
            (topic_for(k.topic_routing, &k.topic_prefix, "order", ""), "all Order events"),
            (topic_for(k.topic_routing, &k.topic_prefix, "customer", ""), "all Customer events"),
        ],
        TopicRouting::PerEventType => {
            ["OrderCreated", "OrderUpdated", "OrderCancelled", "CustomerRegistered", "CustomerUpdated"]
                .into_iter()
                .map(|t| (format!("{}{t}", k.topic_prefix), "events of this type"))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing() {
        assert_eq!(topic_for(TopicRouting::PerAggregate, "", "order", "OrderShipped"), "order-events");
        assert_eq!(
            topic_for(TopicRouting::PerAggregate, "prod.", "customer", "CustomerRegistered"),
            "prod.customer-events"
        );
        assert_eq!(topic_for(TopicRouting::PerEventType, "", "order", "OrderShipped"), "OrderUpdated");
        assert_eq!(topic_for(TopicRouting::PerEventType, "", "order", "OrderCancelled"), "OrderCancelled");
        assert_eq!(topic_for(TopicRouting::PerEventType, "", "order", "OrderCreated"), "OrderCreated");
        let mut c = Config::default();
        assert_eq!(all_topics(&c).len(), 2);
        c.kafka.topic_routing = TopicRouting::PerEventType;
        assert_eq!(all_topics(&c).len(), 5);
    }
}
