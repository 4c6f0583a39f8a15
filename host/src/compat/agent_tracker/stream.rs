//! `GET /ws?api_key=…&project=…`: the tracker's live feed. Subscribed at once to the project's
//! label (or, without one, to every tracked task), it sends the seed's four messages —
//! `task_started`, `task_status_updated`, `task_finished`, `task_error` — each with the task's
//! project, agent and title, in place of the host's event frames.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::ws::Ws;

use super::{Tracker, label, seed_progress};
use crate::api::{ApiError, Dialect, DialectOpening, open_dialect};
use crate::model::Task;
use crate::streams::StreamConnection;

/// Tasks remembered for their labels and title (which never change), at most this many.
const REMEMBERED: usize = 4096;

pub(super) async fn open(
    t: Tracker,
    headers: &HeaderMap,
    raw: &str,
    ws: Option<Ws>,
) -> Result<Response, ApiError> {
    let credentials = crate::compat::credentials(headers, raw);
    let project = url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == "project")
        .map(|(_, v)| v.into_owned())
        .filter(|p| !p.is_empty());
    let topics = match &project {
        Some(project) => vec![format!("label:project={project}")],
        None => vec![format!("plugin:{}", t.plugin)],
    };
    let dialect = TrackerFeed {
        plugin: t.plugin.clone(),
        remembered: HashMap::new(),
        topics,
    };
    open_dialect(
        t.state.clone(),
        credentials,
        raw,
        &["api_key", "token", "project"],
        ws,
        dialect,
    )
    .await
}

struct TrackerFeed {
    plugin: String,
    remembered: HashMap<String, Option<Task>>,
    topics: Vec<String>,
}

impl DialectOpening for TrackerFeed {
    fn topics(&self) -> Vec<String> {
        self.topics.clone()
    }

    /// The tracker said nothing on connecting.
    fn first_frames<'a>(
        &'a mut self,
        _: &'a StreamConnection,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Value>, ApiError>> + Send + 'a>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

impl TrackerFeed {
    /// The task of an event, if it is a tracked one this connection may read.
    async fn task(&mut self, connection: &StreamConnection, id: &str, fresh: bool) -> Option<Task> {
        if !fresh && let Some(known) = self.remembered.get(id) {
            return known.clone();
        }
        let task = connection
            .task(id)
            .await
            .ok()
            .filter(|task| task.plugin == self.plugin);
        if self.remembered.len() >= REMEMBERED {
            self.remembered.clear();
        }
        self.remembered.insert(id.to_owned(), task.clone());
        task
    }

    async fn message(&mut self, connection: &StreamConnection, frame: &str) -> Option<String> {
        let event: Value = serde_json::from_str(frame).ok()?;
        let id = event["task_id"].as_str()?;
        let kind = event["type"].as_str()?;
        let (name, fresh) = match kind {
            "started" => ("task_started", false),
            "progress" => ("task_status_updated", false),
            "completed" => ("task_finished", true),
            "failed" => ("task_error", true),
            _ => return None,
        };
        let task = self.task(connection, id, fresh).await?;
        let mut data = json!({
            "task_id": label(&task, "task_id").unwrap_or(&task.id),
            "title": task.title,
            "project": label(&task, "project"),
            "agent": label(&task, "agent"),
        });
        match kind {
            "started" => {
                data["status"] = json!("running");
                data["started_at"] = event["timestamp"].clone();
            }
            "progress" => {
                let progress = &event["data"];
                data["status"] = json!("running");
                data["progress"] = json!(
                    progress["percentage"]
                        .as_f64()
                        .map_or(seed_progress(&task), |p| p.clamp(0.0, 100.0).round() as u64)
                );
                data["message"] = progress["message"].clone();
            }
            "completed" => {
                data["status"] = json!("completed");
                data["duration_seconds"] = json!(task.duration_seconds);
                data["result"] = task
                    .result
                    .as_ref()
                    .and_then(|r| r.get("result"))
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            _ => {
                data["status"] = json!("failed");
                let error = task.error.as_ref();
                data["error_type"] = json!(error.map(|e| e.code.as_str()));
                data["error_message"] = json!(error.map(|e| e.message.as_str()));
            }
        }
        Some(json!({"type": name, "data": data, "timestamp": event["timestamp"]}).to_string())
    }
}

impl Dialect for TrackerFeed {
    fn translate<'a>(
        &'a mut self,
        connection: &'a StreamConnection,
        frame: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(self.message(connection, frame))
    }
}
