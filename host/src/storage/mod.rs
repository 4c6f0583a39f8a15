//! Durable storage of tasks, events, logs, records, plugin key-value data and queue state,
//! behind the [`Storage`] trait so that a shared database (PostgreSQL, for several hosts) can
//! replace the embedded one without touching the engine or the API.
//!
//! Contract every backend keeps:
//! - A task write, its index updates, its per-plugin status counters and its events commit
//!   atomically.
//! - `seq` increases strictly across the host, and events become visible (to [`Storage::events`]
//!   and to [`Storage::subscribe`]rs) in `seq` order, so a reader that has seen `seq` N has
//!   seen everything before it.
//! - Durable before visible: an event is visible only once its write is durable (sled's
//!   writes pass through a [`CommitLog`]; a PostgreSQL write is durable at its commit), so no `seq` a reader saw is lost or
//!   given again after a crash, and [`Storage::sync`] returns once the caller's writes are.

pub mod cells;
mod codec;
pub mod commit;
#[cfg(test)]
pub mod conformance;
#[cfg(test)]
mod plugin_conformance;
pub mod plugin_store;
pub mod postgres;
#[cfg(test)]
mod runner_conformance;
pub mod runner_store;
pub mod shared;
mod sled_index;
mod sled_merge;
mod sled_plugins;
mod sled_runners;
mod sled_staging;
mod sled_store;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};

pub use commit::CommitLog;
pub use sled_store::{KeyFamily, SledStorage};

use crate::model::{
    ApiKeyRecord, Event, EventData, LogEntry, Record, Task, TaskStatus, UserRecord,
};
use crate::policy::ReadScope;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A task with this id exists already.
    #[error("task {0} already exists")]
    Duplicate(String),
    /// The stored task is not in the status the write expected (someone else moved it).
    #[error("task {id} is {actual}, not {expected}")]
    StatusChanged {
        id: String,
        expected: TaskStatus,
        actual: TaskStatus,
    },
    #[error("task {0} not found")]
    NotFound(String),
    /// The backend failed; the message is for logs, not for clients.
    #[error("storage backend: {0}")]
    Backend(String),
    /// The store cannot make writes durable (a full disk, an I/O error, a lost connection).
    /// Whether the write took effect is unknown; reads may still work.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    /// `StatusChanged` unless `stored` is in the status a write expects.
    pub fn check_status(stored: &Task, expected: TaskStatus) -> Result<(), Self> {
        if stored.status == expected {
            return Ok(());
        }
        Err(Self::StatusChanged {
            id: stored.id.clone(),
            expected,
            actual: stored.status,
        })
    }
}

/// Storage settings (`[storage]`).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where tasks live: `sled`, embedded in the data directory (one host), or `postgres`, a
    /// database several hosts share.
    pub backend: BackendKind,
    /// Memory the embedded store may use to cache its pages, in MiB. The indexes keep lists
    /// and stats fast without a large cache; more helps reads of old tasks.
    pub cache_mb: u64,
    /// The PostgreSQL database (`postgres://user:password@host:5432/db`); the environment's
    /// `TASKHOST_DATABASE_URL` takes its place, so the password need not be in a file.
    pub url: Option<String>,
    /// Connections this host keeps open to PostgreSQL at most.
    pub pool_size: u32,
}

/// The storage backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Sled,
    Postgres,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Sled,
            cache_mb: 64,
            url: None,
            pool_size: 16,
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    /// Without the URL, which may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("cache_mb", &self.cache_mb)
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl StorageConfig {
    /// A configuration the chosen backend can open; the reason otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == BackendKind::Postgres {
            if self.url.as_deref().is_none_or(str::is_empty) {
                return Err(
                    "storage: backend \"postgres\" needs url (or TASKHOST_DATABASE_URL)".into(),
                );
            }
            if !(1..=1000).contains(&self.pool_size) {
                return Err("storage: pool_size must be between 1 and 1000".into());
            }
        }
        Ok(())
    }
}

