//! The bundled `analysis` plugin: static analysis of a source tree under a directory the
//! operator granted read-only, entirely inside the sandbox. Task type `analyze`, input as the
//! code-analysis seed:
//!
//! ```json
//! {"project_name": "my-project", "analysis_types": ["quality", "security", "types"]}
//! {"path": "services/api", "exclude": ["fixtures"], "max_file_bytes": 1048576}
//! ```
//!
//! `path` is relative to the granted root; `project_name` is looked up in the operator's
//! config (`project.<name> = "relative/path"`), else taken as a directory of that name under
//! the root. Rust, Python, JavaScript, TypeScript and Go are recognised by extension.
//!
//! - **quality**: code, comment and blank lines per language; functions with length,
//!   cyclomatic complexity, nesting and parameters (see [`functions`] for what is counted);
//!   code smells — functions longer than 50 lines, complexity above 10, nesting deeper than 4,
//!   more than 5 parameters, and duplicated blocks of 6+ significant lines; the 0–10
//!   `quality_score` ([`report::quality_score`] has the formula).
//! - **security**: hard-coded secrets (GitLab, GitHub and AWS keys, private key blocks,
//!   high-entropy literals assigned to password-like names), also in config files, and risky
//!   patterns (eval/exec, SQL built by concatenation or formatting, `shell=True`, unsafe
//!   pickle/yaml loads, TLS verification off). Secrets are reported masked, never in clear.
//! - **types**: annotation gaps, not type checking — Python functions missing parameter or
//!   return annotations, and explicit `any` in TypeScript; `type_errors` counts them.
//! - `coverage_percent` from `lcov.info`/`*.lcov` or Cobertura `coverage.xml` reports found in
//!   the tree, else null.
//!
//! Per-file detail goes to records (collection `files`, key = path). Directories named
//! `.git`, `node_modules`, `target`, `vendor`, `dist`, `build`, `__pycache__`, virtualenvs and
//! other hidden directories are skipped, as are symlinks and files over `max_file_bytes`.
//!
//! Operator config: `root` (default `/src`, an `fs` grant), `project.<name>`.

mod functions;
mod lang;
mod report;
mod secret_scan;
mod security;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use taskhost_plugin_sdk::paths;
use taskhost_plugin_sdk::{
    Context, Plugin, PluginInfo, Progress, TaskError, TaskType, Value, checkpoint, export_plugin,
    json, log, records,
};

use functions::Function;
use lang::{Language, LineKind};
use security::Finding;

const SKIPPED_DIRS: &[&str] = &[
    "node_modules",
    "target",
    "vendor",
    "dist",
    "build",
    "__pycache__",
    "venv",
    "env",
    "site-packages",
];
const LONG_FUNCTION: usize = 50;
const COMPLEX_FUNCTION: u32 = 10;
const DEEP_NESTING: usize = 4;
const MANY_PARAMS: usize = 5;
/// Items of each list kept in the result; records hold everything.
const MAX_LISTED: usize = 200;
const PROGRESS_EVERY_FILES: usize = 20;
const PROGRESS_EVERY: Duration = Duration::from_millis(1000);

struct Analysis;

#[derive(Debug, Clone)]
struct Job {
    label: String,
    dir: String,
    quality: bool,
    security: bool,
    types: bool,
    exclude: BTreeSet<String>,
    max_file_bytes: u64,
    file_records: bool,
}

fn input_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "project_name": {"type": "string", "minLength": 1, "maxLength": 200},
            "path": {"type": "string", "minLength": 1, "maxLength": 4096},
            "analysis_types": {
                "type": "array",
                "items": {"enum": ["quality", "security", "types"]},
                "uniqueItems": true,
                "minItems": 1,
            },
            "exclude": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 1024},
                "maxItems": 1000,
            },
            "max_file_bytes": {"type": "integer", "minimum": 1, "maximum": 16_777_216},
            "file_records": {"type": "boolean", "default": true},
        },
        "anyOf": [{"required": ["project_name"]}, {"required": ["path"]}],
        "additionalProperties": false,
    })
}

