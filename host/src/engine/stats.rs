//! Task statistics: totals by status, success rate and durations, per plugin, per `project`
//! label, per any label asked for (`group_by=label.<key>`) and per day.
//!
//! Without a time range, filtered and grouped by nothing but the labels cells are kept by
//! ([`CELL_LABELS`]), they are added up from the statistics cells storage keeps on write (see
//! [`crate::storage::cells`]): the cost follows the number of cells, not of tasks. Anything
//! else reads the tasks that match, through the smallest index the filters imply, and adds
//! each up as a cell of one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::EngineError;
use crate::model::TaskStatus;
use crate::policy::ReadScope;
use crate::storage::cells::{self, CELL_LABELS, Cell, CellCounts, CellKey};
use crate::storage::{SortField, Storage, TaskQuery};

/// How many labels one request may group by.
pub const MAX_GROUP_BY: usize = 4;

/// Filters and groupings of `GET /api/v1/stats`.
#[derive(Debug, Clone, Default)]
pub struct StatsQuery {
    /// Only this plugin's tasks.
    pub plugin: Option<String>,
    pub labels: Vec<(String, String)>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Label keys to add a `by_label` breakdown for.
    pub group_by: Vec<String>,
    /// How many of the most recently updated matching tasks to list (0: none).
    pub recent: usize,
}

/// The most `recent` a request may ask for.
pub const MAX_RECENT: usize = 100;

/// A task as the `recent_activity` list shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = StatsActivity)]
pub struct Activity {
    pub task_id: String,
    pub plugin: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub title: Option<String>,
    pub status: TaskStatus,
    pub labels: BTreeMap<String, String>,
    #[serde(with = "crate::model::timestamp")]
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[schema(as = StatsSummary)]
pub struct Summary {
    pub total: u64,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_status: BTreeMap<&'static str, u64>,
    /// completed / (completed + failed); null before anything ended.
    pub success_rate: Option<f64>,
    /// Mean run time of the completed tasks (as reported, or finished − started), in seconds.
    pub average_duration_s: Option<f64>,
    /// Sum of the run times of the completed tasks, in seconds.
    pub total_duration_s: f64,
    #[serde(skip)]
    #[schema(ignore)]
    duration_ms: u64,
    #[serde(skip)]
    #[schema(ignore)]
    durations: u64,
}

impl Summary {
    fn add_counts(&mut self, counts: &CellCounts) {
        for (status, n) in TaskStatus::ALL.iter().zip(counts.by_status) {
            if n > 0 {
                *self.by_status.entry(status.as_str()).or_default() += n;
                self.total += n;
            }
        }
        self.duration_ms += counts.duration_ms;
        self.durations += counts.timed;
    }

    fn finish(&mut self) {
        for status in TaskStatus::ALL {
            self.by_status.entry(status.as_str()).or_default();
        }
        let completed = self.by_status["completed"];
        let failed = self.by_status["failed"];
        self.success_rate =
            (completed + failed > 0).then(|| completed as f64 / (completed + failed) as f64);
        self.total_duration_s = self.duration_ms as f64 / 1000.0;
        self.average_duration_s =
            (self.durations > 0).then(|| self.duration_ms as f64 / 1000.0 / self.durations as f64);
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = StatsDay)]
pub struct Day {
    pub date: String,
    pub created: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Stats {
    #[serde(flatten)]
    pub overall: Summary,
    pub by_plugin: BTreeMap<String, Summary>,
    pub by_project: BTreeMap<String, Summary>,
    /// Per label key asked for in `group_by`, per value: tasks without the label are left out.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_label: BTreeMap<String, BTreeMap<String, Summary>>,
    pub timeline: Vec<Day>,
    /// The most recently updated matching tasks, newest first, when `recent` asked for them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recent_activity: Option<Vec<Activity>>,
}

/// Adds up cells into [`Stats`].
struct Tally<'q> {
    stats: Stats,
    days: BTreeMap<String, Day>,
    group_by: &'q [String],
}

impl<'q> Tally<'q> {
    fn new(group_by: &'q [String]) -> Self {
        let mut stats = Stats::default();
        for key in group_by {
            stats.by_label.entry(key.clone()).or_default();
        }
        Self {
            stats,
            days: BTreeMap::new(),
            group_by,
        }
    }

