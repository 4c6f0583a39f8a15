//! Delegation end to end: `delegate` tasks created over HTTP, each running one trivial step
//! (`true`) as a process on real `taskhost-runner` processes, against a host on 127.0.0.1:0.
//!
//! `cargo bench -p taskhost --bench delegation` prints tasks/s (first create to last
//! completion) and create→completed p50/p99 from the tasks' own timestamps: the cost of a
//! delegation round trip (plugin → dispatch → long-poll claim → process → reports → plugin).
//! `DELEGATION_BENCH_TASKS` (default 1000), `DELEGATION_BENCH_RUNNERS` (2) and
//! `DELEGATION_BENCH_CAPACITY` (4 jobs per runner) change the load.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::json;
use support::{BenchHost, env_or, full_run, percentile, send_json};

/// Runner processes, killed when the bench ends.
struct Runners(Vec<Child>);

impl Drop for Runners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A delegate task whose one step does nothing: what is left is the delegation's own cost.
fn noop_task() -> serde_json::Value {
    json!({
        "plugin": "runner",
        "type": "delegate",
        "input": {
            "repository": "bench/repo", "job_id": 1, "job_name": "noop",
            "labels": ["bench"], "steps": [{"name": "noop", "run": ["true"]}],
        },
    })
}

async fn finished(client: &reqwest::Client, base: &str) -> (u64, u64) {
    let queues = send_json(client.get(format!("{base}/api/v1/queues"))).await;
    queues["data"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["plugin"] == "runner"))
        .map_or((0, 0), |q| {
            (
                q["completed"].as_u64().unwrap_or(0),
                q["failed"].as_u64().unwrap_or(0),
            )
        })
}

fn main() {
    let full = full_run();
    let tasks = if full {
        env_or("DELEGATION_BENCH_TASKS", 1000)
    } else {
        20
    };
    let runner_count = env_or("DELEGATION_BENCH_RUNNERS", 2).max(1);
    let capacity = env_or("DELEGATION_BENCH_CAPACITY", 4).max(1);
    let clients = 16;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let host = BenchHost::start(|_| {}, |_| {}).await;
        let base = host.base.clone();
        let client = host.client(clients);
        let key = send_json(
            client
                .post(format!("{base}/api/v1/auth/api-keys"))
                .json(&json!({"name": "bench-runners", "permissions": ["runners:register"]})),
        )
        .await["key"]
            .as_str()
            .expect("an API key")
            .to_owned();
        let work = tempfile::tempdir().expect("work dir");
        let mut runners = Runners(Vec::new());
        for n in 0..runner_count {
            let child = Command::new(env!("CARGO_BIN_EXE_taskhost-runner"))
                .args(["--url", &base, "--name", &format!("bench-{n}"), "--label", "bench"])
                .args(["--capacity", &capacity.to_string()])
                .arg("--work-dir")
                .arg(work.path().join(format!("runner-{n}")))
                .env("TASKHOST_API_KEY", &key)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("taskhost-runner starts");
            runners.0.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listed = send_json(client.get(format!("{base}/api/v1/runners"))).await;
            if listed["data"].as_array().map_or(0, Vec::len) == runner_count {
                break;
            }
            assert!(Instant::now() < deadline, "runners did not register");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..clients {
            let (client, base, next) = (client.clone(), base.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < tasks {
                    let task = send_json(client.post(format!("{base}/api/v1/tasks")).json(&noop_task()))
                    .await;
                    ids.push(task["id"].as_str().expect("id").to_owned());
                }
                ids
            }));
        }
        let mut ids = Vec::new();
        for worker in workers {
            ids.extend(worker.await.expect("worker"));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        let (completed, failed) = loop {
            let (completed, failed) = finished(&client, &base).await;
            if completed + failed >= tasks as u64 || Instant::now() > deadline {
                break (completed, failed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let total = started.elapsed();

        let step = (ids.len() / 1000).max(1);
        let mut end_to_end = Vec::new();
        for id in ids.iter().step_by(step) {
            let task = send_json(client.get(format!("{base}/api/v1/tasks/{id}"))).await;
            let at = |f: &str| task[f].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok());
            if let (Some(created), Some(done)) = (at("created_at"), at("finished_at")) {
                end_to_end.push((done - created).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            }
        }
        end_to_end.sort_by(f64::total_cmp);
        println!(
            "delegation: {tasks} delegate tasks (one `true` step each) on {runner_count} runners x {capacity}: \
             {completed} completed, {failed} failed, {:.0} tasks/s ({:.2} s)",
            tasks as f64 / total.as_secs_f64(),
            total.as_secs_f64(),
        );
        if !end_to_end.is_empty() {
            println!(
                "  create→completed: p50 {:.1} ms, p99 {:.1} ms",
                percentile(&end_to_end, 0.5),
                percentile(&end_to_end, 0.99),
            );
        }

        // One at a time: a delegation's round trip with nothing queued ahead of it.
        let mut alone = Vec::new();
        let rounds = if full { 100 } else { 5 };
        for _ in 0..rounds {
            let sent = Instant::now();
            let task = send_json(client.post(format!("{base}/api/v1/tasks")).json(&noop_task()))
            .await;
            let id = task["id"].as_str().expect("id").to_owned();
            loop {
                let task = send_json(client.get(format!("{base}/api/v1/tasks/{id}"))).await;
                if task["status"] == "completed" || task["status"] == "failed" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            alone.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        alone.sort_by(f64::total_cmp);
        println!(
            "  one at a time ({rounds}): POST → completed seen by the client p50 {:.1} ms, p99 {:.1} ms",
            percentile(&alone, 0.5),
            percentile(&alone, 0.99),
        );
        drop(runners);
        host.stop().await;
    });
}
