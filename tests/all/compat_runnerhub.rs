//! GitHub-RunnerHub's API (seed 003) as a façade on a real host with a real `taskhost-runner`:
//! the document's cURL snippet (login, then the jobs) and its credential-less JavaScript
//! WebSocket snippet run unchanged but for the base URL and the login, while a job delegated
//! in the document's shape runs its steps on the runner whose labels match.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use taskhost::compat::runnerhub::StreamPrincipal;

use crate::harness::{
    RunnerProcess, TestServer, client_with_token, eventually, require_tool, run_client, seed_client,
};

async fn hub_server() -> TestServer {
    TestServer::builder()
        .config(|c| {
            let hub = &mut c.compat.runnerhub;
            hub.enabled = true;
            hub.listen = Some("127.0.0.1:0".parse().expect("address"));
            hub.anonymous_stream = Some(StreamPrincipal {
                user: "hub-events".into(),
                role: taskhost::auth::Role::Admin,
            });
            hub.job_steps = vec![json!({"name": "build", "run": ["sh", "-c",
                "echo Installing dependencies for $GITHUB_REPOSITORY; echo Build and Test done"]})];
        })
        .start()
        .await
}

/// The hub's own request, as its document shows it.
fn delegation() -> Value {
    json!({
        "repository": "owner/repo",
        "job_id": "123456789",
        "job_name": "Build and Test",
        "workflow_name": "CI/CD Pipeline",
        "labels": ["ubuntu-latest", "node"],
        "metadata": {"branch": "main", "commit_sha": "abc123def456", "pr_number": 42},
        "env": {"GITHUB_REPOSITORY": "owner/repo"},
    })
}

