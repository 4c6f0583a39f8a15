//! The host on PostgreSQL (`[storage] backend = "postgres"`), against a private cluster the
//! test starts: the same API, streams and restart behaviour as on the embedded store.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use taskhost::storage::BackendKind;

use crate::harness::TestServer;

/// The same private cluster the backend's unit tests start (one file, compiled into both).
#[path = "../../host/src/storage/postgres/cluster.rs"]
#[allow(
    dead_code,
    reason = "the unit tests use all of it, these tests only part"
)]
mod cluster;

pub use cluster::PgCluster;

/// The configuration every host of a test cluster on `cluster` shares: leases and polls short
/// enough for a takeover within a test, and one JWT secret (README, "Several hosts").
pub fn shared_host_config(cluster: &PgCluster) -> String {
    format!(
        r#"
[storage]
backend = "postgres"
url = "{}"
pool_size = 8

[engine]
lease_s = {CLUSTER_LEASE_S}
claim_poll_ms = {CLUSTER_CLAIM_POLL_MS}
shutdown_grace_s = 2

[auth]
jwt_secret = "one-secret-every-host-of-the-cluster-shares"
"#,
        cluster.url()
    )
}

/// The lease of [`shared_host_config`], in seconds.
pub const CLUSTER_LEASE_S: u64 = 3;
/// How often a host of [`shared_host_config`] looks for work without being told.
pub const CLUSTER_CLAIM_POLL_MS: u64 = 200;

async fn server_on(cluster: &PgCluster) -> TestServer {
    let url = cluster.url();
    TestServer::builder()
        .config(move |c| {
            c.storage.backend = BackendKind::Postgres;
            c.storage.url = Some(url);
            c.storage.pool_size = 8;
        })
        .start()
        .await
}

fn seq_of(frame: &Value) -> u64 {
    frame["seq"].as_u64().expect("a seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_postgres_runs_tasks_streams_them_in_order_and_keeps_them_across_a_restart() {
    let cluster = PgCluster::start();
    let server = server_on(&cluster).await;
    let mut stream = server.ws("/api/v1/ws").await;
    assert_eq!(stream.next_json().await["type"], "connected");
    stream.subscribe(&["plugin:testkit"], None).await;

    let mut ids = Vec::new();
    for n in 0..20 {
        let task = server
            .api()
            .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 5, "steps": 3}, "labels": {"n": n.to_string()}}))
            .await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        assert_eq!(server.api().finished(id).await["status"], "completed");
    }
    // Every event of every task arrives live, once, in rising seq order.
    let mut stored = BTreeSet::new();
    for id in &ids {
        stored.extend(server.api().events(id).await.iter().map(seq_of));
    }
    let mut live = Vec::new();
    while live.len() < stored.len() {
        let frame = stream.next_json().await;
        if frame["seq"].is_u64() {
            live.push(seq_of(&frame));
        }
    }
    assert!(live.windows(2).all(|w| w[0] < w[1]), "in order: {live:?}");
    assert_eq!(live.iter().copied().collect::<BTreeSet<_>>(), stored);

    // Listings, filters and counts come from the database.
    let (status, page) = server
        .api()
        .get("/api/v1/tasks?plugin=testkit&status=completed&label.n=7")
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1), "{page}");
    let (_, queues) = server.api().get("/api/v1/queues").await;
    let testkit = queues["data"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["plugin"] == "testkit"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(testkit["completed"], 20, "{queues}");

    let last = *stored.last().expect("events");
    let server = server.restart().await;
    let kept = server.api().task(&ids[3]).await;
    assert_eq!(kept["status"], "completed");
    let after = server
        .api()
        .create(json!({"plugin": "testkit", "type": "echo", "input": {"x": 1}}))
        .await;
    let id = after["id"].as_str().expect("id");
    server.api().finished(id).await;
    let first_new = server.api().events(id).await.iter().map(seq_of).min();
    assert!(
        first_new.is_some_and(|seq| seq > last),
        "seqs continue above {last} after a restart: {first_new:?}"
    );
    // A resume from before the restart replays exactly what came after.
    let mut resumed = server.ws("/api/v1/ws").await;
    assert_eq!(resumed.next_json().await["type"], "connected");
    let replayed = resumed.subscribe(&["plugin:testkit"], Some(last)).await;
    let replayed: Vec<u64> = replayed.iter().map(seq_of).collect();
    let expected: Vec<u64> = server.api().events(id).await.iter().map(seq_of).collect();
    assert_eq!(replayed, expected);
}

#[tokio::test]
async fn a_postgres_backend_without_a_url_is_refused_at_start_with_a_clear_error() {
    let mut config = taskhost::config::Config::default();
    config.storage.backend = BackendKind::Postgres;
    let error = config.validate().expect_err("no url");
    assert!(
        error.to_string().contains("TASKHOST_DATABASE_URL"),
        "{error}"
    );
    config.storage.url = Some("postgres://taskhost:s3cret-pw@127.0.0.1:1/none".into());
    assert!(config.validate().is_ok());
    assert!(
        !format!("{config:?}").contains("s3cret-pw"),
        "the URL's password stays out of debug output"
    );
}

async fn health(server: &TestServer) -> Value {
    let (status, body) = server.api().get("/api/v1/health?details=true").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_on_one_database_names_itself_and_sees_the_others_alive() {
    let cluster = PgCluster::start();
    let first = server_on(&cluster).await;
    let second = server_on(&cluster).await;
    let (a, b) = (health(&first).await, health(&second).await);
    assert_eq!(a["storage"]["backend"], "postgres");
    let (id_a, id_b) = (a["host"]["id"].clone(), b["host"]["id"].clone());
    assert!(id_a.is_string() && id_a != id_b, "{id_a} and {id_b}");
    for body in [&a, &b] {
        let seen: BTreeSet<String> = body["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|h| h["id"].as_str().expect("id").to_owned())
            .collect();
        let expected: BTreeSet<String> = [&id_a, &id_b]
            .iter()
            .map(|id| id.as_str().expect("id").to_owned())
            .collect();
        assert_eq!(seen, expected, "{body}");
    }
}
