//! Reports on tasks from outside a plugin run: external executors (`POST .../progress`,
//! `PUT /tasks/{id}`) and runners working on delegated jobs. Who may report is
//! [`policy::may_report`]'s decision; what a report may hold is bounded here and in
//! [`ProgressReport::apply_to`], the one progress path.

use chrono::Utc;
use serde::Deserialize;
use serde_json::Value;

use super::{Engine, EngineError, ProgressReport, transition};
use crate::auth::{Principal, redact};
use crate::model::{EventData, EventKind, Executor, Task, TaskStatus};
use crate::policy;
use crate::runners::{self, Artifact, JobContext, JobState, JobStatus, StepOutcome};
use crate::runtime::TaskFailure;

/// Longest error code a reporter may set.
const MAX_ERROR_CODE: usize = 64;
/// Longest error message a reporter may set, in bytes.
const MAX_ERROR_MESSAGE: usize = 4096;
/// Longest duration a reporter may set: a year.
const MAX_REPORTED_DURATION_S: f64 = 31_536_000.0;

/// A status report for an external task.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskUpdate {
    pub status: Option<TaskStatus>,
    pub result: Option<Value>,
    pub error: Option<ReportedError>,
    pub progress: Option<ProgressReport>,
    /// How long the work took, as the reporter measured it (up to a year).
    #[schema(minimum = 0, maximum = 31536000)]
    pub duration_seconds: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedError {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub code: String,
    #[schema(max_length = 4096)]
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
}

/// A finished task's outcome is final: no reporter rewrites it.
fn refuse_finished(task: &Task) -> Result<(), EngineError> {
    if task.status.is_terminal() {
        return Err(EngineError::Conflict(format!(
            "task {} is {}; a finished task takes no reports",
            task.id, task.status
        )));
    }
    Ok(())
}

impl TaskUpdate {
    fn check(&self) -> Result<(), EngineError> {
        if let Some(seconds) = self.duration_seconds
            && !(0.0..=MAX_REPORTED_DURATION_S).contains(&seconds)
        {
            return Err(EngineError::validation(format!(
                "duration_seconds is between 0 and {MAX_REPORTED_DURATION_S}"
            )));
        }
        if let Some(error) = &self.error {
            let code_ok = (1..=MAX_ERROR_CODE).contains(&error.code.len())
                && error
                    .code
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !code_ok {
                return Err(EngineError::validation(format!(
                    "error.code must be 1-{MAX_ERROR_CODE} characters of A-Z, a-z, 0-9, '_', '-', '.'"
                )));
            }
            if error.message.len() > MAX_ERROR_MESSAGE {
                return Err(EngineError::validation(format!(
                    "error.message is at most {MAX_ERROR_MESSAGE} bytes"
                )));
            }
        }
        Ok(())
    }
}

/// The host's own label on a delegated task: the runner that last took one of its jobs, so
/// that `label.taskhost/runner=<id>` lists a runner's tasks.
pub const RUNNER_LABEL: &str = "taskhost/runner";

impl Engine {
    /// A job for `runner_id` (waiting up to `wait` for one); its task is labelled with the
    /// runner. The lease stands even when the label cannot be written (the task gone).
    pub async fn runner_claim(
        &self,
        runner_id: &str,
        wait: std::time::Duration,
    ) -> Result<Option<runners::Lease>, EngineError> {
        let Some(lease) = self.inner.runners.claim(runner_id, wait).await? else {
            return Ok(None);
        };
        let labelled = self
            .inner
            .modify(&lease.task_id, |task| {
                if task.labels.get(RUNNER_LABEL).map(String::as_str) == Some(runner_id) {
                    return Err(EngineError::Conflict(String::new()));
                }
                task.labels
                    .insert(RUNNER_LABEL.to_owned(), runner_id.to_owned());
                Ok(Vec::new())
            })
            .await;
        match labelled {
            Ok(_) | Err(EngineError::Conflict(_)) => {}
            Err(e) => {
                tracing::warn!(task = %lease.task_id, error = %e, "could not label a task with its runner");
            }
        }
        Ok(Some(lease))
    }

