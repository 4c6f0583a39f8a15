//! `GET /tasks/{id}/logs?follow=true`: a task's log as server-sent events until the task
//! ends, the client goes away, or the caller's credentials stop allowing it (checked every
//! heartbeat, as streams are). Followers are counted per principal and capped like stream
//! connections, since each one watches every event of the host.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{ApiError, AppState, Credentials};
use crate::auth::Principal;
use crate::model::{EventData, EventKind, LogEntry};

/// Open followers by principal name.
#[derive(Default)]
pub struct Followers {
    open: Mutex<HashMap<String, usize>>,
}

/// One admitted follower; dropping it frees the place.
struct Slot {
    followers: Arc<Followers>,
    name: String,
}

impl Followers {
    fn admit(self: &Arc<Self>, name: &str, limit: usize) -> Option<Slot> {
        let mut open = crate::lock(&self.open);
        let count = open.entry(name.to_owned()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            followers: self.clone(),
            name: name.to_owned(),
        })
    }

    /// Followers open now, all principals together.
    pub fn count(&self) -> usize {
        crate::lock(&self.open).values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = crate::lock(&self.followers.open);
        if let Some(count) = open.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.name);
            }
        }
    }
}

fn line(seq: u64, entry: Value) -> warp::sse::Event {
    warp::sse::Event::default()
        .event("log")
        .id(seq.to_string())
        .data(entry.to_string())
}

fn stored_line(entry: &LogEntry) -> warp::sse::Event {
    line(entry.seq, serde_json::to_value(entry).unwrap_or_default())
}

/// The stored lines after `after_seq`, then new ones as they are written. Subscribing before
/// reading the stored lines leaves no gap; the seq check leaves no duplicate.
/// Follows a task's log from its last `lines` lines.
pub async fn follow_from_tail(
    principal: &Principal,
    credentials: Credentials,
    state: &AppState,
    id: &str,
    lines: usize,
) -> Result<Response, ApiError> {
    let (_, tail) = state.engine.log_tail(principal, id, lines.max(1)).await?;
    let after_seq = tail.first().map_or(0, |e| e.seq.saturating_sub(1));
    follow_logs(principal, credentials, state, id, after_seq, None).await
}

pub async fn follow_logs(
    principal: &Principal,
    credentials: Credentials,
    state: &AppState,
    id: &str,
    after_seq: u64,
    since_time: Option<DateTime<Utc>>,
) -> Result<Response, ApiError> {
    use warp::Reply;
    let limit = state.streams.config().max_connections_per_principal;
    let slot = state
        .followers
        .admit(&principal.name, limit)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                format!("at most {limit} log followers per principal"),
            )
            .with_details(json!({"limit": "log_followers"}))
            .retry_after(5)
        })?;
    let mut live = state.engine.event_feed().subscribe();
    let (task, stored) = state
        .engine
        .visible_logs(principal, id, after_seq, usize::MAX)
        .await?;
    let (sender, receiver) = mpsc::channel::<warp::sse::Event>(256);
    let id = id.to_owned();
    let state = state.clone();
    let mut principal = principal.clone();
    let heartbeat = state.streams.config().heartbeat_interval();
    tokio::spawn(async move {
        let _slot = slot;
        let mut last = after_seq;
        for entry in stored
            .iter()
            .filter(|e| since_time.is_none_or(|t| e.timestamp > t))
        {
            last = entry.seq;
            if sender.send(stored_line(entry)).await.is_err() {
                return;
            }
        }
        if task.status.is_terminal() {
            return;
        }
        let mut recheck = tokio::time::interval(heartbeat);
        recheck.tick().await;
        loop {
            let received = tokio::select! {
                () = sender.closed() => return,
                _ = recheck.tick() => {
                    // A revoked key, an expired token or a lost right ends the follower.
                    match credentials.authenticate(&state).await {
                        Ok(now) if state.engine.get(&now, &id).await.is_ok() => principal = now,
                        _ => return,
                    }
                    continue;
                }
                received = live.recv() => received,
            };
            match received {
                Ok(event) if event.task_id == id && event.seq > last => match &event.data {
                    EventData::Log { level, message } => {
                        last = event.seq;
                        let entry = json!({
                            "seq": event.seq,
                            "level": level,
                            "message": message,
                            "timestamp": crate::model::timestamp::format(&event.timestamp),
                        });
                        if sender.send(line(event.seq, entry)).await.is_err() {
                            return;
                        }
                    }
                    data if matches!(
                        data.kind(),
                        EventKind::Completed | EventKind::Failed | EventKind::Cancelled
                    ) =>
                    {
                        return;
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the live feed: catch up from storage, then go on.
                    let Ok((task, missed)) = state
                        .engine
                        .visible_logs(&principal, &id, last, usize::MAX)
                        .await
                    else {
                        return;
                    };
                    for entry in &missed {
                        last = entry.seq;
                        if sender.send(stored_line(entry)).await.is_err() {
                            return;
                        }
                    }
                    if task.status.is_terminal() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Ok(warp::sse::reply(warp::sse::keep_alive().stream(stream)).into_response())
}
