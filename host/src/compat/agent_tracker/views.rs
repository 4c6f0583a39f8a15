//! What the tracker's dashboards read: projects, a project's tasks, statistics overall and
//! per project, WebSocket figures and the store checks, in the seed's shapes.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Value, json};
use warp::http::HeaderMap;

use super::{Tracker, invalid, label, now, seed_progress, seed_status};
use crate::api::ApiError;
use crate::engine::{ProjectQuery, ProjectSort, Stats, StatsQuery};
use crate::model::{Task, TaskStatus};
use crate::storage::TaskQuery;

/// The query parameters, leniently: unknown ones are ignored, as the seed did.
fn params(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn number(
    params: &[(String, String)],
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match param(params, name) {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| invalid(name, format!("an integer from 0 to {max}"))),
    }
}

/// A path segment, percent-decoded.
fn segment(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid("path", "not UTF-8"))
}

/// `date_from`/`date_to`: a date (its start, or with `end` the start of the next day) or an
/// RFC 3339 time.
fn instant(text: &str, field: &str, end: bool) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| invalid(field, "a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    let day = if end {
        day.succ_opt().unwrap_or(day)
    } else {
        day
    };
    Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
}

fn time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |t| json!(crate::model::timestamp::format(&t)))
}

pub(super) async fn projects(
    t: &Tracker,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Value, ApiError> {
    let principal = t.caller(headers, raw).await?;
    let params = params(raw);
    let sort = match param(&params, "sort_by") {
        None => ProjectSort::Name,
        Some(text) => ProjectSort::parse(text)
            .ok_or_else(|| invalid("sort_by", "name, created_at, updated_at or task_count"))?,
    };
    let ascending = match param(&params, "sort_order") {
        None => sort == ProjectSort::Name,
        Some("asc") => true,
        Some("desc") => false,
        Some(_) => return Err(invalid("sort_order", "asc or desc")),
    };
    let query = ProjectQuery {
        plugin: Some(t.plugin.clone()),
        sort,
        ascending,
        limit: number(&params, "limit", 50, 1000)?,
        offset: number(&params, "offset", 0, u32::MAX as usize)?,
    };
    let (page, total) = t.state.engine.projects(&principal, &query).await?;
    let projects: Vec<Value> = page
        .iter()
        .enumerate()
        .map(|(n, p)| {
            json!({
                // The seed's row id: the position in this order, from 1.
                "id": query.offset + n + 1,
                "name": p.name,
                "created_at": time(p.created_at),
                "updated_at": time(p.updated_at),
                "task_count": p.task_count,
                "active_tasks": p.active_tasks,
            })
        })
        .collect();
    Ok(json!({"projects": projects, "total": total, "limit": query.limit, "offset": query.offset}))
}

/// A tracked task in the seed's shape.
fn task_view(n: usize, task: &Task) -> Value {
    let result = task.result.as_ref();
    let mut metadata = task.input.get("metadata").cloned().unwrap_or(json!({}));
    if let (Some(into), Some(Value::Object(more))) = (
        metadata.as_object_mut(),
        result.and_then(|r| r.get("metadata")),
    ) {
        into.extend(more.clone());
    }
    let duration = task.duration_seconds.or_else(|| {
        task.started_at
            .zip(task.finished_at)
            .map(|(start, end)| (end - start).num_milliseconds() as f64 / 1000.0)
    });
    json!({
        "id": n,
        "task_id": label(task, "task_id").unwrap_or(&task.id),
        "title": task.title,
        "status": seed_status(task.status),
        "progress": seed_progress(task),
        "agent": label(task, "agent"),
        "project": label(task, "project"),
        "started_at": time(task.started_at),
        "finished_at": time(task.finished_at),
        "duration_seconds": duration,
        "result": result.and_then(|r| r.get("result")).cloned().unwrap_or(Value::Null),
        "error": task.error.as_ref().map(|e| json!({"error_type": e.code, "error_message": e.message})),
        "metadata": metadata,
        "created_at": time(Some(task.created_at)),
        "updated_at": time(Some(task.updated_at)),
    })
}

pub(super) async fn project_tasks(
    t: &Tracker,
    project: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Value, ApiError> {
    let principal = t.caller(headers, raw).await?;
    let project = segment(project)?;
    let params = params(raw);
    let status = match param(&params, "status") {
        None => None,
        Some("pending") => Some(TaskStatus::Queued),
        Some(text) => Some(
            TaskStatus::parse(text)
                .ok_or_else(|| invalid("status", "pending, running, completed or failed"))?,
        ),
    };
    let mut labels = vec![("project".to_owned(), project.clone())];
    if let Some(agent) = param(&params, "agent") {
        labels.push(("agent".to_owned(), agent.to_owned()));
    }
    let query = TaskQuery {
        status,
        plugin: Some(t.plugin.clone()),
        labels,
        created_after: param(&params, "date_from")
            .map(|d| instant(d, "date_from", false))
            .transpose()?,
        created_before: param(&params, "date_to")
            .map(|d| instant(d, "date_to", true))
            .transpose()?,
        limit: number(&params, "limit", 20, 100)?.max(1),
        offset: number(&params, "offset", 0, u32::MAX as usize)?,
        ..TaskQuery::default()
    };
    let (tasks, total) = t.state.engine.list(&principal, query.clone()).await?;
    let filters: serde_json::Map<String, Value> = ["status", "agent", "date_from", "date_to"]
        .iter()
        .filter_map(|name| param(&params, name).map(|v| ((*name).to_owned(), json!(v))))
        .collect();
    Ok(json!({
        "tasks": tasks.iter().enumerate().map(|(n, task)| task_view(query.offset + n + 1, task)).collect::<Vec<_>>(),
        "total": total,
        "limit": query.limit,
        "offset": query.offset,
        "filters": filters,
    }))
}

fn percent(rate: Option<f64>) -> Value {
    rate.map_or(Value::Null, |r| json!((r * 1000.0).round() / 10.0))
}

fn status_count(by_status: &std::collections::BTreeMap<&'static str, u64>, status: &str) -> u64 {
    by_status.get(status).copied().unwrap_or(0)
}

pub(super) async fn stats(t: &Tracker, headers: &HeaderMap, raw: &str) -> Result<Value, ApiError> {
    let principal = t.caller(headers, raw).await?;
    let query = StatsQuery {
        plugin: Some(t.plugin.clone()),
        group_by: vec!["agent".into()],
        recent: 10,
        ..StatsQuery::default()
    };
    let stats: Stats = t.state.engine.stats(&principal, query).await?;
    let overall = &stats.overall.by_status;
    let active: u64 = ["queued", "scheduled", "running", "paused"]
        .iter()
        .map(|s| status_count(overall, s))
        .sum();
    let agents: Vec<Value> = stats
        .by_label
        .get("agent")
        .into_iter()
        .flatten()
        .map(|(name, summary)| {
            json!({
                "name": name,
                "task_count": summary.total,
                "success_rate": percent(summary.success_rate),
                "average_duration": summary.average_duration_s,
            })
        })
        .collect();
    let recent: Vec<Value> = stats
        .recent_activity
        .iter()
        .flatten()
        .map(|a| {
            json!({
                "project": a.labels.get("project"),
                "task_id": a.labels.get("task_id").unwrap_or(&a.task_id),
                "title": a.title,
                "agent": a.labels.get("agent"),
                "status": seed_status(a.status),
                "timestamp": crate::model::timestamp::format(&a.updated_at),
            })
        })
        .collect();
    Ok(json!({
        "overview": {
            "total_projects": stats.by_project.len(),
            "total_tasks": stats.overall.total,
            "active_tasks": active,
            "completed_tasks": status_count(overall, "completed"),
            "failed_tasks": status_count(overall, "failed"),
        },
        "performance": {
            "average_duration": stats.overall.average_duration_s,
            "success_rate": percent(stats.overall.success_rate),
            "total_duration": stats.overall.total_duration_s,
        },
        "agents": agents,
        "recent_activity": recent,
        "timeline": timeline(&stats),
    }))
}

fn timeline(stats: &Stats) -> Vec<Value> {
    stats
        .timeline
        .iter()
        .map(|d| json!({"date": d.date, "created": d.created, "completed": d.completed, "failed": d.failed}))
        .collect()
}

pub(super) async fn project_stats(
    t: &Tracker,
    project: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Value, ApiError> {
    let principal = t.caller(headers, raw).await?;
    let project = segment(project)?;
    let query = StatsQuery {
        plugin: Some(t.plugin.clone()),
        labels: vec![("project".into(), project.clone())],
        ..StatsQuery::default()
    };
    let stats = t.state.engine.stats(&principal, query).await?;
    let overall = &stats.overall.by_status;
    Ok(json!({
        "project": project,
        "task_stats": {
            "total": stats.overall.total,
            "completed": status_count(overall, "completed"),
            "running": status_count(overall, "running"),
            "failed": status_count(overall, "failed"),
            "pending": status_count(overall, "queued") + status_count(overall, "scheduled"),
        },
        "performance": {
            "average_duration": stats.overall.average_duration_s,
            "success_rate": percent(stats.overall.success_rate),
            "total_duration": stats.overall.total_duration_s,
        },
        "timeline": timeline(&stats),
    }))
}

pub(super) async fn websocket_stats(
    t: &Tracker,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Value, ApiError> {
    let principal = t.caller(headers, raw).await?;
    let host_wide = crate::policy::may_see_host_figures(&principal);
    let figures = t.state.streams.stats(&principal, host_wide);
    Ok(json!({
        "total_connections": figures.total_connections,
        "project_connections": figures.project_connections,
        "uptime": figures.uptime_s,
        "messages_sent": figures.messages_sent,
        "messages_received": figures.messages_received,
    }))
}

pub(super) async fn db_check(
    t: &Tracker,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Value, ApiError> {
    t.caller(headers, raw).await?;
    let probe = t.state.engine.event_feed().probe().await;
    let writable = t.state.engine.store_failure().is_none();
    if probe.is_err() || !writable {
        return Err(ApiError::new(
            warp::http::StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "the store does not answer or takes no writes",
        ));
    }
    Ok(json!({"status": "connected", "database": t.state.membership.backend(), "timestamp": now()}))
}

pub(super) async fn redis_check(
    t: &Tracker,
    headers: &HeaderMap,
    raw: &str,
) -> Result<Value, ApiError> {
    t.caller(headers, raw).await?;
    Ok(json!({
        "status": "not_used",
        "message": "taskhost keeps no Redis: queues and streams live in its own store",
        "timestamp": now(),
    }))
}
