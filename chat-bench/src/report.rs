//! Results: a line per run while it goes, then JSON, a Markdown report
//! (between markers in docs/benchmarks.md, so hand-written notes around it
//! stay) and an SVG plot of latency against offered rate.

use crate::abuse::Abuse;
use crate::failover::{Failover, Recovery};
use crate::load::Error;
use crate::scenarios::{Connect, Login, Logins, Timing, Traffic};
use crate::system::System;
use crate::Cli;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

const BEGIN: &str = "<!-- chat-bench:begin (written by make bench; edit outside) -->";
const END: &str = "<!-- chat-bench:end -->";
const PLOT: &str = "bench-fanout.svg";

/// The knee's bound on p99 (ms), unless `--knee-ms` says otherwise.
pub const KNEE_MS: f64 = 50.0;
/// The target (issue 20): at this offered fanout rate, p99 at most
/// `TARGET_P99_MS`, nothing lost, nothing reordered.
const TARGET_RATE: f64 = 13_000.0;
const TARGET_P99_MS: f64 = 30.0;

/// What the fanout sweep came to.
#[derive(Serialize, Debug, PartialEq)]
pub struct FanoutSummary {
    /// The knee's bound on p99 (ms).
    pub knee_p99_ms: f64,
    /// The highest offered rate with p99 within that bound and nothing
    /// lost; none if no rate was.
    pub knee_msgs_per_s: Option<f64>,
    /// The most deliveries per second measured, and the offered rate then.
    pub saturation_deliveries_per_s: f64,
    pub saturation_at_msgs_per_s: f64,
    /// The run at the target's rate, if the sweep got there.
    pub target: Option<Target>,
    /// CPU microseconds per 1,000 deliveries, by process, for each run
    /// that delivered anything.
    pub cpu_us_per_1000_deliveries: Vec<PerDelivery>,
}

/// The fanout run at `TARGET_RATE`, against the target.
#[derive(Serialize, Debug, PartialEq)]
pub struct Target {
    pub msgs_per_s: f64,
    pub p99_ms: f64,
    pub lost: u64,
    pub out_of_order: u64,
    pub met: bool,
}

/// One fanout run's CPU cost per delivery.
#[derive(Serialize, Debug, PartialEq)]
pub struct PerDelivery {
    pub offered_msgs_per_s: f64,
    pub deliveries_per_s: f64,
    pub by_process: BTreeMap<String, f64>,
}

/// The knee, the saturation throughput, the target's verdict and the CPU
/// per delivery, from the `fanout` runs among `traffic` (none if none ran).
pub fn summarize(traffic: &[Traffic], knee_ms: f64) -> Option<FanoutSummary> {
    // Ours ("fanout") or an IRC daemon's ("fanout (IRC)"), not both.
    let runs: Vec<&Traffic> = traffic
        .iter()
        .filter(|t| t.scenario.starts_with("fanout"))
        .collect();
    let most = runs
        .iter()
        .max_by(|a, b| a.deliveries_per_s.total_cmp(&b.deliveries_per_s))?;
    let knee_msgs_per_s = runs
        .iter()
        .filter(|t| t.p99_ms <= knee_ms && t.lost == 0)
        .map(|t| t.offered_msgs_per_s)
        .max_by(f64::total_cmp);
    let target = runs
        .iter()
        .find(|t| t.offered_msgs_per_s == TARGET_RATE)
        .map(|t| Target {
            msgs_per_s: TARGET_RATE,
            p99_ms: t.p99_ms,
            lost: t.lost,
            out_of_order: t.out_of_order,
            met: t.p99_ms <= TARGET_P99_MS && t.lost == 0 && t.out_of_order == 0,
        });
    let cpu_us_per_1000_deliveries = runs
        .iter()
        .filter(|t| t.deliveries_per_s > 0.0)
        .map(|t| PerDelivery {
            offered_msgs_per_s: t.offered_msgs_per_s,
            deliveries_per_s: t.deliveries_per_s,
            // The machine's (idle) and (stolen) are no process's.
            by_process: t
                .cpu
                .iter()
                .filter(|(name, _)| !name.starts_with('('))
                .map(|(name, cpu)| {
                    let us = cpu / t.deliveries_per_s * 1e9;
                    (name.clone(), (us * 10.0).round() / 10.0)
                })
                .collect(),
        })
        .collect();
    Some(FanoutSummary {
        knee_p99_ms: knee_ms,
        knee_msgs_per_s,
        saturation_deliveries_per_s: most.deliveries_per_s,
        saturation_at_msgs_per_s: most.offered_msgs_per_s,
        target,
        cpu_us_per_1000_deliveries,
    })
}

