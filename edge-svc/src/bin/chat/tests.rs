//! The client's pure parts: server lines in, state and lines out.

use super::input::Input;
use super::model::*;
use super::*;

const NOW: i64 = 1_000;

fn shown(m: &Model) -> Vec<String> {
    m.entries.iter().map(|e| e.text.clone()).collect()
}

/// A model logged in as alice, in `room`.
fn logged_in(room: &str) -> Model {
    let mut m = Model::new("alice");
    m.connected(NOW, "127.0.0.1:7001");
    assert!(m.on_line(NOW, "HELLO edge-1 chat/1").is_empty());
    assert!(m.on_line(NOW, "OK LOGIN alice lobby").is_empty());
    if room != "lobby" {
        m.on_line(NOW, &format!("OK JOIN {room}"));
    }
    assert!(m.can_send());
    m
}

#[test]
fn server_lines_are_split_into_their_fields() {
    assert_eq!(
        Server::parse("MSG den 17-0 bob hi  there"),
        Server::Msg {
            room: "den".into(),
            id: "17-0".into(),
            from: "bob".into(),
            text: "hi  there".into()
        }
    );
    assert_eq!(
        Server::parse("HIST @bob 5-1 alice x"),
        Server::Hist {
            conv: "@bob".into(),
            id: "5-1".into(),
            from: "alice".into(),
            text: "x".into()
        }
    );
    assert_eq!(
        Server::parse("DM 5-1 bob psst"),
        Server::Dm {
            id: "5-1".into(),
            from: "bob".into(),
            text: "psst".into()
        }
    );
    assert_eq!(
        Server::parse("OK LOGIN alice lobby"),
        Server::LoggedIn {
            user: "alice".into()
        }
    );
    assert_eq!(
        Server::parse("OK JOIN den"),
        Server::Joined { room: "den".into() }
    );
    assert_eq!(
        Server::parse("HELLO edge-2 chat/1"),
        Server::Hello {
            edge: "edge-2".into()
        }
    );
    assert_eq!(Server::parse("OK PING"), Server::Ok("PING".into()));
    assert_eq!(
        Server::parse("MSG den 17-0"),
        Server::Other("MSG den 17-0".into())
    );
    assert_eq!(Server::parse("BYE quit"), Server::Bye("quit".into()));
}

#[test]
fn only_quit_and_a_login_elsewhere_end_the_client() {
    assert!(!reconnect_after("quit"));
    assert!(!reconnect_after("logged-in-elsewhere"));
    assert!(reconnect_after("server-shutdown"));
    assert!(reconnect_after("idle-timeout"));
    assert!(reconnect_after("too-slow"));
}

#[test]
fn times_come_from_message_ids() {
    assert_eq!(id_ms("3723000-4"), Some(3_723_000));
    assert_eq!(id_ms("x-1"), None);
    assert_eq!(clock(3_723_000, &chrono::Utc), "01:02:03");
    let cet = chrono::FixedOffset::east_opt(3600).unwrap();
    assert_eq!(clock(3_723_000, &cet), "02:02:03");
    let mut m = logged_in("lobby");
    m.on_line(NOW, "MSG lobby 3723000-0 bob hi");
    assert_eq!(m.entries.back().unwrap().ms, 3_723_000);
}

#[test]
fn names_keep_their_colour_and_text_loses_its_escapes() {
    assert_eq!(colour_index("bob", 12), colour_index("bob", 12));
    let spread: std::collections::HashSet<usize> = ["alice", "bob", "carol", "dave", "eve"]
        .iter()
        .map(|n| colour_index(n, 12))
        .collect();
    assert!(spread.len() > 1);
    assert_eq!(clean("a\u{1b}[2Jb\tc"), "a\u{fffd}[2Jb\u{fffd}c");
}

#[test]
fn messages_are_shown_once_and_own_ones_marked() {
    let mut m = logged_in("den");
    m.on_line(NOW, "MSG den 10-0 bob hi");
    m.on_line(NOW, "MSG den 10-0 bob hi");
    m.on_line(NOW, "MSG den 11-0 alice hello");
    let msgs: Vec<&Entry> = m
        .entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Msg { .. }))
        .collect();
    assert_eq!(msgs.len(), 2);
    assert!(!msgs[0].own);
    assert!(msgs[1].own);
    assert!(m.users.contains("bob"));
    // The same id in another conversation is another message.
    m.on_line(NOW, "DM 10-0 bob psst");
    assert_eq!(shown(&m).last().unwrap(), "psst");
}

