//! A redis-server of a test's (or a benchmark's) own, on a free port, that
//! can be stopped and started again, optionally with TLS and an ACL user
//! for the services, what it says about itself, and its `MONITOR` feed.

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How a [`TestRedis`] differs from the plain default.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// Server arguments over the defaults (`--appendonly yes`, ...).
    pub args: Vec<String>,
    /// A TLS port too, with a CA and a certificate for `localhost` made
    /// for it: the services use it ([`TestRedis::service_url`]); the
    /// harness's own connections keep to the plain port.
    pub tls: bool,
    /// With `tls`: clients must show a certificate the CA signed
    /// (`--tls-auth-clients yes`); the services are given one.
    pub client_certs: bool,
    /// An ACL user (name, password) the services log in as, its password
    /// given in a file.
    pub acl_user: Option<(String, String)>,
}

/// A redis-server of the test's own, killed on drop.
pub struct TestRedis {
    child: Child,
    pub port: u16,
    /// Its TLS port ([`RedisOptions::tls`]).
    pub tls_port: Option<u16>,
    /// Where [`TestRedis::stop`] keeps the data across a restart (and its
    /// certificates).
    dir: PathBuf,
    opts: RedisOptions,
    /// Server arguments over the defaults, from the next start on.
    args: Vec<String>,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        Self::start_with(RedisOptions::default()).await
    }

    /// A server as `opts` say.
    pub async fn start_with(opts: RedisOptions) -> TestRedis {
        for _ in 0..5 {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("chat-redis-{port}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir); // its certificates are made new
            std::fs::create_dir_all(&dir).unwrap();
            let tls_port = opts.tls.then(free_port);
            if tls_port.is_some() {
                let certs = shared::tls::DevCerts::generate(&["localhost"]).unwrap();
                certs.write_to(&dir).unwrap();
                std::fs::write(dir.join("client.pem"), &certs.client_pem).unwrap();
                std::fs::write(dir.join("client-key.pem"), &certs.client_key_pem).unwrap();
            }
            let args = server_args(&dir, tls_port, &opts);
            let mut redis = TestRedis {
                child: spawn_redis(port, &dir, &args),
                port,
                tls_port,
                dir,
                args: opts.args.clone(),
                opts: opts.clone(),
            };
            if redis.ready().await {
                return redis;
            }
            let _ = redis.child.kill();
        }
        panic!("redis-server did not start");
    }

    /// The URL the services are given: `rediss://localhost:<tls port>`
    /// with TLS, else [`TestRedis::url`].
    pub fn service_url(&self) -> String {
        match self.tls_port {
            Some(port) => format!("rediss://localhost:{port}"),
            None => self.url(),
        }
    }

    /// The Redis settings the services are given: the CA, the client
    /// certificate, the ACL user and its password file, as `opts` asked.
    pub fn service_settings(&self) -> shared::config::RedisConfig {
        let mut cfg = shared::config::RedisConfig::default();
        if self.tls_port.is_some() {
            cfg.ca_file = self.dir.join("ca.pem");
            if self.opts.client_certs {
                cfg.client_cert = self.dir.join("client.pem");
                cfg.client_key = self.dir.join("client-key.pem");
            }
        }
        if let Some((user, password)) = &self.opts.acl_user {
            cfg.username = user.clone();
            cfg.password_file = self.dir.join("redis-password");
            std::fs::write(&cfg.password_file, format!("{password}\n")).unwrap();
        }
        cfg
    }

    /// The server's working directory: its RDB dump, its append-only
    /// files, its certificates.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let opts = RedisOptions {
            args: self.args.clone(),
            ..self.opts.clone()
        };
        self.child = spawn_redis(
            self.port,
            &self.dir,
            &server_args(&self.dir, self.tls_port, &opts),
        );
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
                        self.add_acl_user(&mut c).await;
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The ACL user of [`RedisOptions::acl_user`], allowed everything
    /// (ACL users are not saved: again at every start).
    async fn add_acl_user(&self, c: &mut redis::aio::MultiplexedConnection) {
        if let Some((user, password)) = &self.opts.acl_user {
            redis::cmd("ACL")
                .arg(&["SETUSER", user, "reset", "on"][..])
                .arg(format!(">{password}"))
                .arg(&["~*", "&*", "+@all"][..])
                .query_async::<()>(c)
                .await
                .unwrap();
        }
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

    pub async fn conn(&self) -> shared::store::Conn {
        let client = redis::Client::open(self.url()).unwrap();
        shared::store::commands(&client).await.unwrap()
    }

    /// A plain connection, without the functions library that
    /// [`TestRedis::conn`] loads (which a replica refuses).
    pub async fn plain(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// A section of `INFO`.
    pub async fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.plain().await)
            .await
            .unwrap()
    }

    /// `INFO commandstats` as (command, calls).
    pub async fn command_calls(&self) -> Vec<(String, u64)> {
        self.counts("commandstats", "cmdstat_", "calls").await
    }

    /// Errors the server answered so far, by kind (`INFO errorstats`:
    /// `CROSSSLOT`, `MOVED`, …).
    pub async fn errors(&self) -> Vec<(String, u64)> {
        self.counts("errorstats", "errorstat_", "count").await
    }

    /// The lines `<prefix><name>:<field>=<n>,…` of `INFO <section>` as
    /// (name, n).
    async fn counts(&self, section: &str, prefix: &str, field: &str) -> Vec<(String, u64)> {
        self.info(section)
            .await
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix(prefix)?.split_once(':')?;
                let n = rest
                    .trim()
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))?
                    .parse()
                    .ok()?;
                Some((name.to_string(), n))
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

/// The server's arguments over the defaults: the TLS port's (certificates
/// in `dir`), then `opts.args`.
fn server_args(dir: &Path, tls_port: Option<u16>, opts: &RedisOptions) -> Vec<String> {
    let mut all = Vec::new();
    if let Some(tls) = tls_port {
        let file = |f: &str| dir.join(f).display().to_string();
        let auth = if opts.client_certs { "yes" } else { "no" };
        all.extend([
            "--tls-port".into(),
            tls.to_string(),
            "--tls-cert-file".into(),
            file("server.pem"),
            "--tls-key-file".into(),
            file("server-key.pem"),
            "--tls-ca-cert-file".into(),
            file("ca.pem"),
            "--tls-auth-clients".into(),
            auth.into(),
        ]);
    }
    all.extend(opts.args.iter().cloned());
    all
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
