//! Wake-ups across hosts: a task per channel that listens for `NOTIFY` and wakes a local
//! [`Notify`]. Notifications carry no data a listener relies on (it re-reads the store), and a
//! listener that loses its connection reconnects after a pause, so callers also poll.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

/// How long a failed listener waits before it connects again.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// Wakes every waiter of `changes` on each notification on `channel`; runs until aborted.
pub async fn listen(pool: PgPool, channel: &'static str, changes: Arc<Notify>) {
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match connected.await {
            Ok(mut listener) => loop {
                match listener.try_recv().await {
                    Ok(_) => changes.notify_waiters(),
                    Err(e) => {
                        tracing::warn!(channel, error = %e, "listener failed; reconnecting");
                        break;
                    }
                }
            },
            Err(e) => tracing::warn!(channel, error = %e, "could not listen; retrying"),
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}