/// The knee, saturation and target, in words (for the terminal and the
/// report).
fn verdict(f: &FanoutSummary) -> Vec<String> {
    let knee = f
        .knee_msgs_per_s
        .map_or("none of the rates run".into(), |r| format!("{r} msg/s"));
    let target = match &f.target {
        Some(t) => format!(
            "p99 {} ms, lost {}, reordered {}: target {}",
            t.p99_ms,
            t.lost,
            t.out_of_order,
            if t.met { "met" } else { "not met" }
        ),
        None => "not run".into(),
    };
    vec![
        format!(
            "knee (the highest offered rate with p99 <= {} ms and nothing lost): {knee}",
            f.knee_p99_ms
        ),
        format!(
            "saturation: {} deliveries/s at most (offered {} msg/s)",
            f.saturation_deliveries_per_s, f.saturation_at_msgs_per_s
        ),
        format!(
            "at {TARGET_RATE} msg/s (the target: p99 <= {TARGET_P99_MS} ms, nothing lost or reordered): {target}"
        ),
    ]
}

/// Prints what the fanout sweep came to.
pub fn summary_line(f: &FanoutSummary) {
    eprintln!("  fanout: {}", verdict(f).join("; "));
}

/// A line of the plot: label, colour, dashed, (offered rate, ms) points.
type Series<'a> = (String, &'a str, bool, Vec<(f64, f64)>);

#[derive(Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gb: f64,
    pub kernel: String,
}

#[derive(Serialize)]
pub struct Results {
    pub chat_version: &'static str,
    pub redis_version: String,
    pub unix_time: u64,
    pub machine: Machine,
    pub timing: Timing,
    pub settings: Vec<(String, String)>,
    /// The command line's options.
    pub options: Cli,
    pub traffic: Vec<Traffic>,
    pub login: Option<Login>,
    pub logins: Option<Logins>,
    pub connect: Option<Connect>,
    pub abuse: Option<Abuse>,
    pub failover: Option<Failover>,
    pub fanout_summary: Option<FanoutSummary>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Results {
    pub async fn new(cli: &Cli, timing: Timing, system: &System) -> Results {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        let kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Results {
            chat_version: env!("CARGO_PKG_VERSION"),
            redis_version: system.services.redis.version().await,
            unix_time: shared::now_ms() / 1000,
            machine: Machine {
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                cpu: cpuinfo
                    .lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                    .unwrap_or_default(),
                memory_gb: (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
                kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            },
            timing,
            settings: system.settings(),
            options: cli.clone(),
            traffic: Vec::new(),
            login: None,
            logins: None,
            connect: None,
            abuse: None,
            failover: None,
            fanout_summary: None,
        }
    }

    pub fn write(&self, cli: &Cli) -> Result<(), Error> {
        if let Some(dir) = cli.json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&cli.json, serde_json::to_string_pretty(self)?)?;
        let table = self.markdown();
        println!("\n{table}");
        eprintln!("figures: {}", cli.json.display());
        if cli.no_report {
            return Ok(());
        }
        let plot = cli.report.with_file_name(PLOT);
        std::fs::write(&plot, self.svg())?;
        splice(&cli.report, &table)?;
        eprintln!("report: {} (plot {})", cli.report.display(), plot.display());
        Ok(())
    }

    fn runs(&self, scenario: &str) -> Vec<&Traffic> {
        self.traffic
            .iter()
            .filter(|t| t.scenario == scenario)
            .collect()
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Run at Unix time {} on {} cores ({}), {} GB, Linux {}; Redis {}, chat {}. \
             Everything on one machine, the load generator included. Each run: {} s warm-up, \
             {} s measured, up to {} s to drain.\n",
            self.unix_time,
            m.cores,
            m.cpu,
            m.memory_gb,
            m.kernel,
            self.redis_version,
            self.chat_version,
            self.timing.warmup_s,
            self.timing.duration_s,
            self.timing.drain_s
        );
        let _ = writeln!(
            s,
            "Settings of the benchmark system (docs/operations.md):\n"
        );
        for (k, v) in &self.settings {
            let _ = writeln!(s, "- `{k}={v}`");
        }
        let _ = writeln!(s, "\n### Traffic\n");
        let _ = writeln!(
            s,
            "| scenario | clients | senders | offered msg/s | sent msg/s | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms | lost | reordered | dropped clients |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for t in &self.traffic {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.scenario,
                t.clients,
                t.senders,
                t.offered_msgs_per_s,
                t.sent_msgs_per_s,
                t.deliveries_per_s,
                t.p50_ms,
                t.p99_ms,
                t.p999_ms,
                t.max_ms,
                t.lost,
                t.out_of_order,
                t.disconnected
            );
        }
        let _ = writeln!(s, "\n![latency against offered rate]({PLOT})\n");

