//! Runners over the real HTTP API: registration, label matching, leases that lapse and are
//! taken by another runner, reports flowing into the task, and runner tokens that are good for
//! nothing else. The test plays the runner through the runner routes.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use taskhost::runtime::{Grants, RunnersGrant};

use crate::harness::{Api, TestServer, assert_error, client_with_token};

/// A runner driven by the test through the runner routes.
struct HttpRunner {
    id: String,
    base: String,
    client: reqwest::Client,
}

impl HttpRunner {
    async fn register(server: &TestServer, name: &str, labels: &[&str]) -> Self {
        let (status, body) = server
            .api()
            .post(
                "/api/v1/runners",
                json!({"name": name, "labels": labels, "capacity": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = body["token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("thr_"));
        Self {
            id: body["id"].as_str().unwrap().to_owned(),
            client: client_with_token(&token),
            base: server.url(""),
        }
    }

    fn api(&self) -> Api<'_> {
        Api {
            client: &self.client,
            base: self.base.clone(),
        }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.api()
            .post(&format!("/api/v1/runners/{}{path}", self.id), body)
            .await
    }

    async fn claim(&self, wait_ms: u64) -> Option<Value> {
        let (status, lease) = self
            .post(&format!("/jobs/claim?wait_ms={wait_ms}"), Value::Null)
            .await;
        match status {
            StatusCode::OK => Some(lease),
            StatusCode::NO_CONTENT => None,
            other => panic!("claim answered {other}: {lease}"),
        }
    }

    async fn report(&self, job: &str, what: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/jobs/{job}/{what}"), body).await
    }
}

fn delegate(labels: &[&str], run: &[&str]) -> Value {
    json!({
        "plugin": "runner",
        "type": "delegate",
        "input": {
            "repository": "owner/repo",
            "job_id": "123456789",
            "job_name": "Build and Test",
            "workflow_name": "CI/CD Pipeline",
            "labels": labels,
            "metadata": {"branch": "main"},
            "steps": [{"name": "test", "run": run}],
        },
    })
}

#[tokio::test]
async fn a_delegated_job_runs_on_the_runner_whose_labels_match_and_reports_into_the_task() {
    let server = TestServer::builder().start().await;
    let linux = HttpRunner::register(&server, "linux", &["linux"]).await;
    let rust = HttpRunner::register(&server, "rust", &["linux", "rust"]).await;
    let api = server.api();
    let task = api.create(delegate(&["rust"], &["cargo", "test"])).await;
    let id = task["id"].as_str().unwrap();

    // The job is dispatched while the linux runner waits; it lacks the rust label.
    assert!(
        linux.claim(1500).await.is_none(),
        "linux lacks the rust label"
    );
    let lease = rust
        .claim(10_000)
        .await
        .expect("the rust runner gets the job");
    assert_eq!(lease["task_id"], id);
    assert_eq!(lease["delivery"], 1);
    assert_eq!(
        lease["spec"]["steps"][0]["command"],
        json!(["cargo", "test"])
    );
    assert_eq!(lease["spec"]["metadata"]["repository"], "owner/repo");
    let job = lease["job_id"].as_str().unwrap();

    let (status, body) = rust
        .report(job, "logs", json!({"lines": [{"line": "running 3 tests"}, {"stream": "stderr", "line": "warning: unused"}]}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = rust
        .report(
            job,
            "progress",
            json!({"processed": 1, "total": 1, "step": "cargo test"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let outcome = json!({"name": "test", "exit_code": 0, "duration_ms": 1234, "output_tail": "test result: ok. 3 passed"});
    assert_eq!(
        rust.report(job, "steps", outcome).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, state) = rust
        .report(job, "finish", json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");

    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["runner_id"], rust.id.as_str());
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["steps"][0]["exit_code"], 0);
    assert_eq!(
        result["steps"][0]["output_tail"],
        "test result: ok. 3 passed"
    );
    let logs = server.logs(id).await;
    assert!(
        logs.contains("running 3 tests") && logs.contains("warning: unused"),
        "{logs}"
    );
    let progress_steps: Vec<Value> = api
        .events(id)
        .await
        .into_iter()
        .filter(|e| e["type"] == "progress")
        .map(|e| e["data"]["current_step"].clone())
        .collect();
    assert!(
        progress_steps.contains(&json!("cargo test")),
        "{progress_steps:?}"
    );

    let (_, runners) = api.get("/api/v1/runners").await;
    let listed = runners["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|r| r["online"] == true && r.get("token").is_none()),
        "{runners}"
    );
}

#[tokio::test]
async fn a_lapsed_lease_puts_the_job_back_and_another_runner_finishes_it_and_labels_the_task() {
    let server = TestServer::builder()
        .config(|c| c.runners.lease_s = 1)
        .start()
        .await;
    let first = HttpRunner::register(&server, "first", &["linux"]).await;
    let api = server.api();
    let task = api.create(delegate(&["linux"], &["make", "test"])).await;
    let id = task["id"].as_str().unwrap();
    let lease = first.claim(10_000).await.expect("a job");
    let job = lease["job_id"].as_str().unwrap().to_owned();

    // The first runner goes silent; a second one takes the job once the lease lapses.
    let second = HttpRunner::register(&server, "second", &["linux"]).await;
    let again = second.claim(10_000).await.expect("the job comes back");
    assert_eq!(again["job_id"], job.as_str());
    assert_eq!(again["delivery"], 2);

    // The first runner, back, may no longer report on it and is told to stop.
    let (status, body) = first
        .report(&job, "finish", json!({"status": "succeeded"}))
        .await;
    assert_error(status, &body, 409, "JOB_NOT_LEASED");
    let (_, beat) = first.post("/heartbeat", json!({"running": [job]})).await;
    assert_eq!(beat["stop"], json!([job]));

    let (status, _) = second
        .report(&job, "finish", json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["runner_id"], second.id.as_str());

    // The task is labelled with the runner that last took its job, and listed by it.
    assert_eq!(done["labels"]["taskhost/runner"], second.id.as_str());
    let api = &api;
    let listed = |runner: &str| {
        let path = format!("/api/v1/tasks?label.taskhost/runner={runner}");
        async move {
            let (status, page) = api.get(&path).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&second.id).await, [id]);
    assert!(listed(&first.id).await.is_empty());
    // Clients filter by the host's labels but do not set them.
    let mut forged = delegate(&["linux"], &["make"]);
    forged["labels"] = json!({"taskhost/runner": first.id});
    let (status, body) = api.post("/api/v1/tasks", forged).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
}

#[tokio::test]
async fn a_delegate_task_waits_for_a_matching_runner_and_fails_with_the_failed_step() {
    let server = TestServer::builder().start().await;
    let api = server.api();
    let task = api.create(delegate(&["gpu"], &["pytest"])).await;
    let id = task["id"].as_str().unwrap();
    api.wait_for(id, Duration::from_secs(10), |t| {
        t["progress"]["current_step"] == "Waiting for a runner with labels gpu"
    })
    .await;

    let gpu = HttpRunner::register(&server, "gpu", &["gpu"]).await;
    let lease = gpu.claim(10_000).await.expect("a job");
    let job = lease["job_id"].as_str().unwrap();
    let outcome =
        json!({"name": "test", "exit_code": 1, "duration_ms": 10, "output_tail": "1 failed"});
    assert_eq!(
        gpu.report(job, "steps", outcome).await.0,
        StatusCode::NO_CONTENT
    );
    gpu.report(job, "finish", json!({"status": "failed"})).await;
    let done = api.finished(id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "JOB_FAILED", "{done}");
    assert_eq!(done["attempt"], 1, "a failed build is not retried");
}

#[tokio::test]
async fn runner_tokens_work_only_on_runner_routes_and_only_for_their_runner() {
    let server = TestServer::builder().start().await;
    let one = HttpRunner::register(&server, "one", &[]).await;
    let two = HttpRunner::register(&server, "two", &[]).await;
    let as_runner = one.api();
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/tasks"),
        (reqwest::Method::POST, "/api/v1/tasks"),
        (reqwest::Method::GET, "/api/v1/runners"),
        (reqwest::Method::GET, "/api/v1/plugins"),
        (reqwest::Method::POST, "/api/v1/auth/api-keys"),
    ] {
        let (status, body) = as_runner.send(method, path, Some(json!({}))).await;
        assert_error(status, &body, 401, "AUTHENTICATION_REQUIRED");
    }
    // Its own routes, but another runner's id.
    let (status, body) = as_runner
        .post(&format!("/api/v1/runners/{}/heartbeat", two.id), json!({}))
        .await;
    assert_error(status, &body, 403, "FORBIDDEN");
    // A person's token is not a runner token.
    let (status, body) = server
        .api()
        .post(&format!("/api/v1/runners/{}/heartbeat", one.id), json!({}))
        .await;
    assert_error(status, &body, 401, "AUTHENTICATION_REQUIRED");
    // Registering needs runners:register; a plain user lacks it.
    let user = server.user("alice", "user").await;
    let (status, body) = Api {
        client: &user,
        base: server.url(""),
    }
    .post("/api/v1/runners", json!({"name": "mine"}))
    .await;
    assert_error(status, &body, 403, "FORBIDDEN");
    // A removed runner's token stops working.
    let (status, _) = server
        .api()
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/runners/{}", one.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = one.post("/heartbeat", json!({})).await;
    assert_error(status, &body, 401, "AUTHENTICATION_REQUIRED");
}

#[tokio::test]
async fn delegation_needs_the_runners_grant_and_keeps_to_the_granted_pool() {
    // Switched off: the plugin may neither look for runners nor dispatch.
    let server = TestServer::builder()
        .plugin_grants(
            "runner",
            Grants {
                runners: Some(RunnersGrant::default()),
                ..Grants::default()
            },
        )
        .start()
        .await;
    let _runner = HttpRunner::register(&server, "any", &["linux"]).await;
    let api = server.api();
    let task = api.create(delegate(&["linux"], &["make"])).await;
    let done = api.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "CAPABILITY_NOT_GRANTED", "{done}");

    // A pool: every job the plugin dispatches also needs the pool's label.
    let server = TestServer::builder()
        .plugin_grants(
            "runner",
            Grants {
                runners: Some(RunnersGrant {
                    allow: true,
                    require_labels: vec!["pool-ci".into()],
                }),
                ..Grants::default()
            },
        )
        .start()
        .await;
    let outside = HttpRunner::register(&server, "outside", &["linux"]).await;
    let inside = HttpRunner::register(&server, "inside", &["linux", "pool-ci"]).await;
    let api = server.api();
    let task = api.create(delegate(&["linux"], &["make"])).await;
    let id = task["id"].as_str().unwrap();
    let lease = inside
        .claim(10_000)
        .await
        .expect("the pool's runner gets it");
    assert_eq!(lease["task_id"], id);
    assert_eq!(lease["spec"]["labels"], json!(["linux", "pool-ci"]));
    assert!(outside.claim(500).await.is_none(), "outside the pool");
}

#[tokio::test]
async fn the_fleet_shows_state_profile_and_usage_filters_by_status_and_labels_and_sums_up() {
    let server = TestServer::builder()
        .config(|c| c.runners.offline_after_s = 1)
        .start()
        .await;
    let api = server.api();
    let (status, big) = api
        .post(
            "/api/v1/runners",
            json!({
                "name": "big", "labels": ["linux", "docker"], "capacity": 1,
                "os": "linux", "architecture": "x64",
                "capabilities": {"docker": true, "kubernetes": false, "max_concurrent_jobs": 5},
                "resource_info": {"cpu_cores": 8, "memory_gb": 16, "disk_gb": 200},
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{big}");
    assert_eq!(big["status"], "online");
    assert_eq!(big["capabilities"]["max_concurrent_jobs"], 5);
    let big = HttpRunner {
        id: big["id"].as_str().unwrap().to_owned(),
        client: client_with_token(big["token"].as_str().unwrap()),
        base: server.url(""),
    };
    let idle = HttpRunner::register(&server, "idle", &["linux"]).await;
    let silent = HttpRunner::register(&server, "silent", &["windows"]).await;

    // What a runner may say about itself is bounded, and a refusal registers nothing.
    let too_many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("c{i}"), json!(true))).collect();
    for bad in [
        json!({"name": "x", "os": "linux; rm -rf /"}),
        json!({"name": "x", "capabilities": {"nested": {"no": 1}}}),
        json!({"name": "x", "capabilities": too_many}),
        json!({"name": "x", "resource_info": {"bad key": 1}}),
    ] {
        let (status, body) = api.post("/api/v1/runners", bad.clone()).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }

    let task = api.create(delegate(&["docker"], &["make"])).await;
    let lease = big.claim(10_000).await.expect("big takes the docker job");
    let job = lease["job_id"].as_str().unwrap().to_owned();
    let (status, body) = big
        .post(
            "/heartbeat",
            json!({"running": [job], "resource_usage": {"cpu_usage": 45.2, "memory_usage": 512}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = big
        .post(
            "/heartbeat",
            json!({"resource_usage": {"cpu_usage": "high"}}),
        )
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    // `silent` says nothing for longer than offline_after_s; the others keep beating.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for runner in [&big, &idle] {
        let running = if runner.id == big.id {
            json!([job])
        } else {
            json!([])
        };
        let (status, body) = runner.post("/heartbeat", json!({"running": running})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let names = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = api.get("/api/v1/runners").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(
        all["summary"],
        json!({"total": 3, "online": 2, "busy": 1, "idle": 1, "offline": 1})
    );
    assert_eq!(names(&all), ["big", "idle", "silent"]);

    let (_, busy) = api.get("/api/v1/runners?status=busy").await;
    assert_eq!(names(&busy), ["big"]);
    let shown = &busy["data"][0];
    assert_eq!(shown["busy"], true);
    assert_eq!(
        shown["current_job"],
        json!({"job_id": job, "task_id": task["id"]})
    );
    assert_eq!(
        shown["resource_usage"],
        json!({"cpu_usage": 45.2, "memory_usage": 512.0}),
        "the usage last reported is kept by heartbeats that carry none"
    );
    assert_eq!(
        (&shown["os"], &shown["architecture"]),
        (&json!("linux"), &json!("x64"))
    );
    assert_eq!(shown["resource_info"]["cpu_cores"], 8);
    assert_eq!(
        busy["summary"], all["summary"],
        "the summary counts every runner one may see"
    );

    for (query, expected) in [
        ("status=idle", vec!["idle"]),
        ("status=offline", vec!["silent"]),
        ("status=online", vec!["big", "idle"]),
        ("labels=linux,docker", vec!["big"]),
        ("labels=linux", vec!["big", "idle"]),
        ("status=idle&labels=docker", vec![]),
    ] {
        let (status, list) = api.get(&format!("/api/v1/runners?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(names(&list), expected, "{query}");
    }
    let (_, offline) = api.get(&format!("/api/v1/runners/{}", silent.id)).await;
    assert_eq!(
        (&offline["status"], &offline["busy"]),
        (&json!("offline"), &json!(false))
    );
    for bad in ["status=sleeping", "colour=blue"] {
        let (status, body) = api.get(&format!("/api/v1/runners?{bad}")).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn a_jobs_log_reads_as_its_last_lines_in_json_or_text_and_follows_on_from_them() {
    let server = TestServer::builder().start().await;
    let runner = HttpRunner::register(&server, "logger", &["linux"]).await;
    let api = server.api();
    let task = api.create(delegate(&["linux"], &["make"])).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let lease = runner.claim(10_000).await.expect("the job");
    let job = lease["job_id"].as_str().unwrap().to_owned();
    let lines: Vec<Value> = (1..=30)
        .map(|n| json!({"line": format!("line {n:03}")}))
        .collect();
    let (status, body) = runner.report(&job, "logs", json!({"lines": lines})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let messages = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["message"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = api
        .get(&format!("/api/v1/tasks/{id}/logs?limit=1000"))
        .await;
    let all = messages(&all);
    assert!(all.len() >= 30, "{all:?}");
    let (status, tail) = api.get(&format!("/api/v1/tasks/{id}/logs?lines=5")).await;
    assert_eq!(status, StatusCode::OK, "{tail}");
    assert_eq!(messages(&tail), all[all.len() - 5..]);
    assert!(messages(&tail).contains(&"line 030".to_owned()));

    let response = server
        .client
        .get(server.url(&format!("/api/v1/tasks/{id}/logs?lines=3&format=text")))
        .send()
        .await
        .expect("sent");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("text");
    let text_lines: Vec<&str> = text.lines().collect();
    assert_eq!(text_lines.len(), 3, "{text}");
    for (line, message) in text_lines.iter().zip(&all[all.len() - 3..]) {
        assert!(line.ends_with(&format!(" INFO {message}")), "{line}");
    }

    for bad in [
        "lines=0",
        "lines=10001",
        "lines=5&since=3",
        "format=xml",
        "follow=true&format=text",
    ] {
        let (status, body) = api.get(&format!("/api/v1/tasks/{id}/logs?{bad}")).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }

    // Following from a tail: those lines, then what comes until the task ends.
    let follow = server
        .client
        .get(server.url(&format!("/api/v1/tasks/{id}/logs?lines=5&follow=true")))
        .send()
        .await
        .expect("sent");
    assert_eq!(follow.status(), StatusCode::OK);
    let (status, body) = runner
        .report(&job, "logs", json!({"lines": [{"line": "after the tail"}]}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, state) = runner
        .report(&job, "finish", json!({"status": "succeeded"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let streamed = tokio::time::timeout(Duration::from_secs(20), follow.text())
        .await
        .expect("the stream ends with the task")
        .expect("body");
    for message in &all[all.len() - 5..] {
        assert!(streamed.contains(message.as_str()), "{message}: {streamed}");
    }
    assert!(
        !streamed.contains(all[all.len() - 6].as_str()),
        "nothing before the tail: {streamed}"
    );
    assert!(streamed.contains("after the tail"), "{streamed}");
}
