//! Health, metrics, queues, stats, projects, stream figures and the OpenAPI document.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{ApiError, AppState, Query, authenticated, json_reply, raw_query, respond};
use crate::auth::Principal;
use crate::engine::{EngineError, MAX_RECENT, ProjectQuery, ProjectSort, StatsQuery};
use crate::model::TaskStatus;

/// Routes outside `/api/v1`: health probes and metrics, for load balancers and Prometheus.
pub fn root_routes(state: AppState) -> BoxedFilter<(Response,)> {
    let with_state = warp::any().map(move || state.clone());
    let health = warp::path!("health").and(warp::get()).and(with_state.clone()).map(|s: AppState| {
        json_reply(
            StatusCode::OK,
            &json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "uptime_s": s.engine.uptime().as_secs()}),
        )
    });
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "alive"})));
    let ready = warp::path!("health" / "ready")
        .and(warp::get())
        .and(with_state.clone())
        .map(|s: AppState| {
            if s.engine.store_failure().is_some() {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "the store refuses writes; see the host's log",
                )
                .into_response()
            } else if s.ready.load(Ordering::Acquire) {
                json_reply(StatusCode::OK, &json!({"status": "ready"}))
            } else {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVICE_UNAVAILABLE",
                    "storage or plugins are not loaded yet",
                )
                .into_response()
            }
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state)
        .then(|s: AppState| async move { metrics(&s).await });
    health
        .or(live)
        .unify()
        .or(ready)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
}

/// Routes under `/api/v1`.
pub fn api_routes(state: AppState) -> BoxedFilter<(Response,)> {
    let auth = authenticated(state.clone());
    let with_state = warp::any().map(move || state.clone());
    let health = warp::path!("health")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(|p: Principal, s: AppState, q: String| async move {
            respond(detailed_health(&p, &s, &q).await)
        });
    let queues = warp::path!("queues")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|p: Principal, s: AppState| async move {
            respond(
                s.engine
                    .queues(&p)
                    .await
                    .map_err(ApiError::from)
                    .map(|q| json_reply(StatusCode::OK, &json!({"data": q}))),
            )
        });
    let queue_action = |action: &'static str| {
        warp::path("queues")
            .and(warp::path::param::<String>())
            .and(warp::path(action))
            .and(warp::path::end())
            .and(warp::post())
            .and(auth.clone())
            .and(with_state.clone())
            .then(
                move |plugin: String, p: Principal, s: AppState| async move {
                    respond(
                        s.engine
                            .set_queue_paused(&p, &plugin, action == "pause")
                            .await
                            .map(|q| json_reply(StatusCode::OK, &json!(q)))
                            .map_err(Into::into),
                    )
                },
            )
    };
    let clear_failed = warp::path!("queues" / String / "failed")
        .and(warp::delete())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|plugin: String, p: Principal, s: AppState| async move {
            respond(
                s.engine
                    .clear_failed(&p, &plugin)
                    .await
                    .map(|n| json_reply(StatusCode::OK, &json!({"plugin": plugin, "deleted": n})))
                    .map_err(Into::into),
            )
        });
    let stats = warp::path!("stats")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(|p: Principal, s: AppState, q: String| async move {
            respond(
                async {
                    let query = Query::parse(
                        &q,
                        &[
                            "plugin",
                            "created_after",
                            "created_before",
                            "group_by",
                            "recent",
                        ],
                        true,
                    )?;
                    let stats = s
                        .engine
                        .stats(
                            &p,
                            StatsQuery {
                                plugin: query.get("plugin").map(str::to_owned),
                                labels: query.labels(),
                                created_after: query.timestamp("created_after")?,
                                created_before: query.timestamp("created_before")?,
                                group_by: query.label_keys("group_by")?,
                                recent: query.u64_in("recent", 0, MAX_RECENT as u64, 0)? as usize,
                            },
                        )
                        .await?;
                    Ok(json_reply(StatusCode::OK, &json!(stats)))
                }
                .await,
            )
        });
    let projects = warp::path!("projects")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(|p: Principal, s: AppState, q: String| async move {
            respond(
                async {
                    let query =
                        Query::parse(&q, &["plugin", "sort", "order", "limit", "offset"], false)?;
                    let sort = match query.get("sort") {
                        None => ProjectSort::default(),
                        Some(text) => ProjectSort::parse(text).ok_or_else(|| {
                            ApiError::validation(format!(
                                "sort must be one of {:?}",
                                ProjectSort::NAMES
                            ))
                        })?,
                    };
                    let projects = ProjectQuery {
                        plugin: query.get("plugin").map(str::to_owned),
                        sort,
                        // Names read A to Z; times and counts, latest and largest first.
                        ascending: query.order(sort == ProjectSort::Name)?,
                        limit: query.limit()?,
                        offset: query.offset()?,
                    };
                    let (page, total) = s.engine.projects(&p, &projects).await?;
                    let data = page.iter().map(|project| json!(project)).collect();
                    Ok(json_reply(
                        StatusCode::OK,
                        &super::page(data, total, projects.limit, projects.offset),
                    ))
                }
                .await,
            )
        });
    let streams = warp::path!("streams")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .and(raw_query())
        .then(|p: Principal, s: AppState, q: String| async move {
            respond(Query::parse(&q, &[], false).map(|_| {
                let host_wide = crate::policy::may_see_host_figures(&p);
                json_reply(StatusCode::OK, &json!(s.streams.stats(&p, host_wide)))
            }))
        });
    let openapi = warp::path!("openapi.json")
        .and(warp::get())
        .and(auth.clone())
        .map(|_p: Principal| json_reply(StatusCode::OK, super::openapi::document()));
    health
        .or(queues)
        .unify()
        .or(queue_action("pause"))
        .unify()
        .or(queue_action("resume"))
        .unify()
        .or(clear_failed)
        .unify()
        .or(stats)
        .unify()
        .or(projects)
        .unify()
        .or(streams)
        .unify()
        .or(openapi)
        .unify()
        .boxed()
}

