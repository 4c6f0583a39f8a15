//! The store alone, as the engine drives it for one echo task: create (two events) and wait
//! until durable, then `running` (one event) and `completed` (one event), from 64 concurrent
//! callers on a two-worker runtime, with sled and the group commit as the server runs them.
//! It shows how many tasks per second the storage layer allows before HTTP, plugins and
//! streams take their share, and the CPU each task's three writes cost.
//!
//! `cargo bench -p taskhost --bench storage_commit` prints tasks/s, CPU µs per task, writes
//! and flush syscalls per task; with `STORAGE_BENCH_BACKEND=postgres` the same load runs on
//! PgStorage over a private cluster (fsync on) and the CPU is split between this process and
//! PostgreSQL's. `STORAGE_BENCH_TASKS` (default 20000) and
//! `STORAGE_BENCH_CALLERS` (default 64) change the load.
//!
//! On PostgreSQL a second phase dispatches the same number of queued tasks through the
//! database as several hosts would: `STORAGE_BENCH_HOSTS` pools (default 3), each with 4
//! claimers taking `STORAGE_BENCH_CLAIM_BATCH` tasks per claim (default 16) and finishing
//! each with its fencing token, one transaction per finish.

mod support;

// The allocator the server binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use support::{cluster_cpu_seconds, cpu_seconds, disk_bytes, env_or, full_run};
use taskhost::model::{EventData, QueueCause, Task, TaskProgress, TaskStatus};
use taskhost::storage::postgres::{PgSettings, PgStorage, connect, leases};
use taskhost::storage::shared::Finished;
use taskhost::storage::{SledStorage, Storage};

/// The private cluster the backend's tests start, here with fsync on.
#[path = "../src/storage/postgres/cluster.rs"]
#[allow(
    dead_code,
    reason = "the unit tests use all of it, the benchmark only part"
)]
mod cluster;

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
        title: None,
        duration_seconds: None,
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

/// Drives `tasks` echo tasks through `storage` from `callers` concurrent callers on a
/// two-worker runtime; returns the wall time in seconds.
fn drive(
    runtime: &tokio::runtime::Runtime,
    storage: &Arc<dyn Storage>,
    tasks: usize,
    callers: usize,
) -> f64 {
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
    start.elapsed().as_secs_f64()
}

