//! The interactive `chat` client in a pseudo-terminal (tmux), against the
//! real services as processes: what a person sees on the screen.

use e2e::procs::{signal, ChatClient, Stack};
use e2e::{binary, free_port, TestRedis, WAIT};
use std::process::Command;
use std::time::Duration;

/// How long a screen has to show what a test waits for: longer than
/// [`WAIT`], as a reconnect backs off between attempts.
const SCREEN_WAIT: Duration = Duration::from_secs(30);

/// A tmux server of the test's own, running one command in a 120×40
/// window; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("chat-e2e-{}-{}", std::process::id(), free_port()),
        };
        // The exit status stays on the screen for the test to read.
        let shell = format!("{command}; echo \"[chat exited $?]\"; sleep 600");
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

/// The interactive client as `alice` on the given edges.
fn alice(st: &Stack, edges: &[usize]) -> Tmux {
    let mut cmd = format!(
        "env CHAT_PASSWORD=alice-pw XDG_CONFIG_HOME=/nonexistent '{}' --ca '{}' --user alice",
        binary("chat").display(),
        st.ca.display()
    );
    for &i in edges {
        cmd.push_str(&format!(" --server 127.0.0.1:{}", st.ports[i]));
    }
    Tmux::start(&cmd)
}

/// The status line, connected as `alice` in `room` through edge `i`.
fn status(st: &Stack, room: &str, i: usize) -> String {
    format!(
        " alice | #{room} | edge-{} (127.0.0.1:{}) | connected",
        i + 1,
        st.ports[i]
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
    let redis = TestRedis::start().await;
    let envs = [("CHAT_EDGE__LINES_PER_SEC", "0".to_string())];
    let st = Stack::start(&redis, &["alice", "bob"], &envs).await;
    let tmux = alice(&st, &[0]);
    tmux.shows(&status(&st, "lobby", 0)).await;
    tmux.shows("=== logged in as alice, in #lobby").await;

    tmux.type_text("/jo");
    tmux.press("Tab");
    tmux.until("the command is completed", |s| {
        input_line(s) == "[#lobby] /join"
    })
    .await;
    tmux.type_text("den");
    tmux.press("Enter");
    tmux.shows(&status(&st, "den", 0)).await;
    tmux.shows("=== you are now in #den").await;

    let mut bob = ChatClient::start(st.ports[1], &st.ca, "bob");
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

    // More than a screenful: PageUp shows the start again.
    for i in 0..60 {
        bob.say(&format!("line {i}")).await;
    }
    tmux.shows("<bob> line 59").await;
    tmux.press("PPage");
    tmux.until("scrolled back", |s| {
        s.contains("scrolled back") && !s.contains("<bob> line 59")
    })
    .await;
    tmux.press("NPage");
    tmux.until("back at the bottom", |s| {
        !s.contains("scrolled back") && s.contains("<bob> line 59")
    })
    .await;

    // Ctrl-C logs out and restores the terminal.
    tmux.press("C-c");
    bob.until(|l| l == "SYS den alice left").await;
    tmux.shows("[chat exited 0]").await;
}

#[tokio::test]
async fn reconnects_after_its_edge_restarts_and_shows_what_it_missed_once() {
    let redis = TestRedis::start().await;
    let mut st = Stack::start(&redis, &["alice", "bob"], &[]).await;
    let tmux = alice(&st, &[0]);
    tmux.shows(&status(&st, "lobby", 0)).await;
    tmux.type_text("/join den");
    tmux.press("Enter");
    tmux.shows(&status(&st, "den", 0)).await;

    let mut bob = ChatClient::start(st.ports[1], &st.ca, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("/join den").await;
    bob.until(|l| l == "OK JOIN den").await;
    bob.say("before the restart").await;
    tmux.shows("<bob> before the restart").await;

    st.stop_edge(0).await;
    tmux.shows("| reconnecting").await;
    // Said while alice is away.
    bob.say("while you were away").await;
    bob.until(|l| l.ends_with(" bob while you were away")).await;
    tmux.type_text("typed while away");

    st.restart_edge(0).await;
    let screen = tmux.shows(&status(&st, "den", 0)).await;
    assert!(screen.contains("=== back in #den"), "{screen}");
    assert_eq!(count(&screen, "<bob> while you were away"), 1, "{screen}");
    assert_eq!(count(&screen, "<bob> before the restart"), 1, "{screen}");
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
}

#[tokio::test]
async fn falls_back_to_the_next_server_when_its_edge_dies() {
    let redis = TestRedis::start().await;
    let mut st = Stack::start(&redis, &["alice", "bob"], &[]).await;
    let tmux = alice(&st, &[0, 1]);
    tmux.shows(&status(&st, "lobby", 0)).await;
    let mut bob = ChatClient::start(st.ports[1], &st.ca, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("hi").await;
    tmux.shows("<bob> hi").await;

    signal(&st.edges[0], "-KILL");
    let _ = tokio::time::timeout(WAIT, st.edges[0].wait()).await;
    let screen = tmux.shows(&status(&st, "lobby", 1)).await;
    assert_eq!(count(&screen, "<bob> hi"), 1, "{screen}");
    bob.say("/msg alice still there?").await;
    tmux.shows("*bob* still there?").await;
}

#[tokio::test]
async fn plain_mode_prints_the_server_lines_as_received() {
    let redis = TestRedis::start().await;
    let st = Stack::start(&redis, &["alice", "bob"], &[]).await;
    // Piped standard input and output: plain mode without being asked.
    let mut alice = ChatClient::start(st.ports[0], &st.ca, "alice");
    assert_eq!(alice.line().await, "HELLO edge-1 chat/1");
    assert_eq!(alice.line().await, "OK LOGIN alice lobby");
    let mut bob = ChatClient::start(st.ports[1], &st.ca, "bob");
    bob.until(|l| l == "OK LOGIN bob lobby").await;
    bob.say("\u{1b}[2J hi").await;
    let got = alice.until(|l| l.starts_with("MSG ")).await;
    let fields: Vec<&str> = got.splitn(4, ' ').collect();
    assert_eq!(fields[1], "lobby");
    assert!(fields[2].contains('-'), "a message id: {got}");
    assert_eq!(fields[3], "bob \u{1b}[2J hi", "unchanged");
    alice.say("/ping").await;
    assert_eq!(alice.line().await, "OK PING");
    alice.stdin = None;
    assert_eq!(alice.line().await, "BYE quit");
    alice.exits_ok().await;
}
