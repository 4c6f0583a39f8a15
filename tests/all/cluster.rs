//! Several hosts on one PostgreSQL database: work created through any host runs once and on one
//! host at a time, a killed host's runs are taken over once their lease lapses, and a stream on
//! one host carries the events of tasks run on the others, across a resume on another host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use warp::Filter;

use crate::crash::{all_finished, queue_totals};
use crate::harness::{ADMIN_PASSWORD, HostProcess, WsClient, client_with_token, login};
use crate::postgres::{CLUSTER_CLAIM_POLL_MS, CLUSTER_LEASE_S, PgCluster, shared_host_config};

const TASKS: usize = 2000;
const LEASE_S: u64 = CLUSTER_LEASE_S;
const CLAIM_POLL_MS: u64 = CLUSTER_CLAIM_POLL_MS;
const HOSTS: [&str; 3] = ["h0", "h1", "h2"];
/// The host killed mid-run.
const VICTIM: usize = 1;

/// One report of the `witness` task type: a run of `task` (its `attempt`) starting or ending
/// on `host`, stamped when the recorder heard it.
#[derive(Debug, Clone)]
struct Mark {
    end: bool,
    task: String,
    attempt: u64,
    host: String,
    at: Instant,
}

/// One task's runs by attempt: the marks of its start and its end, as far as they came.
type Attempts<'a> = BTreeMap<u64, (Option<&'a Mark>, Option<&'a Mark>)>;

