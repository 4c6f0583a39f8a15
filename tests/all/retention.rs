//! Retention: a host that creates far more tasks than it keeps stays at the size it keeps.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestServer, eventually};

const KEEP: u64 = 100;
const WAVES: usize = 6;
const PER_WAVE: usize = 100;

#[tokio::test]
async fn finished_tasks_beyond_the_retained_count_are_pruned_with_their_events() {
    let server = TestServer::builder()
        .config(|c| {
            c.retention.max_finished_tasks = KEEP;
            c.retention.sweep_interval_s = 1;
            c.retention.batch = 40;
        })
        .start()
        .await;
    let api = server.api();
    for wave in 0..WAVES {
        for n in 0..PER_WAVE {
            api.create(json!({"plugin": "testkit", "type": "echo", "input": {"n": n}, "id": format!("w{wave}-{n:03}")}))
                .await;
        }
        // A sweep runs every second; the store never holds much more than it keeps.
        let stored = eventually(Duration::from_secs(30), || async {
            let (_, page) = api.get("/api/v1/tasks?limit=1").await;
            let (_, queued) = api.get("/api/v1/tasks?status=queued&limit=1").await;
            let total = page["meta"]["total"].as_u64().unwrap_or(u64::MAX);
            let pending = queued["meta"]["total"].as_u64().unwrap_or(u64::MAX);
            if pending == 0 && total <= KEEP {
                Ok(total)
            } else {
                Err(format!("wave {wave}: {total} stored, {pending} queued"))
            }
        })
        .await;
        assert!(stored <= KEEP);
    }
    // The first waves are gone with their events; the newest tasks are kept whole.
    let (status, _) = api.get("/api/v1/tasks/w0-000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("/api/v1/tasks/w0-000/events").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let last = format!("w{}-{:03}", WAVES - 1, PER_WAVE - 1);
    let (status, task) = api.get(&format!("/api/v1/tasks/{last}")).await;
    assert_eq!(
        (status, task["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    assert!(
        api.events(&last).await.len() >= 4,
        "created, queued, started, completed"
    );
    let (_, stats) = api.get("/api/v1/stats").await;
    assert!(
        stats["total"].as_u64().is_some_and(|n| n <= KEEP),
        "{stats}"
    );
}
