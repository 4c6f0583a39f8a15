//! The hub's jobs: delegation onto `delegate` tasks, the listing with its filters and
//! `pagination.pages`, a job's view (progress, the runner's resource usage), its logs (the
//! last `lines`, `since`, `format=text`, `follow`) and its status change (cancel).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{Hub, HubError, HubResult, not_found, object, ok, param, reply};
use crate::api::ApiError;
use crate::engine::{NewTask, RUNNER_LABEL};
use crate::model::{Task, TaskStatus, timestamp};
use crate::storage::{SortField, TaskQuery};

/// The delegate input's own fields; the rest of a request goes to `metadata`.
const JOB_FIELDS: &[&str] = &[
    "repository",
    "job_id",
    "job_name",
    "workflow_name",
    "labels",
    "metadata",
    "steps",
    "env",
    "artifacts",
    "timeout_s",
];
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;
/// Most log lines a reply carries.
const MAX_LINES: usize = 10_000;

/// The hub's status of a job: a delegate task runs while it waits for a runner, and that
/// is the hub's `pending`.
pub(super) fn hub_status(task: &Task) -> &'static str {
    match task.status {
        TaskStatus::Queued | TaskStatus::Scheduled | TaskStatus::Paused => "pending",
        TaskStatus::Running if task.labels.contains_key(RUNNER_LABEL) => "running",
        TaskStatus::Running => "pending",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
    }
}

fn time(at: &Option<chrono::DateTime<chrono::Utc>>) -> Value {
    at.as_ref()
        .map_or(Value::Null, |t| json!(timestamp::format(t)))
}

/// A job as the hub lists it.
fn job_summary(task: &Task) -> Value {
    let github_job_id = match &task.input["job_id"] {
        Value::String(s) => s.parse::<u64>().map_or_else(|_| json!(s), |n| json!(n)),
        other => other.clone(),
    };
    json!({
        "id": task.id,
        "github_job_id": github_job_id,
        "job_name": task.input["job_name"],
        "repository": task.input["repository"],
        "workflow_name": task.input["workflow_name"],
        "status": hub_status(task),
        "runner_id": task.labels.get(RUNNER_LABEL),
        // Jobs run as processes in a directory of their own on the runner, not containers.
        "container_id": null,
        "labels": task.input["labels"],
        "created_at": timestamp::format(&task.created_at),
        "started_at": time(&task.started_at),
        "updated_at": timestamp::format(&task.updated_at),
        "completed_at": time(&task.finished_at),
        "estimated_completion": null,
        "metadata": task.input["metadata"],
    })
}

async fn job_view(h: &Hub, task: &Task) -> Value {
    let mut view = job_summary(task);
    let progress = &task.progress;
    view["progress"] = json!({
        "current_step": progress.current_step,
        "total_steps": progress.total,
        "completed_steps": progress.processed,
        "percentage": super::super::integer_progress(task),
    });
    // While it runs, the job's usage is what its runner last reported.
    let usage = match (task.status, task.labels.get(RUNNER_LABEL)) {
        (TaskStatus::Running, Some(runner)) => h
            .state
            .engine
            .runners()
            .get(runner)
            .await
            .ok()
            .and_then(|r| r.resource_usage),
        _ => None,
    };
    view["resource_usage"] = json!(usage);
    view["logs_url"] = json!(format!("/api/jobs/{}/logs", task.id));
    view["result"] = task.result.clone().unwrap_or(Value::Null);
    view["error"] = task.error.as_ref().map_or(
        Value::Null,
        |e| json!({"code": e.code, "message": e.message}),
    );
    view
}

async fn task_of(h: &Hub, principal: &crate::auth::Principal, id: &str) -> Result<Task, HubError> {
    let task = h.state.engine.get(principal, id).await?;
    if task.plugin != h.config.plugin {
        return Err(not_found(format_args!("job {id}")));
    }
    Ok(task)
}

