//! The sandboxed plugin runtime: one wasmtime engine that compiles plugin components, checks
//! them against the `task-plugin` world and runs each task in a fresh instance.
//!
//! This module knows nothing of storage, scheduling or HTTP. Orchestration gives each run a
//! [`TaskServices`] (where progress, logs, records and child tasks go) and a [`TaskControl`]
//! (pause, cancel, kill), and gets back a [`RunOutcome`].
//!
//! # Isolation
//!
//! - Nothing ambient: no environment, arguments, sockets or files; only the directories the
//!   operator preopened ([`Grants::fs`]) and the hosts it allowed ([`Grants::http`]).
//! - A fresh `Store` and instance per task, created from an `InstancePre` made once per plugin
//!   version, so that nothing leaks from one task to the next.
//! - Memory is capped per plugin; wall-clock time by epoch interruption (a tight loop without
//!   host calls is still stopped) with an async backstop for runs blocked in host calls;
//!   concurrent instances are capped per plugin and for the whole host.
//!
//! # Lifetimes
//!
//! [`Runtime`] lives as long as the host; [`CompiledPlugin`] as long as a plugin version is
//! loaded or has runs in flight (replacing a plugin leaves running tasks on the old version);
//! a `Store` as long as one run.

mod bindings;
mod cache;
mod control;
mod grants;
mod host;
mod outcome;
mod plugin;
mod services;
mod state;
mod stdio;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use bindings::taskhost::plugin::reporting::{LogLevel, Progress};
pub use bindings::taskhost::plugin::runners::{
    Artifact, JobRequest, JobState, JobStatus, JobStep, RunnerInfo, StepOutcome,
};
pub use bindings::taskhost::plugin::tasks::{SpawnRequest, TaskState};
pub use bindings::taskhost::plugin::types::{ErrorKind, HostError, TaskError as GuestTaskError};
pub use cache::digest;
pub use control::{Directive, TaskControl};
pub use grants::{
    AccessGrant, FsMount, Grants, GrantsError, HostPattern, HttpGrant, Limits, RunnersGrant,
};
pub use outcome::{RunOutcome, TaskFailure, codes};
pub use plugin::{CompiledPlugin, Invocation, LoadError, PluginInfo, TaskTypeInfo};
pub use services::{MemoryServices, TaskServices, host_error};

use host::HttpClient;
use state::HostState;

/// Runtime settings, fixed for the life of the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (keyed by content hash and engine settings).
    /// `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Directories no grant may preopen, nor any directory inside or above them: the host's
    /// data directory (keys, database), set by the host at start.
    #[serde(skip)]
    pub protected_dirs: Vec<PathBuf>,
    /// Instances alive at once across all plugins; sizes the pooling allocator.
    pub max_instances: u32,
    /// Largest memory any plugin may be granted, in MiB.
    pub max_memory_mb: u64,
    /// How often the epoch advances; the granularity of timeouts and forced kills.
    pub epoch_tick_ms: u64,
    /// Largest result a run may return.
    pub max_result_bytes: usize,
    /// Largest single record.
    pub max_record_bytes: usize,
    /// Longest log line kept (longer ones are cut).
    pub max_log_line_bytes: usize,
    /// Guest stdout/stderr logged per stream and run.
    pub max_stdout_bytes: usize,
    /// Largest value in a plugin's key-value store.
    pub max_kv_value_bytes: usize,
    /// Largest HTTP response body a plugin may receive.
    pub max_http_response_bytes: usize,
    /// Longest HTTP request a plugin may make.
    #[serde(with = "seconds")]
    pub max_http_timeout: Duration,
    /// Use the pooling allocator (faster instantiation; reserves address space up front).
    /// Falls back to on-demand allocation when the reservation fails.
    pub pooling: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            protected_dirs: Vec::new(),
            max_instances: 256,
            max_memory_mb: 4096,
            epoch_tick_ms: 10,
            max_result_bytes: 1 << 20,
            max_record_bytes: 1 << 20,
            max_log_line_bytes: 16 * 1024,
            max_stdout_bytes: 1 << 20,
            max_kv_value_bytes: 1 << 20,
            max_http_response_bytes: 16 << 20,
            max_http_timeout: Duration::from_secs(120),
            pooling: true,
        }
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("could not create the wasm engine: {0}")]
    Engine(String),
    #[error("could not link the host interfaces: {0}")]
    Link(String),
    #[error("could not create the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// State shared by every store of the runtime.
pub(crate) struct RuntimeShared {
    pub(crate) config: RuntimeConfig,
    pub(crate) http: HttpClient,
    /// Bounds live instances host-wide (the pool has a fixed number of slots).
    pub(crate) instances: Arc<Semaphore>,
}

/// The plugin runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    shared: Arc<RuntimeShared>,
    pooling: bool,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Release);
    }
}

/// Bytes of each linear memory and table reset in place on reuse (see [`engine_config`]);
/// bounded so that warm slots add little resident memory. 2 MiB covers a Rust guest's stack
/// (the first MiB) and the start of its heap, which every run writes.
const LINEAR_MEMORY_KEEP_RESIDENT: usize = 2 << 20;
const TABLE_KEEP_RESIDENT: usize = 16 << 10;
const DECOMMIT_BATCH: usize = 16;

fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .parallel_compilation(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances.max(1);
        // A Rust component has one memory and a handful of core instances and tables.
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(8))
            .max_memory_size(usize::try_from(config.max_memory_mb << 20).unwrap_or(usize::MAX))
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(16)
            // Reset a freed slot's first pages with memset rather than madvise: every madvise
            // of a slot in use on another core costs a TLB shootdown, once per task, and so
            // does each copy-on-write fault of the next run writing those pages again. Where
            // the kernel can say which pages were touched (PAGEMAP_SCAN, Linux 6.7), only
            // those are reset, so the bound costs nothing for pages a run never wrote.
            .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            // What is still decommitted is, in batches.
            .decommit_batch_size(DECOMMIT_BATCH);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let (engine, pooling) = if config.pooling {
            match Engine::new(&engine_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(e) => {
                    warn!(error = %e, "pooling allocator unavailable; falling back to on-demand");
                    let engine = Engine::new(&engine_config(&config, false))
                        .map_err(|e| RuntimeError::Engine(e.to_string()))?;
                    (engine, false)
                }
            }
        } else {
            let engine = Engine::new(&engine_config(&config, false))
                .map_err(|e| RuntimeError::Engine(e.to_string()))?;
            (engine, false)
        };

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Link(e.to_string()))?;
        bindings::TaskPlugin::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(|e| RuntimeError::Link(e.to_string()))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(
            engine.clone(),
            Duration::from_millis(config.epoch_tick_ms.max(1)),
            stop_ticker.clone(),
        )
        .map_err(|e| RuntimeError::Engine(format!("could not start the epoch ticker: {e}")))?;

        let shared = Arc::new(RuntimeShared {
            http: HttpClient::new()?,
            instances: Arc::new(Semaphore::new(config.max_instances.max(1) as usize)),
            config,
        });
        info!(pooling, "plugin runtime ready");
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                shared,
                pooling,
                stop_ticker,
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.shared.config
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.inner.pooling
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }

    pub(crate) fn shared(&self) -> &Arc<RuntimeShared> {
        &self.inner.shared
    }
}

/// Advances the engine's epoch on a plain thread, so that timeouts fire even when every tokio
/// worker is busy running guest code.
fn spawn_epoch_ticker(
    engine: Engine,
    tick: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("taskhost-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(tick);
                engine.increment_epoch();
            }
        })
        .map(drop)
}
