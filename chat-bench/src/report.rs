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
use std::fmt::Write;
use std::path::Path;

const BEGIN: &str = "<!-- chat-bench:begin (written by make bench; edit outside) -->";
const END: &str = "<!-- chat-bench:end -->";
const PLOT: &str = "bench-fanout.svg";

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
        let _ = writeln!(
            s,
            "| scenario | offered msg/s | {} |",
            procs
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(s, "|---|---:|{}", "---:|".repeat(procs.len()));
        for t in &self.traffic {
            let cells: Vec<String> = procs
                .iter()
                .map(|p| t.cpu.get(*p).map_or("-".into(), |v| v.to_string()))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                t.scenario,
                t.offered_msgs_per_s,
                cells.join(" | ")
            );
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
        let (ymin, ymax) = (0.1f64, 10_000f64);
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
        for e in -1..=4 {
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
        for t in self.runs("fanout") {
            let xx = x(t.offered_msgs_per_s);
            let _ = writeln!(
                s,
                "<text x=\"{xx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                h - bottom + 16.0,
                t.offered_msgs_per_s
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
        "  {:8} {:>6} msg/s offered ({} sent): {:>9} deliveries/s, p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms (after the edge: p50 {} p99 {}), lost {}, reordered {}, dropped {}",
        t.scenario, t.offered_msgs_per_s, t.sent_msgs_per_s, t.deliveries_per_s, t.p50_ms, t.p99_ms, t.p999_ms, t.max_ms, t.after_edge_p50_ms, t.after_edge_p99_ms, t.lost, t.out_of_order, t.disconnected
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
    use crate::abuse::{PING_P99_MS, QUIET_FACTOR};
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
        "- a quiet room (20 members, 20 msg/s): p99 {} ms alone, {} ms during the abuse (bound {QUIET_FACTOR}x), lost {}, reordered {}",
        a.quiet.p99_ms, a.quiet_during.p99_ms, a.quiet_during.lost, a.quiet_during.out_of_order
    );
    let verdict = if a.failed.is_empty() {
        "every bound held".to_string()
    } else {
        format!("broken: {}", a.failed.join("; "))
    };
    let _ = writeln!(s, "- **{verdict}**");
}
