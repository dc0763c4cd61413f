//! Passwords never reach Redis readable: after logins (good and bad),
//! registrations and a password change, none is in the append-only files,
//! a dump, the slow log, the MONITOR feed or any key, nor in a replica's; and a sealed password
//! that is tampered with, sealed to another key or replayed for another
//! request is refused with `ERR bad-credentials`, its content not logged.

use e2e::secrets::{keep_everything, places_of, PLACES};
use e2e::{Role, Shape, System, TestRedis};
use shared::envelope::{Op, Request, Secret};

#[tokio::test(flavor = "multi_thread")]
async fn no_password_is_anywhere_in_redis() {
    let sys = System::start_on(Shape::new(1, 1, 1), keep_everything(), |cfg| {
        cfg.auth.registration = true;
    })
    .await;
    // A replica: what crosses the replication link (the backlog's
    // content) lands in its AOF and keys.
    let mut replica_opts = keep_everything();
    replica_opts.args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        sys.redis.port.to_string(),
    ]);
    let replica = TestRedis::start_with(replica_opts).await;
    let mut monitor = sys.redis.monitor().await;
    let [first, wrong, unknown, registered, changed] = [
        "Erin-first-Pw-71c3",
        "Erin-wrong-Pw-5d20",
        "Nobody-Pw-e8a4",
        "Frank-reg-Pw-9b17",
        "Erin-new-Pw-40fe",
    ];
    let (ok, said) = sys.account(&[], &["add", "erin"], first).await;
    assert!(ok, "{said}");

    let mut c = sys.connect(0).await;
    c.send(&format!("LOGIN erin {wrong}")).await;
    c.expect_prefix("ERR bad-credentials").await;
    c.send(&format!("LOGIN nobody {unknown}")).await;
    c.expect_prefix("ERR bad-credentials").await;
    c.send(&format!("LOGIN erin {first}")).await;
    c.expect("OK LOGIN erin lobby").await;
    let mut f = sys.connect(0).await;
    f.send(&format!("REGISTER frank {registered}")).await;
    f.expect("OK LOGIN frank lobby").await;

    let (ok, said) = sys.account(&[], &["passwd", "erin"], changed).await;
    assert!(ok, "{said}");
    let mut c = sys.connect(0).await;
    c.send(&format!("LOGIN erin {first}")).await;
    c.expect_prefix("ERR bad-credentials").await;
    c.send(&format!("LOGIN erin {changed}")).await;
    c.expect("OK LOGIN erin lobby").await;

    let ran = monitor.ran_before("secrets-swept").await;
    let secrets = [first, wrong, unknown, registered, changed];
    // The user names went through the same requests and keys: the sweep
    // finds what is there.
    let needles: Vec<&str> = secrets.iter().copied().chain(["erin", "frank"]).collect();
    let found = places_of(&sys.redis, &ran, &needles).await;
    for name in ["erin", "frank"] {
        assert_eq!(found[name].len(), PLACES.len(), "{name}: {:?}", found[name]);
    }
    for secret in secrets {
        assert!(found[secret].is_empty(), "{secret} in {:?}", found[secret]);
    }

    // Everything written so far has reached the replica.
    let written = repl_offset(&sys.redis).await;
    e2e::eventually("the replica caught up", || async {
        repl_offset(&replica).await >= written
    })
    .await;
    let found = places_of(&replica, &[], &needles).await;
    for name in ["erin", "frank"] {
        for place in ["aof", "rdb", "keys"] {
            assert!(found[name].contains(place), "{name}: {:?}", found[name]);
        }
    }
    for secret in secrets {
        assert!(
            found[secret].is_empty(),
            "replica: {secret} in {:?}",
            found[secret]
        );
    }
}

