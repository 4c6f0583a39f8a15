//! The HTTP API against a real server: every route of the Tasks, Plugins, Queues, health and
//! stats sections, their error codes, and the engine's scheduling behaviour seen over HTTP.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error, echo};

const TESTKIT_NEXT: &[u8] = include_bytes!(env!("TASKHOST_TESTKIT_NEXT_WASM"));

#[tokio::test]
async fn an_echo_task_is_created_run_and_listed_with_the_specs_shape() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "testkit", "type": "echo", "input": {"x": 1}, "labels": {"project": "demo"}, "priority": 3}))
        .await;
    assert_eq!(task["status"], "queued");
    assert_eq!(task["owner"], "admin");
    assert_eq!(task["labels"]["project"], "demo");
    let id = task["id"].as_str().expect("id").to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(&id[14..15], "7", "a version 7 UUID: {id}");
    assert!(
        task["created_at"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
        "{task}"
    );

    let done = api.finished(&id).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], json!({"x": 1}));
    assert_eq!(done["attempt"], 1);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let (status, page) = api
        .get("/api/v1/tasks?label.project=demo&status=completed&plugin=testkit&type=echo")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["meta"],
        json!({"total": 1, "limit": 20, "offset": 0, "has_more": false})
    );
    assert_eq!(page["data"][0]["id"], id.as_str());
    let (_, none) = api.get("/api/v1/tasks?label.project=other").await;
    assert_eq!(none["meta"]["total"], 0);

    let kinds: Vec<String> = api
        .events(&id)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kinds, ["created", "queued", "started", "completed"]);
    let (status, progress) = api.get(&format!("/api/v1/tasks/{id}/progress")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(progress["status"], "completed");
}

#[tokio::test]
async fn lists_paginate_newest_first_and_sort_on_request() {
    let server = TestServer::start().await;
    let api = server.api();
    let (status, _) = api.post("/api/v1/queues/testkit/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let mut ids = Vec::new();
    for priority in [1, 5, 3] {
        ids.push(
            api.create(json!({"plugin": "testkit", "type": "echo", "priority": priority}))
                .await["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    let (_, first) = api.get("/api/v1/tasks?limit=2").await;
    assert_eq!(
        first["meta"],
        json!({"total": 3, "limit": 2, "offset": 0, "has_more": true})
    );
    assert_eq!(first["data"][0]["id"], ids[2].as_str(), "newest first");
    let (_, second) = api.get("/api/v1/tasks?limit=2&offset=2").await;
    assert_eq!(second["data"][0]["id"], ids[0].as_str());
    assert_eq!(second["meta"]["has_more"], false);
    let (_, by_priority) = api.get("/api/v1/tasks?sort=priority&order=desc").await;
    let priorities: Vec<i64> = by_priority["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|t| t["priority"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(priorities, [5, 3, 1]);
    let (_, ascending) = api.get("/api/v1/tasks?order=asc").await;
    assert_eq!(ascending["data"][0]["id"], ids[0].as_str());
}

#[tokio::test]
async fn bad_requests_get_the_specs_error_format_and_change_nothing() {
    let server = TestServer::start().await;
    let api = server.api();
    let client = &server.client;

    let (s, b) = api.get("/api/v1/no-such-route").await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, b) = api.send(Method::PATCH, "/api/v1/tasks", None).await;
    assert_error(s, &b, 405, "METHOD_NOT_ALLOWED");
    // A 405 says what the resource does take (RFC 9110).
    let response = client
        .request(Method::PATCH, server.url("/api/v1/tasks/some-id"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("DELETE, GET, PUT")
    );

    let malformed = client
        .post(server.url("/api/v1/tasks"))
        .body("{not json")
        .send()
        .await
        .expect("sent");
    let status = malformed.status();
    assert_error(
        status,
        &malformed.json().await.expect("json"),
        400,
        "VALIDATION_ERROR",
    );
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "echo", "inptu": {}}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("inptu"),
        "{b}"
    );
    let (s, b) = api
        .post("/api/v1/tasks", json!({"plugin": 7, "type": "echo"}))
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (s, b) = api
        .post("/api/v1/tasks", json!({"plugin": "nope", "type": "echo"}))
        .await;
    assert_error(s, &b, 404, "PLUGIN_NOT_FOUND");
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "nope"}),
        )
        .await;
    assert_error(s, &b, 422, "UNSUPPORTED_TASK_TYPE");
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "sleep", "input": {"ms": "soon"}}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    assert_eq!(b["error"]["details"]["errors"][0]["path"], "/ms");
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 2, "steps": 9}}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("steps"),
        "the plugin's own message: {b}"
    );
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "echo", "id": "bad id/with slash"}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "echo", "max_attempts": 0}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "echo", "run_at": "tomorrow"}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "echo", "depends_on": ["missing"]}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");

    api.create(json!({"plugin": "testkit", "type": "echo", "id": "job-1"}))
        .await;
    let (s, b) = api
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "echo", "id": "job-1"}),
        )
        .await;
    assert_error(s, &b, 409, "CONFLICT");

    let big =
        json!({"plugin": "testkit", "type": "echo", "input": {"blob": "x".repeat(1_100_000)}});
    let (s, b) = api.post("/api/v1/tasks", big).await;
    assert_error(s, &b, 413, "PAYLOAD_TOO_LARGE");

    for query in [
        "limit=0",
        "limit=101",
        "limit=ten",
        "offset=-1",
        "status=done",
        "sort=name",
        "order=up",
        "colour=red",
        "created_after=yesterday",
    ] {
        let (s, b) = api.get(&format!("/api/v1/tasks?{query}")).await;
        assert_error(s, &b, 400, "VALIDATION_ERROR");
    }
    let (s, b) = api.get("/api/v1/tasks/does-not-exist").await;
    assert_error(s, &b, 404, "TASK_NOT_FOUND");
    let (s, b) = api
        .send(Method::DELETE, "/api/v1/tasks/does-not-exist", None)
        .await;
    assert_error(s, &b, 404, "TASK_NOT_FOUND");

    // Only the one valid task exists: nothing above created anything.
    let (_, page) = api.get("/api/v1/tasks").await;
    assert_eq!(page["meta"]["total"], 1, "{page}");
}

