//! Registered runners and the jobs leased to them: the host side of delegated execution.
//!
//! A runner registers with labels and a capacity and gets a token (shown once, kept as a
//! sha256 hash). Plugins dispatch jobs for their task; a runner claims a queued job whose
//! labels it all carries while it has free capacity, and holds it on a lease that each
//! heartbeat or report renews. A lease that lapses puts the job back in the queue
//! (at-least-once delivery) until it has been delivered `max_deliveries` times; then it is
//! `lost`. Runners whose last heartbeat is older than `offline_after_s` are shown offline.
//!
//! Runners, jobs and leases live in the store ([`crate::storage::runner_store`]): they outlive
//! a host restart, and on a store several hosts share a runner may register through one host
//! and claim and report through any other. A job's spec and its run's secrets are sealed with
//! the secrets key before they are stored. A later run of a task (after a crash, a takeover
//! or a restart) that dispatches the same job as the run before adopts the job still in
//! flight, so a runner's work is not done twice because a host went away.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

mod access;
mod fleet;
mod spec;
#[cfg(test)]
mod tests;

pub use crate::model::runner::{
    Artifact, Fact, JobStatus, ResourceUsage, RunnerProfile, StepOutcome,
};
pub use fleet::{CurrentJob, FleetSummary, RunnerFilter, RunnerList, RunnerState, RunnerView};
pub use spec::{
    JobSpec, MAX_ARTIFACTS, MAX_LINE_BYTES, MAX_OUTPUT_TAIL, MAX_STEP_NAME, StepSpec, keep_end,
};

use crate::auth::{SecretBox, random_token, sha256_hex};
use crate::storage::runner_store::{JobRecord, RunnerRecord};
use crate::storage::{Storage, StorageError};

/// Finished jobs remembered for `wait` and the API.
const KEEP_FINISHED_JOBS: usize = 10_000;
/// How often a waiting claim or wait looks again without a notification (one can be lost
/// while a host's listening connection is down).
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Lapsed leases put back per reaper pass.
const REAP_BATCH: usize = 500;
/// Reaper passes between two trims of finished jobs.
const FORGET_EVERY_TICKS: u32 = 60;

/// Runner settings (`[runners]` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerConfig {
    /// How often runners are asked to heartbeat.
    pub heartbeat_interval_s: u64,
    /// A runner silent for this long is shown offline.
    pub offline_after_s: u64,
    /// How long a claimed job stays leased without a heartbeat or report.
    pub lease_s: u64,
    /// Deliveries of one job before it is given up as lost.
    pub max_deliveries: u32,
    /// Longest a claim request may wait for a job.
    pub max_claim_wait_ms: u64,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_s: 10,
            offline_after_s: 30,
            lease_s: 30,
            max_deliveries: 3,
            max_claim_wait_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("runner {0} is not registered")]
    UnknownRunner(String),
    #[error("job {0} does not exist")]
    UnknownJob(String),
    #[error("job {0} is not leased to this runner")]
    NotLeased(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    /// The store failed; the cause is for the logs.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A job as plugins and the API see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobState {
    pub id: String,
    pub task_id: String,
    pub status: JobStatus,
    pub runner_id: Option<String>,
    pub deliveries: u32,
    pub steps: Vec<StepOutcome>,
    pub artifacts: Vec<Artifact>,
}

/// What registration returns: the runner and its token, in clear this once.
#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    #[serde(flatten)]
    pub runner: RunnerView,
    pub token: String,
}

/// A job handed to a runner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    pub job_id: String,
    pub task_id: String,
    pub delivery: u32,
    pub lease_s: u64,
    pub spec: JobSpec,
}

/// What the host tells a runner at a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Jobs to stop: cancelled by their task, or no longer leased to this runner.
    pub stop: Vec<String>,
    pub heartbeat_interval_s: u64,
}

/// What is sealed in a stored job: the spec (its env may carry credentials) and the
/// dispatching run's secret values, masked out of what the runner reports.
#[derive(Serialize, Deserialize)]
struct SealedJob {
    spec: JobSpec,
    secrets: Vec<String>,
}

/// The task a runner's report is about, and what to mask in it.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub task_id: String,
    pub secrets: Arc<Vec<String>>,
}

fn state_of(job: JobRecord) -> JobState {
    JobState {
        id: job.id,
        task_id: job.task_id,
        status: job.status,
        runner_id: job.runner_id,
        deliveries: job.deliveries,
        steps: job.steps,
        artifacts: job.artifacts,
    }
}

