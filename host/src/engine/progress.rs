//! The one way progress reaches a task, whoever reports it: a plugin's `report-progress`, a
//! runner's job report, or an external executor's `POST /tasks/{id}/progress`. Every report is
//! checked against the same caps before anything is stored, so no reporter can grow a task
//! without bound; a report past them is refused whole.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::EngineError;
use crate::auth::redact;
use crate::model::TaskProgress;

/// Most distinct metrics a task's progress may hold.
pub const MAX_METRICS: usize = 64;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 64;
/// Longest `current_step` or `message`, in bytes.
pub const MAX_PROGRESS_TEXT: usize = 1024;
/// Largest `processed` or `total`: 2^53 - 1, the largest integer every JSON client (a
/// JavaScript one above all) reads back exactly.
pub const MAX_COUNT: u64 = (1 << 53) - 1;
/// Largest serialized `progress` a task may hold, in bytes.
pub const MAX_PROGRESS_BYTES: usize = 16 * 1024;

/// A progress report: fields it carries replace the current ones, metrics are merged.
/// `processed` may not exceed `total`; a task holds at most 64 distinct metrics and 16 KiB of
/// progress.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    #[serde(
        default,
        deserialize_with = "crate::schema::integer::option::deserialize"
    )]
    #[schema(maximum = 9007199254740991_u64)]
    pub processed: Option<u64>,
    #[serde(
        default,
        deserialize_with = "crate::schema::integer::option::deserialize"
    )]
    #[schema(maximum = 9007199254740991_u64)]
    pub total: Option<u64>,
    #[schema(max_length = 1024)]
    pub current_step: Option<String>,
    #[schema(max_length = 1024)]
    pub message: Option<String>,
    #[schema(schema_with = crate::schema::metrics)]
    pub metrics: Option<BTreeMap<String, f64>>,
}

fn valid_metric_name(name: &str) -> bool {
    (1..=MAX_METRIC_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | '*'))
}

impl ProgressReport {
    /// Masks `secrets` out of the texts and metric names (a name is a place a plugin could
    /// hide a secret as easily as a message).
    pub fn masked(mut self, secrets: &[String]) -> Self {
        if secrets.is_empty() {
            return self;
        }
        self.current_step = self.current_step.map(|s| redact(&s, secrets));
        self.message = self.message.map(|m| redact(&m, secrets));
        self.metrics = self.metrics.map(|metrics| {
            metrics
                .into_iter()
                .map(|(name, value)| (redact(&name, secrets), value))
                .collect()
        });
        self
    }

    /// Applies the report to `progress`, or refuses it whole (leaving `progress` as it was)
    /// when it breaks a cap.
    pub fn apply_to(&self, progress: &mut TaskProgress) -> Result<(), EngineError> {
        if let (Some(done), Some(total)) = (
            self.processed.or(progress.processed),
            self.total.or(progress.total),
        ) && done > total
        {
            return Err(EngineError::validation("processed cannot exceed total"));
        }
        if [self.processed, self.total]
            .into_iter()
            .flatten()
            .any(|n| n > MAX_COUNT)
        {
            return Err(EngineError::validation(format!(
                "processed and total are at most {MAX_COUNT}"
            )));
        }
        for text in [&self.current_step, &self.message].into_iter().flatten() {
            if text.len() > MAX_PROGRESS_TEXT {
                return Err(EngineError::validation(format!(
                    "current_step and message are at most {MAX_PROGRESS_TEXT} bytes"
                )));
            }
        }
        let mut next = progress.clone();
        if let Some(metrics) = &self.metrics {
            if let Some((name, _)) = metrics.iter().find(|(name, _)| !valid_metric_name(name)) {
                return Err(EngineError::validation(format!(
                    "metric name {:?} must be 1-{MAX_METRIC_NAME} characters of A-Z, a-z, 0-9, '_', '-', '.', '/', ':'",
                    truncated(name)
                )));
            }
            if metrics.values().any(|v| !v.is_finite()) {
                return Err(EngineError::validation(
                    "every metric must be a finite number",
                ));
            }
            next.metrics
                .extend(metrics.iter().map(|(k, v)| (k.clone(), *v)));
            if next.metrics.len() > MAX_METRICS {
                return Err(EngineError::validation(format!(
                    "a task holds at most {MAX_METRICS} distinct metrics"
                )));
            }
        }
        next.merge(
            self.processed,
            self.total,
            self.current_step.as_deref(),
            self.message.as_deref(),
        );
        let size = serde_json::to_vec(&next).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_PROGRESS_BYTES {
            return Err(EngineError::validation(format!(
                "progress may serialize to at most {MAX_PROGRESS_BYTES} bytes"
            )));
        }
        *progress = next;
        Ok(())
    }
}

fn truncated(name: &str) -> String {
    name.chars().take(MAX_METRIC_NAME).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(n: usize) -> ProgressReport {
        ProgressReport {
            metrics: Some((0..n).map(|i| (format!("m{i}"), i as f64)).collect()),
            ..ProgressReport::default()
        }
    }

    #[test]
    fn metrics_are_capped_across_reports_and_a_refused_report_changes_nothing() {
        let mut progress = TaskProgress::default();
        metrics(MAX_METRICS)
            .apply_to(&mut progress)
            .expect("at the cap");
        let before = progress.clone();
        let one_more = ProgressReport {
            metrics: Some(BTreeMap::from([("new".to_owned(), 1.0)])),
            processed: Some(3),
            ..ProgressReport::default()
        };
        assert!(one_more.apply_to(&mut progress).is_err());
        assert_eq!(progress, before);
    }

    #[test]
    fn counts_past_what_json_clients_read_exactly_are_refused() {
        let mut progress = TaskProgress::default();
        let at_cap = ProgressReport {
            processed: Some(MAX_COUNT),
            total: Some(MAX_COUNT),
            ..ProgressReport::default()
        };
        at_cap.apply_to(&mut progress).expect("at the cap");
        let past = ProgressReport {
            total: Some(MAX_COUNT + 1),
            ..ProgressReport::default()
        };
        assert!(past.apply_to(&mut progress).is_err());
        assert_eq!(progress.total, Some(MAX_COUNT));
    }

    #[test]
    fn long_or_odd_metric_names_are_refused() {
        let mut progress = TaskProgress::default();
        for name in ["x".repeat(MAX_METRIC_NAME + 1), String::new(), "a b".into()] {
            let report = ProgressReport {
                metrics: Some(BTreeMap::from([(name.clone(), 1.0)])),
                ..ProgressReport::default()
            };
            assert!(report.apply_to(&mut progress).is_err(), "{name:?}");
        }
    }

    #[test]
    fn secrets_are_masked_out_of_metric_names() {
        let report = ProgressReport {
            metrics: Some(BTreeMap::from([("tok-s3cr3t".to_owned(), 1.0)])),
            message: Some("using s3cr3t".into()),
            ..ProgressReport::default()
        }
        .masked(&["s3cr3t".to_owned()]);
        let names: Vec<_> = report.metrics.iter().flat_map(|m| m.keys()).collect();
        assert_eq!(names, ["tok-***"]);
        assert_eq!(report.message.as_deref(), Some("using ***"));
    }
}