#[tokio::test]
async fn every_response_carries_a_request_id_echoing_the_clients() {
    let server = TestServer::start().await;
    let response = server
        .client
        .get(server.url("/api/v1/tasks/nope"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["request_id"], "trace-abc-123");
    let response = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .expect("sent");
    assert!(response.headers().get("x-request-id").is_some());
}

#[tokio::test]
async fn a_retryable_failure_is_retried_with_backoff_until_max_attempts() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "testkit", "type": "fail", "input": {"retryable": true, "code": "FLAKY"}, "max_attempts": 3}))
        .await;
    let id = task["id"].as_str().expect("id");
    let done = api.finished(id).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["attempt"], 3);
    assert_eq!(done["error"]["code"], "FLAKY");
    let events = api.events(id).await;
    let retrying: Vec<&Value> = events.iter().filter(|e| e["type"] == "retrying").collect();
    assert_eq!(
        retrying.len(),
        2,
        "two retries before the last attempt: {events:?}"
    );
    // Backoff doubles (base 50 ms in tests) with jitter of 50-100%.
    let delays: Vec<u64> = retrying
        .iter()
        .map(|e| e["data"]["delay_ms"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        (25..=50).contains(&delays[0]) && (50..=100).contains(&delays[1]),
        "{delays:?}"
    );
    let starts = events.iter().filter(|e| e["type"] == "started").count();
    assert_eq!(starts, 3);

    let fatal = api
        .create(json!({"plugin": "testkit", "type": "fail", "input": {"retryable": false}}))
        .await;
    let done = api.finished(fatal["id"].as_str().expect("id")).await;
    assert_eq!(
        (done["status"].as_str(), done["attempt"].as_u64()),
        (Some("failed"), Some(1)),
        "not retried"
    );
}

#[tokio::test]
async fn a_task_past_its_timeout_fails_with_timeout() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 10_000, "steps": 10}, "timeout_s": 1, "max_attempts": 1}))
        .await;
    let done = api.finished(task["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"]["code"], "TIMEOUT");
}

