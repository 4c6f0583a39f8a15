//! `taskhost-runner`: a runner for a taskhost host. Registers with labels and a capacity,
//! claims jobs that match, runs their steps as processes in a per-job directory and reports
//! back. See `taskhost::agent` for what it does when the host restarts or a job is cancelled.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use taskhost::agent::{Agent, AgentConfig};
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "taskhost-runner",
    version,
    about = "Runs jobs that taskhost plugins delegate: build and test steps as real processes",
    after_help = "The API key (with the runners:register permission) is read from TASKHOST_API_KEY \
                  only, so that it never shows in the process list. Steps inherit the runner's \
                  environment without its TASKHOST_* variables."
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
    let Some(api_key) = std::env::var("TASKHOST_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    else {
        error!("set TASKHOST_API_KEY to an API key with the runners:register permission");
        return ExitCode::from(2);
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
    };
    let agent = match Agent::new(config) {
        Ok(agent) => agent,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::from(2);
        }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        taskhost::app::shutdown_signal().await;
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
