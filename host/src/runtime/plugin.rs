//! One loaded plugin version: its compiled component, `InstancePre`, grants and description,
//! and the per-task instantiate-and-run path.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::{debug, instrument};
use wasmtime::component::Component;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::bindings::exports::taskhost::plugin::plugin::TaskContext;
use super::bindings::{TaskPlugin, TaskPluginPre};
use super::cache;
use super::control::{Directive, TaskControl};
use super::grants::Grants;
use super::outcome::{RunOutcome, TaskFailure, codes};
use super::services::{MemoryServices, TaskServices};
use super::state::{Deadline, HostState, Interrupt, MemoryLimiter};
use super::stdio::GuestOutput;
use super::{GuestTaskError, LogLevel, Runtime};

/// How long `describe` and `validate` may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest error message kept from a plugin.
const MAX_ERROR_MESSAGE: usize = 4096;

/// What a plugin says about itself (`describe`), checked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub task_types: Vec<TaskTypeInfo>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskTypeInfo {
    pub name: String,
    pub description: String,
    pub input_schema: serde_json::Value,
}

impl PluginInfo {
    pub fn task_type(&self, name: &str) -> Option<&TaskTypeInfo> {
        self.task_types.iter().find(|t| t.name == name)
    }
}

/// Why a component was not loaded. Every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly component: {0}")]
    NotAComponent(String),
    #[error("the component does not implement the taskhost:plugin/task-plugin@0.1.0 world: {0}")]
    WrongWorld(String),
    #[error("the plugin's describe() failed: {0}")]
    Describe(String),
    #[error("the plugin's description is invalid: {0}")]
    InvalidInfo(String),
    #[error("the grants cannot be applied: {0}")]
    Grants(String),
}

/// One task run, as the runtime needs it.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub task_id: String,
    pub task_type: String,
    /// The input, as JSON text, secrets in clear.
    pub input: String,
    pub attempt: u32,
    pub labels: Vec<(String, String)>,
    /// The task's own limit; the plugin's `limits.timeout_s` caps it.
    pub timeout: Option<Duration>,
}

/// A compiled, checked plugin version ready to run tasks. Cheap to share behind an `Arc`;
/// tasks in flight keep their version alive after a replace.
pub struct CompiledPlugin {
    info: PluginInfo,
    digest: String,
    grants: Arc<Grants>,
    pre: TaskPluginPre<HostState>,
    permits: Arc<Semaphore>,
    runtime: Runtime,
    size_bytes: usize,
}

impl std::fmt::Debug for CompiledPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPlugin")
            .field("name", &self.info.name)
            .field("version", &self.info.version)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

fn is_valid_plugin_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn is_valid_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
}

/// Says whether `bytes` is a component, a core module or neither, in words a person can act on.
fn check_component_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || !bytes.starts_with(MAGIC) {
        return Err(LoadError::NotAComponent(
            "the file does not start with the WebAssembly magic bytes".into(),
        ));
    }
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::NotAComponent(
            "this is a core WebAssembly module; build the plugin with \
             `cargo build --target wasm32-wasip2` so that it is a component"
                .into(),
        ));
    }
    Ok(())
}

fn truncate_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// Whether one of two directories holds the other (or they are the same), once symlinks and
/// `..` are resolved.
fn overlaps(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a.starts_with(&b) || b.starts_with(&a),
        // A path that cannot be resolved is refused by the grant check itself.
        _ => false,
    }
}

