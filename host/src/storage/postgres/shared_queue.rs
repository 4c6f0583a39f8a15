//! [`SharedQueue`] on PostgreSQL: the lease primitives of [`super::leases`] on this store's
//! pool, with the seqs they write noted so that [`Storage::sync`](crate::storage::Storage::sync)
//! waits for their events as for any other write.

use std::time::Duration;

use async_trait::async_trait;

use super::{PgStorage, leases};
use crate::model::{Event, Task};
use crate::storage::StorageError;
use crate::storage::shared::{
    Change, Claimed, ControlRequest, Ending, Finished, Lease, Renewal, SharedQueue,
};

impl PgStorage {
    fn noted(&self, written: Vec<(Task, Vec<Event>)>) -> Vec<Task> {
        written
            .into_iter()
            .map(|(task, events)| {
                self.note_written(&events);
                task
            })
            .collect()
    }
}

#[async_trait]
impl SharedQueue for PgStorage {
    async fn claim(
        &self,
        host: &str,
        plugin: &str,
        limit: usize,
        ttl: Duration,
        start: Change<'_>,
    ) -> Result<Vec<Claimed>, StorageError> {
        let claimed = leases::claim(self.pool(), host, plugin, limit, ttl, start).await?;
        for (_, _, events) in &claimed {
            self.note_written(events);
        }
        Ok(claimed)
    }

    async fn renew(&self, held: &[Lease], ttl: Duration) -> Result<Vec<Renewal>, StorageError> {
        leases::renew_all(self.pool(), held, ttl).await
    }

    async fn finish(&self, lease: &Lease, end: Ending<'_>) -> Result<Finished, StorageError> {
        let finished = leases::finish(self.pool(), lease, end).await?;
        if let Finished::Written(_, events) = &finished {
            self.note_written(events);
        }
        Ok(finished)
    }

    async fn requeue_lapsed(
        &self,
        limit: usize,
        requeue: Change<'_>,
    ) -> Result<Vec<Task>, StorageError> {
        let written = leases::requeue_lapsed(self.pool(), limit, requeue).await?;
        Ok(self.noted(written))
    }

    async fn promote_due(
        &self,
        limit: usize,
        promote: Change<'_>,
    ) -> Result<Vec<Task>, StorageError> {
        let written = leases::promote_due(self.pool(), limit, promote).await?;
        Ok(self.noted(written))
    }

    async fn stranded_dependents(
        &self,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StorageError> {
        leases::stranded_dependents(self.pool(), limit).await
    }

    async fn request_control(
        &self,
        id: &str,
        request: ControlRequest,
    ) -> Result<bool, StorageError> {
        leases::request_control(self.pool(), id, request).await
    }
}
