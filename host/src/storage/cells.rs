//! Statistics kept on write: every task counts in exactly one *cell*, the (owner, plugin,
//! `project` label, `agent` label, creation day) it belongs to, which holds its tasks per
//! status and the summed run time of the completed ones. A backend applies [`changes`] in the
//! same atomic write as the task, so `stats` adds up cells (a few per owner, plugin, project,
//! agent and day) instead of reading tasks.
//!
//! The two labels are the ones the systems taskhost replaces group their statistics by
//! (projects, and the agents working in them); `stats` over any other label reads tasks.

use chrono::{DateTime, Utc};

use crate::model::{Task, TaskStatus};

/// Which cell a task counts in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CellKey {
    pub owner: String,
    pub plugin: String,
    /// The task's `project` label, if any.
    pub project: Option<String>,
    /// The task's `agent` label, if any.
    pub agent: Option<String>,
    /// `YYYY-MM-DD` of creation, UTC.
    pub day: String,
}

/// What a cell holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CellCounts {
    /// Tasks per status, in [`TaskStatus::ALL`] order.
    pub by_status: [u64; 7],
    /// Sum of the run times of the completed tasks (see [`duration_ms`]), in milliseconds.
    pub duration_ms: u64,
    /// Completed tasks that have a run time.
    pub timed: u64,
    /// Earliest creation of a task counted in, Unix milliseconds (kept when that task goes).
    pub first_created_ms: Option<i64>,
    /// Latest update of a task at the moment it came in or changed status, Unix milliseconds.
    pub last_changed_ms: Option<i64>,
}

/// A cell as a listing of cells returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub key: CellKey,
    pub counts: CellCounts,
}

fn status_index(status: TaskStatus) -> usize {
    TaskStatus::ALL
        .iter()
        .position(|s| *s == status)
        .unwrap_or_default()
}

impl CellKey {
    pub fn of(task: &Task) -> Self {
        Self {
            owner: task.owner.clone(),
            plugin: task.plugin.clone(),
            project: task.labels.get("project").cloned(),
            agent: task.labels.get("agent").cloned(),
            day: day_of(&task.created_at),
        }
    }

    /// The cell's value of label `key`: `None` when cells are not kept by that label,
    /// `Some(None)` when the cell's tasks do not carry it.
    pub fn label(&self, key: &str) -> Option<Option<&str>> {
        match key {
            "project" => Some(self.project.as_deref()),
            "agent" => Some(self.agent.as_deref()),
            _ => None,
        }
    }
}

/// The labels cells are kept by.
pub const CELL_LABELS: [&str; 2] = ["project", "agent"];

pub fn day_of(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// The run time a completed task adds to its cell: what its reporter said it took, or else
/// finished − started.
fn duration_ms(task: &Task) -> Option<u64> {
    if task.status != TaskStatus::Completed {
        return None;
    }
    if let Some(seconds) = task.duration_seconds {
        return Some((seconds.max(0.0) * 1000.0).round() as u64);
    }
    match (task.started_at, task.finished_at) {
        (Some(start), Some(end)) => Some((end - start).num_milliseconds().max(0) as u64),
        _ => None,
    }
}

/// One task's share of its cell, signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellDelta {
    pub status: usize,
    pub duration_ms: Option<u64>,
    pub add: bool,
    pub created_ms: i64,
    pub changed_ms: i64,
}

