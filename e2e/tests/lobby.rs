//! Saying text in the lobby, across edges and routers.

use e2e::{Role, Shape, System};
use redis::AsyncCommands;
use shared::consumer::EntryId;
use shared::line::ServerLine;

/// A room line's (room, id, from, text).
fn parse_msg(line: ServerLine) -> (String, String, String, String) {
    match line {
        ServerLine::Msg {
            room,
            id,
            from,
            text,
        } => (room, id, from, text),
        other => panic!("not a room line: {other}"),
    }
}

fn entry_id(id: &str) -> EntryId {
    EntryId::parse(id).expect("id is <ms>-<seq>")
}

#[tokio::test]
async fn lobby_text_reaches_both_edges_and_echoes() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;

    let before = shared::now_ms();
    alice.send("hello bob, with  two spaces").await;
    let seen_by_bob = bob.parsed().await;
    let echo = alice.parsed().await;
    assert_eq!(seen_by_bob, echo);
    let (room, id, from, text) = parse_msg(echo);
    assert_eq!((room.as_str(), from.as_str()), ("lobby", "alice"));
    assert_eq!(text, "hello bob, with  two spaces");
    let ms = entry_id(&id).ms;
    assert!(
        ms + 5_000 >= before && ms <= shared::now_ms() + 5_000,
        "id {id} is a receive time"
    );

    bob.send("//me waves").await;
    let (_, id2, from, text) = parse_msg(alice.parsed().await);
    assert_eq!((from.as_str(), text.as_str()), ("bob", "/me waves"));
    assert!(entry_id(&id2) > entry_id(&id), "ids increase in send order");
    let (_, _, from, _) = parse_msg(bob.parsed().await);
    assert_eq!(from, "bob");
}

#[tokio::test]
async fn two_routers_share_partitions_and_keep_each_senders_order() {
    let sys = System::start_with(Shape::new(2, 2, 2), |_| {}).await;
    let users = ["alice", "bob", "carol", "dave"];
    sys.add_users(&users).await;
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(sys.login(i % 2, u).await);
    }
    sys.routers_own_partitions(2).await;

    const N: usize = 200;
    for i in 0..N {
        for c in clients.iter_mut() {
            c.send(&format!("n {i}")).await;
        }
    }
    for c in clients.iter_mut() {
        let mut next = std::collections::HashMap::new();
        for _ in 0..N * users.len() {
            let (_, _, from, text) = parse_msg(c.parsed().await);
            let n: usize = text.strip_prefix("n ").unwrap().parse().unwrap();
            let want = next.entry(from.clone()).or_insert(0usize);
            assert_eq!(n, *want, "message of {from} out of order");
            *want += 1;
        }
        assert!(next.values().all(|v| *v == N));
    }
}

/// A message routed after a later one (here planted in the history) takes
/// the next id in that later id's millisecond: as close to the time the
/// edge received it as order allows, not the router's clock.
#[tokio::test]
async fn a_message_behind_a_later_history_id_keeps_that_ids_millisecond() {
    let mut sys = System::start_with(Shape::new(1, 0, 1), |_| {}).await;
    sys.add_user("alice").await;
    sys.add(Role::Router).await;
    let mut alice = sys.login(0, "alice").await;
    sys.kill(Role::Router, 0).await;

    alice.send("routed late").await;
    // The edge stamps the request on arrival; read that stamp back.
    let keys = sys.keys();
    let requests = keys.router_requests(shared::keys::partition_of("alice", sys.cfg.partitions));
    let r = sys.redis.conn().await;
    let top = |mut r: shared::store::Conn, requests: String| async move {
        let top: redis::streams::StreamRangeReply =
            r.xrevrange_count(&requests, "+", "-", 1).await.unwrap();
        top.ids.into_iter().find(|e| {
            e.get::<String>("req")
                .is_some_and(|q| q.contains("routed late"))
        })
    };
    e2e::eventually("the edge queued the message", || {
        let q = top(r.clone(), requests.clone());
        async move { q.await.is_some() }
    })
    .await;
    let received = entry_id(&top(r.clone(), requests.clone()).await.unwrap().id).ms;
    // A later message of another partition, routed first.
    let later = received + 1;
    let _: String = r
        .clone()
        .xadd(
            keys.history("lobby"),
            format!("{later}-0"),
            &[("from", "bob"), ("text", "first")],
        )
        .await
        .unwrap();

    sys.add(Role::Router).await; // takes over once the first one's lease runs out
    let (_, id, from, text) = parse_msg(alice.msg().await);
    assert_eq!((from.as_str(), text.as_str()), ("alice", "routed late"));
    assert_eq!(id, format!("{later}-1"));
}
