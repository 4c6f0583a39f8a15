//! The storage conformance suite: the contract atop [`super`], as tests any backend must pass.
//! A backend's own test module implements [`Backend`] (open a fresh store, and reopen the same
//! one as a restart would) and calls [`run_all`]; sled runs it in its unit tests, the
//! PostgreSQL backend runs the same suite unchanged.
//!
//! Listings are checked against a model: every query is also answered by filtering and
//! sorting all tasks in memory, and the store must return the same page and the same total.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;

use super::cells::CellKey;
use super::{SortField, Storage, StorageError, TaskQuery};
use crate::model::{EventData, EventKind, QueueCause, Record, Task, TaskProgress, TaskStatus};

/// A backend under test.
pub(crate) trait Backend {
    /// The store, opened on this backend's (initially empty) data.
    async fn open(&mut self) -> Arc<dyn Storage>;
    /// Closes `store` as a restart would (after `sync`) and opens the same data again.
    async fn reopen(&mut self, store: Arc<dyn Storage>) -> Arc<dyn Storage>;
}

/// Runs every conformance check, each on a fresh store from `new_backend`.
pub(crate) async fn run_all<B: Backend>(mut new_backend: impl FnMut() -> B) {
    a_task_its_counters_and_events_commit_together(&mut new_backend()).await;
    a_refused_write_changes_nothing(&mut new_backend()).await;
    seqs_rise_strictly_and_subscribers_see_them_in_order(&mut new_backend()).await;
    listings_match_the_model_for_every_filter_sort_and_page(&mut new_backend()).await;
    everything_survives_a_restart_and_seqs_continue_above(&mut new_backend()).await;
    logs_records_and_plugin_data_round_trip(&mut new_backend()).await;
    retention_prunes_only_finished_tasks_oldest_first_with_their_events(&mut new_backend()).await;
    super::runner_conformance::run_all(&mut new_backend).await;
    super::plugin_conformance::run_all(&mut new_backend).await;
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_780_000_000_000 + ms)
        .single()
        .unwrap_or_else(Utc::now)
}

/// A task as the engine would store it.
pub fn task(id: &str, plugin: &str, owner: &str, status: TaskStatus, created_ms: i64) -> Task {
    Task {
        id: id.to_owned(),
        plugin: plugin.to_owned(),
        task_type: "echo".into(),
        status,
        executor: Default::default(),
        input: json!({"n": created_ms}),
        sealed_input: None,
        labels: BTreeMap::new(),
        priority: 0,
        owner: owner.to_owned(),
        progress: TaskProgress::default(),
        attempt: 0,
        max_attempts: 3,
        timeout_s: 60,
        result: None,
        error: None,
        depends_on: Vec::new(),
        parent_id: None,
        reporters: Vec::new(),
        created_via: None,
        created_at: at(created_ms),
        scheduled_at: None,
        started_at: None,
        finished_at: None,
        updated_at: at(created_ms),
        title: None,
        duration_seconds: None,
    }
}

fn created() -> Vec<EventData> {
    vec![
        EventData::Created {
            plugin: "p".into(),
            task_type: "t".into(),
            priority: 0,
        },
        EventData::Queued {
            status: TaskStatus::Queued,
            scheduled_at: None,
            cause: QueueCause::Created,
        },
    ]
}

async fn count(store: &dyn Storage, plugin: &str, status: TaskStatus) -> u64 {
    store
        .status_counts()
        .await
        .expect("counts")
        .get(plugin)
        .and_then(|c| c.get(&status).copied())
        .unwrap_or(0)
}

