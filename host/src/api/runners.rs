//! Runner routes under `/api/v1/runners`.
//!
//! Operators (admin, or a key an admin made with `runners:register`) register, list, inspect
//! and remove runners. A runner
//! calls the rest with its own token (`Authorization: Bearer thr_…`), which is good for
//! nothing else: heartbeat, claim a job (long-poll), and report on the jobs it holds — log
//! lines and progress go to the owning task, step outcomes and the final status to the job.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::ratelimit::Class;
use super::{
    ApiError, AppState, Query, authenticated, body, check_rate, json_reply, parse_json, raw_query,
    respond,
};
use crate::auth::Principal;
use crate::runners::{Artifact, Fact, JobStatus, RunnerFilter, RunnerProfile, StepOutcome};

/// Lines one log report may carry.
const MAX_LOG_LINES: usize = 1000;

/// The runner calling, from its token; it must be the runner the path names.
fn runner(state: AppState) -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let state = state.clone();
        async move {
            let token = header
                .as_deref()
                .and_then(|h| {
                    h.strip_prefix("Bearer ")
                        .or_else(|| h.strip_prefix("bearer "))
                })
                .map(str::trim);
            let found = match token {
                Some(token) => state
                    .engine
                    .runners()
                    .authenticate(token)
                    .await
                    .map_err(|e| warp::reject::custom(ApiError::from(e)))?,
                None => None,
            };
            let id = found.ok_or_else(|| {
                warp::reject::custom(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "AUTHENTICATION_REQUIRED",
                    "this route takes a runner token: Authorization: Bearer thr_…",
                ))
            })?;
            check_rate(&state.limits, Class::Principal, &format!("runner:{id}"))
                .map_err(warp::reject::custom)?;
            Ok::<_, warp::Rejection>(id)
        }
    })
}

fn same_runner(path_id: &str, token_id: &str) -> Result<(), ApiError> {
    if path_id == token_id {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "a runner token acts only for its own runner",
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RunnerRegistration)]
pub(crate) struct Registration {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    #[serde(default)]
    #[schema(schema_with = crate::schema::runner_labels)]
    labels: Vec<String>,
    #[serde(
        default = "one",
        deserialize_with = "crate::schema::integer::deserialize"
    )]
    #[schema(minimum = 1, maximum = 1024)]
    capacity: u32,
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9._+-]+$")]
    os: Option<String>,
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9._+-]+$")]
    architecture: Option<String>,
    /// What the runner can do, as scalars (`{"docker": true, "max_concurrent_jobs": 5}`); at
    /// most 32 entries.
    #[serde(default)]
    #[schema(value_type = Object)]
    capabilities: BTreeMap<String, Fact>,
    /// What the runner has (`{"cpu_cores": 8, "memory_gb": 16}`); at most 32 entries.
    #[serde(default)]
    #[schema(value_type = Object)]
    resource_info: BTreeMap<String, Fact>,
}

