//! The bundled `runner` plugin: task type `delegate` hands a CI job to a registered runner
//! whose labels match and relays how it went. Input as the runner-hub seed, plus the steps to
//! run:
//!
//! ```json
//! {"repository": "owner/repo", "job_id": "123456789", "job_name": "Build and Test",
//!  "workflow_name": "CI/CD Pipeline", "labels": ["ubuntu-latest", "node"],
//!  "metadata": {"branch": "main", "commit_sha": "abc123"},
//!  "steps": [{"name": "test", "run": ["npm", "test"], "timeout_s": 600}],
//!  "env": {"CI": "true"}, "artifacts": ["dist/*.tar.gz"], "timeout_s": 3600}
//! ```
//!
//! While no online runner carries every label, the task waits (its current step says so),
//! bounded by the task's own timeout. The job goes to whichever matching runner claims it
//! first; if that runner dies, the host puts the job back and another one takes it. The
//! result carries the runner, the job's status, every step's exit code, duration and the
//! end of its output, and the size and SHA-256 of each artifact the job left; a failed step fails the task (`JOB_FAILED`, not retried), a job lost
//! after every redelivery fails it retryably (`JOB_LOST`).

use std::collections::BTreeMap;

use taskhost_plugin_sdk::runners::{self, JobRequest, JobState, JobStatus};
use taskhost_plugin_sdk::{
    Context, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, export_plugin, json,
    string_list,
};

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
            "steps": runners::steps_schema(100),
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "artifacts": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 1024}, "maxItems": 32},
            "timeout_s": {"type": "integer", "minimum": 1, "maximum": 604_800},
        },
        "required": ["repository", "job_id", "job_name", "steps"],
        "additionalProperties": false,
    })
}

fn request(input: &Value) -> Result<JobRequest, TaskError> {
    let steps = runners::steps_from(&input["steps"], "steps")?;
    if steps.is_empty() {
        return Err(TaskError::invalid_input("steps lists at least one step"));
    }
    let job_id = match &input["job_id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(JobRequest {
        name: input["job_name"].as_str().unwrap_or("job").to_owned(),
        labels: string_list(&input["labels"]),
        steps,
        env: runners::env_from(&input["env"]),
        workdir: None,
        artifacts: string_list(&input["artifacts"]),
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

fn result_of(job: &JobState, input: &Value) -> Value {
    json!({
        "delegation_id": job.id,
        "runner_id": job.runner_id,
        "status": runners::status_name(job.status),
        "repository": input["repository"],
        "job_id": input["job_id"],
        "job_name": input["job_name"],
        "steps": job.steps.iter().map(|s| json!({
            "name": s.name,
            "exit_code": s.exit_code,
            "duration_ms": s.duration_ms,
            "output_tail": s.output_tail,
        })).collect::<Vec<_>>(),
        "artifacts": job.artifacts.iter().map(|a| json!({
            "path": a.path,
            "size_bytes": a.size_bytes,
            "sha256": a.sha256,
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
        let total_steps = job.steps.len() as u64;
        let state = runners::delegate(&job, |state| {
            let step = match (&state.runner_id, state.status) {
                (Some(runner), JobStatus::Running) => format!("Running on runner {runner}"),
                _ => "Queued for a runner".to_owned(),
            };
            Progress::new()
                .step(&step)
                .processed(state.steps.len() as u64)
                .total(total_steps)
                .report();
        })?;
        match runners::failure(&state) {
            None => Ok(result_of(&state, &ctx.input)),
            Some(error) => Err(error),
        }
    }
}

export_plugin!(Runner);