        let _ = writeln!(
            s,
            "### CPU (seconds per second, by process; (idle) and (stolen) for the whole machine, stolen being time the hypervisor gave to other guests)\n"
        );
        let procs: Vec<&String> = self
            .traffic
            .first()
            .map(|t| t.cpu.keys().collect())
            .unwrap_or_default();
        let rows = self.traffic.iter().map(|t| {
            let lead = vec![t.scenario.clone(), t.offered_msgs_per_s.to_string()];
            (lead, &t.cpu)
        });
        by_process(&mut s, &["scenario", "offered msg/s"], &procs, rows);

        if let Some(f) = &self.fanout_summary {
            let _ = writeln!(s, "\n### Fan-out sweep: knee and saturation\n");
            for v in verdict(f) {
                let _ = writeln!(s, "- {v}");
            }
            let _ = writeln!(
                s,
                "\n### CPU µs per 1,000 deliveries, by process (fanout)\n"
            );
            let per = &f.cpu_us_per_1000_deliveries;
            let procs: Vec<&String> = per
                .first()
                .map(|p| p.by_process.keys().collect())
                .unwrap_or_default();
            let rows = per.iter().map(|p| {
                let lead = vec![
                    p.offered_msgs_per_s.to_string(),
                    p.deliveries_per_s.to_string(),
                ];
                (lead, &p.by_process)
            });
            by_process(&mut s, &["offered msg/s", "deliveries/s"], &procs, rows);
        }

        let routed: Vec<&Traffic> = self
            .traffic
            .iter()
            .filter(|t| t.scenario == "fanout" || t.scenario == "rooms")
            .collect();
        if !routed.is_empty() {
            let _ = writeln!(
                s,
                "\n### Redis commands per routed room message (INFO commandstats)\n"
            );
            let mut cmds: Vec<&String> = routed
                .iter()
                .flat_map(|t| t.redis_calls_per_msg.keys())
                .collect();
            cmds.sort();
            cmds.dedup();
            let head: Vec<String> = routed
                .iter()
                .map(|t| {
                    format!(
                        "{} ({} per room, {} msg/s)",
                        t.scenario,
                        room_size(t),
                        t.offered_msgs_per_s
                    )
                })
                .collect();
            let _ = writeln!(s, "| command | {} |", head.join(" | "));
            let _ = writeln!(s, "|---|{}", "---:|".repeat(routed.len()));
            for c in cmds {
                let cells: Vec<String> = routed
                    .iter()
                    .map(|t| {
                        t.redis_calls_per_msg
                            .get(c)
                            .map_or("0".into(), |v| v.to_string())
                    })
                    .collect();
                let _ = writeln!(s, "| {c} | {} |", cells.join(" | "));
            }
        }

