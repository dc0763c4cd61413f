//! The whole system on a Redis Cluster of its own (3 masters): edges, auth-svc and routers on `redis+cluster://`, the core scenarios as on one Redis.

use e2e::{Role, Setup, Shape, System};

/// A system of `shape` on a cluster of 3 masters (with `replicas` each).
async fn on_cluster(shape: Shape, replicas: usize) -> System {
    let mut setup = Setup::test(shape);
    setup.cluster = Some((3, replicas));
    System::launch(setup).await
}

#[tokio::test]
async fn rooms_history_and_listings_across_two_edges() {
    let sys = on_cluster(Shape::default(), 0).await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let mut alice = sys.login(0, "alice").await.with_sys();
    let mut bob = sys.login(1, "bob").await.with_sys();
    let mut carol = sys.login(0, "carol").await;

    assert_eq!(alice.ask("/join dev").await, "OK JOIN dev");
    alice.expect("SYS dev alice joined").await;
    assert_eq!(bob.ask("/join dev").await, "OK JOIN dev");
    bob.expect("SYS dev bob joined").await;
    alice.expect("SYS dev bob joined").await;

    for i in 0..10 {
        bob.send(&format!("line {i}")).await;
    }
    for i in 0..10 {
        let line = alice.line().await;
        assert!(
            line.starts_with("MSG dev ") && line.ends_with(&format!(" bob line {i}")),
            "{line}"
        );
        assert_eq!(bob.line().await, line);
    }
    carol.send("lobby only").await;
    assert!(carol.line().await.ends_with(" carol lobby only"));

    let history = alice.command("/history 3").await;
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(history[2].starts_with("HIST dev ") && history[2].ends_with(" bob line 9"));
    assert_eq!(history[3], "OK HISTORY 3");
    assert_eq!(
        alice.command("/who").await,
        ["USER alice", "USER bob", "OK WHO dev 2"]
    );
    assert_eq!(
        carol.command("/rooms").await,
        ["ROOM dev 2", "ROOM lobby 1", "OK ROOMS 2"]
    );
    assert_eq!(alice.ask("/leave").await, "OK LEAVE dev");
    bob.expect("SYS dev alice left").await;
}

#[tokio::test]
async fn offline_messages_wait_and_force_logout_closes_the_old_connection() {
    let sys = on_cluster(Shape::default(), 0).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let reply = alice.ask("/msg bob are you there").await;
    assert!(
        reply.starts_with("OK MSG bob ") && reply.ends_with(" queued"),
        "{reply}"
    );

    // bob logs in: the queued message follows OK LOGIN.
    let mut bob = sys.login(1, "bob").await;
    let dm = bob.line().await;
    assert!(
        dm.starts_with("DM ") && dm.ends_with(" alice are you there"),
        "{dm}"
    );
    let reply = alice.ask("/msg bob now").await;
    assert!(reply.starts_with("OK MSG bob ") && !reply.ends_with(" queued"));
    assert!(bob.line().await.ends_with(" alice now"));

    // bob again, on the other edge: the first connection is closed.
    let mut again = sys.login(0, "bob").await;
    bob.expect("BYE logged-in-elsewhere").await;
    bob.closed().await;
    let reply = alice.ask("/msg bob which one").await;
    assert!(!reply.ends_with(" queued"), "{reply}");
    assert!(again.line().await.ends_with(" alice which one"));
    assert_eq!(
        again.command("/who lobby").await.last().unwrap(),
        "OK WHO lobby 2"
    );
}

#[tokio::test]
async fn two_logins_at_once_leave_one_session() {
    let sys = on_cluster(Shape::default(), 0).await;
    sys.add_users(&["alice"]).await;
    let (mut a, mut b) = tokio::join!(sys.connect(0), sys.connect(1));
    let login = format!("LOGIN alice {}", e2e::password("alice"));
    tokio::join!(a.send(&login), b.send(&login));
    let (first, second) = tokio::join!(a.line(), b.line());
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("OK LOGIN alice lobby", "OK LOGIN alice lobby")
    );
    // One of them was replaced: it is told so and closed; the other lives.
    let (bye, mut live) = tokio::select! {
        l = a.next() => (l, b),
        l = b.next() => (l, a),
    };
    assert_eq!(bye.as_deref(), Some("BYE logged-in-elsewhere"));
    assert_eq!(live.ask("/ping").await, "OK PING");
    let sessions: u64 = redis::cmd("SCARD")
        .arg(sys.keys().room("lobby"))
        .query_async(&mut sys.conn().await)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "alice is in the lobby once");
}

