//! The interactive `chat` client in a pseudo-terminal (tmux), against the
//! real services as processes: what a person sees on the screen.

use e2e::{binary, free_port, ChatClient, Role, Shape, System, WAIT};
use shared::config::Config;
use shared::line::ServerLine;
use std::process::Command;
use std::time::Duration;

/// How long a screen has to show what a test waits for: longer than
/// [`WAIT`], as a reconnect backs off between attempts.
const SCREEN_WAIT: Duration = Duration::from_secs(30);

/// A tmux server of the test's own, running one command in a 120×40
/// window with a configuration directory of its own (the client's keys);
/// killed on drop.
struct Tmux {
    socket: String,
    config: e2e::ConfigDir,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("chat-e2e-{}-{}", std::process::id(), free_port()),
            config: e2e::config_dir(),
        };
        // The exit status stays on the screen for the test to read.
        let xdg = tmux.config.parent().unwrap().display().to_string();
        let shell =
            format!("env XDG_CONFIG_HOME='{xdg}' {command}; echo \"[chat exited $?]\"; sleep 600");
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
        ])
        .run(&["set-option", "-g", "status", "off"]);
        tmux.run(&["respawn-pane", "-k", "-t", "0", &shell]);
        tmux
    }

    fn run(&self, args: &[&str]) -> &Tmux {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux must be installed (make test installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    /// Types `text` as it is.
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", "0", "-l", text]);
    }

    /// Presses keys by their tmux names: `Enter`, `Tab`, `PPage`, `C-c`.
    fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "0", key]);
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `pred`; returns that screen.
    async fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + SCREEN_WAIT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting until {what}; the screen:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What tmux prints for `args`, trimmed.
    fn ask(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Whether the pane shows the terminal's alternate screen (a
    /// full-screen program that has not restored the terminal).
    fn alternate_on(&self) -> bool {
        self.ask(&["display-message", "-p", "-t", "0", "#{alternate_on}"]) == "1"
    }

    /// The process id of the command the pane runs (a child of its shell).
    fn command_pid(&self) -> String {
        let shell = self.ask(&["display-message", "-p", "-t", "0", "#{pane_pid}"]);
        let out = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &shell])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!pid.is_empty() && !pid.contains('\n'), "one child: {pid:?}");
        pid
    }

    async fn shows(&self, text: &str) -> String {
        self.until(&format!("the screen shows {text:?}"), |s| s.contains(text))
            .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// A system with the accounts of `users`, its configuration changed by
/// `tweak`.
async fn system(users: &[&str], tweak: impl FnOnce(&mut Config)) -> System {
    let sys = System::start_with(Shape::default(), tweak).await;
    sys.add_users(users).await;
    sys
}

/// The interactive client for `alice`, on the given edges only
/// (`--no-balance`).
fn alice(sys: &System, edges: &[usize]) -> Tmux {
    Tmux::start(&chat_command(sys, edges, "alice-pw", "--no-balance"))
}

/// The `chat` command line for `alice` with `password` on the given
/// edges, and `more` arguments.
fn chat_command(sys: &System, edges: &[usize], password: &str, more: &str) -> String {
    let mut cmd = format!(
        "env CHAT_PASSWORD={password} '{}' --ca '{}' --user alice {more}",
        binary("chat").display(),
        sys.ca().display()
    );
    for &i in edges {
        cmd.push_str(&format!(" --server {}", sys.edge(i)));
    }
    cmd
}

/// The status line, connected as `alice` in `room` through edge `i`.
fn status(sys: &System, room: &str, i: usize) -> String {
    format!(
        " alice | #{room} | {} ({}) | connected",
        Role::Edge.id(i),
        sys.edge(i)
    )
}

/// The last non-empty line on the screen: the input line.
fn input_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim_end()
}

fn count(screen: &str, text: &str) -> usize {
    screen.matches(text).count()
}

