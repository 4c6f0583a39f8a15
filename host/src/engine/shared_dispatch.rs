//! Dispatch through a store several hosts share ([`SharedQueue`]): this host claims ready
//! tasks there, within each plugin's concurrency on this host; renews the leases of its runs,
//! stopping a run whose lease was lost and applying the control requests other hosts left
//! for it; and sweeps what any host may find: runs whose lease lapsed (their host died), due
//! scheduled tasks, and dependents of tasks that failed.
//!
//! The in-memory scheduler of [`super::worker`] is not used for ordering here: the store is
//! the queue, and its claims decide priority, age, paused queues and dependencies for every
//! host at once. Events (from any host) and freed slots wake the claim loop; a poll every
//! `claim_poll_ms` is the fallback.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tracing::{info, warn};

use super::worker::{interrupted, promote, start_attempt};
use super::{EngineError, Inner, RunningTask, lock};
use crate::model::{EventData, Task, TaskStatus};
use crate::runtime::TaskControl;
use crate::storage::shared::{ControlRequest, Lease, Renewal, SharedQueue};

/// Tasks one claim takes at most: enough to fill slots in few round trips, few enough that
/// one host does not take work another idle host could start sooner.
const CLAIM_BATCH: usize = 16;
/// Rows one sweep handles per kind before the next tick.
const SWEEP_BATCH: usize = 256;
/// Longest time between renewals: it bounds how late a control request from another host
/// (cancel, pause, resume) reaches the run.
const RENEW_EVERY_MAX: Duration = Duration::from_secs(1);

