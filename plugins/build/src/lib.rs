//! The bundled `build` plugin: task type `build` builds and tests a project on a runner and
//! reports what the build/analysis service's clients read — tests passed and failed, coverage,
//! the files it produced. Input as that service's build request:
//!
//! ```json
//! {"project_name": "billing", "goal": "Run the test suite before release",
//!  "parameters": {"framework": "cargo", "source": "/srv/checkouts/billing",
//!                 "test_args": ["--", "--test-threads=2"], "artifacts": ["target/debug/billing"],
//!                 "env": {"RUST_LOG": "info"}, "timeout_s": 1800}}
//! ```
//!
//! The source is a directory on the runner: `parameters.source`, or the operator's
//! `project.<project_name>` config entry; config `source_prefixes` (`;`-separated) limits
//! where sources may be. The runner copies it into a fresh job directory, so
//! builds never write into it. What runs per framework is in [`plan`]; which runner runs it,
//! by labels (`parameters.labels`, else the framework's label, e.g. `rust` for cargo). Test
//! counts and coverage come from the summary lines the tools print ([`summary`]).
//!
//! Each step's outcome, with its test counts, is a record in `steps`. A failed step fails the
//! task: `TESTS_FAILED` when the test step ran and reported failures, `BUILD_FAILED`
//! otherwise; the message carries the counts.

mod plan;
mod summary;

use std::collections::BTreeMap;

use taskhost_plugin_sdk::runners::{self, JobRequest, JobState, JobStatus, StepOutcome};
use taskhost_plugin_sdk::{
    Context, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, json, log, paths, records,
    string_list,
};

use plan::{APPLICATION_FRAMEWORKS, FRAMEWORKS, Framework};
use summary::TestCounts;

/// The plugin (public so that a native build, which exports nothing, still checks it all).
pub struct Build;

fn input_schema() -> Value {
    let text = json!({"type": "string", "minLength": 1, "maxLength": 512});
    let steps = runners::steps_schema(50);
    let frameworks: Vec<&str> = FRAMEWORKS
        .iter()
        .copied()
        .chain(APPLICATION_FRAMEWORKS.iter().map(|(name, _)| *name))
        .collect();
    json!({
        "type": "object",
        "properties": {
            "project_name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},
            "goal": {"type": "string", "maxLength": 2000},
            "parameters": {
                "type": "object",
                "properties": {
                    "framework": {"enum": frameworks, "description": "a toolchain, an application framework (its toolchain), or auto (the default): chosen on the runner from the source's files"},
                    "source": {"type": "string", "minLength": 1, "maxLength": 4096},
                    "labels": {"type": "array", "items": text, "maxItems": 32},
                    "setup": steps,
                    "steps": steps,
                    "test_args": {"type": "array", "items": {"type": "string", "maxLength": 4096}, "maxItems": 100},
                    "test_timeout_s": {"type": "integer", "minimum": 1, "maximum": 604_800},
                    "coverage": {"type": "boolean"},
                    "env": {"type": "object", "additionalProperties": {"type": "string"}},
                    "artifacts": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 1024}, "maxItems": 32},
                    "timeout_s": {"type": "integer", "minimum": 1, "maximum": 604_800},
                    "extra": {"type": "object", "description": "the client's other parameters (database, include_tests…), kept with the task and not used by the build"},
                },
                "additionalProperties": false,
            },
        },
        "required": ["project_name"],
        "additionalProperties": false,
    })
}

/// Everything the run needs, checked.
struct BuildPlan {
    framework: Framework,
    job: JobRequest,
    test_step: Option<&'static str>,
}

