//! The plugins operators installed, replaced or unloaded over the API, in storage so that every
//! host sharing the store loads the same versions and a restarted host comes back with them.
//!
//! Each change gets the next cluster-wide `generation`; a host remembers the generation it
//! last applied for each name and loads whatever is newer. A write names the generation the
//! writer last saw ([`PluginStore::put`]'s `expected`), so two hosts changing one plugin at
//! the same moment cannot both win: the later one is told to look again. An unload is kept as
//! a record without a component, so that hosts which still load the plugin from their bundle
//! or directory drop it too.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use super::StorageError;

/// What the cluster decided for one plugin name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginState {
    /// Load this component with these grants (TOML, as in a grants file).
    Installed { component: Vec<u8>, grants: String },
    /// Not loaded on any host, whatever their bundle or directory holds.
    Unloaded,
}

/// One plugin name's latest change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRecord {
    pub name: String,
    /// Cluster-wide order of changes; assigned by the store.
    pub generation: u64,
    /// SHA-256 of the component (empty for an unload), to spot a change without its bytes.
    pub digest: String,
    pub state: PluginState,
    pub changed_at: DateTime<Utc>,
    /// The host that made the change.
    pub changed_by: String,
}

/// A record without its component: what a host compares against what it has loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginHead {
    pub name: String,
    pub generation: u64,
    pub digest: String,
    pub installed: bool,
}

impl PluginRecord {
    pub fn head(&self) -> PluginHead {
        PluginHead {
            name: self.name.clone(),
            generation: self.generation,
            digest: self.digest.clone(),
            installed: matches!(self.state, PluginState::Installed { .. }),
        }
    }
}

/// The outcome of a [`PluginStore::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored under this generation.
    Stored(u64),
    /// Another change came first; this is the generation now stored (`None`: no record).
    Superseded(Option<u64>),
}

/// Runtime plugin changes. Every backend passes the plugin checks of the conformance suite.
#[async_trait]
pub trait PluginStore: Send + Sync {
    /// Records `name`'s new state if its stored generation is still `expected` (`None`: no
    /// record yet), under a generation above every one handed out before.
    async fn put(
        &self,
        name: &str,
        digest: &str,
        state: PluginState,
        changed_by: &str,
        expected: Option<u64>,
    ) -> Result<PutOutcome, StorageError>;
    /// Every name's latest change, without components, by name.
    async fn heads(&self) -> Result<Vec<PluginHead>, StorageError>;
    async fn get(&self, name: &str) -> Result<Option<PluginRecord>, StorageError>;
    /// Woken when any host changes a plugin (hosts also look again now and then, so a missed
    /// wake-up only delays).
    fn changes(&self) -> Arc<Notify>;
}
