//! Tests of the hub: the table, channel audiences and holds, and applying replies.

use super::*;
use shared::consumer::EntryId;
use shared::envelope::Reply;
use shared::line::ServerLine;

/// A broadcast line as the functions publish it (JSON).
fn wire(line: &str) -> Vec<u8> {
    serde_json::to_vec(&ServerLine::parse(line).unwrap()).unwrap()
}

fn hub() -> (Arc<Hub>, HubTasks) {
    Hub::new(Keys::new("chat:"), "e1")
}

fn conn(hub: &Hub, id: u64, items: usize) -> (QueueRx, Arc<Closer>) {
    conn_with(hub, id, items, 1 << 20)
}

fn conn_with(hub: &Hub, id: u64, items: usize, bytes: usize) -> (QueueRx, Arc<Closer>) {
    let (tx, rx) = queue(items, bytes);
    let closer = Arc::new(Closer::default());
    hub.register(id, tx, closer.clone());
    (rx, closer)
}

fn login_reply(conn: u64, rid: u64, user: &str, sid: &str) -> Vec<u8> {
    serde_json::to_vec(&Reply {
        conn,
        rid,
        lines: vec![ServerLine::parse(&format!("OK LOGIN {user} lobby")).unwrap()],
        effect: Some(Effect::Login {
            user: user.into(),
            sid: sid.into(),
            room: "lobby".into(),
            subs: String::new(),
            inbox: String::new(),
            expires: String::new(),
        }),
        sid: String::new(),
    })
    .unwrap()
}

/// What is queued, line by line (`GATE` and `BYE` as entries of their own).
fn lines(rx: &mut QueueRx) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(o) = rx.try_recv() {
        match o {
            Out::Line(b) => out.extend(
                String::from_utf8(b)
                    .unwrap()
                    .split_inclusive('\n')
                    .map(String::from),
            ),
            Out::Bye(r) => out.push(format!("BYE {r}")),
            Out::Gate(_) => out.push("GATE".into()),
        }
    }
    out
}

#[test]
fn room_lines_reach_only_logged_in_members() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let (mut b, _) = conn(&hub, 2, 8);
    let mut wait = hub.expect(1, 10);
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 10, "alice", "5"));
    assert!(
        wait.try_recv().unwrap().is_some(),
        "the waiting login learns its effect"
    );
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 1-0 bob hi"));
    hub.dispatch("chat:ch:room:dev", &wire("MSG dev 1-0 bob elsewhere"));
    assert_eq!(
        lines(&mut a),
        ["OK LOGIN alice lobby\n", "MSG lobby 1-0 bob hi\n"]
    );
    assert!(lines(&mut b).is_empty(), "not logged in, not in the room");
}

#[test]
fn the_resume_token_ends_the_login_reply_and_a_resumed_room_waits_behind_a_gate() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let _wait = hub.expect(1, 10);
    hub.give_token(1, "t0k".into());
    let mut login = serde_json::from_slice::<Reply>(&login_reply(1, 10, "alice", "5")).unwrap();
    login
        .lines
        .push(ServerLine::parse("DM 1-0 bob queued").unwrap());
    login.lines.push(ServerLine::OkJoin { room: "dev".into() });
    if let Some(Effect::Login { room, expires, .. }) = &mut login.effect {
        *room = "dev".into();
        *expires = "1795426330266".into();
    }
    hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&login).unwrap());
    assert_eq!(
        lines(&mut a),
        [
            "GATE",
            "OK LOGIN alice lobby\n",
            "DM 1-0 bob queued\n",
            "OK JOIN dev\n",
            "TOKEN t0k 1795426330266\n"
        ]
    );
    hub.dispatch("chat:ch:room:dev", &wire("MSG dev 1-0 bob in dev"));
    assert_eq!(lines(&mut a), ["MSG dev 1-0 bob in dev\n"]);
}

#[test]
fn a_full_queue_closes_that_client_only() {
    let (hub, _tasks) = hub();
    let (mut slow, slow_closer) = conn(&hub, 1, 2);
    let (mut fast, fast_closer) = conn(&hub, 2, 64);
    for (id, user) in [(1, "slow"), (2, "fast")] {
        let _wait = hub.expect(id, id);
        hub.dispatch(
            "chat:ch:edge:e1",
            &login_reply(id, id, user, &id.to_string()),
        );
    }
    for i in 0..10 {
        hub.dispatch("chat:ch:room:lobby", &wire(&format!("MSG lobby {i}-0 x m")));
    }
    assert_eq!(slow_closer.reason(), Some("too-slow"));
    assert!(fast_closer.reason().is_none());
    assert_eq!(lines(&mut fast).len(), 11);
    assert_eq!(
        lines(&mut slow).len(),
        2,
        "the queue never grows past its bound"
    );
}

