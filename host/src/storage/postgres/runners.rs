//! [`RunnerStore`] on PostgreSQL: runners and jobs in two tables every host reads, so that a
//! runner may register through one host and claim and report through another, and nothing is
//! lost when a host restarts.
//!
//! A claim locks the runner's row first, which serializes claims of one runner (made through
//! any host) so that its capacity holds, then takes the oldest matching queued job with
//! `FOR UPDATE SKIP LOCKED`, so claims of different runners never wait on each other. Each job
//! change notifies [`JOBS_CHANNEL`]; every host listens and wakes its waiting claims and waits.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::notify::listen;
use super::pg_error;
use crate::model::runner::{JobStatus, ResourceUsage};
use crate::storage::StorageError;
use crate::storage::runner_store::{JobChange, JobRecord, Renewed, RunnerRecord, RunnerStore};

/// The channel job changes are announced on (no payload: listeners re-read).
pub const JOBS_CHANNEL: &str = "taskhost_runner_jobs";

pub struct PgRunners {
    pool: PgPool,
    changes: Arc<Notify>,
    listener: JoinHandle<()>,
}

impl PgRunners {
    /// The store on `pool`, listening for other hosts' job changes.
    pub fn new(pool: PgPool) -> Self {
        let changes = Arc::new(Notify::new());
        let listener = tokio::spawn(listen(pool.clone(), JOBS_CHANNEL, changes.clone()));
        Self {
            pool,
            changes,
            listener,
        }
    }
}

impl Drop for PgRunners {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn decode_error(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("PostgreSQL runner row: {e}"))
}

fn count(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn runner_from(row: &PgRow) -> Result<RunnerRecord, StorageError> {
    let capacity: i32 = row.try_get("capacity").map_err(pg_error)?;
    let profile: serde_json::Value = row.try_get("profile").map_err(pg_error)?;
    let usage: Option<serde_json::Value> = row.try_get("usage").map_err(pg_error)?;
    Ok(RunnerRecord {
        id: row.try_get("id").map_err(pg_error)?,
        name: row.try_get("name").map_err(pg_error)?,
        labels: row.try_get("labels").map_err(pg_error)?,
        capacity: u32::try_from(capacity).map_err(decode_error)?,
        owner: row.try_get("owner").map_err(pg_error)?,
        token_hash: row.try_get("token_hash").map_err(pg_error)?,
        registered_at: row.try_get("registered_at").map_err(pg_error)?,
        last_seen: row.try_get("last_seen").map_err(pg_error)?,
        profile: serde_json::from_value(profile).map_err(decode_error)?,
        usage: usage
            .map(serde_json::from_value)
            .transpose()
            .map_err(decode_error)?,
    })
}

fn job_from(row: &PgRow) -> Result<JobRecord, StorageError> {
    let status: String = row.try_get("status").map_err(pg_error)?;
    let deliveries: i32 = row.try_get("deliveries").map_err(pg_error)?;
    let steps: serde_json::Value = row.try_get("steps").map_err(pg_error)?;
    let artifacts: serde_json::Value = row.try_get("artifacts").map_err(pg_error)?;
    Ok(JobRecord {
        id: row.try_get("id").map_err(pg_error)?,
        task_id: row.try_get("task_id").map_err(pg_error)?,
        run: row.try_get("run").map_err(pg_error)?,
        labels: row.try_get("labels").map_err(pg_error)?,
        digest: row.try_get("digest").map_err(pg_error)?,
        sealed: row.try_get("sealed").map_err(pg_error)?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| decode_error(format!("unknown job status {status:?}")))?,
        runner_id: row.try_get("runner_id").map_err(pg_error)?,
        lease_until: row.try_get("lease_until").map_err(pg_error)?,
        deliveries: u32::try_from(deliveries).map_err(decode_error)?,
        steps: serde_json::from_value(steps).map_err(decode_error)?,
        artifacts: serde_json::from_value(artifacts).map_err(decode_error)?,
        cancel_requested: row.try_get("cancel_requested").map_err(pg_error)?,
        collected: row.try_get("collected").map_err(pg_error)?,
    })
}

/// Writes every column of `job` (insert, or replace of the row with its id).
async fn upsert_job(tx: &mut PgConnection, job: &JobRecord) -> Result<(), StorageError> {
    let steps = serde_json::to_value(&job.steps).map_err(decode_error)?;
    let artifacts = serde_json::to_value(&job.artifacts).map_err(decode_error)?;
    sqlx::query(
        "INSERT INTO runner_jobs (id, task_id, run, labels, digest, sealed, status, \
             runner_id, lease_until, deliveries, steps, artifacts, cancel_requested, collected)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET run = $3, status = $7, runner_id = $8,
             lease_until = $9, deliveries = $10, steps = $11, artifacts = $12,
             cancel_requested = $13, collected = $14",
    )
    .bind(&job.id)
    .bind(&job.task_id)
    .bind(&job.run)
    .bind(&job.labels)
    .bind(&job.digest)
    .bind(&job.sealed)
    .bind(job.status.as_str())
    .bind(&job.runner_id)
    .bind(job.lease_until)
    .bind(count(job.deliveries))
    .bind(steps)
    .bind(artifacts)
    .bind(job.cancel_requested)
    .bind(job.collected)
    .execute(&mut *tx)
    .await
    .map_err(pg_error)?;
    Ok(())
}