    /// Counts `counts`, of tasks of `plugin` created on `day` whose label `k` is `label(k)`.
    fn add<'a>(
        &mut self,
        plugin: &str,
        day: &str,
        label: impl Fn(&str) -> Option<&'a str>,
        counts: &CellCounts,
    ) {
        if counts.by_status.iter().all(|n| *n == 0) {
            return;
        }
        let stats = &mut self.stats;
        stats.overall.add_counts(counts);
        stats
            .by_plugin
            .entry(plugin.to_owned())
            .or_default()
            .add_counts(counts);
        if let Some(project) = label("project") {
            stats
                .by_project
                .entry(project.to_owned())
                .or_default()
                .add_counts(counts);
        }
        for key in self.group_by {
            if let Some(value) = label(key)
                && let Some(groups) = stats.by_label.get_mut(key)
            {
                groups
                    .entry(value.to_owned())
                    .or_default()
                    .add_counts(counts);
            }
        }
        let of = |status: TaskStatus| {
            TaskStatus::ALL
                .iter()
                .position(|s| *s == status)
                .map_or(0, |i| counts.by_status[i])
        };
        let day = self.days.entry(day.to_owned()).or_insert_with(|| Day {
            date: day.to_owned(),
            created: 0,
            completed: 0,
            failed: 0,
        });
        day.created += counts.by_status.iter().sum::<u64>();
        day.completed += of(TaskStatus::Completed);
        day.failed += of(TaskStatus::Failed);
    }

    fn finish(mut self) -> Stats {
        let stats = &mut self.stats;
        stats.overall.finish();
        for summary in stats
            .by_plugin
            .values_mut()
            .chain(stats.by_project.values_mut())
            .chain(stats.by_label.values_mut().flat_map(|g| g.values_mut()))
        {
            summary.finish();
        }
        stats.timeline = self.days.into_values().collect();
        self.stats
    }
}

/// Whether cells answer `query`: no time range, and every label it filters or groups by is
/// one cells are kept by.
fn cells_answer(query: &StatsQuery) -> bool {
    query.created_after.is_none()
        && query.created_before.is_none()
        && query
            .labels
            .iter()
            .map(|(key, _)| key)
            .chain(&query.group_by)
            .all(|key| CELL_LABELS.contains(&key.as_str()))
}

fn cell_matches(key: &CellKey, scope: &ReadScope, query: &StatsQuery) -> bool {
    scope
        .plugins
        .as_ref()
        .is_none_or(|p| p.contains(&key.plugin))
        && query.plugin.as_ref().is_none_or(|p| *p == key.plugin)
        && query
            .labels
            .iter()
            .all(|(k, v)| key.label(k) == Some(Some(v.as_str())))
}

pub(super) async fn compute(
    storage: &dyn Storage,
    query: &StatsQuery,
    scope: &ReadScope,
) -> Result<Stats, EngineError> {
    let mut stats = totals(storage, query, scope).await?;
    if query.recent > 0 {
        stats.recent_activity = Some(recent_activity(storage, query, scope).await?);
    }
    Ok(stats)
}

/// The `recent` matching tasks updated last: a listing by update time.
async fn recent_activity(
    storage: &dyn Storage,
    query: &StatsQuery,
    scope: &ReadScope,
) -> Result<Vec<Activity>, EngineError> {
    let mut listing = TaskQuery {
        plugin: query.plugin.clone(),
        labels: query.labels.clone(),
        created_after: query.created_after,
        created_before: query.created_before,
        sort: SortField::UpdatedAt,
        ascending: false,
        limit: query.recent,
        ..TaskQuery::default()
    };
    if !listing.narrow_to(scope) {
        return Ok(Vec::new());
    }
    let (tasks, _) = storage.list_tasks(&listing).await?;
    Ok(tasks
        .into_iter()
        .map(|task| Activity {
            labels: task.labels,
            task_id: task.id,
            plugin: task.plugin,
            task_type: task.task_type,
            title: task.title,
            status: task.status,
            updated_at: task.updated_at,
        })
        .collect())
}