#[test]
fn a_late_login_is_undone_and_shows_nothing() {
    let (hub, mut tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let _wait = hub.expect(1, 10);
    assert!(hub.give_up(1, 10));
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 10, "alice", "7"));
    assert!(lines(&mut a).is_empty());
    let orphan = tasks.orphans.try_recv().unwrap();
    assert_eq!((orphan.user.as_str(), orphan.sid.as_str()), ("alice", "7"));
    // A reply for a connection that is gone is undone as well.
    hub.dispatch("chat:ch:edge:e1", &login_reply(99, 3, "bob", "8"));
    assert_eq!(tasks.orphans.try_recv().unwrap().user, "bob");
}

#[test]
fn close_applies_to_the_current_session_only() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let (mut b, _) = conn(&hub, 2, 8);
    let _wait = hub.expect(1, 1);
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
    let close = |conn: u64, sid: &str| {
        serde_json::to_vec(&Reply {
            conn,
            rid: 0,
            lines: vec![],
            effect: Some(Effect::Close {
                reason: "logged-in-elsewhere".into(),
                sid: sid.into(),
            }),
            sid: String::new(),
        })
        .unwrap()
    };
    hub.dispatch("chat:ch:edge:e1", &close(1, "4"));
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 1-0 bob still"));
    hub.dispatch("chat:ch:edge:e1", &close(2, "5"));
    hub.dispatch("chat:ch:edge:e1", &close(1, "5"));
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 2-0 bob gone"));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG lobby 1-0 bob still\n",
            "BYE logged-in-elsewhere"
        ]
    );
    assert!(lines(&mut b).is_empty(), "no session, nothing to close");
    assert!(hub.remove(1).is_none(), "the session is over");
}

#[test]
fn moves_subscriptions_and_notices_follow_the_current_session() {
    let (hub, mut tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    let mut login = serde_json::from_slice::<Reply>(&login_reply(1, 1, "alice", "5")).unwrap();
    login.effect = Some(Effect::Login {
        user: "alice".into(),
        sid: "5".into(),
        room: "lobby".into(),
        subs: "carol dave".into(),
        inbox: String::new(),
        expires: String::new(),
    });
    hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&login).unwrap());
    let notice = |rid: u64, sid: &str, lines: &[&str], effect: Option<Effect>| {
        serde_json::to_vec(&Reply {
            conn: 1,
            rid,
            lines: lines
                .iter()
                .map(|l| ServerLine::parse(l).unwrap())
                .collect(),
            effect,
            sid: sid.into(),
        })
        .unwrap()
    };
    hub.dispatch("chat:ch:pub:carol", &wire("PUB 1-0 carol x"));
    // A move of another (older) session is ignored; of this one, done.
    let moved = |sid: &str| {
        Some(Effect::Room {
            sid: sid.into(),
            room: "dev".into(),
        })
    };
    hub.dispatch("chat:ch:edge:e1", &notice(0, "", &[], moved("4")));
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 1-0 bob still here"));
    hub.dispatch("chat:ch:edge:e1", &notice(0, "", &[], moved("5")));
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 2-0 bob gone"));
    hub.dispatch("chat:ch:room:dev", &wire("MSG dev 1-0 bob in dev"));
    let unsub = Some(Effect::Unsubscribe {
        sid: "5".into(),
        user: "carol".into(),
    });
    hub.dispatch("chat:ch:edge:e1", &notice(0, "", &[], unsub));
    hub.dispatch("chat:ch:pub:carol", &wire("PUB 2-0 carol y"));
    hub.dispatch("chat:ch:pub:dave", &wire("PUB 1-0 dave z"));
    // A private message to an older session is not shown.
    hub.dispatch(
        "chat:ch:edge:e1",
        &notice(0, "4", &["DM 1-0 bob old"], None),
    );
    hub.dispatch(
        "chat:ch:edge:e1",
        &notice(0, "5", &["DM 2-0 bob new"], None),
    );
    assert_eq!(
        lines(&mut a),
        [
            "GATE", // until the publishers' channels are subscribed
            "OK LOGIN alice lobby\n",
            "PUB 1-0 carol x\n",
            "MSG lobby 1-0 bob still here\n",
            "MSG dev 1-0 bob in dev\n",
            "PUB 1-0 dave z\n",
            "DM 2-0 bob new\n",
        ]
    );
    assert!(hub.wants("chat:ch:room:dev") && hub.wants("chat:ch:pub:dave"));
    assert!(!hub.wants("chat:ch:pub:carol"));
    assert!(
        hub.wants("chat:ch:room:lobby"),
        "the lobby is always wanted"
    );
    let mut synced = Vec::new();
    while let Ok(s) = tasks.subs.try_recv() {
        synced.push(s.channel);
    }
    assert!(synced.contains(&"chat:ch:room:dev".to_string()));
    assert!(synced.contains(&"chat:ch:pub:carol".to_string()));

    // Closing the connection leaves every channel.
    assert!(hub.remove(1).is_some());
    assert!(!hub.wants("chat:ch:room:dev") && !hub.wants("chat:ch:pub:dave"));
}

