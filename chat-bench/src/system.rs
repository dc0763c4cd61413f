//! A fresh local system for the benchmark, as `make up` starts one but on
//! free ports, with the limits that would stop a load generator raised or
//! switched off (listed in [`BENCH_SETTINGS`] and in the report).

use crate::load::{Error, Target, PASSWORD};
use redis::AsyncCommands;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Settings every service of the benchmark system runs with: limits meant
/// for untrusted clients, which one load-generating address would hit.
pub const BENCH_SETTINGS: &[(&str, &str)] = &[
    ("CHAT_EDGE__LINES_PER_SEC", "0"),
    ("CHAT_EDGE__MAX_CONNECTIONS_PER_ADDR", "0"),
    ("CHAT_EDGE__MAX_CONNECTIONS", "30000"),
    ("CHAT_EDGE__MAX_ERRORS_PER_MIN", "0"),
    ("CHAT_EDGE__ADMIN_LISTEN", ""),
    ("CHAT_AUTH__ADMIN_LISTEN", ""),
    ("CHAT_ROUTER__ADMIN_LISTEN", ""),
    ("CHAT_AUTH__MAX_FAILURES_PER_ADDR", "0"),
    ("CHAT_AUTH__MAX_FAILURES_PER_USER", "0"),
    ("RUST_LOG", "warn"),
];

/// Cost of the hashes of the users that only exist to carry load (the
/// `login` scenario's users have the configured cost).
pub const LOAD_USER_COST: u32 = 4;

pub struct System {
    pub dir: PathBuf,
    pub redis_url: String,
    pub target: Target,
    pub bcrypt_cost: u32,
    keys: shared::keys::Keys,
    bin: PathBuf,
    env: Vec<(String, String)>,
    // Dropped (killed) in this order: Redis last.
    pub edges: Vec<Child>,
    pub router: Child,
    pub auth: Vec<Child>,
    pub redis: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl System {
    /// Redis, one auth-svc, one router-svc and `edges` edges, from the
    /// binaries in `bin`.
    pub async fn start(bin: &Path, dir: &Path, edges: usize) -> Result<System, Error> {
        std::fs::create_dir_all(dir)?;
        let certs = shared::tls::DevCerts::generate(shared::tls::DEV_SANS)?;
        certs.write_to(&dir.join("certs"))?;

        let port = free_port();
        let redis = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let redis_url = format!("redis://127.0.0.1:{port}");
        wait_for_port(port).await?;

        // The services read the same settings from the environment.
        let config = shared::config::Config::load(None)?;
        let mut env: Vec<(String, String)> = BENCH_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("CHAT_REDIS_URL".into(), redis_url.clone()));
        let mut system = System {
            dir: dir.to_path_buf(),
            redis_url,
            target: Target {
                edges: Vec::new(),
                tls: shared::tls::client_config(&shared::tls::Trust::CaPem(certs.ca_pem))?,
            },
            bcrypt_cost: config.auth.bcrypt_cost,
            keys: shared::keys::Keys::new(config.key_prefix),
            bin: bin.to_path_buf(),
            env,
            redis,
            auth: Vec::new(),
            router: Command::new("true").spawn()?,
            edges: Vec::new(),
        };
        system.add_auth()?;
        system.router = system.service("router-svc", &[])?;
        for i in 0..edges {
            let port = free_port();
            let cert = dir.join("certs/server.pem");
            let key = dir.join("certs/server-key.pem");
            let child = system.service(
                "edge-svc",
                &[
                    ("CHAT_EDGE__ID", format!("bench-edge-{}", i + 1)),
                    ("CHAT_EDGE__LISTEN", format!("127.0.0.1:{port}")),
                    ("CHAT_EDGE__TLS_CERT", cert.display().to_string()),
                    ("CHAT_EDGE__TLS_KEY", key.display().to_string()),
                ],
            )?;
            system.edges.push(child);
            wait_for_port(port).await?;
            system.target.edges.push(format!("127.0.0.1:{port}"));
        }
        Ok(system)
    }

    fn service(&self, name: &str, extra: &[(&str, String)]) -> Result<Child, Error> {
        let log = std::fs::File::create(self.dir.join(format!("{name}-{}.log", free_port())))?;
        Ok(Command::new(self.bin.join(name))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{name}: {e}"))?)
    }

    /// The settings the services run with beyond their defaults: those of
    /// this environment (`CHAT_*`, `RUST_LOG`) under [`BENCH_SETTINGS`].
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CHAT_") || k == "RUST_LOG")
            .filter(|(k, _)| !self.env.iter().any(|(e, _)| e == k))
            .collect();
        all.extend(
            self.env
                .iter()
                .filter(|(k, _)| k != "CHAT_REDIS_URL")
                .cloned(),
        );
        all.sort();
        all
    }

    /// Starts one more auth-svc instance.
    pub fn add_auth(&mut self) -> Result<(), Error> {
        let child = self.service("auth-svc", &[])?;
        self.auth.push(child);
        Ok(())
    }

    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection, Error> {
        let client = shared::store::client(&self.redis_url)?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Creates users `<prefix>0` … with the password [`PASSWORD`] hashed
    /// at `cost` (one hash, shared: only logging in is measured).
    pub async fn users(&self, prefix: &str, n: usize, cost: u32) -> Result<Vec<String>, Error> {
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(PASSWORD, cost)).await??;
        let keys = &self.keys;
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let mut conn = self.redis().await?;
        for chunk in names.chunks(1000) {
            let mut pipe = redis::pipe();
            for name in chunk {
                pipe.hset_multiple(
                    keys.user(name),
                    &[("password", &hash), ("created", &"0".to_string())],
                )
                .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        Ok(names)
    }

    /// `INFO commandstats` as (command, calls).
    pub async fn command_calls(&self) -> Result<Vec<(String, u64)>, Error> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.redis().await?)
            .await?;
        Ok(info
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
            .collect())
    }

    pub async fn redis_version(&self) -> String {
        let Ok(mut conn) = self.redis().await else {
            return "?".into();
        };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string()
    }

    /// Forgets what the previous scenario left (sessions end by themselves).
    pub async fn flush_history(&self) -> Result<(), Error> {
        let mut conn = self.redis().await?;
        let keys: Vec<String> = conn.keys(self.keys.history("*")).await?;
        if !keys.is_empty() {
            let () = conn.del(keys).await?;
        }
        Ok(())
    }

    /// The processes, by role, for CPU and memory readings.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out = vec![("redis".to_string(), self.redis.id().unwrap_or(0))];
        for (i, c) in self.auth.iter().enumerate() {
            out.push((format!("auth-{}", i + 1), c.id().unwrap_or(0)));
        }
        out.push(("router".into(), self.router.id().unwrap_or(0)));
        for (i, c) in self.edges.iter().enumerate() {
            out.push((format!("edge-{}", i + 1), c.id().unwrap_or(0)));
        }
        out.push(("chat-bench".into(), std::process::id()));
        out
    }
}

async fn wait_for_port(port: u16) -> Result<(), Error> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on port {port}").into())
}

/// Resident memory of `pid`, in bytes.
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The machine's idle time and the time the hypervisor gave other guests
/// ("steal"), in seconds summed over the cores.
pub fn idle_and_stolen() -> [(String, f64); 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0) / 100.0;
    [("(idle)".into(), at(3)), ("(stolen)".into(), at(7))]
}

/// CPU time `pid` has used, in seconds (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}
