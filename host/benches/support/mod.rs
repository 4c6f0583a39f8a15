//! What the benchmarks share: a real host on 127.0.0.1:0 with a temp data dir, logged in as
//! admin, and the figures' arithmetic.

// Each benchmark uses its own subset.
#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::{Value, json};
use taskhost::api::AppState;
use taskhost::config::Config;

const ADMIN_PASSWORD: &str = "bench-admin-password";

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether cargo bench runs us (`--bench`), rather than a smoke run from `cargo test`.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Sends `request` and returns its JSON answer.
pub async fn send_json(request: reqwest::RequestBuilder) -> Value {
    request
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a JSON answer")
}

/// Logs in as the bench's admin and returns the bearer token.
async fn admin_token(base: &str) -> String {
    let login: Value = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    login["access_token"].as_str().expect("token").to_owned()
}

/// A client that sends `token` as its bearer on every request.
pub fn bearer_client(token: &str, idle_connections: usize) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle_connections)
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A host serving in this process.
pub struct BenchHost {
    pub addr: SocketAddr,
    pub base: String,
    /// The admin's bearer token.
    pub token: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    _data: tempfile::TempDir,
}

impl BenchHost {
    /// Starts a host with rate limits off and `change` applied to its config; `before_serving`
    /// sees the host's state before the first request.
    pub async fn start(
        change: impl FnOnce(&mut Config),
        before_serving: impl FnOnce(&AppState),
    ) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let mut config = Config {
            data_dir: data.path().to_owned(),
            listen: "127.0.0.1:0".parse().expect("address"),
            ..Config::default()
        };
        // The real authentication path, with limits out of the way of the load.
        config.auth.admin_password = Some(ADMIN_PASSWORD.into());
        config.rate_limits.enabled = false;
        change(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let base = format!("http://{addr}");
        let state = taskhost::app::start(config).await.expect("host");
        before_serving(&state);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(taskhost::app::run(state, listener, async {
            let _ = stopped.await;
        }));
        let token = admin_token(&base).await;
        Self {
            addr,
            base,
            token,
            stop,
            server,
            _data: data,
        }
    }

    /// A client that sends the admin's token on every request.
    pub fn client(&self, idle_connections: usize) -> reqwest::Client {
        bearer_client(&self.token, idle_connections)
    }

    /// Shuts the host down gracefully.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: &str) -> f64 {
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    stat_seconds(pid, &[11, 12])
}

/// Numeric fields of `/proc/<pid>/stat` after the command name (which may hold spaces, so
/// they start after its closing ')'): 1 is the parent pid, 11 and 12 utime and stime, 13 and
/// 14 those of reaped children. An unreadable process has none.
pub fn stat_fields(pid: &str) -> Vec<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|f| f.parse::<f64>().unwrap_or(0.0))
        .collect()
}

/// The sum of the clock-tick `fields` of a process, in seconds.
pub fn stat_seconds(pid: &str, fields: &[usize]) -> f64 {
    let values = stat_fields(pid);
    let ticks: f64 = fields.iter().filter_map(|i| values.get(*i)).sum();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running kernel and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory of a process in MB, from `/proc/<pid>/status`.
pub fn rss_mb(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes under `path`, recursively.
pub fn disk_bytes(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
                // Blocks in use, not the length: a store may leave holes in its files.
                Ok(meta) => meta.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    })
}

/// The `taskhost` binary serving in its own process, as a user runs it: the benchmark is its
/// client, so the figures include no shared-process shortcuts and CPU splits cleanly.
pub struct ServerProcess {
    pub base: String,
    pub token: String,
    pub pid: String,
    child: std::process::Child,
    /// `None` only once [`stop`](Self::stop) has handed it back.
    data: Option<tempfile::TempDir>,
}

impl ServerProcess {
    /// Starts `taskhost serve` on 127.0.0.1:0 with a temp data dir, rate limits off and
    /// `extra_config` appended to its config file, and logs in as admin.
    pub async fn start(extra_config: &str) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), extra_config).await
    }

    /// As [`start`](Self::start), on the data already in `data` (its `data/` directory).
    pub async fn start_in(data: tempfile::TempDir, extra_config: &str) -> Self {
        use std::io::BufRead;
        let config = data.path().join("bench.toml");
        std::fs::write(
            &config,
            format!("[rate_limits]\nenabled = false\n{extra_config}"),
        )
        .expect("config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskhost"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path().join("data"))
            .arg("--config")
            .arg(&config)
            .env("TASKHOST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "warn,taskhost=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("taskhost starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.find("listening on http://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the host logs its address");
        let token = admin_token(&base).await;
        let pid = child.id().to_string();
        Self {
            base,
            token,
            pid,
            child,
            data: Some(data),
        }
    }

    /// A client that sends the admin's token on every request.
    pub fn client(&self, idle_connections: usize) -> reqwest::Client {
        bearer_client(&self.token, idle_connections)
    }

    /// The directory holding the server's config and data.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data
            .as_ref()
            .map_or(std::path::Path::new("."), |d| d.path())
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pid)
    }

    pub fn rss_mb(&self) -> f64 {
        rss_mb(&self.pid)
    }
}

impl ServerProcess {
    /// SIGTERM, waits for the exit, and hands back the data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid])
            .status();
        let _ = self.child.wait();
        self.data.take().expect("the data directory, until stop")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints how the CPU of a measured span was split between this client and the server.
pub fn print_cpu_split(label: &str, wall_s: f64, client_cpu_s: f64, server_cpu_s: f64) {
    println!(
        "  CPU over {label} ({wall_s:.2} s wall, {} cores): server {server_cpu_s:.2} s ({:.2} cores), client {client_cpu_s:.2} s ({:.2} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        server_cpu_s / wall_s,
        client_cpu_s / wall_s,
    );
}

/// CPU seconds of a PostgreSQL cluster: the postmaster with the children it reaped, and the
/// children alive now.
pub fn cluster_cpu_seconds(postmaster: u32) -> f64 {
    let mut total = stat_seconds(&postmaster.to_string(), &[11, 12, 13, 14]);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if pid.bytes().all(|b| b.is_ascii_digit())
            && stat_fields(&pid).get(1) == Some(&f64::from(postmaster))
        {
            total += stat_seconds(&pid, &[11, 12]);
        }
    }
    total
}

/// How many testkit tasks the host at `base` counts as completed.
pub async fn completed(client: &reqwest::Client, base: &str) -> u64 {
    let queues: Value = client
        .get(format!("{base}/api/v1/queues"))
        .send()
        .await
        .expect("queues")
        .json()
        .await
        .expect("json");
    queues["data"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["plugin"] == "testkit"))
        .map_or(0, |q| q["completed"].as_u64().unwrap_or(0))
}
