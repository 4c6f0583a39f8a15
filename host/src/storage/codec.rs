//! How stored values are laid out as bytes. The records every task writes (tasks, events, log
//! lines, plugin records) are compact: a format byte, then postcard (field order, varints,
//! times as microseconds, no field names), about a third of their JSON. Rarely written
//! records (users, API keys) stay JSON. Reading accepts both, so a store written before the
//! compact form reads on: a value that opens with `{` is JSON, and an event in the JSON form
//! of that time has its payload read back by [`EventData::from_json`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StorageError;
use crate::model::{Event, EventData, EventKind, timestamp};

/// The format byte of a compact value, counting its layout generations; JSON values start
/// with `{`. How a stored struct grows: a new field goes at its end and must read as its zero
/// value (`None`, empty, `false`, `0`), which postcard writes as one zero byte, and the
/// generation goes up. A value of an earlier generation that ends early is read again with
/// zero bytes appended, one per field it lacks (up to [`MAX_APPENDED_FIELDS`]); one of the
/// current generation must be whole.
///
/// Generation 2 added `Task::title` and `Task::duration_seconds`; 3 added `LogEntry::step`.
const COMPACT: u8 = 3;
/// The first compact generation.
const COMPACT_FIRST: u8 = 1;
const MAX_APPENDED_FIELDS: usize = 8;

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("corrupt entry: {e}"))
}

/// A record every task writes: compact.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![COMPACT];
    postcard::to_io(value, &mut bytes).map_err(|e| StorageError::Backend(e.to_string()))?;
    Ok(bytes)
}

/// A rarely written record (accounts, keys): JSON, readable with any tool.
pub fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| StorageError::Backend(e.to_string()))
}

/// Reads a value in either form.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&COMPACT, rest)) => postcard::from_bytes(rest).map_err(corrupt),
        Some((&(COMPACT_FIRST..COMPACT), rest)) => match postcard::from_bytes(rest) {
            Err(postcard::Error::DeserializeUnexpectedEnd) => decode_older(rest),
            read => read.map_err(corrupt),
        },
        _ => serde_json::from_slice(bytes).map_err(corrupt),
    }
}

/// A compact value written before its struct gained fields (see [`MAX_APPENDED_FIELDS`]).
fn decode_older<T: DeserializeOwned>(rest: &[u8]) -> Result<T, StorageError> {
    for missing in 1..=MAX_APPENDED_FIELDS {
        let mut padded = Vec::with_capacity(rest.len() + missing);
        padded.extend_from_slice(rest);
        padded.resize(rest.len() + missing, 0);
        match postcard::from_bytes(&padded) {
            Err(postcard::Error::DeserializeUnexpectedEnd) => continue,
            read => return read.map_err(corrupt),
        }
    }
    Err(corrupt("the value ends early"))
}

