//! End-to-end test of `make up`'s supervisor (scripts/up.sh), run for real.
//!
//! Services killed with kill -9 (an edge, the router, Redis) come back by
//! themselves while the rest keeps serving, and SIGTERM to up.sh stops
//! every process it started.

use e2e::{binary, free_port, Client};
use shared::tls::Trust;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Longest wait for the system to start or a service to come back.
const LONG: Duration = Duration::from_secs(30);
/// up.sh's deadline from SIGTERM to SIGKILL in this test (STOP_TIMEOUT).
const STOP_TIMEOUT: u64 = 5;

/// scripts/up.sh with its own Redis port, edge ports, data and certificates
/// directories, and no admin ports. On drop (a failed test), every process
/// it started is killed, and its output shown.
struct Up {
    child: Child,
    dir: PathBuf,
    data: PathBuf,
    redis_port: u16,
    edges: [u16; 2],
    trust: Trust,
    /// What up.sh and the services printed, both streams, line by line.
    log: Arc<Mutex<String>>,
}

impl Up {
    async fn start() -> Up {
        let bin = binary("edge-svc").parent().unwrap().to_path_buf();
        let dir = std::env::temp_dir().join(format!(
            "chat-e2e-up-{}-{}",
            std::process::id(),
            free_port()
        ));
        let (data, certs) = (dir.join("data"), dir.join("certs"));
        let made = std::process::Command::new(binary("chat-certs"))
            .arg(&certs)
            .output()
            .unwrap();
        assert!(made.status.success(), "chat-certs: {made:?}");
        let trust = Trust::ca_file(&certs.join("ca.pem")).unwrap();
        let (redis_port, edges) = (free_port(), [free_port(), free_port()]);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/up.sh");
        let mut child = Command::new("bash")
            .arg(script)
            .env("BIN", &bin)
            .env("DATA_DIR", &data)
            .env("CERTS_DIR", &certs)
            .env("REDIS_PORT", redis_port.to_string())
            .env("EDGE1_PORT", edges[0].to_string())
            .env("EDGE2_PORT", edges[1].to_string())
            .env("EDGE_HOST", "127.0.0.1")
            .env("ADMIN_PORT_BASE", "0")
            // A snapshot a second after a change, so that the test need
            // not wait a minute for one before it kills Redis.
            .env("REDIS_SAVE", "1 1")
            .env("STOP_TIMEOUT", STOP_TIMEOUT.to_string())
            .env("CHAT_AUTH__BCRYPT_COST", "4")
            .env("CHAT_ROUTER__LEASE_MS", "1500")
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .env_remove("EDGES")
            .env_remove("AUTHS")
            .env_remove("ROUTERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), log.clone());
        collect(child.stderr.take().unwrap(), log.clone());
        let up = Up {
            child,
            dir,
            data,
            redis_port,
            edges,
            trust,
            log,
        };
        up.logged("the banner", |l| l.contains("Ctrl-C stops everything."))
            .await;
        up
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a line of the log satisfies `pred`; returns it.
    async fn logged(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(line) = self.log().lines().find(|l| pred(l)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "up.sh never logged {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pid of service `name` (`edge-1`, `router-1`, `redis`) now.
    fn pid(&self, name: &str) -> u32 {
        let file = self.data.join("run").join(format!("{name}.pid"));
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// kill -9 of service `name`; waits until up.sh has said so and has
    /// started it again, under another pid.
    async fn kill_and_see_it_back(&self, name: &str) {
        let old = self.pid(name);
        kill("-KILL", old);
        let died = format!("{name} (pid {old}) was killed by SIGKILL after ");
        self.logged(&died, |l| l.contains(&died)).await;
        let started = format!("{name} started (pid ");
        self.logged(&format!("{name} started again"), |l| {
            l.contains(&started) && !l.contains(&format!("(pid {old})"))
        })
        .await;
    }

    /// Logs `user` in on edge `edge` (0-based), trying again until the
    /// edge accepts and the back end answers (after a restart).
    async fn login(&self, edge: usize, user: &str) -> Client {
        let addr = ([127, 0, 0, 1], self.edges[edge]).into();
        let deadline = Instant::now() + LONG;
        loop {
            if let Ok(mut c) = Client::connect(addr, &self.trust).await {
                if c.next().await.is_some_and(|l| l.starts_with("HELLO ")) {
                    c.send(&format!("LOGIN {user} {user}-pw")).await;
                    let answer = c.next().await;
                    if answer.as_deref() == Some(&format!("OK LOGIN {user} lobby")) {
                        return c;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{user} could not log in on edge {}",
                edge + 1
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A connection to up.sh's Redis, once it answers (it may be starting).
    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let url = format!("redis://127.0.0.1:{}", self.redis_port);
        let client = redis::Client::open(url).unwrap();
        let deadline = Instant::now() + LONG;
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong = redis::cmd("PING").query_async::<String>(&mut c).await;
                if pong.is_ok() {
                    return c;
                }
            }
            assert!(Instant::now() < deadline, "Redis does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The processes up.sh started that still run: those with this test's
    /// DATA_DIR in their environment (every service inherits it).
    fn processes_left(&self) -> Vec<u32> {
        let marker = format!("DATA_DIR={}", self.data.display());
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            if env.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
                left.push(pid);
            }
        }
        left
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let left = self.processes_left();
        for pid in &left {
            kill("-KILL", *pid);
        }
        if std::thread::panicking() {
            eprintln!("--- up.sh's output ---\n{}", self.log());
            eprintln!("--- killed at the end: {left:?}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Appends what `out` says to `log`, line by line, until it ends.
fn collect(out: impl AsyncRead + Unpin + Send + 'static, log: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

fn kill(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// `from` says `text` in the lobby; `to` sees it (after the lines it had
/// not read yet).
async fn chat(from: &mut Client, from_name: &str, to: &mut Client, text: &str) {
    from.send(text).await;
    let want = format!(" {from_name} {text}");
    let got = to.until(|l| l.ends_with(&want)).await;
    assert!(got.starts_with("MSG lobby "), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_up_restarts_what_dies_and_stops_everything_on_sigterm() {
    let mut up = Up::start().await;
    let mut alice = up.login(0, "alice").await;
    let mut bob = up.login(1, "bob").await;
    chat(&mut alice, "alice", &mut bob, "hello from edge-1").await;

    // kill -9 of edge-1: edge-2 keeps serving (bob stays connected, carol
    // logs in there and chats with him), and edge-1 comes back by itself.
    up.kill_and_see_it_back("edge-1").await;
    alice.closed().await;
    let mut carol = up.login(1, "carol").await;
    chat(&mut carol, "carol", &mut bob, "edge-2 still serves").await;
    let mut alice = up.login(0, "alice").await;
    chat(&mut alice, "alice", &mut bob, "back on edge-1").await;

    // kill -9 of the router: it comes back and chat works again.
    up.kill_and_see_it_back("router-1").await;
    chat(&mut bob, "bob", &mut alice, "after the router's restart").await;

    // kill -9 of Redis, once an account added meanwhile is in a snapshot:
    // it comes back with its data and the services carry on.
    let mut add = Command::new(binary("auth-svc"))
        .args(["user", "add", "erin"])
        .env(
            "CHAT_REDIS_URL",
            format!("redis://127.0.0.1:{}", up.redis_port),
        )
        .env("CHAT_AUTH__BCRYPT_COST", "4")
        .env("CHAT_AUTH__MIN_PASSWORD", "6")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = add.stdin.take().unwrap();
    stdin.write_all(b"erin-pw\n").await.unwrap();
    drop(stdin);
    let added = tokio::time::timeout(LONG, add.wait()).await.unwrap();
    assert!(added.unwrap().success(), "auth-svc user add erin");
    let mut r = up.redis().await;
    let deadline = Instant::now() + LONG;
    loop {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut r)
            .await
            .unwrap();
        if info.contains("rdb_changes_since_last_save:0\r\n")
            && info.contains("rdb_bgsave_in_progress:0\r\n")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up.kill_and_see_it_back("redis").await;
    let mut r = up.redis().await;
    let kept: bool = redis::AsyncCommands::exists(&mut r, "chat:user:erin")
        .await
        .unwrap();
    assert!(kept, "erin's account came back with Redis");
    let mut erin = up.login(1, "erin").await;
    let mut dave = up.login(0, "dave").await;
    chat(&mut erin, "erin", &mut dave, "redis came back").await;

    // SIGTERM to up.sh: every process it started ends within its deadline.
    let stopped_at = Instant::now();
    kill("-TERM", up.child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(STOP_TIMEOUT + 10), up.child.wait())
        .await
        .expect("up.sh stops")
        .unwrap();
    assert!(status.success(), "up.sh: {status}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(STOP_TIMEOUT + 5),
        "stopped in {:?}",
        stopped_at.elapsed()
    );
    // Its last words may still be on their way through the pipe.
    up.logged("stopped.", |l| l.ends_with("up: stopped.")).await;
    assert_eq!(up.processes_left(), Vec::<u32>::new(), "processes left");
    drop((alice, bob, carol, erin, dave));
}
