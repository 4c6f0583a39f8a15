//! The bundled `runner` plugin: task type `delegate` hands a CI job to a registered runner
//! whose labels match and relays how it went. Input as the runner-hub seed, plus the steps to
//! run:
//!
//! ```json
//! {"repository": "owner/repo", "job_id": "123456789", "job_name": "Build and Test",
//!  "workflow_name": "CI/CD Pipeline", "labels": ["ubuntu-latest", "node"],
//!  "metadata": {"branch": "main", "commit_sha": "abc123"},
//!  "steps": [{"name": "test", "run": ["npm", "test"], "timeout_s": 600}],
//!  "env": {"CI": "true"}, "timeout_s": 3600}
//! ```
//!
//! While no online runner carries every label, the task waits (its current step says so),
//! bounded by the task's own timeout. The job goes to whichever matching runner claims it
//! first; if that runner dies, the host puts the job back and another one takes it. The
//! result carries the runner, the job's status and every step's exit code, duration and the
//! end of its output; a failed step fails the task (`JOB_FAILED`, not retried), a job lost
//! after every redelivery fails it retryably (`JOB_LOST`).

use std::collections::BTreeMap;
use std::time::Duration;

use taskhost_plugin_sdk::runners::{self, JobRequest, JobState, JobStatus, JobStep, RunnerInfo};
use taskhost_plugin_sdk::{
    Context, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, checkpoint, export_plugin,
    json, log, sleep,
};

/// How long one wait for the job lasts before the plugin reports and checkpoints.
const WAIT_SLICE_MS: u32 = 2000;
const NO_RUNNER_POLL: Duration = Duration::from_secs(1);

struct Runner;

fn input_schema() -> Value {
    let text = json!({"type": "string", "minLength": 1, "maxLength": 512});
    json!({
        "type": "object",
        "properties": {
            "repository": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"},
            "job_id": {"type": ["string", "integer"]},
            "job_name": text,
            "workflow_name": text,
            "labels": {"type": "array", "items": text, "maxItems": 32},
            "metadata": {"type": "object"},
            "steps": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": text,
                        "run": {"type": "array", "minItems": 1, "items": {"type": "string", "maxLength": 4096}},
                        "timeout_s": {"type": "integer", "minimum": 1, "maximum": 604_800},
                    },
                    "required": ["name", "run"],
                    "additionalProperties": false,
                },
            },
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "timeout_s": {"type": "integer", "minimum": 1, "maximum": 604_800},
        },
        "required": ["repository", "job_id", "job_name", "steps"],
        "additionalProperties": false,
    })
}

