//! The task engine: creates tasks, schedules them onto plugins, runs them, retries them and
//! keeps their state — durably, through [`Storage`], with one state machine
//! ([`TaskStatus::can_become`]) applied by [`transition`] for every change.
//!
//! Every operation takes the [`Principal`] asking, and checks it here, so that no caller can
//! reach a task without an authorisation decision. Every state change is stored together with
//! its event, which carries a host-wide `seq`.

mod error;
mod feed;
mod plugins;
mod progress;
mod queues;
mod reports;
mod retention;
mod scheduler;
mod services;
mod stats;
mod validation;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tracing::warn;

pub use error::EngineError;
pub use feed::EventFeed;
pub use progress::ProgressReport;
pub use reports::{ReportedError, TaskUpdate};
pub use retention::RetentionConfig;
pub use stats::{Stats, StatsQuery};

use crate::auth::{
    Principal, SecretBox, principal_for_key, redact, redact_value, seal_secrets, secret_strings,
};
use crate::lock;
use crate::model::{
    Event, EventData, Executor, LogEntry, QueueCause, Record, SystemNotice, Task, TaskProgress,
    TaskStatus,
};
use crate::policy::{self, PluginAccess};
use crate::registry::{LoadedPlugin, PluginRegistry};
use crate::runners::Runners;
use crate::runtime::{TaskControl, TaskFailure};
use crate::storage::{Durability, Storage, StorageError, TaskQuery};
use scheduler::Scheduler;

/// Engine settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// `max_attempts` of a task that does not say.
    pub default_max_attempts: u32,
    /// First retry delay; doubles each attempt, with jitter, up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a cancelled run may take to stop before it is killed.
    pub cancel_grace_s: u64,
    /// How long shutdown waits for running tasks to reach a checkpoint.
    pub shutdown_grace_s: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_max_attempts: 3,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            cancel_grace_s: 5,
            shutdown_grace_s: 10,
        }
    }
}

/// What a client asks for when creating a task.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub id: Option<String>,
    pub plugin: String,
    pub task_type: String,
    pub input: Value,
    pub labels: BTreeMap<String, String>,
    pub priority: Option<i32>,
    pub max_attempts: Option<u32>,
    pub timeout_s: Option<u64>,
    pub run_at: Option<DateTime<Utc>>,
    pub depends_on: Vec<String>,
    pub executor: Executor,
    /// Users besides the owner who may report on an external task.
    pub reporters: Vec<String>,
}

/// One plugin's queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Queue)]
pub struct QueueInfo {
    pub plugin: String,
    pub paused: bool,
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
    #[serde(rename = "paused_tasks")]
    pub paused_count: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

/// A run in flight.
struct RunningTask {
    control: TaskControl,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    storage: Arc<dyn Storage>,
    /// Seals the secret fields of task inputs.
    secrets: Arc<SecretBox>,
    durability: Durability,
    registry: Arc<PluginRegistry>,
    config: EngineConfig,
    sched: Mutex<Scheduler>,
    running: Mutex<HashMap<String, RunningTask>>,
    /// Wakes the dispatcher: new ready work or a free slot.
    wake: Notify,
    stopping: AtomicBool,
    /// Compiled input schemas by (plugin digest, task type).
    validators: Mutex<HashMap<(String, String), Arc<jsonschema::Validator>>>,
    started_at: Instant,
    /// Plugin, queue and health notices for the `system` stream topic.
    system: broadcast::Sender<SystemNotice>,
    /// Runners and the jobs plugins delegate to them.
    runners: Runners,
}

/// System notices buffered for a stream hub that falls behind (they are rare).
const SYSTEM_NOTICE_CAPACITY: usize = 256;

/// Applies `next` to `task` if the state machine allows it, stamping the times it implies.
pub(crate) fn transition(task: &mut Task, next: TaskStatus) -> Result<(), EngineError> {
    if !task.status.can_become(next) {
        return Err(EngineError::Conflict(format!(
            "task {} cannot go from {} to {}",
            task.id, task.status, next
        )));
    }
    let now = Utc::now();
    task.status = next;
    task.updated_at = now;
    if next.is_terminal() {
        task.finished_at = Some(now);
    }
    Ok(())
}

impl Engine {
    /// Opens the engine over `storage`: recovers runs a crash interrupted, rebuilds the
    /// schedule and starts dispatching.
    pub async fn start(
        storage: Arc<dyn Storage>,
        registry: Arc<PluginRegistry>,
        secrets: Arc<SecretBox>,
        runners: Runners,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let inner = Arc::new(Inner {
            secrets,
            durability: Durability::new(storage.clone()),
            storage,
            registry,
            config,
            sched: Mutex::new(Scheduler::default()),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            validators: Mutex::new(HashMap::new()),
            started_at: Instant::now(),
            system: broadcast::channel(SYSTEM_NOTICE_CAPACITY).0,
            runners,
        });
        inner.recover().await?;
        tokio::spawn(inner.clone().dispatch_loop());
        Ok(Self { inner })
    }

