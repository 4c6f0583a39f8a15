//! `POST /webhook/{start,status,finish,error}`: one call per moment of an agent's task. A
//! task the tracker has not heard of yet is started by whichever call comes first, so an
//! agent that skips `start` is still tracked; the seed's body is kept as the task's input.

use serde_json::{Map, Value, json};
use warp::http::HeaderMap;

use super::{TASK_TYPE, Tracker, host_id, invalid, now};
use crate::api::ApiError;
use crate::auth::Principal;
use crate::engine::{EngineError, ErrorReport, NewTask, ProgressReport, ReportedError, TaskUpdate};
use crate::model::{Executor, Task, TaskStatus};

/// Longest title kept, in characters (the engine's limit).
const MAX_TITLE: usize = 200;

/// The fields every webhook names its task by.
struct Named<'b> {
    body: &'b Map<String, Value>,
    project: String,
    task_id: String,
}

fn text_field(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        // The seed's ids were often numbers; they name the same task as their digits.
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(invalid(field, "must be a string")),
    }
}

fn named(body: &Value) -> Result<Named<'_>, ApiError> {
    let body = body
        .as_object()
        .ok_or_else(|| invalid("body", "a JSON object is expected"))?;
    let required = |field: &str| {
        text_field(body, field)?
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| invalid(field, "This field is required"))
    };
    Ok(Named {
        project: required("project")?,
        task_id: required("task_id")?,
        body,
    })
}

/// The seed's `task` as a title: its first line, cut to the engine's limit.
fn title_of(body: &Map<String, Value>) -> Option<String> {
    let text = body.get("task")?.as_str()?;
    let line: String = text
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_TITLE)
        .collect();
    (!line.trim().is_empty()).then_some(line)
}

