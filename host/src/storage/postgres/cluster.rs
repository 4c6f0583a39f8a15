//! A private PostgreSQL cluster for tests: `initdb` in a temp dir, a free loopback port,
//! password authentication, run as an unprivileged user, stopped and deleted on drop.
//!
//! The server binaries are found in `TASKHOST_PG_BINDIR`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout), else on `PATH`. When the tests run as root
//! (as CI does) the server runs as the `postgres` user, which PostgreSQL requires.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user and password the cluster is created with.
const SUPERUSER: &str = "taskhost";

pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: Option<PathBuf>,
    run_as: Option<String>,
    password: String,
    port: u16,
}

impl PgCluster {
    /// Creates and starts a cluster for tests, with fsync off (nothing in it outlives the
    /// test); panics with what is missing when it cannot.
    pub fn start() -> Self {
        Self::start_with("-c fsync=off")
    }

    /// A cluster that makes commits durable as a production one does (fsync on), for
    /// benchmarks; `pg_stat_statements` is loaded so that they can count round trips (its
    /// `CREATE EXTENSION` is theirs to run).
    pub fn start_durable() -> Self {
        Self::start_with(
            "-c fsync=on -c synchronous_commit=on -c shared_preload_libraries=pg_stat_statements",
        )
    }

    fn start_with(settings: &str) -> Self {
        let bindir = find_bindir();
        let run_as = running_as_root().then(|| "postgres".to_string());
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).expect("password file");
        if let Some(user) = &run_as {
            let chown = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(chown.success(), "chown of the cluster dir to {user} failed");
        }
        let mut cluster = PgCluster {
            dir,
            bindir,
            run_as,
            password,
            port: 0,
        };
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                SUPERUSER,
                "--pwfile",
                path_str(&pwfile),
                "--auth",
                "scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        // A free port can be taken by someone else between probing and binding: try again.
        for attempt in 0..5 {
            cluster.port = free_port();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {} -k {} {settings} -c max_connections=100",
                cluster.port,
                path_str(cluster.dir.path()),
            );
            let log = cluster.dir.path().join("server.log");
            let started = cluster.try_run(
                "pg_ctl",
                &[
                    "-D",
                    path_str(&data),
                    "-l",
                    path_str(&log),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if started.is_ok() {
                return cluster;
            }
            if attempt == 4 {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("PostgreSQL did not start: {started:?}\n{log}");
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// `postgres://…` for the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// The postmaster's pid, whose reaped children's CPU the kernel adds to its own.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let program = match &self.bindir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn try_run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let output = self
            .command(program)
            .args(args)
            .output()
            .map_err(|e| format!("{program} could not start: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        if let Err(e) = self.try_run(program, args) {
            panic!("{e} (is PostgreSQL installed? tests/run installs it on Debian)");
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        if let Err(e) = self.try_run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "immediate", "-w", "stop"],
        ) {
            eprintln!("stopping the test cluster: {e}");
        }
    }
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TASKHOST_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}
