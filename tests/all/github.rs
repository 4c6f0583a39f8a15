//! GitHub `workflow_job` webhooks against a real host and a real `taskhost-runner`: a signed
//! `queued` delivery becomes a delegated job that runs the operator's steps with the job's
//! facts in its environment; a forged or unsigned one changes nothing; a redelivery creates
//! nothing twice; a job GitHub cancels is cancelled; the repositories seen list their jobs.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use taskhost::runtime::{Grants, RunnersGrant};

use crate::harness::{Api, RunnerProcess, TestServer, assert_error, client_with_token, eventually};

const SECRET: &str = "webhook-secret-for-tests";

fn signature(body: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A delivery as GitHub sends it (the fields that matter, and some that do not).
fn workflow_job(action: &str, id: u64, labels: &[&str], conclusion: Value) -> Value {
    json!({
        "action": action,
        "workflow_job": {
            "id": id,
            "run_id": 5_000_000_001u64,
            "workflow_name": "CI/CD Pipeline",
            "head_branch": "main",
            "run_url": "https://api.github.com/repos/octo-org/hello-world/actions/runs/5000000001",
            "head_sha": "abc123def4567890abc123def4567890abc123de",
            "html_url": format!("https://github.com/octo-org/hello-world/actions/runs/5000000001/job/{id}"),
            "status": if action == "completed" { "completed" } else { "queued" },
            "conclusion": conclusion,
            "name": "Build and Test",
            "steps": [],
            "labels": labels,
            "runner_id": null,
            "runner_name": null,
        },
        "repository": {
            "id": 1_296_269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": "hello-world",
            "full_name": "octo-org/hello-world",
            "private": false,
        },
        "sender": {"login": "octocat", "id": 1},
    })
}

async fn deliver(
    server: &TestServer,
    event: &str,
    body: &Value,
    secret: &str,
) -> (StatusCode, Value) {
    let bytes = serde_json::to_vec(body).expect("JSON");
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/github/webhook"))
        .header("x-github-event", event)
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-hub-signature-256", signature(&bytes, secret))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .expect("delivered");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn github_server() -> TestServer {
    // Delegation runs commands on runners: the runner plugin is restricted to the webhook's
    // user.
    let mut grants = Grants::default();
    grants.access.creators = vec!["github".into()];
    grants.runners = Some(RunnersGrant::allowed());
    TestServer::builder()
        .plugin_grants("runner", grants)
        .config(|c| {
            c.github.enabled = true;
            c.github.webhook_secret = Some(SECRET.into());
            c.github.organization = Some("octo-org".into());
            c.github.steps = vec![json!({"name": "actions-job", "run": ["sh", "-c",
                "echo running job $GITHUB_JOB_ID of $GITHUB_REPOSITORY at $GITHUB_SHA on $GITHUB_REF_NAME"]})];
        })
        .start()
        .await
}

#[tokio::test]
async fn a_signed_queued_workflow_job_runs_on_a_runner_with_its_labels_and_only_once() {
    let server = github_server().await;
    let key = server.runner_key().await;
    let runner = RunnerProcess::spawn(&server, &key, "actions", &["self-hosted", "linux"]);
    let runner_id = runner.id(&server).await;
    let api = server.api();

    let (status, pong) = deliver(
        &server,
        "ping",
        &json!({"zen": "Keep it logically awesome."}),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, &pong["outcome"]),
        (StatusCode::OK, &json!("pong")),
        "{pong}"
    );

    let queued = workflow_job("queued", 29_679_449, &["self-hosted", "linux"], Value::Null);
    // Forged, unsigned or signed for another body: refused, and nothing is created.
    let (status, body) = deliver(&server, "workflow_job", &queued, "not-the-secret").await;
    assert_error(status, &body, 401, "INVALID_SIGNATURE");
    let unsigned = reqwest::Client::new()
        .post(server.url("/api/v1/github/webhook"))
        .header("x-github-event", "workflow_job")
        .json(&queued)
        .send()
        .await
        .expect("sent");
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = api.get("/api/v1/tasks/github-job-29679449").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused delivery created a task"
    );

    let (status, created) = deliver(&server, "workflow_job", &queued, SECRET).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["task_id"], "github-job-29679449");
    let done = api.finished("github-job-29679449").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["owner"], "github");
    assert_eq!(done["title"], "Build and Test");
    assert_eq!(done["result"]["runner_id"], runner_id.as_str());
    assert_eq!(
        (
            &done["labels"]["repository"],
            &done["labels"]["github_job"],
            &done["labels"]["workflow"]
        ),
        (
            &json!("octo-org/hello-world"),
            &json!("29679449"),
            &json!("CI/CD Pipeline")
        )
    );
    let logs = server.logs("github-job-29679449").await;
    assert!(
        logs.contains("running job 29679449 of octo-org/hello-world at abc123def4567890abc123def4567890abc123de on main"),
        "{logs}"
    );

    // GitHub redelivers: nothing runs twice.
    let (status, again) = deliver(&server, "workflow_job", &queued, SECRET).await;
    assert_eq!(
        (status, &again["outcome"]),
        (StatusCode::OK, &json!("duplicate")),
        "{again}"
    );
    let (_, page) = api
        .get("/api/v1/tasks?label.repository=octo-org/hello-world")
        .await;
    assert_eq!(page["meta"]["total"], 1, "{page}");

    // Bad payloads are refused in the API's error format.
    for bad in [
        json!({"action": "queued", "workflow_job": {"id": 1, "name": "x"}, "repository": {"full_name": "no-owner"}}),
        json!({"action": "queued", "repository": {"full_name": "octo-org/hello-world"}}),
    ] {
        let (status, body) = deliver(&server, "workflow_job", &bad, SECRET).await;
        assert_error(status, &body, 400, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn a_job_github_cancels_is_cancelled_and_repositories_count_their_jobs_for_those_who_see_them()
 {
    let server = github_server().await;
    let api = server.api();
    // No runner carries `gpu`: the job waits, until GitHub says it was cancelled.
    let queued = workflow_job("queued", 41, &["self-hosted", "gpu"], Value::Null);
    let (status, body) = deliver(&server, "workflow_job", &queued, SECRET).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    eventually(Duration::from_secs(30), || async {
        let (_, task) = api.get("/api/v1/tasks/github-job-41").await;
        if task["status"] == "running" {
            Ok(())
        } else {
            Err(format!("{task}"))
        }
    })
    .await;
    let (_, repositories) = api.get("/api/v1/github/repositories").await;
    let repository = &repositories["data"][0];
    assert_eq!(
        repository["full_name"], "octo-org/hello-world",
        "{repositories}"
    );
    assert_eq!(repository["id"], 1_296_269);
    assert_eq!(
        repository["job_count"],
        json!({"total": 1, "this_month": 1, "running": 1})
    );

    let in_progress = workflow_job("in_progress", 41, &["self-hosted", "gpu"], Value::Null);
    let (status, body) = deliver(&server, "workflow_job", &in_progress, SECRET).await;
    assert_eq!(
        (status, &body["outcome"]),
        (StatusCode::OK, &json!("ignored")),
        "{body}"
    );
    let cancelled = workflow_job("completed", 41, &["self-hosted", "gpu"], json!("cancelled"));
    let (status, body) = deliver(&server, "workflow_job", &cancelled, SECRET).await;
    assert_eq!(
        (status, &body["outcome"]),
        (StatusCode::OK, &json!("cancelled")),
        "{body}"
    );
    let done = api.finished("github-job-41").await;
    assert_eq!(done["status"], "cancelled", "{done}");

    let (_, status) = api.get("/api/v1/github/status").await;
    assert_eq!(status["webhook_status"], "active", "{status}");
    assert_eq!(status["organization"], "octo-org");
    assert_eq!(status["deliveries"]["total"], 3);
    assert_eq!(status["repositories_tracked"], 1);
    assert!(!status.to_string().contains(SECRET));

    // A user who sees none of a repository's jobs does not see the repository.
    let stranger = client_with_token(&server.user_token("stranger", "user").await);
    let stranger = Api {
        client: &stranger,
        base: server.url(""),
    };
    let (status, seen) = stranger.get("/api/v1/github/repositories").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["data"], json!([]), "{seen}");
}

#[tokio::test]
async fn a_host_without_the_integration_answers_deliveries_not_found() {
    let server = TestServer::start().await;
    let queued = workflow_job("queued", 7, &["linux"], Value::Null);
    let (status, body) = deliver(&server, "workflow_job", &queued, SECRET).await;
    assert_error(status, &body, 404, "NOT_FOUND");
}
