//! Running tasks across hosts on one database: a host claims ready tasks so that each runs
//! on one host at a time, holds a lease on each that it renews, and every write of a run
//! carries the lease's fencing token, so a host whose lease lapsed (it died, or stalled past
//! the expiry) has its late writes refused after another host took the task over.

use std::time::Duration;

use sqlx::{PgPool, Row};

use super::tally::Tally;
use super::{pg_error, tasks};
use crate::model::{Event, EventData, Task};
use crate::storage::StorageError;
use crate::storage::codec::{decode, encode};
use crate::storage::shared::{ControlRequest, Finished, Lease, Renewal};

/// Claims up to `limit` ready tasks of `plugin` for `host`, best priority first, then oldest;
/// rows another host is claiming at the same moment are skipped, not waited for. A task is
/// ready when it is queued, its queue is not paused (a pause holds on every host) and every
/// task it depends on completed. `start` turns each task into its running form and says
/// which events that adds.
pub async fn claim(
    pool: &PgPool,
    host: &str,
    plugin: &str,
    limit: usize,
    ttl: Duration,
    start: impl Fn(&mut Task) -> Vec<EventData>,
) -> Result<Vec<(Task, Lease, Vec<Event>)>, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let rows = sqlx::query(
        // One plugin, compared with `=`, so that the walk follows `tasks_ready` in claim order
        // and stops after `limit` rows; with `= ANY(…)` it sorted every queued task per claim.
        "SELECT t.body FROM tasks t WHERE t.status = 'queued' AND t.plugin = $1 \
         AND NOT EXISTS (SELECT 1 FROM paused_queues p WHERE p.plugin = t.plugin) \
         AND (t.depends_on = '{}' OR NOT EXISTS (SELECT 1 FROM unnest(t.depends_on) AS d(id) \
             LEFT JOIN tasks dep ON dep.id = d.id WHERE dep.status IS DISTINCT FROM 'completed')) \
         ORDER BY t.priority DESC, t.created_at, t.id LIMIT $2 FOR UPDATE OF t SKIP LOCKED",
    )
    .bind(plugin)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_error)?;
    let mut tally = Tally::default();
    let mut claimed = Vec::with_capacity(rows.len());
    for row in rows {
        let stored: Task = decode(row.get::<&[u8], _>("body"))?;
        let mut task = stored.clone();
        let added = start(&mut task);
        let token: i64 = sqlx::query_scalar(
            "UPDATE tasks SET status = $2, updated_at = $3, body = $4, lease_host = $5, \
             lease_expires = now() + $6, lease_token = lease_token + 1, control = NULL \
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
        tally.moved(Some(&stored), Some(&task));
        tally.events(&task, &added);
        let lease = Lease {
            task_id: task.id.clone(),
            host: host.to_owned(),
            token,
        };
        claimed.push((task, lease));
    }
    let events = tally.write(&mut tx).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(claimed
        .into_iter()
        .zip(events)
        .map(|((task, lease), events)| (task, lease, events))
        .collect())
}

/// Writes the end of the run `lease` holds: `end` gets the task as stored, locked, and returns
/// its events (`None`: nothing to write). [`Finished::Lost`] when the lease is no longer the
/// holder's, in which case nothing is written. The run may be paused at a checkpoint when it
/// ends (cancelled while paused): its host still holds it.
pub async fn finish(
    pool: &PgPool,
    lease: &Lease,
    end: impl FnOnce(&mut Task) -> Option<Vec<EventData>>,
) -> Result<Finished, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let held: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM tasks WHERE id = $1 AND lease_host = $2 AND lease_token = $3 \
         AND status IN ('running', 'paused') FOR UPDATE",
    )
    .bind(&lease.task_id)
    .bind(&lease.host)
    .bind(lease.token)
    .fetch_optional(&mut *tx)
    .await
    .map_err(pg_error)?;
    let Some(body) = held else {
        return Ok(Finished::Lost);
    };
    let stored: Task = decode(&body)?;
    let mut task = stored.clone();
    let Some(added) = end(&mut task) else {
        return Ok(Finished::Declined);
    };
    sqlx::query(
        "UPDATE tasks SET status = $2, updated_at = $3, body = $4, lease_host = NULL, \
         lease_expires = NULL, control = NULL WHERE id = $1",
    )
    .bind(&lease.task_id)
    .bind(task.status.as_str())
    .bind(task.updated_at)
    .bind(encode(&task)?)
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    let mut tally = Tally::default();
    tally.moved(Some(&stored), Some(&task));
    tally.events(&task, &added);
    let events = tally.write(&mut tx).await?.concat();
    tx.commit().await.map_err(pg_error)?;
    Ok(Finished::Written(Box::new(task), events))
}

/// Puts back up to `limit` running tasks whose lease lapsed, for any host to claim again;
/// `requeue` turns each into its queued form (the next claim is a new attempt, as after a
/// crash). The token moves on, so the lapsed holder can neither renew nor finish. A task
/// paused at a checkpoint whose lease lapsed stays paused, released: resuming it queues it.
pub async fn requeue_lapsed(
    pool: &PgPool,
    limit: usize,
    requeue: impl Fn(&mut Task) -> Vec<EventData>,
) -> Result<Vec<(Task, Vec<Event>)>, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let lapsed = lock_batch(
        &mut tx,
        "SELECT body FROM tasks WHERE status = 'running' AND lease_expires < now() \
         ORDER BY lease_expires LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    .await?;
    let mut tally = Tally::default();
    let mut requeued = Vec::with_capacity(lapsed.len());
    for stored in lapsed {
        let mut task = stored.clone();
        let added = requeue(&mut task);
        sqlx::query(
            "UPDATE tasks SET status = $2, updated_at = $3, body = $4, lease_host = NULL, \
             lease_expires = NULL, lease_token = lease_token + 1, control = NULL WHERE id = $1",
        )
        .bind(&task.id)
        .bind(task.status.as_str())
        .bind(task.updated_at)
        .bind(encode(&task)?)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
        tally.moved(Some(&stored), Some(&task));
        tally.events(&task, &added);
        requeued.push(task);
    }
    sqlx::query(
        "UPDATE tasks SET lease_host = NULL, lease_expires = NULL, \
         lease_token = lease_token + 1, control = NULL \
         WHERE status = 'paused' AND lease_expires < now()",
    )
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    let events = tally.write(&mut tx).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(requeued.into_iter().zip(events).collect())
}

