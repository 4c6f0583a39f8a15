//! `taskhost-runner`: a runner for a taskhost host. Registers with labels and a capacity,
//! claims jobs that match, runs their steps as processes in a per-job directory and reports
//! back. See `taskhost::agent` for what it does when the host restarts or a job is cancelled.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use taskhost::agent::{Agent, AgentConfig, sandbox};
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "taskhost-runner",
    version,
    about = "Runs jobs that taskhost plugins delegate: build and test steps as real processes",
    after_help = "The API key (runners:register, made by an admin) is read from the file named by \
                  --api-key-file / TASKHOST_API_KEY_FILE, or from TASKHOST_API_KEY, never from the \
                  command line, so that it does not show in the process list. The runner makes \
                  itself undumpable, and steps start with a cleared environment plus --pass-env \
                  (PATH, HOME, LANG and toolchain locations by default), the job's env and \
                  TASKHOST_JOB_ID/TASK_ID/JOB_DIR. Started as root, give --run-as so that steps \
                  cannot read the key file or other jobs' directories."
)]
struct Cli {
    /// The host's base URL
    #[arg(long, env = "TASKHOST_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The runner's name as operators see it [default: the host name]
    #[arg(long, env = "TASKHOST_RUNNER_NAME")]
    name: Option<String>,
    /// Labels jobs can ask for (repeat, or separate with commas)
    #[arg(long = "label", env = "TASKHOST_RUNNER_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// Jobs run at once
    #[arg(long, env = "TASKHOST_RUNNER_CAPACITY", default_value_t = 1)]
    capacity: u32,
    /// Where per-job directories are made
    #[arg(
        long,
        env = "TASKHOST_RUNNER_WORK_DIR",
        default_value = "./taskhost-runner-work"
    )]
    work_dir: PathBuf,
    /// Keep each job's directory after it ends (for debugging a build)
    #[arg(long)]
    keep_workdirs: bool,
    /// Seconds running jobs get to finish when the runner is stopped
    #[arg(long, default_value_t = 30)]
    drain_timeout_s: u64,
    /// File holding the API key (keep it mode 0600, readable by the runner's user only)
    #[arg(long, env = "TASKHOST_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Run steps as this user (name or uid); the runner must start as root
    #[arg(long, env = "TASKHOST_RUNNER_RUN_AS")]
    run_as: Option<String>,
    /// Variables steps inherit from the runner (repeat, or separate with commas); replaces the
    /// default list
    #[arg(
        long = "pass-env",
        env = "TASKHOST_RUNNER_PASS_ENV",
        value_delimiter = ','
    )]
    pass_env: Vec<String>,
}

/// The API key, from the key file or the environment.
fn api_key(file: Option<&PathBuf>) -> Result<String, String> {
    let key = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the API key file {}: {e}", path.display()))?,
        None => std::env::var("TASKHOST_API_KEY").unwrap_or_default(),
    };
    let key = key.trim().to_owned();
    if key.is_empty() {
        return Err(
            "give an API key with runners:register: --api-key-file, TASKHOST_API_KEY_FILE or TASKHOST_API_KEY"
                .into(),
        );
    }
    Ok(key)
}

fn default_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "runner".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Before any job runs: a step of the same user must not read the key out of /proc.
    if let Err(e) = sandbox::make_undumpable() {
        error!(error = %e, "cannot protect the runner's memory and environment from its steps");
        return ExitCode::from(2);
    }
    let api_key = match api_key(cli.api_key_file.as_ref()) {
        Ok(key) => key,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let run_as = match cli.run_as.as_deref().map(sandbox::resolve_user).transpose() {
        Ok(user) => user,
        Err(e) => {
            error!("--run-as: {e}");
            return ExitCode::from(2);
        }
    };
    if run_as.is_none() && sandbox::is_root() {
        warn!(
            "running steps as root: they can read anything this machine holds; give --run-as USER"
        );
    }
    let pass_env = if cli.pass_env.is_empty() {
        sandbox::DEFAULT_PASS_ENV
            .iter()
            .map(|name| (*name).to_owned())
            .collect()
    } else {
        cli.pass_env
    };
    let labels = cli
        .labels
        .into_iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let config = AgentConfig {
        url: cli.url,
        api_key,
        name: cli.name.unwrap_or_else(default_name),
        labels,
        capacity: cli.capacity,
        work_dir: cli.work_dir,
        keep_workdirs: cli.keep_workdirs,
        drain_timeout: Duration::from_secs(cli.drain_timeout_s),
        run_as,
        pass_env,
    };
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::from(2);
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop_signal = taskhost::app::shutdown_signal();
    tokio::spawn(async move {
        stop_signal.await;
        info!("stopping: no new jobs; running ones get the drain timeout");
        stop.send_replace(true);
    });
    match agent.run(stopped).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}