#[tokio::test]
async fn logs_in_joins_a_room_and_keeps_a_half_typed_line_while_messages_arrive() {
    let sys = system(&["alice", "bob"], |c| c.edge.lines_per_sec = 0).await;
    let tmux = alice(&sys, &[0]);
    tmux.shows(&status(&sys, "lobby", 0)).await;
    tmux.shows("=== logged in as alice, in #lobby").await;

    tmux.type_text("/jo");
    tmux.press("Tab");
    tmux.until("the command is completed", |s| {
        input_line(s) == "[#lobby] /join"
    })
    .await;
    tmux.type_text("den");
    tmux.press("Enter");
    tmux.shows(&status(&sys, "den", 0)).await;
    tmux.shows("=== you are now in #den").await;

    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("/join den").await;
    bob.until(|l| l == "OK JOIN den").await;
    tmux.shows("-!- bob joined #den").await;

    // A message arrives while alice is typing: her line stays as it was.
    tmux.type_text("half typed, to bo");
    tmux.until("the typing shows", |s| {
        input_line(s) == "[#den] half typed, to bo"
    })
    .await;
    bob.say("hello alice").await;
    let screen = tmux.shows("<bob> hello alice").await;
    assert_eq!(input_line(&screen), "[#den] half typed, to bo", "{screen}");
    // Tab completes a name she has seen, and Enter sends the line.
    tmux.press("Tab");
    tmux.until("the name is completed", |s| {
        input_line(s) == "[#den] half typed, to bob"
    })
    .await;
    tmux.press("Enter");
    bob.until(|l| l.starts_with("MSG ") && l.ends_with(" alice half typed, to bob "))
        .await;
    let screen = tmux.shows("»<alice> half typed, to bob").await;
    assert_eq!(input_line(&screen), "[#den]", "{screen}");

    // Up brings the line back from the history.
    tmux.press("Up");
    tmux.until("the line is back", |s| {
        input_line(s) == "[#den] half typed, to bob"
    })
    .await;
    tmux.press("C-u");

    // Four screens: PageUp goes back one page (37 rows of the pane's 38),
    // not to the top.
    for i in 0..150 {
        bob.say(&format!("line {i}")).await;
    }
    tmux.shows("<bob> line 149").await;
    tmux.press("PPage");
    let screen = tmux
        .until("scrolled back a page", |s| {
            s.contains("scrolled back 37 rows")
        })
        .await;
    assert!(screen.contains("<bob> line 100\n"), "{screen}");
    assert!(!screen.contains("<bob> line 149"), "{screen}");
    tmux.press("PPage");
    tmux.shows("scrolled back 74 rows").await;
    tmux.press("NPage");
    tmux.press("NPage");
    tmux.until("back at the bottom", |s| {
        !s.contains("scrolled back") && s.contains("<bob> line 149")
    })
    .await;

    // Ctrl-C logs out and restores the terminal.
    assert!(tmux.alternate_on());
    tmux.press("C-c");
    bob.until(|l| l == "SYS den alice left").await;
    tmux.shows("[chat exited 0]").await;
    assert!(!tmux.alternate_on(), "the terminal is restored");
}

