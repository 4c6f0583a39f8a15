//! The plugin registry: which plugin versions are loaded under which names.
//!
//! Bundled plugins are loaded first, then every `*.wasm` in the plugins directory (with a
//! same-name `.toml` of grants), which may override a bundled one. At runtime plugins are
//! loaded, replaced and unloaded through [`PluginRegistry`]; a replace swaps the version new
//! tasks get while tasks in flight keep the `Arc` of the version they started on.
//! Plugins installed at runtime are written to the install directory so that they are loaded
//! again at the next start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{info, warn};

use crate::bundled::BUNDLED_PLUGINS;
use crate::runtime::{CompiledPlugin, Grants, LoadError, RunnersGrant, Runtime};

/// Bundled plugins granted `runners` unless the operator's grants say otherwise.
const DELEGATING_PLUGINS: &[&str] = &["runner", "build"];

/// Where a loaded plugin came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum PluginSource {
    Bundled,
    /// A `.wasm` file in the plugins directory.
    File(PathBuf),
    /// Installed at runtime (e.g. uploaded over the API).
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
    #[error("could not persist plugin {name}: {source}")]
    Persist {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The loaded plugins, by name.
pub struct PluginRegistry {
    runtime: Runtime,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    /// Where installed plugins are written (`<name>.wasm` + `<name>.toml`).
    install_dir: Option<PathBuf>,
    /// Serialises install/replace/unload so that the name check, the files written and the
    /// map always agree.
    manage: tokio::sync::Mutex<()>,
}

impl PluginRegistry {
    pub fn new(runtime: Runtime, install_dir: Option<PathBuf>) -> Self {
        Self {
            runtime,
            plugins: RwLock::new(BTreeMap::new()),
            install_dir,
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
        self.persist(&name, bytes, compiled.grants())?;
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
        self.persist(name, bytes, compiled.grants())?;
        info!(plugin = %name, from = %current.plugin.info().version, to = %compiled.info().version, "plugin replaced");
        self.insert(compiled, PluginSource::Installed, true)
    }

    /// Removes `name`; tasks running on it keep their version until they end. Deciding
    /// whether tasks may be running is the caller's business.
    pub async fn unload(&self, name: &str) -> Result<Arc<LoadedPlugin>, RegistryError> {
        let _managing = self.manage.lock().await;
        let removed = self
            .write()
            .remove(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        if let Some(dir) = &self.install_dir {
            for ext in ["wasm", "toml"] {
                let path = dir.join(format!("{name}.{ext}"));
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(path = %path.display(), error = %e, "could not remove unloaded plugin file");
                }
            }
        }
        info!(plugin = %name, "plugin unloaded");
        Ok(removed)
    }

    fn persist(&self, name: &str, bytes: &[u8], grants: &Grants) -> Result<(), RegistryError> {
        let Some(dir) = &self.install_dir else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            for (ext, contents) in [
                ("toml", grants.to_toml().into_bytes()),
                ("wasm", bytes.to_vec()),
            ] {
                let tmp = dir.join(format!(".{name}.{ext}.tmp"));
                std::fs::write(&tmp, contents)?;
                std::fs::rename(&tmp, dir.join(format!("{name}.{ext}")))?;
            }
            Ok(())
        };
        write().map_err(|source| RegistryError::Persist {
            name: name.to_owned(),
            source,
        })
    }
}
