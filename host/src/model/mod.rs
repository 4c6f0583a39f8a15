//! The task model shared by storage, engine and API: tasks, their statuses and the one state
//! machine that says which status may follow which, events, log lines and records, and the
//! jobs tasks hand to runners ([`runner`]).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::runtime::TaskFailure;

mod event;
pub mod runner;
pub use event::{Event, EventData, EventKind, QueueCause};

/// RFC 3339 in UTC with milliseconds, as the API fixes. In a compact (binary) store encoding a
/// time is its microseconds since the epoch instead.
pub mod timestamp {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    fn parse<E: serde::de::Error>(text: &str) -> Result<DateTime<Utc>, E> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(E::custom)
    }

    fn from_micros<E: serde::de::Error>(micros: i64) -> Result<DateTime<Utc>, E> {
        DateTime::from_timestamp_micros(micros).ok_or_else(|| E::custom("time out of range"))
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format(t))
        } else {
            s.serialize_i64(t.timestamp_micros())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            parse(&String::deserialize(d)?)
        } else {
            from_micros(i64::deserialize(d)?)
        }
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) if s.is_human_readable() => s.serialize_some(&format(t)),
                Some(t) => s.serialize_some(&t.timestamp_micros()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            if d.is_human_readable() {
                Option::<String>::deserialize(d)?
                    .map(|text| parse(&text))
                    .transpose()
            } else {
                Option::<i64>::deserialize(d)?.map(from_micros).transpose()
            }
        }
    }
}

/// A JSON value inside a record: itself in JSON, its text in a compact (binary) encoding,
/// which cannot carry a self-describing value.
pub mod json_value {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(value: &Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            value.serialize(s)
        } else {
            s.serialize_str(&value.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        if d.is_human_readable() {
            Value::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(value: &Option<Value>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) if s.is_human_readable() => s.serialize_some(value),
                Some(value) => s.serialize_some(&value.to_string()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
            if d.is_human_readable() {
                Option::<Value>::deserialize(d)
            } else {
                Option::<String>::deserialize(d)?
                    .map(|text| serde_json::from_str(&text).map_err(serde::de::Error::custom))
                    .transpose()
            }
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    /// Waiting for `run_at` or for a retry's backoff to pass.
    Scheduled,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Queued,
        TaskStatus::Scheduled,
        TaskStatus::Running,
        TaskStatus::Paused,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Scheduled => "scheduled",
            TaskStatus::Running => "running",
            TaskStatus::Paused => "paused",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The state machine, in one place: whether a task may go from `self` to `next`.
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        match self {
            // Failed: a dependency failed before the task could start. Paused: held back.
            Queued => matches!(next, Running | Scheduled | Cancelled | Failed | Paused),
            Scheduled => matches!(next, Queued | Cancelled | Failed | Paused),
            // Queued: requeued at shutdown or after a crash; Scheduled: retry after backoff.
            Running => matches!(
                next,
                Completed | Failed | Cancelled | Paused | Queued | Scheduled
            ),
            Paused => matches!(next, Running | Cancelled | Failed | Queued),
            // Retry by request.
            Failed | Cancelled => matches!(next, Queued),
            Completed => false,
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who performs a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Executor {
    /// A loaded plugin runs it.
    #[default]
    Plugin,
    /// Something outside the host performs it and reports over the API.
    External,
}

/// Progress as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = Progress)]
pub struct TaskProgress {
    pub processed: Option<u64>,
    pub total: Option<u64>,
    pub percentage: Option<f64>,
    pub current_step: Option<String>,
    pub message: Option<String>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

impl TaskProgress {
    /// Applies a report's fields: those it carries replace the current ones (metrics are
    /// merged, under their caps, by `engine::progress`).
    pub fn merge(
        &mut self,
        processed: Option<u64>,
        total: Option<u64>,
        step: Option<&str>,
        message: Option<&str>,
    ) {
        if processed.is_some() {
            self.processed = processed;
        }
        if total.is_some() {
            self.total = total;
        }
        if let Some(step) = step {
            self.current_step = Some(step.to_owned());
        }
        if let Some(message) = message {
            self.message = Some(message.to_owned());
        }
        self.refresh_percentage();
    }

    /// Recomputes `percentage` from processed/total.
    pub fn refresh_percentage(&mut self) {
        self.percentage = match (self.processed, self.total) {
            (Some(done), Some(total)) if total > 0 => {
                Some(((done as f64 / total as f64) * 10_000.0).round() / 100.0)
            }
            _ => self.percentage,
        };
    }
}

/// A task, as stored and (with secrets masked) as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub plugin: String,
    #[serde(rename = "type")]
    pub task_type: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub executor: Executor,
    /// The input with secrets masked as `"***"`; the clear values live in `sealed_input`.
    #[serde(with = "json_value")]
    pub input: serde_json::Value,
    /// The secret fields of the input, encrypted; never serialised to clients.
    #[serde(default)]
    #[schema(ignore)]
    pub sealed_input: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub owner: String,
    pub progress: TaskProgress,
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_s: u64,
    #[serde(with = "json_value::option", default)]
    pub result: Option<serde_json::Value>,
    pub error: Option<TaskFailure>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    /// Users besides the owner who may report on this external task.
    #[serde(default)]
    pub reporters: Vec<String>,
    /// The API key the task was created with: its children act through the same key, so a
    /// task tree never holds more than the key that started it (never shown to clients).
    #[serde(default)]
    #[schema(ignore)]
    pub created_via: Option<String>,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    /// When a scheduled task becomes due (`run_at`, or the end of a retry's backoff).
    #[serde(with = "timestamp::option", default)]
    pub scheduled_at: Option<DateTime<Utc>>,
    #[serde(with = "timestamp::option", default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(with = "timestamp::option", default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
    // Fields added since tasks were first stored go here, at the end, and read as `None` in
    // a task stored before them (storage::codec).
    /// A name for people (`Refactor the parser`), up to 200 characters.
    #[serde(default)]
    pub title: Option<String>,
    /// How long the work took, in seconds: as an external reporter said, or else from
    /// `started_at` to `finished_at` once it has finished.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
}

impl Task {
    /// The JSON clients see: everything but the sealed secrets.
    pub fn to_api(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("sealed_input");
            object.remove("created_via");
            if self.duration_seconds.is_none()
                && let (Some(start), Some(end)) = (self.started_at, self.finished_at)
            {
                let seconds = (end - start).num_milliseconds().max(0) as f64 / 1000.0;
                object.insert("duration_seconds".into(), serde_json::json!(seconds));
            }
            if self.reporters.is_empty() {
                object.remove("reporters");
            }
        }
        value
    }

    /// What a named reporter gets back: the state it reports on, not the owner's input.
    pub fn to_reporter_api(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "status": self.status,
            "attempt": self.attempt,
            "progress": self.progress,
            "updated_at": timestamp::format(&self.updated_at),
        })
    }
}

/// A host-wide notice for the `system` stream topic: plugin loads, replacements and unloads,
/// queue pauses and health changes. Not tied to a task, so not stored and without a `seq`:
/// a client that reconnects reads the current state from the API instead of replaying these.
#[derive(Debug, Clone)]
pub struct SystemNotice {
    pub event: &'static str,
    pub data: serde_json::Value,
    pub timestamp: DateTime<Utc>,
}

impl SystemNotice {
    pub fn new(event: &'static str, data: serde_json::Value) -> Self {
        Self {
            event,
            data,
            timestamp: Utc::now(),
        }
    }

    pub fn to_api(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "system",
            "event": self.event,
            "data": self.data,
            "timestamp": timestamp::format(&self.timestamp),
        })
    }
}

/// One line of a task's log; `seq` is the seq of its `log` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogEntry {
    pub seq: u64,
    pub level: String,
    pub message: String,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
    // Fields added since log lines were first stored go here, at the end (storage::codec).
    /// The step that wrote the line (a runner job's step, or the task's current step).
    #[serde(default)]
    pub step: Option<String>,
}

