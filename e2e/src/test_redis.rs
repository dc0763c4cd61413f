//! A redis-server of a test's (or a benchmark's) own, on a free port, that
//! can be stopped and started again, what it says about itself, and its
//! `MONITOR` feed.

use crate::free_port;
use redis::aio::ConnectionManager;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A redis-server of the test's own, killed on drop.
pub struct TestRedis {
    child: Child,
    pub port: u16,
    /// Where [`TestRedis::stop`] keeps the data across a restart.
    dir: PathBuf,
    /// Server arguments over the defaults, from the next start on.
    args: Vec<String>,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("chat-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut redis = TestRedis {
                child: spawn_redis(port, &dir, &[]),
                port,
                dir,
                args: Vec::new(),
            };
            if redis.ready().await {
                return redis;
            }
            let _ = redis.child.kill();
        }
        panic!("redis-server did not start");
    }

    /// Stops the server, keeping its data (`SHUTDOWN SAVE`).
    pub async fn stop(&mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let _ = redis::cmd("SHUTDOWN")
            .arg("SAVE")
            .query_async::<()>(&mut c)
            .await;
        let _ = self.child.wait();
    }

    /// Deletes the saved data (while stopped): the next start is empty.
    pub fn forget_data(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }

    /// Server arguments over the defaults (`--appendonly yes`, ...) for
    /// the next [`TestRedis::start_again`] and after.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Starts it again on the same port with the saved data.
    pub async fn start_again(&mut self) {
        self.child = spawn_redis(self.port, &self.dir, &self.args);
        assert!(self.ready().await, "redis-server restarts");
    }

    async fn ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // exited: port taken, most likely
            }
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its `MONITOR` feed, from now on.
    pub async fn monitor(&self) -> Monitor {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        tcp.write_all(b"MONITOR\r\n").await.unwrap();
        let mut lines = tokio::io::BufReader::new(tcp).lines();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("+OK"));
        Monitor {
            lines,
            url: self.url(),
        }
    }

    pub async fn conn(&self) -> ConnectionManager {
        let client = redis::Client::open(self.url()).unwrap();
        shared::store::commands(&client).await.unwrap()
    }

    /// A section of `INFO`.
    pub async fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// `INFO commandstats` as (command, calls).
    pub async fn command_calls(&self) -> Vec<(String, u64)> {
        self.info("commandstats")
            .await
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    /// The server's version (`INFO server`).
    pub async fn version(&self) -> String {
        self.info("server")
            .await
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(port: u16, dir: &Path, args: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make test installs it)")
}

/// Every command Redis runs, in the order it runs them (`MONITOR`).
pub struct Monitor {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
    url: String,
}

impl Monitor {
    /// The commands run since the last call (or the start), up to an
    /// `ECHO <marker>` sent now on another connection: everything Redis
    /// ran before this moment.
    pub async fn ran_before(&mut self, marker: &str) -> Vec<String> {
        let mut conn = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: String = redis::cmd("ECHO")
            .arg(marker)
            .query_async(&mut conn)
            .await
            .unwrap();
        let echo = format!("\"ECHO\" \"{marker}\"");
        let mut ran = Vec::new();
        loop {
            let line = tokio::time::timeout(crate::WAIT, self.lines.next_line())
                .await
                .expect("the marker in the MONITOR feed")
                .unwrap()
                .expect("the MONITOR feed goes on");
            if line.contains(&echo) {
                return ran;
            }
            ran.push(line);
        }
    }
}
