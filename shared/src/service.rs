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
fn lower_priority(by: i32) {
    if by == 0 {
        return;
    }
    let me = Some(rustix::thread::gettid());
    let now = rustix::process::getpriority_process(me).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(me, (now + by).min(19)) {
        tracing::warn!(error = %e, by, "could not lower this process's priority");
    }
}

/// A runtime of `threads` worker threads: 0, one per core; 1, every task
/// on the calling thread.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    match threads {
        0 => tokio::runtime::Builder::new_multi_thread(),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    }
    .enable_all()
    .build()
    .expect("tokio runtime")
}

/// Puts the calling thread under Linux's `SCHED_IDLE` policy, once per
/// thread: it runs on CPU time no other thread wants, and any other thread
/// that wakes takes the CPU from it at once. A nice value only shares the
/// CPU out by weight: a thread at nice +10 may still hold a core for a
/// scheduler tick (several ms) while chat waits. Failing is only logged.
pub fn idle_thread() {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    thread_local!(static IDLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    if IDLE.replace(true) {
        return;
    }
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // The crate also sets the thread's nice value (to 0 for this policy,
    // which only a privileged process may do): the nice value is put back.
    let tid = Some(rustix::thread::gettid());
    let nice = rustix::process::getpriority_process(tid).unwrap_or(0);
    let me = thread_priority::thread_native_id();
    let set = thread_priority::set_thread_priority_and_policy(me, ThreadPriority::Min, idle);
    let _ = rustix::process::setpriority_process(tid, nice);
    if thread_priority::thread_schedule_policy().ok() != Some(idle) {
        tracing::warn!(error = ?set.err(), "could not put this thread under SCHED_IDLE");
    }
}

/// Parses the command line of service `name` (described by `about`),
/// starts logging, loads the configuration (a bad one ends the process with
/// status 64 before anything binds), then runs `service` to its end on a
/// runtime of the worker threads `threads` reads from the configuration:
/// 0, one per core (and a blocking pool); 1, every task on the main thread
/// (a blocking pool still resolves host names).
pub fn main<A, F, Fut>(
    name: &'static str,
    about: &'static str,
    threads: fn(&Config) -> usize,
    service: F,
) -> ExitCode
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
    let rt = runtime(threads(&cfg));
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

#[cfg(test)]
mod tests {
    use super::runtime;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn a_runtime_has_the_threads_asked_for() {
        let one = runtime(1);
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        let three = runtime(3);
        assert_eq!(three.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(three.metrics().num_workers(), 3);
        let per_core = runtime(0);
        assert_eq!(
            per_core.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(per_core.metrics().num_workers(), cores);
    }
}
