//! The fleet as operators see it: each runner's view (state, what it runs, what it said about
//! itself, what it last reported using), filters by state and labels, and the summary of
//! online, busy, idle and offline runners. Also the bounds on what a runner may say about
//! itself, so that a runner cannot grow its record without limit.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{RunnerError, Runners, seconds};
use crate::model::runner::{Fact, ResourceUsage, RunnerProfile};
use crate::storage::runner_store::RunnerRecord;

/// Entries in a runner's `capabilities`, `resource_info` or reported usage.
pub const MAX_FACTS: usize = 32;
const MAX_FACT_KEY: usize = 64;
const MAX_FACT_TEXT: usize = 256;
const MAX_PLATFORM_NAME: usize = 64;

/// The job a runner is on, if any (the oldest it holds, when it holds several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CurrentJob {
    pub job_id: String,
    pub task_id: String,
}

/// A runner as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = Runner)]
pub struct RunnerView {
    pub id: String,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: u32,
    pub running_jobs: Vec<String>,
    /// `online` or `offline` (silent for `offline_after_s`).
    pub status: RunnerState,
    pub online: bool,
    /// Online and running at least one job.
    pub busy: bool,
    pub current_job: Option<CurrentJob>,
    pub os: Option<String>,
    pub architecture: Option<String>,
    /// Scalars: booleans, numbers, strings.
    #[schema(value_type = Object)]
    pub capabilities: BTreeMap<String, Fact>,
    /// Scalars: booleans, numbers, strings.
    #[schema(value_type = Object)]
    pub resource_info: BTreeMap<String, Fact>,
    pub resource_usage: Option<BTreeMap<String, f64>>,
    pub resource_usage_at: Option<DateTime<Utc>>,
    pub owner: String,
    pub registered_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// What a runner is doing, as `GET /runners?status=` filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnerState {
    Online,
    Offline,
    /// Online with a job.
    Busy,
    /// Online without one.
    Idle,
}

impl RunnerState {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "online" => Some(Self::Online),
            "offline" => Some(Self::Offline),
            "busy" => Some(Self::Busy),
            "idle" => Some(Self::Idle),
            _ => None,
        }
    }

    fn matches(self, runner: &RunnerView) -> bool {
        match self {
            Self::Online => runner.online,
            Self::Offline => !runner.online,
            Self::Busy => runner.busy,
            Self::Idle => runner.online && !runner.busy,
        }
    }
}

/// Which runners a listing shows: those in `state` (any when `None`) carrying every label.
#[derive(Debug, Clone, Default)]
pub struct RunnerFilter {
    pub state: Option<RunnerState>,
    pub labels: Vec<String>,
}

impl RunnerFilter {
    /// From a listing's `status` (`online`, `offline`, `busy`, `idle`) and `labels` (`a,b`).
    pub fn parse(status: Option<&str>, labels: Option<&str>) -> Result<Self, RunnerError> {
        let state = match status {
            Some(text) => Some(RunnerState::parse(text).ok_or_else(|| {
                invalid(format!(
                    "status is online, offline, busy or idle, not {text:?}"
                ))
            })?),
            None => None,
        };
        let labels = labels
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { state, labels })
    }

    pub fn matches(&self, runner: &RunnerView) -> bool {
        self.state.is_none_or(|s| s.matches(runner))
            && self.labels.iter().all(|l| runner.labels.contains(l))
    }
}

/// The runners one may see, counted by state (`online` = `busy` + `idle`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct FleetSummary {
    pub total: usize,
    pub online: usize,
    pub busy: usize,
    pub idle: usize,
    pub offline: usize,
}

impl FleetSummary {
    pub fn of<'a>(runners: impl IntoIterator<Item = &'a RunnerView>) -> Self {
        let mut summary = Self::default();
        for runner in runners {
            summary.total += 1;
            if !runner.online {
                summary.offline += 1;
                continue;
            }
            summary.online += 1;
            if runner.busy {
                summary.busy += 1;
            } else {
                summary.idle += 1;
            }
        }
        summary
    }
}

/// A listing: the runners the filter lets through, and the summary of all one may see.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunnerList {
    pub data: Vec<RunnerView>,
    pub summary: FleetSummary,
}

fn invalid(message: impl Into<String>) -> RunnerError {
    RunnerError::Invalid(message.into())
}

fn check_key(what: &str, key: &str) -> Result<(), RunnerError> {
    let fits = !key.is_empty()
        && key.len() <= MAX_FACT_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if fits {
        Ok(())
    } else {
        Err(invalid(format!(
            "{what} keys are 1 to {MAX_FACT_KEY} letters, digits, '_', '-' or '.': {key:?}"
        )))
    }
}

fn check_facts(what: &str, facts: &BTreeMap<String, Fact>) -> Result<(), RunnerError> {
    if facts.len() > MAX_FACTS {
        return Err(invalid(format!("{what} has at most {MAX_FACTS} entries")));
    }
    for (key, value) in facts {
        check_key(what, key)?;
        if let Fact::Text(text) = value
            && text.chars().count() > MAX_FACT_TEXT
        {
            return Err(invalid(format!(
                "{what}.{key} is longer than {MAX_FACT_TEXT} characters"
            )));
        }
    }
    Ok(())
}