async fn a_task_its_counters_and_events_commit_together(backend: &mut impl Backend) {
    let store = backend.open().await;
    let mut t = task("a", "p", "alice", TaskStatus::Queued, 0);
    let events = store.create_task(&t, &created()).await.expect("created");
    assert_eq!(events.len(), 2);
    store.sync().await.expect("durable");
    assert_eq!(store.get_task("a").await.expect("read"), Some(t.clone()));
    assert_eq!(count(store.as_ref(), "p", TaskStatus::Queued).await, 1);

    t.status = TaskStatus::Running;
    t.attempt = 1;
    store
        .update_task(&t, TaskStatus::Queued, &[EventData::Started { attempt: 1 }])
        .await
        .expect("started");
    store.sync().await.expect("durable");
    assert_eq!(count(store.as_ref(), "p", TaskStatus::Queued).await, 0);
    assert_eq!(count(store.as_ref(), "p", TaskStatus::Running).await, 1);
    let kinds: Vec<EventKind> = store
        .events(Some("a"), 0, 100)
        .await
        .expect("events")
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(
        kinds,
        [EventKind::Created, EventKind::Queued, EventKind::Started]
    );
    assert_eq!(
        store
            .task_ids_with_status(TaskStatus::Running)
            .await
            .expect("index"),
        ["a"]
    );
    assert!(
        store
            .task_ids_with_status(TaskStatus::Queued)
            .await
            .expect("index")
            .is_empty()
    );
}

async fn a_refused_write_changes_nothing(backend: &mut impl Backend) {
    let store = backend.open().await;
    let t = task("dup", "p", "alice", TaskStatus::Queued, 0);
    store.create_task(&t, &created()).await.expect("created");
    store.sync().await.expect("durable");
    let last = store.last_seq();

    let mut other = t.clone();
    other.plugin = "q".into();
    assert!(matches!(
        store.create_task(&other, &created()).await,
        Err(StorageError::Duplicate(_))
    ));
    let mut moved = t.clone();
    moved.status = TaskStatus::Completed;
    assert!(matches!(
        store
            .update_task(&moved, TaskStatus::Running, &created())
            .await,
        Err(StorageError::StatusChanged { .. })
    ));
    store.sync().await.expect("durable");
    assert_eq!(store.get_task("dup").await.expect("read"), Some(t));
    assert_eq!(store.last_seq(), last, "no event of a refused write");
    assert_eq!(count(store.as_ref(), "q", TaskStatus::Queued).await, 0);
    assert_eq!(count(store.as_ref(), "p", TaskStatus::Completed).await, 0);
    assert_eq!(count(store.as_ref(), "p", TaskStatus::Queued).await, 1);
}

async fn seqs_rise_strictly_and_subscribers_see_them_in_order(backend: &mut impl Backend) {
    let store = backend.open().await;
    let mut live = store.subscribe();
    for n in 0..50 {
        let t = task(&format!("s{n:02}"), "p", "alice", TaskStatus::Queued, n);
        store.create_task(&t, &created()).await.expect("created");
    }
    store.sync().await.expect("durable");
    let stored = store.events(None, 0, 1000).await.expect("events");
    assert_eq!(stored.len(), 100);
    assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(store.last_seq(), stored[99].seq);
    for expected in &stored {
        let event = live.try_recv().expect("published once durable");
        assert_eq!(event.seq, expected.seq);
    }
    let after = store
        .events(None, stored[49].seq, 10)
        .await
        .expect("events");
    assert_eq!(after.first().map(|e| e.seq), Some(stored[50].seq));
    assert_eq!(after.len(), 10);
}

/// What a listing must return, computed from every task.
fn model(tasks: &[Task], query: &TaskQuery) -> (Vec<String>, u64) {
    let mut matching: Vec<&Task> = tasks.iter().filter(|t| query.matches(t)).collect();
    matching.sort_by(|a, b| {
        let order = match query.sort {
            SortField::CreatedAt => a.created_at.cmp(&b.created_at),
            SortField::UpdatedAt => a.updated_at.cmp(&b.updated_at),
            SortField::Priority => a.priority.cmp(&b.priority),
        };
        order
            .then(a.created_at.cmp(&b.created_at))
            .then(a.id.cmp(&b.id))
    });
    if !query.ascending {
        matching.reverse();
    }
    let total = matching.len() as u64;
    let page = matching
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|t| t.id.clone())
        .collect();
    (page, total)
}

