//! Task statistics: totals by status, success rate and average duration, per plugin, per
//! `project` label and per day.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::EngineError;
use crate::model::{Task, TaskStatus};
use crate::policy::ReadScope;
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
    duration_sum_s: f64,
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
            self.duration_sum_s += (end - start).num_milliseconds().max(0) as f64 / 1000.0;
            self.durations += 1;
        }
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
            (self.durations > 0).then(|| self.duration_sum_s / self.durations as f64);
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

pub(super) fn compute(
    storage: &dyn Storage,
    query: &StatsQuery,
    scope: &ReadScope,
) -> Result<Stats, EngineError> {
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
    let (tasks, _) = storage.list_tasks(&listing)?;
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
