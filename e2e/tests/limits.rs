//! Abuse limits: each answered with its specified error, nothing else lost.

use e2e::{Client, Role, Shape, System};
use redis::AsyncCommands;
use shared::line::ServerLine;
use std::time::Duration;

#[tokio::test]
async fn a_flood_is_rate_limited_and_persistent_abuse_is_closed() {
    let sys = System::start_with(Default::default(), |c| {
        c.edge.lines_per_sec = 1;
        c.edge.line_burst = 20;
        c.edge.max_errors_per_min = 10;
    })
    .await;
    sys.add_user("alice").await;
    let mut alice = sys.login(0, "alice").await; // the login took one token
    let burst: String = (0..24).map(|i| format!("line {i}\n")).collect();
    alice.send_raw(burst.as_bytes()).await;
    let mut said = 0;
    let mut limited = 0;
    for _ in 0..24 {
        let line = alice.line().await;
        if line.starts_with("MSG ") {
            said += 1;
        } else {
            assert!(line.starts_with("ERR rate-limited "), "{line}");
            limited += 1;
        }
    }
    // The burst less the login's token passes (one more if a second of
    // refill went by on a slow machine), the rest is refused.
    assert!(
        (19..=20).contains(&said) && said + limited == 24,
        "said {said}, limited {limited}"
    );
    // Still connected; flooding on runs out the mistake budget.
    let flood: String = (0..20).map(|i| format!("more {i}\n")).collect();
    alice.send_raw(flood.as_bytes()).await;
    let last = alice.until(|l| !l.starts_with("ERR rate-limited")).await;
    assert_eq!(last, "BYE too-many-errors");
    alice.closed().await;
    sys.session_gone("alice").await;
}

#[tokio::test]
async fn silent_connections_are_closed_before_and_after_login() {
    let sys = System::start_with(Default::default(), |c| {
        // Long enough for a login under load, short for a test.
        c.edge.login_timeout_ms = 1500;
        c.edge.idle_timeout_ms = 1500;
    })
    .await;
    sys.add_user("alice").await;
    // Never logs in, though it trickles bytes (slowloris).
    let mut lurker = sys.connect(0).await;
    lurker.send_raw(b"LOG").await;
    assert_eq!(lurker.line().await, "BYE idle-timeout");
    lurker.closed().await;
    // Logs in, then says nothing.
    let mut alice = sys.login(0, "alice").await;
    assert_eq!(alice.ask("/ping").await, "OK PING", "a line keeps it alive");
    assert_eq!(alice.line().await, "BYE idle-timeout");
    alice.closed().await;
    sys.session_gone("alice").await;
}

