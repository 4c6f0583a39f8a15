//! The scheduler's in-memory view: which tasks are ready per plugin (by priority, then age),
//! which wait for a time, which wait for dependencies, and how many run per plugin. Storage
//! stays the truth; this view is rebuilt from it at start.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// A ready task's place in its plugin's queue.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ReadyEntry {
    priority: i32,
    /// Older first among equal priorities.
    age: Reverse<(i64, u64)>,
    id: String,
}

#[derive(Debug, Default)]
pub struct Scheduler {
    ready: HashMap<String, BinaryHeap<ReadyEntry>>,
    /// Members of `ready`, so that removal (cancel, pause) can be lazy.
    ready_ids: HashMap<String, String>,
    /// (due in ms since the epoch, id) → plugin.
    delayed: BTreeMap<(i64, String), String>,
    /// Dependency id → tasks waiting for it.
    waiting: HashMap<String, BTreeSet<String>>,
    running: HashMap<String, usize>,
    paused_queues: BTreeSet<String>,
    /// Ties break by insertion order when created_at is equal.
    counter: u64,
}

impl Scheduler {
    pub fn push_ready(&mut self, plugin: &str, id: &str, priority: i32, created_ms: i64) {
        if self
            .ready_ids
            .insert(id.to_owned(), plugin.to_owned())
            .is_some()
        {
            return;
        }
        self.counter += 1;
        self.ready
            .entry(plugin.to_owned())
            .or_default()
            .push(ReadyEntry {
                priority,
                age: Reverse((created_ms, self.counter)),
                id: id.to_owned(),
            });
    }

    pub fn push_delayed(&mut self, plugin: &str, id: &str, due_ms: i64) {
        self.delayed
            .insert((due_ms, id.to_owned()), plugin.to_owned());
    }

    pub fn wait_for(&mut self, id: &str, dependencies: &[String]) {
        for dependency in dependencies {
            self.waiting
                .entry(dependency.clone())
                .or_default()
                .insert(id.to_owned());
        }
    }

    /// Forgets that `id` waits on anything (its waits are about to be decided again).
    pub fn unwait(&mut self, id: &str) {
        self.waiting.retain(|_, dependents| {
            dependents.remove(id);
            !dependents.is_empty()
        });
    }

    /// Tasks that waited on `dependency`; they are no longer recorded as waiting on it.
    pub fn take_dependents(&mut self, dependency: &str) -> BTreeSet<String> {
        self.waiting.remove(dependency).unwrap_or_default()
    }

    /// Forgets a task that will not run (cancelled, paused, failed before starting).
    pub fn remove(&mut self, id: &str) {
        self.ready_ids.remove(id);
        self.delayed.retain(|(_, delayed_id), _| delayed_id != id);
        for dependents in self.waiting.values_mut() {
            dependents.remove(id);
        }
    }

    /// Delayed tasks due at `now_ms`, removed from the delayed set.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<(String, String)> {
        let later = self.delayed.split_off(&(now_ms + 1, String::new()));
        let due = std::mem::replace(&mut self.delayed, later);
        due.into_iter()
            .map(|((_, id), plugin)| (id, plugin))
            .collect()
    }

    /// When the next delayed task is due.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.delayed.keys().next().map(|(due, _)| *due)
    }

    /// The next task to start for `plugin`, if it has a free slot under `limit`.
    pub fn pop_ready(&mut self, plugin: &str, limit: usize) -> Option<String> {
        if self.paused_queues.contains(plugin) || self.running(plugin) >= limit {
            return None;
        }
        let heap = self.ready.get_mut(plugin)?;
        while let Some(entry) = heap.pop() {
            if self.ready_ids.remove(&entry.id).is_some() {
                return Some(entry.id);
            }
        }
        None
    }

    /// Plugins that have ready tasks.
    pub fn plugins_with_ready(&self) -> Vec<String> {
        let mut plugins: Vec<String> = self.ready_ids.values().cloned().collect();
        plugins.sort();
        plugins.dedup();
        plugins
    }

    pub fn running(&self, plugin: &str) -> usize {
        self.running.get(plugin).copied().unwrap_or(0)
    }

    pub fn started(&mut self, plugin: &str) {
        *self.running.entry(plugin.to_owned()).or_default() += 1;
    }

    pub fn finished(&mut self, plugin: &str) {
        if let Some(count) = self.running.get_mut(plugin) {
            *count = count.saturating_sub(1);
        }
    }

    pub fn set_queue_paused(&mut self, plugin: &str, paused: bool) {
        if paused {
            self.paused_queues.insert(plugin.to_owned());
        } else {
            self.paused_queues.remove(plugin);
        }
    }

    pub fn is_queue_paused(&self, plugin: &str) -> bool {
        self.paused_queues.contains(plugin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_oldest_first() {
        let mut s = Scheduler::default();
        s.push_ready("p", "low-old", 0, 1);
        s.push_ready("p", "high-new", 5, 3);
        s.push_ready("p", "low-new", 0, 2);
        assert_eq!(s.pop_ready("p", 10).as_deref(), Some("high-new"));
        assert_eq!(s.pop_ready("p", 10).as_deref(), Some("low-old"));
        assert_eq!(s.pop_ready("p", 10).as_deref(), Some("low-new"));
        assert_eq!(s.pop_ready("p", 10), None);
    }

    #[test]
    fn removed_tasks_are_skipped_and_limits_and_paused_queues_hold_tasks_back() {
        let mut s = Scheduler::default();
        s.push_ready("p", "a", 0, 1);
        s.push_ready("p", "b", 0, 2);
        s.remove("a");
        s.started("p");
        assert_eq!(s.pop_ready("p", 1), None, "limit reached");
        s.finished("p");
        s.set_queue_paused("p", true);
        assert_eq!(s.pop_ready("p", 1), None, "queue paused");
        s.set_queue_paused("p", false);
        assert_eq!(s.pop_ready("p", 1).as_deref(), Some("b"));
    }

    #[test]
    fn delayed_tasks_come_due_in_time_order() {
        let mut s = Scheduler::default();
        s.push_delayed("p", "later", 200);
        s.push_delayed("p", "sooner", 100);
        assert_eq!(s.next_due_ms(), Some(100));
        assert_eq!(s.take_due(150), vec![("sooner".to_owned(), "p".to_owned())]);
        assert_eq!(s.take_due(150), vec![]);
        assert_eq!(s.take_due(200).len(), 1);
    }
}
