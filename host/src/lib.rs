//! taskhost: runs background tasks of many job families through one HTTP/WebSocket API, each
//! family a sandboxed WebAssembly component.
//!
//! - [`runtime`]: the wasmtime-based plugin runtime (compile, isolate, run one task).
//! - [`registry`]: which plugin versions are loaded, from where.
//! - [`bundled`]: the plugins compiled into the host.

#![cfg_attr(not(test), forbid(clippy::unwrap_used))]

pub mod bundled;
pub mod registry;
pub mod runtime;
