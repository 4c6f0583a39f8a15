//! Plugin routes under `/api/v1/plugins`: list, inspect, upload, replace, unload.
//!
//! An upload's body is the component (`application/wasm`), with the operator's grants as JSON
//! in the `grants` query parameter; or `multipart/form-data` with a `component` part and an
//! optional `grants` part.

use bytes::{Buf, Bytes};
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{ApiError, AppState, Query, authenticated, body, json_reply, raw_query, respond};
use crate::auth::Principal;
use crate::engine::QueueInfo;
use crate::policy::{self, PluginAccess, TaskAction};
use crate::registry::LoadedPlugin;
use crate::runtime::Grants;

/// The API view of one loaded plugin, with its queue's counts.
pub async fn plugin_json(principal: &Principal, state: &AppState, loaded: &LoadedPlugin) -> Value {
    let queues = state.engine.queues(principal).await.unwrap_or_default();
    plugin_view(principal, state, loaded, &queues)
}

/// A plugin as `principal` may see it: what it offers to all, its grants and host-wide counts
/// to operators only; `queues` are the queues `principal` may see.
fn plugin_view(
    principal: &Principal,
    state: &AppState,
    loaded: &LoadedPlugin,
    queues: &[QueueInfo],
) -> Value {
    let plugin = &loaded.plugin;
    let info = plugin.info();
    let grants = plugin.grants();
    let access = PluginAccess::of(grants);
    let counts = queues.iter().find(|q| q.plugin == info.name);
    let operator_view = policy::may_see_grants(principal).then(|| {
        json!({
            "http": {"allow": grants.http.allow},
            "fs": grants.fs.iter().map(|m| json!({"guest": m.guest, "rw": m.rw})).collect::<Vec<_>>(),
            "config_keys": grants.config.keys().collect::<Vec<_>>(),
            "runners": grants.runners,
            "access": {"restricted": access.restricted, "creators": access.creators},
        })
    });
    json!({
        "name": info.name,
        "version": info.version,
        "description": info.description,
        "task_types": info.task_types,
        "restricted": access.restricted,
        "may_create": policy::may_create(principal, &info.name, &access),
        "grants": operator_view,
        "limits": grants.limits,
        "state": if state.engine.is_queue_paused(&info.name) { "paused" } else { "active" },
        "source": loaded.source,
        "digest": plugin.digest(),
        "size_bytes": plugin.size_bytes(),
        "loaded_at": crate::model::timestamp::format(&loaded.loaded_at),
        "running": state.engine.running_tasks_of(&info.name),
        "task_counts": counts,
    })
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let auth = authenticated(state.clone());
    let limit = state.config.max_plugin_bytes;
    let with_state = warp::any().map(move || state.clone());

    // Checked before a byte of an upload is read: a caller without the right cannot make the
    // host buffer up to max_plugin_bytes.
    let manager = auth.clone().and_then(|p: Principal| async move {
        if policy::may_manage_plugins(&p) {
            Ok(p)
        } else {
            Err(warp::reject::custom(ApiError::new(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "managing plugins needs plugins:manage",
            )))
        }
    });
    let list = warp::path!("plugins")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|p: Principal, s: AppState| async move {
            let queues = s.engine.queues(&p).await.unwrap_or_default();
            let data: Vec<Value> = s
                .engine
                .registry()
                .list()
                .iter()
                .filter(|l| policy::may_act_on(&p, &l.plugin.info().name, TaskAction::Read))
                .map(|l| plugin_view(&p, &s, l, &queues))
                .collect();
            respond(Ok(json_reply(StatusCode::OK, &json!({"data": data}))))
        });
    let get = warp::path!("plugins" / String)
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|name: String, p: Principal, s: AppState| async move {
            let found = s
                .engine
                .registry()
                .get(&name)
                .filter(|_| policy::may_act_on(&p, &name, TaskAction::Read));
            let view = match found {
                Some(loaded) => Some(plugin_json(&p, &s, &loaded).await),
                None => None,
            };
            respond(
                view.map(|view| json_reply(StatusCode::OK, &view))
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "PLUGIN_NOT_FOUND",
                            format!("plugin {name} not found"),
                        )
                    }),
            )
        });
    let upload = warp::path!("plugins")
        .and(warp::post())
        .and(manager.clone())
        .and(with_state.clone())
        .and(raw_query())
        .and(warp::header::optional::<String>("content-type"))
        .and(body(limit))
        .then(
            |p: Principal, s: AppState, q: String, ct: Option<String>, b: Bytes| async move {
                respond(
                    async {
                        let (component, grants) =
                            component_and_grants(&q, ct.as_deref(), b).await?;
                        let loaded = s
                            .engine
                            .install_plugin(&p, &component, grants.unwrap_or_default())
                            .await?;
                        Ok(json_reply(
                            StatusCode::CREATED,
                            &plugin_json(&p, &s, &loaded).await,
                        ))
                    }
                    .await,
                )
            },
        );
    let replace =
        warp::path!("plugins" / String)
            .and(warp::put())
            .and(manager.clone())
            .and(with_state.clone())
            .and(raw_query())
            .and(warp::header::optional::<String>("content-type"))
            .and(body(limit))
            .then(
                |name: String,
                 p: Principal,
                 s: AppState,
                 q: String,
                 ct: Option<String>,
                 b: Bytes| async move {
                    respond(
                        async {
                            let (component, grants) =
                                component_and_grants(&q, ct.as_deref(), b).await?;
                            let loaded = s
                                .engine
                                .replace_plugin(&p, &name, &component, grants)
                                .await?;
                            Ok(json_reply(
                                StatusCode::OK,
                                &plugin_json(&p, &s, &loaded).await,
                            ))
                        }
                        .await,
                    )
                },
            );
    let unload = warp::path!("plugins" / String)
        .and(warp::delete())
        .and(auth.clone())
        .and(with_state)
        .and(raw_query())
        .then(
            |name: String, p: Principal, s: AppState, q: String| async move {
                respond(
                    async {
                        let query = Query::parse(&q, &["force"], false)?;
                        s.engine
                            .unload_plugin(&p, &name, query.bool("force")?)
                            .await?;
                        Ok(json_reply(
                            StatusCode::OK,
                            &json!({"name": name, "unloaded": true}),
                        ))
                    }
                    .await,
                )
            },
        );
    list.or(get)
        .unify()
        .or(upload)
        .unify()
        .or(replace)
        .unify()
        .or(unload)
        .unify()
        .boxed()
}

