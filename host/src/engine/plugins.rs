//! Plugin administration through the engine: install, replace (running tasks finish on the
//! version they started on) and unload (refused while tasks run unless forced).
use std::sync::Arc;

use serde_json::json;

use super::{Engine, EngineError, lock};
use crate::auth::Principal;
use crate::model::TaskStatus;
use crate::policy;
use crate::registry::LoadedPlugin;
use crate::runtime::Grants;

impl Engine {
    /// Installs an uploaded plugin.
    pub async fn install_plugin(
        &self,
        principal: &Principal,
        bytes: &[u8],
        grants: Grants,
    ) -> Result<Arc<LoadedPlugin>, EngineError> {
        require_manage(principal)?;
        let loaded = self.inner.registry.install(bytes, grants).await?;
        self.inner.wake.notify_one();
        self.notify_plugin("plugin_loaded", &loaded);
        Ok(loaded)
    }

    /// Replaces a plugin; running tasks finish on the version they started on.
    pub async fn replace_plugin(
        &self,
        principal: &Principal,
        name: &str,
        bytes: &[u8],
        grants: Option<Grants>,
    ) -> Result<Arc<LoadedPlugin>, EngineError> {
        require_manage(principal)?;
        let loaded = self.inner.registry.replace(name, bytes, grants).await?;
        self.inner.wake.notify_one();
        self.notify_plugin("plugin_replaced", &loaded);
        Ok(loaded)
    }

    /// Unloads a plugin; refused while its tasks run unless `force`, which cancels them.
    pub async fn unload_plugin(
        &self,
        principal: &Principal,
        name: &str,
        force: bool,
    ) -> Result<(), EngineError> {
        require_manage(principal)?;
        if self.inner.registry.get(name).is_none() {
            return Err(EngineError::PluginNotFound(name.to_owned()));
        }
        let mut candidates = self
            .inner
            .storage
            .task_ids_with_status(TaskStatus::Running)
            .await?;
        candidates.extend(
            self.inner
                .storage
                .task_ids_with_status(TaskStatus::Paused)
                .await?,
        );
        candidates.retain(|id| lock(&self.inner.running).contains_key(id));
        let mut running = Vec::new();
        for id in candidates {
            let of_this_plugin = self
                .inner
                .storage
                .get_task(&id)
                .await
                .ok()
                .flatten()
                .is_some_and(|t| t.plugin == name);
            if of_this_plugin {
                running.push(id);
            }
        }
        if !running.is_empty() && !force {
            return Err(EngineError::Conflict(format!(
                "{} task(s) of {name} are running; unload with force=true to cancel them",
                running.len()
            )));
        }
        for id in running {
            // Ended meanwhile is fine.
            let _ = self.cancel(principal, &id).await;
        }
        self.inner
            .registry
            .unload(name)
            .await
            .map_err(|_| EngineError::PluginNotFound(name.to_owned()))?;
        self.notify_system("plugin_unloaded", json!({"name": name}));
        Ok(())
    }
}

fn require_manage(principal: &Principal) -> Result<(), EngineError> {
    if policy::may_manage_plugins(principal) {
        Ok(())
    } else {
        Err(EngineError::Forbidden(
            "managing plugins needs plugins:manage".into(),
        ))
    }
}
