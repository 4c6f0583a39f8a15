//! The PostgreSQL connection and schema against a real private cluster.

use super::cluster::PgCluster;
use super::*;

/// Transaction `n`'s events in the concurrency tests: 1 to 3 log lines named `n.i`.
pub(super) fn log_batch(n: usize) -> Vec<crate::model::EventData> {
    (0..1 + n % 3)
        .map(|i| crate::model::EventData::Log {
            level: "info".into(),
            message: format!("{n}.{i}"),
        })
        .collect()
}

fn message_of(data: &crate::model::EventData) -> String {
    match data {
        crate::model::EventData::Log { message, .. } => message.clone(),
        other => panic!("unexpected event {other:?}"),
    }
}

pub(super) fn settings(url: String) -> PgSettings {
    PgSettings { url, pool_size: 4 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_starting_together_on_a_fresh_database_migrate_it_once() {
    let cluster = PgCluster::start();
    let (a, b) = (settings(cluster.url()), settings(cluster.url()));
    let (first, second) = tokio::join!(connect(&a), connect(&b));
    let (first, second) = (first.expect("first host"), second.expect("second host"));

    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&first)
            .await
            .expect("migration ledger");
    let embedded: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(applied, embedded);

    for table in [
        "tasks",
        "task_counts",
        "event_seq",
        "events",
        "task_logs",
        "records",
        "plugin_kv",
        "paused_queues",
        "backfills",
        "users",
        "api_keys",
    ] {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(&second)
            .await
            .expect("catalog query");
        assert_eq!(found.as_deref(), Some(table), "table {table}");
    }
    let last_seq: i64 = sqlx::query_scalar("SELECT last FROM event_seq")
        .fetch_one(&second)
        .await
        .expect("the seq row");
    assert_eq!(last_seq, 0);

    // A host restarting on a migrated database changes nothing.
    drop((first, second));
    let again = connect(&settings(cluster.url())).await.expect("reconnects");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&again)
        .await
        .expect("ledger count");
    assert_eq!(rows, embedded.len() as i64);
}

#[tokio::test]
async fn the_schema_refuses_a_task_status_the_host_does_not_know() {
    let cluster = PgCluster::start();
    let pool = connect(&settings(cluster.url())).await.expect("connects");
    let inserted = sqlx::query(
        "INSERT INTO tasks (id, plugin, owner, status, priority, created_at, updated_at, body) \
         VALUES ('t1', 'p', 'alice', 'exploded', 0, now(), now(), '\\x00')",
    )
    .execute(&pool)
    .await;
    assert!(inserted.is_err(), "an unknown status was stored");
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(tasks, 0);
}