impl Runtime {
    /// Compiles and checks a component, calls its `describe`, and returns it ready to run.
    /// Compilation runs on a blocking thread (it takes tens of milliseconds or more).
    #[instrument(level = "info", skip_all, fields(bytes = bytes.len()))]
    pub async fn load(&self, bytes: &[u8], grants: Grants) -> Result<CompiledPlugin, LoadError> {
        check_component_header(bytes)?;
        grants
            .validate()
            .map_err(|e| LoadError::Grants(e.to_string()))?;
        if let Some(mount) = grants.fs.iter().find(|m| {
            self.config()
                .protected_dirs
                .iter()
                .any(|protected| overlaps(&m.host, protected))
        }) {
            return Err(LoadError::Grants(format!(
                "fs mount {} would expose the host's data directory (keys, database) to the plugin",
                mount.host.display()
            )));
        }
        let max_memory = self.config().max_memory_mb;
        if grants.limits.memory_mb > max_memory {
            return Err(LoadError::Grants(format!(
                "limits.memory_mb {} exceeds the host's maximum of {max_memory}",
                grants.limits.memory_mb
            )));
        }

        let digest = cache::digest(bytes);
        let component = {
            let engine = self.engine().clone();
            let cache_dir = self.config().cache_dir.clone();
            let digest = digest.clone();
            let bytes = bytes.to_vec();
            tokio::task::spawn_blocking(move || {
                cache::compile(&engine, cache_dir.as_deref(), &digest, &bytes)
            })
            .await
            .map_err(|e| LoadError::NotAComponent(format!("compilation was aborted: {e}")))?
            .map_err(|e| LoadError::NotAComponent(format!("{e:#}")))?
        };
        let pre = self.instance_pre(&component)?;

        let grants = Arc::new(grants);
        let max_concurrency = grants.limits.max_concurrency as usize;
        let mut plugin = CompiledPlugin {
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                task_types: Vec::new(),
            },
            digest,
            grants,
            pre,
            permits: Arc::new(Semaphore::new(max_concurrency)),
            runtime: self.clone(),
            size_bytes: bytes.len(),
        };
        plugin.info = plugin.describe().await?;
        debug!(name = %plugin.info.name, version = %plugin.info.version, "plugin loaded");
        Ok(plugin)
    }

    fn instance_pre(&self, component: &Component) -> Result<TaskPluginPre<HostState>, LoadError> {
        let pre = self.linker().instantiate_pre(component).map_err(|e| {
            LoadError::WrongWorld(format!(
                "{e:#}. A plugin may import only the taskhost:plugin interfaces and WASI 0.2"
            ))
        })?;
        TaskPluginPre::new(pre).map_err(|e| {
            LoadError::WrongWorld(format!(
                "{e:#}. Export `taskhost:plugin/plugin@0.1.0` (the taskhost plugin SDK's \
                 export_plugin! does)"
            ))
        })
    }
}

