//! [`PluginStore`] on PostgreSQL: one row per plugin name in `plugins`, the component in the
//! row, generations from the `plugin_generation` sequence. A change notifies
//! [`PLUGINS_CHANNEL`] when it commits; every host listens and loads what changed.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::notify::listen;
use super::pg_error;
use crate::storage::StorageError;
use crate::storage::plugin_store::{
    PluginHead, PluginRecord, PluginState, PluginStore, PutOutcome,
};

/// The channel plugin changes are announced on (the payload is the plugin's name).
pub const PLUGINS_CHANNEL: &str = "taskhost_plugins";

pub struct PgPlugins {
    pool: PgPool,
    changes: Arc<Notify>,
    listener: JoinHandle<()>,
}

impl PgPlugins {
    pub fn new(pool: PgPool) -> Self {
        let changes = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), PLUGINS_CHANNEL, changes.clone()));
        Self {
            pool,
            changes,
            listener,
        }
    }
}

impl Drop for PgPlugins {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn generation(row: &PgRow) -> Result<u64, StorageError> {
    let generation: i64 = row.try_get("generation").map_err(pg_error)?;
    u64::try_from(generation)
        .map_err(|e| StorageError::Backend(format!("PostgreSQL plugin generation: {e}")))
}

#[async_trait]
impl PluginStore for PgPlugins {
    async fn put(
        &self,
        name: &str,
        digest: &str,
        state: PluginState,
        changed_by: &str,
        expected: Option<u64>,
    ) -> Result<PutOutcome, StorageError> {
        let (component, grants) = match state {
            PluginState::Installed { component, grants } => (Some(component), Some(grants)),
            PluginState::Unloaded => (None, None),
        };
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let written = match expected {
            None => sqlx::query(
                "INSERT INTO plugins (name, generation, digest, component, grants, changed_at, \
                     changed_by)
                 VALUES ($1, nextval('plugin_generation'), $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING generation",
            ),
            Some(_) => sqlx::query(
                "UPDATE plugins SET generation = nextval('plugin_generation'), digest = $2, \
                     component = $3, grants = $4, changed_at = $5, changed_by = $6
                 WHERE name = $1 AND generation = $7
                 RETURNING generation",
            ),
        }
        .bind(name)
        .bind(digest)
        .bind(component)
        .bind(grants)
        .bind(Utc::now())
        .bind(changed_by)
        .bind(expected.and_then(|g| i64::try_from(g).ok()))
        .fetch_optional(&mut *tx)
        .await
        .map_err(pg_error)?;
        let Some(row) = written else {
            tx.rollback().await.map_err(pg_error)?;
            let current = sqlx::query("SELECT generation FROM plugins WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?
                .as_ref()
                .map(generation)
                .transpose()?;
            return Ok(PutOutcome::Superseded(current));
        };
        let stored = generation(&row)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PLUGINS_CHANNEL)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(PutOutcome::Stored(stored))
    }

    async fn heads(&self) -> Result<Vec<PluginHead>, StorageError> {
        let rows = sqlx::query(
            "SELECT name, generation, digest, component IS NOT NULL AS installed
             FROM plugins ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                Ok(PluginHead {
                    name: row.try_get("name").map_err(pg_error)?,
                    generation: generation(row)?,
                    digest: row.try_get("digest").map_err(pg_error)?,
                    installed: row.try_get("installed").map_err(pg_error)?,
                })
            })
            .collect()
    }

    async fn get(&self, name: &str) -> Result<Option<PluginRecord>, StorageError> {
        let Some(row) = sqlx::query("SELECT * FROM plugins WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let component: Option<Vec<u8>> = row.try_get("component").map_err(pg_error)?;
        let grants: Option<String> = row.try_get("grants").map_err(pg_error)?;
        let state = match (component, grants) {
            (Some(component), Some(grants)) => PluginState::Installed { component, grants },
            _ => PluginState::Unloaded,
        };
        Ok(Some(PluginRecord {
            name: row.try_get("name").map_err(pg_error)?,
            generation: generation(&row)?,
            digest: row.try_get("digest").map_err(pg_error)?,
            state,
            changed_at: row.try_get("changed_at").map_err(pg_error)?,
            changed_by: row.try_get("changed_by").map_err(pg_error)?,
        }))
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
