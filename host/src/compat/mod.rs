//! Compatibility façades: the APIs of the systems taskhost replaces, each a thin translation
//! onto the engine, so that their clients run unchanged (`../shared/seeds/`). Each is switched
//! on in config (`[compat.<name>]`), mounted on the main listener at the seed's own paths or
//! served on a listener of its own (`listen`), and may import the static keys its clients
//! hold (`api_keys`).
//!
//! Parsing is lenient on façade routes only: fields the engine has no use for are kept with
//! the task, never refused. Everywhere else the API stays strict.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::reply::Response;

use crate::api::ratelimit::Class;
use crate::api::{ApiError, AppState, Credentials, check_rate};
use crate::auth::{ImportedKey, ImportedKeys, Principal};

/// `[compat]`: one section per façade.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompatConfig {
    pub gitlab_crawler: gitlab_crawler::GitlabCrawlerConfig,
    pub agent_tracker: agent_tracker::AgentTrackerConfig,
    pub build_analysis: build_analysis::BuildAnalysisConfig,
    pub teamcache: teamcache::TeamCacheConfig,
    pub runnerhub: runnerhub::RunnerHubConfig,
}

/// What every façade's section holds.
pub trait FacadeSettings {
    fn enabled(&self) -> bool;
    /// A listener of its own (the seed's port); `None`: mounted on the main listener.
    fn listen(&self) -> Option<SocketAddr>;
    fn api_keys(&self) -> &[ImportedKey];
}

impl CompatConfig {
    fn facades(&self) -> [(&'static str, &dyn FacadeSettings); 5] {
        [
            ("compat.gitlab_crawler", &self.gitlab_crawler),
            ("compat.agent_tracker", &self.agent_tracker),
            ("compat.build_analysis", &self.build_analysis),
            ("compat.teamcache", &self.teamcache),
            ("compat.runnerhub", &self.runnerhub),
        ]
    }

    /// The keys the enabled façades import, digested; `env` reads `key_env` variables.
    pub fn imported_keys(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ImportedKeys, String> {
        ImportedKeys::import(
            self.facades()
                .into_iter()
                .filter(|(_, facade)| facade.enabled())
                .map(|(name, facade)| (name, facade.api_keys())),
            env,
        )
    }

    /// The addresses of the façades that listen on their own, by section name.
    pub fn own_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        self.facades()
            .into_iter()
            .filter(|(_, facade)| facade.enabled())
            .filter_map(|(name, facade)| facade.listen().map(|addr| (name, addr)))
            .collect()
    }
}

/// The routes of the enabled façades that have no listener of their own, for the main one.
/// There the host's own health routes win over the seeds'.
pub fn mounted_routes(state: &AppState) -> Option<BoxedFilter<(Response,)>> {
    let compat = &state.config.compat;
    let mut mounted: Option<BoxedFilter<(Response,)>> = None;
    let mut add = |routes: BoxedFilter<(Response,)>| {
        mounted = Some(match mounted.take() {
            Some(before) => before.or(routes).unify().boxed(),
            None => routes,
        });
    };
    if compat.gitlab_crawler.enabled && compat.gitlab_crawler.listen.is_none() {
        add(gitlab_crawler::routes(state.clone()));
    }
    if compat.agent_tracker.enabled && compat.agent_tracker.listen.is_none() {
        add(agent_tracker::routes(state.clone()));
    }
    if compat.build_analysis.enabled && compat.build_analysis.listen.is_none() {
        add(build_analysis::routes(state.clone()));
    }
    if compat.teamcache.enabled && compat.teamcache.listen.is_none() {
        add(teamcache::routes(state.clone(), false));
    }
    if compat.runnerhub.enabled && compat.runnerhub.listen.is_none() {
        add(runnerhub::routes(state.clone(), false));
    }
    mounted
}

/// The routes a façade's own listener serves, by section name.
pub fn routes_of(state: &AppState, section: &str) -> Option<BoxedFilter<(Response,)>> {
    match section {
        "compat.gitlab_crawler" => Some(gitlab_crawler::routes(state.clone())),
        "compat.agent_tracker" => Some(agent_tracker::routes(state.clone())),
        "compat.build_analysis" => Some(build_analysis::routes(state.clone())),
        "compat.teamcache" => Some(teamcache::routes(state.clone(), true)),
        "compat.runnerhub" => Some(runnerhub::routes(state.clone(), true)),
        _ => None,
    }
}

/// The caller of a façade request, from the credential styles its seed's clients use:
/// `Authorization: Bearer`, `X-API-Key`, or `?api_key=` / `?token=` in the query. Counted
/// against the principal's rate limit like any API request.
pub async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    raw_query: &str,
) -> Result<Principal, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let credentials =
        Credentials::from_request(header("authorization"), header("x-api-key"), raw_query);
    let principal = credentials.authenticate(state).await?;
    check_rate(&state.limits, Class::Principal, &principal.name)?;
    Ok(principal)
}

/// The credentials of a façade request, in any of the styles [`caller`] takes.
pub fn credentials(headers: &HeaderMap, raw_query: &str) -> Credentials {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Credentials::from_request(header("authorization"), header("x-api-key"), raw_query)
}

/// The integer progress the seeds show: the percentage reported, 100 once completed.
pub fn integer_progress(task: &crate::model::Task) -> u64 {
    if task.status == crate::model::TaskStatus::Completed {
        return 100;
    }
    task.progress
        .percentage
        .map_or(0, |p| p.clamp(0.0, 100.0).round() as u64)
}

/// Implements [`FacadeSettings`] for a section with `enabled`, `listen` and `api_keys`.
macro_rules! facade_settings {
    ($section:ty) => {
        impl $crate::compat::FacadeSettings for $section {
            fn enabled(&self) -> bool {
                self.enabled
            }

            fn listen(&self) -> Option<std::net::SocketAddr> {
                self.listen
            }

            fn api_keys(&self) -> &[$crate::auth::ImportedKey] {
                &self.api_keys
            }
        }
    };
}
pub(crate) use facade_settings;

pub mod agent_tracker;
pub mod build_analysis;
pub mod gitlab_crawler;
pub mod runnerhub;
pub mod teamcache;

/// The request parts façade handlers read: headers and the raw query.
pub fn request_parts()
-> impl Filter<Extract = (HeaderMap, String), Error = std::convert::Infallible> + Clone {
    warp::header::headers_cloned().and(crate::api::raw_query())
}

#[cfg(test)]
mod tests {
    use crate::auth::{ImportedKey, Role};
    use crate::config::Config;

    fn from_env(var: &str) -> ImportedKey {
        ImportedKey {
            key: None,
            key_env: Some(var.into()),
            key_sha256: None,
            user: "client".into(),
            role: Role::User,
        }
    }

    #[test]
    fn keys_from_two_variables_pass_validation_and_one_variable_twice_does_not() {
        let mut config = Config::default();
        config.compat.agent_tracker.enabled = true;
        config.compat.agent_tracker.api_keys = vec![from_env("API_KEY")];
        config.compat.teamcache.enabled = true;
        config.compat.teamcache.api_keys = vec![from_env("API_GATEWAY_KEY")];
        config.validate().expect("two variables are two keys");
        config.compat.teamcache.api_keys = vec![from_env("API_KEY")];
        let error = config.validate().expect_err("one key for two principals");
        assert!(error.to_string().contains("twice"), "{error}");
        // A disabled façade's keys are not imported.
        config.compat.teamcache.enabled = false;
        config.validate().expect("only enabled façades import keys");
    }
}
