//! The build/analysis service's own clients against its façade (`[compat.build_analysis]`):
//! the Python and JavaScript examples of its API document, copied verbatim into
//! `tests/seed-clients/build_analysis/`, run with only the base URL and the token changed, and
//! a real pytest build runs on a real `taskhost-runner`. The Python example calls `time.sleep`
//! without importing `time` (it fails on any server); the test hands it `time` as a builtin
//! instead of editing it. Then analyses answered at once, and the service's error shape.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use taskhost::config::Config;
use taskhost::runtime::Grants;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::harness::{
    RunnerProcess, TestServer, read_only_grants, require_tool, run_client, seed_client,
};

/// A Python project with three passing tests, as `my-app`.
fn python_project(root: &Path) -> PathBuf {
    let project = root.join("my-app");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(
        project.join("auth.py"),
        "def check(user, password):\n    return bool(user) and len(password) >= 8\n",
    )
    .expect("source");
    std::fs::write(
        project.join("test_auth.py"),
        "from auth import check\n\ndef test_accepts():\n    assert check('a', 'long-password')\n\ndef test_refuses_short():\n    assert not check('a', 'short')\n\ndef test_refuses_nobody():\n    assert not check('', 'long-password')\n",
    )
    .expect("tests");
    project
}

fn with_service(config: &mut Config, project: &Path, sources: &Path) {
    config.compat.build_analysis.enabled = true;
    config.compat.build_analysis.listen = Some("127.0.0.1:0".parse().expect("address"));
    let mut build = Grants::default();
    build
        .config
        .insert("project.my-app".into(), project.display().to_string());
    // Builds run commands on runners: the plugin is restricted to the users its grants name.
    build.access.creators = vec!["alice".into()];
    config.plugins.insert("build".into(), build);
    config
        .plugins
        .insert("analysis".into(), read_only_grants(sources, "/src", &[]));
}

/// Logs in through the service's own `/auth/login`.
async fn service_token(server: &TestServer, base: &str) -> String {
    server.user_token("alice", "user").await;
    let login: Value = reqwest::Client::new()
        .post(format!("{base}/auth/login"))
        .json(&json!({"username": "alice", "password": "alice-password"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("JSON");
    assert_eq!(login["token_type"], "bearer", "{login}");
    login["access_token"].as_str().expect("a token").to_owned()
}

#[tokio::test]
async fn the_documents_python_and_javascript_clients_build_a_real_project_on_a_runner() {
    require_tool("python3", &["-m", "pytest", "--version"]);
    require_tool("node", &["--version"]);
    let sources = tempfile::tempdir().expect("sources");
    let project = python_project(sources.path());
    let server = TestServer::builder()
        .config(|c| with_service(c, &project, sources.path()))
        .start()
        .await;
    let key = server.runner_key().await;
    let _runner = RunnerProcess::spawn(&server, &key, "py-runner", &["python"]);
    let address = server.facades["compat.build_analysis"].to_string();
    let token = service_token(&server, &format!("http://{address}")).await;
    let work = tempfile::tempdir().expect("work dir");
    // The create answers as the service did: 202, the task id, `initializing`.
    let response = crate::harness::client_with_token(&token)
        .post(format!("http://{address}/api/build/"))
        .json(&json!({"project_name": "my-app", "goal": "Warm up", "parameters": {"framework": "pytest"}}))
        .send()
        .await
        .expect("create");
    let status = response.status();
    let created: Value = response.json().await.expect("JSON");
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["status"], "initializing", "{created}");
    server
        .api()
        .finished(created["task_id"].as_str().unwrap())
        .await;

    let python = seed_client("build_analysis", "client.py")
        .replace("localhost:8000", &address)
        .replace("your-jwt-token", &token);
    std::fs::write(work.path().join("client.py"), python).expect("script");
    let printed = run_client(tokio::process::Command::new("python3")
        .args(["-c", "import builtins, time; builtins.time = time; exec(compile(open('client.py').read(), 'client.py', 'exec'))"])
        .current_dir(work.path())).await;
    assert!(
        printed.contains("Status: initializing (0%)") || printed.contains("Status: running"),
        "{printed}"
    );
    assert!(printed.contains("Status: completed (100%)"), "{printed}");
    let finished = printed
        .lines()
        .find(|l| l.starts_with("Build finished:"))
        .unwrap_or_else(|| panic!("no end in {printed}"));
    for expected in [
        "'tests_passed': 3",
        "'tests_failed': 0",
        "'framework': 'pytest'",
        "'requested_framework': 'fastapi'",
    ] {
        assert!(finished.contains(expected), "{expected} not in {finished}");
    }

    // The JavaScript example sends no framework at all: the runner finds the Python tests.
    let script = seed_client("build_analysis", "client.js")
        .replace("localhost:8000", &address)
        .replace("your-jwt-token", &token)
        + r#"
(async () => {
  const build = await createBuild();
  console.log('CREATED ' + JSON.stringify(build));
  await monitorBuild(build.task_id);
})();
setTimeout(() => process.exit(3), 120000);
"#;
    std::fs::write(work.path().join("client.js"), script).expect("script");
    let mut node = tokio::process::Command::new("node")
        .args(["--experimental-websocket", "--no-warnings", "client.js"])
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let created = tokio::time::timeout(Duration::from_secs(120), async {
        let mut created = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix("CREATED ") {
                created = Some(serde_json::from_str::<Value>(json).expect("JSON"));
            }
            let done = line == "Progress: 100%";
            seen.push(line);
            if done {
                return created;
            }
        }
        panic!("node ended early: {seen:?}");
    })
    .await
    .expect("the JavaScript client saw the build reach 100%")
    .expect("a created build");
    assert_eq!(created["status"], "initializing", "{created}");
    assert!(
        seen.iter().any(|l| l.starts_with("Progress: 0%")),
        "{seen:?}"
    );
    let id = created["task_id"].as_str().unwrap();
    let done = server.api().finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["framework"], "pytest",
        "detected on the runner: {done}"
    );
    assert_eq!(done["result"]["tests_passed"], 3);
    assert_eq!(done["owner"], "alice");
}