fn root_of(config: &BTreeMap<String, String>) -> Result<String, TaskError> {
    let root = config
        .get("root")
        .map(|r| r.trim().trim_end_matches('/').to_owned())
        .unwrap_or_else(|| "/src".to_owned());
    if !root.starts_with('/') || root.split('/').any(|c| c == "..") {
        return Err(TaskError::fatal(
            "ANALYSIS_MISCONFIGURED",
            format!("config root must be an absolute guest path without '..', not {root:?}"),
        ));
    }
    Ok(root)
}

impl Job {
    fn parse(input: &Value, config: &BTreeMap<String, String>) -> Result<Self, TaskError> {
        let root = root_of(config)?;
        let refused = |field: &str, value: &str, e: paths::PathError| {
            TaskError::invalid_input(format!("{field}: {value:?} is refused: {e}"))
        };
        let (label, relative) = match (
            input.get("path").and_then(Value::as_str),
            input.get("project_name").and_then(Value::as_str),
        ) {
            (Some(path), name) => (
                name.unwrap_or(path).to_owned(),
                paths::relative(path, &[]).map_err(|e| refused("path", path, e))?,
            ),
            (None, Some(name)) => match config.get(&format!("project.{name}")) {
                Some(mapped) => (
                    name.to_owned(),
                    paths::relative(mapped, &[])
                        .map_err(|e| refused("config project", mapped, e))?,
                ),
                None => {
                    let safe = !name.starts_with('.')
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !safe {
                        return Err(TaskError::invalid_input(format!(
                            "project_name {name:?} is not configured and is not a plain directory name"
                        )));
                    }
                    (name.to_owned(), name.to_owned())
                }
            },
            (None, None) => {
                return Err(TaskError::invalid_input("name a project_name or a path"));
            }
        };
        let types: BTreeSet<&str> = match input.get("analysis_types").and_then(Value::as_array) {
            Some(list) => list.iter().filter_map(Value::as_str).collect(),
            None => ["quality", "security", "types"].into(),
        };
        let exclude = input
            .get("exclude")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(|e| paths::relative(e, &[]).map_err(|err| refused("exclude", e, err)))
                    .collect::<Result<BTreeSet<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            label,
            dir: if relative.is_empty() {
                root
            } else {
                format!("{root}/{relative}")
            },
            quality: types.contains("quality"),
            security: types.contains("security"),
            types: types.contains("types"),
            exclude,
            max_file_bytes: input
                .get("max_file_bytes")
                .and_then(Value::as_u64)
                .unwrap_or(1 << 20),
            file_records: input
                .get("file_records")
                .and_then(Value::as_bool)
                .unwrap_or(true),
        })
    }
}

impl Plugin for Analysis {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "analysis",
            env!("CARGO_PKG_VERSION"),
            "Static analysis of a source tree: quality metrics and smells, secrets and risky \
             patterns, type annotation gaps, coverage",
        )
        .task_type(TaskType::new(
            "analyze",
            "Analyses the tree at `path` or `project_name` under the granted source root",
            input_schema(),
        ))
        .task_type(TaskType::new(
            "secret_scan",
            "Finds hard-coded secrets in submitted text (a file, a diff, a log), masked",
            secret_scan::input_schema(),
        ))
    }

    fn validate(
        task_type: &str,
        input: &Value,
        config: &BTreeMap<String, String>,
    ) -> Result<(), TaskError> {
        if task_type == "secret_scan" {
            return Ok(());
        }
        Job::parse(input, config).map(|_| ())
    }

    fn run(ctx: Context) -> Result<Value, TaskError> {
        if ctx.task_type == "secret_scan" {
            return secret_scan::run(&ctx.input);
        }
        let job = Job::parse(&ctx.input, &ctx.config)?;
        Progress::new().step("Listing files").report();
        let files = list_files(&job)?;
        let mut tree = Tree::default();
        let mut last_report = Instant::now();
        for (index, (relative, size)) in files.iter().enumerate() {
            checkpoint()?;
            tree.analyse_file(&job, relative, *size);
            let done = index + 1;
            if done % PROGRESS_EVERY_FILES == 0 || last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                Progress::new()
                    .step("Analysing")
                    .processed(done as u64)
                    .total(files.len() as u64)
                    .message(&format!("{done} of {} files", files.len()))
                    .report();
            }
        }
        Progress::new()
            .step("Finding duplicates")
            .processed(files.len() as u64)
            .total(files.len() as u64)
            .report();
        if job.quality {
            tree.add_duplicates();
        }
        if job.file_records {
            tree.emit_records();
        }
        let result = tree.result(&job);
        Progress::new().step("Done").report();
        Ok(result)
    }
}

