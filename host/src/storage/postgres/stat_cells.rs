//! The statistics cells ([`crate::storage::cells`]) on PostgreSQL: one row per cell, changed
//! in the transaction of the task write that moves a task in or out of it.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool, Row};

use super::pg_error;
use crate::storage::StorageError;
use crate::storage::cells::{Cell, CellCounts, CellDelta, CellKey};

/// A cell's signed change: counts per status, run time and timed tasks.
#[derive(Default)]
struct Change {
    by_status: [i64; 7],
    duration_ms: i64,
    timed: i64,
    /// Of the tasks coming in: the earliest creation and the latest update.
    first_created_ms: Option<i64>,
    last_changed_ms: Option<i64>,
}

/// Applies `changes` (of one task write) in `tx`, one statement per cell touched.
pub async fn apply(
    tx: &mut PgConnection,
    changes: Vec<(CellKey, CellDelta)>,
) -> Result<(), StorageError> {
    let mut merged: BTreeMap<CellKey, Change> = BTreeMap::new();
    for (key, delta) in changes {
        let change = merged.entry(key).or_default();
        let sign = if delta.add { 1 } else { -1 };
        change.by_status[delta.status] += sign;
        if delta.add {
            change.first_created_ms = Some(
                change
                    .first_created_ms
                    .map_or(delta.created_ms, |ms| ms.min(delta.created_ms)),
            );
            change.last_changed_ms = change.last_changed_ms.max(Some(delta.changed_ms));
        }
        if let Some(ms) = delta.duration_ms {
            change.duration_ms += sign * i64::try_from(ms).unwrap_or(i64::MAX);
            change.timed += sign;
        }
    }
    for (key, change) in merged {
        // A new cell starts from the change's positive part; an existing one adds the change,
        // never going below zero (as on sled).
        let inserted: Vec<i64> = change.by_status.iter().map(|n| (*n).max(0)).collect();
        sqlx::query(
            "INSERT INTO task_cells \
             (owner, plugin, has_project, project, has_agent, agent, day, \
              by_status, duration_ms, timed, first_created_ms, last_changed_ms) \
             VALUES ($1, $2, $3, $4, $10, $11, $5, $6, GREATEST($8, 0), GREATEST($9, 0), \
              $12, $13) \
             ON CONFLICT (owner, plugin, has_project, project, has_agent, agent, day) DO UPDATE SET \
             by_status = ARRAY(SELECT GREATEST(old + delta, 0) \
                 FROM unnest(task_cells.by_status, $7::bigint[]) WITH ORDINALITY AS c(old, delta, i) \
                 ORDER BY i), \
             duration_ms = GREATEST(task_cells.duration_ms + $8, 0), \
             timed = GREATEST(task_cells.timed + $9, 0), \
             first_created_ms = LEAST(task_cells.first_created_ms, $12), \
             last_changed_ms = GREATEST(task_cells.last_changed_ms, $13)",
        )
        .bind(&key.owner)
        .bind(&key.plugin)
        .bind(key.project.is_some())
        .bind(key.project.as_deref().unwrap_or(""))
        .bind(&key.day)
        .bind(&inserted)
        .bind(&change.by_status[..])
        .bind(change.duration_ms)
        .bind(change.timed)
        .bind(key.agent.is_some())
        .bind(key.agent.as_deref().unwrap_or(""))
        .bind(change.first_created_ms)
        .bind(change.last_changed_ms)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    }
    Ok(())
}

/// Replaces every cell by `cells` (a rebuild from the tasks).
pub async fn replace_all(
    tx: &mut PgConnection,
    cells: BTreeMap<CellKey, CellCounts>,
) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM task_cells")
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    for (key, counts) in cells {
        let by_status: Vec<i64> = counts
            .by_status
            .iter()
            .map(|n| i64::try_from(*n).unwrap_or(i64::MAX))
            .collect();
        sqlx::query(
            "INSERT INTO task_cells \
             (owner, plugin, has_project, project, has_agent, agent, day, \
              by_status, duration_ms, timed, first_created_ms, last_changed_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&key.owner)
        .bind(&key.plugin)
        .bind(key.project.is_some())
        .bind(key.project.as_deref().unwrap_or(""))
        .bind(key.agent.is_some())
        .bind(key.agent.as_deref().unwrap_or(""))
        .bind(&key.day)
        .bind(&by_status)
        .bind(i64::try_from(counts.duration_ms).unwrap_or(i64::MAX))
        .bind(i64::try_from(counts.timed).unwrap_or(i64::MAX))
        .bind(counts.first_created_ms)
        .bind(counts.last_changed_ms)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    }
    Ok(())
}

/// Every cell of `owner`'s tasks, or of all.
pub async fn read(pool: &PgPool, owner: Option<&str>) -> Result<Vec<Cell>, StorageError> {
    let rows = sqlx::query(
        "SELECT owner, plugin, has_project, project, has_agent, agent, day, \
         by_status, duration_ms, timed, first_created_ms, last_changed_ms \
         FROM task_cells WHERE $1::text IS NULL OR owner = $1",
    )
    .bind(owner)
    .fetch_all(pool)
    .await
    .map_err(pg_error)?;
    rows.iter()
        .map(|row| {
            let label = |present: &str, value: &str| -> Result<Option<String>, StorageError> {
                let present: bool = row.try_get(present).map_err(pg_error)?;
                Ok(if present {
                    Some(row.try_get(value).map_err(pg_error)?)
                } else {
                    None
                })
            };
            let by_status: Vec<i64> = row.try_get("by_status").map_err(pg_error)?;
            let mut counts = CellCounts::default();
            for (slot, n) in counts.by_status.iter_mut().zip(by_status) {
                *slot = non_negative(n);
            }
            counts.duration_ms = non_negative(row.try_get("duration_ms").map_err(pg_error)?);
            counts.timed = non_negative(row.try_get("timed").map_err(pg_error)?);
            counts.first_created_ms = row.try_get("first_created_ms").map_err(pg_error)?;
            counts.last_changed_ms = row.try_get("last_changed_ms").map_err(pg_error)?;
            Ok(Cell {
                key: CellKey {
                    owner: row.try_get("owner").map_err(pg_error)?,
                    plugin: row.try_get("plugin").map_err(pg_error)?,
                    project: label("has_project", "project")?,
                    agent: label("has_agent", "agent")?,
                    day: row.try_get("day").map_err(pg_error)?,
                },
                counts,
            })
        })
        .collect()
}

fn non_negative(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