#[test]
fn a_reconnect_rejoins_and_shows_only_what_was_missed() {
    let mut m = logged_in("den");
    m.on_line(NOW, "MSG den 10-0 bob before");
    m.lost(NOW, "the server closed the connection", Some((1, 500)));
    assert!(!m.can_send());
    assert_eq!(m.room, "den", "the room is kept while away");
    assert!(m.submit(NOW, "typed while away").is_none());

    m.connected(NOW, "127.0.0.1:7002");
    m.on_line(NOW, "HELLO edge-2 chat/1");
    assert_eq!(m.on_line(NOW, "OK LOGIN alice lobby"), ["/join den"]);
    assert!(!m.can_send(), "not before the catch-up");
    assert_eq!(
        m.on_line(NOW, "OK JOIN den"),
        [format!("/history {CATCH_UP}")]
    );
    for line in [
        "HIST den 10-0 bob before",
        "HIST den 12-0 bob missed",
        "OK HISTORY 2",
    ] {
        assert!(m.on_line(NOW, line).is_empty());
    }
    assert!(m.can_send());
    assert_eq!(m.edge.as_deref(), Some("edge-2"));
    let texts = shown(&m);
    assert_eq!(texts.iter().filter(|t| *t == "before").count(), 1);
    assert_eq!(texts.iter().filter(|t| *t == "missed").count(), 1);
    let missed = m.entries.iter().find(|e| e.text == "missed").unwrap();
    assert!(matches!(&missed.kind, Kind::Msg { room, .. } if room == "den"));
    // Live again.
    m.on_line(NOW, "MSG den 12-0 bob missed");
    assert_eq!(shown(&m).iter().filter(|t| *t == "missed").count(), 1);
}

#[test]
fn a_reconnect_in_the_lobby_only_catches_up() {
    let mut m = logged_in("lobby");
    m.lost(NOW, "eof", Some((1, 500)));
    m.connected(NOW, "x:1");
    assert_eq!(
        m.on_line(NOW, "OK LOGIN alice lobby"),
        [format!("/history {CATCH_UP}")]
    );
    m.on_line(NOW, "OK HISTORY 0");
    assert!(m.can_send());
}

#[test]
fn history_asked_for_is_shown_in_place_every_time() {
    let mut m = logged_in("den");
    m.on_line(NOW, "MSG den 10-0 bob hi");
    assert_eq!(m.submit(NOW, "/history 5").as_deref(), Some("/history 5"));
    m.on_line(NOW, "HIST den 10-0 bob hi");
    m.on_line(NOW, "OK HISTORY 1");
    let last_two: Vec<&Entry> = m.entries.iter().rev().take(2).collect();
    assert!(
        matches!(&last_two[1].kind, Kind::Hist { conv, from } if conv == "den" && from == "bob")
    );
    assert_eq!(last_two[1].ms, 10);
    assert_eq!(last_two[0].text, "ok: history 1");
}

#[test]
fn keepalive_pings_are_answered_quietly() {
    let mut m = logged_in("lobby");
    let before = m.entries.len();
    m.pinged();
    m.on_line(NOW, "OK PING");
    assert_eq!(m.entries.len(), before);
    m.on_line(NOW, "OK PING");
    assert_eq!(m.entries.len(), before + 1, "a /ping typed is answered");
}

#[test]
fn failed_logins_and_final_goodbyes_close_the_client() {
    let mut m = Model::new("alice");
    m.connected(NOW, "x:1");
    m.on_line(NOW, "ERR bad-credentials wrong user or password");
    assert_eq!(m.state, State::Closed("login failed".into()));
    let mut m = logged_in("lobby");
    m.on_line(NOW, "BYE logged-in-elsewhere");
    m.lost(NOW, "logged-in-elsewhere", None);
    assert_eq!(m.state, State::Closed("logged-in-elsewhere".into()));
    assert!(m.state.label().contains("logged-in-elsewhere"));
}

#[test]
fn listings_feed_completion_and_the_status_line() {
    let mut m = logged_in("lobby");
    for line in [
        "ROOM den 2",
        "ROOM lobby 3",
        "OK ROOMS 2",
        "USER bob",
        "OK WHO lobby 1",
        "OK SUBSCRIBE carol",
        "SYS lobby dave joined",
    ] {
        m.on_line(NOW, line);
    }
    assert!(m.rooms.contains("den"));
    assert!(m.users.contains("bob") && m.users.contains("dave"));
    assert!(m.subscriptions.contains("carol"));
    m.on_line(NOW, "OK UNSUBSCRIBE carol");
    assert!(m.subscriptions.is_empty());
}

