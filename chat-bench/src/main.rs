//! `chat-bench`: starts a fresh local system (Redis, auth-svc, router-svc,
//! two edges) on free ports, runs the benchmark scenarios against it, and
//! writes the figures as JSON and as a report (docs/benchmarks.md).
#![forbid(unsafe_code)]

mod abuse;
mod failover;
mod irc;
mod load;
mod report;
mod scenarios;
mod system;

use clap::Parser;
use scenarios::{Timing, Traffic};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Clone, serde::Serialize)]
#[command(version, about = "Load generator and benchmark for the chat service.")]
pub struct Cli {
    /// Where the service binaries are (build them with --release).
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// Scratch directory for the system's certificates and logs.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Every figure, with the configuration, as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// The report to (re)write between its markers.
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
    /// Write only the JSON, not the report.
    #[arg(long)]
    no_report: bool,
    /// Scenarios to run (comma-separated): fanout, rooms, pubsub, baseline,
    /// login, logins, connect, abuse (on a system of its own, with the
    /// default limits; fails if its bounds do not hold), failover (on a
    /// system of its own: an edge's clients back on the other edge after
    /// a kill -9, with RESUME and with their passwords).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fanout,rooms,pubsub,baseline,login,logins,connect,abuse,failover"
    )]
    only: Vec<String>,
    /// Clients on the edge that `failover` kills.
    #[arg(long, default_value_t = 2000)]
    failover_clients: usize,
    /// Offered rates (messages per second, in total) for fanout: a sweep
    /// that stops after the first rate whose p99 passes --sweep-stop-ms.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2500,5000,7500,10000,13000,16000,20000,24000"
    )]
    rates: Vec<f64>,
    /// The fanout sweep stops after a rate whose p99 is above this (ms).
    #[arg(long, default_value_t = 1000.0)]
    sweep_stop_ms: f64,
    /// The knee is the highest fanout rate with a p99 at most this (ms)
    /// and nothing lost.
    #[arg(long, default_value_t = report::KNEE_MS)]
    knee_ms: f64,
    /// Offered rates (messages per second, in total) for baseline.
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000,7500")]
    baseline_rates: Vec<f64>,
    /// Clients in the fan-out room (and baseline subscribers).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// How many of them send.
    #[arg(long, default_value_t = 20)]
    senders: usize,
    /// Offered rate for `rooms` (1000 clients in 100 rooms, a sender in each).
    #[arg(long, default_value_t = 2000.0)]
    room_rate: f64,
    /// Offered rate for `pubsub` (10 publishers with 100 subscribers each).
    /// A connection has one command in flight, so one publisher's rate is
    /// bounded by the round trip of `/publish`.
    #[arg(long, default_value_t = 300.0)]
    pub_rate: f64,
    /// Measured seconds of the `logins` storm (after a warm-up as long as
    /// the edge's request timeout).
    #[arg(long, default_value_t = 20.0)]
    storm_seconds: f64,
    /// Idle connections for `connect`.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// How long the abuse soak lasts (seconds).
    #[arg(long, default_value_t = 30.0)]
    abuse_seconds: f64,
    /// The abuses of the soak (comma-separated): slow, who, storm, register,
    /// churn (the storm's clients all quitting at once, again and again,
    /// instead of holding on).
    #[arg(long, value_delimiter = ',', default_value = "slow,who,storm,register")]
    abuses: Vec<String>,
    /// Run on a Redis Cluster of this many masters that the bench starts
    /// (0: one Redis). Only `fanout` and `rooms` run there; use with
    /// --no-report (the report is one Redis's).
    #[arg(long, default_value_t = 0)]
    cluster: usize,
    /// Run only the fanout sweep (--rates, --clients, --senders), against
    /// this IRC daemon (InspIRCd 3: `apt-get install inspircd`) instead of
    /// the system: it is started on a free loopback port, over TLS, with
    /// flood limits off (chat-bench/inspircd.conf). Figures go to the
    /// JSON, not the report.
    #[arg(long)]
    irc: Option<String>,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), load::Error> {
    if cli.senders == 0 || cli.senders > cli.clients {
        return Err("--senders must be between 1 and --clients".into());
    }
    if cli
        .rates
        .iter()
        .chain(&cli.baseline_rates)
        .chain([&cli.room_rate, &cli.pub_rate])
        .any(|r| *r <= 0.0)
    {
        return Err("rates must be above 0".into());
    }
    if cli.sweep_stop_ms <= 0.0 || cli.knee_ms <= 0.0 {
        return Err("--sweep-stop-ms and --knee-ms must be above 0".into());
    }
    let timing = Timing {
        warmup_s: cli.warmup,
        duration_s: cli.duration,
        drain_s: cli.drain,
    };
    let wants = |s: &str| cli.only.iter().any(|o| o == s);
    if cli.cluster > 0 && cli.only.iter().any(|o| o != "fanout" && o != "rooms") {
        return Err("on a cluster (--cluster) only fanout and rooms run: give --only".into());
    }
    if cli.cluster > 0 && !cli.no_report {
        return Err("--cluster needs --no-report (the report is one Redis's)".into());
    }
    if let Some(program) = &cli.irc {
        return irc_sweep(&cli, program, timing).await;
    }
    eprintln!("starting a local system from {}", cli.bin.display());
    let mut system = system::System::start_on(&cli.bin, &cli.dir, 2, cli.cluster).await?;
    let mut results = report::Results::new(&cli, timing, &system).await;

    for scenario in ["fanout", "rooms", "pubsub", "baseline"] {
        if !wants(scenario) {
            continue;
        }
        // fanout and baseline at every rate, for the plot; the others once.
        let rates = match scenario {
            "fanout" => cli.rates.clone(),
            "rooms" => vec![cli.room_rate],
            "pubsub" => vec![cli.pub_rate],
            _ => cli.baseline_rates.clone(),
        };
        // Only fanout is a sweep to saturation.
        let stop_ms = if scenario == "fanout" {
            cli.sweep_stop_ms
        } else {
            f64::INFINITY
        };
        let (clients, senders) = (cli.clients, cli.senders);
        let system = &system;
        let runs = sweep(&rates, stop_ms, |rate| async move {
            match scenario {
                "fanout" => scenarios::fanout(system, clients, senders, rate, timing).await,
                "rooms" => scenarios::rooms(system, 1000, 100, rate, timing).await,
                "pubsub" => scenarios::pubsub(system, 10, 100, rate, timing).await,
                _ => scenarios::baseline(system, clients, senders, rate, timing).await,
            }
        })
        .await?;
        results.traffic.extend(runs);
        if scenario == "fanout" {
            results.fanout_summary = report::summarize(&results.traffic, cli.knee_ms);
            if let Some(f) = &results.fanout_summary {
                report::summary_line(f);
            }
        }
    }
    if wants("login") {
        let l = scenarios::login(&mut system, 4 * cores(), timing).await?;
        eprintln!(
            "  login: {:?} logins/s by auth-svc instances; bcrypt alone {}/s at cost {}",
            l.logins_per_s, l.bcrypt_verifies_per_s, l.bcrypt_cost
        );
        results.login = Some(l);
    }
    if wants("logins") {
        let l = scenarios::logins(&system, cli.storm_seconds).await?;
        eprintln!(
            "  logins: {} offered/s, {} ok/s = {:.0}% of bcrypt's {}/s; {} unavailable, {} other errors",
            l.offered_per_s,
            l.ok_per_s,
            l.share_of_bcrypt * 100.0,
            l.bcrypt_per_s,
            l.unavailable,
            l.other_errors
        );
        results.logins = Some(l);
    }
    if wants("connect") {
        let c = scenarios::connect(&system, cli.idle).await?;
        eprintln!(
            "  connect: {} held (per edge {:?}), {} answering, edge 1 {} MB -> {} MB, {} KB per connection",
            c.held, c.per_edge, c.answering, c.edge_rss_before_mb, c.edge_rss_after_mb, c.kb_per_connection
        );
        results.connect = Some(c);
    }
    drop(system);
    if wants("abuse") {
        let dir = cli.dir.join("abuse");
        let system = system::System::start_with(&cli.bin, &dir, 2, system::ABUSE_SETTINGS).await?;
        let a = abuse::abuse(&system, cli.abuse_seconds, &cli.abuses).await?;
        eprintln!(
            "  abuse: edge peak {:?} MB (bound {} MB), Redis PING p99 {} ms, quiet rooms p99 {} ms -> {} ms -> {} ms",
            a.edge_rss_mb, a.edge_rss_bound_mb, a.ping_p99_ms, a.quiet.p99_ms, a.quiet_during.p99_ms, a.quiet_after.p99_ms
        );
        results.abuse = Some(a);
    }
    if wants("failover") {
        let dir = cli.dir.join("failover");
        let f = failover::failover(&cli.bin, &dir, cli.failover_clients).await?;
        eprintln!(
            "  failover: {} clients back on the other edge: 99% in {:?} s with RESUME, {:?} s with the password",
            f.clients, f.resume.p99_s, f.password.p99_s
        );
        results.failover = Some(f);
    }
    results.write(&cli)?;
    match results.abuse.as_ref().map(|a| a.failed.join("; ")) {
        Some(failed) if !failed.is_empty() => Err(format!("abuse bounds broken: {failed}").into()),
        _ => Ok(()),
    }
}

