//! `PublishError`: why handing one record to Kafka failed, classified once
//! (transient: may heal by waiting; permanent: can never succeed as it is).
//!
//! Guarantee: the classification comes from [`crate::relay::retry::IsTransient`]
//! over librdkafka's error codes, the single place that decides it; `kind`
//! is a short stable label for metrics (`message_size_too_large`, ...).

use rdkafka::error::KafkaError;

use crate::relay::retry::IsTransient;

/// Why a publish failed, already classified.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PublishError {
    pub transient: bool,
    /// Short stable label for metrics (`message_size_too_large`, `timeout`, ...).
    pub kind: String,
    pub message: String,
}

impl PublishError {
    pub fn from_kafka(e: &KafkaError) -> Self {
        let kind = e.rdkafka_error_code().map(|c| format!("{c:?}")).unwrap_or_else(|| "client".into());
        PublishError { transient: e.is_transient(), kind: snake(&kind), message: e.to_string() }
    }
    pub fn permanent(kind: &str, message: impl Into<String>) -> Self {
        PublishError { transient: false, kind: kind.into(), message: message.into() }
    }
    pub fn transient(kind: &str, message: impl Into<String>) -> Self {
        PublishError { transient: true, kind: kind.into(), message: message.into() }
    }
}

impl IsTransient for PublishError {
    fn is_transient(&self) -> bool {
        self.transient
    }
}

fn snake(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
