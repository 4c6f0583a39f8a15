//! The runner agent behind the `taskhost-runner` binary: registers with a host, claims jobs
//! whose labels it carries (long-poll), runs them (see [`job`]), and keeps its leases alive
//! with heartbeats that also carry the host's "stop" for cancelled or lost jobs.
//!
//! The host keeps runners in storage, so a host restart changes nothing for the agent: it
//! retries until the host answers and goes on with the same registration. Only when the
//! registration was removed does the next call answer 401; the agent then registers again
//! (with its API key) and goes on claiming, ending a job it was running, which no longer has
//! an owner at the host. An API key that
//! is revoked, or lacks `runners:register`, stops the agent: that is how an operator retires
//! a runner for good.

pub mod client;
pub mod files;
pub mod job;
pub mod machine;
pub mod sandbox;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tracing::{info, warn};

pub use client::{ClientError, HostClient, Registration};
use job::{JobRun, JobSettings, Stop};

/// The longest claim the agent holds open; the host caps it too.
const CLAIM_WAIT: Duration = Duration::from_secs(25);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub url: String,
    pub api_key: String,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: u32,
    pub work_dir: PathBuf,
    pub keep_workdirs: bool,
    /// How long a stopping agent lets running jobs finish before abandoning them.
    pub drain_timeout: Duration,
    /// The user steps run as (the runner must be root); `None`: the runner's own user.
    pub run_as: Option<sandbox::StepUser>,
    /// Variables steps inherit from the runner's environment ([`sandbox::DEFAULT_PASS_ENV`]).
    pub pass_env: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the host refused to register this runner: {0}")]
    RegistrationRefused(String),
    #[error("{0}")]
    Setup(String),
}

/// A job in progress: how to stop it, and under which registration it was claimed.
struct Running {
    stop: watch::Sender<Option<Stop>>,
    registration_id: String,
    lease: Duration,
}

pub struct Agent {
    config: AgentConfig,
    /// What every step's environment starts from (computed once: the allow-list applied).
    step_env: Arc<Vec<(std::ffi::OsString, std::ffi::OsString)>>,
    client: HostClient,
    registration: Mutex<Option<Registration>>,
    running: Mutex<HashMap<String, Running>>,
    /// Wakes the heartbeat loop when a job starts, so that a short lease gets its first
    /// renewal in time.
    job_started: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Doubling waits between attempts at an unavailable host.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(250))
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }
}

impl Agent {
    pub fn new(config: AgentConfig) -> Result<Arc<Self>, AgentError> {
        if config.capacity == 0 {
            return Err(AgentError::Setup("capacity must be at least 1".into()));
        }
        std::fs::create_dir_all(&config.work_dir)
            .and_then(|()| sandbox::lock_work_dir(&config.work_dir))
            .map_err(|e| {
                AgentError::Setup(format!(
                    "cannot create the work directory {}: {e}",
                    config.work_dir.display()
                ))
            })?;
        if config.run_as.is_some() && !sandbox::is_root() {
            return Err(AgentError::Setup(
                "--run-as needs the runner to start as root".into(),
            ));
        }
        let step_env = Arc::new(sandbox::step_environment(&config.pass_env));
        let client = HostClient::new(&config.url, config.api_key.clone())
            .map_err(|e| AgentError::Setup(e.to_string()))?;
        Ok(Arc::new(Self {
            config,
            step_env,
            client,
            registration: Mutex::new(None),
            running: Mutex::new(HashMap::new()),
            job_started: Notify::new(),
        }))
    }

