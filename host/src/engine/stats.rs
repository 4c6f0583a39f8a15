//! Task statistics: totals by status, success rate and average duration, per plugin, per
//! `project` label and per day.
//!
//! Without a time range, and filtered by nothing or by the `project` label alone, they are
//! added up from the statistics cells storage keeps on write (see [`crate::storage::cells`]):
//! the cost follows the number of (owner, plugin, project, day) cells, not of tasks. Other
//! filters read the tasks that match, through the smallest index the filters imply.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::EngineError;
use crate::model::{Task, TaskStatus};
use crate::policy::ReadScope;
use crate::storage::cells::{Cell, CellCounts};
use crate::storage::{Storage, TaskQuery};

/// Filters of `GET /api/v1/stats`.
#[derive(Debug, Clone, Default)]
pub struct StatsQuery {
    pub labels: Vec<(String, String)>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[schema(as = StatsSummary)]
pub struct Summary {
    pub total: u64,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_status: BTreeMap<&'static str, u64>,
    /// completed / (completed + failed); null before anything ended.
    pub success_rate: Option<f64>,
    /// Mean of finished − started over completed tasks, in seconds.
    pub average_duration_s: Option<f64>,
    #[serde(skip)]
    #[schema(ignore)]
    duration_ms: u64,
    #[serde(skip)]
    #[schema(ignore)]
    durations: u64,
}

impl Summary {
    fn add(&mut self, task: &Task) {
        self.total += 1;
        *self.by_status.entry(task.status.as_str()).or_default() += 1;
        if task.status == TaskStatus::Completed
            && let (Some(start), Some(end)) = (task.started_at, task.finished_at)
        {
            self.duration_ms += (end - start).num_milliseconds().max(0) as u64;
            self.durations += 1;
        }
    }

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
    pub timeline: Vec<Day>,
}

/// Adds up the cells `scope` and `project` let through.
fn from_cells(cells: Vec<Cell>, scope: &ReadScope, project: Option<&str>) -> Stats {
    let mut stats = Stats::default();
    let mut days: BTreeMap<String, Day> = BTreeMap::new();
    for Cell { key, counts } in cells {
        if counts.by_status.iter().all(|n| *n == 0)
            || scope
                .plugins
                .as_ref()
                .is_some_and(|p| !p.contains(&key.plugin))
            || project.is_some_and(|p| key.project.as_deref() != Some(p))
        {
            continue;
        }
        stats.overall.add_counts(&counts);
        stats
            .by_plugin
            .entry(key.plugin.clone())
            .or_default()
            .add_counts(&counts);
        if let Some(project) = &key.project {
            stats
                .by_project
                .entry(project.clone())
                .or_default()
                .add_counts(&counts);
        }
        let day = days.entry(key.day.clone()).or_insert(Day {
            date: key.day,
            created: 0,
            completed: 0,
            failed: 0,
        });
        let of = |status: TaskStatus| {
            TaskStatus::ALL
                .iter()
                .position(|s| *s == status)
                .map_or(0, |i| counts.by_status[i])
        };
        day.created += counts.by_status.iter().sum::<u64>();
        day.completed += of(TaskStatus::Completed);
        day.failed += of(TaskStatus::Failed);
    }
    stats.overall.finish();
    for summary in stats
        .by_plugin
        .values_mut()
        .chain(stats.by_project.values_mut())
    {
        summary.finish();
    }
    stats.timeline = days.into_values().filter(|d| d.created > 0).collect();
    stats
}

pub(super) async fn compute(
    storage: &dyn Storage,
    query: &StatsQuery,
    scope: &ReadScope,
) -> Result<Stats, EngineError> {
    let ranged = query.created_after.is_some() || query.created_before.is_some();
    let project = match query.labels.as_slice() {
        [] => Some(None),
        [(key, value)] if key == "project" => Some(Some(value.as_str())),
        _ => None,
    };
    if let (false, Some(project)) = (ranged, project) {
        if scope.plugins.as_ref().is_some_and(|p| p.is_empty()) {
            let mut stats = Stats::default();
            stats.overall.finish();
            return Ok(stats);
        }
        let cells = storage.stat_cells(scope.owner.as_deref()).await?;
        return Ok(from_cells(cells, scope, project));
    }
    let mut listing = TaskQuery {
        labels: query.labels.clone(),
        created_after: query.created_after,
        created_before: query.created_before,
        limit: usize::MAX,
        ascending: true,
        ..TaskQuery::default()
    };
    let mut stats = Stats::default();
    if !listing.narrow_to(scope) {
        stats.overall.finish();
        return Ok(stats);
    }
    let (tasks, _) = storage.list_tasks(&listing).await?;
    let mut days: BTreeMap<String, Day> = BTreeMap::new();
    for task in &tasks {
        stats.overall.add(task);
        stats
            .by_plugin
            .entry(task.plugin.clone())
            .or_default()
            .add(task);
        if let Some(project) = task.labels.get("project") {
            stats
                .by_project
                .entry(project.clone())
                .or_default()
                .add(task);
        }
        let date = task.created_at.format("%Y-%m-%d").to_string();
        let day = days.entry(date.clone()).or_insert(Day {
            date,
            created: 0,
            completed: 0,
            failed: 0,
        });
        day.created += 1;
        match task.status {
            TaskStatus::Completed => day.completed += 1,
            TaskStatus::Failed => day.failed += 1,
            _ => {}
        }
    }
    stats.overall.finish();
    stats.by_plugin.values_mut().for_each(Summary::finish);
    stats.by_project.values_mut().for_each(Summary::finish);
    stats.timeline = days.into_values().collect();
    Ok(stats)
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
            // Spread over three days, two owners, three plugins, two projects and none.
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
        let project = vec![("project".to_owned(), "p1".to_owned())];
        for (scope, labels) in [
            (&all, vec![]),
            (&alice, vec![]),
            (&two_plugins, vec![]),
            (&all, project),
            // alice's tasks are the even ones, all of them in p0.
            (&alice, vec![("project".to_owned(), "p0".to_owned())]),
        ] {
            let from_cells = StatsQuery {
                labels: labels.clone(),
                ..StatsQuery::default()
            };
            // Any time range takes the path that reads tasks.
            let from_tasks = StatsQuery {
                labels,
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
}
