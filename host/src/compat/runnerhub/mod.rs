//! GitHub-RunnerHub's API (seed 003) on the engine: `/api/auth/login`, jobs (`/api/jobs…`)
//! onto the `runner` plugin's `delegate` tasks, the fleet (`/api/runners…`), GitHub
//! (`/api/github/…`, fed by the host's webhook receiver), secret scans
//! (`/api/security/secret-scan`), queues (`/api/queues/…`), `/health` and the `/api/ws` event
//! stream. Replies are the hub's `{"success": true, "data": …}`; errors its
//! `{"success": false, "error": {code, message, details, timestamp, request_id}}`.
//!
//! A delegated job without `steps` runs the operator's `job_steps` (by default those of
//! `[github]`); fields the runner plugin does not take are kept in the job's `metadata`.

mod fleet;
mod jobs;
mod stream;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{caller, request_parts};
use crate::api::{ApiError, AppState, json_reply};
use crate::auth::{ImportedKey, Principal, Role};
use crate::model::timestamp;

/// `[compat.runnerhub]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunnerHubConfig {
    pub enabled: bool,
    /// The hub's own address (`0.0.0.0:3001`); without it the routes are on the main listener.
    pub listen: Option<SocketAddr>,
    pub api_keys: Vec<ImportedKey>,
    /// The plugin and task type jobs are delegated through.
    pub plugin: String,
    pub task_type: String,
    /// What a runner runs for a job delegated without `steps`; empty: `[github] steps`.
    pub job_steps: Vec<Value>,
    /// The principal a credential-less `/api/ws` connection acts as (the hub's documented
    /// snippet sends none). Its frames carry only job ids, statuses and times. Unset: the
    /// stream needs credentials like every other route.
    pub anonymous_stream: Option<StreamPrincipal>,
    /// How long `POST /api/security/secret-scan` waits for the scan.
    pub scan_wait_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamPrincipal {
    pub user: String,
    pub role: Role,
}

impl Default for RunnerHubConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: None,
            api_keys: Vec::new(),
            plugin: "runner".into(),
            task_type: "delegate".into(),
            job_steps: Vec::new(),
            anonymous_stream: None,
            scan_wait_s: 30,
        }
    }
}

super::facade_settings!(RunnerHubConfig);

/// A hub error: an API error in the hub's envelope and codes.
pub(super) struct HubError(ApiError);

impl<E: Into<ApiError>> From<E> for HubError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

type HubResult = Result<(StatusCode, Value), HubError>;

/// The hub's name for a host error code.
fn hub_code(code: &str) -> &str {
    match code {
        "FORBIDDEN" => "AUTHORIZATION_FAILED",
        "NOT_FOUND" | "TASK_NOT_FOUND" | "RUNNER_NOT_FOUND" | "JOB_NOT_FOUND" => {
            "RESOURCE_NOT_FOUND"
        }
        other => other,
    }
}

fn now() -> String {
    timestamp::format(&chrono::Utc::now())
}

fn reply(result: HubResult) -> Response {
    match result {
        Ok((status, body)) => json_reply(status, &body),
        Err(HubError(e)) => {
            let body = json!({
                "success": false,
                "error": {
                    "code": hub_code(e.code),
                    "message": e.message,
                    "details": e.details,
                    "timestamp": now(),
                    "request_id": crate::api::request::id(),
                },
            });
            let mut response = json_reply(e.status, &body);
            if let Some(seconds) = e.retry_after
                && let Ok(value) = warp::http::HeaderValue::from_str(&seconds.to_string())
            {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    }
}

/// `{"success": true, "data": data}`.
fn ok(status: StatusCode, data: Value) -> HubResult {
    Ok((status, json!({"success": true, "data": data})))
}

fn not_found(what: impl std::fmt::Display) -> HubError {
    HubError(ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("no {what}"),
    ))
}

/// A query parameter, lenient: parameters the façade does not use are ignored.
fn param(raw: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, HubError> {
    match crate::api::parse_json::<Value>(body)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::validation("the body must be a JSON object").into()),
    }
}