/// An item a plugin emitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Record {
    pub collection: String,
    pub key: String,
    #[serde(with = "json_value")]
    pub data: serde_json::Value,
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses_only_lead_back_to_queued_and_completed_leads_nowhere() {
        for next in TaskStatus::ALL {
            assert!(!TaskStatus::Completed.can_become(next));
            assert_eq!(
                TaskStatus::Failed.can_become(next),
                next == TaskStatus::Queued
            );
            assert_eq!(
                TaskStatus::Cancelled.can_become(next),
                next == TaskStatus::Queued
            );
        }
        assert!(TaskStatus::Queued.can_become(TaskStatus::Running));
        assert!(!TaskStatus::Queued.can_become(TaskStatus::Completed));
        assert!(!TaskStatus::Scheduled.can_become(TaskStatus::Running));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TaskStatus::parse("done"), None);
    }

    #[test]
    fn percentage_follows_processed_and_total() {
        let mut progress = TaskProgress {
            processed: Some(45),
            total: Some(100),
            ..TaskProgress::default()
        };
        progress.refresh_percentage();
        assert_eq!(progress.percentage, Some(45.0));
    }
}

/// A user account. The password is kept only as an argon2 hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
    pub role: crate::auth::Role,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
}

/// An API key. The key itself is shown once at creation; only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// The user the key acts as.
    pub owner: String,
    pub secret_sha256: String,
    /// The key's role; `None` with explicit `permissions` means those permissions only.
    pub role: Option<crate::auth::Role>,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// With `runners:register`: the only labels a runner registered with the key may carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_labels: Option<Vec<String>>,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp::option", default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(with = "timestamp::option", default)]
    pub revoked_at: Option<DateTime<Utc>>,
}