#[test]
fn sent_private_messages_are_echoed() {
    let mut m = logged_in("lobby");
    assert_eq!(
        m.submit(NOW, "/msg bob see you").as_deref(),
        Some("/msg bob see you")
    );
    let e = m.entries.back().unwrap();
    assert!(e.own && e.text == "see you");
    assert_eq!(e.kind, Kind::DmOut { to: "bob".into() });
    m.on_line(NOW, "OK MSG bob 20-0 queued");
    assert!(shown(&m).last().unwrap().contains("offline"));
}

#[test]
fn the_input_line_edits_and_remembers() {
    let mut i = Input::default();
    for c in "hello world".chars() {
        i.insert(c);
    }
    i.left();
    i.left();
    i.backspace();
    assert_eq!(i.text(), "hello wold");
    i.home();
    i.delete();
    i.insert('J');
    assert_eq!((i.text().as_str(), i.cursor()), ("Jello wold", 1));
    i.end();
    i.kill_word();
    assert_eq!(i.text(), "Jello ");
    i.home();
    i.right();
    i.kill_after();
    assert_eq!(i.text(), "J");
    i.kill_before();
    assert_eq!(i.text(), "");

    for line in ["one", "two"] {
        i.set(line);
        assert_eq!(i.take(), line);
    }
    i.set("draft");
    i.older();
    assert_eq!(i.text(), "two");
    i.older();
    i.older();
    assert_eq!(i.text(), "one");
    i.newer();
    assert_eq!(i.text(), "two");
    i.newer();
    assert_eq!(i.text(), "draft");
}

#[test]
fn tab_completes_commands_rooms_and_users() {
    let mut m = logged_in("lobby");
    for line in [
        "ROOM dungeon 1",
        "ROOM den 1",
        "USER bob",
        "USER bobby",
        "USER carol",
    ] {
        m.on_line(NOW, line);
    }
    let mut i = Input::default();
    let complete = |i: &mut Input, text: &str| {
        i.set(text);
        i.complete(&m)
    };
    assert!(complete(&mut i, "/jo").is_empty());
    assert_eq!(i.text(), "/join ");
    assert!(complete(&mut i, "/join dun").is_empty());
    assert_eq!(i.text(), "/join dungeon ");
    assert_eq!(complete(&mut i, "/join d"), ["den", "dungeon"]);
    assert_eq!(i.text(), "/join d");
    assert!(complete(&mut i, "/msg ca").is_empty());
    assert_eq!(i.text(), "/msg carol ");
    assert_eq!(complete(&mut i, "/msg bo"), ["bob", "bobby"]);
    assert_eq!(i.text(), "/msg bob");
    assert!(complete(&mut i, "/history @car").is_empty());
    assert_eq!(i.text(), "/history @carol ");
    assert!(complete(&mut i, "car").is_empty());
    assert_eq!(i.text(), "carol: ");
    assert_eq!(complete(&mut i, "/subs"), ["/subscribe", "/subscriptions"]);
    assert_eq!(i.text(), "/subscri");
    // The text after the cursor stays.
    i.set("hi ca there");
    for _ in 0.." there".len() {
        i.left();
    }
    i.complete(&m);
    assert_eq!(i.text(), "hi carol  there");
}

#[test]
fn the_config_file_gives_defaults_and_paths_relative_to_it() {
    let dir = std::env::temp_dir().join(format!("chat-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        "servers = [\"a:1\", \"b:2\"]\nca = \"ca.pem\"\nuser = \"alice\"\npassword_file = \"/pw\"\n",
    )
    .unwrap();
    let cfg = read_config(&path).unwrap();
    assert_eq!(
        cfg,
        FileConfig {
            servers: vec!["a:1".into(), "b:2".into()],
            ca: Some(dir.join("ca.pem")),
            pin: None,
            user: Some("alice".into()),
            password_file: Some("/pw".into()),
        }
    );
    std::fs::write(&path, "password = \"no\"\n").unwrap();
    assert!(read_config(&path).is_err(), "no password in the file");
    std::fs::remove_dir_all(&dir).unwrap();
}