    /// Stores a log line a runner sent about a job of `job.task_id`, masked. A line the runner
    /// did not place in a step is the task's current step's.
    pub async fn runner_log(
        &self,
        job: &JobContext,
        level: &str,
        line: &str,
        step: Option<&str>,
    ) -> Result<(), EngineError> {
        let task = self
            .inner
            .storage
            .get_task(&job.task_id)
            .await?
            .ok_or_else(|| EngineError::TaskNotFound(job.task_id.clone()))?;
        let line = runners::keep_end(&redact(line, &job.secrets), runners::MAX_LINE_BYTES);
        let step = match step {
            Some(step) => Some(runners::keep_end(
                &redact(step, &job.secrets),
                runners::MAX_STEP_NAME,
            )),
            None => task.progress.current_step.clone(),
        };
        self.inner
            .storage
            .append_log(&task, level, &line, step.as_deref())
            .await?;
        Ok(())
    }

    /// Records a step a runner finished, on the job and as a line in the task's log.
    pub async fn runner_step_finished(
        &self,
        runner_id: &str,
        job_id: &str,
        outcome: StepOutcome,
    ) -> Result<(), EngineError> {
        let line = match outcome.exit_code {
            Some(code) => format!(
                "step {} exited with {code} after {} ms",
                outcome.name, outcome.duration_ms
            ),
            None => format!(
                "step {} ended without an exit code (killed, timed out or not started) after {} ms",
                outcome.name, outcome.duration_ms
            ),
        };
        let level = if outcome.exit_code == Some(0) {
            "info"
        } else {
            "warn"
        };
        let step = outcome.name.clone();
        let context = self
            .inner
            .runners
            .step_finished(runner_id, job_id, outcome)
            .await?;
        self.runner_log(&context, level, &line, Some(&step)).await
    }

    /// Ends a job with its runner's outcome; the task's log says how it ended and lists what
    /// the job left behind, so a client sees it without asking the runner.
    pub async fn runner_finish(
        &self,
        runner_id: &str,
        job_id: &str,
        status: JobStatus,
        artifacts: Vec<Artifact>,
    ) -> Result<JobState, EngineError> {
        let state = self
            .inner
            .runners
            .finish(runner_id, job_id, status, artifacts)
            .await?;
        let context = self.inner.runners.job_context(job_id).await?;
        for artifact in &state.artifacts {
            let line = format!(
                "artifact {} ({} bytes, sha256 {})",
                artifact.path, artifact.size_bytes, artifact.sha256
            );
            self.runner_log(&context, "info", &line, None).await?;
        }
        let status = serde_json::to_value(state.status).unwrap_or_default();
        let line = format!(
            "job {job_id} ended {} on runner {runner_id}",
            status.as_str().unwrap_or("")
        );
        self.runner_log(&context, "info", &line, None).await?;
        Ok(state)
    }

    /// Applies a runner's progress report to the job's task (while it runs), through the same
    /// checks as every other report.
    pub async fn runner_progress(
        &self,
        job: &JobContext,
        report: ProgressReport,
    ) -> Result<(), EngineError> {
        let report = report.masked(&job.secrets);
        self.inner
            .modify(&job.task_id, |task| {
                if task.status != TaskStatus::Running {
                    return Err(EngineError::Conflict(format!(
                        "task {} is {}, not running",
                        task.id,
                        task.status.as_str()
                    )));
                }
                report.apply_to(&mut task.progress)?;
                task.updated_at = Utc::now();
                Ok(vec![EventData::Progress(task.progress.clone())])
            })
            .await?;
        Ok(())
    }