#[tokio::test]
async fn the_tls_handshake_has_a_deadline() {
    let sys = System::start_with(Default::default(), |c| c.edge.handshake_timeout_ms = 300).await;
    let mut tcp = tokio::net::TcpStream::connect(sys.edge(0)).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // a handshake that stops
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("the edge closes a stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // One deadline from the connection on: a client that waits before
    // its first byte does not get the whole timeout again after it.
    let limit = Duration::from_millis(5000);
    let sys = System::start_with(Default::default(), |c| c.edge.handshake_timeout_ms = 5000).await;
    let connected = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(sys.edge(0)).await.unwrap();
    tokio::time::sleep(limit * 4 / 5).await; // a slow client, not a wait for an event
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("the edge closes a stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0);
    // Closed at the deadline (5 s after connecting), not 5 s after the
    // first byte (9 s); the margin is for a slow machine.
    assert!(
        connected.elapsed() < limit * 7 / 5,
        "closed {:?} after connecting",
        connected.elapsed()
    );
}

#[tokio::test]
async fn connections_are_capped_per_address_and_per_edge() {
    let sys = System::start_with(Default::default(), |c| c.edge.max_connections_per_addr = 2).await;
    let a = sys.connect(0).await;
    let _b = sys.connect(0).await;
    let mut c = Client::connect(sys.edge(0), &sys.trust()).await.unwrap();
    assert!(c.line().await.starts_with("ERR rate-limited "));
    c.closed().await;
    let _other_edge = sys.connect(1).await; // the cap is per edge
    drop(a);
    e2e::eventually("a freed slot is taken again", || async {
        let mut c = Client::connect(sys.edge(0), &sys.trust()).await.unwrap();
        c.line().await.starts_with("HELLO ")
    })
    .await;

    let sys = System::start_with(Default::default(), |c| c.edge.max_connections = 1).await;
    let _a = sys.connect(0).await;
    let mut b = Client::connect(sys.edge(0), &sys.trust()).await.unwrap();
    assert!(b.line().await.starts_with("ERR rate-limited "));
}

#[tokio::test]
async fn failed_logins_are_throttled_across_edges() {
    let sys = System::start_with(Shape::new(2, 1, 2), |c| {
        c.auth.max_failures_per_user = 3;
        // Counted: every attempt but those that succeed.
        c.auth.max_failures_per_addr = 6;
    })
    .await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let mut c = sys.connect(0).await;
    for _ in 0..3 {
        assert!(c
            .ask("LOGIN alice wrong")
            .await
            .starts_with("ERR bad-credentials"));
    }
    // The right password, on the other edge: still refused for a while.
    let mut d = sys.connect(1).await;
    assert!(d
        .ask("LOGIN alice alice-pw")
        .await
        .starts_with("ERR rate-limited "));
    // Another user is not affected, until the address has failed too often.
    assert_eq!(d.ask("LOGIN bob bob-pw").await, "OK LOGIN bob lobby");
    for _ in 0..2 {
        assert!(c
            .ask("LOGIN carol wrong")
            .await
            .starts_with("ERR bad-credentials"));
    }
    assert!(c
        .ask("LOGIN carol carol-pw")
        .await
        .starts_with("ERR rate-limited "));
    // The counters expire with their window.
    let mut r = sys.redis.conn().await;
    let ttl: i64 = r.pttl("chat:fail:user:alice").await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    let _: () = r
        .del(&["chat:fail:user:alice", "chat:fail:addr:127.0.0.1"])
        .await
        .unwrap();
    assert_eq!(c.ask("LOGIN alice alice-pw").await, "OK LOGIN alice lobby");
}

#[tokio::test]
async fn a_stalled_reader_is_dropped_and_does_not_slow_the_room() {
    let sys = System::start_with(Default::default(), |c| c.edge.out_queue = 64).await;
    sys.add_users(&["fast", "stalled", "sender"]).await;
    let mut fast = sys.login(0, "fast").await;
    let _stalled = sys.login(0, "stalled").await; // never reads again
    let mut sender = sys.login(1, "sender").await;
    let text = "x".repeat(3000);
    const N: usize = 3000; // ~9 MB: more than socket buffers hold
    let sending = tokio::spawn(async move {
        for chunk in (0..N).collect::<Vec<_>>().chunks(32) {
            let lines: String = chunk.iter().map(|i| format!("{i} {text}\n")).collect();
            sender.send_raw(lines.as_bytes()).await;
            for _ in chunk {
                sender.line().await; // its own echoes: it keeps up
            }
        }
        sender
    });
    for i in 0..N {
        let n: usize = match fast.parsed().await {
            ServerLine::Msg { text, .. } => text.split_once(' ').unwrap().0.parse().unwrap(),
            other => panic!("{other}"),
        };
        assert_eq!(n, i, "the fast reader gets everything, in order");
    }
    sending.await.unwrap();
    sys.session_gone("stalled").await;
}

#[tokio::test]
async fn registration_creates_an_account_and_logs_in() {
    let sys = System::start_with(Default::default(), |c| {
        c.auth.registration = true;
        c.auth.min_password = 8;
    })
    .await;
    sys.add_user("alice").await;
    let mut c = sys.connect(0).await;
    assert!(c
        .ask("REGISTER erin short")
        .await
        .starts_with("ERR bad-args "));
    assert!(c
        .ask("REGISTER alice long enough")
        .await
        .starts_with("ERR user-exists "));
    assert_eq!(
        c.ask("REGISTER erin long enough").await,
        "OK LOGIN erin lobby"
    );
    let mut r = sys.redis.conn().await;
    let hash: String = r.hget("chat:user:erin", "password").await.unwrap();
    assert!(
        hash.starts_with("$2") && !hash.contains("long enough"),
        "bcrypt only"
    );
    c.send("/quit").await;
    c.closed().await;
    let mut c = sys.connect(1).await;
    assert_eq!(c.ask("LOGIN erin long enough").await, "OK LOGIN erin lobby");

    let closed = System::start().await;
    let mut c = closed.connect(0).await;
    assert!(c
        .ask("REGISTER erin long enough")
        .await
        .starts_with("ERR registration-closed "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_sent_in_parallel_are_throttled_too() {
    let sys = System::start_with(Default::default(), |c| {
        c.auth.max_failures_per_user = 3;
        c.auth.max_failures_per_addr = 0;
    })
    .await;
    sys.add_user("alice").await;
    let mut guesses = Vec::new();
    for i in 0..20 {
        let mut c = sys.connect(i % 2).await;
        guesses.push(tokio::spawn(async move {
            c.ask(&format!("LOGIN alice guess{i}")).await
        }));
    }
    let mut checked = 0;
    for g in guesses {
        let reply = g.await.unwrap();
        if reply.starts_with("ERR bad-credentials") {
            checked += 1;
        } else {
            assert!(reply.starts_with("ERR rate-limited "), "{reply}");
        }
    }
    assert_eq!(checked, 3, "only three passwords were checked");
}

#[tokio::test]
async fn registrations_count_against_the_address() {
    let sys = System::start_with(Default::default(), |c| {
        c.auth.registration = true;
        c.auth.max_failures_per_addr = 2;
    })
    .await;
    let mut c = sys.connect(0).await;
    assert_eq!(
        c.ask("REGISTER erin long enough").await,
        "OK LOGIN erin lobby"
    );
    let mut d = sys.connect(1).await;
    assert_eq!(
        d.ask("REGISTER fred long enough").await,
        "OK LOGIN fred lobby"
    );
    let mut e = sys.connect(0).await;
    assert!(e
        .ask("REGISTER gina long enough")
        .await
        .starts_with("ERR rate-limited "));
}

#[tokio::test]
async fn registrations_from_all_addresses_together_are_capped() {
    let sys = System::start_with(Default::default(), |c| {
        c.auth.registration = true;
        c.auth.max_failures_per_addr = 0;
        c.auth.max_registrations = 2;
    })
    .await;
    let mut refused = 0;
    for (i, name) in ["erin", "fred", "gina"].iter().enumerate() {
        let from = std::net::Ipv4Addr::new(127, 0, 0, 2 + i as u8).into();
        let mut c = Client::connect_from(sys.edge(i % 2), Some(from), &sys.trust())
            .await
            .unwrap();
        c.expect_prefix("HELLO ").await;
        let answer = c.ask(&format!("REGISTER {name} long enough")).await;
        if answer.starts_with("ERR rate-limited ") {
            refused += 1;
        } else {
            assert_eq!(answer, format!("OK LOGIN {name} lobby"));
        }
    }
    // Three addresses, each under its own limit (none): the third
    // registration is over the cap of all of them together.
    assert_eq!(refused, 1);
    let mut r = sys.redis.conn().await;
    let gina: bool = redis::AsyncCommands::exists(&mut r, sys.keys().user("gina"))
        .await
        .unwrap();
    assert!(!gina, "no account made over the cap");
}

#[tokio::test]
async fn accepting_is_paced_across_all_addresses_and_nothing_is_dropped() {
    let sys = System::start_with(Shape::new(1, 1, 1), |c| c.edge.accepts_per_sec = 2).await;
    // Six clients from six addresses at once, three times the rate: all
    // are served, the later ones after the edge waited for its pace.
    let clients = (0..6u8).map(|i| {
        let (edge, trust) = (sys.edge(0), sys.trust());
        async move {
            let from = std::net::Ipv4Addr::new(127, 0, 2, 1 + i).into();
            let mut c = Client::connect_from(edge, Some(from), &trust)
                .await
                .unwrap();
            c.expect_prefix("HELLO ").await;
            c.ask("/ping").await
        }
    });
    for pong in futures_util::future::join_all(clients).await {
        assert_eq!(pong, "OK PING");
    }
    assert!(edge_metric(&sys, 0, "chat_edge_accepts_paced_total").await >= 1);
    let refused = r#"chat_edge_connections_refused_total{reason="accept-rate"}"#;
    assert_eq!(edge_metric(&sys, 0, refused).await, 0);
}

#[tokio::test]
async fn a_long_reply_costs_lines_of_the_flood_budget() {
    let sys = System::start_with(Shape::new(1, 1, 1), |c| {
        c.edge.lines_per_sec = 1;
        c.edge.line_burst = 5;
        c.edge.reply_bytes_per_line = 1024;
    })
    .await;
    sys.add_user("alice").await;
    // 20 lines of 1,000 characters in the lobby's history: about 20 KB.
    let mut r = sys.redis.conn().await;
    let text = "x".repeat(1000);
    for _ in 0..20 {
        let _: String = r
            .xadd(
                sys.keys().history("lobby"),
                "*",
                &[("from", "bob"), ("text", &text)],
            )
            .await
            .unwrap();
    }
    let mut alice = sys.login(0, "alice").await;
    let reply = alice.command("/history 20").await;
    assert_eq!(reply.last().unwrap(), "OK HISTORY 20");
    // The reply cost 19 lines more than the budget held: the next line
    // waits for the debt (5 lines at 1 a second) to be paid.
    assert!(alice.ask("/ping").await.starts_with("ERR rate-limited "));
}

/// A counter of edge `i`'s /metrics, by its name and labels.
async fn edge_metric(sys: &System, i: usize, series: &str) -> u64 {
    let (_, page) = e2e::http_get(sys.admin(Role::Edge, i), "/metrics").await;
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} in {page}"))
}

#[tokio::test]
async fn connections_not_logged_in_are_capped_per_address() {
    let sys = System::start_with(Shape::new(1, 1, 1), |c| c.edge.max_unauth_per_addr = 2).await;
    sys.add_user("alice").await;
    let mut a = sys.connect(0).await;
    let _b = sys.connect(0).await;
    let mut c = Client::connect(sys.edge(0), &sys.trust()).await.unwrap();
    assert_eq!(
        c.line().await,
        "ERR rate-limited too many connections from your address that have not logged in"
    );
    c.closed().await;
    let refused = r#"chat_edge_connections_refused_total{reason="not-logged-in"}"#;
    assert_eq!(edge_metric(&sys, 0, refused).await, 1);
    // A connection that logged in no longer counts.
    a.send(&format!("LOGIN alice {}", e2e::password("alice")))
        .await;
    a.expect("OK LOGIN alice lobby").await;
    e2e::eventually("a connection that logged in makes room", || async {
        match Client::connect(sys.edge(0), &sys.trust()).await {
            Ok(mut c) => c.line().await.starts_with("HELLO "),
            Err(_) => false,
        }
    })
    .await;
    assert_eq!(a.ask("/ping").await, "OK PING", "the session goes on");
}

#[tokio::test]
async fn connections_over_the_accept_rate_are_closed_before_the_handshake() {
    let sys = System::start_with(Shape::new(1, 1, 1), |c| {
        c.edge.accepts_per_addr_per_sec = 1;
        c.edge.accept_burst = 3;
    })
    .await;
    // Back to back: the burst is served, then about one a second; the
    // others are closed before the TLS handshake (it fails).
    const N: usize = 40;
    let mut served = 0;
    for _ in 0..N {
        if let Ok(mut c) = Client::connect(sys.edge(0), &sys.trust()).await {
            assert!(c.line().await.starts_with("HELLO "));
            served += 1;
        }
    }
    // The harness's readiness probe took one of the burst.
    assert!(served >= 2, "the burst is served: {served}");
    assert!(served < N, "some are refused: {served} of {N} served");
    let refused = r#"chat_edge_connections_refused_total{reason="accept-rate"}"#;
    assert_eq!(edge_metric(&sys, 0, refused).await, (N - served) as u64);
    e2e::eventually("the rate lets a connection in again", || async {
        Client::connect(sys.edge(0), &sys.trust()).await.is_ok()
    })
    .await;
}
