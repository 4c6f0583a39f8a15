//! Guest-side SDK for taskhost task plugins.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2` that implements [`Plugin`] and calls
//! [`export_plugin!`]. The SDK owns the generated WIT bindings (`wit/taskhost.wit`) and wraps
//! every host import in a small, typed function, so plugin code deals in `serde_json::Value`
//! and `Result` rather than raw bindings.
//!
//! # Example
//!
//! ```ignore
//! use taskhost_plugin_sdk::{export_plugin, json, Context, Plugin, PluginInfo, TaskError, TaskType};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("hello", env!("CARGO_PKG_VERSION"), "Greets people")
//!             .task_type(TaskType::new("greet", "Says hello", json!({
//!                 "type": "object",
//!                 "properties": {"name": {"type": "string"}},
//!                 "required": ["name"],
//!             })))
//!     }
//!
//!     fn run(ctx: Context) -> Result<serde_json::Value, TaskError> {
//!         let name = ctx.input["name"].as_str().unwrap_or("world");
//!         taskhost_plugin_sdk::log::info(&format!("greeting {name}"));
//!         Ok(json!({"greeting": format!("hello, {name}")}))
//!     }
//! }
//!
//! export_plugin!(Hello);
//! ```
//!
//! # Capabilities
//!
//! Every import may answer [`HostError`] with kind `NotGranted` when the operator did not
//! grant it; calls never trap. `std::fs` sees only the directories the operator preopened.

use std::collections::BTreeMap;
use std::time::Duration;

pub use serde_json::{self, Value, json};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "task-plugin",
        pub_export_macro: true,
        default_bindings_module: "taskhost_plugin_sdk::bindings",
        export_macro_name: "export_raw",
    });
}

use bindings::taskhost::plugin as imports;
pub use imports::types::{ErrorKind, HostError};

impl ErrorKind {
    /// The kind as the WIT spells it (`not-granted`, `limit-exceeded`...), for logs and results.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotGranted => "not-granted",
            ErrorKind::Denied => "denied",
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::LimitExceeded => "limit-exceeded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Failed => "failed",
        }
    }
}

/// What a plugin implements. `describe` and `run` are required; `validate` defaults to
/// accepting every input that passed the type's JSON Schema.
pub trait Plugin {
    /// Name, version, description and task types. Called once when the plugin is loaded.
    fn describe() -> PluginInfo;

    /// Checks an input beyond its JSON Schema; called when a task is created, with the
    /// operator's `config` map (the same as [`Context::config`]).
    fn validate(
        _task_type: &str,
        _input: &Value,
        _config: &BTreeMap<String, String>,
    ) -> Result<(), TaskError> {
        Ok(())
    }

    /// Runs one task to its end and returns its result.
    fn run(ctx: Context) -> Result<Value, TaskError>;
}

/// Describes a plugin to the host.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub task_types: Vec<TaskType>,
}

impl PluginInfo {
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            task_types: Vec::new(),
        }
    }

    pub fn task_type(mut self, task_type: TaskType) -> Self {
        self.task_types.push(task_type);
        self
    }
}

/// One task type and the JSON Schema of its input.
#[derive(Debug, Clone)]
pub struct TaskType {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

impl TaskType {
    pub fn new(name: &str, description: &str, input_schema: Value) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            input_schema,
        }
    }
}

/// The task being run.
#[derive(Debug, Clone)]
pub struct Context {
    pub task_id: String,
    pub task_type: String,
    pub input: Value,
    pub attempt: u32,
    /// The operator's `config` map for this plugin.
    pub config: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// A task failure: a stable code, a message for people and whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl TaskError {
    /// A failure that retrying will not fix.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure that may pass on another attempt (network, rate limit, 5xx...).
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable: true,
        }
    }

    /// Input that does not make sense for this task type.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::fatal("INVALID_INPUT", message)
    }
}

