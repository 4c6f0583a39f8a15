//! A job's directory on the runner: filled from the job's source before the first step, and
//! described (artifacts) after the last.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::runners::{Artifact, MAX_ARTIFACTS};

/// Copies the contents of `from` into `to` (which exists): files, directories and symlinks
/// as symlinks, so that a link in the source cannot make the copy read outside it.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<u64> {
    let mut copied = 0;
    let mut pending = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((source, target)) = pending.pop() {
        for entry in fs::read_dir(&source)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let destination = target.join(entry.file_name());
            if kind.is_dir() {
                fs::create_dir(&destination)?;
                pending.push((entry.path(), destination));
            } else if kind.is_symlink() {
                copy_link(&entry.path(), &destination)?;
            } else {
                copied += fs::copy(entry.path(), &destination)?;
            }
        }
    }
    Ok(copied)
}

#[cfg(unix)]
fn copy_link(link: &Path, destination: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(fs::read_link(link)?, destination)
}

#[cfg(not(unix))]
fn copy_link(_: &Path, _: &Path) -> io::Result<()> {
    // Creating symlinks needs privileges on Windows; the link is left out.
    Ok(())
}

/// The files under `dir` that `patterns` name (each relative, `*` and `?` within one
/// component), with size and SHA-256, in path order. Matches outside `dir` (through a
/// symlink) and directories are left out.
pub fn describe_artifacts(dir: &Path, patterns: &[String]) -> io::Result<Vec<Artifact>> {
    let root = dir.canonicalize()?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    for pattern in patterns {
        let full = format!(
            "{}/{}",
            glob::Pattern::escape(&root.to_string_lossy()),
            pattern
        );
        let Ok(paths) = glob::glob_with(&full, options) else {
            continue;
        };
        for path in paths.flatten() {
            let Ok(real) = path.canonicalize() else {
                continue;
            };
            if !real.starts_with(&root) || !real.is_file() {
                continue;
            }
            let Ok(relative) = path.strip_prefix(&root) else {
                continue;
            };
            let relative = relative.to_string_lossy().replace('\\', "/");
            if !found.iter().any(|(p, _)| *p == relative) {
                found.push((relative, real));
            }
        }
    }
    found.sort();
    found.truncate(MAX_ARTIFACTS);
    found
        .into_iter()
        .map(|(path, real)| {
            let (size_bytes, sha256) = hash_file(&real)?;
            Ok(Artifact {
                path,
                size_bytes,
                sha256,
            })
        })
        .collect()
}

fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 256 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
    Ok((size, hex::encode(hasher.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_tree_and_describes_matching_files_only_inside_it() {
        let source = tempfile::tempdir().unwrap();
        let job = tempfile::tempdir().unwrap();
        fs::create_dir_all(source.path().join("src/nested")).unwrap();
        fs::write(source.path().join("Cargo.toml"), "[package]\n").unwrap();
        fs::write(source.path().join("src/nested/a.txt"), "abc").unwrap();
        assert_eq!(copy_tree(source.path(), job.path()).unwrap(), 13);
        assert_eq!(
            fs::read_to_string(job.path().join("src/nested/a.txt")).unwrap(),
            "abc"
        );

        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret.txt"), "no").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            job.path().join("src/nested/link.txt"),
        )
        .unwrap();
        let artifacts = describe_artifacts(
            job.path(),
            &[
                "src/*/*.txt".into(),
                "Cargo.toml".into(),
                "missing/*".into(),
            ],
        )
        .unwrap();
        let paths: Vec<&str> = artifacts.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["Cargo.toml", "src/nested/a.txt"]);
        assert_eq!(artifacts[1].size_bytes, 3);
        assert_eq!(
            artifacts[1].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
