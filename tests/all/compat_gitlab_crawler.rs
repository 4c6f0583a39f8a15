//! The GitLab crawler's own clients against the façade (`[compat.gitlab_crawler]`): the
//! Python class and the WebSocket snippet of its API document, copied verbatim into
//! `tests/seed-clients/gitlab_crawler/`, run with only the base URL and the token changed.
//! With the plugin executor a real crawl of the GitLab fake runs in the bundled plugin; with
//! the external one the crawler reports its own progress. The access token never shows.

use std::time::Duration;

use serde_json::{Value, json};
use taskhost::auth::{ImportedKey, Role};
use taskhost::compat::gitlab_crawler::CrawlExecutor;
use taskhost::config::Config;
use taskhost::runtime::Grants;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::gitlab::{FakeGitlab, token};
use crate::harness::{TestServer, require_tool, run_client, seed_client};

/// The crawler's `CRAWLER_API_TOKEN`.
const CRAWLER_TOKEN: &str = "crawler-api-token-2025";

fn with_crawler(config: &mut Config, fake: &FakeGitlab, executor: CrawlExecutor) {
    let crawler = &mut config.compat.gitlab_crawler;
    crawler.enabled = true;
    crawler.listen = Some("127.0.0.1:0".parse().expect("address"));
    crawler.executor = executor;
    crawler.api_keys = vec![ImportedKey {
        key: Some(CRAWLER_TOKEN.into()),
        key_env: None,
        key_sha256: None,
        user: "crawler".into(),
        role: Role::User,
    }];
    let mut grants = Grants::default();
    grants
        .http
        .allow
        .push(format!("127.0.0.1:{}", fake.addr.port()));
    config.plugins.insert("gitlab".into(), grants);
}

fn envelope(id: &str, fake: &FakeGitlab) -> Value {
    json!({"type": "task", "data": {
        "id": id, "type": "FETCH_PROJECT_DETAILS",
        "credentials": {"accessToken": token(), "refreshToken": "optional-refresh-token"},
        "apiEndpoint": fake.endpoint(),
        "options": {"resourceId": "42", "resourceType": "project", "pagination": {"pageSize": 100}},
    }})
}

#[tokio::test]
async fn the_documents_python_class_and_websocket_snippet_see_a_real_crawl() {
    require_tool("python3", &["-c", "import requests, websocket"]);
    require_tool("node", &["--version"]);
    let fake = FakeGitlab::start(&token()).await;
    let server = TestServer::builder()
        .config(|c| with_crawler(c, &fake, CrawlExecutor::Plugin))
        .start()
        .await;
    let address = server.facades["compat.gitlab_crawler"].to_string();
    let work = tempfile::tempdir().expect("work dir");

    let snippet = seed_client("gitlab_crawler", "client.js")
        .replace("localhost:5173", &address)
        .replace("your-api-token", CRAWLER_TOKEN);
    std::fs::write(
        work.path().join("client.js"),
        snippet + "\nsetTimeout(() => process.exit(0), 60000);\n",
    )
    .expect("script");
    let mut node = tokio::process::Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "client.js"])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let ready = line.contains("connection_ready");
            seen.push(line);
            if ready {
                return;
            }
        }
    })
    .await
    .expect("the snippet connected");

    let python = seed_client("gitlab_crawler", "client.py")
        + &format!(
            r#"
import time
api = GitLabCrawlerAPI("http://{address}", "{CRAWLER_TOKEN}")
print("CREATED " + json.dumps(api.create_task({envelope})))
for _ in range(600):
    task = requests.get(f"{{api.base_url}}/api/internal2/tasks/task-12345", headers=api.headers).json()
    if task["data"]["status"] in ("completed", "failed"):
        break
    time.sleep(0.05)
print("TASK " + json.dumps(task))
print("HEALTH " + json.dumps(api.get_health()))
print("PROGRESS " + json.dumps(api.update_progress("task-12345", {{"type": "progress", "processed": 1, "total": 2}})))
"#,
            envelope = envelope("task-12345", &fake)
        );
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
    let created = line("CREATED ");
    assert_eq!(created["data"]["id"], "task-12345", "{created}");
    assert_eq!(created["data"]["data"]["credentials"]["accessToken"], "***");
    assert!(
        !printed.contains(&token()),
        "the access token never comes back"
    );
    let task = line("TASK ");
    assert_eq!(task["data"]["status"], "completed", "{task}");
    assert_eq!(task["data"]["type"], "FETCH_PROJECT_DETAILS");
    let health = line("HEALTH ");
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["services"]["jobProcessor"]["recentCompletions"], 1);
    let refused = line("PROGRESS ");
    assert_eq!(
        refused["status"], 409,
        "the plugin runs this task, not the crawler: {refused}"
    );
    assert_eq!(refused["details"]["taskId"], "task-12345");
    assert!(
        fake.seen().iter().any(|s| s.path == "/api/v4/projects/42"),
        "the plugin fetched the project"
    );

    let events = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains("type: 'completed'");
            seen.push(line);
            if done {
                return seen.join("\n");
            }
        }
        seen.join("\n")
    })
    .await
    .expect("the snippet saw the crawl end");
    for expected in [
        "messageQueuing: true",
        "protocolVersion: '1.0'",
        "taskId: 'task-12345'",
        "type: 'started'",
        "type: 'completed'",
    ] {
        assert!(events.contains(expected), "{expected} not in:\n{events}");
    }
}

