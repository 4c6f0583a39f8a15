//! What a running plugin's host calls do: [`TaskServices`] backed by the engine and storage.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use tracing::warn;

use super::{Engine, EngineError, Inner, NewTask, ProgressReport, transition};
use crate::auth::{redact, redact_value};
use crate::model::{EventData, Record, Task, TaskStatus};
use crate::runners::{self, JobSpec, RunnerError, StepSpec};
use crate::runtime::{
    Artifact, ErrorKind, GuestTaskError, HostError, JobRequest, JobState, JobStatus, LogLevel,
    Progress, RunnerInfo, SpawnRequest, StepOutcome, TaskServices, TaskState, host_error,
};
use crate::storage::StorageError;

/// Children one task may spawn.
const MAX_CHILDREN: u64 = 1_000;
/// How deep a tree of tasks may grow (a root task is depth 0).
const MAX_TREE_DEPTH: usize = 8;
/// Longest single `wait-job`; a plugin waiting longer calls again (and checkpoints between).
const MAX_JOB_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn runner_failure(error: RunnerError) -> HostError {
    match error {
        RunnerError::UnknownJob(_) | RunnerError::UnknownRunner(_) => {
            host_error(ErrorKind::NotFound, error.to_string())
        }
        RunnerError::NotLeased(_) => host_error(ErrorKind::Failed, error.to_string()),
        RunnerError::Invalid(message) => host_error(ErrorKind::Invalid, message),
        RunnerError::Forbidden(message) => host_error(ErrorKind::Denied, message),
        RunnerError::Storage(cause) => {
            warn!(error = %cause, "storage failed during a runner call");
            host_error(
                ErrorKind::Failed,
                "the host could not store that; try again",
            )
        }
    }
}

fn wit_job_state(state: runners::JobState) -> JobState {
    JobState {
        id: state.id,
        status: match state.status {
            runners::JobStatus::Queued => JobStatus::Queued,
            runners::JobStatus::Running => JobStatus::Running,
            runners::JobStatus::Succeeded => JobStatus::Succeeded,
            runners::JobStatus::Failed => JobStatus::Failed,
            runners::JobStatus::Cancelled => JobStatus::Cancelled,
            runners::JobStatus::TimedOut => JobStatus::TimedOut,
            runners::JobStatus::Lost => JobStatus::Lost,
        },
        runner_id: state.runner_id,
        steps: state
            .steps
            .into_iter()
            .map(|s| StepOutcome {
                name: s.name,
                exit_code: s.exit_code,
                duration_ms: s.duration_ms,
                output_tail: s.output_tail,
            })
            .collect(),
        artifacts: state
            .artifacts
            .into_iter()
            .map(|a| Artifact {
                path: a.path,
                size_bytes: a.size_bytes,
                sha256: a.sha256,
            })
            .collect(),
    }
}

pub(crate) struct EngineServices {
    inner: Arc<Inner>,
    /// The task as it started; its id, owner, plugin and labels (but the host's own
    /// `taskhost/` ones) do not change during a run.
    task: Task,
    children: std::sync::atomic::AtomicU64,
    /// This run's secret values: masked out of everything it reports.
    secrets: Vec<String>,
    /// Names this run among the task's runs, so that a later run can adopt its jobs.
    run: String,
    /// The step this run last reported: its log lines are that step's.
    current_step: std::sync::Mutex<Option<String>>,
}

impl EngineServices {
    pub(crate) fn new(inner: Arc<Inner>, task: &Task, secrets: Vec<String>) -> Self {
        Self {
            inner,
            task: task.clone(),
            children: std::sync::atomic::AtomicU64::new(0),
            secrets,
            run: uuid::Uuid::now_v7().to_string(),
            current_step: std::sync::Mutex::new(task.progress.current_step.clone()),
        }
    }

