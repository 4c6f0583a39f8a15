//! `GET /api/ws`: the hub's event stream. Subscribed at once to every job (`plugin:runner`),
//! it sends `{"type": "job_status", "data": {job_id, status, timestamp}}` each time a job's
//! status changes, after a `connection_established` frame. The hub's clients send a
//! `subscribe` frame naming event types; `job_status` is the one taskhost has, and what a
//! client sends changes nothing. A connection without credentials acts as the operator's
//! `anonymous_stream` principal, when there is one.

use std::future::Future;
use std::pin::Pin;

use serde_json::{Value, json};
use warp::http::HeaderMap;
use warp::reply::Response;
use warp::ws::Ws;

use super::{Hub, HubError, now};
use crate::api::{ApiError, Dialect, DialectOpening, open_dialect};
use crate::auth::Principal;
use crate::streams::StreamConnection;

pub(super) async fn open(
    h: &Hub,
    headers: &HeaderMap,
    raw: &str,
    ws: Option<Ws>,
) -> Result<Response, HubError> {
    let stand_in = h
        .config
        .anonymous_stream
        .as_ref()
        .map(|p| Principal::with_role(&p.user, p.role));
    let credentials = crate::compat::credentials(headers, raw).or_stand_in(stand_in);
    let feed = JobFeed {
        plugin: h.config.plugin.clone(),
    };
    Ok(open_dialect(
        h.state.clone(),
        credentials,
        raw,
        &["token", "api_key"],
        ws,
        feed,
    )
    .await?)
}

struct JobFeed {
    plugin: String,
}

/// The hub's name of a status an event reports.
fn status_of(event: &Value) -> Option<&'static str> {
    Some(match event["type"].as_str()? {
        "created" | "queued" | "paused" | "retrying" => "pending",
        "started" => "running",
        "resumed" if event["data"]["status"] == "running" => "running",
        "resumed" => "pending",
        "completed" => "completed",
        "failed" => "failed",
        "cancelled" => "cancelled",
        _ => return None,
    })
}

impl DialectOpening for JobFeed {
    fn topics(&self) -> Vec<String> {
        vec![format!("plugin:{}", self.plugin)]
    }

    fn first_frames<'a>(
        &'a mut self,
        _: &'a StreamConnection,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Value>, ApiError>> + Send + 'a>> {
        Box::pin(async move {
            Ok(vec![json!({
                "type": "connection_established",
                "data": {"events": ["job_status"], "timestamp": now()},
            })])
        })
    }
}

impl Dialect for JobFeed {
    fn translate<'a>(
        &'a mut self,
        _: &'a StreamConnection,
        frame: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<String>> + Send + 'a>> {
        Box::pin(async move {
            let event: Value = serde_json::from_str(frame).ok()?;
            let status = status_of(&event)?;
            Some(
                json!({
                    "type": "job_status",
                    "data": {
                        "job_id": event["task_id"],
                        "status": status,
                        "timestamp": event["timestamp"],
                    },
                })
                .to_string(),
            )
        })
    }
}
