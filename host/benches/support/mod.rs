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
        let login: Value = reqwest::Client::new()
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        let token = login["access_token"].as_str().expect("token").to_owned();
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
        let mut headers = reqwest::header::HeaderMap::new();
        let bearer = format!("Bearer {}", self.token);
        headers.insert(
            reqwest::header::AUTHORIZATION,
            bearer.parse().expect("header"),
        );
        reqwest::Client::builder()
            .pool_max_idle_per_host(idle_connections)
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// Shuts the host down gracefully.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}
