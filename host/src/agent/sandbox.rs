//! What keeps a job's steps away from the runner and from each other: steps start with a
//! cleared environment plus an allow-list, the runner process is undumpable (so a step of the
//! same user cannot read `/proc/<runner>/environ` or its memory), and with `--run-as` the
//! steps run as another user, in job directories only that user can enter, under a work
//! directory it cannot list.

use std::ffi::{CString, OsString};
use std::path::{Path, PathBuf};

/// Environment variables steps inherit from the runner unless the operator says otherwise:
/// what programs need to find themselves and their toolchains, nothing that is a credential.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "PYENV_ROOT",
    "GOPATH",
    "GOROOT",
    "JAVA_HOME",
];

/// The user steps run as (`--run-as`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks a user up by name (or numeric uid) in the system's user database.
#[cfg(unix)]
pub fn resolve_user(name: &str) -> Result<StepUser, String> {
    let c_name = CString::new(name).map_err(|_| format!("bad user name {name:?}"))?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live, correctly sized buffer owned by this frame.
    let rc = unsafe {
        match name.parse::<u32>() {
            Ok(uid) => libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            ),
            Err(_) => libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            ),
        }
    };
    if rc != 0 || found.is_null() {
        return Err(format!("no user {name:?} on this machine"));
    }
    Ok(StepUser {
        name: name.to_owned(),
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

#[cfg(not(unix))]
pub fn resolve_user(name: &str) -> Result<StepUser, String> {
    Err(format!("--run-as {name} needs a Unix system"))
}

/// Whether this process runs as root (and so could switch steps to another user).
pub fn is_root() -> bool {
    #[cfg(unix)]
    // SAFETY: geteuid has no preconditions.
    return unsafe { libc::geteuid() } == 0;
    #[cfg(not(unix))]
    false
}

/// Marks the runner undumpable: its `/proc` entries (environ, mem, fds) become root's, so a
/// step running as the same user cannot read the runner's credential out of them.
pub fn make_undumpable() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes plain integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if rc != 0 {
            return Err(format!(
                "prctl(PR_SET_DUMPABLE) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The variables steps start with: those of `names` the runner has, never `TASKHOST_*`.
pub fn step_environment(names: &[String]) -> Vec<(OsString, OsString)> {
    names
        .iter()
        .filter(|name| !name.starts_with("TASKHOST_"))
        .filter_map(|name| std::env::var_os(name).map(|value| (OsString::from(name), value)))
        .collect()
}

/// Sets a directory's mode (no-op off Unix).
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Makes the work directory enterable but not listable, so a step cannot find the other jobs'
/// directories in it.
pub fn lock_work_dir(work_dir: &Path) -> std::io::Result<()> {
    set_mode(work_dir, 0o711)
}

/// Gives a job's directory (and what was copied into it) to the user its steps run as, and
/// closes it to everyone else.
pub fn hand_over(dir: &Path, user: Option<&StepUser>) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(user) = user {
        let mut pending: Vec<PathBuf> = vec![dir.to_path_buf()];
        while let Some(path) = pending.pop() {
            std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))?;
            if path.symlink_metadata()?.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    pending.push(entry?.path());
                }
            }
        }
    }
    set_mode(dir, 0o700)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_never_inherit_taskhost_variables_even_when_listed() {
        let names = vec!["PATH".to_owned(), "TASKHOST_API_KEY".to_owned()];
        let env = step_environment(&names);
        assert!(env.iter().all(|(name, _)| name != "TASKHOST_API_KEY"));
        assert!(env.iter().any(|(name, _)| name == "PATH"));
    }

    #[cfg(unix)]
    #[test]
    fn users_resolve_by_name_and_uid() {
        let root = resolve_user("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(resolve_user("0").expect("uid 0").uid, 0);
        assert!(resolve_user("no-such-user-here").is_err());
    }
}
