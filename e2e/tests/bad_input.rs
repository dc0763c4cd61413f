//! Bad input for every command: the specified ERR, and the session goes on.

use e2e::System;

#[tokio::test]
async fn every_command_rejects_bad_input_and_the_session_goes_on() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    let cases = [
        ("/join", "bad-args"),
        ("/join dev ops", "bad-args"),
        ("/join bad!name", "bad-name"),
        ("/join aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bad-name"),
        ("/leave", "not-in-room"),
        ("/leave now", "bad-args"),
        ("/rooms all", "bad-args"),
        ("/who dev ops", "bad-args"),
        ("/who #dev", "bad-name"),
        ("/subscribe", "bad-args"),
        ("/subscribe bob carol", "bad-args"),
        ("/subscribe b.o.b", "bad-name"),
        ("/subscribe ghost", "no-such-user"),
        ("/unsubscribe", "bad-args"),
        ("/unsubscribe ghost", "no-such-user"),
        ("/subscriptions mine", "bad-args"),
        ("/publish", "bad-args"),
        ("/publish    ", "bad-args"),
        ("/msg", "bad-args"),
        ("/msg bob", "bad-args"),
        ("/msg bob   ", "bad-args"),
        ("/msg b@b hi", "bad-name"),
        ("/msg ghost hi", "no-such-user"),
        ("/history 0", "bad-args"),
        ("/history -3", "bad-args"),
        ("/history many", "bad-args"),
        ("/history 5 6", "bad-args"),
        ("/history @", "bad-name"),
        ("/history @ghost", "no-such-user"),
        ("/history @bob x", "bad-args"),
        ("/ping now", "bad-args"),
        ("/frobnicate", "unknown-command"),
        ("/", "unknown-command"),
        ("LOGIN alice alice-pw", "already-authenticated"),
    ];
    for (line, code) in cases {
        let reply = alice.ask(line).await;
        assert!(
            reply.starts_with(&format!("ERR {code} ")),
            "{line:?} gave {reply:?}, expected ERR {code}"
        );
    }
    // Still logged in, in the lobby, and heard.
    assert_eq!(alice.ask("/ping").await, "OK PING");
    assert_eq!(
        alice.command("/who").await,
        ["USER alice", "OK WHO lobby 1"]
    );
    alice.send("still here").await;
    assert!(alice.line().await.ends_with(" alice still here"));
}