impl CellCounts {
    pub fn apply(&mut self, delta: &CellDelta) {
        let count = &mut self.by_status[delta.status];
        if delta.add {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        if delta.add {
            self.first_created_ms = Some(
                self.first_created_ms
                    .map_or(delta.created_ms, |ms| ms.min(delta.created_ms)),
            );
            self.last_changed_ms = Some(
                self.last_changed_ms
                    .map_or(delta.changed_ms, |ms| ms.max(delta.changed_ms)),
            );
        }
        if let Some(ms) = delta.duration_ms {
            if delta.add {
                self.duration_ms += ms;
                self.timed += 1;
            } else {
                self.duration_ms = self.duration_ms.saturating_sub(ms);
                self.timed = self.timed.saturating_sub(1);
            }
        }
    }

    /// Adds `other`'s tasks (cells of different keys summed into one).
    pub fn merge(&mut self, other: &CellCounts) {
        for (n, m) in self.by_status.iter_mut().zip(other.by_status) {
            *n += m;
        }
        self.duration_ms += other.duration_ms;
        self.timed += other.timed;
        self.first_created_ms = earliest(self.first_created_ms, other.first_created_ms);
        self.last_changed_ms = self.last_changed_ms.max(other.last_changed_ms);
    }

    /// Fixed-width big-endian bytes: the seven counts, the duration sum, the timed count, and
    /// the two times (`i64::MIN` for none).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(88);
        for n in self
            .by_status
            .iter()
            .chain([&self.duration_ms, &self.timed])
        {
            bytes.extend_from_slice(&n.to_be_bytes());
        }
        for at in [self.first_created_ms, self.last_changed_ms] {
            bytes.extend_from_slice(&at.unwrap_or(i64::MIN).to_be_bytes());
        }
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Self {
        let mut numbers = bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()));
        let mut counts = Self::default();
        for slot in counts.by_status.iter_mut() {
            *slot = numbers.next().unwrap_or(0);
        }
        counts.duration_ms = numbers.next().unwrap_or(0);
        counts.timed = numbers.next().unwrap_or(0);
        let mut at = || {
            numbers
                .next()
                .map(|n| n as i64)
                .filter(|ms| *ms != i64::MIN)
        };
        counts.first_created_ms = at();
        counts.last_changed_ms = at();
        counts
    }
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The cell changes a write from `old` to `new` makes (`None`: the task did not exist, or no
/// longer does).
pub fn changes(old: Option<&Task>, new: Option<&Task>) -> Vec<(CellKey, CellDelta)> {
    let share = |task: &Task, add: bool| {
        (
            CellKey::of(task),
            CellDelta {
                status: status_index(task.status),
                duration_ms: duration_ms(task),
                add,
                created_ms: task.created_at.timestamp_millis(),
                changed_ms: task.updated_at.timestamp_millis(),
            },
        )
    };
    let before = old.map(|t| share(t, false));
    let after = new.map(|t| share(t, true));
    match (before, after) {
        (Some((old_key, old_delta)), Some((new_key, new_delta)))
            if old_key == new_key
                && old_delta.status == new_delta.status
                && old_delta.duration_ms == new_delta.duration_ms =>
        {
            Vec::new()
        }
        (before, after) => before.into_iter().chain(after).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::task;

    #[test]
    fn a_status_change_moves_one_count_and_an_unchanged_status_moves_none() {
        let queued = task("a", "p", "o", TaskStatus::Queued, 0);
        let mut done = queued.clone();
        done.status = TaskStatus::Completed;
        done.started_at = Some(queued.created_at);
        done.finished_at = Some(queued.created_at + chrono::Duration::milliseconds(250));
        let mut counts = CellCounts::default();
        for (_, delta) in changes(None, Some(&queued)) {
            counts.apply(&delta);
        }
        for (_, delta) in changes(Some(&queued), Some(&done)) {
            counts.apply(&delta);
        }
        assert!(changes(Some(&done), Some(&done)).is_empty());
        assert_eq!(counts.by_status[status_index(TaskStatus::Queued)], 0);
        assert_eq!(counts.by_status[status_index(TaskStatus::Completed)], 1);
        assert_eq!((counts.duration_ms, counts.timed), (250, 1));
        assert_eq!(
            counts.first_created_ms,
            Some(queued.created_at.timestamp_millis())
        );
        assert_eq!(CellCounts::decode(&counts.encode()), counts);
    }
}