async fn listings_match_the_model_for_every_filter_sort_and_page(backend: &mut impl Backend) {
    let store = backend.open().await;
    let statuses = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
    ];
    let mut tasks = Vec::new();
    for n in 0..120i64 {
        let mut t = task(
            &format!("l{n:03}"),
            ["alpha", "beta", "gamma"][n as usize % 3],
            ["alice", "bob"][n as usize % 2],
            TaskStatus::Queued,
            n * 10,
        );
        t.priority = (n % 7) as i32 - 3;
        if n % 4 == 0 {
            t.labels.insert("project".into(), format!("p{}", n % 3));
        }
        if n % 5 == 0 {
            t.labels.insert("agent".into(), format!("a{}", n % 2));
        }
        store.create_task(&t, &created()).await.expect("created");
        let next = statuses[n as usize % 4];
        if next != TaskStatus::Queued {
            let mut moved = t.clone();
            moved.status = next;
            moved.updated_at = at(10_000 - n * 3);
            store
                .update_task(&moved, TaskStatus::Queued, &[])
                .await
                .expect("moved");
            t = moved;
        }
        tasks.push(t);
    }
    // Deleting a finished task takes it out of every listing and count.
    assert!(store.delete_task("l002").await.expect("deleted"));
    // Its cell keeps the times it saw (see cells::CellCounts), so the model of times counts it.
    let ever_counted = tasks.clone();
    tasks.retain(|t| t.id != "l002");
    store.sync().await.expect("durable");

    let mut queries = Vec::new();
    for sort in [
        SortField::CreatedAt,
        SortField::UpdatedAt,
        SortField::Priority,
    ] {
        for ascending in [false, true] {
            for (offset, limit) in [(0, 20), (15, 7), (110, 20)] {
                let base = TaskQuery {
                    sort,
                    ascending,
                    offset,
                    limit,
                    ..TaskQuery::default()
                };
                queries.push(base.clone());
                queries.push(TaskQuery {
                    status: Some(TaskStatus::Completed),
                    ..base.clone()
                });
                queries.push(TaskQuery {
                    plugin: Some("beta".into()),
                    ..base.clone()
                });
                queries.push(TaskQuery {
                    owner: Some("alice".into()),
                    plugins: Some(vec!["alpha".into(), "gamma".into()]),
                    ..base.clone()
                });
                queries.push(TaskQuery {
                    labels: vec![("project".into(), "p1".into())],
                    ..base.clone()
                });
                queries.push(TaskQuery {
                    status: Some(TaskStatus::Failed),
                    plugin: Some("alpha".into()),
                    created_after: Some(at(200)),
                    created_before: Some(at(1000)),
                    ..base.clone()
                });
            }
        }
    }
    for query in &queries {
        let (page, total) = store.list_tasks(query).await.expect("listing");
        let ids: Vec<String> = page.iter().map(|t| t.id.clone()).collect();
        assert_eq!((ids, total), model(&tasks, query), "{query:?}");
    }
    // The statistics cells add up to the tasks, for all owners and for one: counts, the
    // earliest creation and the latest change of every task that counted in them.
    type CellModel = ([u64; 7], Option<i64>, Option<i64>);
    for owner in [None, Some("alice")] {
        let mut model_cells: BTreeMap<CellKey, CellModel> = BTreeMap::new();
        for t in tasks.iter().filter(|t| owner.is_none_or(|o| t.owner == o)) {
            let slot = TaskStatus::ALL
                .iter()
                .position(|s| *s == t.status)
                .unwrap_or(0);
            model_cells.entry(CellKey::of(t)).or_default().0[slot] += 1;
        }
        for t in ever_counted
            .iter()
            .filter(|t| owner.is_none_or(|o| t.owner == o))
        {
            let Some(cell) = model_cells.get_mut(&CellKey::of(t)) else {
                continue;
            };
            let created = t.created_at.timestamp_millis();
            cell.1 = Some(cell.1.map_or(created, |ms| ms.min(created)));
            cell.2 = cell.2.max(Some(t.updated_at.timestamp_millis()));
        }
        let stored: BTreeMap<CellKey, CellModel> = store
            .stat_cells(owner)
            .await
            .expect("cells")
            .into_iter()
            .filter(|c| c.counts.by_status.iter().any(|n| *n > 0))
            .map(|c| {
                let counts = c.counts;
                (
                    c.key,
                    (
                        counts.by_status,
                        counts.first_created_ms,
                        counts.last_changed_ms,
                    ),
                )
            })
            .collect();
        assert_eq!(stored, model_cells, "cells of {owner:?}");
    }
    let counts = store.status_counts().await.expect("counts");
    for plugin in ["alpha", "beta", "gamma"] {
        for status in TaskStatus::ALL {
            let expected = tasks
                .iter()
                .filter(|t| t.plugin == plugin && t.status == status)
                .count() as u64;
            let stored = counts
                .get(plugin)
                .and_then(|c| c.get(&status).copied())
                .unwrap_or(0);
            assert_eq!(stored, expected, "{plugin} {status}");
        }
    }
}

