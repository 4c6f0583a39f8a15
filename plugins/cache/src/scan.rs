//! Finding the files a job names under the granted root, through `wasi:filesystem` directly
//! (the preopen is the only way in; a symlink that leads out of it fails like a missing file).

use std::collections::BTreeSet;

use taskhost_plugin_sdk::{TaskError, checkpoint};
use wasip2::filesystem::preopens::get_directories;
use wasip2::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};

use crate::job::Job;

/// One file to read.
#[derive(Debug, Clone)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
}

/// What the scan found: files to read, and the ones that failed already (missing, not a
/// regular file, outside the sandbox).
#[derive(Debug, Default)]
pub struct Scanned {
    pub files: Vec<FileEntry>,
    pub failed: Vec<(String, String)>,
}

/// Why an I/O call failed, in words.
pub fn describe(error: ErrorCode) -> String {
    match error {
        ErrorCode::NoEntry => "not found".to_owned(),
        ErrorCode::Access => "permission denied".to_owned(),
        ErrorCode::NotPermitted => {
            "not permitted (it may lead outside the granted directory)".to_owned()
        }
        ErrorCode::IsDirectory => "is a directory".to_owned(),
        ErrorCode::NotDirectory => "not a directory".to_owned(),
        ErrorCode::Loop => "too many levels of symbolic links".to_owned(),
        ErrorCode::Io => "I/O error".to_owned(),
        other => other.name().replace('-', " "),
    }
}

/// The cache root: a preopen, or a directory inside one.
pub fn open_root(root: &str) -> Result<Descriptor, TaskError> {
    let root = root.trim_end_matches('/');
    let not_granted = || {
        TaskError::fatal(
            "CACHE_ROOT_NOT_GRANTED",
            format!(
                "{root} is not granted to this plugin: the operator grants it with an fs entry \
                 (guest = \"{root}\") or sets config root to a granted directory"
            ),
        )
    };
    for (dir, guest) in get_directories() {
        let guest = guest.trim_end_matches('/');
        if guest == root {
            return Ok(dir);
        }
        if let Some(rest) = root.strip_prefix(guest).and_then(|r| r.strip_prefix('/')) {
            return dir
                .open_at(
                    PathFlags::SYMLINK_FOLLOW,
                    rest,
                    OpenFlags::DIRECTORY,
                    DescriptorFlags::READ,
                )
                .map_err(|e| {
                    TaskError::fatal(
                        "CACHE_ROOT_UNREADABLE",
                        format!("{root} cannot be opened: {}", describe(e)),
                    )
                });
        }
    }
    Err(not_granted())
}

fn dir_path(relative: &str) -> &str {
    if relative.is_empty() { "." } else { relative }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

/// Lists the job's files with their sizes, in the order named (directories sorted by name),
/// each once.
pub fn scan(root: &Descriptor, job: &Job, max_files: usize) -> Result<Scanned, TaskError> {
    let mut scanned = Scanned::default();
    let mut seen = BTreeSet::new();
    let mut add = |scanned: &mut Scanned, path: String, outcome: Result<u64, String>| {
        if !seen.insert(path.clone()) {
            return Ok(());
        }
        match outcome {
            Ok(size) => scanned.files.push(FileEntry { path, size }),
            Err(error) => scanned.failed.push((path, error)),
        }
        if scanned.files.len() + scanned.failed.len() > max_files {
            return Err(TaskError::fatal(
                "CACHE_TOO_MANY_FILES",
                format!("the job names more than {max_files} files (config max_files)"),
            ));
        }
        Ok(())
    };

    for path in &job.files {
        let outcome = match root.stat_at(PathFlags::SYMLINK_FOLLOW, path) {
            Ok(stat) if stat.type_ == DescriptorType::RegularFile => Ok(stat.size),
            Ok(stat) if stat.type_ == DescriptorType::Directory => {
                Err("is a directory (name it under directories)".to_owned())
            }
            Ok(_) => Err("not a regular file".to_owned()),
            Err(e) => Err(describe(e)),
        };
        add(&mut scanned, path.clone(), outcome)?;
    }

    for top in &job.directories {
        let mut pending = vec![top.clone()];
        while let Some(dir) = pending.pop() {
            checkpoint()?;
            let entries = match list_dir(root, &dir) {
                Ok(entries) => entries,
                Err(e) => {
                    add(&mut scanned, dir, Err(e))?;
                    continue;
                }
            };
            let mut subdirs = Vec::new();
            for (name, kind) in entries {
                let path = join(&dir, &name);
                let outcome = match kind {
                    DescriptorType::Directory => {
                        if job.recursive {
                            subdirs.push(path);
                        }
                        continue;
                    }
                    // A symlink counts when it leads to a file inside the root; symlinked
                    // directories are not followed, so a link cycle cannot trap the scan.
                    DescriptorType::RegularFile | DescriptorType::SymbolicLink => {
                        match root.stat_at(PathFlags::SYMLINK_FOLLOW, &path) {
                            Ok(stat) if stat.type_ == DescriptorType::RegularFile => Ok(stat.size),
                            Ok(stat) if stat.type_ == DescriptorType::Directory => continue,
                            Ok(_) => continue,
                            Err(e) => Err(describe(e)),
                        }
                    }
                    // Sockets, fifos and devices hold nothing to warm (and a fifo would block).
                    _ => continue,
                };
                add(&mut scanned, path, outcome)?;
            }
            // Depth-first in name order: push in reverse so the first name is visited first.
            pending.extend(subdirs.into_iter().rev());
        }
    }
    Ok(scanned)
}

/// The entries of one directory, sorted by name.
fn list_dir(root: &Descriptor, dir: &str) -> Result<Vec<(String, DescriptorType)>, String> {
    let handle = root
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            dir_path(dir),
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        )
        .map_err(describe)?;
    let stream = handle.read_directory().map_err(describe)?;
    let mut entries = Vec::new();
    while let Some(entry) = stream.read_directory_entry().map_err(describe)? {
        entries.push((entry.name, entry.type_));
    }
    drop(stream);
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(entries)
}

/// Reads a whole (small) file: a manifest.
pub fn read_small_file(root: &Descriptor, path: &str, max: u64) -> Result<Vec<u8>, String> {
    let file = root
        .open_at(
            PathFlags::SYMLINK_FOLLOW,
            path,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        )
        .map_err(describe)?;
    let size = file.stat().map_err(describe)?.size;
    if size > max {
        return Err(format!("it is larger than {max} bytes"));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    loop {
        let (chunk, end) = file.read(1 << 20, data.len() as u64).map_err(describe)?;
        data.extend_from_slice(&chunk);
        if end || chunk.is_empty() || data.len() as u64 > max {
            break;
        }
    }
    Ok(data)
}
