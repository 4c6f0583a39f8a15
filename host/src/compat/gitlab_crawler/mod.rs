//! The GitLab crawler's API (seed 000, `/api/internal2/`) on the engine. Tasks come in the
//! crawler's envelope (`{"type": "task", "data": {id, type, credentials, apiEndpoint,
//! options}}`) with camelCase fields, and go out camelCase. With `executor = "plugin"` (the
//! default) the bundled `gitlab` plugin does the crawl; with `"external"` the crawler keeps
//! crawling and reports on its tasks (`/progress`, `PUT`). Either way the access token is
//! masked (`***`) as the gitlab schema's `writeOnly` fields are.
//!
//! `/connect` is the crawler's WebSocket: `connection_ready` with the server's capabilities,
//! then every event of the plugin's tasks, camelCase. Errors are the crawler's
//! `{"error": text, "status", "timestamp", "details": {"taskId", "requestId"}}`.

mod handlers;
mod stream;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;

use super::{caller, request_parts};
use crate::api::{ApiError, AppState, json_reply};
use crate::auth::{ImportedKey, Principal};
use crate::engine::EngineError;
use crate::model::{Task, timestamp};

/// Who does the crawling of the façade's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrawlExecutor {
    /// The bundled gitlab plugin.
    #[default]
    Plugin,
    /// The crawler outside, reporting progress.
    External,
}

/// `[compat.gitlab_crawler]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitlabCrawlerConfig {
    pub enabled: bool,
    /// The application server's own address (`0.0.0.0:5173`); else on the main listener.
    pub listen: Option<SocketAddr>,
    /// `CRAWLER_API_TOKEN`, imported.
    pub api_keys: Vec<ImportedKey>,
    pub plugin: String,
    pub executor: CrawlExecutor,
}

impl Default for GitlabCrawlerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: None,
            api_keys: Vec::new(),
            plugin: "gitlab".into(),
            executor: CrawlExecutor::Plugin,
        }
    }
}

super::facade_settings!(GitlabCrawlerConfig);

/// `accessToken` → `access_token`.
fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `access_token` → `accessToken`.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Every key of `value`, at every depth, renamed by `rename`.
fn rename_keys(value: Value, rename: fn(&str) -> String) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (rename(&k), rename_keys(v, rename)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| rename_keys(v, rename)).collect())
        }
        other => other,
    }
}

fn now() -> String {
    timestamp::format(&chrono::Utc::now())
}

/// The crawler's error body.
struct CrawlerError(ApiError, Option<String>);

impl From<ApiError> for CrawlerError {
    fn from(e: ApiError) -> Self {
        Self(e, None)
    }
}

impl From<EngineError> for CrawlerError {
    fn from(e: EngineError) -> Self {
        Self(e.into(), None)
    }
}

fn on_task(id: &str) -> impl Fn(EngineError) -> CrawlerError + '_ {
    move |e| CrawlerError(e.into(), Some(id.to_owned()))
}

fn reply(result: Result<(StatusCode, Value), CrawlerError>) -> Response {
    match result {
        Ok((status, body)) => json_reply(status, &body),
        Err(CrawlerError(e, task)) => json_reply(
            e.status,
            &json!({
                // The crawler's own words where it had them.
                "error": if e.code == "TASK_NOT_FOUND" { "Task not found".to_owned() } else { e.message },
                "status": e.status.as_u16(),
                "timestamp": now(),
                "details": {"taskId": task, "requestId": crate::api::request::id(), "code": e.code},
            }),
        ),
    }
}

fn time(at: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    at.map_or(Value::Null, |t| json!(timestamp::format(&t)))
}

/// A task as the crawler's API shows it (the input masked as stored).
fn task_view(task: &Task) -> Value {
    let p = &task.progress;
    json!({
        "id": task.id,
        "type": task.task_type,
        "status": task.status,
        "executor": task.executor,
        "createdAt": time(Some(task.created_at)),
        "startedAt": time(task.started_at),
        "finishedAt": time(task.finished_at),
        "updatedAt": time(Some(task.updated_at)),
        "progress": {
            "processed": p.processed,
            "total": p.total,
            "percentage": p.percentage,
            "currentStep": p.current_step,
            "message": p.message,
            "metrics": p.metrics,
        },
        "data": rename_keys(task.input.clone(), camel),
        "result": task.result,
        "error": task.error.as_ref().map(|e| json!({"code": e.code, "message": e.message})),
    })
}

#[derive(Clone)]
struct Crawler {
    state: AppState,
    plugin: String,
    executor: CrawlExecutor,
}

impl Crawler {
    async fn caller(&self, headers: &HeaderMap, raw: &str) -> Result<Principal, CrawlerError> {
        Ok(caller(&self.state, headers, raw).await?)
    }

    async fn task(&self, principal: &Principal, id: &str) -> Result<Task, CrawlerError> {
        let task = self
            .state
            .engine
            .get(principal, id)
            .await
            .map_err(on_task(id))?;
        if task.plugin != self.plugin {
            return Err(CrawlerError(
                ApiError::new(StatusCode::NOT_FOUND, "TASK_NOT_FOUND", "Task not found"),
                Some(id.to_owned()),
            ));
        }
        Ok(task)
    }

