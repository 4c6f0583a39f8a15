//! What a task says about itself for people: a `title` given at creation and the
//! `duration_seconds` of the work, reported by an external reporter or measured by the host;
//! both survive a restart. Bad values are refused and change nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, assert_error};

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

    let (status, body) = api
        .send(
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            Some(json!({"status": "running"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for bad in [json!(-1.0), json!(40_000_000.0), json!("long")] {
        let (status, body) = api
            .send(
                Method::PUT,
                &format!("/api/v1/tasks/{id}"),
                Some(json!({"status": "completed", "duration_seconds": bad})),
            )
            .await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
    assert_eq!(
        api.task(&id).await["status"],
        "running",
        "a refused report changes nothing"
    );
    let (status, done) = api
        .send(
            Method::PUT,
            &format!("/api/v1/tasks/{id}"),
            Some(
                json!({"status": "completed", "result": {"ok": true}, "duration_seconds": 3600.5}),
            ),
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
