//! What the stream hub can tell about its connections: how many are open, per `project` label
//! they follow and per principal, and the frames sent to and received from clients. Each
//! connection counts its own frames (so a principal can be shown theirs alone); the hub also
//! keeps the totals since it started.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{Streams, Topic, lock};
use crate::auth::Principal;

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

impl Streams {
    /// The connections `principal` may see: all of them with `host_wide`, else their own.
    pub fn stats(&self, principal: &Principal, host_wide: bool) -> StreamStats {
        let state = lock(&self.hub.state);
        let mut stats = StreamStats {
            uptime_s: self.hub.engine.uptime().as_secs(),
            ..StreamStats::default()
        };
        for subscriber in state.connections.values() {
            let name = &subscriber.principal.name;
            if !host_wide && *name != principal.name {
                continue;
            }
            stats.total_connections += 1;
            *stats.principal_connections.entry(name.clone()).or_default() += 1;
            let projects: HashSet<&str> = subscriber
                .topics
                .iter()
                .filter_map(|topic| match topic {
                    Topic::Label(key, value) if key == "project" => Some(value.as_str()),
                    _ => None,
                })
                .collect();
            for project in projects {
                *stats
                    .project_connections
                    .entry(project.to_owned())
                    .or_default() += 1;
            }
            if !host_wide {
                stats.messages_sent += subscriber.traffic.sent();
                stats.messages_received += subscriber.traffic.received();
            }
        }
        if host_wide {
            stats.messages_sent = self.hub.traffic.sent();
            stats.messages_received = self.hub.traffic.received();
            stats.slow_consumers_dropped = Some(self.slow_consumers_dropped());
        }
        stats
    }
}
