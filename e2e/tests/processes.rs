//! The real binaries as processes, driven as a user would: certificates,
//! accounts, the services, and the `chat` client with piped input.

use e2e::procs::{account_command, service, signal, ChatClient, Stack};
use e2e::{binary, eventually, free_port, TestRedis, WAIT};
use redis::AsyncCommands;
use std::process::Stdio;

#[tokio::test]
async fn binaries_chat_across_two_edges_and_shut_down_cleanly() {
    let redis = TestRedis::start().await;
    let mut st = Stack::start(&redis, &["alice", "bob"], &[]).await;
    let mut r = redis.conn().await;
    let hash: String = r.hget("chat:user:alice", "password").await.unwrap();
    assert!(hash.starts_with("$2"), "stored as a bcrypt hash");
    assert!(!hash.contains("alice-pw"));
    let (ca, ports) = (st.ca.clone(), st.ports);
    let mut alice = ChatClient::start(ports[0], &ca, "alice");
    let mut bob = ChatClient::start(ports[1], &ca, "bob");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    bob.until(|l| l == "OK LOGIN bob lobby").await;

    // Each service is ready and counts what it does.
    for port in st.admin {
        assert_eq!(e2e::http_get(port, "/healthz").await, (200, "ok\n".into()));
    }
    let (_, auth) = e2e::http_get(st.admin[0], "/metrics").await;
    assert!(
        auth.contains("chat_auth_logins_total{result=\"ok\"} 2"),
        "{auth}"
    );
    let (_, edge) = e2e::http_get(st.admin[2], "/metrics").await;
    assert!(edge.contains("chat_edge_connections 1"), "{edge}");
    assert!(
        edge.contains("# TYPE chat_edge_request_seconds histogram"),
        "{edge}"
    );

    alice.say("hello from alice").await;
    let got = bob.until(|l| l.starts_with("MSG ")).await;
    assert!(
        got.starts_with("MSG lobby ") && got.ends_with(" alice hello from alice"),
        "{got}"
    );
    bob.say("hi alice").await;
    let got = alice.until(|l| l.ends_with(" bob hi alice")).await;
    assert!(got.starts_with("MSG lobby "), "{got}");

    // End of input logs bob out.
    bob.stdin = None;
    bob.until(|l| l == "BYE quit").await;
    bob.exits_ok().await;

    // SIGTERM: the edge says goodbye, ends the session and exits.
    signal(&st.edges[0], "-TERM");
    alice.until(|l| l == "BYE server-shutdown").await;
    alice.exits_ok().await;
    let status = tokio::time::timeout(WAIT, st.edges[0].wait())
        .await
        .unwrap()
        .unwrap();
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
    for service in &mut st.services {
        signal(service, "-TERM");
        let status = tokio::time::timeout(WAIT, service.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
    let leases: Vec<String> = r.keys("chat:router:lease:*").await.unwrap();
    assert!(
        leases.is_empty(),
        "router-svc handed its leases back: {leases:?}"
    );
}

#[tokio::test]
async fn an_edge_killed_leaves_no_ghosts_and_its_users_log_in_again_at_once() {
    let redis = TestRedis::start().await;
    let envs = [
        ("CHAT_EDGE__DEAD_AFTER_MS", "1500".to_string()),
        ("CHAT_EDGE__REQUEST_TIMEOUT_MS", "1000".to_string()),
    ];
    let mut st = Stack::start(&redis, &["alice", "bob", "carol"], &envs).await;
    let (ca, ports) = (st.ca.clone(), st.ports);
    let mut alice = ChatClient::start(ports[0], &ca, "alice");
    let mut carol = ChatClient::start(ports[0], &ca, "carol");
    let mut bob = ChatClient::start(ports[1], &ca, "bob");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    carol.until(|l| l == "OK LOGIN carol lobby").await;
    bob.until(|l| l == "OK LOGIN bob lobby").await;

    signal(&st.edges[0], "-KILL");
    let _ = st.edges[0].wait().await;
    // alice comes back on the other edge at once: her old session, on a
    // dead edge, is replaced without waiting for anything.
    let mut alice = ChatClient::start(ports[1], &ca, "alice");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    // carol does not come back: the reaper ends her session.
    bob.until(|l| l == "SYS lobby carol left").await;
    let mut r = redis.conn().await;
    assert!(!r.exists::<_, bool>("chat:session:carol").await.unwrap());
    let members: Vec<String> = r.smembers("chat:room:lobby").await.unwrap();
    assert!(!members.contains(&"carol".to_string()), "{members:?}");
    let session_edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(session_edge, "edge-2");
    drop(carol);
}

#[tokio::test]
async fn account_commands_refuse_passwords_shorter_than_min_password() {
    let redis = TestRedis::start().await;
    let mut r = redis.conn().await;
    let defaults: &[(&str, String)] = &[];
    let (ok, said) = account_command(&redis, defaults, &["add", "erin"], "erin-pw").await;
    assert!(!ok, "a 7-character password refused by default");
    assert!(
        said.contains("auth-svc: passwords are at least 8 characters"),
        "{said}"
    );
    assert!(!r.exists::<_, bool>("chat:user:erin").await.unwrap());
    let (ok, said) = account_command(&redis, defaults, &["add", "erin"], "erin-pass").await;
    assert!(ok, "{said}");
    let hash: String = r.hget("chat:user:erin", "password").await.unwrap();

    let (ok, said) = account_command(&redis, defaults, &["passwd", "erin"], "short").await;
    assert!(!ok, "passwd refuses it too");
    assert!(said.contains("at least 8 characters"), "{said}");
    let kept: String = r.hget("chat:user:erin", "password").await.unwrap();
    assert_eq!(kept, hash, "the password is unchanged");

    // The limit is the setting's.
    let four = [("CHAT_AUTH__MIN_PASSWORD", "4".to_string())];
    let (ok, said) = account_command(&redis, &four, &["passwd", "erin"], "four").await;
    assert!(ok, "{said}");
    let changed: String = r.hget("chat:user:erin", "password").await.unwrap();
    assert_ne!(changed, hash);
    let (ok, said) = account_command(&redis, &four, &["add", "bo"], "abc").await;
    assert!(!ok && said.contains("at least 4 characters"), "{said}");
}

#[tokio::test]
async fn invalid_configuration_exits_64_before_binding() {
    let redis = TestRedis::start().await;
    for name in ["edge-svc", "auth-svc", "router-svc"] {
        let status = service(name, &redis, &[("CHAT_PARTITIONS", "0".into())])
            .status()
            .await
            .unwrap();
        assert_eq!(status.code(), Some(64), "{name}");
    }
}

#[tokio::test]
async fn a_router_killed_mid_load_loses_and_repeats_nothing() {
    let redis = TestRedis::start().await;
    let envs = [("CHAT_EDGE__LINES_PER_SEC", "0".to_string())]; // alice floods
    let mut st = Stack::start(&redis, &["alice", "bob"], &envs).await;
    // A second router process shares the partitions with the first.
    let admin = format!("127.0.0.1:{}", free_port());
    let _second = service(
        "router-svc",
        &redis,
        &[("CHAT_ROUTER__ADMIN_LISTEN", admin)],
    )
    .spawn()
    .unwrap();
    let (ca, ports) = (st.ca.clone(), st.ports);
    let mut alice = ChatClient::start(ports[0], &ca, "alice");
    let mut bob = ChatClient::start(ports[1], &ca, "bob");
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    bob.until(|l| l == "OK LOGIN bob lobby").await;

    const N: usize = 300;
    for i in 0..N {
        alice.say(&format!("n {i}")).await;
        if i == N / 3 {
            // kill -9 the first router while lines are in flight.
            signal(&st.services[1], "-KILL");
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
    assert!(
        next.starts_with("DM ") && next.ends_with(" alice done"),
        "{next}"
    );
    let _ = st.services[1].wait().await;
}

#[tokio::test]
async fn a_login_in_hand_of_an_auth_process_killed_is_taken_over() {
    let redis = TestRedis::start().await;
    let envs = [
        ("CHAT_AUTH__CLAIM_IDLE_MS", "500".to_string()),
        ("CHAT_EDGE__REQUEST_TIMEOUT_MS", "12000".to_string()),
    ];
    let mut st = Stack::start(&redis, &[], &envs).await;
    // A slow hash, so that the login is in hand when the process dies.
    let mut r = redis.conn().await;
    let keys = shared::keys::Keys::new("chat:");
    auth_svc::accounts::add(&mut r, &keys, "alice", "alice-pw", 12)
        .await
        .unwrap();
    let mut alice = ChatClient::start(st.ports[0], &st.ca, "alice");
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
    signal(&st.services[0], "-KILL");
    let _ = st.services[0].wait().await;
    let admin = format!("127.0.0.1:{}", free_port());
    let _second = service("auth-svc", &redis, &envs)
        .env("CHAT_AUTH__ADMIN_LISTEN", admin)
        .spawn()
        .unwrap();
    alice.until(|l| l == "OK LOGIN alice lobby").await;
    let sessions: u64 = r.get("chat:seq:sid").await.unwrap();
    assert_eq!(sessions, 1, "applied once");
}

#[tokio::test]
async fn services_stop_on_sigterm_even_when_nobody_reads_their_logs() {
    let redis = TestRedis::start().await;
    let dir = std::env::temp_dir().join(format!("chat-e2e-logs-{}", free_port()));
    let certs = dir.join("certs");
    let made = std::process::Command::new(binary("chat-certs"))
        .arg(&certs)
        .output()
        .unwrap();
    assert!(made.status.success());
    let port = free_port();
    let envs = [
        ("CHAT_EDGE__LISTEN", format!("127.0.0.1:{port}")),
        ("CHAT_EDGE__ADMIN_LISTEN", String::new()),
        ("CHAT_AUTH__ADMIN_LISTEN", String::new()),
        ("CHAT_ROUTER__ADMIN_LISTEN", String::new()),
        (
            "CHAT_EDGE__TLS_CERT",
            certs.join("server.pem").display().to_string(),
        ),
        (
            "CHAT_EDGE__TLS_KEY",
            certs.join("server-key.pem").display().to_string(),
        ),
        ("RUST_LOG", "info".into()),
    ];
    let mut children = Vec::new();
    for name in ["edge-svc", "auth-svc", "router-svc"] {
        let mut child = service(name, &redis, &envs)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Nobody reads the logs: the pipe's read end is closed at once.
        drop(child.stderr.take());
        children.push((name, child));
    }
    eventually("the edge listens", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    // auth-svc made its group, router-svc holds a lease: both are past
    // setting up their signal handlers.
    let r = redis.conn().await;
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
    for (name, child) in &mut children {
        signal(child, "-TERM");
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{name} ignored SIGTERM with its log pipe closed"))
            .unwrap();
        assert!(status.success(), "{name}: {status}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
