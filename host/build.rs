//! Builds the bundled plugins for `wasm32-wasip2` so that `cargo build`/`cargo test` need no
//! manual step, and embeds them in the host (`OUT_DIR/bundled.rs`).
//!
//! The plugins are built by a nested cargo in a target directory of their own (as wasmtime
//! builds its test programs), in release mode with LTO: they are small, and their speed is
//! what the benchmarks measure.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, library name) of every plugin bundled into the host.
const BUNDLED: &[(&str, &str)] = &[
    ("taskhost-plugin-testkit", "testkit"),
    ("taskhost-plugin-cache", "cache"),
    ("taskhost-plugin-analysis", "analysis"),
    ("taskhost-plugin-gitlab", "gitlab"),
    ("taskhost-plugin-runner", "runner"),
    ("taskhost-plugin-build", "build"),
];

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_owned();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("plugins");

    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("plugins").display()
    );
    println!("cargo:rerun-if-changed={}", workspace.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    ensure_wasm_target();

    let built = target_dir.join(WASM_TARGET).join("release");
    let mut generated = String::from(
        "/// Plugins compiled into the host: (name, component bytes).\n\
         pub const BUNDLED_PLUGINS: &[(&str, &[u8])] = &[\n",
    );
    let packages: Vec<&str> = BUNDLED.iter().map(|(package, _)| *package).collect();
    cargo_build_plugins(&workspace, &target_dir, &packages, &[]);
    for (_, lib) in BUNDLED {
        let dest = out_dir.join(format!("{lib}.wasm"));
        copy(&built.join(format!("{lib}.wasm")), &dest);
        writeln!(generated, "    ({lib:?}, include_bytes!({dest:?})),").expect("string write");
    }
    generated.push_str("];\n");
    std::fs::write(out_dir.join("bundled.rs"), generated).expect("write bundled.rs");

    // A second build of testkit reporting another version: the tests replace one with the
    // other while tasks run.
    let version = format!(
        "{}-next",
        env::var("CARGO_PKG_VERSION").expect("cargo sets it")
    );
    cargo_build_plugins(
        &workspace,
        &target_dir,
        &["taskhost-plugin-testkit"],
        &[("TASKHOST_TESTKIT_VERSION", version.as_str())],
    );
    let next = out_dir.join("testkit-next.wasm");
    copy(&built.join("testkit.wasm"), &next);
    println!(
        "cargo:rustc-env=TASKHOST_TESTKIT_NEXT_WASM={}",
        next.display()
    );
    println!(
        "cargo:rustc-env=TASKHOST_TESTKIT_WASM={}",
        out_dir.join("testkit.wasm").display()
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from:?} to {to:?}: {e}"));
}

/// Installs the wasm target with rustup when the toolchain lacks it, so that a fresh machine
/// needs nothing but `cargo test`.
fn ensure_wasm_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if libdir.is_some_and(|dir| dir.exists()) {
        return;
    }
    println!("cargo:warning=installing the {WASM_TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .expect("the wasm32-wasip2 target is missing and rustup could not be run");
    assert!(status.success(), "rustup target add {WASM_TARGET} failed");
}

fn cargo_build_plugins(
    workspace: &Path,
    target_dir: &Path,
    packages: &[&str],
    envs: &[(&str, &str)],
) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        // The outer build's flags and wrappers (clippy, coverage) are for host code.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    for package in packages {
        cmd.args(["--package", package]);
    }
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build plugins: {e}"));
    assert!(
        status.success(),
        "building the bundled plugins failed: {cmd:?}"
    );
}
