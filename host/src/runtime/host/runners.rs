//! `taskhost:plugin/runners`: delegation of jobs to registered runners.

use tracing::instrument;

use crate::runtime::HostError;
use crate::runtime::bindings::taskhost::plugin::runners::{Host, JobRequest, JobState, RunnerInfo};
use crate::runtime::state::HostState;

impl Host for HostState {
    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn list_runners(
        &mut self,
        labels: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<RunnerInfo>, HostError>> {
        Ok(self.services.list_runners(labels).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn dispatch(&mut self, job: JobRequest) -> wasmtime::Result<Result<String, HostError>> {
        Ok(self.services.dispatch_job(job).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn wait_job(
        &mut self,
        id: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<JobState, HostError>> {
        Ok(self.services.wait_job(id, timeout_ms).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn cancel_job(&mut self, id: String) -> wasmtime::Result<Result<(), HostError>> {
        Ok(self.services.cancel_job(id).await)
    }
}