async fn everything_survives_a_restart_and_seqs_continue_above(backend: &mut impl Backend) {
    let store = backend.open().await;
    for n in 0..30 {
        let t = task(&format!("r{n:02}"), "p", "alice", TaskStatus::Queued, n);
        store.create_task(&t, &created()).await.expect("created");
    }
    store.sync().await.expect("durable");
    let before_tasks = store
        .list_tasks(&TaskQuery {
            limit: 100,
            ..TaskQuery::default()
        })
        .await
        .expect("listing");
    let before_counts = store.status_counts().await.expect("counts");
    let last = store.last_seq();

    let store = backend.reopen(store).await;
    assert_eq!(store.last_seq(), last);
    let after_tasks = store
        .list_tasks(&TaskQuery {
            limit: 100,
            ..TaskQuery::default()
        })
        .await
        .expect("listing");
    assert_eq!(after_tasks, before_tasks);
    assert_eq!(store.status_counts().await.expect("counts"), before_counts);
    let t = task("r-next", "p", "alice", TaskStatus::Queued, 99);
    let events = store.create_task(&t, &created()).await.expect("created");
    assert_eq!(
        events[0].seq,
        last + 1,
        "seqs continue above the last durable one"
    );
}

async fn retention_prunes_only_finished_tasks_oldest_first_with_their_events(
    backend: &mut impl Backend,
) {
    let store = backend.open().await;
    // Ten finished tasks, last updated at 1 s, 2 s, … 10 s; three still queued, older still.
    for n in 0..13i64 {
        let mut t = task(&format!("old{n:02}"), "p", "alice", TaskStatus::Queued, n);
        store.create_task(&t, &created()).await.expect("created");
        if n < 10 {
            let mut done = t.clone();
            done.status = [
                TaskStatus::Completed,
                TaskStatus::Failed,
                TaskStatus::Cancelled,
            ][n as usize % 3];
            done.updated_at = at(1000 * (n + 1));
            store
                .update_task(
                    &done,
                    TaskStatus::Queued,
                    &[EventData::Completed { result: json!({}) }],
                )
                .await
                .expect("finished");
            t = done;
        }
        store
            .append_log(&t, "info", "a line", None)
            .await
            .expect("log");
    }
    store.sync().await.expect("durable");

    // Age: everything last updated before 5.5 s, in one call of up to 100.
    assert_eq!(
        store.prune(at(5500), u64::MAX, 100).await.expect("pruned"),
        5
    );
    // Count: keep the newest 2 finished, at most 2 per call.
    assert_eq!(store.prune(at(0), 2, 2).await.expect("pruned"), 2);
    assert_eq!(store.prune(at(0), 2, 100).await.expect("pruned"), 1);
    assert_eq!(store.prune(at(0), 2, 100).await.expect("pruned"), 0);
    store.sync().await.expect("durable");

    let left: Vec<String> = store
        .list_tasks(&TaskQuery {
            limit: 100,
            ascending: true,
            ..TaskQuery::default()
        })
        .await
        .expect("listing")
        .0
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(left, ["old08", "old09", "old10", "old11", "old12"]);
    for gone in ["old00", "old04", "old07"] {
        assert!(store.get_task(gone).await.expect("read").is_none());
        assert!(
            store
                .events(Some(gone), 0, 10)
                .await
                .expect("events")
                .is_empty()
        );
        assert!(store.logs(gone, 0, 10).await.expect("logs").is_empty());
    }
    assert_eq!(
        store
            .events(Some("old12"), 0, 10)
            .await
            .expect("events")
            .len(),
        3
    );
    let finished: u64 = store
        .status_counts()
        .await
        .expect("counts")
        .values()
        .flat_map(|c| c.iter())
        .filter(|(s, _)| s.is_terminal())
        .map(|(_, n)| n)
        .sum();
    assert_eq!(finished, 2);
    let cells: u64 = store
        .stat_cells(None)
        .await
        .expect("cells")
        .iter()
        .map(|c| c.counts.by_status.iter().sum::<u64>())
        .sum();
    assert_eq!(cells, 5, "stats count the tasks that are left");
}

