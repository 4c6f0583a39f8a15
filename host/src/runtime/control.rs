//! Cooperative control of one running task: pause, resume, cancel, shutdown, and the forced
//! kill that follows when a plugin does not cooperate.
//!
//! The engine holds a [`TaskControl`] per run and flips its directive; the guest observes it at
//! its next `checkpoint` or `sleep`. A kill needs no cooperation: the epoch callback traps the
//! instance at the next tick and the runtime drops the run's future.

use std::sync::Arc;

use tokio::sync::watch;

/// What the engine wants a running task to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    Run,
    Pause,
    /// The task is being cancelled: stop at the next checkpoint.
    Cancel,
    /// The host is shutting down: stop at the next checkpoint; the task will be requeued.
    Shutdown,
}

impl Directive {
    pub fn is_stop(self) -> bool {
        matches!(self, Directive::Cancel | Directive::Shutdown)
    }
}

/// A cheap, cloneable handle to one run's control state.
#[derive(Debug, Clone)]
pub struct TaskControl {
    directive: Arc<watch::Sender<Directive>>,
    killed: Arc<watch::Sender<bool>>,
}

impl Default for TaskControl {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskControl {
    pub fn new() -> Self {
        Self {
            directive: Arc::new(watch::Sender::new(Directive::Run)),
            killed: Arc::new(watch::Sender::new(false)),
        }
    }

    pub fn directive(&self) -> Directive {
        *self.directive.borrow()
    }

    /// Asks the task to pause at its next checkpoint. Returns false when it is stopping.
    pub fn pause(&self) -> bool {
        self.directive.send_if_modified(|d| {
            let change = *d == Directive::Run;
            if change {
                *d = Directive::Pause;
            }
            change
        });
        self.directive() == Directive::Pause
    }

    /// Lets a paused task go on. Returns false when it is stopping.
    pub fn resume(&self) -> bool {
        self.directive.send_if_modified(|d| {
            let change = *d == Directive::Pause;
            if change {
                *d = Directive::Run;
            }
            change
        });
        self.directive() == Directive::Run
    }

    /// Asks the task to stop because it is cancelled; overrides a pause.
    pub fn cancel(&self) {
        self.directive.send_replace(Directive::Cancel);
    }

    /// Asks the task to stop because the host shuts down; a cancel already asked for stands.
    pub fn shutdown(&self) {
        self.directive.send_if_modified(|d| {
            let change = *d != Directive::Cancel && *d != Directive::Shutdown;
            if change {
                *d = Directive::Shutdown;
            }
            change
        });
    }

    /// Stops the task now, without its cooperation.
    pub fn kill(&self) {
        if self.directive() != Directive::Shutdown {
            self.cancel();
        }
        self.killed.send_replace(true);
    }

    pub fn is_killed(&self) -> bool {
        *self.killed.borrow()
    }

    pub(crate) fn watch_directive(&self) -> watch::Receiver<Directive> {
        self.directive.subscribe()
    }

    /// Resolves once [`kill`](Self::kill) is called.
    pub(crate) async fn killed(&self) {
        let mut rx = self.killed.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|killed| *killed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_overrides_pause_and_pause_cannot_override_cancel() {
        let control = TaskControl::new();
        assert!(control.pause());
        assert_eq!(control.directive(), Directive::Pause);
        control.cancel();
        assert!(!control.pause());
        assert!(!control.resume());
        assert_eq!(control.directive(), Directive::Cancel);
        control.shutdown();
        assert_eq!(control.directive(), Directive::Cancel);
    }

    #[test]
    fn kill_marks_the_run_killed_and_stopping() {
        let control = TaskControl::new();
        control.kill();
        assert!(control.is_killed());
        assert!(control.directive().is_stop());
    }
}