fn labels_of(input: &Value) -> Vec<String> {
    input["labels"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn request(input: &Value) -> Result<JobRequest, TaskError> {
    let steps = input["steps"]
        .as_array()
        .ok_or_else(|| TaskError::invalid_input("steps must be a list"))?
        .iter()
        .map(|step| {
            let command: Vec<String> = step["run"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if command.first().is_none_or(|program| program.is_empty()) {
                return Err(TaskError::invalid_input("every step's run names a program"));
            }
            Ok(JobStep {
                name: step["name"].as_str().unwrap_or("step").to_owned(),
                command,
                timeout_s: step["timeout_s"]
                    .as_u64()
                    .and_then(|t| u32::try_from(t).ok()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env = input["env"]
        .as_object()
        .map(|e| {
            e.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let job_id = match &input["job_id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(JobRequest {
        name: input["job_name"].as_str().unwrap_or("job").to_owned(),
        labels: labels_of(input),
        steps,
        env,
        workdir: None,
        timeout_s: input["timeout_s"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok()),
        metadata: json!({
            "repository": input["repository"],
            "job_id": job_id,
            "workflow_name": input["workflow_name"],
            "metadata": input["metadata"],
        })
        .to_string(),
    })
}

/// The least loaded online runner carrying every label, if any.
fn pick(labels: &[String]) -> Result<Option<RunnerInfo>, TaskError> {
    let mut online: Vec<RunnerInfo> = runners::list(labels)?
        .into_iter()
        .filter(|r| r.online)
        .collect();
    online.sort_by(|a, b| {
        let load = |r: &RunnerInfo| f64::from(r.running_jobs) / f64::from(r.capacity.max(1));
        load(a).total_cmp(&load(b))
    });
    Ok(online.into_iter().next())
}

fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued => "queued",
        JobStatus::Running => "running",
        JobStatus::Succeeded => "succeeded",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::TimedOut => "timed_out",
        JobStatus::Lost => "lost",
    }
}

fn result_of(job: &JobState, input: &Value) -> Value {
    json!({
        "delegation_id": job.id,
        "runner_id": job.runner_id,
        "status": status_name(job.status),
        "repository": input["repository"],
        "job_id": input["job_id"],
        "job_name": input["job_name"],
        "steps": job.steps.iter().map(|s| json!({
            "name": s.name,
            "exit_code": s.exit_code,
            "duration_ms": s.duration_ms,
            "output_tail": s.output_tail,
        })).collect::<Vec<_>>(),
    })
}

impl Plugin for Runner {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "runner",
            env!("CARGO_PKG_VERSION"),
            "Delegates CI jobs to registered runners",
        )
        .task_type(TaskType::new(
            "delegate",
            "Runs a job's steps on a runner whose labels match and reports its outcome",
            input_schema(),
        ))
    }

    fn validate(_: &str, input: &Value, _: &BTreeMap<String, String>) -> Result<(), TaskError> {
        request(input).map(|_| ())
    }

    fn run(ctx: Context) -> Result<Value, TaskError> {
        let job = request(&ctx.input)?;
        let labels = labels_of(&ctx.input);
        let total_steps = job.steps.len() as u64;
        // Wait for a runner that can take it; the task's timeout bounds the wait.
        let mut announced = false;
        let chosen = loop {
            checkpoint()?;
            if let Some(runner) = pick(&labels)? {
                break runner;
            }
            if !announced {
                announced = true;
                let wanted = if labels.is_empty() {
                    "any runner".to_owned()
                } else {
                    format!("a runner with labels {}", labels.join(", "))
                };
                Progress::new()
                    .step(&format!("Waiting for {wanted}"))
                    .processed(0)
                    .total(total_steps)
                    .report();
                log::info(&format!("no online runner matches; waiting for {wanted}"));
            }
            sleep(NO_RUNNER_POLL)?;
        };
        let id = runners::dispatch(&job)?;
        log::info(&format!(
            "job {id} dispatched; {} ({}) is the least loaded matching runner",
            chosen.name, chosen.id
        ));
        let mut last = (None, usize::MAX);
        let state = loop {
            checkpoint()?;
            let state = runners::wait(&id, WAIT_SLICE_MS)?;
            let shown = (state.runner_id.clone(), state.steps.len());
            if shown != last {
                let step = match (&state.runner_id, state.status) {
                    (Some(runner), JobStatus::Running) => format!("Running on runner {runner}"),
                    _ => "Queued for a runner".to_owned(),
                };
                Progress::new()
                    .step(&step)
                    .processed(state.steps.len() as u64)
                    .total(total_steps)
                    .report();
                last = shown;
            }
            if !matches!(state.status, JobStatus::Queued | JobStatus::Running) {
                break state;
            }
        };
        let result = result_of(&state, &ctx.input);
        match state.status {
            JobStatus::Succeeded => Ok(result),
            JobStatus::Failed => {
                let failed = state
                    .steps
                    .iter()
                    .find(|s| s.exit_code != Some(0))
                    .map(|s| format!("step {} exited with {:?}", s.name, s.exit_code))
                    .unwrap_or_else(|| "the runner reported a failure".to_owned());
                Err(TaskError::fatal("JOB_FAILED", failed))
            }
            JobStatus::TimedOut => Err(TaskError::fatal(
                "JOB_TIMED_OUT",
                "the job ran out of time on the runner",
            )),
            JobStatus::Cancelled => Err(TaskError::fatal("JOB_CANCELLED", "the job was cancelled")),
            _ => Err(TaskError::retryable(
                "JOB_LOST",
                "every runner that took the job stopped answering",
            )),
        }
    }
}

export_plugin!(Runner);
