//! Stream topics: what a subscriber names, and which events each one matches.

use std::fmt;

use crate::model::Event;

/// A subscription target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `task:<id>`: one task's events.
    Task(String),
    /// `plugin:<name>`: the events of every task of a plugin.
    Plugin(String),
    /// `label:<key>=<value>`: the events of every task with that label.
    Label(String, String),
    /// `tasks`: every task event.
    Tasks,
    /// `system`: plugin loads, queue pauses and health changes (not task events).
    System,
}

/// Longest topic accepted, so that a client cannot make the host index huge strings.
const MAX_TOPIC_LEN: usize = 512;

impl Topic {
    /// Parses a topic as clients write it; the error says what the accepted forms are.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "unknown topic {text:?}: expected task:<id>, plugin:<name>, \
                 label:<key>=<value>, tasks or system"
            )
        };
        if text.len() > MAX_TOPIC_LEN || text.chars().any(char::is_control) {
            return Err(invalid());
        }
        match text {
            "tasks" => return Ok(Topic::Tasks),
            "system" => return Ok(Topic::System),
            _ => {}
        }
        let (kind, rest) = text.split_once(':').ok_or_else(invalid)?;
        if rest.is_empty() {
            return Err(invalid());
        }
        match kind {
            "task" => Ok(Topic::Task(rest.to_owned())),
            "plugin" => Ok(Topic::Plugin(rest.to_owned())),
            "label" => match rest.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    Ok(Topic::Label(key.to_owned(), value.to_owned()))
                }
                _ => Err(invalid()),
            },
            _ => Err(invalid()),
        }
    }

    /// Whether `event` belongs to this topic (authorisation is decided separately).
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            Topic::Task(id) => event.task_id == *id,
            Topic::Plugin(name) => event.plugin == *name,
            Topic::Label(key, value) => event.labels.get(key) == Some(value),
            Topic::Tasks => true,
            Topic::System => false,
        }
    }

    /// The topics an event is published on, to find its subscribers without asking every one.
    pub fn of_event(event: &Event) -> impl Iterator<Item = Topic> + '_ {
        [
            Topic::Task(event.task_id.clone()),
            Topic::Plugin(event.plugin.clone()),
            Topic::Tasks,
        ]
        .into_iter()
        .chain(
            event
                .labels
                .iter()
                .map(|(k, v)| Topic::Label(k.clone(), v.clone())),
        )
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Task(id) => write!(f, "task:{id}"),
            Topic::Plugin(name) => write!(f, "plugin:{name}"),
            Topic::Label(key, value) => write!(f, "label:{key}={value}"),
            Topic::Tasks => f.write_str("tasks"),
            Topic::System => f.write_str("system"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses_and_prints_back() {
        for text in [
            "task:0193-abc",
            "plugin:gitlab",
            "label:project=my-project",
            "label:empty=",
            "tasks",
            "system",
        ] {
            let topic = Topic::parse(text).expect(text);
            assert_eq!(topic.to_string(), text);
        }
    }

    #[test]
    fn malformed_topics_are_refused_with_the_accepted_forms() {
        for text in [
            "",
            "task:",
            "task",
            "label:novalue",
            "label:=x",
            "queue:x",
            "task:a\nb",
        ] {
            let error = Topic::parse(text).expect_err(text);
            assert!(error.contains("task:<id>"), "{error}");
        }
        assert!(Topic::parse(&format!("task:{}", "x".repeat(600))).is_err());
    }
}
