//! Claims and leases across hosts, against a real private cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use super::cluster::PgCluster;
use super::tally::Tally;
use super::tests::settings;
use super::{connect, leases, tasks};
use crate::model::{EventData, QueueCause, Task, TaskStatus};
use crate::storage::conformance;
use crate::storage::shared::{ControlRequest, Finished, Lease, Renewal};

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
    let mut tally = Tally::default();
    for (n, id) in ids.enumerate() {
        let task = conformance::task(&id, "p", "alice", TaskStatus::Queued, n as i64);
        tasks::insert(&mut tx, &mut tally, &task, &[])
            .await
            .expect("insert");
    }
    tally.write(&mut tx).await.expect("counts");
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
            let batch = leases::claim(&pool, host, "p", 7, Duration::from_secs(30), start)
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
    assert_eq!(count_p(&a, TaskStatus::Running).await, 200);
    assert_eq!(count_p(&a, TaskStatus::Queued).await, 0);
}

#[tokio::test]
async fn a_lapsed_lease_is_taken_over_and_the_late_host_can_neither_renew_nor_finish() {
    let cluster = PgCluster::start();
    let a = connect(&settings(cluster.url())).await.expect("host a");
    let b = connect(&settings(cluster.url())).await.expect("host b");
    queue(&a, std::iter::once("job".to_string())).await;
    let short = Duration::from_millis(300);

    let (task, lease_a, _) = leases::claim(&a, "host-a", "p", 1, short, start)
        .await
        .expect("claim")
        .pop()
        .expect("one task");
    assert_eq!(
        leases::renew_all(&a, std::slice::from_ref(&lease_a), short)
            .await
            .expect("renew"),
        vec![Renewal::Held(None)]
    );
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
    let (retaken, lease_b, _) = leases::claim(&b, "host-b", "p", 1, short * 10, start)
        .await
        .expect("claim again")
        .pop()
        .expect("the task again");
    assert_eq!(retaken.attempt, 2, "a takeover is a new attempt");
    assert!(lease_b.token > lease_a.token);

    // Host a comes back late: its lease is gone and its outcome is refused.
    assert_eq!(
        leases::renew_all(&a, std::slice::from_ref(&lease_a), short)
            .await
            .expect("renew"),
        vec![Renewal::Lost]
    );
    assert_eq!(task.attempt, 1);
    let refused = leases::finish(&a, &lease_a, |late| {
        late.status = TaskStatus::Failed;
        Some(Vec::new())
    })
    .await
    .expect("finish");
    assert!(
        matches!(refused, Finished::Lost),
        "a fenced write was accepted"
    );

    let completed = EventData::Completed {
        result: serde_json::json!({"ok": true}),
    };
    let written = leases::finish(&b, &lease_b, |done| {
        assert_eq!(done.attempt, 2, "the end is written over the stored task");
        done.status = TaskStatus::Completed;
        Some(vec![completed.clone()])
    })
    .await
    .expect("finish");
    assert!(matches!(written, Finished::Written(_, ref events) if events.len() == 1));
    assert_eq!(count_p(&b, TaskStatus::Completed).await, 1);
    assert_eq!(count_p(&b, TaskStatus::Running).await, 0);
    assert_eq!(count_p(&b, TaskStatus::Failed).await, 0);
}

#[tokio::test]
async fn a_task_id_inserted_twice_is_a_duplicate_and_changes_no_count() {
    let cluster = PgCluster::start();
    let pool = connect(&settings(cluster.url())).await.expect("connects");
    queue(&pool, std::iter::once("same".to_string())).await;
    let mut tx = pool.begin().await.expect("begin");
    let task = conformance::task("same", "p", "bob", TaskStatus::Queued, 9);
    let again = tasks::insert(&mut tx, &mut Tally::default(), &task, &[]).await;
    assert!(matches!(again, Err(crate::storage::StorageError::Duplicate(id)) if id == "same"));
    drop(tx);
    assert_eq!(count_p(&pool, TaskStatus::Queued).await, 1);
}

/// How many tasks of plugin `p` are in `status`.
async fn count_p(pool: &sqlx::PgPool, status: TaskStatus) -> i64 {
    tasks::status_count(pool, "p", status).await.expect("count")
}

