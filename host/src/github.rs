//! GitHub Actions integration: `workflow_job` webhooks become delegated jobs on the fleet.
//!
//! A delivery is accepted only with a valid `X-Hub-Signature-256` (HMAC-SHA256 of the body
//! under the operator's secret, compared in constant time). A `queued` job becomes a task of
//! the delegating plugin (`runner`/`delegate`) with id `github-job-<job id>` (so a redelivery
//! creates nothing twice), labelled `repository`, `github_job` and `workflow`, running the
//! operator's `steps` (typically an ephemeral Actions runner) on a runner carrying the job's
//! labels; a job GitHub reports `completed` as cancelled cancels its task. Each repository a
//! delivery names is remembered (in the host's own key-value namespace) with when it was first
//! and last active; its job counts come from the indexed `repository` label.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::auth::{Principal, Role};
use crate::engine::{Engine, EngineError, NewTask};
use crate::model::TaskStatus;
use crate::storage::{StorageError, TaskQuery};

/// The key-value namespace the integration keeps its state in: not a plugin name (plugin
/// names have no `/`), so no plugin can read or write it.
const NAMESPACE: &str = "taskhost/github";
const REPOSITORY_PREFIX: &str = "repository/";
const DELIVERIES_KEY: &str = "deliveries";
/// Most repositories listed.
pub const MAX_REPOSITORIES: usize = 1000;
/// Longest repository full name GitHub allows (owner 39 + `/` + name 100).
const MAX_FULL_NAME: usize = 140;

/// `[github]`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    pub enabled: bool,
    /// The webhook secret, or the variable that holds it (`webhook_secret_env`, preferred).
    pub webhook_secret: Option<String>,
    pub webhook_secret_env: Option<String>,
    /// The user the tasks are created as, and its role.
    pub user: String,
    pub role: Role,
    /// The plugin and task type that delegate a job to a runner.
    pub plugin: String,
    pub task_type: String,
    /// What a runner runs for a workflow job (`[{name, run: [argv], timeout_s}]`); it gets
    /// `GITHUB_REPOSITORY`, `GITHUB_JOB_ID`, `GITHUB_RUN_ID`, `GITHUB_SHA`, `GITHUB_REF_NAME`.
    pub steps: Vec<Value>,
    /// Longest a delegated job may run.
    pub timeout_s: u64,
    /// Shown by the status view.
    pub organization: Option<String>,
}

impl std::fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubConfig")
            .field("enabled", &self.enabled)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "***"),
            )
            .field("webhook_secret_env", &self.webhook_secret_env)
            .field("user", &self.user)
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            webhook_secret: None,
            webhook_secret_env: None,
            user: "github".into(),
            role: Role::User,
            plugin: "runner".into(),
            task_type: "delegate".into(),
            steps: Vec::new(),
            timeout_s: 6 * 3600,
            organization: None,
        }
    }
}

impl GithubConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.webhook_secret.is_some() == self.webhook_secret_env.is_some() {
            return Err("github: give one of webhook_secret and webhook_secret_env".into());
        }
        if self.steps.is_empty() {
            return Err(
                "github: steps says what a runner runs for a workflow job (at least one)".into(),
            );
        }
        Ok(())
    }

    /// The secret, read now (a variable may be set after the file was written).
    fn secret(&self) -> Option<String> {
        match (&self.webhook_secret, &self.webhook_secret_env) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(var)) => std::env::var(var).ok().filter(|s| !s.is_empty()),
            (None, None) => None,
        }
    }

    fn principal(&self) -> Principal {
        Principal::with_role(&self.user, self.role)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("the GitHub integration is not enabled")]
    Disabled,
    #[error("the webhook secret is not set")]
    NoSecret,
    #[error("the delivery's X-Hub-Signature-256 does not match its body")]
    BadSignature,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<StorageError> for GithubError {
    fn from(e: StorageError) -> Self {
        Self::Engine(e.into())
    }
}

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn signature_matches(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(digest) = signature
        .strip_prefix("sha256=")
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// `created`, `cancelled`, `duplicate`, `ignored` or `pong`.
    pub outcome: &'static str,
    pub task_id: Option<String>,
    pub reason: Option<String>,
}

