//! The benchmark's system: the e2e harness's [`e2e::System`], as `make up`
//! runs it but on free ports, with the limits that would stop a load
//! generator raised or switched off (listed in [`BENCH_SETTINGS`] and in
//! the report), and what the benchmark reads from it and adds to it.

use crate::load::{Error, Target, PASSWORD};
use e2e::{Role, Setup, Shape};
use redis::AsyncCommands;
use std::path::Path;

/// Settings every service of the benchmark system runs with: one thread
/// per edge, as `make up` runs its edges (they share the machine), and
/// limits meant for untrusted clients, which one load-generating address
/// would hit.
pub const BENCH_SETTINGS: &[(&str, &str)] = &[
    ("CHAT_EDGE__THREADS", "1"),
    ("CHAT_EDGE__LINES_PER_SEC", "0"),
    ("CHAT_EDGE__MAX_CONNECTIONS_PER_ADDR", "0"),
    ("CHAT_EDGE__MAX_UNAUTH_PER_ADDR", "0"),
    ("CHAT_EDGE__ACCEPTS_PER_ADDR_PER_SEC", "0"),
    ("CHAT_EDGE__MAX_CONNECTIONS", "30000"),
    ("CHAT_EDGE__ACCEPTS_PER_SEC", "0"),
    ("CHAT_EDGE__MAX_ERRORS_PER_MIN", "0"),
    ("CHAT_EDGE__ADMIN_LISTEN", ""),
    ("CHAT_AUTH__ADMIN_LISTEN", ""),
    ("CHAT_ROUTER__ADMIN_LISTEN", ""),
    ("CHAT_AUTH__MAX_FAILURES_PER_ADDR", "0"),
    ("CHAT_AUTH__MAX_FAILURES_PER_USER", "0"),
    ("RUST_LOG", "warn"),
];

/// The abuse soak's settings: the defaults, less the admin ports, with
/// registration open (for the REGISTER flood), and each edge on one
/// thread, as `make up` and compose run several edges on one machine
/// (docs/operations.md, `edge.threads`).
pub const ABUSE_SETTINGS: &[(&str, &str)] = &[
    ("CHAT_AUTH__REGISTRATION", "true"),
    ("CHAT_EDGE__THREADS", "1"),
    ("CHAT_EDGE__ADMIN_LISTEN", ""),
    ("CHAT_AUTH__ADMIN_LISTEN", ""),
    ("CHAT_ROUTER__ADMIN_LISTEN", ""),
    ("RUST_LOG", "warn"),
];

/// Cost of the hashes of the users that only exist to carry load (the
/// `login` scenario's users have the configured cost).
pub const LOAD_USER_COST: u32 = 4;

pub struct System {
    /// Redis and the services; their certificates, configuration and
    /// logs are in the directory given to [`System::start`].
    pub services: e2e::System,
    pub target: Target,
}

impl System {
    /// Redis, one auth-svc, one router-svc and `edges` edges, from the
    /// binaries in `bin`, with [`BENCH_SETTINGS`].
    pub async fn start(bin: &Path, dir: &Path, edges: usize) -> Result<System, Error> {
        Self::start_with(bin, dir, edges, BENCH_SETTINGS).await
    }

    /// As [`System::start`], on a Redis Cluster of `masters` masters (0:
    /// one Redis).
    pub async fn start_on(
        bin: &Path,
        dir: &Path,
        edges: usize,
        masters: usize,
    ) -> Result<System, Error> {
        Self::launch(bin, dir, edges, BENCH_SETTINGS, masters).await
    }