    /// The input fields the plugin's task type takes (all of them for external tasks).
    fn known_fields(&self, task_type: &str) -> Option<Vec<String>> {
        if self.executor == CrawlExecutor::External {
            return None;
        }
        let loaded = self.state.engine.registry().get(&self.plugin)?;
        let info = loaded.plugin.info();
        let properties = info
            .task_type(task_type)?
            .input_schema
            .get("properties")?
            .as_object()?
            .clone();
        Some(properties.keys().cloned().collect())
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, CrawlerError> {
    match crate::api::parse_json::<Value>(body)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(ApiError::validation("the body must be a JSON object").into()),
    }
}

/// Every route of the façade, under `/api/internal2/`.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let config = &state.config.compat.gitlab_crawler;
    let crawler = Crawler {
        plugin: config.plugin.clone(),
        executor: config.executor,
        state: state.clone(),
    };
    let limit = state.config.max_body_bytes;
    let with = warp::any().map(move || crawler.clone());
    let base = || warp::path("api").and(warp::path("internal2"));
    let ws = || warp::ws().map(Some).or(warp::any().map(|| None)).unify();
    let body = move || crate::api::body(limit);
    let connect_ws = base()
        .and(warp::path!("connect"))
        .and(warp::get())
        .and(request_parts())
        .and(ws())
        .and(with.clone())
        .then(|h: HeaderMap, q: String, ws, c: Crawler| async move {
            stream::stream(&c, None, &h, &q, ws)
                .await
                .unwrap_or_else(|e| reply(Err(e)))
        });
    let connect_info = base()
        .and(warp::path!("connect"))
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |h: HeaderMap, q: String, b: bytes::Bytes, c: Crawler| async move {
                reply(handlers::connect_info(&c, &h, &q, &b).await)
            },
        );
    let list = base()
        .and(warp::path!("tasks"))
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|h: HeaderMap, q: String, c: Crawler| async move {
            reply(handlers::list(&c, &h, &q).await)
        });
    let create = base()
        .and(warp::path!("tasks"))
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |h: HeaderMap, q: String, b: bytes::Bytes, c: Crawler| async move {
                reply(handlers::create(&c, &h, &q, &b).await)
            },
        );
    let get = base()
        .and(warp::path!("tasks" / String))
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, c: Crawler| async move {
                reply(handlers::get(&c, &id, &h, &q).await)
            },
        );
    let update = base()
        .and(warp::path!("tasks" / String))
        .and(warp::put())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, b: bytes::Bytes, c: Crawler| async move {
                reply(handlers::update(&c, &id, &h, &q, &b).await)
            },
        );
    let cancel = base()
        .and(warp::path!("tasks" / String))
        .and(warp::delete())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, c: Crawler| async move {
                reply(handlers::cancel(&c, &id, &h, &q).await)
            },
        );
    let report = base()
        .and(warp::path!("tasks" / String / "progress"))
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, b: bytes::Bytes, c: Crawler| async move {
                reply(handlers::report_progress(&c, &id, &h, &q, &b).await)
            },
        );
    let progress = base()
        .and(warp::path!("tasks" / String / "progress"))
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, c: Crawler| async move {
                reply(handlers::progress(&c, &id, &h, &q).await)
            },
        );
    let task_ws = base()
        .and(warp::path!("tasks" / String / "websocket"))
        .and(warp::get())
        .and(request_parts())
        .and(ws())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, ws, c: Crawler| async move {
                stream::stream(&c, Some(id), &h, &q, ws)
                    .await
                    .unwrap_or_else(|e| reply(Err(e)))
            },
        );
    let broadcast = base()
        .and(warp::path!("tasks" / String / "websocket"))
        .and(warp::post())
        .and(request_parts())
        .and(body())
        .and(with.clone())
        .then(
            |id: String, h: HeaderMap, q: String, b: bytes::Bytes, c: Crawler| async move {
                reply(handlers::broadcast(&c, &id, &h, &q, &b).await)
            },
        );
    let health_route = base()
        .and(warp::path!("health"))
        .and(warp::get())
        .and(request_parts())
        .and(with.clone())
        .then(|h: HeaderMap, q: String, c: Crawler| async move {
            reply(handlers::health(&c, &h, &q, false).await)
        });
    let deep_check = base()
        .and(warp::path!("health"))
        .and(warp::post())
        .and(request_parts())
        .and(with)
        .then(|h: HeaderMap, q: String, c: Crawler| async move {
            reply(handlers::health(&c, &h, &q, true).await)
        });
    connect_ws
        .or(connect_info)
        .unify()
        .or(list)
        .unify()
        .or(create)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(cancel)
        .unify()
        .or(report)
        .unify()
        .or(progress)
        .unify()
        .or(task_ws)
        .unify()
        .or(broadcast)
        .unify()
        .or(health_route)
        .unify()
        .or(deep_check)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_convert_between_the_crawlers_camel_case_and_the_hosts_snake_case() {
        let seed = json!({"apiEndpoint": "x", "credentials": {"accessToken": "t"}, "options": {"pagination": {"pageSize": 100}}});
        let host = rename_keys(seed.clone(), snake);
        assert_eq!(
            host,
            json!({"api_endpoint": "x", "credentials": {"access_token": "t"}, "options": {"pagination": {"page_size": 100}}})
        );
        assert_eq!(rename_keys(host, camel), seed);
    }
}
