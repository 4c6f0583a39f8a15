//! `taskhost:plugin/runners`: delegation of jobs to registered runners. Runners run whatever
//! a job names, so a plugin needs the operator's `runners` grant; the grant's
//! `require_labels` join every label list the plugin sends, keeping its jobs (and its view
//! of runners) to the pool the operator set aside.

use tracing::instrument;

use crate::runtime::bindings::taskhost::plugin::runners::{Host, JobRequest, JobState, RunnerInfo};
use crate::runtime::state::HostState;
use crate::runtime::{ErrorKind, HostError, host_error};

impl HostState {
    /// The labels a plugin's call must carry: its own plus the grant's pool.
    fn granted_labels(&self, mut labels: Vec<String>) -> Result<Vec<String>, HostError> {
        match &self.grants.runners {
            Some(grant) if grant.allow => {
                for label in &grant.require_labels {
                    if !labels.contains(label) {
                        labels.push(label.clone());
                    }
                }
                Ok(labels)
            }
            _ => Err(host_error(
                ErrorKind::NotGranted,
                format!(
                    "plugin {} may not delegate to runners: the operator has not granted `runners`",
                    self.plugin
                ),
            )),
        }
    }
}

impl Host for HostState {
    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn list_runners(
        &mut self,
        labels: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<RunnerInfo>, HostError>> {
        let labels = match self.granted_labels(labels) {
            Ok(labels) => labels,
            Err(e) => return Ok(Err(e)),
        };
        Ok(self.services.list_runners(labels).await)
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn dispatch(
        &mut self,
        mut job: JobRequest,
    ) -> wasmtime::Result<Result<String, HostError>> {
        job.labels = match self.granted_labels(job.labels) {
            Ok(labels) => labels,
            Err(e) => return Ok(Err(e)),
        };
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
