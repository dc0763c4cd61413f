//! Tests of the hub: the table, audiences, and applying replies and lines.

use super::*;
use shared::consumer::EntryId;
use shared::envelope::Reply;
use shared::line::ServerLine;

/// A broadcast line as the functions publish it (JSON).
fn wire(line: &str) -> Vec<u8> {
    serde_json::to_vec(&ServerLine::parse(line).unwrap()).unwrap()
}

/// The edge's two channels.
const REPLIES: &str = "chat:ch:edge:e1";
const LINES: &str = "chat:ch:lines:e1";
/// The same on a Redis Cluster.
const CLUSTER_REPLIES: &str = "chat:ch:edge:{e1}";
const CLUSTER_LINES: &str = "chat:ch:lines:{e1}";

fn hub() -> (Arc<Hub>, mpsc::Receiver<Session>) {
    Hub::new(&Keys::new("chat:"), "e1")
}

/// Whether anyone on the edge is in audience `a`.
fn heard(hub: &Hub, a: Audience) -> bool {
    hub.lock().audience.contains_key(&a)
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
            v: None,
        }),
        sid: String::new(),
    })
    .unwrap()
}

/// What is queued, line by line (`BYE` as an entry of its own).
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
        }
    }
    out
}

#[test]
fn room_lines_reach_only_logged_in_members() {
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let (mut b, _) = conn(&hub, 2, 8);
    let mut wait = hub.expect(1, 10);
    hub.dispatch(REPLIES, &login_reply(1, 10, "alice", "5"));
    assert!(
        wait.try_recv().unwrap().is_some(),
        "the waiting login learns its effect"
    );
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob hi"));
    hub.dispatch(LINES, &wire("MSG dev 1-0 bob elsewhere"));
    assert_eq!(
        lines(&mut a),
        ["OK LOGIN alice lobby\n", "MSG lobby 1-0 bob hi\n"]
    );
    assert!(lines(&mut b).is_empty(), "not logged in, not in the room");
}

#[test]
fn the_resume_token_ends_the_login_reply_and_a_resume_goes_back_to_its_room() {
    let (hub, _orphans) = hub();
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
    hub.dispatch(REPLIES, &serde_json::to_vec(&login).unwrap());
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "DM 1-0 bob queued\n",
            "OK JOIN dev\n",
            "TOKEN t0k 1795426330266\n"
        ]
    );
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob in the lobby"));
    hub.dispatch(LINES, &wire("MSG dev 1-0 bob in dev"));
    assert_eq!(lines(&mut a), ["MSG dev 1-0 bob in dev\n"]);
}

