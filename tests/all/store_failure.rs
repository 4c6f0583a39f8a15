//! A store that fails under the host. The disk fills (the host's files may not grow past a
//! limit, `RLIMIT_FSIZE`, which fails writes as a full disk does) while tasks are created and
//! run: the host answers 503 rather than 500, stops by itself (sled takes no write after an
//! I/O error, so nothing it did from then on could be recorded), and after a restart on a
//! disk with room every task it acknowledged runs to completion, none left `running`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::crash::queue_totals;
use crate::harness::HostProcess;

/// Upper bound on the tasks the test creates before the store must have filled up.
const MAX_TASKS: usize = 20_000;
/// How far the store may grow past its size at the start of the limited run.
const HEADROOM: u64 = 2 << 20;

/// The largest file below `dir`, skipping the compile cache (which the limited run only reads).
fn largest_store_file(dir: &Path) -> u64 {
    let mut largest = 0;
    for entry in std::fs::read_dir(dir).expect("readable data dir").flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "cache") {
            continue;
        }
        let meta = entry.metadata().expect("metadata");
        largest = largest.max(if meta.is_dir() {
            largest_store_file(&path)
        } else {
            meta.len()
        });
    }
    largest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_host_and_after_a_restart_every_acknowledged_task_completes() {
    let data = tempfile::tempdir().expect("data dir");
    // A first run compiles the plugins into the data dir's cache, so that the limited run
    // writes to its store alone.
    let mut host = HostProcess::spawn(data.path());
    assert!(host.terminate(), "the first run stops cleanly");
    let limit = largest_store_file(data.path()) + HEADROOM;

    let mut host = HostProcess::spawn_with_file_limit(data.path(), limit);
    let client = host.client().await;
    let url = format!("http://{}/api/v1/tasks", host.addr);
    let mut acknowledged = BTreeSet::new();
    let (mut refused, mut unanswered) = (0usize, 0usize);
    let start = Instant::now();
    for batch in 0..MAX_TASKS / 50 {
        // Sleeps keep runs in flight when the disk fills; padded echoes fill it quickly.
        let requests = (0..50).map(|i| {
            let n = batch * 50 + i;
            let body = if n % 2 == 0 {
                json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 30, "steps": 3}, "id": format!("full-{n:05}")})
            } else {
                json!({"plugin": "testkit", "type": "echo", "input": {"pad": "x".repeat(2048)}, "id": format!("full-{n:05}")})
            };
            let (client, url) = (&client, &url);
            async move {
                let response = client.post(url).json(&body).send().await;
                (n, response)
            }
        });
        for (n, response) in futures::future::join_all(requests).await {
            let Ok(response) = response else {
                // The host stopped while the request was in flight: no promise was made.
                unanswered += 1;
                continue;
            };
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match status {
                StatusCode::ACCEPTED => {
                    acknowledged.insert(format!("full-{n:05}"));
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
                    refused += 1;
                }
                other => panic!("a failing store answered {other}: {body}"),
            }
        }
        if refused + unanswered > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the store did not fill up within 120 s"
        );
    }
    assert!(
        refused + unanswered > 0,
        "the store never filled up: {} tasks fit into {limit} bytes",
        acknowledged.len()
    );
    assert!(
        !acknowledged.is_empty(),
        "no task was accepted before the disk filled"
    );

    let status = host.wait_exit(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(75),
        "a host whose store refuses writes stops with EX_TEMPFAIL: {status}"
    );
    drop(host);

    // Room on the disk again: a restart finishes everything.
    let host = HostProcess::spawn(data.path());
    let client = host.client().await;
    let api = host.api(&client);
    let start = Instant::now();
    let total = loop {
        let (pending, done) = queue_totals(&api).await;
        if pending == 0 {
            break done;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "not finished after the restart: {pending} pending, {done} done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stored: BTreeMap<String, Value> = BTreeMap::new();
    for offset in (0..total).step_by(100) {
        let (status, page) = api
            .get(&format!("/api/v1/tasks?limit=100&offset={offset}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for task in page["data"].as_array().expect("data") {
            stored.insert(task["id"].as_str().expect("id").to_owned(), task.clone());
        }
    }
    for id in &acknowledged {
        let task = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged task {id} was lost"));
        assert_eq!(task["status"], "completed", "task {id}: {task}");
    }
    // A task whose creation got no 202 may or may not have become durable; if it did, it ran.
    for (id, task) in &stored {
        assert_eq!(task["status"], "completed", "task {id}: {task}");
    }
    eprintln!(
        "{} acknowledged, {refused} refused with 503, {unanswered} unanswered; {} stored",
        acknowledged.len(),
        stored.len()
    );
}