impl Registration {
    fn profile(&mut self) -> RunnerProfile {
        RunnerProfile {
            os: self.os.take(),
            architecture: self.architecture.take(),
            capabilities: std::mem::take(&mut self.capabilities),
            resource_info: std::mem::take(&mut self.resource_info),
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    #[serde(default)]
    running: Vec<String>,
    /// What the runner uses now (`{"cpu_usage": 45.2, "memory_usage": 512}`), kept until the
    /// next heartbeat that carries it.
    resource_usage: Option<BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLine {
    #[serde(default = "stdout")]
    stream: String,
    line: String,
    /// The step that printed the line.
    step: Option<String>,
}

fn stdout() -> String {
    "stdout".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogReport {
    lines: Vec<LogLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressReport {
    processed: Option<u64>,
    total: Option<u64>,
    step: Option<String>,
    message: Option<String>,
    metrics: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Finish {
    status: JobStatus,
    #[serde(default)]
    artifacts: Vec<Artifact>,
}

/// `?status=online|offline|busy|idle&labels=a,b` of a runner listing.
fn runner_filter(raw: &str) -> Result<RunnerFilter, ApiError> {
    let query = Query::parse(raw, &["status", "labels"], false)?;
    Ok(RunnerFilter::parse(
        query.get("status"),
        query.get("labels"),
    )?)
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let auth = authenticated(state.clone());
    let runner = runner(state.clone());
    let limit = state.config.max_body_bytes;
    let with_state = warp::any().map(move || state.clone());

    let register = warp::path!("runners")
        .and(warp::post())
        .and(auth.clone())
        .and(body(limit))
        .and(with_state.clone())
        .then(
            |p: Principal, bytes: bytes::Bytes, s: AppState| async move {
                respond(
                    async {
                        let mut r: Registration = parse_json(&bytes)?;
                        let profile = r.profile();
                        let registered = s
                            .engine
                            .runners()
                            .register_as(&p, &r.name, r.labels, r.capacity, profile)
                            .await?;
                        Ok(json_reply(StatusCode::CREATED, &json!(registered)))
                    }
                    .await,
                )
            },
        );
    let list = warp::path!("runners")
        .and(warp::get())
        .and(auth.clone())
        .and(raw_query())
        .and(with_state.clone())
        .then(|p: Principal, raw: String, s: AppState| async move {
            respond(
                async {
                    let filter = runner_filter(&raw)?;
                    let runners = s.engine.runners().list_for(&p, &filter).await?;
                    Ok(json_reply(StatusCode::OK, &json!(runners)))
                }
                .await,
            )
        });
    let get = warp::path!("runners" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(
                async {
                    let runner = s.engine.runners().get_for(&p, &id).await?;
                    Ok(json_reply(StatusCode::OK, &json!(runner)))
                }
                .await,
            )
        });
    let remove = warp::path!("runners" / String)
        .and(warp::delete())
        .and(auth)
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(
                async {
                    s.engine.runners().remove_as(&p, &id).await?;
                    Ok(warp::reply::Reply::into_response(StatusCode::NO_CONTENT))
                }
                .await,
            )
        });

    let heartbeat = warp::path!("runners" / String / "heartbeat")
        .and(warp::post())
        .and(runner.clone())
        .and(body(limit))
        .and(with_state.clone())
        .then(
            |id: String, caller: String, bytes: bytes::Bytes, s: AppState| async move {
                respond(
                    async {
                        same_runner(&id, &caller)?;
                        let beat: Heartbeat = if bytes.is_empty() {
                            Heartbeat::default()
                        } else {
                            parse_json(&bytes)?
                        };
                        let reply = s
                            .engine
                            .runners()
                            .heartbeat(&id, &beat.running, beat.resource_usage)
                            .await?;
                        Ok(json_reply(StatusCode::OK, &json!(reply)))
                    }
                    .await,
                )
            },
        );
    let claim = warp::path!("runners" / String / "jobs" / "claim")
        .and(warp::post())
        .and(runner.clone())
        .and(raw_query())
        .and(with_state.clone())
        .then(
            |id: String, caller: String, raw: String, s: AppState| async move {
                let result = async {
                    same_runner(&id, &caller)?;
                    let query = Query::parse(&raw, &["wait_ms"], false)?;
                    let wait = query.u64_in("wait_ms", 0, 60_000, 0)?;
                    // Claiming counts as a sign of life, like a heartbeat.
                    s.engine.runners().heartbeat(&id, &[], None).await?;
                    let lease = s
                        .engine
                        .runner_claim(&id, std::time::Duration::from_millis(wait))
                        .await?;
                    Ok(match lease {
                        Some(lease) => json_reply(StatusCode::OK, &json!(lease)),
                        None => warp::reply::Reply::into_response(StatusCode::NO_CONTENT),
                    })
                };
                respond(result.await)
            },
        );
    let job = |suffix: &'static str| {
        warp::path("runners")
            .and(warp::path::param::<String>())
            .and(warp::path("jobs"))
            .and(warp::path::param::<String>())
            .and(warp::path(suffix))
            .and(warp::path::end())
            .and(warp::post())
            .and(runner.clone())
            .and(body(limit))
            .and(with_state.clone())
    };
    let logs = job("logs").then(
        |id: String, job: String, caller: String, bytes: bytes::Bytes, s: AppState| async move {
            respond(
                async {
                    same_runner(&id, &caller)?;
                    let report: LogReport = parse_json(&bytes)?;
                    if report.lines.len() > MAX_LOG_LINES {
                        return Err(ApiError::validation(format!(
                            "at most {MAX_LOG_LINES} lines per report"
                        )));
                    }
                    let context = s.engine.runners().touch(&id, &job).await?;
                    for line in report.lines {
                        let level = if line.stream == "stderr" {
                            "warn"
                        } else {
                            "info"
                        };
                        // Masked before it is cut (in the engine), so a cut cannot split a secret.
                        s.engine
                            .runner_log(&context, level, &line.line, line.step.as_deref())
                            .await?;
                    }
                    Ok(warp::reply::Reply::into_response(StatusCode::NO_CONTENT))
                }
                .await,
            )
        },
    );
    let progress = job("progress").then(
        |id: String, job: String, caller: String, bytes: bytes::Bytes, s: AppState| async move {
            respond(
                async {
                    same_runner(&id, &caller)?;
                    let report: ProgressReport = parse_json(&bytes)?;
                    let context = s.engine.runners().touch(&id, &job).await?;
                    s.engine
                        .runner_progress(
                            &context,
                            crate::engine::ProgressReport {
                                processed: report.processed,
                                total: report.total,
                                current_step: report.step,
                                message: report.message,
                                metrics: report.metrics,
                            },
                        )
                        .await?;
                    Ok(warp::reply::Reply::into_response(StatusCode::NO_CONTENT))
                }
                .await,
            )
        },
    );
    let step = job("steps").then(
        |id: String, job: String, caller: String, bytes: bytes::Bytes, s: AppState| async move {
            respond(
                async {
                    same_runner(&id, &caller)?;
                    let outcome: StepOutcome = parse_json(&bytes)?;
                    s.engine.runner_step_finished(&id, &job, outcome).await?;
                    Ok(warp::reply::Reply::into_response(StatusCode::NO_CONTENT))
                }
                .await,
            )
        },
    );
    let finish = job("finish").then(
        |id: String, job: String, caller: String, bytes: bytes::Bytes, s: AppState| async move {
            respond(
                async {
                    same_runner(&id, &caller)?;
                    let finish: Finish = parse_json(&bytes)?;
                    let state = s
                        .engine
                        .runner_finish(&id, &job, finish.status, finish.artifacts)
                        .await?;
                    Ok(json_reply(StatusCode::OK, &json!(state)))
                }
                .await,
            )
        },
    );

    register
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(remove)
        .unify()
        .or(heartbeat)
        .unify()
        .or(claim)
        .unify()
        .or(logs)
        .unify()
        .or(progress)
        .unify()
        .or(step)
        .unify()
        .or(finish)
        .unify()
        .boxed()
}
