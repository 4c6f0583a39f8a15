//! TeamCache's API gateway (seed 004) on the engine: `POST /api/v1/cache/jobs` starts a warm
//! of the bundled `cache` plugin, `GET /api/v1/cache/jobs[/{id}]` shows its progress in the
//! gateway's shapes (file and size progress with readable sizes, throughput), `DELETE`
//! cancels. Errors are the gateway's `{"success": false, "error": "…"}`.
//!
//! The gateway knew a job's totals at creation, from its file index. The warm learns them by
//! scanning, which it reports first; the create reply waits for that report (up to
//! `scan_wait_ms`) and carries `null` totals if the scan has not finished by then.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{caller, request_parts};
use crate::api::{ApiError, AppState, json_reply};
use crate::auth::{ImportedKey, Principal};
use crate::engine::{EngineError, NewTask};
use crate::model::{Task, TaskStatus, timestamp};
use crate::storage::TaskQuery;

/// `[compat.teamcache]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamCacheConfig {
    pub enabled: bool,
    /// The gateway's own address (`0.0.0.0:8095`); without it the routes are on the main
    /// listener, except `GET /api/v1/health`, which stays the host's there.
    pub listen: Option<SocketAddr>,
    /// `API_GATEWAY_KEY`, imported.
    pub api_keys: Vec<ImportedKey>,
    /// The plugin that warms (the bundled `cache`).
    pub plugin: String,
    /// How long a create waits for the scan's totals.
    pub scan_wait_ms: u64,
}

impl Default for TeamCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: None,
            api_keys: Vec::new(),
            plugin: "cache".into(),
            scan_wait_ms: 10_000,
        }
    }
}

super::facade_settings!(TeamCacheConfig);

const TASK_TYPE: &str = "warm";
/// Throughput older than this is not shown, as the gateway did.
const FRESH_THROUGHPUT: Duration = Duration::from_secs(10);

/// The gateway's sizes: binary units labelled KB, MB, GB, TB.
fn readable_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

fn seed_status(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued | TaskStatus::Scheduled | TaskStatus::Paused => "pending",
        TaskStatus::Running => "running",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
    }
}

/// The gateway's error: its status and `{"success": false, "error": text}`.
struct GatewayError(StatusCode, String);

impl From<ApiError> for GatewayError {
    fn from(e: ApiError) -> Self {
        let text = match e.code {
            "AUTHENTICATION_REQUIRED" => "Invalid or missing API key".to_owned(),
            "RATE_LIMIT_EXCEEDED" => "Too many requests, please try again later".to_owned(),
            "TASK_NOT_FOUND" => "Job not found".to_owned(),
            _ => e.message,
        };
        Self(e.status, text)
    }
}

impl From<EngineError> for GatewayError {
    fn from(e: EngineError) -> Self {
        ApiError::from(e).into()
    }
}

fn reply(result: Result<(StatusCode, Value), GatewayError>) -> Response {
    match result {
        Ok((status, body)) => json_reply(status, &body),
        Err(GatewayError(status, error)) => {
            json_reply(status, &json!({"success": false, "error": error}))
        }
    }
}

#[derive(Clone)]
struct Gateway {
    state: AppState,
    plugin: String,
    scan_wait: Duration,
}

impl Gateway {
    async fn caller(&self, headers: &HeaderMap, raw: &str) -> Result<Principal, GatewayError> {
        Ok(caller(&self.state, headers, raw).await?)
    }

    /// A job of this gateway: a task of its plugin the caller may read.
    async fn job(&self, principal: &Principal, id: &str) -> Result<Task, GatewayError> {
        let valid = (1..=128).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
        if !valid {
            return Err(GatewayError(
                StatusCode::BAD_REQUEST,
                "Invalid job ID format".into(),
            ));
        }
        let task = self.state.engine.get(principal, id).await?;
        if task.plugin != self.plugin {
            return Err(GatewayError(StatusCode::NOT_FOUND, "Job not found".into()));
        }
        Ok(task)
    }
}

fn metric(task: &Task, name: &str) -> Option<u64> {
    task.progress
        .metrics
        .get(name)
        .map(|v| v.max(0.0).round() as u64)
}

fn result_u64(task: &Task, pointer: &str) -> Option<u64> {
    task.result.as_ref()?.pointer(pointer)?.as_u64()
}

/// Files and bytes as the job stands: from the result once it has one, else the progress.
struct Figures {
    files_total: Option<u64>,
    files_completed: u64,
    files_failed: u64,
    bytes_total: Option<u64>,
    bytes_completed: u64,
}

