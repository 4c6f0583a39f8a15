//! The agent task tracker's API (seed 002) on the engine: agents report through one-call
//! webhooks (`/webhook/start|status|finish|error`), dashboards read `/api/projects`,
//! `/api/stats` and `/ws?project=`. A tracked task is an external task of one plugin name
//! (`plugin`, `agents` by default) labelled with its `project` and `agent`, titled with the
//! seed's `task`, holding the seed's body as its input.
//!
//! Task ids are the seed's per project: `task-1` in two projects is two tasks. The host id is
//! `{project}:{task_id}` when both are plain (letters, digits, `.`, `_`, `-`), else a digest
//! of the pair; the seed's id is kept in the `task_id` label either way.

mod stream;
mod views;
mod webhooks;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{caller, request_parts};
use crate::api::{ApiError, AppState, json_reply, respond};
use crate::auth::{ImportedKey, Principal};
use crate::model::{Task, TaskStatus};

/// `[compat.agent_tracker]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentTrackerConfig {
    pub enabled: bool,
    /// The seed's own address (`0.0.0.0:8000`); without it the routes are on the main
    /// listener, except `/health`, which stays the host's there.
    pub listen: Option<SocketAddr>,
    /// The tracker's `API_KEY`, imported.
    pub api_keys: Vec<ImportedKey>,
    /// The plugin name tracked tasks are filed under.
    pub plugin: String,
}

impl Default for AgentTrackerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: None,
            api_keys: Vec::new(),
            plugin: "agents".into(),
        }
    }
}

super::facade_settings!(AgentTrackerConfig);

/// The task type of tracked tasks.
const TASK_TYPE: &str = "task";

fn is_plain(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The host id of the seed's task `task_id` in `project`. The readable form has one `:`, the
/// digest form two, so they never meet.
fn host_id(project: &str, task_id: &str) -> String {
    if is_plain(project) && is_plain(task_id) && project.len() + task_id.len() < 128 {
        return format!("{project}:{task_id}");
    }
    let mut hasher = Sha256::new();
    hasher.update(project.as_bytes());
    hasher.update([0]);
    hasher.update(task_id.as_bytes());
    format!("agent-tracker:{}:", &hex::encode(hasher.finalize())[..40])
}

/// The seed's status name of a task.
fn seed_status(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued | TaskStatus::Scheduled => "pending",
        TaskStatus::Running => "running",
        TaskStatus::Paused => "paused",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
    }
}

use super::integer_progress as seed_progress;

fn label<'t>(task: &'t Task, key: &str) -> Option<&'t str> {
    task.labels.get(key).map(String::as_str)
}

fn now() -> String {
    crate::model::timestamp::format(&chrono::Utc::now())
}

/// A validation error as FastAPI gave it: 422, with the field named.
fn invalid(field: &str, issue: impl Into<String>) -> ApiError {
    let issue = issue.into();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "VALIDATION_ERROR",
        format!("{field}: {issue}"),
    )
    .with_details(json!({"field": field, "issue": issue}))
}

/// What the handlers share.
#[derive(Clone)]
struct Tracker {
    state: AppState,
    plugin: String,
}

impl Tracker {
    async fn caller(&self, headers: &HeaderMap, raw: &str) -> Result<Principal, ApiError> {
        caller(&self.state, headers, raw).await
    }
}

fn reply(result: Result<Value, ApiError>) -> Response {
    respond(result.map(|body| json_reply(StatusCode::OK, &body)))
}

/// Every route of the façade.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let tracker = Tracker {
        plugin: state.config.compat.agent_tracker.plugin.clone(),
        state,
    };
    let with = {
        let tracker = tracker.clone();
        warp::any().map(move || tracker.clone())
    };
    let limit = tracker.state.config.max_body_bytes;
    let webhook = warp::path!("webhook" / String)
        .and(warp::post())
        .and(request_parts())
        .and(crate::api::body(limit))
        .and(with.clone())
        .then(
            |hook: String, headers: HeaderMap, raw: String, body: bytes::Bytes, t: Tracker| async move {
                reply(webhooks::handle(&t, &hook, &headers, &raw, &body).await)
            },
        );
    let projects = warp::path!("api" / "projects")
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|headers: HeaderMap, raw: String, t: Tracker| async move {
            reply(views::projects(&t, &headers, &raw).await)
        });
    let project_tasks = warp::path!("api" / "projects" / String / "tasks")
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |project: String, headers: HeaderMap, raw: String, t: Tracker| async move {
                reply(views::project_tasks(&t, &project, &headers, &raw).await)
            },
        );
    let stats = warp::path!("api" / "stats")
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|headers: HeaderMap, raw: String, t: Tracker| async move {
            reply(views::stats(&t, &headers, &raw).await)
        });
    let project_stats = warp::path!("api" / "stats" / "projects" / String)
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |project: String, headers: HeaderMap, raw: String, t: Tracker| async move {
                reply(views::project_stats(&t, &project, &headers, &raw).await)
            },
        );
    let websocket_stats = warp::path!("api" / "websocket" / "stats")
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|headers: HeaderMap, raw: String, t: Tracker| async move {
            reply(views::websocket_stats(&t, &headers, &raw).await)
        });
    let health = warp::path!("health").and(warp::get()).map(|| {
        json_reply(
            StatusCode::OK,
            &json!({"status": "healthy", "timestamp": now(), "version": env!("CARGO_PKG_VERSION")}),
        )
    });
    let db_check = warp::path!("db-check")
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|headers: HeaderMap, raw: String, t: Tracker| async move {
            reply(views::db_check(&t, &headers, &raw).await)
        });
    let redis_check = warp::path!("redis-check")
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|headers: HeaderMap, raw: String, t: Tracker| async move {
            reply(views::redis_check(&t, &headers, &raw).await)
        });
    let ws = warp::path!("ws")
        .and(warp::get())
        .and(request_parts())
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .and(with)
        .then(
            |headers: HeaderMap, raw: String, ws, t: Tracker| async move {
                respond(stream::open(t, &headers, &raw, ws).await)
            },
        );
    webhook
        .or(projects)
        .unify()
        .or(project_tasks)
        .unify()
        .or(stats)
        .unify()
        .or(project_stats)
        .unify()
        .or(websocket_stats)
        .unify()
        .or(health)
        .unify()
        .or(db_check)
        .unify()
        .or(redis_check)
        .unify()
        .or(ws)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_readable_when_plain_and_never_collide_otherwise() {
        assert_eq!(host_id("my-project", "task-123"), "my-project:task-123");
        let spaced = host_id("my project", "task-123");
        assert!(spaced.starts_with("agent-tracker:") && spaced.ends_with(':'));
        assert_eq!(spaced.matches(':').count(), 2);
        assert_ne!(host_id("a:b", "c"), host_id("a", "b:c"));
        assert!(host_id(&"p".repeat(100), &"t".repeat(100)).len() <= 128);
    }
}
