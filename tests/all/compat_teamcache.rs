//! TeamCache's own clients against its façade (`[compat.teamcache]`): the Python and Node.js
//! examples of the gateway's document, copied verbatim into `tests/seed-clients/teamcache/`,
//! run with only the base URL changed (the imported key is the document's `demo-api-key-2024`)
//! and warm a real tree through the bundled cache plugin. Then the gateway's error shapes,
//! listing, cancel and its public health.

use std::path::Path;

use serde_json::{Value, json};
use taskhost::auth::{ImportedKey, Role};
use taskhost::config::Config;

use crate::cache::write_file;
use crate::harness::{
    TestServer, read_only_grants, require_tool, run_client, seed_client, seed_clients_dir,
};

const DOCUMENT_KEY: &str = "demo-api-key-2024";

fn with_gateway(config: &mut Config, root: &Path) {
    let gateway = &mut config.compat.teamcache;
    gateway.enabled = true;
    gateway.listen = Some("127.0.0.1:0".parse().expect("address"));
    gateway.api_keys = vec![ImportedKey {
        key: Some(DOCUMENT_KEY.into()),
        key_env: None,
        key_sha256: None,
        user: "teamcache".into(),
        role: Role::User,
    }];
    config
        .plugins
        .insert("cache".into(), read_only_grants(root, "/cache", &[]));
}

/// `00_Media/Farm` with three clips, 6 MiB in all, and a file outside it.
fn media_tree(root: &Path) -> u64 {
    let mut total = 0;
    for (n, size) in [(1, 1 << 20), (2, 2 << 20), (3, 3 << 20)] {
        write_file(
            &root.join(format!("00_Media/Farm/Farm0010{n}.mov")),
            size,
            n,
        );
        total += size as u64;
    }
    write_file(&root.join("01_Other/notes.txt"), 100, 9);
    total
}