fn figures(task: &Task) -> Figures {
    Figures {
        files_total: result_u64(task, "/totalFiles").or_else(|| metric(task, "files_total")),
        files_completed: result_u64(task, "/completedFiles")
            .or_else(|| metric(task, "files_completed"))
            .unwrap_or(0),
        files_failed: result_u64(task, "/failedFiles")
            .or_else(|| metric(task, "files_failed"))
            .unwrap_or(0),
        bytes_total: result_u64(task, "/totalSize/bytes").or_else(|| metric(task, "bytes_total")),
        bytes_completed: result_u64(task, "/completedSize/bytes")
            .or_else(|| metric(task, "bytes_done"))
            .unwrap_or(0),
    }
}

fn percent(done: u64, total: Option<u64>) -> f64 {
    match total {
        Some(0) => 100.0,
        Some(total) => ((done.min(total) as f64 * 1000.0 / total as f64).round()) / 10.0,
        None => 0.0,
    }
}

fn time(at: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    at.map_or(Value::Null, |t| json!(timestamp::format(&t)))
}

fn throughput(task: &Task) -> Value {
    let fresh = task.status == TaskStatus::Running
        && (chrono::Utc::now() - task.updated_at)
            .to_std()
            .is_ok_and(|age| age < FRESH_THROUGHPUT);
    match task.progress.metrics.get("throughput_mbps") {
        Some(mbps) if fresh => json!({
            "mbps": mbps,
            "readable": format!("{mbps:.1} MB/s"),
            "timestamp": timestamp::format(&task.updated_at),
        }),
        _ => Value::Null,
    }
}

fn error_text(task: &Task) -> Value {
    task.error
        .as_ref()
        .map_or(Value::Null, |e| json!(format!("{}: {}", e.code, e.message)))
}

fn job_view(task: &Task) -> Value {
    let f = figures(task);
    let files_percentage = percent(f.files_completed + f.files_failed, f.files_total);
    let size_percentage = percent(f.bytes_completed, f.bytes_total);
    json!({
        "id": task.id,
        "status": seed_status(task.status),
        "totalFiles": f.files_total,
        "progress": {
            "files": {
                "completed": f.files_completed,
                "failed": f.files_failed,
                "total": f.files_total,
                "percentage": files_percentage,
            },
            "size": {
                "completedBytes": f.bytes_completed,
                "totalBytes": f.bytes_total,
                "completedReadable": readable_size(f.bytes_completed),
                "totalReadable": f.bytes_total.map(readable_size),
                "percentage": size_percentage,
            },
            "percentage": ((files_percentage + size_percentage) / 2.0 * 10.0).round() / 10.0,
        },
        "throughput": throughput(task),
        "createdAt": time(Some(task.created_at)),
        "startedAt": time(task.started_at),
        "completedAt": time(task.finished_at),
        "error": error_text(task),
    })
}

fn list_item(task: &Task) -> Value {
    let f = figures(task);
    json!({
        "id": task.id,
        "status": seed_status(task.status),
        "totalFiles": f.files_total,
        "totalSizeBytes": f.bytes_total,
        "totalSizeReadable": f.bytes_total.map(readable_size),
        "completedFiles": f.files_completed,
        "completedSizeBytes": f.bytes_completed,
        "completedSizeReadable": readable_size(f.bytes_completed),
        "createdAt": time(Some(task.created_at)),
        "completedAt": time(task.finished_at),
        "error": error_text(task),
    })
}

async fn create(
    g: &Gateway,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), GatewayError> {
    let principal = g.caller(headers, raw).await?;
    let body: Value = crate::api::parse_json(body).map_err(GatewayError::from)?;
    let Some(fields) = body.as_object() else {
        return Err(GatewayError(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object".into(),
        ));
    };
    // What the warm takes; anything else the gateway's clients send is ignored, as it was.
    let mut input = serde_json::Map::new();
    for key in ["files", "directories", "recursive"] {
        if let Some(value) = fields.get(key).filter(|v| !v.is_null()) {
            input.insert(key.to_owned(), value.clone());
        }
    }
    let empty = |key: &str| {
        input
            .get(key)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    };
    if empty("files") && empty("directories") {
        return Err(GatewayError(
            StatusCode::BAD_REQUEST,
            "files or directories must be given".into(),
        ));
    }
    let new = NewTask {
        plugin: g.plugin.clone(),
        task_type: TASK_TYPE.into(),
        input: Value::Object(input),
        ..NewTask::default()
    };
    let task = g.state.engine.create(&principal, new).await?;
    let scanned = wait_for_totals(g, &principal, &task.id).await;
    let f = figures(scanned.as_ref().unwrap_or(&task));
    let status = scanned.as_ref().map_or(task.status, |t| t.status);
    if let Some(failed) = scanned.as_ref().filter(|t| t.status == TaskStatus::Failed) {
        // A job refused at its start (a path outside the cache) is the gateway's 400.
        if failed
            .error
            .as_ref()
            .is_some_and(|e| e.code == "INVALID_INPUT")
        {
            let message = failed
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            return Err(GatewayError(StatusCode::BAD_REQUEST, message));
        }
    }
    Ok((
        StatusCode::CREATED,
        json!({
            "success": true,
            "jobId": task.id,
            "status": seed_status(status),
            "totalFiles": f.files_total,
            "totalSize": f.bytes_total.map(|bytes| json!({"bytes": bytes, "readable": readable_size(bytes)})),
            "message": "Cache job created successfully",
            "createdAt": timestamp::format(&task.created_at),
        }),
    ))
}

