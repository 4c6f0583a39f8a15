//! One-time rewrites at start of rows an earlier schema left incomplete, where the missing
//! column can only come from the encoded task body. Each runs in one transaction that first
//! records it in `backfills`: of several hosts starting together, one does it and the others,
//! waiting on that row, find it done.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use sqlx::{PgPool, Row};

use super::{pg_error, stat_cells};
use crate::model::Task;
use crate::storage::StorageError;
use crate::storage::cells::{self, CellCounts, CellKey};
use crate::storage::codec::decode;

/// Tasks written before schema 4 have an empty `depends_on` column whatever their body says,
/// so a claim would start them before their dependencies completed. Only tasks that can still
/// be claimed matter; finished ones are left as they are.
pub async fn dependencies(pool: &PgPool) -> Result<(), StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let first = sqlx::query(
        "INSERT INTO backfills (name) VALUES ('depends_on') ON CONFLICT (name) DO NOTHING",
    )
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    if first.rows_affected() == 0 {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT id, body FROM tasks WHERE depends_on = '{}' \
         AND status IN ('queued', 'scheduled', 'paused', 'running') FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_error)?;
    let mut filled = 0usize;
    for row in rows {
        let task: Task = decode(row.get::<&[u8], _>("body"))?;
        if task.depends_on.is_empty() {
            continue;
        }
        sqlx::query("UPDATE tasks SET depends_on = $2 WHERE id = $1")
            .bind(row.get::<&str, _>("id"))
            .bind(&task.depends_on)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        filled += 1;
    }
    tx.commit().await.map_err(pg_error)?;
    if filled > 0 {
        tracing::info!(
            tasks = filled,
            "recorded the dependencies of tasks written before schema 4"
        );
    }
    Ok(())
}

/// Before schema 9 the statistics cells were kept neither per `agent` label nor with their
/// tasks' times. Rebuilds every cell from the tasks, with writers held off by a share lock on
/// `tasks` until it commits; the bodies are read as a stream, so memory follows the cells.
pub async fn cells_by_agent(pool: &PgPool) -> Result<(), StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let first = sqlx::query(
        "INSERT INTO backfills (name) VALUES ('cells_by_agent') ON CONFLICT (name) DO NOTHING",
    )
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    if first.rows_affected() == 0 {
        return Ok(());
    }
    sqlx::query("LOCK TABLE tasks IN SHARE MODE")
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    let mut rebuilt: BTreeMap<CellKey, CellCounts> = BTreeMap::new();
    let mut tasks = 0usize;
    {
        let mut rows = sqlx::query("SELECT body FROM tasks").fetch(&mut *tx);
        while let Some(row) = rows.try_next().await.map_err(pg_error)? {
            let task: Task = decode(row.get::<&[u8], _>("body"))?;
            for (key, delta) in cells::changes(None, Some(&task)) {
                rebuilt.entry(key).or_default().apply(&delta);
            }
            tasks += 1;
        }
    }
    stat_cells::replace_all(&mut tx, rebuilt).await?;
    tx.commit().await.map_err(pg_error)?;
    if tasks > 0 {
        tracing::info!(tasks, "rebuilt the statistics cells by project and agent");
    }
    Ok(())
}
