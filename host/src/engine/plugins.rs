//! Plugin administration through the engine: install, replace (running tasks finish on the
//! version they started on) and unload (refused while tasks run unless forced), and applying
//! the changes made through other hosts as they are announced.
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::warn;

use super::{Engine, EngineError, lock};
use crate::auth::Principal;
use crate::model::TaskStatus;
use crate::policy;
use crate::registry::{LoadedPlugin, SyncedChange};
use crate::runtime::Grants;

/// How often a host looks for plugin changes without being told: an announcement can be
/// missed while a listener reconnects.
const PLUGIN_SYNC_INTERVAL: Duration = Duration::from_secs(5);

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

impl Engine {
    /// Applies the plugin changes stored through any host, when they are announced and at
    /// least every [`PLUGIN_SYNC_INTERVAL`], until the engine stops.
    pub fn spawn_plugin_sync(&self) {
        let Some(changes) = self.inner.registry.changes() else {
            return;
        };
        // Weak: the loop must not keep a stopped engine (and its store) alive.
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                // Registered before looking, so that a change stored meanwhile wakes the next
                // wait instead of being missed.
                let announced = changes.notified();
                tokio::pin!(announced);
                announced.as_mut().enable();
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                Engine { inner }.apply_stored_plugin_changes().await;
                tokio::select! {
                    () = announced => {}
                    () = tokio::time::sleep(PLUGIN_SYNC_INTERVAL) => {}
                }
            }
        });
    }

    async fn apply_stored_plugin_changes(&self) {
        let changes = match self.inner.registry.sync().await {
            Ok(changes) => changes,
            Err(e) => {
                warn!(error = %e, "could not look for stored plugin changes");
                return;
            }
        };
        for change in &changes {
            match change {
                SyncedChange::Loaded { plugin, replaced } => {
                    let event = if *replaced {
                        "plugin_replaced"
                    } else {
                        "plugin_loaded"
                    };
                    self.notify_plugin(event, plugin);
                }
                SyncedChange::Unloaded(name) => {
                    self.notify_system("plugin_unloaded", json!({"name": name}));
                }
            }
        }
        if !changes.is_empty() {
            // Tasks of a plugin this host had not loaded may be waiting for it.
            self.inner.wake.notify_one();
        }
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