async fn detailed_health(
    principal: &Principal,
    state: &AppState,
    raw: &str,
) -> Result<Response, ApiError> {
    let query = Query::parse(raw, &["details"], false)?;
    let ready = state.ready.load(Ordering::Acquire);
    let writable = state.engine.store_failure().is_none();
    let mut body = json!({
        "status": match (ready, writable) {
            (_, false) => "failing",
            (true, true) => "ok",
            (false, true) => "starting",
        },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.engine.uptime().as_secs(),
    });
    if query.bool("details")? {
        let feed = state.engine.event_feed();
        let probe = feed.probe().await;
        let storage_ok = probe.is_ok();
        let storage_latency_ms = probe.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let runtime = state.engine.registry().runtime();
        let hosts = state
            .membership
            .live_hosts()
            .await
            .map_err(EngineError::from)?;
        body["host"] = json!({"id": state.membership.host_id()});
        body["hosts"] = json!(hosts);
        body["storage"] = json!({
            "backend": state.membership.backend(),
            "status": if storage_ok && writable { "ok" } else { "failing" },
            "writable": writable,
            "latency_ms": storage_latency_ms,
            "last_seq": feed.last_seq(),
        });
        body["plugin_runtime"] = json!({
            "loaded_plugins": state.engine.registry().list().len(),
            "pooling_allocator": runtime.is_pooling(),
            "max_instances": runtime.config().max_instances,
        });
        body["queues"] = json!(state.engine.queues(principal).await?);
        body["websocket_connections"] = json!(state.streams.connection_count());
        body["log_followers"] = json!(state.followers.count());
        body["websocket_slow_consumers_dropped"] = json!(state.streams.slow_consumers_dropped());
        body["http_requests_total"] = json!(state.http_requests.load(Ordering::Relaxed));
    }
    Ok(json_reply(StatusCode::OK, &body))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    plugin: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: String,
}

/// Prometheus text exposition, gathered at scrape time from the engine's own counts.
async fn metrics(state: &AppState) -> Response {
    let mut registry = Registry::with_prefix("taskhost");
    let tasks = Family::<TaskLabels, Gauge>::default();
    let paused = Family::<PluginLabels, Gauge>::default();
    let running = Family::<PluginLabels, Gauge>::default();
    let uptime = Gauge::<i64>::default();
    let plugins = Gauge::<i64>::default();
    let requests = Gauge::<i64>::default();
    let last_seq = Gauge::<i64>::default();
    let ws_connections = Gauge::<i64>::default();
    let ws_slow_dropped = Counter::<u64>::default();
    registry.register("tasks", "Tasks by plugin and status", tasks.clone());
    registry.register(
        "queue_paused",
        "Whether a plugin's queue is paused (1) or not (0)",
        paused.clone(),
    );
    registry.register(
        "plugin_running_instances",
        "Runs in flight per plugin",
        running.clone(),
    );
    registry.register(
        "uptime_seconds",
        "Seconds since the host started",
        uptime.clone(),
    );
    registry.register("plugins_loaded", "Plugins loaded", plugins.clone());
    registry.register(
        "http_requests",
        "HTTP requests received since start",
        requests.clone(),
    );
    registry.register(
        "events_last_seq",
        "The highest event seq stored",
        last_seq.clone(),
    );

    registry.register(
        "websocket_connections",
        "Open WebSocket stream connections",
        ws_connections.clone(),
    );
    registry.register(
        "websocket_slow_consumers_dropped",
        "Stream connections closed because they read too slowly",
        ws_slow_dropped.clone(),
    );

    let queues = match state.engine.host_queues().await {
        Ok(queues) => queues,
        Err(e) => return ApiError::from(e).into_response(),
    };
    for queue in &queues {
        let counts = [
            (TaskStatus::Queued, queue.queued),
            (TaskStatus::Scheduled, queue.scheduled),
            (TaskStatus::Running, queue.running),
            (TaskStatus::Paused, queue.paused_count),
            (TaskStatus::Completed, queue.completed),
            (TaskStatus::Failed, queue.failed),
            (TaskStatus::Cancelled, queue.cancelled),
        ];
        for (status, count) in counts {
            tasks
                .get_or_create(&TaskLabels {
                    plugin: queue.plugin.clone(),
                    status: status.as_str().into(),
                })
                .set(count as i64);
        }
        paused
            .get_or_create(&PluginLabels {
                plugin: queue.plugin.clone(),
            })
            .set(queue.paused as i64);
        running
            .get_or_create(&PluginLabels {
                plugin: queue.plugin.clone(),
            })
            .set(state.engine.running_tasks_of(&queue.plugin) as i64);
    }
    uptime.set(state.engine.uptime().as_secs() as i64);
    plugins.set(state.engine.registry().list().len() as i64);
    requests.set(state.http_requests.load(Ordering::Relaxed) as i64);
    last_seq.set(state.engine.event_feed().last_seq() as i64);
    ws_connections.set(state.streams.connection_count() as i64);
    ws_slow_dropped.inc_by(state.streams.slow_consumers_dropped());

    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return ApiError::internal(e).into_response();
    }
    let mut response = Response::new(text.into());
    response.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    response
}
