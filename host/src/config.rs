//! Host configuration: one typed struct, read from a TOML file (`--config`), with the listen
//! address, data directory and plugins directory overridable by flags and environment.
//!
//! ```toml
//! listen = "127.0.0.1:8080"          # TASKHOST_LISTEN / --listen
//! data_dir = "./data"                # TASKHOST_DATA_DIR / --data-dir
//! plugins_dir = "./plugins"          # TASKHOST_PLUGINS_DIR / --plugins-dir (optional)
//! max_body_bytes = 1048576           # request bodies (413 above)
//! max_plugin_bytes = 67108864        # plugin uploads (413 above)
//!
//! [engine]                           # see EngineConfig
//! default_max_attempts = 3
//! retry_base_ms = 1000
//! retry_max_ms = 300000
//! cancel_grace_s = 5
//! shutdown_grace_s = 10
//! lease_s = 30                       # shared store: a dead host's runs are taken over after it
//! claim_poll_ms = 500                # shared store: look for work this often without a wake-up
//!
//! [storage]
//! backend = "sled"                   # or "postgres": a database several hosts share
//! cache_mb = 64                      # page cache of the embedded store
//! # url = "postgres://…"             # postgres only; TASKHOST_DATABASE_URL sets it
//! pool_size = 16                     # postgres only: connections per host
//!
//! [retention]                        # see RetentionConfig: finished tasks are pruned
//! max_age_s = 604800                 # … a week after their last update (0: never)
//! max_finished_tasks = 1000000       # … beyond the newest million (0: no cap)
//! sweep_interval_s = 60
//! batch = 1000
//!
//! [runtime]                          # see RuntimeConfig
//! max_instances = 256
//! max_memory_mb = 4096
//!
//! [auth]
//! enabled = true
//! token_ttl_s = 43200                # login token lifetime
//! # jwt_secret = "..."               # else generated into <data_dir>/jwt.key
//! # admin_password = "..."           # first start only; TASKHOST_ADMIN_PASSWORD sets it
//!
//! [rate_limits]                      # requests per minute
//! per_principal_per_minute = 1200
//! per_ip_per_minute = 2400
//! login_per_minute = 10
//!
//! [cors]
//! allowed_origins = []               # closed by default
//!
//! [streams]                          # WebSocket streams; see StreamConfig
//! heartbeat_interval_ms = 30000      # server pings; a peer silent for 2 intervals is dropped
//! buffer_frames = 1024               # frames queued per connection before it is closed as slow
//! max_connections_per_principal = 32
//! max_connections = 10000
//! max_topics = 100
//! max_replay_events = 100000         # events a resume may scan (not for a single task topic)
//!
//! [runners]                          # see RunnerConfig
//! heartbeat_interval_s = 10          # asked of runners
//! offline_after_s = 30               # a runner silent this long is shown offline
//! lease_s = 30                       # a claimed job without heartbeat or report is put back
//! max_deliveries = 3                 # deliveries of one job before it is lost
//! max_claim_wait_ms = 30000          # longest long-poll of a claim
//!
//! [compat.agent_tracker]             # the agent task tracker's API; see crate::compat
//! enabled = false
//! # listen = "0.0.0.0:8000"          # its own port; else on the main listener
//! # api_keys = [{ key_env = "API_KEY", user = "tracker", role = "user" }]
//!
//! [compat.teamcache]                 # TeamCache's API gateway, onto the cache plugin
//! enabled = false
//! # listen = "0.0.0.0:8095"
//! # api_keys = [{ key_env = "API_GATEWAY_KEY", user = "teamcache", role = "user" }]
//! scan_wait_ms = 10000               # a create waits this long for the scan's totals
//!
//! [plugins.testkit]                  # grants for a bundled or plugins-dir plugin, as in a .toml
//! limits = { memory_mb = 64 }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::ratelimit::RateLimitConfig;
use crate::auth::AuthConfig;
use crate::compat::CompatConfig;
use crate::engine::{EngineConfig, RetentionConfig};
use crate::runners::RunnerConfig;
use crate::runtime::{Grants, RuntimeConfig};
use crate::storage::StorageConfig;
use crate::streams::StreamConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Where the database, compile cache and installed plugins live.
    pub data_dir: PathBuf,
    /// Extra `.wasm` plugins (with `.toml` grants) loaded at start.
    pub plugins_dir: Option<PathBuf>,
    /// Largest request body, except plugin uploads.
    pub max_body_bytes: usize,
    /// Largest plugin upload.
    pub max_plugin_bytes: usize,
    pub engine: EngineConfig,
    pub storage: StorageConfig,
    pub retention: RetentionConfig,
    pub runtime: RuntimeConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitConfig,
    pub cors: CorsConfig,
    pub http: HttpConfig,
    pub streams: StreamConfig,
    pub runners: RunnerConfig,
    /// Compatibility façades of the systems taskhost replaces.
    pub compat: CompatConfig,
    /// GitHub Actions `workflow_job` webhooks as delegated jobs.
    pub github: crate::github::GithubConfig,
    /// Operator grants by plugin name, for bundled plugins and those in `plugins_dir`
    /// without a `.toml` of their own.
    pub plugins: BTreeMap<String, Grants>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            plugins_dir: None,
            max_body_bytes: 1 << 20,
            max_plugin_bytes: 64 << 20,
            engine: EngineConfig::default(),
            storage: StorageConfig::default(),
            retention: RetentionConfig::default(),
            runtime: RuntimeConfig::default(),
            auth: AuthConfig::default(),
            rate_limits: RateLimitConfig::default(),
            cors: CorsConfig::default(),
            http: HttpConfig::default(),
            streams: StreamConfig::default(),
            runners: RunnerConfig::default(),
            compat: CompatConfig::default(),
            github: crate::github::GithubConfig::default(),
            plugins: BTreeMap::new(),
        }
    }
}