#[tokio::test]
async fn an_external_crawler_reports_progress_in_its_own_shapes_and_its_token_stays_masked() {
    let fake = FakeGitlab::start(&token()).await;
    let server = TestServer::builder()
        .config(|c| with_crawler(c, &fake, CrawlExecutor::External))
        .start()
        .await;
    let base = format!(
        "http://{}/api/internal2",
        server.facades["compat.gitlab_crawler"]
    );
    let client = crate::harness::client_with_token(CRAWLER_TOKEN);
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = client.request(method, format!("{base}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("request");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, created) = send(
        reqwest::Method::POST,
        "/tasks",
        Some(envelope("ext-1", &fake)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["data"]["executor"], "external");
    let (status, duplicate) = send(
        reqwest::Method::POST,
        "/tasks",
        Some(envelope("ext-1", &fake)),
    )
    .await;
    assert_eq!(
        (status, &duplicate["status"]),
        (409, &json!(409)),
        "{duplicate}"
    );
    let (status, body) = send(
        reqwest::Method::PUT,
        "/tasks/ext-1",
        Some(json!({"status": "running"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        reqwest::Method::POST,
        "/tasks/ext-1/progress",
        Some(json!({"type": "progress", "processed": 75, "total": 100, "currentStep": "Processing merge requests",
                    "percentage": 75, "message": "75% complete - processing merge requests", "timestamp": "2025-01-29T23:00:00.000Z"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, progress) = send(reqwest::Method::GET, "/tasks/ext-1/progress", None).await;
    assert_eq!(progress["progress"]["processed"], 75, "{progress}");
    assert_eq!(
        progress["progress"]["currentStep"],
        "Processing merge requests"
    );
    assert_eq!(progress["progress"]["percentage"], 75.0);
    let (status, done) = send(
        reqwest::Method::PUT,
        "/tasks/ext-1",
        Some(json!({"status": "completed", "progress": {"processed": 100, "total": 100, "currentStep": "Task completed successfully"}})),
    )
    .await;
    assert_eq!(
        (status, &done["data"]["status"]),
        (200, &json!("completed")),
        "{done}"
    );
    let (_, stored) = server.api().get("/api/v1/tasks/ext-1").await;
    assert_eq!(
        stored["input"]["credentials"]["access_token"], "***",
        "masked though the crawler runs it: {stored}"
    );

    for n in 0..12 {
        send(
            reqwest::Method::POST,
            "/tasks",
            Some(envelope(&format!("page-{n}"), &fake)),
        )
        .await;
    }
    let (_, page) = send(reqwest::Method::GET, "/tasks?status=queued", None).await;
    assert_eq!(
        page["meta"],
        json!({"total": 12, "limit": 10, "offset": 0, "hasMore": true})
    );
    assert_eq!(page["data"][0]["progress"]["currentStep"], Value::Null);
    let (status, missing) = send(reqwest::Method::GET, "/tasks/nope", None).await;
    assert_eq!(
        (status, &missing["error"]),
        (404, &json!("Task not found")),
        "{missing}"
    );
    assert_eq!(missing["details"]["taskId"], "nope");
    let anonymous = reqwest::get(format!("{base}/health"))
        .await
        .expect("health");
    assert_eq!(anonymous.status(), 401);
    let (status, info) = send(
        reqwest::Method::POST,
        "/connect",
        Some(json!({"connectionId": "c-1", "clientType": "gitlab-crawler"})),
    )
    .await;
    assert_eq!(
        (status, &info["connectionInfo"]["connectionId"]),
        (200, &json!("c-1")),
        "{info}"
    );
    let (status, deep) = send(
        reqwest::Method::POST,
        "/health",
        Some(json!({"operation": "deep_check"})),
    )
    .await;
    assert_eq!(
        (status, &deep["operation"]),
        (200, &json!("deep_check")),
        "{deep}"
    );
}
