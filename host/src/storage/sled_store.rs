//! The embedded backend, on sled.
//!
//! Tasks, their secondary indexes, per-plugin status counters and events share one tree so
//! that a sled batch commits them atomically. Keys are prefixed byte strings with `\0`
//! separators (ids, plugin names and label parts never contain `\0`; the engine checks), and
//! numbers are big-endian so that byte order is numeric order:
//!
//! | key | value |
//! | --- | --- |
//! | `t\0{id}` | task ([`super::codec`]: postcard, JSON before) |
//! | `e\0{seq}` | event (codec) |
//! | `E\0{id}\0{seq}` | (events of a task) |
//! | `i\0…`, `I\0…`, `n\0…` | indexes and counters: see [`super::sled_index`] |
//! | `m\0schema` | layout version of the indexes (rebuilt from the tasks when older) |
//! | `l\0{id}\0{seq}` | log line (codec) |
//! | `r\0{id}\0{collection}\0{key}` | record (codec) |
//! | `k\0{plugin}\0{key}` | plugin key-value data |
//! | `q\0{plugin}` | (queue paused) |
//! | `u\0{username}` | user JSON |
//! | `a\0{key id}` | API key JSON |
//!
//! Writes take one commit lock: it makes read-check-write of a task atomic and gives `seq` in
//! order. A write is staged ([`super::sled_staging`]) and registered with the [`CommitLog`],
//! whose flusher thread (sled's own periodic flusher is off) applies everything staged as one
//! sled batch, makes it durable and only then publishes its events. Point reads see staged
//! writes; scans apply them first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sled::{IVec, Tree};
use tokio::sync::{broadcast, watch};

use super::cells::{self, Cell};
use super::codec::{decode, decode_event, encode, encode_json};
use super::commit::OnFlushFailure;
use super::plugin_store::PluginStore;
use super::runner_store::RunnerStore;
use super::sled_plugins::SledPlugins;
use super::sled_runners::SledRunners;
use super::sled_staging::{Staging, Writes};
use super::{CommitLog, StatusCounts, Storage, StorageConfig, StorageError, TaskQuery, sled_index};
use crate::model::{
    ApiKeyRecord, Event, EventData, LogEntry, Record, Task, TaskStatus, UserRecord,
};

/// What removing a task takes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// Clearing a queue: the events stay in the event log.
    KeepEvents,
    /// Retention: only a finished task, and its events go too.
    FinishedWithEvents,
}

pub struct SledStorage {
    main: Tree,
    /// Writes on their way into `main`; point reads go through it.
    staging: Arc<Staging>,
    commit: Mutex<CommitState>,
    log: Arc<CommitLog>,
    flusher: Option<JoinHandle<()>>,
    runners: SledRunners,
    plugins: SledPlugins,
}

struct CommitState {
    last_seq: u64,
}

pub(super) fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// A failed sled call: an I/O error (a full disk) means the store takes no more writes. sled
/// keeps its first I/O error and may fail later calls with it, reads included.
pub(super) fn sled_error(e: sled::Error) -> StorageError {
    match e {
        sled::Error::Io(io) => StorageError::Unavailable(io.to_string()),
        other => backend(other),
    }
}

/// Flushes `tree` to disk off the async workers. Not `Tree::flush_async`: in sled 0.34 it
/// deadlocks when several callers await it at once (spacejam/sled#1308).
pub(super) async fn flush_tree(tree: &sled::Tree) -> Result<(), StorageError> {
    let tree = tree.clone();
    tokio::task::spawn_blocking(move || tree.flush())
        .await
        .map_err(backend)?
        .map_err(sled_error)?;
    Ok(())
}

pub(super) fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

pub(super) fn prefix(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = key(parts);
    key.push(0);
    key
}

fn task_key(id: &str) -> Vec<u8> {
    key(&[b"t", id.as_bytes()])
}