#[test]
fn a_full_queue_closes_that_client_only() {
    let (hub, _orphans) = hub();
    let (mut slow, slow_closer) = conn(&hub, 1, 2);
    let (mut fast, fast_closer) = conn(&hub, 2, 64);
    for (id, user) in [(1, "slow"), (2, "fast")] {
        let _wait = hub.expect(id, id);
        hub.dispatch(REPLIES, &login_reply(id, id, user, &id.to_string()));
    }
    for i in 0..10 {
        hub.dispatch(LINES, &wire(&format!("MSG lobby {i}-0 x m")));
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
    let (hub, mut orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let _wait = hub.expect(1, 10);
    assert!(hub.give_up(1, 10));
    hub.dispatch(REPLIES, &login_reply(1, 10, "alice", "7"));
    assert!(lines(&mut a).is_empty());
    let orphan = orphans.try_recv().unwrap();
    assert_eq!((orphan.user.as_str(), orphan.sid.as_str()), ("alice", "7"));
    // A reply for a connection that is gone is undone as well.
    hub.dispatch(REPLIES, &login_reply(99, 3, "bob", "8"));
    assert_eq!(orphans.try_recv().unwrap().user, "bob");

    // The reply of the login a connection holds, published again (another
    // auth-svc carried the login out again): the session stays.
    let (mut c, _) = conn(&hub, 2, 8);
    let _wait = hub.expect(2, 11);
    hub.dispatch(REPLIES, &login_reply(2, 11, "carol", "9"));
    assert_eq!(lines(&mut c), ["OK LOGIN carol lobby\n"]);
    hub.dispatch(REPLIES, &login_reply(2, 11, "carol", "9"));
    assert!(orphans.try_recv().is_err(), "carol's session is not ended");
    assert!(lines(&mut c).is_empty());
    assert!(heard(&hub, Audience::Room("lobby".into())));
}

#[test]
fn close_applies_to_the_current_session_only() {
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let (mut b, _) = conn(&hub, 2, 8);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
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
    hub.dispatch(REPLIES, &close(1, "4"));
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob still"));
    hub.dispatch(REPLIES, &close(2, "5"));
    hub.dispatch(REPLIES, &close(1, "5"));
    hub.dispatch(LINES, &wire("MSG lobby 2-0 bob gone"));
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
fn a_close_that_comes_before_its_logins_reply_closes_it_when_it_comes() {
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let _wait = hub.expect(1, 1);
    let close = Reply {
        conn: 1,
        rid: 0,
        lines: vec![],
        effect: Some(Effect::Close {
            reason: "logged-in-elsewhere".into(),
            sid: "7".into(),
        }),
        sid: String::new(),
    };
    hub.dispatch(REPLIES, &serde_json::to_vec(&close).unwrap());
    assert!(lines(&mut a).is_empty(), "nothing to close yet");
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "7"));
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob after"));
    assert_eq!(
        lines(&mut a),
        ["OK LOGIN alice lobby\n", "BYE logged-in-elsewhere"]
    );
    assert!(hub.remove(1).is_none(), "the session is over");
}

#[test]
fn on_a_cluster_lines_that_cross_are_passed_on_once_each() {
    let (hub, _orphans) = Hub::new(&Keys::for_cluster("chat:"), "e1");
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch(CLUSTER_REPLIES, &login_reply(1, 1, "alice", "5"));
    let lobby = Audience::Room("lobby".into());
    for line in [
        "MSG lobby 5000-0 bob b",
        "MSG lobby 4999-5 carol routed-first-published-second",
        "MSG lobby 5000-0 bob b",
        "MSG lobby 3000-0 dave long-passed",
        "MSG lobby 5001-0 bob d",
    ] {
        hub.pass_on(&lobby, &ServerLine::parse(line).unwrap());
    }
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG lobby 5000-0 bob b\n",
            "MSG lobby 4999-5 carol routed-first-published-second\n",
            "MSG lobby 5001-0 bob d\n"
        ]
    );
}

/// A hub on a Redis Cluster, alice logged in on its connection 1
/// (session 5; her `OK LOGIN` queued).
fn alice_on_a_cluster() -> (Arc<Hub>, QueueRx, mpsc::Receiver<Session>) {
    let (hub, orphans) = Hub::new(&Keys::for_cluster("chat:"), "e1");
    let (a, _) = conn(&hub, 1, 64);
    let _wait = hub.expect(1, 1);
    hub.dispatch(CLUSTER_REPLIES, &login_reply(1, 1, "alice", "5"));
    (hub, a, orphans)
}

/// A cluster's broadcast line: a room's with the room's version `v`.
fn wire_at(line: &str, v: u64) -> Vec<u8> {
    let mut json = serde_json::to_value(ServerLine::parse(line).unwrap()).unwrap();
    json["v"] = v.into();
    serde_json::to_vec(&json).unwrap()
}

/// An effect alone, to connection 1 (`rid` 0: no one waits for it).
fn effect(effect: Effect) -> Vec<u8> {
    serde_json::to_vec(&Reply::effect(1, effect)).unwrap()
}