/// Refuses a profile past the bounds above.
pub fn check_profile(profile: &RunnerProfile) -> Result<(), RunnerError> {
    for (what, name) in [("os", &profile.os), ("architecture", &profile.architecture)] {
        if let Some(name) = name {
            let fits = !name.is_empty()
                && name.len() <= MAX_PLATFORM_NAME
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
            if !fits {
                return Err(invalid(format!(
                    "{what} is 1 to {MAX_PLATFORM_NAME} letters, digits, '_', '-', '.' or '+'"
                )));
            }
        }
    }
    check_facts("capabilities", &profile.capabilities)?;
    check_facts("resource_info", &profile.resource_info)
}

/// Refuses reported usage past the bounds above.
pub fn check_usage(values: &BTreeMap<String, f64>) -> Result<(), RunnerError> {
    if values.len() > MAX_FACTS {
        return Err(invalid(format!(
            "resource_usage has at most {MAX_FACTS} entries"
        )));
    }
    for (key, value) in values {
        check_key("resource_usage", key)?;
        if !value.is_finite() {
            return Err(invalid(format!(
                "resource_usage.{key} is not a finite number"
            )));
        }
    }
    Ok(())
}

impl Runners {
    /// `runner` as the API shows it; `running` is every running job as `(job, runner)`.
    pub(super) async fn view(
        &self,
        runner: RunnerRecord,
        running: &[(String, String)],
    ) -> Result<RunnerView, RunnerError> {
        let online = Utc::now() - runner.last_seen < seconds(self.config.offline_after_s);
        let running_jobs: Vec<String> = running
            .iter()
            .filter(|(_, on)| *on == runner.id)
            .map(|(job, _)| job.clone())
            .collect();
        let current_job = match running_jobs.first() {
            Some(job_id) => self
                .storage
                .runners()
                .job(job_id)
                .await?
                .map(|job| CurrentJob {
                    job_id: job.id,
                    task_id: job.task_id,
                }),
            None => None,
        };
        let (resource_usage, resource_usage_at) = match runner.usage {
            Some(ResourceUsage {
                values,
                reported_at,
            }) => (Some(values), Some(reported_at)),
            None => (None, None),
        };
        Ok(RunnerView {
            status: if online {
                RunnerState::Online
            } else {
                RunnerState::Offline
            },
            online,
            busy: online && !running_jobs.is_empty(),
            current_job,
            running_jobs,
            os: runner.profile.os,
            architecture: runner.profile.architecture,
            capabilities: runner.profile.capabilities,
            resource_info: runner.profile.resource_info,
            resource_usage,
            resource_usage_at,
            id: runner.id,
            name: runner.name,
            labels: runner.labels,
            capacity: runner.capacity,
            owner: runner.owner,
            registered_at: runner.registered_at,
            last_seen: runner.last_seen,
        })
    }

    /// Every runner, oldest registration first.
    pub async fn list(&self) -> Result<Vec<RunnerView>, RunnerError> {
        let store = self.storage.runners();
        let running = store.running_jobs().await?;
        let mut views = Vec::new();
        for runner in store.runners().await? {
            views.push(self.view(runner, &running).await?);
        }
        Ok(views)
    }

    pub async fn get(&self, id: &str) -> Result<RunnerView, RunnerError> {
        let store = self.storage.runners();
        let runner = store
            .runner(id)
            .await?
            .ok_or_else(|| RunnerError::UnknownRunner(id.to_owned()))?;
        self.view(runner, &store.running_jobs().await?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_past_their_bounds_are_refused_and_fitting_ones_pass() {
        let mut profile = RunnerProfile {
            os: Some("linux".into()),
            architecture: Some("x86_64".into()),
            ..RunnerProfile::default()
        };
        profile
            .capabilities
            .insert("docker".into(), Fact::Flag(true));
        profile
            .resource_info
            .insert("cpu_cores".into(), Fact::Number(8.into()));
        assert!(check_profile(&profile).is_ok());

        let mut bad = profile.clone();
        bad.os = Some("linux; rm -rf".into());
        assert!(check_profile(&bad).is_err());
        let mut bad = profile.clone();
        for i in 0..=MAX_FACTS {
            bad.capabilities.insert(format!("c{i}"), Fact::Flag(true));
        }
        assert!(check_profile(&bad).is_err());
        let mut bad = profile.clone();
        bad.resource_info
            .insert("note".into(), Fact::Text("x".repeat(MAX_FACT_TEXT + 1)));
        assert!(check_profile(&bad).is_err());
        let mut bad = profile;
        bad.resource_info
            .insert("bad key".into(), Fact::Flag(false));
        assert!(check_profile(&bad).is_err());

        let usage = BTreeMap::from([("cpu_usage".to_owned(), 45.2)]);
        assert!(check_usage(&usage).is_ok());
        let usage = BTreeMap::from([("cpu_usage".to_owned(), f64::NAN)]);
        assert!(check_usage(&usage).is_err());
    }
}