#[tokio::test]
async fn a_publishers_lines_keep_their_order_with_two_routers_and_one_killed() {
    let shape = Shape {
        routers: 2,
        ..Shape::default()
    };
    let mut sys = on_cluster(shape, 0).await;
    sys.routers_own_partitions(2).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;
    alice.ask("/join dev").await;
    bob.ask("/join dev").await;
    for i in 0..100 {
        if i == 40 {
            sys.kill(Role::Router, 0).await;
        }
        bob.send(&format!("n{i}")).await;
    }
    for i in 0..100 {
        let line = alice.line().await;
        assert!(line.ends_with(&format!(" bob n{i}")), "line {i}: {line}");
        assert_eq!(bob.line().await, line, "bob's own echo");
    }
    // Subscriptions and publications go on with the router left.
    assert_eq!(alice.ask("/subscribe bob").await, "OK SUBSCRIBE bob");
    let ok = bob.ask("/publish news").await;
    assert!(ok.starts_with("OK PUBLISH ") && ok.ends_with(" 1"), "{ok}");
    assert!(alice.line().await.ends_with(" bob news"));
}

#[tokio::test]
async fn a_masters_failover_is_followed_and_nothing_replicated_before_it_is_lost() {
    let sys = on_cluster(Shape::default(), 1).await;
    let cluster = sys.cluster.as_ref().unwrap();
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;
    alice.ask("/join dev").await;
    bob.ask("/join dev").await;
    for i in 0..20 {
        bob.send(&format!("before {i}")).await;
    }
    for i in 0..20 {
        assert!(alice.line().await.ends_with(&format!(" bob before {i}")));
        bob.line().await;
    }
    // The room's master has sent all of it to its replica (`WAIT 1`), then
    // dies without a word.
    let key = sys.keys().history("dev");
    let master = cluster.master_of(&key).await.unwrap();
    let node = &cluster.nodes[master];
    e2e::eventually("the room is on its replica", || async {
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(200);
        wait.query_async(&mut node.plain().await).await == Ok(1)
    })
    .await;
    cluster.kill(master);
    let killed = std::time::Instant::now();
    // bob says a numbered line every 100 ms until alice sees one: lines
    // said while the room had no master may be lost (not acknowledged to
    // anyone), those alice sees come in order.
    let mut seen = Vec::new();
    let mut n = 0;
    let deadline = killed + e2e::WAIT * 2;
    while seen.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "service resumed in time"
        );
        bob.send(&format!("after {n}")).await;
        n += 1;
        if let Ok(Some(line)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), alice.next()).await
        {
            seen.push(line);
        }
    }
    eprintln!(
        "a room line went through again {:?} after the master's kill",
        killed.elapsed()
    );
    let history = alice.command("/history 100").await;
    // (Lines said just before may still come live before the listing.)
    let texts: Vec<&str> = history
        .iter()
        .filter(|l| l.starts_with("HIST "))
        .filter_map(|l| l.split_once(" bob ").map(|(_, t)| t))
        .collect();
    let before: Vec<String> = (0..20).map(|i| format!("before {i}")).collect();
    assert_eq!(
        &texts[..20],
        &before[..],
        "every line replicated before the kill: {history:?}"
    );
    let after: Vec<usize> = texts[20..]
        .iter()
        .map(|t| t.strip_prefix("after ").unwrap().parse().unwrap())
        .collect();
    assert!(after.windows(2).all(|w| w[0] < w[1]), "in order: {after:?}");
    assert!(seen[0].contains(" bob after "), "{seen:?}");
}

#[tokio::test]
async fn accounts_are_listed_and_deleted_on_a_cluster() {
    let sys = on_cluster(Shape::default(), 0).await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;
    assert_eq!(alice.ask("/subscribe bob").await, "OK SUBSCRIBE bob");
    assert_eq!(bob.ask("/subscribe carol").await, "OK SUBSCRIBE carol");
    let keys = sys.keys();
    let list = auth_svc::accounts::list(&mut sys.conn().await, &keys)
        .await
        .unwrap();
    assert_eq!(list, ["alice", "bob", "carol"], "every master's accounts");

    let (ok, said) = sys.account(&[], &["del", "bob"], "").await;
    assert!(ok, "{said}");
    let list = auth_svc::accounts::list(&mut sys.conn().await, &keys)
        .await
        .unwrap();
    assert_eq!(list, ["alice", "carol"]);
    assert_eq!(
        alice.command("/subscriptions").await,
        ["OK SUBSCRIPTIONS 0"]
    );
    let subscribers: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.subscribers("carol"))
        .query_async(&mut sys.conn().await)
        .await
        .unwrap();
    assert!(subscribers.is_empty(), "{subscribers:?}");
    let mut again = sys.connect(0).await;
    again
        .send(&format!("LOGIN bob {}", e2e::password("bob")))
        .await;
    assert!(again.line().await.starts_with("ERR bad-credentials"));
    let (ok, said) = sys.account(&[], &["del", "bob"], "").await;
    assert!(!ok && said.contains("bob"), "{said}");
}

