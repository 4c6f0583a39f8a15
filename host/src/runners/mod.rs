//! Registered runners and the jobs leased to them: the host side of delegated execution.
//!
//! A runner registers with labels and a capacity and gets a token (shown once, kept as a
//! sha256 hash). Plugins dispatch jobs for their task; a runner claims a queued job whose
//! labels it all carries while it has free capacity, and holds it on a lease that each
//! heartbeat or report renews. A lease that lapses puts the job back in the queue
//! (at-least-once delivery) until it has been delivered `max_deliveries` times; then it is
//! `lost`. Runners whose last heartbeat is older than `offline_after_s` are shown offline.
//!
//! Everything here lives in memory: after a host restart, runners re-register and the tasks
//! whose jobs were in flight are recovered by the engine and dispatch again.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

mod access;

/// Longest log line a runner reports that is kept.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Longest step output tail kept.
pub const MAX_OUTPUT_TAIL: usize = 64 * 1024;

/// The last `max` bytes of `text` (the end of output says how it went).
pub fn keep_end(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

use crate::auth::{random_token, sha256_hex};
use crate::lock;

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
}

/// One step of a job: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub command: Vec<String>,
    pub timeout_s: Option<u32>,
}

/// What a plugin asks a runner to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub labels: Vec<String>,
    pub steps: Vec<StepSpec>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout_s: Option<u32>,
    pub metadata: serde_json::Value,
    /// Files (relative to the job's directory, `*` and `?` allowed in names) whose size and
    /// SHA-256 the runner reports when the job ends.
    #[serde(default)]
    pub artifacts: Vec<String>,
}

const MAX_STEPS: usize = 100;
/// Finished jobs remembered for `wait` and the API.
const KEEP_FINISHED_JOBS: usize = 10_000;
const MAX_LABELS: usize = 32;
const MAX_TEXT: usize = 4096;
const MAX_ARTIFACT_PATTERNS: usize = 32;
/// Artifacts one job may report.
pub const MAX_ARTIFACTS: usize = 1000;

impl JobSpec {
    fn validate(&self) -> Result<(), RunnerError> {
        let invalid = |m: &str| Err(RunnerError::Invalid(m.to_owned()));
        if self.name.is_empty() || self.name.len() > 256 {
            return invalid("a job name is 1 to 256 bytes");
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return invalid("a job has 1 to 100 steps");
        }
        if self.labels.len() > MAX_LABELS
            || self.labels.iter().any(|l| l.is_empty() || l.len() > 128)
        {
            return invalid("a job has at most 32 labels of 1 to 128 bytes");
        }
        for step in &self.steps {
            if step.command.is_empty() || step.command[0].is_empty() {
                return invalid("every step names a program");
            }
            if step
                .command
                .iter()
                .any(|a| a.len() > MAX_TEXT || a.contains('\0'))
            {
                return invalid("command arguments are at most 4096 bytes, without NUL");
            }
        }
        if self
            .env
            .iter()
            .any(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return invalid("environment names are non-empty, without '=' or NUL");
        }
        if self.artifacts.len() > MAX_ARTIFACT_PATTERNS
            || self.artifacts.iter().any(|p| !is_relative_path(p))
        {
            return invalid(
                "at most 32 artifact patterns, each a relative path without '..' of up to 1024 bytes",
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// How one step went, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub name: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub output_tail: String,
}

/// A relative path of at most 1024 bytes that stays inside the directory it is relative to.
fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.contains('\0')
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|part| part != "..")
}

/// A file a job produced, as its runner describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
}

impl Artifact {
    fn validate(&self) -> Result<(), RunnerError> {
        let hex = self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if is_relative_path(&self.path) && hex {
            Ok(())
        } else {
            Err(RunnerError::Invalid(
                "an artifact has a relative path without '..' and a 64-digit hex sha256".into(),
            ))
        }
    }
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

/// A runner as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerView {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: u32,
    pub running_jobs: Vec<String>,
    pub online: bool,
    pub owner: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
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

struct Runner {
    id: String,
    name: String,
    labels: BTreeSet<String>,
    capacity: u32,
    owner: String,
    token_hash: String,
    registered_at: DateTime<Utc>,
    last_seen: Instant,
    last_seen_at: DateTime<Utc>,
}

struct Job {
    id: String,
    task_id: String,
    spec: JobSpec,
    status: JobStatus,
    runner_id: Option<String>,
    lease_until: Option<Instant>,
    deliveries: u32,
    steps: Vec<StepOutcome>,
    artifacts: Vec<Artifact>,
    cancel_requested: bool,
    /// The owning run's secret values, masked out of what the runner reports.
    secrets: Arc<Vec<String>>,
    changed: watch::Sender<JobStatus>,
}

/// The task a runner's report is about, and what to mask in it.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub task_id: String,
    pub secrets: Arc<Vec<String>>,
}