    fn current_step(&self) -> Option<String> {
        self.current_step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// A plugin may wait on and cancel only the jobs its own task dispatched.
    async fn own_job(&self, id: &str) -> Result<(), HostError> {
        match self.inner.runners.task_of(id).await {
            Ok(task) if task == self.task.id => Ok(()),
            _ => Err(host_error(
                ErrorKind::NotFound,
                format!("job {id} was not dispatched by this task"),
            )),
        }
    }

    fn storage_failure(&self, e: StorageError) -> HostError {
        warn!(task = %self.task.id, error = %e, "storage failed during a host call");
        host_error(
            ErrorKind::Failed,
            "the host could not store that; try again",
        )
    }

    /// How many ancestors this task has (stops counting past the limit).
    async fn depth(&self) -> usize {
        let mut depth = 0;
        let mut parent = self.task.parent_id.clone();
        while let Some(id) = parent {
            depth += 1;
            if depth >= MAX_TREE_DEPTH {
                break;
            }
            parent = match self.inner.storage.get_task(&id).await {
                Ok(Some(task)) => task.parent_id,
                _ => None,
            };
        }
        depth
    }

    async fn set_paused(&self, paused: bool) {
        let (from, to) = if paused {
            (TaskStatus::Running, TaskStatus::Paused)
        } else {
            (TaskStatus::Paused, TaskStatus::Running)
        };
        let result = self
            .inner
            .modify(&self.task.id, |task| {
                if task.status != from {
                    return Err(EngineError::Conflict(String::new()));
                }
                transition(task, to)?;
                Ok(vec![if paused {
                    EventData::Paused
                } else {
                    EventData::Resumed { status: to }
                }])
            })
            .await;
        if let Err(e) = result
            && !matches!(e, EngineError::Conflict(_))
        {
            warn!(task = %self.task.id, error = %e, "could not record pause/resume");
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

#[async_trait]
impl TaskServices for EngineServices {
    fn redact(&self, text: &str) -> String {
        redact(text, &self.secrets)
    }

    fn longest_secret(&self) -> usize {
        self.secrets.iter().map(String::len).max().unwrap_or(0)
    }

    async fn progress(&self, progress: Progress) {
        let report = ProgressReport {
            processed: progress.processed,
            total: progress.total,
            current_step: progress.step,
            message: progress.message,
            metrics: (!progress.metrics.is_empty()).then(|| progress.metrics.into_iter().collect()),
        }
        .masked(&self.secrets);
        let result = self
            .inner
            .modify(&self.task.id, |task| {
                if task.status != TaskStatus::Running {
                    return Err(EngineError::Conflict(String::new()));
                }
                report.apply_to(&mut task.progress)?;
                task.updated_at = Utc::now();
                Ok(vec![EventData::Progress(task.progress.clone())])
            })
            .await;
        match result {
            Ok((task, _)) => {
                *self
                    .current_step
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    task.progress.current_step;
            }
            Err(EngineError::Conflict(_)) => {}
            // Refused, not dropped silently: the task's log says why.
            Err(EngineError::Validation { message, .. }) => {
                self.log(
                    LogLevel::Warn,
                    format!("progress report refused: {message}"),
                )
                .await;
            }
            Err(e) => warn!(task = %self.task.id, error = %e, "could not record progress"),
        }
    }

    async fn log(&self, level: LogLevel, message: String) {
        let message = redact(&message, &self.secrets);
        if let Err(e) = self
            .inner
            .storage
            .append_log(
                &self.task,
                level_name(level),
                &message,
                self.current_step().as_deref(),
            )
            .await
        {
            warn!(task = %self.task.id, error = %e, "could not store a log line");
        }
    }

    async fn emit_record(
        &self,
        collection: String,
        key: String,
        mut data: serde_json::Value,
    ) -> Result<(), HostError> {
        redact_value(&mut data, &self.secrets);
        let record = Record {
            collection: redact(&collection, &self.secrets),
            key: redact(&key, &self.secrets),
            data,
            updated_at: Utc::now(),
        };
        self.inner
            .storage
            .put_record(&self.task.id, &record)
            .await
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        self.inner
            .storage
            .kv_get(&self.task.plugin, &key)
            .await
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.inner
            .storage
            .kv_set(&self.task.plugin, &key, &value)
            .await
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_delete(&self, key: String) -> Result<(), HostError> {
        self.inner
            .storage
            .kv_delete(&self.task.plugin, &key)
            .await
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_list_keys(&self, prefix: String, limit: u32) -> Result<Vec<String>, HostError> {
        self.inner
            .storage
            .kv_list(&self.task.plugin, &prefix, limit as usize)
            .await
            .map_err(|e| self.storage_failure(e))
    }

    async fn paused(&self) {
        self.set_paused(true).await;
    }

    async fn resumed(&self) {
        self.set_paused(false).await;
    }

    async fn spawn(&self, request: SpawnRequest) -> Result<String, HostError> {
        let spawned = self
            .children
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if spawned >= MAX_CHILDREN {
            return Err(host_error(
                ErrorKind::LimitExceeded,
                format!("a task may spawn at most {MAX_CHILDREN} children"),
            ));
        }
        let input = serde_json::from_str(&request.input)
            .map_err(|e| host_error(ErrorKind::Invalid, format!("child input is not JSON: {e}")))?;
        if self.depth().await >= MAX_TREE_DEPTH {
            return Err(host_error(
                ErrorKind::LimitExceeded,
                format!("a task tree is at most {MAX_TREE_DEPTH} levels deep"),
            ));
        }
        // The child is created with the rights that created the parent, as they stand now:
        // the same key (so its limits hold down the tree), or the owner's current role.
        let owner = self
            .inner
            .acting_principal(&self.task)
            .await
            .map_err(|e| self.storage_failure(e))?
            .ok_or_else(|| {
                host_error(
                    ErrorKind::Denied,
                    "the key or user that created this task no longer exists",
                )
            })?;
        let new = NewTask {
            plugin: request.plugin.unwrap_or_else(|| self.task.plugin.clone()),
            task_type: request.task_type,
            input,
            labels: request.labels.into_iter().collect(),
            priority: request.priority,
            ..NewTask::default()
        };
        let engine = Engine {
            inner: self.inner.clone(),
        };
        match engine
            .create_task(&owner, new, Some(self.task.id.clone()))
            .await
        {
            Ok(child) => Ok(child.id),
            Err(EngineError::Validation { message, .. }) => {
                Err(host_error(ErrorKind::Invalid, message))
            }
            Err(EngineError::UnsupportedTaskType { plugin, task_type }) => Err(host_error(
                ErrorKind::Invalid,
                format!("plugin {plugin} has no task type {task_type}"),
            )),
            Err(EngineError::PluginNotFound(plugin)) => Err(host_error(
                ErrorKind::NotFound,
                format!("plugin {plugin} is not loaded"),
            )),
            Err(EngineError::Forbidden(message)) => Err(host_error(ErrorKind::Denied, message)),
            Err(e) => {
                warn!(task = %self.task.id, error = %e, "could not spawn a child task");
                Err(host_error(
                    ErrorKind::Failed,
                    "the child task could not be created",
                ))
            }
        }
    }

    async fn child_state(&self, id: String) -> Result<TaskState, HostError> {
        let child = self
            .inner
            .storage
            .get_task(&id)
            .await
            .map_err(|e| self.storage_failure(e))?
            .filter(|child| child.parent_id.as_deref() == Some(self.task.id.as_str()))
            .ok_or_else(|| {
                host_error(
                    ErrorKind::NotFound,
                    format!("task {id} is not a child of this task"),
                )
            })?;
        Ok(TaskState {
            id: child.id,
            status: child.status.as_str().to_owned(),
            result: child.result.map(|r| r.to_string()),
            error: child.error.map(|e| GuestTaskError {
                code: e.code,
                message: e.message,
                retryable: e.retryable,
            }),
        })
    }

    async fn list_runners(&self, labels: Vec<String>) -> Result<Vec<RunnerInfo>, HostError> {
        Ok(self
            .inner
            .runners
            .list()
            .await
            .map_err(runner_failure)?
            .into_iter()
            .filter(|r| labels.iter().all(|l| r.labels.contains(l)))
            .map(|r| RunnerInfo {
                id: r.id,
                name: r.name,
                labels: r.labels,
                capacity: r.capacity,
                running_jobs: u32::try_from(r.running_jobs.len()).unwrap_or(u32::MAX),
                online: r.online,
            })
            .collect())
    }

    async fn dispatch_job(&self, job: JobRequest) -> Result<String, HostError> {
        let metadata = if job.metadata.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&job.metadata).map_err(|e| {
                host_error(ErrorKind::Invalid, format!("job metadata is not JSON: {e}"))
            })?
        };
        let spec = JobSpec {
            name: job.name,
            labels: job.labels,
            steps: job
                .steps
                .into_iter()
                .map(|s| StepSpec {
                    name: s.name,
                    command: s.command,
                    timeout_s: s.timeout_s,
                })
                .collect(),
            env: job.env,
            workdir: job.workdir,
            timeout_s: job.timeout_s,
            metadata,
            artifacts: job.artifacts,
        };
        self.inner
            .runners
            .dispatch(&self.task.id, &self.run, spec, self.secrets.clone())
            .await
            .map_err(runner_failure)
    }

    async fn wait_job(&self, id: String, timeout_ms: u32) -> Result<JobState, HostError> {
        self.own_job(&id).await?;
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms)).min(MAX_JOB_WAIT);
        self.inner
            .runners
            .wait(&id, timeout)
            .await
            .map(wit_job_state)
            .map_err(runner_failure)
    }

    async fn cancel_job(&self, id: String) -> Result<(), HostError> {
        self.own_job(&id).await?;
        self.inner
            .runners
            .cancel(&id)
            .await
            .map(|_| ())
            .map_err(runner_failure)
    }
}
