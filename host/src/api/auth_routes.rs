//! Authentication routes: login, API keys and users.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use super::ratelimit::Class;
use super::{
    ApiError, AppState, authenticated, body, check_rate, json_reply, parse_json, request, respond,
};
use crate::auth::{ApiKeyRequest, Principal, Role, api_key_json};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Login)]
pub(crate) struct LoginBody {
    username: String,
    #[schema(write_only)]
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewUser)]
pub(crate) struct NewUserBody {
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    username: String,
    #[schema(write_only, min_length = 8, max_length = 1024)]
    password: String,
    #[serde(default = "default_role")]
    role: Role,
}

fn default_role() -> Role {
    Role::User
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleChange {
    role: Role,
}

/// A login from `body`, within the per-IP and per-name login limits (façades log in too).
pub async fn log_in(s: &AppState, body: &[u8]) -> Result<crate::auth::LoginResult, ApiError> {
    let peer = request::peer().map(|ip| ip.to_string()).unwrap_or_default();
    check_rate(&s.limits, Class::Login, &peer)?;
    let login: LoginBody = parse_json(body)?;
    // Usernames are case-sensitive, but one bucket for all spellings of a name keeps a
    // guesser from multiplying its allowance.
    check_rate(&s.limits, Class::LoginUser, &login.username.to_lowercase())?;
    Ok(s.auth.login(&login.username, &login.password).await?)
}

pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let auth = authenticated(state.clone());
    let limit = state.config.max_body_bytes;
    let with_state = warp::any().map(move || state.clone());

    // The one /api/v1 route without credentials; limited per IP against password guessing.
    let login = warp::path!("auth" / "login")
        .and(warp::post())
        .and(with_state.clone())
        .and(body(limit))
        .then(|s: AppState, b: Bytes| async move {
            respond(
                log_in(&s, &b)
                    .await
                    .map(|result| json_reply(StatusCode::OK, &json!(result))),
            )
        });
    let create_key = warp::path!("auth" / "api-keys")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(|p: Principal, s: AppState, b: Bytes| async move {
            respond(
                async {
                    let request: ApiKeyRequest = parse_json(&b)?;
                    let (record, key) = s
                        .auth
                        .create_api_key(&p, request, &|plugin| s.engine.plugin_access(plugin))
                        .await?;
                    let mut view = api_key_json(&record);
                    // The only time the key is shown.
                    view["key"] = json!(key);
                    Ok(json_reply(StatusCode::CREATED, &view))
                }
                .await,
            )
        });
    let list_keys = warp::path!("auth" / "api-keys")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|p: Principal, s: AppState| async move {
            respond(
                s.auth
                    .list_api_keys(&p)
                    .await
                    .map(|keys| {
                        json_reply(
                            StatusCode::OK,
                            &json!({"data": keys.iter().map(api_key_json).collect::<Vec<_>>()}),
                        )
                    })
                    .map_err(ApiError::from),
            )
        });
    let revoke_key = warp::path!("auth" / "api-keys" / String)
        .and(warp::delete())
        .and(auth.clone())
        .and(with_state.clone())
        .then(|id: String, p: Principal, s: AppState| async move {
            respond(
                s.auth
                    .revoke_api_key(&p, &id)
                    .await
                    .map(|r| json_reply(StatusCode::OK, &api_key_json(&r)))
                    .map_err(ApiError::from),
            )
        });
    let create_user = warp::path!("users")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state.clone())
        .and(body(limit))
        .then(|p: Principal, s: AppState, b: Bytes| async move {
            respond(async {
                let new: NewUserBody = parse_json(&b)?;
                let user = s.auth.create_user(&p, &new.username, &new.password, new.role).await?;
                Ok(json_reply(
                    StatusCode::CREATED,
                    &json!({"username": user.username, "role": user.role, "created_at": crate::model::timestamp::format(&user.created_at)}),
                ))
            }.await)
        });
    let set_role = warp::path!("users" / String)
        .and(warp::patch())
        .and(auth.clone())
        .and(body(limit))
        .and(with_state.clone())
        .then(|username: String, p: Principal, b: Bytes, s: AppState| async move {
            respond(async {
                let change: RoleChange = parse_json(&b)?;
                let user = s.auth.set_role(&p, &username, change.role).await?;
                Ok(json_reply(
                    StatusCode::OK,
                    &json!({"username": user.username, "role": user.role, "created_at": crate::model::timestamp::format(&user.created_at)}),
                ))
            }
.await)
        });
    login
        .or(set_role)
        .unify()
        .or(create_key)
        .unify()
        .or(list_keys)
        .unify()
        .or(revoke_key)
        .unify()
        .or(create_user)
        .unify()
        .boxed()
}
