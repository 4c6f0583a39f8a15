//! The build/analysis service's API (seed 001) on the engine: `/auth/login`, builds
//! (`/api/build/`) onto the bundled `build` plugin, analyses (`/api/analysis/`) onto the
//! `analysis` plugin, the health probes under `/api/health/`, and progress streams
//! (`/api/ws/build/{id}`, `/api/ws/analysis/{id}`). Errors are the service's
//! `{"error": type, "detail", "status_code", "timestamp"}`.
//!
//! A build request's `parameters` beyond what the build plugin takes (`database`,
//! `include_tests`…) and its other top-level fields are kept with the task under
//! `parameters.extra`; an application framework (`fastapi`) builds with its toolchain, and no
//! framework at all lets the runner detect it. The service answered an analysis at once; the
//! façade waits for the analysis task (up to `analysis_wait_s`) and answers with its result.

mod stream;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{caller, request_parts};
use crate::api::{ApiError, AppState, json_reply};
use crate::auth::{ImportedKey, Principal};
use crate::engine::NewTask;
use crate::model::{Task, TaskStatus, timestamp};
use crate::storage::TaskQuery;

/// `[compat.build_analysis]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildAnalysisConfig {
    pub enabled: bool,
    /// The service's own address (`0.0.0.0:8000`); without it the routes are on the main
    /// listener.
    pub listen: Option<SocketAddr>,
    pub api_keys: Vec<ImportedKey>,
    /// The plugins builds and analyses run on.
    pub build_plugin: String,
    pub analysis_plugin: String,
    /// How long `POST /api/analysis/` waits for the analysis to finish.
    pub analysis_wait_s: u64,
}

impl Default for BuildAnalysisConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: None,
            api_keys: Vec::new(),
            build_plugin: "build".into(),
            analysis_plugin: "analysis".into(),
            analysis_wait_s: 60,
        }
    }
}

super::facade_settings!(BuildAnalysisConfig);

/// The build parameters the build plugin takes; the rest go to `parameters.extra`.
const BUILD_PARAMETERS: &[&str] = &[
    "framework",
    "source",
    "labels",
    "setup",
    "steps",
    "test_args",
    "test_timeout_s",
    "coverage",
    "env",
    "artifacts",
    "timeout_s",
];

/// The service's error body.
struct ServiceError(ApiError);

impl From<ApiError> for ServiceError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<crate::engine::EngineError> for ServiceError {
    fn from(e: crate::engine::EngineError) -> Self {
        Self(e.into())
    }
}

fn error_body(e: &ApiError) -> Value {
    json!({
        "error": e.code.to_ascii_lowercase(),
        "detail": e.message,
        "status_code": e.status.as_u16(),
        "timestamp": now(),
    })
}

