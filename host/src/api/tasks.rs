//! Task routes under `/api/v1/tasks`.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{
    ApiError, AppState, Credentials, Query, authenticated, body, follow, json_reply, page,
    parse_json, raw_query, respond,
};
use crate::auth::Principal;
use crate::engine::{ErrorReport, NewTask, ProgressReport, TaskUpdate};
use crate::model::{Executor, LogEntry, TaskStatus};
use crate::policy;
use crate::schema;
use crate::storage::{SortField, TaskQuery};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CreateTask)]
pub(crate) struct CreateTaskBody {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    plugin: String,
    #[serde(rename = "type")]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^/\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    task_type: String,
    #[serde(default = "empty_object")]
    input: Value,
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$")]
    id: Option<String>,
    /// A name for people, shown with the task.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    title: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schema::task_labels)]
    labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "crate::schema::integer::option::deserialize"
    )]
    #[schema(minimum = -1000, maximum = 1000)]
    priority: Option<i32>,
    #[serde(
        default,
        deserialize_with = "crate::schema::integer::option::deserialize"
    )]
    #[schema(minimum = 1, maximum = 100)]
    max_attempts: Option<u32>,
    #[serde(
        default,
        deserialize_with = "crate::schema::integer::option::deserialize"
    )]
    #[schema(minimum = 1, maximum = 604800)]
    timeout_s: Option<u64>,
    #[schema(format = DateTime)]
    run_at: Option<String>,
    #[serde(default)]
    #[schema(schema_with = schema::task_ids)]
    depends_on: Vec<String>,
    #[serde(default)]
    executor: Executor,
    /// Users besides the owner who may report on an external task.
    #[serde(default)]
    #[schema(schema_with = schema::reporters)]
    reporters: Vec<String>,
}

/// Where a page of events lies: pass `next_after_seq` as `after_seq` for the next one.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct EventPageMeta {
    after_seq: u64,
    next_after_seq: u64,
    limit: usize,
    has_more: bool,
}

#[derive(serde::Serialize, ToSchema)]
pub(crate) struct LogPageMeta {
    limit: usize,
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Message)]
pub(crate) struct MessageBody {
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64)]
    kind: String,
    #[serde(default)]
    data: Value,
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let auth = authenticated(state.clone());
    let limit = state.config.max_body_bytes;
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let task = |tail: &'static str| {
        warp::path("tasks")
            .and(warp::path::param::<String>())
            .and(warp::path(tail))
            .and(warp::path::end())
    };

    let create = warp::path!("tasks")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(
            |p: Principal, s: AppState, b: Bytes| async move { respond(create(&p, &s, &b).await) },
        );
    let list = warp::path!("tasks")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(
            |p: Principal, s: AppState, q: String| async move { respond(list(&p, &s, &q).await) },
        );
    let get = warp::path!("tasks" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(
                s.engine
                    .get(&p, &id)
                    .await
                    .map(|t| json_reply(StatusCode::OK, &t.to_api()))
                    .map_err(Into::into),
            )
        });
    let cancel = warp::path!("tasks" / String)
        .and(warp::delete())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(
                s.engine
                    .cancel(&p, &id)
                    .await
                    .map(|t| json_reply(StatusCode::OK, &t.to_api()))
                    .map_err(Into::into),
            )
        });
    let update = warp::path!("tasks" / String)
        .and(warp::put())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(
            |id: String, p: Principal, s: AppState, b: Bytes| async move {
                respond(
                    async {
                        let update: TaskUpdate = parse_json(&b)?;
                        let task = s.engine.report_update(&p, &id, update).await?;
                        Ok(json_reply(StatusCode::OK, &policy::task_view(&p, &task)))
                    }
                    .await,
                )
            },
        );
    let control = |action: &'static str| {
        task(action)
            .and(warp::post())
            .and(auth.clone())
            .and(with_state.clone())
            .then(move |id: String, p: Principal, s: AppState| async move {
                let result = match action {
                    "pause" => s.engine.pause(&p, &id).await,
                    "resume" => s.engine.resume(&p, &id).await,
                    _ => s.engine.retry(&p, &id).await,
                };
                respond(
                    result
                        .map(|t| json_reply(StatusCode::OK, &t.to_api()))
                        .map_err(Into::into),
                )
            })
    };
    let report_progress = task("progress")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(
            |id: String, p: Principal, s: AppState, b: Bytes| async move {
                respond(
                    async {
                        let report: ProgressReport = parse_json(&b)?;
                        let task = s.engine.report_progress(&p, &id, report).await?;
                        Ok(json_reply(StatusCode::OK, &policy::task_view(&p, &task)))
                    }
                    .await,
                )
            },
        );
    let get_progress = task("progress")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(s.engine.get(&p, &id).await.map_err(Into::into).map(|t| {
                json_reply(
                    StatusCode::OK,
                    &json!({"task_id": t.id, "status": t.status, "progress": t.progress}),
                )
            }))
        });
    let events = task("events")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(
            |id: String, p: Principal, s: AppState, q: String| async move {
                respond(events(&p, &s, &id, &q).await)
            },
        );
    let logs = task("logs")
        .and(warp::get())
        .and(auth.clone())
        .and(Credentials::from_headers())
        .and(with_state.clone())
        .and(raw_query())
        .then(
            |id: String, p: Principal, c: Credentials, s: AppState, q: String| async move {
                respond(logs(&p, c, &s, &id, &q).await)
            },
        );
    let records = task("records")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(
            |id: String, p: Principal, s: AppState, q: String| async move {
                respond(records(&p, &s, &id, &q).await)
            },
        );
    let error_record = task("errors")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(
            |id: String, p: Principal, s: AppState, b: Bytes| async move {
                respond(
                    async {
                        let report: ErrorReport = parse_json(&b)?;
                        let record = s.engine.record_error(&p, &id, report).await?;
                        Ok(json_reply(StatusCode::CREATED, &json!(record)))
                    }
                    .await,
                )
            },
        );
    // A scan of the task's log for secrets, run as a task of its own.
    let secret_scan = task("secret-scan")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(
                s.engine
                    .scan_log_for_secrets(&p, &id)
                    .await
                    .map(|scan| json_reply(StatusCode::ACCEPTED, &policy::task_view(&p, &scan)))
                    .map_err(Into::into),
            )
        });
    let message = task("messages")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(
            |id: String, p: Principal, s: AppState, b: Bytes| async move {
                respond(
                    async {
                        let message: MessageBody = parse_json(&b)?;
                        let event = s
                            .engine
                            .post_message(&p, &id, &message.kind, message.data)
                            .await?;
                        Ok(json_reply(StatusCode::ACCEPTED, &event.to_api()))
                    }
                    .await,
                )
            },
        );

    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(cancel)
        .unify()
        .or(update)
        .unify()
        .or(error_record)
        .unify()
        .or(secret_scan)
        .unify()
        .or(control("pause"))
        .unify()
        .or(control("resume"))
        .unify()
        .or(control("retry"))
        .unify()
        .or(report_progress)
        .unify()
        .or(get_progress)
        .unify()
        .or(events)
        .unify()
        .or(logs)
        .unify()
        .or(records)
        .unify()
        .or(message)
        .unify()
        .boxed()
}