#[test]
fn on_a_cluster_members_see_the_lines_of_their_versions_whatever_comes_first() {
    let (hub, _orphans) = Hub::new(&Keys::for_cluster("chat:"), "e1");
    let (replies, lines_ch) = (CLUSTER_REPLIES, CLUSTER_LINES);
    let (mut a, _) = conn(&hub, 1, 64);
    let _wait = hub.expect(1, 1);
    // Her login's step took the lobby's version 3. A line routed after it
    // (3) comes before her reply; one routed before it (2) comes before
    // and after it: the first is hers, after `OK LOGIN`, the others not.
    hub.dispatch(lines_ch, &wire_at("MSG lobby 100-0 bob before-login", 2));
    hub.dispatch(lines_ch, &wire_at("MSG lobby 101-0 bob after-login", 3));
    let mut login = serde_json::from_slice::<Reply>(&login_reply(1, 1, "alice", "5")).unwrap();
    if let Some(Effect::Login { v, .. }) = &mut login.effect {
        *v = Some(3);
    }
    hub.dispatch(replies, &serde_json::to_vec(&login).unwrap());
    hub.dispatch(
        lines_ch,
        &wire_at("MSG lobby 99-0 carol late-before-login", 2),
    );
    // Her `/join dev`: the lobby's step took 4, dev's 5. A dev line of 5
    // (another router's) comes before the reply; her notices come after it
    // (her router publishes them after it), as do a dev line routed before
    // her join (4), and lobby lines routed before (3) and after (4) her
    // leaving.
    hub.dispatch(lines_ch, &wire_at("MSG dev 200-0 dave dev-after-join", 5));
    let moved = Effect::Room {
        sid: "5".into(),
        room: "dev".into(),
        v_from: Some(4),
        v_to: Some(5),
    };
    hub.dispatch(replies, &effect(moved));
    hub.dispatch(lines_ch, &wire_at("SYS lobby alice left", 4));
    hub.dispatch(lines_ch, &wire_at("SYS dev alice joined", 5));
    hub.dispatch(lines_ch, &wire_at("MSG dev 199-0 dave dev-before-join", 4));
    hub.dispatch(
        lines_ch,
        &wire_at("MSG lobby 102-0 bob lobby-before-leave", 3),
    );
    hub.dispatch(
        lines_ch,
        &wire_at("MSG lobby 103-0 bob lobby-after-leave", 4),
    );
    hub.dispatch(lines_ch, &wire_at("MSG dev 201-0 dave dev-later", 5));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG lobby 101-0 bob after-login\n",
            "MSG dev 200-0 dave dev-after-join\n",
            "SYS dev alice joined\n",
            "MSG lobby 102-0 bob lobby-before-leave\n",
            "MSG dev 201-0 dave dev-later\n",
        ]
    );
}

#[test]
fn on_a_cluster_moves_back_and_forth_show_each_line_once_and_only_to_its_members() {
    let (hub, mut a, _orphans) = alice_on_a_cluster();
    let (replies, lines_ch) = (CLUSTER_REPLIES, CLUSTER_LINES);
    let moved = |to: &str, v_from: u64, v_to: u64| {
        effect(Effect::Room {
            sid: "5".into(),
            room: to.into(),
            v_from: Some(v_from),
            v_to: Some(v_to),
        })
    };
    // dev's versions: she joins at 2, leaves at 3, joins at 4, leaves at
    // 5, all within a second. A line routed before her first join (1),
    // one of her first stay (2) and one of her second (4) come late.
    hub.dispatch(replies, &moved("dev", 1, 2));
    // Routed after her second join, it comes before her first leave's
    // reply: shown once, not again when her second join's reply comes.
    hub.dispatch(lines_ch, &wire_at("MSG dev 300-0 bob second-stay-early", 4));
    hub.dispatch(replies, &moved("lobby", 3, 1));
    hub.dispatch(replies, &moved("dev", 1, 4));
    hub.dispatch(replies, &moved("lobby", 5, 1));
    hub.dispatch(lines_ch, &wire_at("MSG dev 297-0 bob before-any-join", 1));
    hub.dispatch(lines_ch, &wire_at("MSG dev 298-0 bob first-stay", 2));
    hub.dispatch(lines_ch, &wire_at("MSG dev 301-0 bob second-stay", 4));
    hub.dispatch(lines_ch, &wire_at("MSG dev 302-0 bob after-leaving", 5));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG dev 300-0 bob second-stay-early\n",
            "MSG dev 298-0 bob first-stay\n",
            "MSG dev 301-0 bob second-stay\n",
        ]
    );
    // Subscribing twice changes nothing; unsubscribing from someone not
    // followed leaves nothing to show.
    let sub = |since: &str| {
        effect(Effect::Subscribe {
            sid: "5".into(),
            user: "carol".into(),
            since: Some(since.into()),
        })
    };
    hub.dispatch(replies, &sub("10-0"));
    hub.dispatch(lines_ch, &wire("PUB 11-0 carol one"));
    // (the second's step ran before carol's line, its reply came after)
    hub.dispatch(replies, &sub("10-0"));
    hub.dispatch(lines_ch, &wire("PUB 12-0 carol two"));
    hub.dispatch(
        replies,
        &effect(Effect::Unsubscribe {
            sid: "5".into(),
            user: "dave".into(),
            since: Some("50-0".into()),
        }),
    );
    hub.dispatch(lines_ch, &wire("PUB 49-0 dave not-followed"));
    assert_eq!(
        lines(&mut a),
        ["PUB 11-0 carol one\n", "PUB 12-0 carol two\n"]
    );
}

