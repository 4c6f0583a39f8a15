//! The agent task tracker's own clients against the façade (`[compat.agent_tracker]`): the
//! Python and JavaScript examples of its API document, copied verbatim into
//! `tests/seed-clients/agent_tracker/`, run with only the base URL changed (the imported key is
//! the document's own `your-api-key`), and what they print is checked against what the host
//! stored. Then the webhooks' edges, the query-string key, the REST views and the façade
//! mounted on the main listener.

use std::time::Duration;

use serde_json::{Value, json};
use taskhost::auth::{ImportedKey, Role};
use taskhost::config::Config;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{TestServer, eventually, require_tool, run_client, seed_client};

/// The key the document's examples carry.
const DOCUMENT_KEY: &str = "your-api-key";

fn with_tracker(config: &mut Config, own_listener: bool) {
    let tracker = &mut config.compat.agent_tracker;
    tracker.enabled = true;
    tracker.listen = own_listener.then(|| "127.0.0.1:0".parse().expect("address"));
    tracker.api_keys = vec![ImportedKey {
        key: Some(DOCUMENT_KEY.into()),
        key_env: None,
        key_sha256: None,
        user: "tracker".into(),
        role: Role::User,
    }];
}

/// A façade request with the imported key.
async fn tracker_get(base: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("X-API-Key", DOCUMENT_KEY)
        .send()
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("JSON")
}

async fn tracker_post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("X-API-Key", DOCUMENT_KEY)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_documents_python_and_javascript_clients_track_a_task_unchanged() {
    require_tool("node", &["--version"]);
    require_tool("python3", &["-c", "import requests"]);
    let server = TestServer::builder()
        .config(|c| with_tracker(c, true))
        .start()
        .await;
    let base = format!("http://{}", server.facades["compat.agent_tracker"]);
    let work = tempfile::tempdir().expect("work dir");

    // The JavaScript client follows my-project; appended lines ask for the projects once the
    // task has finished, and stop.
    let script = seed_client("agent_tracker", "client.js").replace("http://localhost:8000", &base)
        + r#"
const shown = client.ws.onmessage;
client.ws.onmessage = (event) => {
    shown(event);
    if (JSON.parse(event.data).type === 'task_finished') {
        client.getProjects().then((projects) => {
            console.log('PROJECTS ' + JSON.stringify(projects));
            process.exit(0);
        });
    }
};
setTimeout(() => { console.log('TIMED OUT'); process.exit(3); }, 60000);
"#;
    std::fs::write(work.path().join("client.js"), script).expect("script");
    let mut node = tokio::process::Command::new("node")
        .arg("--experimental-websocket")
        .arg("--no-warnings")
        .arg("client.js")
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut node_lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    eventually(Duration::from_secs(20), || async {
        let figures = tracker_get(&base, "/api/websocket/stats").await;
        match figures["project_connections"]["my-project"].as_u64() {
            Some(1) => Ok(()),
            _ => Err(format!("the JavaScript client never connected: {figures}")),
        }
    })
    .await;

    // The Python client, then appended calls through its own class (and a status update in
    // the document's shape).
    let python = seed_client("agent_tracker", "client.py").replace("http://localhost:8000", &base)
        + r#"
import json
print("START " + json.dumps(tracker.start_task("my-project", "Refactor the parser", "task-002",
    "claude-3-5-sonnet", {"priority": "high", "dependencies": ["task-001"]})))
status = requests.post(f"{tracker.base_url}/webhook/status", headers=tracker.headers, json={
    "project": "my-project", "task": "Refactor the parser", "task_id": "task-002",
    "agent": "claude-3-5-sonnet", "status": "running", "progress": 75,
    "message": "Implementing core functionality, 75% complete"})
print("STATUS " + json.dumps(status.json()))
print("FINISH " + json.dumps(tracker.finish_task("my-project", "Refactor the parser", "task-002",
    "claude-3-5-sonnet", "Feature successfully implemented", 3450, {"lines_of_code": 250})))
"#;
    std::fs::write(work.path().join("client.py"), python).expect("script");
    let printed = run_client(
        tokio::process::Command::new("python3")
            .arg("client.py")
            .current_dir(work.path()),
    )
    .await;
    let line = |tag: &str| -> Value {
        let text = printed
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} in {printed}"));
        serde_json::from_str(text).expect("JSON")
    };
    assert_eq!(line("START ")["status"], "started");
    assert_eq!(line("START ")["task_id"], "task-002");
    assert_eq!(line("STATUS ")["status"], "updated");
    let finished = line("FINISH ");
    assert_eq!(
        (&finished["status"], &finished["duration_seconds"]),
        (&json!("completed"), &json!(3450.0))
    );

    let mut seen = Vec::new();
    let projects = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = node_lines.next_line().await {
            if let Some(projects) = line.strip_prefix("PROJECTS ") {
                return serde_json::from_str::<Value>(projects).expect("JSON");
            }
            seen.push(line);
        }
        panic!("node ended early: {}", seen.join("\n"));
    })
    .await
    .expect("the JavaScript client saw the task finish");
    let received = seen.join("\n");
    for expected in [
        "type: 'task_started'",
        "type: 'task_status_updated'",
        "progress: 75",
        "message: 'Implementing core functionality, 75% complete'",
        "type: 'task_finished'",
        "duration_seconds: 3450",
        "result: 'Feature successfully implemented'",
        "project: 'my-project'",
        "agent: 'claude-3-5-sonnet'",
        "title: 'Refactor the parser'",
    ] {
        assert!(
            received.contains(expected),
            "{expected} not in:\n{received}"
        );
    }
    let listed = &projects["projects"][0];
    assert_eq!(listed["name"], "my-project", "{projects}");
    assert_eq!(
        (&listed["task_count"], &listed["active_tasks"]),
        (&json!(2), &json!(1)),
        "task-001 still runs"
    );
    let _ = node.wait().await;

    // What the host holds: external tasks of the tracker's principal, titled and labelled.
    let api = server.api();
    let task = api.task("my-project:task-002").await;
    assert_eq!(task["owner"], "tracker");
    assert_eq!(task["title"], "Refactor the parser");
    assert_eq!(task["labels"]["agent"], "claude-3-5-sonnet");
    assert_eq!(task["duration_seconds"], 3450.0);
    assert_eq!(task["input"]["metadata"]["dependencies"][0], "task-001");
    assert_eq!(task["result"]["result"], "Feature successfully implemented");
    assert_eq!(api.task("my-project:task-001").await["status"], "running");

    let stats = tracker_get(&base, "/api/stats").await;
    assert_eq!(stats["overview"]["total_tasks"], 2, "{stats}");
    assert_eq!(stats["overview"]["active_tasks"], 1);
    assert_eq!(stats["performance"]["success_rate"], 100.0);
    let agent = stats["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "claude-3-5-sonnet")
        .cloned()
        .expect("the agent");
    assert_eq!(
        (&agent["task_count"], &agent["average_duration"]),
        (&json!(1), &json!(3450.0))
    );
    assert_eq!(stats["recent_activity"][0]["task_id"], "task-002");
}

