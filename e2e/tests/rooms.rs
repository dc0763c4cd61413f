//! Rooms: membership, room-only delivery across edges, listings, notices.

use e2e::{Shape, System};

#[tokio::test]
async fn messages_reach_exactly_the_rooms_members_across_edges() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let mut alice = sys.login(0, "alice").await.with_sys();
    let mut bob = sys.login(1, "bob").await.with_sys();
    let mut carol = sys.login(0, "carol").await;

    // alice and bob move to dev; each member of dev sees the moves as
    // notices (the lobby gets none: notices.lobby).
    assert_eq!(alice.ask("/join dev").await, "OK JOIN dev");
    alice.expect("SYS dev alice joined").await;
    assert_eq!(bob.command("/JOIN dev").await, ["OK JOIN dev"]);
    bob.expect("SYS dev bob joined").await;
    alice.expect("SYS dev bob joined").await;

    alice.send("only for dev").await;
    let line = alice.line().await;
    assert!(line.starts_with("MSG dev ") && line.ends_with(" alice only for dev"));
    assert_eq!(bob.line().await, line, "bob, on the other edge, is in dev");
    carol.send("only for the lobby").await;
    let line = carol.line().await;
    assert!(line.starts_with("MSG lobby ") && line.ends_with(" carol only for the lobby"));

    // Listings.
    assert_eq!(
        bob.command("/who").await,
        ["USER alice", "USER bob", "OK WHO dev 2"]
    );
    assert_eq!(
        bob.command("/who lobby").await,
        ["USER carol", "OK WHO lobby 1"]
    );
    assert_eq!(bob.command("/who empty").await, ["OK WHO empty 0"]);
    assert_eq!(
        carol.command("/rooms").await,
        ["ROOM dev 2", "ROOM lobby 1", "OK ROOMS 2"]
    );

    // alice goes back to the lobby: dev hears she left, and her text now
    // reaches carol and not bob.
    assert_eq!(alice.ask("/leave").await, "OK LEAVE dev");
    bob.expect("SYS dev alice left").await;
    alice.send("back in the lobby").await;
    let echo = alice.line().await;
    let line = carol.line().await;
    assert_eq!(line, echo);
    assert!(
        line.starts_with("MSG lobby ") && line.ends_with(" alice back in the lobby"),
        "carol saw nothing of dev: {line}"
    );
    // What alice sends after it reaches bob after it, if at all: a private
    // message shows bob never got the lobby line.
    alice.ask("/msg bob marker").await;
    let line = bob.line().await;
    assert!(
        line.starts_with("DM ") && line.ends_with(" alice marker"),
        "{line}"
    );

    // bob moves from dev straight to another room; dev empties and drops
    // out of the listing and of Redis.
    assert_eq!(bob.ask("/join ops").await, "OK JOIN ops");
    bob.expect("SYS ops bob joined").await;
    assert_eq!(
        carol.command("/rooms").await,
        ["ROOM lobby 2", "ROOM ops 1", "OK ROOMS 2"]
    );
    let mut r = sys.redis.conn().await;
    let rooms: Vec<String> = redis::AsyncCommands::smembers(&mut r, "chat:rooms")
        .await
        .unwrap();
    assert!(!rooms.contains(&"dev".to_string()), "{rooms:?}");
    let room: String = redis::AsyncCommands::hget(&mut r, "chat:session:bob", "room")
        .await
        .unwrap();
    assert_eq!(room, "ops");

    // Joining the room you are in changes nothing and tells no one.
    assert_eq!(bob.ask("/join ops").await, "OK JOIN ops");
    assert_eq!(bob.ask("/ping").await, "OK PING");
}

#[tokio::test]
async fn leaving_and_disconnecting_tell_the_room() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await.with_sys();
    assert_eq!(alice.ask("/join dev").await, "OK JOIN dev");
    alice.expect("SYS dev alice joined").await;
    let mut bob = sys.login(1, "bob").await;
    bob.ask("/join dev").await;
    alice.expect("SYS dev bob joined").await;
    bob.send("/quit").await;
    bob.closed().await;
    alice.expect("SYS dev bob left").await;

    let mut bob = sys.login(1, "bob").await;
    bob.ask("/join dev").await;
    alice.expect("SYS dev bob joined").await;
    bob.ask("/join ops").await;
    alice.expect("SYS dev bob left").await;
    drop(bob);
    assert_eq!(alice.ask("/join ops").await, "OK JOIN ops");
    // bob's dropped connection may end before or after alice's join.
    let line = alice.line().await;
    assert!(
        line == "SYS ops alice joined" || line == "SYS ops bob left",
        "{line}"
    );
    e2e::eventually("bob's session is gone", || async {
        let mut r = sys.redis.conn().await;
        let n: u64 = redis::AsyncCommands::scard(&mut r, "chat:room:ops")
            .await
            .unwrap();
        n == 1
    })
    .await;
}

/// By default the lobby hears no notices, nor does a room with more than
/// `notices.max_members` members: what comes next is the next message.
#[tokio::test]
async fn the_lobby_and_big_rooms_are_quiet() {
    let sys = System::start_with(Shape::default(), |c| c.notices.max_members = 2).await;
    sys.add_users(&["alice", "bob", "carol"]).await;
    let mut alice = sys.login(0, "alice").await.with_sys();
    let mut bob = sys.login(1, "bob").await;
    bob.send("hi from the lobby").await;
    bob.msg().await; // its echo
    let line = alice.line().await;
    assert!(line.ends_with(" bob hi from the lobby"), "{line}");

    alice.ask("/join dev").await;
    alice.expect("SYS dev alice joined").await;
    bob.ask("/join dev").await;
    alice.expect("SYS dev bob joined").await;
    let mut carol = sys.login(0, "carol").await;
    carol.ask("/join dev").await; // three: over the limit
    carol.send("hi from dev").await;
    let line = alice.line().await;
    assert!(line.ends_with(" carol hi from dev"), "{line}");
}

/// `notices.lobby` turns the lobby's notices back on.
#[tokio::test]
async fn the_lobby_hears_notices_when_configured() {
    let sys = System::start_with(Shape::default(), |c| c.notices.lobby = true).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await.with_sys();
    alice.expect("SYS lobby alice joined").await;
    let mut bob = sys.login(1, "bob").await;
    alice.expect("SYS lobby bob joined").await;
    bob.ask("/join dev").await;
    alice.expect("SYS lobby bob left").await;
    bob.ask("/leave").await;
    alice.expect("SYS lobby bob joined").await;
    bob.send("/quit").await;
    bob.closed().await;
    alice.expect("SYS lobby bob left").await;
}

/// Listings and history past their limits come cut, with a `MORE` line
/// before the final one, through the edge to the client.
#[tokio::test]
async fn long_replies_are_cut_and_say_so() {
    let sys = System::start_with(Shape::default(), |c| {
        c.router.listing_max = 1;
        c.router.reply_max_bytes = 1024;
    })
    .await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let _bob = sys.login(1, "bob").await;
    let who = alice.command("/who").await;
    assert_eq!(who.len(), 3, "{who:?}");
    assert!(who[0] == "USER alice" || who[0] == "USER bob", "{who:?}");
    assert_eq!(who[1..], ["MORE WHO 1", "OK WHO lobby 1"]);

    let text = "x".repeat(400);
    for _ in 0..3 {
        alice.send(&text).await;
        alice.msg().await;
    }
    let history = alice.command("/history").await;
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(
        history[..2].iter().all(|l| l.ends_with(&text)),
        "{history:?}"
    );
    assert_eq!(history[2..], ["MORE HISTORY 1", "OK HISTORY 2"]);
}
