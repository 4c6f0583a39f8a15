//! Reading every byte: several files at once, each with a read in flight on the host, so that
//! the disk (or the network filesystem behind it) always has work while the guest copies and
//! hashes what arrived. Progress goes out every N files or T ms, whichever comes first.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use taskhost_plugin_sdk::{Progress, TaskError, checkpoint, log, records};
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, OpenFlags, PathFlags, filesystem_error_code,
};
use wasip2::io::poll::{Pollable, poll};
use wasip2::io::streams::{InputStream, StreamError};

use crate::job::{FileRecords, Job, Settings};
use crate::scan::{FileEntry, Scanned, describe};
use crate::size::{mbps, readable_rate, readable_size};

/// Bytes asked for per read; the host hands out at most its own chunk size (64 KiB).
const READ_CHUNK: u64 = 1 << 20;
/// Failures listed in the result; all of them are records.
const MAX_LISTED_FAILURES: usize = 100;
/// How often a long read stops to honour pause and cancel.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub files_total: u64,
    pub files_completed: u64,
    pub files_failed: u64,
    pub bytes_total: u64,
    /// Every byte read, including from files that failed later.
    pub bytes_done: u64,
    /// Bytes of the files that completed.
    pub bytes_completed: u64,
}

#[derive(Debug, Default)]
pub struct Warmed {
    pub totals: Totals,
    pub failures: Vec<Value>,
    pub failures_omitted: u64,
    pub verified: u64,
    pub mismatched: u64,
    /// Files read in verify mode that no digest names.
    pub unlisted: u64,
    pub reading_time: Duration,
}

/// One file being read. Fields drop in declaration order, and WASI wants a pollable gone
/// before its stream and a stream before its file.
struct OpenFile {
    ready: Pollable,
    stream: InputStream,
    _file: Descriptor,
    entry: FileEntry,
    read: u64,
    hasher: Option<Sha256>,
}

enum Pump {
    /// A read is in flight.
    Pending,
    Finished,
    Failed(String),
}

impl OpenFile {
    fn open(
        root: &Descriptor,
        entry: FileEntry,
        verify: bool,
    ) -> Result<Self, (FileEntry, String)> {
        let file = match root.open_at(
            PathFlags::SYMLINK_FOLLOW,
            &entry.path,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        ) {
            Ok(file) => file,
            Err(e) => return Err((entry, describe(e))),
        };
        let stream = match file.read_via_stream(0) {
            Ok(stream) => stream,
            Err(e) => return Err((entry, describe(e))),
        };
        Ok(Self {
            ready: stream.subscribe(),
            stream,
            _file: file,
            entry,
            read: 0,
            hasher: verify.then(Sha256::new),
        })
    }

    /// Takes whatever has arrived, which starts the next read.
    fn pump(&mut self, totals: &mut Totals) -> Pump {
        loop {
            match self.stream.read(READ_CHUNK) {
                Ok(data) if data.is_empty() => return Pump::Pending,
                Ok(data) => {
                    self.read += data.len() as u64;
                    totals.bytes_done += data.len() as u64;
                    if let Some(hasher) = self.hasher.as_mut() {
                        hasher.update(&data);
                    }
                }
                Err(StreamError::Closed) => return Pump::Finished,
                Err(StreamError::LastOperationFailed(error)) => {
                    return Pump::Failed(match filesystem_error_code(&error) {
                        Some(code) => describe(code),
                        None => error.to_debug_string(),
                    });
                }
            }
        }
    }
}

/// Progress cadence: every `every_files` files or `every` time, whichever comes first.
struct Cadence {
    every_files: u64,
    every: Duration,
    last: Instant,
    files_since: u64,
}

