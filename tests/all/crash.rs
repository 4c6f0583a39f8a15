//! Durability: `kill -9` of the real binary mid-run loses no acknowledged task, and after a
//! restart every task reaches a terminal state exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::HostProcess;

const TASKS: usize = 1000;

pub(crate) async fn queue_totals(api: &crate::harness::Api<'_>) -> (u64, u64) {
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

/// Waits until the testkit queue holds `tasks` finished tasks and none pending.
pub(crate) async fn all_finished(api: &crate::harness::Api<'_>, tasks: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let (pending, done) = queue_totals(api).await;
        if pending == 0 && done == tasks as u64 {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "not finished: {pending} pending, {done} done"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    all_finished(&api, TASKS, Duration::from_secs(120)).await;

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
        // Long enough that a loaded machine still signals mid-run.
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 6000, "steps": 60}, "id": "graceful-1", "max_attempts": 1}))
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

/// What a stream subscriber saw of one run of the host: `seq` → (task id, event type).
type Seen = BTreeMap<u64, (String, String)>;

/// One host life: a subscriber on `plugin:testkit` from `after_seq`, 8 creators posting echo
/// tasks, and a `kill -9` once the subscriber has seen `completions` completions. Returns what
/// the subscriber saw and which tasks a 202 acknowledged.
async fn run_until_killed(
    data: &std::path::Path,
    round: usize,
    after_seq: u64,
    completions: usize,
) -> (Seen, BTreeSet<String>) {
    use futures::StreamExt;
    use std::sync::{Arc, Mutex};

    let host = HostProcess::spawn(data);
    let base = format!("http://{}", host.addr);
    let token = crate::harness::login(&base, "admin", crate::harness::ADMIN_PASSWORD).await;
    let url = format!("ws://{}/api/v1/ws?token={token}", host.addr);
    let mut subscriber = crate::harness::WsClient::connect(&url).await;
    subscriber
        .subscribe(&["plugin:testkit"], Some(after_seq))
        .await;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let completed = Arc::new(tokio::sync::Semaphore::new(0));
    let reader = tokio::spawn({
        let (seen, completed) = (seen.clone(), completed.clone());
        async move {
            while let Some(Ok(message)) = subscriber.stream.next().await {
                let Ok(frame) =
                    serde_json::from_str::<Value>(&message.into_text().unwrap_or_default())
                else {
                    continue;
                };
                let (Some(seq), Some(task), Some(kind)) = (
                    frame["seq"].as_u64(),
                    frame["task_id"].as_str(),
                    frame["type"].as_str(),
                ) else {
                    continue;
                };
                let earlier = seen
                    .lock()
                    .expect("seen")
                    .insert(seq, (task.to_owned(), kind.to_owned()));
                assert!(earlier.is_none(), "seq {seq} delivered twice in one run");
                if kind == "completed" {
                    completed.add_permits(1);
                }
            }
        }
    });
    let acknowledged: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let client = crate::harness::client_with_token(&token);
    let creators: Vec<_> = (0..8)
        .map(|creator| {
            let (client, base, acknowledged) = (client.clone(), base.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for n in 0..500 {
                    let id = format!("r{round:02}-c{creator}-{n:03}");
                    let body =
                        json!({"plugin": "testkit", "type": "echo", "input": {"n": n}, "id": id});
                    match client
                        .post(format!("{base}/api/v1/tasks"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(response) if response.status() == StatusCode::ACCEPTED => {
                            acknowledged.lock().expect("acknowledged").insert(id);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let enough = tokio::time::timeout(
        Duration::from_secs(60),
        completed.acquire_many(completions as u32),
    )
    .await;
    assert!(
        enough.is_ok(),
        "round {round}: {completions} completions did not arrive"
    );
    host.kill9();
    for creator in creators {
        let _ = creator.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    let acknowledged = std::mem::take(&mut *acknowledged.lock().expect("acknowledged"));
    (seen, acknowledged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_a_subscriber_saw_is_lost_or_its_seq_reused_across_twenty_kills() {
    // Each round kills the host while tasks are being created and completed. Whatever the
    // subscriber saw before the kill must still be there after the restart under the same
    // seq (an event published before it was durable would vanish, and its seq be handed to
    // another event); every acknowledged task must exist and every completion seen stand.
    let data = tempfile::tempdir().expect("data dir");
    let mut after_seq = 0;
    let mut previous: Option<(Seen, BTreeSet<String>)> = None;
    for round in 0..=20 {
        if let Some((seen, acknowledged)) = previous.take() {
            let host = HostProcess::spawn(data.path());
            let client = host.client().await;
            let api = host.api(&client);
            let tasks: BTreeSet<&String> = seen.values().map(|(task, _)| task).collect();
            for task in tasks {
                let stored: BTreeMap<u64, String> = api
                    .events(task)
                    .await
                    .iter()
                    .filter_map(|e| Some((e["seq"].as_u64()?, e["type"].as_str()?.to_owned())))
                    .collect();
                for (seq, (id, kind)) in seen.iter().filter(|(_, (id, _))| id == task) {
                    assert_eq!(
                        stored.get(seq),
                        Some(kind),
                        "round {round}: seq {seq} ({kind} of {id}) seen before the kill, then lost or reused: {stored:?}"
                    );
                }
                if seen
                    .values()
                    .any(|(id, kind)| id == task && kind == "completed")
                {
                    let (_, now) = api.get(&format!("/api/v1/tasks/{task}")).await;
                    assert_eq!(
                        now["status"], "completed",
                        "round {round}: {task} was seen completed"
                    );
                }
            }
            for id in &acknowledged {
                let (status, body) = api.get(&format!("/api/v1/tasks/{id}")).await;
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "round {round}: acknowledged {id} lost: {body}"
                );
            }
            host.kill9();
            if round == 20 {
                break;
            }
        }
        let (seen, acknowledged) = run_until_killed(data.path(), round, after_seq, 40).await;
        assert!(
            !seen.is_empty() && !acknowledged.is_empty(),
            "round {round} saw nothing"
        );
        after_seq = *seen.keys().next_back().expect("a seq");
        previous = Some((seen, acknowledged));
    }
}