async fn create(
    principal: &Principal,
    state: &AppState,
    body: &[u8],
) -> Result<Response, ApiError> {
    let request: CreateTaskBody = parse_json(body)?;
    let run_at = request
        .run_at
        .map(|text| {
            DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::validation("run_at must be an RFC 3339 timestamp"))
        })
        .transpose()?;
    let new = NewTask {
        id: request.id,
        plugin: request.plugin,
        task_type: request.task_type,
        input: request.input,
        labels: request.labels,
        priority: request.priority,
        max_attempts: request.max_attempts,
        timeout_s: request.timeout_s,
        run_at,
        depends_on: request.depends_on,
        reporters: request.reporters,
        executor: request.executor,
        title: request.title,
    };
    let task = state.engine.create(principal, new).await?;
    Ok(json_reply(StatusCode::ACCEPTED, &task.to_api()))
}

async fn list(principal: &Principal, state: &AppState, raw: &str) -> Result<Response, ApiError> {
    let query = Query::parse(
        raw,
        &[
            "status",
            "plugin",
            "type",
            "owner",
            "created_after",
            "created_before",
            "sort",
            "order",
            "limit",
            "offset",
        ],
        true,
    )?;
    let status = query
        .get("status")
        .map(|s| {
            TaskStatus::parse(s)
                .ok_or_else(|| ApiError::validation(format!("unknown status {s:?}")))
        })
        .transpose()?;
    let sort = match query.get("sort") {
        None | Some("created_at") => SortField::CreatedAt,
        Some("updated_at") => SortField::UpdatedAt,
        Some("priority") => SortField::Priority,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "sort must be created_at, updated_at or priority, not {other:?}"
            )));
        }
    };
    let ascending = query.order(false)?;
    let (limit, offset) = (query.limit()?, query.offset()?);
    let task_query = TaskQuery {
        status,
        plugin: query.get("plugin").map(str::to_owned),
        plugins: None,
        task_type: query.get("type").map(str::to_owned),
        owner: query.get("owner").map(str::to_owned),
        labels: query.labels(),
        created_after: query.timestamp("created_after")?,
        created_before: query.timestamp("created_before")?,
        sort,
        ascending,
        limit,
        offset,
    };
    let (tasks, total) = state.engine.list(principal, task_query).await?;
    let data = tasks.iter().map(|t| t.to_api()).collect();
    Ok(json_reply(
        StatusCode::OK,
        &page(data, total, limit, offset),
    ))
}

