//! Handing tasks to the scheduler: a new, resumed or retried task is queued, scheduled for
//! later or made to wait for its dependencies, and a finished one releases (or fails) the
//! tasks that depend on it.

use super::*;

impl Inner {
    /// [`schedule_new`](Self::schedule_new), then lets dependents of a task that failed at
    /// once follow it.
    pub(super) fn schedule(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        let failed = self.schedule_new(task)?;
        if let Some(failed) = &failed {
            self.on_terminal(failed);
        }
        Ok(failed)
    }

    /// Puts a task that was just created, resumed or retried where the scheduler will find it.
    /// Returns the task if it changed (a failed dependency fails it at once).
    pub(super) fn schedule_new(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        if task.executor == Executor::External {
            return Ok(None);
        }
        let mut sched = lock(&self.sched);
        match task.status {
            TaskStatus::Scheduled => {
                let due = task.scheduled_at.map_or(0, |t| t.timestamp_millis());
                sched.push_delayed(&task.plugin, &task.id, due);
            }
            TaskStatus::Queued => {
                // Checked under the scheduler lock: a dependency that ends meanwhile takes its
                // dependents under the same lock, after its terminal status is stored.
                let mut pending = Vec::new();
                for dependency in &task.depends_on {
                    match self.storage.get_task(dependency)?.map(|d| d.status) {
                        Some(TaskStatus::Completed) => {}
                        Some(TaskStatus::Failed | TaskStatus::Cancelled) | None => {
                            drop(sched);
                            let failed = self.fail_for_dependency(&task.id, dependency)?;
                            return Ok(failed);
                        }
                        Some(_) => pending.push(dependency.clone()),
                    }
                }
                if pending.is_empty() {
                    sched.push_ready(
                        &task.plugin,
                        &task.id,
                        task.priority,
                        task.created_at.timestamp_millis(),
                    );
                    drop(sched);
                    self.wake.notify_one();
                } else {
                    sched.wait_for(&task.id, &pending);
                }
            }
            _ => {}
        }
        Ok(None)
    }

    pub(super) fn fail_for_dependency(
        &self,
        id: &str,
        dependency: &str,
    ) -> Result<Option<Task>, EngineError> {
        let result = self.modify(id, |task| {
            if task.status != TaskStatus::Queued {
                return Err(EngineError::Conflict("no longer waiting".into()));
            }
            transition(task, TaskStatus::Failed)?;
            let failure = TaskFailure::new(
                "DEPENDENCY_FAILED",
                format!("dependency {dependency} did not complete"),
                false,
            );
            task.error = Some(failure.clone());
            Ok(vec![EventData::Failed { error: failure }])
        });
        match result {
            Ok((task, _)) => Ok(Some(task)),
            Err(EngineError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After a task ended: its dependents may run, or fail in turn.
    pub(crate) fn on_terminal(&self, task: &Task) {
        let mut finished = vec![task.clone()];
        while let Some(done) = finished.pop() {
            let dependents = lock(&self.sched).take_dependents(&done.id);
            for dependent_id in dependents {
                let Ok(Some(dependent)) = self.storage.get_task(&dependent_id) else {
                    continue;
                };
                if dependent.status != TaskStatus::Queued {
                    continue;
                }
                if done.status == TaskStatus::Completed {
                    // Ready once every other dependency is complete too; re-checking through
                    // schedule_new also re-registers waits for the ones still pending.
                    match self.schedule_new(&dependent) {
                        Ok(Some(failed)) => finished.push(failed),
                        Ok(None) => {}
                        Err(e) => {
                            warn!(task = %dependent_id, error = %e, "could not schedule dependent")
                        }
                    }
                } else {
                    match self.fail_for_dependency(&dependent_id, &done.id) {
                        Ok(Some(failed)) => finished.push(failed),
                        Ok(None) => {}
                        Err(e) => {
                            warn!(task = %dependent_id, error = %e, "could not fail dependent")
                        }
                    }
                }
            }
        }
    }
}
