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
    // Only the subscriptions: the rooms are listed when the user asks.
    assert_eq!(m.on_line(NOW, "OK LOGIN alice lobby"), ["/subscriptions"]);
    assert!(!m.can_send(), "not before the subscriptions are in");
    m.on_line(NOW, "OK SUBSCRIPTIONS 0");
    if room != "lobby" {
        m.on_line(NOW, &format!("OK JOIN {room}"));
    }
    assert!(m.can_send());
    m
}

#[test]
fn server_lines_are_taken_by_their_fields() {
    let mut m = logged_in("lobby");
    m.on_line(NOW, "MSG den 17-0 bob hi  there");
    let e = m.entries.back().unwrap();
    assert_eq!(
        e.kind,
        Kind::Msg {
            room: "den".into(),
            from: "bob".into()
        }
    );
    assert_eq!((e.text.as_str(), e.ms, e.own), ("hi  there", 17, false));
    m.on_line(NOW, "HIST @bob 5-1 alice x");
    let e = m.entries.back().unwrap();
    assert_eq!(
        e.kind,
        Kind::Hist {
            conv: "@bob".into(),
            from: "alice".into()
        }
    );
    assert_eq!((e.text.as_str(), e.ms, e.own), ("x", 5, true));
    m.on_line(NOW, "DM 5-1 bob psst");
    let e = m.entries.back().unwrap();
    assert_eq!(e.kind, Kind::DmIn { from: "bob".into() });
    assert_eq!((e.text.as_str(), e.ms), ("psst", 5));
    m.on_line(NOW, "OK JOIN den");
    assert_eq!(m.room, "den");
    m.on_line(NOW, "HELLO edge-2 chat/1");
    assert_eq!(m.edge.as_deref(), Some("edge-2"));
    for (line, text) in [
        ("OK PING", "ok: ping"),
        ("OK HELP", "ok: help"),
        ("OK WHO Den 2", "ok: who den 2"),
        ("OK PUBLISH 7-0 2", "ok: publish 7-0 2"),
        ("OK ROOMS 3", "ok: rooms 3"),
    ] {
        m.on_line(NOW, line);
        let e = m.entries.back().unwrap();
        assert_eq!((&e.kind, e.text.as_str()), (&Kind::Reply, text));
    }
    m.on_line(NOW, "ERR no-such-user no such user");
    let e = m.entries.back().unwrap();
    assert_eq!(
        (&e.kind, e.text.as_str()),
        (&Kind::Error, "no-such-user no such user")
    );
    let before = m.entries.len();
    assert!(m.on_line(NOW, "BYE quit").is_empty());
    assert_eq!(
        m.entries.len(),
        before,
        "the end of the connection says why"
    );
}