#[tokio::test]
async fn lines_of_two_publishers_on_two_routers_all_arrive_in_each_ones_order() {
    let shape = Shape {
        routers: 2,
        ..Shape::default()
    };
    let sys = on_cluster(shape, 0).await;
    sys.routers_own_partitions(2).await;
    // Two senders whose partitions two different routers own.
    let (keys, partitions) = (sys.keys(), sys.cfg.partitions);
    let mut conn = sys.conn().await;
    let mut owners = Vec::new();
    for i in 0..32 {
        let user = format!("u{i}");
        let lease = keys.router_lease(shared::keys::partition_of(&user, partitions));
        let owner: String = redis::cmd("GET")
            .arg(lease)
            .query_async(&mut conn)
            .await
            .unwrap();
        owners.push((user, owner));
    }
    let (a, first) = owners[0].clone();
    let (b, _) = owners.iter().find(|(_, o)| *o != first).unwrap().clone();
    sys.add_users(&[&a, &b, "carol"]).await;
    let mut carol = sys.login(0, "carol").await;
    let mut sa = sys.login(0, &a).await;
    let mut sb = sys.login(1, &b).await;
    for c in [&mut carol, &mut sa, &mut sb] {
        assert_eq!(c.ask("/join dev").await, "OK JOIN dev");
    }
    let n = 300;
    tokio::join!(
        async {
            for i in 0..n {
                sa.send(&format!("a{i}")).await;
            }
        },
        async {
            for i in 0..n {
                sb.send(&format!("b{i}")).await;
            }
        }
    );
    let (mut next_a, mut next_b) = (0, 0);
    while next_a < n || next_b < n {
        let line = carol.line().await;
        let text = line.rsplit(' ').next().unwrap();
        let (who, k) = text.split_at(1);
        let k: usize = k.parse().unwrap();
        match who {
            "a" => {
                assert_eq!(k, next_a, "{a}'s lines in order, none missing: {line}");
                next_a += 1;
            }
            _ => {
                assert_eq!(k, next_b, "{b}'s lines in order, none missing: {line}");
                next_b += 1;
            }
        }
    }
}

#[tokio::test]
async fn subscribing_and_messaging_yourself_work_on_a_cluster() {
    // A user's steps at herself (her subscription's step at its target,
    // a private message's check and delivery) and her subscription's own
    // step land in one hash of marks: each keeps its own place in line.
    let sys = on_cluster(Shape::default(), 0).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    assert_eq!(alice.ask("/subscribe alice").await, "OK SUBSCRIBE alice");
    assert_eq!(
        alice.command("/subscriptions").await,
        ["SUB alice", "OK SUBSCRIPTIONS 1"]
    );
    assert_eq!(alice.ask("/subscribe bob").await, "OK SUBSCRIBE bob");
    let mut lines = alice.command("/msg alice note to self").await;
    if lines.len() == 1 {
        lines.push(alice.line().await); // the DM after the OK
    }
    lines.sort();
    assert!(
        lines[0].starts_with("DM ")
            && lines[0].ends_with(" alice note to self")
            && lines[1].starts_with("OK MSG alice "),
        "{lines:?}"
    );
    let mut subs = alice.command("/subscriptions").await;
    subs.sort();
    assert_eq!(subs, ["OK SUBSCRIPTIONS 2", "SUB alice", "SUB bob"]);
    // Her next request goes through too (nothing waits in line).
    assert_eq!(
        alice.ask("/unsubscribe alice").await,
        "OK UNSUBSCRIBE alice"
    );
}

#[tokio::test]
async fn a_login_decided_by_an_auth_svc_that_stopped_is_carried_out_when_it_is_back() {
    // auth-svc takes a login's user step (the session hash, the decision)
    // and stops before the steps after it: the session is half open, in
    // no edge's set. Whoever handles the request next carries it out,
    // even past the edge's wait, and the edge ends the session nobody
    // holds: the user is not locked out.
    let mut sys = on_cluster(Shape::default(), 0).await;
    sys.add_users(&["alice"]).await;
    sys.stop(Role::Auth, 0).await;
    let mut client = sys.connect(0).await;
    client
        .send(&format!("LOGIN alice {}", e2e::password("alice")))
        .await;
    client.expect_prefix("ERR unavailable").await;

    // The user step, as the stopped instance took it.
    let k = sys.keys();
    let mut conn = sys.conn().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(k.auth_requests())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let entry = &entries.ids[0];
    let req: shared::envelope::Request = serde_json::from_str(
        &entry
            .get::<String>(shared::envelope::REQUEST_FIELD)
            .unwrap(),
    )
    .unwrap();
    let keys = k.login_step("alice", &entry.id);
    let call = shared::scripts::Call::new("chat_c_login", &keys)
        .arg("alice")
        .arg(&req.edge)
        .arg(req.conn.to_string())
        .arg(req.rid.to_string())
        .arg("127.0.0.1:5000")
        .arg("reject")
        .arg(shared::now_ms() + 60_000);
    let call = call.arg("").arg("s-half").arg("").arg("").arg("lobby");
    let call = call.arg("").arg(0).arg("").arg("");
    let answer: Vec<String> = call.invoke(&mut conn).await.unwrap();
    assert_eq!(answer[0], "ok", "{answer:?}");

    sys.restart(Role::Auth, 0).await;
    sys.session_gone("alice").await;
    let mut alice = sys.login(1, "alice").await;
    assert_eq!(alice.ask("/ping").await, "OK PING");
}
