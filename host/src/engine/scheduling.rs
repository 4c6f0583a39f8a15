//! Handing tasks to the scheduler: a new, resumed or retried task is queued, scheduled for
//! later or made to wait for its dependencies, and a finished one releases (or fails) the
//! tasks that depend on it.

use super::*;

/// Where a task's dependencies stand.
enum Dependencies {
    /// Those not complete yet (none: the task is ready).
    Pending(Vec<String>),
    /// One failed, was cancelled or is gone: the task fails too.
    Failed(String),
}

impl Inner {
    /// [`schedule_new`](Self::schedule_new), then lets dependents of a task that failed at
    /// once follow it.
    pub(super) async fn schedule(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        let failed = self.schedule_new(task).await?;
        if let Some(failed) = &failed {
            self.on_terminal(failed).await;
        }
        Ok(failed)
    }

    /// Puts a task that was just created, resumed or retried where the scheduler will find it.
    /// Returns the task if it changed (a failed dependency fails it at once).
    pub(super) async fn schedule_new(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        if task.executor == Executor::External {
            return Ok(None);
        }
        if self.storage.shared().is_some() {
            return self.schedule_shared(task).await;
        }
        match task.status {
            TaskStatus::Scheduled => {
                let due = task.scheduled_at.map_or(0, |t| t.timestamp_millis());
                lock(&self.sched).push_delayed(&task.plugin, &task.id, due);
            }
            TaskStatus::Queued => loop {
                let pending = match self.pending_dependencies(&task.depends_on).await? {
                    Dependencies::Failed(dependency) => {
                        return self.fail_for_dependency(&task.id, &dependency).await;
                    }
                    Dependencies::Pending(pending) => pending,
                };
                if pending.is_empty() {
                    lock(&self.sched).push_ready(
                        &task.plugin,
                        &task.id,
                        task.priority,
                        task.created_at.timestamp_millis(),
                    );
                    self.wake.notify_one();
                    return Ok(None);
                }
                lock(&self.sched).wait_for(&task.id, &pending);
                // A dependency that ended between the read and the registration took its
                // dependents before this one was among them (it stores its terminal status
                // first, then takes them): read again, and decide again if one did. Deciding
                // twice is harmless: readying is idempotent and failing is checked.
                match self.pending_dependencies(&pending).await? {
                    Dependencies::Pending(still) if still.len() == pending.len() => {
                        return Ok(None);
                    }
                    _ => lock(&self.sched).unwait(&task.id),
                }
            },
            _ => {}
        }
        Ok(None)
    }

    /// On a shared store the store is the queue: a queued task needs only a claim, which
    /// waits for its dependencies itself; a scheduled one is queued by the sweep when due.
    /// A dependency that already failed fails the task at once.
    async fn schedule_shared(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        if task.status != TaskStatus::Queued {
            return Ok(None);
        }
        if let Dependencies::Failed(dependency) =
            self.pending_dependencies(&task.depends_on).await?
        {
            return self.fail_for_dependency(&task.id, &dependency).await;
        }
        self.hint_claim(&task.plugin);
        Ok(None)
    }

    /// Which of `dependencies` have not completed, or the first that never will.
    async fn pending_dependencies(
        &self,
        dependencies: &[String],
    ) -> Result<Dependencies, EngineError> {
        let mut pending = Vec::new();
        for dependency in dependencies {
            match self.storage.get_task(dependency).await?.map(|d| d.status) {
                Some(TaskStatus::Completed) => {}
                Some(TaskStatus::Failed | TaskStatus::Cancelled) | None => {
                    return Ok(Dependencies::Failed(dependency.clone()));
                }
                Some(_) => pending.push(dependency.clone()),
            }
        }
        Ok(Dependencies::Pending(pending))
    }

    pub(super) async fn fail_for_dependency(
        &self,
        id: &str,
        dependency: &str,
    ) -> Result<Option<Task>, EngineError> {
        let result = self
            .modify(id, |task| {
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
            })
            .await;
        match result {
            Ok((task, _)) => Ok(Some(task)),
            Err(EngineError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After a task ended: its dependents may run, or fail in turn.
    pub(crate) async fn on_terminal(&self, task: &Task) {
        if self.storage.shared().is_some() {
            // The store knows every host's dependents: a claim passes them over until their
            // dependencies completed, and the sweep fails those a failure strands.
            if task.status != TaskStatus::Completed {
                self.sweep_wake.notify_one();
            }
            return;
        }
        let mut finished = vec![task.clone()];
        while let Some(done) = finished.pop() {
            let dependents = lock(&self.sched).take_dependents(&done.id);
            for dependent_id in dependents {
                let Ok(Some(dependent)) = self.storage.get_task(&dependent_id).await else {
                    continue;
                };
                if dependent.status != TaskStatus::Queued {
                    continue;
                }
                if done.status == TaskStatus::Completed {
                    // Ready once every other dependency is complete too; re-checking through
                    // schedule_new also re-registers waits for the ones still pending.
                    match self.schedule_new(&dependent).await {
                        Ok(Some(failed)) => finished.push(failed),
                        Ok(None) => {}
                        Err(e) => {
                            warn!(task = %dependent_id, error = %e, "could not schedule dependent")
                        }
                    }
                } else {
                    match self.fail_for_dependency(&dependent_id, &done.id).await {
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
