//! Test harness: a real redis-server per test on a free port, the services
//! run in-process (or as real processes), and a TLS line client.
#![forbid(unsafe_code)]

pub mod procs;

use redis::aio::ConnectionManager;
use shared::config::Config;
use shared::tls::{DevCerts, Trust};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A redis-server of the test's own, killed on drop.
pub struct TestRedis {
    child: Child,
    pub port: u16,
    /// Where [`TestRedis::restart`] keeps the data across the restart.
    dir: PathBuf,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("chat-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut redis = TestRedis {
                child: spawn_redis(port, &dir),
                port,
                dir,
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

    /// Starts it again on the same port with the saved data.
    pub async fn start_again(&mut self) {
        self.child = spawn_redis(self.port, &self.dir);
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

    pub async fn conn(&self) -> ConnectionManager {
        let client = redis::Client::open(self.url()).unwrap();
        shared::store::commands(&client).await.unwrap()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (make test installs it)")
}

/// A configuration for tests: the given Redis, cheap bcrypt, short leases.
pub fn test_config(redis: &TestRedis) -> Config {
    let mut cfg = Config {
        redis_url: redis.url(),
        ..Config::default()
    };
    cfg.auth.bcrypt_cost = 4;
    cfg.router.lease_ms = 1500;
    cfg.edge.listen = "127.0.0.1:0".into();
    // Tests that send fast or err on purpose; those of the limits turn
    // them on.
    cfg.edge.lines_per_sec = 0;
    cfg.edge.max_errors_per_min = 0;
    // Many services in one process: no admin ports unless a test asks.
    cfg.edge.admin_listen.clear();
    cfg.auth.admin_listen.clear();
    cfg.router.admin_listen.clear();
    cfg
}

/// Development certificates made once per test process.
pub fn certs() -> &'static DevCerts {
    static CERTS: std::sync::OnceLock<DevCerts> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| DevCerts::generate(&["localhost", "127.0.0.1"]).unwrap())
}

pub fn trust() -> Trust {
    Trust::CaPem(certs().ca_pem.clone())
}

/// The whole system in-process: auths, routers and edges on one Redis.
pub struct System {
    pub redis: TestRedis,
    pub cfg: Config,
    pub edges: Vec<SocketAddr>,
    edge_stops: Vec<CancellationToken>,
    stop: CancellationToken,
}

pub struct Shape {
    pub edges: usize,
    pub routers: usize,
    pub auths: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            edges: 2,
            routers: 1,
            auths: 1,
        }
    }
}

impl System {
    pub async fn start() -> System {
        Self::start_with(Shape::default(), |_| {}).await
    }

    pub async fn start_with(shape: Shape, tweak: impl FnOnce(&mut Config)) -> System {
        let redis = TestRedis::start().await;
        let mut cfg = test_config(&redis);
        tweak(&mut cfg);
        let stop = CancellationToken::new();
        let tls =
            shared::tls::server_config_pem(&certs().server_pem, &certs().server_key_pem).unwrap();
        let mut edges = Vec::new();
        let mut edge_stops = Vec::new();
        for i in 0..shape.edges {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            edges.push(listener.local_addr().unwrap());
            let mut c = cfg.clone();
            c.edge.id = format!("edge-{}", i + 1);
            let token = stop.child_token();
            edge_stops.push(token.clone());
            tokio::spawn(edge_svc::run(listener, c, tls.clone(), token));
        }
        let sys = System {
            redis,
            cfg,
            edges,
            edge_stops,
            stop,
        };
        for i in 0..shape.auths {
            sys.spawn_auth(i);
        }
        for i in 0..shape.routers {
            sys.spawn_router(i);
        }
        sys
    }

    /// Starts auth-svc instance `auth-<i>`.
    pub fn spawn_auth(&self, i: usize) {
        let mut c = self.cfg.clone();
        c.auth.id = format!("auth-{i}");
        tokio::spawn(auth_svc::run(c, self.stop.child_token()));
    }

    /// Starts router-svc instance `router-<i>`; aborting the handle stops
    /// it as abruptly as `kill -9` (no lease handed back, nothing finished).
    pub fn spawn_router(&self, i: usize) -> tokio::task::AbortHandle {
        let mut c = self.cfg.clone();
        c.router.id = format!("router-{i}");
        tokio::spawn(router_svc::run(c, self.stop.child_token())).abort_handle()
    }

    pub async fn add_user(&self, name: &str) {
        let keys = shared::keys::Keys::new(self.cfg.key_prefix.clone());
        let mut conn = self.redis.conn().await;
        auth_svc::accounts::add(&mut conn, &keys, name, &password(name), 4)
            .await
            .unwrap();
    }

