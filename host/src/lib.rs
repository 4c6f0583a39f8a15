//! taskhost: runs background tasks of many job families through one HTTP/WebSocket API, each
//! family a sandboxed WebAssembly component.
//!
//! - [`runtime`]: the wasmtime-based plugin runtime (compile, isolate, run one task).
//! - [`registry`]: which plugin versions are loaded, from where.
//! - [`bundled`]: the plugins compiled into the host.
//! - [`model`]: tasks, statuses and their state machine, events.
//! - [`storage`]: durable state behind a trait (sled embedded, or PostgreSQL).
//! - [`membership`]: this host's id and the other live hosts on a shared store.
//! - [`streams`]: live event delivery to stream subscribers (replay, backpressure).
//! - [`api`]: the HTTP API; [`app`] puts the host together; [`config`] is its settings.
//! - [`engine`]: scheduling and running tasks; every operation authorised by a [`auth::Principal`].
//! - [`runners`]: registered runners and the jobs leased to them.
//! - [`schema`]: JSON Schema pieces of the derived OpenAPI document.
//! - [`compat`]: the APIs of the systems taskhost replaces, as façades onto the engine.

#![cfg_attr(not(test), forbid(clippy::unwrap_used))]
#![recursion_limit = "256"]

pub mod agent;
pub mod api;
pub mod app;
pub mod auth;
pub mod bundled;
pub mod compat;
pub mod config;
pub mod engine;
pub mod github;
pub mod membership;
pub mod model;
pub mod policy;
pub mod registry;
pub mod runners;
pub mod runtime;
pub mod schema;
pub mod storage;
pub mod streams;

/// Locks a mutex even if a previous holder panicked. Every mutex the host locks this way
/// guards state that each critical section leaves whole (maps, counters, queues), so the
/// data stay usable and one panicking task does not take the host down with it.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
