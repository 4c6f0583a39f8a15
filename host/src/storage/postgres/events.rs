//! Events on PostgreSQL: `seq`s given in commit order, so that any host reading "after N"
//! never sees a smaller seq commit later (no gap a reader skipped, no duplicate).
//!
//! A writer takes its seqs from the one-row `event_seq` counter inside its own transaction;
//! the row lock it holds until commit makes the next writer wait, so seqs become visible in
//! the order they were given. The price is that event-writing transactions commit one at a
//! time, which is why the backend commits many task writes per transaction (one per flush of
//! the commit log) rather than one transaction per write.

use sqlx::{PgConnection, PgPool};

use super::tally::Tally;
use super::{follow, pg_error};
use crate::model::{Event, EventData, Task};
use crate::storage::StorageError;
use crate::storage::codec::{decode_event, encode};

/// Gives `events` of `task` the next seqs and inserts them in the caller's transaction `tx`;
/// they are visible to readers once `tx` commits, and never if it rolls back. Take it last
/// in a transaction: it holds the one row every event writer needs until commit.
pub async fn append(
    tx: &mut PgConnection,
    task: &Task,
    events: &[EventData],
) -> Result<Vec<Event>, StorageError> {
    let mut tally = Tally::default();
    tally.events(task, events);
    Ok(append_all(tx, tally.into_events())
        .await?
        .pop()
        .unwrap_or_default())
}

/// Gives every event in `groups` the next seq, in order, and inserts them all in `tx` with
/// one statement; answers the groups as stored.
pub async fn append_all(
    tx: &mut PgConnection,
    mut groups: Vec<Vec<Event>>,
) -> Result<Vec<Vec<Event>>, StorageError> {
    let total: usize = groups.iter().map(Vec::len).sum();
    if total == 0 {
        return Ok(groups);
    }
    let count = i64::try_from(total).map_err(overflow)?;
    let last: i64 = sqlx::query_scalar("UPDATE event_seq SET last = last + $1 RETURNING last")
        .bind(count)
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_error)?;
    let first = u64::try_from(last - count + 1).map_err(overflow)?;
    let mut seqs = Vec::with_capacity(total);
    let mut task_ids = Vec::with_capacity(total);
    let mut bodies = Vec::with_capacity(total);
    for (event, seq) in groups.iter_mut().flatten().zip(first..) {
        event.seq = seq;
        seqs.push(i64::try_from(seq).map_err(overflow)?);
        task_ids.push(event.task_id.clone());
        bodies.push(encode(&*event)?);
    }
    sqlx::query(
        "INSERT INTO events (seq, task_id, body) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bytea[])",
    )
    .bind(&seqs)
    .bind(&task_ids)
    .bind(&bodies)
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    follow::announce(tx, first + total as u64 - 1).await?;
    Ok(groups)
}

/// Committed events after `after_seq` in seq order, of one task or of all, at most `limit`.
pub async fn read(
    pool: &PgPool,
    task_id: Option<&str>,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<Event>, StorageError> {
    let after = i64::try_from(after_seq).map_err(overflow)?;
    let limit = i64::try_from(limit).map_err(overflow)?;
    let bodies: Vec<Vec<u8>> = match task_id {
        Some(id) => {
            sqlx::query_scalar(
                "SELECT body FROM events WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await
        }
        None => {
            sqlx::query_scalar("SELECT body FROM events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
        }
    }
    .map_err(pg_error)?;
    bodies.iter().map(|body| decode_event(body)).collect()
}

/// The last seq any committed transaction took.
pub async fn last_seq(pool: &PgPool) -> Result<u64, StorageError> {
    let last: i64 = sqlx::query_scalar("SELECT last FROM event_seq")
        .fetch_one(pool)
        .await
        .map_err(pg_error)?;
    u64::try_from(last).map_err(overflow)
}

fn overflow(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("a seq or count out of range: {e}"))
}