/// A loopback HTTP server the `witness` runs report to.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Mark>>>) {
    let marks: Arc<Mutex<Vec<Mark>>> = Arc::default();
    let route = warp::path::param::<String>()
        .and(warp::query::<BTreeMap<String, String>>())
        .map({
            let marks = marks.clone();
            move |phase: String, query: BTreeMap<String, String>| {
                let field = |k: &str| query.get(k).cloned().unwrap_or_default();
                marks.lock().expect("marks").push(Mark {
                    end: phase == "end",
                    task: field("task"),
                    attempt: field("attempt").parse().unwrap_or(0),
                    host: field("host"),
                    at: Instant::now(),
                });
                "noted"
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, marks)
}

/// The configuration every host of the cluster shares, but for the name its runs report.
fn host_config(cluster: &PgCluster, name: &str) -> String {
    format!(
        r#"{}
[streams]
buffer_frames = 16384

[plugins.testkit]
http = {{ allow = ["127.0.0.1"] }}
config = {{ host = "{name}" }}
limits = {{ max_concurrency = 8 }}
"#,
        shared_host_config(cluster)
    )
}

/// Creates task `n` through host `n % 3`, or the next host answering when that one is gone (a
/// client behind a load balancer): accepted, or already there from an attempt cut short.
async fn create_round_robin(client: &reqwest::Client, bases: &[String], n: usize, body: Value) {
    for turn in 0..bases.len() {
        let base = &bases[(n + turn) % bases.len()];
        match client
            .post(format!("{base}/api/v1/tasks"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status() == StatusCode::ACCEPTED => return,
            Ok(response) if response.status() == StatusCode::CONFLICT && turn > 0 => return,
            Ok(response) => panic!(
                "creating {body} through {base}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ),
            Err(_) => continue,
        }
    }
    panic!("no host accepted task {n}");
}

/// What one subscriber saw, `seq` → (task id, event type): on the first host until a quarter
/// of the tasks completed, then resumed with `after_seq` on the third, until every task did.
async fn watch(first: String, then: String) -> BTreeMap<u64, (String, String)> {
    let mut seen = BTreeMap::new();
    let mut stream = WsClient::connect(&first).await;
    stream.subscribe(&["plugin:testkit"], None).await;
    let mut completions = 0;
    let mut resumed = false;
    let mut last = 0;
    let mut note = |frame: &Value, last: &mut u64, completions: &mut usize| {
        let (Some(seq), Some(task), Some(kind)) = (
            frame["seq"].as_u64(),
            frame["task_id"].as_str(),
            frame["type"].as_str(),
        ) else {
            return;
        };
        assert!(seq > *last, "seq {seq} arrived after {last}");
        *last = seq;
        assert!(
            seen.insert(seq, (task.to_owned(), kind.to_owned()))
                .is_none()
        );
        if kind == "completed" {
            *completions += 1;
        }
    };
    while completions < TASKS {
        if !resumed && completions >= TASKS / 4 {
            drop(stream);
            stream = WsClient::connect(&then).await;
            for frame in stream.subscribe(&["plugin:testkit"], Some(last)).await {
                note(&frame, &mut last, &mut completions);
            }
            resumed = true;
            continue;
        }
        let frame = stream.next_json().await;
        note(&frame, &mut last, &mut completions);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_run_every_task_once_and_take_over_a_killed_hosts_runs_after_its_lease() {
    let cluster = PgCluster::start();
    let (recorder, marks) = recorder().await;
    let dirs: Vec<_> = HOSTS
        .iter()
        .map(|_| tempfile::tempdir().expect("data dir"))
        .collect();
    // One at a time: the first creates the admin user the others then find in the database.
    let mut hosts: Vec<Option<HostProcess>> = HOSTS
        .iter()
        .zip(&dirs)
        .map(|(name, dir)| {
            Some(HostProcess::spawn_with_config(
                dir.path(),
                &host_config(&cluster, name),
            ))
        })
        .collect();
    let bases: Vec<String> = hosts
        .iter()
        .flatten()
        .map(|h| format!("http://{}", h.addr))
        .collect();
    // A token from one host is good on every host: they share the JWT secret.
    let token = login(&bases[0], "admin", ADMIN_PASSWORD).await;
    let client = client_with_token(&token);
    let ws = |base: &str| {
        format!(
            "{}/api/v1/ws?token={token}",
            base.replacen("http://", "ws://", 1)
        )
    };
    let watcher = tokio::spawn(watch(ws(&bases[0]), ws(&bases[2])));

    // Half witness runs that sleep a little, half that end at once, created 50 at a time.
    let creator = tokio::spawn({
        let (client, bases) = (client.clone(), bases.clone());
        async move {
            for batch in 0..TASKS / 50 {
                let requests = (batch * 50..batch * 50 + 50).map(|n| {
                    let ms = if n % 2 == 0 { 20 + (n % 5) * 20 } else { 0 };
                    let body = json!({
                        "plugin": "testkit", "type": "witness", "id": format!("c-{n:04}"),
                        "input": {"url": format!("http://{recorder}"), "ms": ms},
                    });
                    let (client, bases) = (&client, &bases);
                    async move { create_round_robin(client, bases, n, body).await }
                });
                futures::future::join_all(requests).await;
            }
        }
    });

    // Kill one host once work is well under way and it holds runs.
    let api = hosts[0].as_ref().expect("h0").api(&client);
    let start = Instant::now();
    loop {
        let running_on_victim = {
            let marks = marks.lock().expect("marks");
            let ended: BTreeSet<(&str, u64)> = marks
                .iter()
                .filter(|m| m.end)
                .map(|m| (m.task.as_str(), m.attempt))
                .collect();
            let started = marks
                .iter()
                .filter(|m| !m.end && m.host == HOSTS[VICTIM])
                .filter(|m| !ended.contains(&(m.task.as_str(), m.attempt)))
                .count();
            (ended.len(), started)
        };
        if running_on_victim.0 >= 300 && running_on_victim.1 > 0 {
            break;
        }
        let (pending, done) = queue_totals(&api).await;
        assert!(
            done < TASKS as u64 || pending > 0,
            "everything finished before the kill"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hosts[VICTIM].take().expect("victim").kill9();
    let killed_at = Instant::now();
    creator.await.expect("every task created");

    all_finished(&api, TASKS, Duration::from_secs(180)).await;

    // Every task exists once, completed, with one terminal event.
    let mut listed = BTreeSet::new();
    for offset in (0..TASKS).step_by(100) {
        let (status, page) = api
            .get(&format!("/api/v1/tasks?limit=100&offset={offset}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for task in page["data"].as_array().expect("data") {
            let id = task["id"].as_str().expect("id").to_owned();
            assert_eq!(task["status"], "completed", "{task}");
            assert!(listed.insert(id.clone()), "{id} listed twice");
        }
    }
    let created: BTreeSet<String> = (0..TASKS).map(|n| format!("c-{n:04}")).collect();
    assert_eq!(listed, created, "every created task, and only those");
    let mut stored_seqs = BTreeSet::new();
    for chunk in created.iter().collect::<Vec<_>>().chunks(50) {
        let fetched = futures::future::join_all(chunk.iter().map(|id| {
            let api = &api;
            async move { (id, api.events(id).await) }
        }))
        .await;
        for (id, events) in fetched {
            let terminal = events
                .iter()
                .filter(|e| crate::harness::is_terminal_event(e))
                .count();
            assert_eq!(terminal, 1, "task {id} ended {terminal} times: {events:?}");
            stored_seqs.extend(events.iter().filter_map(|e| e["seq"].as_u64()));
        }
    }

    // What ran, seen from outside: runs of one task never overlap; a run cut off by the kill
    // was on the killed host, and the next one starts within a lease and a tick of the kill.
    let marks = marks.lock().expect("marks").clone();
    let mut runs: BTreeMap<&str, Attempts> = BTreeMap::new();
    for mark in &marks {
        let run = runs
            .entry(mark.task.as_str())
            .or_default()
            .entry(mark.attempt)
            .or_default();
        let slot = if mark.end { &mut run.1 } else { &mut run.0 };
        assert!(slot.is_none(), "{mark:?} reported twice");
        *slot = Some(mark);
    }
    assert_eq!(runs.len(), TASKS, "every task ran");
    let bound = Duration::from_secs(LEASE_S) + Duration::from_millis(CLAIM_POLL_MS);
    let mut takeovers = Vec::new();
    let mut finished_on = BTreeMap::<&str, usize>::new();
    for (task, attempts) in &runs {
        let mut free_from: Option<Instant> = None;
        for (attempt, (start, end)) in attempts {
            let start = start.unwrap_or_else(|| panic!("{task} attempt {attempt} never started"));
            if let Some(free_from) = free_from {
                assert!(
                    start.at >= free_from,
                    "{task} attempt {attempt} started on {} while the previous run went on",
                    start.host
                );
            }
            match end {
                Some(end) => free_from = Some(end.at),
                None => {
                    assert_eq!(
                        start.host, HOSTS[VICTIM],
                        "{task} attempt {attempt} never ended on a live host"
                    );
                    assert!(start.at < killed_at);
                    free_from = Some(killed_at);
                    if let Some((_, (Some(next), _))) = attempts.range(attempt + 1..).next() {
                        takeovers.push((next.at - killed_at, *task));
                    }
                }
            }
        }
        let (_, (last_start, last_end)) = attempts.iter().next_back().expect("a run");
        assert!(last_end.is_some(), "{task}'s last run did not end");
        *finished_on
            .entry(last_start.expect("started").host.as_str())
            .or_default() += 1;
    }
    assert!(!takeovers.is_empty(), "the kill interrupted no run");
    let (slowest, slowest_task) = takeovers.iter().max().copied().unwrap_or_default();
    println!(
        "{} runs taken over after the kill, the slowest {slowest:?} after it (lease {LEASE_S} s, tick {CLAIM_POLL_MS} ms); tasks finished per host: {finished_on:?}",
        takeovers.len()
    );
    // One more second for a start on a loaded two-core machine.
    assert!(
        slowest <= bound + Duration::from_secs(1),
        "takeover of {slowest_task} took {slowest:?}, beyond lease + one tick ({bound:?}): {:?}",
        api.events(slowest_task).await
    );
    for host in HOSTS {
        assert!(finished_on.contains_key(host), "{host} finished no task");
    }

    // The subscriber on the first host, resumed on the third, saw every event of every task,
    // those run on the other two included, once and in order.
    let seen = watcher.await.expect("the subscriber saw every completion");
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), stored_seqs);
}