async fn events(
    principal: &Principal,
    state: &AppState,
    id: &str,
    raw: &str,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw, &["after_seq", "limit"], false)?;
    let after_seq = query.u64_in("after_seq", 0, u64::MAX, 0)?;
    let limit = query.u64_in("limit", 1, 1000, 100)? as usize;
    let events = state
        .engine
        .events(principal, id, after_seq, limit + 1)
        .await?;
    let has_more = events.len() > limit;
    let data: Vec<Value> = events.iter().take(limit).map(|e| e.to_api()).collect();
    let next = events[..events.len().min(limit)]
        .last()
        .map_or(after_seq, |e| e.seq);
    let meta = EventPageMeta {
        after_seq,
        next_after_seq: next,
        limit,
        has_more,
    };
    Ok(json_reply(
        StatusCode::OK,
        &json!({"data": data, "meta": meta}),
    ))
}

async fn logs(
    principal: &Principal,
    credentials: Credentials,
    state: &AppState,
    id: &str,
    raw: &str,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw, &["since", "limit", "follow", "lines", "format"], false)?;
    let limit = query.u64_in("limit", 1, 1000, 100)? as usize;
    let as_text = match query.get("format") {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "format is json or text, not {other:?}"
            )));
        }
    };
    let follow = query.bool("follow")?;
    if follow && as_text {
        return Err(ApiError::validation(
            "a followed log is a stream of JSON events; format=text reads what is there",
        ));
    }
    if query.get("lines").is_some() {
        if query.get("since").is_some() {
            return Err(ApiError::validation(
                "lines reads the last lines; since reads from a point: give one of them",
            ));
        }
        let lines = query.u64_in("lines", 1, MAX_TAIL_LINES, 100)? as usize;
        if follow {
            // The tail, then what comes after it.
            return follow::follow_from_tail(principal, credentials, state, id, lines).await;
        }
        let (_, tail) = state.engine.log_tail(principal, id, lines).await?;
        return Ok(log_reply(tail, as_text, LogPageMeta { limit: lines }));
    }
    // `since` is a log seq, or a timestamp.
    let (after_seq, since_time) = match query.get("since") {
        None => (0, None),
        Some(text) => match text.parse::<u64>() {
            Ok(seq) => (seq, None),
            Err(_) => (0, query.timestamp("since")?),
        },
    };
    if follow {
        return follow::follow_logs(principal, credentials, state, id, after_seq, since_time).await;
    }
    let (_, entries) = state
        .engine
        .logs(principal, id, after_seq, usize::MAX)
        .await?;
    let entries = entries
        .into_iter()
        .filter(|e| since_time.is_none_or(|t| e.timestamp > t))
        .take(limit)
        .collect();
    Ok(log_reply(entries, as_text, LogPageMeta { limit }))
}

/// Most lines a tail (`lines=`) returns.
const MAX_TAIL_LINES: u64 = 10_000;

/// Log lines as a JSON page, or as plain text: `<timestamp> [<step>] <LEVEL> <message>`, one
/// a line (the step where the line has one).
fn log_reply(entries: Vec<LogEntry>, as_text: bool, meta: LogPageMeta) -> Response {
    if !as_text {
        let data: Vec<Value> = entries
            .into_iter()
            .map(|e| serde_json::to_value(e).unwrap_or_default())
            .collect();
        return json_reply(StatusCode::OK, &json!({"data": data, "meta": meta}));
    }
    let mut text = String::new();
    for entry in &entries {
        let step = entry
            .step
            .as_ref()
            .map(|step| format!("[{step}] "))
            .unwrap_or_default();
        text.push_str(&format!(
            "{} {step}{} {}\n",
            crate::model::timestamp::format(&entry.timestamp),
            entry.level.to_uppercase(),
            entry.message
        ));
    }
    let mut response = Response::new(text.into());
    response.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn records(
    principal: &Principal,
    state: &AppState,
    id: &str,
    raw: &str,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw, &["collection", "limit", "offset"], false)?;
    let (limit, offset) = (query.limit()?, query.offset()?);
    let (records, total) = state
        .engine
        .records(principal, id, query.get("collection"), limit, offset)
        .await?;
    let data = records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .collect();
    Ok(json_reply(
        StatusCode::OK,
        &page(data, total, limit, offset),
    ))
}
