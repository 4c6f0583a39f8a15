//! `taskhost:plugin/reporting`: progress, log lines and records.

use tracing::instrument;

use crate::runtime::bindings::taskhost::plugin::reporting::{Host, LogLevel, Progress};
use crate::runtime::services::host_error;
use crate::runtime::state::HostState;
use crate::runtime::{ErrorKind, HostError};

/// Longest collection name or key.
const MAX_RECORD_NAME: usize = 256;

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl Host for HostState {
    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn report_progress(&mut self, progress: Progress) -> wasmtime::Result<()> {
        // The caps are the engine's, the same for every reporter (`engine::progress`).
        self.services.progress(progress).await;
        Ok(())
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let mut message = self.services.redact(&message);
        truncate(&mut message, self.shared.config.max_log_line_bytes);
        self.services.log(level, message).await;
        Ok(())
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn emit_record(
        &mut self,
        collection: String,
        key: String,
        data: String,
    ) -> wasmtime::Result<Result<(), HostError>> {
        if collection.is_empty() || collection.len() > MAX_RECORD_NAME {
            return Ok(Err(host_error(
                ErrorKind::Invalid,
                format!("collection names are 1 to {MAX_RECORD_NAME} bytes"),
            )));
        }
        if key.is_empty() || key.len() > MAX_RECORD_NAME {
            return Ok(Err(host_error(
                ErrorKind::Invalid,
                format!("record keys are 1 to {MAX_RECORD_NAME} bytes"),
            )));
        }
        let max = self.shared.config.max_record_bytes;
        if data.len() > max {
            return Ok(Err(host_error(
                ErrorKind::LimitExceeded,
                format!(
                    "a record is at most {max} bytes; this one is {}",
                    data.len()
                ),
            )));
        }
        let value = match serde_json::from_str(&data) {
            Ok(value) => value,
            Err(e) => {
                return Ok(Err(host_error(
                    ErrorKind::Invalid,
                    format!("record data is not valid JSON: {e}"),
                )));
            }
        };
        Ok(self.services.emit_record(collection, key, value).await)
    }
}