    pub(super) async fn load_external(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Task, EngineError> {
        let task = self
            .inner
            .storage
            .get_task(id)
            .await?
            .ok_or_else(|| EngineError::TaskNotFound(id.to_owned()))?;
        if !policy::may_find(principal, &task) {
            return Err(EngineError::TaskNotFound(id.to_owned()));
        }
        if !policy::may_report(principal, &task) {
            return Err(EngineError::Forbidden(format!(
                "{} may not report on task {id}",
                principal.name
            )));
        }
        if task.executor != Executor::External {
            return Err(EngineError::Conflict(format!(
                "task {id} is run by plugin {}; only external tasks take reports",
                task.plugin
            )));
        }
        refuse_finished(&task)?;
        Ok(task)
    }

    /// Progress reported by whatever performs an external task; a queued task starts.
    pub async fn report_progress(
        &self,
        principal: &Principal,
        id: &str,
        report: ProgressReport,
    ) -> Result<Task, EngineError> {
        self.load_external(principal, id).await?;
        let (task, _) = self
            .inner
            .modify(id, |task| {
                let mut events = Vec::new();
                if task.status == TaskStatus::Queued {
                    transition(task, TaskStatus::Running)?;
                    task.attempt += 1;
                    task.started_at = Some(Utc::now());
                    events.push(EventData::Started {
                        attempt: task.attempt,
                    });
                }
                if task.status != TaskStatus::Running {
                    return Err(EngineError::Conflict(format!(
                        "task {id} is {}; progress needs a running task",
                        task.status
                    )));
                }
                report.apply_to(&mut task.progress)?;
                task.updated_at = Utc::now();
                events.push(EventData::Progress(task.progress.clone()));
                Ok(events)
            })
            .await?;
        self.inner.storage.sync().await?;
        Ok(task)
    }

    /// Status, result, error and progress reported for an external task.
    pub async fn report_update(
        &self,
        principal: &Principal,
        id: &str,
        update: TaskUpdate,
    ) -> Result<Task, EngineError> {
        self.load_external(principal, id).await?;
        update.check()?;
        let (task, _) = self
            .inner
            .modify(id, |task| {
                let mut events = Vec::new();
                // Checked again under the write: it may have finished since it was loaded.
                refuse_finished(task)?;
                if let Some(next) = update.status
                    && next != task.status
                {
                    let was = task.status;
                    transition(task, next)?;
                    let kind = match next {
                        TaskStatus::Running if was == TaskStatus::Paused => EventKind::Resumed,
                        TaskStatus::Running => {
                            task.attempt += 1;
                            task.started_at = Some(Utc::now());
                            EventKind::Started
                        }
                        TaskStatus::Paused => EventKind::Paused,
                        TaskStatus::Completed => EventKind::Completed,
                        TaskStatus::Failed => EventKind::Failed,
                        TaskStatus::Cancelled => EventKind::Cancelled,
                        TaskStatus::Queued | TaskStatus::Scheduled => EventKind::Queued,
                    };
                    if next == TaskStatus::Failed && update.error.is_none() && task.error.is_none()
                    {
                        task.error = Some(TaskFailure::new(
                            "EXTERNAL_FAILURE",
                            "reported as failed",
                            false,
                        ));
                    }
                    events.push(EventData::Reported {
                        kind,
                        status: next,
                        attempt: task.attempt,
                    });
                }
                if let Some(progress) = &update.progress {
                    progress.apply_to(&mut task.progress)?;
                    events.push(EventData::Progress(task.progress.clone()));
                }
                if let Some(result) = &update.result {
                    task.result = Some(result.clone());
                }
                if let Some(seconds) = update.duration_seconds {
                    task.duration_seconds = Some(seconds);
                }
                if let Some(error) = &update.error {
                    task.error = Some(TaskFailure::new(
                        &error.code,
                        error.message.clone(),
                        error.retryable,
                    ));
                }
                if task.status == TaskStatus::Completed
                    && let (Some(total), None) = (task.progress.total, task.progress.processed)
                {
                    task.progress.processed = Some(total);
                    task.progress.refresh_percentage();
                }
                task.updated_at = Utc::now();
                Ok(events)
            })
            .await?;
        self.inner.storage.sync().await?;
        if task.status.is_terminal() {
            self.inner.on_terminal(&task).await;
        }
        Ok(task)
    }
}
