//! `chat-bench` against the real binaries, small: it starts its own
//! system, and its figures say that everything sent arrived, in order.
//! (Speed is for `make bench`; this only checks the tool and what it
//! counts.)

use e2e::binary;
use std::process::Command;

#[test]
fn chat_bench_runs_its_scenarios_and_accounts_for_every_message() {
    let dir = std::env::temp_dir().join(format!("chat-bench-e2e-{}", std::process::id()));
    let json = dir.join("results.json");
    let bin = binary("edge-svc").parent().unwrap().to_path_buf();
    let out = Command::new(binary("chat-bench"))
        .arg("--bin")
        .arg(&bin)
        .arg("--dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .env("CHAT_AUTH__BCRYPT_COST", "4")
        .args(["--no-report", "--only", "fanout,baseline,connect,failover"])
        .args([
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
        ])
        .args(["--warmup", "0.3", "--duration", "1", "--drain", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chat-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let traffic = results["traffic"].as_array().unwrap();
    let scenarios: Vec<&str> = traffic
        .iter()
        .map(|t| t["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(scenarios, ["fanout", "baseline"]);
    for t in traffic {
        let sent = t["sent"].as_u64().unwrap();
        // 1.3 s at 100 messages/s (every one due sent), each to all 6
        // clients.
        assert!(sent.abs_diff(130) <= 3, "{t}");
        assert!(
            t["sent_msgs_per_s"].as_f64().unwrap().round() >= 98.0,
            "{t}"
        );
        assert_eq!(t["expected_deliveries"].as_u64().unwrap(), sent * 6, "{t}");
        assert_eq!(t["received"], t["expected_deliveries"], "{t}");
        assert_eq!(t["lost"], 0, "{t}");
        assert_eq!(t["out_of_order"], 0, "{t}");
        assert_eq!(t["disconnected"], 0, "{t}");
        assert!(t["deliveries_per_s"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["p99_ms"].as_f64().unwrap() > 0.0, "{t}");
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