impl PgRunners {
    /// Commits a job change and announces it to every host (this one at once: its waiters
    /// need not wait for their own notification to come back).
    async fn commit_announced(
        &self,
        mut tx: Transaction<'_, Postgres>,
    ) -> Result<(), StorageError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(JOBS_CHANNEL)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        self.changes.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl RunnerStore for PgRunners {
    async fn insert_runner(&self, runner: &RunnerRecord) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        sqlx::query(
            "INSERT INTO runners (id, name, labels, capacity, owner, token_hash, registered_at, \
                 last_seen, profile, usage)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&runner.id)
        .bind(&runner.name)
        .bind(&runner.labels)
        .bind(count(runner.capacity))
        .bind(&runner.owner)
        .bind(&runner.token_hash)
        .bind(runner.registered_at)
        .bind(runner.last_seen)
        .bind(serde_json::to_value(&runner.profile).map_err(decode_error)?)
        .bind(
            runner
                .usage
                .as_ref()
                .map(serde_json::to_value)
                .transpose()
                .map_err(decode_error)?,
        )
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
        // A new runner may match jobs nobody could take.
        self.commit_announced(tx).await
    }

    async fn runner(&self, id: &str) -> Result<Option<RunnerRecord>, StorageError> {
        sqlx::query("SELECT * FROM runners WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?
            .as_ref()
            .map(runner_from)
            .transpose()
    }

    async fn runner_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RunnerRecord>, StorageError> {
        sqlx::query("SELECT * FROM runners WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?
            .as_ref()
            .map(runner_from)
            .transpose()
    }

    async fn runners(&self) -> Result<Vec<RunnerRecord>, StorageError> {
        sqlx::query("SELECT * FROM runners ORDER BY registered_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?
            .iter()
            .map(runner_from)
            .collect()
    }

    async fn remove_runner(&self, id: &str) -> Result<bool, StorageError> {
        let removed = sqlx::query("DELETE FROM runners WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn heartbeat(
        &self,
        id: &str,
        now: DateTime<Utc>,
        usage: Option<&ResourceUsage>,
        running: &[String],
        until: DateTime<Utc>,
    ) -> Result<Option<Vec<Renewed>>, StorageError> {
        let usage = usage
            .map(serde_json::to_value)
            .transpose()
            .map_err(decode_error)?;
        let seen = sqlx::query(
            "UPDATE runners SET last_seen = $2, usage = COALESCE($3, usage) WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(usage)
        .execute(&self.pool)
        .await
        .map_err(pg_error)?
        .rows_affected();
        if seen == 0 {
            return Ok(None);
        }
        if running.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let rows = sqlx::query(
            "UPDATE runner_jobs SET lease_until = $3
             WHERE id = ANY($2) AND runner_id = $1 AND status = 'running'
             RETURNING id, cancel_requested",
        )
        .bind(id)
        .bind(running)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        let mut renewed = rows
            .iter()
            .map(|row| {
                Ok(Renewed {
                    job_id: row.try_get("id").map_err(pg_error)?,
                    cancel_requested: row.try_get("cancel_requested").map_err(pg_error)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        renewed.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        Ok(Some(renewed))
    }

    async fn running_jobs(&self) -> Result<Vec<(String, String)>, StorageError> {
        sqlx::query_as("SELECT id, runner_id FROM runner_jobs WHERE status = 'running' ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)
    }

    async fn insert_job(&self, job: &JobRecord) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        upsert_job(&mut tx, job).await?;
        self.commit_announced(tx).await
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StorageError> {
        sqlx::query("SELECT * FROM runner_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?
            .as_ref()
            .map(job_from)
            .transpose()
    }

    async fn claim_job(
        &self,
        runner: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StorageError> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let Some(record) = sqlx::query("SELECT * FROM runners WHERE id = $1 FOR UPDATE")
            .bind(runner)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let record = runner_from(&record)?;
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM runner_jobs WHERE runner_id = $1 AND status = 'running'",
        )
        .bind(runner)
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_error)?;
        if running >= i64::from(record.capacity) {
            return Ok(None);
        }
        let Some(row) = sqlx::query(
            "SELECT * FROM runner_jobs
             WHERE status = 'queued' AND labels <@ $1
             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&record.labels)
        .fetch_optional(&mut *tx)
        .await
        .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let mut job = job_from(&row)?;
        job.status = JobStatus::Running;
        job.runner_id = Some(runner.to_owned());
        job.deliveries += 1;
        job.lease_until = Some(until);
        upsert_job(&mut tx, &job).await?;
        tx.commit().await.map_err(pg_error)?;
        Ok(Some(job))
    }

    async fn update_job(
        &self,
        id: &str,
        change: JobChange<'_>,
    ) -> Result<Option<(JobRecord, bool)>, StorageError> {
        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let Some(row) = sqlx::query("SELECT * FROM runner_jobs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let stored = job_from(&row)?;
        let mut job = stored.clone();
        if !change(&mut job) {
            return Ok(Some((stored, false)));
        }
        upsert_job(&mut tx, &job).await?;
        self.commit_announced(tx).await?;
        Ok(Some((job, true)))
    }

    async fn uncollected_jobs(&self, task_id: &str) -> Result<Vec<JobRecord>, StorageError> {
        sqlx::query("SELECT * FROM runner_jobs WHERE task_id = $1 AND NOT collected ORDER BY id")
            .bind(task_id)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?
            .iter()
            .map(job_from)
            .collect()
    }

    async fn lapsed_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        sqlx::query_scalar(
            "SELECT id FROM runner_jobs WHERE status = 'running' AND lease_until <= $1
             ORDER BY id LIMIT $2",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)
    }

    async fn forget_finished(&self, keep: usize) -> Result<u64, StorageError> {
        let removed = sqlx::query(
            "DELETE FROM runner_jobs WHERE id IN (
                 SELECT id FROM runner_jobs WHERE status NOT IN ('queued', 'running')
                 ORDER BY id DESC OFFSET $1)",
        )
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(pg_error)?
        .rows_affected();
        Ok(removed)
    }

    fn job_changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
