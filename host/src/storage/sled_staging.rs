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

use std::collections::HashMap;
use std::sync::Mutex;

use sled::{Batch, IVec, Tree};

use super::StorageError;
use crate::lock;

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

    /// As one sled batch of its own, for writes that go to the tree directly.
    pub(super) fn into_batch(self) -> Batch {
        let mut batch = Batch::default();
        for (key, value) in self.0 {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch
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
    /// The newest staged value of each key (`None`: removed) and the write that staged it.
    overlay: HashMap<IVec, (u64, Option<IVec>)>,
    /// Everything staged and not applied, in order.
    queue: Vec<(IVec, Option<IVec>)>,
    /// Number of the last write staged.
    last: u64,
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
        self.main.get(key).map_err(super::sled_store::backend)
    }

    /// Stages one write. The caller holds the backend's commit lock, so writes are staged in
    /// the order they were decided.
    pub(super) fn stage(&self, writes: Writes) {
        let mut state = lock(&self.state);
        state.last += 1;
        let number = state.last;
        for (key, value) in writes.0 {
            state.overlay.insert(key.clone(), (number, value.clone()));
            state.queue.push((key, value));
        }
    }

    /// Applies everything staged so far to the tree as one batch. A failure drops what was
    /// staged (the store refuses writes; none of it was acknowledged as durable).
    pub(super) fn apply(&self) -> Result<(), StorageError> {
        let _applier = lock(&self.applier);
        let (queue, upto) = {
            let mut state = lock(&self.state);
            if state.queue.is_empty() {
                return Ok(());
            }
            (std::mem::take(&mut state.queue), state.last)
        };
        let applied = self
            .main
            .apply_batch(Writes(queue).into_batch())
            .map_err(super::sled_store::write_error);
        // Keys written again since stay in the overlay with their newer value.
        lock(&self.state)
            .overlay
            .retain(|_, (number, _)| *number > upto);
        applied
    }
}
