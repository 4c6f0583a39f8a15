//! Events written by any host, delivered to this one's subscribers: a follower reads
//! committed events after the last seq it delivered, woken by `NOTIFY` from the writing
//! transaction, and by a timer when a notification is lost (a dropped listener connection
//! loses the ones sent meanwhile), so delivery never depends on a notification arriving.
//!
//! Reading "after the last delivered seq" in seq order is gap-free and duplicate-free because
//! seqs commit in order ([`super::events`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use super::{events, pg_error};
use crate::model::Event;
use crate::storage::StorageError;

/// The channel writers notify on; the payload is the last seq of the transaction.
pub const EVENTS_CHANNEL: &str = "taskhost_events";

/// How many events one read delivers at most before reading on.
const PAGE: usize = 500;

/// Announces, in the writer's transaction `tx`, that events up to `last_seq` exist; PostgreSQL
/// delivers it when (and only if) `tx` commits.
pub async fn announce(tx: &mut PgConnection, last_seq: u64) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(last_seq.to_string())
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// Where the follower delivers, and how far it got.
pub struct Delivery {
    /// Every event, in seq order.
    pub events: broadcast::Sender<Event>,
    /// The highest seq being delivered: set before a page is sent, as [`Storage::last_seq`]
    /// promises (a reader that saw it can read every event up to it from the store).
    ///
    /// [`Storage::last_seq`]: crate::storage::Storage::last_seq
    pub visible: AtomicU64,
    /// The highest seq sent to `events`: set after a page is sent, for callers waiting to
    /// know that their own events have reached this host's subscribers.
    pub delivered: watch::Sender<u64>,
}

impl Delivery {
    /// A delivery whose history ends at `last_seq`.
    pub fn new(last_seq: u64, capacity: usize) -> Self {
        Self {
            events: broadcast::channel(capacity).0,
            visible: AtomicU64::new(last_seq),
            delivered: watch::channel(last_seq).0,
        }
    }
}

/// Delivers to `out`, in seq order, every event committed after its last seq, by any host,
/// until the returned task is aborted. `poll_every` bounds how late an event is when its
/// notification was lost.
pub fn spawn(pool: PgPool, poll_every: Duration, out: Arc<Delivery>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut delivered = *out.delivered.borrow();
        let mut listener = None;
        loop {
            if listener.is_none() {
                listener = listen(&pool).await;
            }
            // Listening first, then reading, so that nothing committed in between is missed.
            match events::read(&pool, None, delivered, PAGE).await {
                Ok(page) => {
                    let full = page.len() == PAGE;
                    if let Some(last) = page.last() {
                        delivered = last.seq;
                        out.visible.store(delivered, Ordering::Release);
                    }
                    for event in page {
                        // No subscriber right now is not an error: the events stay readable.
                        let _ = out.events.send(event);
                    }
                    out.delivered.send_replace(delivered);
                    if full {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading events to follow failed"),
            }
            let Some(active) = listener.as_mut() else {
                tokio::time::sleep(poll_every).await;
                continue;
            };
            match tokio::time::timeout(poll_every, active.try_recv()).await {
                // A notification, a reconnect (Ok(None): some may be lost) or the timer: read.
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the event listener failed; polling until it is back");
                    listener = None;
                    tokio::time::sleep(poll_every).await;
                }
            }
        }
    })
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let attempt = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match attempt.await {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "could not listen for events; polling");
            None
        }
    }
}
