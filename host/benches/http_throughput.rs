//! End-to-end throughput: echo tasks created over HTTP by concurrent clients against the real
//! `taskhost` binary in its own process on 127.0.0.1:0 (temp data dir, sled), run to
//! completion by the testkit plugin. The bench is only the client, as a user's would be, and
//! prints how the machine's CPU split between the two.
//!
//! `cargo bench -p taskhost --bench http_throughput` prints tasks/s (first create to last
//! completion), the HTTP create latency p50/p99 as clients saw it, and the create→completed
//! latency p50/p99 from the tasks' own timestamps; then, one task at a time, POST → the task's
//! `completed` event over the WebSocket, p50/p99. `HTTP_BENCH_TASKS` (default 20000) and
//! `HTTP_BENCH_CLIENTS` (default 64) change the load.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::{
    ServerProcess, completed, cpu_seconds, env_or, full_run, percentile, print_cpu_split,
};

fn main() {
    let full = full_run();
    let tasks = if full {
        env_or("HTTP_BENCH_TASKS", 20_000)
    } else {
        200
    };
    let clients = env_or("HTTP_BENCH_CLIENTS", 64).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let host = ServerProcess::start("").await;
        let base = host.base.clone();
        let client = host.client(clients);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let rss_idle = host.rss_mb();
        let (server_cpu, client_cpu) = (host.cpu_seconds(), cpu_seconds("self"));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..clients {
            let (client, base, next) = (client.clone(), base.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut ids = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < tasks {
                    let sent = Instant::now();
                    let response = client
                        .post(format!("{base}/api/v1/tasks"))
                        .json(&json!({"plugin": "testkit", "type": "echo", "input": {"hello": "world"}}))
                        .send()
                        .await
                        .expect("create");
                    assert_eq!(response.status(), 202);
                    let task: Value = response.json().await.expect("json");
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    ids.push(task["id"].as_str().expect("id").to_owned());
                }
                (latencies, ids)
            }));
        }
        let mut create_ms = Vec::new();
        let mut ids = Vec::new();
        for worker in workers {
            let (latencies, worker_ids) = worker.await.expect("worker");
            create_ms.extend(latencies);
            ids.extend(worker_ids);
        }
        let created_in = started.elapsed();
        while completed(&client, &base).await < tasks as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let total = started.elapsed();
        let (server_cpu, client_cpu) = (
            host.cpu_seconds() - server_cpu,
            cpu_seconds("self") - client_cpu,
        );

        // create→completed from the tasks' own timestamps (a sample of up to 2000).
        let step = (ids.len() / 2000).max(1);
        let mut end_to_end = Vec::new();
        for id in ids.iter().step_by(step) {
            let task: Value = client.get(format!("{base}/api/v1/tasks/{id}")).send().await.expect("get").json().await.expect("json");
            let at = |f: &str| task[f].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()).expect("timestamp");
            end_to_end.push((at("finished_at") - at("created_at")).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        create_ms.sort_by(f64::total_cmp);
        end_to_end.sort_by(f64::total_cmp);
        println!(
            "http throughput: {tasks} echo tasks, {clients} clients: {:.0} tasks/s end to end ({:.2} s), creates alone {:.0}/s",
            tasks as f64 / total.as_secs_f64(),
            total.as_secs_f64(),
            tasks as f64 / created_in.as_secs_f64(),
        );
        println!(
            "  POST /api/v1/tasks latency: p50 {:.2} ms, p99 {:.2} ms; create→completed: p50 {:.2} ms, p99 {:.2} ms",
            percentile(&create_ms, 0.5),
            percentile(&create_ms, 0.99),
            percentile(&end_to_end, 0.5),
            percentile(&end_to_end, 0.99),
        );
        print_cpu_split("the run", total.as_secs_f64(), client_cpu, server_cpu);
        println!(
            "  server CPU per task: {:.0} µs; server RSS idle {:.0} MB, after the run {:.0} MB",
            server_cpu * 1e6 / tasks as f64,
            rss_idle,
            host.rss_mb(),
        );
        one_at_a_time(&host, &client, if full { 500 } else { 20 }).await;
    });
}

/// One task at a time: POST, then the `completed` event of that task over the WebSocket, as a
/// client waiting for its result sees it.
async fn one_at_a_time(host: &ServerProcess, client: &reqwest::Client, rounds: usize) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let url = format!(
        "{}/api/v1/ws?token={}",
        host.base.replacen("http", "ws", 1),
        host.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("WebSocket");
    ws.send(Message::text(
        json!({"type": "subscribe", "topics": ["plugin:testkit"]}).to_string(),
    ))
    .await
    .expect("subscribe");
    let (server_cpu, client_cpu, started) =
        (host.cpu_seconds(), cpu_seconds("self"), Instant::now());
    let mut ms = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let sent = Instant::now();
        let task: Value = client
            .post(format!("{}/api/v1/tasks", host.base))
            .json(&json!({"plugin": "testkit", "type": "echo", "input": {"hello": "world"}}))
            .send()
            .await
            .expect("create")
            .json()
            .await
            .expect("json");
        let id = task["id"].as_str().expect("id").to_owned();
        loop {
            let frame = ws.next().await.expect("stream open").expect("frame");
            let Ok(text) = frame.into_text() else {
                continue;
            };
            let event: Value = serde_json::from_str(&text).unwrap_or_default();
            if event["task_id"] == id.as_str() && event["type"] == "completed" {
                break;
            }
        }
        ms.push(sent.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "one at a time ({rounds} tasks): POST → completed event p50 {:.2} ms, p99 {:.2} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    );
    print_cpu_split(
        "one at a time",
        started.elapsed().as_secs_f64(),
        cpu_seconds("self") - client_cpu,
        host.cpu_seconds() - server_cpu,
    );
}