fn main() {
    let full = full_run();
    let tasks = if full {
        env_or("STORAGE_BENCH_TASKS", 20_000)
    } else {
        200
    };
    let callers = env_or("STORAGE_BENCH_CALLERS", 64).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("STORAGE_BENCH_BACKEND").as_deref() == Ok("postgres") {
        postgres(&runtime, tasks, callers);
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let sled = Arc::new(SledStorage::open(&dir.path().join("db")).expect("sled opens"));
    let storage: Arc<dyn Storage> = sled.clone();
    let pid = std::process::id().to_string();
    let (cpu_before, writes_before) = (cpu_seconds(&pid), syscalls(&pid));
    let wall = drive(&runtime, &storage, tasks, callers);
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

/// The same load on PostgreSQL: a private cluster with fsync on, the host's pool of 16.
fn postgres(runtime: &tokio::runtime::Runtime, tasks: usize, callers: usize) {
    let cluster = cluster::PgCluster::start_durable();
    let settings = PgSettings {
        url: cluster.url(),
        pool_size: 16,
    };
    let storage: Arc<dyn Storage> = Arc::new(
        runtime
            .block_on(PgStorage::open(&settings))
            .expect("PostgreSQL store opens"),
    );
    let postmaster = cluster.postmaster_pid().expect("postmaster pid");
    let pid = std::process::id().to_string();
    let (client_before, server_before) = (cpu_seconds(&pid), cluster_cpu_seconds(postmaster));
    let wall = drive(runtime, &storage, tasks, callers);
    let client = cpu_seconds(&pid) - client_before;
    let server = cluster_cpu_seconds(postmaster) - server_before;
    println!(
        "storage alone on PostgreSQL (fsync on, pool 16): {tasks} echo tasks (3 transactions each), {callers} callers: {:.0} tasks/s, {:.0} transactions/s ({wall:.2} s)",
        tasks as f64 / wall,
        3.0 * tasks as f64 / wall
    );
    println!(
        "  CPU: host side {client:.2} s ({:.0} µs per task), PostgreSQL {server:.2} s ({:.0} µs per task); {:.2} cores in all",
        client * 1e6 / tasks as f64,
        server * 1e6 / tasks as f64,
        (client + server) / wall
    );
    claims(runtime, &storage, &settings, postmaster, tasks);
}

/// Dispatch through the database: `tasks` queued tasks claimed in batches and finished, by
/// claimers spread over several hosts' pools.
fn claims(
    runtime: &tokio::runtime::Runtime,
    storage: &Arc<dyn Storage>,
    settings: &PgSettings,
    postmaster: u32,
    tasks: usize,
) {
    const CLAIMERS_PER_HOST: usize = 4;
    let hosts = env_or("STORAGE_BENCH_HOSTS", 3).max(1);
    let batch = env_or("STORAGE_BENCH_CLAIM_BATCH", 16).max(1);
    runtime.block_on(async {
        let mut creators = Vec::new();
        for caller in 0..64 {
            let storage = storage.clone();
            creators.push(tokio::spawn(async move {
                for n in (caller..tasks).step_by(64) {
                    let queued = task(format!("claim-{n:08}"));
                    storage.create_task(&queued, &[]).await.expect("queued");
                }
            }));
        }
        for creator in creators {
            creator.await.expect("queued all");
        }
    });
    let pools: Vec<sqlx::PgPool> = (0..hosts)
        .map(|_| runtime.block_on(connect(settings)).expect("host pool"))
        .collect();
    let pid = std::process::id().to_string();
    let (client_before, server_before) = (cpu_seconds(&pid), cluster_cpu_seconds(postmaster));
    let start = Instant::now();
    let statements = runtime.block_on(async {
        let mut claimers = Vec::new();
        for (host, pool) in pools.iter().enumerate() {
            for _ in 0..CLAIMERS_PER_HOST {
                claimers.push(tokio::spawn(claim_until_empty(
                    pool.clone(),
                    format!("bench-host-{host}"),
                    batch,
                )));
            }
        }
        let mut transactions = 0;
        for claimer in claimers {
            transactions += claimer.await.expect("claimer finished");
        }
        transactions
    });
    let wall = start.elapsed().as_secs_f64();
    let client = cpu_seconds(&pid) - client_before;
    let server = cluster_cpu_seconds(postmaster) - server_before;
    println!(
        "dispatch through claims: {tasks} tasks, {hosts} host pools x {CLAIMERS_PER_HOST} claimers, batches of {batch}: {:.0} tasks/s ({wall:.2} s), {:.2} transactions per task",
        tasks as f64 / wall,
        statements as f64 / tasks as f64
    );
    println!(
        "  CPU: host side {:.0} µs per task, PostgreSQL {:.0} µs per task; {:.2} cores in all",
        client * 1e6 / tasks as f64,
        server * 1e6 / tasks as f64,
        (client + server) / wall
    );
}

/// Claims and completes tasks until none is ready; returns the transactions it made.
async fn claim_until_empty(pool: sqlx::PgPool, host: String, batch: usize) -> usize {
    let ttl = std::time::Duration::from_secs(60);
    let mut transactions = 0;
    loop {
        let claimed = leases::claim(&pool, &host, "testkit", batch, ttl, |task| {
            task.status = TaskStatus::Running;
            task.attempt += 1;
            vec![EventData::Started {
                attempt: task.attempt,
            }]
        })
        .await
        .expect("claim");
        transactions += 1;
        if claimed.is_empty() {
            return transactions;
        }
        let finishes = claimed.into_iter().map(|(_, lease, _)| {
            let pool = pool.clone();
            async move {
                let finished = leases::finish(&pool, &lease, |task| {
                    task.status = TaskStatus::Completed;
                    task.result = Some(json!({"n": 1}));
                    Some(vec![EventData::Completed {
                        result: json!({"n": 1}),
                    }])
                })
                .await
                .expect("finish");
                assert!(matches!(finished, Finished::Written(..)), "lease lost");
            }
        });
        let finished = futures::future::join_all(finishes).await;
        transactions += finished.len();
    }
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
