//! The hub's fleet, GitHub, security, queue and health views, each over the engine's own:
//! runners with their `summary`, registration with `capabilities.max_concurrent_jobs` as the
//! capacity, the webhook integration's repositories, secret scans by the analysis plugin,
//! and the per-plugin queues as the hub's `waiting/active/completed/failed/delayed/paused`.

use std::time::Duration;

use serde_json::{Map, Value, json};
use warp::http::{HeaderMap, StatusCode};

use super::{Hub, HubResult, now, object, ok, param};
use crate::api::ApiError;
use crate::engine::NewTask;
use crate::model::{Task, timestamp};
use crate::runners::{Fact, RunnerFilter, RunnerProfile, RunnerView};

/// The plugin and type a submitted text is scanned by.
const SCAN_PLUGIN: &str = "analysis";
const SCAN_TYPE: &str = "secret_scan";

fn runner_view(runner: &RunnerView) -> Value {
    let mut capabilities = json!(runner.capabilities);
    if let Some(capabilities) = capabilities.as_object_mut() {
        capabilities
            .entry("max_concurrent_jobs")
            .or_insert(json!(runner.capacity));
    }
    json!({
        "id": runner.id,
        "name": runner.name,
        "status": if runner.online { "online" } else { "offline" },
        "busy": runner.busy,
        "labels": runner.labels,
        "os": runner.os,
        "architecture": runner.architecture,
        "current_job": runner.current_job.as_ref().map(|job| json!({"job_id": job.task_id, "delegation_id": job.job_id})),
        "last_seen": timestamp::format(&runner.last_seen),
        "created_at": timestamp::format(&runner.registered_at),
        "capabilities": capabilities,
        "resource_info": runner.resource_info,
    })
}

pub(super) async fn runners(h: &Hub, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let filter = RunnerFilter::parse(
        param(raw, "status").as_deref(),
        param(raw, "labels").as_deref(),
    )?;
    let list = h
        .state
        .engine
        .runners()
        .list_for(&principal, &filter)
        .await?;
    ok(
        StatusCode::OK,
        json!({
            "runners": list.data.iter().map(runner_view).collect::<Vec<_>>(),
            "summary": list.summary,
        }),
    )
}

fn facts(
    fields: &mut Map<String, Value>,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Fact>, ApiError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(value) => serde_json::from_value(value)
            .map_err(|_| ApiError::validation(format!("{name} is an object of scalars"))),
    }
}

pub(super) async fn register(h: &Hub, headers: &HeaderMap, raw: &str, body: &[u8]) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let mut fields = object(body)?;
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation("name is required"))?
        .to_owned();
    let labels: Vec<String> = match fields.get("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|_| ApiError::validation("labels is a list of strings"))?,
    };
    let text = |fields: &Map<String, Value>, key: &str| {
        fields.get(key).and_then(Value::as_str).map(str::to_owned)
    };
    let (os, architecture) = (text(&fields, "os"), text(&fields, "architecture"));
    let mut capabilities = facts(&mut fields, "capabilities")?;
    // The hub's concurrency is taskhost's capacity.
    let capacity = match capabilities.remove("max_concurrent_jobs") {
        Some(Fact::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ApiError::validation("max_concurrent_jobs is 1 to 1024"))?,
        Some(_) => return Err(ApiError::validation("max_concurrent_jobs is a number").into()),
        None => 1,
    };
    let profile = RunnerProfile {
        os,
        architecture,
        capabilities,
        resource_info: facts(&mut fields, "resource_info")?,
    };
    let registered = h
        .state
        .engine
        .runners()
        .register_as(&principal, &name, labels, capacity, profile)
        .await?;
    let mut data = runner_view(&registered.runner);
    data["token"] = json!(registered.token);
    Ok((
        StatusCode::CREATED,
        json!({"success": true, "message": "Runner registered successfully", "data": data}),
    ))
}

pub(super) async fn runner_status(h: &Hub, id: &str, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let runner = h.state.engine.runners().get_for(&principal, id).await?;
    let current_job = match &runner.current_job {
        None => Value::Null,
        Some(job) => {
            let task = h.state.engine.get(&principal, &job.task_id).await.ok();
            json!({
                "job_id": job.task_id,
                "job_name": task.as_ref().map(|t| t.input["job_name"].clone()),
                "started_at": task.as_ref().and_then(|t| t.started_at).map(|t| timestamp::format(&t)),
            })
        }
    };
    let uptime = (chrono::Utc::now() - runner.registered_at)
        .num_seconds()
        .max(0);
    ok(
        StatusCode::OK,
        json!({
            "id": runner.id,
            "name": runner.name,
            "status": if runner.online { "online" } else { "offline" },
            "busy": runner.busy,
            "current_job": current_job,
            "resource_usage": runner.resource_usage,
            "health": {
                "status": if runner.online { "healthy" } else { "unhealthy" },
                "last_heartbeat": timestamp::format(&runner.last_seen),
                "uptime": uptime,
            },
        }),
    )
}

pub(super) async fn github_status(h: &Hub, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let status = h.github().status().await?;
    let runners = h
        .state
        .engine
        .runners()
        .list_for(&principal, &RunnerFilter::default())
        .await
        .map(|list| list.summary.total)
        .ok();
    ok(
        StatusCode::OK,
        json!({
            "api_status": if status.enabled { "operational" } else { "disabled" },
            // taskhost calls no GitHub API: it is fed by webhooks.
            "rate_limit": null,
            "webhook_status": status.webhook_status,
            "last_sync": status.deliveries.last.map(|t| timestamp::format(&t)),
            "organization": status.organization,
            "repositories_tracked": status.repositories_tracked,
            "runners_registered": runners,
        }),
    )
}

