//! The crawler's task, progress, health and connection-info requests, each a thin call of the
//! engine with the crawler's field names.

use serde_json::{Map, Value, json};
use warp::http::{HeaderMap, StatusCode};

use super::{
    CrawlExecutor, Crawler, CrawlerError, now, object, on_task, rename_keys, snake, task_view,
};
use crate::api::ApiError;
use crate::engine::{NewTask, ProgressReport, StatsQuery, TaskUpdate};
use crate::model::{Executor, TaskStatus};
use crate::storage::TaskQuery;

pub(super) async fn create(
    c: &Crawler,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    let mut fields = object(body)?;
    // The envelope `{"type": "task", "data": {…}}`, or the task itself.
    let envelope = fields.get("type").and_then(Value::as_str) == Some("task");
    let data = match (envelope, fields.remove("data")) {
        (true, Some(Value::Object(data))) => data,
        (_, Some(_)) => {
            return Err(ApiError::validation(
                "data must be an object, in {\"type\": \"task\", \"data\": {…}}",
            )
            .into());
        }
        (_, None) => fields,
    };
    let mut data = match rename_keys(Value::Object(data), snake) {
        Value::Object(data) => data,
        _ => Map::new(),
    };
    let id = data.remove("id").and_then(|v| {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
    });
    let task_type = data
        .remove("type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or_else(|| {
            ApiError::validation("data.type is required: one of the GitLab task types")
        })?;
    // What the plugin has no use for is left out rather than refused.
    if let Some(known) = c.known_fields(&task_type) {
        data.retain(|key, _| known.contains(key));
    }
    let new = NewTask {
        id,
        plugin: c.plugin.clone(),
        task_type,
        input: Value::Object(data),
        executor: match c.executor {
            CrawlExecutor::Plugin => Executor::Plugin,
            CrawlExecutor::External => Executor::External,
        },
        ..NewTask::default()
    };
    let task = c.state.engine.create(&principal, new).await?;
    Ok((
        StatusCode::CREATED,
        json!({"success": true, "data": task_view(&task)}),
    ))
}

pub(super) async fn list(
    c: &Crawler,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    let params: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let number = |name: &str, default: usize, max: usize| -> Result<usize, CrawlerError> {
        match param(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| {
                    ApiError::validation(format!("{name} must be an integer from 0 to {max}"))
                        .into()
                }),
        }
    };
    let status = match param("status") {
        None => None,
        Some(text) => Some(
            TaskStatus::parse(text)
                .ok_or_else(|| ApiError::validation(format!("unknown status {text:?}")))?,
        ),
    };
    let query = TaskQuery {
        status,
        plugin: Some(c.plugin.clone()),
        task_type: param("type").map(str::to_owned),
        limit: number("limit", 10, 100)?.max(1),
        offset: number("offset", 0, u32::MAX as usize)?,
        ..TaskQuery::default()
    };
    let (tasks, total) = c.state.engine.list(&principal, query.clone()).await?;
    let has_more = (query.offset + tasks.len()) < total as usize;
    Ok((
        StatusCode::OK,
        json!({
            "data": tasks.iter().map(task_view).collect::<Vec<_>>(),
            "meta": {"total": total, "limit": query.limit, "offset": query.offset, "hasMore": has_more},
        }),
    ))
}

pub(super) async fn get(
    c: &Crawler,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "data": task_view(&c.task(&principal, id).await?)}),
    ))
}

/// A progress report from the crawler's fields (`type`, `percentage` and `timestamp` are its
/// own bookkeeping: the host derives the percentage and stamps the time).
fn progress_of(fields: &Map<String, Value>) -> Result<ProgressReport, CrawlerError> {
    let count = |name: &str| -> Result<Option<u64>, CrawlerError> {
        match fields.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::validation(format!("{name} must be a whole number")).into()
            }),
        }
    };
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .map(|t| t.chars().take(1024).collect::<String>())
    };
    Ok(ProgressReport {
        processed: count("processed")?,
        total: count("total")?,
        current_step: text("currentStep").or_else(|| text("current_step")),
        message: text("message"),
        metrics: None,
    })
}

pub(super) async fn report_progress(
    c: &Crawler,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    c.task(&principal, id).await?;
    let report = progress_of(&object(body)?)?;
    let task = c
        .state
        .engine
        .report_progress(&principal, id, report)
        .await
        .map_err(on_task(id))?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "data": task_view(&task)}),
    ))
}

pub(super) async fn progress(
    c: &Crawler,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    let task = c.task(&principal, id).await?;
    let view = task_view(&task);
    Ok((
        StatusCode::OK,
        json!({"taskId": task.id, "status": task.status, "progress": view["progress"]}),
    ))
}

