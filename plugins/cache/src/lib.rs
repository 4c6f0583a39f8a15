//! The bundled `cache` plugin: warms a cache (a LucidLink-style network filesystem, a NAS, the
//! page cache) by reading every byte of the files a job names, under a directory the operator
//! granted read-only. Task type `warm`, input as the TeamCache seed:
//!
//! ```json
//! {"files": ["00_Media/Farm/a.mov", "C:\\dmpfs\\tc-east-1\\00_Media\\b.mov"],
//!  "directories": ["00_Media/Farm/ProRes422"], "recursive": true,
//!  "verify": {"manifest": "00_Media/SHA256SUMS", "sha256": {"00_Media/c.mov": "<hex>"}},
//!  "file_records": "failed", "progress": {"every_files": 10, "every_ms": 2000}}
//! ```
//!
//! Paths are relative to the cache root, or absolute under one of the operator's
//! `path_prefixes`; `..` and anything else are refused when the task is created. A file that
//! is missing or cannot be read fails on its own and the job goes on.
//!
//! Operator config (`[plugins.cache.config]`, all optional):
//!
//! | key | default | |
//! | --- | --- | --- |
//! | `root` | `/cache` | guest path of the granted cache directory (an `fs` grant) |
//! | `path_prefixes` | none | `;`-separated absolute prefixes that mean the root (Windows, macOS, Linux mounts) |
//! | `progress_every_files` | `10` | progress after this many files... |
//! | `progress_every_ms` | `2000` | ...or this many milliseconds, whichever comes first |
//! | `parallel_files` | `8` | files read at once, each with a read in flight |
//! | `max_files` | `1000000` | a job naming more files fails at the scan |
//!
//! Sizes are shown in binary units with the seed's labels (1 MB = 1,048,576 bytes), and
//! throughput in those MB per second.

mod job;
mod scan;
mod size;
mod warm;

use std::collections::BTreeMap;
use std::time::Instant;

use taskhost_plugin_sdk::{
    Context, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, export_plugin, json, log,
};

use job::{Job, Settings};
use size::{readable_rate, readable_size};

struct Cache;

impl Plugin for Cache {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "cache",
            env!("CARGO_PKG_VERSION"),
            "Warms a cache by reading every byte of the named files, with optional sha256 verification",
        )
        .task_type(TaskType::new(
            "warm",
            "Reads every byte of `files` and of the files under `directories`, relative to the \
             granted cache root, reporting files and bytes done and the throughput",
            job::input_schema(),
        ))
    }

    fn validate(
        _task_type: &str,
        input: &Value,
        config: &BTreeMap<String, String>,
    ) -> Result<(), TaskError> {
        let settings = Settings::from_config(config)?;
        Job::parse(input, &settings).map(|_| ())
    }

    fn run(ctx: Context) -> Result<Value, TaskError> {
        let settings = Settings::from_config(&ctx.config)?;
        let job = Job::parse(&ctx.input, &settings)?;
        let started = Instant::now();

        Progress::new().step("Scanning").report();
        let root = scan::open_root(&settings.root)?;
        let scanned = scan::scan(&root, &job, settings.max_files)?;
        let expected = job::expected_digests(&root, &job)?;

        let warmed = warm::warm(&root, scanned, &expected, &job, &settings)?;
        let duration = started.elapsed();
        let totals = &warmed.totals;
        log::info(&format!(
            "warmed {} of {} files, {} in {:.1} s ({})",
            totals.files_completed,
            totals.files_total,
            readable_size(totals.bytes_done),
            duration.as_secs_f64(),
            readable_rate(totals.bytes_done, warmed.reading_time),
        ));
        let mbps = size::mbps(totals.bytes_done, warmed.reading_time);
        Ok(json!({
            "status": "completed",
            "totalFiles": totals.files_total,
            "totalSize": {"bytes": totals.bytes_total, "readable": readable_size(totals.bytes_total)},
            "completedFiles": totals.files_completed,
            "completedSize": {"bytes": totals.bytes_completed, "readable": readable_size(totals.bytes_completed)},
            "failedFiles": totals.files_failed,
            "failures": warmed.failures,
            "failuresOmitted": warmed.failures_omitted,
            "verification": job.verifies().then(|| json!({
                "verified": warmed.verified,
                "mismatched": warmed.mismatched,
                "unlisted": warmed.unlisted,
            })),
            "durationMs": u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            "duration": size::readable_duration(duration),
            "throughput": {"mbps": (mbps * 100.0).round() / 100.0, "readable": readable_rate(totals.bytes_done, warmed.reading_time)},
        }))
    }
}

export_plugin!(Cache);