impl Job {
    fn context(&self) -> JobContext {
        JobContext {
            task_id: self.task_id.clone(),
            secrets: self.secrets.clone(),
        }
    }

    fn state(&self) -> JobState {
        JobState {
            id: self.id.clone(),
            task_id: self.task_id.clone(),
            status: self.status,
            runner_id: self.runner_id.clone(),
            deliveries: self.deliveries,
            steps: self.steps.clone(),
            artifacts: self.artifacts.clone(),
        }
    }

    fn set_status(&mut self, status: JobStatus) {
        self.status = status;
        if status.is_terminal() {
            self.lease_until = None;
        }
        self.changed.send_replace(status);
    }
}

#[derive(Default)]
struct State {
    runners: BTreeMap<String, Runner>,
    by_token: HashMap<String, String>,
    jobs: BTreeMap<String, Job>,
    queue: VecDeque<String>,
}

impl State {
    fn running_on(&self, runner: &str) -> Vec<String> {
        self.jobs
            .values()
            .filter(|j| j.status == JobStatus::Running && j.runner_id.as_deref() == Some(runner))
            .map(|j| j.id.clone())
            .collect()
    }
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Runners {
    config: Arc<RunnerConfig>,
    state: Arc<Mutex<State>>,
    job_queued: Arc<Notify>,
    /// Set when the host shuts down: claims stop waiting so that connections can drain.
    closed: Arc<AtomicBool>,
}

impl Runners {
    pub fn new(config: RunnerConfig) -> Self {
        Self {
            config: Arc::new(config),
            state: Arc::default(),
            job_queued: Arc::new(Notify::new()),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Ends waiting claims (they answer "no job") and makes later ones return at once.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.job_queued.notify_waiters();
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    fn view(&self, state: &State, runner: &Runner) -> RunnerView {
        RunnerView {
            id: runner.id.clone(),
            name: runner.name.clone(),
            labels: runner.labels.iter().cloned().collect(),
            capacity: runner.capacity,
            running_jobs: state.running_on(&runner.id),
            online: runner.last_seen.elapsed() < Duration::from_secs(self.config.offline_after_s),
            owner: runner.owner.clone(),
            registered_at: runner.registered_at,
            last_seen: runner.last_seen_at,
        }
    }

    pub fn register(
        &self,
        owner: &str,
        name: &str,
        labels: Vec<String>,
        capacity: u32,
    ) -> Result<Registered, RunnerError> {
        if name.is_empty() || name.chars().count() > 128 {
            return Err(RunnerError::Invalid(
                "a runner name is 1 to 128 characters".into(),
            ));
        }
        if labels.len() > MAX_LABELS
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
        let id = uuid::Uuid::now_v7().to_string();
        let token = format!("thr_{}", random_token(32));
        let runner = Runner {
            id: id.clone(),
            name: name.to_owned(),
            labels: labels.into_iter().collect(),
            capacity,
            owner: owner.to_owned(),
            token_hash: sha256_hex(&token),
            registered_at: Utc::now(),
            last_seen: Instant::now(),
            last_seen_at: Utc::now(),
        };
        let mut state = lock(&self.state);
        state.by_token.insert(runner.token_hash.clone(), id.clone());
        let view = self.view(&state, &runner);
        state.runners.insert(id, runner);
        // A new runner may match jobs nobody could take.
        self.job_queued.notify_waiters();
        Ok(Registered {
            runner: view,
            token,
        })
    }

    /// The runner a token belongs to.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        if !token.starts_with("thr_") {
            return None;
        }
        lock(&self.state).by_token.get(&sha256_hex(token)).cloned()
    }

