//! Running tasks: recovery after a crash, the dispatch loop that starts ready tasks within each
//! plugin's concurrency, the run itself, what its outcome means for the task (complete, retry
//! with backoff, fail, requeue) and graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tracing::{error, info, warn};

use super::services::EngineServices;
use super::{EngineError, Inner, RunningTask, lock, transition};
use crate::auth::{redact, redact_value, secret_strings, unseal_into};
use crate::model::{EventData, Executor, QueueCause, Task, TaskStatus};
use crate::runtime::{Directive, Invocation, RunOutcome, TaskControl, TaskFailure};
use crate::storage::shared::{Finished, Lease};

/// Starts a queued task's next attempt.
pub(super) fn start_attempt(task: &mut Task) -> Vec<EventData> {
    task.status = TaskStatus::Running;
    task.updated_at = Utc::now();
    task.attempt += 1;
    task.started_at = Some(task.updated_at);
    task.error = None;
    vec![EventData::Started {
        attempt: task.attempt,
    }]
}

/// A scheduled task whose time came, queued.
pub(super) fn promote(task: &mut Task) -> Vec<EventData> {
    task.status = TaskStatus::Queued;
    task.updated_at = Utc::now();
    task.scheduled_at = None;
    vec![EventData::Queued {
        status: TaskStatus::Queued,
        scheduled_at: None,
        cause: QueueCause::Created,
    }]
}

/// A run its host lost (it stopped, or died): queued for a new attempt, or failed when that
/// was the last one.
pub(super) fn interrupted(task: &mut Task, cause: &str) -> Vec<EventData> {
    task.updated_at = Utc::now();
    if task.attempt >= task.max_attempts {
        task.status = TaskStatus::Failed;
        task.finished_at = Some(task.updated_at);
        let failure = TaskFailure::new(
            "INTERRUPTED",
            format!("{cause} during the last attempt"),
            false,
        );
        task.error = Some(failure.clone());
        vec![EventData::Failed { error: failure }]
    } else {
        task.status = TaskStatus::Queued;
        vec![EventData::Queued {
            status: TaskStatus::Queued,
            scheduled_at: None,
            cause: QueueCause::Requeued(format!("{cause} during the run")),
        }]
    }
}

/// Longest the dispatcher sleeps without a wake-up (a safety net, not the mechanism).
const IDLE_TICK: Duration = Duration::from_millis(500);
/// First and longest pause before writing again what the store refused.
const STORE_RETRY_FIRST: Duration = Duration::from_millis(50);
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

impl Inner {
    /// Brings storage and the scheduler in line after a start: runs a crash interrupted go
    /// back to the queue (or fail when out of attempts), waiting tasks are scheduled again.
    pub(super) async fn recover(self: &Arc<Self>) -> Result<(), EngineError> {
        for paused in self.storage.paused_queues().await? {
            lock(&self.sched).set_queue_paused(&paused, true);
        }
        let mut requeued = 0usize;
        // Runs a crash interrupted. A paused task stays paused (its owner asked for that);
        // resuming it queues it again.
        for id in self
            .storage
            .task_ids_with_status(TaskStatus::Running)
            .await?
        {
            let Some(task) = self.storage.get_task(&id).await? else {
                continue;
            };
            if task.executor == Executor::External {
                continue;
            }
            self.modify(&id, |task| {
                if task.status != TaskStatus::Running {
                    return Err(EngineError::Conflict("no longer running".into()));
                }
                Ok(interrupted(task, "the host restarted"))
            })
            .await?;
            requeued += 1;
        }
        self.storage.sync().await?;
        // Scheduling a queued task also settles its dependencies (ready, waiting or failed).
        for status in [TaskStatus::Scheduled, TaskStatus::Queued] {
            for id in self.storage.task_ids_with_status(status).await? {
                if let Some(task) = self.storage.get_task(&id).await? {
                    self.schedule(&task).await?;
                }
            }
        }
        if requeued > 0 {
            info!(requeued, "recovered runs interrupted by the last stop");
        }
        Ok(())
    }