/// Every file worth reading under the job's directory, sorted, with sizes.
fn list_files(job: &Job) -> Result<Vec<(String, u64)>, TaskError> {
    let metadata = std::fs::metadata(&job.dir).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            "PROJECT_NOT_FOUND"
        } else {
            "PROJECT_UNREADABLE"
        };
        TaskError::fatal(
            code,
            format!(
                "{} cannot be read ({e}); the operator must grant the source root with an fs \
                 entry and the project must exist under it",
                job.dir
            ),
        )
    })?;
    if !metadata.is_dir() {
        return Err(TaskError::fatal(
            "PROJECT_NOT_FOUND",
            format!("{} is not a directory", job.dir),
        ));
    }
    let mut files = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(relative) = pending.pop() {
        let dir = if relative.is_empty() {
            job.dir.clone()
        } else {
            format!("{}/{relative}", job.dir)
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            log::warn(&format!("{relative}: cannot list the directory"));
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        let mut subdirs = Vec::new();
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                let skipped = name.starts_with('.')
                    || SKIPPED_DIRS.contains(&name.as_str())
                    || job.exclude.contains(&name)
                    || job.exclude.contains(&path);
                if !skipped {
                    subdirs.push(path);
                }
            } else if kind.is_file() && !job.exclude.contains(&path) && wanted(&path) {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push((path, size));
            }
        }
        pending.extend(subdirs.into_iter().rev());
    }
    Ok(files)
}

fn wanted(path: &str) -> bool {
    Language::detect(path).is_some() || lang::is_config_file(path) || coverage_kind(path).is_some()
}

#[derive(Clone, Copy)]
enum CoverageKind {
    Lcov,
    Cobertura,
}

