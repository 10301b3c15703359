//! CQL backend (ScyllaDB in production, Apache Cassandra in tests).

use std::sync::Arc;
use crate::config::CqlConfig;
use super::StoreError;

/// Placeholder until the CQL backend lands: refuses clearly.
pub struct CqlStore;

impl CqlStore {
    pub async fn connect(_cfg: &CqlConfig) -> Result<Arc<super::sqlite::SqliteStore>, StoreError> {
        Err(StoreError::Unsupported { backend: "cql", what: "the CQL backend is not built yet".into() })
    }
}
