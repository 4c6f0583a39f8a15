//! What the stream hub can tell about its connections: how many are open, per `project` label
//! they follow and per principal, and the frames sent to and received from clients. Each
//! connection counts its own frames (so a principal can be shown theirs alone); the hub also
//! keeps the totals since it started.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Frames one connection, or the whole hub, sent and received.
#[derive(Debug, Default)]
pub struct Traffic {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Traffic {
    pub fn count_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// `GET /api/v1/streams`: the connections a principal may see (all of them for whoever sees
/// host-wide figures, else their own).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct StreamStats {
    pub total_connections: usize,
    /// Open connections per value of the `project` label they subscribe to.
    pub project_connections: BTreeMap<String, usize>,
    /// Open connections per principal.
    pub principal_connections: BTreeMap<String, usize>,
    /// Frames sent to clients: since the host started when all connections are shown, else
    /// over the connections open now.
    pub messages_sent: u64,
    /// Frames received from clients, counted like `messages_sent`.
    pub messages_received: u64,
    /// Connections closed because they read too slowly, since start (host-wide view only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_consumers_dropped: Option<u64>,
    pub uptime_s: u64,
}
