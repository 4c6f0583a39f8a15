//! Scans of what a task wrote: its log, for hard-coded secrets, by the analysis plugin's
//! `secret_scan` task type (the same detectors `analyze` runs on source trees). The log is
//! what its readers see — the host has already masked the task's own secrets in it — so a
//! scan finds the ones nobody declared.

use super::*;

/// The plugin and task type that scan text for secrets.
pub const SECRET_SCAN_PLUGIN: &str = "analysis";
const SECRET_SCAN_TYPE: &str = "secret_scan";
/// Log lines a scan reads, newest first, and the most text it hands the scan.
const MAX_SCANNED_LINES: usize = 100_000;
const MAX_SCANNED_BYTES: usize = 1 << 20;

impl Engine {
    /// Starts a scan of task `id`'s log for secrets: a `secret_scan` task of its own, labelled
    /// `scanned_task`, over the newest lines that fit the scan's 1 MiB.
    pub async fn scan_log_for_secrets(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<Task, EngineError> {
        let (task, lines) = self.log_tail(principal, id, MAX_SCANNED_LINES).await?;
        let mut kept = Vec::new();
        let mut size = 0;
        for line in lines.iter().rev() {
            size += line.message.len() + 1;
            if size > MAX_SCANNED_BYTES {
                break;
            }
            kept.push(line.message.as_str());
        }
        kept.reverse();
        let mut content = kept.join("\n");
        content.push('\n');
        let mut labels = BTreeMap::new();
        labels.insert("scanned_task".to_owned(), task.id.clone());
        self.create(
            principal,
            NewTask {
                plugin: SECRET_SCAN_PLUGIN.into(),
                task_type: SECRET_SCAN_TYPE.into(),
                input: json!({"content": content, "name": format!("log of {}", task.id)}),
                labels,
                ..NewTask::default()
            },
        )
        .await
    }
}