    /// Forgets a runner; the jobs it held go back to the queue.
    pub fn unregister(&self, id: &str) -> Result<(), RunnerError> {
        let mut state = lock(&self.state);
        let runner = state
            .runners
            .remove(id)
            .ok_or_else(|| RunnerError::UnknownRunner(id.to_owned()))?;
        state.by_token.remove(&runner.token_hash);
        for job_id in state.running_on(id) {
            self.requeue(&mut state, &job_id);
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<RunnerView> {
        let state = lock(&self.state);
        state
            .runners
            .values()
            .map(|r| self.view(&state, r))
            .collect()
    }

    pub fn get(&self, id: &str) -> Result<RunnerView, RunnerError> {
        let state = lock(&self.state);
        let runner = state
            .runners
            .get(id)
            .ok_or_else(|| RunnerError::UnknownRunner(id.to_owned()))?;
        Ok(self.view(&state, runner))
    }

    /// Online runners carrying every one of `labels`.
    pub fn matching(&self, labels: &[String]) -> Vec<RunnerView> {
        self.list()
            .into_iter()
            .filter(|r| r.online && labels.iter().all(|l| r.labels.contains(l)))
            .collect()
    }

    /// Marks the runner alive, renews the leases of the jobs it says it runs, and says
    /// which jobs it should stop.
    pub fn heartbeat(&self, id: &str, running: &[String]) -> Result<HeartbeatReply, RunnerError> {
        let mut state = lock(&self.state);
        let runner = state
            .runners
            .get_mut(id)
            .ok_or_else(|| RunnerError::UnknownRunner(id.to_owned()))?;
        runner.last_seen = Instant::now();
        runner.last_seen_at = Utc::now();
        let lease = Instant::now() + Duration::from_secs(self.config.lease_s);
        let mut stop = Vec::new();
        for job_id in running {
            match state.jobs.get_mut(job_id) {
                Some(job)
                    if job.status == JobStatus::Running && job.runner_id.as_deref() == Some(id) =>
                {
                    job.lease_until = Some(lease);
                    if job.cancel_requested {
                        stop.push(job_id.clone());
                    }
                }
                _ => stop.push(job_id.clone()),
            }
        }
        Ok(HeartbeatReply {
            stop,
            heartbeat_interval_s: self.config.heartbeat_interval_s,
        })
    }

    /// Queues a job for `task_id`; returns its id. `secrets` are masked out of its reports.
    pub fn dispatch(
        &self,
        task_id: &str,
        spec: JobSpec,
        secrets: Vec<String>,
    ) -> Result<String, RunnerError> {
        spec.validate()?;
        let id = uuid::Uuid::now_v7().to_string();
        let (changed, _) = watch::channel(JobStatus::Queued);
        let job = Job {
            id: id.clone(),
            task_id: task_id.to_owned(),
            spec,
            status: JobStatus::Queued,
            runner_id: None,
            lease_until: None,
            deliveries: 0,
            steps: Vec::new(),
            artifacts: Vec::new(),
            cancel_requested: false,
            secrets: Arc::new(secrets),
            changed,
        };
        let mut state = lock(&self.state);
        state.jobs.insert(id.clone(), job);
        state.queue.push_back(id.clone());
        drop(state);
        self.job_queued.notify_waiters();
        Ok(id)
    }

    fn try_claim(&self, runner_id: &str) -> Result<Option<Lease>, RunnerError> {
        let mut state = lock(&self.state);
        let runner = state
            .runners
            .get(runner_id)
            .ok_or_else(|| RunnerError::UnknownRunner(runner_id.to_owned()))?;
        let labels = runner.labels.clone();
        let capacity = runner.capacity as usize;
        if state.running_on(runner_id).len() >= capacity {
            return Ok(None);
        }
        let position = state.queue.iter().position(|job_id| {
            state
                .jobs
                .get(job_id)
                .is_some_and(|j| j.spec.labels.iter().all(|l| labels.contains(l)))
        });
        let Some(position) = position else {
            return Ok(None);
        };
        let Some(job_id) = state.queue.remove(position) else {
            return Ok(None);
        };
        let lease_s = self.config.lease_s;
        let Some(job) = state.jobs.get_mut(&job_id) else {
            return Ok(None);
        };
        job.runner_id = Some(runner_id.to_owned());
        job.deliveries += 1;
        job.lease_until = Some(Instant::now() + Duration::from_secs(lease_s));
        job.set_status(JobStatus::Running);
        Ok(Some(Lease {
            job_id: job.id.clone(),
            task_id: job.task_id.clone(),
            delivery: job.deliveries,
            lease_s,
            spec: job.spec.clone(),
        }))
    }

    /// Leases the next queued job this runner can take, waiting up to `wait` for one.
    pub async fn claim(
        &self,
        runner_id: &str,
        wait: Duration,
    ) -> Result<Option<Lease>, RunnerError> {
        let wait = wait.min(Duration::from_millis(self.config.max_claim_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a dispatch between the two is not missed.
            let notified = self.job_queued.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Ok(None);
            }
            if let Some(lease) = self.try_claim(runner_id)? {
                return Ok(Some(lease));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(None);
            }
        }
    }

    fn leased_job<'a>(
        state: &'a mut State,
        runner_id: &str,
        job_id: &str,
    ) -> Result<&'a mut Job, RunnerError> {
        let job = state
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| RunnerError::UnknownJob(job_id.to_owned()))?;
        if job.status != JobStatus::Running || job.runner_id.as_deref() != Some(runner_id) {
            return Err(RunnerError::NotLeased(job_id.to_owned()));
        }
        Ok(job)
    }

