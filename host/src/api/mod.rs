//! The HTTP API (`../shared/spec/API.md`), on warp. Handlers are thin: extract, call the
//! engine (which asks [`crate::policy`] about the [`Principal`] every call takes), map the
//! error in [`error`]. [`serve`] (in `server.rs`) runs the routes on a listener the caller
//! bound, so tests can bind `127.0.0.1:0`.

mod auth_routes;
mod error;
mod follow;
mod github;
pub mod openapi;
mod plugins;
pub mod ratelimit;
mod runners;
mod server;
mod system;
mod tasks;
mod ws;
pub use auth_routes::log_in;
pub use follow::follow_from_tail as follow_task_logs;
pub use ws::{Dialect, DialectOpening, open_dialect};

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

pub use error::ApiError;
pub use server::{serve, serve_routes};

use crate::auth::{Auth, AuthError, Principal};
use crate::config::Config;
use crate::engine::Engine;
use crate::streams::Streams;
use ratelimit::{Class, RateLimits};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: Auth,
    pub limits: Arc<RateLimits>,
    pub config: Arc<Config>,
    pub streams: Streams,
    /// Set once storage is open, plugins are loaded and recovery is done.
    pub ready: Arc<AtomicBool>,
    pub http_requests: Arc<AtomicU64>,
    /// Open `logs?follow=true` responses, per principal.
    pub followers: Arc<follow::Followers>,
    /// This host's id and the others alive on a shared store.
    pub membership: Arc<crate::membership::Membership>,
}

/// The request being handled: its id (echoed or made), method, path and client address, and
/// the rate limit that applied, for error bodies, headers and logs. Set around every request
/// by [`serve`].
pub mod request {
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    use super::ratelimit::RateInfo;

    tokio::task_local! {
        static CURRENT: Arc<RequestInfo>;
    }

    #[derive(Debug)]
    pub struct RequestInfo {
        pub id: String,
        pub method: String,
        pub path: String,
        pub peer: IpAddr,
        pub rate: Mutex<Option<RateInfo>>,
    }

    pub fn id() -> String {
        CURRENT.try_with(|r| r.id.clone()).unwrap_or_default()
    }

    pub fn method() -> String {
        CURRENT.try_with(|r| r.method.clone()).unwrap_or_default()
    }

    pub fn path() -> String {
        CURRENT.try_with(|r| r.path.clone()).unwrap_or_default()
    }

    pub fn peer() -> Option<IpAddr> {
        CURRENT.try_with(|r| r.peer).ok()
    }

    /// Records the limit that applied to this request, for its `X-RateLimit-*` headers.
    pub fn set_rate(info: RateInfo) {
        let _ =
            CURRENT.try_with(|r| *r.rate.lock().unwrap_or_else(|p| p.into_inner()) = Some(info));
    }

    pub async fn scope<F: std::future::Future>(info: Arc<RequestInfo>, f: F) -> F::Output {
        CURRENT.scope(info, f).await
    }
}

/// A JSON response with a status.
pub fn json_reply(status: StatusCode, value: &serde_json::Value) -> Response {
    use warp::Reply;
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// The response of a handler: its reply or its error, both as responses.
pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Counts a request against a limit; a refusal is a 429 with `Retry-After`.
pub fn check_rate(limits: &RateLimits, class: Class, key: &str) -> Result<(), ApiError> {
    match limits.check(class, key) {
        None => Ok(()),
        Some(Ok(info)) => {
            request::set_rate(info);
            Ok(())
        }
        Some(Err(exceeded)) => {
            request::set_rate(exceeded.info);
            Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                format!("rate limit exceeded; retry in {} s", exceeded.retry_after_s),
            )
            .retry_after(exceeded.retry_after_s))
        }
    }
}

/// The caller, from `Authorization: Bearer <jwt or API key>` or `X-API-Key`. Query-string
/// credentials are not accepted here (only on WebSocket upgrades). Counts the request against
/// the principal's rate limit.
pub fn authenticated(
    state: AppState,
) -> impl Filter<Extract = (Principal,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("x-api-key"))
        .and_then(
            move |authorization: Option<String>, api_key: Option<String>| {
                let state = state.clone();
                async move {
                    let principal =
                        authenticate(&state, authorization.as_deref(), api_key.as_deref())
                            .await
                            .map_err(warp::reject::custom)?;
                    check_rate(&state.limits, Class::Principal, &principal.name)
                        .map_err(warp::reject::custom)?;
                    Ok::<_, warp::Rejection>(principal)
                }
            },
        )
}

