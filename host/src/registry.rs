//! The plugin registry: which plugin versions are loaded under which names.
//!
//! Bundled plugins are loaded first, then every `*.wasm` in the plugins directories (with a
//! same-name `.toml` of grants), which may override a bundled one, then what operators
//! installed, replaced or unloaded over the API, which is kept in storage
//! ([`crate::storage::plugin_store`]) and wins over both, so that every host sharing the
//! store ends up with the same versions. A replace swaps the version new tasks get while
//! tasks in flight keep the `Arc` of the version they started on; [`PluginRegistry::sync`]
//! applies another host's change the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::bundled::BUNDLED_PLUGINS;
use crate::runtime::{CompiledPlugin, Grants, LoadError, RunnersGrant, Runtime, digest};
use crate::storage::plugin_store::{PluginHead, PluginState, PutOutcome};
use crate::storage::{Storage, StorageError};

/// Bundled plugins granted `runners` unless the operator's grants say otherwise.
const DELEGATING_PLUGINS: &[&str] = &["runner", "build"];

/// Where a loaded plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum PluginSource {
    Bundled,
    /// A `.wasm` file in the plugins directory.
    File(PathBuf),
    /// Installed at runtime over the API, through this host or another.
    Installed,
}

/// A plugin version as the registry holds it.
#[derive(Debug)]
pub struct LoadedPlugin {
    pub plugin: Arc<CompiledPlugin>,
    pub source: PluginSource,
    pub loaded_at: DateTime<Utc>,
}

impl LoadedPlugin {
    pub fn name(&self) -> &str {
        self.plugin.name()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("a plugin named {0} is already loaded; replace it instead")]
    AlreadyLoaded(String),
    #[error("no plugin named {0} is loaded")]
    NotFound(String),
    #[error("the component describes itself as {found}, not {expected}")]
    NameMismatch { expected: String, found: String },
    #[error("grants file {path}: {message}")]
    GrantsFile { path: PathBuf, message: String },
    #[error("plugin {0} was changed through another host meanwhile; look at it again")]
    ChangedElsewhere(String),
    #[error("could not store plugin {name}: {source}")]
    Persist {
        name: String,
        #[source]
        source: StorageError,
    },
}

/// A stored change that [`PluginRegistry::sync`] applied here.
#[derive(Debug)]
pub enum SyncedChange {
    /// A version was loaded; `replaced` when it took the place of another.
    Loaded {
        plugin: Arc<LoadedPlugin>,
        replaced: bool,
    },
    Unloaded(String),
}

/// Where runtime changes are kept, and who this host is in them.
pub struct PluginStorage {
    pub storage: Arc<dyn Storage>,
    pub host_id: String,
}

/// The loaded plugins, by name.
pub struct PluginRegistry {
    runtime: Runtime,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    /// Runtime changes are kept here; without it (tests of the runtime) they are this
    /// process's alone.
    store: Option<PluginStorage>,
    /// Per name, the generation of the stored change this host last made or applied.
    applied: Mutex<BTreeMap<String, u64>>,
    /// Serialises install/replace/unload/sync so that the name check, the stored change and
    /// the map always agree.
    manage: tokio::sync::Mutex<()>,
}

