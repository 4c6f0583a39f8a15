//! Cache warming throughput: the bundled `cache` plugin reading a tree inside the sandbox,
//! against native reads of the same files in the same run, with the page cache warm.
//!
//! `cargo bench -p taskhost --bench cache_throughput` builds a 1 GiB tree of 256 files in
//! nested directories (`CACHE_BENCH_MB`, `CACHE_BENCH_FILES`), reads it once to warm the page
//! cache, then measures, best of `CACHE_BENCH_ROUNDS` (3):
//! - native: one thread reading each file through a 1 MiB buffer, and 4 threads doing the
//!   same (the plugin keeps `parallel_files` files in flight, 8 unless
//!   `CACHE_BENCH_PARALLEL` says otherwise);
//! - plugin: a `warm` task through the real host (HTTP, auth, sled), timed by the plugin
//!   (first read to last byte) and end to end (POST to `completed` seen by polling);
//! - verify mode: native sha256 over every byte against the plugin checking a manifest
//!   (`CACHE_BENCH_VERIFY=0` skips it).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{BenchHost, env_or, full_run, send_json};
use taskhost::runtime::{FsMount, Grants};

const MIB: f64 = 1024.0 * 1024.0;

fn generate(root: &Path, total_mb: usize, files: usize) -> Vec<PathBuf> {
    let size = total_mb * (1 << 20) / files;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut block = vec![0u8; size];
    (0..files)
        .map(|i| {
            let path = root.join(format!("d{}/e{}/f{i:04}.bin", i % 8, i % 4));
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let bytes = state.to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &block).expect("write");
            path
        })
        .collect()
}

fn read_file(path: &Path, buffer: &mut [u8], mut hasher: Option<&mut Sha256>) -> u64 {
    let mut file = std::fs::File::open(path).expect("open");
    let mut total = 0;
    loop {
        let n = file.read(buffer).expect("read");
        if n == 0 {
            return total;
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buffer[..n]);
        }
        total += n as u64;
    }
}

fn native(files: &[PathBuf], threads: usize, buffer_size: usize) -> (u64, Duration) {
    let start = Instant::now();
    let chunk = files.len().div_ceil(threads);
    let bytes = std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut buffer = vec![0u8; buffer_size];
                    part.iter()
                        .map(|p| read_file(p, &mut buffer, None))
                        .sum::<u64>()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("reader")).sum()
    });
    (bytes, start.elapsed())
}

fn native_sha256(files: &[PathBuf]) -> (u64, Duration, Vec<String>) {
    let start = Instant::now();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0;
    let digests = files
        .iter()
        .map(|p| {
            let mut hasher = Sha256::new();
            bytes += read_file(p, &mut buffer, Some(&mut hasher));
            hex::encode(hasher.finalize())
        })
        .collect();
    (bytes, start.elapsed(), digests)
}