impl Inner {
    fn shared_queue(&self) -> Option<&dyn SharedQueue> {
        self.storage.shared()
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.config.lease_s)
    }

    fn claim_poll(&self) -> Duration {
        Duration::from_millis(self.config.claim_poll_ms)
    }

    /// How often this host renews its leases.
    pub(super) fn renew_every(&self) -> Duration {
        (self.lease_ttl() / 3).min(RENEW_EVERY_MAX)
    }

    /// At start on a shared store: runs marked running belong to whichever host holds their
    /// lease, this host's earlier life included (its id was another), and the sweep puts them
    /// back once their lease lapses. Only the queue pauses are read here.
    pub(super) async fn recover_shared(self: &Arc<Self>) -> Result<(), EngineError> {
        for paused in self.storage.paused_queues().await? {
            lock(&self.sched).set_queue_paused(&paused, true);
        }
        Ok(())
    }

    pub(super) fn spawn_shared_dispatch(self: Arc<Self>) {
        tokio::spawn(wake_on_events(Arc::downgrade(&self)));
        tokio::spawn(self.clone().renew_loop());
        tokio::spawn(self.clone().sweep_loop());
        tokio::spawn(self.claim_loop());
    }

    /// Marks `plugin` as having work to claim, and wakes the claim loop.
    pub(super) fn hint_claim(&self, plugin: &str) {
        lock(&self.claim_hints).insert(plugin.to_owned());
        self.wake.notify_one();
    }

    async fn claim_loop(self: Arc<Self>) {
        let poll = self.claim_poll();
        let mut next_poll = Instant::now();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let plugins: Vec<String> = if Instant::now() >= next_poll {
                next_poll = Instant::now() + poll;
                lock(&self.claim_hints).clear();
                self.registry
                    .list()
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect()
            } else {
                std::mem::take(&mut *lock(&self.claim_hints))
                    .into_iter()
                    .collect()
            };
            if self.storage.check_writable().is_ok() {
                for plugin in plugins {
                    self.claim_for(&plugin).await;
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(next_poll.into()) => {}
            }
        }
    }

    /// Claims ready tasks of `plugin` up to its free slots on this host, and starts them.
    async fn claim_for(self: &Arc<Self>, plugin: &str) {
        let Some(shared) = self.shared_queue() else {
            return;
        };
        let Some(loaded) = self.registry.get(plugin) else {
            // Tasks of a plugin this host has not loaded wait for a host that has.
            return;
        };
        let limit = loaded.plugin.grants().limits.max_concurrency as usize;
        loop {
            let free = limit.saturating_sub(lock(&self.sched).running(plugin));
            if free == 0 || self.stopping.load(Ordering::Acquire) {
                return;
            }
            let batch = free.min(CLAIM_BATCH);
            let claimed = match shared
                .claim(
                    &self.host_id,
                    plugin,
                    batch,
                    self.lease_ttl(),
                    &start_attempt,
                )
                .await
            {
                Ok(claimed) => claimed,
                Err(e) => {
                    warn!(plugin, error = %e, "could not claim tasks");
                    return;
                }
            };
            let full = claimed.len() == batch;
            for (task, lease, _) in claimed {
                self.launch(task, lease);
            }
            if !full {
                return;
            }
        }
    }

    /// Runs a task this host claimed.
    fn launch(self: &Arc<Self>, task: Task, lease: Lease) {
        let control = TaskControl::new();
        lock(&self.sched).started(&task.plugin);
        lock(&self.running).insert(
            task.id.clone(),
            RunningTask {
                control: control.clone(),
                lease: Some(lease.clone()),
            },
        );
        // Shutdown began while the claim was in flight: the run stops at once and goes back.
        if self.stopping.load(Ordering::Acquire) {
            control.shutdown();
        }
        let plugin = task.plugin.clone();
        tokio::spawn(self.clone().execute(task, plugin, control, Some(lease)));
    }

    /// Renews this host's leases until it has stopped and its runs ended. A lost lease (the
    /// host stalled past it, and another took the task over) kills its run, whose outcome
    /// is then refused; so does a store out of reach for a whole lease, because by then
    /// another host may have taken the run over.
    async fn renew_loop(self: Arc<Self>) {
        let every = self.renew_every();
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<(Lease, TaskControl)> = lock(&self.running)
                .values()
                .filter_map(|run| run.lease.clone().map(|lease| (lease, run.control.clone())))
                .collect();
            if held.is_empty() {
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                last_renewed = Instant::now();
                continue;
            }
            let Some(shared) = self.shared_queue() else {
                return;
            };
            let leases: Vec<Lease> = held.iter().map(|(lease, _)| lease.clone()).collect();
            match shared.renew(&leases, self.lease_ttl()).await {
                Ok(renewals) => {
                    last_renewed = Instant::now();
                    for ((lease, control), renewal) in held.iter().zip(renewals) {
                        self.apply_renewal(lease, control, renewal);
                    }
                }
                Err(e) => {
                    warn!(error = %e, runs = held.len(), "could not renew this host's leases");
                    if last_renewed.elapsed() >= self.lease_ttl() {
                        warn!("leases unrenewed for a whole lease: stopping their runs");
                        for (_, control) in &held {
                            control.kill();
                        }
                    }
                }
            }
        }
    }

    fn apply_renewal(&self, lease: &Lease, control: &TaskControl, renewal: Renewal) {
        match renewal {
            Renewal::Lost if !self.still_renewing(lease) => {}
            Renewal::Lost => {
                warn!(task = %lease.task_id, "lease lost to another host; stopping the run");
                control.kill();
            }
            Renewal::Held(Some(ControlRequest::Cancel)) => self.cancel_run(control),
            Renewal::Held(Some(ControlRequest::Pause)) => {
                control.pause();
            }
            Renewal::Held(Some(ControlRequest::Resume)) => {
                control.resume();
            }
            Renewal::Held(None) => {}
        }
    }

    /// Whether the run `lease` was taken for is still renewing it, not ending.
    fn still_renewing(&self, lease: &Lease) -> bool {
        lock(&self.running)
            .get(&lease.task_id)
            .and_then(|run| run.lease.as_ref())
            .is_some_and(|held| held.token == lease.token)
    }

    /// Asks a run to stop because it is cancelled, and kills it after the grace period.
    pub(super) fn cancel_run(&self, control: &TaskControl) {
        control.cancel();
        let grace = Duration::from_secs(self.config.cancel_grace_s);
        let killer = control.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            killer.kill();
        });
    }

    async fn sweep_loop(self: Arc<Self>) {
        let poll = self.claim_poll();
        while !self.stopping.load(Ordering::Acquire) {
            if self.storage.check_writable().is_ok() {
                self.sweep().await;
            }
            tokio::select! {
                () = self.sweep_wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// One pass over what any host may find and settle.
    async fn sweep(self: &Arc<Self>) {
        let Some(shared) = self.shared_queue() else {
            return;
        };
        let lapsed = |task: &mut Task| interrupted(task, "the host running it stopped answering");
        match shared.requeue_lapsed(SWEEP_BATCH, &lapsed).await {
            Ok(tasks) => {
                if !tasks.is_empty() {
                    info!(
                        tasks = tasks.len(),
                        "took over runs whose host let the lease lapse"
                    );
                }
                for task in tasks {
                    match task.status {
                        TaskStatus::Queued => self.hint_claim(&task.plugin),
                        status if status.is_terminal() => self.sweep_wake.notify_one(),
                        _ => {}
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not sweep lapsed leases"),
        }
        match shared.promote_due(SWEEP_BATCH, &promote).await {
            Ok(tasks) => {
                for task in tasks {
                    self.hint_claim(&task.plugin);
                }
            }
            Err(e) => warn!(error = %e, "could not queue due tasks"),
        }
        match shared.stranded_dependents(SWEEP_BATCH).await {
            Ok(stranded) => {
                for (id, dependency) in stranded {
                    if let Err(e) = self.fail_for_dependency(&id, &dependency).await {
                        warn!(task = %id, error = %e, "could not fail a dependent");
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not look for stranded dependents"),
        }
        // A pause or resume of a queue through another host.
        match self.storage.paused_queues().await {
            Ok(paused) => {
                let mut sched = lock(&self.sched);
                for loaded in self.registry.list() {
                    let name = loaded.name();
                    sched.set_queue_paused(name, paused.contains(name));
                }
            }
            Err(e) => warn!(error = %e, "could not read paused queues"),
        }
    }

    /// Whether `task` runs under a lease no change but its holder's may touch: on a shared
    /// store, a running task belongs to the host that claimed it.
    pub(super) fn held_by_a_host(&self, task: &Task) -> bool {
        self.shared_queue().is_some()
            && task.status == TaskStatus::Running
            && task.executor != crate::model::Executor::External
    }

    /// Leaves `request` for the host holding task `id`'s lease; `false` when none holds it
    /// (or the store is not shared).
    pub(super) async fn request_control(
        &self,
        id: &str,
        request: ControlRequest,
    ) -> Result<bool, EngineError> {
        match self.shared_queue() {
            Some(shared) => Ok(shared.request_control(id, request).await?),
            None => Ok(false),
        }
    }
}

/// Wakes the claim loop for events that may make tasks ready, from any host: a task queued
/// or resumed, and the sweep for a task that failed (its dependents fail with it).
async fn wake_on_events(engine: Weak<Inner>) {
    let Some(mut events) = engine.upgrade().map(|inner| inner.storage.subscribe()) else {
        return;
    };
    loop {
        let received = events.recv().await;
        let Some(inner) = engine.upgrade() else {
            return;
        };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        match received {
            Ok(event) => match event.data {
                EventData::Queued {
                    status: TaskStatus::Queued,
                    ..
                }
                | EventData::Resumed {
                    status: TaskStatus::Queued,
                }
                | EventData::Completed { .. } => inner.hint_claim(&event.plugin),
                EventData::Failed { .. } | EventData::Cancelled { .. } => {
                    inner.sweep_wake.notify_one();
                }
                _ => {}
            },
            // Missed some: look at every plugin.
            Err(RecvError::Lagged(_)) => {
                for loaded in inner.registry.list() {
                    inner.hint_claim(loaded.name());
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}
