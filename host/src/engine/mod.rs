//! The task engine: creates tasks, schedules them onto plugins, runs them, retries them and
//! keeps their state — durably, through [`Storage`], with one state machine
//! ([`TaskStatus::can_become`]) applied by [`transition`] for every change.
//!
//! Every operation takes the [`Principal`] asking, and checks it here, so that no caller can
//! reach a task without an authorisation decision. Every state change is stored together with
//! its event, which carries a host-wide `seq`.

mod error;
mod error_records;
mod feed;
mod history;
mod plugins;
mod progress;
mod projects;
mod queues;
mod reports;
mod retention;
mod scans;
mod scheduler;
mod scheduling;
mod services;
mod shared_dispatch;
mod stats;
mod tasks;
mod validation;
mod worker;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tracing::warn;

pub use error::EngineError;
pub use error_records::{ERRORS_COLLECTION, ErrorReport, MAX_STACK_TRACE};
pub use feed::EventFeed;
pub use progress::ProgressReport;
pub use projects::{Project, ProjectQuery, ProjectSort};
pub use reports::{RUNNER_LABEL, ReportedError, TaskUpdate};
pub use retention::RetentionConfig;
pub use stats::{MAX_RECENT, Stats, StatsQuery};

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
use crate::storage::shared::Lease;
use crate::storage::{Storage, StorageError, TaskQuery};
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
    /// On a store several hosts share: how long a run's lease lasts without renewal. A host
    /// renews its leases every second (or a third of this, when shorter); when it dies,
    /// another host takes its runs over once their leases lapse.
    pub lease_s: u64,
    /// On a shared store: how often a host looks for ready work and sweeps (lapsed leases,
    /// due tasks) when no event woke it.
    pub claim_poll_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_max_attempts: 3,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            cancel_grace_s: 5,
            shutdown_grace_s: 10,
            lease_s: 30,
            claim_poll_ms: 500,
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
    pub title: Option<String>,
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
    /// This host's lease on the run, on a shared store.
    lease: Option<Lease>,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    storage: Arc<dyn Storage>,
    /// This host among those sharing the store (it holds the leases of its runs).
    host_id: String,
    /// Plugins that may have ready tasks to claim from a shared store (from events and
    /// freed slots); every plugin is looked at on the poll.
    claim_hints: Mutex<BTreeSet<String>>,
    /// Wakes the sweep of a shared store: a task failed and its dependents may fail too.
    sweep_wake: Notify,
    /// Seals the secret fields of task inputs.
    secrets: Arc<SecretBox>,
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
        host_id: String,
        storage: Arc<dyn Storage>,
        registry: Arc<PluginRegistry>,
        secrets: Arc<SecretBox>,
        runners: Runners,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let inner = Arc::new(Inner {
            secrets,
            storage,
            host_id,
            claim_hints: Mutex::new(BTreeSet::new()),
            sweep_wake: Notify::new(),
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
        if inner.storage.shared().is_some() {
            inner.recover_shared().await?;
            inner.clone().spawn_shared_dispatch();
        } else {
            inner.recover().await?;
            tokio::spawn(inner.clone().dispatch_loop());
        }
        Ok(Self { inner })
    }

    /// Durable events, live and stored, for the consumers that deliver them to principals.
    pub fn event_feed(&self) -> EventFeed {
        EventFeed::new(self.inner.storage.clone())
    }

    pub fn runners(&self) -> &Runners {
        &self.inner.runners
    }

    /// The store, for the host's own integrations that keep state beside the tasks.
    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.inner.registry
    }

    /// Why the store refuses writes for good, once it does (see [`store_failures`](Self::store_failures)).
    pub fn store_failure(&self) -> Option<String> {
        self.inner.storage.failure().borrow().clone()
    }

    /// Becomes `Some(reason)` when the store refuses writes for good: nothing the host does
    /// from then on can be recorded, so the binary stops and a restart recovers from what is
    /// durable (runs interrupted go back to the queue).
    pub fn store_failures(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.storage.failure()
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
}

impl Inner {
    /// Who acts for `task` when it spawns children: the key that created it (cut down to its
    /// owner's current rights), or its owner's current role; `None` when either is gone.
    async fn acting_principal(&self, task: &Task) -> Result<Option<Principal>, StorageError> {
        match &task.created_via {
            Some(key_id) => match self.storage.get_api_key(key_id).await? {
                Some(record) => principal_for_key(self.storage.as_ref(), &record)
                    .await
                    .map_err(|e| StorageError::Backend(e.to_string())),
                None => Ok(None),
            },
            None => Ok(self
                .storage
                .get_user(&task.owner)
                .await?
                .map(|user| Principal::with_role(&user.username, user.role))),
        }
    }

    /// Reads a task, lets `change` edit it and name its events, and writes it back — retrying
    /// when someone else changed the task in between.
    pub(crate) async fn modify(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Task) -> Result<Vec<EventData>, EngineError>,
    ) -> Result<(Task, Vec<Event>), EngineError> {
        for _ in 0..16 {
            let stored = self
                .storage
                .get_task(id)
                .await?
                .ok_or_else(|| EngineError::TaskNotFound(id.to_owned()))?;
            let mut task = stored.clone();
            let events = change(&mut task)?;
            match self
                .storage
                .update_task(&task, stored.status, &events)
                .await
            {
                Ok(events) => return Ok((task, events)),
                Err(StorageError::StatusChanged { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Conflict(format!(
            "task {id} is changing too fast; try again"
        )))
    }
}
