//! The store alone, as the engine drives it for one echo task: create (two events) and wait
//! until durable, then `running` (one event) and `completed` (one event), from 64 concurrent
//! callers on a two-worker runtime, with sled and the group commit as the server runs them.
//! It shows how many tasks per second the storage layer allows before HTTP, plugins and
//! streams take their share, and the CPU each task's three writes cost.
//!
//! `cargo bench -p taskhost --bench storage_commit` prints tasks/s, CPU µs per task, writes
//! and flush syscalls per task. `STORAGE_BENCH_TASKS` (default 20000) and
//! `STORAGE_BENCH_CALLERS` (default 64) change the load.

mod support;

// The allocator the server binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use support::{cpu_seconds, disk_bytes, env_or, full_run};
use taskhost::model::{EventData, QueueCause, Task, TaskProgress, TaskStatus};
use taskhost::storage::{SledStorage, Storage};

fn task(id: String) -> Task {
    let now = Utc::now();
    Task {
        id,
        plugin: "testkit".into(),
        task_type: "echo".into(),
        status: TaskStatus::Queued,
        executor: Default::default(),
        input: json!({"n": 1}),
        sealed_input: None,
        labels: BTreeMap::new(),
        priority: 0,
        owner: "admin".into(),
        progress: TaskProgress::default(),
        attempt: 0,
        max_attempts: 3,
        timeout_s: 60,
        result: None,
        error: None,
        depends_on: Vec::new(),
        parent_id: None,
        reporters: Vec::new(),
        created_via: None,
        created_at: now,
        scheduled_at: None,
        started_at: None,
        finished_at: None,
        updated_at: now,
    }
}

/// The three writes of one echo task, as the engine makes them.
async fn one_task(storage: &dyn Storage, id: String) {
    let mut task = task(id);
    storage
        .create_task(
            &task,
            &[
                EventData::Created {
                    plugin: "testkit".into(),
                    task_type: "echo".into(),
                    priority: 0,
                },
                EventData::Queued {
                    status: TaskStatus::Queued,
                    scheduled_at: None,
                    cause: QueueCause::Created,
                },
            ],
        )
        .await
        .expect("created");
    storage.sync().await.expect("durable");
    task.status = TaskStatus::Running;
    task.attempt = 1;
    task.started_at = Some(Utc::now());
    task.updated_at = Utc::now();
    storage
        .update_task(
            &task,
            TaskStatus::Queued,
            &[EventData::Started { attempt: 1 }],
        )
        .await
        .expect("started");
    task.status = TaskStatus::Completed;
    task.result = Some(json!({"n": 1}));
    task.finished_at = Some(Utc::now());
    task.updated_at = Utc::now();
    storage
        .update_task(
            &task,
            TaskStatus::Running,
            &[EventData::Completed {
                result: json!({"n": 1}),
            }],
        )
        .await
        .expect("completed");
}

fn syscalls(pid: &str) -> u64 {
    // Writes the store made to its file: `syscw` counts write-like syscalls of the process.
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let full = full_run();
    let tasks = if full {
        env_or("STORAGE_BENCH_TASKS", 20_000)
    } else {
        200
    };
    let callers = env_or("STORAGE_BENCH_CALLERS", 64).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sled = Arc::new(SledStorage::open(&dir.path().join("db")).expect("sled opens"));
    let storage: Arc<dyn Storage> = sled.clone();
    let pid = std::process::id().to_string();
    let (cpu_before, writes_before) = (cpu_seconds(&pid), syscalls(&pid));
    let start = Instant::now();
    runtime.block_on(async {
        let mut workers = Vec::new();
        for caller in 0..callers {
            let storage = storage.clone();
            workers.push(tokio::spawn(async move {
                for n in (caller..tasks).step_by(callers) {
                    one_task(storage.as_ref(), format!("bench-{n:08}")).await;
                }
            }));
        }
        for worker in workers {
            worker.await.expect("caller finished");
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&pid) - cpu_before;
    let writes = syscalls(&pid) - writes_before;
    println!(
        "storage alone: {tasks} echo tasks (3 writes each), {callers} callers: {:.0} tasks/s ({wall:.2} s)",
        tasks as f64 / wall
    );
    println!(
        "  CPU {cpu:.2} s ({:.2} cores): {:.0} µs per task; {:.1} write syscalls per task",
        cpu / wall,
        cpu * 1e6 / tasks as f64,
        writes as f64 / tasks as f64
    );
    print_footprint(&sled, tasks, &dir.path().join("db"));
}

/// Where the bytes of the finished tasks are: live keys per family, then the files.
fn print_footprint(sled: &SledStorage, tasks: usize, path: &std::path::Path) {
    let families = sled.footprint().expect("footprint");
    let per_task = |n: u64| n as f64 / tasks as f64;
    println!("  live keys per task, by family (key + value bytes per task):");
    let (mut keys, mut bytes) = (0, 0);
    for family in &families {
        keys += family.keys;
        bytes += family.key_bytes + family.value_bytes;
        println!(
            "    {:<18} {:>6.2} keys  {:>7.0} B",
            family.family,
            per_task(family.keys),
            per_task(family.key_bytes + family.value_bytes)
        );
    }
    println!(
        "    {:<18} {:>6.2} keys  {:>7.0} B live; {:.0} B per task in the store's files",
        "all",
        per_task(keys),
        per_task(bytes),
        per_task(disk_bytes(path))
    );
    let mut files: Vec<String> = std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let size = disk_bytes(&e.path()).max(e.metadata().map_or(0, |m| m.len()));
                    format!(
                        "{} {:.1} MB",
                        e.file_name().to_string_lossy(),
                        size as f64 / 1e6
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    println!("    files: {}", files.join(", "));
}