pub(super) async fn update(
    c: &Crawler,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    c.task(&principal, id).await?;
    let fields = object(body)?;
    let status = match fields.get("status").and_then(Value::as_str) {
        None => None,
        Some(text) => Some(
            TaskStatus::parse(text)
                .ok_or_else(|| ApiError::validation(format!("unknown status {text:?}")))?,
        ),
    };
    let progress = match fields.get("progress") {
        Some(Value::Object(p)) => Some(progress_of(p)?),
        _ => None,
    };
    let error = match fields.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(message)) => Some(crate::engine::ReportedError {
            code: "CRAWLER_ERROR".into(),
            message: message.chars().take(4096).collect(),
            retryable: false,
        }),
        Some(other) => Some(
            serde_json::from_value(rename_keys(other.clone(), snake))
                .map_err(|e| ApiError::validation(format!("error: {e}")))?,
        ),
    };
    let update = TaskUpdate {
        status,
        result: fields.get("result").cloned(),
        error,
        progress,
        duration_seconds: None,
    };
    let task = c
        .state
        .engine
        .report_update(&principal, id, update)
        .await
        .map_err(on_task(id))?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "data": task_view(&task)}),
    ))
}

pub(super) async fn cancel(
    c: &Crawler,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    c.task(&principal, id).await?;
    let task = c
        .state
        .engine
        .cancel(&principal, id)
        .await
        .map_err(on_task(id))?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "data": task_view(&task)}),
    ))
}

pub(super) async fn broadcast(
    c: &Crawler,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    c.task(&principal, id).await?;
    let mut fields = object(body)?;
    let kind = fields
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message")
        .to_owned();
    let data = fields.remove("data").unwrap_or(Value::Object(fields));
    let event = c
        .state
        .engine
        .post_message(&principal, id, &kind, data)
        .await
        .map_err(on_task(id))?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "seq": event.seq, "delivered": c.state.streams.connection_count()}),
    ))
}

pub(super) async fn health(
    c: &Crawler,
    headers: &HeaderMap,
    raw: &str,
    deep: bool,
) -> Result<(StatusCode, Value), CrawlerError> {
    let principal = c.caller(headers, raw).await?;
    let engine = &c.state.engine;
    let probe = engine.event_feed().probe().await;
    let storage = probe.is_ok() && engine.store_failure().is_none();
    // The caller's own tasks of the plugin (an operator's: every owner's), from the cells.
    let all = engine
        .stats(
            &principal,
            StatsQuery {
                plugin: Some(c.plugin.clone()),
                ..StatsQuery::default()
            },
        )
        .await?;
    let count = |status: &str| all.overall.by_status.get(status).copied().unwrap_or(0);
    let day_ago = chrono::Utc::now() - chrono::Duration::hours(24);
    let recent = engine
        .stats(
            &principal,
            StatsQuery {
                plugin: Some(c.plugin.clone()),
                created_after: Some(day_ago),
                ..StatsQuery::default()
            },
        )
        .await?;
    let up = |ok: bool| if ok { "up" } else { "down" };
    let mut body = json!({
        "status": if storage { "healthy" } else { "unhealthy" },
        "timestamp": now(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": engine.uptime().as_secs(),
        "services": {
            "database": {"status": up(storage), "responseTime": probe.map_or(Value::Null, |d| json!(d.as_millis() as u64))},
            "authentication": {"status": "up", "configured": c.state.auth.enabled()},
            "jobProcessor": {
                "status": up(engine.registry().get(&c.plugin).is_some()),
                "activeJobs": count("running"),
                "queuedJobs": count("queued") + count("scheduled"),
                "failedJobs": count("failed"),
                "recentCompletions": recent.overall.by_status.get("completed").copied().unwrap_or(0),
            },
            "websockets": {"status": "up", "activeConnections": c.state.streams.connection_count(), "supportEnabled": true},
        },
    });
    if deep {
        body["operation"] = json!("deep_check");
    }
    let status = if storage {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, body))
}

pub(super) async fn connect_info(
    c: &Crawler,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), CrawlerError> {
    c.caller(headers, raw).await?;
    let fields = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        object(body)?
    };
    let connection_id = fields
        .get("connectionId")
        .and_then(Value::as_str)
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let streams = c.state.streams.config();
    Ok((
        StatusCode::OK,
        json!({
            "status": "ready",
            "connectionInfo": {
                "connectionId": connection_id,
                "serverTime": now(),
                "activeConnections": c.state.streams.connection_count(),
                "maxConnections": streams.max_connections,
                "supportedProtocols": ["gitlab-crawler-v1"],
                "heartbeatInterval": streams.heartbeat_interval_ms,
            },
            "endpoints": {
                "websocket": "/api/internal2/connect",
                "tasks": "/api/internal2/tasks",
                "health": "/api/internal2/health",
            },
        }),
    ))
}
