//! Running tasks across hosts on one database: a host claims ready tasks so that each runs
//! on one host at a time, holds a lease on each that it renews, and every write of a run
//! carries the lease's fencing token, so a host whose lease lapsed (it died, or stalled past
//! the expiry) has its late writes refused after another host took the task over.

use std::time::Duration;

use sqlx::{PgPool, Row};

use super::{events, pg_error, stat_cells, tasks};
use crate::model::{Event, EventData, Task, TaskStatus};
use crate::storage::codec::{decode, encode};
use crate::storage::{StorageError, cells};

/// A host's hold on one running task. `token` grows with every claim and takeover of the
/// task, so an older holder's token no longer matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task_id: String,
    pub host: String,
    pub token: i64,
}

/// Claims up to `limit` ready tasks of `plugins` for `host`, best priority first, then oldest;
/// rows another host is claiming at the same moment are skipped, not waited for. `start`
/// turns each task into its running form and says which events that adds.
pub async fn claim(
    pool: &PgPool,
    host: &str,
    plugins: &[String],
    limit: usize,
    ttl: Duration,
    start: impl Fn(&mut Task) -> Vec<EventData>,
) -> Result<Vec<(Task, Lease, Vec<Event>)>, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let rows = sqlx::query(
        "SELECT body FROM tasks WHERE status = 'queued' AND plugin = ANY($1) \
         ORDER BY priority DESC, created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED",
    )
    .bind(plugins)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_error)?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let stored: Task = decode(row.get::<&[u8], _>("body"))?;
        let mut task = stored.clone();
        let added = start(&mut task);
        let token: i64 = sqlx::query_scalar(
            "UPDATE tasks SET status = $2, updated_at = $3, body = $4, lease_host = $5, \
             lease_expires = now() + $6, lease_token = lease_token + 1 \
             WHERE id = $1 RETURNING lease_token",
        )
        .bind(&task.id)
        .bind(task.status.as_str())
        .bind(task.updated_at)
        .bind(encode(&task)?)
        .bind(host)
        .bind(ttl)
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_error)?;
        tasks::recount(&mut tx, &task.plugin, stored.status, task.status).await?;
        stat_cells::apply(&mut tx, cells::changes(Some(&stored), Some(&task))).await?;
        let stored = events::append(&mut tx, &task, &added).await?;
        let lease = Lease {
            task_id: task.id.clone(),
            host: host.to_owned(),
            token,
        };
        claimed.push((task, lease, stored));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(claimed)
}

/// Extends a lease by `ttl` from now; `false` when it is no longer the holder's (taken over).
pub async fn renew(pool: &PgPool, lease: &Lease, ttl: Duration) -> Result<bool, StorageError> {
    let renewed = sqlx::query(
        "UPDATE tasks SET lease_expires = now() + $4 \
         WHERE id = $1 AND lease_host = $2 AND lease_token = $3 AND status = 'running'",
    )
    .bind(&lease.task_id)
    .bind(&lease.host)
    .bind(lease.token)
    .bind(ttl)
    .execute(pool)
    .await
    .map_err(pg_error)?;
    Ok(renewed.rows_affected() == 1)
}

/// Writes the outcome of the run `lease` holds (`task` in its new status, and its events);
/// `None` when the lease was lost, in which case nothing is written.
pub async fn finish(
    pool: &PgPool,
    lease: &Lease,
    task: &Task,
    added: &[EventData],
) -> Result<Option<Vec<Event>>, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let updated = sqlx::query(
        "UPDATE tasks SET status = $4, updated_at = $5, body = $6, lease_host = NULL, \
         lease_expires = NULL \
         WHERE id = $1 AND lease_host = $2 AND lease_token = $3 AND status = 'running'",
    )
    .bind(&lease.task_id)
    .bind(&lease.host)
    .bind(lease.token)
    .bind(task.status.as_str())
    .bind(task.updated_at)
    .bind(encode(task)?)
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    if updated.rows_affected() != 1 {
        return Ok(None);
    }
    tasks::recount(&mut tx, &task.plugin, TaskStatus::Running, task.status).await?;
    // The run moved the task between statuses of one cell: its key (owner, plugin, project,
    // creation day) is the same before and after.
    let mut running = task.clone();
    running.status = TaskStatus::Running;
    stat_cells::apply(&mut tx, cells::changes(Some(&running), Some(task))).await?;
    let stored = events::append(&mut tx, task, added).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(Some(stored))
}

/// Puts back up to `limit` running tasks whose lease lapsed, for any host to claim again;
/// `requeue` turns each into its queued form (the next claim is a new attempt, as after a
/// crash). The token moves on, so the lapsed holder can neither renew nor finish.
pub async fn requeue_lapsed(
    pool: &PgPool,
    limit: usize,
    requeue: impl Fn(&mut Task) -> Vec<EventData>,
) -> Result<Vec<Task>, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let rows = sqlx::query(
        "SELECT body FROM tasks WHERE status = 'running' AND lease_expires < now() \
         ORDER BY lease_expires LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_error)?;
    let mut requeued = Vec::with_capacity(rows.len());
    for row in rows {
        let stored: Task = decode(row.get::<&[u8], _>("body"))?;
        let mut task = stored.clone();
        let added = requeue(&mut task);
        sqlx::query(
            "UPDATE tasks SET status = $2, updated_at = $3, body = $4, lease_host = NULL, \
             lease_expires = NULL, lease_token = lease_token + 1 WHERE id = $1",
        )
        .bind(&task.id)
        .bind(task.status.as_str())
        .bind(task.updated_at)
        .bind(encode(&task)?)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
        tasks::recount(&mut tx, &task.plugin, TaskStatus::Running, task.status).await?;
        stat_cells::apply(&mut tx, cells::changes(Some(&stored), Some(&task))).await?;
        events::append(&mut tx, &task, &added).await?;
        requeued.push(task);
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(requeued)
}
