//! LOGIN, what is allowed before it, and the session in Redis.

use e2e::{eventually, Client, Role, Shape, System};
use redis::AsyncCommands;
use std::collections::HashMap;

#[tokio::test]
async fn right_password_logs_in_wrong_and_unknown_look_the_same() {
    let sys = System::start().await;
    sys.add_user("alice").await;

    let mut c = Client::connect(sys.edge(0), &sys.trust()).await.unwrap();
    c.expect("HELLO edge-1 chat/1").await;
    c.send("LOGIN alice wrong-pw").await;
    let wrong = c.expect_prefix("ERR bad-credentials").await;
    c.send("LOGIN nobody nobody-pw").await;
    let unknown = c.expect_prefix("ERR bad-credentials").await;
    assert_eq!(wrong, unknown, "an unknown user must not be told apart");
    c.send("login alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
    c.send("LOGIN alice alice-pw").await;
    c.expect_prefix("ERR already-authenticated").await;
}

#[tokio::test]
async fn only_login_help_ping_quit_before_login() {
    let sys = System::start().await;
    let mut c = sys.connect(0).await;
    for line in [
        "hello everyone",
        "/join dev",
        "/rooms",
        "/msg bob hi",
        "/nosuchcommand",
    ] {
        c.send(line).await;
        c.expect_prefix("ERR auth-required").await;
    }
    c.send("/ping").await;
    c.expect("OK PING").await;
    c.send("/help").await;
    let first = c.line().await;
    assert!(first.starts_with("INFO "), "{first}");
    c.until(|l| l == "OK HELP").await;
    c.send("LOGIN alice").await;
    c.expect_prefix("ERR bad-args").await;
    c.send("LOGIN al!ce pw").await;
    c.expect_prefix("ERR bad-name").await;
    c.send("/quit").await;
    c.expect("BYE quit").await;
    c.closed().await;
}

#[tokio::test]
async fn session_hash_and_lobby_set_follow_the_session() {
    let sys = System::start().await;
    sys.add_user("alice").await;
    let mut r = sys.redis.conn().await;

    // Ended by /quit.
    let mut c = sys.login(0, "alice").await;
    let session: HashMap<String, String> = r.hgetall("chat:session:alice").await.unwrap();
    assert_eq!(session["edge"], "edge-1");
    assert_eq!(session["room"], "lobby");
    for field in ["conn", "sid", "addr", "since"] {
        assert!(!session[field].is_empty(), "{field} missing");
    }
    assert!(r
        .sismember::<_, _, bool>("chat:room:lobby", "alice")
        .await
        .unwrap());
    assert!(r
        .sismember::<_, _, bool>("chat:rooms", "lobby")
        .await
        .unwrap());
    let first_sid = session["sid"].clone();
    c.send("/quit").await;
    c.expect("BYE quit").await;
    c.closed().await;
    assert!(!r.exists::<_, bool>("chat:session:alice").await.unwrap());
    assert!(!r
        .sismember::<_, _, bool>("chat:room:lobby", "alice")
        .await
        .unwrap());
    assert!(!r
        .sismember::<_, _, bool>("chat:rooms", "lobby")
        .await
        .unwrap());

    // Ended by dropping the connection; on the other edge this time.
    let c = sys.login(1, "alice").await;
    let session: HashMap<String, String> = r.hgetall("chat:session:alice").await.unwrap();
    assert_eq!(session["edge"], "edge-2");
    assert_ne!(session["sid"], first_sid, "session ids are unique");
    drop(c);
    eventually("the dropped session is gone", || {
        let mut r = r.clone();
        async move {
            !r.exists::<_, bool>("chat:session:alice").await.unwrap()
                && !r
                    .sismember::<_, _, bool>("chat:room:lobby", "alice")
                    .await
                    .unwrap()
        }
    })
    .await;
}

#[tokio::test]
async fn second_login_forces_the_first_out_by_default() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut bob = sys.login(1, "bob").await;
    let mut old = sys.login(0, "alice").await;
    assert_eq!(old.ask("/join dev").await, "OK JOIN dev");
    let mut new = sys.login(1, "alice").await;
    old.expect("BYE logged-in-elsewhere").await;
    old.closed().await;

    let mut r = sys.redis.conn().await;
    let edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(edge, "edge-2");
    let room: String = r.hget("chat:session:alice", "room").await.unwrap();
    assert_eq!(room, "lobby", "the new session starts in the lobby");
    assert!(
        !r.exists::<_, bool>("chat:room:dev").await.unwrap(),
        "the old session's membership went with it"
    );
    // The old connection's cleanup must not remove the new session.
    new.send("still here").await;
    new.until(|l| l.ends_with(" alice still here")).await;
    bob.until(|l| l.ends_with(" alice still here")).await;
    assert!(r.exists::<_, bool>("chat:session:alice").await.unwrap());
    assert!(r
        .sismember::<_, _, bool>("chat:room:lobby", "alice")
        .await
        .unwrap());
    assert_no_password_in_redis(&mut r, &e2e::password("alice")).await;
}