#[tokio::test]
async fn reconnects_after_its_edge_restarts_and_shows_what_it_missed_once() {
    let mut sys = system(&["alice", "bob"], |_| {}).await;
    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("/join den").await;
    bob.until(|l| l == "OK JOIN den").await;
    bob.say("said before alice came").await;
    bob.until(|l| l.ends_with(" bob said before alice came"))
        .await;

    let tmux = alice(&sys, &[0]);
    tmux.shows(&status(&sys, "lobby", 0)).await;
    tmux.type_text("/join den");
    tmux.press("Enter");
    tmux.shows(&status(&sys, "den", 0)).await;
    bob.until(|l| l == "SYS den alice joined").await;
    bob.say("before the restart").await;
    tmux.shows("<bob> before the restart").await;

    sys.stop(Role::Edge, 0).await;
    tmux.shows("| reconnecting").await;
    // Said while alice is away.
    bob.say("while you were away").await;
    bob.until(|l| l.ends_with(" bob while you were away")).await;
    tmux.type_text("typed while away");

    let mut feed = sys.redis.monitor().await;
    sys.restart(Role::Edge, 0).await;
    let screen = tmux.shows(&status(&sys, "den", 0)).await;
    assert!(screen.contains("=== back in #den"), "{screen}");
    // What the client asked for on its way back: its subscriptions and a
    // modest catch-up, no room listing.
    let ran = feed.ran_before("back-in-den").await;
    let calls = |f: &str| -> Vec<&String> { ran.iter().filter(|l| l.contains(f)).collect() };
    assert!(calls("\"chat_rooms\"").is_empty(), "{ran:?}");
    let history = calls("\"chat_history\"");
    assert!(
        history.len() == 1 && history[0].contains("\"50\" \"den\""),
        "{history:?}"
    );
    assert_eq!(count(&screen, "<bob> while you were away"), 1, "{screen}");
    assert_eq!(count(&screen, "<bob> before the restart"), 1, "{screen}");
    assert_eq!(count(&screen, "said before alice came"), 0, "{screen}");
    assert_eq!(input_line(&screen), "[#den] typed while away", "{screen}");
    bob.until(|l| l == "SYS den alice joined").await;

    // Live again, both ways.
    bob.say("welcome back").await;
    tmux.shows("<bob> welcome back").await;
    tmux.press("Enter");
    bob.until(|l| l.starts_with("MSG ") && l.ends_with(" alice typed while away"))
        .await;
    let screen = tmux.shows("»<alice> typed while away").await;
    assert_eq!(count(&screen, "<bob> while you were away"), 1, "{screen}");
    assert_eq!(count(&screen, "<bob> before the restart"), 1, "{screen}");
    assert_eq!(count(&screen, "said before alice came"), 0, "{screen}");
}

#[tokio::test]
async fn falls_back_to_the_next_server_when_its_edge_dies() {
    let mut sys = system(&["alice", "bob"], |_| {}).await;
    let tmux = alice(&sys, &[0, 1]);
    tmux.shows(&status(&sys, "lobby", 0)).await;
    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("hi").await;
    tmux.shows("<bob> hi").await;

    sys.kill(Role::Edge, 0).await;
    let screen = tmux.shows(&status(&sys, "lobby", 1)).await;
    assert_eq!(count(&screen, "<bob> hi"), 1, "{screen}");
    bob.say("/msg alice still there?").await;
    // Sealed by bob's client, opened by alice's.
    tmux.shows("*bob* 🔒 still there?").await;
}

