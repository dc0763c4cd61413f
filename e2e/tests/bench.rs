//! `chat-bench` against the real binaries, small: it starts its own
//! system, and its figures say that everything sent arrived, in order.
//! (Speed is for `make bench`; this only checks the tool and what it
//! counts.)

use e2e::binary;
use std::process::Command;

/// Runs chat-bench with `args` (and its own --bin, --dir and --json, in a
/// directory named after `name`, removed after); its figures.
fn chat_bench(name: &str, env: &[(&str, &str)], args: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let json = dir.join("results.json");
    let bin = binary("edge-svc").parent().unwrap().to_path_buf();
    let out = Command::new(binary("chat-bench"))
        .arg("--bin")
        .arg(&bin)
        .arg("--dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .envs(env.iter().copied())
        .args(args)
        .args(["--warmup", "0.3", "--duration", "1", "--drain", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chat-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    results
}

/// Run `t` sent for 1.3 s at its rate (every message due sent), and each
/// message reached `listeners` clients: all of them, in order, with a
/// latency, nobody dropped.
fn accounted(t: &serde_json::Value, listeners: u64) {
    let sent = t["sent"].as_u64().unwrap();
    let rate = t["offered_msgs_per_s"].as_f64().unwrap() as u64;
    assert!(sent.abs_diff(rate * 13 / 10) <= 3, "{t}");
    assert_eq!(
        t["expected_deliveries"].as_u64().unwrap(),
        sent * listeners,
        "{t}"
    );
    assert_eq!(t["received"], t["expected_deliveries"], "{t}");
    assert_eq!(t["lost"], 0, "{t}");
    assert_eq!(t["out_of_order"], 0, "{t}");
    assert_eq!(t["disconnected"], 0, "{t}");
    assert!(t["p99_ms"].as_f64().unwrap() > 0.0, "{t}");
}

#[test]
fn chat_bench_runs_its_scenarios_and_accounts_for_every_message() {
    let results = chat_bench(
        "chat-bench-e2e",
        &[("CHAT_AUTH__BCRYPT_COST", "4")],
        &[
            "--no-report",
            "--only",
            "fanout,baseline,connect,failover",
            "--rates",
            "100",
            "--baseline-rates",
            "100",
            "--clients",
            "6",
            "--senders",
            "3",
            "--idle",
            "40",
            "--failover-clients",
            "20",
        ],
    );
    let traffic = results["traffic"].as_array().unwrap();
    let scenarios: Vec<&str> = traffic
        .iter()
        .map(|t| t["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["fanout", "baseline"]);
    for t in traffic {
        // Each message to all 6 clients.
        accounted(t, 6);
        assert!(
            t["sent_msgs_per_s"].as_f64().unwrap().round() >= 98.0,
            "{t}"
        );
        assert!(t["deliveries_per_s"].as_f64().unwrap() > 0.0, "{t}");
    }
    // The sweep's summary: its one rate, and CPU per delivery by process.
    let summary = &results["fanout_summary"];
    assert_eq!(
        summary["saturation_deliveries_per_s"], traffic[0]["deliveries_per_s"],
        "{summary}"
    );
    assert_eq!(summary["saturation_at_msgs_per_s"], 100.0, "{summary}");
    assert!(
        summary["target"].is_null(),
        "13,000 msg/s not run: {summary}"
    );
    let cpu = &summary["cpu_us_per_1000_deliveries"][0]["by_process"];
    assert!(cpu["edge-1"].as_f64().is_some(), "{summary}");
    // A routed room message costs the router one function call.
    let fanout = &traffic[0]["redis_calls_per_msg"];
    assert!(fanout["fcall"].as_f64().unwrap() >= 1.0, "{fanout}");

    let connect = &results["connect"];
    assert_eq!(connect["held"], 40, "{connect}");
    assert_eq!(connect["answering"], 40, "{connect}");
    assert!(
        connect["edge_rss_after_mb"].as_f64().unwrap() > 0.0,
        "{connect}"
    );
    assert!(results["machine"]["cores"].as_u64().unwrap() > 0);

    // Every client of the killed edge came back, each way.
    let failover = &results["failover"];
    for how in ["resume", "password"] {
        assert_eq!(failover[how]["logged_in"], 20, "{failover}");
        assert!(failover[how]["p99_s"].as_f64().unwrap() > 0.0, "{failover}");
    }
}

/// InspIRCd's binary, where Debian puts it or on the PATH.
fn inspircd() -> Option<std::path::PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("inspircd"))
        .find(|p| p.is_file())
}

#[test]
fn chat_bench_runs_fanout_against_an_irc_daemon_and_accounts_for_every_message() {
    let Some(ircd) = inspircd() else {
        eprintln!("skipped: inspircd is not installed (apt-get install inspircd; CI installs it)");
        return;
    };
    let ircd = ircd.display().to_string();
    let results = chat_bench(
        "chat-bench-irc",
        &[],
        &[
            "--irc",
            &ircd,
            "--rates",
            "100,200",
            "--clients",
            "6",
            "--senders",
            "3",
        ],
    );
    let traffic = results["traffic"].as_array().unwrap();
    assert_eq!(traffic.len(), 2, "{results}");
    for t in traffic {
        assert_eq!(t["scenario"], "fanout (IRC)", "{t}");
        // A sender does not hear itself in IRC: each line reaches the 5
        // others.
        accounted(t, 5);
        assert!(t["cpu"]["ircd"].as_f64().is_some(), "{t}");
    }
    // The sweep's summary, as for ours: the busier rate delivered the most.
    let summary = &results["fanout_summary"];
    assert_eq!(summary["saturation_at_msgs_per_s"], 200.0, "{summary}");
    assert!(
        summary["cpu_us_per_1000_deliveries"][1]["by_process"]["ircd"].is_number(),
        "{summary}"
    );
}