#[tokio::test]
async fn higher_priority_tasks_start_first() {
    let server = TestServer::builder().testkit_concurrency(1).start().await;
    let api = server.api();
    api.post("/api/v1/queues/testkit/pause", json!({})).await;
    let mut ids = Vec::new();
    for priority in [0, 10, 5, -3] {
        let task = api
            .create(json!({"plugin": "testkit", "type": "echo", "priority": priority}))
            .await;
        ids.push((priority, task["id"].as_str().expect("id").to_owned()));
    }
    api.post("/api/v1/queues/testkit/resume", json!({})).await;
    let mut started = Vec::new();
    for (priority, id) in &ids {
        api.finished(id).await;
        let seq = api
            .events(id)
            .await
            .iter()
            .find(|e| e["type"] == "started")
            .and_then(|e| e["seq"].as_u64())
            .expect("started");
        started.push((seq, *priority));
    }
    started.sort();
    let order: Vec<i64> = started.iter().map(|(_, p)| *p).collect();
    assert_eq!(order, [10, 5, 0, -3]);
}

#[tokio::test]
async fn run_at_holds_a_task_until_its_time() {
    let server = TestServer::start().await;
    let api = server.api();
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(800);
    let task = api
        .create(json!({"plugin": "testkit", "type": "echo", "run_at": run_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}))
        .await;
    assert_eq!(task["status"], "scheduled");
    assert!(task["scheduled_at"].is_string());
    let id = task["id"].as_str().expect("id");
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed");
    let started: chrono::DateTime<chrono::Utc> = done["started_at"]
        .as_str()
        .expect("started")
        .parse()
        .expect("time");
    assert!(
        started >= run_at - chrono::Duration::milliseconds(5),
        "started {started} before {run_at}"
    );
}

#[tokio::test]
async fn a_dependent_waits_for_its_dependencies_and_fails_when_one_fails() {
    let server = TestServer::start().await;
    let api = server.api();
    let first = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 300}}))
        .await;
    let first_id = first["id"].as_str().expect("id");
    let then = api
        .create(json!({"plugin": "testkit", "type": "echo", "depends_on": [first_id]}))
        .await;
    let then_id = then["id"].as_str().expect("id");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(api.task(then_id).await["status"], "queued", "still waiting");
    let first_done = api.finished(first_id).await;
    let then_done = api.finished(then_id).await;
    assert_eq!(then_done["status"], "completed");
    assert!(then_done["started_at"].as_str() >= first_done["finished_at"].as_str());

    let broken = api
        .create(json!({"plugin": "testkit", "type": "fail", "input": {}}))
        .await;
    let broken_id = broken["id"].as_str().expect("id");
    let after = api
        .create(json!({"plugin": "testkit", "type": "echo", "depends_on": [broken_id]}))
        .await;
    let chained = api.create(json!({"plugin": "testkit", "type": "echo", "depends_on": [after["id"].as_str().expect("id")]})).await;
    for id in [
        after["id"].as_str().expect("id"),
        chained["id"].as_str().expect("id"),
    ] {
        let done = api.finished(id).await;
        assert_eq!(done["status"], "failed");
        assert_eq!(done["error"]["code"], "DEPENDENCY_FAILED");
    }
}

