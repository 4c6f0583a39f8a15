//! The PostgreSQL connection and schema against a real private cluster.

use super::cluster::PgCluster;
use super::*;

fn settings(url: String) -> PgSettings {
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
