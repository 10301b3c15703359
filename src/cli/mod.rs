//! The subcommand handlers of `outboxd` (bin-private), one file per command
//! group; `main.rs` parses the command line and calls them.
//!
//! Guarantee: every handler returns the process exit code or a [`Failure`]
//! carrying it: 0 success, 1 infrastructure failure (store/broker), 2 bad
//! input (arguments, configuration, a command the domain refuses, unknown
//! id), 3 version conflict. Input is validated before the store is touched.

#[macro_use]
pub mod stdout;

pub mod commands;
pub mod config;
pub mod customer;
pub mod dlq;
pub mod order;
pub mod projections;
pub mod redact;
pub mod relay;
pub mod relay_ops;
pub mod store;
pub mod wait;

use anyhow::Context;
use uuid::Uuid;

use outboxd::app::{AppError, CommandService, ServiceOptions};
use outboxd::config::Config;
use outboxd::daemon::DaemonError;
use outboxd::envelope::Metadata;
use outboxd::store::{DynStore, StoreError};

use crate::Meta;

/// A failure with its exit code.
pub struct Failure {
    pub code: u8,
    pub err: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let err = e.into();
        let code = match err.downcast_ref::<AppError>() {
            Some(AppError::Domain(_)) | Some(AppError::Decode(_)) => 2,
            Some(AppError::Store(e)) if refused(e) => 2,
            _ if err.downcast_ref::<StoreError>().is_some_and(refused) => 2,
            // `outboxd run` fails with the store's error inside its own.
            _ if matches!(err.downcast_ref::<DaemonError>(), Some(DaemonError::Store(e)) if refused(e)) => 2,
            // An address `outboxd run` cannot listen on: the configuration must change.
            _ if matches!(err.downcast_ref::<DaemonError>(), Some(DaemonError::Listen(_))) => 2,
            Some(AppError::Conflict { .. }) => 3,
            _ if err.downcast_ref::<outboxd::config::ConfigError>().is_some() => 2,
            _ if err.downcast_ref::<outboxd::domain::DomainError>().is_some() => 2,
            _ if err.downcast_ref::<BadInput>().is_some() => 2,
            _ => 1,
        };
        Failure { code, err }
    }
}

/// An unknown id, or what this store cannot do or open: not retryable (exit 2).
fn refused(e: &StoreError) -> bool {
    matches!(e, StoreError::NotFound(_) | StoreError::Unsupported { .. })
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl Failure {
    fn context(mut self, c: String) -> Self {
        self.err = self.err.context(c);
        self
    }
}

pub async fn open(cfg: &Config) -> Result<DynStore, Failure> {
    Ok(outboxd::store::open(cfg).await.context("cannot open the store")?)
}

/// Opens the store for a command that only reads it (or acts on what is in
/// it): a SQLite file that does not exist is an error (a mistyped path would
/// otherwise read as an empty store, and be created), exit 2.
pub async fn open_existing(cfg: &Config) -> Result<DynStore, Failure> {
    refuse_missing(cfg)?;
    open(cfg).await
}

/// Opens an existing store for a command that only reads: a SQLite file at
/// an older schema version is refused (exit 2), never upgraded. Opening
/// migrates, and an older daemon using the file would be refused at its
/// next start ("newer than this build") because someone listed its events.
pub async fn open_to_read(cfg: &Config) -> Result<DynStore, Failure> {
    refuse_missing(cfg)?;
    if cfg.store.backend == outboxd::config::Backend::Sqlite {
        use outboxd::store::sqlite::schema::{version_of, SCHEMA_VERSION};
        let path = &cfg.store.path;
        // A file that cannot be read this way gets `open`'s own error.
        if let Some(v) = version_of(path).ok().filter(|v| *v < SCHEMA_VERSION) {
            return Err(BadInput(format!(
                "store.path {}: schema version {v}, older than this build's ({SCHEMA_VERSION}); a command that only reads does not upgrade it (a daemon of the build that wrote it may still use it): read it with that build, or upgrade it with `outboxd schema`",
                path.display()
            ))
            .into());
        }
    }
    open(cfg).await
}

/// A SQLite path with no store there is refused (exit 2), never created.
pub fn refuse_missing(cfg: &Config) -> Result<(), Failure> {
    let path = &cfg.store.path;
    if cfg.store.backend == outboxd::config::Backend::Sqlite && !path.exists() {
        return Err(BadInput(format!(
            "store.path {}: no store there (a create or register command, or `outboxd schema`, creates one)",
            path.display()
        ))
        .into());
    }
    Ok(())
}

/// Opens the store for a command: only one that creates an aggregate
/// (`creates`) may make a new store; any other is refused on a mistyped
/// path (exit 2) without creating the file or its directories.
pub async fn open_for(cfg: &Config, creates: bool) -> Result<DynStore, Failure> {
    if creates {
        open(cfg).await
    } else {
        open_existing(cfg).await
    }
}

pub fn service(cfg: &Config, store: DynStore) -> CommandService {
    CommandService::new(store, ServiceOptions::from(&cfg.service))
}

pub fn meta(m: &Meta) -> Metadata {
    Metadata { correlation_id: m.correlation_id.unwrap_or_else(Uuid::now_v7), causation_id: None, trace: None }
}