/// The job once its scan has reported totals (or it has ended), within the wait.
async fn wait_for_totals(g: &Gateway, principal: &Principal, id: &str) -> Option<Task> {
    let deadline = tokio::time::Instant::now() + g.scan_wait;
    loop {
        let task = g.state.engine.get(principal, id).await.ok()?;
        if task.status.is_terminal() || figures(&task).files_total.is_some() {
            return Some(task);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn get(
    g: &Gateway,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), GatewayError> {
    let principal = g.caller(headers, raw).await?;
    let task = g.job(&principal, id).await?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "job": job_view(&task)}),
    ))
}

async fn list(
    g: &Gateway,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), GatewayError> {
    let principal = g.caller(headers, raw).await?;
    let query = TaskQuery {
        plugin: Some(g.plugin.clone()),
        task_type: Some(TASK_TYPE.into()),
        limit: 100,
        ..TaskQuery::default()
    };
    let (tasks, total) = g.state.engine.list(&principal, query).await?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "jobs": tasks.iter().map(list_item).collect::<Vec<_>>(), "total": total}),
    ))
}

async fn cancel(
    g: &Gateway,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), GatewayError> {
    let principal = g.caller(headers, raw).await?;
    g.job(&principal, id).await?;
    g.state.engine.cancel(&principal, id).await?;
    Ok((
        StatusCode::OK,
        json!({"success": true, "message": "Job cancelled successfully"}),
    ))
}

/// The gateway's public health: whether the store answers.
async fn health(g: &Gateway) -> Response {
    let connected = g.state.engine.event_feed().probe().await.is_ok()
        && g.state.engine.store_failure().is_none();
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(
        status,
        &json!({
            "success": connected,
            "status": if connected { "healthy" } else { "unhealthy" },
            "service": "api-gateway",
            "database": if connected { "connected" } else { "disconnected" },
            "timestamp": timestamp::format(&chrono::Utc::now()),
        }),
    )
}

/// Every route of the gateway; `with_health` adds its public `/api/v1/health` (own listener
/// only: on the main one that path is the host's).
pub fn routes(state: AppState, with_health: bool) -> BoxedFilter<(Response,)> {
    let config = &state.config.compat.teamcache;
    let gateway = Gateway {
        plugin: config.plugin.clone(),
        scan_wait: Duration::from_millis(config.scan_wait_ms),
        state: state.clone(),
    };
    let limit = state.config.max_body_bytes;
    let with = warp::any().map(move || gateway.clone());
    let jobs = warp::path!("api" / "v1" / "cache" / "jobs");
    let job = warp::path!("api" / "v1" / "cache" / "jobs" / String);
    let create = jobs
        .and(warp::post())
        .and(request_parts())
        .and(crate::api::body(limit))
        .and(with.clone())
        .then(
            |headers: HeaderMap, raw: String, body: bytes::Bytes, g: Gateway| async move {
                reply(create(&g, &headers, &raw, &body).await)
            },
        );
    let list = jobs
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|headers: HeaderMap, raw: String, g: Gateway| async move {
            reply(list(&g, &headers, &raw).await)
        });
    let get = job
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, headers: HeaderMap, raw: String, g: Gateway| async move {
                reply(get(&g, &id, &headers, &raw).await)
            },
        );
    let cancel = job
        .and(warp::delete())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, headers: HeaderMap, raw: String, g: Gateway| async move {
                reply(cancel(&g, &id, &headers, &raw).await)
            },
        );
    let routes = create.or(list).unify().or(get).unify().or(cancel).unify();
    if with_health {
        let health = warp::path!("api" / "v1" / "health")
            .and(warp::get())
            .and(with)
            .then(|g: Gateway| async move { health(&g).await });
        routes.or(health).unify().boxed()
    } else {
        routes.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_the_gateway_wrote_them() {
        assert_eq!(readable_size(512), "512 B");
        assert_eq!(readable_size(1_013_645_672), "966.69 MB");
        assert_eq!(readable_size(85_899_345_920), "80.00 GB");
        assert_eq!(percent(15, Some(20)), 75.0);
        assert_eq!(percent(0, Some(0)), 100.0);
        assert_eq!(percent(3, None), 0.0);
    }
}
