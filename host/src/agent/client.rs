//! The runner's side of the runner routes: one method per call, errors sorted by what the
//! runner should do about them.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::machine;
use crate::runners::{Artifact, HeartbeatReply, JobStatus, Lease, StepOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host does not know the token: it restarted, or the runner was removed.
    #[error("the host does not recognise this runner's token")]
    Unauthorized,
    /// The host refused the call for good (the job is no longer this runner's, the API key
    /// lacks a permission, the request was invalid).
    #[error("the host refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// Worth trying again: the host is unreachable, overloaded or failing.
    #[error("the host is unavailable: {0}")]
    Unavailable(String),
}

/// A runner's identity at the host.
#[derive(Debug, Clone)]
pub struct Registration {
    pub id: String,
    pub token: String,
}

/// One log line as the host takes it.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub stream: &'static str,
    pub line: String,
    /// The step that printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

#[derive(Clone)]
pub struct HostClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl HostClient {
    pub fn new(base: &str, api_key: String) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    /// Sends and sorts the answer; `Ok(None)` is a 204.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<Option<Value>, ClientError> {
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| ClientError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Some(body));
        }
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED => ClientError::Unauthorized,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => {
                ClientError::Unavailable(format!("{status}: {message}"))
            }
            s if s.is_server_error() => ClientError::Unavailable(format!("{status}: {message}")),
            s => ClientError::Refused {
                status: s.as_u16(),
                message,
            },
        })
    }

    async fn runner_call(
        &self,
        registration: &Registration,
        path: &str,
        body: &Value,
    ) -> Result<Option<Value>, ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/runners/{}{path}", registration.id)))
            .bearer_auth(&registration.token)
            .json(body);
        self.send(request, Duration::from_secs(30)).await
    }

    pub async fn register(
        &self,
        name: &str,
        labels: &[String],
        capacity: u32,
    ) -> Result<Registration, ClientError> {
        let request = self
            .http
            .post(self.url("/runners"))
            .header("x-api-key", &self.api_key)
            .json(&{
                let mut body = machine::profile();
                body.insert("name".into(), json!(name));
                body.insert("labels".into(), json!(labels));
                body.insert("capacity".into(), json!(capacity));
                body
            });
        let body = self
            .send(request, Duration::from_secs(30))
            .await?
            .unwrap_or(Value::Null);
        match (body["id"].as_str(), body["token"].as_str()) {
            (Some(id), Some(token)) => Ok(Registration {
                id: id.to_owned(),
                token: token.to_owned(),
            }),
            _ => Err(ClientError::Unavailable(
                "the registration answer lacks an id or token".into(),
            )),
        }
    }

    pub async fn heartbeat(
        &self,
        registration: &Registration,
        running: &[String],
    ) -> Result<HeartbeatReply, ClientError> {
        let body = self
            .runner_call(
                registration,
                "/heartbeat",
                &json!({"running": running, "resource_usage": machine::usage()}),
            )
            .await?
            .unwrap_or(Value::Null);
        serde_json::from_value(body)
            .map_err(|e| ClientError::Unavailable(format!("unreadable heartbeat answer: {e}")))
    }

    /// Waits up to `wait` at the host for a job this runner can take.
    pub async fn claim(
        &self,
        registration: &Registration,
        wait: Duration,
    ) -> Result<Option<Lease>, ClientError> {
        let request = self
            .http
            .post(self.url(&format!(
                "/runners/{}/jobs/claim?wait_ms={}",
                registration.id,
                wait.as_millis()
            )))
            .bearer_auth(&registration.token);
        // The host holds the request up to `wait`; allow for that on top of a normal call.
        let answer = self.send(request, wait + Duration::from_secs(30)).await?;
        answer
            .map(|body| {
                serde_json::from_value(body)
                    .map_err(|e| ClientError::Unavailable(format!("unreadable lease: {e}")))
            })
            .transpose()
    }

    pub async fn logs(
        &self,
        registration: &Registration,
        job: &str,
        lines: &[LogLine],
    ) -> Result<(), ClientError> {
        self.runner_call(
            registration,
            &format!("/jobs/{job}/logs"),
            &json!({"lines": lines}),
        )
        .await
        .map(drop)
    }

    pub async fn progress(
        &self,
        registration: &Registration,
        job: &str,
        processed: u64,
        total: u64,
        step: &str,
    ) -> Result<(), ClientError> {
        self.runner_call(
            registration,
            &format!("/jobs/{job}/progress"),
            &json!({"processed": processed, "total": total, "step": step}),
        )
        .await
        .map(drop)
    }

    pub async fn step_finished(
        &self,
        registration: &Registration,
        job: &str,
        outcome: &StepOutcome,
    ) -> Result<(), ClientError> {
        self.runner_call(registration, &format!("/jobs/{job}/steps"), &json!(outcome))
            .await
            .map(drop)
    }

    pub async fn finish(
        &self,
        registration: &Registration,
        job: &str,
        status: JobStatus,
        artifacts: &[Artifact],
    ) -> Result<(), ClientError> {
        self.runner_call(
            registration,
            &format!("/jobs/{job}/finish"),
            &json!({"status": status, "artifacts": artifacts}),
        )
        .await
        .map(drop)
    }
}