    /// Durable events, live and stored, for the consumers that deliver them to principals.
    pub fn event_feed(&self) -> EventFeed {
        EventFeed::new(self.inner.storage.clone())
    }

    pub fn runners(&self) -> &Runners {
        &self.inner.runners
    }

    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.inner.registry
    }

    /// Why the store refuses writes for good, once it does (see [`store_failures`](Self::store_failures)).
    pub fn store_failure(&self) -> Option<String> {
        self.inner.storage.commit_log().failure().borrow().clone()
    }

    /// Becomes `Some(reason)` when the store refuses writes for good: nothing the host does
    /// from then on can be recorded, so the binary stops and a restart recovers from what is
    /// durable (runs interrupted go back to the queue).
    pub fn store_failures(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.storage.commit_log().failure()
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// Stops taking work, asks running tasks to stop at their next checkpoint, waits up to the
    /// grace period, then kills what is left; every stopped run goes back to the queue.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    /// Plugin, queue and health notices from now on (the `system` stream topic).
    pub fn system_notices(&self) -> broadcast::Receiver<SystemNotice> {
        self.inner.system.subscribe()
    }

    /// Tells `system` subscribers about a change of the host; nobody listening is fine.
    pub fn notify_system(&self, event: &'static str, data: Value) {
        let _ = self.inner.system.send(SystemNotice::new(event, data));
    }

    fn notify_plugin(&self, event: &'static str, loaded: &LoadedPlugin) {
        let info = loaded.plugin.info();
        self.notify_system(event, json!({"name": info.name, "version": info.version}));
    }

    fn load(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self
            .inner
            .storage
            .get_task(id)?
            .ok_or_else(|| EngineError::TaskNotFound(id.to_owned()))?;
        // A task the caller may not read does not exist for it.
        if !policy::may_read(principal, &task) {
            return Err(EngineError::TaskNotFound(id.to_owned()));
        }
        Ok(task)
    }

    /// Loads a task the principal may cancel, pause, resume or retry.
    fn load_for_control(
        &self,
        principal: &Principal,
        id: &str,
        verb: &str,
    ) -> Result<Task, EngineError> {
        let task = self.load(principal, id)?;
        if !policy::may_control(principal, &task) {
            return Err(EngineError::Forbidden(format!(
                "{} may not {verb} task {id}",
                principal.name
            )));
        }
        Ok(task)
    }

    /// Gives a cooperative plugin up to a second to reach its checkpoint and leave `from`, so
    /// that the answer to a pause or resume shows the new status.
    async fn await_status_change(
        &self,
        principal: &Principal,
        id: &str,
        from: TaskStatus,
    ) -> Result<Task, EngineError> {
        for _ in 0..50 {
            let current = self.load(principal, id)?;
            if current.status != from {
                return Ok(current);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.load(principal, id)
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
            .map_err(|e| match e {
                StorageError::Duplicate(id) => {
                    EngineError::Conflict(format!("task {id} already exists"))
                }
                other => other.into(),
            })?;
        // The store holds the task even when it cannot confirm it is durable (it may become
        // so on a later flush), so it is scheduled either way rather than left unseen.
        let synced = self.inner.durability.sync().await;
        if let Some(updated) = self.inner.schedule(&task)? {
            task = updated;
        }
        synced?;
        Ok(task)
    }

    pub fn get(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        self.load(principal, id)
    }

    /// A page of tasks the principal may read.
    pub fn list(
        &self,
        principal: &Principal,
        mut query: TaskQuery,
    ) -> Result<(Vec<Task>, u64), EngineError> {
        if !query.narrow_to(&policy::read_scope(principal)) {
            return Ok((Vec::new(), 0));
        }
        Ok(self.inner.storage.list_tasks(&query)?)
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
    /// this returns once the task is cancelled (or has ended otherwise).
    pub async fn cancel(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self.load_for_control(principal, id, "cancel")?;
        if task.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "task {id} is already {}",
                task.status
            )));
        }
        let control = lock(&self.inner.running).get(id).map(|r| r.control.clone());
        match control {
            Some(control) => {
                let mut events = self.inner.storage.subscribe();
                control.cancel();
                let grace = Duration::from_secs(self.inner.config.cancel_grace_s);
                let killer = control.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    killer.kill();
                });
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
                let _ = tokio::time::timeout(grace + Duration::from_secs(2), ended).await;
                self.load(principal, id)
            }
            None => {
                let (task, _) = self.inner.modify(id, |task| {
                    transition(task, TaskStatus::Cancelled)?;
                    Ok(vec![EventData::Cancelled {
                        reason: "cancelled by request".into(),
                    }])
                })?;
                lock(&self.inner.sched).remove(id);
                self.inner.durability.sync().await?;
                self.inner.on_terminal(&task);
                Ok(task)
            }
        }
    }

    /// Pauses a task: a running plugin at its next checkpoint, a waiting task at once.
    pub async fn pause(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        self.load_for_control(principal, id, "pause")?;
        let control = lock(&self.inner.running).get(id).map(|r| r.control.clone());
        if let Some(control) = control {
            if !control.pause() {
                return Err(EngineError::Conflict(format!("task {id} is stopping")));
            }
            // Give a cooperative plugin a moment to reach its checkpoint, so the answer shows it.
            return self
                .await_status_change(principal, id, TaskStatus::Running)
                .await;
        }
        let (task, _) = self.inner.modify(id, |task| {
            transition(task, TaskStatus::Paused)?;
            Ok(vec![EventData::Paused])
        })?;
        lock(&self.inner.sched).remove(id);
        self.inner.durability.sync().await?;
        Ok(task)
    }

    pub async fn resume(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self.load_for_control(principal, id, "resume")?;
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
                .await_status_change(principal, id, TaskStatus::Paused)
                .await;
        }
        let next = if task.executor == Executor::External && task.started_at.is_some() {
            TaskStatus::Running
        } else {
            TaskStatus::Queued
        };
        let (task, _) = self.inner.modify(id, |task| {
            transition(task, next)?;
            Ok(vec![EventData::Resumed { status: next }])
        })?;
        self.inner.durability.sync().await?;
        Ok(self.inner.schedule(&task)?.unwrap_or(task))
    }

    /// Runs a failed or cancelled task again from its first attempt.
    pub async fn retry(&self, principal: &Principal, id: &str) -> Result<Task, EngineError> {
        let task = self.load_for_control(principal, id, "retry")?;
        if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
            return Err(EngineError::Conflict(format!(
                "only failed or cancelled tasks can be retried; task {id} is {}",
                task.status
            )));
        }
        let (task, _) = self.inner.modify(id, |task| {
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
        })?;
        self.inner.durability.sync().await?;
        Ok(self.inner.schedule(&task)?.unwrap_or(task))
    }

    /// A task's events after `after_seq`. Events become visible once durable, a little after
    /// the task's own state can be read; waiting for the writes made before the call keeps a
    /// reader who saw the task in some state from missing the events that led to it.
    pub async fn events(
        &self,
        principal: &Principal,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        self.load(principal, id)?;
        self.inner.durability.sync().await?;
        Ok(self.inner.storage.events(Some(id), after_seq, limit)?)
    }

    /// A task's log lines after `after_seq`, once the writes made before the call are
    /// durable (as for [`events`](Self::events)).
    pub async fn logs(
        &self,
        principal: &Principal,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Task, Vec<LogEntry>), EngineError> {
        self.inner.durability.sync().await?;
        self.visible_logs(principal, id, after_seq, limit)
    }

    /// The log lines visible now, without waiting: for followers, which then take the rest
    /// from the live feed.
    pub fn visible_logs(
        &self,
        principal: &Principal,
        id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Task, Vec<LogEntry>), EngineError> {
        let task = self.load(principal, id)?;
        let logs = self.inner.storage.logs(id, after_seq, limit)?;
        Ok((task, logs))
    }

    pub fn records(
        &self,
        principal: &Principal,
        id: &str,
        collection: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Record>, u64), EngineError> {
        self.load(principal, id)?;
        Ok(self.inner.storage.records(id, collection, limit, offset)?)
    }

    /// Sends a message to the task's stream subscribers (stored as a `message` event).
    pub fn post_message(
        &self,
        principal: &Principal,
        id: &str,
        kind: &str,
        data: Value,
    ) -> Result<Event, EngineError> {
        let task = self.load(principal, id)?;
        if !policy::may_control(principal, &task) && !policy::may_report(principal, &task) {
            return Err(EngineError::Forbidden(format!(
                "{} may not message task {id}",
                principal.name
            )));
        }
        if kind.is_empty() || kind.len() > 64 {
            return Err(EngineError::validation(
                "message type must be 1-64 characters",
            ));
        }
        let events = self.inner.storage.append_events(
            &task,
            &[EventData::Message {
                message_type: kind.to_owned(),
                data,
            }],
        )?;
        events
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Storage(StorageError::Backend("no event stored".into())))
    }

    pub fn stats(&self, principal: &Principal, query: StatsQuery) -> Result<Stats, EngineError> {
        stats::compute(
            self.inner.storage.as_ref(),
            &query,
            &policy::read_scope(principal),
        )
    }
}

