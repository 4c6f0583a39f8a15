//! Durable before visible: the group commit every write of a backend passes through.
//!
//! A backend applies a write, then registers it here ([`CommitLog::committed`]) with the
//! events it gave `seq`s to. One flusher thread makes everything registered so far durable
//! with one flush, and only then publishes that batch's events, in `seq` order, and wakes the
//! callers waiting to acknowledge ([`CommitLog::sync`]). So no subscriber or reader ever sees
//! an event a crash could take back, no client is told "accepted" about a write a crash could
//! lose, and a `seq` a client saw is on disk: after a restart the next one is higher.
//!
//! Under load each flush covers every write that arrived while the previous one ran, so many
//! acknowledgements share one fsync; idle, a write waits for exactly one flush. A failed flush
//! keeps its events unpublished, tells current waiters (so a run can be put back or failed
//! visibly) and is retried with backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tracing::{error, warn};

use super::StorageError;
use crate::lock;
use crate::model::Event;

/// Live events buffered for slow subscribers before they lag.
const BROADCAST_CAPACITY: usize = 16 * 1024;
/// Longest pause between retries of a failing flush.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

pub struct CommitLog {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The highest `seq` published; readers never return an event above it.
    visible_seq: AtomicU64,
    flushed: watch::Sender<Flushed>,
    events: broadcast::Sender<Event>,
}

struct Pending {
    /// Writes registered so far.
    generation: u64,
    /// Writes known durable.
    durable: u64,
    /// Events of registered writes not yet durable, in `seq` order.
    events: Vec<Event>,
    stop: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Flushed {
    generation: u64,
    failures: u64,
}

impl CommitLog {
    /// A log whose durable history ends at `last_seq`.
    pub fn new(last_seq: u64) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (flushed, _) = watch::channel(Flushed::default());
        Self {
            pending: Mutex::new(Pending {
                generation: 0,
                durable: 0,
                events: Vec::new(),
                stop: false,
            }),
            wake: Condvar::new(),
            visible_seq: AtomicU64::new(last_seq),
            flushed,
            events,
        }
    }

    /// Registers an applied write and its events. A backend calls this while it still holds
    /// the lock under which it gave the events their `seq`s, so they arrive in order.
    pub fn committed(&self, events: Vec<Event>) {
        let mut pending = lock(&self.pending);
        pending.generation += 1;
        pending.events.extend(events);
        drop(pending);
        self.wake.notify_one();
    }

    /// The highest `seq` that is durable and published.
    pub fn visible_seq(&self) -> u64 {
        self.visible_seq.load(Ordering::Acquire)
    }

    /// Durable events, in `seq` order, from the moment of subscribing.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Returns once every write registered before the call is durable; an error when a flush
    /// failed in the meantime (the write may still become durable on a later retry).
    pub async fn sync(&self) -> Result<(), StorageError> {
        let mut flushed = self.flushed.subscribe();
        let failures_before = flushed.borrow().failures;
        let needed = lock(&self.pending).generation;
        loop {
            let now = *flushed.borrow_and_update();
            if now.generation >= needed {
                return Ok(());
            }
            if now.failures > failures_before {
                return Err(StorageError::Backend(
                    "the store failed to make a write durable".into(),
                ));
            }
            if flushed.changed().await.is_err() {
                return Err(StorageError::Backend("storage closed".into()));
            }
        }
    }

    /// The flusher's loop: runs on its own thread until [`stop`](Self::stop), making writes
    /// durable with `flush` (which must cover every write applied before it was called).
    pub fn run_flusher(&self, flush: impl Fn() -> Result<(), StorageError>) {
        let mut delay = Duration::from_millis(10);
        loop {
            let (generation, events) = {
                let mut pending = lock(&self.pending);
                while pending.generation == pending.durable && !pending.stop {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if pending.generation == pending.durable {
                    return;
                }
                (pending.generation, std::mem::take(&mut pending.events))
            };
            match flush() {
                Ok(()) => {
                    delay = Duration::from_millis(10);
                    lock(&self.pending).durable = generation;
                    self.publish(events);
                    self.flushed
                        .send_modify(|flushed| flushed.generation = generation);
                }
                Err(e) => {
                    error!(error = %e, "flush failed; its events stay unpublished and it is retried");
                    let mut pending = lock(&self.pending);
                    let later = std::mem::replace(&mut pending.events, events);
                    pending.events.extend(later);
                    let stopping = pending.stop;
                    drop(pending);
                    self.flushed.send_modify(|flushed| flushed.failures += 1);
                    if stopping {
                        warn!("stopping with writes that could not be made durable");
                        return;
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    fn publish(&self, events: Vec<Event>) {
        if let Some(last) = events.last() {
            self.visible_seq.store(last.seq, Ordering::Release);
        }
        for event in events {
            // No subscriber is not an error.
            let _ = self.events.send(event);
        }
    }

    /// Asks the flusher to make what is pending durable and end.
    pub fn stop(&self) {
        lock(&self.pending).stop = true;
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use chrono::Utc;

    use super::*;
    use crate::model::EventKind;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            task_id: "t".into(),
            kind: EventKind::Progress,
            data: serde_json::json!({}),
            timestamp: Utc::now(),
            owner: "o".into(),
            plugin: "p".into(),
            labels: Default::default(),
        }
    }

    #[tokio::test]
    async fn events_are_published_only_after_a_flush_succeeds() {
        let log = Arc::new(CommitLog::new(7));
        let failing = Arc::new(AtomicBool::new(true));
        let flusher = std::thread::spawn({
            let (log, failing) = (log.clone(), failing.clone());
            move || {
                log.run_flusher(|| {
                    if failing.load(Ordering::SeqCst) {
                        Err(StorageError::Backend("disk full".into()))
                    } else {
                        Ok(())
                    }
                })
            }
        });
        let mut live = log.subscribe();
        log.committed(vec![event(8), event(9)]);
        assert!(log.sync().await.is_err(), "a failed flush is reported");
        assert_eq!(log.visible_seq(), 7);
        assert!(live.try_recv().is_err(), "nothing published before durable");
        failing.store(false, Ordering::SeqCst);
        log.committed(vec![event(10)]);
        // A sync that overlaps a retry still failing reports it; the next one succeeds.
        let mut synced = false;
        for _ in 0..3 {
            if log.sync().await.is_ok() {
                synced = true;
                break;
            }
        }
        assert!(synced, "durable once the flush succeeds");
        let seqs: Vec<u64> = (0..3)
            .map(|_| live.try_recv().expect("event").seq)
            .collect();
        assert_eq!(seqs, [8, 9, 10]);
        assert_eq!(log.visible_seq(), 10);
        log.stop();
        flusher.join().expect("flusher ends");
    }
}
