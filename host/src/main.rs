//! The `taskhost` binary: `taskhost serve` (the default) runs the host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use taskhost::config::Config;
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "taskhost",
    version,
    about = "Runs background tasks as sandboxed WebAssembly plugins behind one HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host (the default).
    Serve(ServeArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free one [default: 127.0.0.1:8080]
    #[arg(long, env = "TASKHOST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./data]
    #[arg(long, env = "TASKHOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Directory of extra plugins (`name.wasm` with `name.toml` grants)
    #[arg(long, env = "TASKHOST_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// TOML configuration file
    #[arg(long, env = "TASKHOST_CONFIG")]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> Result<Config, taskhost::config::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(data_dir) = self.data_dir {
            config.data_dir = data_dir;
        }
        if let Some(plugins_dir) = self.plugins_dir {
            config.plugins_dir = Some(plugins_dir);
        }
        // Read here rather than as flags, so that they never show in the process list.
        if let Ok(password) = std::env::var("TASKHOST_ADMIN_PASSWORD")
            && !password.is_empty()
        {
            config.auth.admin_password = Some(password);
        }
        if let Ok(url) = std::env::var("TASKHOST_DATABASE_URL")
            && !url.is_empty()
        {
            config.storage.url = Some(url);
        }
        config.validate()?;
        Ok(config)
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `RUST_BACKTRACE=1`, often set for panics, also makes every library error capture a
    // backtrace, and wasmtime builds one such error as each task's store is dropped: a stack
    // walk per task. Panics keep their backtraces; `RUST_LIB_BACKTRACE=1` brings the rest back.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(serve()),
        Err(e) => {
            eprintln!("taskhost: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            error!(address = %config.listen, "cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let facades = match taskhost::app::bind_facades(&config).await {
        Ok(facades) => facades,
        Err(e) => {
            error!("cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = match taskhost::app::start(config).await {
        Ok(state) => state,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before announcing the address: a SIGTERM from then on is a graceful stop.
    let stop_signal = taskhost::app::shutdown_signal();
    match listener.local_addr() {
        Ok(address) => info!("listening on http://{address}"),
        Err(e) => {
            error!("cannot read the listening address: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut store_failures = state.engine.store_failures();
    let serving = taskhost::app::run_all(state, listener, facades, async {
        stop_signal.await;
        info!("shutting down");
    });
    tokio::select! {
        () = serving => {}
        failed = store_failures.wait_for(Option::is_some) => {
            // Nothing can be recorded any more, a graceful stop included: stop at once, as a
            // crash would, so that a restart recovers from what is durable.
            let reason = failed.ok().and_then(|f| f.clone()).unwrap_or_default();
            error!(%reason, "the store refuses writes; stopping (exit code {STORE_FAILED})");
            std::process::exit(STORE_FAILED.into());
        }
    }
    info!("stopped");
    ExitCode::SUCCESS
}

/// Exit code when the store refuses writes (EX_TEMPFAIL): restart once the cause (a full
/// disk) is fixed.
const STORE_FAILED: u8 = 75;