impl Delivery {
    fn ignored(reason: impl Into<String>) -> Self {
        Self {
            outcome: "ignored",
            task_id: None,
            reason: Some(reason.into()),
        }
    }
}

/// A repository a delivery named, as kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeenRepository {
    pub id: Option<u64>,
    pub name: String,
    pub full_name: String,
    pub private: bool,
    pub first_seen: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
}

/// A repository with its job counts, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoryView {
    #[serde(flatten)]
    pub repository: SeenRepository,
    pub job_count: JobCount,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCount {
    pub total: u64,
    pub this_month: u64,
    pub running: u64,
}

/// The integration's state, for the status view.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Deliveries {
    pub total: u64,
    pub last: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GithubStatus {
    pub enabled: bool,
    pub webhook_status: &'static str,
    pub organization: Option<String>,
    pub deliveries: Deliveries,
    pub repositories_tracked: usize,
}

/// The integration: the config and the engine it creates tasks on.
#[derive(Clone)]
pub struct Github {
    config: GithubConfig,
    engine: Engine,
}

fn text<'a>(value: &'a Value, field: &str) -> Result<&'a str, GithubError> {
    value[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| GithubError::Invalid(format!("{field} is missing")))
}

fn valid_full_name(name: &str) -> bool {
    name.len() <= MAX_FULL_NAME
        && name.split_once('/').is_some_and(|(owner, repo)| {
            let part = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            };
            part(owner) && part(repo)
        })
}

