//! What a transaction changes beside its task rows: the per-plugin status counts, the
//! statistics cells and the events. A writer notes them as it changes task rows, and writes
//! them at its end in one fixed order — counts by (plugin, status), then cells by key, then
//! the event sequence — so that two transactions never wait for each other's locks in a
//! cycle (a claim moving queued → running and a sweep moving running → queued would
//! otherwise take the same two count rows in opposite orders), and the `event_seq` row every
//! event writer takes is held for the shortest time, just before commit.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::{events, pg_error, stat_cells};
use crate::model::{Event, EventData, Task};
use crate::storage::StorageError;
use crate::storage::cells::{self, CellDelta, CellKey};

#[derive(Default)]
pub struct Tally {
    counts: BTreeMap<(String, &'static str), i64>,
    cells: Vec<(CellKey, CellDelta)>,
    /// Events per [`Tally::events`] call, their seqs not yet given.
    events: Vec<Vec<Event>>,
}

impl Tally {
    /// A task row went from `stored` to `task` (`None`: it did not exist, or no longer does).
    pub fn moved(&mut self, stored: Option<&Task>, task: Option<&Task>) {
        let mut count = |task: &Task, delta: i64| {
            *self
                .counts
                .entry((task.plugin.clone(), task.status.as_str()))
                .or_default() += delta;
        };
        if let Some(stored) = stored {
            count(stored, -1);
        }
        if let Some(task) = task {
            count(task, 1);
        }
        self.cells.extend(cells::changes(stored, task));
    }

    /// `added` are events of `task`; [`Tally::write`] answers them stored, in the order of
    /// these calls.
    pub fn events(&mut self, task: &Task, added: &[EventData]) {
        let timestamp = chrono::Utc::now();
        self.events.push(
            added
                .iter()
                .map(|data| Event {
                    seq: 0,
                    task_id: task.id.clone(),
                    data: data.clone(),
                    timestamp,
                    owner: task.owner.clone(),
                    plugin: task.plugin.clone(),
                    labels: task.labels.clone(),
                })
                .collect(),
        );
    }

    /// The events noted, for a writer that changed no task row.
    pub fn into_events(self) -> Vec<Vec<Event>> {
        self.events
    }

    /// Writes everything noted in `tx`; the events of each [`Tally::events`] call, with the
    /// seqs they were given.
    pub async fn write(self, tx: &mut PgConnection) -> Result<Vec<Vec<Event>>, StorageError> {
        for ((plugin, status), delta) in self.counts {
            if delta != 0 {
                count(tx, &plugin, status, delta).await?;
            }
        }
        if !self.cells.is_empty() {
            stat_cells::apply(tx, self.cells).await?;
        }
        events::append_all(tx, self.events).await
    }
}

/// Moves the count of `plugin`'s tasks in `status` by `delta`.
async fn count(
    tx: &mut PgConnection,
    plugin: &str,
    status: &str,
    delta: i64,
) -> Result<(), StorageError> {
    // An increment may create the row; a decrement has a row to decrement (the CHECK keeps
    // a count from going negative, which would mean a write the counts missed).
    let statement = if delta > 0 {
        "INSERT INTO task_counts (plugin, status, n) VALUES ($1, $2, $3) \
         ON CONFLICT (plugin, status) DO UPDATE SET n = task_counts.n + EXCLUDED.n"
    } else {
        "UPDATE task_counts SET n = n + $3 WHERE plugin = $1 AND status = $2"
    };
    sqlx::query(statement)
        .bind(plugin)
        .bind(status)
        .bind(delta)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    Ok(())
}
