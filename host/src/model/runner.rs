//! What a runner says about itself and what its jobs report, as stored and as the API shows
//! it: the runner's profile and resource usage, the job's status, the outcome of each step
//! and the files it left behind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::TimedOut,
        JobStatus::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }

    /// The name stored and shown (as serde writes it).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Lost => "lost",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// How one step went, as the runner reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub name: String,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub output_tail: String,
}

/// A file a job produced, as its runner describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub path: String,
    pub size_bytes: u64,
    pub sha256: String,
}

#[cfg(test)]
mod tests {
    use super::JobStatus;

    #[test]
    fn every_job_status_reads_back_from_the_name_serde_writes() {
        for status in JobStatus::ALL {
            let written = serde_json::to_value(status).unwrap();
            assert_eq!(written.as_str(), Some(status.as_str()));
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }
}

/// A scalar a runner reports about itself: `true`, `8`, `"x64"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fact {
    Flag(bool),
    /// As sent: `8` stays an integer.
    Number(serde_json::Number),
    Text(String),
}

/// What a runner said about itself when it registered; everything optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunnerProfile {
    pub os: Option<String>,
    pub architecture: Option<String>,
    /// What it can do (`docker: true`, `max_concurrent_jobs: 5`).
    pub capabilities: BTreeMap<String, Fact>,
    /// What it has (`cpu_cores: 8`, `memory_gb: 16`).
    pub resource_info: BTreeMap<String, Fact>,
}

/// The resource usage a runner's last heartbeat reported (`cpu_usage: 45.2`), and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceUsage {
    pub values: BTreeMap<String, f64>,
    pub reported_at: DateTime<Utc>,
}
