//! One-time rewrites at start of rows an earlier schema left incomplete, where the missing
//! column can only come from the encoded task body. Each runs in one transaction that first
//! records it in `backfills`: of several hosts starting together, one does it and the others,
//! waiting on that row, find it done.

use sqlx::{PgPool, Row};

use super::pg_error;
use crate::model::Task;
use crate::storage::StorageError;
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
