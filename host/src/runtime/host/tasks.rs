//! `taskhost:plugin/tasks`: child tasks.

use tracing::instrument;

use crate::runtime::bindings::taskhost::plugin::tasks::{Host, SpawnRequest, TaskState};
use crate::runtime::services::host_error;
use crate::runtime::state::HostState;
use crate::runtime::{ErrorKind, HostError};

impl Host for HostState {
    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn spawn(
        &mut self,
        request: SpawnRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        if serde_json::from_str::<serde_json::Value>(&request.input).is_err() {
            return Ok(Err(host_error(
                ErrorKind::Invalid,
                "child input is not valid JSON",
            )));
        }
        Ok(self.services.spawn(request).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn child_state(&mut self, id: String) -> wasmtime::Result<Result<TaskState, HostError>> {
        Ok(self.services.child_state(id).await)
    }
}
