//! The real binaries as processes, driven as a user would: certificates,
//! accounts, the services, and the `chat` client with piped input.

use e2e::{eventually, free_port, parse, password, threads, ChatClient, Role, Shape, System};
use redis::AsyncCommands;
use shared::line::ServerLine;
use std::process::Stdio;

/// No services: what a test starts itself.
const NOTHING: Shape = Shape::new(0, 0, 0);

#[tokio::test]
async fn binaries_chat_across_two_edges_and_shut_down_cleanly() {
    let mut sys = System::start().await;
    // The test passwords are shorter than `auth.min_password` wants.
    let short = [("CHAT_AUTH__MIN_PASSWORD", "6")];
    for user in ["alice", "bob"] {
        let (ok, said) = sys.account(&short, &["add", user], &password(user)).await;
        assert!(ok, "{said}");
    }
    let mut r = sys.redis.conn().await;
    let hash: String = r.hget("chat:user:alice", "password").await.unwrap();
    assert!(hash.starts_with("$2"), "stored as a bcrypt hash");
    assert!(!hash.contains("alice-pw"));
    let mut alice = ChatClient::start(&sys, 0, "alice");
    let mut bob = ChatClient::start(&sys, 1, "bob");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    bob.until(|l| l == "OK LOGIN bob lobby").await;

    // Each service is ready and counts what it does.
    let admin = [
        sys.admin(Role::Auth, 0),
        sys.admin(Role::Router, 0),
        sys.admin(Role::Edge, 0),
        sys.admin(Role::Edge, 1),
    ];
    for port in admin {
        assert_eq!(e2e::http_get(port, "/healthz").await, (200, "ok\n".into()));
    }
    let (_, auth) = e2e::http_get(admin[0], "/metrics").await;
    assert!(
        auth.contains("chat_auth_logins_total{result=\"ok\"} 2"),
        "{auth}"
    );
    let (_, edge) = e2e::http_get(admin[2], "/metrics").await;
    assert!(edge.contains("chat_edge_connections 1"), "{edge}");
    assert!(
        edge.contains("# TYPE chat_edge_request_seconds histogram"),
        "{edge}"
    );

    alice.say("hello from alice").await;
    let got = bob.until(|l| l.starts_with("MSG ")).await;
    assert!(
        matches!(parse(&got), ServerLine::Msg { room, from, text, .. }
            if room == "lobby" && from == "alice" && text == "hello from alice"),
        "{got}"
    );
    bob.say("hi alice").await;
    let got = alice.until(|l| l.ends_with(" bob hi alice")).await;
    assert!(
        matches!(parse(&got), ServerLine::Msg { room, .. } if room == "lobby"),
        "{got}"
    );

    // End of input logs bob out.
    bob.stdin = None;
    bob.until(|l| l == "BYE quit").await;
    bob.exits_ok().await;

    // SIGTERM: the edge says goodbye, ends the session and exits.
    sys.signal(Role::Edge, 0, "TERM");
    alice.until(|l| l == "BYE server-shutdown").await;
    alice.exits_ok().await;
    let status = sys.exited(Role::Edge, 0).await;
    assert!(status.success(), "edge exit status {status}");
    eventually("the sessions are gone", || {
        let mut r = r.clone();
        async move {
            !r.exists::<_, bool>("chat:session:alice").await.unwrap()
                && !r.exists::<_, bool>("chat:session:bob").await.unwrap()
                && !r.exists::<_, bool>("chat:room:lobby").await.unwrap()
        }
    })
    .await;

    // auth-svc and router-svc stop cleanly on SIGTERM too.
    sys.stop(Role::Auth, 0).await;
    sys.stop(Role::Router, 0).await;
    let leases: Vec<String> = r.keys("chat:router:lease:*").await.unwrap();
    assert!(
        leases.is_empty(),
        "router-svc handed its leases back: {leases:?}"
    );
}