        if let Some(l) = &self.login {
            let _ = writeln!(s, "\n### Logins (bcrypt cost {})\n", l.bcrypt_cost);
            let _ = writeln!(
                s,
                "- bcrypt alone, {} threads in one process: {} verifications/s",
                l.cores, l.bcrypt_verifies_per_s
            );
            for (n, rate) in &l.logins_per_s {
                let _ = writeln!(
                    s,
                    "- through the system, auth-svc instances {n}: {rate} logins/s"
                );
            }
            let _ = writeln!(
                s,
                "- one instance reaches {:.0}% of the bcrypt rate; {} logins failed",
                l.share_of_bcrypt * 100.0,
                l.failed
            );
            let _ = writeln!(
                s,
                "- a room of 20 with 2 senders at 200 msg/s: p99 {} ms quiet, {} ms during the login storm (lost {}, reordered {})",
                l.chat_quiet.p99_ms, l.chat_during_storm.p99_ms, l.chat_during_storm.lost, l.chat_during_storm.out_of_order
            );
        }
        if let Some(l) = &self.logins {
            let _ = writeln!(
                s,
                "\n### A login storm (bcrypt cost {}, one auth-svc)\n",
                l.bcrypt_cost
            );
            let _ = writeln!(
                s,
                "- bcrypt alone: {} verifications per CPU second, so {} per second on the {} cores",
                l.bcrypt_per_core_s, l.bcrypt_per_s, self.machine.cores
            );
            let _ = writeln!(
                s,
                "- offered {} logins/s (a new TLS connection each) for {} s, after a warm-up as long as the edge's wait: {} logins",
                l.offered_per_s, l.seconds, l.offered
            );
            let _ = writeln!(
                s,
                "- **{} logins/s succeeded, {:.0}% of the bcrypt rate**; {} got `ERR unavailable`, {} another error",
                l.ok_per_s,
                l.share_of_bcrypt * 100.0,
                l.unavailable,
                l.other_errors
            );
            let _ = writeln!(
                s,
                "- auth-svc had {} cores during the storm: the successes are {:.0}% of what bcrypt does on that many",
                l.auth_cores,
                l.share_of_auth_cores * 100.0
            );
            let _ = writeln!(
                s,
                "- a successful login took {} ms (p50), {} ms (p99), {} ms at most",
                l.ok_p50_ms, l.ok_p99_ms, l.ok_max_ms
            );
            let (q, b) = (&l.chat_quiet, &l.chat_during_storm);
            let _ = writeln!(
                s,
                "- a room of 20 with 2 senders at 200 msg/s: p50 {} ms, p99 {} ms quiet; p50 {} ms, p99 {} ms during the storm (lost {}, reordered {})",
                q.p50_ms, q.p99_ms, b.p50_ms, b.p99_ms, b.lost, b.out_of_order
            );
        }
        if let Some(c) = &self.connect {
            let _ = writeln!(s, "\n### Idle connections, all through edge 1's address\n");
            let _ = writeln!(
                s,
                "- {} of {} logged in within {} s, each on the least-loaded edge `/edges` showed it; per edge {:?}; at the end {} answered `/ping`, {} had been closed\n- edge 1 resident memory {} MB before, {} MB after: **{} KB per connection** it holds",
                c.held, c.requested, c.seconds_to_connect, c.per_edge, c.answering, c.closed, c.edge_rss_before_mb, c.edge_rss_after_mb, c.kb_per_connection
            );
        }
        if let Some(a) = &self.abuse {
            abuse_section(&mut s, a);
        }
        if let Some(f) = &self.failover {
            failover_section(&mut s, f);
        }
        s
    }

    /// Latency (p50 and p99, log scale) against offered rate.
    fn svg(&self) -> String {
        let (w, h, left, bottom, top, right) = (640.0, 400.0, 75.0, 50.0, 30.0, 150.0);
        let (clients, senders) = self
            .runs("fanout")
            .first()
            .map_or((0, 0), |t| (t.clients, t.senders));
        let mut series: Vec<Series> = Vec::new();
        for (name, colour) in [("fanout", "#d62728"), ("baseline", "#1f77b4")] {
            let runs = self.runs(name);
            let p99 = runs
                .iter()
                .map(|t| (t.offered_msgs_per_s, t.p99_ms))
                .collect();
            let p50 = runs
                .iter()
                .map(|t| (t.offered_msgs_per_s, t.p50_ms))
                .collect();
            series.push((format!("{name} p99"), colour, false, p99));
            series.push((format!("{name} p50"), colour, true, p50));
        }
        let xmax = series
            .iter()
            .flat_map(|(_, _, _, p)| p.iter().map(|(x, _)| *x))
            .fold(1.0, f64::max);
        let highest = series
            .iter()
            .flat_map(|(_, _, _, p)| p.iter().map(|(_, y)| *y))
            .fold(10_000.0, f64::max);
        // Decades from 0.1 ms to the one above the slowest p99.
        let decades = highest.log10().ceil() as i32;
        let (ymin, ymax) = (0.1f64, 10f64.powi(decades));
        let x = |v: f64| left + v / xmax * (w - left - right);
        let y = |v: f64| {
            let v = v.clamp(ymin, ymax);
            h - bottom
                - (v.log10() - ymin.log10()) / (ymax.log10() - ymin.log10()) * (h - top - bottom)
        };
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{left}\" y=\"18\">Latency, send to receive, against offered rate ({clients} clients, {senders} senders)</text>\n"
        );
        for e in -1..=decades {
            let v = 10f64.powi(e);
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v} ms</text>",
                w - right,
                left - 5.0,
                y(v) + 4.0,
                yy = y(v)
            );
        }
        let step = x_step(xmax);
        for i in 0..=(xmax / step).floor() as usize {
            let v = i as f64 * step;
            let xx = x(v);
            let _ = writeln!(
                s,
                "<line x1=\"{xx}\" x2=\"{xx}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\"/><text x=\"{xx}\" y=\"{}\" text-anchor=\"middle\">{v}</text>",
                h - bottom,
                h - bottom + 4.0,
                h - bottom + 16.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">offered messages per second</text>",
            (w - right + left) / 2.0,
            h - 12.0
        );
        for (i, (label, colour, dashed, pts)) in series.iter().enumerate() {
            let dash = if *dashed {
                " stroke-dasharray=\"4 3\""
            } else {
                ""
            };
            let path: Vec<String> = pts
                .iter()
                .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
                .collect();
            let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>", path.join(" "));
            // A dot at each rate run: the sweep's rates are not evenly spaced.
            for &(a, b) in pts {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{colour}\"/>",
                    x(a),
                    y(b)
                );
            }
            let ly = top + 20.0 + i as f64 * 18.0;
            let _ = writeln!(
                s,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{label}</text>",
                w - right + 10.0,
                w - right + 35.0,
                w - right + 40.0,
                ly + 4.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// The spacing of the rate axis's ticks: 1, 2 or 5 times a power of ten,
/// at most ten ticks up to `xmax`.
fn x_step(xmax: f64) -> f64 {
    let unit = 10f64.powf((xmax / 10.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * unit)
        .find(|step| xmax / step <= 10.0)
        .unwrap_or(10.0 * unit)
}

/// A table of figures by process: the `head` columns, then one per
/// process of `procs` ("-" where a row has none).
fn by_process<'a>(
    s: &mut String,
    head: &[&str],
    procs: &[&String],
    rows: impl Iterator<Item = (Vec<String>, &'a BTreeMap<String, f64>)>,
) {
    let names = head.iter().copied().chain(procs.iter().map(|p| p.as_str()));
    let _ = writeln!(s, "| {} |", names.collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(head.len() - 1 + procs.len()));
    for (mut cells, values) in rows {
        cells.extend(
            procs
                .iter()
                .map(|p| values.get(*p).map_or("-".into(), |v| v.to_string())),
        );
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    }
}

fn room_size(t: &Traffic) -> usize {
    if t.scenario == "rooms" {
        t.clients / t.senders.max(1)
    } else {
        t.clients
    }
}

/// Prints one run as it finishes.
pub fn line(t: &Traffic) {
    eprintln!(
        "  {:8} {:>6} msg/s offered ({} sent): {:>9} deliveries/s, p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms (after the edge: p50 {} p99 {}), lost {}, reordered {}, dropped {}; Redis calls per message {:?}, CROSSSLOT errors {}",
        t.scenario, t.offered_msgs_per_s, t.sent_msgs_per_s, t.deliveries_per_s, t.p50_ms, t.p99_ms, t.p999_ms, t.max_ms, t.after_edge_p50_ms, t.after_edge_p99_ms, t.lost, t.out_of_order, t.disconnected, t.redis_calls_per_shard, t.cross_slot_errors
    );
}

/// Replaces what is between the markers of `path` with `body` (or writes
/// a new file with them).
fn splice(path: &Path, body: &str) -> Result<(), Error> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{body}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ => format!("# Benchmarks\n\n{block}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// The failover's figures: how long until the clients of a killed edge
/// were back.
fn failover_section(s: &mut String, f: &Failover) {
    let _ = writeln!(
        s,
        "\n### Failover: an edge killed under {} clients\n\n\
         All log in again on the other edge at once; seconds from the `kill -9` to `OK LOGIN` \
         (bcrypt cost {} for the passwords):\n\n\
         | login again with | back | 50% | 99% | all | retries |\n|---|---:|---:|---:|---:|---:|",
        f.clients, f.bcrypt_cost
    );
    let over = format!("over {}", f.gave_up_after_s);
    let secs = |v: &Option<f64>| v.map_or(over.clone(), |v| v.to_string());
    for (how, r) in [("RESUME", &f.resume), ("password", &f.password)] {
        let Recovery {
            logged_in,
            p50_s,
            p99_s,
            max_s,
            retries,
        } = r;
        let _ = writeln!(
            s,
            "| {how} | {logged_in} | {} | {} | {} | {retries} |",
            secs(p50_s),
            secs(p99_s),
            secs(max_s)
        );
    }
}

/// The abuse soak's figures, against its bounds.
fn abuse_section(s: &mut String, a: &Abuse) {
    use crate::abuse::{PING_P99_MS, QUIET_FACTOR, QUIET_ROOMS};
    let _ = writeln!(s, "\n### Abuse soak ({} s, default limits)\n", a.seconds);
    let _ = writeln!(
        s,
        "- 50 slow readers: {} `/history 500` asked, {} times dropped by the edge (too slow)",
        a.history_requests, a.slow_readers_dropped
    );
    let _ = writeln!(
        s,
        "- `/who` on a room of 20,000: {} replies, at most {} lines each",
        a.who_replies, a.who_lines_max
    );
    let _ = writeln!(
        s,
        "- reconnect storm of 5,000 clients: {} waves, {} logins, {} failed",
        a.storm_waves, a.storm_logins, a.storm_failures
    );
    let _ = writeln!(
        s,
        "- REGISTER flood: {} sent, {} accounts made, {} refused",
        a.registers_sent, a.registers_ok, a.registers_refused
    );
    let _ = writeln!(
        s,
        "- edge peak resident memory {:?} MB (bound {} MB for {} connections)",
        a.edge_rss_mb, a.edge_rss_bound_mb, a.connections_max
    );
    let _ = writeln!(
        s,
        "- Redis `PING`: p50 {} ms, p99 {} ms (bound {PING_P99_MS}), max {} ms",
        a.ping_p50_ms, a.ping_p99_ms, a.ping_max_ms
    );
    let _ = writeln!(
        s,
        "- quiet rooms ({QUIET_ROOMS} of 20 members, 20 msg/s each): p99 {} ms before the abuse, {} ms during it, {} ms after it (bound {QUIET_FACTOR}x the mean of before and after), lost {}, reordered {}",
        a.quiet.p99_ms, a.quiet_during.p99_ms, a.quiet_after.p99_ms, a.quiet_during.lost, a.quiet_during.out_of_order
    );
    let verdict = if a.failed.is_empty() {
        "every bound held".to_string()
    } else {
        format!("broken: {}", a.failed.join("; "))
    };
    let _ = writeln!(s, "- **{verdict}**");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenario: &str, rate: f64, deliveries: f64, p99: f64, lost: u64) -> Traffic {
        Traffic {
            scenario: scenario.into(),
            offered_msgs_per_s: rate,
            deliveries_per_s: deliveries,
            p99_ms: p99,
            lost,
            ..Traffic::default()
        }
    }

    #[test]
    fn knee_is_the_highest_rate_within_the_bound_and_lossless() {
        let runs = [
            run("fanout", 1000.0, 200_000.0, 20.0, 0),
            run("fanout", 5000.0, 1_000_000.0, 50.0, 0),
            run("fanout", 7500.0, 1_400_000.0, 40.0, 3),
            run("fanout", 10000.0, 1_300_000.0, 51.0, 0),
            run("baseline", 20000.0, 9_000_000.0, 1.0, 0),
        ];
        let f = summarize(&runs, 50.0).unwrap();
        assert_eq!(f.knee_msgs_per_s, Some(5000.0));
        assert_eq!(f.knee_p99_ms, 50.0);
        // The most measured over the sweep, not the last run's.
        assert_eq!(f.saturation_deliveries_per_s, 1_400_000.0);
        assert_eq!(f.saturation_at_msgs_per_s, 7500.0);
        assert_eq!(f.target, None);
        assert_eq!(
            summarize(&runs, 100.0).unwrap().knee_msgs_per_s,
            Some(10000.0)
        );
        assert_eq!(summarize(&runs, 10.0).unwrap().knee_msgs_per_s, None);
    }

    #[test]
    fn no_fanout_no_summary() {
        assert_eq!(
            summarize(&[run("baseline", 1000.0, 1.0, 1.0, 0)], 50.0),
            None
        );
        assert_eq!(summarize(&[], 50.0), None);
    }

    #[test]
    fn the_target_wants_its_p99_no_loss_and_no_reordering() {
        let target = |p99, lost, out_of_order| {
            let mut t = run("fanout", TARGET_RATE, 2_600_000.0, p99, lost);
            t.out_of_order = out_of_order;
            let runs = [run("fanout", 10000.0, 2_000_000.0, 10.0, 0), t];
            summarize(&runs, 50.0).unwrap().target.unwrap()
        };
        assert!(target(30.0, 0, 0).met);
        assert!(!target(30.5, 0, 0).met);
        assert!(!target(10.0, 1, 0).met);
        assert!(!target(10.0, 0, 1).met);
        let t = target(12.5, 2, 3);
        assert_eq!(
            (t.msgs_per_s, t.p99_ms, t.lost, t.out_of_order),
            (13000.0, 12.5, 2, 3)
        );
    }

    #[test]
    fn cpu_per_thousand_deliveries_by_process() {
        let mut busy = run("fanout", 1000.0, 200_000.0, 10.0, 0);
        busy.cpu = [("edge-1", 0.4), ("redis", 0.25), ("(idle)", 0.5)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let silent = run("fanout", 24000.0, 0.0, 5000.0, 99);
        let f = summarize(&[busy, silent], 50.0).unwrap();
        let per = &f.cpu_us_per_1000_deliveries;
        assert_eq!(
            per.len(),
            1,
            "a run that delivered nothing has no cost per delivery"
        );
        assert_eq!(per[0].offered_msgs_per_s, 1000.0);
        // 0.4 CPU s/s over 200,000 deliveries/s: 2 µs each, 2000 per 1,000.
        let want: BTreeMap<String, f64> = [("edge-1", 2000.0), ("redis", 1250.0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        assert_eq!(per[0].by_process, want);
    }

    #[test]
    fn rate_axis_ticks_are_round_and_few() {
        assert_eq!(x_step(24000.0), 5000.0);
        assert_eq!(x_step(7500.0), 1000.0);
        assert_eq!(x_step(2000.0), 200.0);
        assert_eq!(x_step(10000.0), 1000.0);
    }
}