    /// The current registration, registering (again) when there is none. Waits out an
    /// unavailable host; fails only when the host refuses.
    async fn registration(&self) -> Result<Registration, AgentError> {
        let mut backoff = Backoff::new();
        loop {
            if let Some(registration) = lock(&self.registration).clone() {
                return Ok(registration);
            }
            match self
                .client
                .register(&self.config.name, &self.config.labels, self.config.capacity)
                .await
            {
                Ok(registration) => {
                    info!(runner = %registration.id, name = %self.config.name, labels = ?self.config.labels, "registered");
                    *lock(&self.registration) = Some(registration.clone());
                    return Ok(registration);
                }
                Err(ClientError::Unavailable(e)) => {
                    let wait = backoff.next();
                    warn!(error = %e, retry_in = ?wait, "cannot reach the host to register");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(AgentError::RegistrationRefused(e.to_string())),
            }
        }
    }

    /// The host no longer knows `registration`: drop it (unless already replaced) and end
    /// the jobs claimed under it, which nobody at the host is waiting for any more.
    fn forget(&self, registration: &Registration) {
        let mut current = lock(&self.registration);
        if current.as_ref().is_some_and(|r| r.id == registration.id) {
            warn!(runner = %registration.id, "the host no longer knows this runner; registering again");
            *current = None;
        }
        drop(current);
        for running in lock(&self.running).values() {
            if running.registration_id == registration.id {
                running.stop.send_replace(Some(Stop::Abandon));
            }
        }
    }

    fn running_ids(&self) -> Vec<String> {
        lock(&self.running).keys().cloned().collect()
    }

    /// Claims and runs jobs until `shutdown` turns true, then lets running jobs finish for up
    /// to the drain timeout and abandons the rest (the host hands them out again).
    pub async fn run(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AgentError> {
        let heartbeats = tokio::spawn(self.clone().heartbeat_loop());
        let slots = Arc::new(Semaphore::new(self.config.capacity as usize));
        let mut backoff = Backoff::new();
        let result = loop {
            let registration = tokio::select! {
                r = self.registration() => match r {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                },
                _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            };
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break Ok(()),
                },
                _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            };
            let claimed = tokio::select! {
                c = self.client.claim(&registration, CLAIM_WAIT) => c,
                _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            };
            match claimed {
                Ok(Some(lease)) => {
                    backoff = Backoff::new();
                    let (stop, stop_signal) = watch::channel(None);
                    lock(&self.running).insert(
                        lease.job_id.clone(),
                        Running {
                            stop,
                            registration_id: registration.id.clone(),
                            lease: Duration::from_secs(lease.lease_s.max(1)),
                        },
                    );
                    self.job_started.notify_one();
                    let job_id = lease.job_id.clone();
                    let run = JobRun {
                        client: self.client.clone(),
                        registration: registration.clone(),
                        lease,
                        settings: JobSettings {
                            work_dir: self.config.work_dir.clone(),
                            keep_workdirs: self.config.keep_workdirs,
                            run_as: self.config.run_as.clone(),
                            env: self.step_env.clone(),
                        },
                        stop: stop_signal,
                        leftovers: Vec::new(),
                    };
                    let agent = self.clone();
                    tokio::spawn(async move {
                        run.run().await;
                        lock(&agent.running).remove(&job_id);
                        drop(permit);
                    });
                }
                Ok(None) => backoff = Backoff::new(),
                Err(ClientError::Unauthorized) => self.forget(&registration),
                Err(ClientError::Refused { status, message }) => {
                    warn!(status, %message, "the host refused a claim");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(ClientError::Unavailable(e)) => {
                    let wait = backoff.next();
                    warn!(error = %e, retry_in = ?wait, "cannot claim jobs");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.drain(&slots).await;
        heartbeats.abort();
        result
    }

    async fn drain(&self, slots: &Arc<Semaphore>) {
        let capacity = self.config.capacity;
        let all_idle = slots.acquire_many(capacity);
        if tokio::time::timeout(self.config.drain_timeout, all_idle)
            .await
            .is_err()
        {
            warn!(jobs = ?self.running_ids(), "jobs still running at the drain timeout; abandoning them");
            for running in lock(&self.running).values() {
                running.stop.send_replace(Some(Stop::Abandon));
            }
            // Abandoning ends the processes (SIGTERM, then SIGKILL after a grace period).
            let _ =
                tokio::time::timeout(Duration::from_secs(10), slots.acquire_many(capacity)).await;
        }
    }

    /// Heartbeats at the host's interval, and at a third of the shortest lease while jobs run,
    /// so that no lease lapses while the runner is alive.
    async fn heartbeat_loop(self: Arc<Self>) {
        // The registration the host's interval was learnt under; a new one beats at once to
        // learn it again.
        let mut learnt: Option<(String, Duration)> = None;
        loop {
            let registration = lock(&self.registration).clone();
            let interval = match (&registration, &learnt) {
                (Some(current), Some((id, interval))) if current.id == *id => *interval,
                (Some(_), _) => Duration::ZERO,
                (None, _) => Duration::from_millis(500),
            };
            let shortest_lease = lock(&self.running).values().map(|r| r.lease).min();
            let wait = match shortest_lease {
                Some(lease) => interval.min((lease / 3).max(Duration::from_millis(100))),
                None => interval,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // A job started: work out the wait again with its lease.
                () = self.job_started.notified() => continue,
            }
            let Some(registration) = registration else {
                continue;
            };
            let running = self.running_ids();
            match self.client.heartbeat(&registration, &running).await {
                Ok(reply) => {
                    let interval = Duration::from_secs(reply.heartbeat_interval_s.max(1));
                    learnt = Some((registration.id.clone(), interval));
                    let jobs = lock(&self.running);
                    for id in &reply.stop {
                        if let Some(job) = jobs.get(id) {
                            info!(job = %id, "the host asked to stop this job");
                            job.stop.send_replace(Some(Stop::Cancel));
                        }
                    }
                }
                Err(ClientError::Unauthorized) => self.forget(&registration),
                Err(e) => {
                    warn!(error = %e, "heartbeat failed");
                    // Not a busy loop while the host is away.
                    if interval.is_zero() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}
