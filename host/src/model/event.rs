//! Events: what happened to a task, in `seq` order. [`EventData`] is one typed payload per
//! kind of change, so the engine and the API read fields instead of looking up string keys;
//! its JSON form ([`EventData::to_json`]) is the `data` object the API documents, and
//! [`EventData::from_json`] reads that form back (stores written before payloads were typed).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{TaskProgress, TaskStatus, json_value, timestamp};
use crate::runtime::TaskFailure;

/// Event types the API fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Queued,
    Started,
    Progress,
    Log,
    Paused,
    Resumed,
    Retrying,
    Completed,
    Failed,
    Cancelled,
    Message,
}

/// Why a task is (back) in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCause {
    /// Just created.
    Created,
    /// Retried by request after it failed or was cancelled.
    Retry,
    /// A run was put back without counting against it (a shutdown, a restart); the reason.
    Requeued(String),
}

/// What an event says, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventData {
    Created {
        plugin: String,
        task_type: String,
        priority: i32,
    },
    /// Queued, or scheduled for later (`run_at`, a dependency wait).
    Queued {
        status: TaskStatus,
        #[serde(with = "timestamp::option")]
        scheduled_at: Option<DateTime<Utc>>,
        cause: QueueCause,
    },
    Started {
        attempt: u32,
    },
    Progress(TaskProgress),
    Log {
        level: String,
        message: String,
    },
    Paused,
    Resumed {
        status: TaskStatus,
    },
    /// A failed run that will be tried again after a backoff.
    Retrying {
        attempt: u32,
        delay_ms: u64,
        #[serde(with = "timestamp")]
        scheduled_at: DateTime<Utc>,
        error: TaskFailure,
    },
    Completed {
        #[serde(with = "json_value")]
        result: Value,
    },
    Failed {
        error: TaskFailure,
    },
    Cancelled {
        reason: String,
    },
    /// A message posted to the task's subscribers.
    Message {
        message_type: String,
        #[serde(with = "json_value")]
        data: Value,
    },
    /// A status an external executor reported (its result and error are on the task).
    Reported {
        kind: EventKind,
        status: TaskStatus,
        attempt: u32,
    },
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Created { .. } => EventKind::Created,
            Self::Queued { .. } => EventKind::Queued,
            Self::Started { .. } => EventKind::Started,
            Self::Progress(_) => EventKind::Progress,
            Self::Log { .. } => EventKind::Log,
            Self::Paused => EventKind::Paused,
            Self::Resumed { .. } => EventKind::Resumed,
            Self::Retrying { .. } => EventKind::Retrying,
            Self::Completed { .. } => EventKind::Completed,
            Self::Failed { .. } => EventKind::Failed,
            Self::Cancelled { .. } => EventKind::Cancelled,
            Self::Message { .. } => EventKind::Message,
            Self::Reported { kind, .. } => *kind,
        }
    }

    /// Whether the run this event belongs to is over: the task finished, will be retried, or
    /// was put back in the queue.
    pub fn ends_run(&self) -> bool {
        matches!(
            self.kind(),
            EventKind::Completed | EventKind::Failed | EventKind::Cancelled | EventKind::Retrying
        ) || matches!(
            self,
            Self::Queued {
                cause: QueueCause::Requeued(_),
                ..
            }
        )
    }

    /// The `data` object of the API.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Created {
                plugin,
                task_type,
                priority,
            } => json!({"plugin": plugin, "type": task_type, "priority": priority}),
            Self::Queued {
                status,
                scheduled_at,
                cause,
            } => {
                let mut data = Map::new();
                data.insert("status".into(), json!(status));
                if let Some(at) = scheduled_at {
                    data.insert("scheduled_at".into(), json!(timestamp::format(at)));
                }
                match cause {
                    QueueCause::Created => {}
                    QueueCause::Retry => {
                        data.insert("retry".into(), json!(true));
                    }
                    QueueCause::Requeued(reason) => {
                        data.insert("requeued".into(), json!(reason));
                    }
                }
                Value::Object(data)
            }
            Self::Started { attempt } => json!({"attempt": attempt}),
            Self::Progress(progress) => serde_json::to_value(progress).unwrap_or_default(),
            Self::Log { level, message } => json!({"level": level, "message": message}),
            Self::Paused => json!({"status": TaskStatus::Paused}),
            Self::Resumed { status } => json!({"status": status}),
            Self::Retrying {
                attempt,
                delay_ms,
                scheduled_at,
                error,
            } => json!({
                "attempt": attempt,
                "next_attempt": attempt + 1,
                "delay_ms": delay_ms,
                "scheduled_at": timestamp::format(scheduled_at),
                "error": error,
            }),
            Self::Completed { result } => json!({"result": result}),
            Self::Failed { error } => json!({"error": error}),
            Self::Cancelled { reason } => json!({"reason": reason}),
            Self::Message { message_type, data } => json!({"type": message_type, "data": data}),
            Self::Reported {
                status, attempt, ..
            } => json!({"status": status, "attempt": attempt}),
        }
    }

    /// Reads the API form of an event of `kind` back; `None` when `data` is not a form this
    /// host ever wrote for that kind.
    pub fn from_json(kind: EventKind, data: &Value) -> Option<Self> {
        let text = |field: &str| data.get(field).and_then(Value::as_str).map(str::to_owned);
        let number = |field: &str| data.get(field).and_then(Value::as_u64);
        let attempt = || number("attempt").and_then(|n| u32::try_from(n).ok());
        let status = || text("status").as_deref().and_then(TaskStatus::parse);
        let at = |field: &str| {
            text(field)
                .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let error = || serde_json::from_value::<TaskFailure>(data.get("error")?.clone()).ok();
        // An external executor's report: a status and the attempt, whatever the kind.
        let reported = || {
            Some(Self::Reported {
                kind,
                status: status()?,
                attempt: attempt()?,
            })
        };
        Some(match kind {
            EventKind::Created => Self::Created {
                plugin: text("plugin").unwrap_or_default(),
                task_type: text("type").unwrap_or_default(),
                priority: data
                    .get("priority")
                    .and_then(Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok())
                    .unwrap_or_default(),
            },
            EventKind::Queued if data.get("attempt").is_some() => reported()?,
            EventKind::Queued => Self::Queued {
                status: status()?,
                scheduled_at: at("scheduled_at"),
                cause: match (text("requeued"), data.get("retry")) {
                    (Some(reason), _) => QueueCause::Requeued(reason),
                    (None, Some(_)) => QueueCause::Retry,
                    (None, None) => QueueCause::Created,
                },
            },
            EventKind::Started if data.get("status").is_some() => reported()?,
            EventKind::Started => Self::Started {
                attempt: attempt()?,
            },
            EventKind::Progress => Self::Progress(serde_json::from_value(data.clone()).ok()?),
            EventKind::Log => Self::Log {
                level: text("level")?,
                message: text("message")?,
            },
            EventKind::Paused if data.get("attempt").is_some() => reported()?,
            EventKind::Paused => Self::Paused,
            EventKind::Resumed if data.get("attempt").is_some() => reported()?,
            EventKind::Resumed => Self::Resumed { status: status()? },
            EventKind::Retrying => Self::Retrying {
                attempt: attempt()?,
                delay_ms: number("delay_ms")?,
                scheduled_at: at("scheduled_at")?,
                error: error()?,
            },
            EventKind::Completed if data.get("result").is_none() => reported()?,
            EventKind::Completed => Self::Completed {
                result: data.get("result")?.clone(),
            },
            EventKind::Failed if data.get("error").is_none() => reported()?,
            EventKind::Failed => Self::Failed { error: error()? },
            EventKind::Cancelled if data.get("reason").is_none() => reported()?,
            EventKind::Cancelled => Self::Cancelled {
                reason: text("reason")?,
            },
            EventKind::Message => Self::Message {
                message_type: text("type")?,
                data: data.get("data").cloned().unwrap_or(Value::Null),
            },
        })
    }
}