/// The delegate input from the hub's request.
fn delegate_input(h: &Hub, mut fields: Map<String, Value>) -> Result<Value, HubError> {
    let mut metadata = match fields.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(metadata)) => metadata,
        Some(_) => return Err(ApiError::validation("metadata must be an object").into()),
    };
    let mut input = Map::new();
    for (key, value) in fields {
        if JOB_FIELDS.contains(&key.as_str()) {
            input.insert(key, value);
        } else {
            metadata.insert(key, value);
        }
    }
    input.insert("metadata".into(), Value::Object(metadata));
    if !input.contains_key("steps") {
        let steps = h.default_steps();
        if steps.is_empty() {
            return Err(ApiError::validation(
                "this job names no steps, and the host has no job_steps ([compat.runnerhub] or \
                 [github] steps) to run for it",
            )
            .into());
        }
        input.insert("steps".into(), json!(steps));
    }
    Ok(Value::Object(input))
}

pub(super) async fn delegate(h: &Hub, headers: &HeaderMap, raw: &str, body: &[u8]) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let input = delegate_input(h, object(body)?)?;
    let mut labels = BTreeMap::new();
    for (label, field) in [
        ("repository", "repository"),
        ("github_job", "job_id"),
        ("workflow", "workflow_name"),
    ] {
        let value = match &input[field] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if !value.is_empty() && value.len() <= 256 && !value.contains('=') {
            labels.insert(label.to_owned(), value);
        }
    }
    let title = input["job_name"]
        .as_str()
        .map(|n| n.chars().take(200).collect());
    let new = NewTask {
        plugin: h.config.plugin.clone(),
        task_type: h.config.task_type.clone(),
        input,
        labels,
        title,
        ..NewTask::default()
    };
    let task = h.state.engine.create(&principal, new).await?;
    Ok((
        StatusCode::CREATED,
        json!({
            "success": true,
            "message": "Job delegated successfully",
            "data": {
                "delegation_id": task.id,
                "runner_id": null,
                "container_id": null,
                "status": hub_status(&task),
                "created_at": timestamp::format(&task.created_at),
                "estimated_completion": null,
            },
        }),
    ))
}

fn status_filter(name: &str) -> Result<TaskStatus, HubError> {
    Ok(match name {
        "pending" => TaskStatus::Queued,
        "running" => TaskStatus::Running,
        "completed" => TaskStatus::Completed,
        "failed" => TaskStatus::Failed,
        "cancelled" => TaskStatus::Cancelled,
        other => {
            return Err(ApiError::validation(format!(
                "status is pending, running, completed, failed or cancelled, not {other:?}"
            ))
            .into());
        }
    })
}

fn number(raw: &str, name: &str, default: usize, max: usize) -> Result<usize, HubError> {
    match param(raw, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| ApiError::validation(format!("{name} is 0 to {max}")).into()),
    }
}

pub(super) async fn list(h: &Hub, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let limit = number(raw, "limit", DEFAULT_LIMIT, MAX_LIMIT)?.max(1);
    let offset = number(raw, "offset", 0, usize::MAX)?;
    let mut labels = Vec::new();
    if let Some(repository) = param(raw, "repository") {
        labels.push(("repository".to_owned(), repository));
    }
    if let Some(runner) = param(raw, "runner_id") {
        labels.push((RUNNER_LABEL.to_owned(), runner));
    }
    let sort = match param(raw, "sort").as_deref() {
        None | Some("created_at") => SortField::CreatedAt,
        Some("updated_at") => SortField::UpdatedAt,
        // The engine keeps no index by status; a status filter narrows to one instead.
        Some("status") => SortField::CreatedAt,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "sort is created_at, updated_at or status, not {other:?}"
            ))
            .into());
        }
    };
    let ascending = match param(raw, "order").as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => {
            return Err(
                ApiError::validation(format!("order is asc or desc, not {other:?}")).into(),
            );
        }
    };
    let query = TaskQuery {
        plugin: Some(h.config.plugin.clone()),
        status: param(raw, "status")
            .as_deref()
            .map(status_filter)
            .transpose()?,
        labels,
        sort,
        ascending,
        limit,
        offset,
        ..TaskQuery::default()
    };
    let (tasks, total) = h.state.engine.list(&principal, query).await?;
    ok(
        StatusCode::OK,
        json!({
            "jobs": tasks.iter().map(job_summary).collect::<Vec<_>>(),
            "pagination": {
                "total": total,
                "limit": limit,
                "offset": offset,
                "pages": total.div_ceil(limit as u64),
            },
        }),
    )
}

pub(super) async fn get(h: &Hub, id: &str, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let task = task_of(h, &principal, id).await?;
    ok(StatusCode::OK, job_view(h, &task).await)
}