    /// Records a finished step (which also renews the lease).
    pub fn step_finished(
        &self,
        runner_id: &str,
        job_id: &str,
        mut outcome: StepOutcome,
    ) -> Result<JobContext, RunnerError> {
        let lease = Instant::now() + Duration::from_secs(self.config.lease_s);
        let mut state = lock(&self.state);
        let job = Self::leased_job(&mut state, runner_id, job_id)?;
        job.lease_until = Some(lease);
        // Masked first, then cut: a cut must not leave the end of a secret behind.
        outcome.output_tail = keep_end(
            &crate::auth::redact(&outcome.output_tail, &job.secrets),
            MAX_OUTPUT_TAIL,
        );
        job.steps.push(outcome);
        Ok(job.context())
    }

    /// Renews the lease of a job whose runner reported on it.
    pub fn touch(&self, runner_id: &str, job_id: &str) -> Result<JobContext, RunnerError> {
        let lease = Instant::now() + Duration::from_secs(self.config.lease_s);
        let mut state = lock(&self.state);
        let job = Self::leased_job(&mut state, runner_id, job_id)?;
        job.lease_until = Some(lease);
        Ok(job.context())
    }

    /// The task a job belongs to and its secrets, whatever the job's state.
    pub fn job_context(&self, job_id: &str) -> Result<JobContext, RunnerError> {
        lock(&self.state)
            .jobs
            .get(job_id)
            .map(Job::context)
            .ok_or_else(|| RunnerError::UnknownJob(job_id.to_owned()))
    }

    /// Ends a job with the runner's outcome.
    pub fn finish(
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
        let mut state = lock(&self.state);
        let job = Self::leased_job(&mut state, runner_id, job_id)?;
        job.artifacts = artifacts;
        job.set_status(status);
        Ok(job.state())
    }

    pub fn job(&self, job_id: &str) -> Result<JobState, RunnerError> {
        lock(&self.state)
            .jobs
            .get(job_id)
            .map(Job::state)
            .ok_or_else(|| RunnerError::UnknownJob(job_id.to_owned()))
    }

    /// The task a job belongs to.
    pub fn task_of(&self, job_id: &str) -> Result<String, RunnerError> {
        self.job_context(job_id).map(|context| context.task_id)
    }

    /// Waits up to `timeout` for the job to end; its state either way.
    pub async fn wait(&self, job_id: &str, timeout: Duration) -> Result<JobState, RunnerError> {
        let mut changed = lock(&self.state)
            .jobs
            .get(job_id)
            .map(|j| j.changed.subscribe())
            .ok_or_else(|| RunnerError::UnknownJob(job_id.to_owned()))?;
        let _ = tokio::time::timeout(timeout, changed.wait_for(|s| s.is_terminal())).await;
        self.job(job_id)
    }

    /// Cancels a job: at once when queued, at the runner's next heartbeat when running.
    pub fn cancel(&self, job_id: &str) -> Result<JobState, RunnerError> {
        let mut state = lock(&self.state);
        let job = state
            .jobs
            .get_mut(job_id)
            .ok_or_else(|| RunnerError::UnknownJob(job_id.to_owned()))?;
        match job.status {
            JobStatus::Queued => {
                job.set_status(JobStatus::Cancelled);
                let snapshot = job.state();
                state.queue.retain(|id| id != job_id);
                Ok(snapshot)
            }
            JobStatus::Running => {
                job.cancel_requested = true;
                Ok(job.state())
            }
            _ => Ok(job.state()),
        }
    }

