//! Inputs a tenant controls are bounded, and secrets do not leak through the side channels:
//! progress caps on every report path, log followers that end with their client and are
//! capped, secrets masked in names and across cut lines.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestServer, assert_error, eventually};

fn metrics(names: impl IntoIterator<Item = String>) -> Value {
    let map: BTreeMap<String, f64> = names.into_iter().map(|n| (n, 1.0)).collect();
    json!({"metrics": map})
}

#[tokio::test]
async fn progress_reports_past_the_caps_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "agents", "type": "work", "executor": "external"}))
        .await;
    let progress = format!("/api/v1/tasks/{}/progress", task["id"].as_str().unwrap());

    let (status, body) = api
        .post(&progress, metrics((0..65).map(|i| format!("m{i}"))))
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let (status, body) = api.post(&progress, metrics(["x".repeat(65)])).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let (status, body) = api.post(&progress, metrics(["bad name".into()])).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let (status, body) = api
        .post(&progress, json!({"message": "m".repeat(1025)}))
        .await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");

    // Up to the cap is fine; one metric more, over several reports, is not.
    let (status, body) = api
        .post(&progress, metrics((0..64).map(|i| format!("m{i}"))))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.post(&progress, metrics(["m64".into()])).await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    let stored = api.task(task["id"].as_str().unwrap()).await;
    let held = stored["progress"]["metrics"].as_object().unwrap();
    assert_eq!(held.len(), 64);
    assert!(!held.contains_key("m64"));
}

#[tokio::test]
async fn a_plugin_flooding_progress_with_metrics_is_refused_and_told_in_the_log() {
    let server = TestServer::start().await;
    let api = server.api();
    let task = api
        .create(
            json!({"plugin": "testkit", "type": "host_calls", "input": {"progress_metrics": 500}}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let done = api.finished(id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let held = done["progress"]["metrics"].as_object().unwrap();
    assert!(held.len() <= 64, "{held:?}");
    assert!(
        !held.contains_key("metric_0"),
        "the flood was stored in part: {held:?}"
    );
    let logs = server.logs(id).await;
    assert!(
        logs.contains("progress report refused"),
        "the refusal is in the task's log: {logs}"
    );
}

async fn followers(server: &TestServer) -> u64 {
    let (_, health) = server.api().get("/api/v1/health?details=true").await;
    health["log_followers"].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_log_follower_ends_when_its_client_leaves_and_followers_are_capped() {
    let server = TestServer::builder()
        .config(|c| c.streams.max_connections_per_principal = 2)
        .start()
        .await;
    let api = server.api();
    let task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 60000, "steps": 60}}))
        .await;
    let url = server.url(&format!(
        "/api/v1/tasks/{}/logs?follow=true",
        task["id"].as_str().unwrap()
    ));
    let open = || async {
        let response = server.client.get(&url).send().await.expect("follow");
        (response.status(), response)
    };
    let (status, first) = open().await;
    assert_eq!(status, StatusCode::OK);
    let (status, second) = open().await;
    assert_eq!(status, StatusCode::OK);
    let (status, third) = open().await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let body: Value = third.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED", "{body}");
    assert_eq!(followers(&server).await, 2);

    // The task goes on and logs nothing; the followers end only because their clients left.
    let mut stream = first.bytes_stream();
    drop(second);
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
    drop(stream);
    eventually(Duration::from_secs(10), || async {
        match followers(&server).await {
            0 => Ok(()),
            n => Err(format!("{n} followers still open after their clients left")),
        }
    })
    .await;
    let (status, _) = open().await;
    assert_eq!(status, StatusCode::OK, "a freed place can be taken again");
}

