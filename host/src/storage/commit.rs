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
//! keeps its events unpublished and tells current waiters (so a run can be put back or failed
//! visibly). What follows depends on the backend ([`OnFlushFailure`]): a store that recovers
//! from an I/O error is retried with backoff; one that cannot (sled refuses every write after
//! one) is marked failed, refuses writes from then on and announces it
//! ([`CommitLog::failure`]), so the host stops rather than run work it can never record.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
/// How long the flusher lets writes gather before a flush while several callers wait on one
/// (PostgreSQL's `commit_delay`): each flush costs the store a round of thread wake-ups, so
/// under load fewer, larger flushes leave more CPU for the work. A lone waiter is flushed at
/// once, so a single request never waits for it.
const GATHER: Duration = Duration::from_micros(250);
/// Callers waiting in [`CommitLog::sync`] from which the flusher gathers first.
const GATHER_FROM_WAITERS: usize = 2;

pub struct CommitLog {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The highest `seq` published; readers never return an event above it.
    visible_seq: AtomicU64,
    flushed: watch::Sender<Flushed>,
    events: broadcast::Sender<Event>,
    on_failure: OnFlushFailure,
    /// Why the store refuses writes for good, once it does.
    failure: watch::Sender<Option<String>>,
    /// Callers in [`sync`](Self::sync) now.
    waiters: AtomicUsize,
}

/// Counts a caller in `sync` for as long as it waits, cancelled or not.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::Relaxed);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a failed flush means for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFlushFailure {
    /// The failure may pass (a lost connection): retry with backoff.
    Retry,
    /// The store never takes a write again after it (sled after an I/O error).
    Fatal,
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
    pub fn new(last_seq: u64, on_failure: OnFlushFailure) -> Self {
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (flushed, _) = watch::channel(Flushed::default());
        let (failure, _) = watch::channel(None);
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
            on_failure,
            failure,
            waiters: AtomicUsize::new(0),
        }
    }

    /// An error when the store refuses writes for good; a backend checks before each write.
    pub fn check_writable(&self) -> Result<(), StorageError> {
        match self.failure.borrow().as_ref() {
            Some(reason) => Err(StorageError::Unavailable(reason.clone())),
            None => Ok(()),
        }
    }

    /// Becomes `Some(reason)` when the store refuses writes for good.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.subscribe()
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
        self.check_writable()?;
        let _waiting = Waiting::new(&self.waiters);
        let needed = lock(&self.pending).generation;
        loop {
            let now = *flushed.borrow_and_update();
            if now.generation >= needed {
                return Ok(());
            }
            if now.failures > failures_before {
                return Err(StorageError::Unavailable(
                    "the store failed to make a write durable".into(),
                ));
            }
            if flushed.changed().await.is_err() {
                return Err(StorageError::Unavailable("storage closed".into()));
            }
        }
    }

    /// The flusher's loop: runs on its own thread until [`stop`](Self::stop), making writes
    /// durable with `flush` (which must cover every write applied before it was called).
    pub fn run_flusher(&self, flush: impl Fn() -> Result<(), StorageError>) {
        let mut delay = Duration::from_millis(10);
        loop {
            {
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
            }
            // Off the condvar, so that the writes gathering now do not wake the flusher.
            if self.waiters.load(Ordering::Relaxed) >= GATHER_FROM_WAITERS {
                std::thread::sleep(GATHER);
            }
            let (generation, events) = {
                let mut pending = lock(&self.pending);
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
                    if self.on_failure == OnFlushFailure::Fatal {
                        error!("the store refuses writes from now on; what is durable stays");
                        self.failure.send_replace(Some(e.to_string()));
                        self.fail_waiters_until_stopped();
                        return;
                    }
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

    /// After a fatal failure nothing becomes durable: every later `sync` fails at once.
    fn fail_waiters_until_stopped(&self) {
        let mut pending = lock(&self.pending);
        loop {
            pending.events.clear();
            let stopping = pending.stop;
            drop(pending);
            self.flushed.send_modify(|flushed| flushed.failures += 1);
            if stopping {
                return;
            }
            pending = lock(&self.pending);
            let seen = pending.generation;
            while pending.generation == seen && !pending.stop {
                pending = self
                    .wake
                    .wait(pending)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    use crate::model::EventData;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            task_id: "t".into(),
            data: EventData::Progress(Default::default()),
            timestamp: Utc::now(),
            owner: "o".into(),
            plugin: "p".into(),
            labels: Default::default(),
        }
    }

    #[tokio::test]
    async fn events_are_published_only_after_a_flush_succeeds() {
        let log = Arc::new(CommitLog::new(7, OnFlushFailure::Retry));
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

    #[tokio::test]
    async fn a_fatal_flush_failure_refuses_every_later_write_and_says_why() {
        let log = Arc::new(CommitLog::new(3, OnFlushFailure::Fatal));
        let flusher = std::thread::spawn({
            let log = log.clone();
            move || log.run_flusher(|| Err(StorageError::Unavailable("disk full".into())))
        });
        let mut live = log.subscribe();
        let mut failure = log.failure();
        assert!(log.check_writable().is_ok());
        log.committed(vec![event(4)]);
        assert!(matches!(
            log.sync().await,
            Err(StorageError::Unavailable(_))
        ));
        let reason = failure
            .wait_for(Option::is_some)
            .await
            .expect("announced")
            .clone();
        assert_eq!(reason.as_deref(), Some("storage unavailable: disk full"));
        assert!(matches!(
            log.check_writable(),
            Err(StorageError::Unavailable(_))
        ));
        // A sync after the failure, with or without a new write, fails at once.
        assert!(log.sync().await.is_err());
        log.committed(vec![event(5)]);
        assert!(log.sync().await.is_err());
        assert!(live.try_recv().is_err(), "nothing published");
        assert_eq!(log.visible_seq(), 3);
        log.stop();
        flusher.join().expect("flusher ends");
    }
}
