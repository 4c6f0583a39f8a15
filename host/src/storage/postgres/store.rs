//! [`PgStorage`]: the [`Storage`] contract on PostgreSQL, for one host or several on one
//! database.
//!
//! Every write is one transaction, durable when it commits. Events reach this host's
//! subscribers through the follower ([`super::follow`]), from the database, in seq order,
//! whichever host wrote them; so local and remote events share one order, and
//! [`Storage::sync`] waits (within a bound) until the caller's own events have come round,
//! which keeps "acknowledged" meaning "visible here" as on sled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::plugins::PgPlugins;
use super::runners::PgRunners;
use super::tally::Tally;
use super::tasks::{self, Removal};
use super::{PgSettings, connect, events, follow, listing, pg_error, stat_cells};
use crate::model::{
    ApiKeyRecord, Event, EventData, LogEntry, Record, Task, TaskStatus, UserRecord,
};
use crate::storage::cells::Cell;
use crate::storage::codec::{decode, encode};
use crate::storage::plugin_store::PluginStore;
use crate::storage::runner_store::RunnerStore;
use crate::storage::{HostRecord, StatusCounts, Storage, StorageError, TaskQuery};

/// Live events buffered for a slow subscriber before it lags (as on sled).
const BROADCAST_CAPACITY: usize = 16 * 1024;
/// How late the follower reads when a notification was lost.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// Longest [`Storage::sync`] waits for this host's events to come round: past it the write
/// is still durable, and subscribers get the events when the follower reads them.
const VISIBLE_WAIT: Duration = Duration::from_secs(2);

pub struct PgStorage {
    pool: PgPool,
    delivery: Arc<follow::Delivery>,
    /// The highest seq this host's writes committed.
    written: AtomicU64,
    /// PostgreSQL has no state in which it refuses writes for good: this never fires.
    failure: watch::Sender<Option<String>>,
    follower: JoinHandle<()>,
    runners: PgRunners,
    plugins: PgPlugins,
}

impl PgStorage {
    /// Connects, migrates the schema and starts following events after the last committed.
    pub async fn open(settings: &PgSettings) -> Result<Self, StorageError> {
        let pool = connect(settings).await?;
        let last_seq = events::last_seq(&pool).await?;
        let delivery = Arc::new(follow::Delivery::new(last_seq, BROADCAST_CAPACITY));
        let follower = follow::spawn(pool.clone(), POLL_EVERY, delivery.clone());
        Ok(Self {
            pool: pool.clone(),
            delivery,
            written: AtomicU64::new(last_seq),
            failure: watch::channel(None).0,
            follower,
            runners: PgRunners::new(pool.clone()),
            plugins: PgPlugins::new(pool.clone()),
        })
    }