#[test]
fn a_login_with_subscriptions_is_shown_once_the_reader_opens_its_gate() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    let mut login = serde_json::from_slice::<Reply>(&login_reply(1, 1, "alice", "5")).unwrap();
    if let Some(Effect::Login { subs, .. }) = &mut login.effect {
        *subs = "carol".into();
    }
    hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&login).unwrap());
    let Some(Out::Gate(mut gate)) = a.try_recv() else {
        panic!("OK LOGIN waits behind a gate")
    };
    assert!(gate.try_recv().is_err(), "closed until the reader opens it");
    hub.open_gate(1);
    assert!(gate.try_recv().is_ok());
    assert_eq!(lines(&mut a), ["OK LOGIN alice lobby\n"]);
    // Without subscriptions there is nothing to wait for.
    let (mut b, _) = conn(&hub, 2, 16);
    let _wait = hub.expect(2, 1);
    hub.dispatch("chat:ch:edge:e1", &login_reply(2, 1, "bob", "6"));
    assert_eq!(lines(&mut b), ["OK LOGIN bob lobby\n"]);
}

#[tokio::test]
async fn a_hold_lasts_until_its_reply_even_a_late_one() {
    let (hub, mut tasks) = hub();
    let (_rx, _) = conn(&hub, 1, 8);
    let channels = ["chat:ch:room:dev".to_string()];
    let holder = {
        let hub = hub.clone();
        let channels = channels.clone();
        tokio::spawn(async move { hub.hold(1, 7, &channels).await })
    };
    let sync = tasks.subs.recv().await.unwrap();
    assert_eq!(sync.channel, "chat:ch:room:dev");
    assert!(hub.wants("chat:ch:room:dev"));
    sync.done.unwrap().send(true).unwrap();
    assert!(holder.await.unwrap());
    // The client gave up waiting; the hold stays until the reply.
    let _wait = hub.expect(1, 7);
    assert!(hub.give_up(1, 7));
    assert!(hub.wants("chat:ch:room:dev"));
    let reply = Reply {
        conn: 1,
        rid: 7,
        lines: vec![ServerLine::OkJoin { room: "dev".into() }],
        effect: None,
        sid: String::new(),
    };
    hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&reply).unwrap());
    assert!(!hub.wants("chat:ch:room:dev"));
    // A connection that goes ends its holds too.
    let (_rx2, _) = conn(&hub, 2, 8);
    let holder = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.hold(2, 8, &channels).await })
    };
    loop {
        if let Some(done) = tasks.subs.recv().await.unwrap().done {
            done.send(true).unwrap();
            break;
        }
    }
    assert!(holder.await.unwrap());
    hub.remove(2);
    assert!(!hub.wants("chat:ch:room:dev"));
}

#[test]
fn resync_follows_redis_and_closes_a_lost_session() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
    let held = Session {
        user: "alice".into(),
        sid: "5".into(),
    };
    let subs = ["dave".to_string()];
    hub.resync(1, &held, Some(("5", "dev", &subs)));
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 1-0 bob not here"));
    hub.dispatch("chat:ch:room:dev", &wire("MSG dev 1-0 bob here"));
    hub.dispatch("chat:ch:pub:dave", &wire("PUB 1-0 dave news"));
    hub.resync(1, &held, None);
    hub.dispatch("chat:ch:room:dev", &wire("MSG dev 2-0 bob gone"));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG dev 1-0 bob here\n",
            "PUB 1-0 dave news\n",
            "BYE server-shutdown"
        ]
    );
    assert!(!hub.wants("chat:ch:room:dev") && !hub.wants("chat:ch:pub:dave"));
}

#[test]
fn lines_are_rendered_each_ended_by_a_newline_in_one_entry() {
    assert_eq!(&apply::render(&[ServerLine::OkPing])[..], b"OK PING\n");
    let lines = ["INFO a b", "OK WHO dev 0"].map(|l| ServerLine::parse(l).unwrap());
    assert_eq!(&apply::render(&lines)[..], b"INFO a b\nOK WHO dev 0\n");
}