    pub(super) async fn dispatch_loop(self: Arc<Self>) {
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            // A store that refuses writes for good cannot record a start: nothing is taken
            // off the queue until a restart.
            if self.storage.check_writable().is_ok() {
                self.promote_due().await;
                self.start_ready();
            }
            let wait =
                lock(&self.sched)
                    .next_due_ms()
                    .map(|due| {
                        Duration::from_millis(
                            (due - Utc::now().timestamp_millis()).clamp(0, 500) as u64
                        )
                    })
                    .unwrap_or(IDLE_TICK);
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Scheduled tasks whose time has come become queued.
    async fn promote_due(self: &Arc<Self>) {
        let due = lock(&self.sched).take_due(Utc::now().timestamp_millis());
        for (id, _) in due {
            let promoted = self
                .modify(&id, |task| {
                    if task.status != TaskStatus::Scheduled {
                        return Err(EngineError::Conflict("no longer scheduled".into()));
                    }
                    Ok(promote(task))
                })
                .await;
            match promoted {
                Ok((task, _)) => {
                    if let Err(e) = self.schedule(&task).await {
                        warn!(task = %id, error = %e, "could not queue a due task");
                    }
                }
                // Cancelled or paused meanwhile.
                Err(EngineError::Conflict(_)) | Err(EngineError::TaskNotFound(_)) => {}
                Err(e) => warn!(task = %id, error = %e, "could not promote a due task"),
            }
        }
    }

    fn start_ready(self: &Arc<Self>) {
        let plugins = lock(&self.sched).plugins_with_ready();
        for plugin in plugins {
            let Some(loaded) = self.registry.get(&plugin) else {
                // Tasks of an unloaded plugin wait for it to come back.
                continue;
            };
            let limit = loaded.plugin.grants().limits.max_concurrency as usize;
            loop {
                let next = {
                    let mut sched = lock(&self.sched);
                    let next = sched.pop_ready(&plugin, limit);
                    if next.is_some() {
                        sched.started(&plugin);
                    }
                    next
                };
                let Some(id) = next else { break };
                let control = TaskControl::new();
                lock(&self.running).insert(
                    id.clone(),
                    RunningTask {
                        control: control.clone(),
                        lease: None,
                    },
                );
                let inner = self.clone();
                let plugin = plugin.clone();
                tokio::spawn(async move { inner.run_task(id, plugin, control).await });
            }
        }
    }

    /// A run's slot is free again.
    pub(super) fn release(&self, id: &str, plugin: &str) {
        lock(&self.running).remove(id);
        lock(&self.sched).finished(plugin);
        lock(&self.claim_hints).insert(plugin.to_owned());
        self.wake.notify_one();
    }

    async fn run_task(self: Arc<Self>, id: String, plugin_name: String, control: TaskControl) {
        let started = self
            .modify(&id, |task| {
                if task.status != TaskStatus::Queued {
                    return Err(EngineError::Conflict("no longer queued".into()));
                }
                Ok(start_attempt(task))
            })
            .await;
        let task = match started {
            Ok((task, _)) => task,
            // Cancelled or paused between being picked and starting: nothing to run.
            Err(EngineError::Conflict(_) | EngineError::TaskNotFound(_)) => {
                self.release(&id, &plugin_name);
                return;
            }
            Err(e) => {
                error!(task = %id, error = %e, "could not start task; it stays queued");
                self.release(&id, &plugin_name);
                self.requeue_after_store_failure(id);
                return;
            }
        };
        self.execute(task, plugin_name, control, None).await;
    }

    /// Runs a started task (`lease`: this host's hold on it, on a shared store) and records
    /// how the run ended.
    pub(super) async fn execute(
        self: Arc<Self>,
        task: Task,
        plugin_name: String,
        control: TaskControl,
        lease: Option<Lease>,
    ) {
        let id = task.id.clone();
        let lease = lease.as_ref();
        let Some(loaded) = self.registry.get(&plugin_name) else {
            self.release(&id, &plugin_name);
            self.finish(
                &task,
                RunOutcome::Failed(TaskFailure::new(
                    "PLUGIN_NOT_FOUND",
                    format!("plugin {plugin_name} was unloaded"),
                    true,
                )),
                Directive::Run,
                &[],
                lease,
            )
            .await;
            return;
        };
        let plugin = loaded.plugin.clone();
        let mut input = task.input.clone();
        let mut secrets = Vec::new();
        if let Some(sealed) = &task.sealed_input {
            match self.secrets.unseal(sealed) {
                Ok(values) => {
                    secrets = secret_strings(&values);
                    unseal_into(&mut input, &values);
                }
                Err(e) => {
                    self.release(&id, &plugin_name);
                    let failure = TaskFailure::new(
                        "SECRETS_UNAVAILABLE",
                        format!("the task's secret input cannot be read: {e}"),
                        false,
                    );
                    self.finish(
                        &task,
                        RunOutcome::Failed(failure),
                        Directive::Run,
                        &[],
                        lease,
                    )
                    .await;
                    return;
                }
            }
        }
        let services = Arc::new(EngineServices::new(self.clone(), &task, secrets.clone()));
        let invocation = Invocation {
            task_id: task.id.clone(),
            task_type: task.task_type.clone(),
            input: input.to_string(),
            attempt: task.attempt,
            labels: task
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: Some(Duration::from_secs(task.timeout_s)),
        };
        let outcome = plugin.run(invocation, services, control.clone()).await;
        let directive = control.directive();
        // Jobs a run delegated end with it (a retry dispatches its own), but for a run stopped
        // by shutdown: the run after the restart adopts them, in flight or ended meanwhile.
        if directive != Directive::Shutdown
            && let Err(e) = self.runners.settle_task_jobs(&task.id).await
        {
            warn!(task = %task.id, error = %e, "could not settle the jobs the run left");
        }
        self.release(&id, &plugin_name);
        self.finish(&task, outcome, directive, &secrets, lease)
            .await;
    }

    /// A task whose start the store refused is still queued there: it goes back to the
    /// scheduler once the store reads again, so it is not dropped from the queue.
    fn requeue_after_store_failure(self: &Arc<Self>, id: String) {
        let inner = self.clone();
        tokio::spawn(async move {
            let mut delay = STORE_RETRY_FIRST;
            while !inner.stopping.load(Ordering::Acquire) {
                tokio::time::sleep(delay).await;
                match inner.storage.get_task(&id).await {
                    Ok(Some(task)) => {
                        if let Err(e) = inner.schedule(&task).await {
                            warn!(task = %id, error = %e, "could not queue a task again");
                        }
                        return;
                    }
                    Ok(None) => return,
                    Err(e) => warn!(task = %id, error = %e, "the store still fails"),
                }
                delay = (delay * 2).min(STORE_RETRY_MAX);
            }
        });
    }

    /// Backoff before attempt `attempt + 1`: exponential from the base, capped, with jitter
    /// (50-100% of the step) so that retries of a burst do not arrive together.
    fn retry_delay(&self, attempt: u32) -> Duration {
        let base = self.config.retry_base_ms.max(1);
        let step = base
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
            .min(self.config.retry_max_ms.max(base));
        let jittered = rand::rng().random_range(step / 2..=step);
        Duration::from_millis(jittered)
    }

    /// Records how a run ended, with the run's secrets masked out of its result and error.
    async fn finish(
        self: &Arc<Self>,
        task: &Task,
        mut outcome: RunOutcome,
        directive: Directive,
        secrets: &[String],
        lease: Option<&Lease>,
    ) {
        match &mut outcome {
            RunOutcome::Completed(value) => redact_value(value, secrets),
            RunOutcome::Failed(failure) => {
                failure.code = redact(&failure.code, secrets);
                failure.message = redact(&failure.message, secrets);
            }
        }
        let id = task.id.clone();
        // A refused write is tried again until it lands, the store fails for good (the host
        // then stops and recovery puts the run back) or the host stops (the same).
        let mut delay = STORE_RETRY_FIRST;
        let result = loop {
            match self.record_outcome(&id, &outcome, directive, lease).await {
                Err(EngineError::Storage(e))
                    if !self.stopping.load(Ordering::Acquire)
                        && self.storage.check_writable().is_ok() =>
                {
                    error!(task = %id, error = %e, "could not record the end of a run; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(STORE_RETRY_MAX);
                }
                other => break other,
            }
        };
        let task = match result {
            Ok(Some(task)) => task,
            Ok(None) => {
                warn!(task = %id, "this host's lease on the run was lost; its outcome is dropped");
                return;
            }
            Err(e) => {
                error!(task = %id, error = %e, "could not record the end of a run");
                return;
            }
        };
        match task.status {
            TaskStatus::Scheduled | TaskStatus::Queued
                if !self.stopping.load(Ordering::Acquire) =>
            {
                if let Err(e) = self.schedule(&task).await {
                    warn!(task = %id, error = %e, "could not reschedule task");
                }
            }
            status if status.is_terminal() => self.on_terminal(&task).await,
            _ => {}
        }
        self.wake.notify_one();
    }

    /// Writes how a run ended: completed, retried, failed, cancelled, or back in the queue.
    /// `None` when this host's lease on the run was lost (another host has the task).
    async fn record_outcome(
        self: &Arc<Self>,
        id: &str,
        outcome: &RunOutcome,
        directive: Directive,
        lease: Option<&Lease>,
    ) -> Result<Option<Task>, EngineError> {
        let (Some(lease), Some(shared)) = (lease, self.storage.shared()) else {
            let (task, _) = self
                .modify(id, |task| self.outcome_change(task, outcome, directive))
                .await?;
            return Ok(Some(task));
        };
        // The run is ending: no more renewals, and one already under way that finds the lease
        // released by this finish is not mistaken for a lease lost to another host.
        if let Some(run) = lock(&self.running).get_mut(id) {
            run.lease = None;
        }
        let end = |task: &mut Task| self.outcome_change(task, outcome, directive).ok();
        match shared.finish(lease, &end).await? {
            Finished::Written(task, _) => Ok(Some(*task)),
            Finished::Lost => Ok(None),
            Finished::Declined => Err(EngineError::Conflict(format!(
                "task {id} cannot end its run from where it is"
            ))),
        }
    }

    /// What the end of a run makes of its task, and the events that says.
    fn outcome_change(
        &self,
        task: &mut Task,
        outcome: &RunOutcome,
        directive: Directive,
    ) -> Result<Vec<EventData>, EngineError> {
        let now = Utc::now();
        match &outcome {
            RunOutcome::Completed(value) => {
                transition(task, TaskStatus::Completed)?;
                task.result = Some(value.clone());
                task.error = None;
                if let (Some(total), None) = (task.progress.total, task.progress.processed) {
                    task.progress.processed = Some(total);
                }
                task.progress.refresh_percentage();
                Ok(vec![EventData::Completed {
                    result: value.clone(),
                }])
            }
            RunOutcome::Failed(_) if directive == Directive::Shutdown => {
                // Stopped by shutdown: back to the queue, the attempt not counted.
                transition(task, TaskStatus::Queued)?;
                task.attempt = task.attempt.saturating_sub(1);
                Ok(vec![EventData::Queued {
                    status: TaskStatus::Queued,
                    scheduled_at: None,
                    cause: QueueCause::Requeued("the host is shutting down".into()),
                }])
            }
            RunOutcome::Failed(failure) if directive == Directive::Cancel => {
                transition(task, TaskStatus::Cancelled)?;
                task.error = Some(failure.clone());
                Ok(vec![EventData::Cancelled {
                    reason: failure.message.clone(),
                }])
            }
            RunOutcome::Failed(failure)
                if failure.retryable && task.attempt < task.max_attempts =>
            {
                transition(task, TaskStatus::Scheduled)?;
                let delay = self.retry_delay(task.attempt);
                let at = now + chrono::Duration::milliseconds(delay.as_millis() as i64);
                task.scheduled_at = Some(at);
                task.error = Some(failure.clone());
                Ok(vec![EventData::Retrying {
                    attempt: task.attempt,
                    delay_ms: delay.as_millis() as u64,
                    scheduled_at: at,
                    error: failure.clone(),
                }])
            }
            RunOutcome::Failed(failure) => {
                transition(task, TaskStatus::Failed)?;
                task.error = Some(failure.clone());
                Ok(vec![EventData::Failed {
                    error: failure.clone(),
                }])
            }
        }
    }

    pub(super) async fn shutdown(self: &Arc<Self>) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.wake.notify_one();
        let controls: Vec<TaskControl> = lock(&self.running)
            .values()
            .map(|r| r.control.clone())
            .collect();
        for control in &controls {
            control.shutdown();
        }
        let grace = Duration::from_secs(self.config.shutdown_grace_s);
        let deadline = tokio::time::Instant::now() + grace;
        while !lock(&self.running).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stragglers: Vec<TaskControl> = lock(&self.running)
            .values()
            .map(|r| r.control.clone())
            .collect();
        for control in &stragglers {
            control.kill();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !lock(&self.running).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.storage.sync().await {
            error!(error = %e, "final flush failed");
        }
        info!(
            stopped = controls.len(),
            killed = stragglers.len(),
            "engine stopped"
        );
    }
}