fn parse_grants(text: &str) -> Result<Grants, ApiError> {
    Grants::from_json(text).map_err(|e| ApiError::validation(format!("invalid grants: {e}")))
}

/// The component bytes and grants of an upload, from a raw body or a multipart form.
async fn component_and_grants(
    raw_query: &str,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<(Bytes, Option<Grants>), ApiError> {
    let query = Query::parse(raw_query, &["grants"], false)?;
    let query_grants = query.get("grants").map(parse_grants).transpose()?;
    let Some(boundary) = content_type
        .filter(|ct| ct.starts_with("multipart/form-data"))
        .and_then(|ct| multer::parse_boundary(ct).ok())
    else {
        if body.is_empty() {
            return Err(ApiError::validation(
                "the body must be the plugin component (application/wasm)",
            ));
        }
        return Ok((body, query_grants));
    };
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut component = None;
    let mut grants = query_grants;
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::validation(format!("invalid multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::validation(format!("invalid multipart part {name}: {e}")))?;
        match name.as_str() {
            "component" => component = Some(data),
            "grants" => {
                grants = Some(parse_grants(
                    std::str::from_utf8(data.chunk()).unwrap_or(""),
                )?)
            }
            other => {
                return Err(ApiError::validation(format!(
                    "unknown multipart part {other:?}; expected component and grants"
                )));
            }
        }
    }
    let component = component
        .ok_or_else(|| ApiError::validation("the multipart body has no component part"))?;
    Ok((component, grants))
}
