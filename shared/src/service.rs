//! The `main` of every service binary: command line, logging, configuration and exit status.

use crate::config::Config;
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// The command line of a service: `--config`, then the binary's own
/// arguments `A` (subcommands, say).
#[derive(Parser)]
#[command(version)]
struct Cli<A: Args> {
    /// TOML configuration file (also $CHAT_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    more: A,
}

/// No arguments besides `--config`.
#[derive(Args)]
pub struct NoArgs {}

/// Why a service binary ends with status 1.
#[derive(Debug)]
pub enum Failure {
    /// Logged at error level as `<service> failed`.
    Log(String),
    /// Printed on standard error as `<service>: <text>`, for whoever ran
    /// the command.
    Print(String),
}

impl Failure {
    pub fn print(e: impl Display) -> Failure {
        Failure::Print(e.to_string())
    }
}

/// A service's error is logged.
impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure::Log(e.to_string())
    }
}

/// Raises the calling thread's nice value by `by` (to 19 at most); threads
/// it starts afterwards inherit it. Failing is only logged.
pub fn lower_priority(by: i32) {
    if by == 0 {
        return;
    }
    let me = Some(rustix::thread::gettid());
    let now = rustix::process::getpriority_process(me).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(me, (now + by).min(19)) {
        tracing::warn!(error = %e, by, "could not lower this process's priority");
    }
}

/// Parses the command line of service `name` (described by `about`),
/// starts logging, loads the configuration (a bad one ends the process with
/// status 64 before anything binds), then runs `service` to its end on a
/// multi-threaded runtime.
pub fn main<A, F, Fut>(name: &'static str, about: &'static str, service: F) -> ExitCode
where
    A: Args,
    F: FnOnce(A, Config) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let matches = Cli::<A>::command().name(name).about(about).get_matches();
    let cli = Cli::<A>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    crate::telemetry::init();
    let cfg = Config::load_or_exit(name, cli.config.as_deref());
    // Before the runtime's threads exist: they take this thread's value.
    if name == "auth-svc" {
        lower_priority(cfg.auth.nice);
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(async move { service(cli.more, cfg).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Log(e)) => {
            tracing::error!(error = %e, "{name} failed");
            ExitCode::FAILURE
        }
        Err(Failure::Print(e)) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