    /// Logs `user` in on edge `edge` (0-based).
    pub async fn login(&self, edge: usize, user: &str) -> Client {
        let mut c = Client::connect(self.edges[edge], &trust()).await.unwrap();
        c.expect_prefix("HELLO ").await;
        c.send(&format!("LOGIN {user} {}", password(user))).await;
        c.expect(&format!("OK LOGIN {user} lobby")).await;
        c
    }

    /// Waits until `user` has no session in Redis any more.
    pub async fn session_gone(&self, user: &str) {
        let key = shared::keys::Keys::new(self.cfg.key_prefix.clone()).session(user);
        eventually(&format!("{user}'s session is gone"), || async {
            let mut r = self.redis.conn().await;
            !redis::AsyncCommands::exists::<_, bool>(&mut r, &key)
                .await
                .unwrap()
        })
        .await;
    }

    /// Waits until `n` routers own partitions (they have balanced).
    pub async fn routers_own_partitions(&self, n: usize) {
        let r = self.redis.conn().await;
        let partitions = self.cfg.partitions;
        let keys = shared::keys::Keys::new(self.cfg.key_prefix.clone());
        eventually("the routers share the partitions", || {
            let (mut r, keys) = (r.clone(), keys.clone());
            async move {
                let mut owners = std::collections::HashSet::new();
                for p in 0..partitions {
                    let o: Option<String> = redis::AsyncCommands::get(&mut r, keys.router_lease(p))
                        .await
                        .unwrap();
                    owners.extend(o);
                }
                owners.len() == n
            }
        })
        .await;
    }

    pub fn stop_edge(&self, edge: usize) {
        self.edge_stops[edge].cancel();
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The test password of a user: `<name>-pw`.
pub fn password(user: &str) -> String {
    format!("{user}-pw")
}

/// A line-oriented TLS client that fails the test on timeouts.
///
/// It skips `SYS` notices (which arrive whenever anyone comes or goes)
/// unless [`Client::with_sys`] asks for them.
pub struct Client {
    lines: Lines<BufReader<ReadHalf<TlsStream<TcpStream>>>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    sys: bool,
}

impl Client {
    pub async fn connect(addr: SocketAddr, trust: &Trust) -> std::io::Result<Client> {
        let cfg = shared::tls::client_config(trust).map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect(addr).await?;
        let name = shared::tls::server_name("localhost").unwrap();
        let tls = TlsConnector::from(Arc::clone(&cfg))
            .connect(name, tcp)
            .await?;
        let (rd, wr) = tokio::io::split(tls);
        Ok(Client {
            lines: BufReader::new(rd).lines(),
            wr,
            sys: false,
        })
    }

    /// Shows `SYS` notices from the next line on.
    pub fn with_sys(mut self) -> Client {
        self.sys = true;
        self
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
        self.wr.flush().await.unwrap();
    }

    /// The next line; `None` at end of stream.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("timed out waiting for a line")
                .ok()
                .flatten();
            match line {
                Some(l) if !self.sys && l.starts_with("SYS ") => continue,
                other => return other,
            }
        }
    }

    pub async fn line(&mut self) -> String {
        self.next().await.expect("connection closed")
    }

    pub async fn expect(&mut self, want: &str) {
        assert_eq!(self.line().await, want);
    }

    pub async fn expect_prefix(&mut self, prefix: &str) -> String {
        let line = self.line().await;
        assert!(
            line.starts_with(prefix),
            "expected {prefix:?}…, got {line:?}"
        );
        line
    }

    /// Skips lines until one satisfies `pred`.
    pub async fn until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.line().await;
            if pred(&line) {
                return line;
            }
        }
    }

    /// Sends a command and returns the lines up to and including its final
    /// `OK`/`ERR` line.
    pub async fn command(&mut self, line: &str) -> Vec<String> {
        self.send(line).await;
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            let last = l.starts_with("OK ") || l.starts_with("ERR ");
            lines.push(l);
            if last {
                return lines;
            }
        }
    }

    /// Sends a command and returns its final line, which must be the only
    /// one.
    pub async fn ask(&mut self, line: &str) -> String {
        let mut lines = self.command(line).await;
        assert_eq!(lines.len(), 1, "{line}: {lines:?}");
        lines.pop().unwrap()
    }

    /// Waits for the server to close the connection.
    pub async fn closed(&mut self) {
        while self.next().await.is_some() {}
    }
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
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
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

/// The workspace's built binaries (`cargo build --bins`, which `make test`
/// runs first).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        path.display()
    );
    path
}