#[test]
fn a_move_run_again_after_a_router_handover_is_applied_once() {
    let (hub, mut a, _orphans) = alice_on_a_cluster();
    let (replies, lines_ch) = (CLUSTER_REPLIES, CLUSTER_LINES);
    // Her `/join dev` (request 2): the lobby's step took 7, dev's 2.
    let join = |rid: u64, to: &str, v_from: u64, v_to: u64| {
        let _wait = hub.expect(1, rid);
        serde_json::to_vec(&Reply {
            conn: 1,
            rid,
            lines: vec![ServerLine::OkJoin { room: to.into() }],
            effect: Some(Effect::Room {
                sid: "5".into(),
                room: to.into(),
                v_from: Some(v_from),
                v_to: Some(v_to),
            }),
            sid: String::new(),
        })
        .unwrap()
    };
    let to_dev = join(2, "dev", 7, 2);
    hub.dispatch(replies, &to_dev);
    hub.dispatch(lines_ch, &wire_at("MSG dev 100-0 bob one", 2));
    // The next owner of her partition runs that request again: the same
    // reply comes a second time. She stays in dev, shown each line once.
    hub.dispatch(replies, &to_dev);
    hub.dispatch(lines_ch, &wire_at("MSG dev 101-0 bob two", 3));
    // After her `/join ops` (request 3), a request 2 run again does not
    // take her back to dev.
    hub.dispatch(replies, &join(3, "ops", 4, 1));
    hub.dispatch(replies, &to_dev);
    hub.dispatch(lines_ch, &wire_at("MSG dev 102-0 bob three", 4));
    hub.dispatch(lines_ch, &wire_at("MSG ops 200-0 carol here", 1));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "OK JOIN dev\n",
            "MSG dev 100-0 bob one\n",
            "MSG dev 101-0 bob two\n",
            "OK JOIN ops\n",
            "MSG ops 200-0 carol here\n",
        ]
    );
}

#[test]
fn on_a_cluster_a_subscriber_sees_the_publications_after_its_step_whatever_comes_first() {
    let (hub, mut a, _orphans) = alice_on_a_cluster();
    let (replies, lines_ch) = (CLUSTER_REPLIES, CLUSTER_LINES);
    // Her subscribe's step read carol's last publication: 50-0.
    hub.dispatch(lines_ch, &wire("PUB 51-0 carol after-subscribe"));
    let sub = |since: &str| Effect::Subscribe {
        sid: "5".into(),
        user: "carol".into(),
        since: Some(since.into()),
    };
    hub.dispatch(replies, &effect(sub("50-0")));
    hub.dispatch(lines_ch, &wire("PUB 50-0 carol before-subscribe"));
    hub.dispatch(lines_ch, &wire("PUB 52-0 carol next"));
    // Her unsubscribe's step read 53-0: that one is still hers.
    let unsub = Effect::Unsubscribe {
        sid: "5".into(),
        user: "carol".into(),
        since: Some("53-0".into()),
    };
    hub.dispatch(replies, &effect(unsub));
    hub.dispatch(lines_ch, &wire("PUB 54-0 carol after-unsubscribe"));
    hub.dispatch(lines_ch, &wire("PUB 53-0 carol before-unsubscribe"));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "PUB 51-0 carol after-subscribe\n",
            "PUB 52-0 carol next\n",
            "PUB 53-0 carol before-unsubscribe\n",
        ]
    );
    // Lines are held for late replies, at most HELD_LINES an audience.
    for i in 0..HELD_LINES + 10 {
        hub.dispatch(lines_ch, &wire(&format!("PUB 60-{i} dave x")));
    }
    let held = hub.lock().cross.held[&Audience::Pub("dave".into())].len();
    assert_eq!(held, HELD_LINES);
}

