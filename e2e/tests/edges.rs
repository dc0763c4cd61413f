//! Load balancing across edges, with three real edges: `/edges` before and
//! after login, `REDIRECT` past the load threshold, clients placed by the
//! `chat` binary, and draining an edge under load.

use e2e::checker::{Load, Options};
use e2e::{ChatClient, Role, Shape, System, WAIT};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The `EDGE` lines of a `/edges` answer and its final line.
async fn edges(c: &mut e2e::Client) -> (Vec<String>, String) {
    let mut lines = c.command("/edges").await;
    let last = lines.pop().unwrap();
    (lines, last)
}

#[tokio::test]
async fn edges_are_listed_before_and_after_login() {
    let mut sys = System::start_with(Shape::new(3, 1, 1), |_| {}).await;
    sys.add_user("alice").await;
    // The harness's probe of the port (a connection that closes at once)
    // has left edge 1's count first.
    sys.edges_count(&[0]).await;
    let mut c = sys.connect(0).await;
    let (before, last) = edges(&mut c).await;
    assert_eq!(last, "OK EDGES 3");
    let addrs: Vec<String> = (0..3).map(|i| sys.edge(i).to_string()).collect();
    for (line, addr) in before.iter().zip(&addrs) {
        assert!(line.starts_with(&format!("EDGE {addr} ")), "{before:?}");
    }
    // Counted at once: this connection is on edge 1's count.
    assert_eq!(before[0], format!("EDGE {} 1", addrs[0]), "{before:?}");

    c.send("LOGIN alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
    let (after, last) = edges(&mut c).await;
    assert_eq!((after.len(), last.as_str()), (3, "OK EDGES 3"), "{after:?}");

    // A drained edge is not listed any more.
    let (status, _) = e2e::http(sys.admin(Role::Edge, 2), "POST", "/drain").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let (listed, last) = edges(&mut c).await;
        if last == "OK EDGES 2" {
            assert!(listed.iter().all(|l| !l.contains(&addrs[2])), "{listed:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "edge 3 is still listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Then it exits, as on SIGTERM, for its supervisor to start it again.
    let status = sys.exited(Role::Edge, 2).await;
    assert!(status.success(), "edge 3 exit status {status}");
}

#[tokio::test]
async fn a_loaded_edge_redirects_new_connections_and_a_raw_client_may_ignore_it() {
    let sys = System::start_with(Shape::new(3, 1, 1), |c| {
        c.edge.redirect_above_pct = 20;
        c.edge.redirect_min_excess = 3;
    })
    .await;
    sys.add_user("alice").await;
    // With k connections on edge 1 and none elsewhere, edge 1 is k - k/3
    // above the mean: under 3 up to 4 connections, 3.3 at the 5th.
    let mut held = Vec::new();
    for k in 1..=4 {
        let mut c = sys.connect(0).await;
        assert_eq!(
            c.ask("/ping").await,
            "OK PING",
            "connection {k}: no REDIRECT"
        );
        held.push(c);
    }
    let mut c = sys.connect(0).await;
    let redirect = c.line().await;
    let others = [sys.edge(1).to_string(), sys.edge(2).to_string()];
    assert!(
        others.iter().any(|a| redirect == format!("REDIRECT {a}")),
        "{redirect}"
    );
    // Ignored: served all the same.
    c.send("LOGIN alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
    assert_eq!(c.ask("/ping").await, "OK PING");
}

/// The edge id in a `HELLO` line.
fn hello_edge(line: &str) -> String {
    line.split(' ').nth(1).unwrap_or_default().to_string()
}

#[tokio::test]
async fn ninety_clients_started_on_edge_one_spread_evenly() {
    let sys = System::start_with(Shape::new(3, 1, 1), |_| {}).await;
    let names: Vec<String> = (0..90).map(|i| format!("p{i}")).collect();
    for name in &names {
        sys.add_user(name).await;
    }
    let mut clients = Vec::new();
    let mut per_edge: HashMap<String, usize> = HashMap::new();
    for name in &names {
        // Given edge 1 only; each places itself by the loads `/edges`
        // shows, once the one before has its connection.
        let mut c = ChatClient::placed(&sys, 0, name);
        let hello = c.until(|l| l.starts_with("HELLO ")).await;
        *per_edge.entry(hello_edge(&hello)).or_default() += 1;
        clients.push(c);
    }
    eprintln!("clients per edge: {per_edge:?}");
    assert_eq!(per_edge.len(), 3, "{per_edge:?}");
    for (edge, n) in &per_edge {
        assert!((27..=33).contains(n), "{edge}: {n} clients, {per_edge:?}");
    }
}

#[tokio::test]
async fn draining_an_edge_under_load_moves_its_clients_evenly_without_losing_a_message() {
    const SHARE_PCT: u32 = 40;
    let mut sys = System::start_with(Shape::new(3, 1, 1), |c| {
        c.edge.drain_window_ms = 3_000;
        c.edge.drain_max_share_pct = SHARE_PCT;
        c.shutdown_grace_ms = 6_000;
    })
    .await;
    let opts = Options {
        users: 30,
        rate: 30.0,
        ..Options::default()
    };
    let load = Load::start(&sys, opts).await;
    load.run_for(Duration::from_secs(2)).await;
    load.fault();
    let drained_at = Instant::now();
    sys.stop(Role::Edge, 1).await;
    load.recovered().await;
    load.run_for(Duration::from_secs(2)).await;
    let report = load.finish(&sys).await;
    report.print("edge 2 drained");

    // Users 1, 4, 7, ... were on edge 2.
    let moved: Vec<&(Instant, String)> = report
        .arrivals
        .iter()
        .filter(|(at, _)| *at >= drained_at)
        .collect();
    assert!(moved.len() >= 10, "{moved:?}");
    assert!(
        moved.iter().all(|(_, e)| e == "edge-1" || e == "edge-3"),
        "{moved:?}"
    );
    for edge in ["edge-1", "edge-3"] {
        let times: Vec<Instant> = moved
            .iter()
            .filter(|(_, e)| e == edge)
            .map(|(at, _)| *at)
            .collect();
        assert!(!times.is_empty(), "nobody moved to {edge}: {moved:?}");
        // In any one second (a window starting at each arrival).
        let busiest = times
            .iter()
            .map(|t| {
                let end = *t + Duration::from_secs(1);
                times.iter().filter(|u| **u >= *t && **u < end).count()
            })
            .max()
            .unwrap();
        let cap = (moved.len() * SHARE_PCT as usize).div_ceil(100);
        assert!(
            busiest <= cap,
            "{edge} got {busiest} of the {} moved clients in one second (cap {cap})",
            moved.len()
        );
    }
}

#[tokio::test]
async fn an_edge_stopped_while_redis_does_not_answer_exits_within_its_grace() {
    const GRACE: Duration = Duration::from_millis(3_000);
    let mut sys = System::start_with(Shape::new(2, 1, 1), |c| {
        c.shutdown_grace_ms = GRACE.as_millis() as u64;
    })
    .await;
    sys.add_users(&["alice", "bob"]).await;
    let _alice = sys.login(0, "alice").await;
    let _bob = sys.login(0, "bob").await;
    let redis = sys.redis.pid();
    e2e::signal(redis, "STOP");
    let stopped = Instant::now();
    sys.signal(Role::Edge, 0, "TERM");
    let status = tokio::time::timeout(WAIT, sys.exited(Role::Edge, 0)).await;
    let took = stopped.elapsed();
    e2e::signal(redis, "CONT");
    let status = status.expect("edge-1 exits");
    assert!(status.success(), "{status}");
    // The deadline is the grace (it exited 5 s after SIGTERM before); the
    // margin is for a slow machine's start of the process and its last
    // writes.
    assert!(
        took < GRACE + Duration::from_millis(1500),
        "edge-1 took {took:?} to exit on SIGTERM with Redis stopped (grace {GRACE:?})"
    );
}
