//! Projects: the values of the `project` label that tasks carry, each with its task counts and
//! when its first task was created and its tasks last changed. Read from the statistics cells
//! (see [`crate::storage::cells`]), so a listing costs what the cells do, not the tasks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::EngineError;
use crate::model::TaskStatus;
use crate::policy::ReadScope;
use crate::storage::Storage;
use crate::storage::cells::CellCounts;

/// The order of a project listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProjectSort {
    #[default]
    Name,
    CreatedAt,
    UpdatedAt,
    TaskCount,
}

impl ProjectSort {
    pub const NAMES: [&str; 4] = ["name", "created_at", "updated_at", "task_count"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "name" => Some(Self::Name),
            "created_at" => Some(Self::CreatedAt),
            "updated_at" => Some(Self::UpdatedAt),
            "task_count" => Some(Self::TaskCount),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProjectQuery {
    /// Only projects of this plugin's tasks, counting those alone.
    pub plugin: Option<String>,
    pub sort: ProjectSort,
    pub ascending: bool,
    pub limit: usize,
    pub offset: usize,
}

/// One project as listed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Project {
    pub name: String,
    /// When its first task still counted was created (a project lives as long as its tasks).
    #[serde(with = "crate::model::timestamp::option")]
    #[schema(value_type = Option<String>)]
    pub created_at: Option<DateTime<Utc>>,
    /// When one of its tasks last came in or changed status.
    #[serde(with = "crate::model::timestamp::option")]
    #[schema(value_type = Option<String>)]
    pub updated_at: Option<DateTime<Utc>>,
    pub task_count: u64,
    /// Tasks not yet ended: queued, scheduled, running or paused.
    pub active_tasks: u64,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_status: BTreeMap<&'static str, u64>,
}

impl Project {
    fn of(name: String, counts: &CellCounts) -> Self {
        let by_status: BTreeMap<&'static str, u64> = TaskStatus::ALL
            .iter()
            .zip(counts.by_status)
            .map(|(status, n)| (status.as_str(), n))
            .collect();
        let active_tasks = TaskStatus::ALL
            .iter()
            .zip(counts.by_status)
            .filter(|(status, _)| !status.is_terminal())
            .map(|(_, n)| n)
            .sum();
        let at = |ms: Option<i64>| ms.and_then(DateTime::from_timestamp_millis);
        Self {
            name,
            created_at: at(counts.first_created_ms),
            updated_at: at(counts.last_changed_ms),
            task_count: counts.by_status.iter().sum(),
            active_tasks,
            by_status,
        }
    }
}

/// A page of the projects `scope` lets its caller see, and how many there are in all.
pub(super) async fn list(
    storage: &dyn Storage,
    query: &ProjectQuery,
    scope: &ReadScope,
) -> Result<(Vec<Project>, u64), EngineError> {
    if scope.plugins.as_ref().is_some_and(|p| p.is_empty()) {
        return Ok((Vec::new(), 0));
    }
    let mut totals: BTreeMap<String, CellCounts> = BTreeMap::new();
    for cell in storage.stat_cells(scope.owner.as_deref()).await? {
        let in_scope = scope
            .plugins
            .as_ref()
            .is_none_or(|p| p.contains(&cell.key.plugin))
            && query.plugin.as_ref().is_none_or(|p| *p == cell.key.plugin);
        if let (true, Some(project)) = (in_scope, cell.key.project) {
            totals.entry(project).or_default().merge(&cell.counts);
        }
    }
    let mut projects: Vec<Project> = totals
        .into_iter()
        .map(|(name, counts)| Project::of(name, &counts))
        .filter(|project| project.task_count > 0)
        .collect();
    // Ties (and the absent times of an empty cell) fall back to the name, so pages are stable.
    projects.sort_by(|a, b| {
        let order = match query.sort {
            ProjectSort::Name => std::cmp::Ordering::Equal,
            ProjectSort::CreatedAt => a.created_at.cmp(&b.created_at),
            ProjectSort::UpdatedAt => a.updated_at.cmp(&b.updated_at),
            ProjectSort::TaskCount => a.task_count.cmp(&b.task_count),
        }
        .then_with(|| a.name.cmp(&b.name));
        if query.ascending {
            order
        } else {
            order.reverse()
        }
    });
    let total = projects.len() as u64;
    let page = projects
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .collect();
    Ok((page, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SledStorage;
    use crate::storage::conformance::task;

    #[tokio::test]
    async fn projects_count_their_tasks_and_sort_by_each_field() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStorage::open(dir.path()).expect("sled opens");
        // web: 3 tasks (2 active) created from hour 0; api: 1 task created at hour 50.
        let mut first_created = None;
        for (id, project, status, hour) in [
            ("w1", Some("web"), TaskStatus::Completed, 0),
            ("w2", Some("web"), TaskStatus::Running, 30),
            ("w3", Some("web"), TaskStatus::Queued, 40),
            ("a1", Some("api"), TaskStatus::Failed, 50),
            ("n1", None, TaskStatus::Queued, 60),
        ] {
            let mut t = task(id, "tracker", "alice", status, hour * 3_600_000);
            if let Some(project) = project {
                t.labels.insert("project".into(), project.into());
            }
            first_created.get_or_insert(t.created_at);
            store.create_task(&t, &[]).await.expect("created");
        }
        let all = ReadScope {
            owner: None,
            plugins: None,
        };
        let listed = |sort, ascending| {
            let store = &store;
            let all = &all;
            async move {
                let query = ProjectQuery {
                    sort,
                    ascending,
                    limit: 10,
                    ..ProjectQuery::default()
                };
                let (page, total) = list(store, &query, all).await.expect("projects");
                assert_eq!(total, 2);
                page
            }
        };
        let by_name = listed(ProjectSort::Name, true).await;
        assert_eq!(by_name[0].name, "api");
        let web = &by_name[1];
        assert_eq!((web.task_count, web.active_tasks), (3, 2));
        assert_eq!(web.by_status["completed"], 1);
        assert_eq!(web.created_at, first_created, "the first task's creation");
        let names = |page: Vec<Project>| page.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(
            names(listed(ProjectSort::TaskCount, false).await),
            ["web", "api"]
        );
        assert_eq!(
            names(listed(ProjectSort::CreatedAt, false).await),
            ["api", "web"]
        );
        let other_owner = ReadScope {
            owner: Some("bob".into()),
            plugins: None,
        };
        let query = ProjectQuery {
            limit: 10,
            ..ProjectQuery::default()
        };
        let (page, total) = list(&store, &query, &other_owner).await.expect("projects");
        assert!(
            page.is_empty() && total == 0,
            "bob sees none of alice's projects"
        );
        let other_plugin = ProjectQuery {
            plugin: Some("elsewhere".into()),
            ..query
        };
        let (_, total) = list(&store, &other_plugin, &all).await.expect("projects");
        assert_eq!(total, 0, "no task of that plugin has a project");
    }
}
