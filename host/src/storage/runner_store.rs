//! Runner registrations and the jobs handed to them, in storage so that they outlive a host
//! restart and every host sharing the store sees the same runners, jobs and leases: a runner
//! may register through one host and heartbeat, claim and report through any other.
//!
//! The store keeps each change atomic (a claim checks the runner's capacity and takes the
//! oldest matching job in one step, so two hosts never lease one job twice or overfill a
//! runner); what a change means (when a job is leased, lost, cancelled) is the registry's
//! ([`crate::runners`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::StorageError;
use crate::model::runner::{Artifact, JobStatus, ResourceUsage, RunnerProfile, StepOutcome};

/// A registered runner. Its token is kept only as a SHA-256 hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: u32,
    pub owner: String,
    pub token_hash: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    #[serde(default)]
    pub profile: RunnerProfile,
    /// What its last heartbeat that carried usage reported.
    #[serde(default)]
    pub usage: Option<ResourceUsage>,
}

/// A job for a runner. Its spec and the dispatching run's secrets are `sealed` (they may
/// carry credentials); `labels` stay readable so that a claim can match them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub task_id: String,
    /// The run (one start of the task) that dispatched the job, or adopted it since.
    pub run: String,
    pub labels: Vec<String>,
    /// Identifies the spec, so that a later attempt of the task dispatching the same job
    /// adopts the one still in flight instead of running it twice.
    pub digest: String,
    pub sealed: String,
    pub status: JobStatus,
    pub runner_id: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub deliveries: u32,
    pub steps: Vec<StepOutcome>,
    pub artifacts: Vec<Artifact>,
    pub cancel_requested: bool,
    /// The run that dispatched or adopted the job ended (not by a host stopping) and so took
    /// its outcome: a later run of the task dispatches afresh instead of adopting it.
    #[serde(default)]
    pub collected: bool,
}

impl JobRecord {
    /// Leased to `runner` right now.
    pub fn is_leased_to(&self, runner: &str) -> bool {
        self.status == JobStatus::Running && self.runner_id.as_deref() == Some(runner)
    }
}

/// Turns a stored job into its next form; `false` leaves it as it is, unwritten.
pub type JobChange<'a> = &'a (dyn Fn(&mut JobRecord) -> bool + Send + Sync);

/// A job a heartbeat renewed, and whether its task asked for it to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewed {
    pub job_id: String,
    pub cancel_requested: bool,
}

/// Runners and their jobs. Every backend passes the runner checks of the conformance suite.
#[async_trait]
pub trait RunnerStore: Send + Sync {
    /// Stores a new runner (its id and token hash are fresh).
    async fn insert_runner(&self, runner: &RunnerRecord) -> Result<(), StorageError>;
    async fn runner(&self, id: &str) -> Result<Option<RunnerRecord>, StorageError>;
    async fn runner_by_token(&self, token_hash: &str)
    -> Result<Option<RunnerRecord>, StorageError>;
    /// Every runner, oldest registration first.
    async fn runners(&self) -> Result<Vec<RunnerRecord>, StorageError>;
    /// Forgets a runner; `false` when there was none. Its jobs stay as they are (the registry
    /// puts them back).
    async fn remove_runner(&self, id: &str) -> Result<bool, StorageError>;
    /// Marks the runner seen at `now` (with the resource `usage` it reported, if it did) and
    /// extends to `until` the leases it holds among `running`; `None` when the runner is
    /// unknown.
    async fn heartbeat(
        &self,
        id: &str,
        now: DateTime<Utc>,
        usage: Option<&ResourceUsage>,
        running: &[String],
        until: DateTime<Utc>,
    ) -> Result<Option<Vec<Renewed>>, StorageError>;
    /// Running jobs as `(job, runner)`, in job order.
    async fn running_jobs(&self) -> Result<Vec<(String, String)>, StorageError>;

    /// Stores a new job.
    async fn insert_job(&self, job: &JobRecord) -> Result<(), StorageError>;
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StorageError>;
    /// Leases to `runner` until `until` the oldest queued job whose labels it all carries, if
    /// it has a free slot (running jobs below its capacity): the job running, one more
    /// delivery. `None` when there is no such job or no such runner.
    async fn claim_job(
        &self,
        runner: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StorageError>;
    /// Applies `change` to the stored job atomically: the job as stored afterwards, and
    /// whether the change was written (a declined change leaves it as it was); `None` when
    /// there is no such job.
    async fn update_job(
        &self,
        id: &str,
        change: JobChange<'_>,
    ) -> Result<Option<(JobRecord, bool)>, StorageError>;
    /// A task's jobs no run has collected yet (running, or ended while no run watched), in
    /// job order.
    async fn uncollected_jobs(&self, task_id: &str) -> Result<Vec<JobRecord>, StorageError>;
    /// Up to `limit` running jobs whose lease ended at or before `now`.
    async fn lapsed_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;
    /// Removes finished jobs beyond the newest `keep`; how many went.
    async fn forget_finished(&self, keep: usize) -> Result<u64, StorageError>;

    /// Notified on every job change written through this store and, on a shared store, by
    /// other hosts (best effort: a missed notification must be covered by polling).
    fn job_changes(&self) -> Arc<Notify>;
}