#[test]
fn broadcasts_and_listings_reach_clients_in_wire_form() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let _wait = hub.expect(1, 1);
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
    hub.dispatch("chat:ch:room:lobby", b"MSG lobby 1-0 bob not json");
    let who = Reply {
        conn: 1,
        rid: 0,
        lines: ["USER bob", "USER alice", "OK WHO lobby 2"]
            .map(|l| ServerLine::parse(l).unwrap())
            .to_vec(),
        effect: None,
        sid: String::new(),
    };
    hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&who).unwrap());
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "USER alice\n",
            "USER bob\n",
            "OK WHO lobby 2\n"
        ],
        "a payload that is not a line is dropped; a listing is sorted"
    );
}

#[test]
fn a_message_passed_on_once_is_not_passed_on_again() {
    let (hub, _tasks) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
    let lobby = "chat:ch:room:lobby";
    let line = |l: &str| ServerLine::parse(l).unwrap();
    hub.dispatch(lobby, &wire("MSG lobby 5-0 bob live"));
    assert_eq!(
        hub.marks(),
        [(lobby.to_string(), EntryId { ms: 5, seq: 0 })]
    );
    // Replayed after a reconnect: what came already is skipped.
    hub.pass_on(lobby, &line("MSG lobby 5-0 bob live"));
    hub.pass_on(lobby, &line("MSG lobby 4-9 bob older"));
    hub.pass_on(lobby, &line("MSG lobby 6-0 bob missed"));
    hub.dispatch(lobby, &wire("MSG lobby 6-0 bob missed"));
    hub.dispatch(lobby, &wire("SYS lobby carol joined"));
    let gap = line("GAP room lobby 6-0");
    hub.gap(lobby, &gap, EntryId { ms: 9, seq: 0 });
    hub.dispatch(lobby, &wire("MSG lobby 8-0 bob inside the gap"));
    hub.dispatch(lobby, &wire("MSG lobby 10-0 bob after"));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG lobby 5-0 bob live\n",
            "MSG lobby 6-0 bob missed\n",
            "SYS lobby carol joined\n",
            "GAP room lobby 6-0\n",
            "MSG lobby 10-0 bob after\n",
        ]
    );
    // A channel without an audience is forgotten.
    hub.remove(1);
    assert!(hub.marks().is_empty());
}

#[test]
fn a_queue_holds_at_most_its_bytes_or_one_big_reply() {
    let (hub, _tasks) = hub();
    // 100 bytes, 100 entries: the bytes bind first.
    let (mut slow, slow_closer) = conn_with(&hub, 1, 100, 100);
    let _wait = hub.expect(1, 1);
    hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
    assert_eq!(
        lines(&mut slow),
        ["OK LOGIN alice lobby\n"],
        "read: the queue is empty"
    );
    // A reply bigger than the budget goes into an empty queue...
    let big = Reply {
        conn: 1,
        rid: 0,
        lines: (0..20)
            .map(|i| ServerLine::parse(&format!("HIST lobby {i}-0 bob a line of history")).unwrap())
            .collect(),
        effect: None,
        sid: String::new(),
    };
    hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&big).unwrap());
    assert!(slow_closer.reason().is_none(), "one big reply is taken");
    // ...but nothing more while it is unread.
    hub.dispatch("chat:ch:room:lobby", &wire("MSG lobby 1-0 bob hi"));
    assert_eq!(slow_closer.reason(), Some("too-slow"));
    let got = lines(&mut slow);
    assert_eq!(got.len(), 20, "only the reply is queued: {got:?}");
    assert!(got.iter().all(|l| l.starts_with("HIST")), "{got:?}");

    // Small lines fill the budget, then close the reader that does not read.
    let (mut b, b_closer) = conn_with(&hub, 2, 100, 100);
    let _wait = hub.expect(2, 2);
    hub.dispatch("chat:ch:edge:e1", &login_reply(2, 2, "bob", "6"));
    for i in 0..5 {
        hub.dispatch(
            "chat:ch:room:lobby",
            &wire(&format!("MSG lobby {i}-1 carol 12345")),
        );
    }
    assert_eq!(b_closer.reason(), Some("too-slow"));
    let got = lines(&mut b);
    let bytes: usize = got
        .iter()
        .filter(|l| !l.starts_with("BYE"))
        .map(String::len)
        .sum();
    assert!(bytes <= 100, "{bytes} bytes queued: {got:?}");
}