/// The keys whose value (a string, a hash's fields and values, or a
/// stream's entries) contains `needle`.
async fn keys_holding(r: &mut redis::aio::ConnectionManager, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let keys: Vec<String> = r.keys("*").await.unwrap();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(r).await.unwrap();
        let text = match kind.as_str() {
            "string" => r.get::<_, String>(&key).await.unwrap(),
            "hash" => r.hgetall::<_, Vec<String>>(&key).await.unwrap().join(" "),
            "stream" => {
                let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(r)
                    .await
                    .unwrap();
                format!("{entries:?}")
            }
            _ => continue,
        };
        if text.contains(needle) {
            found.push(key);
        }
    }
    found
}

async fn assert_no_password_in_redis(r: &mut redis::aio::ConnectionManager, password: &str) {
    eventually("the login requests are deleted", || {
        let mut r = r.clone();
        async move { r.xlen::<_, u64>("chat:req:auth").await.unwrap() == 0 }
    })
    .await;
    assert_eq!(keys_holding(r, password).await, Vec::<String>::new());
    // The search does see into values: the bcrypt hash is found.
    assert!(keys_holding(r, "$2")
        .await
        .contains(&"chat:user:alice".to_string()));
}

#[tokio::test]
async fn reject_policy_keeps_the_first_session() {
    let sys = System::start_with(Shape::default(), |c| {
        c.auth.duplicate_login = shared::config::DuplicateLogin::Reject;
    })
    .await;
    sys.add_user("alice").await;
    let mut first = sys.login(0, "alice").await;
    let mut second = sys.connect(1).await;
    second.send("LOGIN alice alice-pw").await;
    second.expect_prefix("ERR already-logged-in").await;
    first.send("/ping").await;
    first.expect("OK PING").await;
    let mut r = sys.redis.conn().await;
    let edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(edge, "edge-1");
}

