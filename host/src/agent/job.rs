//! Runs one leased job: a fresh directory, each step as a process (in its own process group,
//! so a timeout or a stop ends everything it started), output streamed line by line to the
//! host, and the outcome reported step by step and at the end.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::client::{ClientError, HostClient, LogLine, Registration};
use super::files;
use super::sandbox::{self, StepUser};
use crate::runners::{Artifact, JobStatus, Lease, StepOutcome, StepSpec};

/// The end of a step's combined output kept for its outcome.
const TAIL_BYTES: usize = 64 * 1024;
const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines sent in one log report, their bytes (well under the host's default 1 MiB body limit
/// even when JSON escaping multiplies them), and how long a line may wait for others.
const LOG_BATCH_LINES: usize = 500;
const LOG_BATCH_BYTES: usize = 128 * 1024;
const LOG_BATCH_DELAY: Duration = Duration::from_millis(200);
/// Between SIGTERM and SIGKILL when a step must end.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a step's output may go on arriving after its process exited before the next step
/// starts. What it left running in the background (a server for the tests of a later step,
/// say) keeps its output flowing to the log until the job ends, when its group is killed.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Attempts at the final report while the host is unavailable.
const FINISH_ATTEMPTS: u32 = 10;

/// Why a job has to end before its steps do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The host asked (the task was cancelled): report the job cancelled.
    Cancel,
    /// The job is no longer this runner's (lease lost, runner gone, runner shutting down):
    /// end the processes and report nothing; the host redelivers it.
    Abandon,
}

/// Where the runner keeps job directories and what steps inherit.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub work_dir: PathBuf,
    pub keep_workdirs: bool,
    /// The user steps run as, when not the runner's own.
    pub run_as: Option<StepUser>,
    /// The allow-listed part of the runner's environment every step starts with.
    pub env: Arc<Vec<(OsString, OsString)>>,
}

pub struct JobRun {
    pub client: HostClient,
    pub registration: Registration,
    pub lease: Lease,
    pub settings: JobSettings,
    pub stop: watch::Receiver<Option<Stop>>,
    /// Process groups of finished steps that left processes running, with their output
    /// readers: ended when the job ends.
    pub leftovers: Vec<(Option<u32>, Vec<tokio::task::JoinHandle<()>>)>,
}

enum StepEnd {
    Exited(Option<i32>),
    TimedOut,
    Stopped(Stop),
    NotStarted,
}

impl JobRun {
    fn stopped(&self) -> Option<Stop> {
        *self.stop.borrow()
    }

    pub async fn run(mut self) {
        let job = self.lease.job_id.clone();
        let dir =
            self.settings
                .work_dir
                .join(format!("{}-{}", sanitize(&job), self.lease.delivery));
        info!(job = %job, task = %self.lease.task_id, delivery = self.lease.delivery, dir = %dir.display(), "job started");
        let (logs, log_sender) =
            LogSender::start(self.client.clone(), self.registration.clone(), job.clone());
        let status = self.run_steps(&dir, &logs).await;
        self.end_leftovers().await;
        // Every line is at the host before the job is reported finished.
        drop(logs);
        let lost_lease = log_sender.await.unwrap_or(false);
        let status = match status {
            Some(status) if !lost_lease => status,
            _ => {
                info!(job = %job, "job abandoned; the host will hand it out again");
                self.cleanup(&dir).await;
                return;
            }
        };
        let artifacts = self.artifacts(&dir).await;
        self.report_finish(status, &artifacts).await;
        info!(job = %job, ?status, "job finished");
        self.cleanup(&dir).await;
    }