#[test]
fn moves_subscriptions_and_notices_follow_the_current_session() {
    let (hub, _orphans) = hub();
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
        v: None,
    });
    hub.dispatch(REPLIES, &serde_json::to_vec(&login).unwrap());
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
    hub.dispatch(LINES, &wire("PUB 1-0 carol x"));
    // A move of another (older) session is ignored; of this one, done.
    let moved = |sid: &str| {
        Some(Effect::Room {
            sid: sid.into(),
            room: "dev".into(),
            v_from: None,
            v_to: None,
        })
    };
    hub.dispatch(REPLIES, &notice(0, "", &[], moved("4")));
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob still here"));
    hub.dispatch(REPLIES, &notice(0, "", &[], moved("5")));
    hub.dispatch(LINES, &wire("MSG lobby 2-0 bob gone"));
    hub.dispatch(LINES, &wire("MSG dev 1-0 bob in dev"));
    let unsub = Some(Effect::Unsubscribe {
        sid: "5".into(),
        user: "carol".into(),
        since: None,
    });
    hub.dispatch(REPLIES, &notice(0, "", &[], unsub));
    hub.dispatch(LINES, &wire("PUB 2-0 carol y"));
    hub.dispatch(LINES, &wire("PUB 1-0 dave z"));
    // A private message to an older session is not shown.
    hub.dispatch(REPLIES, &notice(0, "4", &["DM 1-0 bob old"], None));
    hub.dispatch(REPLIES, &notice(0, "5", &["DM 2-0 bob new"], None));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "PUB 1-0 carol x\n",
            "MSG lobby 1-0 bob still here\n",
            "MSG dev 1-0 bob in dev\n",
            "PUB 1-0 dave z\n",
            "DM 2-0 bob new\n",
        ]
    );
    assert!(heard(&hub, Audience::Room("dev".into())));
    assert!(!heard(&hub, Audience::Room("lobby".into())));
    assert!(!heard(&hub, Audience::Pub("carol".into())));

    // Closing the connection leaves every audience.
    assert!(hub.remove(1).is_some());
    assert!(hub.lock().audience.is_empty());
}

#[test]
fn resync_follows_redis_and_closes_a_lost_session() {
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
    let held = hub.sessions(None).pop().unwrap();
    assert_eq!((held.id, held.session.sid.as_str()), (1, "5"));
    let subs = ["dave".to_string()];
    assert!(hub.resync(&held, Some(("5", "dev", &subs))));
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob not here"));
    hub.dispatch(LINES, &wire("MSG dev 1-0 bob here"));
    hub.dispatch(LINES, &wire("PUB 1-0 dave news"));
    assert!(hub.resync(&held, None));
    hub.dispatch(LINES, &wire("MSG dev 2-0 bob gone"));
    assert_eq!(
        lines(&mut a),
        [
            "OK LOGIN alice lobby\n",
            "MSG dev 1-0 bob here\n",
            "PUB 1-0 dave news\n",
            "BYE server-shutdown"
        ]
    );
    assert!(hub.lock().audience.is_empty());

    // Read back before a move whose reply came meanwhile: the read may be
    // older than the move, so it is not applied, and is taken again.
    let (mut b, _) = conn(&hub, 2, 16);
    let _wait = hub.expect(2, 2);
    hub.dispatch(REPLIES, &login_reply(2, 2, "bob", "6"));
    let before = hub.sessions(Some(&HashSet::from([2]))).pop().unwrap();
    let to_ops = Effect::Room {
        sid: "6".into(),
        room: "ops".into(),
        v_from: None,
        v_to: None,
    };
    hub.dispatch(
        REPLIES,
        &serde_json::to_vec(&Reply::effect(2, to_ops)).unwrap(),
    );
    assert!(
        !hub.resync(&before, Some(("6", "lobby", &[]))),
        "read again"
    );
    hub.dispatch(LINES, &wire("MSG lobby 3-0 carol in the lobby"));
    hub.dispatch(LINES, &wire("MSG ops 3-0 carol in ops"));
    let again = hub.sessions(Some(&HashSet::from([2]))).pop().unwrap();
    assert!(hub.resync(&again, Some(("6", "ops", &[]))));
    assert_eq!(
        lines(&mut b),
        ["OK LOGIN bob lobby\n", "MSG ops 3-0 carol in ops\n"]
    );
}