#[tokio::test]
async fn an_edge_killed_leaves_no_ghosts_and_its_users_log_in_again_at_once() {
    let mut sys = System::start_with(Shape::default(), |c| {
        c.edge.dead_after_ms = 1500;
        c.edge.request_timeout_ms = 1000;
    })
    .await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let mut alice = ChatClient::start(&sys, 0, "alice");
    let mut carol = ChatClient::start(&sys, 0, "carol");
    let mut bob = ChatClient::start(&sys, 1, "bob");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    carol.until(|l| l == "OK LOGIN carol lobby").await;
    bob.until(|l| l == "OK LOGIN bob lobby").await;

    sys.kill(Role::Edge, 0).await;
    // alice comes back on the other edge at once: her old session, on a
    // dead edge, is replaced without waiting for anything.
    let mut alice = ChatClient::start(&sys, 1, "alice");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    // carol does not come back: the reaper ends her session.
    sys.session_gone("carol").await;
    let mut r = sys.redis.conn().await;
    let members: Vec<String> = r.smembers("chat:room:lobby").await.unwrap();
    assert!(!members.contains(&"carol".to_string()), "{members:?}");
    let session_edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(session_edge, "edge-2");
    drop(carol);
}

#[tokio::test]
async fn account_commands_refuse_passwords_shorter_than_min_password() {
    let sys = System::start_with(NOTHING, |_| {}).await;
    let mut r = sys.redis.conn().await;
    let defaults: &[(&str, &str)] = &[];
    let (ok, said) = sys.account(defaults, &["add", "erin"], "erin-pw").await;
    assert!(!ok, "a 7-character password refused by default");
    assert!(
        said.contains("auth-svc: passwords are at least 8 characters"),
        "{said}"
    );
    assert!(!r.exists::<_, bool>("chat:user:erin").await.unwrap());
    let (ok, said) = sys.account(defaults, &["add", "erin"], "erin-pass").await;
    assert!(ok, "{said}");
    let hash: String = r.hget("chat:user:erin", "password").await.unwrap();

    let (ok, said) = sys.account(defaults, &["passwd", "erin"], "short").await;
    assert!(!ok, "passwd refuses it too");
    assert!(said.contains("at least 8 characters"), "{said}");
    let kept: String = r.hget("chat:user:erin", "password").await.unwrap();
    assert_eq!(kept, hash, "the password is unchanged");

    // The limit is the setting's.
    let four = [("CHAT_AUTH__MIN_PASSWORD", "4")];
    let (ok, said) = sys.account(&four, &["passwd", "erin"], "four").await;
    assert!(ok, "{said}");
    let changed: String = r.hget("chat:user:erin", "password").await.unwrap();
    assert_ne!(changed, hash);
    let (ok, said) = sys.account(&four, &["add", "bo"], "abc").await;
    assert!(!ok && said.contains("at least 4 characters"), "{said}");
}

#[tokio::test]
async fn invalid_configuration_exits_64_before_binding() {
    let sys = System::start_with(NOTHING, |_| {}).await;
    for role in [Role::Edge, Role::Auth, Role::Router] {
        let status = sys
            .command(role)
            .env("CHAT_PARTITIONS", "0")
            .status()
            .await
            .unwrap();
        assert_eq!(status.code(), Some(64), "{role:?}");
    }
}

#[tokio::test]
async fn a_router_killed_mid_load_loses_and_repeats_nothing() {
    let mut sys = System::start_with(Shape::default(), |c| c.edge.lines_per_sec = 0).await; // alice floods
    sys.add_users(&["alice", "bob"]).await;
    // A second router process shares the partitions with the first.
    sys.add(Role::Router).await;
    let mut alice = ChatClient::start(&sys, 0, "alice");
    let mut bob = ChatClient::start(&sys, 1, "bob");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    bob.until(|l| l == "OK LOGIN bob lobby").await;

    const N: usize = 300;
    for i in 0..N {
        alice.say(&format!("n {i}")).await;
        if i == N / 3 {
            // kill -9 the first router while lines are in flight.
            sys.signal(Role::Router, 0, "KILL");
        }
    }
    for i in 0..N {
        let line = bob.until(|l| l.starts_with("MSG ")).await;
        assert!(
            line.ends_with(&format!(" alice n {i}")),
            "expected n {i}, got {line}"
        );
    }
    // Nothing more: a duplicate would come before this marker.
    alice.say("/msg bob done").await;
    let next = bob
        .until(|l| l.starts_with("MSG ") || l.starts_with("DM "))
        .await;
    // (Sealed by alice's client, opened by bob's.)
    assert!(
        next.starts_with("DM ") && next.ends_with(" alice 🔒 done"),
        "{next}"
    );
    sys.exited(Role::Router, 0).await;
}