    /// Runs the steps; `None` when the job was abandoned.
    async fn run_steps(&mut self, dir: &Path, logs: &mpsc::Sender<LogLine>) -> Option<JobStatus> {
        let started = Instant::now();
        if let Err(message) = self.prepare(dir).await {
            let _ = logs
                .send(LogLine {
                    stream: "stderr",
                    line: message.clone(),
                    step: Some("prepare".into()),
                })
                .await;
            let outcome = StepOutcome {
                name: "prepare".into(),
                exit_code: None,
                duration_ms: elapsed_ms(started),
                output_tail: message,
            };
            return self
                .report_step(&outcome)
                .await
                .then_some(JobStatus::Failed);
        }
        let deadline = self
            .lease
            .spec
            .timeout_s
            .map(|s| started + Duration::from_secs(u64::from(s)));
        let steps = self.lease.spec.steps.clone();
        let total = steps.len() as u64;
        for (index, step) in steps.iter().enumerate() {
            let label = format!("Step {}/{total}: {}", index + 1, step.name);
            if let Err(e) = self
                .client
                .progress(
                    &self.registration,
                    &self.lease.job_id,
                    index as u64,
                    total,
                    &label,
                )
                .await
                && lost(&e)
            {
                return None;
            }
            let step_started = Instant::now();
            let step_deadline = match (step.timeout_s, deadline) {
                (Some(s), Some(job)) => {
                    Some(job.min(step_started + Duration::from_secs(u64::from(s))))
                }
                (Some(s), None) => Some(step_started + Duration::from_secs(u64::from(s))),
                (None, job) => job,
            };
            let tail = Arc::new(Mutex::new(Tail::default()));
            let end = self
                .run_step(step, dir, step_deadline, logs, tail.clone())
                .await;
            let mut output_tail = tail.lock().map(|t| t.text()).unwrap_or_default();
            let (exit_code, status) = match end {
                StepEnd::Stopped(Stop::Abandon) => return None,
                StepEnd::Exited(Some(0)) => (Some(0), None),
                StepEnd::Exited(code) => (code, Some(JobStatus::Failed)),
                StepEnd::NotStarted => (None, Some(JobStatus::Failed)),
                StepEnd::TimedOut => {
                    output_tail.push_str("\n[taskhost-runner] step timed out\n");
                    (None, Some(JobStatus::TimedOut))
                }
                StepEnd::Stopped(Stop::Cancel) => (None, Some(JobStatus::Cancelled)),
            };
            let outcome = StepOutcome {
                name: step.name.clone(),
                exit_code,
                duration_ms: elapsed_ms(step_started),
                output_tail,
            };
            if !self.report_step(&outcome).await {
                return None;
            }
            if let Some(status) = status {
                return Some(status);
            }
        }
        let done = format!("{total} of {total} steps done");
        if let Err(e) = self
            .client
            .progress(&self.registration, &self.lease.job_id, total, total, &done)
            .await
            && lost(&e)
        {
            return None;
        }
        Some(JobStatus::Succeeded)
    }