#[test]
fn lines_are_rendered_each_ended_by_a_newline_in_one_entry() {
    assert_eq!(&apply::render(&[ServerLine::OkPing])[..], b"OK PING\n");
    let lines = ["INFO a b", "OK WHO dev 0"].map(|l| ServerLine::parse(l).unwrap());
    assert_eq!(&apply::render(&lines)[..], b"INFO a b\nOK WHO dev 0\n");
}

#[test]
fn broadcasts_and_listings_reach_clients_in_wire_form() {
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 8);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
    hub.dispatch(LINES, b"MSG lobby 1-0 bob not json");
    let who = Reply {
        conn: 1,
        rid: 0,
        lines: ["USER bob", "USER alice", "OK WHO lobby 2"]
            .map(|l| ServerLine::parse(l).unwrap())
            .to_vec(),
        effect: None,
        sid: String::new(),
    };
    hub.dispatch(REPLIES, &serde_json::to_vec(&who).unwrap());
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
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
    let lobby = &Audience::Room("lobby".into());
    let line = |l: &str| ServerLine::parse(l).unwrap();
    hub.dispatch(LINES, &wire("MSG lobby 5-0 bob live"));
    let since = EntryId { ms: 1, seq: 0 };
    assert_eq!(
        hub.marks(since),
        [(lobby.clone(), EntryId { ms: 5, seq: 0 })]
    );
    // Replayed after a reconnect: what came already is skipped.
    hub.pass_on(lobby, &line("MSG lobby 5-0 bob live"));
    hub.pass_on(lobby, &line("MSG lobby 4-9 bob older"));
    hub.pass_on(lobby, &line("MSG lobby 6-0 bob missed"));
    hub.dispatch(LINES, &wire("MSG lobby 6-0 bob missed"));
    hub.dispatch(LINES, &wire("SYS lobby carol joined"));
    let gap = line("GAP room lobby 6-0");
    hub.gap(lobby, &gap, EntryId { ms: 9, seq: 0 });
    hub.dispatch(LINES, &wire("MSG lobby 8-0 bob inside the gap"));
    hub.dispatch(LINES, &wire("MSG lobby 10-0 bob after"));
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
    // A room without an audience is forgotten.
    hub.remove(1);
    assert!(hub.marks(since).is_empty());
}