#[derive(Clone)]
pub(super) struct Hub {
    state: AppState,
    config: RunnerHubConfig,
}

impl Hub {
    async fn caller(&self, headers: &HeaderMap, raw: &str) -> Result<Principal, HubError> {
        Ok(caller(&self.state, headers, raw).await?)
    }

    fn github(&self) -> crate::github::Github {
        crate::github::Github::new(self.state.config.github.clone(), self.state.engine.clone())
    }

    /// The steps a job delegated without its own runs.
    fn default_steps(&self) -> &[Value] {
        if self.config.job_steps.is_empty() {
            &self.state.config.github.steps
        } else {
            &self.config.job_steps
        }
    }
}

async fn login(h: &Hub, body: &[u8]) -> HubResult {
    let result = crate::api::log_in(&h.state, body).await?;
    let seconds = result.expires_in;
    let expires = if seconds % 3600 == 0 {
        format!("{}h", seconds / 3600)
    } else {
        format!("{seconds}s")
    };
    let username = result.user["username"].clone();
    Ok((
        StatusCode::OK,
        json!({
            "success": true,
            "token": result.access_token,
            "expiresIn": expires,
            "user": {"id": username, "username": username, "role": result.user["role"]},
        }),
    ))
}

/// A route whose handler takes the request parts (and the path's one parameter).
macro_rules! hub_route {
    ($path:expr, $method:expr, $with:expr, |$h:ident, $headers:ident, $raw:ident| $body:expr) => {
        $path
            .and($method)
            .and(request_parts())
            .and($with.clone())
            .then(|$headers: HeaderMap, $raw: String, $h: Hub| async move { $body })
            .boxed()
    };
    ($path:expr, $method:expr, $with:expr, |$h:ident, $id:ident, $headers:ident, $raw:ident| $body:expr) => {
        $path
            .and($method)
            .and(request_parts())
            .and($with.clone())
            .then(|$id: String, $headers: HeaderMap, $raw: String, $h: Hub| async move { $body })
            .boxed()
    };
}