impl PluginRegistry {
    pub fn new(runtime: Runtime, store: Option<PluginStorage>) -> Self {
        Self {
            runtime,
            plugins: RwLock::new(BTreeMap::new()),
            store,
            applied: Mutex::new(BTreeMap::new()),
            manage: tokio::sync::Mutex::new(()),
        }
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<LoadedPlugin>>> {
        self.plugins.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<LoadedPlugin>>> {
        self.plugins.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.read().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<LoadedPlugin>> {
        self.read().values().cloned().collect()
    }

    /// Loads the plugins compiled into the host, with the operator's grants for each (none
    /// granted for a plugin the map does not name).
    pub async fn load_bundled(
        &self,
        grants: &BTreeMap<String, Grants>,
    ) -> Result<(), RegistryError> {
        for (name, bytes) in BUNDLED_PLUGINS {
            let mut plugin_grants = grants.get(*name).cloned().unwrap_or_default();
            // Delegating is what these two are for; an operator can still say `allow = false`.
            if DELEGATING_PLUGINS.contains(name) && plugin_grants.runners.is_none() {
                plugin_grants.runners = Some(RunnersGrant::allowed());
            }
            let compiled = self.runtime.load(bytes, plugin_grants).await?;
            self.insert(compiled, PluginSource::Bundled, true)?;
        }
        Ok(())
    }

    /// Loads every `*.wasm` in `dir` with its `.toml` grants, replacing plugins of the same
    /// name. A file that fails is logged and skipped: one bad plugin must not keep the host
    /// down. Returns the failures.
    pub async fn load_dir(&self, dir: &Path) -> Vec<(PathBuf, RegistryError)> {
        let mut failures = Vec::new();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|ext| ext == "wasm"))
                .collect(),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "plugins directory not readable");
                return failures;
            }
        };
        files.sort();
        for path in files {
            match self.load_file(&path).await {
                Ok(name) => {
                    info!(plugin = %name, path = %path.display(), "plugin loaded from file")
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "plugin not loaded");
                    failures.push((path, e));
                }
            }
        }
        failures
    }

    async fn load_file(&self, path: &Path) -> Result<String, RegistryError> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::GrantsFile {
            path: path.to_owned(),
            message: format!("cannot read the component: {e}"),
        })?;
        let grants_path = path.with_extension("toml");
        let grants = match std::fs::read_to_string(&grants_path) {
            Ok(text) => Grants::from_toml(&text).map_err(|e| RegistryError::GrantsFile {
                path: grants_path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Grants::default(),
            Err(e) => {
                return Err(RegistryError::GrantsFile {
                    path: grants_path,
                    message: e.to_string(),
                });
            }
        };
        let compiled = self.runtime.load(&bytes, grants).await?;
        let name = compiled.name().to_owned();
        self.insert(compiled, PluginSource::File(path.to_owned()), true)?;
        Ok(name)
    }

    fn insert(
        &self,
        compiled: CompiledPlugin,
        source: PluginSource,
        may_replace: bool,
    ) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let loaded = Arc::new(LoadedPlugin {
            plugin: Arc::new(compiled),
            source,
            loaded_at: Utc::now(),
        });
        let name = loaded.name().to_owned();
        let mut plugins = self.write();
        if !may_replace && plugins.contains_key(&name) {
            return Err(RegistryError::AlreadyLoaded(name));
        }
        plugins.insert(name, loaded.clone());
        Ok(loaded)
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Woken when any host stores a plugin change; `None` without a store.
    pub fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.store.as_ref().map(|s| s.storage.plugins().changes())
    }

    /// Loads a new plugin at runtime; its name comes from its `describe`. Refuses a name that
    /// is already loaded.
    pub async fn install(
        &self,
        bytes: &[u8],
        grants: Grants,
    ) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let compiled = self.runtime.load(bytes, grants).await?;
        let _managing = self.manage.lock().await;
        let name = compiled.name().to_owned();
        if self.read().contains_key(&name) {
            return Err(RegistryError::AlreadyLoaded(name));
        }
        self.record(&name, Some((bytes, compiled.grants()))).await?;
        self.insert(compiled, PluginSource::Installed, false)
    }

    /// Swaps in a new version of `name`. Tasks already running finish on the old version.
    /// `grants` of `None` keeps the current grants.
    pub async fn replace(
        &self,
        name: &str,
        bytes: &[u8],
        grants: Option<Grants>,
    ) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let current = self
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        let grants = grants.unwrap_or_else(|| current.plugin.grants().clone());
        let compiled = self.runtime.load(bytes, grants).await?;
        if compiled.name() != name {
            return Err(RegistryError::NameMismatch {
                expected: name.to_owned(),
                found: compiled.name().to_owned(),
            });
        }
        let _managing = self.manage.lock().await;
        if self.get(name).is_none() {
            return Err(RegistryError::NotFound(name.to_owned()));
        }
        self.record(name, Some((bytes, compiled.grants()))).await?;
        info!(plugin = %name, from = %current.plugin.info().version, to = %compiled.info().version, "plugin replaced");
        self.insert(compiled, PluginSource::Installed, true)
    }

    /// Removes `name`; tasks running on it keep their version until they end. Deciding
    /// whether tasks may be running is the caller's business.
    pub async fn unload(&self, name: &str) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let _managing = self.manage.lock().await;
        if self.get(name).is_none() {
            return Err(RegistryError::NotFound(name.to_owned()));
        }
        self.record(name, None).await?;
        let removed = self
            .write()
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        info!(plugin = %name, "plugin unloaded");
        Ok(removed)
    }

    /// Stores this host's change of `name` (a component and its grants, or `None` for an
    /// unload), provided no other host changed `name` since this one last looked. Called
    /// under `manage`.
    async fn record(
        &self,
        name: &str,
        installed: Option<(&[u8], &Grants)>,
    ) -> Result<(), RegistryError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (component_digest, state) = match installed {
            Some((bytes, grants)) => (
                digest(bytes),
                PluginState::Installed {
                    component: bytes.to_vec(),
                    grants: grants.to_toml(),
                },
            ),
            None => (String::new(), PluginState::Unloaded),
        };
        let expected = self.applied().get(name).copied();
        let outcome = store
            .storage
            .plugins()
            .put(name, &component_digest, state, &store.host_id, expected)
            .await
            .map_err(|source| RegistryError::Persist {
                name: name.to_owned(),
                source,
            })?;
        match outcome {
            PutOutcome::Stored(generation) => {
                self.applied().insert(name.to_owned(), generation);
                Ok(())
            }
            // The next sync brings the other host's change here.
            PutOutcome::Superseded(_) => Err(RegistryError::ChangedElsewhere(name.to_owned())),
        }
    }

    /// Applies the stored changes this host has not applied yet: made through other hosts,
    /// or before this host started. A change that does not load here is logged and skipped
    /// (one bad component must not hold back the rest) until it changes again.
    pub async fn sync(&self) -> Result<Vec<SyncedChange>, StorageError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let newer = |heads: Vec<PluginHead>| -> Vec<PluginHead> {
            let applied = self.applied();
            heads
                .into_iter()
                .filter(|h| applied.get(&h.name).is_none_or(|g| *g < h.generation))
                .collect()
        };
        // Most syncs find nothing new: look before taking the lock API changes wait on.
        if newer(store.storage.plugins().heads().await?).is_empty() {
            return Ok(Vec::new());
        }
        let _managing = self.manage.lock().await;
        let mut changes = Vec::new();
        for head in newer(store.storage.plugins().heads().await?) {
            let Some(record) = store.storage.plugins().get(&head.name).await? else {
                continue;
            };
            match record.state {
                PluginState::Unloaded => {
                    if self.write().remove(&record.name).is_some() {
                        info!(plugin = %record.name, by = %record.changed_by, "plugin unloaded as stored");
                        changes.push(SyncedChange::Unloaded(record.name.clone()));
                    }
                }
                PluginState::Installed { component, grants } => {
                    let replaced = self.get(&record.name).is_some();
                    match self.load_stored(&record.name, &component, &grants).await {
                        Ok(plugin) => {
                            info!(plugin = %record.name, version = %plugin.plugin.info().version, by = %record.changed_by, "plugin loaded as stored");
                            changes.push(SyncedChange::Loaded { plugin, replaced });
                        }
                        Err(e) => {
                            warn!(plugin = %record.name, generation = record.generation, error = %e, "stored plugin not loaded")
                        }
                    }
                }
            }
            self.applied().insert(record.name, record.generation);
        }
        Ok(changes)
    }

    async fn load_stored(
        &self,
        name: &str,
        component: &[u8],
        grants: &str,
    ) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let grants = Grants::from_toml(grants).map_err(|e| LoadError::Grants(e.to_string()))?;
        let compiled = self.runtime.load(component, grants).await?;
        if compiled.name() != name {
            return Err(RegistryError::NameMismatch {
                expected: name.to_owned(),
                found: compiled.name().to_owned(),
            });
        }
        self.insert(compiled, PluginSource::Installed, true)
    }
}