async fn logs_records_and_plugin_data_round_trip(backend: &mut impl Backend) {
    let store = backend.open().await;
    let t = task("x", "p", "alice", TaskStatus::Running, 0);
    store.create_task(&t, &created()).await.expect("created");
    let first = store
        .append_log(&t, "info", "one", None)
        .await
        .expect("log");
    store
        .append_log(&t, "warn", "two", Some("build"))
        .await
        .expect("log");
    for key in ["k1", "k2", "k3"] {
        store
            .put_record(
                "x",
                &Record {
                    collection: "pages".into(),
                    key: key.into(),
                    data: json!({"key": key}),
                    updated_at: at(0) + Duration::seconds(1),
                },
            )
            .await
            .expect("record");
    }
    store.kv_set("p", "cursor", b"42").await.expect("kv");
    store.sync().await.expect("durable");
    let logs = store.logs("x", 0, 10).await.expect("logs");
    assert_eq!(
        logs.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(
        logs.iter().map(|l| l.step.as_deref()).collect::<Vec<_>>(),
        [None, Some("build")],
        "a line keeps the step that wrote it"
    );
    assert_eq!(store.logs("x", first.seq, 10).await.expect("logs").len(), 1);

    // A tail is the newest lines of that task alone, oldest first.
    let neighbour = task("x2", "p", "alice", TaskStatus::Running, 1);
    store
        .create_task(&neighbour, &created())
        .await
        .expect("created");
    store
        .append_log(&t, "info", "three", None)
        .await
        .expect("log");
    store
        .append_log(&neighbour, "info", "not x's", None)
        .await
        .expect("log");
    store.sync().await.expect("durable");
    let tail = |lines| {
        let store = store.clone();
        async move {
            store
                .log_tail("x", lines)
                .await
                .expect("tail")
                .into_iter()
                .map(|l| l.message)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(tail(2).await, ["two", "three"]);
    assert_eq!(tail(10).await, ["one", "two", "three"]);
    assert!(tail(0).await.is_empty());
    assert!(store.log_tail("nobody", 5).await.expect("tail").is_empty());
    let (page, total) = store
        .records("x", Some("pages"), 2, 1)
        .await
        .expect("records");
    assert_eq!(total, 3);
    assert_eq!(
        page.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["k2", "k3"]
    );
    assert_eq!(
        store.kv_get("p", "cursor").await.expect("kv"),
        Some(b"42".to_vec())
    );
    assert_eq!(store.kv_list("p", "cur", 10).await.expect("kv"), ["cursor"]);
}