impl Github {
    pub fn new(config: GithubConfig, engine: Engine) -> Self {
        Self { config, engine }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Verifies and handles one webhook delivery.
    pub async fn deliver(
        &self,
        event: &str,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Delivery, GithubError> {
        if !self.config.enabled {
            return Err(GithubError::Disabled);
        }
        let secret = self.config.secret().ok_or(GithubError::NoSecret)?;
        if !signature.is_some_and(|s| signature_matches(secret.as_bytes(), body, s)) {
            return Err(GithubError::BadSignature);
        }
        let payload: Value = serde_json::from_slice(body)
            .map_err(|e| GithubError::Invalid(format!("the body is not JSON: {e}")))?;
        self.count_delivery().await?;
        match event {
            "ping" => Ok(Delivery {
                outcome: "pong",
                task_id: None,
                reason: None,
            }),
            "workflow_job" => self.workflow_job(&payload).await,
            other => Ok(Delivery::ignored(format!(
                "{other} events are not handled; subscribe the webhook to workflow_job"
            ))),
        }
    }

    async fn workflow_job(&self, payload: &Value) -> Result<Delivery, GithubError> {
        let job = &payload["workflow_job"];
        let repository = &payload["repository"];
        let full_name = text(repository, "full_name")?;
        if !valid_full_name(full_name) {
            return Err(GithubError::Invalid(format!(
                "repository.full_name {full_name:?} is not owner/name"
            )));
        }
        let job_id = job["id"]
            .as_u64()
            .ok_or_else(|| GithubError::Invalid("workflow_job.id is missing".into()))?;
        self.remember(repository, full_name).await?;
        let task_id = format!("github-job-{job_id}");
        match text(payload, "action")? {
            "queued" => self.queue(job, full_name, job_id, task_id).await,
            "completed" if job["conclusion"] == "cancelled" => {
                let principal = self.config.principal();
                match self.engine.cancel(&principal, &task_id).await {
                    Ok(_) => Ok(Delivery {
                        outcome: "cancelled",
                        task_id: Some(task_id),
                        reason: None,
                    }),
                    Err(EngineError::TaskNotFound(_) | EngineError::Conflict(_)) => {
                        Ok(Delivery::ignored("no unfinished task for this job"))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            action => Ok(Delivery::ignored(format!(
                "a workflow_job {action} changes nothing here"
            ))),
        }
    }

    async fn queue(
        &self,
        job: &Value,
        full_name: &str,
        job_id: u64,
        task_id: String,
    ) -> Result<Delivery, GithubError> {
        let job_name = text(job, "name")?;
        let workflow = job["workflow_name"].as_str().unwrap_or_default();
        let labels: Vec<Value> = job["labels"]
            .as_array()
            .map(|labels| labels.iter().filter(|l| l.is_string()).cloned().collect())
            .unwrap_or_default();
        let mut env = BTreeMap::new();
        env.insert("GITHUB_REPOSITORY", json!(full_name));
        env.insert("GITHUB_JOB_ID", json!(job_id.to_string()));
        for (var, field) in [
            ("GITHUB_RUN_ID", "run_id"),
            ("GITHUB_SHA", "head_sha"),
            ("GITHUB_REF_NAME", "head_branch"),
        ] {
            match &job[field] {
                Value::String(s) => env.insert(var, json!(s)),
                Value::Number(n) => env.insert(var, json!(n.to_string())),
                _ => None,
            };
        }
        let mut input = json!({
            "repository": full_name,
            "job_id": job_id.to_string(),
            "job_name": job_name,
            "labels": labels,
            "metadata": {
                "branch": job["head_branch"],
                "commit_sha": job["head_sha"],
                "run_id": job["run_id"],
                "html_url": job["html_url"],
            },
            "steps": self.config.steps,
            "env": env,
            "timeout_s": self.config.timeout_s,
        });
        if !workflow.is_empty() {
            input["workflow_name"] = json!(workflow);
        }
        let mut task_labels = BTreeMap::new();
        task_labels.insert("repository".to_owned(), full_name.to_owned());
        task_labels.insert("github_job".to_owned(), job_id.to_string());
        if !workflow.is_empty() {
            let workflow: String = workflow.chars().filter(|c| *c != '=').take(256).collect();
            task_labels.insert("workflow".to_owned(), workflow);
        }
        let new = NewTask {
            id: Some(task_id.clone()),
            plugin: self.config.plugin.clone(),
            task_type: self.config.task_type.clone(),
            input,
            labels: task_labels,
            title: Some(job_name.chars().take(200).collect()),
            ..NewTask::default()
        };
        match self.engine.create(&self.config.principal(), new).await {
            Ok(task) => Ok(Delivery {
                outcome: "created",
                task_id: Some(task.id),
                reason: None,
            }),
            Err(EngineError::Conflict(_)) => Ok(Delivery {
                outcome: "duplicate",
                task_id: Some(task_id),
                reason: Some("this job was delivered before".into()),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn remember(&self, repository: &Value, full_name: &str) -> Result<(), GithubError> {
        let storage = self.engine.storage();
        let key = format!("{REPOSITORY_PREFIX}{full_name}");
        let now = Utc::now();
        let mut seen = match storage.kv_get(NAMESPACE, &key).await? {
            Some(bytes) => serde_json::from_slice::<SeenRepository>(&bytes).ok(),
            None => None,
        }
        .unwrap_or_else(|| SeenRepository {
            id: None,
            name: String::new(),
            full_name: full_name.to_owned(),
            private: false,
            first_seen: now,
            last_activity: now,
        });
        seen.id = repository["id"].as_u64().or(seen.id);
        seen.name = full_name
            .split_once('/')
            .map_or(full_name, |(_, name)| name)
            .to_owned();
        seen.private = repository["private"].as_bool().unwrap_or(seen.private);
        seen.last_activity = now;
        let bytes = serde_json::to_vec(&seen).map_err(|e| GithubError::Invalid(e.to_string()))?;
        storage.kv_set(NAMESPACE, &key, &bytes).await?;
        Ok(())
    }

    async fn count_delivery(&self) -> Result<(), GithubError> {
        let storage = self.engine.storage();
        let mut deliveries = self.deliveries().await?;
        deliveries.total += 1;
        deliveries.last = Some(Utc::now());
        let bytes =
            serde_json::to_vec(&deliveries).map_err(|e| GithubError::Invalid(e.to_string()))?;
        storage.kv_set(NAMESPACE, DELIVERIES_KEY, &bytes).await?;
        Ok(())
    }

    async fn deliveries(&self) -> Result<Deliveries, GithubError> {
        Ok(
            match self
                .engine
                .storage()
                .kv_get(NAMESPACE, DELIVERIES_KEY)
                .await?
            {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                None => Deliveries::default(),
            },
        )
    }

    async fn seen(&self) -> Result<Vec<SeenRepository>, GithubError> {
        let storage = self.engine.storage();
        let keys = storage
            .kv_list(NAMESPACE, REPOSITORY_PREFIX, MAX_REPOSITORIES)
            .await?;
        let mut seen = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(bytes) = storage.kv_get(NAMESPACE, &key).await?
                && let Ok(repository) = serde_json::from_slice(&bytes)
            {
                seen.push(repository);
            }
        }
        Ok(seen)
    }

    /// The repositories deliveries named, by full name, with the job counts `principal` may
    /// see; one whose jobs it sees none of is left out, unless it sees every task.
    pub async fn repositories(
        &self,
        principal: &Principal,
    ) -> Result<Vec<RepositoryView>, GithubError> {
        let now = Utc::now();
        let month_start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single();
        let sees_all = {
            let scope = crate::policy::read_scope(principal);
            scope.owner.is_none() && scope.plugins.is_none()
        };
        let mut views = Vec::new();
        for repository in self.seen().await? {
            let count = |status: Option<TaskStatus>, created_after: Option<DateTime<Utc>>| {
                let query = TaskQuery {
                    plugin: Some(self.config.plugin.clone()),
                    labels: vec![("repository".to_owned(), repository.full_name.clone())],
                    status,
                    created_after,
                    limit: 0,
                    ..TaskQuery::default()
                };
                async move { self.engine.list(principal, query).await.map(|(_, n)| n) }
            };
            let job_count = JobCount {
                total: count(None, None).await?,
                this_month: count(None, month_start).await?,
                running: count(Some(TaskStatus::Running), None).await?,
            };
            // A repository's name is shown to those who see its jobs.
            if sees_all || job_count.total > 0 {
                views.push(RepositoryView {
                    repository,
                    job_count,
                });
            }
        }
        Ok(views)
    }

    pub async fn status(&self) -> Result<GithubStatus, GithubError> {
        Ok(GithubStatus {
            enabled: self.config.enabled,
            webhook_status: match (self.config.enabled, self.config.secret().is_some()) {
                (true, true) => "active",
                (true, false) => "no_secret",
                (false, _) => "disabled",
            },
            organization: self.config.organization.clone(),
            deliveries: self.deliveries().await?,
            repositories_tracked: self.seen().await?.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn a_signature_matches_only_its_body_under_its_secret() {
        let body = br#"{"action":"queued"}"#;
        let good = sign(b"s3cret", body);
        assert!(signature_matches(b"s3cret", body, &good));
        assert!(!signature_matches(b"other", body, &good));
        assert!(!signature_matches(
            b"s3cret",
            br#"{"action":"completed"}"#,
            &good
        ));
        assert!(!signature_matches(
            b"s3cret",
            body,
            &good.replace("sha256=", "sha1=")
        ));
        assert!(!signature_matches(b"s3cret", body, "sha256=zz"));
        assert!(!signature_matches(b"s3cret", body, ""));
    }

    #[test]
    fn repository_names_are_owner_slash_name() {
        assert!(valid_full_name("octo-org/hello.world_2"));
        for bad in ["octo", "/repo", "owner/", "a/b/c", "own er/repo", "o/r?x=1"] {
            assert!(!valid_full_name(bad), "{bad}");
        }
    }

    #[test]
    fn an_enabled_integration_needs_one_secret_and_steps_and_never_prints_the_secret() {
        let mut config = GithubConfig {
            enabled: true,
            ..GithubConfig::default()
        };
        assert!(config.validate().is_err());
        config.webhook_secret = Some("hunter2".into());
        assert!(config.validate().unwrap_err().contains("steps"));
        config.steps = vec![json!({"name": "run", "run": ["true"]})];
        config.validate().expect("valid");
        config.webhook_secret_env = Some("GITHUB_WEBHOOK_SECRET".into());
        assert!(config.validate().is_err(), "both ways at once");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
