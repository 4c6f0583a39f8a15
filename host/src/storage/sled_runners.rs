//! [`RunnerStore`] on sled: runners and jobs in their own tree, one JSON value per key, with
//! an in-memory copy (and its indexes) that answers every read, since only this host opens the
//! store. Each change is written to the tree under the lock, then flushed before the call
//! returns, so an acknowledged registration, claim or report survives a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sled::Tree;
use tokio::sync::Notify;

use super::StorageError;
use super::runner_store::{JobChange, JobRecord, Renewed, RunnerRecord, RunnerStore};
use super::sled_store::{backend, flush_tree, key, prefix, sled_error};
use crate::model::runner::{JobStatus, ResourceUsage};

const RUNNER: &[u8] = b"r";
const JOB: &[u8] = b"j";

#[derive(Default)]
struct State {
    runners: BTreeMap<String, RunnerRecord>,
    by_token: HashMap<String, String>,
    jobs: BTreeMap<String, JobRecord>,
    /// Queued job ids; ids are UUIDv7, so in dispatch order.
    queued: BTreeSet<String>,
    /// Running job id → its runner.
    running: BTreeMap<String, String>,
}

impl State {
    fn index(&mut self, job: &JobRecord) {
        if job.status == JobStatus::Queued {
            self.queued.insert(job.id.clone());
        } else {
            self.queued.remove(&job.id);
        }
        match (&job.runner_id, job.status) {
            (Some(runner), JobStatus::Running) => {
                self.running.insert(job.id.clone(), runner.clone());
            }
            _ => {
                self.running.remove(&job.id);
            }
        }
    }

    fn running_on(&self, runner: &str) -> usize {
        self.running.values().filter(|r| *r == runner).count()
    }
}

pub struct SledRunners {
    tree: Tree,
    state: Mutex<State>,
    changes: Arc<Notify>,
}