/// How to order a task listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortField {
    #[default]
    CreatedAt,
    UpdatedAt,
    Priority,
}

/// A task listing: filters, order and page.
#[derive(Debug, Clone, Default)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub plugin: Option<String>,
    /// Only tasks of these plugins (a plugin-scoped key's reach); `None`: any.
    pub plugins: Option<Vec<String>>,
    pub task_type: Option<String>,
    pub owner: Option<String>,
    pub labels: Vec<(String, String)>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub sort: SortField,
    pub ascending: bool,
    pub limit: usize,
    pub offset: usize,
}

impl TaskQuery {
    /// Narrows the query to what `scope` lets its caller see; false when nothing can match
    /// (another owner's tasks, a plugin outside the scope).
    pub fn narrow_to(&mut self, scope: &ReadScope) -> bool {
        if let Some(owner) = &scope.owner {
            if self.owner.as_ref().is_some_and(|asked| asked != owner) {
                return false;
            }
            self.owner = Some(owner.clone());
        }
        if let Some(plugins) = &scope.plugins {
            if plugins.is_empty()
                || self
                    .plugin
                    .as_ref()
                    .is_some_and(|asked| !plugins.contains(asked))
            {
                return false;
            }
            self.plugins = Some(plugins.clone());
        }
        true
    }

    /// Whether `task` passes every filter.
    pub fn matches(&self, task: &Task) -> bool {
        self.status.is_none_or(|s| task.status == s)
            && self.plugin.as_ref().is_none_or(|p| &task.plugin == p)
            && self
                .plugins
                .as_ref()
                .is_none_or(|p| p.contains(&task.plugin))
            && self.task_type.as_ref().is_none_or(|t| &task.task_type == t)
            && self.owner.as_ref().is_none_or(|o| &task.owner == o)
            && self
                .labels
                .iter()
                .all(|(k, v)| task.labels.get(k).is_some_and(|value| value == v))
            && self.created_after.is_none_or(|t| task.created_at > t)
            && self.created_before.is_none_or(|t| task.created_at < t)
    }
}

/// A host sharing the store, as the last heartbeat it wrote describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostRecord {
    pub id: String,
    #[serde(with = "crate::model::timestamp")]
    pub started_at: DateTime<Utc>,
    #[serde(with = "crate::model::timestamp")]
    pub last_seen: DateTime<Utc>,
}

/// Task counts by status, for one plugin.
pub type StatusCounts = BTreeMap<TaskStatus, u64>;