fn reply(result: Result<(StatusCode, Value), ServiceError>) -> Response {
    match result {
        Ok((status, body)) => json_reply(status, &body),
        Err(ServiceError(e)) => {
            let mut response = json_reply(e.status, &error_body(&e));
            if let Some(seconds) = e.retry_after
                && let Ok(value) = warp::http::HeaderValue::from_str(&seconds.to_string())
            {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    }
}

fn now() -> String {
    timestamp::format(&chrono::Utc::now())
}

fn seed_status(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Queued | TaskStatus::Scheduled | TaskStatus::Paused => "initializing",
        TaskStatus::Running => "running",
        TaskStatus::Completed => "completed",
        TaskStatus::Failed => "failed",
        TaskStatus::Cancelled => "cancelled",
    }
}

use super::integer_progress as seed_progress;

/// A failed build's results: the test counts it reported before failing.
fn results(task: &Task) -> Value {
    if let Some(result) = &task.result {
        return result.clone();
    }
    let metric = |name: &str| task.progress.metrics.get(name).map(|n| *n as u64);
    match (metric("tests_passed"), metric("tests_failed")) {
        (None, None) => Value::Null,
        (passed, failed) => json!({"tests_passed": passed, "tests_failed": failed}),
    }
}

fn error_text(task: &Task) -> Value {
    task.error
        .as_ref()
        .map_or(Value::Null, |e| json!(e.message))
}

fn build_view(task: &Task) -> Value {
    json!({
        "task_id": task.id,
        "project_name": task.input["project_name"],
        "status": seed_status(task.status),
        "progress": seed_progress(task),
        "created_at": timestamp::format(&task.created_at),
        "created_by": task.owner,
        "goal": task.input["goal"],
        "results": results(task),
        "error": error_text(task),
    })
}

/// An analysis as the service answered it: the analysis result's fields at the top level.
fn analysis_view(task: &Task) -> Value {
    let mut view = json!({
        "analysis_id": task.id,
        "project_name": task.input["project_name"],
        "timestamp": timestamp::format(&task.finished_at.unwrap_or(task.created_at)),
        "performed_by": task.owner,
        "status": seed_status(task.status),
        "error": error_text(task),
    });
    if let (Some(view), Some(Value::Object(result))) = (view.as_object_mut(), &task.result) {
        for (key, value) in result {
            view.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    view
}

#[derive(Clone)]
struct Service {
    state: AppState,
    build_plugin: String,
    analysis_plugin: String,
    analysis_wait: Duration,
}

impl Service {
    async fn caller(&self, headers: &HeaderMap, raw: &str) -> Result<Principal, ServiceError> {
        Ok(caller(&self.state, headers, raw).await?)
    }

    /// A task of `plugin` the caller may read.
    async fn task_of(
        &self,
        principal: &Principal,
        plugin: &str,
        id: &str,
    ) -> Result<Task, ServiceError> {
        let task = self.state.engine.get(principal, id).await?;
        if task.plugin != plugin {
            return Err(
                ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no task {id}")).into(),
            );
        }
        Ok(task)
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ServiceError> {
    match crate::api::parse_json::<Value>(body)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::validation("the body must be a JSON object").into()),
    }
}

/// The build plugin's input from the service's request.
fn build_input(mut fields: Map<String, Value>) -> Result<Value, ServiceError> {
    let mut parameters = match fields.remove("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(parameters)) => parameters,
        Some(_) => return Err(ApiError::validation("parameters must be an object").into()),
    };
    let mut extra = match parameters.remove("extra") {
        Some(Value::Object(extra)) => extra,
        _ => Map::new(),
    };
    let mut taken = Map::new();
    for (key, value) in parameters {
        if BUILD_PARAMETERS.contains(&key.as_str()) {
            taken.insert(key, value);
        } else {
            extra.insert(key, value);
        }
    }
    let mut input = Map::new();
    for key in ["project_name", "goal"] {
        if let Some(value) = fields.remove(key) {
            input.insert(key.to_owned(), value);
        }
    }
    // Other top-level fields are kept too, beside the extra parameters.
    extra.extend(fields);
    if !extra.is_empty() {
        taken.insert("extra".into(), Value::Object(extra));
    }
    input.insert("parameters".into(), Value::Object(taken));
    Ok(Value::Object(input))
}

async fn create_build(
    s: &Service,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), ServiceError> {
    let principal = s.caller(headers, raw).await?;
    let input = build_input(object(body)?)?;
    let new = NewTask {
        plugin: s.build_plugin.clone(),
        task_type: "build".into(),
        input,
        ..NewTask::default()
    };
    let task = s.state.engine.create(&principal, new).await?;
    Ok((
        StatusCode::ACCEPTED,
        json!({"task_id": task.id, "status": seed_status(task.status), "message": "Build task created successfully"}),
    ))
}

async fn get_build(
    s: &Service,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), ServiceError> {
    let principal = s.caller(headers, raw).await?;
    let task = s.task_of(&principal, &s.build_plugin, id).await?;
    Ok((StatusCode::OK, build_view(&task)))
}

async fn list_builds(
    s: &Service,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), ServiceError> {
    let principal = s.caller(headers, raw).await?;
    let query = crate::api::Query::parse(raw, &["limit", "offset", "token"], false)?;
    let (limit, offset) = (query.limit()?, query.offset()?);
    let listing = TaskQuery {
        plugin: Some(s.build_plugin.clone()),
        limit,
        offset,
        ..TaskQuery::default()
    };
    let (tasks, total) = s.state.engine.list(&principal, listing).await?;
    Ok((
        StatusCode::OK,
        json!({"total": total, "limit": limit, "offset": offset, "builds": tasks.iter().map(build_view).collect::<Vec<_>>()}),
    ))
}

async fn cancel_build(
    s: &Service,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), ServiceError> {
    let principal = s.caller(headers, raw).await?;
    s.task_of(&principal, &s.build_plugin, id).await?;
    s.state.engine.cancel(&principal, id).await?;
    Ok((
        StatusCode::OK,
        json!({"message": "Build task cancelled successfully"}),
    ))
}

async fn create_analysis(
    s: &Service,
    headers: &HeaderMap,
    raw: &str,
    body: &[u8],
) -> Result<(StatusCode, Value), ServiceError> {
    let principal = s.caller(headers, raw).await?;
    let fields = object(body)?;
    // What the analysis takes; anything else the service's clients send is ignored.
    let input: Map<String, Value> = fields
        .into_iter()
        .filter(|(key, _)| matches!(key.as_str(), "project_name" | "analysis_types" | "exclude"))
        .collect();
    let new = NewTask {
        plugin: s.analysis_plugin.clone(),
        task_type: "analyze".into(),
        input: Value::Object(input),
        ..NewTask::default()
    };
    let task = s.state.engine.create(&principal, new).await?;
    let deadline = tokio::time::Instant::now() + s.analysis_wait;
    let mut current = task;
    while !current.status.is_terminal() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        current = s.state.engine.get(&principal, &current.id).await?;
    }
    Ok((StatusCode::ACCEPTED, analysis_view(&current)))
}

async fn get_analysis(
    s: &Service,
    id: &str,
    headers: &HeaderMap,
    raw: &str,
) -> Result<(StatusCode, Value), ServiceError> {
    let principal = s.caller(headers, raw).await?;
    let task = s.task_of(&principal, &s.analysis_plugin, id).await?;
    Ok((StatusCode::OK, analysis_view(&task)))
}

async fn login(s: &Service, body: &[u8]) -> Result<(StatusCode, Value), ServiceError> {
    let result = crate::api::log_in(&s.state, body).await?;
    Ok((StatusCode::OK, json!(result)))
}

async fn health_status(s: &Service) -> Result<(StatusCode, Value), ServiceError> {
    let engine = &s.state.engine;
    let storage = engine.event_feed().probe().await.is_ok() && engine.store_failure().is_none();
    let uptime = engine.uptime().as_secs_f64();
    let requests = s
        .state
        .http_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let health = |ok: bool| if ok { "healthy" } else { "unhealthy" };
    Ok((
        if storage {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if storage { "operational" } else { "degraded" },
            "timestamp": now(),
            "version": env!("CARGO_PKG_VERSION"),
            "components": {
                "api": "healthy",
                "database": health(storage),
                "plugins": health(engine.registry().get(&s.build_plugin).is_some()),
            },
            "metrics": {
                "uptime_seconds": uptime.round() as u64,
                "requests_total": requests,
                "requests_per_second": if uptime > 0.0 { ((requests as f64 / uptime) * 100.0).round() / 100.0 } else { 0.0 },
            },
        }),
    ))
}

/// Every route of the service.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let config = &state.config.compat.build_analysis;
    let service = Service {
        build_plugin: config.build_plugin.clone(),
        analysis_plugin: config.analysis_plugin.clone(),
        analysis_wait: Duration::from_secs(config.analysis_wait_s),
        state: state.clone(),
    };
    let limit = state.config.max_body_bytes;
    let with = warp::any().map(move || service.clone());
    // The service's paths take a trailing slash or not.
    let slash = || {
        warp::path::tail()
            .and_then(|tail: warp::path::Tail| async move {
                if tail.as_str().is_empty() {
                    Ok(())
                } else {
                    Err(warp::reject::not_found())
                }
            })
            .untuple_one()
    };
    let login = warp::path!("auth" / "login")
        .and(warp::post())
        .and(crate::api::body(limit))
        .and(with.clone())
        .then(|body: bytes::Bytes, s: Service| async move { reply(login(&s, &body).await) });
    let create_build = warp::path!("api" / "build" / ..)
        .and(slash())
        .and(warp::post())
        .and(request_parts())
        .and(crate::api::body(limit))
        .and(with.clone())
        .then(
            |h: HeaderMap, q: String, body: bytes::Bytes, s: Service| async move {
                reply(create_build(&s, &h, &q, &body).await)
            },
        );
    let list_builds =
        warp::path!("api" / "build" / ..)
            .and(slash())
            .and(warp::get())
            .and(request_parts())
            .and(with.clone())
            .then(|h: HeaderMap, q: String, s: Service| async move {
                reply(list_builds(&s, &h, &q).await)
            });
    let get_build = warp::path!("api" / "build" / String)
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, s: Service| async move {
                reply(get_build(&s, &id, &h, &q).await)
            },
        );
    let cancel_build = warp::path!("api" / "build" / String)
        .and(warp::delete())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, s: Service| async move {
                reply(cancel_build(&s, &id, &h, &q).await)
            },
        );
    let create_analysis = warp::path!("api" / "analysis" / ..)
        .and(slash())
        .and(warp::post())
        .and(request_parts())
        .and(crate::api::body(limit))
        .and(with.clone())
        .then(
            |h: HeaderMap, q: String, body: bytes::Bytes, s: Service| async move {
                reply(create_analysis(&s, &h, &q, &body).await)
            },
        );
    let get_analysis = warp::path!("api" / "analysis" / String)
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, s: Service| async move {
                reply(get_analysis(&s, &id, &h, &q).await)
            },
        );
    let health = warp::path!("api" / "health" / ..)
        .and(slash())
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "healthy", "timestamp": now(), "version": env!("CARGO_PKG_VERSION")})));
    let live = warp::path!("api" / "health" / "live")
        .and(warp::get())
        .map(|| {
            json_reply(
                StatusCode::OK,
                &json!({"status": "alive", "timestamp": now()}),
            )
        });
    let ready = warp::path!("api" / "health" / "ready")
        .and(warp::get())
        .and(with.clone())
        .map(|s: Service| {
            let ready = s.state.ready.load(std::sync::atomic::Ordering::Acquire)
                && s.state.engine.store_failure().is_none();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(
                status,
                &json!({"status": if ready { "ready" } else { "not_ready" }, "timestamp": now()}),
            )
        });
    let status = warp::path!("api" / "health" / "status")
        .and(warp::get())
        .and(with.clone())
        .then(|s: Service| async move { reply(health_status(&s).await) });
    let ws = warp::path!("api" / "ws" / String / String)
        .and(warp::get())
        .and(request_parts())
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .and(with)
        .then(
            |kind: String, id: String, h: HeaderMap, q: String, ws, s: Service| async move {
                match stream::open(&s, &kind, &id, &h, &q, ws).await {
                    Ok(response) => response,
                    Err(e) => reply(Err(e)),
                }
            },
        );
    login
        .or(create_build)
        .unify()
        .or(list_builds)
        .unify()
        .or(get_build)
        .unify()
        .or(cancel_build)
        .unify()
        .or(create_analysis)
        .unify()
        .or(get_analysis)
        .unify()
        .or(live)
        .unify()
        .or(ready)
        .unify()
        .or(status)
        .unify()
        .or(health)
        .unify()
        .or(ws)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_the_build_does_not_take_are_kept_under_extra() {
        let request = json!({
            "project_name": "my-project", "goal": "Add auth", "priority": 3,
            "parameters": {"framework": "fastapi", "database": "postgresql", "include_tests": true},
        });
        let Value::Object(fields) = request else {
            unreachable!()
        };
        let input = build_input(fields).ok().expect("mapped");
        assert_eq!(
            input,
            json!({
                "project_name": "my-project", "goal": "Add auth",
                "parameters": {"framework": "fastapi", "extra": {"database": "postgresql", "include_tests": true, "priority": 3}},
            })
        );
    }
}
