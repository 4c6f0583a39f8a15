//! Several hosts on one PostgreSQL database: echo tasks created over HTTP, round-robin across
//! 1, 2 and 3 `taskhost` processes on one private cluster (fsync on), run to completion. The
//! bench is only the client.
//!
//! `cargo bench -p taskhost --bench cluster_throughput` prints, per host count: tasks/s (first
//! create to last completion), create→completed p50/p99 from the tasks' own timestamps, how
//! the CPU split between client, hosts and PostgreSQL, and what each task cost the database —
//! its CPU, its transactions and its statements (round trips, from `pg_stat_statements`).
//! `CLUSTER_BENCH_TASKS` (default 5000) and `CLUSTER_BENCH_CLIENTS` (default 64) change the
//! load; `CLUSTER_BENCH_HOSTS` (default 3) the largest host count.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use support::{
    ServerProcess, cluster_cpu_seconds, completed, cpu_seconds, env_or, full_run, percentile,
};

#[path = "../src/storage/postgres/cluster.rs"]
#[allow(
    dead_code,
    reason = "the unit tests use all of it, the benchmark only part"
)]
mod cluster;

/// What the database did over a span: transactions committed and statements run.
async fn database_work(pool: &sqlx::PgPool) -> (i64, i64) {
    let commits: i64 = sqlx::query_scalar(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_database");
    let statements: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_statements")
            .fetch_one(pool)
            .await
            .expect("pg_stat_statements");
    (commits, statements)
}

async fn run(hosts: usize, tasks: usize, clients: usize) {
    let cluster = cluster::PgCluster::start_durable();
    let url = cluster.url();
    let config = format!(
        "[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 16\n\
         [auth]\njwt_secret = \"one-secret-every-host-of-the-bench-shares\"\n"
    );
    // One at a time: the first creates the admin the others find in the database.
    let mut servers = Vec::new();
    for _ in 0..hosts {
        servers.push(ServerProcess::start(&config).await);
    }
    let bases: Vec<String> = servers.iter().map(|s| s.base.clone()).collect();
    let client = servers[0].client(clients);
    let pool = sqlx::PgPool::connect(&url).await.expect("bench connection");
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
        .expect("pg_stat_statements");
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&pool)
        .await
        .expect("reset");
    let postmaster = cluster.postmaster_pid().expect("postmaster pid");
    let hosts_cpu = |servers: &[ServerProcess]| servers.iter().map(|s| s.cpu_seconds()).sum();
    let (db_before, hosts_before, client_before, pg_before): (_, f64, _, _) = (
        database_work(&pool).await,
        hosts_cpu(&servers),
        cpu_seconds("self"),
        cluster_cpu_seconds(postmaster),
    );

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, bases, next) = (client.clone(), bases.clone(), next.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= tasks {
                        return ids;
                    }
                    let response = client
                        .post(format!("{}/api/v1/tasks", bases[n % bases.len()]))
                        .json(&json!({"plugin": "testkit", "type": "echo", "input": {"n": n}}))
                        .send()
                        .await
                        .expect("create");
                    assert_eq!(response.status(), 202);
                    let task: Value = response.json().await.expect("json");
                    ids.push(task["id"].as_str().expect("id").to_owned());
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    for worker in workers {
        ids.extend(worker.await.expect("worker"));
    }
    while completed(&client, &bases[0]).await < tasks as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds("self") - client_before;
    let hosts_cpu = hosts_cpu(&servers) - hosts_before;
    let pg_cpu = cluster_cpu_seconds(postmaster) - pg_before;
    // Backends report their statistics at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db_after = database_work(&pool).await;

    let step = (ids.len() / 2000).max(1);
    let mut end_to_end = Vec::new();
    for id in ids.iter().step_by(step) {
        let task: Value = client
            .get(format!("{}/api/v1/tasks/{id}", bases[0]))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        let at = |f: &str| {
            task[f]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                .expect("timestamp")
        };
        end_to_end.push(
            (at("finished_at") - at("created_at"))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1000.0,
        );
    }
    end_to_end.sort_by(f64::total_cmp);
    let per_task = |x: f64| x / tasks as f64;
    println!(
        "{hosts} host(s), {tasks} echo tasks, {clients} clients: {:.0} tasks/s ({wall:.2} s); create→completed p50 {:.1} ms, p99 {:.1} ms",
        tasks as f64 / wall,
        percentile(&end_to_end, 0.5),
        percentile(&end_to_end, 0.99),
    );
    println!(
        "  CPU ({} cores): hosts {:.2} cores, PostgreSQL {:.2} cores, client {:.2} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        hosts_cpu / wall,
        pg_cpu / wall,
        client_cpu / wall,
    );
    println!(
        "  per task: PostgreSQL {:.0} µs CPU, {:.1} transactions, {:.1} statements; hosts {:.0} µs CPU",
        per_task(pg_cpu) * 1e6,
        per_task((db_after.0 - db_before.0) as f64),
        per_task((db_after.1 - db_before.1) as f64),
        per_task(hosts_cpu) * 1e6,
    );
}

fn main() {
    let (tasks, max_hosts) = if full_run() {
        (
            env_or("CLUSTER_BENCH_TASKS", 5000),
            env_or("CLUSTER_BENCH_HOSTS", 3),
        )
    } else {
        (100, 2)
    };
    let clients = env_or("CLUSTER_BENCH_CLIENTS", 64).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        for hosts in 1..=max_hosts.max(1) {
            run(hosts, tasks, clients).await;
        }
    });
}
