//! WebSocket streams against a real server: fan-out, resume without loss, backpressure,
//! authorisation per event, messages, the system topic, heartbeats and limits.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::{TestServer, WsClient, assert_error, echo, is_terminal_event};

const TESTKIT_NEXT: &[u8] = include_bytes!(env!("TASKHOST_TESTKIT_NEXT_WASM"));

/// `websocket_connections` and `websocket_slow_consumers_dropped` from the detailed health.
async fn stream_health(server: &TestServer) -> (u64, u64) {
    let (status, health) = server.api().get("/api/v1/health?details=true").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    (
        health["websocket_connections"].as_u64().expect("count"),
        health["websocket_slow_consumers_dropped"]
            .as_u64()
            .expect("count"),
    )
}

/// Polls the stream health until `done` holds, for at most 20 s.
async fn wait_for_streams(server: &TestServer, done: impl Fn((u64, u64)) -> bool) -> (u64, u64) {
    let start = Instant::now();
    loop {
        let health = stream_health(server).await;
        if done(health) {
            return health;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "stream health stayed at {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seqs of a task's stored events, from the REST API.
async fn stored_seqs(server: &TestServer, id: &str) -> Vec<u64> {
    server
        .api()
        .events(id)
        .await
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

async fn set_queue_paused(server: &TestServer, paused: bool) {
    let action = if paused { "pause" } else { "resume" };
    let (status, body) = server
        .api()
        .post(&format!("/api/v1/queues/testkit/{action}"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn sleep_task(ms: u64, steps: u64) -> Value {
    json!({"plugin": "testkit", "type": "sleep", "input": {"ms": ms, "steps": steps}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_subscribers_of_one_task_each_receive_every_progress_event_in_order() {
    let server = TestServer::builder()
        .config(|c| c.streams.max_connections_per_principal = 500)
        .start()
        .await;
    set_queue_paused(&server, true).await;
    let task = server.api().create(sleep_task(100, 50)).await;
    let id = task["id"].as_str().expect("id").to_owned();

    let mut readers = Vec::new();
    for _ in 0..200 {
        let mut client = server.ws(&format!("/api/v1/tasks/{id}/ws")).await;
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        assert_eq!(hello["task"]["id"], id.as_str());
        assert_eq!(hello["task"]["status"], "queued");
        let opened_at = hello["seq"].as_u64().expect("seq");
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            let mut progress = Vec::new();
            loop {
                let frame = client.next_json().await;
                let Some(seq) = frame["seq"].as_u64() else {
                    continue;
                };
                seqs.push(seq);
                if frame["type"] == "progress" {
                    progress.push(frame["data"]["processed"].as_u64().expect("processed"));
                }
                if is_terminal_event(&frame) {
                    return (opened_at, seqs, progress);
                }
            }
        }));
    }
    set_queue_paused(&server, false).await;
    server.api().finished(&id).await;
    let stored = stored_seqs(&server, &id).await;
    let expected_progress: Vec<u64> = (1..=50).collect();
    for reader in readers {
        let (opened_at, seqs, progress) = reader.await.expect("reader");
        let expected: Vec<u64> = stored.iter().copied().filter(|s| *s > opened_at).collect();
        assert_eq!(
            seqs, expected,
            "every event after the connected frame, in order"
        );
        assert_eq!(progress, expected_progress);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_and_resumes_with_after_seq_sees_every_event_exactly_once()
 {
    let server = TestServer::start().await;
    let first_seq = {
        let (_, metrics) = server.api().get("/api/v1/health?details=true").await;
        metrics["storage"]["last_seq"].as_u64().expect("last seq")
    };
    // Four tasks reporting progress every millisecond or so, while the client comes and goes.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let task = server.api().create(sleep_task(600, 300)).await;
        ids.push(task["id"].as_str().expect("id").to_owned());
    }
    let mut received: Vec<u64> = Vec::new();
    let mut after = first_seq;
    let mut finished = BTreeSet::new();
    let mut reconnects = 0;
    while finished.len() < ids.len() {
        let mut client = server.ws("/api/v1/ws").await;
        assert_eq!(client.next_json().await["type"], "connected");
        let replayed = client.subscribe(&["plugin:testkit"], Some(after)).await;
        let mut batch: Vec<Value> = replayed;
        // Read a few live frames, then hang up without a close frame, mid-stream.
        let live_frames = if reconnects < 5 { 40 } else { usize::MAX };
        let mut live = 0;
        while live < live_frames && finished.len() + count_terminal(&batch) < ids.len() {
            let frame = client.next_json().await;
            if frame["seq"].is_u64() {
                batch.push(frame);
                live += 1;
            }
        }
        for frame in &batch {
            let seq = frame["seq"].as_u64().expect("seq");
            received.push(seq);
            after = after.max(seq);
            if is_terminal_event(frame) {
                finished.insert(frame["task_id"].as_str().expect("task id").to_owned());
            }
        }
        drop(client);
        reconnects += 1;
        // Let events pile up while nobody listens.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(reconnects >= 3, "the client resumed {reconnects} times");
    let mut stored: Vec<u64> = Vec::new();
    for id in &ids {
        stored.extend(stored_seqs(&server, id).await);
    }
    stored.sort_unstable();
    let mut sorted = received.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), received.len(), "no event arrived twice");
    assert_eq!(sorted, stored, "every stored event arrived");
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in seq order across resumes"
    );
}

fn count_terminal(frames: &[Value]) -> usize {
    frames.iter().filter(|f| is_terminal_event(f)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_while_the_others_keep_receiving() {
    let server = TestServer::builder()
        .config(|c| c.streams.buffer_frames = 128)
        .start()
        .await;
    set_queue_paused(&server, true).await;
    let task = server.api().create(echo(json!({}))).await;
    let id = task["id"].as_str().expect("id").to_owned();

    // The stalled client: a small receive buffer, and it never reads after subscribing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let (stream, _) = tokio_tungstenite::client_async(
        server.ws_url(&format!("/api/v1/tasks/{id}/ws"), &server.token),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .expect("upgrade");
    let mut stalled = WsClient { stream };
    assert_eq!(stalled.next_json().await["type"], "connected");

    let mut good = server.ws(&format!("/api/v1/tasks/{id}/ws")).await;
    assert_eq!(good.next_json().await["type"], "connected");
    const MESSAGES: usize = 600;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < MESSAGES {
            let frame = good.next_json().await;
            if frame["type"] == "message" {
                seen.push(frame["data"]["data"]["n"].as_u64().expect("n"));
            }
        }
        seen
    });
    // 600 messages of 32 KiB: far more than the socket buffers and the 128-frame queue hold.
    let padding = "x".repeat(32 * 1024);
    for n in 0..MESSAGES {
        let (status, body) = server
            .api()
            .post(
                &format!("/api/v1/tasks/{id}/messages"),
                json!({"type": "bulk", "data": {"n": n, "padding": padding}}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the reading subscriber got every message while the other stalled")
        .expect("reader");
    assert_eq!(seen, (0..MESSAGES as u64).collect::<Vec<_>>());
    let (_, dropped) = wait_for_streams(&server, |(_, dropped)| dropped >= 1).await;
    assert_eq!(dropped, 1, "only the stalled subscriber was dropped");

    // Now read what reached the stalled client: it ends well before all 600, with 4008 if
    // the close frame got through the full socket.
    let mut messages = 0;
    loop {
        match stalled.next_message().await {
            Some(Message::Text(_)) => messages += 1,
            Some(Message::Close(frame)) => {
                let frame = frame.expect("a close frame with a code");
                assert_eq!(frame.code, CloseCode::from(4008));
                assert!(frame.reason.contains("after_seq="), "{}", frame.reason);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(messages < MESSAGES, "the stalled client got {messages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_b_subscribed_to_tasks_receives_none_of_user_as_events() {
    let server = TestServer::start().await;
    let alice = server.user("alice", "user").await;
    let bob_token = server.user_token("bob", "user").await;
    let alice_api = crate::harness::Api {
        client: &alice,
        base: server.url(""),
    };
    let mut bob = WsClient::connect(&server.ws_url("/api/v1/ws", &bob_token)).await;
    bob.next_of_type("connected").await;
    bob.subscribe(&["tasks", "plugin:testkit", "label:team=shared"], None)
        .await;
    let mut admin = server.ws("/api/v1/ws").await;
    admin.subscribe(&["tasks"], None).await;

    let mut alice_ids = Vec::new();
    for n in 0..5 {
        let task = alice_api
            .create(
                json!({"plugin": "testkit", "type": "sleep", "input": {"ms": 20, "steps": 2},
                           "labels": {"team": "shared"}, "id": format!("alice-{n}")}),
            )
            .await;
        alice_ids.push(task["id"].as_str().expect("id").to_owned());
    }
    // Bob may not subscribe to Alice's task by name either, nor open its stream.
    bob.send(json!({"type": "subscribe", "topics": ["task:alice-0"]}))
        .await;
    let refused = bob.next_of_type("error").await;
    assert_eq!(refused["error"]["code"], "TASK_NOT_FOUND", "{refused}");
    let response = reqwest::Client::new()
        .get(server.url("/api/v1/tasks/alice-0/ws"))
        .bearer_auth(&bob_token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    for id in &alice_ids {
        alice_api.finished(id).await;
    }
    let bobs = crate::harness::Api {
        client: &crate::harness::client_with_token(&bob_token),
        base: server.url(""),
    }
    .create(json!({"plugin": "testkit", "type": "echo", "input": {}, "labels": {"team": "shared"}}))
    .await;
    let bobs_id = bobs["id"].as_str().expect("id");
    // Bob's stream carries his own task's events, and (everything being in seq order) none
    // of Alice's, which all came before.
    loop {
        let frame = bob.next_json().await;
        if frame["seq"].is_u64() {
            assert_eq!(frame["task_id"], bobs_id, "bob saw {frame}");
            if is_terminal_event(&frame) {
                break;
            }
        }
    }
    // The admin's stream, on the same events, did carry Alice's.
    let mut admin_saw = BTreeSet::new();
    while admin_saw.len() < alice_ids.len() {
        let frame = admin.next_json().await;
        if is_terminal_event(&frame) && frame["task_id"] != bobs_id {
            admin_saw.insert(frame["task_id"].as_str().expect("id").to_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_subscriber_of_the_task_and_bad_frames_get_error_frames() {
    let server = TestServer::start().await;
    set_queue_paused(&server, true).await;
    let task = server.api().create(echo(json!({}))).await;
    let id = task["id"].as_str().expect("id");
    let mut by_task = server.ws(&format!("/api/v1/tasks/{id}/ws")).await;
    by_task.next_of_type("connected").await;
    let mut by_topic = server.ws("/api/v1/ws").await;
    by_topic.next_of_type("connected").await;

    for (bad, expected) in [
        (
            json!({"type": "subscribe", "topics": ["queue:x"]}),
            "unknown topic",
        ),
        (json!({"type": "shout"}), "invalid frame"),
        (
            json!({"type": "subscribe", "topics": ["tasks"], "extra": 1}),
            "invalid frame",
        ),
        (
            json!({"type": "subscribe", "topics": ["task:nope"]}),
            "not found",
        ),
    ] {
        by_topic.send(bad.clone()).await;
        let error = by_topic.next_of_type("error").await;
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(expected)),
            "{bad} -> {error}"
        );
    }
    by_topic.send(json!({"type": "ping"})).await;
    assert_eq!(by_topic.next_json().await["type"], "pong");
    by_topic.subscribe(&[&format!("task:{id}")], None).await;

    let (status, posted) = server
        .api()
        .post(
            &format!("/api/v1/tasks/{id}/messages"),
            json!({"type": "note", "data": {"text": "hello"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{posted}");
    for client in [&mut by_task, &mut by_topic] {
        let message = client.next_of_type("message").await;
        assert_eq!(message["task_id"], id);
        assert_eq!(message["seq"], posted["seq"]);
        assert_eq!(
            message["data"],
            json!({"type": "note", "data": {"text": "hello"}})
        );
    }
    by_topic
        .send(json!({"type": "unsubscribe", "topics": [format!("task:{id}")]}))
        .await;
    assert_eq!(by_topic.next_json().await["type"], "unsubscribed");
    server
        .api()
        .post(
            &format!("/api/v1/tasks/{id}/messages"),
            json!({"type": "note", "data": 2}),
        )
        .await;
    by_task.next_of_type("message").await;
    // Unsubscribed: the next thing it hears is its own pong.
    by_topic.send(json!({"type": "ping"})).await;
    assert_eq!(by_topic.next_json().await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_topic_carries_plugin_loads_and_queue_pauses() {
    let server = TestServer::start().await;
    let mut client = server.ws("/api/v1/ws").await;
    client.next_of_type("connected").await;
    client.subscribe(&["system"], None).await;
    set_queue_paused(&server, true).await;
    set_queue_paused(&server, false).await;
    let upload = |method: Method, path: &str| {
        server
            .client
            .request(method, server.url(path))
            .header("content-type", "application/wasm")
            .body(TESTKIT_NEXT.to_vec())
            .send()
    };
    assert_eq!(
        upload(Method::PUT, "/api/v1/plugins/testkit")
            .await
            .expect("sent")
            .status(),
        StatusCode::OK
    );
    let (status, _) = server
        .api()
        .send(Method::DELETE, "/api/v1/plugins/testkit", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        upload(Method::POST, "/api/v1/plugins")
            .await
            .expect("sent")
            .status(),
        StatusCode::CREATED
    );
    let mut events = Vec::new();
    for _ in 0..5 {
        let frame = client.next_of_type("system").await;
        assert!(frame["timestamp"].is_string(), "{frame}");
        events.push((frame["event"].clone(), frame["data"].clone()));
    }
    let next_version = format!("{}-next", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        events,
        vec![
            (json!("queue_paused"), json!({"plugin": "testkit"})),
            (json!("queue_resumed"), json!({"plugin": "testkit"})),
            (
                json!("plugin_replaced"),
                json!({"name": "testkit", "version": next_version})
            ),
            (json!("plugin_unloaded"), json!({"name": "testkit"})),
            (
                json!("plugin_loaded"),
                json!({"name": "testkit", "version": next_version})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_answers_pong_and_drops_a_peer_that_stops_answering() {
    let server = TestServer::builder()
        .config(|c| c.streams.heartbeat_interval_ms = 250)
        .start()
        .await;
    let mut live = server.ws("/api/v1/ws").await;
    let hello = live.next_json().await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["heartbeat_interval_ms"], 250);
    assert!(
        hello["connection_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
    );
    assert!(
        hello["server_time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    live.send(json!({"type": "ping"})).await;
    assert_eq!(live.next_json().await["type"], "pong");
    // Server pings arrive (and tungstenite answers them while we read).
    let mut pings = 0;
    while pings < 3 {
        if let Some(Message::Ping(_)) = live.next_message().await {
            pings += 1;
        }
    }
    // A peer that never reads never answers: dropped after two silent heartbeats, while the
    // one that reads stays.
    let reading = tokio::spawn(async move {
        while let Some(message) = live.stream.next().await {
            if message.is_err() {
                break;
            }
        }
    });
    let silent = server.ws("/api/v1/ws").await;
    wait_for_streams(&server, |(open, _)| open == 2).await;
    wait_for_streams(&server, |(open, _)| open == 1).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(stream_health(&server).await.0, 1, "the reading peer stays");
    drop(silent);
    reading.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_routes_need_credentials_an_upgrade_and_a_free_connection_slot() {
    let server = TestServer::builder()
        .config(|c| c.streams.max_connections_per_principal = 2)
        .start()
        .await;
    // No credentials: refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", server.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let bad_token = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws", "forged")).await;
    assert!(
        matches!(bad_token, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == StatusCode::UNAUTHORIZED),
        "{bad_token:?}"
    );
    // Credentials but no upgrade: a plain GET is a clear 400.
    let (status, body) = server.api().get("/api/v1/ws").await;
    assert_error(status, &body, 400, "VALIDATION_ERROR");
    // An API key in the query works on upgrades.
    let (_, url) = stream_api_key(&server, "viewer").await;
    let mut first = WsClient::connect(&url).await;
    first.next_of_type("connected").await;
    let mut second = server.ws("/api/v1/ws").await;
    second.next_of_type("connected").await;
    // The admin (the key's owner) has two open: the third is refused, in the error format.
    let third = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws", &server.token)).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("JSON error body");
            assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("stream connections")),
                "{body}"
            );
        }
        other => panic!("expected 429, got {other:?}"),
    }
    drop(first);
    wait_for_streams(&server, |(open, _)| open == 1).await;
    let mut again = server.ws("/api/v1/ws").await;
    again.next_of_type("connected").await;
    drop(second);
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_a_broad_topic_from_too_far_back_is_refused_but_a_single_task_replays_in_full() {
    let server = TestServer::builder()
        .config(|c| c.streams.max_replay_events = 5)
        .start()
        .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let task = server.api().create(echo(json!({}))).await;
        let id = task["id"].as_str().expect("id").to_owned();
        server.api().finished(&id).await;
        ids.push(id);
    }
    let mut client = server.ws("/api/v1/ws").await;
    client.next_of_type("connected").await;
    client
        .send(json!({"type": "subscribe", "topics": ["tasks"], "after_seq": 0}))
        .await;
    let refused = client.next_of_type("error").await;
    assert_eq!(refused["error"]["code"], "VALIDATION_ERROR");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("over the limit of 5")),
        "{refused}"
    );
    // Read first: the events route answers once every event written so far is published, so
    // the replay below covers the task's last event too (a status read may run ahead of it).
    let stored = stored_seqs(&server, &ids[2]).await;
    let topic = format!("task:{}", ids[2]);
    let replayed = client.subscribe(&[&topic], Some(0)).await;
    let seqs: Vec<u64> = replayed
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, stored);
    assert!(seqs.len() >= 4, "{replayed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_api_key_ends_its_open_stream() {
    let server = TestServer::builder()
        .config(|c| c.streams.heartbeat_interval_ms = 100)
        .start()
        .await;
    let (key, url) = stream_api_key(&server, "user").await;
    let mut client = WsClient::connect(&url).await;
    client.next_of_type("connected").await;
    let (status, _) = server
        .api()
        .send(
            Method::DELETE,
            &format!("/api/v1/auth/api-keys/{}", key["id"].as_str().expect("id")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let close = closing_frame(&mut client).await;
    assert_eq!(close.code, CloseCode::from(4001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_system_subscribers_and_closes_streams_with_1001() {
    let server = TestServer::start().await;
    let mut client = server.ws("/api/v1/ws").await;
    client.next_of_type("connected").await;
    client.subscribe(&["system"], None).await;
    drop(server);
    let notice = client.next_of_type("system").await;
    assert_eq!(notice["event"], "health");
    assert_eq!(notice["data"]["status"], "draining");
    let close = closing_frame(&mut client).await;
    assert_eq!(close.code, CloseCode::Away);
    assert!(close.reason.contains("after_seq="), "{}", close.reason);
}

/// Reads until the server's close frame, which must say why.
async fn closing_frame(
    client: &mut WsClient,
) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    loop {
        match client.next_message().await {
            Some(Message::Close(Some(frame))) => return frame,
            Some(Message::Close(None)) | None => panic!("closed without saying why"),
            Some(_) => {}
        }
    }
}

/// Creates an API key with `role` (as admin); returns it and a stream URL carrying it.
async fn stream_api_key(server: &TestServer, role: &str) -> (Value, String) {
    let (status, key) = server
        .api()
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "stream", "role": role}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let url = format!(
        "ws://{}/api/v1/ws?api_key={}",
        server.addr,
        key["key"].as_str().expect("key")
    );
    (key, url)
}