/// The task of `named`, created and started if the tracker has not seen it.
async fn tracked(t: &Tracker, principal: &Principal, named: &Named<'_>) -> Result<Task, ApiError> {
    let id = host_id(&named.project, &named.task_id);
    match t.state.engine.get(principal, &id).await {
        Ok(task) => return Ok(task),
        Err(EngineError::TaskNotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("project".to_owned(), named.project.clone());
    labels.insert("task_id".to_owned(), named.task_id.clone());
    if let Some(agent) = text_field(named.body, "agent")?.filter(|a| !a.is_empty()) {
        labels.insert("agent".to_owned(), agent);
    }
    let new = NewTask {
        id: Some(id.clone()),
        plugin: t.plugin.clone(),
        task_type: TASK_TYPE.into(),
        input: Value::Object(named.body.clone()),
        labels,
        executor: Executor::External,
        title: title_of(named.body),
        ..NewTask::default()
    };
    match t.state.engine.create(principal, new).await {
        Ok(_) => {}
        // Another call for the same task created it in between.
        Err(EngineError::Conflict(_)) => {}
        Err(EngineError::Validation { message, details }) => {
            return Err(invalid("body", message).with_details(details));
        }
        Err(e) => return Err(e.into()),
    }
    let running = TaskUpdate {
        status: Some(TaskStatus::Running),
        ..TaskUpdate::default()
    };
    match t.state.engine.report_update(principal, &id, running).await {
        Ok(task) => Ok(task),
        // Already running: another call started it.
        Err(EngineError::Conflict(_)) => Ok(t.state.engine.get(principal, &id).await?),
        Err(e) => Err(e.into()),
    }
}

fn answer(status: &str, task_id: &str, message: &str) -> Value {
    json!({"status": status, "task_id": task_id, "message": message, "timestamp": now()})
}

/// A name the engine takes as an error type or code: the seed's, with anything else as `_`.
fn code_of(text: &str, max: usize) -> String {
    let code: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if code.is_empty() {
        "ERROR".into()
    } else {
        code
    }
}

fn engine_error(e: EngineError) -> ApiError {
    match e {
        EngineError::Validation { message, details } => {
            invalid("body", message).with_details(details)
        }
        other => other.into(),
    }
}

/// What a webhook asks for, checked whole before anything is stored.
enum Hook {
    Start,
    Status {
        progress: Option<f64>,
        message: Option<String>,
    },
    Finish {
        duration: Option<f64>,
        result: Value,
    },
    Error {
        report: ErrorReport,
        code: String,
        message: String,
    },
}

fn parse_hook(hook: &str, body: &Map<String, Value>) -> Result<Hook, ApiError> {
    match hook {
        "start" => Ok(Hook::Start),
        "status" => {
            let progress = match body.get("progress") {
                None | Some(Value::Null) => None,
                Some(p) => Some(
                    p.as_f64()
                        .filter(|p| (0.0..=100.0).contains(p))
                        .ok_or_else(|| invalid("progress", "a number from 0 to 100"))?,
                ),
            };
            let message = text_field(body, "message")?.map(|m| m.chars().take(1024).collect());
            Ok(Hook::Status { progress, message })
        }
        "finish" => {
            let duration = match body.get("duration_seconds") {
                None | Some(Value::Null) => None,
                Some(d) => Some(
                    d.as_f64()
                        .filter(|d| *d >= 0.0)
                        .ok_or_else(|| invalid("duration_seconds", "a number of seconds"))?,
                ),
            };
            Ok(Hook::Finish {
                duration,
                result: json!({
                    "result": body.get("result").cloned().unwrap_or(Value::Null),
                    "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
                }),
            })
        }
        "error" => {
            let error_type = text_field(body, "error_type")?.unwrap_or_else(|| "Error".into());
            let message: String = text_field(body, "error_message")?
                .filter(|m| !m.trim().is_empty())
                .unwrap_or_else(|| error_type.clone())
                .chars()
                .take(4096)
                .collect();
            Ok(Hook::Error {
                report: ErrorReport {
                    error_type: code_of(&error_type, 128),
                    message: message.clone(),
                    stack_trace: text_field(body, "stack_trace")?,
                    metadata: body.get("metadata").cloned().filter(Value::is_object),
                },
                code: code_of(&error_type, 64),
                message,
            })
        }
        _ => Err(ApiError::new(
            warp::http::StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no webhook {hook:?}: start, status, finish or error"),
        )),
    }
}

pub(super) async fn handle(
    t: &Tracker,
    hook: &str,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let principal = t.caller(headers, raw).await?;
    let body: Value = crate::api::parse_json(body).map_err(|e| invalid("body", e.message))?;
    let named = named(&body)?;
    let hook = parse_hook(hook, named.body)?;
    let task = tracked(t, &principal, &named).await?;
    let engine = &t.state.engine;
    let seed_id = named.task_id.as_str();
    match hook {
        Hook::Start => Ok(answer("started", seed_id, "Task started successfully")),
        Hook::Status { progress, message } => {
            if progress.is_some() || message.is_some() {
                let report = ProgressReport {
                    processed: progress.map(|p| p.round() as u64),
                    total: progress.map(|_| 100),
                    message,
                    ..ProgressReport::default()
                };
                engine
                    .report_progress(&principal, &task.id, report)
                    .await
                    .map_err(engine_error)?;
            }
            // The seed's `status` names the same running task here; `finish` and `error`
            // end it.
            Ok(answer(
                "updated",
                seed_id,
                "Task status updated successfully",
            ))
        }
        Hook::Finish { duration, result } => {
            let update = TaskUpdate {
                status: Some(TaskStatus::Completed),
                result: Some(result),
                duration_seconds: duration,
                ..TaskUpdate::default()
            };
            let done = engine
                .report_update(&principal, &task.id, update)
                .await
                .map_err(engine_error)?;
            let mut reply = answer("completed", seed_id, "Task completed successfully");
            reply["duration_seconds"] = json!(done.duration_seconds);
            Ok(reply)
        }
        Hook::Error {
            report,
            code,
            message,
        } => {
            engine
                .record_error(&principal, &task.id, report)
                .await
                .map_err(engine_error)?;
            // The seed's error ends the task as failed; the record keeps the stack trace.
            let failed = TaskUpdate {
                status: Some(TaskStatus::Failed),
                error: Some(ReportedError {
                    code,
                    message,
                    retryable: false,
                }),
                ..TaskUpdate::default()
            };
            engine
                .report_update(&principal, &task.id, failed)
                .await
                .map_err(engine_error)?;
            Ok(answer(
                "error_recorded",
                seed_id,
                "Error recorded successfully",
            ))
        }
    }
}