async fn authenticate(
    state: &AppState,
    authorization: Option<&str>,
    api_key: Option<&str>,
) -> Result<Principal, ApiError> {
    if !state.auth.enabled() {
        return Ok(Principal::local_admin());
    }
    let result = match (authorization, api_key) {
        (Some(header), _) => {
            let mut parts = header.splitn(2, ' ');
            match (parts.next(), parts.next()) {
                (Some(scheme), Some(credential))
                    if scheme.eq_ignore_ascii_case("bearer") && !credential.trim().is_empty() =>
                {
                    state.auth.authenticate_bearer(credential.trim()).await
                }
                _ => Err(AuthError::Unauthenticated(
                    "the Authorization header must be `Bearer <token or API key>`",
                )),
            }
        }
        (None, Some(key)) => state.auth.authenticate_api_key(key.trim()).await,
        (None, None) => Err(AuthError::Unauthenticated(
            "credentials required: Authorization: Bearer <token or API key>, or X-API-Key",
        )),
    };
    result.map_err(ApiError::from)
}

/// The credentials a long-lived response (a WebSocket stream, a log follower) was opened
/// with, checked again at every heartbeat so that a revoked key or an expired token ends it.
#[derive(Clone)]
pub struct Credentials {
    authorization: Option<String>,
    api_key: Option<String>,
    /// A principal an operator configured for requests that carry no credential (a façade's
    /// credential-less stream); used only when neither of the others is given.
    stand_in: Option<Principal>,
}

impl Credentials {
    /// From the headers, or else (upgrades only) from `?token=` or `?api_key=`.
    pub fn from_request(authorization: Option<String>, api_key: Option<String>, raw: &str) -> Self {
        if authorization.is_some() || api_key.is_some() {
            return Self {
                authorization,
                api_key,
                stand_in: None,
            };
        }
        let mut found = Self {
            authorization: None,
            api_key: None,
            stand_in: None,
        };
        for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            match name.as_ref() {
                "token" => found.authorization = Some(format!("Bearer {value}")),
                "api_key" => found.api_key = Some(value.into_owned()),
                _ => {}
            }
        }
        found
    }

    /// The credential headers of a request (no query-string credentials).
    pub fn from_headers() -> impl Filter<Extract = (Self,), Error = warp::Rejection> + Clone {
        warp::header::optional::<String>("authorization")
            .and(warp::header::optional::<String>("x-api-key"))
            .map(|authorization, api_key| Self {
                authorization,
                api_key,
                stand_in: None,
            })
    }

    /// These credentials, or `principal` when they hold none.
    pub fn or_stand_in(mut self, principal: Option<Principal>) -> Self {
        if self.authorization.is_none() && self.api_key.is_none() {
            self.stand_in = principal;
        }
        self
    }

    pub async fn authenticate(&self, state: &AppState) -> Result<Principal, ApiError> {
        if let Some(principal) = &self.stand_in {
            return Ok(principal.clone());
        }
        authenticate(
            state,
            self.authorization.as_deref(),
            self.api_key.as_deref(),
        )
        .await
    }
}

/// The request body as bytes, refused with 413 past `limit` (whether or not it says its
/// length up front).
pub fn body(limit: usize) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |length: Option<u64>, stream| collect_body(length, stream, limit))
}

async fn collect_body<S, B>(
    length: Option<u64>,
    stream: S,
    limit: usize,
) -> Result<Bytes, warp::Rejection>
where
    S: futures::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        warp::reject::custom(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the request body exceeds {limit} bytes"),
        ))
    };
    if length.is_some_and(|l| l > limit as u64) {
        return Err(too_large());
    }
    futures::pin_mut!(stream);
    let mut body = Vec::with_capacity(length.unwrap_or(0).min(limit as u64) as usize);
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| {
            warp::reject::custom(ApiError::validation(format!(
                "could not read the request body: {e}"
            )))
        })?;
        while chunk.has_remaining() {
            let part = chunk.chunk();
            if body.len() + part.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(body))
}

/// Parses a JSON body; a malformed one, a wrong type or an unknown field is a 400 that says
/// what is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::validation(
            "the request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::validation(format!("invalid request body: {e}")))
}