fn plan_of(input: &Value, config: &BTreeMap<String, String>) -> Result<BuildPlan, TaskError> {
    let project = input["project_name"]
        .as_str()
        .ok_or_else(|| TaskError::invalid_input("project_name is required"))?;
    let parameters = &input["parameters"];
    let framework = match parameters["framework"].as_str() {
        None => Framework::Auto,
        Some(name) => Framework::from_client(name).ok_or_else(|| {
            TaskError::invalid_input(format!(
                "parameters.framework is one of {}, or an application framework ({})",
                FRAMEWORKS.join(", "),
                APPLICATION_FRAMEWORKS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?,
    };
    let source = match parameters["source"].as_str() {
        Some(source) => source.to_owned(),
        None => config
            .get(&format!("project.{project}"))
            .cloned()
            .ok_or_else(|| {
                TaskError::invalid_input(format!(
                    "no source for project {project}: give parameters.source, or ask the operator to configure project.{project}"
                ))
            })?,
    };
    if !source.starts_with('/') || source.split('/').any(|part| part == "..") {
        return Err(TaskError::invalid_input(
            "parameters.source is an absolute directory on the runner, without '..'",
        ));
    }
    // An operator can pin sources to where checkouts live on the runners.
    if let Some(prefixes) = config.get("source_prefixes") {
        let prefixes = paths::parse_prefixes(prefixes);
        if paths::relative(&source, &prefixes).is_err() {
            return Err(TaskError::invalid_input(format!(
                "parameters.source must be under one of {}",
                prefixes.join(", ")
            )));
        }
    }
    let (steps, test_step) = plan::plan(framework, parameters)?;
    let labels = if parameters["labels"].is_array() {
        string_list(&parameters["labels"])
    } else {
        framework.default_labels()
    };
    let job = JobRequest {
        name: format!("build {project}"),
        labels,
        steps,
        env: runners::env_from(&parameters["env"]),
        workdir: Some(source),
        timeout_s: parameters["timeout_s"]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok()),
        metadata: json!({
            "project_name": project,
            "goal": input["goal"],
            "framework": framework.name(),
        })
        .to_string(),
        artifacts: string_list(&parameters["artifacts"]),
    };
    Ok(BuildPlan {
        framework,
        job,
        test_step,
    })
}

/// Test counts of one step's output, if it holds a summary.
fn step_tests(plan: &BuildPlan, step: &StepOutcome) -> Option<TestCounts> {
    let relevant = plan.test_step.is_none_or(|name| step.name == name);
    if !relevant {
        return None;
    }
    summary::tests(plan.framework.summary_format(), &step.output_tail)
}

fn step_json(plan: &BuildPlan, step: &StepOutcome) -> Value {
    json!({
        "name": step.name,
        "exit_code": step.exit_code,
        "duration_ms": step.duration_ms,
        "tests": step_tests(plan, step),
        "output_tail": step.output_tail,
    })
}

fn totals(plan: &BuildPlan, state: &JobState) -> (Option<TestCounts>, Option<f64>) {
    let mut total: Option<TestCounts> = None;
    let mut coverage = None;
    for step in &state.steps {
        if let Some(counts) = step_tests(plan, step) {
            total.get_or_insert_with(TestCounts::default).add(counts);
        }
        if let Some(value) = summary::coverage(&step.output_tail) {
            coverage = Some(value);
        }
    }
    (total, coverage)
}

/// The toolchain that ran: the planned one, or what `auto` chose on the runner.
fn framework_run(plan: &BuildPlan, state: &JobState) -> &'static str {
    match plan.framework {
        Framework::Auto => state
            .steps
            .iter()
            .find_map(|s| plan::detected(&s.output_tail))
            .map_or("auto", Framework::name),
        other => other.name(),
    }
}

fn result_of(plan: &BuildPlan, state: &JobState, input: &Value) -> Value {
    let (tests, coverage) = totals(plan, state);
    let duration_ms: u64 = state.steps.iter().map(|s| s.duration_ms).sum();
    json!({
        "project_name": input["project_name"],
        "goal": input["goal"],
        "framework": framework_run(plan, state),
        "requested_framework": input["parameters"]["framework"],
        "status": runners::status_name(state.status),
        "runner_id": state.runner_id,
        "delegation_id": state.id,
        "tests_passed": tests.map(|t| t.passed),
        "tests_failed": tests.map(|t| t.failed),
        "tests_skipped": tests.map(|t| t.skipped),
        "tests_total": tests.map(|t| t.total()),
        "test_coverage": coverage,
        "generated_files": state.artifacts.iter().map(|a| a.path.clone()).collect::<Vec<_>>(),
        "artifacts": state.artifacts.iter().map(|a| json!({
            "path": a.path,
            "size_bytes": a.size_bytes,
            "sha256": a.sha256,
        })).collect::<Vec<_>>(),
        "duration_ms": duration_ms,
        "steps": state.steps.iter().map(|s| step_json(plan, s)).collect::<Vec<_>>(),
    })
}

fn failure(plan: &BuildPlan, state: &JobState) -> Option<TaskError> {
    let error = runners::failure(state)?;
    if state.status != JobStatus::Failed {
        return Some(error);
    }
    let (tests, _) = totals(plan, state);
    let failed_step = state.steps.iter().find(|s| s.exit_code != Some(0));
    let in_tests = failed_step.is_some_and(|s| plan.test_step.is_none_or(|t| s.name == t));
    Some(match tests {
        Some(t) if in_tests && t.failed > 0 => TaskError::fatal(
            "TESTS_FAILED",
            format!(
                "{} of {} tests failed ({} passed, {} skipped); {}",
                t.failed,
                t.total(),
                t.passed,
                t.skipped,
                error.message
            ),
        ),
        _ => TaskError::fatal("BUILD_FAILED", error.message),
    })
}

impl Plugin for Build {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "build",
            env!("CARGO_PKG_VERSION"),
            "Builds and tests projects on runners and reports their test counts",
        )
        .task_type(TaskType::new(
            "build",
            "Builds a project's source on a runner with its toolchain (cargo, npm, pytest, go, make or explicit steps) and reports tests passed and failed",
            input_schema(),
        ))
    }

    fn validate(
        _: &str,
        input: &Value,
        config: &BTreeMap<String, String>,
    ) -> Result<(), TaskError> {
        plan_of(input, config).map(|_| ())
    }

    fn run(ctx: Context) -> Result<Value, TaskError> {
        let plan = plan_of(&ctx.input, &ctx.config)?;
        let names: Vec<String> = plan.job.steps.iter().map(|s| s.name.clone()).collect();
        log::info(&format!(
            "building {} with {}: {}",
            ctx.input["project_name"].as_str().unwrap_or(""),
            plan.framework.name(),
            names.join(" → ")
        ));
        let total = names.len() as u64;
        let state = runners::delegate(&plan.job, |state| {
            // A finished step is reported here with its tests; the runner reports each step
            // as it starts.
            if let Some(step) = state.steps.last() {
                let _ = records::emit("steps", &step.name, &step_json(&plan, step));
                let mut progress = Progress::new()
                    .processed(state.steps.len() as u64)
                    .total(total)
                    .step(&format!(
                        "{} finished (exit {:?})",
                        step.name, step.exit_code
                    ));
                if let Some(tests) = step_tests(&plan, step) {
                    progress = progress
                        .metric("tests_passed", tests.passed as f64)
                        .metric("tests_failed", tests.failed as f64);
                }
                progress.report();
            } else if state.status == JobStatus::Running {
                Progress::new()
                    .processed(0)
                    .total(total)
                    .step("Started on a runner")
                    .report();
            }
        })?;
        match failure(&plan, &state) {
            Some(error) => Err(error),
            None => Ok(result_of(&plan, &state, &ctx.input)),
        }
    }
}

// Built natively (the unit tests, a plain `cargo build` of the workspace) the crate has no
// component to export, and the WIT export names are not valid native symbol names.
#[cfg(target_arch = "wasm32")]
taskhost_plugin_sdk::export_plugin!(Build);