/// `GET /api/jobs/{id}/logs`: JSON (`lines`, `since`), plain text, or followed as the host's
/// server-sent events.
pub(super) async fn logs(h: &Hub, id: &str, headers: &HeaderMap, raw: &str) -> Response {
    match read_logs(h, id, headers, raw).await {
        Ok(response) => response,
        Err(e) => reply(Err(e)),
    }
}

async fn read_logs(
    h: &Hub,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Response, HubError> {
    let principal = h.caller(headers, raw).await?;
    let task = task_of(h, &principal, id).await?;
    if param(raw, "follow").as_deref() == Some("true") {
        let lines = number(raw, "lines", 100, MAX_LINES)?;
        let credentials = crate::compat::credentials(headers, raw);
        return Ok(
            crate::api::follow_task_logs(&principal, credentials, &h.state, id, lines).await?,
        );
    }
    let engine = &h.state.engine;
    let (_, all) = engine.logs(&principal, id, 0, usize::MAX).await?;
    let total_lines = all.len();
    let since = match param(raw, "since") {
        None => None,
        Some(text) => Some(
            chrono::DateTime::parse_from_rfc3339(&text)
                .map_err(|_| ApiError::validation("since is an ISO 8601 time"))?
                .with_timezone(&chrono::Utc),
        ),
    };
    let lines = number(raw, "lines", MAX_LINES, MAX_LINES)?;
    let mut kept: Vec<_> = all
        .into_iter()
        .filter(|l| since.is_none_or(|t| l.timestamp > t))
        .collect();
    let start = kept.len().saturating_sub(lines);
    kept.drain(..start);
    match param(raw, "format").as_deref() {
        None | Some("json") => {}
        Some("text") => {
            let mut text = String::new();
            for line in &kept {
                text.push_str(&format!(
                    "{} [{}] {}\n",
                    timestamp::format(&line.timestamp),
                    line.level,
                    line.message
                ));
            }
            let mut response = Response::new(text.into());
            response.headers_mut().insert(
                "content-type",
                warp::http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return Ok(response);
        }
        Some(other) => {
            return Err(
                ApiError::validation(format!("format is json or text, not {other:?}")).into(),
            );
        }
    }
    let logs: Vec<Value> = kept
        .iter()
        .map(|l| {
            json!({
                "timestamp": timestamp::format(&l.timestamp),
                "level": l.level,
                "message": l.message,
                "step": l.step,
            })
        })
        .collect();
    Ok(reply(ok(
        StatusCode::OK,
        json!({
            "logs": logs,
            "metadata": {
                "total_lines": total_lines,
                "job_status": hub_status(&task),
                "last_update": timestamp::format(&task.updated_at),
            },
        }),
    )))
}

/// `PUT /api/jobs/{id}/status`: the hub's runners reported here; taskhost's report through
/// their own routes, so a client may only cancel.
pub(super) async fn set_status(
    h: &Hub,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let fields = object(body)?;
    task_of(h, &principal, id).await?;
    match fields.get("status").and_then(Value::as_str) {
        Some("cancelled") => {
            let task = h.state.engine.cancel(&principal, id).await?;
            ok(StatusCode::OK, job_summary(&task))
        }
        _ => Err(ApiError::validation(
            "a job's outcome comes from the runner running it (taskhost-runner reports it); \
             this route takes only {\"status\": \"cancelled\"}",
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_delegate_is_pending_until_a_runner_took_its_job() {
        let mut task: Task = serde_json::from_value(json!({
            "id": "t", "plugin": "runner", "type": "delegate", "status": "running",
            "input": {}, "labels": {}, "priority": 0, "owner": "o",
            "progress": {"processed": null, "total": null, "percentage": null,
                         "current_step": null, "message": null, "metrics": {}},
            "attempt": 1, "max_attempts": 3, "timeout_s": 60,
            "created_at": "2026-12-02T06:00:00.000Z", "updated_at": "2026-12-02T06:00:00.000Z",
        }))
        .expect("a task");
        assert_eq!(hub_status(&task), "pending");
        task.labels.insert(RUNNER_LABEL.into(), "r1".into());
        assert_eq!(hub_status(&task), "running");
        task.status = TaskStatus::Paused;
        assert_eq!(hub_status(&task), "pending");
    }
}