/// The raw query string, empty when there is none.
pub fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Query parameters, checked strictly: unknown names and bad values are 400s, not ignored.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `raw`, allowing only `known` names (and `label.<key>` when `labels`).
    pub fn parse(raw: &str, known: &[&str], labels: bool) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(raw.as_bytes())
            .into_owned()
            .collect();
        for (name, _) in &pairs {
            let is_label = labels && name.strip_prefix("label.").is_some_and(|k| !k.is_empty());
            if !known.contains(&name.as_str()) && !is_label {
                let mut allowed: Vec<String> = known.iter().map(|k| k.to_string()).collect();
                if labels {
                    allowed.push("label.<key>".into());
                }
                return Err(
                    ApiError::validation(format!("unknown query parameter {name:?}"))
                        .with_details(serde_json::json!({"allowed": allowed})),
                );
            }
        }
        Ok(Self { pairs })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn labels(&self) -> Vec<(String, String)> {
        self.pairs
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("label.").map(|k| (k.to_owned(), v.clone())))
            .collect()
    }

    /// A comma-separated list of `label.<key>`, as the label keys.
    pub fn label_keys(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(Vec::new());
        };
        text.split(',')
            .map(|item| {
                item.trim()
                    .strip_prefix("label.")
                    .filter(|key| !key.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ApiError::validation(format!(
                            "{name} takes label.<key> items separated by commas, not {item:?}"
                        ))
                    })
            })
            .collect()
    }

    pub fn u64_in(&self, name: &str, min: u64, max: u64, default: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::validation(format!("{name} must be an integer from {min} to {max}"))
                }),
        }
    }

    /// `order=asc|desc`, as whether ascending; `ascending` without it.
    pub fn order(&self, ascending: bool) -> Result<bool, ApiError> {
        match self.get("order") {
            None => Ok(ascending),
            Some("asc") => Ok(true),
            Some("desc") => Ok(false),
            Some(other) => Err(ApiError::validation(format!(
                "order must be asc or desc, not {other:?}"
            ))),
        }
    }

    pub fn limit(&self) -> Result<usize, ApiError> {
        Ok(self.u64_in("limit", 1, 100, 20)? as usize)
    }

    pub fn offset(&self) -> Result<usize, ApiError> {
        Ok(self.u64_in("offset", 0, u32::MAX as u64, 0)? as usize)
    }

    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(_) => Err(ApiError::validation(format!(
                "{name} must be true or false"
            ))),
        }
    }

    pub fn timestamp(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get(name)
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::validation(format!("{name} must be an RFC 3339 timestamp"))
                    })
            })
            .transpose()
    }
}

/// Where an offset page lies in the whole list.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct PageMeta {
    pub total: u64,
    pub limit: usize,
    pub offset: usize,
    pub has_more: bool,
}

/// `{"data": [...], "meta": PageMeta}`.
pub fn page(
    data: Vec<serde_json::Value>,
    total: u64,
    limit: usize,
    offset: usize,
) -> serde_json::Value {
    let meta = PageMeta {
        total,
        limit,
        offset,
        has_more: (offset + data.len()) < total as usize,
    };
    serde_json::json!({"data": data, "meta": meta})
}

/// `routes` answering what they do not match in the API's error format (a façade's own
/// listener).
pub fn with_errors(routes: BoxedFilter<(Response,)>) -> BoxedFilter<(Response,)> {
    routes.recover(error::handle_rejection).unify().boxed()
}

/// Every route of the host.
pub fn routes(state: AppState) -> BoxedFilter<(Response,)> {
    let api = warp::path("api").and(warp::path("v1"));
    let api_routes = ws::routes(state.clone())
        .or(tasks::routes(state.clone()))
        .unify()
        .or(plugins::routes(state.clone()))
        .unify()
        .or(runners::routes(state.clone()))
        .unify()
        .or(auth_routes::routes(state.clone()))
        .unify()
        .or(github::routes(state.clone()))
        .unify()
        .or(system::api_routes(state.clone()))
        .unify();
    let host = api
        .and(api_routes)
        .or(system::root_routes(state.clone()))
        .unify();
    // Façades without a listener of their own answer at their seeds' paths beside the API.
    let host = match crate::compat::mounted_routes(&state) {
        Some(facades) => host.or(facades).unify().boxed(),
        None => host.boxed(),
    };
    host.recover(error::handle_rejection).unify().boxed()
}