fn coverage_kind(path: &str) -> Option<CoverageKind> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name == "lcov.info" || name.ends_with(".lcov") {
        Some(CoverageKind::Lcov)
    } else if matches!(
        name,
        "coverage.xml" | "cobertura.xml" | "cobertura-coverage.xml"
    ) {
        Some(CoverageKind::Cobertura)
    } else {
        None
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct LineCounts {
    code: u64,
    comment: u64,
    blank: u64,
}

#[derive(Debug, Default, serde::Serialize)]
struct LanguageSummary {
    files: u64,
    #[serde(flatten)]
    lines: LineCounts,
    functions: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Smell {
    kind: &'static str,
    file: String,
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    value: u64,
    threshold: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
struct TypeIssue {
    file: String,
    line: usize,
    issue: String,
}

#[derive(Debug, Default)]
struct FileReport {
    path: String,
    language: Option<Language>,
    lines: LineCounts,
    functions: Vec<Function>,
    smells: Vec<Smell>,
    security: Vec<Finding>,
    types: Vec<TypeIssue>,
    skipped: Option<String>,
}

#[derive(Default)]
struct Tree {
    files: Vec<FileReport>,
    significant: Vec<report::Significant>,
    /// Index in `files` of each entry of `significant`.
    significant_file: Vec<usize>,
    coverage: Vec<(u64, u64)>,
    duplicated_lines: u64,
}

impl Tree {
    fn analyse_file(&mut self, job: &Job, path: &str, size: u64) {
        let mut file = FileReport {
            path: path.to_owned(),
            language: Language::detect(path),
            ..FileReport::default()
        };
        if size > job.max_file_bytes {
            file.skipped = Some(format!("larger than max_file_bytes ({size} bytes)"));
            self.files.push(file);
            return;
        }
        let bytes = match std::fs::read(format!("{}/{path}", job.dir)) {
            Ok(bytes) => bytes,
            Err(e) => {
                file.skipped = Some(format!("unreadable: {e}"));
                self.files.push(file);
                return;
            }
        };
        if bytes[..bytes.len().min(8192)].contains(&0) {
            file.skipped = Some("binary".to_owned());
            self.files.push(file);
            return;
        }
        let text = String::from_utf8_lossy(&bytes);
        match coverage_kind(path) {
            Some(CoverageKind::Lcov) => self.coverage.extend(report::lcov(&text)),
            Some(CoverageKind::Cobertura) => self.coverage.extend(report::cobertura(&text)),
            None => {}
        }
        if job.security {
            for (i, line) in text.lines().enumerate() {
                security::secrets(path, i + 1, line, &mut file.security);
            }
        }
        if let Some(language) = file.language {
            let lexed = lang::lex(&text, language);
            for kind in &lexed.kinds {
                match kind {
                    LineKind::Code => file.lines.code += 1,
                    LineKind::Comment => file.lines.comment += 1,
                    LineKind::Blank => file.lines.blank += 1,
                }
            }
            file.functions = functions::functions(&lexed, language);
            if job.quality {
                file.smells = function_smells(path, &file.functions);
                self.significant
                    .push(report::significant_lines(&lexed.code, &lexed.kinds));
                self.significant_file.push(self.files.len());
            }
            if job.security {
                for (i, line) in lexed.no_comments.iter().enumerate() {
                    security::patterns(path, i + 1, line, language, &mut file.security);
                }
            }
            if job.types {
                file.types = type_issues(path, language, &lexed, &file.functions);
            }
        }
        self.files.push(file);
    }

    fn add_duplicates(&mut self) {
        for block in report::duplicates(&self.significant) {
            let file = &mut self.files[self.significant_file[block.file]];
            let lines = (block.last_line - block.first_line + 1) as u64;
            self.duplicated_lines += lines;
            file.smells.push(Smell {
                kind: "duplicated_block",
                file: file.path.clone(),
                line: block.first_line,
                function: None,
                value: lines,
                threshold: report::DUPLICATE_WINDOW as u64,
            });
        }
    }

    fn emit_records(&self) {
        for file in &self.files {
            if file.language.is_none() && file.security.is_empty() && file.skipped.is_none() {
                continue;
            }
            let key = records::key_for(&file.path);
            let data = json!({
                "path": file.path,
                "language": file.language.map(Language::name),
                "lines": file.lines,
                "functions": file.functions,
                "smells": file.smells,
                "security_issues": file.security,
                "type_issues": file.types,
                "skipped": file.skipped,
            });
            if let Err(e) = records::emit("files", &key, &data) {
                log::warn(&format!(
                    "could not store the record of {}: {}",
                    file.path, e.message
                ));
            }
        }
    }

    fn result(&self, job: &Job) -> Value {
        let mut languages: BTreeMap<&str, LanguageSummary> = BTreeMap::new();
        let mut totals = LineCounts::default();
        let all_functions: Vec<(&FileReport, &Function)> = self
            .files
            .iter()
            .flat_map(|f| f.functions.iter().map(move |g| (f, g)))
            .collect();
        for file in &self.files {
            let Some(language) = file.language else {
                continue;
            };
            if file.skipped.is_some() {
                continue;
            }
            let summary = languages.entry(language.name()).or_default();
            summary.files += 1;
            summary.lines.code += file.lines.code;
            summary.lines.comment += file.lines.comment;
            summary.lines.blank += file.lines.blank;
            summary.functions += file.functions.len() as u64;
            totals.code += file.lines.code;
            totals.comment += file.lines.comment;
            totals.blank += file.lines.blank;
        }
        let smells: Vec<&Smell> = self.files.iter().flat_map(|f| &f.smells).collect();
        let mut security: Vec<&Finding> = self.files.iter().flat_map(|f| &f.security).collect();
        security.sort_by_key(|f| severity_rank(f.severity));
        let type_issues: Vec<&TypeIssue> = self.files.iter().flat_map(|f| &f.types).collect();
        let count_kind = |kind: &str| smells.iter().filter(|s| s.kind == kind).count();
        let n = all_functions.len().max(1) as f64;
        let ratios = report::Ratios {
            complex: count_kind("complex_function") as f64 / n,
            long: count_kind("long_function") as f64 / n,
            nested: count_kind("deep_nesting") as f64 / n,
            many_params: count_kind("long_parameter_list") as f64 / n,
            duplicated: if totals.code == 0 {
                0.0
            } else {
                self.duplicated_lines as f64 / totals.code as f64
            },
        };
        let analysed = self
            .files
            .iter()
            .filter(|f| f.language.is_some() && f.skipped.is_none())
            .count();
        let quality_score = (job.quality && analysed > 0).then(|| report::quality_score(ratios));
        let coverage_percent = (!self.coverage.is_empty()).then(|| {
            let (covered, valid) = self
                .coverage
                .iter()
                .fold((0, 0), |(c, v), (c2, v2)| (c + c2, v + v2));
            if valid == 0 {
                0.0
            } else {
                (covered as f64 * 1000.0 / valid as f64).round() / 10.0
            }
        });
        let worst = all_functions.iter().max_by_key(|(_, f)| f.complexity);
        let total_complexity: u64 = all_functions
            .iter()
            .map(|(_, f)| u64::from(f.complexity))
            .sum();
        let smells_by_kind: BTreeMap<&str, usize> =
            smells.iter().fold(BTreeMap::new(), |mut m, s| {
                *m.entry(s.kind).or_insert(0) += 1;
                m
            });
        let recommendations = recommendations(
            job,
            &smells_by_kind,
            &security,
            type_issues.len(),
            coverage_percent,
            totals,
        );
        let skipped: Vec<Value> = self
            .files
            .iter()
            .filter_map(|f| {
                f.skipped
                    .as_ref()
                    .map(|why| json!({"path": f.path, "reason": why}))
            })
            .take(MAX_LISTED)
            .collect();
        let analysis_types: Vec<&str> = [
            job.quality.then_some("quality"),
            job.security.then_some("security"),
            job.types.then_some("types"),
        ]
        .into_iter()
        .flatten()
        .collect();
        json!({
            "project_name": job.label,
            "analysis_types": analysis_types,
            "quality_score": quality_score,
            "security_issues": security.iter().take(MAX_LISTED).collect::<Vec<_>>(),
            "security_issue_count": security.len(),
            "code_smells": job.quality.then_some(smells.len()),
            "type_errors": job.types.then_some(type_issues.len()),
            "coverage_percent": coverage_percent,
            "recommendations": recommendations,
            "summary": {
                "files": analysed,
                "lines": totals,
                "languages": languages,
                "functions": all_functions.len(),
                "average_complexity": if all_functions.is_empty() { 0.0 } else {
                    (total_complexity as f64 / n * 100.0).round() / 100.0
                },
                "max_complexity": worst.map(|(file, f)| json!({
                    "function": f.name, "file": file.path, "line": f.line, "complexity": f.complexity,
                })),
                "duplicated_lines": self.duplicated_lines,
                "smells_by_kind": smells_by_kind,
                "skipped_files": skipped,
            },
            "smells": smells.iter().take(MAX_LISTED).collect::<Vec<_>>(),
            "type_issues": type_issues.iter().take(MAX_LISTED).collect::<Vec<_>>(),
        })
    }
}

fn severity_rank(severity: &str) -> u8 {
    match severity {
        "critical" => 0,
        "high" => 1,
        "medium" => 2,
        _ => 3,
    }
}

fn function_smells(path: &str, functions: &[Function]) -> Vec<Smell> {
    let mut smells = Vec::new();
    for f in functions {
        let mut add = |kind, value: u64, threshold: u64| {
            smells.push(Smell {
                kind,
                file: path.to_owned(),
                line: f.line,
                function: Some(f.name.clone()),
                value,
                threshold,
            });
        };
        if f.length > LONG_FUNCTION {
            add("long_function", f.length as u64, LONG_FUNCTION as u64);
        }
        if f.complexity > COMPLEX_FUNCTION {
            add(
                "complex_function",
                u64::from(f.complexity),
                u64::from(COMPLEX_FUNCTION),
            );
        }
        if f.nesting > DEEP_NESTING {
            add("deep_nesting", f.nesting as u64, DEEP_NESTING as u64);
        }
        if f.params > MANY_PARAMS {
            add("long_parameter_list", f.params as u64, MANY_PARAMS as u64);
        }
    }
    smells
}

/// Python functions missing annotations, and explicit `any` in TypeScript.
fn type_issues(
    path: &str,
    language: Language,
    lexed: &lang::Lexed,
    functions: &[Function],
) -> Vec<TypeIssue> {
    let mut issues = Vec::new();
    match language {
        Language::Python => {
            for f in functions {
                let needs_return = !f.return_annotated && f.name != "__init__";
                if f.unannotated_params.is_empty() && !needs_return {
                    continue;
                }
                let mut gaps = Vec::new();
                if !f.unannotated_params.is_empty() {
                    gaps.push(format!(
                        "parameters without annotations: {}",
                        f.unannotated_params.join(", ")
                    ));
                }
                if needs_return {
                    gaps.push("no return annotation".to_owned());
                }
                issues.push(TypeIssue {
                    file: path.to_owned(),
                    line: f.line,
                    issue: format!(
                        "function {} is not fully annotated ({})",
                        f.name,
                        gaps.join("; ")
                    ),
                });
            }
        }
        Language::TypeScript => {
            for (i, line) in lexed.code.iter().enumerate() {
                for at in lang::find_word(line, "any") {
                    let before = line[..at].trim_end();
                    let after = line[at + 3..].trim_start();
                    let as_type = before.ends_with([':', '<', ',', '|', '&', '('])
                        || (before.ends_with('=') && before.trim_start().starts_with("type "))
                        || lang::find_word(before, "as")
                            .last()
                            .is_some_and(|p| p + 2 == before.len())
                        || after.starts_with("[]");
                    if as_type {
                        issues.push(TypeIssue {
                            file: path.to_owned(),
                            line: i + 1,
                            issue: "explicit any".to_owned(),
                        });
                    }
                }
            }
        }
        _ => {}
    }
    issues
}

fn recommendations(
    job: &Job,
    smells: &BTreeMap<&str, usize>,
    security: &[&Finding],
    type_issues: usize,
    coverage: Option<f64>,
    lines: LineCounts,
) -> Vec<String> {
    let mut out = Vec::new();
    let secrets = security.iter().filter(|f| f.kind == "secret").count();
    if secrets > 0 {
        out.push(format!("Remove {secrets} hard-coded secret(s) from the source, rotate them and load them from a secret store"));
    }
    let mut by_issue: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for f in security.iter().filter(|f| f.kind == "pattern") {
        by_issue
            .entry(f.issue.as_str())
            .or_insert((0, f.recommendation))
            .0 += 1;
    }
    for (issue, (count, advice)) in by_issue {
        out.push(format!("{advice} ({count} × {issue})"));
    }
    let quality = [
        (
            "complex_function",
            "Extract complex methods: {} function(s) have cyclomatic complexity above 10",
        ),
        ("long_function", "Split {} function(s) longer than 50 lines"),
        (
            "deep_nesting",
            "Flatten {} function(s) nested deeper than 4 levels (early returns, helpers)",
        ),
        (
            "long_parameter_list",
            "Group the parameters of {} function(s) taking more than 5 into a struct or object",
        ),
        (
            "duplicated_block",
            "Extract {} duplicated block(s) into shared functions",
        ),
    ];
    for (kind, text) in quality {
        if let Some(count) = smells.get(kind) {
            out.push(text.replace("{}", &count.to_string()));
        }
    }
    if job.quality && lines.code > 200 && lines.comment * 20 < lines.code {
        out.push(
            "Add docstrings to public functions: comments are under 5% of the code".to_owned(),
        );
    }
    if type_issues > 0 {
        out.push(format!("Add type annotations: {type_issues} annotation gap(s) (unannotated Python functions, TypeScript any)"));
    }
    match coverage {
        None => out.push(
            "Publish a coverage report (lcov.info or Cobertura coverage.xml) with the source"
                .to_owned(),
        ),
        Some(p) if p < 80.0 => out.push(format!("Raise test coverage from {p:.1}% towards 80%")),
        _ => {}
    }
    out
}

export_plugin!(Analysis);