#[test]
fn lines_the_client_does_not_know_are_shown_as_they_are() {
    let mut m = logged_in("lobby");
    for line in [
        "MSG den 17-0",
        "NEWS 5-0 something new",
        "OK FROB",
        "ERR no-such-code what",
        "",
    ] {
        assert!(m.on_line(NOW, line).is_empty(), "{line:?}");
        let e = m.entries.back().unwrap();
        assert_eq!((&e.kind, e.text.as_str()), (&Kind::Reply, line));
    }
    assert!(m.can_send());
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
fn own_messages_are_marked() {
    let mut m = logged_in("den");
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
fn history_asked_for_is_shown_in_place_every_time() {
    let mut m = logged_in("den");
    m.on_line(NOW, "MSG den 10-0 bob hi");
    assert_eq!(m.submit(NOW, "/history 5"), ["/history 5"]);
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
    assert_eq!(m.submit(NOW, "/msg bob see you"), ["/msg bob see you"]);
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
    assert_eq!(i.text(), "Jello wold");
    assert_eq!(i.view(80).1, 1, "the cursor's column");
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

/// `m` loses its connection and logs in again, as alice, on another
/// edge; returns what it sends after the `OK LOGIN`.
fn reconnect(m: &mut Model) -> Vec<String> {
    m.lost(NOW, "the server closed the connection", Some((1, 500)));
    assert!(!m.can_send());
    assert!(m.submit(NOW, "typed while away").is_empty());
    m.connected(NOW, "127.0.0.1:7002");
    m.on_line(NOW, "HELLO edge-2 chat/1");
    m.on_line(NOW, "OK LOGIN alice lobby")
}

fn count(m: &Model, text: &str) -> usize {
    m.entries.iter().filter(|e| e.text == text).count()
}

#[test]
fn a_resume_that_put_the_session_back_in_its_room_is_taken_as_the_rejoin() {
    let mut m = logged_in("lobby");
    m.on_line(2_000, "OK JOIN den");
    assert_eq!(reconnect(&mut m), ["/subscriptions", "/join den"]);
    // The server's own OK JOIN (RESUME) comes with the OK LOGIN, before
    // the answers to what the client sent: the catch-up goes out at once.
    assert_eq!(
        m.on_line(NOW, "OK JOIN den"),
        [format!("/history {CATCH_UP}")]
    );
    assert_eq!(m.room, "den");
    assert!(m.on_line(NOW, "OK SUBSCRIPTIONS 0").is_empty());
    // The answer to the client's own /join says nothing new.
    assert!(m.on_line(NOW, "OK JOIN den").is_empty());
    assert!(!m.can_send(), "not before the catch-up");
    assert!(m.on_line(NOW, "OK HISTORY 0").is_empty());
    assert!(m.can_send());
    assert_eq!(count(&m, "you are now in #den"), 1, "only the first join");
    assert_eq!(count(&m, "back in #den"), 1);
}

#[test]
fn a_reconnect_rejoins_and_shows_only_what_was_missed() {
    // alice joins #den at 2000 ms, after bob's first message.
    let mut m = logged_in("lobby");
    m.on_line(2_000, "OK JOIN den");
    m.on_line(NOW, "MSG den 2500-0 bob seen");
    assert_eq!(m.room, "den");

    assert_eq!(reconnect(&mut m), ["/subscriptions", "/join den"]);
    assert_eq!(m.room, "lobby");
    assert!(m.on_line(NOW, "OK SUBSCRIPTIONS 0").is_empty());
    assert!(!m.can_send(), "not before the catch-up");
    assert_eq!(
        m.on_line(NOW, "OK JOIN den"),
        [format!("/history {CATCH_UP}")]
    );
    // A message said after the rejoin comes live before the history.
    m.on_line(NOW, "MSG den 4000-0 bob live");
    for line in [
        "HIST den 1000-0 bob before alice joined",
        "HIST den 2500-0 bob seen",
        "HIST den 3000-0 bob missed",
        "HIST den 3000-1 bob missed too",
        "HIST den 4000-0 bob live",
        "OK HISTORY 5",
    ] {
        assert!(m.on_line(NOW, line).is_empty());
    }
    assert!(m.can_send());
    assert_eq!(m.edge.as_deref(), Some("edge-2"));
    assert_eq!(count(&m, "before alice joined"), 0);
    for text in ["seen", "missed", "missed too", "live"] {
        assert_eq!(count(&m, text), 1, "{text}");
    }
    let missed = m.entries.iter().find(|e| e.text == "missed").unwrap();
    assert!(matches!(&missed.kind, Kind::Msg { room, .. } if room == "den"));
    assert_eq!(count(&m, "back in #den"), 1);
    assert!(!shown(&m).iter().any(|t| t.contains("not shown")));

    // Another reconnect: nothing new, nothing shown again.
    assert_eq!(reconnect(&mut m), ["/subscriptions", "/join den"]);
    m.on_line(NOW, "OK SUBSCRIPTIONS 0");
    m.on_line(NOW, "OK JOIN den");
    for line in [
        "HIST den 3000-1 bob missed too",
        "HIST den 4000-0 bob live",
        "OK HISTORY 2",
    ] {
        m.on_line(NOW, line);
    }
    for text in ["missed", "missed too", "live"] {
        assert_eq!(count(&m, text), 1, "{text}");
    }
}

#[test]
fn a_catch_up_says_when_more_were_missed_than_it_fetches() {
    let mut m = logged_in("lobby");
    m.on_line(NOW, "MSG lobby 1000-0 bob seen");
    assert_eq!(
        reconnect(&mut m),
        ["/subscriptions".to_string(), format!("/history {CATCH_UP}")]
    );
    m.on_line(NOW, "OK SUBSCRIPTIONS 0");
    for i in 0..CATCH_UP {
        m.on_line(NOW, &format!("HIST lobby {}-0 bob missed {i}", 2000 + i));
    }
    m.on_line(NOW, &format!("OK HISTORY {CATCH_UP}"));
    assert!(m.can_send());
    assert_eq!(count(&m, "missed 0"), 1);
    let notice = format!(
        "more than {CATCH_UP} messages were missed in #lobby: the earlier ones are not shown"
    );
    assert_eq!(count(&m, &notice), 1, "{:?}", shown(&m));
}

#[test]
fn message_ids_compare_as_numbers() {
    let id = |s| Id::parse(s).unwrap();
    assert!(id("999-0") < id("1000-0"));
    assert!(id("1000-9") < id("1000-10"));
    assert_eq!(Id::parse("1000"), None);
    assert_eq!(Id::parse("x-1"), None);
}

#[test]
fn subscriptions_are_fetched_after_each_login_and_replace_the_list() {
    let mut m = logged_in("lobby");
    m.on_line(NOW, "OK SUBSCRIBE carol");
    assert!(m.subscriptions.contains("carol"));
    // carol was dropped in another session meanwhile, dave added.
    assert_eq!(reconnect(&mut m)[0], "/subscriptions");
    let before = m.entries.len();
    for line in ["SUB bob", "SUB dave", "OK SUBSCRIPTIONS 2"] {
        m.on_line(NOW, line);
    }
    let subs: Vec<&str> = m.subscriptions.iter().map(String::as_str).collect();
    assert_eq!(subs, ["bob", "dave"]);
    assert_eq!(m.entries.len(), before, "quietly");
    m.on_line(NOW, "OK HISTORY 0");
    assert!(m.can_send());
    // Asked for by the user: shown, and replaces the list too.
    m.submit(NOW, "/subscriptions");
    for line in ["SUB erin", "OK SUBSCRIPTIONS 1"] {
        m.on_line(NOW, line);
    }
    assert_eq!(shown(&m).last().unwrap(), "sub erin");
    assert_eq!(m.subscriptions.len(), 1);
}

#[test]
fn a_failed_rejoin_goes_on_in_the_lobby() {
    let mut m = logged_in("den");
    reconnect(&mut m);
    m.on_line(NOW, "OK SUBSCRIPTIONS 0");
    assert!(m.on_line(NOW, "ERR unavailable try again").is_empty());
    assert!(m.can_send());
    assert_eq!(m.room, "lobby");
}

#[test]
fn only_transient_login_errors_are_tried_again() {
    use shared::protocol::ErrorCode::{self, *};
    let retried: Vec<ErrorCode> = ErrorCode::ALL
        .iter()
        .copied()
        .filter(|code| login_retry(*code))
        .collect();
    assert_eq!(
        retried,
        [AlreadyLoggedIn, RateLimited, Unavailable, Internal]
    );
}

#[test]
fn a_final_goodbye_closes_the_client() {
    let mut m = logged_in("lobby");
    m.on_line(NOW, "BYE logged-in-elsewhere");
    m.lost(NOW, "logged-in-elsewhere", None);
    assert_eq!(m.state, State::Closed("logged-in-elsewhere".into()));
    assert!(m.state.label().contains("logged-in-elsewhere"));
}

fn line_text(line: &ratatui::text::Line) -> String {
    line.spans.iter().map(|s| s.content.as_ref()).collect()
}

#[test]
fn publications_are_shown_apart_from_room_text() {
    let mut m = logged_in("lobby");
    m.on_line(NOW, "PUB 5-0 carol news");
    let e = m.entries.back().unwrap();
    assert_eq!(
        e.kind,
        Kind::Pub {
            from: "carol".into()
        }
    );
    assert_eq!((e.text.as_str(), e.ms), ("news", 5));
    let text = line_text(&tui::entry_line(&m, e));
    assert!(text.ends_with("[carol] news"), "{text}");
    m.on_line(NOW, "MSG lobby 6-0 carol news");
    let text = line_text(&tui::entry_line(&m, m.entries.back().unwrap()));
    assert!(text.ends_with("<carol> news"), "{text}");
}

#[test]
fn escapes_in_messages_do_not_reach_the_terminal() {
    let mut m = logged_in("lobby");
    m.on_line(NOW, "MSG lobby 6-0 mallory \u{1b}[2J\u{1b}]0;owned\u{7} hi");
    let text = line_text(&tui::entry_line(&m, m.entries.back().unwrap()));
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(text.ends_with("<mallory> \u{fffd}[2J\u{fffd}]0;owned\u{fffd} hi"));
}

#[test]
fn page_up_and_down_move_a_page_at_a_time() {
    let mut m = logged_in("lobby");
    for i in 0..300 {
        m.on_line(NOW, &format!("MSG lobby {}-0 bob line {i}", 1000 + i));
    }
    let mut pane = tui::Pane::default();
    let first = |pane: &mut tui::Pane, m: &Model| line_text(&pane.rows(m, 80, 10)[0]);
    assert!(first(&mut pane, &m).ends_with("line 290"));
    pane.page_up();
    assert!(first(&mut pane, &m).ends_with("line 281"));
    pane.page_up();
    pane.page_up();
    assert!(first(&mut pane, &m).ends_with("line 263"));
    pane.page_down();
    assert!(first(&mut pane, &m).ends_with("line 272"));
    // New lines below do not move what is shown.
    m.on_line(NOW, "MSG lobby 2000-0 bob new");
    assert!(first(&mut pane, &m).ends_with("line 272"));
    for _ in 0..100 {
        pane.page_up();
    }
    let rows = pane.rows(&m, 80, 10);
    assert!(line_text(&rows[0]).contains("connected to"), "at the top");
    assert!(rows.iter().any(|row| line_text(row).ends_with("line 0")));
    for _ in 0..100 {
        pane.page_down();
    }
    let rows = pane.rows(&m, 80, 10);
    assert!(line_text(&rows[9]).ends_with("<bob> new"), "at the bottom");
}

#[test]
fn long_lines_wrap_in_any_width() {
    let mut m = logged_in("lobby");
    let long = format!("{}漢字🙂{}", "x".repeat(5000), "é".repeat(300));
    m.on_line(NOW, &format!("MSG lobby 7-0 bob {long}"));
    let e = m.entries.back().unwrap().clone();
    for width in [1, 2, 3, 7, 80] {
        let rows = tui::wrap(tui::entry_line(&m, &e), width);
        let text: String = rows.iter().map(line_text).collect();
        assert!(text.ends_with(&long));
        // A wide character alone may stand in a one-column row.
        assert!(rows.iter().all(|row| row.width() <= width.max(2)));
        let mut pane = tui::Pane::default();
        assert_eq!(pane.rows(&m, width, 5).len(), 5);
    }
}

#[test]
fn wide_characters_take_two_columns_in_the_input_line() {
    let mut i = Input::default();
    i.set("漢字 ok 🙂");
    // 2+2+1+2+1+2 columns: the cursor after the emoji.
    assert_eq!(i.view(80), ("漢字 ok 🙂".into(), 10));
    // Five columns: scrolled so that the cursor (at the end) stays in
    // sight, with a column free for it.
    assert_eq!(i.view(5), ("k 🙂".into(), 4));
    i.home();
    assert_eq!(i.view(5), ("漢字 ".into(), 0));
    i.right();
    i.right();
    assert_eq!(i.view(5), ("漢字 ".into(), 4));
    i.right();
    assert_eq!(i.view(5), ("字 ok".into(), 3));
}

#[test]
fn tab_completes_commands_rooms_and_users_and_cycles() {
    let mut m = logged_in("lobby");
    for line in [
        "ROOM dungeon 1",
        "ROOM den 1",
        "USER bob",
        "USER bobby",
        "USER carol",
        "OK SUBSCRIBE bob",
    ] {
        m.on_line(NOW, line);
    }
    let mut i = Input::default();
    let complete = |i: &mut Input, text: &str| {
        i.accept();
        i.set(text);
        i.complete(&m);
        i.text()
    };
    assert_eq!(complete(&mut i, "/jo"), "/join ");
    assert_eq!(complete(&mut i, "/JO"), "/join ", "commands in any case");
    assert_eq!(complete(&mut i, "/join dun"), "/join dungeon ");
    assert_eq!(complete(&mut i, "/msg ca"), "/msg carol ");
    assert_eq!(complete(&mut i, "/history @car"), "/history @carol ");
    assert_eq!(complete(&mut i, "car"), "carol: ");
    assert_eq!(complete(&mut i, "/msg Ca"), "/msg Ca", "names as they are");
    assert_eq!(complete(&mut i, "hi "), "hi ", "no word, no name");

    // Several: the first, then each in turn, round and round; bob is
    // seen and subscribed to, and comes once.
    assert_eq!(complete(&mut i, "/join d"), "/join den ");
    i.complete(&m);
    assert_eq!(i.text(), "/join dungeon ");
    i.complete(&m);
    assert_eq!(i.text(), "/join den ");
    assert_eq!(complete(&mut i, "bo"), "bob: ");
    i.complete(&m);
    assert_eq!(i.text(), "bobby: ");
    i.complete(&m);
    assert_eq!(i.text(), "bob: ");
    // Any other key keeps it; the next Tab completes a new word.
    i.accept();
    for c in "hi ca".chars() {
        i.insert(c);
    }
    i.complete(&m);
    assert_eq!(i.text(), "bob: hi carol ");
    // One match: Tab again leaves it, the name is not put in twice.
    i.complete(&m);
    assert_eq!(i.text(), "bob: hi carol ");

    // The text after the cursor stays.
    i.accept();
    i.set("hi ca there");
    for _ in 0.." there".len() {
        i.left();
    }
    i.complete(&m);
    assert_eq!(i.text(), "hi carol  there");
    i.complete(&m);
    assert_eq!(i.text(), "hi carol  there");
}

use tokio::sync::mpsc::{Receiver, Sender};

/// A fake edge on 127.0.0.1 that speaks TLS with certificates of its own.
struct FakeEdge {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    addr: String,
    trust: shared::tls::Trust,
}

type ServerLines = tokio::io::Lines<tokio::io::BufReader<tokio::io::ReadHalf<ServerTls>>>;
type ServerSide = (ServerLines, tokio::io::WriteHalf<ServerTls>);
type ServerTls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl FakeEdge {
    async fn start() -> FakeEdge {
        let certs = shared::tls::DevCerts::generate(&["127.0.0.1"]).unwrap();
        let config = shared::tls::server_config_pem(&certs.server_pem, &certs.server_key_pem);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeEdge {
            addr: listener.local_addr().unwrap().to_string(),
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(config.unwrap()),
            trust: shared::tls::Trust::CaPem(certs.ca_pem),
        }
    }

    /// The next connection, once its first line, the login, is in.
    async fn accept(&self) -> ServerSide {
        self.accept_sending("LOGIN alice pw").await
    }

    /// The next connection, once its first line, `first`, is in.
    async fn accept_sending(&self, first: &str) -> ServerSide {
        use tokio::io::AsyncBufReadExt;
        let (tcp, _) = within(self.listener.accept()).await.unwrap();
        let tls = self.acceptor.accept(tcp).await.unwrap();
        let (rd, wr) = tokio::io::split(tls);
        let mut lines = tokio::io::BufReader::new(rd).lines();
        assert_eq!(read(&mut lines).await.as_deref(), Some(first));
        (lines, wr)
    }

    /// `keep_open` for alice on this edge: the channel to type into and
    /// the events.
    fn client(&self, timing: conn::Timing) -> (Sender<String>, Receiver<conn::Net>) {
        // The fake edge answers no `/edges`.
        let timing = conn::Timing {
            edges_every: None,
            ..timing
        };
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(conn::QUEUE);
        let (net_tx, net_rx) = tokio::sync::mpsc::channel(conn::QUEUE);
        let (servers, trust) = (vec![self.addr.clone()], self.trust.clone());
        let login = "LOGIN alice pw".to_string();
        tokio::spawn(conn::keep_open(
            servers, trust, login, timing, out_rx, net_tx,
        ));
        (out_tx, net_rx)
    }
}

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(15), fut)
        .await
        .expect("timed out")
}

async fn read(lines: &mut ServerLines) -> Option<String> {
    within(lines.next_line()).await.unwrap()
}

/// The client closed the connection (with or without TLS close_notify).
async fn hung_up(lines: &mut ServerLines) {
    let next = within(lines.next_line()).await;
    assert!(matches!(next, Ok(None) | Err(_)), "{next:?}");
}

async fn write(wr: &mut tokio::io::WriteHalf<ServerTls>, text: &str) {
    use tokio::io::AsyncWriteExt;
    wr.write_all(text.as_bytes()).await.unwrap();
}

async fn event(events: &mut Receiver<conn::Net>) -> Option<conn::Net> {
    within(events.recv()).await
}

/// A fake edge, alice's client on it, and the edge's side of the
/// connection once the login is in.
async fn fake_session(
    timing: conn::Timing,
) -> (FakeEdge, Sender<String>, Receiver<conn::Net>, ServerSide) {
    let edge = FakeEdge::start().await;
    let (out, events) = edge.client(timing);
    let side = edge.accept().await;
    (edge, out, events, side)
}

async fn connected(events: &mut Receiver<conn::Net>) {
    let got = event(events).await;
    assert!(matches!(got, Some(conn::Net::Connected(_))), "{got:?}");
}

fn line(text: &str) -> Option<conn::Net> {
    Some(conn::Net::Line(text.into()))
}

#[tokio::test]
async fn a_login_that_failed_for_now_is_tried_again_on_a_new_connection() {
    let (edge, _out, mut events, (mut lines, mut wr)) = fake_session(Default::default()).await;
    write(&mut wr, "HELLO edge-1 chat/1\nERR unavailable no answer\n").await;
    assert_eq!(
        event(&mut events).await,
        Some(conn::Net::Connected(edge.addr.clone()))
    );
    assert_eq!(event(&mut events).await, line("HELLO edge-1 chat/1"));
    assert_eq!(event(&mut events).await, line("ERR unavailable no answer"));
    match event(&mut events).await {
        Some(conn::Net::Lost {
            why,
            retry: Some((1, delay)),
        }) => {
            assert_eq!(why, "login failed: unavailable no answer");
            assert!(delay <= conn::BACKOFF_MIN);
        }
        other => panic!("{other:?}"),
    }
    hung_up(&mut lines).await;
    let (_lines, mut wr) = edge.accept().await;
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    connected(&mut events).await;
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
}

#[tokio::test]
async fn reconnects_with_its_resume_token_and_falls_back_to_the_password() {
    let (edge, _out, mut events, (lines, mut wr)) = fake_session(Default::default()).await;
    write(&mut wr, "OK LOGIN alice lobby\nTOKEN t0k 99\nOK PING\n").await;
    connected(&mut events).await;
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
    assert_eq!(event(&mut events).await, line("OK PING"), "no TOKEN shown");
    drop((lines, wr));
    let lost = event(&mut events).await;
    assert!(matches!(lost, Some(conn::Net::Lost { .. })), "{lost:?}");

    let (mut lines, mut wr) = edge.accept_sending("RESUME alice t0k").await;
    write(&mut wr, "ERR bad-credentials wrong user name or token\n").await;
    assert_eq!(read(&mut lines).await.as_deref(), Some("LOGIN alice pw"));
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    connected(&mut events).await;
    assert_eq!(
        event(&mut events).await,
        Some(conn::Net::Notice(
            "the resume token was refused: logging in with the password".into()
        ))
    );
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
}

#[tokio::test]
async fn lines_the_client_does_not_know_are_passed_on_as_they_are() {
    let (_edge, _out, mut events, (_lines, mut wr)) = fake_session(Default::default()).await;
    write(
        &mut wr,
        "NEWS 5-0 something new\nOK LOGIN alice lobby\nOK PING\n",
    )
    .await;
    connected(&mut events).await;
    // It does not end the login; an `OK PING` not asked for is passed on.
    for text in ["NEWS 5-0 something new", "OK LOGIN alice lobby", "OK PING"] {
        assert_eq!(event(&mut events).await, line(text));
    }
}

#[tokio::test]
async fn bad_credentials_end_the_client_without_trying_again() {
    let (_edge, _out, mut events, (mut lines, mut wr)) = fake_session(Default::default()).await;
    write(&mut wr, "ERR bad-credentials wrong user or password\n").await;
    connected(&mut events).await;
    event(&mut events).await;
    assert_eq!(
        event(&mut events).await,
        Some(conn::Net::Refused(
            "bad-credentials wrong user or password".into()
        ))
    );
    assert_eq!(event(&mut events).await, None, "the loop has ended");
    hung_up(&mut lines).await;
}

#[tokio::test]
async fn a_login_elsewhere_is_not_undone_by_a_reconnect() {
    let (_edge, _out, mut events, (_lines, mut wr)) = fake_session(Default::default()).await;
    write(&mut wr, "OK LOGIN alice lobby\nBYE logged-in-elsewhere\n").await;
    drop(wr);
    drop(_lines);
    for _ in 0..3 {
        event(&mut events).await;
    }
    assert_eq!(
        event(&mut events).await,
        Some(conn::Net::Lost {
            why: "logged-in-elsewhere".into(),
            retry: None
        })
    );
    assert_eq!(event(&mut events).await, None, "the loop has ended");
}

#[tokio::test]
async fn a_silent_server_is_left_after_a_keepalive_ping_goes_unanswered() {
    let timing = conn::Timing {
        keepalive: std::time::Duration::from_millis(100),
        answer_within: std::time::Duration::from_millis(300),
        edges_every: None,
        ..Default::default()
    };
    let (edge, _out, mut events, (mut lines, mut wr)) = fake_session(timing).await;
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    // The first ping is answered, and the answer not passed on.
    assert_eq!(read(&mut lines).await.as_deref(), Some("/ping"));
    write(&mut wr, "OK PING\n").await;
    // The second is not.
    assert_eq!(read(&mut lines).await.as_deref(), Some("/ping"));
    connected(&mut events).await;
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
    match event(&mut events).await {
        Some(conn::Net::Lost { why, retry }) => {
            assert_eq!(why, "no answer from the server in 0.3 s");
            assert!(retry.is_some());
        }
        other => panic!("{other:?}"),
    }
    let _again = edge.accept().await;
}

#[tokio::test]
async fn over_long_server_lines_are_left_out_with_a_notice() {
    let (_edge, _out, mut events, (_lines, mut wr)) = fake_session(Default::default()).await;
    let long = "x".repeat(conn::MAX_LINE + 10);
    write(
        &mut wr,
        &format!("OK LOGIN alice lobby\nINFO {long}\nINFO after\n"),
    )
    .await;
    for _ in 0..2 {
        event(&mut events).await;
    }
    assert!(matches!(
        event(&mut events).await,
        Some(conn::Net::Notice(text)) if text.contains("left out")
    ));
    assert_eq!(event(&mut events).await, line("INFO after"));
}

#[tokio::test]
async fn lines_typed_for_a_lost_connection_are_dropped_with_a_notice() {
    let edge = FakeEdge::start().await;
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(conn::QUEUE);
    let (net_tx, mut events) = tokio::sync::mpsc::channel(conn::QUEUE);
    out_tx.send("one".to_string()).await.unwrap();
    out_tx.send("two".to_string()).await.unwrap();
    let (servers, trust) = (vec![edge.addr.clone()], edge.trust.clone());
    let login = "LOGIN alice pw".to_string();
    let timing = conn::Timing {
        edges_every: None,
        ..Default::default()
    };
    tokio::spawn(conn::keep_open(
        servers, trust, login, timing, out_rx, net_tx,
    ));
    let (mut lines, mut wr) = edge.accept().await;
    assert!(matches!(
        event(&mut events).await,
        Some(conn::Net::Notice(text)) if text.starts_with("2 line(s)")
    ));
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    out_tx.send("three".to_string()).await.unwrap();
    assert_eq!(read(&mut lines).await.as_deref(), Some("three"));
}

#[test]
fn reconnect_waits_are_jittered() {
    let waits: std::collections::HashSet<_> = (0..50)
        .map(|_| conn::jitter(std::time::Duration::from_secs(2)))
        .collect();
    assert!(waits
        .iter()
        .all(|w| w.as_millis() > 1000 && w.as_millis() <= 2000));
    assert!(waits.len() > 1, "{waits:?}");
}

#[test]
fn user_names_and_passwords_are_checked() {
    assert!(check_user("alice_01-x").is_ok());
    for bad in ["", "a b", "é", &"x".repeat(33), "a\nb"] {
        assert!(check_user(bad).is_err(), "{bad:?}");
    }
    assert!(password(Some("a b".into()), None, "alice").is_ok());
    assert!(password(Some("a\nLOGIN x".into()), None, "alice").is_err());
    assert!(password(Some("a\r".into()), None, "alice").is_err());
}

#[test]
fn the_password_file_gives_its_first_line() {
    let path = std::env::temp_dir().join(format!("chat-pw-{}", std::process::id()));
    std::fs::write(&path, "s3cret pw\r\nsecond line\n").unwrap();
    assert_eq!(password(None, Some(&path), "alice").unwrap(), "s3cret pw");
    assert_eq!(
        password(Some("env".into()), Some(&path), "alice").unwrap(),
        "env",
        "$CHAT_PASSWORD first"
    );
    std::fs::remove_file(&path).unwrap();
    assert!(password(None, Some(&path), "alice").is_err());
}

#[test]
fn the_command_line_overrides_the_config_file() {
    let dir = std::env::temp_dir().join(format!("chat-override-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.toml");
    let pin = "ab".repeat(32);
    std::fs::write(
        &path,
        format!("servers = [\"a:1\"]\nuser = \"alice\"\npin = \"{pin}\"\npassword_file = \"pw\"\n"),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut argv = vec!["chat", "--config", config];
        argv.extend(args);
        settings(Cli::try_parse_from(argv).unwrap()).unwrap()
    };
    let s = cli(&[]);
    assert_eq!(s.servers, ["a:1"]);
    assert_eq!(s.user.as_deref(), Some("alice"));
    assert_eq!(s.password_file, Some(dir.join("pw")));
    let s = cli(&[
        "--server",
        "b:2",
        "--server",
        "c:3",
        "--user",
        "bob",
        "--password-file",
        "/elsewhere",
    ]);
    assert_eq!(s.servers, ["b:2", "c:3"]);
    assert_eq!(s.user.as_deref(), Some("bob"));
    assert_eq!(s.password_file, Some("/elsewhere".into()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cut_reply_says_how_many_more_there_were() {
    let mut m = logged_in("lobby");
    for line in ["USER bob", "MORE WHO 4", "OK WHO lobby 1"] {
        assert!(m.on_line(NOW, line).is_empty(), "{line}");
    }
    let shown = shown(&m);
    let tail: Vec<&str> = shown
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        ["user bob", "4 more not shown (who)", "ok: who lobby 1"]
    );
}

/// A model of `user` with its own keys in `dir`, logged in: returns it and
/// its public key (as it published it).
fn sealing(dir: &std::path::Path, user: &str) -> (Model, String) {
    let e2e = e2e::E2e::load(dir, user, 4096).unwrap();
    let mut m = Model::new(user).with_e2e(e2e);
    m.connected(NOW, "127.0.0.1:7001");
    let out = m.on_line(NOW, &format!("OK LOGIN {user} lobby"));
    let key = out[0]
        .strip_prefix("/key set ")
        .expect("publishes first")
        .to_string();
    assert_eq!(out[1], "/subscriptions");
    // Its own answer is not shown.
    let before = m.entries.len();
    assert!(m.on_line(NOW, &format!("OK KEY {user}")).is_empty());
    m.on_line(NOW, "OK SUBSCRIPTIONS 0");
    assert_eq!(m.entries.len(), before);
    assert!(m.can_send());
    (m, key)
}

/// `m` sends `text` to `to`, whose key is `key`: the line that goes out.
fn sealed_msg(m: &mut Model, to: &str, key: &str, text: &str) -> String {
    assert_eq!(
        m.submit(NOW, &format!("/msg {to} {text}")),
        [format!("/key {to}")]
    );
    let fp = shared::identity::IdentityKey::parse(key)
        .unwrap()
        .fingerprint();
    assert!(m.on_line(NOW, &format!("KEY {to} {key} {fp}")).is_empty());
    let mut out = m.on_line(NOW, &format!("OK KEY {to}"));
    assert_eq!(out.len(), 1, "{out:?}");
    out.pop().unwrap()
}

#[test]
fn sealed_messages_show_a_lock_and_broken_ones_say_so() {
    let (a, b) = (::e2e::config_dir(), ::e2e::config_dir());
    let (mut alice, alice_key) = sealing(&a, "alice");
    let (mut bob, bob_key) = sealing(&b, "bob");
    let line = sealed_msg(&mut alice, "bob", &bob_key, "meet at noon");
    assert!(line.starts_with("/msg bob e2e:") && !line.contains("noon"));
    let e = alice.entries.back().unwrap();
    assert_eq!(e.kind, Kind::DmOut { to: "bob".into() });
    assert_eq!(e.text, "🔒 meet at noon");
    assert!(shown(&alice)
        .iter()
        .any(|t| t.starts_with("first contact with bob")));

    let sealed = line.strip_prefix("/msg bob ").unwrap();
    bob.on_line(NOW, &format!("DM 5-0 alice {sealed}"));
    let e = bob.entries.back().unwrap();
    assert_eq!(
        e.kind,
        Kind::DmIn {
            from: "alice".into()
        }
    );
    assert_eq!(e.text, "🔒 meet at noon");
    // Both read it in the history; a plain one has no lock (and from
    // alice, whose key bob knows now, it is said to be plain).
    bob.on_line(NOW, &format!("HIST @alice 5-0 alice {sealed}"));
    assert_eq!(bob.entries.back().unwrap().text, "🔒 meet at noon");
    alice.on_line(NOW, &format!("HIST @bob 5-0 alice {sealed}"));
    assert_eq!(alice.entries.back().unwrap().text, "🔒 meet at noon");
    bob.on_line(NOW, "DM 6-0 alice plain words");
    assert_eq!(
        bob.entries.back().unwrap().text,
        "⚠ not encrypted: plain words"
    );
    // One character changed: never shown as text.
    let mut forged = sealed.to_string();
    let at = forged.len() - 5;
    let c = if &forged[at..=at] == "A" { "B" } else { "A" };
    forged.replace_range(at..=at, c);
    bob.on_line(NOW, &format!("DM 7-0 alice {forged}"));
    let e = bob.entries.back().unwrap();
    assert!(e.text.starts_with("⚠ undecryptable message"), "{}", e.text);
    // Local commands are not sent.
    assert!(bob.submit(NOW, "/fingerprint alice").is_empty());
    let fp = shared::identity::IdentityKey::parse(&alice_key)
        .unwrap()
        .fingerprint();
    assert!(bob.entries.back().unwrap().text.contains(&fp));
}

#[test]
fn edges_are_tried_from_the_hint_and_the_least_loaded_the_lost_one_last() {
    use shared::placement::EdgeLoad;
    let load = |addr: &str, conns| EdgeLoad {
        addr: addr.into(),
        conns,
    };
    let mut edges = conn::Edges {
        known: vec![load("a:1", 5), load("b:1", 1), load("c:1", 1)],
        ..Default::default()
    };
    let given = ["g:1".to_string(), "a:1".to_string()];
    let order: Vec<String> = conn::attempts(&edges, &given, Some("b:1")).into();
    assert_eq!(order, ["c:1", "a:1", "g:1", "b:1"]);
    // Ties are broken at random.
    let firsts: std::collections::HashSet<String> = (0..100)
        .map(|_| conn::attempts(&edges, &given, None)[0].clone())
        .collect();
    assert_eq!(firsts.len(), 2, "{firsts:?}");
    edges.hint = Some("h:1".into());
    assert_eq!(conn::attempts(&edges, &given, Some("b:1"))[0], "h:1");
    // Nothing known: the given addresses in turn, the lost one last.
    let none = conn::Edges::default();
    let order: Vec<String> = conn::attempts(&none, &given, Some("g:1")).into();
    assert_eq!(order, ["a:1", "g:1"]);
}

/// A session's task: how it ended, the edges and the resume token it left.
type SessionTask = tokio::task::JoinHandle<(conn::End, conn::Edges, conn::Resume)>;

/// How long the sessions of [`session_with_edges`] wait without a line
/// sent before their `/edges`.
const EDGES_QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// `conn::session` for alice on `edge`, keeping `Edges` (`redirected`:
/// this connection follows a `REDIRECT`), with `/edges` every 50 ms once
/// [`EDGES_QUIET`]: the channel to type into, the events, and the
/// session's end with what it learnt.
fn session_with_edges(
    edge: &FakeEdge,
    redirected: bool,
) -> (Sender<String>, Receiver<conn::Net>, SessionTask) {
    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel(conn::QUEUE);
    let (net_tx, events) = tokio::sync::mpsc::channel(conn::QUEUE);
    let (addr, trust) = (edge.addr.clone(), edge.trust.clone());
    let timing = conn::Timing {
        edges_every: Some(std::time::Duration::from_millis(50)),
        edges_quiet: EDGES_QUIET,
        ..Default::default()
    };
    let client = tokio::spawn(async move {
        let stream = conn::connect(&addr, &trust).await.unwrap();
        let mut edges = conn::Edges {
            redirected,
            ..Default::default()
        };
        let login = Some("LOGIN alice pw");
        let mut resume = conn::Resume::default();
        let end = conn::session(
            stream,
            login,
            &mut resume,
            timing,
            &mut out_rx,
            &net_tx,
            Some(&mut edges),
        );
        (end.await, edges, resume)
    });
    (out_tx, events, client)
}

#[tokio::test]
async fn the_edge_list_is_kept_up_to_date_without_being_shown() {
    use shared::placement::EdgeLoad;
    let edge = FakeEdge::start().await;
    let (_out, mut events, client) = session_with_edges(&edge, false);
    let (mut lines, mut wr) = edge.accept().await;
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    // Asked once logged in; the answer, and a REDIRECT, are not shown.
    assert_eq!(read(&mut lines).await.as_deref(), Some("/edges"));
    let answer = "EDGE a:1 3\nEDGE b:1 1\nOK EDGES 2\nREDIRECT b:1\nBYE server-shutdown\n";
    write(&mut wr, answer).await;
    drop((lines, wr));
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
    assert_eq!(event(&mut events).await, line("BYE server-shutdown"));
    let (end, edges, _) = within(client).await.unwrap();
    assert_eq!(end, conn::End::Closed(Some("server-shutdown".into())));
    let load = |addr: &str, conns| EdgeLoad {
        addr: addr.into(),
        conns,
    };
    assert_eq!(edges.known, [load("a:1", 3), load("b:1", 1)]);
    assert_eq!(edges.hint.as_deref(), Some("b:1"));
}

#[tokio::test]
async fn the_edge_list_is_asked_for_when_quiet_and_an_err_to_it_is_not_the_users() {
    let edge = FakeEdge::start().await;
    let (out, mut events, client) = session_with_edges(&edge, false);
    let (mut lines, mut wr) = edge.accept().await;
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    let typed = std::time::Instant::now();
    out.send("hi".into()).await.unwrap();
    assert_eq!(read(&mut lines).await.as_deref(), Some("hi"));
    // Asked only once no line has been sent for a while: an ERR to the
    // chat line before it would be in by then.
    assert_eq!(read(&mut lines).await.as_deref(), Some("/edges"));
    assert!(typed.elapsed() >= EDGES_QUIET, "{:?}", typed.elapsed());
    // Its ERR (the list could not be read) is not shown, and the /edges
    // the user types next is answered to the user, not taken as the list.
    write(&mut wr, "ERR unavailable try again\n").await;
    out.send("/edges".into()).await.unwrap();
    assert_eq!(read(&mut lines).await.as_deref(), Some("/edges"));
    write(&mut wr, "EDGE a:1 3\nOK EDGES 1\n").await;
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
    assert_eq!(event(&mut events).await, line("EDGE a:1 3"));
    assert_eq!(event(&mut events).await, line("OK EDGES 1"));
    drop((lines, wr));
    let (_, edges, _) = within(client).await.unwrap();
    assert!(edges.known.is_empty(), "{:?}", edges.known);
}

#[tokio::test]
async fn a_redirect_before_the_login_is_answered_ends_the_session_once_it_is() {
    let edge = FakeEdge::start().await;
    let (_out, mut events, client) = session_with_edges(&edge, false);
    let (mut lines, mut wr) = edge.accept().await;
    write(&mut wr, "HELLO edge-1 chat/1\nREDIRECT c:1\n").await;
    assert_eq!(event(&mut events).await, line("HELLO edge-1 chat/1"));
    // The login sent here is answered first: it cannot land after the
    // one on the next edge and end it.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!client.is_finished(), "waits for the login's answer");
    write(&mut wr, "OK LOGIN alice lobby\n").await;
    // The rest of the login's reply follows (the edge counts the queued
    // messages delivered): in once a ping sent after it is answered.
    assert_eq!(read(&mut lines).await.as_deref(), Some("/ping"));
    let token = "ab".repeat(32);
    write(
        &mut wr,
        &format!("DM 1-0 bob while you were away\nTOKEN {token} 1\nMSG lobby 2-0 bob hi\n"),
    )
    .await;
    // The queued message is shown, and the line after the token too: the
    // token has been read, and the client still waits for the ping's answer.
    assert_eq!(
        event(&mut events).await,
        line("DM 1-0 bob while you were away")
    );
    assert_eq!(event(&mut events).await, line("MSG lobby 2-0 bob hi"));
    assert!(!client.is_finished(), "waits for the ping's answer");
    write(&mut wr, "OK PING\n").await;
    let (end, edges, resume) = within(client).await.unwrap();
    assert_eq!(end, conn::End::Redirected);
    assert_eq!(edges.hint.as_deref(), Some("c:1"));
    assert_eq!(
        resume.token,
        Some(token),
        "the next edge gets RESUME with it"
    );
    // The answers (OK LOGIN, OK PING) are not shown: the session moves.
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn a_second_redirect_in_a_row_before_a_login_is_not_followed() {
    let edge = FakeEdge::start().await;
    let (_out, mut events, client) = session_with_edges(&edge, true);
    let (lines, mut wr) = edge.accept().await;
    write(
        &mut wr,
        "HELLO edge-2 chat/1\nREDIRECT c:1\nOK LOGIN alice lobby\n",
    )
    .await;
    assert_eq!(event(&mut events).await, line("HELLO edge-2 chat/1"));
    assert_eq!(event(&mut events).await, line("OK LOGIN alice lobby"));
    drop((lines, wr));
    let (end, edges, _) = within(client).await.unwrap();
    assert!(!matches!(end, conn::End::Redirected), "{end:?}");
    assert_eq!(edges.hint, None);
}

#[test]
fn a_keys_fingerprint_is_worked_out_not_taken_from_the_server() {
    let (a, b) = (::e2e::config_dir(), ::e2e::config_dir());
    let (mut alice, _) = sealing(&a, "alice");
    let (_, bob_key) = sealing(&b, "bob");
    let real = shared::identity::IdentityKey::parse(&bob_key)
        .unwrap()
        .fingerprint();
    let lie = "0000:0000:0000:0000:0000:0000:0000:0000";
    alice.on_line(NOW, &format!("KEY bob {bob_key} {lie}"));
    let text = &alice.entries.back().unwrap().text;
    assert_eq!(*text, format!("bob's key on the server: {real}"));
}
