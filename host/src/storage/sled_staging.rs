//! Writes staged in memory on their way into sled, so that many writes reach the tree as one
//! sled batch.
//!
//! Every sled batch, however small, seals and writes sled's current I/O buffer twice (its
//! `pin_log`) and takes sled's global write lock: measured, three batches per task held the
//! store alone to ~1,600 tasks/s on two cores, most of it in sled's I/O threads waking each
//! other. So a write here only stages its keys: the commit flusher applies everything staged
//! as one batch just before each flush, which makes it durable, and only then are its events
//! published (see [`super::commit`]).
//!
//! Until applied, a staged key is read from the overlay: a point read ([`Staging::get`]) sees
//! every write made before it. A scan of the tree first applies what is staged
//! ([`Staging::apply`]), so scans see them too. Staged writes are not durable; they are lost
//! to a crash exactly as applied but unflushed ones were, and a crash applies a combined batch
//! whole or not at all.
//!
//! Applied keys stay in the overlay, newest first, up to [`RETAINED_BYTES`]: it is a
//! write-through cache of the keys every write reads back (the tasks in flight, counters,
//! stats cells). That matters because while sled applies a batch it holds a global lock that
//! every read of the tree waits for; reads served here do not.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sled::{Batch, IVec, Tree};

use super::StorageError;
use crate::lock;

/// Bytes of applied keys and values the overlay keeps as a cache.
const RETAINED_BYTES: usize = 16 << 20;
/// What one kept key costs beyond its bytes (its overlay and queue entries), counted against
/// [`RETAINED_BYTES`] so that many small keys (index entries, counters) stay within it too.
const ENTRY_OVERHEAD: usize = 96;

/// The keys one write sets or removes, in order.
#[derive(Default)]
pub(super) struct Writes(Vec<(IVec, Option<IVec>)>);

impl Writes {
    pub(super) fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.0.push((key.into(), Some(value.into())));
    }

    pub(super) fn remove(&mut self, key: impl Into<IVec>) {
        self.0.push((key.into(), None));
    }
}

pub(super) struct Staging {
    main: Tree,
    state: Mutex<State>,
    /// Held while a combined batch is applied, so that batches reach the tree in order.
    applier: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The newest value of each key staged, or applied and kept (`None`: removed), with the
    /// write that set it.
    overlay: HashMap<IVec, (u64, Option<IVec>)>,
    /// Everything staged and not applied, in order, with the write that staged it.
    queue: Vec<(IVec, Option<IVec>, u64)>,
    /// Applied keys kept in the overlay, oldest first, with the write that set them and the
    /// bytes they hold.
    retained: VecDeque<(IVec, u64, usize)>,
    retained_bytes: usize,
    /// Number of the last write staged.
    last: u64,
}

impl State {
    /// Drops the oldest applied keys until the kept ones fit [`RETAINED_BYTES`].
    fn evict(&mut self) {
        while self.retained_bytes > RETAINED_BYTES {
            let Some((key, number, bytes)) = self.retained.pop_front() else {
                break;
            };
            self.retained_bytes = self.retained_bytes.saturating_sub(bytes);
            // A key written again since is kept for that newer write.
            if self
                .overlay
                .get(&key)
                .is_some_and(|(newest, _)| *newest == number)
            {
                self.overlay.remove(&key);
            }
        }
    }
}

impl Staging {
    pub(super) fn new(main: Tree) -> Self {
        Self {
            main,
            state: Mutex::default(),
            applier: Mutex::new(()),
        }
    }

