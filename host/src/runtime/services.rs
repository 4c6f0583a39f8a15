//! What the runtime needs from orchestration while a task runs: somewhere to put progress,
//! logs and records, the plugin's key-value store, child tasks and runners.
//!
//! The runtime never talks to storage or the scheduler directly; the engine hands each run an
//! implementation of [`TaskServices`]. Capabilities the engine cannot serve keep the default
//! methods, which answer `unavailable` to the guest.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::lock;

use async_trait::async_trait;

use super::{
    ErrorKind, HostError, JobRequest, JobState, LogLevel, Progress, RunnerInfo, SpawnRequest,
    TaskState,
};

/// Builds a guest-visible error.
pub fn host_error(kind: ErrorKind, message: impl Into<String>) -> HostError {
    HostError {
        kind,
        message: message.into(),
    }
}

fn unavailable(what: &str) -> HostError {
    host_error(
        ErrorKind::Unavailable,
        format!("{what} is not available on this host"),
    )
}

/// Per-run hooks into orchestration. Implementations must be cheap to call often: a plugin may
/// report progress thousands of times a second.
#[async_trait]
pub trait TaskServices: Send + Sync + 'static {
    async fn progress(&self, progress: Progress);

    /// `text` with the run's secrets masked; the runtime masks before it cuts a long line, so
    /// a secret across the cut cannot leak its start.
    fn redact(&self, text: &str) -> String {
        text.to_owned()
    }

    /// Length of the run's longest secret (0 without secrets), so a line split mid-way keeps
    /// back enough to mask a secret that the next write completes.
    fn longest_secret(&self) -> usize {
        0
    }

    async fn log(&self, level: LogLevel, message: String);

    /// Stores one output item; the runtime has already checked sizes and JSON syntax.
    async fn emit_record(
        &self,
        collection: String,
        key: String,
        data: serde_json::Value,
    ) -> Result<(), HostError>;

    async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, HostError>;
    async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), HostError>;
    async fn kv_delete(&self, key: String) -> Result<(), HostError>;
    async fn kv_list_keys(&self, prefix: String, limit: u32) -> Result<Vec<String>, HostError>;

    /// The task stopped at a checkpoint because it was asked to pause.
    async fn paused(&self) {}

    /// The task goes on after a pause.
    async fn resumed(&self) {}

    async fn spawn(&self, _request: SpawnRequest) -> Result<String, HostError> {
        Err(unavailable("spawning child tasks"))
    }

    async fn child_state(&self, _id: String) -> Result<TaskState, HostError> {
        Err(unavailable("child tasks"))
    }

    async fn list_runners(&self, _labels: Vec<String>) -> Result<Vec<RunnerInfo>, HostError> {
        Err(unavailable("runner delegation"))
    }

    async fn dispatch_job(&self, _job: JobRequest) -> Result<String, HostError> {
        Err(unavailable("runner delegation"))
    }

    async fn wait_job(&self, _id: String, _timeout_ms: u32) -> Result<JobState, HostError> {
        Err(unavailable("runner delegation"))
    }

    async fn cancel_job(&self, _id: String) -> Result<(), HostError> {
        Err(unavailable("runner delegation"))
    }
}

/// Services that keep everything in memory: for `describe`/`validate` calls, tests, benchmarks
/// and embedding the runtime without an engine. Progress, logs and records are kept so that a
/// caller can inspect them afterwards.
#[derive(Debug, Default)]
pub struct MemoryServices {
    pub progress: Mutex<Vec<Progress>>,
    pub logs: Mutex<Vec<(LogLevel, String)>>,
    pub records: Mutex<BTreeMap<(String, String), serde_json::Value>>,
    pub kv: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemoryServices {
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.logs).iter().map(|(_, m)| m.clone()).collect()
    }

    pub fn progress_reports(&self) -> Vec<Progress> {
        lock(&self.progress).clone()
    }

    pub fn record(&self, collection: &str, key: &str) -> Option<serde_json::Value> {
        lock(&self.records)
            .get(&(collection.to_owned(), key.to_owned()))
            .cloned()
    }
}

#[async_trait]
impl TaskServices for MemoryServices {
    async fn progress(&self, progress: Progress) {
        lock(&self.progress).push(progress);
    }

    async fn log(&self, level: LogLevel, message: String) {
        lock(&self.logs).push((level, message));
    }

    async fn emit_record(
        &self,
        collection: String,
        key: String,
        data: serde_json::Value,
    ) -> Result<(), HostError> {
        lock(&self.records).insert((collection, key), data);
        Ok(())
    }

    async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, HostError> {
        Ok(lock(&self.kv).get(&key).cloned())
    }

    async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), HostError> {
        lock(&self.kv).insert(key, value);
        Ok(())
    }

    async fn kv_delete(&self, key: String) -> Result<(), HostError> {
        lock(&self.kv).remove(&key);
        Ok(())
    }

    async fn kv_list_keys(&self, prefix: String, limit: u32) -> Result<Vec<String>, HostError> {
        Ok(lock(&self.kv)
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(limit as usize)
            .map(|(k, _)| k.clone())
            .collect())
    }
}