/// How far a server is in the replication stream (`master_repl_offset`,
/// on a primary and on a replica alike).
async fn repl_offset(redis: &TestRedis) -> u64 {
    let info = redis.info("replication").await;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("master_repl_offset:"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The sealed password of the one `XADD` of a login request in `ran`.
fn sealed_in(ran: &[String]) -> String {
    let xadd = ran
        .iter()
        .find(|l| l.contains("\"XADD\"") && l.contains("password"))
        .expect("the login request's XADD");
    let at = xadd.find("password").unwrap() + "password".len();
    xadd[at..]
        .chars()
        .skip_while(|c| !c.is_ascii_hexdigit())
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_replayed_or_misdirected_sealed_password_is_bad_credentials() {
    let sys = System::start_with(Shape::new(1, 1, 1), |_| {}).await;
    sys.add_user("alice").await;
    let mut monitor = sys.redis.monitor().await;
    let mut alice = sys.login(0, "alice").await;
    let ran = monitor.ran_before("login-seen").await;
    let sealed = sealed_in(&ran);
    assert!(sealed.len() > 64, "{sealed}");
    assert!(!ran.join("\n").contains(&e2e::password("alice")));

    // Requests as a (fake) edge would add them, answered on its channel.
    let keys = sys.keys();
    let client = sys.redis_client().unwrap();
    let mut replies = client.get_async_pubsub().await.unwrap();
    replies
        .subscribe(keys.edge_channel("edge-x"))
        .await
        .unwrap();
    let mut conn = sys.redis.conn().await;
    let mut tampered = sealed.clone().into_bytes();
    tampered[40] = if tampered[40] == b'0' { b'1' } else { b'0' };
    let binding = shared::seal::binding("edge-x", 4, 1, "alice", false);
    let other_key = shared::seal::Opener::generate()
        .sealer()
        .seal(&binding, &e2e::password("alice"));
    let cases = [
        ("replayed", Secret(sealed.clone())),
        ("tampered", Secret(String::from_utf8(tampered).unwrap())),
        ("sealed to another key", other_key),
    ];
    for (rid, (what, password)) in (1..).zip(&cases) {
        let req = Request {
            edge: "edge-x".into(),
            conn: 4,
            rid,
            user: "alice".into(),
            sid: String::new(),
            op: Op::Login {
                password: password.clone(),
                addr: "127.0.0.1:4000".into(),
                register: false,
                token: String::new(),
            },
        };
        let mut pipe = redis::pipe();
        shared::consumer::add_request(&mut pipe, &keys.auth_requests(), 1000, &req);
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        let msg = tokio::time::timeout(
            e2e::WAIT,
            futures_util::StreamExt::next(&mut replies.on_message()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: an answer"))
        .unwrap();
        let reply: String = msg.get_payload().unwrap();
        assert!(reply.contains("bad-credentials"), "{what}: {reply}");
    }
    // alice's own session went on; the log says why, and nothing of them.
    alice.send("/ping").await;
    alice.expect("OK PING").await;
    let log = sys.log(Role::Auth, 0);
    assert!(log.contains("did not open"), "{log}");
    for (what, password) in &cases {
        assert!(!log.contains(&password.0[..32]), "{what} logged: {log}");
    }
    assert!(!log.contains(&e2e::password("alice")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_with_the_wrong_public_key_gets_bad_credentials_and_a_missing_key_exits_64() {
    let mut sys = System::start_with(Shape::new(0, 1, 1), |_| {}).await;
    sys.add_user("alice").await;
    let wrong = sys.certs().join("other");
    std::fs::create_dir_all(&wrong).unwrap();
    let (private, public) = (wrong.join("k"), wrong.join("k.pub"));
    shared::seal::write_pair(&private, &public).unwrap();
    let public = public.display().to_string();
    sys.add_with(Role::Edge, &[("CHAT_EDGE__AUTH_PUBLIC_KEY_FILE", &public)])
        .await;
    let mut c = sys.connect(0).await;
    c.send(&format!("LOGIN alice {}", e2e::password("alice")))
        .await;
    c.expect_prefix("ERR bad-credentials").await;
    // The session goes on.
    c.send("/ping").await;
    c.expect("OK PING").await;
    assert!(sys.log(Role::Auth, 0).contains("did not open"));

    for (role, var) in [
        (Role::Auth, "CHAT_AUTH__SEAL_KEY_FILE"),
        (Role::Edge, "CHAT_EDGE__AUTH_PUBLIC_KEY_FILE"),
    ] {
        let out = sys
            .command(role)
            .env(var, sys.certs().join("missing"))
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{role:?}: {out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
    }
}
