//! Private messages (online and queued) and history.

use e2e::{parse, System};
use redis::AsyncCommands;
use shared::line::ServerLine;

/// The `<id>` of `OK MSG <user> <id> [queued]` or of a room line.
fn msg_id(line: &str) -> String {
    match parse(line) {
        ServerLine::OkMsg { id, .. } | ServerLine::Msg { id, .. } => id,
        other => panic!("no message id in {other}"),
    }
}

#[tokio::test]
async fn private_messages_are_queued_for_the_offline_and_delivered_once_in_order() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;

    let mut queued = Vec::new();
    for i in 1..=3 {
        let ok = alice.ask(&format!("/msg bob while you were out {i}")).await;
        assert!(
            matches!(parse(&ok), ServerLine::OkMsg { user, queued: true, .. } if user == "bob"),
            "{ok}"
        );
        queued.push(msg_id(&ok));
    }
    let mut r = sys.redis.conn().await;
    assert_eq!(r.xlen::<_, u64>("chat:inbox:bob").await.unwrap(), 3);

    // Right after OK LOGIN, in order.
    let mut bob = sys.login(1, "bob").await;
    for (i, id) in queued.iter().enumerate() {
        assert_eq!(
            bob.line().await,
            format!("DM {id} alice while you were out {}", i + 1)
        );
    }
    // Shown, so acknowledged: the inbox goes.
    e2e::eventually("the inbox is emptied", || {
        let mut r = r.clone();
        async move { !r.exists::<_, bool>("chat:inbox:bob").await.unwrap() }
    })
    .await;

    // Online now: delivered at once, not queued.
    let ok = alice.ask("/msg bob you are back").await;
    assert!(
        matches!(parse(&ok), ServerLine::OkMsg { queued: false, .. }),
        "not queued: {ok}"
    );
    assert_eq!(
        bob.line().await,
        format!("DM {} alice you are back", msg_id(&ok))
    );
    let ok = bob.ask("/msg alice hi").await;
    assert_eq!(alice.line().await, format!("DM {} bob hi", msg_id(&ok)));

    // Delivered once: the next login of bob brings nothing queued.
    bob.send("/quit").await;
    bob.closed().await;
    let mut bob = sys.login(0, "bob").await;
    assert_eq!(bob.ask("/ping").await, "OK PING");

    // The conversation's history, oldest first, from either side.
    let history = bob.command("/history @alice").await;
    assert_eq!(history.len(), 6);
    assert_eq!(history[5], "OK HISTORY 5");
    assert_eq!(
        history[0],
        format!("HIST @alice {} alice while you were out 1", queued[0])
    );
    assert_eq!(history[4], format!("HIST @alice {} bob hi", msg_id(&ok)));
    assert_eq!(
        alice.command("/history @bob 1").await,
        [
            format!("HIST @bob {} bob hi", msg_id(&ok)),
            "OK HISTORY 1".into()
        ]
    );
    assert_eq!(r.xlen::<_, u64>("chat:dm:alice:bob").await.unwrap(), 5);
}

#[tokio::test]
async fn history_keeps_ids_order_and_cap() {
    let sys = System::start_with(Default::default(), |c| c.router.history_cap = 5).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        alice.send(&format!("line {i}")).await;
        ids.push(msg_id(&alice.line().await));
    }
    let history = alice.command("/history").await;
    let want: Vec<String> = (3..8)
        .map(|i| format!("HIST lobby {} alice line {i}", ids[i]))
        .chain(["OK HISTORY 5".to_string()])
        .collect();
    assert_eq!(history, want, "the last five (the cap), oldest first");
    assert_eq!(
        alice.command("/history 2").await,
        [
            format!("HIST lobby {} alice line 6", ids[6]),
            format!("HIST lobby {} alice line 7", ids[7]),
            "OK HISTORY 2".into()
        ]
    );

    // Each room has its own; a new room has none.
    alice.ask("/join dev").await;
    assert_eq!(alice.command("/history").await, ["OK HISTORY 0"]);
    alice.send("first in dev").await;
    let id = msg_id(&alice.line().await);
    assert_eq!(
        alice.command("/history 500").await,
        [
            format!("HIST dev {id} alice first in dev"),
            "OK HISTORY 1".into()
        ]
    );

    // Conversations are capped as well.
    for i in 0..7 {
        alice.ask(&format!("/msg bob dm {i}")).await;
    }
    let history = alice.command("/history @bob 100").await;
    assert_eq!(history.len(), 6);
    assert!(history[0].ends_with(" alice dm 2"), "{history:?}");
    assert_eq!(alice.command("/history @bob").await.len(), 6);
    // An empty conversation with an existing user is no error.
    sys.add_user("carol").await;
    assert_eq!(alice.command("/history @carol").await, ["OK HISTORY 0"]);
}