    /// As [`System::start`], with `settings` instead of [`BENCH_SETTINGS`].
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        edges: usize,
        settings: &[(&str, &str)],
    ) -> Result<System, Error> {
        Self::launch(bin, dir, edges, settings, 0).await
    }

    async fn launch(
        bin: &Path,
        dir: &Path,
        edges: usize,
        settings: &[(&str, &str)],
        masters: usize,
    ) -> Result<System, Error> {
        let services = e2e::System::launch(Setup {
            shape: Shape {
                edges,
                routers: 1,
                auths: 1,
            },
            // This environment's settings, which the services read too.
            cfg: shared::config::Config::load(None)?,
            env: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            bin: bin.to_path_buf(),
            dir: Some(dir.to_path_buf()),
            admin: false,
            redis: Default::default(),
            cluster: (masters > 0).then_some((masters, 0)),
        })
        .await;
        let target = Target {
            edges: (0..edges).map(|i| services.edge(i).to_string()).collect(),
            tls: shared::tls::client_config(&services.trust())?,
        };
        Ok(System { services, target })
    }

    /// The settings the services run with beyond their defaults: those of
    /// this environment (`CHAT_*`, `RUST_LOG`) under [`BENCH_SETTINGS`].
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("CHAT_") || k == "RUST_LOG")
            .filter(|(k, _)| k != "CHAT_REDIS_URL" && !BENCH_SETTINGS.iter().any(|(b, _)| b == k))
            .chain(
                BENCH_SETTINGS
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .collect();
        all.sort();
        all
    }

    /// A connection to the services' Redis (or cluster).
    pub async fn redis(&self) -> Result<shared::store::Conn, Error> {
        Ok(self.services.conn().await)
    }

    /// The Redis servers (each master of a cluster), by name.
    fn servers(&self) -> Vec<(String, &e2e::TestRedis)> {
        match &self.services.cluster {
            Some(c) => c
                .nodes
                .iter()
                .map(|n| (format!("redis-{}", n.port), n))
                .collect(),
            None => vec![("redis".into(), &self.services.redis)],
        }
    }

    /// `CROSSSLOT` errors answered so far, all servers together.
    pub async fn cross_slot_errors(&self) -> u64 {
        let mut n = 0;
        for (_, server) in self.servers() {
            let errors = server.errors().await;
            n += errors
                .iter()
                .find(|(e, _)| e == "CROSSSLOT")
                .map_or(0, |(_, c)| *c);
        }
        n
    }

    /// Each Redis server's calls so far, by command.
    pub async fn command_calls(&self) -> Vec<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for (_, server) in self.servers() {
            out.push(server.command_calls().await);
        }
        out
    }

    /// Creates users `<prefix>0` … with the password [`PASSWORD`] hashed
    /// at `cost` (one hash, shared: only logging in is measured).
    pub async fn users(&self, prefix: &str, n: usize, cost: u32) -> Result<Vec<String>, Error> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        self.set_passwords(&names, cost).await?;
        Ok(names)
    }

    /// Gives accounts `names` the password [`PASSWORD`] hashed at `cost`
    /// (creating them if need be).
    pub async fn set_passwords(&self, names: &[String], cost: u32) -> Result<(), Error> {
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(PASSWORD, cost)).await??;
        let keys = self.services.keys();
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
        Ok(())
    }

    /// Forgets what the previous scenario left (sessions end by themselves).
    pub async fn flush_history(&self) -> Result<(), Error> {
        let mut conn = self.redis().await?;
        let pattern = self.services.keys().history("*");
        for (_, server) in self.servers() {
            let keys: Vec<String> = server.plain().await.keys(&pattern).await?;
            for key in keys {
                let () = conn.del(key).await?;
            }
        }
        Ok(())
    }

    /// The processes, by role, for CPU and memory readings.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let s = &self.services;
        let mut out: Vec<(String, u32)> = self
            .servers()
            .into_iter()
            .map(|(name, server)| (name, server.pid()))
            .collect();
        for i in 0..s.count(Role::Auth) {
            out.push((format!("auth-{}", i + 1), s.pid(Role::Auth, i)));
        }
        out.push(("router".into(), s.pid(Role::Router, 0)));
        for i in 0..s.count(Role::Edge) {
            out.push((format!("edge-{}", i + 1), s.pid(Role::Edge, i)));
        }
        out.push(("chat-bench".into(), std::process::id()));
        out
    }
}