impl Inner {
    /// Who acts for `task` when it spawns children: the key that created it (cut down to its
    /// owner's current rights), or its owner's current role; `None` when either is gone.
    fn acting_principal(&self, task: &Task) -> Result<Option<Principal>, StorageError> {
        match &task.created_via {
            Some(key_id) => match self.storage.get_api_key(key_id)? {
                Some(record) => principal_for_key(self.storage.as_ref(), &record)
                    .map_err(|e| StorageError::Backend(e.to_string())),
                None => Ok(None),
            },
            None => Ok(self
                .storage
                .get_user(&task.owner)?
                .map(|user| Principal::with_role(&user.username, user.role))),
        }
    }

    /// [`schedule_new`](Self::schedule_new), then lets dependents of a task that failed at
    /// once follow it.
    fn schedule(&self, task: &Task) -> Result<Option<Task>, EngineError> {
        let failed = self.schedule_new(task)?;
        if let Some(failed) = &failed {
            self.on_terminal(failed);
        }
        Ok(failed)
    }

    /// Reads a task, lets `change` edit it and name its events, and writes it back — retrying
    /// when someone else changed the task in between.
    pub(crate) fn modify(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Task) -> Result<Vec<EventData>, EngineError>,
    ) -> Result<(Task, Vec<Event>), EngineError> {
        for _ in 0..16 {
            let stored = self
                .storage
                .get_task(id)?
                .ok_or_else(|| EngineError::TaskNotFound(id.to_owned()))?;
            let mut task = stored.clone();
            let events = change(&mut task)?;
            match self.storage.update_task(&task, stored.status, &events) {
                Ok(events) => return Ok((task, events)),
                Err(StorageError::StatusChanged { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict(format!(
            "task {id} is changing too fast; try again"
        )))
    }

    /// Puts a task that was just created, resumed or retried where the scheduler will find it.
    /// Returns the task if it changed (a failed dependency fails it at once).
    fn schedule_new(&self, task: &Task) -> Result<Option<Task>, EngineError> {
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

    fn fail_for_dependency(&self, id: &str, dependency: &str) -> Result<Option<Task>, EngineError> {
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