impl From<HostError> for TaskError {
    fn from(error: HostError) -> Self {
        let (code, retryable) = match error.kind {
            ErrorKind::NotGranted => ("CAPABILITY_NOT_GRANTED", false),
            ErrorKind::Denied => ("CAPABILITY_DENIED", false),
            ErrorKind::Invalid => ("HOST_CALL_INVALID", false),
            ErrorKind::NotFound => ("NOT_FOUND", false),
            ErrorKind::Unavailable => ("HOST_UNAVAILABLE", true),
            ErrorKind::LimitExceeded => ("LIMIT_EXCEEDED", false),
            ErrorKind::Timeout => ("TIMEOUT", true),
            ErrorKind::Interrupted => ("INTERRUPTED", true),
            ErrorKind::Failed => ("HOST_CALL_FAILED", true),
        };
        TaskError {
            code: code.to_owned(),
            message: error.message,
            retryable,
        }
    }
}

/// Progress reporting. Build a report with [`Progress::new`] and send it with
/// [`Progress::report`]; fields left unset keep the values last reported.
pub mod progress {
    use super::imports::reporting;

    #[derive(Debug, Clone)]
    pub struct Progress(reporting::Progress);

    impl Default for Progress {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Progress {
        pub fn new() -> Self {
            Self(reporting::Progress {
                processed: None,
                total: None,
                step: None,
                message: None,
                metrics: Vec::new(),
            })
        }

        pub fn processed(mut self, n: u64) -> Self {
            self.0.processed = Some(n);
            self
        }

        pub fn total(mut self, n: u64) -> Self {
            self.0.total = Some(n);
            self
        }

        pub fn step(mut self, step: &str) -> Self {
            self.0.step = Some(step.to_owned());
            self
        }

        pub fn message(mut self, message: &str) -> Self {
            self.0.message = Some(message.to_owned());
            self
        }

        pub fn metric(mut self, name: &str, value: f64) -> Self {
            self.0.metrics.push((name.to_owned(), value));
            self
        }

