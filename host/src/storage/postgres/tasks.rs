//! Task rows on PostgreSQL: a task's encoded body beside the columns queries use. The
//! per-plugin status counts, statistics cells and events of a write go into its [`Tally`],
//! written in the same transaction.

use sqlx::{PgConnection, PgPool, Row};

use super::pg_error;
use super::tally::Tally;
use crate::model::{EventData, Task, TaskStatus};
use crate::storage::StorageError;
use crate::storage::codec::{decode, encode};

/// PostgreSQL's SQLSTATE for a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// Inserts a new task in `tx`, noting it and its events in `tally`; `Duplicate` when the id
/// is taken.
pub async fn insert(
    tx: &mut PgConnection,
    tally: &mut Tally,
    task: &Task,
    new_events: &[EventData],
) -> Result<(), StorageError> {
    let inserted = with_columns(
        sqlx::query(
            "INSERT INTO tasks (id, plugin, owner, status, priority, created_at, updated_at, \
             scheduled_at, labels, body, task_type, depends_on) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        ),
        task,
    )?
    .execute(&mut *tx)
    .await;
    match inserted {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            return Err(StorageError::Duplicate(task.id.clone()));
        }
        other => other.map_err(pg_error)?,
    };
    tally.moved(None, Some(task));
    tally.events(task, new_events);
    Ok(())
}

/// Binds a task row's columns as `$1` … `$12`: id, plugin, owner, status, priority, created,
/// updated and scheduled times, labels, body, task type and dependencies.
fn with_columns<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    task: &'q Task,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>, StorageError> {
    Ok(query
        .bind(&task.id)
        .bind(&task.plugin)
        .bind(&task.owner)
        .bind(task.status.as_str())
        .bind(task.priority)
        .bind(task.created_at)
        .bind(task.updated_at)
        .bind(task.scheduled_at)
        .bind(labels_json(task)?)
        .bind(encode(task)?)
        .bind(&task.task_type)
        .bind(&task.depends_on))
}

fn labels_json(task: &Task) -> Result<serde_json::Value, StorageError> {
    serde_json::to_value(&task.labels).map_err(|e| StorageError::Backend(format!("labels: {e}")))
}

/// Reads a task, locking its row until `tx` ends.
pub(super) async fn lock(tx: &mut PgConnection, id: &str) -> Result<Option<Task>, StorageError> {
    let body: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM tasks WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?;
    body.map(|body| decode(&body)).transpose()
}

/// Replaces a task whose stored status is `expected` in `tx`, noting the change and its
/// events in `tally`; `NotFound` or `StatusChanged` otherwise.
pub async fn update(
    tx: &mut PgConnection,
    tally: &mut Tally,
    task: &Task,
    expected: TaskStatus,
    new_events: &[EventData],
) -> Result<(), StorageError> {
    let stored = lock(tx, &task.id)
        .await?
        .ok_or_else(|| StorageError::NotFound(task.id.clone()))?;
    StorageError::check_status(&stored, expected)?;
    rewrite(tx, tally, &stored, task).await?;
    tally.events(task, new_events);
    Ok(())
}

/// Writes `task` over `stored` (locked in `tx`), noting the move in `tally`.
pub(super) async fn rewrite(
    tx: &mut PgConnection,
    tally: &mut Tally,
    stored: &Task,
    task: &Task,
) -> Result<(), StorageError> {
    with_columns(
        sqlx::query(
            "UPDATE tasks SET plugin = $2, owner = $3, status = $4, priority = $5, \
             created_at = $6, updated_at = $7, scheduled_at = $8, labels = $9, body = $10, \
             task_type = $11, depends_on = $12 WHERE id = $1",
        ),
        task,
    )?
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    tally.moved(Some(stored), Some(task));
    Ok(())
}

/// What removing a task takes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Clearing a queue: any task; its events stay in the event log.
    KeepEvents,
    /// Retention: only a finished task, and its events go too.
    FinishedWithEvents,
}

/// Removes a task with its logs and records (and events, per `removal`) in `tx`, noting it
/// in `tally`; false when there is none to remove.
pub async fn remove(
    tx: &mut PgConnection,
    tally: &mut Tally,
    id: &str,
    removal: Removal,
) -> Result<bool, StorageError> {
    let Some(task) = lock(tx, id).await? else {
        return Ok(false);
    };
    if removal == Removal::FinishedWithEvents && !task.status.is_terminal() {
        return Ok(false);
    }
    let mut statements = vec![
        "DELETE FROM tasks WHERE id = $1",
        "DELETE FROM task_logs WHERE task_id = $1",
        "DELETE FROM records WHERE task_id = $1",
    ];
    if removal == Removal::FinishedWithEvents {
        statements.push("DELETE FROM events WHERE task_id = $1");
    }
    for statement in statements {
        sqlx::query(statement)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
    }
    tally.moved(Some(&task), None);
    Ok(true)
}

/// Ids of every task in `status`, oldest first.
pub async fn ids_with_status(
    pool: &PgPool,
    status: TaskStatus,
) -> Result<Vec<String>, StorageError> {
    sqlx::query_scalar("SELECT id FROM tasks WHERE status = $1 ORDER BY created_at, id")
        .bind(status.as_str())
        .fetch_all(pool)
        .await
        .map_err(pg_error)
}

/// Every non-zero count, as (plugin, status, n).
pub async fn all_counts(pool: &PgPool) -> Result<Vec<(String, TaskStatus, u64)>, StorageError> {
    let rows = sqlx::query("SELECT plugin, status, n FROM task_counts WHERE n > 0")
        .fetch_all(pool)
        .await
        .map_err(pg_error)?;
    let mut counts = Vec::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status").map_err(pg_error)?;
        let n: i64 = row.try_get("n").map_err(pg_error)?;
        if let Some(status) = TaskStatus::parse(&status) {
            counts.push((
                row.try_get("plugin").map_err(pg_error)?,
                status,
                n.max(0) as u64,
            ));
        }
    }
    Ok(counts)
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
