//! What clients do to tasks: create, read and list them, and cancel, pause, resume or retry
//! them, each checked against the principal asking.

use super::*;
use crate::storage::shared::ControlRequest;

/// How often a control change is tried when a host claims the task in between.
const CONTROL_ATTEMPTS: usize = 3;

impl Engine {
    pub(super) async fn load(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self
            .inner
            .storage
            .get_task(id)
            .await?
            .ok_or_else(|| EngineError::TaskNotFound(id.to_owned()))?;
        // A task the caller may not read does not exist for it.
        if !policy::may_read(principal, &task) {
            return Err(EngineError::TaskNotFound(id.to_owned()));
        }
        Ok(task)
    }

    /// Loads a task the principal may cancel, pause, resume or retry.
    pub(super) async fn load_for_control(
        &self,
        principal: &Principal,
        id: &str,
        verb: &str,
    ) -> Result<Task, EngineError> {
        let task = self.load(principal, id).await?;
        if !policy::may_control(principal, &task) {
            return Err(EngineError::Forbidden(format!(
                "{} may not {verb} task {id}",
                principal.name
            )));
        }
        Ok(task)
    }

    /// Gives a cooperative plugin up to a second (plus `relay`, for a request to reach the
    /// host running it) to reach its checkpoint and leave `from`, so that the answer to a
    /// pause or resume shows the new status.
    pub(super) async fn await_status_change(
        &self,
        principal: &Principal,
        id: &str,
        from: TaskStatus,
        relay: Duration,
    ) -> Result<Task, EngineError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1) + relay;
        while tokio::time::Instant::now() < deadline {
            let current = self.load(principal, id).await?;
            if current.status != from {
                return Ok(current);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.load(principal, id).await
    }

    /// Validates and stores a new task, then schedules it. Returns once the task is durable.
    pub async fn create(&self, principal: &Principal, new: NewTask) -> Result<Task, EngineError> {
        self.create_task(principal, new, None).await
    }

    pub(crate) async fn create_task(
        &self,
        principal: &Principal,
        new: NewTask,
        parent_id: Option<String>,
    ) -> Result<Task, EngineError> {
        if !policy::may_create(principal, &new.plugin, &self.plugin_access(&new.plugin)) {
            return Err(EngineError::Forbidden(format!(
                "{} may not create tasks of {}",
                principal.name, new.plugin
            )));
        }
        // Secrets must not reach the client through an error message either.
        let paths = self.secret_paths_of(&new);
        let mut input = new.input.clone();
        let secrets = seal_secrets(&mut input, &paths);
        let secret_list = secrets.as_ref().map(secret_strings).unwrap_or_default();
        let timeout_limit = self
            .check_new_task(principal, &new)
            .await
            .map_err(|e| match e {
                EngineError::Validation {
                    message,
                    mut details,
                } => {
                    redact_value(&mut details, &secret_list);
                    EngineError::Validation {
                        message: redact(&message, &secret_list),
                        details,
                    }
                }
                other => other,
            })?;
        let sealed_input = secrets.map(|s| self.inner.secrets.seal(&s));
        let now = Utc::now();
        let id = new
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let scheduled = new.run_at.filter(|at| *at > now);
        let mut task = Task {
            id,
            plugin: new.plugin,
            task_type: new.task_type,
            status: if scheduled.is_some() {
                TaskStatus::Scheduled
            } else {
                TaskStatus::Queued
            },
            executor: new.executor,
            input,
            sealed_input,
            labels: new.labels,
            priority: new.priority.unwrap_or(0),
            owner: principal.name.clone(),
            progress: TaskProgress::default(),
            attempt: 0,
            max_attempts: new
                .max_attempts
                .unwrap_or(self.inner.config.default_max_attempts),
            timeout_s: new.timeout_s.unwrap_or(timeout_limit).min(timeout_limit),
            result: None,
            error: None,
            depends_on: new.depends_on,
            parent_id,
            reporters: new.reporters,
            created_via: principal.key_id.clone(),
            created_at: now,
            scheduled_at: scheduled,
            started_at: None,
            finished_at: None,
            updated_at: now,
            title: new.title,
            duration_seconds: None,
        };
        let second = EventData::Queued {
            status: task.status,
            scheduled_at: scheduled.filter(|_| task.status == TaskStatus::Scheduled),
            cause: QueueCause::Created,
        };
        let created = EventData::Created {
            plugin: task.plugin.clone(),
            task_type: task.task_type.clone(),
            priority: task.priority,
        };
        self.inner
            .storage
            .create_task(&task, &[created, second])
            .await
            .map_err(|e| match e {
                StorageError::Duplicate(id) => {
                    EngineError::Conflict(format!("task {id} already exists"))
                }
                other => other.into(),
            })?;
        // The store holds the task even when it cannot confirm it is durable (it may become
        // so on a later flush), so it is scheduled either way rather than left unseen.
        let synced = self.inner.storage.sync().await;
        if let Some(updated) = self.inner.schedule(&task).await? {
            task = updated;
        }
        synced?;
        Ok(task)
    }

    pub async fn get(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        self.load(principal, id).await
    }

    /// A page of tasks the principal may read.
    pub async fn list(
        &self,
        principal: &Principal,
        mut query: TaskQuery,
    ) -> Result<(Vec<Task>, u64), EngineError> {
        if !query.narrow_to(&policy::read_scope(principal)) {
            return Ok((Vec::new(), 0));
        }
        Ok(self.inner.storage.list_tasks(&query).await?)
    }

    /// Who may create tasks of `plugin`, from its grants (open when it is not loaded).
    pub fn plugin_access(&self, plugin: &str) -> PluginAccess {
        self.inner
            .registry
            .get(plugin)
            .map_or_else(PluginAccess::open, |loaded| {
                PluginAccess::of(loaded.plugin.grants())
            })
    }

    /// Cancels a task. A running plugin is asked to stop, then killed after the grace period;
    /// this returns once the task is cancelled (or has ended otherwise). On a shared store a
    /// run another host holds is asked through the store, and its host stops it.
    pub async fn cancel(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self.load_for_control(principal, id, "cancel").await?;
        if task.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "task {id} is already {}",
                task.status
            )));
        }
        for _ in 0..CONTROL_ATTEMPTS {
            // Subscribed first, so that the end of the run cannot slip by before the wait.
            let events = self.inner.storage.subscribe();
            let control = lock(&self.inner.running).get(id).map(|r| r.control.clone());
            if let Some(control) = control {
                self.inner.cancel_run(&control);
                return self.await_end(principal, id, events, Duration::ZERO).await;
            }
            if self
                .inner
                .request_control(id, ControlRequest::Cancel)
                .await?
            {
                let relay = self.inner.renew_every();
                return self.await_end(principal, id, events, relay).await;
            }
            let cancelled = self
                .change_unheld(id, |task| {
                    transition(task, TaskStatus::Cancelled)?;
                    Ok(vec![EventData::Cancelled {
                        reason: "cancelled by request".into(),
                    }])
                })
                .await?;
            if let Some(task) = cancelled {
                self.inner.on_terminal(&task).await;
                return Ok(task);
            }
        }
        Err(EngineError::Conflict(format!(
            "task {id} is changing too fast; try again"
        )))
    }

    /// Applies `change` to a task no host runs, taking it off this host's queue; `None` when a
    /// host claimed it meanwhile (the caller asks that host instead).
    async fn change_unheld(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Task) -> Result<Vec<EventData>, EngineError>,
    ) -> Result<Option<Task>, EngineError> {
        let mut held = false;
        let changed = self
            .inner
            .modify(id, |task| {
                held = self.inner.held_by_a_host(task);
                if held {
                    return Err(EngineError::Conflict(format!("task {id} just started")));
                }
                change(task)
            })
            .await;
        match changed {
            Err(EngineError::Conflict(_)) if held => Ok(None),
            Err(e) => Err(e),
            Ok((task, _)) => {
                lock(&self.inner.sched).remove(id);
                self.inner.storage.sync().await?;
                Ok(Some(task))
            }
        }
    }

    /// Waits (within the cancel grace, plus `relay` for a request to reach another host) for
    /// the run of `id` to end, then reads the task.
    async fn await_end(
        &self,
        principal: &Principal,
        id: &str,
        mut events: tokio::sync::broadcast::Receiver<crate::model::Event>,
        relay: Duration,
    ) -> Result<Task, EngineError> {
        let grace = Duration::from_secs(self.inner.config.cancel_grace_s);
        let ended = async {
            loop {
                match events.recv().await {
                    Ok(event) if event.task_id == id && event.data.ends_run() => return,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if self
                            .inner
                            .storage
                            .get_task(id)
                            .await
                            .ok()
                            .flatten()
                            .is_some_and(|t| t.status.is_terminal())
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(grace + relay + Duration::from_secs(2), ended).await;
        self.load(principal, id).await
    }

    /// Pauses a task: a running plugin at its next checkpoint, a waiting task at once.
    pub async fn pause(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        self.load_for_control(principal, id, "pause").await?;
        for _ in 0..CONTROL_ATTEMPTS {
            let control = lock(&self.inner.running).get(id).map(|r| r.control.clone());
            if let Some(control) = control {
                if !control.pause() {
                    return Err(EngineError::Conflict(format!("task {id} is stopping")));
                }
                // Give a cooperative plugin a moment to reach its checkpoint, so the answer
                // shows it.
                return self
                    .await_status_change(principal, id, TaskStatus::Running, Duration::ZERO)
                    .await;
            }
            let current = self.load(principal, id).await?;
            if current.status == TaskStatus::Running
                && self
                    .inner
                    .request_control(id, ControlRequest::Pause)
                    .await?
            {
                let relay = self.inner.renew_every();
                return self
                    .await_status_change(principal, id, TaskStatus::Running, relay)
                    .await;
            }
            let paused = self
                .change_unheld(id, |task| {
                    transition(task, TaskStatus::Paused)?;
                    Ok(vec![EventData::Paused])
                })
                .await?;
            if let Some(task) = paused {
                return Ok(task);
            }
        }
        Err(EngineError::Conflict(format!(
            "task {id} is changing too fast; try again"
        )))
    }

    pub async fn resume(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self.load_for_control(principal, id, "resume").await?;
        if task.status != TaskStatus::Paused {
            return Err(EngineError::Conflict(format!(
                "task {id} is {}, not paused",
                task.status
            )));
        }
        let control = lock(&self.inner.running).get(id).map(|r| r.control.clone());
        if let Some(control) = control {
            control.resume();
            return self
                .await_status_change(principal, id, TaskStatus::Paused, Duration::ZERO)
                .await;
        }
        // Paused at a checkpoint of a run another host holds: that host lets it go on.
        if self
            .inner
            .request_control(id, ControlRequest::Resume)
            .await?
        {
            let relay = self.inner.renew_every();
            return self
                .await_status_change(principal, id, TaskStatus::Paused, relay)
                .await;
        }
        let next = if task.executor == Executor::External && task.started_at.is_some() {
            TaskStatus::Running
        } else {
            TaskStatus::Queued
        };
        let (task, _) = self
            .inner
            .modify(id, |task| {
                transition(task, next)?;
                Ok(vec![EventData::Resumed { status: next }])
            })
            .await?;
        self.inner.storage.sync().await?;
        Ok(self.inner.schedule(&task).await?.unwrap_or(task))
    }

    /// Runs a failed or cancelled task again from its first attempt.
    pub async fn retry(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self.load_for_control(principal, id, "retry").await?;
        if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Err(EngineError::Conflict(format!(
                "only failed or cancelled tasks can be retried; task {id} is {}",
                task.status
            )));
        }
        let (task, _) = self
            .inner
            .modify(id, |task| {
                transition(task, TaskStatus::Queued)?;
                task.attempt = 0;
                task.error = None;
                task.result = None;
                task.finished_at = None;
                task.scheduled_at = None;
                Ok(vec![EventData::Queued {
                    status: TaskStatus::Queued,
                    scheduled_at: None,
                    cause: QueueCause::Retry,
                }])
            })
            .await?;
        self.inner.storage.sync().await?;
        Ok(self.inner.schedule(&task).await?.unwrap_or(task))
    }
}
