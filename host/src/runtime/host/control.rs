//! `taskhost:plugin/control`: checkpoints and interruptible sleep.

use std::time::Duration;

use tracing::instrument;

use crate::runtime::bindings::taskhost::plugin::control::Host;
use crate::runtime::control::Directive;
use crate::runtime::services::host_error;
use crate::runtime::state::HostState;
use crate::runtime::{ErrorKind, HostError};

fn interrupted(directive: Directive) -> HostError {
    let why = match directive {
        Directive::Shutdown => "the host is shutting down",
        _ => "the task is being cancelled",
    };
    host_error(ErrorKind::Interrupted, why)
}

impl Host for HostState {
    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn checkpoint(&mut self) -> wasmtime::Result<Result<(), HostError>> {
        let mut directives = self.control.watch_directive();
        loop {
            let directive = *directives.borrow_and_update();
            match directive {
                Directive::Run => return Ok(Ok(())),
                Directive::Cancel | Directive::Shutdown => return Ok(Err(interrupted(directive))),
                Directive::Pause => {
                    // Paused time does not count against the run's time limit.
                    let left = self.deadline.suspend();
                    self.services.paused().await;
                    let changed = directives.changed().await;
                    self.deadline.resume(left);
                    if changed.is_err() {
                        return Ok(Err(interrupted(Directive::Cancel)));
                    }
                    if *directives.borrow() == Directive::Run {
                        self.services.resumed().await;
                    }
                }
            }
        }
    }

    #[instrument(level = "trace", skip_all, fields(plugin = %self.plugin))]
    async fn sleep(&mut self, ms: u64) -> wasmtime::Result<Result<(), HostError>> {
        let mut directives = self.control.watch_directive();
        let stop = directives.wait_for(|d| d.is_stop());
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(Ok(())),
            directive = stop => Ok(Err(interrupted(directive.map(|d| *d).unwrap_or(Directive::Cancel)))),
        }
    }
}