#[tokio::test]
async fn a_client_given_one_edge_moves_to_another_live_edge_when_it_is_killed() {
    let mut sys = System::start_with(Shape::new(3, 1, 1), |_| {}).await;
    sys.add_users(&["alice"]).await;
    // Edges 2 and 3 hold a connection each: edge 1 is the least loaded.
    let _held = [sys.connect(1).await, sys.connect(2).await];
    sys.edges_count(&[0, 1, 1]).await;
    let tmux = Tmux::start(&chat_command(&sys, &[0], "alice-pw", ""));
    tmux.shows(&status(&sys, "lobby", 0)).await;

    let killed = std::time::Instant::now();
    sys.kill(Role::Edge, 0).await;
    let elsewhere = [status(&sys, "lobby", 1), status(&sys, "lobby", 2)];
    tmux.until("alice is back on edge 2 or 3", |s| {
        elsewhere.iter().any(|e| s.contains(e.as_str()))
    })
    .await;
    let took = killed.elapsed();
    eprintln!("back on another edge {} ms after kill -9", took.as_millis());
    assert!(took <= Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn a_drained_edge_moves_the_client_to_another_in_its_room_without_repeats() {
    let sys = system(&["alice", "bob"], |_| {}).await;
    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    // Edge 2 holds bob: alice, given edge 1, stays there (least loaded).
    sys.edges_count(&[0, 1]).await;
    let tmux = Tmux::start(&chat_command(&sys, &[0], "alice-pw", ""));
    tmux.shows(&status(&sys, "lobby", 0)).await;
    tmux.type_text("/join den");
    tmux.press("Enter");
    tmux.shows(&status(&sys, "den", 0)).await;
    bob.say("/join den").await;
    bob.until(|l| l == "OK JOIN den").await;
    bob.say("before the drain").await;
    tmux.shows("<bob> before the drain").await;

    let (code, _) = e2e::http(sys.admin(Role::Edge, 0), "POST", "/drain").await;
    assert_eq!(code, 200);
    // REDIRECT and BYE server-shutdown: on edge 2, back in #den.
    let screen = tmux.shows(&status(&sys, "den", 1)).await;
    assert!(screen.contains("moving to"), "{screen}");
    tmux.shows("=== back in #den").await;
    bob.say("after the move").await;
    let screen = tmux.shows("<bob> after the move").await;
    assert_eq!(count(&screen, "<bob> before the drain"), 1, "{screen}");
}

#[tokio::test]
async fn the_client_follows_a_redirect_before_logging_in() {
    let sys = system(&["alice", "bob"], |c| {
        c.edge.redirect_above_pct = 1;
        c.edge.redirect_min_excess = 1;
        // Heartbeats 20 s apart: the count set below stays until then.
        c.edge.dead_after_ms = 60_000;
    })
    .await;
    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    // Edge 1 holds three connections, but Redis says none (as if behind):
    // `/edges` shows it the least loaded, edge 1 itself knows better.
    let _held = [
        sys.connect(0).await,
        sys.connect(0).await,
        sys.connect(0).await,
    ];
    let info = sys.keys().edge_info(&Role::Edge.id(0));
    let mut r = sys.redis.conn().await;
    let _: () = redis::AsyncCommands::hset(&mut r, &info, "conns", 0)
        .await
        .unwrap();
    let tmux = Tmux::start(&chat_command(&sys, &[0], "alice-pw", ""));
    let screen = tmux.shows(&status(&sys, "lobby", 1)).await;
    assert!(screen.contains("redirected; moving to"), "{screen}");
}

#[tokio::test]
async fn reconnects_with_its_resume_token_and_falls_back_to_the_password() {
    use redis::AsyncCommands;
    let mut sys = system(&["alice"], |_| {}).await;
    let mut r = sys.redis.conn().await;
    let tmux = alice(&sys, &[0, 1]);
    tmux.shows(&status(&sys, "lobby", 0)).await;
    tmux.type_text("/join den");
    tmux.press("Enter");
    tmux.shows(&status(&sys, "den", 0)).await;

    // The password changes behind the client's back: only its token gets
    // it in again once its edge is gone.
    let hash: String = r.hget("chat:user:alice", "password").await.unwrap();
    let () = r.hset("chat:user:alice", "password", "x").await.unwrap();
    sys.kill(Role::Edge, 0).await;
    let screen = tmux.shows(&status(&sys, "den", 1)).await;
    assert!(!screen.contains("token was refused"), "{screen}");
    assert!(screen.contains("=== back in #den"), "{screen}");

    // The token revoked (the password is right again): the client says so
    // and logs in with the password, then goes back to its room itself.
    let () = r.hset("chat:user:alice", "password", &hash).await.unwrap();
    let () = r.del("chat:resume:alice").await.unwrap();
    sys.restart(Role::Edge, 0).await;
    sys.kill(Role::Edge, 1).await;
    let screen = tmux.shows(&status(&sys, "den", 0)).await;
    assert!(
        screen.contains("the resume token was refused: logging in with the password"),
        "{screen}"
    );
    let kept: String = r.hget("chat:resume:alice", "hash").await.unwrap();
    assert_eq!(kept.len(), 64, "the password login gave a new token");
}

#[tokio::test]
async fn plain_mode_prints_the_server_lines_as_received() {
    let sys = system(&["alice", "bob"], |_| {}).await;
    // Piped standard input and output: plain mode without being asked.
    let mut alice = ChatClient::start(&sys, 0, "alice");
    assert_eq!(alice.line().await, "HELLO edge-1 chat/1");
    assert_eq!(alice.line().await, "OK LOGIN alice lobby");
    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("tab\tand  two spaces ").await;
    let got = alice.until(|l| l.starts_with("MSG ")).await;
    let ServerLine::Msg {
        room,
        id,
        from,
        text,
    } = e2e::parse(&got)
    else {
        panic!("{got}")
    };
    assert_eq!(room, "lobby");
    assert!(id.contains('-'), "a message id: {got}");
    assert_eq!(
        (from.as_str(), text.as_str()),
        ("bob", "tab\tand  two spaces "),
        "unchanged"
    );
    alice.say("/ping").await;
    assert_eq!(alice.line().await, "OK PING");
    alice.stdin = None;
    assert_eq!(alice.line().await, "BYE quit");
    alice.exits_ok().await;
}

#[tokio::test]
async fn bad_credentials_end_the_client_with_an_error_in_both_modes() {
    let sys = system(&["alice"], |_| {}).await;
    let tmux = Tmux::start(&chat_command(&sys, &[0], "wrong", ""));
    let screen = tmux.shows("[chat exited 1]").await;
    assert!(
        screen.contains("chat: login failed: bad-credentials"),
        "{screen}"
    );
    assert!(!tmux.alternate_on(), "the terminal is restored");

    let config = e2e::config_dir();
    let out = tokio::process::Command::new(binary("chat"))
        .args(["--server", &sys.edge(0).to_string()])
        .arg("--ca")
        .arg(sys.ca())
        .args(["--user", "alice"])
        .env("CHAT_PASSWORD", "wrong")
        .env("XDG_CONFIG_HOME", config.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\nERR bad-credentials"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("login failed"), "{stderr}");
}

#[tokio::test]
async fn a_login_the_back_end_could_not_answer_is_tried_again() {
    let mut sys = system(&["alice"], |c| c.edge.request_timeout_ms = 500).await;
    sys.kill(Role::Auth, 0).await;
    let tmux = alice(&sys, &[0]);
    tmux.shows("disconnected: login failed: unavailable").await;
    tmux.shows("| reconnecting").await;
    sys.add(Role::Auth).await;
    tmux.shows(&status(&sys, "lobby", 0)).await;
    tmux.shows("=== logged in as alice, in #lobby").await;
}

#[tokio::test]
async fn a_login_elsewhere_is_left_alone() {
    let sys = system(&["alice"], |_| {}).await;
    let tmux = alice(&sys, &[0, 1]);
    tmux.shows(&status(&sys, "lobby", 0)).await;
    let mut other = ChatClient::start(&sys, 1, "alice");
    other.until(|l| l == "OK LOGIN alice lobby").await;
    let edge = sys.edge(0);
    let closed = format!(" alice | #lobby | {edge} | disconnected: logged-in-elsewhere");
    let screen = tmux.shows(&closed).await;
    assert_eq!(count(&screen, "*** connected to"), 1, "{screen}");
    // The other session goes on.
    other.say("/ping").await;
    let got = other
        .until(|l| l == "OK PING" || l.starts_with("BYE"))
        .await;
    assert_eq!(got, "OK PING");
    tmux.press("C-c");
    tmux.shows("[chat exited 0]").await;
    other.say("/ping").await;
    let got = other
        .until(|l| l == "OK PING" || l.starts_with("BYE"))
        .await;
    assert_eq!(got, "OK PING");
}

#[tokio::test]
async fn sigterm_restores_the_terminal() {
    let sys = system(&["alice"], |_| {}).await;
    let tmux = alice(&sys, &[0]);
    tmux.shows(&status(&sys, "lobby", 0)).await;
    assert!(tmux.alternate_on());
    let pid = tmux.command_pid();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tmux.shows("[chat exited 0]").await;
    assert!(!tmux.alternate_on(), "the terminal is restored");
}

#[tokio::test]
async fn escapes_never_reach_a_terminal() {
    let sys = system(&["alice", "bob"], |_| {}).await;
    let tmux = Tmux::start(&chat_command(
        &sys,
        &[0],
        "alice-pw",
        "--plain --no-balance",
    ));
    tmux.shows("OK LOGIN alice lobby").await;
    let mut bob = ChatClient::start(&sys, 1, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    // The server refuses control characters in text (a raw client would
    // show them); the client would also replace them (unit tests).
    bob.say("\u{1b}[2J\u{1b}[31mred hi").await;
    bob.until(|l| l.starts_with("ERR bad-encoding ")).await;
    bob.say("after").await;
    let screen = tmux.shows(" bob after").await;
    assert!(!screen.contains("red hi"), "{screen}");
    assert!(
        screen.contains("OK LOGIN alice lobby"),
        "not cleared: {screen}"
    );
}