async fn hub(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("sent");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_documents_curl_and_websocket_snippets_see_a_delegated_job_run_on_a_real_runner() {
    require_tool("node", &["--version"]);
    require_tool("jq", &["--version"]);
    let server = hub_server().await;
    let base = format!("http://{}", server.facades["compat.runnerhub"]);
    let token = server.user_token("hubadmin", "admin").await;
    let key = server.runner_key().await;
    let runner = RunnerProcess::spawn(
        &server,
        &key,
        "runnerhub-1",
        &["ubuntu-latest", "node", "docker"],
    );
    let runner_id = runner.id(&server).await;
    let work = tempfile::tempdir().expect("work dir");

    // The WebSocket snippet, which sends no credential.
    let snippet = seed_client("runnerhub", "client.js")
        .replace("ws://localhost:3001", &base.replace("http://", "ws://"));
    std::fs::write(work.path().join("client.js"), snippet).expect("script");
    let mut node = tokio::process::Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "client.js"])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut node_lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    // Node prints a frame over several lines.
    let mut greeting = String::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = node_lines.next_line().await {
            greeting.push_str(&line);
            if greeting.contains("connection_established") {
                return;
            }
        }
    })
    .await
    .expect("the snippet connected");
    assert!(greeting.contains("connection_established"), "{greeting}");

    let client = client_with_token(&token);
    let (status, delegated) = hub(
        &client,
        reqwest::Method::POST,
        format!("{base}/api/jobs/delegate"),
        Some(delegation()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{delegated}");
    assert_eq!(delegated["success"], true);
    assert_eq!(delegated["message"], "Job delegated successfully");
    let job = delegated["data"]["delegation_id"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert_eq!(delegated["data"]["status"], "pending");

    let view = {
        let (client, base, job) = (&client, &base, &job);
        eventually(Duration::from_secs(60), move || async move {
            let (_, view) = hub(
                client,
                reqwest::Method::GET,
                format!("{base}/api/jobs/{job}"),
                None,
            )
            .await;
            if view["data"]["status"] == "completed" {
                Ok(view)
            } else {
                Err(format!("{view}"))
            }
        })
        .await
    };
    let data = &view["data"];
    assert_eq!(data["runner_id"], runner_id.as_str(), "{view}");
    assert_eq!(
        (
            &data["github_job_id"],
            &data["job_name"],
            &data["repository"],
            &data["workflow_name"]
        ),
        (
            &json!(123456789),
            &json!("Build and Test"),
            &json!("owner/repo"),
            &json!("CI/CD Pipeline")
        )
    );
    assert_eq!(data["metadata"]["pr_number"], 42);
    assert_eq!(data["progress"]["percentage"], 100);
    assert_eq!(data["logs_url"], format!("/api/jobs/{job}/logs"));

    // The cURL snippet: login, then the jobs, as the document prints them.
    let curl = seed_client("runnerhub", "curl.sh")
        .replace("http://localhost:3001", &base)
        .replace(
            r#"{"username":"admin","password":"admin123"}"#,
            r#"{"username":"hubadmin","password":"hubadmin-password"}"#,
        );
    let printed = run_client(tokio::process::Command::new("sh").arg("-c").arg(&curl)).await;
    let listing: Value =
        serde_json::from_str(&printed).expect("the snippet prints the jobs as JSON");
    assert_eq!(listing["success"], true, "{listing}");
    assert_eq!(listing["data"]["jobs"][0]["id"], job.as_str());
    assert_eq!(
        listing["data"]["pagination"],
        json!({"total": 1, "limit": 50, "offset": 0, "pages": 1})
    );

    // The snippet saw the job's status change, in the hub's frame.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = node_lines.next_line().await {
            let done = line.contains(&job) || seen.iter().any(|l: &String| l.contains(&job));
            seen.push(line);
            let text = seen.join("\n");
            if done && text.contains("status: 'completed'") {
                return;
            }
        }
        panic!("node ended early: {}", seen.join("\n"));
    })
    .await
    .unwrap_or_else(|_| panic!("no completed job_status: {}", seen.join("\n")));
    let received = seen.join("\n");
    assert!(received.contains("type: 'job_status'"), "{received}");
    assert!(received.contains(&format!("job_id: '{job}'")), "{received}");

    // Its log, line by line with the step that printed it, or as text.
    let (_, logs) = hub(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/jobs/{job}/logs?lines=100"),
        None,
    )
    .await;
    let line = logs["data"]["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .find(|l| l["message"] == "Installing dependencies for owner/repo")
        .unwrap_or_else(|| panic!("{logs}"))
        .clone();
    assert_eq!(line["step"], "build");
    assert_eq!(logs["data"]["metadata"]["job_status"], "completed");
    assert!(logs["data"]["metadata"]["total_lines"].as_u64().unwrap() >= 2);
    let text = client
        .get(format!("{base}/api/jobs/{job}/logs?lines=1&format=text"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert_eq!(text.lines().count(), 1, "{text}");

    // Filters by runner, repository and status.
    for (query, expected) in [
        (format!("runner_id={runner_id}"), 1),
        ("runner_id=someone-else".to_owned(), 0),
        ("repository=owner/repo&status=completed".to_owned(), 1),
        ("repository=other/repo".to_owned(), 0),
        ("status=running".to_owned(), 0),
    ] {
        let (_, page) = hub(
            &client,
            reqwest::Method::GET,
            format!("{base}/api/jobs?{query}"),
            None,
        )
        .await;
        assert_eq!(
            page["data"]["pagination"]["total"], expected,
            "{query}: {page}"
        );
    }

    // The fleet, a runner's status, the queues and the hub's health.
    let (_, fleet) = hub(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/runners?status=online&labels=node"),
        None,
    )
    .await;
    assert_eq!(
        fleet["data"]["runners"][0]["id"],
        runner_id.as_str(),
        "{fleet}"
    );
    assert_eq!(fleet["data"]["summary"]["total"], 1);
    let (_, status) = hub(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/runners/{runner_id}/status"),
        None,
    )
    .await;
    assert_eq!(status["data"]["health"]["status"], "healthy", "{status}");
    let (_, queues) = hub(
        &client,
        reqwest::Method::GET,
        format!("{base}/api/queues/status"),
        None,
    )
    .await;
    let runner_queue = queues["data"]["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == "runner")
        .unwrap_or_else(|| panic!("{queues}"))
        .clone();
    assert_eq!(runner_queue["completed"], 1, "{queues}");
    assert!(
        queues["data"]["summary"]["total_completed"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let (status, health) = hub(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        format!("{base}/health"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&health["status"], &health["metrics"]["online_runners"]),
        (&json!("healthy"), &json!(1)),
        "{health}"
    );
}

#[tokio::test]
async fn registration_secret_scans_and_errors_speak_the_hubs_shapes() {
    let server = hub_server().await;
    let base = format!("http://{}", server.facades["compat.runnerhub"]);
    let admin = client_with_token(&server.user_token("hubadmin", "admin").await);

    let (status, registered) = hub(
        &admin,
        reqwest::Method::POST,
        format!("{base}/api/runners"),
        Some(json!({
            "name": "runnerhub-2",
            "labels": ["ubuntu-latest", "docker", "node"],
            "os": "linux",
            "architecture": "x64",
            "capabilities": {"docker": true, "kubernetes": false, "max_concurrent_jobs": 5},
            "resource_info": {"cpu_cores": 8, "memory_gb": 16, "disk_gb": 200},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let data = &registered["data"];
    assert_eq!(
        data["capabilities"],
        json!({"docker": true, "kubernetes": false, "max_concurrent_jobs": 5})
    );
    assert_eq!(data["resource_info"]["memory_gb"], 16);
    assert_eq!(
        (&data["os"], &data["architecture"]),
        (&json!("linux"), &json!("x64"))
    );
    assert!(data["token"].as_str().unwrap().starts_with("thr_"));

    // A secret in submitted content is found and shown masked.
    let leaked = "AKIAIOSFODNN7EXAMPLE";
    let (status, scan) = hub(
        &admin,
        reqwest::Method::POST,
        format!("{base}/api/security/secret-scan"),
        Some(json!({
            "content": format!("step 3: export AWS_ACCESS_KEY_ID={leaked}\n"),
            "scan_rules": ["api_keys", "passwords", "tokens"],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{scan}");
    assert_eq!(scan["data"]["status"], "completed", "{scan}");
    assert!(
        scan["data"]["secrets_found"].as_u64().unwrap() >= 1,
        "{scan}"
    );
    assert!(
        !scan.to_string().contains(leaked),
        "the secret came back: {scan}"
    );

    // Errors in the hub's envelope and codes.
    let (status, missing) = hub(
        &admin,
        reqwest::Method::GET,
        format!("{base}/api/jobs/no-such-job"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["success"], false);
    assert_eq!(missing["error"]["code"], "RESOURCE_NOT_FOUND", "{missing}");
    assert!(missing["error"]["request_id"].is_string());
    let (status, anonymous) = hub(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        format!("{base}/api/jobs"),
        None,
    )
    .await;
    assert_eq!(
        (status, &anonymous["error"]["code"]),
        (StatusCode::UNAUTHORIZED, &json!("AUTHENTICATION_REQUIRED"))
    );
    let viewer = client_with_token(&server.user_token("watcher", "viewer").await);
    let (status, refused) = hub(
        &viewer,
        reqwest::Method::GET,
        format!("{base}/api/runners"),
        None,
    )
    .await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (StatusCode::FORBIDDEN, &json!("AUTHORIZATION_FAILED")),
        "{refused}"
    );
    let (status, bad) = hub(
        &admin,
        reqwest::Method::GET,
        format!("{base}/api/jobs?status=sleeping"),
        None,
    )
    .await;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("VALIDATION_ERROR")),
        "{bad}"
    );
    // Without steps and without job_steps, a delegation is refused, not stored.
    let plain = TestServer::builder()
        .config(|c| c.compat.runnerhub.enabled = true)
        .start()
        .await;
    let plain_admin = client_with_token(&plain.token);
    let (status, refused) = hub(
        &plain_admin,
        reqwest::Method::POST,
        plain.url("/api/jobs/delegate"),
        Some(delegation()),
    )
    .await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("VALIDATION_ERROR")),
        "{refused}"
    );
    let (_, tasks) = plain.api().get("/api/v1/tasks?plugin=runner").await;
    assert_eq!(tasks["meta"]["total"], 0);
}