#[tokio::test]
async fn a_login_answered_too_late_opens_nothing_and_keeps_the_inbox() {
    let sys = System::start_with(Default::default(), |c| c.edge.request_timeout_ms = 300).await;
    sys.add_user("alice").await;
    // bob's password hash takes far longer to check than the edge waits.
    let keys = shared::keys::Keys::new("chat:");
    let mut r = sys.redis.conn().await;
    auth_svc::accounts::add(&mut r, &keys, "bob", "bob-pw", 11)
        .await
        .unwrap();
    let mut alice = sys.login(0, "alice").await;
    let ok = alice.ask("/msg bob are you there?").await;
    assert!(ok.ends_with(" queued"), "{ok}");

    let mut bob = sys.connect(1).await;
    bob.send("LOGIN bob bob-pw").await;
    bob.expect_prefix("ERR unavailable").await;
    e2e::eventually("auth-svc is done with the login", || {
        let mut r = r.clone();
        async move { r.xlen::<_, u64>("chat:req:auth").await.unwrap() == 0 }
    })
    .await;
    let sessions_opened: u64 = r.get("chat:seq:sid").await.unwrap();
    assert_eq!(
        sessions_opened, 1,
        "only alice's: none for a client that was told its login failed"
    );
    assert_eq!(r.xlen::<_, u64>("chat:inbox:bob").await.unwrap(), 1);

    // With a hash that checks in time, the message comes with the login.
    auth_svc::accounts::set_password(&mut r, &keys, "bob", "bob-pw", 4)
        .await
        .unwrap();
    bob.send("LOGIN bob bob-pw").await;
    bob.expect("OK LOGIN bob lobby").await;
    assert_eq!(
        bob.line().await,
        format!("DM {} alice are you there?", msg_id(&ok))
    );
}

#[tokio::test]
async fn lines_sent_in_one_write_are_routed_in_order_before_a_command_after_them() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut bob = sys.login(1, "bob").await;
    // Room lines read together go to Redis together; the command after
    // them must still see them all.
    let burst: String = (0..50).map(|i| format!("burst {i}\n")).collect();
    alice
        .send_raw(format!("{burst}/history 50\n").as_bytes())
        .await;
    let mut echoes = Vec::new();
    let history = loop {
        let line = alice.line().await;
        if matches!(parse(&line), ServerLine::Msg { .. }) {
            echoes.push(line);
        } else {
            let mut lines = vec![line];
            while !parse(lines.last().unwrap()).is_final() {
                lines.push(alice.line().await);
            }
            break lines;
        }
    };
    assert_eq!(history.len(), 51, "{history:?}");
    for (i, h) in history[..50].iter().enumerate() {
        assert!(h.ends_with(&format!(" alice burst {i}")), "{h}");
    }
    for i in 0..50 {
        let line = bob.expect_prefix("MSG lobby ").await;
        assert!(line.ends_with(&format!(" alice burst {i}")), "{line}");
    }
    while echoes.len() < 50 {
        echoes.push(alice.expect_prefix("MSG lobby ").await);
    }
    for (i, e) in echoes.iter().enumerate() {
        assert!(e.ends_with(&format!(" alice burst {i}")), "{e}");
    }
}