#[tokio::test]
async fn a_paused_queue_holds_its_tasks_until_resumed() {
    let server = TestServer::start().await;
    let api = server.api();
    let (status, queue) = api.post("/api/v1/queues/testkit/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(queue["paused"], true);
    let task = api.create(echo(json!(1))).await;
    let id = task["id"].as_str().expect("id");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.task(id).await["status"], "queued");
    let (_, queues) = api.get("/api/v1/queues").await;
    let testkit = queues["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|q| q["plugin"] == "testkit")
        .cloned()
        .expect("testkit queue");
    assert_eq!(
        (testkit["paused"].as_bool(), testkit["queued"].as_u64()),
        (Some(true), Some(1))
    );
    api.post("/api/v1/queues/testkit/resume", json!({})).await;
    assert_eq!(api.finished(id).await["status"], "completed");
    let (s, b) = api.post("/api/v1/queues/nope/pause", json!({})).await;
    assert_error(s, &b, 404, "PLUGIN_NOT_FOUND");
}

#[tokio::test]
async fn cancelling_a_running_task_stops_it_and_cancelling_again_conflicts() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(
            json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 60_000, "steps": 600}}),
        )
        .await;
    let id = task["id"].as_str().expect("id");
    api.wait_for(id, Duration::from_secs(10), |t| t["status"] == "running")
        .await;
    let (status, cancelled) = api
        .send(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (s, b) = api
        .send(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_error(s, &b, 409, "CONFLICT");

    // A plugin that never reaches a checkpoint is killed after the grace period (1 s here).
    let busy = api
        .create(json!({"plugin": "testkit", "type": "busy_loop"}))
        .await;
    let busy_id = busy["id"].as_str().expect("id");
    api.wait_for(busy_id, Duration::from_secs(10), |t| {
        t["status"] == "running"
    })
    .await;
    let (status, cancelled) = api
        .send(Method::DELETE, &format!("/api/v1/tasks/{busy_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["status"], "cancelled");

    let queued = api
        .create(json!({"plugin": "testkit", "type": "echo", "run_at": "2999-01-01T00:00:00.000Z"}))
        .await;
    let (status, cancelled) = api
        .send(
            Method::DELETE,
            &format!("/api/v1/tasks/{}", queued["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
}

#[tokio::test]
async fn a_running_task_pauses_at_its_checkpoint_and_resumes() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 1000, "steps": 20}}))
        .await;
    let id = task["id"].as_str().expect("id");
    api.wait_for(id, Duration::from_secs(10), |t| {
        t["progress"]["processed"].as_u64().is_some_and(|p| p >= 2)
    })
    .await;
    let (status, paused) = api
        .post(&format!("/api/v1/tasks/{id}/pause"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(paused["status"], "paused", "{paused}");
    let processed = paused["progress"]["processed"].as_u64();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let still = api.task(id).await;
    assert_eq!(still["status"], "paused");
    assert_eq!(
        still["progress"]["processed"].as_u64(),
        processed,
        "no progress while paused"
    );
    let (status, resumed) = api
        .post(&format!("/api/v1/tasks/{id}/resume"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["status"], "running");
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed");
    let kinds: Vec<String> = api
        .events(id)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        kinds.contains(&"paused".to_owned()) && kinds.contains(&"resumed".to_owned()),
        "{kinds:?}"
    );
    let (s, b) = api
        .post(&format!("/api/v1/tasks/{id}/resume"), json!({}))
        .await;
    assert_error(s, &b, 409, "CONFLICT");
}

#[tokio::test]
async fn retry_runs_a_failed_task_again_and_only_failed_or_cancelled_ones() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "testkit", "type": "fail", "input": {}}))
        .await;
    let id = task["id"].as_str().expect("id");
    api.finished(id).await;
    let (status, retried) = api
        .post(&format!("/api/v1/tasks/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        matches!(
            retried["status"].as_str(),
            Some("queued" | "running" | "failed")
        ),
        "{retried}"
    );
    // Retry answers once the task is queued again, so a failed status now is the second run's.
    let done = api
        .wait_for(id, Duration::from_secs(10), |t| t["status"] == "failed")
        .await;
    assert_eq!(done["attempt"], 1, "attempts count again from the start");
    assert_eq!(done["error"]["code"], "TESTKIT_FAILURE");
    assert_eq!(
        api.events(id)
            .await
            .iter()
            .filter(|e| e["type"] == "started")
            .count(),
        2
    );

    let ok = api.create(echo(json!({}))).await;
    let ok_id = ok["id"].as_str().expect("id");
    api.finished(ok_id).await;
    let (s, b) = api
        .post(&format!("/api/v1/tasks/{ok_id}/retry"), json!({}))
        .await;
    assert_error(s, &b, 409, "CONFLICT");
}

