//! The compose stack: its file checked statically here (no engine needed),
//! and the end-to-end scenario run against it by `make compose-test`.

use e2e::Client;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use shared::config::Config;
use shared::tls::Trust;
use std::collections::BTreeMap;

fn compose_file() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    std::fs::read_to_string(path).unwrap()
}

/// Every `CHAT_*` variable the compose file sets is a real setting, with a
/// valid value: they load, through the same layers as the services use,
/// into a configuration that passes validation.
#[test]
fn compose_sets_only_real_settings() {
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let text = compose_file();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(": ") else {
            continue;
        };
        let Some(name) = key.strip_prefix("CHAT_") else {
            continue;
        };
        let value = value.trim_matches('"');
        let path: Vec<String> = name.split("__").map(str::to_lowercase).collect();
        let (table, field) = match path.as_slice() {
            [field] => (String::new(), field.clone()),
            [table, field] => (table.clone(), field.clone()),
            _ => panic!("unexpected setting {key}"),
        };
        let toml_value = if value.parse::<i64>().is_ok() || value == "true" || value == "false" {
            value.to_string()
        } else {
            format!("{value:?}")
        };
        tables
            .entry(table)
            .or_default()
            .push(format!("{field} = {toml_value}"));
    }
    assert!(
        tables.values().map(Vec::len).sum::<usize>() >= 6,
        "{tables:?}"
    );
    let mut toml = String::new();
    for (table, lines) in &tables {
        if !table.is_empty() {
            toml.push_str(&format!("[{table}]\n"));
        }
        // Settings set once per edge appear twice: keep one of each.
        let mut seen = std::collections::HashSet::new();
        for l in lines
            .iter()
            .filter(|l| seen.insert(l.split(" = ").next().unwrap().to_string()))
        {
            toml.push_str(l);
            toml.push('\n');
        }
    }
    let mut cfg: Config = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::string(&toml))
        .extract()
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    // Instance ids default to <hostname>-<pid> when the services start.
    for id in [&mut cfg.edge.id, &mut cfg.auth.id, &mut cfg.router.id] {
        if id.is_empty() {
            *id = "container".into();
        }
    }
    cfg.validate().unwrap();

    // The shape the deployment issue asks for.
    for needed in [
        "redis-server\", \"--appendonly\", \"yes\"",
        "\"7001:7001\"",
        "\"7002:7001\"",
        "service_healthy",
        "healthz\", \"9101\"",
        "healthz\", \"9102\"",
        "healthz\", \"9103\"",
        "redis-data:",
    ] {
        assert!(text.contains(needed), "docker-compose.yml lacks {needed}");
    }
    for scalable in ["auth-svc:", "router-svc:"] {
        let block = text.split(&format!("\n  {scalable}")).nth(1).unwrap();
        let block = block.split("\n  ").next().unwrap_or(block);
        assert!(
            !block.contains("container_name") && !block.contains("ports:"),
            "{scalable} must scale"
        );
    }
}

/// `make compose-test`: the system in containers serves a session across
/// its two edges. Skipped unless CHAT_COMPOSE_EDGES names the edges.
#[tokio::test]
async fn scenario_against_the_compose_stack() {
    let Ok(edges) = std::env::var("CHAT_COMPOSE_EDGES") else {
        eprintln!("skipped: CHAT_COMPOSE_EDGES is not set (make compose-test sets it)");
        return;
    };
    let ca = std::env::var("CHAT_COMPOSE_CA").unwrap_or_else(|_| "certs/ca.pem".into());
    let trust = Trust::CaPem(std::fs::read_to_string(ca).unwrap());
    let mut addrs = Vec::new();
    for edge in edges.split(',') {
        addrs.push(tokio::net::lookup_host(edge).await.unwrap().next().unwrap());
    }
    let edges = addrs;
    let mut alice = Client::connect(edges[0], &trust).await.unwrap();
    let mut bob = Client::connect(edges[1], &trust).await.unwrap();
    for (c, user) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        c.expect_prefix("HELLO ").await;
        assert_eq!(
            c.ask(&format!("LOGIN {user} {user}-pw")).await,
            format!("OK LOGIN {user} lobby")
        );
        assert_eq!(c.ask("/join compose-test").await, "OK JOIN compose-test");
    }
    alice.send("hello from edge 1").await;
    let echo = alice.msg().await;
    assert_eq!(bob.msg().await, echo);
    assert_eq!(
        bob.command("/who").await,
        ["USER alice", "USER bob", "OK WHO compose-test 2"]
    );
}