/// The storage backend.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Stores a new task and its events. Fails with `Duplicate` when the id is taken.
    async fn create_task(
        &self,
        task: &Task,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError>;

    /// Replaces a task whose stored status is `expected`, with its events.
    async fn update_task(
        &self,
        task: &Task,
        expected: TaskStatus,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError>;

    /// Appends events of `task` without changing it (messages).
    async fn append_events(
        &self,
        task: &Task,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError>;

    /// Removes a terminal task, its logs and records (its events stay in the event log).
    async fn delete_task(&self, id: &str) -> Result<bool, StorageError>;

    /// Retention: removes up to `limit` finished tasks, oldest last update first, that were
    /// last updated before `before` or lie beyond the newest `keep` finished ones, with their
    /// events, logs and records. Tasks that are not terminal are never touched. Returns how
    /// many went.
    async fn prune(
        &self,
        before: DateTime<Utc>,
        keep: u64,
        limit: usize,
    ) -> Result<u64, StorageError>;

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StorageError>;

    /// The page of tasks the query asks for, and how many match in all.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<(Vec<Task>, u64), StorageError>;

    /// Ids of every task in `status`, oldest first (recovery and scheduling).
    async fn task_ids_with_status(&self, status: TaskStatus) -> Result<Vec<String>, StorageError>;

    /// Task counts per plugin and status, kept up to date on every write (no scan).
    async fn status_counts(&self) -> Result<BTreeMap<String, StatusCounts>, StorageError>;

    /// The statistics cells (see [`cells`]) of one owner's tasks, or of all, kept up to date
    /// in the same write as each task.
    async fn stat_cells(&self, owner: Option<&str>) -> Result<Vec<cells::Cell>, StorageError>;

    /// Events after `after_seq`, oldest first, of one task or of all.
    async fn events(
        &self,
        task_id: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError>;

    /// Appends a log line and its `log` event; `step` names the step that wrote it.
    async fn append_log(
        &self,
        task: &Task,
        level: &str,
        message: &str,
        step: Option<&str>,
    ) -> Result<Event, StorageError>;

    /// Log lines of a task with `seq` after `after_seq`, oldest first.
    async fn logs(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError>;

    /// The last `lines` log lines of a task, oldest first.
    async fn log_tail(&self, task_id: &str, lines: usize) -> Result<Vec<LogEntry>, StorageError>;

    async fn put_record(&self, task_id: &str, record: &Record) -> Result<(), StorageError>;

    /// A page of a task's records (of one collection or all) and the total.
    async fn records(
        &self,
        task_id: &str,
        collection: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Record>, u64), StorageError>;

    async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    async fn kv_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StorageError>;
    async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StorageError>;
    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;

    async fn set_queue_paused(&self, plugin: &str, paused: bool) -> Result<(), StorageError>;
    async fn paused_queues(&self) -> Result<BTreeSet<String>, StorageError>;

    /// Stores a user; with `only_new`, fails with `Duplicate` when the name is taken.
    async fn put_user(&self, user: &UserRecord, only_new: bool) -> Result<(), StorageError>;
    async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StorageError>;
    async fn count_users(&self) -> Result<u64, StorageError>;

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StorageError>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StorageError>;
    /// Keys of one owner, or all.
    async fn list_api_keys(&self, owner: Option<&str>) -> Result<Vec<ApiKeyRecord>, StorageError>;

    /// Runner registrations and their jobs.
    fn runners(&self) -> &dyn runner_store::RunnerStore;

    /// Plugins installed, replaced or unloaded at runtime.
    fn plugins(&self) -> &dyn plugin_store::PluginStore;

    /// Which backend this is, for health reports (`sled`, `postgres`).
    fn backend_name(&self) -> &'static str;

    /// Dispatch through the store, when several hosts share it: the engine then claims
    /// tasks here instead of scheduling them in its own memory. `None` on a store only one
    /// host opens.
    fn shared(&self) -> Option<&dyn shared::SharedQueue> {
        None
    }

    /// Records that `host` is alive now, for the other hosts on a shared store. A store only
    /// one host can open has nobody to tell.
    async fn heartbeat(&self, _host: &HostRecord) -> Result<(), StorageError> {
        Ok(())
    }

    /// The hosts whose last heartbeat is within `within`, newest start first; empty on a store
    /// only one host can open (the caller is the one).
    async fn live_hosts(&self, _within: Duration) -> Result<Vec<HostRecord>, StorageError> {
        Ok(Vec::new())
    }

    /// Returns once everything this caller wrote before calling is durable; an error when
    /// the store could not make it so (the write may still become durable later).
    async fn sync(&self) -> Result<(), StorageError>;

    /// Durable events, in `seq` order, from the moment of subscribing.
    fn subscribe(&self) -> broadcast::Receiver<Event>;

    /// The highest `seq` that is durable and visible.
    fn last_seq(&self) -> u64;

    /// Becomes `Some(reason)` when the store refuses writes for good.
    fn failure(&self) -> watch::Receiver<Option<String>>;

    /// An error when the store refuses writes for good.
    fn check_writable(&self) -> Result<(), StorageError> {
        match self.failure().borrow().as_ref() {
            Some(reason) => Err(StorageError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }
}
