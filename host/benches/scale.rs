//! Cost with size: the store is filled to 10k, 100k and 1M tasks, and at each size the real
//! `taskhost` binary, in its own process on that data, is asked for listings (filtered,
//! sorted, paged) and stats over HTTP. Prints p50/p99 per request, the server's RSS and the
//! bytes on disk.
//!
//! The fill writes tasks straight into the store (its cost is not what is measured here); they
//! are external tasks of several plugins, owners, statuses and `project` labels, so no plugin
//! runs them when the host starts. `cargo bench -p taskhost --bench scale`; `SCALE_SIZES`
//! (default `10000,100000,1000000`) and `SCALE_ROUNDS` (default 50) change it.

mod support;

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, Utc};
use serde_json::json;
use support::{ServerProcess, cpu_seconds, disk_bytes, full_run, percentile, print_cpu_split};
use taskhost::model::{EventData, Executor, QueueCause, Task, TaskProgress, TaskStatus};
use taskhost::storage::{SledStorage, Storage};

const STATUSES: [TaskStatus; 5] = [
    TaskStatus::Completed,
    TaskStatus::Completed,
    TaskStatus::Failed,
    TaskStatus::Queued,
    TaskStatus::Cancelled,
];

fn task(n: usize) -> Task {
    let created = Utc::now() - Duration::seconds(3_000_000) + Duration::milliseconds(n as i64 * 3);
    let status = STATUSES[n % STATUSES.len()];
    let finished = status
        .is_terminal()
        .then(|| created + Duration::milliseconds(40));
    Task {
        id: format!("scale-{n:08}"),
        plugin: ["gitlab", "cache", "build", "analysis"][n % 4].into(),
        task_type: "job".into(),
        status,
        executor: Executor::External,
        input: json!({"n": n}),
        sealed_input: None,
        labels: [("project".to_owned(), format!("p{}", n % 50))].into(),
        priority: (n % 11) as i32 - 5,
        owner: ["admin", "alice", "bob", "carol"][(n / 4) % 4].into(),
        progress: TaskProgress::default(),
        attempt: 1,
        max_attempts: 3,
        timeout_s: 60,
        result: status
            .eq(&TaskStatus::Completed)
            .then(|| json!({"ok": true})),
        error: None,
        depends_on: Vec::new(),
        parent_id: None,
        reporters: Vec::new(),
        created_via: None,
        created_at: created,
        scheduled_at: None,
        started_at: finished.map(|_| created),
        finished_at: finished,
        updated_at: finished.unwrap_or(created),
        title: None,
        duration_seconds: None,
    }
}

/// Adds tasks `from..to` to the store in `data`.
fn fill(data: &std::path::Path, from: usize, to: usize) {
    let store = SledStorage::open(&data.join("data").join("db")).expect("store opens");
    let events = [
        EventData::Created {
            plugin: "scale".into(),
            task_type: "job".into(),
            priority: 0,
        },
        EventData::Queued {
            status: TaskStatus::Queued,
            scheduled_at: None,
            cause: QueueCause::Created,
        },
        EventData::Completed {
            result: json!({"ok": true}),
        },
    ];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        for n in from..to {
            store
                .create_task(&task(n), &events)
                .await
                .expect("task stored");
        }
        store.sync().await.expect("durable");
    });
}

const REQUESTS: &[(&str, &str)] = &[
    ("newest 20", "/api/v1/tasks?limit=20"),
    ("failed, newest 20", "/api/v1/tasks?status=failed&limit=20"),
    (
        "one plugin's queued",
        "/api/v1/tasks?plugin=cache&status=queued&limit=20",
    ),
    ("one owner's", "/api/v1/tasks?owner=alice&limit=20"),
    (
        "one project label",
        "/api/v1/tasks?label.project=p7&limit=20",
    ),
    ("by priority", "/api/v1/tasks?sort=priority&limit=20"),
    (
        "completed by update",
        "/api/v1/tasks?status=completed&sort=updated_at&limit=20",
    ),
    ("page at offset 5000", "/api/v1/tasks?offset=5000&limit=20"),
    ("stats", "/api/v1/stats"),
    ("stats of a project", "/api/v1/stats?label.project=p7"),
];

fn main() {
    let sizes: Vec<usize> = if full_run() {
        std::env::var("SCALE_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000])
    } else {
        vec![500]
    };
    let rounds = support::env_or("SCALE_ROUNDS", 50).max(1);
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio"),
    );
    let mut data = tempfile::tempdir().expect("temp dir");
    let mut filled = 0;
    for size in sizes {
        let started = Instant::now();
        fill(data.path(), filled, size);
        println!(
            "scale: {size} tasks ({} added in {:.1} s)",
            size - filled,
            started.elapsed().as_secs_f64()
        );
        filled = size;
        data = rt.block_on(async {
            // The filled tasks are weeks old: retention would prune them under the measurement.
            let host = ServerProcess::start_in(
                data,
                "[retention]\nmax_age_s = 0\nmax_finished_tasks = 0\n",
            )
            .await;
            let client = host.client(4);
            let (server_cpu, client_cpu, wall) =
                (host.cpu_seconds(), cpu_seconds("self"), Instant::now());
            for (label, path) in REQUESTS {
                let mut ms = Vec::with_capacity(rounds);
                let mut total = 0;
                for _ in 0..rounds {
                    let sent = Instant::now();
                    let response = client
                        .get(format!("{}{path}", host.base))
                        .send()
                        .await
                        .expect("request");
                    assert!(
                        response.status().is_success(),
                        "{path}: {}",
                        response.status()
                    );
                    let body: serde_json::Value = response.json().await.expect("json");
                    ms.push(sent.elapsed().as_secs_f64() * 1000.0);
                    total = body["meta"]["total"]
                        .as_u64()
                        .or(body["total"].as_u64())
                        .unwrap_or(0);
                }
                ms.sort_by(f64::total_cmp);
                println!(
                    "  {label:<22} p50 {:>8.2} ms  p99 {:>8.2} ms  (total {total})",
                    percentile(&ms, 0.5),
                    percentile(&ms, 0.99),
                );
            }
            print_cpu_split(
                "the requests",
                wall.elapsed().as_secs_f64(),
                cpu_seconds("self") - client_cpu,
                host.cpu_seconds() - server_cpu,
            );
            println!(
                "  server RSS {:.0} MB; on disk {:.1} MB ({:.0} bytes per task)",
                host.rss_mb(),
                disk_bytes(host.data_dir()) as f64 / 1e6,
                disk_bytes(host.data_dir()) as f64 / size as f64,
            );
            host.stop()
        });
    }
}