async fn insert(pool: &sqlx::PgPool, task: &Task) {
    let mut tx = pool.begin().await.expect("begin");
    let mut tally = Tally::default();
    tasks::insert(&mut tx, &mut tally, task, &[])
        .await
        .expect("insert");
    tally.write(&mut tx).await.expect("counts");
    tx.commit().await.expect("commit");
}

async fn claim_ids(pool: &sqlx::PgPool, plugin: &str) -> Vec<String> {
    leases::claim(pool, "host-a", plugin, 10, Duration::from_secs(30), start)
        .await
        .expect("claim")
        .into_iter()
        .map(|(task, _, _)| task.id)
        .collect()
}

/// Claims the one ready task of `plugin`.
async fn claim_one(pool: &sqlx::PgPool, plugin: &str) -> (Task, Lease) {
    let (task, lease, _) = leases::claim(pool, "host-a", plugin, 1, Duration::from_secs(30), start)
        .await
        .expect("claim")
        .pop()
        .expect("a ready task");
    (task, lease)
}

/// A fresh cluster holding one queued task, `dep` of plugin `q`, for others to depend on.
async fn with_queued_dependency() -> (PgCluster, sqlx::PgPool) {
    let cluster = PgCluster::start();
    let pool = connect(&settings(cluster.url())).await.expect("connects");
    insert(
        &pool,
        &conformance::task("dep", "q", "alice", TaskStatus::Queued, 1),
    )
    .await;
    (cluster, pool)
}

/// `task` in `status`.
fn with_status(task: &Task, status: TaskStatus) -> Task {
    let mut ended = task.clone();
    ended.status = status;
    ended
}

/// Ends the run `lease` holds with `status`.
async fn end(pool: &sqlx::PgPool, lease: &Lease, status: TaskStatus) {
    let finished = leases::finish(pool, lease, |task| {
        task.status = status;
        Some(Vec::new())
    })
    .await
    .expect("finish");
    assert!(matches!(finished, Finished::Written(..)), "lease not held");
}

#[tokio::test]
async fn a_claim_passes_over_paused_queues_and_tasks_whose_dependencies_have_not_completed() {
    let (_cluster, pool) = with_queued_dependency().await;
    let mut child = conformance::task("child", "p", "alice", TaskStatus::Queued, 2);
    child.depends_on = vec!["dep".into()];
    insert(&pool, &child).await;
    insert(
        &pool,
        &conformance::task("free", "p", "alice", TaskStatus::Queued, 3),
    )
    .await;

    assert_eq!(claim_ids(&pool, "p").await, vec!["free".to_owned()]);

    sqlx::query("INSERT INTO paused_queues (plugin) VALUES ('q')")
        .execute(&pool)
        .await
        .expect("pause q");
    assert!(claim_ids(&pool, "q").await.is_empty(), "q is paused");
    sqlx::query("DELETE FROM paused_queues")
        .execute(&pool)
        .await
        .expect("resume q");
    let (dep, lease) = claim_one(&pool, "q").await;
    assert_eq!(dep.id, "dep");
    assert!(
        claim_ids(&pool, "p").await.is_empty(),
        "child waits while dep runs"
    );
    end(&pool, &lease, TaskStatus::Completed).await;
    assert_eq!(claim_ids(&pool, "p").await, vec!["child".to_owned()]);
}

#[tokio::test]
async fn stranded_dependents_are_the_queued_tasks_waiting_for_a_failed_or_missing_task() {
    let (_cluster, pool) = with_queued_dependency().await;
    for (id, dependency, n) in [("waits", "dep", 2), ("orphan", "gone", 3)] {
        let mut task = conformance::task(id, "p", "alice", TaskStatus::Queued, n);
        task.depends_on = vec![dependency.into()];
        insert(&pool, &task).await;
    }
    let stranded = leases::stranded_dependents(&pool, 10).await.expect("sweep");
    assert_eq!(stranded, vec![("orphan".to_owned(), "gone".to_owned())]);

    let (dep, lease) = claim_one(&pool, "q").await;
    assert_eq!(dep.id, "dep");
    end(&pool, &lease, TaskStatus::Failed).await;
    let stranded = leases::stranded_dependents(&pool, 10).await.expect("sweep");
    assert_eq!(
        stranded,
        vec![
            ("waits".to_owned(), "dep".to_owned()),
            ("orphan".to_owned(), "gone".to_owned())
        ]
    );
}