#[tokio::test]
async fn a_login_in_hand_of_an_auth_process_killed_is_taken_over() {
    let mut sys = System::start_with(Shape::default(), |c| {
        c.auth.claim_idle_ms = 500;
        c.edge.request_timeout_ms = 12000;
    })
    .await;
    // A slow hash, so that the login is in hand when the process dies.
    let mut r = sys.redis.conn().await;
    let keys = shared::keys::Keys::new("chat:");
    auth_svc::accounts::add(&mut r, &keys, "alice", "alice-pw", 12)
        .await
        .unwrap();
    let mut alice = ChatClient::start(&sys, 0, "alice");
    eventually("auth-svc has read the login", || {
        let mut r = r.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg("chat:req:auth")
                .arg("auth")
                .query_async(&mut r)
                .await
                .unwrap();
            matches!(pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(1)))
        }
    })
    .await;
    sys.kill(Role::Auth, 0).await;
    sys.add(Role::Auth).await;
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    let sessions: u64 = r.get("chat:seq:sid").await.unwrap();
    assert_eq!(sessions, 1, "applied once");
}

#[tokio::test]
async fn services_stop_on_sigterm_even_when_nobody_reads_their_logs() {
    // Started here, not by the system, for their logs to go to a pipe.
    let sys = System::start_with(NOTHING, |_| {}).await;
    let port = free_port();
    let mut children = Vec::new();
    for role in [Role::Edge, Role::Auth, Role::Router] {
        let mut child = sys
            .command(role)
            .env("CHAT_EDGE__LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Nobody reads the logs: the pipe's read end is closed at once.
        drop(child.stderr.take());
        children.push((role, child));
    }
    eventually("the edge listens", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    // auth-svc made its group, router-svc holds a lease: both are past
    // setting up their signal handlers.
    let r = sys.redis.conn().await;
    eventually("auth-svc and router-svc run", || {
        let mut r = r.clone();
        async move {
            let n: u32 = redis::cmd("EXISTS")
                .arg("chat:req:auth")
                .arg("chat:router:lease:0")
                .query_async(&mut r)
                .await
                .unwrap();
            n == 2
        }
    })
    .await;
    for (role, child) in &mut children {
        e2e::signal(child.id().unwrap(), "TERM");
        let status = tokio::time::timeout(e2e::WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{role:?} ignored SIGTERM with its log pipe closed"))
            .unwrap();
        assert!(status.success(), "{role:?}: {status}");
    }
}

#[tokio::test]
async fn an_edge_serves_its_clients_on_the_threads_edge_threads_asks_for() {
    let mut sys = System::start_with(Shape::new(0, 1, 1), |_| {}).await;
    let one = sys
        .add_with(Role::Edge, &[("CHAT_EDGE__THREADS", "1")])
        .await;
    let four = sys
        .add_with(Role::Edge, &[("CHAT_EDGE__THREADS", "4")])
        .await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(one, "alice").await;
    let mut bob = sys.login(four, "bob").await;
    alice.send("across the edges").await;
    bob.until_line(|l| matches!(l, ServerLine::Msg { from, text, .. } if from == "alice" && text == "across the edges"))
        .await;
    bob.send("and back").await;
    alice
        .until_line(|l| matches!(l, ServerLine::Msg { from, text, .. } if from == "bob" && text == "and back"))
        .await;
    // One thread: the main thread alone (as the router's). Four: the main
    // thread and four workers.
    let (single, several) = (
        threads(sys.pid(Role::Edge, one)),
        threads(sys.pid(Role::Edge, four)),
    );
    assert_eq!(single, 1, "edge.threads = 1 runs {single} threads");
    assert!(several >= 5, "edge.threads = 4 runs {several} threads");
}