/// Connections (`[http]`): how long a client may take, how many may be open, and whose
/// `X-Forwarded-For` to believe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time a client has to send a request's headers. hyper starts it whenever a connection
    /// waits for a request, so it also closes a keep-alive connection idle this long.
    pub header_read_timeout_s: u64,
    /// HTTP/2: ping an idle connection this often, and drop it when a ping is not answered
    /// within the same time.
    pub http2_keep_alive_s: u64,
    /// Open connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Proxies (IP addresses) whose `X-Forwarded-For` names the client, for rate limits and
    /// logs. The client is the rightmost address in the header that is not itself listed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_s: 30,
            http2_keep_alive_s: 60,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The client behind `peer`: `peer` itself unless it is a trusted proxy that forwarded
    /// the request.
    pub fn client_address(
        &self,
        peer: std::net::IpAddr,
        forwarded_for: Option<&str>,
    ) -> std::net::IpAddr {
        if !self.trusted_proxies.contains(&peer) {
            return peer;
        }
        forwarded_for
            .into_iter()
            .flat_map(|header| header.rsplit(','))
            .filter_map(|hop| hop.trim().parse::<std::net::IpAddr>().ok())
            .find(|hop| !self.trusted_proxies.contains(hop))
            .unwrap_or(peer)
    }
}

/// Cross-origin access: closed unless origins are listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `*` for any.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == "*" || o == origin)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, grants) in &self.plugins {
            grants
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("plugins.{name}: {e}")))?;
        }
        self.streams.validate().map_err(ConfigError::Invalid)?;
        self.github.validate().map_err(ConfigError::Invalid)?;
        self.storage.validate().map_err(ConfigError::Invalid)?;
        let r = &self.runners;
        if r.heartbeat_interval_s == 0
            || r.offline_after_s == 0
            || r.lease_s == 0
            || r.max_deliveries == 0
            || r.max_claim_wait_ms > 600_000
        {
            return Err(ConfigError::Invalid(
                "runners: heartbeat_interval_s, offline_after_s, lease_s and max_deliveries must \
                 be at least 1, max_claim_wait_ms at most 600000"
                    .into(),
            ));
        }
        if self.engine.lease_s < 2 || !(10..=60_000).contains(&self.engine.claim_poll_ms) {
            return Err(ConfigError::Invalid(
                "engine: lease_s must be at least 2, claim_poll_ms between 10 and 60000".into(),
            ));
        }
        // Keys from the environment are only read at start; their form is checked here, with
        // a stand-in per variable (so two variables are two keys, one variable twice one).
        self.compat
            .imported_keys(&|var| Some(format!("read-at-start:{var}")))
            .map_err(ConfigError::Invalid)?;
        let mut addresses = vec![self.listen];
        for (section, addr) in self.compat.own_listeners() {
            if addresses.contains(&addr) && addr.port() != 0 {
                return Err(ConfigError::Invalid(format!(
                    "{section}.listen {addr} is already taken by another listener"
                )));
            }
            addresses.push(addr);
        }
        if self.max_body_bytes < 1024 || self.max_plugin_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "body limits must be at least 1024 bytes".into(),
            ));
        }
        Ok(())
    }

    pub fn database_dir(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    pub fn compile_cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    /// Where hosts before plugins were kept in storage wrote the ones installed over the API;
    /// still loaded at start so that an upgraded host keeps them.
    pub fn installed_plugins_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
    }
}