/// Runs one warm task; returns (bytes, plugin reading time, end-to-end time).
async fn plugin_run(
    host: &BenchHost,
    client: &reqwest::Client,
    input: Value,
) -> (u64, Duration, Duration) {
    let start = Instant::now();
    let task = send_json(
        client
            .post(format!("{}/api/v1/tasks", host.base))
            .json(&json!({"plugin": "cache", "type": "warm", "input": input})),
    )
    .await;
    let id = task["id"]
        .as_str()
        .unwrap_or_else(|| panic!("created: {task}"))
        .to_owned();
    loop {
        let task = send_json(client.get(format!("{}/api/v1/tasks/{id}", host.base))).await;
        match task["status"].as_str() {
            Some("completed") => {
                let wall = start.elapsed();
                let result = &task["result"];
                assert_eq!(result["failedFiles"], 0, "{result}");
                let bytes = result["completedSize"]["bytes"].as_u64().expect("bytes");
                let mbps = result["throughput"]["mbps"].as_f64().expect("mbps");
                let reading = Duration::from_secs_f64(bytes as f64 / MIB / mbps);
                return (bytes, reading, wall);
            }
            Some("failed" | "cancelled") => panic!("warm task ended badly: {task}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn rate(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / MIB / time.as_secs_f64()
}

fn best<T>(rounds: usize, mut run: impl FnMut() -> (u64, Duration, T)) -> (u64, Duration, T) {
    (0..rounds)
        .map(|_| run())
        .min_by_key(|(_, time, _)| *time)
        .expect("at least one round")
}

#[tokio::main]
async fn main() {
    let (total_mb, files, rounds) = if full_run() {
        (
            env_or("CACHE_BENCH_MB", 1024),
            env_or("CACHE_BENCH_FILES", 256),
            env_or("CACHE_BENCH_ROUNDS", 3),
        )
    } else {
        (16, 16, 1)
    };
    let tree = tempfile::tempdir().expect("temp dir");
    println!(
        "generating {total_mb} MiB in {files} files under {}",
        tree.path().display()
    );
    let paths = generate(tree.path(), total_mb, files);
    native(&paths, 1, 1 << 20); // page cache warm-up

    let (bytes, one, ()) = best(rounds, || {
        let (b, t) = native(&paths, 1, 1 << 20);
        (b, t, ())
    });
    // The size of every read WASI hands a guest (wasmtime-wasi caps reads at 64 KiB).
    let (_, small_reads, ()) = best(rounds, || {
        let (b, t) = native(&paths, 1, 64 << 10);
        (b, t, ())
    });
    let (_, four, ()) = best(rounds, || {
        let (b, t) = native(&paths, 4, 1 << 20);
        (b, t, ())
    });
    let (_, hashed, digests) = best(rounds.min(2), || native_sha256(&paths));

    let mut grants = Grants::default();
    grants.fs.push(FsMount {
        host: tree.path().to_owned(),
        guest: "/cache".into(),
        rw: false,
    });
    if let Ok(parallel) = std::env::var("CACHE_BENCH_PARALLEL") {
        grants.config.insert("parallel_files".into(), parallel);
    }
    let manifest: String = paths
        .iter()
        .zip(&digests)
        .map(|(p, d)| {
            format!(
                "{d}  {}\n",
                p.strip_prefix(tree.path()).expect("inside").display()
            )
        })
        .collect();
    // Beside the data directories, so the plain runs (which name those) do not read it.
    std::fs::write(tree.path().join("SHA256SUMS"), manifest).expect("manifest");
    let host = BenchHost::start(
        |config| {
            config.plugins.insert("cache".into(), grants);
        },
        |_| {},
    )
    .await;
    let client = host.client(4);
    let all_dirs = json!(["d0", "d1", "d2", "d3", "d4", "d5", "d6", "d7"]);
    let mut plugin = Vec::new();
    for _ in 0..rounds {
        plugin.push(plugin_run(&host, &client, json!({"directories": all_dirs})).await);
    }
    let (plugin_bytes, plugin_read, plugin_wall) =
        plugin.into_iter().min_by_key(|r| r.1).expect("a round");
    assert_eq!(plugin_bytes, bytes, "the plugin read every byte");
    let mut verify = Vec::new();
    let verify_rounds = if env_or("CACHE_BENCH_VERIFY", 1) == 0 {
        0
    } else {
        rounds.min(2)
    };
    for _ in 0..verify_rounds {
        verify.push(
            plugin_run(
                &host,
                &client,
                json!({"directories": all_dirs, "verify": {"manifest": "SHA256SUMS"}}),
            )
            .await,
        );
    }
    let verify_read = verify.into_iter().map(|r| r.1).min();
    host.stop().await;

    let native_one = rate(bytes, one);
    println!("cache warming, {total_mb} MiB in {files} files, page cache warm, best of {rounds}:");
    println!("  native, 1 thread, 1 MiB reads      {native_one:>9.1} MB/s");
    println!(
        "  native, 1 thread, 64 KiB reads     {:>9.1} MB/s",
        rate(bytes, small_reads)
    );
    println!(
        "  native, 4 threads                  {:>9.1} MB/s",
        rate(bytes, four)
    );
    println!(
        "  plugin (first read to last byte)   {:>9.1} MB/s  = {:.2}x native 1 thread",
        rate(plugin_bytes, plugin_read),
        rate(plugin_bytes, plugin_read) / native_one
    );
    println!(
        "  plugin task end to end (POST..completed) {:>6.1} MB/s  ({:.0} ms)",
        rate(plugin_bytes, plugin_wall),
        plugin_wall.as_secs_f64() * 1000.0
    );
    if let Some(verify_read) = verify_read {
        println!(
            "  verify: native sha256 {:>9.1} MB/s, plugin sha256 {:.1} MB/s = {:.2}x",
            rate(bytes, hashed),
            rate(bytes, verify_read),
            rate(bytes, verify_read) / rate(bytes, hashed)
        );
    }
}