#[tokio::test]
async fn webhooks_keep_what_the_engine_ignores_record_errors_and_scope_ids_per_project() {
    let server = TestServer::builder()
        .config(|c| with_tracker(c, true))
        .start()
        .await;
    let base = format!("http://{}", server.facades["compat.agent_tracker"]);
    // The same task id in two projects is two tasks; an agent that skips start is tracked.
    for project in ["alpha", "beta"] {
        let (status, body) = tracker_post(
            &base,
            "/webhook/start",
            json!({
                "project": project, "task": "Write docs", "task_id": "t-1", "agent": "gpt",
                "priority": "high", "extra": {"kept": true},
            }),
        )
        .await;
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("started")),
            "{body}"
        );
    }
    let (status, body) = tracker_post(
        &base,
        "/webhook/status",
        json!({
            "project": "gamma space", "task_id": 7, "status": "running", "progress": 40,
        }),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("updated")),
        "{body}"
    );
    let api = server.api();
    assert_eq!(
        api.task("alpha:t-1").await["input"]["extra"]["kept"],
        true,
        "kept, not refused"
    );
    assert_eq!(api.task("beta:t-1").await["status"], "running");
    let (_, listed) = api.get("/api/v1/tasks?label.task_id=7").await;
    let spaced = &listed["data"][0];
    assert_eq!(spaced["labels"]["project"], "gamma space", "{listed}");
    assert_eq!(spaced["progress"]["percentage"], 40.0);

    let trace = format!(
        "Traceback (most recent call last):\n{}RuntimeError: db down",
        "  File \"a.py\"\n".repeat(2000)
    );
    let (status, body) = tracker_post(
        &base,
        "/webhook/error",
        json!({
            "project": "alpha", "task_id": "t-1", "agent": "gpt", "error_type": "RuntimeError",
            "error_message": "Failed to connect to database", "stack_trace": trace,
            "metadata": {"retry_count": 3},
        }),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("error_recorded")),
        "{body}"
    );
    let failed = api.task("alpha:t-1").await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "RuntimeError");
    let records = api.records("alpha:t-1", "errors").await;
    let kept = records[0]["data"]["stack_trace"].as_str().unwrap();
    assert!(kept.len() <= 10 * 1024 && kept.ends_with("RuntimeError: db down"));
    let (status, body) = tracker_post(
        &base,
        "/webhook/finish",
        json!({"project": "alpha", "task_id": "t-1"}),
    )
    .await;
    assert_eq!(status, 409, "a failed task is not finished again: {body}");

    let tasks = tracker_get(&base, "/api/projects/alpha/tasks?status=failed").await;
    assert_eq!(tasks["total"], 1, "{tasks}");
    assert_eq!(tasks["tasks"][0]["task_id"], "t-1");
    assert_eq!(
        tasks["tasks"][0]["error"]["error_message"],
        "Failed to connect to database"
    );
    assert_eq!(tasks["filters"], json!({"status": "failed"}));
    let spaced = tracker_get(&base, "/api/projects/gamma%20space/tasks?agent=nobody").await;
    assert_eq!(spaced["total"], 0);
    let project = tracker_get(&base, "/api/stats/projects/beta").await;
    assert_eq!(project["task_stats"]["running"], 1, "{project}");

    // Credentials: the query-string key works, a wrong one is a 401 in the error format.
    let response = reqwest::get(format!("{base}/api/projects?api_key={DOCUMENT_KEY}"))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let refused = reqwest::Client::new()
        .post(format!("{base}/webhook/start"))
        .header("X-API-Key", "not-the-key")
        .json(&json!({"project": "alpha", "task_id": "x"}))
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "AUTHENTICATION_REQUIRED");
    assert!(body["timestamp"].is_string());
    for (path, bad) in [
        ("/webhook/start", json!({"project": "alpha"})),
        ("/webhook/start", json!([1])),
        (
            "/webhook/status",
            json!({"project": "alpha", "task_id": "t-9", "progress": 140}),
        ),
        (
            "/webhook/finish",
            json!({"project": "alpha", "task_id": "t-9", "duration_seconds": "long"}),
        ),
    ] {
        let (status, body) = tracker_post(&base, path, bad).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (422, &json!("VALIDATION_ERROR")),
            "{path}: {body}"
        );
    }
    let (_, all) = api.get("/api/v1/tasks?plugin=agents&limit=100").await;
    assert_eq!(
        all["meta"]["total"], 3,
        "refused webhooks stored nothing: {all}"
    );
    let health = reqwest::get(format!("{base}/health"))
        .await
        .expect("health")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(health["status"], "healthy");
    assert_eq!(tracker_get(&base, "/db-check").await["status"], "connected");
}

#[tokio::test]
async fn without_a_listener_of_its_own_the_facade_answers_beside_the_api() {
    let server = TestServer::builder()
        .config(|c| with_tracker(c, false))
        .start()
        .await;
    assert!(server.facades.is_empty());
    let base = server.url("");
    let (status, body) = tracker_post(
        &base,
        "/webhook/start",
        json!({"project": "p", "task_id": "1"}),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("started")),
        "{body}"
    );
    assert_eq!(tracker_get(&base, "/api/projects").await["total"], 1);
    // The host's own routes keep their answers.
    let health = reqwest::get(server.url("/health"))
        .await
        .expect("health")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(
        health["status"], "ok",
        "the host's /health, not the tracker's"
    );
    let (status, body) = server.api().get("/api/v1/tasks/p:1").await;
    assert_eq!(
        (status.as_u16(), &body["labels"]["project"]),
        (200, &json!("p"))
    );
    // An imported key is a principal like any other: it reads only its own tasks.
    let response = reqwest::Client::new()
        .get(server.url("/api/v1/stats"))
        .header("X-API-Key", DOCUMENT_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(response.json::<Value>().await.expect("JSON")["total"], 1);
}
