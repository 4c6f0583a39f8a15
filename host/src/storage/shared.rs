//! Dispatch through a store several hosts share: what a backend offers (PostgreSQL does; sled,
//! opened by one host, does not) so that each task runs on one host at a time.
//!
//! A host claims ready tasks, holds a [`Lease`] on each that it renews, and writes a run's
//! outcome through [`SharedQueue::finish`] with that lease; the lease's fencing token moves
//! on with every claim and takeover, so a host whose lease lapsed (it died, or stalled past
//! the expiry) has its late writes refused after another host took the task over.

use std::time::Duration;

use async_trait::async_trait;

use super::StorageError;
use crate::model::{Event, EventData, Task};

/// A host's hold on one running task. `token` grows with every claim and takeover of the
/// task, so an older holder's token no longer matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub task_id: String,
    pub host: String,
    pub token: i64,
}

/// What a host asks of the run another host holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    Cancel,
    Pause,
    Resume,
}

impl ControlRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cancel" => Some(Self::Cancel),
            "pause" => Some(Self::Pause),
            "resume" => Some(Self::Resume),
            _ => None,
        }
    }
}

/// How one lease stands after a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still the holder's, extended; with the control request left for it since, if any.
    Held(Option<ControlRequest>),
    /// Taken over (it lapsed) or ended: the holder must stop the run and write nothing more.
    Lost,
}

/// How writing a run's outcome went.
#[derive(Debug)]
pub enum Finished {
    /// Written: the task as stored, and its events.
    Written(Box<Task>, Vec<Event>),
    /// The change declined to write anything (the stored task was not in a state it ends).
    Declined,
    /// The lease is no longer the holder's: nothing was written.
    Lost,
}

/// A claimed task in its running form, its lease and the events the claim wrote.
pub type Claimed = (Task, Lease, Vec<Event>);

/// Turns a task into its next form and names the events that adds.
pub type Change<'a> = &'a (dyn Fn(&mut Task) -> Vec<EventData> + Send + Sync);

/// Ends a run: the stored task in, its final form out, with its events; `None` writes nothing.
pub type Ending<'a> = &'a (dyn Fn(&mut Task) -> Option<Vec<EventData>> + Send + Sync);

/// Dispatch primitives of a shared store. Every write also moves the task's counts and
/// statistics cells and appends its events, in one transaction, as any task write does.
#[async_trait]
pub trait SharedQueue: Send + Sync {
    /// Claims up to `limit` ready tasks of `plugin` for `host` (best priority, then oldest),
    /// skipping rows other hosts are claiming; `start` turns each into its running form.
    /// Ready: queued, its queue not paused, every dependency completed.
    async fn claim(
        &self,
        host: &str,
        plugin: &str,
        limit: usize,
        ttl: Duration,
        start: Change<'_>,
    ) -> Result<Vec<Claimed>, StorageError>;

    /// Extends every lease in `held` by `ttl`, handing over the control requests left for
    /// them; the answer is in `held`'s order.
    async fn renew(&self, held: &[Lease], ttl: Duration) -> Result<Vec<Renewal>, StorageError>;

    /// Writes the end of the run `lease` holds: `end` gets the task as stored (locked) and
    /// returns its events.
    async fn finish(&self, lease: &Lease, end: Ending<'_>) -> Result<Finished, StorageError>;

    /// Releases up to `limit` running tasks whose lease lapsed; `requeue` gives each its next
    /// form (queued again, or failed when out of attempts). Paused ones stay paused, released.
    async fn requeue_lapsed(
        &self,
        limit: usize,
        requeue: Change<'_>,
    ) -> Result<Vec<Task>, StorageError>;

    /// Queues up to `limit` scheduled tasks whose time has come.
    async fn promote_due(
        &self,
        limit: usize,
        promote: Change<'_>,
    ) -> Result<Vec<Task>, StorageError>;

    /// Queued tasks waiting for a task that failed, was cancelled or is gone, with that
    /// dependency.
    async fn stranded_dependents(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StorageError>;

    /// Leaves `request` for the host holding task `id`'s lease; `false` when none holds it.
    async fn request_control(
        &self,
        id: &str,
        request: ControlRequest,
    ) -> Result<bool, StorageError>;
}
