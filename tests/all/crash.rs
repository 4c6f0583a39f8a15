//! Durability: `kill -9` of the real binary mid-run loses no acknowledged task, and after a
//! restart every task reaches a terminal state exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::HostProcess;

const TASKS: usize = 1000;

async fn queue_totals(api: &crate::harness::Api<'_>) -> (u64, u64) {
    let (_, queues) = api.get("/api/v1/queues").await;
    let testkit = queues["data"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["plugin"] == "testkit"))
        .cloned()
        .unwrap_or_default();
    let n = |k: &str| testkit[k].as_u64().unwrap_or(0);
    (
        n("queued") + n("scheduled") + n("running") + n("paused_tasks"),
        n("completed") + n("failed") + n("cancelled"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_host_mid_run_loses_no_task_and_ends_each_exactly_once() {
    let data = tempfile::tempdir().expect("data dir");
    let host = HostProcess::spawn(data.path());
    let client = host.client().await;
    let api = host.api(&client);

    // 1000 tasks, half cooperative sleeps and half echoes, created 50 at a time.
    let mut ids = BTreeSet::new();
    for batch in 0..TASKS / 50 {
        let requests = (0..50).map(|i| {
            let n = batch * 50 + i;
            let body = if n % 2 == 0 {
                json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 20 + (n % 5) * 20, "steps": 2}, "id": format!("crash-{n:04}")})
            } else {
                json!({"plugin": "testkit", "type": "echo", "input": {"n": n}, "id": format!("crash-{n:04}")})
            };
            let api = &api;
            async move { api.post("/api/v1/tasks", body).await }
        });
        for (status, task) in futures::future::join_all(requests).await {
            assert_eq!(status, StatusCode::ACCEPTED, "{task}");
            ids.insert(task["id"].as_str().expect("id").to_owned());
        }
    }
    assert_eq!(ids.len(), TASKS);

    // Kill it while work is in flight.
    let start = Instant::now();
    loop {
        let (pending, done) = queue_totals(&api).await;
        if done >= 100 && pending > 0 {
            break;
        }
        assert!(
            pending > 0,
            "everything finished before the kill; the test must kill mid-run"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress before the kill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    host.kill9();

    let host = HostProcess::spawn(data.path());
    let client = host.client().await;
    let api = host.api(&client);
    let start = Instant::now();
    loop {
        let (pending, done) = queue_totals(&api).await;
        if pending == 0 && done == TASKS as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not finished after restart: {pending} pending, {done} done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for offset in (0..TASKS).step_by(100) {
        let (status, page) = api
            .get(&format!("/api/v1/tasks?limit=100&offset={offset}"))
            .await;
        assert_eq!(status, StatusCode::OK);
        for task in page["data"].as_array().expect("data") {
            let id = task["id"].as_str().expect("id").to_owned();
            assert!(
                seen.insert(id.clone(), task.clone()).is_none(),
                "task {id} listed twice"
            );
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        ids,
        "every created task, and only those"
    );
    for (id, task) in &seen {
        assert_eq!(task["status"], "completed", "task {id}: {task}");
        let terminal = api
            .events(id)
            .await
            .iter()
            .filter(|e| {
                matches!(
                    e["type"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            })
            .count();
        assert_eq!(terminal, 1, "task {id} ended {terminal} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_puts_a_running_task_back_without_spending_an_attempt() {
    let data = tempfile::tempdir().expect("data dir");
    let mut host = HostProcess::spawn(data.path());
    let client = host.client().await;
    let api = host.api(&client);
    let task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 3000, "steps": 30}, "id": "graceful-1", "max_attempts": 1}))
        .await;
    assert_eq!(task["status"], "queued");
    api.wait_for("graceful-1", Duration::from_secs(10), |t| {
        t["progress"]["processed"].as_u64() >= Some(1)
    })
    .await;
    assert!(host.terminate(), "the host exits cleanly on SIGTERM");
    drop(host);

    let host = HostProcess::spawn(data.path());
    let client = host.client().await;
    let api = host.api(&client);
    let done = api.finished("graceful-1").await;
    // With max_attempts 1, a spent attempt would have failed the task as INTERRUPTED.
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 1);
    let events = api.events("graceful-1").await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "queued" && e["data"]["requeued"].is_string()),
        "the run was put back: {events:?}"
    );
}
