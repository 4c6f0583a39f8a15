//! The crawler's WebSockets: `/connect` (every task of the plugin) and
//! `/tasks/{id}/websocket` (one task), `connection_ready` first, then the host's events with
//! camelCase keys.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::ws::Ws;

use super::{Crawler, CrawlerError, camel, rename_keys, task_view};
use crate::api::{ApiError, Dialect, DialectOpening, open_dialect};
use crate::streams::StreamConnection;

/// The crawler's streams: the plugin's tasks (`/connect`) or one task, camelCase frames after
/// `connection_ready`.
struct CrawlerFeed {
    topic: String,
    connection_id: Option<String>,
    task: Option<String>,
    plugin: String,
}

impl DialectOpening for CrawlerFeed {
    fn topics(&self) -> Vec<String> {
        vec![self.topic.clone()]
    }

    fn first_frames<'a>(
        &'a mut self,
        connection: &'a StreamConnection,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Value>, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            let mut ready = json!({
                "status": "connection_ready",
                "type": "connection_ready",
                "connectionId": self.connection_id.clone().unwrap_or_else(|| connection.connection_id().to_owned()),
                "message": "WebSocket connection established",
                "serverCapabilities": {"messageQueuing": true, "heartbeat": true, "reconnection": true, "protocolVersion": "1.0"},
            });
            if let Some(id) = &self.task {
                let task = connection.task(id).await.map_err(ApiError::from)?;
                if task.plugin != self.plugin {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "TASK_NOT_FOUND",
                        "Task not found",
                    ));
                }
                ready["task"] = task_view(&task);
            }
            Ok(vec![ready])
        })
    }
}

impl Dialect for CrawlerFeed {
    fn translate<'a>(
        &'a mut self,
        _: &'a StreamConnection,
        frame: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(async move {
            let event: Value = serde_json::from_str(frame).ok()?;
            Some(rename_keys(event, camel).to_string())
        })
    }
}

pub(super) async fn stream(
    c: &Crawler,
    task: Option<String>,
    headers: &HeaderMap,
    raw: &str,
    ws: Option<Ws>,
) -> Result<Response, CrawlerError> {
    let connection_id = url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "connectionId")
        .map(|(_, v)| v.chars().take(128).collect());
    let feed = CrawlerFeed {
        topic: task
            .as_ref()
            .map_or_else(|| format!("plugin:{}", c.plugin), |id| format!("task:{id}")),
        connection_id,
        task,
        plugin: c.plugin.clone(),
    };
    let credentials = crate::compat::credentials(headers, raw);
    Ok(open_dialect(
        c.state.clone(),
        credentials,
        raw,
        &["token", "api_key", "connectionId"],
        ws,
        feed,
    )
    .await?)
}
