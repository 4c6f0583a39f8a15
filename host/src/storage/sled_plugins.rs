//! [`PluginStore`] on sled: in its own tree, a head per name (`h\0name`, JSON) and the component
//! beside it (`c\0name`, raw bytes), written in one batch so that a head never names a
//! component that is not there. The next generation is kept under `g`.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::Tree;
use tokio::sync::Notify;

use super::StorageError;
use super::plugin_store::{PluginHead, PluginRecord, PluginState, PluginStore, PutOutcome};
use super::sled_store::{backend, flush_tree, key, prefix, read_u64, sled_error};

const HEAD: &[u8] = b"h";
const COMPONENT: &[u8] = b"c";
const GENERATION: &[u8] = b"g";

#[derive(Serialize, Deserialize)]
struct StoredHead {
    generation: u64,
    digest: String,
    /// `None` for an unload.
    grants: Option<String>,
    changed_at: DateTime<Utc>,
    changed_by: String,
}

pub struct SledPlugins {
    tree: Tree,
    /// Serialises puts, so that the generation check and the write agree.
    writing: Mutex<()>,
    changes: Arc<Notify>,
}

impl SledPlugins {
    pub fn open(tree: Tree) -> Self {
        Self {
            tree,
            writing: Mutex::new(()),
            changes: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stored_head(&self, name: &str) -> Result<Option<StoredHead>, StorageError> {
        self.tree
            .get(key(&[HEAD, name.as_bytes()]))
            .map_err(backend)?
            .map(|bytes| serde_json::from_slice(&bytes).map_err(backend))
            .transpose()
    }

    fn write(
        &self,
        name: &str,
        digest: &str,
        state: PluginState,
        changed_by: &str,
        expected: Option<u64>,
    ) -> Result<PutOutcome, StorageError> {
        let _writing = self.lock();
        let current = self.stored_head(name)?.map(|h| h.generation);
        if current != expected {
            return Ok(PutOutcome::Superseded(current));
        }
        let generation = read_u64(self.tree.get(GENERATION).map_err(backend)?) + 1;
        let mut batch = sled::Batch::default();
        let grants = match state {
            PluginState::Installed { component, grants } => {
                batch.insert(key(&[COMPONENT, name.as_bytes()]), component);
                Some(grants)
            }
            PluginState::Unloaded => {
                batch.remove(key(&[COMPONENT, name.as_bytes()]));
                None
            }
        };
        let head = StoredHead {
            generation,
            digest: digest.to_owned(),
            grants,
            changed_at: Utc::now(),
            changed_by: changed_by.to_owned(),
        };
        batch.insert(
            key(&[HEAD, name.as_bytes()]),
            serde_json::to_vec(&head).map_err(backend)?,
        );
        batch.insert(GENERATION, &generation.to_be_bytes());
        self.tree.apply_batch(batch).map_err(sled_error)?;
        Ok(PutOutcome::Stored(generation))
    }
}

#[async_trait]
impl PluginStore for SledPlugins {
    async fn put(
        &self,
        name: &str,
        digest: &str,
        state: PluginState,
        changed_by: &str,
        expected: Option<u64>,
    ) -> Result<PutOutcome, StorageError> {
        let outcome = self.write(name, digest, state, changed_by, expected)?;
        if matches!(outcome, PutOutcome::Stored(_)) {
            flush_tree(&self.tree).await?;
            self.changes.notify_waiters();
        }
        Ok(outcome)
    }

    async fn heads(&self) -> Result<Vec<PluginHead>, StorageError> {
        let head_prefix = prefix(&[HEAD]);
        let mut heads = Vec::new();
        for entry in self.tree.scan_prefix(&head_prefix) {
            let (k, v) = entry.map_err(backend)?;
            let name = String::from_utf8_lossy(&k[head_prefix.len()..]).into_owned();
            let head: StoredHead = serde_json::from_slice(&v).map_err(backend)?;
            heads.push(PluginHead {
                name,
                generation: head.generation,
                digest: head.digest,
                installed: head.grants.is_some(),
            });
        }
        Ok(heads)
    }

    async fn get(&self, name: &str) -> Result<Option<PluginRecord>, StorageError> {
        let Some(head) = self.stored_head(name)? else {
            return Ok(None);
        };
        let state = match head.grants {
            Some(grants) => {
                let component = self
                    .tree
                    .get(key(&[COMPONENT, name.as_bytes()]))
                    .map_err(backend)?
                    .ok_or_else(|| {
                        StorageError::Backend(format!("plugin {name} has no stored component"))
                    })?;
                PluginState::Installed {
                    component: component.to_vec(),
                    grants,
                }
            }
            None => PluginState::Unloaded,
        };
        Ok(Some(PluginRecord {
            name: name.to_owned(),
            generation: head.generation,
            digest: head.digest,
            state,
            changed_at: head.changed_at,
            changed_by: head.changed_by,
        }))
    }

    fn changes(&self) -> Arc<Notify> {
        self.changes.clone()
    }
}
