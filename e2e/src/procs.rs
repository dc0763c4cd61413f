//! The real binaries as processes: certificates, accounts, the services,
//! and the `chat` client in plain mode with piped input.

use crate::{binary, eventually, free_port, TestRedis, WAIT};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// A service binary with the test's Redis, cheap bcrypt and short leases.
pub fn service(name: &str, redis: &TestRedis, envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(binary(name));
    cmd.env("CHAT_REDIS_URL", redis.url())
        .env("CHAT_AUTH__BCRYPT_COST", "4")
        .env("CHAT_ROUTER__LEASE_MS", "1500")
        .env("RUST_LOG", "warn")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// The `chat` client with piped standard input and output (so in plain
/// mode), logged in as `user` with the password `<user>-pw`.
pub struct ChatClient {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    out: Lines<BufReader<ChildStdout>>,
}

impl ChatClient {
    pub fn start(port: u16, ca: &Path, user: &str) -> ChatClient {
        let mut child = Command::new(binary("chat"))
            .args(["--server", &format!("127.0.0.1:{port}")])
            .arg("--ca")
            .arg(ca)
            .args(["--user", user])
            .env("CHAT_PASSWORD", format!("{user}-pw"))
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

/// `auth-svc user <args>` with `password` on standard input: whether it
/// succeeded, and what it said on standard error.
pub async fn account_command(
    redis: &TestRedis,
    envs: &[(&str, String)],
    args: &[&str],
    password: &str,
) -> (bool, String) {
    let mut child = service("auth-svc", redis, envs)
        .arg("user")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the account command ends")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Certificates, accounts (`<name>-pw`), auth-svc, router-svc and two
/// edges, all as processes.
pub struct Stack {
    dir: PathBuf,
    pub ca: PathBuf,
    pub ports: [u16; 2],
    /// Admin ports: auth-svc, router-svc, edge 1, edge 2.
    pub admin: [u16; 4],
    pub edges: Vec<Child>,
    /// auth-svc, router-svc.
    pub services: Vec<Child>,
    /// How to start each edge (again).
    edge_envs: Vec<Vec<(&'static str, String)>>,
    redis_url: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Stack {
    pub async fn start(
        redis: &TestRedis,
        users: &[&str],
        envs: &[(&'static str, String)],
    ) -> Stack {
        let dir =
            std::env::temp_dir().join(format!("chat-e2e-{}-{}", std::process::id(), free_port()));
        let certs = dir.join("certs");
        let out = std::process::Command::new(binary("chat-certs"))
            .arg(&certs)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("SHA-256"));

        // The test passwords are shorter than `auth.min_password` wants.
        let mut add_envs = vec![("CHAT_AUTH__MIN_PASSWORD", "6".to_string())];
        add_envs.extend(envs.iter().cloned());
        for user in users {
            let (ok, said) =
                account_command(redis, &add_envs, &["add", user], &format!("{user}-pw")).await;
            assert!(ok, "{said}");
        }
        let admin = [free_port(), free_port()];
        let local = |port: u16| format!("127.0.0.1:{port}");
        let services = vec![
            service("auth-svc", redis, envs)
                .env("CHAT_AUTH__ADMIN_LISTEN", local(admin[0]))
                .spawn()
                .unwrap(),
            service("router-svc", redis, envs)
                .env("CHAT_ROUTER__ADMIN_LISTEN", local(admin[1]))
                .spawn()
                .unwrap(),
        ];
        let edge_admin = [free_port(), free_port()];
        let ports = [free_port(), free_port()];
        let mut edge_envs = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let mut e = vec![
                ("CHAT_EDGE__ID", format!("edge-{}", i + 1)),
                ("CHAT_EDGE__LISTEN", format!("127.0.0.1:{port}")),
                ("CHAT_EDGE__ADMIN_LISTEN", local(edge_admin[i])),
                (
                    "CHAT_EDGE__TLS_CERT",
                    certs.join("server.pem").display().to_string(),
                ),
                (
                    "CHAT_EDGE__TLS_KEY",
                    certs.join("server-key.pem").display().to_string(),
                ),
            ];
            e.extend(envs.iter().cloned());
            edge_envs.push(e);
        }
        let mut st = Stack {
            admin: [admin[0], admin[1], edge_admin[0], edge_admin[1]],
            ca: certs.join("ca.pem"),
            dir,
            ports,
            edges: Vec::new(),
            services,
            edge_envs,
            redis_url: redis.url(),
        };
        for i in 0..2 {
            let edge = st.spawn_edge(i).await;
            st.edges.push(edge);
        }
        st
    }

    /// Starts edge `i` (0-based) and waits until it listens.
    async fn spawn_edge(&self, i: usize) -> Child {
        let child = Command::new(binary("edge-svc"))
            .env("CHAT_REDIS_URL", &self.redis_url)
            .env("RUST_LOG", "warn")
            .envs(self.edge_envs[i].iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let port = self.ports[i];
        eventually("the edge listens", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        child
    }

    /// Stops edge `i` with SIGTERM and waits until it has exited.
    pub async fn stop_edge(&mut self, i: usize) {
        signal(&self.edges[i], "-TERM");
        let status = tokio::time::timeout(WAIT, self.edges[i].wait())
            .await
            .expect("the edge exits")
            .unwrap();
        assert!(status.success(), "edge exit status {status}");
    }

    /// Starts edge `i` again, on the same port.
    pub async fn restart_edge(&mut self, i: usize) {
        self.edges[i] = self.spawn_edge(i).await;
    }
}

/// Sends a signal (`-TERM`, `-KILL`) to a child process.
pub fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}