#[test]
fn a_queue_holds_at_most_its_bytes_or_one_big_reply() {
    let (hub, _orphans) = hub();
    // 100 bytes, 100 entries: the bytes bind first.
    let (mut slow, slow_closer) = conn_with(&hub, 1, 100, 100);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
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
    hub.dispatch(REPLIES, &serde_json::to_vec(&big).unwrap());
    assert!(slow_closer.reason().is_none(), "one big reply is taken");
    // ...but nothing more while it is unread.
    hub.dispatch(LINES, &wire("MSG lobby 1-0 bob hi"));
    assert_eq!(slow_closer.reason(), Some("too-slow"));
    let got = lines(&mut slow);
    assert_eq!(got.len(), 20, "only the reply is queued: {got:?}");
    assert!(got.iter().all(|l| l.starts_with("HIST")), "{got:?}");

    // Small lines fill the budget, then close the reader that does not read.
    let (mut b, b_closer) = conn_with(&hub, 2, 100, 100);
    let _wait = hub.expect(2, 2);
    hub.dispatch(REPLIES, &login_reply(2, 2, "bob", "6"));
    for i in 0..5 {
        hub.dispatch(LINES, &wire(&format!("MSG lobby {i}-1 carol 12345")));
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

#[test]
fn lines_of_one_read_are_queued_at_once_and_in_order_with_replies() {
    let (hub, _orphans) = hub();
    let (mut a, _) = conn(&hub, 1, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
    lines(&mut a);
    let mut read = Gathered::default();
    for line in ["MSG lobby 1-0 bob one", "MSG lobby 2-0 bob two"] {
        hub.dispatch_into(&mut read, LINES, &wire(line));
    }
    // A message passed on already is not gathered again.
    hub.dispatch_into(&mut read, LINES, &wire("MSG lobby 2-0 bob two"));
    assert!(a.try_recv().is_none(), "queued when the read is done");
    // A reply moving alice comes after the lines before it, before those
    // after it.
    let to_dev = Reply {
        conn: 1,
        rid: 0,
        lines: vec![ServerLine::OkJoin { room: "dev".into() }],
        effect: Some(Effect::Room {
            sid: "5".into(),
            room: "dev".into(),
            v_from: None,
            v_to: None,
        }),
        sid: String::new(),
    };
    hub.dispatch_into(&mut read, REPLIES, &serde_json::to_vec(&to_dev).unwrap());
    hub.dispatch_into(&mut read, LINES, &wire("MSG lobby 3-0 bob gone"));
    hub.dispatch_into(&mut read, LINES, &wire("MSG dev 1-0 carol three"));
    hub.dispatch_into(&mut read, LINES, &wire("MSG dev 2-0 carol four"));
    hub.flush(&mut read);
    let mut entries = std::iter::from_fn(|| a.try_recv()).map(|o| match o {
        Out::Line(b) => String::from_utf8(b).unwrap(),
        Out::Bye(r) => format!("BYE {r}"),
    });
    assert_eq!(
        entries.next().unwrap(),
        "MSG lobby 1-0 bob one\nMSG lobby 2-0 bob two\nOK JOIN dev\n\
         MSG dev 1-0 carol three\nMSG dev 2-0 carol four\n",
        "one buffer, in order, each line once"
    );
    assert!(entries.next().is_none());
    // A queue that cannot take a read's lines all at once takes those
    // that fit, as if they had come one by one, and its reader is closed.
    let (mut b, b_closer) = conn(&hub, 2, 3);
    let _wait = hub.expect(2, 2);
    hub.dispatch(REPLIES, &login_reply(2, 2, "bob", "6"));
    for i in 4..8 {
        hub.dispatch_into(&mut read, LINES, &wire(&format!("MSG lobby {i}-0 x y")));
    }
    hub.flush(&mut read);
    assert_eq!(b_closer.reason(), Some("too-slow"));
    assert_eq!(
        lines(&mut b),
        [
            "OK LOGIN bob lobby\n",
            "MSG lobby 4-0 x y\n",
            "MSG lobby 5-0 x y\n"
        ]
    );
}

#[test]
fn an_audience_forgets_its_last_message_with_its_last_member() {
    let (hub, _orphans) = hub();
    let (_a, _) = conn(&hub, 1, 16);
    let (_b, _) = conn(&hub, 2, 16);
    let _wait = hub.expect(1, 1);
    hub.dispatch(REPLIES, &login_reply(1, 1, "alice", "5"));
    let _wait = hub.expect(2, 2);
    hub.dispatch(REPLIES, &login_reply(2, 2, "bob", "6"));
    let to = |conn: u64, sid: &str, room: &str| {
        let moved = Effect::Room {
            sid: sid.into(),
            room: room.into(),
            v_from: None,
            v_to: None,
        };
        serde_json::to_vec(&Reply::effect(conn, moved)).unwrap()
    };
    let dev = Audience::Room("dev".into());
    hub.dispatch(REPLIES, &to(1, "5", "dev"));
    hub.dispatch(LINES, &wire("MSG dev 1-0 carol before bob"));
    let since = EntryId { ms: 7, seq: 0 };
    assert!(hub
        .marks(since)
        .contains(&(dev.clone(), EntryId { ms: 1, seq: 0 })));
    // alice leaves: nobody here is in dev, and its mark goes (a room left
    // for good holds no memory); bob joins later: after a reconnect he is
    // replayed dev's lines from when Pub/Sub was last heard from (`since`),
    // none from before he joined.
    hub.dispatch(REPLIES, &to(1, "5", "lobby"));
    assert!(!hub.lock().last.contains_key(&dev));
    hub.dispatch(REPLIES, &to(2, "6", "dev"));
    let marks = hub.marks(since);
    assert!(marks.contains(&(dev.clone(), since)), "{marks:?}");
    assert!(!marks.contains(&(dev, EntryId { ms: 1, seq: 0 })));
}