    /// A fresh directory holding a copy of the job's source, if it names one.
    async fn prepare(&self, dir: &Path) -> Result<(), String> {
        let dir = dir.to_path_buf();
        let source = self.lease.spec.workdir.clone().map(PathBuf::from);
        let run_as = self.settings.run_as.clone();
        tokio::task::spawn_blocking(move || {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("could not clear {}: {e}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("could not create {}: {e}", dir.display()))?;
            if let Some(source) = source {
                if !source.is_dir() {
                    return Err(format!(
                        "the job's source {} is not a directory on this runner",
                        source.display()
                    ));
                }
                // Copying a tree that holds the work directory would copy into itself.
                let holds_work_dir = match (source.canonicalize(), dir.canonicalize()) {
                    (Ok(source), Ok(dir)) => dir.starts_with(source),
                    _ => true,
                };
                if holds_work_dir {
                    return Err(format!(
                        "the job's source {} holds the runner's work directory",
                        source.display()
                    ));
                }
                files::copy_tree(&source, &dir)
                    .map_err(|e| format!("could not copy {}: {e}", source.display()))?;
            }
            sandbox::hand_over(&dir, run_as.as_ref())
                .map_err(|e| format!("could not hand {} to the step user: {e}", dir.display()))
        })
        .await
        .map_err(|e| format!("preparing the job directory failed: {e}"))?
    }

    async fn run_step(
        &mut self,
        step: &StepSpec,
        dir: &Path,
        deadline: Option<Instant>,
        logs: &mpsc::Sender<LogLine>,
        tail: Arc<Mutex<Tail>>,
    ) -> StepEnd {
        if let Some(stop) = self.stopped() {
            return StepEnd::Stopped(stop);
        }
        let _ = logs
            .send(LogLine {
                stream: "stdout",
                line: format!("$ {}", step.command.join(" ")),
                step: Some(step.name.clone()),
            })
            .await;
        let mut child = match self.spawn(step, dir) {
            Ok(child) => child,
            Err(e) => {
                let message = format!("could not start {}: {e}", step.command[0]);
                tail_push(&tail, &message);
                let _ = logs
                    .send(LogLine {
                        stream: "stderr",
                        line: message,
                        step: Some(step.name.clone()),
                    })
                    .await;
                return StepEnd::NotStarted;
            }
        };
        let group = child.id();
        let readers = [
            child.stdout.take().map(|out| {
                tokio::spawn(forward(
                    out,
                    "stdout",
                    step.name.clone(),
                    logs.clone(),
                    tail.clone(),
                ))
            }),
            child.stderr.take().map(|err| {
                tokio::spawn(forward(
                    err,
                    "stderr",
                    step.name.clone(),
                    logs.clone(),
                    tail.clone(),
                ))
            }),
        ];
        let timeout = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let end = tokio::select! {
            status = child.wait() => StepEnd::Exited(status.ok().and_then(|s| s.code())),
            () = timeout => StepEnd::TimedOut,
            stop = self.stop.wait_for(Option::is_some) => match stop.map(|s| *s) {
                Ok(Some(stop)) => StepEnd::Stopped(stop),
                // The runner dropped the job's stop signal: it is going away.
                _ => StepEnd::Stopped(Stop::Abandon),
            },
        };
        if !matches!(end, StepEnd::Exited(_)) {
            end_process_group(&mut child, group).await;
        }
        let readers: Vec<_> = readers.into_iter().flatten().collect();
        let drained = tokio::time::timeout(OUTPUT_DRAIN, async {
            while readers.iter().any(|reader| !reader.is_finished()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if drained.is_err() {
            // Something the step started still holds its output open: let it run on.
            self.leftovers.push((group, readers));
        }
        end
    }

    /// Ends what finished steps left running (SIGKILL to their groups) and waits for the rest
    /// of their output.
    async fn end_leftovers(&mut self) {
        for (group, readers) in self.leftovers.drain(..) {
            kill_group(group, Signal::Kill);
            for reader in readers {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, reader).await;
            }
        }
    }

    fn spawn(&self, step: &StepSpec, dir: &Path) -> std::io::Result<Child> {
        let mut command = Command::new(&step.command[0]);
        command
            .args(&step.command[1..])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The runner's own settings (its API key above all) are not the job's business: a step
        // starts from the allow-list, never the runner's whole environment.
        command.env_clear().envs(self.settings.env.iter().cloned());
        #[cfg(unix)]
        if let Some(user) = &self.settings.run_as {
            command
                .uid(user.uid)
                .gid(user.gid)
                .env("HOME", dir)
                .env("USER", &user.name)
                .env("LOGNAME", &user.name);
        }
        command
            .env("TASKHOST_JOB_ID", &self.lease.job_id)
            .env("TASKHOST_TASK_ID", &self.lease.task_id)
            .env("TASKHOST_JOB_DIR", dir);
        for (name, value) in &self.lease.spec.env {
            command.env(name, value);
        }
        #[cfg(unix)]
        command.process_group(0);
        command.spawn()
    }

    /// Reports a finished step; false when the job is no longer this runner's.
    async fn report_step(&self, outcome: &StepOutcome) -> bool {
        match self
            .client
            .step_finished(&self.registration, &self.lease.job_id, outcome)
            .await
        {
            Ok(()) => true,
            Err(e) if lost(&e) => false,
            Err(e) => {
                warn!(job = %self.lease.job_id, error = %e, "could not report a step; going on");
                true
            }
        }
    }

    async fn artifacts(&self, dir: &Path) -> Vec<Artifact> {
        if self.lease.spec.artifacts.is_empty() {
            return Vec::new();
        }
        let dir = dir.to_path_buf();
        let patterns = self.lease.spec.artifacts.clone();
        match tokio::task::spawn_blocking(move || files::describe_artifacts(&dir, &patterns)).await
        {
            Ok(Ok(artifacts)) => artifacts,
            Ok(Err(e)) => {
                warn!(job = %self.lease.job_id, error = %e, "could not describe artifacts");
                Vec::new()
            }
            Err(e) => {
                warn!(job = %self.lease.job_id, error = %e, "describing artifacts failed");
                Vec::new()
            }
        }
    }

    async fn report_finish(&self, status: JobStatus, artifacts: &[Artifact]) {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=FINISH_ATTEMPTS {
            match self
                .client
                .finish(&self.registration, &self.lease.job_id, status, artifacts)
                .await
            {
                Ok(()) => return,
                Err(ClientError::Unavailable(e)) if attempt < FINISH_ATTEMPTS => {
                    warn!(job = %self.lease.job_id, error = %e, attempt, "could not report the outcome; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    warn!(job = %self.lease.job_id, error = %e, "the outcome was not taken; the host will hand the job out again if it still wants it");
                    return;
                }
            }
        }
    }

    async fn cleanup(&self, dir: &Path) {
        if self.settings.keep_workdirs {
            return;
        }
        let dir = dir.to_path_buf();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
        if let Ok(Err(e)) = removed
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(job = %self.lease.job_id, error = %e, "could not remove the job directory");
        }
    }
}

/// Whether an error means the job is no longer this runner's to report on: the runner is
/// unknown, or the job is gone or leased to another. Any other refusal is about the report
/// alone (too large, say), which is dropped while the job goes on.
fn lost(error: &ClientError) -> bool {
    match error {
        ClientError::Unauthorized => true,
        ClientError::Refused { status, .. } => matches!(status, 403 | 404 | 409),
        ClientError::Unavailable(_) => false,
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A job id as a directory name: whatever the host sends, it cannot climb out of the work dir.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

/// The end of a step's output, both streams interleaved as they arrived.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_owned());
        while self.bytes > TAIL_BYTES && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    fn text(&self) -> String {
        let mut text = String::with_capacity(self.bytes);
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

fn tail_push(tail: &Mutex<Tail>, line: &str) {
    if let Ok(mut tail) = tail.lock() {
        tail.push(line);
    }
}

/// Reads a pipe line by line into the log (as `step`'s lines) and the tail.
async fn forward(
    pipe: impl AsyncRead + Unpin,
    stream: &'static str,
    step: String,
    logs: mpsc::Sender<LogLine>,
    tail: Arc<Mutex<Tail>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buffer.pop();
        }
        buffer.truncate(MAX_LINE_BYTES);
        let line = String::from_utf8_lossy(&buffer).into_owned();
        tail_push(&tail, &line);
        // A closed channel means the job is being abandoned; keep draining the pipe.
        let _ = logs
            .send(LogLine {
                stream,
                line,
                step: Some(step.clone()),
            })
            .await;
    }
}

/// Sends log lines in batches, in order. Resolves to whether the host refused them because
/// the job is no longer this runner's.
struct LogSender;

impl LogSender {
    fn start(
        client: HostClient,
        registration: Registration,
        job: String,
    ) -> (mpsc::Sender<LogLine>, tokio::task::JoinHandle<bool>) {
        let (sender, mut receiver) = mpsc::channel::<LogLine>(4 * LOG_BATCH_LINES);
        let task = tokio::spawn(async move {
            let mut lost_lease = false;
            while let Some(first) = receiver.recv().await {
                let mut bytes = first.line.len();
                let mut batch = vec![first];
                let deadline = tokio::time::Instant::now() + LOG_BATCH_DELAY;
                while batch.len() < LOG_BATCH_LINES && bytes < LOG_BATCH_BYTES {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(line)) => {
                            bytes += line.line.len();
                            batch.push(line);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                if lost_lease {
                    continue;
                }
                match client.logs(&registration, &job, &batch).await {
                    Ok(()) => {}
                    Err(e) if lost(&e) => lost_lease = true,
                    Err(e) => {
                        warn!(job = %job, error = %e, lines = batch.len(), "log lines dropped");
                    }
                }
            }
            lost_lease
        });
        (sender, task)
    }
}

enum Signal {
    Term,
    Kill,
}

#[cfg(unix)]
fn kill_group(group: Option<u32>, signal: Signal) {
    let Some(pid) = group.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    let signal = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: killpg only sends a signal; the group is the one the step was started in
    // (`process_group(0)` made its leader's pid the group id).
    unsafe {
        libc::killpg(pid, signal);
    }
}

#[cfg(not(unix))]
fn kill_group(_: Option<u32>, _: Signal) {}

/// SIGTERM to the step's whole process group, SIGKILL after a grace period.
async fn end_process_group(child: &mut Child, group: Option<u32>) {
    kill_group(group, Signal::Term);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        kill_group(group, Signal::Kill);
        let _ = child.kill().await;
    }
    // Anything the step started that outlived it goes too.
    kill_group(group, Signal::Kill);
}
