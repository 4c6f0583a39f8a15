//! Retention (`[retention]`): finished tasks, with their events, logs and records, are pruned
//! once older than `max_age_s` or beyond the newest `max_finished_tasks`, so that a host that
//! runs forever keeps bounded storage. Tasks that are not finished are never pruned.
//!
//! What a pruned task takes with it: its events, so a stream resumed with an `after_seq`
//! older than the retained tasks' events replays only what is left (the resume window is the
//! retention window), and its share of `stats`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Engine, Inner};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Finished tasks last updated longer ago than this are pruned; 0 keeps them forever.
    pub max_age_s: u64,
    /// At most this many finished tasks are kept, the newest; 0 keeps any number.
    pub max_finished_tasks: u64,
    /// How often the sweep runs.
    pub sweep_interval_s: u64,
    /// Tasks pruned per storage call; a sweep repeats calls until nothing is left to prune.
    pub batch: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age_s: 7 * 24 * 3600,
            max_finished_tasks: 1_000_000,
            sweep_interval_s: 60,
            batch: 1000,
        }
    }
}

impl Engine {
    /// Starts the retention sweep (nothing when both limits are off).
    pub fn spawn_retention(&self, config: RetentionConfig) {
        if config.max_age_s == 0 && config.max_finished_tasks == 0 {
            return;
        }
        // Weak: the sweep must not keep a stopped engine (and its store's lock) alive.
        let engine = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(config.sweep_interval_s.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = engine.upgrade() else {
                    return;
                };
                if inner.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                sweep(&inner, &config).await;
            }
        });
    }
}

/// Prunes until nothing more is due, a batch at a time (each batch off the async workers).
async fn sweep(inner: &Arc<Inner>, config: &RetentionConfig) {
    let before = if config.max_age_s == 0 {
        chrono::DateTime::<Utc>::MIN_UTC
    } else {
        Utc::now() - chrono::Duration::seconds(config.max_age_s.min(i64::MAX as u64) as i64)
    };
    let keep = if config.max_finished_tasks == 0 {
        u64::MAX
    } else {
        config.max_finished_tasks
    };
    let batch = config.batch.max(1);
    let mut total = 0;
    loop {
        let storage = inner.storage.clone();
        let runtime = tokio::runtime::Handle::current();
        let pruned = tokio::task::spawn_blocking(move || {
            runtime.block_on(storage.prune(before, keep, batch))
        })
        .await;
        match pruned {
            Ok(Ok(n)) => {
                total += n;
                if (n as usize) < batch {
                    break;
                }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "retention sweep failed; it runs again at the next interval");
                break;
            }
            Err(e) => {
                warn!(error = %e, "retention sweep stopped");
                break;
            }
        }
    }
    if total > 0 {
        info!(pruned = total, "retention pruned finished tasks");
    }
}