/// Every route of the hub; `own_listener` adds its `/health` (on the main listener the
/// host's own wins).
pub fn routes(state: AppState, own_listener: bool) -> BoxedFilter<(Response,)> {
    let hub = Hub {
        config: state.config.compat.runnerhub.clone(),
        state: state.clone(),
    };
    let limit = state.config.max_body_bytes;
    let with = warp::any().map(move || hub.clone());
    let body = move || crate::api::body(limit);

    let login = warp::path!("api" / "auth" / "login")
        .and(warp::post())
        .and(body())
        .and(with.clone())
        .then(|b: bytes::Bytes, h: Hub| async move { reply(login(&h, &b).await) })
        .boxed();
    let delegate = warp::path!("api" / "jobs" / "delegate")
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |headers: HeaderMap, raw: String, b: bytes::Bytes, h: Hub| async move {
                reply(jobs::delegate(&h, &headers, &raw, &b).await)
            },
        )
        .boxed();
    let set_status = warp::path!("api" / "jobs" / String / "status")
        .and(warp::put())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |id: String, headers: HeaderMap, raw: String, b: bytes::Bytes, h: Hub| async move {
                reply(jobs::set_status(&h, &id, &headers, &raw, &b).await)
            },
        )
        .boxed();
    let register = warp::path!("api" / "runners")
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |headers: HeaderMap, raw: String, b: bytes::Bytes, h: Hub| async move {
                reply(fleet::register(&h, &headers, &raw, &b).await)
            },
        )
        .boxed();
    let secret_scan = warp::path!("api" / "security" / "secret-scan")
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |headers: HeaderMap, raw: String, b: bytes::Bytes, h: Hub| async move {
                reply(fleet::secret_scan(&h, &headers, &raw, &b).await)
            },
        )
        .boxed();
    let list_jobs = hub_route!(
        warp::path!("api" / "jobs"),
        warp::get(),
        with,
        |h, headers, raw| reply(jobs::list(&h, &headers, &raw).await)
    );
    let get_job = hub_route!(
        warp::path!("api" / "jobs" / String),
        warp::get(),
        with,
        |h, id, headers, raw| reply(jobs::get(&h, &id, &headers, &raw).await)
    );
    let job_logs = hub_route!(
        warp::path!("api" / "jobs" / String / "logs"),
        warp::get(),
        with,
        |h, id, headers, raw| jobs::logs(&h, &id, &headers, &raw).await
    );
    let runners = hub_route!(
        warp::path!("api" / "runners"),
        warp::get(),
        with,
        |h, headers, raw| reply(fleet::runners(&h, &headers, &raw).await)
    );
    let runner_status = hub_route!(
        warp::path!("api" / "runners" / String / "status"),
        warp::get(),
        with,
        |h, id, headers, raw| reply(fleet::runner_status(&h, &id, &headers, &raw).await)
    );
    let github_status = hub_route!(
        warp::path!("api" / "github" / "status"),
        warp::get(),
        with,
        |h, headers, raw| reply(fleet::github_status(&h, &headers, &raw).await)
    );
    let repositories = hub_route!(
        warp::path!("api" / "github" / "repositories"),
        warp::get(),
        with,
        |h, headers, raw| reply(fleet::repositories(&h, &headers, &raw).await)
    );
    let sync = hub_route!(
        warp::path!("api" / "github" / "sync"),
        warp::post(),
        with,
        |h, headers, raw| reply(fleet::sync(&h, &headers, &raw).await)
    );
    let queues = hub_route!(
        warp::path!("api" / "queues" / "status"),
        warp::get(),
        with,
        |h, headers, raw| reply(fleet::queues(&h, &headers, &raw).await)
    );
    let pause = hub_route!(
        warp::path!("api" / "queues" / String / "pause"),
        warp::post(),
        with,
        |h, name, headers, raw| reply(fleet::pause(&h, &name, true, &headers, &raw).await)
    );
    let resume = hub_route!(
        warp::path!("api" / "queues" / String / "resume"),
        warp::post(),
        with,
        |h, name, headers, raw| reply(fleet::pause(&h, &name, false, &headers, &raw).await)
    );
    let clear_failed = hub_route!(
        warp::path!("api" / "queues" / String / "failed"),
        warp::delete(),
        with,
        |h, name, headers, raw| reply(fleet::clear_failed(&h, &name, &headers, &raw).await)
    );
    let ws = warp::path!("api" / "ws")
        .and(warp::get())
        .and(request_parts())
        .and(warp::ws().map(Some).or(warp::any().map(|| None)).unify())
        .and(with.clone())
        .then(
            |headers: HeaderMap, raw: String, ws: Option<warp::ws::Ws>, h: Hub| async move {
                stream::open(&h, &headers, &raw, ws)
                    .await
                    .unwrap_or_else(|e| reply(Err(e)))
            },
        )
        .boxed();
    let mut all = login
        .or(delegate)
        .unify()
        .or(set_status)
        .unify()
        .or(register)
        .unify()
        .or(secret_scan)
        .unify()
        .or(list_jobs)
        .unify()
        .or(job_logs)
        .unify()
        .or(get_job)
        .unify()
        .or(runners)
        .unify()
        .or(runner_status)
        .unify()
        .or(github_status)
        .unify()
        .or(repositories)
        .unify()
        .or(sync)
        .unify()
        .or(queues)
        .unify()
        .or(pause)
        .unify()
        .or(resume)
        .unify()
        .or(clear_failed)
        .unify()
        .or(ws)
        .unify()
        .boxed();
    if own_listener {
        let health = warp::path!("health")
            .and(warp::get())
            .and(with)
            .then(|h: Hub| async move { reply(fleet::health(&h).await) });
        all = all.or(health).unify().boxed();
    }
    all
}