impl Cadence {
    fn due(&mut self, files_finished: u64) -> bool {
        self.files_since += files_finished;
        if self.files_since >= self.every_files || self.last.elapsed() >= self.every {
            self.files_since = 0;
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

fn emit(collection: &str, path: &str, data: &Value) {
    if let Err(e) = records::emit(collection, &records::key_for(path), data) {
        log::warn(&format!(
            "could not store the record of {path}: {}",
            e.message
        ));
    }
}

impl Warmed {
    fn fail(&mut self, job: &Job, path: &str, size: Option<u64>, error: String) {
        self.totals.files_failed += 1;
        log::warn(&format!("{path}: {error}"));
        let item = json!({"path": path, "status": "failed", "bytes": size, "error": error});
        if job.file_records != FileRecords::None {
            emit("files", path, &item);
        }
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(json!({"path": path, "error": error}));
        } else {
            self.failures_omitted += 1;
        }
    }

    fn complete(&mut self, job: &Job, file: OpenFile, expected: &BTreeMap<String, [u8; 32]>) {
        let OpenFile {
            entry,
            read,
            hasher,
            ..
        } = file;
        let digest = hasher.map(|h| h.finalize());
        if let (Some(digest), Some(want)) = (digest.as_ref(), expected.get(&entry.path)) {
            if digest.as_slice() != want.as_slice() {
                self.mismatched += 1;
                let error = format!(
                    "sha256 mismatch: expected {}, read {}",
                    hex::encode(want),
                    hex::encode(digest)
                );
                self.fail(job, &entry.path, Some(read), error);
                return;
            }
            self.verified += 1;
        } else if job.verifies() {
            self.unlisted += 1;
        }
        self.totals.files_completed += 1;
        self.totals.bytes_completed += read;
        if job.file_records == FileRecords::All {
            let item = json!({
                "path": entry.path,
                "status": "completed",
                "bytes": read,
                "sha256": digest.map(hex::encode),
            });
            emit("files", &entry.path, &item);
        }
    }

    fn report(&self, started: Instant, step: &str) {
        let t = &self.totals;
        let finished = t.files_completed + t.files_failed;
        let percent = |done: u64, total: u64| {
            if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            }
        };
        let files_percent = percent(finished, t.files_total);
        let bytes_percent = percent(t.bytes_done.min(t.bytes_total), t.bytes_total);
        let elapsed = started.elapsed();
        Progress::new()
            .step(step)
            .processed(finished)
            .total(t.files_total)
            .message(&format!(
                "{finished} of {} files, {} of {}, {}",
                t.files_total,
                readable_size(t.bytes_done),
                readable_size(t.bytes_total),
                readable_rate(t.bytes_done, elapsed)
            ))
            .metric("files_completed", t.files_completed as f64)
            .metric("files_failed", t.files_failed as f64)
            .metric("files_total", t.files_total as f64)
            .metric("bytes_done", t.bytes_done as f64)
            .metric("bytes_total", t.bytes_total as f64)
            .metric(
                "throughput_mbps",
                (mbps(t.bytes_done, elapsed) * 100.0).round() / 100.0,
            )
            // The seed's overall percentage: the mean of the file and the size percentages.
            .metric(
                "overall_percentage",
                ((files_percent + bytes_percent) / 2.0 * 10.0).round() / 10.0,
            )
            .report();
    }
}

pub fn warm(
    root: &Descriptor,
    scanned: Scanned,
    expected: &BTreeMap<String, [u8; 32]>,
    job: &Job,
    settings: &Settings,
) -> Result<Warmed, TaskError> {
    let mut warmed = Warmed::default();
    warmed.totals.files_total = (scanned.files.len() + scanned.failed.len()) as u64;
    warmed.totals.bytes_total = scanned.files.iter().map(|f| f.size).sum();
    for (path, error) in scanned.failed {
        warmed.fail(job, &path, None, error);
    }
    let started = Instant::now();
    warmed.report(started, "Reading");

    let mut cadence = Cadence {
        every_files: job.every_files,
        every: Duration::from_millis(job.every_ms),
        last: Instant::now(),
        files_since: 0,
    };
    let mut last_checkpoint = Instant::now();
    let mut queue = scanned.files.into_iter();
    let mut open: Vec<OpenFile> = Vec::with_capacity(settings.parallel_files);
    loop {
        while open.len() < settings.parallel_files {
            let Some(entry) = queue.next() else { break };
            let verify = expected.contains_key(&entry.path);
            match OpenFile::open(root, entry, verify) {
                Ok(file) => open.push(file),
                Err((entry, error)) => {
                    warmed.fail(job, &entry.path, Some(entry.size), error);
                    if cadence.due(1) {
                        warmed.report(started, "Reading");
                    }
                }
            }
        }
        if open.is_empty() {
            break;
        }

        let mut finished = 0;
        let mut index = 0;
        while index < open.len() {
            match open[index].pump(&mut warmed.totals) {
                Pump::Pending => index += 1,
                Pump::Finished => {
                    let file = open.swap_remove(index);
                    warmed.complete(job, file, expected);
                    finished += 1;
                }
                Pump::Failed(error) => {
                    let file = open.swap_remove(index);
                    let (path, read) = (file.entry.path.clone(), file.read);
                    drop(file);
                    warmed.fail(job, &path, Some(read), error);
                    finished += 1;
                }
            }
        }
        if cadence.due(finished) {
            warmed.report(started, "Reading");
        }
        if finished > 0 || last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            checkpoint()?;
            last_checkpoint = Instant::now();
        }
        // Files just finished leave room to open more before waiting.
        if finished == 0 && !open.is_empty() {
            let ready: Vec<&Pollable> = open.iter().map(|f| &f.ready).collect();
            poll(&ready);
        }
    }
    warmed.reading_time = started.elapsed();
    warmed.report(started, "Done");
    Ok(warmed)
}
