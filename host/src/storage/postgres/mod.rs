//! The PostgreSQL backend's connection: a pool on the operator's database and the versioned
//! schema the host creates and migrates at start (`migrations/`, embedded in the binary).
//!
//! Several hosts share one database, so migrating is safe to start on all of them at once:
//! sqlx takes an advisory lock around the run, and a migration already applied is skipped
//! (one whose text changed since it was applied is refused, never re-run).

mod backfill;
#[cfg(test)]
pub mod cluster;
pub mod events;
pub mod follow;
#[cfg(test)]
mod follow_tests;
#[cfg(test)]
mod lease_tests;
pub mod leases;
mod listing;
mod notify;
mod plugins;
mod runners;
mod shared_queue;
mod stat_cells;
mod store;
pub mod tally;
pub mod tasks;
#[cfg(test)]
mod tests;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::StorageError;
pub use store::PgStorage;

/// The schema, oldest first; a new version is a new file, never an edit of an applied one.
pub static MIGRATOR: Migrator = sqlx::migrate!("src/storage/postgres/migrations");

/// How long a caller waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how wide: `url` is a libpq-style `postgres://user:password@host:port/db`.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub pool_size: u32,
}

/// Connects a pool and brings the schema up to [`MIGRATOR`]'s latest version.
pub async fn connect(settings: &PgSettings) -> Result<PgPool, StorageError> {
    let options: PgConnectOptions = settings.url.parse().map_err(|e: sqlx::Error| {
        StorageError::Backend(format!("the PostgreSQL URL is not valid: {e}"))
    })?;
    // The planner prices a claim's walk of the ready index before its LIMIT, high enough to
    // JIT-compile it: 16 ms of compilation for a 0.1 ms query, on every claim.
    let options = options.options([("jit", "off")]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.pool_size.max(1))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(pg_error)?;
    MIGRATOR.run(&pool).await.map_err(migrate_error)?;
    backfill::dependencies(&pool).await?;
    backfill::cells_by_agent(&pool).await?;
    Ok(pool)
}

/// A driver error as the storage contract names it: the database out of reach (a refused or
/// lost connection, a pool exhausted past its timeout) is `Unavailable`; anything else is a
/// backend failure, for the logs.
pub(crate) fn pg_error(e: sqlx::Error) -> StorageError {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            StorageError::Unavailable(format!("PostgreSQL: {e}"))
        }
        other => StorageError::Backend(format!("PostgreSQL: {other}")),
    }
}

fn migrate_error(e: MigrateError) -> StorageError {
    match e {
        MigrateError::Execute(inner) => pg_error(inner),
        other => StorageError::Backend(format!("PostgreSQL schema migration: {other}")),
    }
}
