//! The `chat` client binary with piped standard input and output (so in
//! plain mode), driven as a user would.

use crate::{binary, password, System, WAIT};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The `chat` client with piped standard input and output (so in plain
/// mode), logged in as `user` with the password `<user>-pw`.
pub struct ChatClient {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
}

impl ChatClient {
    /// Starts it on edge `edge` (0-based) of `sys`, and only there
    /// (`--no-balance`).
    pub fn start(sys: &System, edge: usize, user: &str) -> ChatClient {
        Self::spawn(sys, edge, user, &["--no-balance"])
    }

    /// Starts it given edge `edge` (0-based) of `sys`: it connects to the
    /// least-loaded edge that one lists.
    pub fn placed(sys: &System, edge: usize, user: &str) -> ChatClient {
        Self::spawn(sys, edge, user, &[])
    }

    fn spawn(sys: &System, edge: usize, user: &str, more: &[&str]) -> ChatClient {
        let mut child = Command::new(binary("chat"))
            .args(["--server", &sys.edge(edge).to_string()])
            .args(more)
            .arg("--ca")
            .arg(sys.ca())
            .args(["--user", user])
            .env("CHAT_PASSWORD", password(user))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        ChatClient { child, stdin, out }
    }

    pub async fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next output line.
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(WAIT, self.out.next_line())
            .await
            .expect("timed out waiting for client output")
            .unwrap()
            .expect("client output ended")
    }

    pub async fn until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.line().await;
            if pred(&line) {
                return line;
            }
        }
    }

    pub async fn exits_ok(&mut self) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("client exits")
            .unwrap();
        assert!(status.success(), "client exit status {status}");
    }
}
