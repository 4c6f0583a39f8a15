//! What a new task must pass before it is stored: the API's bounds (ids, labels, priority,
//! attempts, timeout, dependencies, reporters), the task type's JSON Schema (validators are
//! compiled once per plugin version), and the plugin's own `validate`.

use std::sync::Arc;

use serde_json::{Value, json};
use tracing::warn;

use super::{Engine, EngineError, NewTask, lock};
use crate::auth::{Principal, secret_paths};
use crate::model::Executor;
use crate::policy;

const MAX_LABELS: usize = 32;
/// Labels the host sets itself ([`super::reports::RUNNER_LABEL`]); a client may filter by
/// them but not set them.
const HOST_LABEL_PREFIX: &str = "taskhost/";
const MAX_DEPENDENCIES: usize = 100;
const MAX_REPORTERS: usize = 16;
/// Longest task title, in characters.
const MAX_TITLE_CHARS: usize = 200;

impl Engine {
    /// JSON pointers of the input fields the task type's schema marks `writeOnly`: of a loaded
    /// plugin's task type, whoever runs it (a crawler reporting on a `gitlab` task keeps its
    /// token masked too).
    pub(super) fn secret_paths_of(&self, new: &NewTask) -> Vec<String> {
        self.inner
            .registry
            .get(&new.plugin)
            .and_then(|loaded| {
                loaded
                    .plugin
                    .info()
                    .task_type(&new.task_type)
                    .map(|t| secret_paths(&t.input_schema))
            })
            .unwrap_or_default()
    }

    /// Checks a new task against the plugin and the API's rules; returns its timeout limit.
    pub(super) async fn check_new_task(
        &self,
        principal: &Principal,
        new: &NewTask,
    ) -> Result<u64, EngineError> {
        if let Some(id) = &new.id
            && !valid_id(id)
        {
            return Err(EngineError::validation(
                "id must be 1-128 characters of A-Z, a-z, 0-9, '.', '_', ':' and '-'",
            ));
        }
        if new.labels.len() > MAX_LABELS {
            return Err(EngineError::validation(format!(
                "at most {MAX_LABELS} labels"
            )));
        }
        for (key, value) in &new.labels {
            if key.starts_with(HOST_LABEL_PREFIX) {
                return Err(EngineError::validation(format!(
                    "label {key:?}: labels under {HOST_LABEL_PREFIX:?} are the host's own"
                )));
            }
            if !valid_label_key(key) || !valid_label_value(value) {
                return Err(EngineError::validation(format!(
                    "label {key:?}: keys are 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'; \
                     values at most 256 characters without control characters or '='"
                )));
            }
        }
        if let Some(priority) = new.priority
            && !(-1000..=1000).contains(&priority)
        {
            return Err(EngineError::validation(
                "priority must be between -1000 and 1000",
            ));
        }
        if let Some(attempts) = new.max_attempts
            && !(1..=100).contains(&attempts)
        {
            return Err(EngineError::validation(
                "max_attempts must be between 1 and 100",
            ));
        }
        if let Some(timeout) = new.timeout_s
            && !(1..=7 * 86_400).contains(&timeout)
        {
            return Err(EngineError::validation(
                "timeout_s must be between 1 and 604800",
            ));
        }
        if let Some(title) = &new.title
            && (title.trim().is_empty()
                || title.chars().count() > MAX_TITLE_CHARS
                || title.chars().any(char::is_control))
        {
            return Err(EngineError::Validation {
                message: format!(
                    "a title is 1 to {MAX_TITLE_CHARS} characters without control characters"
                ),
                details: json!({"field": "title"}),
            });
        }
        if new.depends_on.len() > MAX_DEPENDENCIES {
            return Err(EngineError::validation(format!(
                "at most {MAX_DEPENDENCIES} dependencies"
            )));
        }
        if new.reporters.len() > MAX_REPORTERS
            || new
                .reporters
                .iter()
                .any(|r| !valid_name(r) || r.chars().count() > 64)
        {
            return Err(EngineError::validation(format!(
                "reporters: at most {MAX_REPORTERS} usernames of 1-64 characters"
            )));
        }
        for dependency in &new.depends_on {
            // A task the caller may not read does not exist for it here either.
            let readable = valid_id(dependency)
                && self
                    .inner
                    .storage
                    .get_task(dependency)
                    .await?
                    .is_some_and(|task| policy::may_read(principal, &task));
            if !readable {
                return Err(EngineError::Validation {
                    message: format!("dependency {dependency} does not exist"),
                    details: json!({"field": "depends_on"}),
                });
            }
        }
        if new.executor == Executor::External {
            if !valid_name(&new.plugin) || !valid_name(&new.task_type) {
                return Err(EngineError::validation(
                    "plugin and type of an external task are 1-128 characters without '/' or control characters",
                ));
            }
            return Ok(7 * 86_400);
        }
        let loaded = self
            .inner
            .registry
            .get(&new.plugin)
            .ok_or_else(|| EngineError::PluginNotFound(new.plugin.clone()))?;
        let plugin = &loaded.plugin;
        let task_type = plugin.info().task_type(&new.task_type).ok_or_else(|| {
            EngineError::UnsupportedTaskType {
                plugin: new.plugin.clone(),
                task_type: new.task_type.clone(),
            }
        })?;
        self.check_schema(
            plugin.digest(),
            &task_type.name,
            &task_type.input_schema,
            &new.input,
        )?;
        plugin
            .validate(&new.task_type, &new.input.to_string())
            .await
            .map_err(|failure| EngineError::Validation {
                message: failure.message,
                details: json!({"code": failure.code}),
            })?;
        Ok(plugin.grants().limits.timeout_s)
    }

    fn check_schema(
        &self,
        digest: &str,
        task_type: &str,
        schema: &Value,
        input: &Value,
    ) -> Result<(), EngineError> {
        let cache_key = (digest.to_owned(), task_type.to_owned());
        let validator = {
            let mut validators = lock(&self.inner.validators);
            match validators.get(&cache_key) {
                Some(v) => v.clone(),
                None => {
                    let compiled = jsonschema::validator_for(schema).map_err(|e| {
                        warn!(%task_type, error = %e, "plugin declares an unusable input schema");
                        EngineError::Unavailable(format!(
                            "the input schema of {task_type} cannot be used; the plugin must be fixed"
                        ))
                    })?;
                    let compiled = Arc::new(compiled);
                    validators.insert(cache_key, compiled.clone());
                    compiled
                }
            }
        };
        let errors: Vec<Value> = validator
            .iter_errors(input)
            .take(10)
            .map(|e| json!({"path": e.instance_path().to_string(), "message": e.to_string()}))
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let first = errors[0]["message"]
            .as_str()
            .unwrap_or("invalid")
            .to_owned();
        Err(EngineError::Validation {
            message: format!("input does not match the {task_type} schema: {first}"),
            details: json!({"errors": errors}),
        })
    }
}

fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

fn valid_label_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn valid_label_value(value: &str) -> bool {
    value.len() <= 256 && !value.chars().any(|c| c.is_control() || c == '=')
}

fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.chars().count()) && !name.chars().any(|c| c.is_control() || c == '/')
}
