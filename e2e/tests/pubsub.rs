//! Publish-subscribe between users.

use e2e::System;
use redis::AsyncCommands;
use shared::line::ServerLine;

/// `PUB <id> <from> <text>` → (id, from, text).
fn parse_pub(line: ServerLine) -> (String, String, String) {
    match line {
        ServerLine::Pub { id, from, text } => (id, from, text),
        other => panic!("not a publication: {other}"),
    }
}

#[tokio::test]
async fn publications_reach_online_subscribers_only_and_subscriptions_last() {
    let sys = System::start().await;
    sys.add_users(&["alice", "carol", "dave"]).await;
    let mut alice = sys.login(0, "alice").await;
    let mut carol = sys.login(1, "carol").await;
    let mut dave = sys.login(0, "dave").await;

    assert_eq!(carol.ask("/subscribe alice").await, "OK SUBSCRIBE alice");
    assert_eq!(
        carol.ask("/subscribe alice").await,
        "OK SUBSCRIBE alice",
        "idempotent"
    );
    assert_eq!(
        carol.command("/subscriptions").await,
        ["SUB alice", "OK SUBSCRIPTIONS 1"]
    );
    let mut r = sys.redis.conn().await;
    let subscribers: Vec<String> = r.smembers("chat:subscribers:alice").await.unwrap();
    assert_eq!(subscribers, ["carol"]);

    let ok = alice.ask("/publish hello  subscribers").await;
    let (id, from, text) = parse_pub(carol.parsed().await);
    assert_eq!(ok, format!("OK PUBLISH {id} 1"), "one online subscriber");
    assert_eq!(
        (from.as_str(), text.as_str()),
        ("alice", "hello  subscribers")
    );
    // dave does not subscribe: the next thing from alice he sees is a
    // private message sent after the publication.
    alice.ask("/msg dave marker").await;
    assert!(dave.line().await.ends_with(" alice marker"));

    // Unsubscribed, carol gets nothing more.
    assert_eq!(
        carol.ask("/unsubscribe alice").await,
        "OK UNSUBSCRIBE alice"
    );
    assert_eq!(
        carol.ask("/unsubscribe alice").await,
        "OK UNSUBSCRIBE alice"
    );
    let ok = alice.ask("/publish anyone?").await;
    assert!(ok.starts_with("OK PUBLISH ") && ok.ends_with(" 0"), "{ok}");
    alice.ask("/msg carol marker").await;
    let line = carol.line().await;
    assert!(
        line.starts_with("DM ") && line.ends_with(" alice marker"),
        "{line}"
    );
    assert_eq!(
        carol.command("/subscriptions").await,
        ["OK SUBSCRIPTIONS 0"]
    );

    // The subscription belongs to the account: it outlives the session, and
    // counts only while carol is online.
    carol.ask("/subscribe alice").await;
    carol.send("/quit").await;
    carol.closed().await;
    sys.session_gone("carol").await;
    let ok = alice.ask("/publish nobody online").await;
    assert!(ok.ends_with(" 0"), "{ok}");
    let mut carol = sys.login(0, "carol").await;
    assert_eq!(
        carol.command("/subscriptions").await,
        ["SUB alice", "OK SUBSCRIPTIONS 1"]
    );
    let ok = alice.ask("/publish welcome back").await;
    let (id, _, text) = parse_pub(carol.parsed().await);
    assert_eq!(text, "welcome back", "nothing published while offline");
    assert_eq!(ok, format!("OK PUBLISH {id} 1"));
}

#[tokio::test]
async fn a_publication_is_one_publish_per_edge_whatever_the_number_of_subscribers() {
    let sys = System::start().await;
    sys.add_user("alice").await;
    let mut subscribers = Vec::new();
    for i in 0..6 {
        let name = format!("sub{i}");
        sys.add_user(&name).await;
        let mut c = sys.login(i % 2, &name).await;
        c.ask("/subscribe alice").await;
        subscribers.push(c);
    }
    let mut alice = sys.login(0, "alice").await;
    let mut r = sys.redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut r)
        .await
        .unwrap();
    let ok = alice.ask("/publish to all six").await;
    assert!(ok.ends_with(" 6"), "{ok}");
    for c in &mut subscribers {
        assert_eq!(parse_pub(c.parsed().await).2, "to all six");
    }
    let calls = sys.redis.command_calls().await;
    let publishes = calls.iter().find(|(c, _)| c == "publish").map(|(_, n)| *n);
    // One PUBLISH of the PUB line to each of the two edges, and one for
    // the reply to alice.
    assert_eq!(publishes, Some(3), "{calls:?}");
}

#[tokio::test]
async fn a_deleted_account_leaves_no_subscriptions_behind() {
    let sys = System::start().await;
    sys.add_users(&["alice", "carol"]).await;
    let mut carol = sys.login(1, "carol").await;
    carol.ask("/subscribe alice").await;
    let mut r = sys.redis.conn().await;
    let keys = shared::keys::Keys::new("chat:");
    auth_svc::accounts::delete(&mut r, &keys, "alice")
        .await
        .unwrap();
    assert_eq!(
        carol.command("/subscriptions").await,
        ["OK SUBSCRIPTIONS 0"]
    );
    assert!(!r.exists::<_, bool>("chat:subscribers:alice").await.unwrap());
    assert!(!r
        .exists::<_, bool>("chat:online-subscribers:alice")
        .await
        .unwrap());

    // A new alice starts with no subscribers: carol, still online, gets
    // nothing of hers.
    sys.add_user("alice").await;
    let mut alice = sys.login(0, "alice").await;
    let ok = alice.ask("/publish anyone?").await;
    assert!(ok.ends_with(" 0"), "{ok}");
    alice.ask("/msg carol marker").await;
    let line = carol.line().await;
    assert!(
        line.starts_with("DM ") && line.ends_with(" alice marker"),
        "{line}"
    );
}
