//! Surviving a Redis restart: clients stay connected, get `ERR unavailable`
//! while Redis is down, and normal service when it is back.

use e2e::{Role, System};
use shared::line::ServerLine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_ride_out_a_redis_restart_without_reconnecting() {
    let mut sys =
        System::start_with(Default::default(), |c| c.edge.request_timeout_ms = 1000).await;
    let admin = sys.admin(Role::Router, 0);
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;
    bob.ask("/join dev").await;
    alice.ask("/join dev").await;
    bob.ask("/subscribe alice").await;

    assert_eq!(e2e::http_get(admin, "/healthz").await, (200, "ok\n".into()));
    sys.redis.stop().await;
    assert_eq!(
        e2e::http_get(admin, "/healthz").await.0,
        503,
        "not ready without Redis"
    );
    alice.send("while redis is down").await;
    assert!(alice.line().await.starts_with("ERR unavailable "));
    assert!(alice.ask("/who").await.starts_with("ERR unavailable "));
    assert_eq!(alice.ask("/ping").await, "OK PING", "the connection stays");

    sys.redis.start_again().await;
    // Service comes back by itself, on the same connections.
    let deadline = tokio::time::Instant::now() + e2e::WAIT;
    loop {
        let reply = alice.command("/who").await;
        if reply.last().is_some_and(|l| l == "OK WHO dev 2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no service after the restart: {reply:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    alice.send("back").await;
    let echo = alice.msg().await;
    assert!(
        matches!(&echo, ServerLine::Msg { from, text, .. } if from == "alice" && text == "back"),
        "{echo}"
    );
    assert_eq!(bob.msg().await, echo);
    let ok = alice.ask("/publish and published").await;
    assert!(
        matches!(e2e::parse(&ok), ServerLine::OkPublish { online: 1, .. }),
        "{ok}"
    );
    let publication = bob
        .until_line(|l| matches!(l, ServerLine::Pub { .. }))
        .await;
    assert!(
        matches!(&publication, ServerLine::Pub { from, text, .. } if from == "alice" && text == "and published"),
        "{publication}"
    );
    assert_eq!(e2e::http_get(admin, "/healthz").await.0, 200);
    let (_, metrics) = e2e::http_get(admin, "/metrics").await;
    assert!(
        metrics.contains("chat_router_partitions_owned 16"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_edge_taken_for_dead_closes_its_connections() {
    // Heartbeats 20 s apart: the test's own "death" is not undone first.
    let sys = System::start_with(Default::default(), |c| c.edge.dead_after_ms = 60_000).await;
    sys.add_user("alice").await;
    let mut alice = sys.login(0, "alice").await;
    let mut r = sys.redis.conn().await;
    let _: () = redis::AsyncCommands::zadd(&mut r, "chat:edges", "edge-1", 0)
        .await
        .unwrap();
    // The reaper ends the session, and the edge, alive after all, is told.
    assert_eq!(alice.line().await, "BYE server-shutdown");
    alice.closed().await;
    let gone: bool = redis::AsyncCommands::exists(&mut r, "chat:session:alice")
        .await
        .unwrap();
    assert!(!gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_lost_with_redis_close_their_connections() {
    let mut sys = System::start().await;
    sys.add_user("alice").await;
    let mut alice = sys.login(0, "alice").await;
    sys.redis.stop().await;
    sys.redis.forget_data();
    sys.redis.start_again().await;
    // Redis came back without the session: the edge, reading it back,
    // closes the connection instead of keeping a session nobody has.
    assert_eq!(
        alice.until(|l| l.starts_with("BYE ")).await,
        "BYE server-shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_longer_than_the_edge_timeout_logs_nobody_out() {
    let mut sys = System::start_with(Default::default(), |c| {
        c.edge.request_timeout_ms = 500;
        c.edge.dead_after_ms = 1500;
    })
    .await;
    sys.add_user("alice").await;
    let mut alice = sys.login(0, "alice").await;
    sys.redis.stop().await;
    // Down for twice the time after which an edge counts as dead.
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    sys.redis.start_again().await;
    let deadline = tokio::time::Instant::now() + e2e::WAIT;
    loop {
        let reply = alice.command("/who").await;
        assert!(!reply.iter().any(|l| l.starts_with("BYE")), "{reply:?}");
        if reply.last().is_some_and(|l| l == "OK WHO lobby 1") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{reply:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The edge beat again as soon as it was back: it is not taken for dead.
    let mut r = sys.redis.conn().await;
    let until: f64 = redis::AsyncCommands::zscore(&mut r, "chat:edges", "edge-1")
        .await
        .unwrap();
    assert!(until as u64 > shared::now_ms(), "the beat holds");
}
