//! `GET /api/ws/{build|analysis}/{id}?token=…`: one task's progress in the service's frames —
//! `connected`, then `progress` (`status`, integer `progress`, `data` with the current step
//! and the family's figures), and at the end `completion` with `results` or `error` with the
//! message. A task that has already ended gets its last frame at once.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::ws::Ws;

use super::{Service, ServiceError, error_text, now, results, seed_progress, seed_status};
use crate::api::{ApiError, Dialect, DialectOpening, open_dialect};
use crate::model::{Task, TaskStatus, timestamp};
use crate::streams::StreamConnection;

pub(super) async fn open(
    s: &Service,
    kind: &str,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
    ws: Option<Ws>,
) -> Result<Response, ServiceError> {
    let plugin = match kind {
        "build" => s.build_plugin.clone(),
        "analysis" => s.analysis_plugin.clone(),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "streams are /api/ws/build/{id} and /api/ws/analysis/{id}",
            )
            .into());
        }
    };
    let credentials = crate::compat::credentials(headers, raw);
    let feed = TaskFeed {
        id: id.to_owned(),
        kind: if kind == "build" { "build" } else { "analysis" },
        plugin,
        ended: false,
    };
    Ok(open_dialect(
        s.state.clone(),
        credentials,
        raw,
        &["token", "api_key"],
        ws,
        feed,
    )
    .await?)
}

struct TaskFeed {
    id: String,
    kind: &'static str,
    plugin: String,
    /// The last frame went out: nothing follows it.
    ended: bool,
}

impl TaskFeed {
    fn end_frame(&mut self, task: &Task, at: &str) -> Value {
        self.ended = true;
        match task.status {
            // `progress` is more than the service sent; its own clients print it.
            TaskStatus::Completed => json!({
                "type": "completion", "task_id": task.id, "status": "completed",
                "progress": 100, "timestamp": at, "results": results(task),
            }),
            status => json!({
                "type": "error", "task_id": task.id, "status": seed_status(status),
                "progress": seed_progress(task), "timestamp": at,
                "error": error_text(task).as_str().map_or_else(|| status.as_str().to_owned(), str::to_owned),
            }),
        }
    }

    async fn frame(&mut self, connection: &StreamConnection, text: &str) -> Option<String> {
        if self.ended {
            return None;
        }
        let event: Value = serde_json::from_str(text).ok()?;
        let at = event["timestamp"].as_str().unwrap_or_default().to_owned();
        match event["type"].as_str()? {
            "started" => Some(json!({
                "type": "progress", "task_id": self.id, "status": "running", "progress": 0,
                "timestamp": at, "data": {"current_step": "Started"},
            })),
            "progress" => {
                let progress = &event["data"];
                let mut data = json!({"current_step": progress["current_step"]});
                if let (Some(data), Some(metrics)) =
                    (data.as_object_mut(), progress["metrics"].as_object())
                {
                    data.extend(metrics.clone());
                }
                let percent = progress["percentage"]
                    .as_f64()
                    .map_or(0, |p| p.clamp(0.0, 100.0).round() as u64);
                Some(json!({
                    "type": "progress", "task_id": self.id, "status": "running",
                    "progress": percent, "timestamp": at, "data": data,
                }))
            }
            "completed" | "failed" | "cancelled" => {
                let task = connection.task(&self.id).await.ok()?;
                Some(self.end_frame(&task, &at))
            }
            _ => None,
        }
        .map(|frame| frame.to_string())
    }
}

impl DialectOpening for TaskFeed {
    fn topics(&self) -> Vec<String> {
        vec![format!("task:{}", self.id)]
    }

    fn first_frames<'a>(
        &'a mut self,
        connection: &'a StreamConnection,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Value>, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            // Read after subscribing, so nothing between the two is missed.
            let task = connection.task(&self.id).await.map_err(ApiError::from)?;
            if task.plugin != self.plugin {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("no {} {}", self.kind, self.id),
                ));
            }
            let mut frames = vec![json!({
                "type": "connected", "task_id": task.id,
                "message": format!("Connected to {} updates", self.kind), "timestamp": now(),
                "status": seed_status(task.status), "progress": seed_progress(&task),
            })];
            if task.status.is_terminal() {
                let at = timestamp::format(&task.finished_at.unwrap_or(task.updated_at));
                frames.push(self.end_frame(&task, &at));
            }
            Ok(frames)
        })
    }
}

impl Dialect for TaskFeed {
    fn translate<'a>(
        &'a mut self,
        connection: &'a StreamConnection,
        frame: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(self.frame(connection, frame))
    }
}