#[tokio::test]
async fn a_plugin_spawns_child_tasks_that_run_and_link_to_their_parent() {
    let server = TestServer::start().await;
    let api = server.api();
    let parent = api
        .create(json!({"plugin": "testkit", "type": "host_calls", "input": {"spawn": true}}))
        .await;
    let parent_id = parent["id"].as_str().expect("id");
    let done = api.finished(parent_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let child_id = done["result"]["spawn"]["ok"]
        .as_str()
        .expect("the child's id")
        .to_owned();
    let child = api.finished(&child_id).await;
    assert_eq!(child["status"], "completed");
    assert_eq!(child["parent_id"], parent_id);
    assert_eq!(child["result"], json!({"child_of": parent_id}));
    assert_eq!(child["owner"], done["owner"]);
}

#[tokio::test]
async fn logs_records_and_progress_of_a_run_are_served() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api.create(json!({"plugin": "testkit", "type": "host_calls", "input": {"stdout": "hello from the guest"}})).await;
    let id = task["id"].as_str().expect("id");
    let done = api.finished(id).await;
    assert_eq!(done["result"]["kv"]["ok"]["read"], "value");
    assert_eq!(done["progress"]["current_step"], "calling the host");
    assert_eq!(done["progress"]["metrics"]["calls"], 1.0);

    let (status, logs) = api.get(&format!("/api/v1/tasks/{id}/logs")).await;
    assert_eq!(status, StatusCode::OK);
    let messages: Vec<&str> = logs["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"host_calls: logging works"),
        "{messages:?}"
    );
    // A plugin's line belongs to the step it last reported.
    let logged = logs["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|l| l["message"] == "host_calls: logging works")
        .expect("the line");
    assert_eq!(logged["step"], "calling the host", "{logged}");
    assert!(
        messages.contains(&"stdout: hello from the guest"),
        "{messages:?}"
    );
    let first_seq = logs["data"][0]["seq"].as_u64().expect("seq");
    let (_, later) = api
        .get(&format!("/api/v1/tasks/{id}/logs?since={first_seq}"))
        .await;
    assert_eq!(
        later["data"].as_array().expect("data").len(),
        messages.len() - 1
    );

    let (status, records) = api
        .get(&format!("/api/v1/tasks/{id}/records?collection=probe"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(records["meta"]["total"], 1);
    assert_eq!(records["data"][0]["data"], json!({"task": id}));

    let (status, events) = api
        .get(&format!("/api/v1/tasks/{id}/events?after_seq=0&limit=2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events["data"].as_array().expect("data").len(), 2);
    assert_eq!(events["meta"]["has_more"], true);
    let next = events["meta"]["next_after_seq"].as_u64().expect("next");
    let (_, rest) = api
        .get(&format!(
            "/api/v1/tasks/{id}/events?after_seq={next}&limit=1000"
        ))
        .await;
    assert!(
        rest["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|e| e["seq"].as_u64() > Some(next))
    );

    let (status, message) = api
        .post(
            &format!("/api/v1/tasks/{id}/messages"),
            json!({"type": "note", "data": {"hi": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(message["type"], "message");
    assert!(
        api.events(id)
            .await
            .iter()
            .any(|e| e["type"] == "message" && e["data"]["type"] == "note")
    );
}

#[tokio::test]
async fn following_logs_streams_lines_until_the_task_ends() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api.create(json!({"plugin": "testkit", "type": "host_calls", "input": {"stdout": "streamed"}, "run_at": (chrono::Utc::now() + chrono::Duration::milliseconds(300)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})).await;
    let id = task["id"].as_str().expect("id");
    let response = server
        .client
        .get(server.url(&format!("/api/v1/tasks/{id}/logs?follow=true")))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    // The stream ends by itself when the task does.
    let text = tokio::time::timeout(Duration::from_secs(20), response.text())
        .await
        .expect("stream ended")
        .expect("body");
    assert!(text.contains("host_calls: logging works"), "{text}");
    assert!(text.contains("stdout: streamed"), "{text}");
}

#[tokio::test]
async fn external_tasks_take_reports_and_keep_to_the_state_machine() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api.create(json!({"plugin": "agents", "type": "feature", "executor": "external", "labels": {"project": "p1"}})).await;
    let id = task["id"].as_str().expect("id");
    assert_eq!(task["executor"], "external");
    let (status, running) = api
        .post(
            &format!("/api/v1/tasks/{id}/progress"),
            json!({"processed": 3, "total": 4, "current_step": "coding"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{running}");
    assert_eq!(running["status"], "running");
    assert_eq!(running["progress"]["percentage"], 75.0);
    let (s, b) = api
        .post(
            &format!("/api/v1/tasks/{id}/progress"),
            json!({"processed": 9, "total": 4}),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");
    let (status, done) = api
        .send(
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            Some(json!({"status": "completed", "result": {"files": 2}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], json!({"files": 2}));
    let (s, b) = api
        .send(
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            Some(json!({"status": "running"})),
        )
        .await;
    assert_error(s, &b, 409, "CONFLICT");
    let (s, b) = api
        .send(
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            Some(json!({"status": "finished"})),
        )
        .await;
    assert_error(s, &b, 400, "VALIDATION_ERROR");

    let plugin_task = api.create(echo(json!(0))).await;
    let (s, b) = api
        .post(
            &format!(
                "/api/v1/tasks/{}/progress",
                plugin_task["id"].as_str().expect("id")
            ),
            json!({"processed": 1}),
        )
        .await;
    assert_error(s, &b, 409, "CONFLICT");
}

#[tokio::test]
async fn plugins_are_listed_replaced_unloaded_and_uploaded() {
    let server = TestServer::start().await;
    let api = server.api();
    let (status, list) = api.get("/api/v1/plugins").await;
    assert_eq!(status, StatusCode::OK);
    let testkit = list["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|p| p["name"] == "testkit")
        .cloned()
        .expect("bundled testkit");
    assert_eq!(testkit["version"], env!("CARGO_PKG_VERSION"));
    assert!(testkit["task_types"].as_array().is_some_and(|t| {
        t.iter()
            .any(|t| t["name"] == "sleep" && t["input_schema"].is_object())
    }));
    assert_eq!(testkit["limits"]["memory_mb"], 256);
    assert!(testkit["loaded_at"].is_string());
    let (s, b) = api.get("/api/v1/plugins/nope").await;
    assert_error(s, &b, 404, "PLUGIN_NOT_FOUND");

    let upload = |method: Method, path: &str, bytes: Vec<u8>| {
        server
            .client
            .request(method, server.url(path))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
    };
    let response = upload(Method::POST, "/api/v1/plugins", TESTKIT_NEXT.to_vec())
        .await
        .expect("sent");
    let status = response.status();
    assert_error(
        status,
        &response.json().await.expect("json"),
        409,
        "CONFLICT",
    );
    let response = upload(Method::POST, "/api/v1/plugins", b"not a component".to_vec())
        .await
        .expect("sent");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("WebAssembly"),
        "{body}"
    );

    let response = upload(
        Method::PUT,
        "/api/v1/plugins/testkit",
        TESTKIT_NEXT.to_vec(),
    )
    .await
    .expect("sent");
    assert_eq!(response.status(), StatusCode::OK);
    let replaced: Value = response.json().await.expect("json");
    assert_eq!(
        replaced["version"],
        format!("{}-next", env!("CARGO_PKG_VERSION"))
    );
    let task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 1}}))
        .await;
    let done = api.finished(task["id"].as_str().expect("id")).await;
    assert_eq!(done["result"]["version"], replaced["version"]);

    let (status, _) = api
        .send(Method::DELETE, "/api/v1/plugins/testkit", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (s, b) = api.post("/api/v1/tasks", echo(json!(1))).await;
    assert_error(s, &b, 404, "PLUGIN_NOT_FOUND");
    let (s, b) = api
        .send(Method::DELETE, "/api/v1/plugins/testkit", None)
        .await;
    assert_error(s, &b, 404, "PLUGIN_NOT_FOUND");

    let grants = r#"{"limits":{"memory_mb":64,"max_concurrency":2}}"#;
    let path = format!("/api/v1/plugins?grants={}", url_encode(grants));
    let response = upload(Method::POST, &path, TESTKIT_NEXT.to_vec())
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    let installed: Value = response.json().await.expect("json");
    assert_eq!(installed["limits"]["memory_mb"], 64);
    let bad_grants = format!(
        "/api/v1/plugins/testkit?grants={}",
        url_encode(r#"{"limits":{"memory_mb":0}}"#)
    );
    let response = upload(Method::PUT, &bad_grants, TESTKIT_NEXT.to_vec())
        .await
        .expect("sent");
    let status = response.status();
    assert_error(
        status,
        &response.json().await.expect("json"),
        400,
        "VALIDATION_ERROR",
    );
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[tokio::test]
async fn unloading_a_plugin_with_running_tasks_needs_force() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(
            json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 30_000, "steps": 300}}),
        )
        .await;
    let id = task["id"].as_str().expect("id");
    api.wait_for(id, Duration::from_secs(10), |t| t["status"] == "running")
        .await;
    let (s, b) = api
        .send(Method::DELETE, "/api/v1/plugins/testkit", None)
        .await;
    assert_error(s, &b, 409, "CONFLICT");
    let (status, _) = api
        .send(Method::DELETE, "/api/v1/plugins/testkit?force=true", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.task(id).await["status"], "cancelled");
}

#[tokio::test]
async fn failed_tasks_of_a_queue_can_be_cleared() {
    let server = TestServer::start().await;
    let api = server.api();
    let failed = api
        .create(json!({"plugin": "testkit", "type": "fail", "input": {}}))
        .await;
    let ok = api.create(echo(json!(1))).await;
    api.finished(failed["id"].as_str().expect("id")).await;
    api.finished(ok["id"].as_str().expect("id")).await;
    let (status, cleared) = api
        .send(Method::DELETE, "/api/v1/queues/testkit/failed", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cleared["deleted"], 1);
    let (s, b) = api
        .get(&format!(
            "/api/v1/tasks/{}",
            failed["id"].as_str().expect("id")
        ))
        .await;
    assert_error(s, &b, 404, "TASK_NOT_FOUND");
    assert_eq!(
        api.task(ok["id"].as_str().expect("id")).await["status"],
        "completed"
    );
}

#[tokio::test]
async fn health_metrics_stats_and_openapi_are_served() {
    let server = TestServer::start().await;
    let api = server.api();
    let (status, health) = api.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_s"].is_u64());
    assert_eq!(api.get("/health/live").await.0, StatusCode::OK);
    assert_eq!(api.get("/health/ready").await.0, StatusCode::OK);
    let (status, details) = api.get("/api/v1/health?details=true").await;
    assert_eq!(status, StatusCode::OK);
    assert!(details["storage"]["latency_ms"].is_number());
    // On the embedded store the host is alone, and says so.
    assert_eq!(details["storage"]["backend"], "sled");
    let hosts = details["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 1, "{details}");
    assert_eq!(hosts[0]["id"], details["host"]["id"]);
    assert!(details["plugin_runtime"]["loaded_plugins"].as_u64() >= Some(1));
    assert!(details["queues"].is_array());
    assert!(details["websocket_connections"].is_u64());

    let a = api
        .create(json!({"plugin": "testkit", "type": "echo", "labels": {"project": "alpha"}}))
        .await;
    let b = api.create(json!({"plugin": "testkit", "type": "fail", "input": {}, "labels": {"project": "beta"}})).await;
    api.finished(a["id"].as_str().expect("id")).await;
    api.finished(b["id"].as_str().expect("id")).await;

    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"taskhost_tasks{plugin="testkit",status="completed"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"taskhost_tasks{plugin="testkit",status="failed"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("taskhost_uptime_seconds"), "{metrics}");

    let (status, stats) = api.get("/api/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["success_rate"], 0.5);
    assert_eq!(stats["by_project"]["alpha"]["by_status"]["completed"], 1);
    assert_eq!(stats["by_plugin"]["testkit"]["total"], 2);
    assert_eq!(stats["timeline"][0]["created"], 2);
    let (_, filtered) = api.get("/api/v1/stats?label.project=beta").await;
    assert_eq!(
        (
            filtered["total"].as_u64(),
            filtered["success_rate"].as_f64()
        ),
        (Some(1), Some(0.0))
    );

    let (status, doc) = api.get("/api/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for (path, method) in [
        ("/api/v1/tasks", "post"),
        ("/api/v1/tasks/{id}/logs", "get"),
        ("/api/v1/plugins/{name}", "put"),
        ("/api/v1/queues/{plugin}/failed", "delete"),
        ("/metrics", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn every_route_in_the_openapi_document_is_served() {
    // Walks the document: each route answers with something other than 404-no-route or 405.
    let server = TestServer::start().await;
    let api = server.api();
    let (_, doc) = api.get("/api/v1/openapi.json").await;
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 20);
    for (path, item) in paths {
        for method in item.as_object().expect("operations").keys() {
            let concrete = path
                .replace("{id}", "no-such-task")
                .replace("{name}", "no-such-plugin")
                .replace("{plugin}", "no-such-plugin");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, body) = api.send(method.clone(), &concrete, Some(json!({}))).await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(
                !message.starts_with("no route for"),
                "{method} {path} has no route: {body}"
            );
            assert!(status.as_u16() < 500, "{method} {path}: {body}");
        }
    }
}

#[tokio::test]
async fn the_python_example_client_follows_a_task_to_its_result() {
    let server = TestServer::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/client.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            "--url",
            &format!("http://{}", server.addr),
            "--token",
            &server.token,
            "--type",
            "echo",
            "--input",
            r#"{"from": "python"}"#,
        ])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(
        stdout.contains(r#""from": "python""#),
        "the result is printed: {stdout}"
    );
}