impl CompiledPlugin {
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Hex sha256 of the component.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// The operator's `config` map as the WIT passes it.
    fn config_pairs(&self) -> Vec<(String, String)> {
        self.grants
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Runs in flight of this version.
    pub fn running(&self) -> usize {
        self.grants.limits.max_concurrency as usize - self.permits.available_permits()
    }

    fn new_store(
        &self,
        services: Arc<dyn TaskServices>,
        control: TaskControl,
        deadline: Arc<Deadline>,
    ) -> Result<(Store<HostState>, [GuestOutput; 2]), TaskFailure> {
        let shared = self.runtime.shared().clone();
        let stdout = GuestOutput::new(
            services.clone(),
            LogLevel::Info,
            "stdout",
            shared.config.max_stdout_bytes,
        );
        let stderr = GuestOutput::new(
            services.clone(),
            LogLevel::Warn,
            "stderr",
            shared.config.max_stdout_bytes,
        );
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for mount in &self.grants.fs {
            let perms = if mount.rw {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&mount.host, &mount.guest, perms)
                .map_err(|e| {
                    TaskFailure::new(
                        codes::INSTANTIATION_FAILED,
                        format!("the fs grant for {} cannot be opened: {e}", mount.guest),
                        false,
                    )
                })?;
        }
        let memory_bytes =
            usize::try_from(self.grants.limits.memory_mb << 20).unwrap_or(usize::MAX);
        let state = HostState {
            wasi: wasi.build(),
            table: Default::default(),
            limiter: MemoryLimiter::new(memory_bytes),
            services,
            control,
            grants: self.grants.clone(),
            shared,
            deadline,
            plugin: Arc::from(self.info.name.as_str()),
        };
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            if state.control.is_killed() {
                return Err(Interrupt::Killed.into());
            }
            if state.deadline.expired() {
                return Err(Interrupt::Timeout.into());
            }
            // Yielding every tick keeps a busy guest from starving the executor.
            Ok(UpdateDeadline::Yield(1))
        });
        Ok((store, [stdout, stderr]))
    }

    async fn instantiate(
        &self,
        services: Arc<dyn TaskServices>,
        control: TaskControl,
        deadline: Arc<Deadline>,
    ) -> Result<(Store<HostState>, TaskPlugin, [GuestOutput; 2]), TaskFailure> {
        let (mut store, outputs) = self.new_store(services, control, deadline)?;
        match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => Ok((store, instance, outputs)),
            Err(e) => Err(if store.data().limiter.hit {
                self.memory_failure()
            } else {
                TaskFailure::new(
                    codes::INSTANTIATION_FAILED,
                    format!("the plugin could not be instantiated: {e:#}"),
                    true,
                )
            }),
        }
    }

    fn memory_failure(&self) -> TaskFailure {
        TaskFailure::new(
            codes::MEMORY_LIMIT_EXCEEDED,
            format!(
                "the plugin exceeded its memory limit of {} MiB",
                self.grants.limits.memory_mb
            ),
            false,
        )
    }

    async fn describe(&self) -> Result<PluginInfo, LoadError> {
        let services: Arc<dyn TaskServices> = Arc::new(MemoryServices::default());
        let deadline = Arc::new(Deadline::after(CALL_TIMEOUT));
        let (mut store, instance, _) = self
            .instantiate(services, TaskControl::new(), deadline)
            .await
            .map_err(|f| LoadError::Describe(f.message))?;
        let raw = instance
            .taskhost_plugin_plugin()
            .call_describe(&mut store)
            .await
            .map_err(|e| LoadError::Describe(format!("{e:#}")))?;

        if !is_valid_plugin_name(&raw.name) {
            return Err(LoadError::InvalidInfo(format!(
                "plugin name {:?} must be 1-63 characters of a-z, 0-9, '_' and '-', \
                 starting with a letter",
                raw.name
            )));
        }
        if raw.version.is_empty() || raw.version.len() > 64 {
            return Err(LoadError::InvalidInfo(
                "version must be 1-64 characters".into(),
            ));
        }
        if raw.task_types.is_empty() {
            return Err(LoadError::InvalidInfo(
                "the plugin declares no task types".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut task_types = Vec::with_capacity(raw.task_types.len());
        for task_type in raw.task_types {
            if !is_valid_type_name(&task_type.name) {
                return Err(LoadError::InvalidInfo(format!(
                    "task type name {:?} must be 1-128 characters of A-Z, a-z, 0-9, '_', '.', ':' and '-'",
                    task_type.name
                )));
            }
            if !seen.insert(task_type.name.clone()) {
                return Err(LoadError::InvalidInfo(format!(
                    "task type {:?} is declared twice",
                    task_type.name
                )));
            }
            let schema: serde_json::Value =
                serde_json::from_str(&task_type.input_schema).map_err(|e| {
                    LoadError::InvalidInfo(format!(
                        "the input schema of {} is not JSON: {e}",
                        task_type.name
                    ))
                })?;
            if !schema.is_object() && !schema.is_boolean() {
                return Err(LoadError::InvalidInfo(format!(
                    "the input schema of {} must be a JSON Schema object",
                    task_type.name
                )));
            }
            task_types.push(TaskTypeInfo {
                name: task_type.name,
                description: task_type.description,
                input_schema: schema,
            });
        }
        Ok(PluginInfo {
            name: raw.name,
            version: raw.version,
            description: raw.description,
            task_types,
        })
    }

    /// Asks the plugin whether `input` (JSON text) is acceptable for `task_type`.
    #[instrument(level = "debug", skip_all, fields(plugin = %self.info.name, task_type))]
    pub async fn validate(&self, task_type: &str, input: &str) -> Result<(), TaskFailure> {
        let (task_type, input) = (task_type.to_owned(), input.to_owned());
        let Ok(_slot) = self
            .runtime
            .shared()
            .instances
            .clone()
            .acquire_owned()
            .await
        else {
            return Err(TaskFailure::new(
                codes::INSTANTIATION_FAILED,
                "the runtime is shutting down",
                true,
            ));
        };
        let services: Arc<dyn TaskServices> = Arc::new(MemoryServices::default());
        let deadline = Arc::new(Deadline::after(CALL_TIMEOUT));
        let config = self.config_pairs();
        let (mut store, instance, _) = self
            .instantiate(services, TaskControl::new(), deadline)
            .await?;
        match instance
            .taskhost_plugin_plugin()
            .call_validate(&mut store, &task_type, &input, &config)
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(guest_failure(e)),
            Err(e) => Err(TaskFailure::new(
                codes::PLUGIN_TRAP,
                format!("the plugin's validate() failed: {e:#}"),
                false,
            )),
        }
    }

    /// Runs one task in a fresh instance and says how it ended. Never panics and never
    /// returns early without an outcome: every failure becomes a [`TaskFailure`].
    #[instrument(level = "debug", skip_all, fields(plugin = %self.info.name, task = %invocation.task_id))]
    pub async fn run(
        &self,
        invocation: Invocation,
        services: Arc<dyn TaskServices>,
        control: TaskControl,
    ) -> RunOutcome {
        let shared = self.runtime.shared().clone();
        let (Ok(_slot), Ok(_permit)) = (
            shared.instances.clone().acquire_owned().await,
            self.permits.clone().acquire_owned().await,
        ) else {
            return RunOutcome::Failed(TaskFailure::new(
                codes::INSTANTIATION_FAILED,
                "the runtime is shutting down",
                true,
            ));
        };
        let limit = Duration::from_secs(self.grants.limits.timeout_s);
        let timeout = invocation.timeout.map_or(limit, |t| t.min(limit));
        let deadline = Arc::new(Deadline::after(timeout));

        let (mut store, instance, outputs) = match self
            .instantiate(services.clone(), control.clone(), deadline.clone())
            .await
        {
            Ok(parts) => parts,
            Err(failure) => return RunOutcome::Failed(failure),
        };
        let context = TaskContext {
            task_id: invocation.task_id,
            task_type: invocation.task_type,
            input: invocation.input,
            attempt: invocation.attempt,
            config: self.config_pairs(),
            labels: invocation.labels,
        };
        let call = async move {
            let result = instance
                .taskhost_plugin_plugin()
                .call_run(&mut store, &context)
                .await;
            (result, store.data().limiter.hit)
        };

        let outcome = tokio::select! {
            (result, memory_hit) = call => self.classify(result, memory_hit, timeout, &services).await,
            () = control.killed() => RunOutcome::Failed(stopped(control.directive())),
            () = backstop(&deadline) => RunOutcome::Failed(timed_out(timeout)),
        };
        for output in outputs {
            output.finish().await;
        }

        // A run that failed while being stopped failed *because* it was stopped.
        match outcome {
            RunOutcome::Failed(_) if control.directive().is_stop() => {
                RunOutcome::Failed(stopped(control.directive()))
            }
            outcome => outcome,
        }
    }

    async fn classify(
        &self,
        result: wasmtime::Result<Result<String, GuestTaskError>>,
        memory_hit: bool,
        timeout: Duration,
        services: &Arc<dyn TaskServices>,
    ) -> RunOutcome {
        let max_result = self.runtime.config().max_result_bytes;
        match result {
            Ok(Ok(json)) if json.len() > max_result => RunOutcome::Failed(TaskFailure::new(
                codes::RESULT_TOO_LARGE,
                format!(
                    "the result is {} bytes; the limit is {max_result} (emit records for large outputs)",
                    json.len()
                ),
                false,
            )),
            Ok(Ok(json)) => match serde_json::from_str(&json) {
                Ok(value) => RunOutcome::Completed(value),
                Err(e) => RunOutcome::Failed(TaskFailure::new(
                    codes::INVALID_RESULT,
                    format!("the result is not valid JSON: {e}"),
                    false,
                )),
            },
            Ok(Err(error)) => RunOutcome::Failed(guest_failure(error)),
            Err(error) => {
                let failure = match error.downcast_ref::<Interrupt>() {
                    Some(Interrupt::Timeout) => timed_out(timeout),
                    Some(Interrupt::Killed) => stopped(Directive::Cancel),
                    None if memory_hit => self.memory_failure(),
                    None => {
                        let trap = error
                            .downcast_ref::<Trap>()
                            .map_or_else(|| "a host fault".to_owned(), |t| t.to_string());
                        TaskFailure::new(
                            codes::PLUGIN_TRAP,
                            format!("the plugin trapped: {trap}"),
                            false,
                        )
                    }
                };
                // The full trap, with the guest's backtrace, helps the plugin's author; it
                // holds nothing of the host's.
                services
                    .log(
                        LogLevel::Error,
                        truncate_message(format!("run ended: {error:?}")),
                    )
                    .await;
                RunOutcome::Failed(failure)
            }
        }
    }
}

fn guest_failure(error: GuestTaskError) -> TaskFailure {
    let code = if error.code.is_empty() || error.code.len() > 64 {
        "PLUGIN_ERROR".to_owned()
    } else {
        error.code
    };
    TaskFailure {
        code,
        message: truncate_message(error.message),
        retryable: error.retryable,
    }
}

fn timed_out(timeout: Duration) -> TaskFailure {
    TaskFailure::new(
        codes::TIMEOUT,
        format!(
            "the run exceeded its time limit of {} s",
            timeout.as_secs_f64()
        ),
        true,
    )
}

fn stopped(directive: Directive) -> TaskFailure {
    if directive == Directive::Shutdown {
        TaskFailure::new(
            codes::INTERRUPTED,
            "the host shut down during the run",
            true,
        )
    } else {
        TaskFailure::new(codes::CANCELLED, "the task was cancelled", false)
    }
}

/// Resolves when the deadline passes; catches runs stuck in a host call, where the epoch
/// callback never fires.
async fn backstop(deadline: &Deadline) {
    loop {
        match deadline.remaining() {
            Some(left) if left.is_zero() => return,
            Some(left) => tokio::time::sleep(left).await,
            // Suspended while paused: look again shortly.
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