/// An event as the JSON form before typed payloads stored it.
#[derive(serde::Deserialize)]
struct JsonEvent {
    seq: u64,
    task_id: String,
    #[serde(rename = "type")]
    kind: EventKind,
    data: serde_json::Value,
    #[serde(with = "timestamp")]
    timestamp: chrono::DateTime<chrono::Utc>,
    owner: String,
    plugin: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// Reads an event in either form.
pub fn decode_event(bytes: &[u8]) -> Result<Event, StorageError> {
    if bytes
        .first()
        .is_some_and(|b| (COMPACT_FIRST..=COMPACT).contains(b))
    {
        return decode(bytes);
    }
    let json: JsonEvent = serde_json::from_slice(bytes).map_err(corrupt)?;
    let data = EventData::from_json(json.kind, &json.data).ok_or_else(|| {
        corrupt(format!(
            "event {}: unknown {:?} payload",
            json.seq, json.kind
        ))
    })?;
    Ok(Event {
        seq: json.seq,
        task_id: json.task_id,
        data,
        timestamp: json.timestamp,
        owner: json.owner,
        plugin: json.plugin,
        labels: json.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Task, TaskStatus};
    use chrono::Utc;
    use serde_json::json;

    fn event() -> Event {
        Event {
            seq: 7,
            task_id: "t-1".into(),
            data: EventData::Completed {
                result: json!({"n": 1, "list": [1.5, "x", null]}),
            },
            timestamp: chrono::DateTime::from_timestamp_micros(1_764_655_200_123_456)
                .expect("time"),
            owner: "alice".into(),
            plugin: "testkit".into(),
            labels: [("project".to_owned(), "p1".to_owned())].into(),
        }
    }

    #[test]
    fn a_compact_event_reads_back_whole_and_is_far_smaller_than_its_json() {
        let event = event();
        let bytes = encode(&event).expect("encoded");
        assert_eq!(decode_event(&bytes).expect("decoded"), event);
        // The JSON form it was stored in: the API view with who may read it.
        let mut stored = event.to_api();
        stored["owner"] = json!(event.owner);
        stored["plugin"] = json!(event.plugin);
        stored["labels"] = json!(event.labels);
        let json = serde_json::to_vec(&stored).expect("json");
        assert!(
            bytes.len() * 2 < json.len(),
            "{} compact bytes against {} of JSON",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn an_event_stored_as_json_before_payloads_were_typed_still_reads() {
        let old = json!({
            "seq": 7, "task_id": "t-1", "type": "completed",
            "data": {"result": {"n": 1, "list": [1.5, "x", null]}},
            "timestamp": "2025-12-02T06:00:00.123Z",
            "owner": "alice", "plugin": "testkit", "labels": {"project": "p1"},
        });
        let read = decode_event(&serde_json::to_vec(&old).expect("json")).expect("decoded");
        let mut expected = event();
        expected.timestamp = chrono::DateTime::parse_from_rfc3339("2025-12-02T06:00:00.123Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(read, expected);
        let unknown = json!({
            "seq": 8, "task_id": "t-1", "type": "log", "data": {},
            "timestamp": "2025-12-02T06:00:00.123Z", "owner": "alice", "plugin": "testkit",
        });
        assert!(decode_event(&serde_json::to_vec(&unknown).expect("json")).is_err());
    }

    #[test]
    fn a_log_line_written_before_steps_were_kept_reads_without_one() {
        let entry = crate::model::LogEntry {
            seq: 4,
            level: "info".into(),
            message: "Installing dependencies".into(),
            timestamp: chrono::DateTime::from_timestamp_micros(1_764_655_200_123_456)
                .expect("time"),
            step: None,
        };
        let current = encode(&entry).expect("compact");
        let mut older = current[..current.len() - 1].to_vec();
        older[0] = 2;
        assert_eq!(
            decode::<crate::model::LogEntry>(&older).expect("generation 2 reads"),
            entry
        );
        let stepped = crate::model::LogEntry {
            step: Some("build".into()),
            ..entry
        };
        assert_eq!(
            decode::<crate::model::LogEntry>(&encode(&stepped).expect("compact")).expect("read"),
            stepped
        );
    }

    #[test]
    fn a_task_written_before_its_newest_fields_reads_them_as_none() {
        let task: Task = serde_json::from_value(json!({
            "id": "t-1", "plugin": "testkit", "type": "echo", "status": "queued",
            "input": {}, "labels": {}, "priority": 0, "owner": "bob",
            "progress": {"processed": null, "total": null, "percentage": null,
                         "current_step": null, "message": null, "metrics": {}},
            "attempt": 0, "max_attempts": 3, "timeout_s": 60,
            "created_at": "2026-12-02T06:00:00.000Z", "updated_at": "2026-12-02T06:00:00.000Z",
        }))
        .expect("a task");
        assert_eq!((&task.title, task.duration_seconds), (&None, None));
        let current = encode(&task).expect("compact");
        assert_eq!(current[0], COMPACT);
        // Generation 1, before `title` and `duration_seconds`: the same fields, without
        // their two `None`s.
        let mut older = current[..current.len() - 2].to_vec();
        older[0] = COMPACT_FIRST;
        assert_eq!(decode::<Task>(&older).expect("generation 1 reads"), task);
        assert!(
            decode::<Task>(&current[..current.len() - 2]).is_err(),
            "a value of the current generation must be whole"
        );

        let mut titled = task;
        titled.title = Some("Refactor the parser".into());
        titled.duration_seconds = Some(12.5);
        assert_eq!(
            decode::<Task>(&encode(&titled).expect("compact")).expect("reads"),
            titled
        );
    }

    #[test]
    fn a_task_reads_back_from_either_form() {
        let task: Task = serde_json::from_value(json!({
            "id": "t-1", "plugin": "testkit", "type": "echo", "status": "completed",
            "input": {"a": [1, 2]}, "labels": {"k": "v"}, "priority": 3, "owner": "bob",
            "progress": {"processed": 1, "total": 2, "percentage": 50.0, "current_step": null,
                         "message": null, "metrics": {"bytes": 10.0}},
            "attempt": 1, "max_attempts": 3, "timeout_s": 60, "result": {"ok": true},
            "error": null, "created_at": "2026-12-02T06:00:00.000Z",
            "updated_at": "2026-12-02T06:00:01.000Z", "finished_at": "2026-12-02T06:00:01.000Z",
        }))
        .expect("a task as JSON stored it");
        let json = encode_json(&task).expect("json");
        let compact = encode(&task).expect("compact");
        assert_eq!(decode::<Task>(&json).expect("json reads"), task);
        assert_eq!(decode::<Task>(&compact).expect("compact reads"), task);
        assert_eq!(task.status, TaskStatus::Completed);
        assert!(
            compact.len() < json.len() / 2,
            "{} vs {}",
            compact.len(),
            json.len()
        );
    }
}