    /// Notes that a committed write gave `events` their seqs, so that [`Storage::sync`]
    /// waits for them to come round.
    pub(super) fn note_written(&self, events: &[Event]) {
        if let Some(last) = events.last() {
            self.written.fetch_max(last.seq, Ordering::AcqRel);
        }
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StorageError> {
        self.pool.begin().await.map_err(pg_error)
    }

    /// Commits `tx`, whose writes gave `events` their seqs.
    async fn commit(
        &self,
        tx: Transaction<'static, Postgres>,
        events: &[Event],
    ) -> Result<(), StorageError> {
        tx.commit().await.map_err(pg_error)?;
        self.note_written(events);
        Ok(())
    }

    async fn remove(&self, id: &str, removal: Removal) -> Result<bool, StorageError> {
        let mut tx = self.begin().await?;
        let mut tally = Tally::default();
        let removed = tasks::remove(&mut tx, &mut tally, id, removal).await?;
        tally.write(&mut tx).await?;
        self.commit(tx, &[]).await?;
        Ok(removed)
    }
}

impl Drop for PgStorage {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, StorageError> {
    serde_json::to_value(value).map_err(|e| StorageError::Backend(format!("encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, StorageError> {
    serde_json::from_value(value).map_err(|e| StorageError::Backend(format!("decode: {e}")))
}

#[async_trait]
impl Storage for PgStorage {
    async fn create_task(
        &self,
        task: &Task,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let mut tx = self.begin().await?;
        let mut tally = Tally::default();
        tasks::insert(&mut tx, &mut tally, task, events).await?;
        let stored = tally.write(&mut tx).await?.concat();
        self.commit(tx, &stored).await?;
        Ok(stored)
    }

    async fn update_task(
        &self,
        task: &Task,
        expected: TaskStatus,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let mut tx = self.begin().await?;
        let mut tally = Tally::default();
        tasks::update(&mut tx, &mut tally, task, expected, events).await?;
        let stored = tally.write(&mut tx).await?.concat();
        self.commit(tx, &stored).await?;
        Ok(stored)
    }

    async fn append_events(
        &self,
        task: &Task,
        new_events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let mut tx = self.begin().await?;
        let stored = events::append(&mut tx, task, new_events).await?;
        self.commit(tx, &stored).await?;
        Ok(stored)
    }

    async fn delete_task(&self, id: &str) -> Result<bool, StorageError> {
        self.remove(id, Removal::KeepEvents).await
    }

    async fn prune(
        &self,
        before: DateTime<Utc>,
        keep: u64,
        limit: usize,
    ) -> Result<u64, StorageError> {
        let mut pruned = 0;
        for id in listing::prune_candidates(&self.pool, before, keep, limit).await? {
            if self.remove(&id, Removal::FinishedWithEvents).await? {
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StorageError> {
        let body: Option<Vec<u8>> = sqlx::query_scalar("SELECT body FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
        body.map(|body| decode(&body)).transpose()
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<(Vec<Task>, u64), StorageError> {
        listing::list(&self.pool, query).await
    }

    async fn task_ids_with_status(&self, status: TaskStatus) -> Result<Vec<String>, StorageError> {
        tasks::ids_with_status(&self.pool, status).await
    }

    async fn status_counts(&self) -> Result<BTreeMap<String, StatusCounts>, StorageError> {
        let mut counts: BTreeMap<String, StatusCounts> = BTreeMap::new();
        for (plugin, status, n) in tasks::all_counts(&self.pool).await? {
            counts.entry(plugin).or_default().insert(status, n);
        }
        Ok(counts)
    }

    async fn stat_cells(&self, owner: Option<&str>) -> Result<Vec<Cell>, StorageError> {
        stat_cells::read(&self.pool, owner).await
    }

    async fn events(
        &self,
        task_id: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        events::read(&self.pool, task_id, after_seq, limit).await
    }

    async fn append_log(
        &self,
        task: &Task,
        level: &str,
        message: &str,
        step: Option<&str>,
    ) -> Result<Event, StorageError> {
        let mut tx = self.begin().await?;
        let stored = events::append(
            &mut tx,
            task,
            &[EventData::Log {
                level: level.to_owned(),
                message: message.to_owned(),
            }],
        )
        .await?;
        let event = stored
            .first()
            .cloned()
            .ok_or_else(|| StorageError::Backend("a log line got no event".into()))?;
        let entry = LogEntry {
            seq: event.seq,
            level: level.to_owned(),
            message: message.to_owned(),
            timestamp: event.timestamp,
            step: step.map(str::to_owned),
        };
        sqlx::query("INSERT INTO task_logs (task_id, seq, body) VALUES ($1, $2, $3)")
            .bind(&task.id)
            .bind(to_i64(event.seq))
            .bind(encode(&entry)?)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        self.commit(tx, &stored).await?;
        Ok(event)
    }

    async fn logs(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT body FROM task_logs WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(task_id)
        .bind(to_i64(after_seq))
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        bodies.iter().map(|body| decode(body)).collect()
    }

    async fn log_tail(&self, task_id: &str, lines: usize) -> Result<Vec<LogEntry>, StorageError> {
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT body FROM (SELECT seq, body FROM task_logs WHERE task_id = $1 \
                 ORDER BY seq DESC LIMIT $2) AS tail ORDER BY seq",
        )
        .bind(task_id)
        .bind(to_i64(lines as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        bodies.iter().map(|body| decode(body)).collect()
    }

    async fn put_record(&self, task_id: &str, record: &Record) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO records (task_id, collection, key, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (task_id, collection, key) DO UPDATE SET body = EXCLUDED.body",
        )
        .bind(task_id)
        .bind(&record.collection)
        .bind(&record.key)
        .bind(encode(record)?)
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn records(
        &self,
        task_id: &str,
        collection: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Record>, u64), StorageError> {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM records WHERE task_id = $1 \
             AND ($2::text IS NULL OR collection = $2)",
        )
        .bind(task_id)
        .bind(collection)
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT body FROM records WHERE task_id = $1 \
             AND ($2::text IS NULL OR collection = $2) \
             ORDER BY collection COLLATE \"C\", key COLLATE \"C\" LIMIT $3 OFFSET $4",
        )
        .bind(task_id)
        .bind(collection)
        .bind(to_i64(limit as u64))
        .bind(to_i64(offset as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        let page = bodies
            .iter()
            .map(|body| decode(body))
            .collect::<Result<_, _>>()?;
        Ok((page, u64::try_from(total).unwrap_or(0)))
    }

    async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        sqlx::query_scalar("SELECT value FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)
    }

    async fn kv_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (plugin, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(plugin)
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn kv_list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        sqlx::query_scalar(
            "SELECT key FROM plugin_kv WHERE plugin = $1 AND starts_with(key, $2) \
             ORDER BY key COLLATE \"C\" LIMIT $3",
        )
        .bind(plugin)
        .bind(prefix)
        .bind(to_i64(limit as u64))
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)
    }

    async fn set_queue_paused(&self, plugin: &str, paused: bool) -> Result<(), StorageError> {
        let statement = if paused {
            "INSERT INTO paused_queues (plugin) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM paused_queues WHERE plugin = $1"
        };
        sqlx::query(statement)
            .bind(plugin)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn paused_queues(&self) -> Result<BTreeSet<String>, StorageError> {
        let plugins: Vec<String> = sqlx::query_scalar("SELECT plugin FROM paused_queues")
            .fetch_all(&self.pool)
            .await
            .map_err(pg_error)?;
        Ok(plugins.into_iter().collect())
    }

    async fn put_user(&self, user: &UserRecord, only_new: bool) -> Result<(), StorageError> {
        let statement = if only_new {
            "INSERT INTO users (username, body) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "INSERT INTO users (username, body) VALUES ($1, $2) \
             ON CONFLICT (username) DO UPDATE SET body = EXCLUDED.body"
        };
        let written = sqlx::query(statement)
            .bind(&user.username)
            .bind(json(user)?)
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
        if written.rows_affected() == 0 {
            return Err(StorageError::Duplicate(user.username.clone()));
        }
        Ok(())
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        let body: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT body FROM users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
        body.map(from_json).transpose()
    }

    async fn count_users(&self) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(pg_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn put_api_key(&self, key: &ApiKeyRecord) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO api_keys (id, owner, body) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, body = EXCLUDED.body",
        )
        .bind(&key.id)
        .bind(&key.owner)
        .bind(json(key)?)
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(())
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StorageError> {
        let body: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT body FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(pg_error)?;
        body.map(from_json).transpose()
    }

    async fn list_api_keys(&self, owner: Option<&str>) -> Result<Vec<ApiKeyRecord>, StorageError> {
        let bodies: Vec<serde_json::Value> = sqlx::query_scalar(
            "SELECT body FROM api_keys WHERE $1::text IS NULL OR owner = $1 \
             ORDER BY id COLLATE \"C\"",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        bodies.into_iter().map(from_json).collect()
    }

    fn shared(&self) -> Option<&dyn crate::storage::shared::SharedQueue> {
        Some(self)
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn runners(&self) -> &dyn RunnerStore {
        &self.runners
    }

    fn plugins(&self) -> &dyn PluginStore {
        &self.plugins
    }

    async fn heartbeat(&self, host: &HostRecord) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO hosts (id, started_at, last_seen) VALUES ($1, $2, now()) \
             ON CONFLICT (id) DO UPDATE SET last_seen = now()",
        )
        .bind(&host.id)
        .bind(host.started_at)
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        // Hosts silent for a day are gone for good; their rows would only grow the table.
        sqlx::query("DELETE FROM hosts WHERE last_seen < now() - interval '1 day'")
            .execute(&self.pool)
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn live_hosts(&self, within: Duration) -> Result<Vec<HostRecord>, StorageError> {
        let rows: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, started_at, last_seen FROM hosts WHERE last_seen > now() - $1 \
             ORDER BY started_at DESC, id",
        )
        .bind(within)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, started_at, last_seen)| HostRecord {
                id,
                started_at,
                last_seen,
            })
            .collect())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        let written = self.written.load(Ordering::Acquire);
        let mut delivered = self.delivery.delivered.subscribe();
        let arrived =
            tokio::time::timeout(VISIBLE_WAIT, delivered.wait_for(|seq| *seq >= written)).await;
        if arrived.is_err() {
            tracing::warn!(
                seq = written,
                "this host's events are late to come round from PostgreSQL; they stay durable"
            );
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.delivery.events.subscribe()
    }

    fn last_seq(&self) -> u64 {
        self.delivery.visible.load(Ordering::Acquire)
    }

    fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }
}