#[tokio::test]
async fn renewing_hands_the_holder_its_control_requests_once_and_reports_leases_taken_over() {
    let cluster = PgCluster::start();
    let pool = connect(&settings(cluster.url())).await.expect("connects");
    queue(&pool, ["one", "two", "idle"].into_iter().map(String::from)).await;
    let short = Duration::from_millis(300);
    let held: Vec<_> = leases::claim(&pool, "host-a", "p", 2, short, start)
        .await
        .expect("claim")
        .into_iter()
        .map(|(_, lease, _)| lease)
        .collect();
    assert_eq!(held.len(), 2);

    assert!(
        leases::request_control(&pool, &held[0].task_id, ControlRequest::Pause)
            .await
            .expect("request")
    );
    // A later request replaces one not yet taken.
    assert!(
        leases::request_control(&pool, &held[0].task_id, ControlRequest::Cancel)
            .await
            .expect("request")
    );
    assert!(
        !leases::request_control(&pool, "idle", ControlRequest::Cancel)
            .await
            .expect("request"),
        "no host holds a queued task"
    );

    let renewed = leases::renew_all(&pool, &held, short).await.expect("renew");
    assert_eq!(
        renewed,
        vec![
            Renewal::Held(Some(ControlRequest::Cancel)),
            Renewal::Held(None)
        ]
    );
    let again = leases::renew_all(&pool, &held, short).await.expect("renew");
    assert_eq!(again, vec![Renewal::Held(None), Renewal::Held(None)]);

    tokio::time::sleep(short + Duration::from_millis(200)).await;
    let lapsed = leases::requeue_lapsed(&pool, 10, requeue)
        .await
        .expect("sweep");
    assert_eq!(lapsed.len(), 2);
    let lost = leases::renew_all(&pool, &held, short).await.expect("renew");
    assert_eq!(lost, vec![Renewal::Lost, Renewal::Lost]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_scheduled_task_is_queued_once_however_many_hosts_look() {
    let cluster = PgCluster::start();
    let a = connect(&settings(cluster.url())).await.expect("host a");
    let b = connect(&settings(cluster.url())).await.expect("host b");
    let now = chrono::Utc::now();
    for (id, offset_s) in [("due", -5), ("later", 3600)] {
        let mut task = conformance::task(id, "p", "alice", TaskStatus::Scheduled, 1);
        task.scheduled_at = Some(now + chrono::Duration::seconds(offset_s));
        insert(&a, &task).await;
    }
    let promote = |task: &mut Task| {
        task.status = TaskStatus::Queued;
        task.scheduled_at = None;
        vec![EventData::Queued {
            status: TaskStatus::Queued,
            scheduled_at: None,
            cause: QueueCause::Created,
        }]
    };
    let (on_a, on_b) = tokio::join!(
        leases::promote_due(&a, 10, promote),
        leases::promote_due(&b, 10, promote)
    );
    let promoted: Vec<String> = on_a
        .expect("promote on a")
        .into_iter()
        .chain(on_b.expect("promote on b"))
        .map(|(task, _)| task.id)
        .collect();
    assert_eq!(promoted, vec!["due".to_owned()]);
    assert_eq!(count_p(&a, TaskStatus::Queued).await, 1);
    assert_eq!(count_p(&a, TaskStatus::Scheduled).await, 1);
    assert_eq!(claim_ids(&a, "p").await, vec!["due".to_owned()]);
}

#[tokio::test]
async fn a_run_paused_at_a_checkpoint_keeps_its_lease_ends_from_paused_and_is_released_when_it_lapses()
 {
    let cluster = PgCluster::start();
    let pool = connect(&settings(cluster.url())).await.expect("connects");
    queue(&pool, ["kept", "abandoned"].into_iter().map(String::from)).await;
    let short = Duration::from_millis(300);
    let claimed = leases::claim(&pool, "host-a", "p", 2, short, start)
        .await
        .expect("claim");
    let mut held = Vec::new();
    for (task, lease, _) in claimed {
        let paused = with_status(&task, TaskStatus::Paused);
        let mut tx = pool.begin().await.expect("begin");
        let mut tally = Tally::default();
        tasks::update(
            &mut tx,
            &mut tally,
            &paused,
            TaskStatus::Running,
            &[EventData::Paused],
        )
        .await
        .expect("paused in place");
        tally.write(&mut tx).await.expect("counts and events");
        tx.commit().await.expect("commit");
        held.push((paused, lease));
    }
    let (_, kept_lease) = &held[0];
    let (abandoned, abandoned_lease) = &held[1];

    // Cancelled while paused: the outcome is written from `paused`.
    let written = leases::finish(&pool, kept_lease, |task| {
        assert_eq!(task.status, TaskStatus::Paused);
        task.status = TaskStatus::Cancelled;
        Some(Vec::new())
    })
    .await
    .expect("finish");
    assert!(
        matches!(written, Finished::Written(..)),
        "the holder's outcome was refused"
    );
    assert_eq!(count_p(&pool, TaskStatus::Cancelled).await, 1);

    // Its host dies: once the lease lapses it is released, still paused, and nobody holds it.
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    assert!(
        leases::requeue_lapsed(&pool, 10, requeue)
            .await
            .expect("sweep")
            .is_empty(),
        "a paused task is not queued by the sweeper"
    );
    assert_eq!(count_p(&pool, TaskStatus::Paused).await, 1);
    assert!(
        !leases::request_control(&pool, &abandoned.id, ControlRequest::Resume)
            .await
            .expect("request"),
        "a released task has no holder to ask"
    );
    assert_eq!(
        leases::renew_all(&pool, std::slice::from_ref(abandoned_lease), short)
            .await
            .expect("renew"),
        vec![Renewal::Lost]
    );
}

#[tokio::test]
async fn dependencies_of_tasks_written_before_schema_4_are_recorded_once_at_start() {
    let cluster = PgCluster::start();
    let old = sqlx::PgPool::connect(&cluster.url())
        .await
        .expect("connects");
    super::MIGRATOR.run_to(3, &old).await.expect("schema 3");
    for (id, dependencies, created) in [("dep", vec![], 1), ("child", vec!["dep".to_owned()], 2)] {
        let mut task = conformance::task(id, "p", "alice", TaskStatus::Queued, created);
        task.depends_on = dependencies;
        // The row as a schema-3 host wrote it: no depends_on column yet.
        sqlx::query(
            "INSERT INTO tasks (id, plugin, owner, status, priority, created_at, updated_at, \
             scheduled_at, labels, body, task_type) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '{}', $9, $10)",
        )
        .bind(&task.id)
        .bind(&task.plugin)
        .bind(&task.owner)
        .bind(task.status.as_str())
        .bind(task.priority)
        .bind(task.created_at)
        .bind(task.updated_at)
        .bind(task.scheduled_at)
        .bind(crate::storage::codec::encode(&task).expect("encodes"))
        .bind(&task.task_type)
        .execute(&old)
        .await
        .expect("schema-3 row");
    }
    old.close().await;

    let pool = connect(&settings(cluster.url())).await.expect("migrates");
    let recorded: Vec<String> =
        sqlx::query_scalar("SELECT depends_on FROM tasks WHERE id = 'child'")
            .fetch_one(&pool)
            .await
            .expect("child");
    assert_eq!(recorded, vec!["dep".to_owned()]);
    assert_eq!(
        claim_ids(&pool, "p").await,
        vec!["dep".to_owned()],
        "child waits"
    );
    // Done once: a later start rewrites nothing, even a row that has lost its column again.
    sqlx::query("UPDATE tasks SET depends_on = '{}' WHERE id = 'child'")
        .execute(&pool)
        .await
        .expect("cleared");
    let again = connect(&settings(cluster.url())).await.expect("restarts");
    let left: Vec<String> = sqlx::query_scalar("SELECT depends_on FROM tasks WHERE id = 'child'")
        .fetch_one(&again)
        .await
        .expect("child");
    assert!(left.is_empty(), "backfilled twice: {left:?}");
}