fn seconds(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// The registry, on the store. Cheap to clone.
#[derive(Clone)]
pub struct Runners {
    config: Arc<RunnerConfig>,
    storage: Arc<dyn Storage>,
    sealer: Arc<SecretBox>,
    /// Set when the host shuts down: claims stop waiting so that connections can drain.
    closed: Arc<AtomicBool>,
    closing: Arc<Notify>,
}

impl Runners {
    pub fn new(config: RunnerConfig, storage: Arc<dyn Storage>, sealer: Arc<SecretBox>) -> Self {
        Self {
            config: Arc::new(config),
            storage,
            sealer,
            closed: Arc::new(AtomicBool::new(false)),
            closing: Arc::new(Notify::new()),
        }
    }

    /// Ends waiting claims (they answer "no job") and makes later ones return at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    fn lease_until(&self) -> DateTime<Utc> {
        Utc::now() + seconds(self.config.lease_s)
    }

    fn seal(&self, spec: JobSpec, secrets: Vec<String>) -> Result<String, RunnerError> {
        let value = serde_json::to_value(SealedJob { spec, secrets })
            .map_err(|e| StorageError::Backend(format!("encode job: {e}")))?;
        Ok(self.sealer.seal(&value))
    }

    fn unseal(&self, job: &JobRecord) -> Result<SealedJob, RunnerError> {
        let value = self.sealer.unseal(&job.sealed).map_err(|e| {
            // Every host must share one secrets key (README, "Several hosts").
            StorageError::Backend(format!("job {}: {e}", job.id))
        })?;
        serde_json::from_value(value)
            .map_err(|e| StorageError::Backend(format!("decode job {}: {e}", job.id)).into())
    }

    fn context(&self, job: &JobRecord) -> Result<JobContext, RunnerError> {
        Ok(JobContext {
            task_id: job.task_id.clone(),
            secrets: Arc::new(self.unseal(job)?.secrets),
        })
    }

    pub async fn register(
        &self,
        owner: &str,
        name: &str,
        labels: Vec<String>,
        capacity: u32,
    ) -> Result<Registered, RunnerError> {
        self.register_with_profile(owner, name, labels, capacity, RunnerProfile::default())
            .await
    }

    /// [`register`](Self::register), with what the runner says about itself.
    pub async fn register_with_profile(
        &self,
        owner: &str,
        name: &str,
        labels: Vec<String>,
        capacity: u32,
        profile: RunnerProfile,
    ) -> Result<Registered, RunnerError> {
        fleet::check_profile(&profile)?;
        if name.is_empty() || name.chars().count() > 128 {
            return Err(RunnerError::Invalid(
                "a runner name is 1 to 128 characters".into(),
            ));
        }
        if labels.len() > spec::MAX_LABELS
            || labels
                .iter()
                .any(|l| l.is_empty() || l.chars().count() > 128)
        {
            return Err(RunnerError::Invalid(
                "a runner has at most 32 labels of 1 to 128 characters".into(),
            ));
        }
        if !(1..=1024).contains(&capacity) {
            return Err(RunnerError::Invalid("capacity is 1 to 1024 jobs".into()));
        }
        let mut labels = labels;
        labels.sort();
        labels.dedup();
        let token = format!("thr_{}", random_token(32));
        let now = Utc::now();
        let runner = RunnerRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            labels,
            capacity,
            owner: owner.to_owned(),
            token_hash: sha256_hex(&token),
            registered_at: now,
            last_seen: now,
            profile,
            usage: None,
        };
        self.storage.runners().insert_runner(&runner).await?;
        Ok(Registered {
            runner: self.view(runner, &[]).await?,
            token,
        })
    }

    /// The runner a token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Option<String>, RunnerError> {
        if !token.starts_with("thr_") {
            return Ok(None);
        }
        let runner = self
            .storage
            .runners()
            .runner_by_token(&sha256_hex(token))
            .await?;
        Ok(runner.map(|r| r.id))
    }

    /// Forgets a runner; the jobs it held go back to the queue.
    pub async fn unregister(&self, id: &str) -> Result<(), RunnerError> {
        let store = self.storage.runners();
        if !store.remove_runner(id).await? {
            return Err(RunnerError::UnknownRunner(id.to_owned()));
        }
        for (job, runner) in store.running_jobs().await? {
            if runner == id {
                self.requeue(&job, Requeue::LeftBy(id)).await?;
            }
        }
        Ok(())
    }

    /// Marks the runner alive, renews the leases of the jobs it says it runs, and says
    /// which jobs it should stop.
    pub async fn heartbeat(
        &self,
        id: &str,
        running: &[String],
        usage: Option<BTreeMap<String, f64>>,
    ) -> Result<HeartbeatReply, RunnerError> {
        if let Some(values) = &usage {
            fleet::check_usage(values)?;
        }
        let now = Utc::now();
        let usage = usage.map(|values| ResourceUsage {
            values,
            reported_at: now,
        });
        let renewed = self
            .storage
            .runners()
            .heartbeat(id, now, usage.as_ref(), running, self.lease_until())
            .await?
            .ok_or_else(|| RunnerError::UnknownRunner(id.to_owned()))?;
        let stop = running
            .iter()
            .filter(|job| {
                renewed
                    .iter()
                    .find(|r| &r.job_id == *job)
                    .is_none_or(|r| r.cancel_requested)
            })
            .cloned()
            .collect();
        Ok(HeartbeatReply {
            stop,
            heartbeat_interval_s: self.config.heartbeat_interval_s,
        })
    }

    /// Queues a job for run `run` of task `task_id`; returns its id. `secrets` are masked
    /// out of its reports. An unfinished job an earlier run of the task dispatched with the
    /// same spec (that run died with its host, or was stopped by a shutdown) is adopted
    /// instead, its id returned, so that the runner's work is not done twice.
    pub async fn dispatch(
        &self,
        task_id: &str,
        run: &str,
        spec: JobSpec,
        secrets: Vec<String>,
    ) -> Result<String, RunnerError> {
        spec.validate()?;
        let encoded = serde_json::to_string(&spec)
            .map_err(|e| StorageError::Backend(format!("encode job: {e}")))?;
        let digest = sha256_hex(&encoded);
        let store = self.storage.runners();
        for earlier in store.uncollected_jobs(task_id).await? {
            if earlier.digest != digest || earlier.run == run {
                continue;
            }
            // Queued or running, or ended while no run watched (its outcome is this run's);
            // not one cancelled or lost, which a fresh job does better.
            let adopt = |job: &mut JobRecord| {
                let usable = !matches!(job.status, JobStatus::Cancelled | JobStatus::Lost)
                    && !job.cancel_requested
                    && !job.collected;
                if usable && job.run != run {
                    job.run = run.to_owned();
                    return true;
                }
                false
            };
            if let Some((_, true)) = store.update_job(&earlier.id, &adopt).await? {
                tracing::info!(task = task_id, job = %earlier.id, "a new run adopted the job an earlier run left");
                return Ok(earlier.id);
            }
        }
        let mut labels = spec.labels.clone();
        labels.sort();
        labels.dedup();
        let job = JobRecord {
            id: uuid::Uuid::now_v7().to_string(),
            task_id: task_id.to_owned(),
            run: run.to_owned(),
            labels,
            digest,
            sealed: self.seal(spec, secrets)?,
            status: JobStatus::Queued,
            runner_id: None,
            lease_until: None,
            deliveries: 0,
            steps: Vec::new(),
            artifacts: Vec::new(),
            cancel_requested: false,
            collected: false,
        };
        store.insert_job(&job).await?;
        Ok(job.id)
    }

    /// Leases the next queued job this runner can take, waiting up to `wait` for one.
    pub async fn claim(
        &self,
        runner_id: &str,
        wait: Duration,
    ) -> Result<Option<Lease>, RunnerError> {
        let wait = wait.min(Duration::from_millis(self.config.max_claim_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        let store = self.storage.runners();
        let changes = store.job_changes();
        loop {
            // Registered before the check, so a dispatch between the two is not missed.
            let changed = changes.notified();
            let closing = self.closing.notified();
            tokio::pin!(changed, closing);
            changed.as_mut().enable();
            closing.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            if let Some(job) = store.claim_job(runner_id, self.lease_until()).await? {
                let sealed = self.unseal(&job)?;
                return Ok(Some(Lease {
                    job_id: job.id,
                    task_id: job.task_id,
                    delivery: job.deliveries,
                    lease_s: self.config.lease_s,
                    spec: sealed.spec,
                }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let recheck = (now + RECHECK_EVERY).min(deadline);
            tokio::select! {
                _ = changed => {}
                _ = closing => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Applies `change` to a job leased to `runner_id`, renewing its lease.
    async fn change_leased(
        &self,
        runner_id: &str,
        job_id: &str,
        change: &(dyn Fn(&mut JobRecord) + Send + Sync),
    ) -> Result<JobRecord, RunnerError> {
        let lease_until = self.lease_until();
        let leased = |job: &mut JobRecord| {
            if !job.is_leased_to(runner_id) {
                return false;
            }
            job.lease_until = Some(lease_until);
            change(job);
            true
        };
        match self.storage.runners().update_job(job_id, &leased).await? {
            None => Err(RunnerError::UnknownJob(job_id.to_owned())),
            Some((_, false)) => Err(RunnerError::NotLeased(job_id.to_owned())),
            Some((job, true)) => Ok(job),
        }
    }

    /// Records a finished step (which also renews the lease).
    pub async fn step_finished(
        &self,
        runner_id: &str,
        job_id: &str,
        mut outcome: StepOutcome,
    ) -> Result<JobContext, RunnerError> {
        let context = self.job_context(job_id).await?;
        // Masked first, then cut: a cut must not leave the end of a secret behind.
        outcome.output_tail = keep_end(
            &crate::auth::redact(&outcome.output_tail, &context.secrets),
            MAX_OUTPUT_TAIL,
        );
        self.change_leased(runner_id, job_id, &|job| job.steps.push(outcome.clone()))
            .await?;
        Ok(context)
    }

    /// Renews the lease of a job whose runner reported on it.
    pub async fn touch(&self, runner_id: &str, job_id: &str) -> Result<JobContext, RunnerError> {
        let job = self.change_leased(runner_id, job_id, &|_| {}).await?;
        self.context(&job)
    }

    /// The task a job belongs to and its secrets, whatever the job's state.
    pub async fn job_context(&self, job_id: &str) -> Result<JobContext, RunnerError> {
        let job = self.record(job_id).await?;
        self.context(&job)
    }

    async fn record(&self, job_id: &str) -> Result<JobRecord, RunnerError> {
        self.storage
            .runners()
            .job(job_id)
            .await?
            .ok_or_else(|| RunnerError::UnknownJob(job_id.to_owned()))
    }

    /// Ends a job with the runner's outcome.
    pub async fn finish(
        &self,
        runner_id: &str,
        job_id: &str,
        status: JobStatus,
        artifacts: Vec<Artifact>,
    ) -> Result<JobState, RunnerError> {
        if !status.is_terminal() || status == JobStatus::Lost {
            return Err(RunnerError::Invalid(
                "a runner ends a job as succeeded, failed, cancelled or timed_out".into(),
            ));
        }
        if artifacts.len() > MAX_ARTIFACTS {
            return Err(RunnerError::Invalid(format!(
                "a job reports at most {MAX_ARTIFACTS} artifacts"
            )));
        }
        artifacts.iter().try_for_each(Artifact::validate)?;
        let job = self
            .change_leased(runner_id, job_id, &|job| {
                job.artifacts = artifacts.clone();
                job.status = status;
                job.lease_until = None;
            })
            .await?;
        Ok(state_of(job))
    }

    pub async fn job(&self, job_id: &str) -> Result<JobState, RunnerError> {
        self.record(job_id).await.map(state_of)
    }

    /// The task a job belongs to.
    pub async fn task_of(&self, job_id: &str) -> Result<String, RunnerError> {
        self.record(job_id).await.map(|job| job.task_id)
    }

    /// Waits up to `timeout` for the job to end; its state either way.
    pub async fn wait(&self, job_id: &str, timeout: Duration) -> Result<JobState, RunnerError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let changes = self.storage.runners().job_changes();
        loop {
            let changed = changes.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let job = self.job(job_id).await?;
            let now = tokio::time::Instant::now();
            if job.status.is_terminal() || now >= deadline {
                return Ok(job);
            }
            let recheck = (now + RECHECK_EVERY).min(deadline);
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Cancels a job: at once when queued, at the runner's next heartbeat when running.
    pub async fn cancel(&self, job_id: &str) -> Result<JobState, RunnerError> {
        let cancel = |job: &mut JobRecord| match job.status {
            JobStatus::Queued => {
                job.status = JobStatus::Cancelled;
                true
            }
            JobStatus::Running if !job.cancel_requested => {
                job.cancel_requested = true;
                true
            }
            _ => false,
        };
        match self.storage.runners().update_job(job_id, &cancel).await? {
            Some((job, _)) => Ok(state_of(job)),
            None => Err(RunnerError::UnknownJob(job_id.to_owned())),
        }
    }

    /// Settles the jobs a task's run leaves when it ends (not by a host stopping): each is
    /// collected, so no later run adopts it, and cancelled if it has not ended.
    pub async fn settle_task_jobs(&self, task_id: &str) -> Result<(), RunnerError> {
        let settle = |job: &mut JobRecord| {
            match job.status {
                JobStatus::Queued => job.status = JobStatus::Cancelled,
                JobStatus::Running => job.cancel_requested = true,
                _ => {}
            }
            job.collected = true;
            true
        };
        let store = self.storage.runners();
        for job in store.uncollected_jobs(task_id).await? {
            store.update_job(&job.id, &settle).await?;
        }
        Ok(())
    }

    /// Ends a running job's lease: back in the queue, or cancelled when its task asked, or
    /// lost after `max_deliveries`. Only while `reason` still holds.
    async fn requeue(&self, job_id: &str, reason: Requeue<'_>) -> Result<bool, RunnerError> {
        let max = self.config.max_deliveries;
        let release = |job: &mut JobRecord| {
            let holds = match reason {
                Requeue::LapsedBy(now) => job.lease_until.is_some_and(|t| t <= now),
                Requeue::LeftBy(runner) => job.runner_id.as_deref() == Some(runner),
            };
            if job.status != JobStatus::Running || !holds {
                return false;
            }
            job.runner_id = None;
            job.lease_until = None;
            job.status = if job.cancel_requested {
                JobStatus::Cancelled
            } else if job.deliveries >= max {
                JobStatus::Lost
            } else {
                JobStatus::Queued
            };
            true
        };
        let changed = self.storage.runners().update_job(job_id, &release).await?;
        Ok(matches!(changed, Some((_, true))))
    }

    /// Puts back the jobs whose lease lapsed before `now`; returns their ids.
    pub async fn reap_expired(&self, now: DateTime<Utc>) -> Result<Vec<String>, RunnerError> {
        let lapsed = self.storage.runners().lapsed_jobs(now, REAP_BATCH).await?;
        let mut released = Vec::new();
        for id in lapsed {
            if self.requeue(&id, Requeue::LapsedBy(now)).await? {
                released.push(id);
            }
        }
        Ok(released)
    }

    /// Every second, puts back jobs whose lease lapsed, and now and then forgets old finished
    /// jobs; stops when the store is dropped or the registry closed. Every host sharing a
    /// store runs one: each release is a guarded change, so two reapers release a job once.
    pub fn spawn_reaper(&self) {
        let storage: Weak<dyn Storage> = Arc::downgrade(&self.storage);
        let (config, sealer) = (self.config.clone(), self.sealer.clone());
        let (closed, closing) = (self.closed.clone(), self.closing.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut ticks = 0u32;
            loop {
                tick.tick().await;
                let Some(storage) = storage.upgrade() else {
                    return;
                };
                if closed.load(Ordering::Acquire) {
                    return;
                }
                let runners = Runners {
                    config: config.clone(),
                    storage,
                    sealer: sealer.clone(),
                    closed: closed.clone(),
                    closing: closing.clone(),
                };
                match runners.reap_expired(Utc::now()).await {
                    Ok(jobs) => {
                        for job in jobs {
                            tracing::warn!(%job, "a runner's lease lapsed; the job goes back to the queue");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "putting back lapsed runner jobs failed"),
                }
                ticks += 1;
                if ticks.is_multiple_of(FORGET_EVERY_TICKS)
                    && let Err(e) = runners.forget_finished(KEEP_FINISHED_JOBS).await
                {
                    tracing::warn!(error = %e, "forgetting finished runner jobs failed");
                }
            }
        });
    }

    /// Forgets finished jobs beyond the newest `keep` so that the store stays bounded.
    pub async fn forget_finished(&self, keep: usize) -> Result<u64, RunnerError> {
        Ok(self.storage.runners().forget_finished(keep).await?)
    }
}

/// Why a running job's lease ends.
#[derive(Clone, Copy)]
enum Requeue<'a> {
    /// Its lease lapsed at or before this time.
    LapsedBy(DateTime<Utc>),
    /// Its runner, this one, was removed.
    LeftBy(&'a str),
}