#[tokio::test]
async fn a_database_that_is_not_listening_is_reported_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    let url = format!("postgres://taskhost:pw@127.0.0.1:{port}/postgres");
    match connect(&settings(url)).await {
        Err(StorageError::Unavailable(message)) => assert!(message.contains("PostgreSQL")),
        Err(other) => panic!("expected unavailable, got {other:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

#[tokio::test]
async fn a_malformed_database_url_is_refused_with_a_clear_error() {
    match connect(&settings("postgres://[not-a-host".into())).await {
        Err(StorageError::Backend(message)) => {
            assert!(message.contains("URL is not valid"), "{message}")
        }
        Err(other) => panic!("expected a URL error, got {other:?}"),
        Ok(_) => panic!("a malformed URL connected"),
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_names_no_secret() {
    let cluster = PgCluster::start();
    let url = format!(
        "postgres://taskhost:wrong-secret@127.0.0.1:{}/postgres",
        cluster.port()
    );
    match connect(&settings(url)).await {
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains("password authentication failed"),
                "{message}"
            );
            assert!(!message.contains("wrong-secret"), "{message}");
        }
        Ok(_) => panic!("a wrong password was accepted"),
    }
}

/// Several hosts write events at once, with transactions held open for a while and some
/// rolled back; a reader on yet another host follows "after the last seq I saw" and must see
/// every committed event exactly once, in seq order, with no gap filled behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_several_hosts_commit_events_a_follower_reads_without_gaps() {
    use crate::model::TaskStatus;
    use crate::storage::conformance;
    use std::time::{Duration, Instant};

    const HOSTS: usize = 3;
    const WRITERS_PER_HOST: usize = 3;
    const TRANSACTIONS: usize = 40;

    let cluster = PgCluster::start();
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        hosts.push(connect(&settings(cluster.url())).await.expect("host pool"));
    }
    let follower = connect(&settings(cluster.url()))
        .await
        .expect("follower pool");

    let mut writers = tokio::task::JoinSet::new();
    for (h, pool) in hosts.iter().enumerate() {
        for w in 0..WRITERS_PER_HOST {
            let pool = pool.clone();
            writers.spawn(async move {
                let task =
                    conformance::task(&format!("h{h}w{w}"), "p", "alice", TaskStatus::Running, 0);
                let mut committed = 0usize;
                for n in 0..TRANSACTIONS {
                    let mut tx = pool.begin().await.expect("begin");
                    let batch = log_batch(n);
                    events::append(&mut tx, &task, &batch)
                        .await
                        .expect("append");
                    // Hold the transaction open so that others queue behind it.
                    tokio::time::sleep(Duration::from_micros(rand::random_range(0..2000))).await;
                    if n % 7 == 3 {
                        tx.rollback().await.expect("rollback");
                    } else {
                        tx.commit().await.expect("commit");
                        committed += batch.len();
                    }
                }
                committed
            });
        }
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut last = 0u64;
    let mut expected = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up in 60 s"
        );
        for event in events::read(&follower, None, last, 100)
            .await
            .expect("read")
        {
            assert_eq!(event.seq, last + 1, "a gap or a duplicate after seq {last}");
            last = event.seq;
            seen.push(event);
        }
        while let Some(done) = writers.try_join_next() {
            *expected.get_or_insert(0) += done.expect("writer");
        }
        if writers.is_empty() && expected.is_some_and(|n| seen.len() >= n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let expected = expected.expect("writers finished");
    assert_eq!(seen.len(), expected);
    assert_eq!(events::last_seq(&follower).await.expect("last seq"), last);
    // Each writer's events arrive in the order it wrote them, rolled-back ones never.
    for (h, w) in (0..HOSTS).flat_map(|h| (0..WRITERS_PER_HOST).map(move |w| (h, w))) {
        let id = format!("h{h}w{w}");
        let messages: Vec<String> = seen
            .iter()
            .filter(|e| e.task_id == id)
            .map(|e| message_of(&e.data))
            .collect();
        let written: Vec<String> = (0..TRANSACTIONS)
            .filter(|n| n % 7 != 3)
            .flat_map(|n| log_batch(n).into_iter().map(|e| message_of(&e)))
            .collect();
        assert_eq!(messages, written, "events of {id}");
        let by_task = events::read(&follower, Some(&id), 0, 1000)
            .await
            .expect("task read");
        assert_eq!(by_task.len(), written.len());
    }
}

/// A PostgreSQL store for the conformance suite: a private cluster per backend, so every
/// check starts from an empty database.
struct Postgres {
    cluster: PgCluster,
}

impl crate::storage::conformance::Backend for Postgres {
    async fn open(&mut self) -> std::sync::Arc<dyn crate::storage::Storage> {
        std::sync::Arc::new(
            PgStorage::open(&settings(self.cluster.url()))
                .await
                .expect("PostgreSQL store opens"),
        )
    }

    async fn reopen(
        &mut self,
        store: std::sync::Arc<dyn crate::storage::Storage>,
    ) -> std::sync::Arc<dyn crate::storage::Storage> {
        store.sync().await.expect("durable");
        drop(store);
        self.open().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_storage_conformance_suite() {
    crate::storage::conformance::run_all(|| Postgres {
        cluster: PgCluster::start(),
    })
    .await;
}

#[tokio::test]
async fn statistics_cells_are_rebuilt_by_agent_once_at_start_from_schema_8() {
    use crate::model::TaskStatus;
    use crate::storage::cells::{CellCounts, CellKey};
    use crate::storage::conformance;

    let cluster = PgCluster::start();
    let old = sqlx::PgPool::connect(&cluster.url())
        .await
        .expect("connects");
    MIGRATOR.run_to(8, &old).await.expect("schema 8");
    let mut tasks = Vec::new();
    for (id, agent, status) in [
        ("a1", Some("claude"), TaskStatus::Completed),
        ("a2", Some("claude"), TaskStatus::Failed),
        ("a3", None, TaskStatus::Completed),
    ] {
        let mut task = conformance::task(id, "tracker", "alice", status, 1_000);
        task.labels.insert("project".into(), "web".into());
        if let Some(agent) = agent {
            task.labels.insert("agent".into(), agent.into());
        }
        if status == TaskStatus::Completed {
            task.started_at = Some(task.created_at);
            task.finished_at = Some(task.created_at + chrono::Duration::milliseconds(400));
        }
        sqlx::query(
            "INSERT INTO tasks (id, plugin, owner, status, priority, created_at, updated_at, \
             labels, body, task_type) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&task.id)
        .bind(&task.plugin)
        .bind(&task.owner)
        .bind(task.status.as_str())
        .bind(task.priority)
        .bind(task.created_at)
        .bind(task.updated_at)
        .bind(serde_json::to_value(&task.labels).expect("labels"))
        .bind(crate::storage::codec::encode(&task).expect("encodes"))
        .bind(&task.task_type)
        .execute(&old)
        .await
        .expect("schema-8 row");
        tasks.push(task);
    }
    // The one cell a schema-8 host kept for all three: project `web`, no agent.
    sqlx::query(
        "INSERT INTO task_cells (owner, plugin, has_project, project, day, by_status, \
         duration_ms, timed) VALUES ('alice', 'tracker', true, 'web', $1, $2, 800, 2)",
    )
    .bind(tasks[0].created_at.format("%Y-%m-%d").to_string())
    .bind(vec![0i64, 0, 0, 0, 2, 1, 0])
    .execute(&old)
    .await
    .expect("schema-8 cell");
    old.close().await;

    let read_cells = |pool: sqlx::PgPool| async move {
        stat_cells::read(&pool, None)
            .await
            .expect("cells")
            .into_iter()
            .map(|cell| (cell.key, cell.counts))
            .collect::<std::collections::BTreeMap<CellKey, CellCounts>>()
    };
    let mut expected: std::collections::BTreeMap<CellKey, CellCounts> = Default::default();
    for task in &tasks {
        for (key, delta) in crate::storage::cells::changes(None, Some(task)) {
            expected.entry(key).or_default().apply(&delta);
        }
    }
    let pool = connect(&settings(cluster.url())).await.expect("migrates");
    assert_eq!(read_cells(pool.clone()).await, expected);
    assert!(
        expected
            .keys()
            .any(|k| k.agent.as_deref() == Some("claude")),
        "an agent cell is expected"
    );
    // Done once: a later start leaves the cells as writes keep them, even a hand-made one.
    sqlx::query("UPDATE task_cells SET timed = 99 WHERE has_agent")
        .execute(&pool)
        .await
        .expect("changed");
    for (_, counts) in expected.iter_mut().filter(|(k, _)| k.agent.is_some()) {
        counts.timed = 99;
    }
    let again = connect(&settings(cluster.url())).await.expect("restarts");
    assert_eq!(read_cells(again).await, expected, "rebuilt twice");
}