/// Leaves `request` for the host holding the lease of task `id`; `false` when no host holds
/// one (the task is not running anywhere, so the caller changes it itself). A later request
/// replaces one not yet taken.
pub async fn request_control(
    pool: &PgPool,
    id: &str,
    request: ControlRequest,
) -> Result<bool, StorageError> {
    let left = sqlx::query(
        "UPDATE tasks SET control = $2 \
         WHERE id = $1 AND lease_host IS NOT NULL AND status IN ('running', 'paused')",
    )
    .bind(id)
    .bind(request.as_str())
    .execute(pool)
    .await
    .map_err(pg_error)?;
    Ok(left.rows_affected() == 1)
}

/// Extends every lease in `held` by `ttl` from now in one statement, taking the control
/// requests left for them; the answer is in `held`'s order. A run paused at a checkpoint
/// keeps its lease: its host still holds the plugin.
pub async fn renew_all(
    pool: &PgPool,
    held: &[Lease],
    ttl: Duration,
) -> Result<Vec<Renewal>, StorageError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = held.iter().map(|l| l.task_id.as_str()).collect();
    let hosts: Vec<&str> = held.iter().map(|l| l.host.as_str()).collect();
    let tokens: Vec<i64> = held.iter().map(|l| l.token).collect();
    let rows = sqlx::query(
        "WITH mine AS ( \
             SELECT t.id, t.control FROM tasks t \
             JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS h(id, host, token) \
               ON t.id = h.id AND t.lease_host = h.host AND t.lease_token = h.token \
             WHERE t.status IN ('running', 'paused') FOR UPDATE OF t) \
         UPDATE tasks t SET lease_expires = now() + $4, control = NULL FROM mine \
         WHERE t.id = mine.id RETURNING t.id, mine.control",
    )
    .bind(&ids)
    .bind(&hosts)
    .bind(&tokens)
    .bind(ttl)
    .fetch_all(pool)
    .await
    .map_err(pg_error)?;
    let mut renewed = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let control: Option<String> = row.get("control");
        renewed.insert(
            row.get::<String, _>("id"),
            control.as_deref().and_then(ControlRequest::parse),
        );
    }
    Ok(held
        .iter()
        .map(|lease| match renewed.remove(&lease.task_id) {
            Some(control) => Renewal::Held(control),
            None => Renewal::Lost,
        })
        .collect())
}

/// Queues up to `limit` scheduled tasks whose time has come, on whichever host notices first;
/// `promote` turns each into its queued form.
pub async fn promote_due(
    pool: &PgPool,
    limit: usize,
    promote: impl Fn(&mut Task) -> Vec<EventData>,
) -> Result<Vec<(Task, Vec<Event>)>, StorageError> {
    let mut tx = pool.begin().await.map_err(pg_error)?;
    let due = lock_batch(
        &mut tx,
        "SELECT body FROM tasks WHERE status = 'scheduled' AND scheduled_at <= now() \
         ORDER BY scheduled_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    .await?;
    let mut tally = Tally::default();
    let mut promoted = Vec::with_capacity(due.len());
    for stored in due {
        let mut task = stored.clone();
        let added = promote(&mut task);
        tasks::rewrite(&mut tx, &mut tally, &stored, &task).await?;
        tally.events(&task, &added);
        promoted.push(task);
    }
    let events = tally.write(&mut tx).await?;
    tx.commit().await.map_err(pg_error)?;
    Ok(promoted.into_iter().zip(events).collect())
}

/// Queued tasks waiting for a task that failed, was cancelled or is gone, with that
/// dependency: they can never run, and whichever host finds them fails them (the host that
/// ended the dependency may have died before it did).
pub async fn stranded_dependents(
    pool: &PgPool,
    limit: usize,
) -> Result<Vec<(String, String)>, StorageError> {
    let rows = sqlx::query(
        "SELECT t.id, d.id AS dependency \
         FROM tasks t CROSS JOIN LATERAL unnest(t.depends_on) AS d(id) \
         LEFT JOIN tasks dep ON dep.id = d.id \
         WHERE t.status = 'queued' AND t.depends_on <> '{}' \
           AND (dep.id IS NULL OR dep.status IN ('failed', 'cancelled')) \
         ORDER BY t.created_at, t.id LIMIT $1",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(pg_error)?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get("id"), row.get("dependency")))
        .collect())
}

/// The tasks `select` (bodies, `LIMIT $1`, locking its rows) finds, locked until `tx` ends.
async fn lock_batch(
    tx: &mut sqlx::PgConnection,
    select: &'static str,
    limit: usize,
) -> Result<Vec<Task>, StorageError> {
    let rows = sqlx::query(select)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|row| decode(row.get::<&[u8], _>("body")))
        .collect()
}