#[tokio::test]
async fn a_log_follower_ends_when_its_key_is_revoked() {
    let server = TestServer::builder()
        .config(|c| c.streams.heartbeat_interval_ms = 200)
        .start()
        .await;
    let api = server.api();
    let (status, created) = api
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "follower", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let task = api
        .create(json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 60000, "steps": 60}}))
        .await;
    let response = reqwest::Client::new()
        .get(server.url(&format!(
            "/api/v1/tasks/{}/logs?follow=true",
            task["id"].as_str().unwrap()
        )))
        .header("x-api-key", created["key"].as_str().unwrap())
        .send()
        .await
        .expect("follow");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/auth/api-keys/{}", created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The body ends (the stream closes) within a few heartbeats, though the task runs on.
    let ended = tokio::time::timeout(Duration::from_secs(10), response.text()).await;
    assert!(ended.is_ok(), "the follower outlived its revoked key");
    assert_eq!(
        api.task(task["id"].as_str().unwrap()).await["status"],
        "running"
    );
}

/// Every 8-byte window of `secret` that appears in `text`.
fn fragments<'a>(text: &str, secret: &'a str) -> Vec<&'a str> {
    (0..=secret.len() - 8)
        .map(|i| &secret[i..i + 8])
        .filter(|w| text.contains(w))
        .collect()
}

#[tokio::test]
async fn a_secret_leaks_through_no_name_error_code_or_cut_line() {
    let server = TestServer::start().await;
    let api = server.api();
    let token = "glpat-Qw3rTy7uIo9pAs1dFg5h";
    let task = api
        .create(json!({"plugin": "testkit", "type": "leak_secret", "input": {"credentials": {"access_token": token}, "fail": true}}))
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = api.finished(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "BAD_***", "{done}");

    let mut seen = done.to_string();
    for path in [
        format!("/api/v1/tasks/{id}/events?limit=1000"),
        format!("/api/v1/tasks/{id}/logs?limit=1000"),
        format!("/api/v1/tasks/{id}/records?limit=100"),
        format!("/api/v1/tasks/{id}/records?collection=col-***"),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        seen.push_str(&body.to_string());
    }
    assert!(seen.contains("m-***"), "the metric is there, masked");
    assert!(seen.contains("col-***"), "the collection is there, masked");
    assert!(
        seen.contains("*** after the"),
        "the long line was logged: {}",
        seen.chars()
            .filter(|c| *c != 'x' && *c != 'y')
            .collect::<String>()
    );
    assert_eq!(
        fragments(&seen, token),
        Vec::<&str>::new(),
        "parts of the token leaked"
    );
}

/// Reads from `stream` until the server closes it (or `limit` passes); true when it closed.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::builder()
        .config(|c| c.http.header_read_timeout_s = 1)
        .start()
        .await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)).await,
        "a half-sent request held its connection"
    );
    // A silent connection, and one idle after a request, are closed too.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await);
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer arrives, then the kept-alive connection is closed once idle too long.
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)).await,
        "an idle keep-alive connection was held open"
    );
    let (status, _) = server.anonymous().get("/health").await;
    assert_eq!(status, StatusCode::OK, "the host serves on");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let server = TestServer::builder()
        .config(|c| {
            c.http.max_connections = 2;
            c.http.header_read_timeout_s = 30;
        })
        .start()
        .await;
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut closed = Vec::new();
    for (n, stream) in open.iter_mut().enumerate() {
        if closed_within(stream, Duration::from_millis(500)).await {
            closed.push(n);
        }
    }
    // At most two are held open; every other one is closed at once (which ones depends on
    // when the harness's own login connection lets go of its place).
    assert!(
        open.len() - closed.len() <= 2 && closed.len() >= 2,
        "closed: {closed:?}"
    );
}

#[tokio::test]
async fn a_plugin_upload_without_the_right_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let token = server.user_token("upton", "user").await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Announces 60 MB and sends none of it: only a host that does not read it can answer.
    let head = format!(
        "POST /api/v1/plugins HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/wasm\r\nContent-Length: 60000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("the host answered without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("FORBIDDEN"), "{answer}");
}

async fn login_status(server: &TestServer, user: &str, password: &str, from: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new()
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"username": user, "password": password}));
    if let Some(from) = from {
        request = request.header("x-forwarded-for", from);
    }
    request.send().await.expect("login").status().as_u16()
}