        pub fn report(&self) {
            reporting::report_progress(&self.0);
        }
    }
}

pub use progress::Progress;

/// The strings of a JSON array (other items and non-arrays give nothing): for input fields
/// whose schema already says "list of strings".
pub fn string_list(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Lines in the task's log.
pub mod log {
    use super::imports::reporting::{LogLevel, log};

    pub fn trace(message: &str) {
        log(LogLevel::Trace, message);
    }
    pub fn debug(message: &str) {
        log(LogLevel::Debug, message);
    }
    pub fn info(message: &str) {
        log(LogLevel::Info, message);
    }
    pub fn warn(message: &str) {
        log(LogLevel::Warn, message);
    }
    pub fn error(message: &str) {
        log(LogLevel::Error, message);
    }
}

/// Output items stored beside the task (one GitLab issue, one file's analysis...).
pub mod records {
    use super::{HostError, imports::reporting};
    use sha2::{Digest, Sha256};

    /// The longest key the host stores.
    pub const MAX_KEY_BYTES: usize = 256;

    /// A record key for `name` (a file path, say): the name itself when it fits the host's
    /// key limit, else `sha256:<hex>` of it (keep the name in the record's data).
    pub fn key_for(name: &str) -> String {
        if name.len() <= MAX_KEY_BYTES {
            name.to_owned()
        } else {
            format!("sha256:{}", hex::encode(Sha256::digest(name.as_bytes())))
        }
    }

    /// Stores `data` under (`collection`, `key`); the same pair again replaces it.
    pub fn emit<T: serde::Serialize + ?Sized>(
        collection: &str,
        key: &str,
        data: &T,
    ) -> Result<(), HostError> {
        let json = serde_json::to_string(data).map_err(|e| HostError {
            kind: super::ErrorKind::Invalid,
            message: format!("record is not serialisable: {e}"),
        })?;
        reporting::emit_record(collection, key, &json)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn long_names_become_their_digest() {
            assert_eq!(super::key_for("src/main.rs"), "src/main.rs");
            let long = "d/".repeat(200);
            let key = super::key_for(&long);
            assert!(key.starts_with("sha256:") && key.len() == 7 + 64, "{key}");
            assert_eq!(key, super::key_for(&long));
        }
    }
}

/// Call between units of work: waits while paused, errors with `Interrupted` when the task is
/// being cancelled or the host shuts down.
pub fn checkpoint() -> Result<(), HostError> {
    imports::control::checkpoint()
}

/// Sleeps, waking early (with `Interrupted`) on cancel or shutdown.
pub fn sleep(duration: Duration) -> Result<(), HostError> {
    imports::control::sleep(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// The plugin's private key-value store.
pub mod kv {
    use super::{HostError, imports::kv};

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, HostError> {
        kv::get(key)
    }
    pub fn set(key: &str, value: &[u8]) -> Result<(), HostError> {
        kv::set(key, value)
    }
    pub fn delete(key: &str) -> Result<(), HostError> {
        kv::delete(key)
    }
    pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, HostError> {
        kv::list_keys(prefix, limit)
    }
}

/// Outbound HTTP through the host's allow-list.
pub mod http {
    pub use super::imports::http::{Request, Response};
    use super::{HostError, imports::http};

    /// Sends `request`; any HTTP status is a response, transport failures are errors.
    pub fn fetch(request: &Request) -> Result<Response, HostError> {
        http::fetch(request)
    }

    /// A GET with the given headers.
    pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, HostError> {
        fetch(&Request {
            method: "GET".to_owned(),
            url: url.to_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: None,
            timeout_ms: None,
        })
    }

    impl Response {
        /// The first header with this name, compared case-insensitively.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }
}

/// Child tasks.
pub mod tasks {
    pub use super::imports::tasks::{SpawnRequest, TaskState};
    use super::{HostError, imports::tasks};

    /// Spawns a child task and returns its id.
    pub fn spawn(request: &SpawnRequest) -> Result<String, HostError> {
        tasks::spawn(request)
    }

    /// The current state of a child task.
    pub fn child_state(id: &str) -> Result<TaskState, HostError> {
        tasks::child_state(id)
    }
}

/// Work that runs outside the sandbox, on registered runners: find one, dispatch a job,
/// follow it. [`runners::delegate`] does all three the way a task should: it waits
/// (checkpointing, so cancel and pause work) while no runner matches, and reports as the job
/// moves.
pub mod runners {
    pub use super::imports::runners::{
        Artifact, JobRequest, JobState, JobStatus, JobStep, RunnerInfo, StepOutcome,
    };
    use super::{
        HostError, Progress, TaskError, Value, checkpoint, imports::runners, json, log, sleep,
        string_list,
    };

    pub fn list(labels: &[String]) -> Result<Vec<RunnerInfo>, HostError> {
        runners::list_runners(labels)
    }
    pub fn dispatch(job: &JobRequest) -> Result<String, HostError> {
        runners::dispatch(job)
    }
    pub fn wait(id: &str, timeout_ms: u32) -> Result<JobState, HostError> {
        runners::wait_job(id, timeout_ms)
    }
    pub fn cancel(id: &str) -> Result<(), HostError> {
        runners::cancel_job(id)
    }

    /// JSON Schema of a step list as task inputs take it:
    /// `[{"name", "run": [program, args...], "timeout_s"}]`.
    pub fn steps_schema(max_steps: u32) -> Value {
        json!({
            "type": "array",
            "maxItems": max_steps,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 512},
                    "run": {"type": "array", "minItems": 1, "items": {"type": "string", "maxLength": 4096}},
                    "timeout_s": {"type": "integer", "minimum": 1, "maximum": 604_800},
                },
                "required": ["name", "run"],
                "additionalProperties": false,
            },
        })
    }

    /// The steps of an input's step list (see [`steps_schema`]); `field` names it in errors.
    pub fn steps_from(value: &Value, field: &str) -> Result<Vec<JobStep>, TaskError> {
        let Some(list) = value.as_array() else {
            return Ok(Vec::new());
        };
        list.iter()
            .map(|step| {
                let command = string_list(&step["run"]);
                if command.first().is_none_or(|program| program.is_empty()) {
                    return Err(TaskError::invalid_input(format!(
                        "every step in {field} has a run list naming a program"
                    )));
                }
                Ok(JobStep {
                    name: step["name"].as_str().unwrap_or("step").to_owned(),
                    command,
                    timeout_s: step["timeout_s"]
                        .as_u64()
                        .and_then(|t| u32::try_from(t).ok()),
                })
            })
            .collect()
    }

    /// A job's environment from an input's `{"NAME": "value"}` object.
    pub fn env_from(value: &Value) -> Vec<(String, String)> {
        value
            .as_object()
            .map(|vars| {
                vars.iter()
                    .filter_map(|(name, value)| Some((name.clone(), value.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How long one wait for the job lasts before [`delegate`] checks for cancellation.
    const WAIT_SLICE_MS: u32 = 2000;
    const NO_RUNNER_POLL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The least loaded online runner carrying every label, if any.
    pub fn pick(labels: &[String]) -> Result<Option<RunnerInfo>, HostError> {
        let mut online: Vec<RunnerInfo> = list(labels)?.into_iter().filter(|r| r.online).collect();
        online.sort_by(|a, b| {
            let load = |r: &RunnerInfo| f64::from(r.running_jobs) / f64::from(r.capacity.max(1));
            load(a).total_cmp(&load(b))
        });
        Ok(online.into_iter().next())
    }

    /// The status as the API spells it.
    pub fn status_name(status: JobStatus) -> &'static str {
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

    /// Runs `job` on a runner carrying its labels and returns the job's final state.
    ///
    /// While no online runner matches, the task's current step says what it waits for; the
    /// wait is bounded by the task's own timeout. `observe` sees the job each time its runner
    /// or its count of finished steps changes (a redelivered job shows its new runner).
    pub fn delegate(
        job: &JobRequest,
        mut observe: impl FnMut(&JobState),
    ) -> Result<JobState, TaskError> {
        let total_steps = job.steps.len() as u64;
        let mut announced = false;
        let chosen = loop {
            checkpoint()?;
            if let Some(runner) = pick(&job.labels)? {
                break runner;
            }
            if !announced {
                announced = true;
                let wanted = if job.labels.is_empty() {
                    "any runner".to_owned()
                } else {
                    format!("a runner with labels {}", job.labels.join(", "))
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
        let id = dispatch(job)?;
        // Runners pull jobs, so the job goes to whichever matching runner has room first;
        // a full runner cannot claim, which is what spreads the load.
        log::info(&format!(
            "job {id} queued for matching runners; least loaded now: {} ({})",
            chosen.name, chosen.id
        ));
        let mut last = (None, usize::MAX);
        loop {
            checkpoint()?;
            let state = wait(&id, WAIT_SLICE_MS)?;
            let shown = (state.runner_id.clone(), state.steps.len());
            if shown != last {
                observe(&state);
                last = shown;
            }
            if !matches!(state.status, JobStatus::Queued | JobStatus::Running) {
                return Ok(state);
            }
        }
    }

    /// The task error for a job that did not succeed: a failed step, a timeout or a
    /// cancellation are final; a job lost after every redelivery may be retried.
    pub fn failure(state: &JobState) -> Option<TaskError> {
        match state.status {
            JobStatus::Succeeded | JobStatus::Queued | JobStatus::Running => None,
            JobStatus::Failed => {
                let failed = state
                    .steps
                    .iter()
                    .find(|s| s.exit_code != Some(0))
                    .map(|s| match s.exit_code {
                        Some(code) => format!("step {} exited with {code}", s.name),
                        None => format!("step {} was killed or did not start", s.name),
                    })
                    .unwrap_or_else(|| "the runner reported a failure".to_owned());
                Some(TaskError::fatal("JOB_FAILED", failed))
            }
            JobStatus::TimedOut => Some(TaskError::fatal(
                "JOB_TIMED_OUT",
                "the job ran out of time on the runner",
            )),
            JobStatus::Cancelled => {
                Some(TaskError::fatal("JOB_CANCELLED", "the job was cancelled"))
            }
            JobStatus::Lost => Some(TaskError::retryable(
                "JOB_LOST",
                "every runner that took the job stopped answering",
            )),
        }
    }
}

#[doc(hidden)]
pub mod __private {
    //! Glue used by [`export_plugin!`](crate::export_plugin); not part of the API.
    use super::*;
    use bindings::exports::taskhost::plugin::plugin as exports;

    pub fn describe<P: Plugin>() -> imports::types::PluginInfo {
        let info = P::describe();
        imports::types::PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            task_types: info
                .task_types
                .into_iter()
                .map(|t| imports::types::TaskType {
                    name: t.name,
                    description: t.description,
                    input_schema: t.input_schema.to_string(),
                })
                .collect(),
        }
    }

    fn wit_error(error: TaskError) -> exports::TaskError {
        exports::TaskError {
            code: error.code,
            message: error.message,
            retryable: error.retryable,
        }
    }

    fn parse_input(input: &str) -> Result<Value, TaskError> {
        serde_json::from_str(input)
            .map_err(|e| TaskError::invalid_input(format!("input is not valid JSON: {e}")))
    }

    pub fn validate<P: Plugin>(
        task_type: String,
        input: String,
        config: Vec<(String, String)>,
    ) -> Result<(), exports::TaskError> {
        let input = parse_input(&input).map_err(wit_error)?;
        let config = config.into_iter().collect();
        P::validate(&task_type, &input, &config).map_err(wit_error)
    }

    pub fn run<P: Plugin>(ctx: exports::TaskContext) -> Result<String, exports::TaskError> {
        let input = parse_input(&ctx.input).map_err(wit_error)?;
        let context = Context {
            task_id: ctx.task_id,
            task_type: ctx.task_type,
            input,
            attempt: ctx.attempt,
            config: ctx.config.into_iter().collect(),
            labels: ctx.labels.into_iter().collect(),
        };
        P::run(context)
            .map(|value| value.to_string())
            .map_err(wit_error)
    }
}

/// Exports a [`Plugin`] implementation as the component's `taskhost:plugin/plugin`.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __TaskhostPluginExport;

        impl $crate::bindings::exports::taskhost::plugin::plugin::Guest for __TaskhostPluginExport {
            fn describe() -> $crate::bindings::taskhost::plugin::types::PluginInfo {
                $crate::__private::describe::<$plugin>()
            }

            fn validate(
                task_type: ::std::string::String,
                input: ::std::string::String,
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), $crate::bindings::taskhost::plugin::types::TaskError>
            {
                $crate::__private::validate::<$plugin>(task_type, input, config)
            }

            fn run(
                context: $crate::bindings::taskhost::plugin::types::TaskContext,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::taskhost::plugin::types::TaskError,
            > {
                $crate::__private::run::<$plugin>(context)
            }
        }

        $crate::bindings::export_raw!(__TaskhostPluginExport);
    };
}

/// Client-supplied paths under a directory the operator granted.
///
/// Plugins that take paths in their input (files to warm, a project to analyse) must never let
/// one leave the granted root. [`paths::relative`] turns what a client sent — a relative path,
/// or an absolute one from a Windows, macOS or Linux machine that mounts the same share under
/// an operator-configured prefix — into a clean relative path, refusing `..` and anything
/// outside every prefix. The host's preopen is the real fence; this makes the refusal a clear
/// 400 at task creation instead of a failure mid-run.
pub mod paths {
    /// Why a path was refused.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum PathError {
        Empty,
        /// A `..` component: refused even when it would stay inside the root.
        ParentComponent,
        /// Absolute, and under none of the configured prefixes.
        OutsideRoot,
        /// NUL or another control character.
        InvalidCharacter,
    }

    impl std::fmt::Display for PathError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                PathError::Empty => "the path is empty",
                PathError::ParentComponent => "the path contains '..'",
                PathError::OutsideRoot => {
                    "the path is absolute and under none of the configured prefixes"
                }
                PathError::InvalidCharacter => "the path contains a control character",
            })
        }
    }

    /// Splits an operator's prefix list: entries separated by `;` or new lines, blanks ignored.
    pub fn parse_prefixes(list: &str) -> Vec<String> {
        list.split([';', '\n'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The path relative to the granted root, with `/` separators and no `.`, `..` or empty
    /// components; `""` means the root itself.
    ///
    /// Backslashes count as separators (Windows). An absolute path (`/…`, `\\…` or `C:\…`)
    /// must start with one of `prefixes`, compared component by component and, for Windows
    /// paths, case-insensitively; the prefix is removed.
    pub fn relative(path: &str, prefixes: &[String]) -> Result<String, PathError> {
        if path.trim().is_empty() {
            return Err(PathError::Empty);
        }
        if path.chars().any(char::is_control) {
            return Err(PathError::InvalidCharacter);
        }
        let windows = is_windows_absolute(path);
        let components = split(path);
        let rest = if windows || path.starts_with(['/', '\\']) {
            prefixes
                .iter()
                .find_map(|prefix| strip_prefix(&components, prefix, windows))
                .ok_or(PathError::OutsideRoot)?
        } else {
            &components[..]
        };
        if rest.contains(&"..") {
            return Err(PathError::ParentComponent);
        }
        Ok(rest.join("/"))
    }

    fn is_windows_absolute(path: &str) -> bool {
        let bytes = path.as_bytes();
        (bytes.len() >= 3
            && bytes[0].is_ascii_alphabetic()
            && bytes[1] == b':'
            && matches!(bytes[2], b'\\' | b'/'))
            || path.starts_with("\\\\")
    }

    fn split(path: &str) -> Vec<&str> {
        path.split(['/', '\\'])
            .filter(|c| !c.is_empty() && *c != ".")
            .collect()
    }

    fn strip_prefix<'a>(
        components: &'a [&'a str],
        prefix: &str,
        windows: bool,
    ) -> Option<&'a [&'a str]> {
        if windows != is_windows_absolute(prefix) {
            return None;
        }
        let prefix = split(prefix);
        if prefix.is_empty() || prefix.len() > components.len() {
            return None;
        }
        let same = components.iter().zip(&prefix).all(|(a, b)| {
            if windows {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        });
        same.then(|| &components[prefix.len()..])
    }
}

#[cfg(test)]
mod tests {
    use super::paths::{PathError, parse_prefixes, relative};

    #[test]
    fn relative_paths_are_cleaned_and_parent_components_refused() {
        assert_eq!(
            relative("00_Media/./Farm//a.mov", &[]).unwrap(),
            "00_Media/Farm/a.mov"
        );
        assert_eq!(relative("dir\\sub\\b.mov", &[]).unwrap(), "dir/sub/b.mov");
        assert_eq!(relative(".", &[]).unwrap(), "");
        assert_eq!(relative("a/../b", &[]), Err(PathError::ParentComponent));
        assert_eq!(relative("..", &[]), Err(PathError::ParentComponent));
        assert_eq!(relative("", &[]), Err(PathError::Empty));
        assert_eq!(relative("a\0b", &[]), Err(PathError::InvalidCharacter));
    }

    #[test]
    fn absolute_paths_need_a_configured_prefix() {
        let prefixes = parse_prefixes(
            "/Volumes/dmpfs/tc-east-1; C:\\dmpfs\\tc-east-1\n/mnt/lucidlink/tc-east-1;",
        );
        assert_eq!(prefixes.len(), 3);
        for path in [
            "/Volumes/dmpfs/tc-east-1/00_Media/video.mp4",
            "C:\\dmpfs\\tc-east-1\\00_Media\\video.mp4",
            "c:/DMPFS/TC-EAST-1/00_Media/video.mp4",
            "/mnt/lucidlink/tc-east-1/00_Media/video.mp4",
        ] {
            assert_eq!(
                relative(path, &prefixes).unwrap(),
                "00_Media/video.mp4",
                "{path}"
            );
        }
        // Linux paths stay case-sensitive and prefixes match whole components.
        assert_eq!(
            relative("/volumes/dmpfs/tc-east-1/a", &prefixes),
            Err(PathError::OutsideRoot)
        );
        assert_eq!(
            relative("/mnt/lucidlink/tc-east-10/a", &prefixes),
            Err(PathError::OutsideRoot)
        );
        assert_eq!(
            relative("/etc/passwd", &prefixes),
            Err(PathError::OutsideRoot)
        );
        assert_eq!(relative("/etc/passwd", &[]), Err(PathError::OutsideRoot));
        assert_eq!(
            relative("/mnt/lucidlink/tc-east-1/../../etc", &prefixes),
            Err(PathError::ParentComponent)
        );
    }
}
