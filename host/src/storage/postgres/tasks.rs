//! Task rows on PostgreSQL: a task's encoded body beside the columns queries use, and the
//! per-plugin status counts kept in the same transaction.

use sqlx::{PgConnection, PgPool};

use super::{events, pg_error};
use crate::model::{Event, EventData, Task, TaskStatus};
use crate::storage::StorageError;
use crate::storage::codec::encode;

/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Inserts a new task and its events in `tx`; `Duplicate` when the id is taken.
pub async fn insert(
    tx: &mut PgConnection,
    task: &Task,
    new_events: &[EventData],
) -> Result<Vec<Event>, StorageError> {
    let labels = serde_json::to_value(&task.labels)
        .map_err(|e| StorageError::Backend(format!("labels: {e}")))?;
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, plugin, owner, status, priority, created_at, updated_at, \
         scheduled_at, labels, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&task.id)
    .bind(&task.plugin)
    .bind(&task.owner)
    .bind(task.status.as_str())
    .bind(task.priority)
    .bind(task.created_at)
    .bind(task.updated_at)
    .bind(task.scheduled_at)
    .bind(labels)
    .bind(encode(task)?)
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            return Err(StorageError::Duplicate(task.id.clone()));
        }
        other => other.map_err(pg_error)?,
    };
    count(tx, &task.plugin, task.status, 1).await?;
    events::append(tx, task, new_events).await
}

/// How many tasks of `plugin` are in `status`, as the counts kept with every write say.
pub async fn status_count(
    pool: &PgPool,
    plugin: &str,
    status: TaskStatus,
) -> Result<i64, StorageError> {
    let n: Option<i64> =
        sqlx::query_scalar("SELECT n FROM task_counts WHERE plugin = $1 AND status = $2")
            .bind(plugin)
            .bind(status.as_str())
            .fetch_optional(pool)
            .await
            .map_err(pg_error)?;
    Ok(n.unwrap_or(0))
}

/// Moves one task of `plugin` from status `from` to `to` in the counts.
pub(super) async fn recount(
    tx: &mut PgConnection,
    plugin: &str,
    from: TaskStatus,
    to: TaskStatus,
) -> Result<(), StorageError> {
    if from != to {
        count(tx, plugin, from, -1).await?;
        count(tx, plugin, to, 1).await?;
    }
    Ok(())
}

async fn count(
    tx: &mut PgConnection,
    plugin: &str,
    status: TaskStatus,
    delta: i64,
) -> Result<(), StorageError> {
    // An increment may create the row; a decrement has a row to decrement (the CHECK keeps
    // a count from going negative, which would mean a write the counts missed).
    let statement = if delta > 0 {
        "INSERT INTO task_counts (plugin, status, n) VALUES ($1, $2, $3) \
         ON CONFLICT (plugin, status) DO UPDATE SET n = task_counts.n + EXCLUDED.n"
    } else {
        "UPDATE task_counts SET n = n + $3 WHERE plugin = $1 AND status = $2"
    };
    sqlx::query(statement)
        .bind(plugin)
        .bind(status.as_str())
        .bind(delta)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    Ok(())
}
