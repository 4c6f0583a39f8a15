//! Compiled-component cache: `<cache_dir>/<sha256 of the component>-<engine hash>.cwasm`.
//!
//! Compiling a component with Cranelift takes tens to hundreds of milliseconds; a cached one
//! deserialises in about a millisecond. Entries are only ever files this host wrote (written to
//! a temporary name, then renamed), and the engine hash keys them to this wasmtime version and
//! engine configuration, which is what makes deserialising them sound.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Hex sha256 of a component's bytes: its identity across loads.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn engine_key(engine: &Engine) -> String {
    // DefaultHasher::new() has fixed keys, so this is stable across runs of the same build.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    env!("CARGO_PKG_VERSION").hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn entry_path(dir: &Path, engine: &Engine, digest: &str) -> PathBuf {
    dir.join(format!("{digest}-{}.cwasm", engine_key(engine)))
}

/// Compiles `bytes`, going through the cache when there is one.
pub fn compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    digest: &str,
    bytes: &[u8],
) -> wasmtime::Result<Component> {
    let Some(dir) = cache_dir else {
        return Component::new(engine, bytes);
    };
    let path = entry_path(dir, engine, digest);
    if path.is_file() {
        // SAFETY: the file was written by `Engine::precompile_component` of an engine with the
        // same compatibility hash (it is in the file name), by this host, in a directory that
        // is the host's own; `deserialize_file` also checks the version and settings header.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                debug!(path = %path.display(), "compiled component loaded from cache");
                return Ok(component);
            }
            Err(e) => warn!(path = %path.display(), error = %e, "discarding unusable cache entry"),
        }
    }
    let compiled = engine.precompile_component(bytes)?;
    if let Err(e) = write_atomically(dir, &path, &compiled) {
        warn!(path = %path.display(), error = %e, "could not write the compile cache");
    }
    // SAFETY: `compiled` was just produced by `precompile_component` of this very engine.
    unsafe { Component::deserialize(engine, &compiled) }
}

fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
