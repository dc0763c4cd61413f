//! The end-to-end harness, for the tests and chat-bench: a whole system of
//! real processes ([`System`]) on its own Redis ([`TestRedis`], or a Redis
//! Cluster, [`TestCluster`]), clients
//! that speak the protocol ([`Client`]) or drive the `chat` binary
//! ([`ChatClient`]), and small helpers to wait and probe.
#![forbid(unsafe_code)]

mod chat;
pub mod checker;
mod client;
pub mod proxy;
pub mod secrets;
mod system;
mod test_cluster;
mod test_redis;
pub mod usage;

pub use chat::{config_dir, ChatClient, ConfigDir};
pub use client::{parse, Client};
pub use system::{signal, Role, Setup, Shape, System};
pub use test_cluster::{cluster_info, TestCluster};
pub use test_redis::{Monitor, RedisOptions, TestRedis};

use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// The threads of process `pid` (from /proc).
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The test password of a user: `<name>-pw`.
pub fn password(user: &str) -> String {
    format!("{user}-pw")
}

/// Polls `check` until it is true; fails the test after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

/// `GET path` on a plain-HTTP admin port: (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path).await
}

/// `<method> path` on a plain-HTTP admin port: (status, body).
pub async fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut text))
        .await
        .expect("the admin port answers")
        .unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The directory of the workspace's built binaries, beside the running
/// test's (`cargo build --bins`, which `make test` runs first).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf()
}

/// One of the workspace's built binaries (see [`bin_dir`]).
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}
