//! What a task says about itself for people: a `title` given at creation, the
//! `duration_seconds` of the work (reported by an external reporter or measured by the host),
//! and the non-fatal errors its reporter records. Bad values are refused and change nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Api, TestServer, assert_error};

/// An external reporter's `PUT /tasks/{id}`.
async fn report(api: &Api<'_>, id: &str, body: Value) -> (StatusCode, Value) {
    api.send(Method::PUT, &format!("/api/v1/tasks/{id}"), Some(body))
        .await
}

#[tokio::test]
async fn a_title_and_a_reported_duration_are_kept_and_a_run_is_timed_by_the_host() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({
            "plugin": "agents", "type": "feature", "executor": "external",
            "title": "Refactor the parser", "labels": {"project": "p1", "agent": "claude"},
        }))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(task["title"], "Refactor the parser");
    assert_eq!(task["duration_seconds"], json!(null), "not started yet");

    let (status, body) = report(&api, &id, json!({"status": "running"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for bad in [json!(-1.0), json!(40_000_000.0), json!("long")] {
        let (status, body) = report(
            &api,
            &id,
            json!({"status": "completed", "duration_seconds": bad}),
        )
        .await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    assert_eq!(
        api.task(&id).await["status"],
        "running",
        "a refused report changes nothing"
    );
    let (status, done) = report(
        &api,
        &id,
        json!({"status": "completed", "result": {"ok": true}, "duration_seconds": 3600.5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(
        done["duration_seconds"], 3600.5,
        "the reporter's figure, not the host's"
    );

    // A plugin's run is timed from its start to its end.
    let echo = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 300}, "title": "nap"}))
        .await;
    let echo_id = echo["id"].as_str().unwrap().to_owned();
    let finished = api.finished(&echo_id).await;
    let measured = finished["duration_seconds"].as_f64().expect("a duration");
    assert!((0.3..30.0).contains(&measured), "{finished}");

    for bad in [
        json!(""),
        json!("   "),
        json!("x".repeat(201)),
        json!("line\nbreak"),
        json!(7),
    ] {
        let (status, body) = api
            .post(
                "/api/v1/tasks",
                json!({"plugin": "agents", "type": "feature", "executor": "external", "title": bad}),
            )
            .await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    let (_, list) = api.get("/api/v1/tasks?limit=100").await;
    assert_eq!(
        list["meta"]["total"], 2,
        "refused creations stored nothing: {list}"
    );

    let server = server.restart().await;
    let api = server.api();
    let kept = api.task(&id).await;
    assert_eq!(
        (&kept["title"], &kept["duration_seconds"]),
        (&json!("Refactor the parser"), &json!(3600.5))
    );
    assert_eq!(api.task(&echo_id).await["title"], "nap");
}

#[tokio::test]
async fn a_reporter_records_non_fatal_errors_that_leave_the_task_running() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "agents", "type": "feature", "executor": "external"}))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let (status, body) = report(&api, &id, json!({"status": "running"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let long_trace = format!(
        "Traceback (most recent call last):\n{}RuntimeError: Failed to connect to database",
        "  File \"main.py\", line 42\n".repeat(600)
    );
    let (status, first) = api
        .post(
            &format!("/api/v1/tasks/{id}/errors"),
            json!({
                "error_type": "RuntimeError", "message": "Failed to connect to database",
                "stack_trace": long_trace, "metadata": {"retry_count": 3},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let kept = first["data"]["stack_trace"].as_str().unwrap();
    assert!(
        kept.len() <= 10 * 1024 && kept.len() > 9 * 1024,
        "{}",
        kept.len()
    );
    assert!(kept.ends_with("RuntimeError: Failed to connect to database"));
    assert_eq!(first["data"]["stack_trace_truncated"], true);
    assert_eq!(first["data"]["metadata"]["retry_count"], 3);
    let (status, second) = api
        .post(
            &format!("/api/v1/tasks/{id}/errors"),
            json!({"error_type": "tool.timeout", "message": "grep took too long"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");

    for bad in [
        json!({"error_type": "bad type!", "message": "m"}),
        json!({"error_type": "E", "message": ""}),
        json!({"error_type": "E", "message": "m", "metadata": [1]}),
        json!({"error_type": "E", "message": "m", "severity": "high"}),
    ] {
        let (status, body) = api.post(&format!("/api/v1/tasks/{id}/errors"), bad).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    let (_, records) = api
        .get(&format!("/api/v1/tasks/{id}/records?collection=errors"))
        .await;
    let types: Vec<&str> = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["data"]["error_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["RuntimeError", "tool.timeout"],
        "oldest first, refusals left out"
    );
    assert_eq!(
        api.task(&id).await["status"],
        "running",
        "non-fatal: the task goes on"
    );
    let announced: Vec<String> = api
        .events(&id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "message" && e["data"]["type"] == "error_recorded")
        .map(|e| e["data"]["data"]["error_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(announced, ["RuntimeError", "tool.timeout"]);

    // Only external tasks that have not ended take them.
    let (status, body) = report(&api, &id, json!({"status": "completed"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api
        .post(
            &format!("/api/v1/tasks/{id}/errors"),
            json!({"error_type": "Late", "message": "after the end"}),
        )
        .await;
    assert_error(status, &body, 409, "CONFLICT");
    let plugin_task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 2000}}))
        .await;
    let (status, body) = api
        .post(
            &format!(
                "/api/v1/tasks/{}/errors",
                plugin_task["id"].as_str().unwrap()
            ),
            json!({"error_type": "E", "message": "m"}),
        )
        .await;
    assert_error(status, &body, 409, "CONFLICT");
}
