//! What a running plugin's host calls do: [`TaskServices`] backed by the engine and storage.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::json;
use tracing::warn;

use super::{Engine, EngineError, Inner, NewTask, transition};
use crate::auth::{Principal, Role, redact, redact_value};
use crate::model::{EventKind, NewEvent, Record, Task, TaskStatus};
use crate::runtime::{
    ErrorKind, GuestTaskError, HostError, LogLevel, Progress, SpawnRequest, TaskServices,
    TaskState, host_error,
};
use crate::storage::StorageError;

/// Children one task may spawn.
const MAX_CHILDREN: u64 = 10_000;

pub(crate) struct EngineServices {
    inner: Arc<Inner>,
    /// The task as it started; its id, owner, plugin and labels do not change during a run.
    task: Task,
    children: std::sync::atomic::AtomicU64,
    /// This run's secret values: masked out of everything it reports.
    secrets: Vec<String>,
}

impl EngineServices {
    pub(crate) fn new(inner: Arc<Inner>, task: &Task, secrets: Vec<String>) -> Self {
        Self {
            inner,
            task: task.clone(),
            children: std::sync::atomic::AtomicU64::new(0),
            secrets,
        }
    }

    fn storage_failure(&self, e: StorageError) -> HostError {
        warn!(task = %self.task.id, error = %e, "storage failed during a host call");
        host_error(
            ErrorKind::Failed,
            "the host could not store that; try again",
        )
    }

    fn set_paused(&self, paused: bool) {
        let (from, to, kind) = if paused {
            (TaskStatus::Running, TaskStatus::Paused, EventKind::Paused)
        } else {
            (TaskStatus::Paused, TaskStatus::Running, EventKind::Resumed)
        };
        let result = self.inner.modify(&self.task.id, |task| {
            if task.status != from {
                return Err(EngineError::Conflict(String::new()));
            }
            transition(task, to)?;
            Ok(vec![NewEvent::new(kind, json!({"status": to}))])
        });
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
    async fn progress(&self, mut progress: Progress) {
        progress.step = progress.step.map(|s| redact(&s, &self.secrets));
        progress.message = progress.message.map(|m| redact(&m, &self.secrets));
        let result = self.inner.modify(&self.task.id, |task| {
            if task.status != TaskStatus::Running {
                return Err(EngineError::Conflict(String::new()));
            }
            task.progress.merge(
                progress.processed,
                progress.total,
                progress.step.as_deref(),
                progress.message.as_deref(),
                progress.metrics.iter().cloned(),
            );
            task.updated_at = Utc::now();
            Ok(vec![NewEvent::new(
                EventKind::Progress,
                serde_json::to_value(&task.progress).unwrap_or_default(),
            )])
        });
        if let Err(e) = result
            && !matches!(e, EngineError::Conflict(_))
        {
            warn!(task = %self.task.id, error = %e, "could not record progress");
        }
    }

    async fn log(&self, level: LogLevel, message: String) {
        let message = redact(&message, &self.secrets);
        if let Err(e) = self
            .inner
            .storage
            .append_log(&self.task, level_name(level), &message)
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
            collection,
            key: redact(&key, &self.secrets),
            data,
            updated_at: Utc::now(),
        };
        self.inner
            .storage
            .put_record(&self.task.id, &record)
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        self.inner
            .storage
            .kv_get(&self.task.plugin, &key)
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        self.inner
            .storage
            .kv_set(&self.task.plugin, &key, &value)
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_delete(&self, key: String) -> Result<(), HostError> {
        self.inner
            .storage
            .kv_delete(&self.task.plugin, &key)
            .map_err(|e| self.storage_failure(e))
    }

    async fn kv_list_keys(&self, prefix: String, limit: u32) -> Result<Vec<String>, HostError> {
        self.inner
            .storage
            .kv_list(&self.task.plugin, &prefix, limit as usize)
            .map_err(|e| self.storage_failure(e))
    }

    async fn paused(&self) {
        self.set_paused(true);
    }

    async fn resumed(&self) {
        self.set_paused(false);
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
        // The child belongs to whoever owns the parent.
        let owner = Principal::with_role(&self.task.owner, Role::User);
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
}
