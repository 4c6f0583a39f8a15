//! What a `warm` job asks for and how the operator configured the plugin: parsed and checked
//! once, in `validate` (so a bad path is a 400 at creation) and again at the start of `run`.

use std::collections::{BTreeMap, BTreeSet};

use taskhost_plugin_sdk::paths::{self, PathError};
use taskhost_plugin_sdk::{TaskError, Value, json};
use wasip2::filesystem::types::Descriptor;

use crate::scan;

/// Largest manifest read into memory.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The operator's `config` map, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: String,
    pub prefixes: Vec<String>,
    pub every_files: u64,
    pub every_ms: u64,
    pub parallel_files: usize,
    pub max_files: usize,
}

impl Settings {
    pub fn from_config(config: &BTreeMap<String, String>) -> Result<Self, TaskError> {
        let number = |key: &str, default: u64, max: u64| -> Result<u64, TaskError> {
            match config.get(key) {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        TaskError::fatal(
                            "CACHE_MISCONFIGURED",
                            format!("config {key} must be a number from 1 to {max}, not {text:?}"),
                        )
                    }),
            }
        };
        let root = config
            .get("root")
            .map(|r| r.trim().to_owned())
            .unwrap_or_else(|| "/cache".to_owned());
        if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
            return Err(TaskError::fatal(
                "CACHE_MISCONFIGURED",
                format!("config root must be an absolute guest path without '..', not {root:?}"),
            ));
        }
        Ok(Self {
            root,
            prefixes: config
                .get("path_prefixes")
                .map(|list| paths::parse_prefixes(list))
                .unwrap_or_default(),
            every_files: number("progress_every_files", 10, 1_000_000)?,
            every_ms: number("progress_every_ms", 2000, 86_400_000)?,
            parallel_files: number("parallel_files", 8, 64)? as usize,
            max_files: number("max_files", 1_000_000, 100_000_000)? as usize,
        })
    }
}

/// Which files get a record of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRecords {
    None,
    Failed,
    All,
}

/// A checked job: every path relative to the cache root.
#[derive(Debug, Clone)]
pub struct Job {
    pub files: Vec<String>,
    pub directories: Vec<String>,
    pub recursive: bool,
    pub manifest: Option<String>,
    pub digests: BTreeMap<String, [u8; 32]>,
    pub file_records: FileRecords,
    pub every_files: u64,
    pub every_ms: u64,
}

pub fn input_schema() -> Value {
    let paths = json!({
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": 4096},
        "maxItems": 100_000,
    });
    json!({
        "type": "object",
        "properties": {
            "files": paths,
            "directories": paths,
            "recursive": {"type": "boolean", "default": true},
            "verify": {
                "type": "object",
                "description": "sha256 to check each file against: a sha256sum-format manifest in the tree (paths relative to its directory) and/or a map of path to hex digest",
                "properties": {
                    "manifest": {"type": "string", "minLength": 1, "maxLength": 4096},
                    "sha256": {
                        "type": "object",
                        "additionalProperties": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
                        "maxProperties": 100_000,
                    },
                },
                "additionalProperties": false,
            },
            "file_records": {"enum": ["none", "failed", "all"], "default": "failed"},
            "progress": {
                "type": "object",
                "properties": {
                    "every_files": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                    "every_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
                },
                "additionalProperties": false,
            },
        },
        "additionalProperties": false,
    })
}

fn path_error(field: &str, path: &str, error: PathError) -> TaskError {
    TaskError::invalid_input(format!("{field}: {path:?} is refused: {error}"))
}

fn path_list(input: &Value, field: &str, settings: &Settings) -> Result<Vec<String>, TaskError> {
    let Some(list) = input.get(field) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| TaskError::invalid_input(format!("{field} must be a list of paths")))?;
    list.iter()
        .map(|item| {
            let path = item
                .as_str()
                .ok_or_else(|| TaskError::invalid_input(format!("{field} must hold strings")))?;
            paths::relative(path, &settings.prefixes).map_err(|e| path_error(field, path, e))
        })
        .collect()
}

