//! The engine's event feed: what the stream hub and log followers read instead of storage.
//! It carries durable events only, as they are published and as they are stored, for every
//! principal; each consumer delivers an event only to those `policy::may_read_event` allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::EngineError;
use crate::model::Event;
use crate::storage::Storage;

#[derive(Clone)]
pub struct EventFeed {
    storage: Arc<dyn Storage>,
}

impl EventFeed {
    pub(super) fn new(storage: Arc<dyn Storage>) -> Self {
        Self { storage }
    }

    /// Durable events from the moment of subscribing, in `seq` order.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.storage.subscribe()
    }

    /// The highest `seq` that is durable and published.
    pub fn last_seq(&self) -> u64 {
        self.storage.last_seq()
    }

    /// Published events after `after_seq`, of one task or of all, at most `limit`.
    pub async fn stored(
        &self,
        task_id: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, EngineError> {
        Ok(self.storage.events(task_id, after_seq, limit).await?)
    }

    /// How long one read of the store takes now; an error when it fails.
    pub async fn probe(&self) -> Result<Duration, EngineError> {
        let started = Instant::now();
        self.storage.get_task("health-probe").await?;
        Ok(started.elapsed())
    }
}