pub(super) async fn repositories(h: &Hub, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let repositories = h.github().repositories(&principal).await?;
    let listed: Vec<Value> = repositories
        .iter()
        .map(|r| {
            json!({
                "id": r.repository.id,
                "name": r.repository.name,
                "full_name": r.repository.full_name,
                "private": r.repository.private,
                "active": true,
                "webhook_configured": true,
                "last_activity": timestamp::format(&r.repository.last_activity),
                "job_count": r.job_count,
            })
        })
        .collect();
    let total = listed.len();
    ok(
        StatusCode::OK,
        json!({
            "repositories": listed,
            "summary": {"total_repositories": total, "active_repositories": total, "webhooks_configured": total},
        }),
    )
}

pub(super) async fn sync(h: &Hub, headers: &HeaderMap, raw: &str) -> HubResult {
    h.caller(headers, raw).await?;
    Err(ApiError::validation(
        "repositories and jobs arrive by webhook (POST /api/v1/github/webhook); there is nothing to sync",
    )
    .into())
}

pub(super) async fn queues(h: &Hub, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let queues = h.state.engine.queues(&principal).await?;
    let listed: Vec<Value> = queues
        .iter()
        .map(|q| {
            json!({
                "name": q.plugin,
                "waiting": q.queued,
                "active": q.running,
                "completed": q.completed,
                "failed": q.failed,
                "delayed": q.scheduled,
                "paused": q.paused,
            })
        })
        .collect();
    let sum = |field: fn(&crate::engine::QueueInfo) -> u64| queues.iter().map(field).sum::<u64>();
    ok(
        StatusCode::OK,
        json!({
            "queues": listed,
            "summary": {
                "total_waiting": sum(|q| q.queued),
                "total_active": sum(|q| q.running),
                "total_completed": sum(|q| q.completed),
                "total_failed": sum(|q| q.failed),
            },
        }),
    )
}

pub(super) async fn pause(
    h: &Hub,
    name: &str,
    paused: bool,
    headers: &HeaderMap,
    raw: &str,
) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let queue = h
        .state
        .engine
        .set_queue_paused(&principal, name, paused)
        .await?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "message": format!("Queue {name} {}", if paused { "paused" } else { "resumed" }), "data": {"name": queue.plugin, "paused": queue.paused}}),
    ))
}

pub(super) async fn clear_failed(h: &Hub, name: &str, headers: &HeaderMap, raw: &str) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let removed = h.state.engine.clear_failed(&principal, name).await?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "message": format!("Cleared {removed} failed jobs from {name}"), "data": {"name": name, "removed": removed}}),
    ))
}

/// `POST /api/security/secret-scan`: a job's log (`job_id`) or submitted `content`, scanned by
/// the analysis plugin's detectors; answers once the scan ends (up to `scan_wait_s`).
pub(super) async fn secret_scan(h: &Hub, headers: &HeaderMap, raw: &str, body: &[u8]) -> HubResult {
    let principal = h.caller(headers, raw).await?;
    let fields = object(body)?;
    let engine = &h.state.engine;
    let job_id = fields.get("job_id").and_then(Value::as_str);
    let content = fields
        .get("content")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty());
    let scan = match (content, job_id) {
        (Some(content), _) => {
            let name = job_id.map_or_else(|| "content".to_owned(), |id| format!("log of {id}"));
            let mut labels = std::collections::BTreeMap::new();
            if let Some(id) = job_id {
                labels.insert("scanned_task".to_owned(), id.to_owned());
            }
            engine
                .create(
                    &principal,
                    NewTask {
                        plugin: SCAN_PLUGIN.into(),
                        task_type: SCAN_TYPE.into(),
                        input: json!({"content": content, "name": name}),
                        labels,
                        ..NewTask::default()
                    },
                )
                .await?
        }
        (None, Some(id)) => engine.scan_log_for_secrets(&principal, id).await?,
        (None, None) => {
            return Err(ApiError::validation(
                "give content to scan, or the job_id whose log to scan",
            )
            .into());
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(h.config.scan_wait_s);
    let mut current: Task = scan;
    while !current.status.is_terminal() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        current = engine.get(&principal, &current.id).await?;
    }
    let result = current.result.clone().unwrap_or(Value::Null);
    ok(
        StatusCode::OK,
        json!({
            "scan_id": current.id,
            "job_id": job_id,
            "status": super::jobs::hub_status(&current),
            "scan_date": timestamp::format(&current.created_at),
            "secrets_found": result["count"],
            "findings": result["findings"],
            "lines_scanned": result["lines"],
            "error": current.error.as_ref().map(|e| e.message.clone()),
        }),
    )
}

/// The hub's `/health` (on its own listener): storage, runners and active jobs.
pub(super) async fn health(h: &Hub) -> HubResult {
    let engine = &h.state.engine;
    let storage = engine.event_feed().probe().await.is_ok() && engine.store_failure().is_none();
    let runners = engine.runners().list().await.unwrap_or_default();
    let online = runners.iter().filter(|r| r.online).count();
    let active = runners.iter().map(|r| r.running_jobs.len()).sum::<usize>();
    let healthy = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    let body = json!({
        "status": if storage { "healthy" } else { "unhealthy" },
        "timestamp": now(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": engine.uptime().as_secs(),
        "services": {
            "database": healthy(storage),
            "github_api": if h.state.config.github.enabled { "webhooks" } else { "disabled" },
        },
        "metrics": {"active_jobs": active, "total_runners": runners.len(), "online_runners": online},
    });
    let status = if storage {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, body))
}