#[tokio::test]
async fn logins_are_limited_per_username_whatever_address_they_come_from() {
    let server = TestServer::builder()
        .config(|c| {
            c.rate_limits.login_per_user_per_minute = 3;
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        })
        .start()
        .await;
    // Made without logging in, so that no attempt is spent before the test's own.
    let (status, body) = server
        .api()
        .post(
            "/api/v1/users",
            json!({"username": "target", "password": "target-password", "role": "user"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for from in ["10.0.0.1", "10.0.0.2", "10.0.0.3"] {
        assert_eq!(
            login_status(&server, "target", "wrong-guess", Some(from)).await,
            401
        );
    }
    // The right password is no use now: the name's allowance is spent.
    assert_eq!(
        login_status(&server, "target", "target-password", Some("10.0.0.4")).await,
        429
    );
    assert_eq!(
        login_status(&server, "TARGET", "wrong-guess", Some("10.0.0.5")).await,
        429
    );
    assert_eq!(login_status(&server, "admin", "wrong", None).await, 401);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_the_one_limited() {
    let server = TestServer::builder()
        .config(|c| {
            c.rate_limits.login_per_minute = 2;
            c.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        })
        .start()
        .await;
    // The test harness logged in once from 127.0.0.1 itself.
    for _ in 0..2 {
        assert_eq!(
            login_status(&server, "admin", "wrong", Some("203.0.113.9")).await,
            401
        );
    }
    assert_eq!(
        login_status(&server, "admin", "wrong", Some("203.0.113.9")).await,
        429
    );
    assert_eq!(
        login_status(&server, "admin", "wrong", Some("203.0.113.9, 203.0.113.10")).await,
        401,
        "the rightmost untrusted hop is the client"
    );
}

#[tokio::test]
async fn an_untrusted_peer_cannot_pick_its_address_with_x_forwarded_for() {
    let server = TestServer::builder()
        .config(|c| c.rate_limits.login_per_minute = 2)
        .start()
        .await;
    // One login (the harness's) already counted for 127.0.0.1.
    assert_eq!(
        login_status(&server, "admin", "wrong", Some("198.51.100.1")).await,
        401
    );
    assert_eq!(
        login_status(&server, "admin", "wrong", Some("198.51.100.2")).await,
        429
    );
}

#[tokio::test]
async fn the_data_directory_and_its_keys_are_private_and_kept_so() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = server.data_dir().to_owned();
    for key in ["jwt.key", "secrets.key"] {
        assert_eq!(mode(&data.join(key)), 0o600, "{key}");
    }
    let fresh = tempfile::tempdir().unwrap();
    let config_in = |dir: &std::path::Path| {
        let mut config = taskhost::config::Config {
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        config.runtime.cache_dir = Some(crate::harness::shared_cache_dir());
        config.auth.admin_password = Some("a-password-for-this".into());
        config
    };
    let dir = fresh.path().join("made");
    let started = taskhost::app::start(config_in(&dir)).await.expect("starts");
    started.engine.shutdown().await;
    assert_eq!(mode(&dir), 0o700);

    // A key file others can read stops the host from starting.
    let open_key = fresh.path().join("open-key");
    std::fs::create_dir(&open_key).unwrap();
    std::fs::write(open_key.join("jwt.key"), "k".repeat(48)).unwrap();
    std::fs::set_permissions(
        open_key.join("jwt.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let refused = taskhost::app::start(config_in(&open_key))
        .await
        .err()
        .expect("refused");
    assert!(refused.to_string().contains("jwt.key"), "{refused}");

    // So does a grant that would preopen the data directory or a directory above it.
    let guarded = fresh.path().join("guarded");
    for (n, exposed) in [guarded.clone(), fresh.path().to_owned()]
        .into_iter()
        .enumerate()
    {
        let dir = guarded.join(format!("data-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let exposed = if n == 0 { dir.clone() } else { exposed };
        let mut config = config_in(&dir);
        config.plugins.insert(
            "testkit".into(),
            crate::harness::read_only_grants(&exposed, "/x", &[]),
        );
        let refused = taskhost::app::start(config).await.err().expect("refused");
        assert!(refused.to_string().contains("data directory"), "{refused}");
    }
    drop(server);
}