#[tokio::test]
async fn analyses_answer_at_once_and_errors_come_in_the_services_shape() {
    let sources = tempfile::tempdir().expect("sources");
    let project = python_project(sources.path());
    std::fs::write(
        project.join("settings.py"),
        "AWS_KEY = 'AKIAZ7Q4R2X9M3KD8W1P'\n",
    )
    .expect("source");
    let server = TestServer::builder()
        .config(|c| with_service(c, &project, sources.path()))
        .start()
        .await;
    let base = format!("http://{}", server.facades["compat.build_analysis"]);
    let token = service_token(&server, &base).await;
    let client = crate::harness::client_with_token(&token);
    let analysis: Value = client
        .post(format!("{base}/api/analysis/"))
        .json(&json!({"project_name": "my-app", "analysis_types": ["quality", "security", "types"], "unused": 1}))
        .send()
        .await
        .expect("analysis")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        analysis["status"], "completed",
        "answered once done: {analysis}"
    );
    assert_eq!(analysis["performed_by"], "alice");
    assert!(analysis["quality_score"].is_number(), "{analysis}");
    assert!(
        analysis["security_issues"]
            .as_array()
            .is_some_and(|i| !i.is_empty()),
        "{analysis}"
    );
    let id = analysis["analysis_id"].as_str().unwrap();
    let again: Value = client
        .get(format!("{base}/api/analysis/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("JSON");
    assert_eq!(again["quality_score"], analysis["quality_score"]);

    let missing = client
        .get(format!("{base}/api/build/no-such-build"))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("JSON");
    assert_eq!(
        (&body["error"], &body["status_code"]),
        (&json!("task_not_found"), &json!(404)),
        "{body}"
    );
    assert!(body["detail"].is_string() && body["timestamp"].is_string());
    // An analysis is not a build.
    let wrong = client
        .get(format!("{base}/api/build/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), 404);
    let anonymous = reqwest::get(format!("{base}/api/build/"))
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);
    let refused: Value = client
        .post(format!("{base}/api/build"))
        .json(&json!({"project_name": "../etc", "goal": "x"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("JSON");
    assert_eq!(refused["status_code"], 400, "{refused}");
    let (_, listed) = server.api().get("/api/v1/tasks?plugin=build").await;
    assert_eq!(
        listed["meta"]["total"], 0,
        "the refused build stored nothing"
    );
    let health: Value = reqwest::get(format!("{base}/api/health/"))
        .await
        .expect("health")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health["status"], "healthy");
    let status: Value = reqwest::get(format!("{base}/api/health/status"))
        .await
        .expect("status")
        .json()
        .await
        .expect("JSON");
    assert_eq!(status["components"]["database"], "healthy", "{status}");
}
