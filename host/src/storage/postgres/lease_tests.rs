//! Claims and leases across hosts, against a real private cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use super::cluster::PgCluster;
use super::tests::settings;
use super::{connect, leases, tasks};
use crate::model::{EventData, QueueCause, Task, TaskStatus};
use crate::storage::conformance;

fn start(task: &mut Task) -> Vec<EventData> {
    task.status = TaskStatus::Running;
    task.attempt += 1;
    task.started_at = Some(chrono::Utc::now());
    vec![EventData::Started {
        attempt: task.attempt,
    }]
}

fn requeue(task: &mut Task) -> Vec<EventData> {
    task.status = TaskStatus::Queued;
    vec![EventData::Queued {
        status: TaskStatus::Queued,
        scheduled_at: None,
        cause: QueueCause::Requeued("lease lapsed".into()),
    }]
}

async fn queue(pool: &sqlx::PgPool, ids: impl Iterator<Item = String>) {
    let mut tx = pool.begin().await.expect("begin");
    for (n, id) in ids.enumerate() {
        let task = conformance::task(&id, "p", "alice", TaskStatus::Queued, n as i64);
        tasks::insert(&mut tx, &task, &[]).await.expect("insert");
    }
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_claiming_at_once_start_each_task_exactly_once() {
    let cluster = PgCluster::start();
    let a = connect(&settings(cluster.url())).await.expect("host a");
    let b = connect(&settings(cluster.url())).await.expect("host b");
    queue(&a, (0..200).map(|n| format!("t{n:03}"))).await;

    let claim_all = |pool: sqlx::PgPool, host: &'static str| async move {
        let mut mine = Vec::new();
        for _ in 0..1000 {
            let batch = leases::claim(
                &pool,
                host,
                &["p".into()],
                7,
                Duration::from_secs(30),
                start,
            )
            .await
            .expect("claim");
            if batch.is_empty() {
                break;
            }
            mine.extend(batch);
        }
        mine
    };
    let (mine_a, mine_b) = tokio::join!(
        claim_all(a.clone(), "host-a"),
        claim_all(b.clone(), "host-b")
    );
    let ids_a: BTreeSet<_> = mine_a.iter().map(|(t, _, _)| t.id.clone()).collect();
    let ids_b: BTreeSet<_> = mine_b.iter().map(|(t, _, _)| t.id.clone()).collect();
    assert_eq!(ids_a.len(), mine_a.len(), "host a claimed a task twice");
    assert_eq!(ids_b.len(), mine_b.len(), "host b claimed a task twice");
    assert!(
        ids_a.is_disjoint(&ids_b),
        "a task was claimed by both hosts"
    );
    assert_eq!(ids_a.len() + ids_b.len(), 200);
    for (task, lease, events) in mine_a.iter().chain(&mine_b) {
        assert_eq!(task.attempt, 1);
        assert_eq!(lease.token, 1);
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0].data, EventData::Started { attempt: 1 }));
    }
    assert_eq!(
        tasks::status_count(&a, "p", TaskStatus::Running)
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        tasks::status_count(&a, "p", TaskStatus::Queued)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_and_the_late_host_can_neither_renew_nor_finish() {
    let cluster = PgCluster::start();
    let a = connect(&settings(cluster.url())).await.expect("host a");
    let b = connect(&settings(cluster.url())).await.expect("host b");
    queue(&a, std::iter::once("job".to_string())).await;
    let short = Duration::from_millis(300);

    let (task, lease_a, _) = leases::claim(&a, "host-a", &["p".into()], 1, short, start)
        .await
        .expect("claim")
        .pop()
        .expect("one task");
    assert!(leases::renew(&a, &lease_a, short).await.expect("renew"));
    // Host b finds nothing to take over while a's lease holds.
    assert!(
        leases::requeue_lapsed(&b, 10, requeue)
            .await
            .expect("sweep")
            .is_empty()
    );

    tokio::time::sleep(short + Duration::from_millis(200)).await;
    let requeued = leases::requeue_lapsed(&b, 10, requeue)
        .await
        .expect("sweep");
    assert_eq!(requeued.len(), 1);
    let (retaken, lease_b, _) = leases::claim(&b, "host-b", &["p".into()], 1, short * 10, start)
        .await
        .expect("claim again")
        .pop()
        .expect("the task again");
    assert_eq!(retaken.attempt, 2, "a takeover is a new attempt");
    assert!(lease_b.token > lease_a.token);

    // Host a comes back late: its lease is gone and its outcome is refused.
    assert!(!leases::renew(&a, &lease_a, short).await.expect("renew"));
    let mut late = task.clone();
    late.status = TaskStatus::Failed;
    let refused = leases::finish(&a, &lease_a, &late, &[])
        .await
        .expect("finish");
    assert!(refused.is_none(), "a fenced write was accepted");

    let mut done = retaken.clone();
    done.status = TaskStatus::Completed;
    let completed = EventData::Completed {
        result: serde_json::json!({"ok": true}),
    };
    let written = leases::finish(&b, &lease_b, &done, &[completed])
        .await
        .expect("finish");
    assert_eq!(written.map(|e| e.len()), Some(1));
    assert_eq!(
        tasks::status_count(&b, "p", TaskStatus::Completed)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        tasks::status_count(&b, "p", TaskStatus::Running)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        tasks::status_count(&b, "p", TaskStatus::Failed)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn a_task_id_inserted_twice_is_a_duplicate_and_changes_no_count() {
    let cluster = PgCluster::start();
    let pool = connect(&settings(cluster.url())).await.expect("connects");
    queue(&pool, std::iter::once("same".to_string())).await;
    let mut tx = pool.begin().await.expect("begin");
    let task = conformance::task("same", "p", "bob", TaskStatus::Queued, 9);
    let again = tasks::insert(&mut tx, &task, &[]).await;
    assert!(matches!(again, Err(crate::storage::StorageError::Duplicate(id)) if id == "same"));
    drop(tx);
    assert_eq!(
        tasks::status_count(&pool, "p", TaskStatus::Queued)
            .await
            .unwrap(),
        1
    );
}