    /// Cancels every unfinished job of a task (it ended, or was cancelled).
    pub fn cancel_task_jobs(&self, task_id: &str) {
        let ids: Vec<String> = lock(&self.state)
            .jobs
            .values()
            .filter(|j| j.task_id == task_id && !j.status.is_terminal())
            .map(|j| j.id.clone())
            .collect();
        for id in ids {
            let _ = self.cancel(&id);
        }
    }

    fn requeue(&self, state: &mut State, job_id: &str) {
        let max = self.config.max_deliveries;
        let Some(job) = state.jobs.get_mut(job_id) else {
            return;
        };
        job.runner_id = None;
        job.lease_until = None;
        if job.cancel_requested {
            job.set_status(JobStatus::Cancelled);
        } else if job.deliveries >= max {
            job.set_status(JobStatus::Lost);
        } else {
            job.set_status(JobStatus::Queued);
            state.queue.push_front(job_id.to_owned());
            self.job_queued.notify_waiters();
        }
    }

    /// Puts back the jobs whose lease lapsed before `now`; returns their ids.
    pub fn reap_expired(&self, now: Instant) -> Vec<String> {
        let mut state = lock(&self.state);
        let expired: Vec<String> = state
            .jobs
            .values()
            .filter(|j| j.status == JobStatus::Running && j.lease_until.is_some_and(|t| t <= now))
            .map(|j| j.id.clone())
            .collect();
        for id in &expired {
            self.requeue(&mut state, id);
        }
        expired
    }

