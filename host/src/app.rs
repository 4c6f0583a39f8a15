//! Putting the host together: storage, runtime, plugins, engine and API, in that order, and
//! taking them down again on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::api::ratelimit::RateLimits;
use crate::api::{self, AppState};
use crate::auth::{Auth, AuthError, SecretBox, SecretError};
use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::membership::Membership;
use crate::registry::{PluginRegistry, PluginStorage, RegistryError};
use crate::runners::Runners;
use crate::runtime::{Runtime, RuntimeError};
use crate::storage::postgres::{PgSettings, PgStorage};
use crate::storage::{BackendKind, SledStorage, Storage, StorageError};
use crate::streams::Streams;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("cannot load the bundled plugins: {0}")]
    Plugins(#[from] RegistryError),
    #[error("cannot start the engine: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot set up authentication: {0}")]
    Auth(#[from] AuthError),
    #[error("cannot set up secret storage: {0}")]
    Secrets(#[from] SecretError),
}

/// Creates the data directory readable by this user only (keys and the database live there);
/// an existing one that others may enter is logged, since the operator chose it.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the data directory is open to other users; chmod 700 it");
        }
    }
    Ok(())
}

/// The configured backend, opened (for PostgreSQL: connected and migrated).
async fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StartError> {
    let storage: Arc<dyn Storage> = match config.storage.backend {
        BackendKind::Sled => Arc::new(SledStorage::open_with(
            &config.database_dir(),
            &config.storage,
        )?),
        BackendKind::Postgres => {
            let settings = PgSettings {
                url: config.storage.url.clone().unwrap_or_default(),
                pool_size: config.storage.pool_size,
            };
            Arc::new(PgStorage::open(&settings).await?)
        }
    };
    Ok(storage)
}

/// Opens storage, loads plugins and starts the engine.
pub async fn start(mut config: Config) -> Result<AppState, StartError> {
    create_private_dir(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    config.runtime.protected_dirs = vec![config.data_dir.clone()];
    let storage = open_storage(&config).await?;
    if config.runtime.cache_dir.is_none() {
        config.runtime.cache_dir = Some(config.compile_cache_dir());
    }
    let runtime = Runtime::new(config.runtime.clone())?;
    let membership = Arc::new(Membership::new(storage.clone()));
    membership.spawn_heartbeat();
    let registry = Arc::new(PluginRegistry::new(
        runtime,
        Some(PluginStorage {
            storage: storage.clone(),
            host_id: membership.host_id().to_owned(),
        }),
    ));
    registry.load_bundled(&config.plugins).await?;
    // Where hosts before plugins were kept in storage wrote the ones installed over the API,
    // then the operator's directory.
    let mut dirs = vec![config.installed_plugins_dir()];
    dirs.extend(config.plugins_dir.clone());
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        for (path, error) in registry.load_dir(dir).await {
            warn!(path = %path.display(), %error, "skipped plugin");
        }
    }
    // What was installed, replaced or unloaded over the API, through any host, wins.
    registry.sync().await?;
    let secrets = Arc::new(SecretBox::open(&config.data_dir)?);
    let imported = config
        .compat
        .imported_keys(&|var| std::env::var(var).ok())
        .map_err(AuthError::Setup)?;
    let auth = Auth::open(&config.auth, &config.data_dir, storage.clone(), imported).await?;
    let runners = Runners::new(config.runners.clone(), storage.clone(), secrets.clone());
    runners.spawn_reaper();
    let engine = Engine::start(
        membership.host_id().to_owned(),
        storage,
        registry.clone(),
        secrets,
        runners,
        config.engine.clone(),
    )
    .await?;
    engine.spawn_retention(config.retention.clone());
    engine.spawn_plugin_sync();
    let streams = Streams::start(engine.clone(), config.streams.clone());
    let limits = Arc::new(RateLimits::new(config.rate_limits.clone()));
    {
        let limits = Arc::downgrade(&limits);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                match limits.upgrade() {
                    Some(limits) => limits.forget_idle(),
                    None => return,
                }
            }
        });
    }
    info!(
        host = membership.host_id(),
        storage = membership.backend(),
        plugins = registry.list().len(),
        data_dir = %config.data_dir.display(),
        "host started"
    );
    Ok(AppState {
        engine,
        auth,
        limits,
        streams,
        config: Arc::new(config),
        ready: Arc::new(AtomicBool::new(true)),
        http_requests: Arc::new(AtomicU64::new(0)),
        followers: Arc::default(),
        membership,
    })
}

/// Resolves on SIGTERM or Ctrl-C: what stops both binaries gracefully. The handlers are in
/// place when this returns, so a signal that arrives before the future is first polled (just
/// after the host says it is listening) still stops it gracefully rather than killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        let ctrl_c = async {
            if ctrl_c.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = terminate => {}
        }
    }
}

/// Binds the listeners of the façades that have their own (`[compat.*] listen`), by section.
pub async fn bind_facades(config: &Config) -> std::io::Result<Vec<(&'static str, TcpListener)>> {
    let mut bound = Vec::new();
    for (section, addr) in config.compat.own_listeners() {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("{section}.listen {addr}: {e}")))?;
        bound.push((section, listener));
    }
    Ok(bound)
}

/// Serves until `shutdown` resolves, then stops taking requests and work, puts running tasks
/// back (after letting them reach a checkpoint) and flushes storage.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    run_all(state, listener, Vec::new(), shutdown).await
}

/// [`run`], with the façades' own listeners (from [`bind_facades`]) served beside the main one
/// and drained with it.
pub async fn run_all(
    state: AppState,
    listener: TcpListener,
    facades: Vec<(&'static str, TcpListener)>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut facade_servers = Vec::new();
    for (section, facade_listener) in facades {
        let Some(routes) = crate::compat::routes_of(&state, section) else {
            continue;
        };
        if let Ok(addr) = facade_listener.local_addr() {
            info!(facade = section, "listening on http://{addr}");
        }
        let mut stopped = stopped.clone();
        facade_servers.push(tokio::spawn(api::serve_routes(
            facade_listener,
            state.clone(),
            api::with_errors(routes),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )));
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    // Waiting runner claims end with the signal, so that their connections do not hold up
    // the drain.
    let runners = state.engine.runners().clone();
    let shutdown = async move {
        shutdown.await;
        runners.close();
    };
    api::serve(listener, state.clone(), shutdown).await;
    for server in facade_servers {
        let _ = server.await;
    }
    state.ready.store(false, Ordering::Release);
    // Stream subscribers hear why before their connections close (1001, resume later).
    state
        .engine
        .notify_system("health", serde_json::json!({"status": "draining"}));
    state.streams.shutdown();
    state.engine.shutdown().await;
}