    /// The value of `key` with every write staged so far.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<IVec>, StorageError> {
        if let Some((_, value)) = lock(&self.state).overlay.get(key) {
            return Ok(value.clone());
        }
        self.main.get(key).map_err(super::sled_store::sled_error)
    }

    /// Stages one write. The caller holds the backend's commit lock, so writes are staged in
    /// the order they were decided.
    pub(super) fn stage(&self, writes: Writes) {
        let mut state = lock(&self.state);
        state.last += 1;
        let number = state.last;
        for (key, value) in writes.0 {
            state.overlay.insert(key.clone(), (number, value.clone()));
            state.queue.push((key, value, number));
        }
    }

    /// Applies everything staged so far to the tree as one batch. A failure drops what was
    /// staged (the store refuses writes; none of it was acknowledged as durable).
    pub(super) fn apply(&self) -> Result<(), StorageError> {
        let _applier = lock(&self.applier);
        let queue = {
            let mut state = lock(&self.state);
            if state.queue.is_empty() {
                return Ok(());
            }
            std::mem::take(&mut state.queue)
        };
        let mut batch = Batch::default();
        let mut kept = Vec::with_capacity(queue.len());
        for (key, value, number) in queue {
            let bytes = ENTRY_OVERHEAD + key.len() + value.as_ref().map_or(0, |v| v.len());
            kept.push((key.clone(), number, bytes));
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        let applied = self
            .main
            .apply_batch(batch)
            .map_err(super::sled_store::sled_error);
        let mut state = lock(&self.state);
        match applied {
            Ok(()) => {
                for (key, number, bytes) in kept {
                    state.retained.push_back((key, number, bytes));
                    state.retained_bytes += bytes;
                }
                state.evict();
                Ok(())
            }
            Err(e) => {
                // The tree has none of it, and what was staged since may build on it: forget
                // all of it, and what was kept, and read the tree.
                state.overlay.clear();
                state.retained.clear();
                state.retained_bytes = 0;
                state.queue.clear();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staging() -> Staging {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled");
        Staging::new(db.open_tree("main").expect("tree"))
    }

    fn write(pairs: &[(&str, Option<&str>)]) -> Writes {
        let mut writes = Writes::default();
        for (key, value) in pairs {
            match value {
                Some(value) => writes.insert(key.as_bytes(), value.as_bytes()),
                None => writes.remove(key.as_bytes()),
            }
        }
        writes
    }

    fn read(staging: &Staging, key: &str) -> Option<String> {
        staging
            .get(key.as_bytes())
            .expect("read")
            .map(|v| String::from_utf8(v.to_vec()).expect("utf-8"))
    }

    #[test]
    fn point_reads_see_staged_writes_before_and_after_they_are_applied() {
        let staging = staging();
        staging.main.insert("gone", "old").expect("insert");
        staging.stage(write(&[("a", Some("1")), ("gone", None)]));
        assert_eq!(staging.main.get("a").expect("get"), None, "not applied yet");
        assert_eq!(read(&staging, "a").as_deref(), Some("1"));
        assert_eq!(
            read(&staging, "gone"),
            None,
            "a staged removal hides the tree"
        );
        staging.stage(write(&[("a", Some("2"))]));
        staging.apply().expect("applied");
        assert_eq!(
            staging.main.get("a").expect("get").as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(staging.main.get("gone").expect("get"), None);
        assert_eq!(
            read(&staging, "a").as_deref(),
            Some("2"),
            "the newest write wins"
        );
    }

    #[test]
    fn evicting_kept_keys_never_hides_a_newer_write_or_the_tree() {
        let staging = staging();
        // Values big enough that a few of them pass the kept budget.
        let big = "x".repeat(RETAINED_BYTES / 4);
        staging.stage(write(&[("hot", Some("first"))]));
        staging.apply().expect("applied");
        staging.stage(write(&[("hot", Some("second"))]));
        for n in 0..8 {
            staging.stage(write(&[(&format!("big-{n}"), Some(&big))]));
        }
        staging.apply().expect("applied");
        assert!(lock(&staging.state).retained_bytes <= RETAINED_BYTES);
        assert_eq!(read(&staging, "hot").as_deref(), Some("second"));
        for n in 0..8 {
            assert_eq!(
                read(&staging, &format!("big-{n}")).map(|v| v.len()),
                Some(big.len()),
                "evicted or kept, big-{n} reads the same"
            );
        }
    }
}
