#![forbid(unsafe_code)]

use clap::Parser;
use shared::config::{exit_config, Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// Chat edge: the TLS listener clients connect to.
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
    let cfg = Config::load_or_exit("edge-svc", cli.config.as_deref());
    let tls = shared::tls::server_config(&cfg.edge.tls_cert, &cfg.edge.tls_key)
        .unwrap_or_else(|e| exit_config("edge-svc", &format!("{e} (run `make certs`?)")));
    let listener = match tokio::net::TcpListener::bind(&cfg.edge.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("edge-svc: cannot listen on {}: {e}", cfg.edge.listen);
            return ExitCode::FAILURE;
        }
    };
    match edge_svc::run(listener, cfg, tls, shared::shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "edge-svc failed");
            ExitCode::FAILURE
        }
    }
}
