//! Delivery latency of WebSocket streams: a testkit `sleep` task reports progress while
//! `STREAM_BENCH_SUBSCRIBERS` (default 1000) clients follow it on `/api/v1/tasks/{id}/ws`,
//! against a real server on 127.0.0.1:0 (temp data dir, sled).
//!
//! `cargo bench -p taskhost --bench stream_latency` prints the p50/p99/max delay from the
//! plugin's progress call (the moment its event is committed and published, seen through the
//! storage feed in this process) to the frame arriving at each client, over every
//! (event, subscriber) pair. `STREAM_BENCH_EVENTS` (default 200) sets how many progress
//! events the task reports, 10 ms apart.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::{BenchHost, env_or, full_run, percentile, send_json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn main() {
    let full = full_run();
    let subscribers = env_or("STREAM_BENCH_SUBSCRIBERS", if full { 1000 } else { 20 });
    let events = env_or("STREAM_BENCH_EVENTS", if full { 200 } else { 10 }).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        // When each event was published, by seq: the start of every delay measured.
        let published: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        let host = BenchHost::start(
            |config| config.streams.max_connections_per_principal = subscribers + 10,
            |state| {
                let mut feed = state.engine.event_feed().subscribe();
                let published = published.clone();
                tokio::spawn(async move {
                    while let Ok(event) = feed.recv().await {
                        published
                            .lock()
                            .expect("lock")
                            .insert(event.seq, Instant::now());
                    }
                });
            },
        )
        .await;
        let (addr, token) = (host.addr, host.token.clone());
        let http = reqwest::Client::new();
        let call = |method: reqwest::Method, path: &str| {
            http.request(method, format!("http://{addr}{path}"))
                .bearer_auth(&token)
        };
        // Hold the task until every subscriber is connected.
        call(reqwest::Method::POST, "/api/v1/queues/testkit/pause")
            .send()
            .await
            .expect("pause");
        let task = send_json(
            call(reqwest::Method::POST, "/api/v1/tasks")
                .json(&json!({"plugin": "testkit", "type": "sleep",
                        "input": {"ms": events * 10, "steps": events}})),
        )
        .await;
        let id = task["id"].as_str().expect("id").to_owned();

        let connect_started = Instant::now();
        let mut clients = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let url = format!("ws://{addr}/api/v1/tasks/{id}/ws?token={token}");
            // tungstenite zero-fills its whole read buffer (128 KiB by default) before every
            // read; with 1000 clients in this process that alone took a third of the CPU the
            // server needs. Small frames need a small buffer.
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let (mut stream, _) =
                tokio_tungstenite::connect_async_with_config(url, Some(config), false)
                    .await
                    .expect("upgrade");
            // The connected frame.
            stream.next().await.expect("hello").expect("hello");
            clients.push(stream);
        }
        let connect_time = connect_started.elapsed();
        let mut readers = Vec::with_capacity(subscribers);
        for mut stream in clients {
            readers.push(tokio::spawn(async move {
                let mut arrivals = Vec::new();
                while let Some(Ok(message)) = stream.next().await {
                    let at = Instant::now();
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let frame: Value = serde_json::from_str(&text).expect("json");
                    if let Some(seq) = frame["seq"].as_u64() {
                        arrivals.push((seq, at, frame["type"] == "progress"));
                    }
                    if matches!(
                        frame["type"].as_str(),
                        Some("completed" | "failed" | "cancelled")
                    ) {
                        break;
                    }
                }
                arrivals
            }));
        }
        let run_started = Instant::now();
        call(reqwest::Method::POST, "/api/v1/queues/testkit/resume")
            .send()
            .await
            .expect("resume");
        let mut delays_ms = Vec::new();
        let mut progress_frames = 0usize;
        let mut short = 0usize;
        for reader in readers {
            let arrivals = tokio::time::timeout(Duration::from_secs(300), reader)
                .await
                .expect("every subscriber finished")
                .expect("reader");
            let progress = arrivals.iter().filter(|(_, _, p)| *p).count();
            if progress < events {
                short += 1;
            }
            progress_frames += progress;
            let published = published.lock().expect("lock");
            for (seq, at, is_progress) in arrivals {
                if let (true, Some(sent)) = (is_progress, published.get(&seq)) {
                    delays_ms.push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
                }
            }
        }
        let run_time = run_started.elapsed();
        delays_ms.sort_by(f64::total_cmp);
        println!(
            "stream latency: {subscribers} subscribers of one task, {events} progress events each, \
             {progress_frames} progress frames delivered in {:.2} s ({:.0} frames/s); \
             {short} subscribers missed events; connecting took {:.2} s",
            run_time.as_secs_f64(),
            progress_frames as f64 / run_time.as_secs_f64(),
            connect_time.as_secs_f64(),
        );
        println!(
            "  progress call → frame received: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&delays_ms, 0.5),
            percentile(&delays_ms, 0.99),
            delays_ms.last().copied().unwrap_or(0.0),
        );
        host.stop().await;
    });
}
