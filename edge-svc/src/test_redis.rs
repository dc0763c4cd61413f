//! A redis-server of a unit test's own (the e2e crate has the full harness).

use std::time::Duration;

/// How long a test waits for what it expects.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

/// A redis-server of the test's own on a free port, without
/// persistence; killed on drop.
pub(crate) struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    pub(crate) async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        let redis = Redis { child, port };
        let client = redis::Client::open(redis.url()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong = redis::cmd("PING").query_async::<String>(&mut c).await;
                if pong.is_ok() {
                    return redis;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server starts"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
