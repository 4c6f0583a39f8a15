//! Non-fatal errors an external reporter records on a task that goes on (a retried database
//! call, a tool that failed once): kept as records of the `errors` collection, newest last,
//! and announced to the task's subscribers as an `error_recorded` message. A fatal error is
//! a `failed` status report instead ([`super::TaskUpdate`]).

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Engine, EngineError};
use crate::auth::Principal;
use crate::model::{EventData, Record};
use crate::runners::keep_end;

/// The record collection the errors are kept in.
pub const ERRORS_COLLECTION: &str = "errors";
/// The message type subscribers receive for each.
const ERROR_RECORDED: &str = "error_recorded";
/// A stack trace keeps its last this many bytes (where the error is).
pub const MAX_STACK_TRACE: usize = 10 * 1024;
const MAX_ERROR_TYPE: usize = 128;
const MAX_MESSAGE: usize = 4096;

/// A non-fatal error as a reporter sends it.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ErrorRecordBody)]
pub struct ErrorReport {
    /// What kind of error (`RuntimeError`, `db.timeout`).
    #[schema(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub error_type: String,
    #[schema(min_length = 1, max_length = 4096)]
    pub message: String,
    /// Kept to its last 10 KB.
    pub stack_trace: Option<String>,
    /// Anything else the reporter wants kept with it (`{"retry_count": 3}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

impl ErrorReport {
    fn check(&self) -> Result<(), EngineError> {
        let type_ok = (1..=MAX_ERROR_TYPE).contains(&self.error_type.len())
            && self
                .error_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !type_ok {
            return Err(EngineError::validation(format!(
                "error_type is 1-{MAX_ERROR_TYPE} characters of A-Z, a-z, 0-9, '_', '-', '.', ':'"
            )));
        }
        if self.message.is_empty() || self.message.len() > MAX_MESSAGE {
            return Err(EngineError::validation(format!(
                "message is 1 to {MAX_MESSAGE} bytes"
            )));
        }
        if self.metadata.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(EngineError::validation("metadata is an object"));
        }
        Ok(())
    }
}

impl Engine {
    /// Records a non-fatal error on an external task `principal` may report on; the task's
    /// state does not change. Returns the record.
    pub async fn record_error(
        &self,
        principal: &Principal,
        id: &str,
        report: ErrorReport,
    ) -> Result<Record, EngineError> {
        let task = self.load_external(principal, id).await?;
        report.check()?;
        let (stack_trace, truncated) = match &report.stack_trace {
            Some(trace) if trace.len() > MAX_STACK_TRACE => {
                (Some(keep_end(trace, MAX_STACK_TRACE)), true)
            }
            other => (other.clone(), false),
        };
        let now = Utc::now();
        let record = Record {
            collection: ERRORS_COLLECTION.to_owned(),
            // UUIDv7: records of a collection list in key order, so oldest first.
            key: uuid::Uuid::now_v7().to_string(),
            data: json!({
                "error_type": report.error_type,
                "message": report.message,
                "stack_trace": stack_trace,
                "stack_trace_truncated": truncated,
                "metadata": report.metadata,
                "reported_by": principal.name,
                "recorded_at": crate::model::timestamp::format(&now),
            }),
            updated_at: now,
        };
        self.inner.storage.put_record(id, &record).await?;
        self.inner
            .storage
            .append_events(
                &task,
                &[EventData::Message {
                    message_type: ERROR_RECORDED.to_owned(),
                    data: json!({
                        "key": record.key,
                        "error_type": record.data["error_type"],
                        "message": record.data["message"],
                    }),
                }],
            )
            .await?;
        self.inner.storage.sync().await?;
        Ok(record)
    }
}
