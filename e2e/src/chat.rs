//! The `chat` client binary with piped standard input and output (so in
//! plain mode), driven as a user would.

use crate::{binary, free_port, password, System, WAIT};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The `chat` client with piped standard input and output (so in plain
/// mode), logged in as `user` with the password `<user>-pw`.
pub struct ChatClient {
    pub child: Child,
    /// Its own configuration directory, if it was given none.
    _dir: Option<ConfigDir>,
    pub stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
}

impl ChatClient {
    /// Starts it on edge `edge` (0-based) of `sys`, and only there
    /// (`--no-balance`), with a configuration directory of its own.
    pub fn start(sys: &System, edge: usize, user: &str) -> ChatClient {
        Self::owning_dir(sys, edge, user, &["--no-balance"])
    }

    /// Starts it given edge `edge` (0-based) of `sys`: it connects to the
    /// least-loaded edge that one lists.
    pub fn placed(sys: &System, edge: usize, user: &str) -> ChatClient {
        Self::owning_dir(sys, edge, user, &[])
    }

    /// Starts it on edge `edge` only, with `dir` as its configuration
    /// directory (`$XDG_CONFIG_HOME/chat`), where it keeps its keys.
    pub fn start_in(sys: &System, edge: usize, user: &str, dir: &Path) -> ChatClient {
        Self::spawn(sys, edge, user, &["--no-balance"], dir)
    }

    fn owning_dir(sys: &System, edge: usize, user: &str, more: &[&str]) -> ChatClient {
        let dir = config_dir();
        let mut client = Self::spawn(sys, edge, user, more, &dir);
        client._dir = Some(dir);
        client
    }

    fn spawn(sys: &System, edge: usize, user: &str, more: &[&str], dir: &Path) -> ChatClient {
        let xdg = dir.parent().expect("a directory named chat in another");
        let mut child = Command::new(binary("chat"))
            .args(["--server", &sys.edge(edge).to_string()])
            .args(more)
            .arg("--ca")
            .arg(sys.ca())
            .args(["--user", user])
            .env("CHAT_PASSWORD", password(user))
            .env("XDG_CONFIG_HOME", xdg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap()).lines();
        ChatClient {
            child,
            _dir: None,
            stdin,
            out,
        }
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

/// A fresh configuration directory for the client, `<tmp>/…/chat` (not
/// made: the client makes it); removed, with its keys, on drop.
pub struct ConfigDir(PathBuf);

pub fn config_dir() -> ConfigDir {
    ConfigDir(
        std::env::temp_dir()
            .join(format!(
                "chat-config-{}-{}",
                std::process::id(),
                free_port()
            ))
            .join("chat"),
    )
}

impl std::ops::Deref for ConfigDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for ConfigDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}
