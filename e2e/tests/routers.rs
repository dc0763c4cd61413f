//! Router instances failing: a crash, and a router that lost its lease
//! with requests in hand. Nothing accepted is lost, duplicated or reordered.

use e2e::{threads, Client, Role, Shape, System};
use redis::AsyncCommands;
use shared::envelope::{Op, Request};
use shared::keys::{partition_of, Keys};
use shared::line::ServerLine;

/// The `<i>` of each `n <i>` that `sender` said in the lobby.
fn numbers(lines: &[ServerLine], sender: &str) -> Vec<usize> {
    lines
        .iter()
        .filter_map(|l| match l {
            ServerLine::Msg {
                room, from, text, ..
            } if room == "lobby" && from == sender => text.strip_prefix("n "),
            _ => None,
        })
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The next `n` room lines.
async fn collect(c: &mut Client, n: usize) -> Vec<ServerLine> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(c.msg().await);
    }
    out
}

#[tokio::test]
async fn a_crashed_router_is_taken_over_without_loss_duplicates_or_reordering() {
    let shape = Shape::new(2, 0, 1);
    let mut sys = System::start_with(shape, |c| c.router.lease_ms = 900).await;
    sys.add_users(&["alice", "bob"]).await;
    sys.add(Role::Router).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;

    const N: usize = 300;
    for i in 0..N {
        if i == 100 {
            sys.kill(Role::Router, 0).await;
            sys.add(Role::Router).await;
        }
        alice.send(&format!("n {i}")).await;
    }
    let got = numbers(&collect(&mut bob, N).await, "alice");
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    let echoed = numbers(&collect(&mut alice, N).await, "alice");
    assert_eq!(echoed, (0..N).collect::<Vec<_>>());
    // Nothing more arrives: the next line answers the next command.
    bob.send("/ping").await;
    bob.expect("OK PING").await;
}

/// A router read requests, then lost its lease before applying them (a long
/// pause). The new owner must apply them, in order, before anything newer.
#[tokio::test]
async fn requests_left_by_a_router_that_lost_its_lease_go_first() {
    let shape = Shape::new(2, 0, 1);
    let mut sys = System::start_with(shape, |_| {}).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;

    // The router owns alice's partition and waits for requests.
    sys.add(Role::Router).await;
    let mut r = sys.redis.conn().await;
    let keys = Keys::new("chat:");
    let partition = partition_of("alice", sys.cfg.partitions);
    let stream = keys.router_requests(partition);
    e2e::eventually("the router owns alice's partition", || {
        let mut r = r.clone();
        let lease = keys.router_lease(partition);
        async move { r.get::<_, Option<String>>(lease).await.unwrap().as_deref() == Some("router-0") }
    })
    .await;

    // Requests of alice, read (atomically, before the router can) by a
    // router ("ghost") that has lost its lease and never comes back.
    let sid: String = r.hget("chat:session:alice", "sid").await.unwrap();
    let conn: String = r.hget("chat:session:alice", "conn").await.unwrap();
    let mut tx = redis::pipe();
    tx.atomic();
    for i in 0..3 {
        let req = Request {
            edge: "edge-1".into(),
            conn: conn.parse().unwrap(),
            rid: 0,
            user: "alice".into(),
            sid: sid.clone(),
            op: Op::Say {
                text: format!("n {i}"),
            },
        };
        shared::consumer::add_request(&mut tx, &stream, 1000, &req);
    }
    tx.cmd("XREADGROUP")
        .arg("GROUP")
        .arg("router")
        .arg("ghost")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .ignore();
    tx.query_async::<()>(&mut r).await.unwrap();

    // alice goes on talking through her edge: her old requests come first.
    for i in 3..6 {
        alice.send(&format!("n {i}")).await;
    }
    let got = numbers(&collect(&mut bob, 6).await, "alice");
    assert_eq!(got, (0..6).collect::<Vec<_>>());
    // Acknowledged too: just after the lines are published, so waited for.
    e2e::eventually("every request is acknowledged", || {
        let mut r = r.clone();
        let stream = stream.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(&stream)
                .arg("router")
                .query_async(&mut r)
                .await
                .unwrap();
            match pending {
                redis::Value::Array(v) => v[0] == redis::Value::Int(0),
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn the_router_routes_on_one_thread_and_the_edges_on_several() {
    let sys = System::start().await;
    sys.add_user("alice").await;
    let mut c = sys.connect(0).await;
    c.send("LOGIN alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
    c.send("hi").await;
    let line = c.expect_prefix("MSG lobby ").await;
    assert!(line.ends_with(" alice hi"), "{line}");
    // The router's loop is one task of round trips: worker threads would
    // only wake each other (docs/benchmarks.md).
    let router = threads(sys.pid(Role::Router, 0));
    assert_eq!(router, 1, "the router's threads");
    assert!(threads(sys.pid(Role::Edge, 0)) > 1, "the edge's threads");
}
