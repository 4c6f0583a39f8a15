//! GitHub routes under `/api/v1/github`: the `workflow_job` webhook receiver (no credential
//! but the delivery's signature) and the repositories and status views.

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::{AppState, authenticated, body, json_reply, respond};
use crate::auth::Principal;
use crate::github::{Delivery, Github};

fn github(state: &AppState) -> Github {
    Github::new(state.config.github.clone(), state.engine.clone())
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let auth = authenticated(state.clone());
    let limit = state.config.max_body_bytes;
    let with_state = warp::any().map(move || state.clone());
    let webhook =
        warp::path!("github" / "webhook")
            .and(warp::post())
            .and(warp::header::optional::<String>("x-github-event"))
            .and(warp::header::optional::<String>("x-hub-signature-256"))
            .and(body(limit))
            .and(with_state.clone())
            .then(
                |event: Option<String>,
                 signature: Option<String>,
                 bytes: bytes::Bytes,
                 s: AppState| async move {
                    respond(
                        async {
                            let delivery: Delivery = github(&s)
                                .deliver(
                                    event.as_deref().unwrap_or(""),
                                    signature.as_deref(),
                                    &bytes,
                                )
                                .await?;
                            let status = if delivery.outcome == "created" {
                                StatusCode::CREATED
                            } else {
                                StatusCode::OK
                            };
                            Ok(json_reply(status, &json!(delivery)))
                        }
                        .await,
                    )
                },
            );
    let repositories = warp::path!("github" / "repositories")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|p: Principal, s: AppState| async move {
            respond(
                async {
                    let repositories = github(&s).repositories(&p).await?;
                    Ok(json_reply(StatusCode::OK, &json!({"data": repositories})))
                }
                .await,
            )
        });
    let status = warp::path!("github" / "status")
        .and(warp::get())
        .and(auth)
        .and(with_state)
        .then(|_: Principal, s: AppState| async move {
            respond(
                async {
                    let status = github(&s).status().await?;
                    Ok(json_reply(StatusCode::OK, &json!(status)))
                }
                .await,
            )
        });
    webhook.or(repositories).unify().or(status).unify().boxed()
}