impl Job {
    pub fn parse(input: &Value, settings: &Settings) -> Result<Self, TaskError> {
        let files = path_list(input, "files", settings)?;
        let directories = path_list(input, "directories", settings)?;
        if files.is_empty() && directories.is_empty() {
            return Err(TaskError::invalid_input(
                "name at least one path in files or directories",
            ));
        }
        if let Some(root_file) = files.iter().find(|f| f.is_empty()) {
            return Err(TaskError::invalid_input(format!(
                "files: {root_file:?} names the cache root, which is a directory"
            )));
        }
        let verify = input.get("verify");
        let manifest = verify
            .and_then(|v| v.get("manifest"))
            .and_then(Value::as_str)
            .map(|m| {
                paths::relative(m, &settings.prefixes)
                    .map_err(|e| path_error("verify.manifest", m, e))
            })
            .transpose()?;
        let mut digests = BTreeMap::new();
        if let Some(map) = verify
            .and_then(|v| v.get("sha256"))
            .and_then(Value::as_object)
        {
            for (path, digest) in map {
                let clean = paths::relative(path, &settings.prefixes)
                    .map_err(|e| path_error("verify.sha256", path, e))?;
                let digest =
                    parse_digest(digest.as_str().unwrap_or_default()).ok_or_else(|| {
                        TaskError::invalid_input(format!(
                            "verify.sha256: the digest of {path:?} is not 64 hex digits"
                        ))
                    })?;
                digests.insert(clean, digest);
            }
        }
        let file_records = match input.get("file_records").and_then(Value::as_str) {
            None | Some("failed") => FileRecords::Failed,
            Some("none") => FileRecords::None,
            Some("all") => FileRecords::All,
            Some(other) => {
                return Err(TaskError::invalid_input(format!(
                    "file_records must be none, failed or all, not {other:?}"
                )));
            }
        };
        let progress = input.get("progress");
        let cadence = |key: &str, default: u64| {
            progress
                .and_then(|p| p.get(key))
                .and_then(Value::as_u64)
                .filter(|n| *n >= 1)
                .unwrap_or(default)
        };
        Ok(Self {
            files,
            directories,
            recursive: input
                .get("recursive")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            manifest,
            digests,
            file_records,
            every_files: cadence("every_files", settings.every_files),
            every_ms: cadence("every_ms", settings.every_ms),
        })
    }

    pub fn verifies(&self) -> bool {
        self.manifest.is_some() || !self.digests.is_empty()
    }
}

fn parse_digest(text: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut digest).ok()?;
    Some(digest)
}

/// The digests to check files against: the manifest's (read from the tree), then the input's
/// map, which wins for a path both name.
pub fn expected_digests(
    root: &Descriptor,
    job: &Job,
) -> Result<BTreeMap<String, [u8; 32]>, TaskError> {
    let mut expected = BTreeMap::new();
    if let Some(manifest) = &job.manifest {
        let text = scan::read_small_file(root, manifest, MAX_MANIFEST_BYTES).map_err(|e| {
            TaskError::fatal(
                "CACHE_MANIFEST_UNREADABLE",
                format!("the manifest {manifest:?} cannot be read: {e}"),
            )
        })?;
        let base = manifest.rsplit_once('/').map(|(dir, _)| dir).unwrap_or("");
        let mut seen = BTreeSet::new();
        for (number, line) in String::from_utf8_lossy(&text).lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // sha256sum writes "<hex>  <path>" (text mode) or "<hex> *<path>" (binary mode).
            let parsed = line.split_once(' ').and_then(|(digest, rest)| {
                let path = rest.strip_prefix(['*', ' ']).unwrap_or(rest);
                Some((parse_digest(digest)?, path))
            });
            let Some((digest, path)) = parsed else {
                return Err(TaskError::fatal(
                    "CACHE_MANIFEST_INVALID",
                    format!("{manifest}:{}: expected \"<sha256>  <path>\"", number + 1),
                ));
            };
            let relative = paths::relative(path, &[]).map_err(|e| {
                TaskError::fatal(
                    "CACHE_MANIFEST_INVALID",
                    format!("{manifest}:{}: {path:?} is refused: {e}", number + 1),
                )
            })?;
            let full = if base.is_empty() {
                relative
            } else {
                format!("{base}/{relative}")
            };
            if seen.insert(full.clone()) {
                expected.insert(full, digest);
            }
        }
    }
    expected.extend(job.digests.iter().map(|(k, v)| (k.clone(), *v)));
    Ok(expected)
}
