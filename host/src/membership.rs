//! This host's identity among the hosts sharing one store, and who else is alive: each host
//! writes a heartbeat every [`HEARTBEAT_EVERY`], and a host whose last heartbeat is older
//! than [`ALIVE_WITHIN`] counts as gone (on a store only one host opens, the host is alone).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tracing::warn;

use crate::storage::{HostRecord, Storage, StorageError};

/// How often a host says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A host silent this long counts as gone: three heartbeats missed.
pub const ALIVE_WITHIN: Duration = Duration::from_secs(15);

pub struct Membership {
    host: HostRecord,
    storage: Arc<dyn Storage>,
}

impl Membership {
    /// This host, named `<hostname>-<random>` so that two processes on one machine differ.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "host".into());
        // The tail of a v7 uuid is random (its head is the time).
        let random = uuid::Uuid::now_v7().simple().to_string();
        let suffix = &random[random.len() - 8..];
        let now = Utc::now();
        Self {
            host: HostRecord {
                id: format!("{machine}-{suffix}"),
                started_at: now,
                last_seen: now,
            },
            storage,
        }
    }

    pub fn host_id(&self) -> &str {
        &self.host.id
    }

    /// Writes a first heartbeat, then one every [`HEARTBEAT_EVERY`] until the host stops; a
    /// failed one is logged and tried again at the next tick.
    pub fn spawn_heartbeat(self: &Arc<Self>) {
        let membership = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tick.tick().await;
                let Some(membership) = membership.upgrade() else {
                    return;
                };
                if let Err(e) = membership.storage.heartbeat(&membership.host).await {
                    warn!(error = %e, "could not write this host's heartbeat");
                }
            }
        });
    }

    /// The hosts alive now, this one among them.
    pub async fn live_hosts(&self) -> Result<Vec<HostRecord>, StorageError> {
        let mut hosts = self.storage.live_hosts(ALIVE_WITHIN).await?;
        if !hosts.iter().any(|h| h.id == self.host.id) {
            hosts.push(HostRecord {
                last_seen: Utc::now(),
                ..self.host.clone()
            });
        }
        Ok(hosts)
    }

    /// The backend's name, for health reports.
    pub fn backend(&self) -> &'static str {
        self.storage.backend_name()
    }
}