/// Runs `one` at each of `rates` in turn, printing each run's line;
/// stops after the first whose p99 passes `stop_ms`.
async fn sweep<F, Fut>(rates: &[f64], stop_ms: f64, mut one: F) -> Result<Vec<Traffic>, load::Error>
where
    F: FnMut(f64) -> Fut,
    Fut: std::future::Future<Output = Result<Traffic, load::Error>>,
{
    let mut runs = Vec::new();
    for &rate in rates {
        let t = one(rate).await?;
        report::line(&t);
        let saturated = t.p99_ms > stop_ms;
        runs.push(t);
        if saturated {
            eprintln!("  p99 above {stop_ms} ms, the sweep stops");
            break;
        }
    }
    Ok(runs)
}

/// The fanout sweep against an IRC daemon (`--irc`), into the JSON: a
/// daemon of its own for each rate, so that nothing of one run (a backlog
/// past saturation) reaches the next.
async fn irc_sweep(cli: &Cli, program: &str, timing: Timing) -> Result<(), load::Error> {
    let dir = cli.dir.join("irc");
    let traffic = sweep(&cli.rates, cli.sweep_stop_ms, |rate| {
        let dir = dir.clone();
        async move {
            let ircd = irc::Ircd::start(program, &cli.bin, &dir).await?;
            irc::fanout(&ircd, cli.clients, cli.senders, rate, timing).await
        }
    })
    .await?;
    let summary = report::summarize(&traffic, cli.knee_ms);
    if let Some(f) = &summary {
        report::summary_line(f);
    }
    if let Some(parent) = cli.json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json = serde_json::json!({
        "irc": program,
        "timing": timing,
        "traffic": traffic,
        "fanout_summary": summary,
    });
    std::fs::write(&cli.json, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