/// A stored event. `owner`, `plugin` and `labels` are kept for authorisation and topic
/// routing; the API view ([`Event::to_api`]) leaves them out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub task_id: String,
    pub data: EventData,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
    pub owner: String,
    pub plugin: String,
    pub labels: BTreeMap<String, String>,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        self.data.kind()
    }

    pub fn to_api(&self) -> Value {
        json!({
            "seq": self.seq,
            "task_id": self.task_id,
            "type": self.kind(),
            "data": self.data.to_json(),
            "timestamp": timestamp::format(&self.timestamp),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_shape() -> Vec<EventData> {
        let at = DateTime::parse_from_rfc3339("2026-12-02T06:00:00.125Z")
            .map(|t| t.with_timezone(&Utc))
            .expect("time");
        let error = TaskFailure::new("PLUGIN_ERROR", "boom", true);
        let mut progress = TaskProgress {
            processed: Some(3),
            total: Some(4),
            current_step: Some("fetch".into()),
            ..TaskProgress::default()
        };
        progress.metrics.insert("bytes".into(), 1024.0);
        progress.refresh_percentage();
        vec![
            EventData::Created {
                plugin: "cache".into(),
                task_type: "warm".into(),
                priority: -3,
            },
            EventData::Queued {
                status: TaskStatus::Queued,
                scheduled_at: None,
                cause: QueueCause::Created,
            },
            EventData::Queued {
                status: TaskStatus::Scheduled,
                scheduled_at: Some(at),
                cause: QueueCause::Created,
            },
            EventData::Queued {
                status: TaskStatus::Queued,
                scheduled_at: None,
                cause: QueueCause::Retry,
            },
            EventData::Queued {
                status: TaskStatus::Queued,
                scheduled_at: None,
                cause: QueueCause::Requeued("the host is shutting down".into()),
            },
            EventData::Started { attempt: 2 },
            EventData::Progress(progress),
            EventData::Log {
                level: "warn".into(),
                message: "slow".into(),
            },
            EventData::Paused,
            EventData::Resumed {
                status: TaskStatus::Running,
            },
            EventData::Retrying {
                attempt: 1,
                delay_ms: 2000,
                scheduled_at: at,
                error: error.clone(),
            },
            EventData::Completed {
                result: json!({"n": 1, "nested": [true, null]}),
            },
            EventData::Failed { error },
            EventData::Cancelled {
                reason: "cancelled by request".into(),
            },
            EventData::Message {
                message_type: "note".into(),
                data: json!({"text": "hi"}),
            },
            EventData::Reported {
                kind: EventKind::Completed,
                status: TaskStatus::Completed,
                attempt: 1,
            },
            EventData::Reported {
                kind: EventKind::Started,
                status: TaskStatus::Running,
                attempt: 1,
            },
        ]
    }

    #[test]
    fn every_payload_reads_back_from_its_api_form() {
        for data in every_shape() {
            let json = data.to_json();
            assert_eq!(
                EventData::from_json(data.kind(), &json).as_ref(),
                Some(&data),
                "{json}"
            );
        }
    }

    #[test]
    fn a_run_ends_with_a_final_status_a_retry_or_a_requeue_but_not_a_new_task_queued() {
        let ends: Vec<bool> = every_shape().iter().map(EventData::ends_run).collect();
        assert_eq!(
            ends,
            [
                false, false, false, false, true, false, false, false, false, false, true, true,
                true, true, false, true, false
            ]
        );
    }

    #[test]
    fn a_payload_this_host_never_wrote_is_refused() {
        assert_eq!(EventData::from_json(EventKind::Log, &json!({})), None);
        assert_eq!(
            EventData::from_json(EventKind::Retrying, &json!({"attempt": 1})),
            None
        );
    }
}
