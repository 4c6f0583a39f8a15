//! The one test harness: starts the real host on `127.0.0.1:0` with a temporary data
//! directory and gives tests an HTTP client bound to it. [`TestServer`] runs the host in the
//! test process; [`HostProcess`] runs the `taskhost` binary (for crash tests).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use taskhost::config::Config;
use taskhost::runtime::Grants;
use tokio::sync::oneshot;

/// The admin password every test host starts with.
pub const ADMIN_PASSWORD: &str = "test-admin-password";

/// A compile cache shared by every test, so that each server does not recompile the plugins.
pub fn shared_cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// Grants that preopen `host` read-only at `guest`, with the given plugin config.
pub fn read_only_grants(host: &Path, guest: &str, config: &[(&str, &str)]) -> Grants {
    let mut grants = Grants::default();
    grants.fs.push(taskhost::runtime::FsMount {
        host: host.to_owned(),
        guest: guest.to_owned(),
        rw: false,
    });
    grants.config = config
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    grants
}

/// Settings a test may change before the server starts.
pub struct ServerBuilder {
    config: Config,
}

impl ServerBuilder {
    pub fn config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Grants for the bundled testkit plugin.
    pub fn testkit_grants(mut self, grants: Grants) -> Self {
        self.config.plugins.insert("testkit".into(), grants);
        self
    }

    /// Grants for any bundled plugin (fs mounts, config, limits).
    pub fn plugin_grants(mut self, plugin: &str, grants: Grants) -> Self {
        self.config.plugins.insert(plugin.into(), grants);
        self
    }

    pub fn testkit_concurrency(self, n: u32) -> Self {
        let mut grants = Grants::default();
        grants.limits.max_concurrency = n;
        self.testkit_grants(grants)
    }

    pub async fn start(self) -> TestServer {
        let data = tempfile::tempdir().expect("temp data dir");
        let mut config = self.config;
        config.data_dir = data.path().to_owned();
        config.listen = "127.0.0.1:0".parse().expect("address");
        TestServer::start_in(config, data).await
    }
}

/// A host serving in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Logged in as admin.
    pub client: reqwest::Client,
    /// The admin's bearer token.
    pub token: String,
    /// Kept so the directory lives as long as the server.
    _data: tempfile::TempDir,
    /// Dropping it shuts the server down gracefully.
    _stop: oneshot::Sender<()>,
    config: Config,
    served: tokio::task::JoinHandle<()>,
    /// The façades' own listeners (`[compat.*] listen`), by config section.
    pub facades: BTreeMap<&'static str, SocketAddr>,
}

