//! Plugins on several hosts sharing one PostgreSQL database: a version installed, replaced or
//! unloaded through one host is what every host runs, a task already running finishes on the
//! version it started on, and a restarted host comes back with the cluster's choice rather
//! than its bundled version.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Api, HostProcess, eventually};
use crate::postgres::{PgCluster, shared_host_config};

const TESTKIT: &[u8] = include_bytes!(env!("TASKHOST_TESTKIT_WASM"));
const TESTKIT_NEXT: &[u8] = include_bytes!(env!("TASKHOST_TESTKIT_NEXT_WASM"));

async fn upload(
    api: &Api<'_>,
    method: Method,
    path: &str,
    component: &[u8],
) -> (StatusCode, Value) {
    let response = api
        .client
        .request(method, format!("{}{path}", api.base))
        .header("content-type", "application/wasm")
        .body(component.to_vec())
        .send()
        .await
        .expect("upload sent");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

/// Waits until `api`'s host reports `version` for testkit (`None`: not loaded).
async fn testkit_version_becomes(api: &Api<'_>, version: Option<&str>) {
    eventually(Duration::from_secs(15), || async {
        let (status, plugin) = api.get("/api/v1/plugins/testkit").await;
        let seen =
            (status == StatusCode::OK).then(|| plugin["version"].as_str().map(str::to_owned));
        match (seen, version) {
            (None, None) => Ok(()),
            (Some(Some(seen)), Some(wanted)) if seen == wanted => Ok(()),
            (seen, _) => Err(format!("{}: testkit is {seen:?} ({status})", api.base)),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_changed_through_one_host_is_what_every_host_runs_and_keeps_after_a_restart() {
    let cluster = PgCluster::start();
    let config = shared_host_config(&cluster);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut host_a = HostProcess::spawn_with_config(dir_a.path(), &config);
    let host_b = HostProcess::spawn_with_config(dir_b.path(), &config);
    let (admin_a, admin_b) = (host_a.client().await, host_b.client().await);
    let (a, b) = (host_a.api(&admin_a), host_b.api(&admin_b));
    let bundled = env!("CARGO_PKG_VERSION");
    let next = format!("{bundled}-next");

    // A task that is running on the bundled version when the replacement lands.
    let before = b
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 1500, "steps": 15}}))
        .await;
    let before_id = before["id"].as_str().unwrap().to_owned();
    b.wait_for(&before_id, Duration::from_secs(15), |t| {
        t["status"] == "running"
    })
    .await;

    let (status, replaced) = upload(&a, Method::PUT, "/api/v1/plugins/testkit", TESTKIT_NEXT).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["version"], next.as_str());
    testkit_version_becomes(&b, Some(&next)).await;

    let done = b.finished(&before_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["result"]["version"], bundled,
        "the running task finished on the version it started on"
    );
    // Whichever host claims them, new tasks run the replacement.
    let mut ids = Vec::new();
    for api in [&a, &b, &a, &b] {
        let task = api
            .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 1}}))
            .await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let done = a.finished(id).await;
        assert_eq!(done["result"]["version"], next.as_str(), "{done}");
    }

    // An unload through B reaches A, and A's restart does not bring its bundled copy back.
    let (status, body) = b
        .send(Method::DELETE, "/api/v1/plugins/testkit", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    testkit_version_becomes(&a, None).await;
    assert!(host_a.terminate(), "host A stops cleanly");
    let host_a = HostProcess::spawn_with_config(dir_a.path(), &config);
    let admin_a = host_a.client().await;
    let a = host_a.api(&admin_a);
    let (status, body) = a.get("/api/v1/plugins/testkit").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "unloaded after the restart: {body}"
    );
    let (status, body) = a
        .post(
            "/api/v1/tasks",
            json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 1}}),
        )
        .await;
    assert!(
        status.is_client_error(),
        "no testkit to create tasks of: {status} {body}"
    );

    // Installed again through the restarted host, it is back on both.
    let (status, installed) = upload(&a, Method::POST, "/api/v1/plugins", TESTKIT).await;
    assert_eq!(status, StatusCode::CREATED, "{installed}");
    testkit_version_becomes(&b, Some(bundled)).await;
    let task = b
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 1}}))
        .await;
    let done = b.finished(task["id"].as_str().unwrap()).await;
    assert_eq!(done["result"]["version"], bundled, "{done}");
}
