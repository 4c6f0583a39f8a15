//! Task listings and retention's choice of tasks on PostgreSQL: the [`TaskQuery`] filters as
//! one `WHERE`, its order with the same tie-breaks as every backend (the field, then creation
//! time, then id; descending reverses all three), and the total from the same filter.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::pg_error;
use crate::model::{Task, TaskStatus};
use crate::storage::codec::decode;
use crate::storage::{SortField, StorageError, TaskQuery};

/// The page of tasks `query` asks for, and how many match in all.
pub async fn list(pool: &PgPool, query: &TaskQuery) -> Result<(Vec<Task>, u64), StorageError> {
    let mut total = QueryBuilder::<Postgres>::new("SELECT count(*) FROM tasks");
    filter(&mut total, query);
    let total: i64 = total
        .build_query_scalar()
        .fetch_one(pool)
        .await
        .map_err(pg_error)?;

    let mut page = QueryBuilder::<Postgres>::new("SELECT body FROM tasks");
    filter(&mut page, query);
    let field = match query.sort {
        SortField::CreatedAt => "created_at",
        SortField::UpdatedAt => "updated_at",
        SortField::Priority => "priority",
    };
    let direction = if query.ascending { "ASC" } else { "DESC" };
    // Ids compare bytewise, as on sled, whatever the database's collation.
    page.push(format!(
        " ORDER BY {field} {direction}, created_at {direction}, id COLLATE \"C\" {direction}"
    ));
    page.push(" LIMIT ")
        .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
    page.push(" OFFSET ")
        .push_bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
    let bodies: Vec<Vec<u8>> = page
        .build_query_scalar()
        .fetch_all(pool)
        .await
        .map_err(pg_error)?;
    let tasks = bodies
        .iter()
        .map(|body| decode(body))
        .collect::<Result<_, _>>()?;
    Ok((tasks, u64::try_from(total).unwrap_or(0)))
}

fn filter(sql: &mut QueryBuilder<Postgres>, query: &TaskQuery) {
    sql.push(" WHERE true");
    if let Some(status) = query.status {
        sql.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(plugin) = &query.plugin {
        sql.push(" AND plugin = ").push_bind(plugin.clone());
    }
    if let Some(plugins) = &query.plugins {
        sql.push(" AND plugin = ANY(")
            .push_bind(plugins.clone())
            .push(")");
    }
    if let Some(task_type) = &query.task_type {
        sql.push(" AND task_type = ").push_bind(task_type.clone());
    }
    if let Some(owner) = &query.owner {
        sql.push(" AND owner = ").push_bind(owner.clone());
    }
    if !query.labels.is_empty() {
        let wanted: serde_json::Map<String, serde_json::Value> = query
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        // Two filters on one key with different values match nothing, as in the model.
        let mut seen = std::collections::BTreeMap::new();
        for (k, v) in &query.labels {
            if seen.insert(k, v).is_some_and(|earlier| earlier != v) {
                sql.push(" AND false");
            }
        }
        sql.push(" AND labels @> ")
            .push_bind(serde_json::Value::Object(wanted));
    }
    if let Some(after) = query.created_after {
        sql.push(" AND created_at > ").push_bind(after);
    }
    if let Some(before) = query.created_before {
        sql.push(" AND created_at < ").push_bind(before);
    }
}

/// The ids retention removes next, oldest last update first: those updated before `before`,
/// and beyond them as many as the newest `keep` finished tasks leave over, at most `limit`.
pub async fn prune_candidates(
    pool: &PgPool,
    before: DateTime<Utc>,
    keep: u64,
    limit: usize,
) -> Result<Vec<String>, StorageError> {
    let finished = terminal_statuses();
    let (finished_count, older): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE updated_at < $2) FROM tasks \
         WHERE status = ANY($1)",
    )
    .bind(&finished)
    .bind(before)
    .fetch_one(pool)
    .await
    .map_err(pg_error)?;
    let over = u64::try_from(finished_count)
        .unwrap_or(0)
        .saturating_sub(keep);
    let due = over
        .max(u64::try_from(older).unwrap_or(0))
        .min(limit as u64);
    if due == 0 {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "SELECT id FROM tasks WHERE status = ANY($1) \
         ORDER BY updated_at, id COLLATE \"C\" LIMIT $2",
    )
    .bind(&finished)
    .bind(i64::try_from(due).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(pg_error)
}

fn terminal_statuses() -> Vec<&'static str> {
    TaskStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(TaskStatus::as_str)
        .collect()
}