impl TestServer {
    pub fn builder() -> ServerBuilder {
        let mut config = Config::default();
        config.runtime.cache_dir = Some(shared_cache_dir());
        // Tests wait for retries and cancellations; keep the waits short.
        config.engine.retry_base_ms = 50;
        config.engine.retry_max_ms = 500;
        config.engine.cancel_grace_s = 1;
        config.engine.shutdown_grace_s = 2;
        config.auth.admin_password = Some(ADMIN_PASSWORD.into());
        // Tests make many requests quickly; the rate-limit tests set their own limits.
        config.rate_limits.per_principal_per_minute = 1_000_000;
        config.rate_limits.per_ip_per_minute = 1_000_000;
        config.rate_limits.login_per_minute = 10_000;
        config.rate_limits.login_per_user_per_minute = 10_000;
        ServerBuilder { config }
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    async fn start_in(config: Config, data: tempfile::TempDir) -> Self {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut config = config;
        let facade_listeners = taskhost::app::bind_facades(&config)
            .await
            .expect("façades bind");
        let mut facades = BTreeMap::new();
        for (section, facade) in &facade_listeners {
            let bound = facade.local_addr().expect("façade address");
            facades.insert(*section, bound);
            // A restart takes the same port, as the façade's clients have it.
            match *section {
                "compat.agent_tracker" => config.compat.agent_tracker.listen = Some(bound),
                "compat.teamcache" => config.compat.teamcache.listen = Some(bound),
                "compat.build_analysis" => config.compat.build_analysis.listen = Some(bound),
                "compat.gitlab_crawler" => config.compat.gitlab_crawler.listen = Some(bound),
                _ => {}
            }
        }
        let state = taskhost::app::start(config.clone())
            .await
            .expect("host starts");
        let (stop, stop_rx) = oneshot::channel::<()>();
        let served = tokio::spawn(taskhost::app::run_all(
            state,
            listener,
            facade_listeners,
            async {
                let _ = stop_rx.await;
            },
        ));
        let token = login(&format!("http://{addr}"), "admin", ADMIN_PASSWORD).await;
        Self {
            addr,
            client: client_with_token(&token),
            token,
            _data: data,
            _stop: stop,
            config,
            served,
            facades,
        }
    }

    /// Shuts the host down, waits until it has, and starts it again on the same data and the
    /// same address: what clients and runners see of a host restart.
    pub async fn restart(self) -> Self {
        let Self {
            addr,
            _data: data,
            _stop: stop,
            mut config,
            served,
            ..
        } = self;
        drop(stop);
        served.await.expect("the host shut down");
        config.listen = addr;
        Self::start_in(config, data).await
    }

    /// An API key good for registering runners (`runners:register`).
    pub async fn runner_key(&self) -> String {
        let (status, created) = self
            .api()
            .post(
                "/api/v1/auth/api-keys",
                json!({"name": "runners", "permissions": ["runners:register"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["key"].as_str().expect("key in clear").to_owned()
    }

    pub fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// A plain client, for requests that set their own credentials.
    pub fn client_without_auth(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// A client with no credentials.
    pub fn anonymous(&self) -> Api<'static> {
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        Api {
            client: CLIENT.get_or_init(reqwest::Client::new),
            base: format!("http://{}", self.addr),
        }
    }

    /// Creates a user (as admin) and returns a client logged in as them.
    pub async fn user(&self, username: &str, role: &str) -> reqwest::Client {
        client_with_token(&self.user_token(username, role).await)
    }

    /// Creates a user (as admin) and returns their bearer token.
    pub async fn user_token(&self, username: &str, role: &str) -> String {
        let password = format!("{username}-password");
        let (status, body) = self
            .api()
            .post(
                "/api/v1/users",
                json!({"username": username, "password": password, "role": role}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        login(&format!("http://{}", self.addr), username, &password).await
    }

    /// `ws://` URL of `path` with `token` in the query, as browsers must pass it.
    pub fn ws_url(&self, path: &str, token: &str) -> String {
        let separator = if path.contains('?') { '&' } else { '?' };
        format!("ws://{}{path}{separator}token={token}", self.addr)
    }

    /// Opens a WebSocket stream on `path` as admin.
    pub async fn ws(&self, path: &str) -> WsClient {
        WsClient::connect(&self.ws_url(path, &self.token)).await
    }

    /// The task's log as the API serves it.
    pub async fn logs(&self, id: &str) -> String {
        self.client
            .get(self.url(&format!("/api/v1/tasks/{id}/logs")))
            .send()
            .await
            .expect("logs request")
            .text()
            .await
            .expect("logs body")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn api(&self) -> Api<'_> {
        Api {
            client: &self.client,
            base: format!("http://{}", self.addr),
        }
    }
}

/// Requests against a running host, returning (status, JSON body).
pub struct Api<'a> {
    pub client: &'a reqwest::Client,
    pub base: String,
}

impl Api<'_> {
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(body)).await
    }

    /// Creates a task and returns it; panics unless the host answers 202.
    pub async fn create(&self, body: Value) -> Value {
        let (status, task) = self.post("/api/v1/tasks", body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "creating {body}: {task}");
        task
    }

    pub async fn task(&self, id: &str) -> Value {
        let (status, task) = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{task}");
        task
    }

    /// Polls a task until `done` says so, for at most `limit`.
    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let task = self.task(id).await;
            if done(&task) {
                return task;
            }
            assert!(
                start.elapsed() < limit,
                "task {id} did not reach the expected state in {limit:?}: {task}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the task is completed, failed or cancelled.
    pub async fn finished(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(30), |t| {
            matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await
    }

    /// Every record the task emitted in `collection`.
    pub async fn records(&self, id: &str, collection: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let (status, page) = self
                .get(&format!(
                    "/api/v1/tasks/{id}/records?collection={collection}&limit=100&offset={}",
                    all.len()
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let data = page["data"].as_array().cloned().unwrap_or_default();
            if data.is_empty() {
                return all;
            }
            all.extend(data);
        }
    }

    pub async fn events(&self, id: &str) -> Vec<Value> {
        let (status, page) = self
            .get(&format!("/api/v1/tasks/{id}/events?limit=1000"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        page["data"].as_array().cloned().unwrap_or_default()
    }
}

/// Asserts an error response has the API's error shape and the expected status and code.
pub fn assert_error(status: StatusCode, body: &Value, expected_status: u16, code: &str) {
    assert_eq!(status.as_u16(), expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["status"], expected_status, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    assert!(
        body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{body}"
    );
}

/// Logs in and returns the bearer token.
pub async fn login(base: &str, username: &str, password: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login sent");
    assert_eq!(response.status(), StatusCode::OK, "login as {username}");
    let body: Value = response.json().await.expect("json");
    body["access_token"].as_str().expect("a token").to_owned()
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

pub fn echo(input: Value) -> Value {
    json!({"plugin": "testkit", "type": "echo", "input": input})
}

/// The `taskhost` binary running as a child process.
pub struct HostProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl HostProcess {
    /// Starts the binary on `data_dir` with the test admin password and rate limits out of
    /// the way, and waits for its `listening on` line.
    pub fn spawn(data_dir: &Path) -> Self {
        Self::spawn_limited(data_dir, None, "")
    }

    /// [`spawn`](Self::spawn) with `extra` appended to its configuration file (TOML tables).
    pub fn spawn_with_config(data_dir: &Path, extra: &str) -> Self {
        Self::spawn_limited(data_dir, None, extra)
    }

    /// [`spawn`](Self::spawn) with no file of the host's allowed past `max_file_bytes`
    /// (`RLIMIT_FSIZE`): a write beyond it fails as on a full disk, without root or a
    /// filesystem of its own.
    pub fn spawn_with_file_limit(data_dir: &Path, max_file_bytes: u64) -> Self {
        Self::spawn_limited(data_dir, Some(max_file_bytes), "")
    }

    fn spawn_limited(data_dir: &Path, max_file_bytes: Option<u64>, extra: &str) -> Self {
        let config_file = data_dir.join("test-config.toml");
        std::fs::write(
            &config_file,
            format!(
                "[rate_limits]\nper_principal_per_minute = 1000000\nper_ip_per_minute = 1000000\n{extra}"
            ),
        )
        .expect("config written");
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskhost"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .arg("--config")
            .arg(&config_file)
            .env("RUST_LOG", "info")
            .env("TASKHOST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(limit) = max_file_bytes {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls are made.
            unsafe {
                command.pre_exec(move || {
                    // A write past the limit then fails with EFBIG instead of killing the
                    // process with SIGXFSZ.
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("taskhost starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let child_id = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        // TASKHOST_TEST_HOST_LOG=1 shows the hosts' logs, for a failing test.
        let echo = std::env::var_os("TASKHOST_TEST_HOST_LOG").is_some();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("host {}: {line}", child_id);
                }
                if !sent && let Some(at) = line.find("listening on http://") {
                    let addr = line[at + "listening on http://".len()..].trim().to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the host logs its address")
            .parse()
            .expect("a socket address");
        Self { child, addr }
    }

    pub fn api<'a>(&self, client: &'a reqwest::Client) -> Api<'a> {
        Api {
            client,
            base: format!("http://{}", self.addr),
        }
    }

    /// A client logged in as admin.
    pub async fn client(&self) -> reqwest::Client {
        client_with_token(&login(&format!("http://{}", self.addr), "admin", ADMIN_PASSWORD).await)
    }

    /// SIGTERM, then waits (up to 30 s) for the process to exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "could not signal the host");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the host did not exit within 30 s of SIGTERM");
    }

    /// Waits (up to `limit`) for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the host did not exit within {limit:?}");
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails, naming the tool, when a program a test needs is not installed (`tests/run`
/// installs them), so that a missing tool never shows up as a misleading assertion.
pub fn require_tool(program: &str, args: &[&str]) {
    let found = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "this test needs `{program} {}`, which is not installed here: run the tests with tests/run, which installs it",
        args.join(" ")
    );
}

/// Asks `probe` every 50 ms until it answers `Ok`, for up to `limit`; then fails with the
/// last `Err`, which says what never happened.
pub async fn eventually<T, F, Fut>(limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(why) => assert!(start.elapsed() < limit, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `taskhost-runner` binary as a child process, with its own work directory and its log
/// in a file there.
pub struct RunnerProcess {
    child: Child,
    pub name: String,
    work: tempfile::TempDir,
}

impl RunnerProcess {
    pub fn spawn(server: &TestServer, key: &str, name: &str, labels: &[&str]) -> Self {
        let work = tempfile::tempdir().expect("runner work dir");
        Self::spawn_in(work, server, name, labels, |command| {
            command.env("TASKHOST_API_KEY", key);
        })
    }

    /// Starts the runner in `work` (its log and `jobs/` go there), with `setup` adding
    /// arguments or environment (how it gets its key, whom steps run as).
    pub fn spawn_in(
        work: tempfile::TempDir,
        server: &TestServer,
        name: &str,
        labels: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Self {
        let log = std::fs::File::create(work.path().join("runner.log")).expect("runner log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_taskhost-runner"));
        command
            .arg("--url")
            .arg(server.url(""))
            .args(["--name", name, "--label", &labels.join(",")])
            .arg("--work-dir")
            .arg(work.path().join("jobs"))
            .env_remove("TASKHOST_API_KEY")
            .env("RUST_LOG", "info");
        setup(&mut command);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("taskhost-runner starts");
        Self {
            child,
            name: name.to_owned(),
            work,
        }
    }

    /// What the runner logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("runner.log")).unwrap_or_default()
    }

    /// The id the host gave it, once it has registered (waits up to 60 s).
    pub async fn id(&self, server: &TestServer) -> String {
        eventually(Duration::from_secs(60), move || async move {
            let (_, runners) = server.api().get("/api/v1/runners").await;
            runners["data"]
                .as_array()
                .and_then(|all| {
                    all.iter()
                        .filter(|r| r["name"] == self.name.as_str())
                        .filter_map(|r| r["id"].as_str())
                        .next_back()
                        .map(str::to_owned)
                })
                .ok_or_else(|| {
                    format!(
                        "runner {} did not register; its log:\n{}",
                        self.name,
                        self.log()
                    )
                })
        })
        .await
    }

    /// SIGKILL: the runner vanishes mid-whatever, as a crashed machine would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A WebSocket client (tokio-tungstenite) reading JSON frames with a time limit.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// How long a test waits for one frame before failing.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (stream, response) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade of {url} refused: {e}"));
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self { stream }
    }

    pub async fn send(&mut self, frame: Value) {
        use futures::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::text(
                frame.to_string(),
            ))
            .await
            .expect("frame sent");
    }

    /// The next message of any kind, `None` when the stream ended.
    pub async fn next_message(&mut self) -> Option<tokio_tungstenite::tungstenite::Message> {
        use futures::StreamExt;
        match tokio::time::timeout(FRAME_WAIT, self.stream.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("no frame within {FRAME_WAIT:?}"),
        }
    }

    /// The next JSON text frame (pings and pongs skipped); panics if the stream ends first.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(tokio_tungstenite::tungstenite::Message::Text(text)) => {
                    return serde_json::from_str(&text).expect("a JSON frame");
                }
                Some(tokio_tungstenite::tungstenite::Message::Close(frame)) => {
                    panic!("stream closed while a frame was expected: {frame:?}")
                }
                Some(_) => {}
                None => panic!("stream ended while a frame was expected"),
            }
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next_json().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Subscribes and returns the events replayed before the `subscribed` acknowledgement.
    pub async fn subscribe(&mut self, topics: &[&str], after_seq: Option<u64>) -> Vec<Value> {
        let mut frame = json!({"type": "subscribe", "topics": topics});
        if let Some(after_seq) = after_seq {
            frame["after_seq"] = json!(after_seq);
        }
        self.send(frame).await;
        let mut replayed = Vec::new();
        loop {
            let frame = self.next_json().await;
            match frame["type"].as_str() {
                Some("subscribed") => return replayed,
                Some("error") => panic!("subscribe to {topics:?} refused: {frame}"),
                _ if frame["seq"].is_u64() => replayed.push(frame),
                _ => {}
            }
        }
    }
}

/// Whether an event frame ends its task.
pub fn is_terminal_event(frame: &Value) -> bool {
    matches!(
        frame["type"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// The text of a seed system's own client, copied verbatim from its API document into
/// `tests/seed-clients/<seed>/`.
pub fn seed_client(seed: &str, name: &str) -> String {
    let path = seed_clients_dir().join(seed).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/seed-clients`, where the seed clients and their npm packages are.
pub fn seed_clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/seed-clients")
}

/// Runs a client program to its end and returns what it printed; fails with its output when
/// it exits non-zero.
pub async fn run_client(command: &mut tokio::process::Command) -> String {
    let output = command.output().await.expect("the client runs");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}
