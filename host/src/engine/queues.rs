//! Queues: per-plugin depths and state, pausing and resuming, clearing failed tasks.
use serde_json::json;

use super::{Engine, EngineError, QueueInfo, lock};
use crate::auth::Principal;
use crate::model::TaskStatus;
use crate::policy;
use crate::storage::TaskQuery;

impl Engine {
    /// Every queue, for a principal that may see host-wide figures.
    pub async fn queues(&self, principal: &Principal) -> Result<Vec<QueueInfo>, EngineError> {
        if !policy::may_see_host_figures(principal) {
            return Err(EngineError::Forbidden(
                "queue depths count every owner's tasks: an operator's view".into(),
            ));
        }
        self.host_queues().await
    }

    /// Every loaded plugin's queue, and queues of tasks whose plugin is gone (for the
    /// operator's `/metrics` scrape and [`Engine::queues`]).
    pub(crate) async fn host_queues(&self) -> Result<Vec<QueueInfo>, EngineError> {
        let counts = self.inner.storage.status_counts().await?;
        let paused = self.inner.storage.paused_queues().await?;
        let mut names: Vec<String> = self
            .inner
            .registry
            .list()
            .iter()
            .map(|p| p.name().to_owned())
            .collect();
        names.extend(counts.keys().cloned());
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|plugin| {
                let c = counts.get(&plugin);
                let n = |s: TaskStatus| c.and_then(|c| c.get(&s)).copied().unwrap_or(0);
                QueueInfo {
                    paused: paused.contains(&plugin),
                    queued: n(TaskStatus::Queued),
                    scheduled: n(TaskStatus::Scheduled),
                    running: n(TaskStatus::Running),
                    paused_count: n(TaskStatus::Paused),
                    completed: n(TaskStatus::Completed),
                    failed: n(TaskStatus::Failed),
                    cancelled: n(TaskStatus::Cancelled),
                    plugin,
                }
            })
            .collect())
    }

    async fn known_queue(&self, plugin: &str) -> Result<(), EngineError> {
        if self.inner.registry.get(plugin).is_some()
            || self
                .inner
                .storage
                .status_counts()
                .await?
                .contains_key(plugin)
        {
            Ok(())
        } else {
            Err(EngineError::PluginNotFound(plugin.to_owned()))
        }
    }

    pub async fn set_queue_paused(
        &self,
        principal: &Principal,
        plugin: &str,
        paused: bool,
    ) -> Result<QueueInfo, EngineError> {
        if !policy::may_manage_queues(principal) {
            return Err(EngineError::Forbidden(
                "pausing queues needs plugins:manage".into(),
            ));
        }
        self.known_queue(plugin).await?;
        self.inner.storage.set_queue_paused(plugin, paused).await?;
        self.inner.storage.sync().await?;
        lock(&self.inner.sched).set_queue_paused(plugin, paused);
        self.inner.wake.notify_one();
        self.notify_system(
            if paused {
                "queue_paused"
            } else {
                "queue_resumed"
            },
            json!({"plugin": plugin}),
        );
        self.host_queues()
            .await?
            .into_iter()
            .find(|q| q.plugin == plugin)
            .ok_or_else(|| EngineError::PluginNotFound(plugin.to_owned()))
    }

    /// Deletes the failed tasks of a plugin; returns how many.
    pub async fn clear_failed(
        &self,
        principal: &Principal,
        plugin: &str,
    ) -> Result<u64, EngineError> {
        if !policy::may_manage_queues(principal) {
            return Err(EngineError::Forbidden(
                "clearing queues needs plugins:manage".into(),
            ));
        }
        self.known_queue(plugin).await?;
        let query = TaskQuery {
            status: Some(TaskStatus::Failed),
            plugin: Some(plugin.to_owned()),
            limit: usize::MAX,
            ..TaskQuery::default()
        };
        let (failed, _) = self.inner.storage.list_tasks(&query).await?;
        let mut removed = 0;
        for task in failed {
            if self.inner.storage.delete_task(&task.id).await? {
                removed += 1;
            }
        }
        self.inner.storage.sync().await?;
        Ok(removed)
    }

    /// Tasks of `plugin` that are running now.
    pub fn running_tasks_of(&self, plugin: &str) -> usize {
        lock(&self.inner.sched).running(plugin)
    }

    pub fn is_queue_paused(&self, plugin: &str) -> bool {
        lock(&self.inner.sched).is_queue_paused(plugin)
    }
}