async fn gateway(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let base = format!("http://{}", server.facades["compat.teamcache"]);
    let mut request = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .header("X-API-Key", DOCUMENT_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_gateways_python_and_node_clients_warm_a_real_tree_unchanged() {
    require_tool("python3", &["-c", "import requests"]);
    require_tool("node", &["--version"]);
    assert!(
        seed_clients_dir().join("node_modules/axios").is_dir(),
        "tests/seed-clients/node_modules lacks axios: run the tests with tests/run, which installs it"
    );
    let cache = tempfile::tempdir().expect("cache root");
    let total = media_tree(cache.path());
    let server = TestServer::builder()
        .config(|c| with_gateway(c, cache.path()))
        .start()
        .await;
    let api_url = format!("http://{}/api/v1", server.facades["compat.teamcache"]);
    let work = tempfile::tempdir().expect("work dir");

    let python =
        seed_client("teamcache", "client.py").replace("http://localhost:8095/api/v1", &api_url);
    std::fs::write(work.path().join("client.py"), python).expect("script");
    let printed = run_client(
        tokio::process::Command::new("python3")
            .arg("client.py")
            .current_dir(work.path()),
    )
    .await;
    let job_id = printed
        .lines()
        .find_map(|l| l.strip_prefix("Created job: "))
        .unwrap_or_else(|| panic!("no job id in {printed}"))
        .to_owned();
    assert!(printed.contains("Total size: 6.00 MB"), "{printed}");
    assert!(printed.contains("Progress: 6.00 MB / 6.00 MB"), "{printed}");
    let task = server.api().finished(&job_id).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(
        task["result"]["completedFiles"], 3,
        "a real warm read the three clips"
    );
    assert_eq!(task["result"]["completedSize"]["bytes"], total);
    assert_eq!(task["owner"], "teamcache");

    // The Node.js example defines two functions; appended lines call them.
    let node = seed_client("teamcache", "client.js")
        .replace("http://localhost:8095/api/v1", &api_url)
        + r#"
(async () => {
    const created = await createCacheJob(["00_Media/Farm/Farm00102.mov"], []);
    let job = await monitorJob(created.jobId);
    for (let i = 0; i < 200 && !['completed', 'failed', 'cancelled'].includes(job.status); i++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        job = await monitorJob(created.jobId);
    }
    console.log(`Final: ${job.status}`);
})();
"#;
    std::fs::write(work.path().join("client.js"), node).expect("script");
    let printed = run_client(
        tokio::process::Command::new("node")
            .arg("client.js")
            .current_dir(work.path())
            .env("NODE_PATH", seed_clients_dir().join("node_modules")),
    )
    .await;
    for expected in [
        "Job created: ",
        "Total size: 2.00 MB",
        "Files: 1/1",
        "Size: 2.00 MB/2.00 MB",
        "Final: completed",
    ] {
        assert!(printed.contains(expected), "{expected} not in:\n{printed}");
    }
}

#[tokio::test]
async fn jobs_show_progress_objects_and_errors_in_the_gateways_shapes() {
    let cache = tempfile::tempdir().expect("cache root");
    let total = media_tree(cache.path());
    let server = TestServer::builder()
        .config(|c| with_gateway(c, cache.path()))
        .start()
        .await;
    let (status, created) = gateway(
        &server,
        reqwest::Method::POST,
        "/api/v1/cache/jobs",
        Some(json!({"directories": ["/Volumes/dmpfs/tc-east-1/00_Media/Farm"], "recursive": true, "priority": "ignored"})),
    )
    .await;
    // Absolute client paths are the cache plugin's to map (path_prefixes); without prefixes
    // configured this one is refused, in the gateway's error shape.
    assert_eq!(
        (status, &created["success"]),
        (400, &json!(false)),
        "{created}"
    );
    assert!(
        created["error"].as_str().unwrap().contains("Volumes"),
        "{created}"
    );

    let (status, created) = gateway(
        &server,
        reqwest::Method::POST,
        "/api/v1/cache/jobs",
        Some(json!({"directories": ["00_Media"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["totalFiles"], 3,
        "totals known in the create reply: {created}"
    );
    assert_eq!(
        created["totalSize"],
        json!({"bytes": total, "readable": "6.00 MB"})
    );
    let id = created["jobId"].as_str().unwrap().to_owned();
    server.api().finished(&id).await;
    let (_, shown) = gateway(
        &server,
        reqwest::Method::GET,
        &format!("/api/v1/cache/jobs/{id}"),
        None,
    )
    .await;
    let job = &shown["job"];
    assert_eq!(job["status"], "completed", "{shown}");
    assert_eq!(
        job["progress"]["files"],
        json!({"completed": 3, "failed": 0, "total": 3, "percentage": 100.0})
    );
    assert_eq!(job["progress"]["size"]["totalReadable"], "6.00 MB");
    assert_eq!(job["progress"]["percentage"], 100.0);
    assert_eq!(
        job["throughput"],
        Value::Null,
        "no fresh throughput once done"
    );
    assert!(job["completedAt"].is_string());

    let (_, listed) = gateway(&server, reqwest::Method::GET, "/api/v1/cache/jobs", None).await;
    assert_eq!(
        listed["total"], 1,
        "the refused job stored nothing: {listed}"
    );
    let item = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (&item["totalSizeReadable"], &item["completedFiles"]),
        (&json!("6.00 MB"), &json!(3))
    );

    for (method, path, status, error) in [
        (
            reqwest::Method::GET,
            "/api/v1/cache/jobs/not%20an%20id",
            400,
            "Invalid job ID format",
        ),
        (
            reqwest::Method::GET,
            "/api/v1/cache/jobs/0190e0e0-0000-7000-8000-000000000000",
            404,
            "Job not found",
        ),
        (
            reqwest::Method::DELETE,
            &format!("/api/v1/cache/jobs/{id}") as &str,
            409,
            "",
        ),
    ] {
        let (got, body) = gateway(&server, method, path, None).await;
        assert_eq!(
            (got, &body["success"]),
            (status, &json!(false)),
            "{path}: {body}"
        );
        assert!(body["error"].as_str().unwrap().contains(error), "{body}");
    }
    let (status, body) = gateway(
        &server,
        reqwest::Method::POST,
        "/api/v1/cache/jobs",
        Some(json!({"recursive": true})),
    )
    .await;
    assert_eq!((status, &body["success"]), (400, &json!(false)), "{body}");
    let refused = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/cache/jobs",
            server.facades["compat.teamcache"]
        ))
        .header("X-API-Key", "wrong-key-2024")
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.json::<Value>().await.unwrap(),
        json!({"success": false, "error": "Invalid or missing API key"})
    );
    // Its health is public, as the gateway's was.
    let health: Value = reqwest::get(format!(
        "http://{}/api/v1/health",
        server.facades["compat.teamcache"]
    ))
    .await
    .expect("health")
    .json()
    .await
    .expect("JSON");
    assert_eq!(
        (&health["status"], &health["database"]),
        (&json!("healthy"), &json!("connected"))
    );
}

#[tokio::test]
async fn mounted_on_the_main_listener_the_gateway_leaves_the_hosts_health_alone() {
    let cache = tempfile::tempdir().expect("cache root");
    media_tree(cache.path());
    let server = TestServer::builder()
        .config(|c| {
            with_gateway(c, cache.path());
            c.compat.teamcache.listen = None;
        })
        .start()
        .await;
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/cache/jobs"))
        .header("X-API-Key", DOCUMENT_KEY)
        .json(&json!({"files": ["00_Media/Farm/Farm00101.mov"]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("JSON");
    assert_eq!(created["totalSize"]["readable"], "1.00 MB", "{created}");
    let health = reqwest::get(server.url("/api/v1/health"))
        .await
        .expect("health");
    assert_eq!(
        health.status(),
        401,
        "the host's own /api/v1/health needs credentials"
    );
}
