//! Errors of engine operations; the API maps each to a status and code in one place.

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("task {0} not found")]
    TaskNotFound(String),
    #[error("plugin {0} not found")]
    PluginNotFound(String),
    #[error("plugin {plugin} has no task type {task_type}")]
    UnsupportedTaskType { plugin: String, task_type: String },
    /// Input the client can fix; `details` says where.
    #[error("{message}")]
    Validation {
        message: String,
        details: serde_json::Value,
    },
    /// A duplicate id or a transition the state machine does not allow.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Runner(#[from] crate::runners::RunnerError),
    /// A fault of the host; logged, never shown to clients.
    #[error("storage failure: {0}")]
    Storage(#[from] StorageError),
}

impl EngineError {
    pub fn validation(message: impl Into<String>) -> Self {
        EngineError::Validation {
            message: message.into(),
            details: serde_json::json!({}),
        }
    }
}