impl SledRunners {
    /// Opens the tree and loads what an earlier run left in it.
    pub fn open(tree: Tree) -> Result<Self, StorageError> {
        let mut state = State::default();
        for entry in tree.scan_prefix(prefix(&[RUNNER])) {
            let (_, value) = entry.map_err(backend)?;
            let runner: RunnerRecord = serde_json::from_slice(&value).map_err(backend)?;
            state
                .by_token
                .insert(runner.token_hash.clone(), runner.id.clone());
            state.runners.insert(runner.id.clone(), runner);
        }
        for entry in tree.scan_prefix(prefix(&[JOB])) {
            let (_, value) = entry.map_err(backend)?;
            let job: JobRecord = serde_json::from_slice(&value).map_err(backend)?;
            state.index(&job);
            state.jobs.insert(job.id.clone(), job);
        }
        Ok(Self {
            tree,
            state: Mutex::new(state),
            changes: Arc::new(Notify::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write<T: serde::Serialize>(
        &self,
        family: &[u8],
        id: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(backend)?;
        self.tree
            .insert(key(&[family, id.as_bytes()]), bytes)
            .map_err(sled_error)?;
        Ok(())
    }

    fn put_job(&self, state: &mut State, job: JobRecord) -> Result<(), StorageError> {
        self.write(JOB, &job.id, &job)?;
        state.index(&job);
        state.jobs.insert(job.id.clone(), job);
        Ok(())
    }

    async fn flush(&self) -> Result<(), StorageError> {
        flush_tree(&self.tree).await?;
        Ok(())
    }

    /// Flushes, then wakes whoever waits for a job change.
    async fn flush_job_change(&self) -> Result<(), StorageError> {
        self.flush().await?;
        self.changes.notify_waiters();
        Ok(())
    }
}

#[async_trait]
impl RunnerStore for SledRunners {
    async fn insert_runner(&self, runner: &RunnerRecord) -> Result<(), StorageError> {
        {
            let mut state = self.lock();
            self.write(RUNNER, &runner.id, runner)?;
            state
                .by_token
                .insert(runner.token_hash.clone(), runner.id.clone());
            state.runners.insert(runner.id.clone(), runner.clone());
        }
        // A new runner may match jobs nobody could take.
        self.flush_job_change().await
    }

    async fn runner(&self, id: &str) -> Result<Option<RunnerRecord>, StorageError> {
        Ok(self.lock().runners.get(id).cloned())
    }

    async fn runner_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<RunnerRecord>, StorageError> {
        let state = self.lock();
        Ok(state
            .by_token
            .get(token_hash)
            .and_then(|id| state.runners.get(id))
            .cloned())
    }

    async fn runners(&self) -> Result<Vec<RunnerRecord>, StorageError> {
        let mut runners: Vec<RunnerRecord> = self.lock().runners.values().cloned().collect();
        runners.sort_by(|a, b| (a.registered_at, &a.id).cmp(&(b.registered_at, &b.id)));
        Ok(runners)
    }

    async fn remove_runner(&self, id: &str) -> Result<bool, StorageError> {
        {
            let mut state = self.lock();
            let Some(runner) = state.runners.remove(id) else {
                return Ok(false);
            };
            state.by_token.remove(&runner.token_hash);
            self.tree
                .remove(key(&[RUNNER, id.as_bytes()]))
                .map_err(sled_error)?;
        }
        self.flush().await?;
        Ok(true)
    }

    async fn heartbeat(
        &self,
        id: &str,
        now: DateTime<Utc>,
        usage: Option<&ResourceUsage>,
        running: &[String],
        until: DateTime<Utc>,
    ) -> Result<Option<Vec<Renewed>>, StorageError> {
        let renewed = {
            let mut state = self.lock();
            let Some(runner) = state.runners.get_mut(id) else {
                return Ok(None);
            };
            runner.last_seen = now;
            if let Some(usage) = usage {
                runner.usage = Some(usage.clone());
            }
            let runner = runner.clone();
            self.write(RUNNER, id, &runner)?;
            let mut renewed = Vec::new();
            for job_id in running {
                let Some(job) = state.jobs.get(job_id).filter(|j| j.is_leased_to(id)) else {
                    continue;
                };
                let mut job = job.clone();
                job.lease_until = Some(until);
                renewed.push(Renewed {
                    job_id: job.id.clone(),
                    cancel_requested: job.cancel_requested,
                });
                self.put_job(&mut state, job)?;
            }
            renewed
        };
        // A lost heartbeat costs at most a lease renewal, not a job: no flush waited for.
        Ok(Some(renewed))
    }

    async fn running_jobs(&self) -> Result<Vec<(String, String)>, StorageError> {
        Ok(self
            .lock()
            .running
            .iter()
            .map(|(job, runner)| (job.clone(), runner.clone()))
            .collect())
    }

    async fn insert_job(&self, job: &JobRecord) -> Result<(), StorageError> {
        {
            let mut state = self.lock();
            self.put_job(&mut state, job.clone())?;
        }
        self.flush_job_change().await
    }

    async fn job(&self, id: &str) -> Result<Option<JobRecord>, StorageError> {
        Ok(self.lock().jobs.get(id).cloned())
    }

    async fn claim_job(
        &self,
        runner: &str,
        until: DateTime<Utc>,
    ) -> Result<Option<JobRecord>, StorageError> {
        let claimed = {
            let mut state = self.lock();
            let Some(record) = state.runners.get(runner) else {
                return Ok(None);
            };
            if state.running_on(runner) >= record.capacity as usize {
                return Ok(None);
            }
            let carried: BTreeSet<&String> = record.labels.iter().collect();
            let found = state.queued.iter().find(|id| {
                state
                    .jobs
                    .get(*id)
                    .is_some_and(|j| j.labels.iter().all(|l| carried.contains(l)))
            });
            let Some(mut job) = found.and_then(|id| state.jobs.get(id)).cloned() else {
                return Ok(None);
            };
            job.status = JobStatus::Running;
            job.runner_id = Some(runner.to_owned());
            job.deliveries += 1;
            job.lease_until = Some(until);
            self.put_job(&mut state, job.clone())?;
            job
        };
        self.flush().await?;
        Ok(Some(claimed))
    }

    async fn update_job(
        &self,
        id: &str,
        change: JobChange<'_>,
    ) -> Result<Option<(JobRecord, bool)>, StorageError> {
        let (job, written) = {
            let mut state = self.lock();
            let Some(stored) = state.jobs.get(id) else {
                return Ok(None);
            };
            let mut job = stored.clone();
            if !change(&mut job) {
                return Ok(Some((stored.clone(), false)));
            }
            self.put_job(&mut state, job.clone())?;
            (job, true)
        };
        self.flush_job_change().await?;
        Ok(Some((job, written)))
    }

    async fn uncollected_jobs(&self, task_id: &str) -> Result<Vec<JobRecord>, StorageError> {
        Ok(self
            .lock()
            .jobs
            .values()
            .filter(|j| j.task_id == task_id && !j.collected)
            .cloned()
            .collect())
    }

    async fn lapsed_jobs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let state = self.lock();
        Ok(state
            .running
            .keys()
            .filter(|id| {
                state
                    .jobs
                    .get(*id)
                    .and_then(|j| j.lease_until)
                    .is_some_and(|t| t <= now)
            })
            .take(limit)
            .cloned()
            .collect())
    }

    async fn forget_finished(&self, keep: usize) -> Result<u64, StorageError> {
        let removed = {
            let mut state = self.lock();
            let finished: Vec<String> = state
                .jobs
                .values()
                .filter(|j| j.status.is_terminal())
                .map(|j| j.id.clone())
                .collect();
            let excess = finished.len().saturating_sub(keep);
            // Ids are UUIDv7, so the first in order are the oldest.
            for id in finished.iter().take(excess) {
                self.tree
                    .remove(key(&[JOB, id.as_bytes()]))
                    .map_err(sled_error)?;
                state.jobs.remove(id);
            }
            excess as u64
        };
        if removed > 0 {
            self.flush().await?;
        }
        Ok(removed)
    }

    fn job_changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