#[tokio::test]
async fn no_answer_is_unavailable_and_the_request_is_not_acted_on_later() {
    let shape = Shape::new(1, 1, 0);
    let mut sys = System::start_with(shape, |c| c.edge.request_timeout_ms = 300).await;
    sys.add_user("alice").await;
    let mut c = sys.connect(0).await;
    c.send("LOGIN alice alice-pw").await;
    c.expect_prefix("ERR unavailable").await;
    c.send("/ping").await;
    c.expect("OK PING").await;

    // auth-svc comes up and finds the request the edge gave up on: it must
    // not open a session that nobody holds, nor answer it.
    let r = sys.redis.conn().await;
    sys.add(Role::Auth).await;
    eventually("the old request is consumed", || {
        let mut r = r.clone();
        async move { r.xlen::<_, u64>("chat:req:auth").await.unwrap() == 0 }
    })
    .await;
    let mut r2 = r.clone();
    assert!(
        !r2.exists::<_, bool>("chat:seq:sid").await.unwrap(),
        "no session was opened"
    );
    assert!(!r2.exists::<_, bool>("chat:session:alice").await.unwrap());
    c.send("/ping").await;
    c.expect("OK PING").await;
    c.send("LOGIN alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
}

/// 20 logins of one user at once, over two edges and two auth-svc
/// instances: exactly one session lives, and Redis agrees which.
async fn race(policy: &str) {
    let shape = Shape::new(2, 1, 2);
    let sys = System::start_with(shape, |c| {
        // Twenty attempts at once would trip the failed-login limit, which
        // counts attempts in progress too (limits.rs tests it).
        c.auth.max_failures_per_user = 0;
        c.auth.duplicate_login = match policy {
            "reject" => shared::config::DuplicateLogin::Reject,
            _ => shared::config::DuplicateLogin::ForceLogout,
        }
    })
    .await;
    sys.add_user("alice").await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(sys.connect(i % 2).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                c.send("LOGIN alice alice-pw").await;
                let first = c.line().await;
                (i, first, c)
            })
        })
        .collect();
    let mut logged_in = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        let (i, first, c) = t.await.unwrap();
        if first == "OK LOGIN alice lobby" {
            logged_in.push((i, c));
        } else {
            assert!(first.starts_with("ERR already-logged-in "), "{first}");
            rejected += 1;
        }
    }
    match policy {
        "reject" => assert_eq!((logged_in.len(), rejected), (1, 19)),
        _ => assert_eq!(logged_in.len(), 20),
    }
    // A routed command is answered only for the live session; every other
    // connection was closed before its answer could come.
    let mut alive = Vec::new();
    for (i, mut c) in logged_in {
        c.send("/who").await;
        loop {
            match c.next().await.as_deref() {
                Some("OK WHO lobby 1") => {
                    alive.push((i, c));
                    break;
                }
                Some("BYE logged-in-elsewhere") | None => break,
                Some(_) => {}
            }
        }
    }
    let alive: Vec<usize> = alive.iter().map(|(i, _)| *i).collect();
    assert_eq!(alive.len(), 1, "exactly one live session: {alive:?}");
    let mut r = sys.redis.conn().await;
    let edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(edge, format!("edge-{}", alive[0] % 2 + 1), "Redis agrees");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_logins_end_with_one_session_under_force_logout() {
    race("force-logout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_logins_end_with_one_session_under_reject() {
    race("reject").await;
}

#[tokio::test]
async fn nothing_of_the_user_is_read_or_subscribed_before_the_password_is_checked() {
    let sys = System::start_with(Shape::new(1, 1, 1), |_| {}).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    assert_eq!(alice.ask("/subscribe bob").await, "OK SUBSCRIBE bob");
    alice.send("/quit").await;
    alice.closed().await;
    sys.session_gone("alice").await;
    let per_user = |l: &String| {
        (l.contains("\"SUBSCRIBE\"") && l.contains("chat:ch:pub:bob"))
            || (l.contains("\"SMEMBERS\"") && l.contains("chat:subscriptions:alice"))
    };

    let mut feed = sys.redis.monitor().await;
    let mut c = sys.connect(0).await;
    assert!(c
        .ask("LOGIN alice wrong-pw")
        .await
        .starts_with("ERR bad-credentials "));
    let ran = feed.ran_before("after-the-wrong-password").await;
    let touched: Vec<&String> = ran.iter().filter(|l| per_user(l)).collect();
    assert!(touched.is_empty(), "before auth-svc said no: {touched:?}");

    // The right password: bob's channel is subscribed before the client
    // sees OK LOGIN, so a publication sent after it arrives.
    assert_eq!(
        c.ask(&format!("LOGIN alice {}", e2e::password("alice")))
            .await,
        "OK LOGIN alice lobby"
    );
    let ran = feed.ran_before("after-ok-login").await;
    assert!(
        ran.iter()
            .any(|l| l.contains("\"SUBSCRIBE\"") && l.contains("chat:ch:pub:bob")),
        "subscribed before OK LOGIN was shown: {ran:?}"
    );
    let mut bob = sys.login(0, "bob").await;
    assert!(bob.ask("/publish at once").await.starts_with("OK PUBLISH "));
    let line = c.until(|l| l.starts_with("PUB ")).await;
    assert!(line.ends_with(" bob at once"), "{line}");
}