async fn totals(
    storage: &dyn Storage,
    query: &StatsQuery,
    scope: &ReadScope,
) -> Result<Stats, EngineError> {
    let mut tally = Tally::new(&query.group_by);
    if scope.plugins.as_ref().is_some_and(|p| p.is_empty()) {
        return Ok(tally.finish());
    }
    if cells_answer(query) {
        for Cell { key, counts } in storage.stat_cells(scope.owner.as_deref()).await? {
            if cell_matches(&key, scope, query) {
                tally.add(&key.plugin, &key.day, |k| key.label(k).flatten(), &counts);
            }
        }
        return Ok(tally.finish());
    }
    let mut listing = TaskQuery {
        plugin: query.plugin.clone(),
        labels: query.labels.clone(),
        created_after: query.created_after,
        created_before: query.created_before,
        limit: usize::MAX,
        ascending: true,
        ..TaskQuery::default()
    };
    if !listing.narrow_to(scope) {
        return Ok(tally.finish());
    }
    let (tasks, _) = storage.list_tasks(&listing).await?;
    for task in &tasks {
        let mut counts = CellCounts::default();
        for (_, delta) in cells::changes(None, Some(task)) {
            counts.apply(&delta);
        }
        let day = cells::day_of(&task.created_at);
        tally.add(
            &task.plugin,
            &day,
            |k| task.labels.get(k).map(String::as_str),
            &counts,
        );
    }
    Ok(tally.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SledStorage;
    use crate::storage::conformance::task;

    #[tokio::test]
    async fn stats_added_up_from_cells_equal_stats_read_from_the_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStorage::open(dir.path()).expect("sled opens");
        let statuses = [
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Queued,
            TaskStatus::Completed,
            TaskStatus::Running,
        ];
        for n in 0..60i64 {
            // Spread over three days, two owners, three plugins, two projects and none, three
            // agents and none.
            let mut t = task(
                &format!("st{n:02}"),
                ["alpha", "beta", "gamma"][n as usize % 3],
                ["alice", "bob"][n as usize % 2],
                statuses[n as usize % 5],
                n * 3_600_000,
            );
            if n % 3 != 0 {
                t.labels.insert("project".into(), format!("p{}", n % 2));
            }
            if n % 4 != 0 {
                t.labels.insert("agent".into(), format!("a{}", n % 3));
            }
            t.labels.insert("team".into(), format!("t{}", n % 2));
            if t.status == TaskStatus::Completed {
                t.started_at = Some(t.created_at);
                t.finished_at = Some(t.created_at + chrono::Duration::milliseconds(100 * n));
            }
            store.create_task(&t, &[]).await.expect("created");
        }
        let all = ReadScope {
            owner: None,
            plugins: None,
        };
        let alice = ReadScope {
            owner: Some("alice".into()),
            plugins: None,
        };
        let two_plugins = ReadScope {
            owner: None,
            plugins: Some(vec!["alpha".into(), "gamma".into()]),
        };
        let label = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let by_agent = vec!["agent".to_owned()];
        for (scope, labels, group_by) in [
            (&all, vec![], vec![]),
            (&alice, vec![], by_agent.clone()),
            (&two_plugins, vec![], by_agent.clone()),
            (&all, vec![label("project", "p1")], by_agent.clone()),
            // alice's tasks are the even ones, all of them in p0.
            (&alice, vec![label("project", "p0")], vec![]),
            (
                &all,
                vec![label("agent", "a2"), label("project", "p0")],
                vec!["project".to_owned()],
            ),
        ] {
            let from_cells = StatsQuery {
                labels: labels.clone(),
                group_by: group_by.clone(),
                ..StatsQuery::default()
            };
            assert!(cells_answer(&from_cells));
            // Any time range takes the path that reads tasks.
            let from_tasks = StatsQuery {
                labels,
                group_by,
                created_after: Some(DateTime::<Utc>::UNIX_EPOCH),
                ..StatsQuery::default()
            };
            let cells = compute(&store, &from_cells, scope).await.expect("stats");
            let tasks = compute(&store, &from_tasks, scope).await.expect("stats");
            assert_eq!(
                serde_json::to_value(&cells).expect("json"),
                serde_json::to_value(&tasks).expect("json"),
                "{scope:?}"
            );
            assert!(cells.overall.total > 0);
        }
    }

    #[tokio::test]
    async fn stats_grouped_by_a_label_count_each_value_and_leave_out_tasks_without_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStorage::open(dir.path()).expect("sled opens");
        let runs = [
            ("claude", TaskStatus::Completed, 1_000),
            ("claude", TaskStatus::Completed, 3_000),
            ("claude", TaskStatus::Failed, 0),
            ("gpt", TaskStatus::Running, 0),
        ];
        for (n, (agent, status, ms)) in runs.into_iter().enumerate() {
            let mut t = task(&format!("g{n}"), "tracker", "alice", status, 0);
            for key in ["agent", "team"] {
                t.labels.insert(key.into(), agent.into());
            }
            if status == TaskStatus::Completed {
                t.started_at = Some(t.created_at);
                t.finished_at = Some(t.created_at + chrono::Duration::milliseconds(ms));
            }
            store.create_task(&t, &[]).await.expect("created");
        }
        let unlabelled = task("g9", "tracker", "alice", TaskStatus::Completed, 0);
        store.create_task(&unlabelled, &[]).await.expect("created");
        let all = ReadScope {
            owner: None,
            plugins: None,
        };
        // `agent` comes from cells, `team` (the same values) from the tasks.
        for key in ["agent", "team"] {
            let query = StatsQuery {
                group_by: vec![key.to_owned()],
                ..StatsQuery::default()
            };
            assert_eq!(cells_answer(&query), key == "agent");
            let stats = compute(&store, &query, &all).await.expect("stats");
            let groups = &stats.by_label[key];
            assert_eq!(groups.keys().collect::<Vec<_>>(), ["claude", "gpt"]);
            let claude = &groups["claude"];
            assert_eq!((claude.total, claude.by_status["completed"]), (3, 2));
            assert_eq!(claude.success_rate, Some(2.0 / 3.0));
            assert_eq!(claude.average_duration_s, Some(2.0));
            assert_eq!(claude.total_duration_s, 4.0);
            assert_eq!(groups["gpt"].by_status["running"], 1);
            assert_eq!(stats.overall.total, 5, "the unlabelled task counts overall");
        }
    }
}
