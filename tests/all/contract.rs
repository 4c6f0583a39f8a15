//! The OpenAPI document against the server it describes: schemathesis (pinned from PyPI,
//! installed by `tests/run`) generates requests from the document and sends them to a real
//! `taskhost` binary, checking every answer's status, headers, content type and body against
//! the document, and that schema-valid requests are accepted and invalid ones refused. Any
//! drift between the two fails this test.
//!
//! Every check runs (`tests/schemathesis.toml`). The config widens the accepted statuses of
//! three operations for the rules JSON Schema cannot state, each named there (a task input
//! checked by its plugin, an existing dependency, an `expires_at` in the future, `processed`
//! within `total`). Left out: the WebSocket routes (not HTTP request/response), plugin
//! uploads and user role changes (random bodies would replace plugins or demote the caller
//! mid-run), and key revocation (it would revoke keys other operations use).

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ADMIN_PASSWORD, HostProcess, TestServer, login, require_tool};

#[tokio::test]
async fn the_openapi_document_describes_what_the_server_answers() {
    require_tool("st", &["--version"]);
    let data = tempfile::tempdir().expect("data dir");
    let host = HostProcess::spawn(data.path());
    let base = format!("http://{}", host.addr);
    let token = login(&base, "admin", ADMIN_PASSWORD).await;
    // schemathesis keeps a cache where it runs; keep it out of the source tree.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let cwd = scratch.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("st")
            .current_dir(cwd)
            .arg("--config-file")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/schemathesis.toml"
            ))
            .arg("run")
            .arg(format!("{base}/api/v1/openapi.json"))
            .args(["--url", &base])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args([
                "--max-examples",
                "20",
                "--seed",
                "1",
                "--generation-deterministic",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args([
                "--exclude-path-regex",
                "/ws$|^/api/v1/plugins|^/api/v1/auth/api-keys/|^/api/v1/users/",
            ])
            .args(["--no-color", "--request-timeout", "30"])
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("joined");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found the document and the server apart:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(" passed"),
        "schemathesis ran no test:\n{stdout}"
    );
    drop(host);
}

/// The value at a declared bound, and the first value past it, of a `CreateTask` property.
fn bounds(property: &Value) -> Vec<(Value, bool)> {
    let mut cases = Vec::new();
    if let Some(max) = property["maximum"].as_i64() {
        cases.push((json!(max), true));
        cases.push((json!(max + 1), false));
    }
    if let Some(min) = property["minimum"].as_i64() {
        cases.push((json!(min), true));
        cases.push((json!(min - 1), false));
    }
    if let Some(max) = property["maxLength"].as_u64() {
        cases.push((json!("a".repeat(max as usize)), true));
        cases.push((json!("a".repeat(max as usize + 1)), false));
    }
    if let Some(max) = property["maxProperties"].as_u64() {
        let labels = |n: u64| -> Value {
            (0..n)
                .map(|i| (format!("k{i}"), json!("v")))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        cases.push((labels(max), true));
        cases.push((labels(max + 1), false));
    }
    cases
}

#[tokio::test]
async fn a_new_tasks_declared_bounds_are_the_bounds_the_server_enforces() {
    // schemathesis accepts some 400s on POST /tasks (rules it cannot see, named in
    // tests/schemathesis.toml), so a bound drifting there would pass unseen: walk every bound
    // the document declares for CreateTask and try it, and one past it, on an external task.
    let server = TestServer::start().await;
    let api = server.api();
    let (_, document) = api.get("/api/v1/openapi.json").await;
    let properties = document["components"]["schemas"]["CreateTask"]["properties"]
        .as_object()
        .expect("CreateTask properties")
        .clone();
    let mut tried = 0;
    for (name, property) in &properties {
        for (value, accepted) in bounds(property) {
            let mut body = json!({"plugin": "agents", "type": "review", "executor": "external"});
            body[name] = value;
            let (status, answer) = api.post("/api/v1/tasks", body).await;
            let expected = if accepted {
                StatusCode::ACCEPTED
            } else {
                StatusCode::BAD_REQUEST
            };
            assert_eq!(
                status, expected,
                "{name} at its bound (accepted: {accepted}): {answer}"
            );
            tried += 1;
        }
    }
    // priority, max_attempts and timeout_s (4 each), plugin and type (2 each), labels (2).
    assert!(tried >= 18, "only {tried} bounds declared");
}
