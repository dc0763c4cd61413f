#![forbid(unsafe_code)]

use clap::Parser;
use shared::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

/// Chat router service: rooms, fan-out, history.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file (also $CHAT_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init();
    let cfg = Config::load_or_exit("router-svc", cli.config.as_deref());
    match router_svc::run(cfg, shared::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "router-svc failed");
            ExitCode::FAILURE
        }
    }
}
