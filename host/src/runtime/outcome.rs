//! How a run ended, and the error codes the runtime itself assigns.

use serde::{Deserialize, Serialize};

/// Error codes set by the host rather than by the plugin.
pub mod codes {
    /// The instance trapped: a panic, `unreachable`, an out-of-bounds access...
    pub const PLUGIN_TRAP: &str = "PLUGIN_TRAP";
    /// The run exceeded its wall-clock limit.
    pub const TIMEOUT: &str = "TIMEOUT";
    /// The instance tried to grow its memory past the plugin's limit.
    pub const MEMORY_LIMIT_EXCEEDED: &str = "MEMORY_LIMIT_EXCEEDED";
    /// The run was stopped by force after a cancel.
    pub const CANCELLED: &str = "CANCELLED";
    /// The run was stopped because the host shut down.
    pub const INTERRUPTED: &str = "INTERRUPTED";
    /// The result exceeded the host's size limit.
    pub const RESULT_TOO_LARGE: &str = "RESULT_TOO_LARGE";
    /// The result was not valid JSON.
    pub const INVALID_RESULT: &str = "INVALID_RESULT";
    /// The instance could not be created (grants, pool exhaustion...).
    pub const INSTANTIATION_FAILED: &str = "INSTANTIATION_FAILED";
}

/// A failed run or validation: what the task's `error` field shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = TaskError)]
pub struct TaskFailure {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl TaskFailure {
    pub fn new(code: &str, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable,
        }
    }
}

/// How one run of a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    Completed(serde_json::Value),
    Failed(TaskFailure),
}

impl RunOutcome {
    pub fn failure(&self) -> Option<&TaskFailure> {
        match self {
            RunOutcome::Failed(failure) => Some(failure),
            RunOutcome::Completed(_) => None,
        }
    }
}
