//! What a plugin may ask of a runner, checked before it is queued: a job's steps, its
//! environment and the artifacts it names, and the limits on what a runner reports back.

use serde::{Deserialize, Serialize};

use super::RunnerError;
use crate::model::runner::Artifact;

/// Longest log line a runner reports that is kept.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Longest step name a log line is placed in.
pub const MAX_STEP_NAME: usize = 256;
/// Longest step output tail kept.
pub const MAX_OUTPUT_TAIL: usize = 64 * 1024;

/// The last `max` bytes of `text` (the end of output says how it went).
pub fn keep_end(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// One step of a job: a program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub command: Vec<String>,
    pub timeout_s: Option<u32>,
}

/// What a plugin asks a runner to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub labels: Vec<String>,
    pub steps: Vec<StepSpec>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub timeout_s: Option<u32>,
    pub metadata: serde_json::Value,
    /// Files (relative to the job's directory, `*` and `?` allowed in names) whose size and
    /// SHA-256 the runner reports when the job ends.
    #[serde(default)]
    pub artifacts: Vec<String>,
}

const MAX_STEPS: usize = 100;
pub(super) const MAX_LABELS: usize = 32;
const MAX_TEXT: usize = 4096;
const MAX_ARTIFACT_PATTERNS: usize = 32;
/// Artifacts one job may report.
pub const MAX_ARTIFACTS: usize = 1000;

impl JobSpec {
    pub(super) fn validate(&self) -> Result<(), RunnerError> {
        let invalid = |m: &str| Err(RunnerError::Invalid(m.to_owned()));
        if self.name.is_empty() || self.name.len() > 256 {
            return invalid("a job name is 1 to 256 bytes");
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return invalid("a job has 1 to 100 steps");
        }
        if self.labels.len() > MAX_LABELS
            || self.labels.iter().any(|l| l.is_empty() || l.len() > 128)
        {
            return invalid("a job has at most 32 labels of 1 to 128 bytes");
        }
        for step in &self.steps {
            if step.command.is_empty() || step.command[0].is_empty() {
                return invalid("every step names a program");
            }
            if step
                .command
                .iter()
                .any(|a| a.len() > MAX_TEXT || a.contains('\0'))
            {
                return invalid("command arguments are at most 4096 bytes, without NUL");
            }
        }
        if self
            .env
            .iter()
            .any(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return invalid("environment names are non-empty, without '=' or NUL");
        }
        if self.artifacts.len() > MAX_ARTIFACT_PATTERNS
            || self.artifacts.iter().any(|p| !is_relative_path(p))
        {
            return invalid(
                "at most 32 artifact patterns, each a relative path without '..' of up to 1024 bytes",
            );
        }
        Ok(())
    }
}

/// A relative path of at most 1024 bytes that stays inside the directory it is relative to.
fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.contains('\0')
        && !path.starts_with('/')
        && !path.contains('\\')
        && path.split('/').all(|part| part != "..")
}

impl Artifact {
    pub(super) fn validate(&self) -> Result<(), RunnerError> {
        let hex = self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if is_relative_path(&self.path) && hex {
            Ok(())
        } else {
            Err(RunnerError::Invalid(
                "an artifact has a relative path without '..' and a 64-digit hex sha256".into(),
            ))
        }
    }
}