fn event_key(seq: u64) -> Vec<u8> {
    key(&[b"e", &seq.to_be_bytes()])
}

pub(super) fn read_u64(bytes: Option<IVec>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// How long [`open_db`] waits for a released store's file lock.
const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Opens sled, waiting a bounded time for its file lock.
///
/// A store dropped in this process releases its lock only when sled's own I/O threads let go
/// of their last handle, which can be a moment after the drop returns; a store reopened in
/// place (tests, a restart within the process) would otherwise fail at random. A lock held
/// by another process outlasts the wait and is reported as such.
fn open_db(config: &sled::Config) -> Result<sled::Db, StorageError> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(StorageError::Unavailable(format!(
                        "the data directory is in use by another taskhost process ({e})"
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

impl SledStorage {
    /// Opens the store at `path` with the default settings.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        Self::open_with(path, &StorageConfig::default())
    }

    pub fn open_with(path: &Path, config: &StorageConfig) -> Result<Self, StorageError> {
        let db = open_db(
            &sled::Config::new()
                .path(path)
                .cache_capacity(config.cache_mb.saturating_mul(1 << 20))
                .mode(sled::Mode::HighThroughput)
                .flush_every_ms(None),
        )?;
        let main = db.open_tree("main").map_err(backend)?;
        let runners = SledRunners::open(db.open_tree("runners").map_err(backend)?)?;
        let plugins = SledPlugins::open(db.open_tree("plugins").map_err(backend)?);
        sled_index::rebuild_if_older(&main)?;
        let last_seq = main
            .scan_prefix(prefix(&[b"e"]))
            .keys()
            .next_back()
            .transpose()
            .map_err(backend)?
            .and_then(|k| <[u8; 8]>::try_from(&k[2..]).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        // sled keeps its first I/O error and fails every later write with it.
        let log = Arc::new(CommitLog::new(last_seq, OnFlushFailure::Fatal));
        let staging = Arc::new(Staging::new(main.clone()));
        let flusher = std::thread::Builder::new()
            .name("taskhost-commit".into())
            .spawn({
                let (log, staging) = (log.clone(), staging.clone());
                move || {
                    log.run_flusher(|| {
                        staging.apply()?;
                        db.flush().map(drop).map_err(sled_error)
                    })
                }
            })
            .map_err(backend)?;
        Ok(Self {
            main,
            staging,
            commit: Mutex::new(CommitState { last_seq }),
            log,
            flusher: Some(flusher),
            runners,
            plugins,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CommitState> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        k: &[u8],
    ) -> Result<Option<T>, StorageError> {
        self.staging.get(k)?.map(|bytes| decode(&bytes)).transpose()
    }

    fn load_task(&self, id: &str) -> Result<Option<Task>, StorageError> {
        self.get_json(&task_key(id))
    }

    /// Adds `events` of `task` to `batch` with the seqs that follow `state`'s; the seqs are
    /// only taken when [`apply`](Self::apply) succeeds.
    fn stage_events(
        state: &CommitState,
        batch: &mut Writes,
        task: &Task,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let now = Utc::now();
        let mut staged = Vec::with_capacity(events.len());
        for (seq, new) in (state.last_seq + 1..).zip(events) {
            let event = Event {
                seq,
                task_id: task.id.clone(),
                data: new.clone(),
                timestamp: now,
                owner: task.owner.clone(),
                plugin: task.plugin.clone(),
                labels: task.labels.clone(),
            };
            batch.insert(event_key(event.seq), encode(&event)?);
            batch.insert(
                key(&[b"E", task.id.as_bytes(), &event.seq.to_be_bytes()]),
                &[][..],
            );
            staged.push(event);
        }
        Ok(staged)
    }

    /// Adds `delta` to each counter in `keys` within `batch`.
    fn bump_counts<'k>(
        &self,
        batch: &mut Writes,
        keys: impl IntoIterator<Item = &'k Vec<u8>>,
        up: bool,
    ) -> Result<(), StorageError> {
        for k in keys {
            let current = read_u64(self.staging.get(k)?);
            let next = if up {
                current + 1
            } else {
                current.saturating_sub(1)
            };
            batch.insert(k.clone(), &next.to_be_bytes()[..]);
        }
        Ok(())
    }

    /// Removes a task with its indexes, counts, logs and records; see [`Removal`].
    fn remove_task(&self, id: &str, removal: Removal) -> Result<bool, StorageError> {
        let _state = self.lock();
        // Its scans must see every staged write; none can be staged while the lock is held.
        self.staging.apply()?;
        let Some(task) = self.load_task(id)? else {
            return Ok(false);
        };
        if removal == Removal::FinishedWithEvents && !task.status.is_terminal() {
            return Ok(false);
        }
        let mut batch = Writes::default();
        batch.remove(task_key(id));
        for index in sled_index::index_keys(&task) {
            batch.remove(index);
        }
        self.bump_counts(&mut batch, &sled_index::counter_keys(&task), false)?;
        self.bump_cells(&mut batch, cells::changes(Some(&task), None))?;
        if removal == Removal::FinishedWithEvents {
            for k in self.main.scan_prefix(prefix(&[b"E", id.as_bytes()])).keys() {
                let k = k.map_err(backend)?;
                if let Some(seq) = k.get(k.len().saturating_sub(8)..) {
                    batch.remove(key(&[b"e", seq]));
                }
                batch.remove(k);
            }
        }
        for prefix_parts in [
            &[&b"l"[..], id.as_bytes()][..],
            &[&b"r"[..], id.as_bytes()][..],
        ] {
            for k in self.main.scan_prefix(prefix(prefix_parts)).keys() {
                batch.remove(k.map_err(backend)?);
            }
        }
        self.log.check_writable()?;
        // Through the overlay, which caches these keys.
        self.staging.stage(batch);
        self.staging.apply()?;
        self.log.committed(Vec::new());
        Ok(true)
    }

    /// Applies the statistics-cell changes of one task write within `batch`.
    fn bump_cells(
        &self,
        batch: &mut Writes,
        changes: Vec<(cells::CellKey, cells::CellDelta)>,
    ) -> Result<(), StorageError> {
        let mut touched: BTreeMap<Vec<u8>, cells::CellCounts> = BTreeMap::new();
        for (cell, delta) in changes {
            let k = sled_index::cell_key(&cell);
            let counts = match touched.entry(k) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => {
                    let stored = self.staging.get(entry.key())?;
                    entry.insert(
                        stored.map_or_else(Default::default, |b| cells::CellCounts::decode(&b)),
                    )
                }
            };
            counts.apply(&delta);
        }
        for (k, counts) in touched {
            batch.insert(k, counts.encode());
        }
        Ok(())
    }

    /// Stages a write, takes the seqs of its events and hands them to the commit log, whose
    /// flusher applies the write with the others staged meanwhile and publishes the events
    /// once they are durable.
    fn apply(
        &self,
        state: &mut CommitState,
        batch: Writes,
        events: Vec<Event>,
    ) -> Result<Vec<Event>, StorageError> {
        self.log.check_writable()?;
        self.staging.stage(batch);
        if let Some(last) = events.last() {
            state.last_seq = last.seq;
        }
        self.log.committed(events.clone());
        Ok(events)
    }

    /// Registers a write that has no events, so that a `sync` after it covers it.
    fn written<T>(&self, result: sled::Result<T>) -> Result<(), StorageError> {
        result.map_err(sled_error)?;
        self.log.check_writable()?;
        self.log.committed(Vec::new());
        Ok(())
    }

    fn scan_ids(
        &self,
        index_prefix: Vec<u8>,
        ascending: bool,
    ) -> impl Iterator<Item = Result<String, StorageError>> + '_ {
        let skip = index_prefix.len() + 9;
        let iter = self.main.scan_prefix(index_prefix).keys();
        let iter: Box<dyn Iterator<Item = sled::Result<IVec>>> = if ascending {
            Box::new(iter)
        } else {
            Box::new(iter.rev())
        };
        iter.map(move |k| {
            let k = k.map_err(backend)?;
            String::from_utf8(k[skip..].to_vec()).map_err(backend)
        })
    }
}

/// Live keys and their bytes in one family of the store's layout (see the module table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFamily {
    /// The family: its prefix byte, and for indexes and counters their dimension.
    pub family: String,
    pub keys: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

impl SledStorage {
    /// What the store holds, per key family: where its bytes on disk come from. It walks every
    /// key, so it is for benchmarks and diagnostics, never a request path.
    pub fn footprint(&self) -> Result<Vec<KeyFamily>, StorageError> {
        self.staging.apply()?;
        let mut families: BTreeMap<String, KeyFamily> = BTreeMap::new();
        for entry in self.main.iter() {
            let (k, v) = entry.map_err(backend)?;
            let mut parts = k.split(|b| *b == 0);
            let first = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let family = match first.as_str() {
                "i" | "n" => format!(
                    "{first} {}",
                    String::from_utf8_lossy(parts.next().unwrap_or_default())
                ),
                "I" => {
                    let field =
                        String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    format!(
                        "I {field} {}",
                        String::from_utf8_lossy(parts.next().unwrap_or_default())
                    )
                }
                _ => first,
            };
            let counted = families.entry(family.clone()).or_insert_with(|| KeyFamily {
                family,
                ..KeyFamily::default()
            });
            counted.keys += 1;
            counted.key_bytes += k.len() as u64;
            counted.value_bytes += v.len() as u64;
        }
        Ok(families.into_values().collect())
    }
}

#[async_trait]
impl Storage for SledStorage {
    async fn create_task(
        &self,
        task: &Task,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let mut state = self.lock();
        if self.staging.get(&task_key(&task.id))?.is_some() {
            return Err(StorageError::Duplicate(task.id.clone()));
        }
        let mut batch = Writes::default();
        batch.insert(task_key(&task.id), encode(task)?);
        for index in sled_index::index_keys(task) {
            batch.insert(index, &[][..]);
        }
        self.bump_counts(&mut batch, &sled_index::counter_keys(task), true)?;
        self.bump_cells(&mut batch, cells::changes(None, Some(task)))?;
        let staged = Self::stage_events(&state, &mut batch, task, events)?;
        self.apply(&mut state, batch, staged)
    }

    async fn update_task(
        &self,
        task: &Task,
        expected: TaskStatus,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let mut state = self.lock();
        let stored = self
            .load_task(&task.id)?
            .ok_or_else(|| StorageError::NotFound(task.id.clone()))?;
        StorageError::check_status(&stored, expected)?;
        let mut batch = Writes::default();
        batch.insert(task_key(&task.id), encode(task)?);
        let old_indexes = sled_index::index_keys(&stored);
        let new_indexes = sled_index::index_keys(task);
        for gone in old_indexes.difference(&new_indexes) {
            batch.remove(gone.clone());
        }
        for added in new_indexes.difference(&old_indexes) {
            batch.insert(added.clone(), &[][..]);
        }
        let old_counters = sled_index::counter_keys(&stored);
        let new_counters = sled_index::counter_keys(task);
        self.bump_counts(&mut batch, old_counters.difference(&new_counters), false)?;
        self.bump_counts(&mut batch, new_counters.difference(&old_counters), true)?;
        self.bump_cells(&mut batch, cells::changes(Some(&stored), Some(task)))?;
        let staged = Self::stage_events(&state, &mut batch, task, events)?;
        self.apply(&mut state, batch, staged)
    }

    async fn append_events(
        &self,
        task: &Task,
        events: &[EventData],
    ) -> Result<Vec<Event>, StorageError> {
        let mut state = self.lock();
        let mut batch = Writes::default();
        let staged = Self::stage_events(&state, &mut batch, task, events)?;
        self.apply(&mut state, batch, staged)
    }

    async fn delete_task(&self, id: &str) -> Result<bool, StorageError> {
        self.remove_task(id, Removal::KeepEvents)
    }

    async fn get_task(&self, id: &str) -> Result<Option<Task>, StorageError> {
        self.load_task(id)
    }

    async fn prune(
        &self,
        before: DateTime<Utc>,
        keep: u64,
        limit: usize,
    ) -> Result<u64, StorageError> {
        self.staging.apply()?;
        let cutoff = before.timestamp_millis().max(0) as u64;
        let mut finished = 0;
        let mut oldest = Vec::new();
        for status in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            finished += sled_index::status_count(&self.main, status)?;
            oldest.push(
                sled_index::by_update(&self.main, status)
                    .take(limit)
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        // Merge the three oldest-first lists, globally oldest first.
        let mut candidates: Vec<(u64, String)> = oldest.into_iter().flatten().collect();
        candidates.sort();
        let mut pruned = 0;
        for (updated, id) in candidates.into_iter().take(limit) {
            if updated >= cutoff && finished <= keep {
                break;
            }
            if self.remove_task(&id, Removal::FinishedWithEvents)? {
                pruned += 1;
                finished = finished.saturating_sub(1);
            }
        }
        Ok(pruned)
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<(Vec<Task>, u64), StorageError> {
        self.staging.apply()?;
        sled_index::list(&self.main, query, |id| self.load_task(id))
    }

    async fn task_ids_with_status(&self, status: TaskStatus) -> Result<Vec<String>, StorageError> {
        self.staging.apply()?;
        self.scan_ids(prefix(&[b"i", b"status", status.as_str().as_bytes()]), true)
            .collect()
    }

    async fn status_counts(&self) -> Result<BTreeMap<String, StatusCounts>, StorageError> {
        self.staging.apply()?;
        let mut counts: BTreeMap<String, StatusCounts> = BTreeMap::new();
        let scan = sled_index::plugin_status_counters();
        for entry in self.main.scan_prefix(&scan) {
            let (k, v) = entry.map_err(backend)?;
            let mut parts = k[scan.len()..].split(|b| *b == 0);
            let plugin = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let status = parts
                .next()
                .and_then(|s| std::str::from_utf8(s).ok())
                .and_then(TaskStatus::parse);
            if let Some(status) = status {
                let count = read_u64(Some(v));
                if count > 0 {
                    counts.entry(plugin).or_default().insert(status, count);
                }
            }
        }
        Ok(counts)
    }

    async fn stat_cells(&self, owner: Option<&str>) -> Result<Vec<Cell>, StorageError> {
        self.staging.apply()?;
        let mut found = Vec::new();
        for entry in self.main.scan_prefix(sled_index::cells_prefix(owner)) {
            let (k, v) = entry.map_err(backend)?;
            if let Some(key) = sled_index::parse_cell_key(&k) {
                found.push(Cell {
                    key,
                    counts: cells::CellCounts::decode(&v),
                });
            }
        }
        Ok(found)
    }

    async fn events(
        &self,
        task_id: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StorageError> {
        // Applied but not yet durable events lie above the visible seq: never return them.
        let visible = self.log.visible_seq();
        let start = after_seq.saturating_add(1).to_be_bytes();
        let mut events = Vec::new();
        match task_id {
            None => {
                let from = event_key(after_seq.saturating_add(1));
                let until = event_key(visible.saturating_add(1));
                for entry in self.main.range(from..until).take(limit) {
                    let (_, v) = entry.map_err(backend)?;
                    events.push(decode_event(&v)?);
                }
            }
            Some(id) => {
                let from = key(&[b"E", id.as_bytes(), &start]);
                let end = key(&[
                    b"E",
                    id.as_bytes(),
                    &visible.saturating_add(1).to_be_bytes(),
                ]);
                for k in self.main.range(from..end).keys().take(limit) {
                    let k = k.map_err(backend)?;
                    let seq = <[u8; 8]>::try_from(&k[k.len() - 8..]).map_err(backend)?;
                    if let Some(v) = self
                        .main
                        .get(event_key(u64::from_be_bytes(seq)))
                        .map_err(backend)?
                    {
                        events.push(decode_event(&v)?);
                    }
                }
            }
        }
        Ok(events)
    }

    async fn append_log(
        &self,
        task: &Task,
        level: &str,
        message: &str,
        step: Option<&str>,
    ) -> Result<Event, StorageError> {
        let mut state = self.lock();
        let mut batch = Writes::default();
        let staged = Self::stage_events(
            &state,
            &mut batch,
            task,
            &[EventData::Log {
                level: level.to_owned(),
                message: message.to_owned(),
            }],
        )?;
        let event = staged[0].clone();
        let entry = LogEntry {
            seq: event.seq,
            level: level.to_owned(),
            message: message.to_owned(),
            timestamp: event.timestamp,
            step: step.map(str::to_owned),
        };
        batch.insert(
            key(&[b"l", task.id.as_bytes(), &event.seq.to_be_bytes()]),
            encode(&entry)?,
        );
        self.apply(&mut state, batch, staged)?;
        Ok(event)
    }

    async fn logs(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StorageError> {
        let from = key(&[
            b"l",
            task_id.as_bytes(),
            &after_seq.saturating_add(1).to_be_bytes(),
        ]);
        let visible = self.log.visible_seq();
        if after_seq >= visible {
            return Ok(Vec::new());
        }
        let end = key(&[
            b"l",
            task_id.as_bytes(),
            &visible.saturating_add(1).to_be_bytes(),
        ]);
        self.main
            .range(from..end)
            .values()
            .take(limit)
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn log_tail(&self, task_id: &str, lines: usize) -> Result<Vec<LogEntry>, StorageError> {
        let visible = self.log.visible_seq();
        let end = key(&[
            b"l",
            task_id.as_bytes(),
            &visible.saturating_add(1).to_be_bytes(),
        ]);
        let mut tail = self
            .main
            .range(prefix(&[b"l", task_id.as_bytes()])..end)
            .values()
            .rev()
            .take(lines)
            .map(|v| decode(&v.map_err(backend)?))
            .collect::<Result<Vec<LogEntry>, StorageError>>()?;
        tail.reverse();
        Ok(tail)
    }

    async fn put_record(&self, task_id: &str, record: &Record) -> Result<(), StorageError> {
        self.written(self.main.insert(
            key(&[
                b"r",
                task_id.as_bytes(),
                record.collection.as_bytes(),
                record.key.as_bytes(),
            ]),
            encode(record)?,
        ))
    }

    async fn records(
        &self,
        task_id: &str,
        collection: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Record>, u64), StorageError> {
        let scan = match collection {
            Some(c) => prefix(&[b"r", task_id.as_bytes(), c.as_bytes()]),
            None => prefix(&[b"r", task_id.as_bytes()]),
        };
        let mut total = 0u64;
        let mut page = Vec::new();
        for value in self.main.scan_prefix(scan).values() {
            if total as usize >= offset && page.len() < limit {
                page.push(decode(&value.map_err(backend)?)?);
            }
            total += 1;
        }
        Ok((page, total))
    }

    async fn kv_get(&self, plugin: &str, k: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .main
            .get(key(&[b"k", plugin.as_bytes(), k.as_bytes()]))
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    async fn kv_set(&self, plugin: &str, k: &str, value: &[u8]) -> Result<(), StorageError> {
        self.written(
            self.main
                .insert(key(&[b"k", plugin.as_bytes(), k.as_bytes()]), value),
        )
    }

    async fn kv_delete(&self, plugin: &str, k: &str) -> Result<(), StorageError> {
        self.written(
            self.main
                .remove(key(&[b"k", plugin.as_bytes(), k.as_bytes()])),
        )
    }

    async fn kv_list(
        &self,
        plugin: &str,
        key_prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let scan = prefix(&[b"k", plugin.as_bytes()]);
        let skip = scan.len();
        let mut start = scan.clone();
        start.extend_from_slice(key_prefix.as_bytes());
        self.main
            .scan_prefix(start)
            .keys()
            .take(limit)
            .map(|k| {
                let k = k.map_err(backend)?;
                String::from_utf8(k[skip..].to_vec()).map_err(backend)
            })
            .collect()
    }

    async fn set_queue_paused(&self, plugin: &str, paused: bool) -> Result<(), StorageError> {
        let k = key(&[b"q", plugin.as_bytes()]);
        if paused {
            self.written(self.main.insert(k, &[][..]))
        } else {
            self.written(self.main.remove(k))
        }
    }

    async fn paused_queues(&self) -> Result<BTreeSet<String>, StorageError> {
        let scan = prefix(&[b"q"]);
        let skip = scan.len();
        self.main
            .scan_prefix(scan)
            .keys()
            .map(|k| {
                let k = k.map_err(backend)?;
                String::from_utf8(k[skip..].to_vec()).map_err(backend)
            })
            .collect()
    }

    async fn put_user(&self, user: &UserRecord, only_new: bool) -> Result<(), StorageError> {
        let k = key(&[b"u", user.username.as_bytes()]);
        let value = encode_json(user)?;
        if only_new {
            self.main
                .compare_and_swap(k, None as Option<&[u8]>, Some(value))
                .map_err(backend)?
                .map_err(|_| StorageError::Duplicate(user.username.clone()))?;
            self.log.committed(Vec::new());
            Ok(())
        } else {
            self.written(self.main.insert(k, value))
        }
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StorageError> {
        self.get_json(&key(&[b"u", username.as_bytes()]))
    }

    async fn count_users(&self) -> Result<u64, StorageError> {
        Ok(self.main.scan_prefix(prefix(&[b"u"])).keys().count() as u64)
    }

    async fn put_api_key(&self, api_key: &ApiKeyRecord) -> Result<(), StorageError> {
        self.written(
            self.main
                .insert(key(&[b"a", api_key.id.as_bytes()]), encode_json(api_key)?),
        )
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StorageError> {
        self.get_json(&key(&[b"a", id.as_bytes()]))
    }

    async fn list_api_keys(&self, owner: Option<&str>) -> Result<Vec<ApiKeyRecord>, StorageError> {
        let mut keys = Vec::new();
        for value in self.main.scan_prefix(prefix(&[b"a"])).values() {
            let record: ApiKeyRecord = decode(&value.map_err(backend)?)?;
            if owner.is_none_or(|o| o == record.owner) {
                keys.push(record);
            }
        }
        Ok(keys)
    }

    fn backend_name(&self) -> &'static str {
        "sled"
    }

    fn runners(&self) -> &dyn RunnerStore {
        &self.runners
    }

    fn plugins(&self) -> &dyn PluginStore {
        &self.plugins
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.log.sync().await
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.log.subscribe()
    }

    fn last_seq(&self) -> u64 {
        self.log.visible_seq()
    }

    fn failure(&self) -> watch::Receiver<Option<String>> {
        self.log.failure()
    }
}

impl Drop for SledStorage {
    /// Makes what is pending durable and stops the flusher.
    fn drop(&mut self) {
        self.log.stop();
        if let Some(flusher) = self.flusher.take()
            && flusher.join().is_err()
        {
            tracing::error!("the commit flusher panicked");
        }
    }
}

#[cfg(test)]
#[path = "sled_store_tests.rs"]
mod tests;