    /// Every second, puts back jobs whose lease lapsed and forgets old finished jobs; stops
    /// when the registry is dropped.
    pub fn spawn_reaper(&self) {
        let state = Arc::downgrade(&self.state);
        let config = self.config.clone();
        let job_queued = self.job_queued.clone();
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(state) = state.upgrade() else { return };
                let runners = Runners {
                    config: config.clone(),
                    state,
                    job_queued: job_queued.clone(),
                    closed: closed.clone(),
                };
                for job in runners.reap_expired(Instant::now()) {
                    tracing::warn!(%job, "a runner's lease lapsed; the job goes back to the queue");
                }
                runners.forget_finished(KEEP_FINISHED_JOBS);
            }
        });
    }

    /// Forgets finished jobs older than `keep` so that memory stays bounded.
    pub fn forget_finished(&self, keep: usize) {
        let mut state = lock(&self.state);
        let finished: Vec<String> = state
            .jobs
            .values()
            .filter(|j| j.status.is_terminal())
            .map(|j| j.id.clone())
            .collect();
        let excess = finished.len().saturating_sub(keep);
        // Ids are UUIDv7, so the first in order are the oldest.
        for id in finished.into_iter().take(excess) {
            state.jobs.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &[&str]) -> JobSpec {
        JobSpec {
            name: "build".into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            steps: vec![StepSpec {
                name: "test".into(),
                command: vec!["cargo".into(), "test".into()],
                timeout_s: None,
            }],
            env: Vec::new(),
            workdir: None,
            timeout_s: None,
            metadata: serde_json::Value::Null,
            artifacts: Vec::new(),
        }
    }

    /// A runner without labels, capacity 1; its id.
    fn registered(runners: &Runners, name: &str) -> String {
        runners
            .register("admin", name, Vec::new(), 1)
            .unwrap()
            .runner
            .id
    }

    fn labels(list: &[&str]) -> Vec<String> {
        list.iter().map(|l| (*l).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_job_goes_to_a_runner_carrying_all_its_labels() {
        let runners = Runners::new(RunnerConfig::default());
        let linux = runners
            .register("admin", "linux", labels(&["linux"]), 1)
            .unwrap();
        let rust = runners
            .register("admin", "rust", labels(&["linux", "rust"]), 1)
            .unwrap();
        assert_eq!(
            runners.authenticate(&rust.token),
            Some(rust.runner.id.clone())
        );
        assert_eq!(runners.authenticate("thr_forged"), None);

        let job = runners
            .dispatch("task-1", spec(&["rust"]), Vec::new())
            .unwrap();
        let none = runners
            .claim(&linux.runner.id, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(none.is_none(), "linux lacks the rust label");
        let lease = runners
            .claim(&rust.runner.id, Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease.job_id, job);
        assert_eq!(
            runners.get(&rust.runner.id).unwrap().running_jobs,
            vec![job.clone()]
        );
        // Capacity 1: nothing more for this runner until the job ends.
        runners.dispatch("task-2", spec(&[]), Vec::new()).unwrap();
        assert!(
            runners
                .claim(&rust.runner.id, Duration::from_millis(10))
                .await
                .unwrap()
                .is_none()
        );
        runners
            .finish(&rust.runner.id, &job, JobStatus::Succeeded, Vec::new())
            .unwrap();
        assert!(
            runners
                .claim(&rust.runner.id, Duration::from_millis(10))
                .await
                .unwrap()
                .is_some()
        );
    }

    #[tokio::test]
    async fn a_waiting_claim_wakes_when_a_job_is_dispatched() {
        let runners = Runners::new(RunnerConfig::default());
        let runner = runners.register("admin", "r", Vec::new(), 2).unwrap();
        let waiting = {
            let runners = runners.clone();
            let id = runner.runner.id.clone();
            tokio::spawn(async move { runners.claim(&id, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let job = runners.dispatch("task", spec(&[]), Vec::new()).unwrap();
        let lease = waiting.await.unwrap().unwrap().unwrap();
        assert_eq!(lease.job_id, job);
    }

    #[tokio::test]
    async fn closing_ends_a_waiting_claim_at_once() {
        let runners = Runners::new(RunnerConfig::default());
        let r = registered(&runners, "r");
        let waiting = {
            let runners = runners.clone();
            tokio::spawn(async move { runners.claim(&r, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        runners.close();
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the claim returned at close")
            .unwrap()
            .unwrap();
        assert!(answer.is_none());
    }

    #[tokio::test]
    async fn a_lapsed_lease_puts_the_job_back_until_it_is_lost() {
        let runners = Runners::new(RunnerConfig {
            max_deliveries: 2,
            ..RunnerConfig::default()
        });
        let a = registered(&runners, "a");
        let b = registered(&runners, "b");
        let job = runners.dispatch("task", spec(&[]), Vec::new()).unwrap();
        runners.claim(&a, Duration::ZERO).await.unwrap().unwrap();

        // A heartbeat renews the lease; a lapsed one requeues the job for another runner.
        let later = Instant::now() + Duration::from_secs(10);
        runners.heartbeat(&a, std::slice::from_ref(&job)).unwrap();
        assert!(runners.reap_expired(Instant::now()).is_empty());
        assert_eq!(
            runners.reap_expired(later + Duration::from_secs(60)),
            vec![job.clone()]
        );
        assert_eq!(runners.job(&job).unwrap().status, JobStatus::Queued);
        let again = runners.claim(&b, Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(again.delivery, 2);
        // The first runner, back, is told to stop the job it no longer holds.
        assert_eq!(
            runners
                .heartbeat(&a, std::slice::from_ref(&job))
                .unwrap()
                .stop,
            vec![job.clone()]
        );
        assert_eq!(
            runners.finish(&a, &job, JobStatus::Succeeded, Vec::new()),
            Err(RunnerError::NotLeased(job.clone()))
        );

        runners.reap_expired(Instant::now() + Duration::from_secs(3600));
        assert_eq!(runners.job(&job).unwrap().status, JobStatus::Lost);
    }

    #[tokio::test]
    async fn waiting_for_a_job_returns_when_it_ends_or_times_out() {
        let runners = Runners::new(RunnerConfig::default());
        let r = registered(&runners, "r");
        let job = runners.dispatch("task", spec(&[]), Vec::new()).unwrap();
        let state = runners.wait(&job, Duration::from_millis(20)).await.unwrap();
        assert_eq!(state.status, JobStatus::Queued);

        runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
        let waiter = {
            let runners = runners.clone();
            let job = job.clone();
            tokio::spawn(async move { runners.wait(&job, Duration::from_secs(10)).await })
        };
        let outcome = StepOutcome {
            name: "test".into(),
            exit_code: Some(1),
            duration_ms: 5,
            output_tail: "1 failed".into(),
        };
        let context = runners.step_finished(&r, &job, outcome.clone()).unwrap();
        assert_eq!(context.task_id, "task");
        runners
            .finish(&r, &job, JobStatus::Failed, Vec::new())
            .unwrap();
        let state = waiter.await.unwrap().unwrap();
        assert_eq!(state.status, JobStatus::Failed);
        assert_eq!(state.steps, vec![outcome]);
    }

    #[tokio::test]
    async fn cancelling_stops_a_queued_job_at_once_and_a_running_one_at_its_heartbeat() {
        let runners = Runners::new(RunnerConfig::default());
        let r = registered(&runners, "r");
        let queued = runners.dispatch("t1", spec(&["gpu"]), Vec::new()).unwrap();
        assert_eq!(
            runners.cancel(&queued).unwrap().status,
            JobStatus::Cancelled
        );
        let running = runners.dispatch("t2", spec(&[]), Vec::new()).unwrap();
        runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
        runners.cancel_task_jobs("t2");
        assert_eq!(
            runners
                .heartbeat(&r, std::slice::from_ref(&running))
                .unwrap()
                .stop,
            vec![running.clone()]
        );
        runners
            .finish(&r, &running, JobStatus::Cancelled, Vec::new())
            .unwrap();
        assert_eq!(runners.job(&running).unwrap().status, JobStatus::Cancelled);
    }

    #[tokio::test]
    async fn the_dispatching_runs_secrets_are_masked_in_step_output() {
        let runners = Runners::new(RunnerConfig::default());
        let r = registered(&runners, "r");
        let job = runners
            .dispatch("task", spec(&[]), vec!["hunter2-secret".into()])
            .unwrap();
        runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
        let outcome = StepOutcome {
            name: "deploy".into(),
            exit_code: Some(0),
            duration_ms: 1,
            output_tail: "token=hunter2-secret ok".into(),
        };
        let context = runners.step_finished(&r, &job, outcome).unwrap();
        assert_eq!(context.secrets.as_slice(), ["hunter2-secret".to_owned()]);
        let tail = &runners.job(&job).unwrap().steps[0].output_tail;
        assert!(!tail.contains("hunter2-secret"), "{tail}");
    }

    #[test]
    fn bad_registrations_and_jobs_are_refused() {
        let runners = Runners::new(RunnerConfig::default());
        assert!(runners.register("admin", "", Vec::new(), 1).is_err());
        assert!(runners.register("admin", "r", Vec::new(), 0).is_err());
        let mut empty = spec(&[]);
        empty.steps.clear();
        assert!(runners.dispatch("t", empty, Vec::new()).is_err());
        let mut no_program = spec(&[]);
        no_program.steps[0].command = vec![String::new()];
        assert!(runners.dispatch("t", no_program, Vec::new()).is_err());
        for pattern in ["../secrets/*", "/etc/passwd", "a\\..\\b", ""] {
            let mut escaping = spec(&[]);
            escaping.artifacts = vec![pattern.into()];
            assert!(
                runners.dispatch("t", escaping, Vec::new()).is_err(),
                "{pattern:?}"
            );
        }
    }

    #[tokio::test]
    async fn artifacts_are_kept_only_with_a_relative_path_and_a_sha256() {
        let runners = Runners::new(RunnerConfig::default());
        let r = registered(&runners, "r");
        let job = runners.dispatch("task", spec(&[]), Vec::new()).unwrap();
        runners.claim(&r, Duration::ZERO).await.unwrap().unwrap();
        let artifact = |path: &str, sha256: &str| Artifact {
            path: path.into(),
            size_bytes: 3,
            sha256: sha256.into(),
        };
        let good_hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        for bad in [
            artifact("../out.bin", good_hash),
            artifact("/abs/out.bin", good_hash),
            artifact("out.bin", "not-a-hash"),
        ] {
            assert!(matches!(
                runners.finish(&r, &job, JobStatus::Succeeded, vec![bad]),
                Err(RunnerError::Invalid(_))
            ));
        }
        assert_eq!(runners.job(&job).unwrap().status, JobStatus::Running);
        let state = runners
            .finish(
                &r,
                &job,
                JobStatus::Succeeded,
                vec![artifact("dist/out.bin", good_hash)],
            )
            .unwrap();
        assert_eq!(state.artifacts[0].path, "dist/out.bin");
    }
}
