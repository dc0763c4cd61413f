//! The one harness that starts a whole system, for a test or chat-bench:
//! its own Redis, certificates made by `chat-certs`, and auth-svc,
//! router-svc and edge-svc instances as real processes on free ports, each
//! of which can be signalled, killed, stopped and started again.

use crate::TestCluster;
use crate::{bin_dir, free_port, password, Client, RedisOptions, TestRedis, WAIT};
use shared::config::Config;
use shared::keys::Keys;
use shared::tls::Trust;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::process::{Child, Command};

/// A kind of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Auth,
    Router,
    Edge,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Auth => "auth-svc",
            Role::Router => "router-svc",
            Role::Edge => "edge-svc",
        }
    }

    /// Its section of the settings (`CHAT_<SECTION>__…`).
    fn section(self) -> &'static str {
        match self {
            Role::Auth => "AUTH",
            Role::Router => "ROUTER",
            Role::Edge => "EDGE",
        }
    }

    /// The id of instance `i`: `auth-<i>`, `router-<i>`, `edge-<i + 1>`.
    pub fn id(self, i: usize) -> String {
        match self {
            Role::Edge => format!("edge-{}", i + 1),
            _ => format!("{}-{i}", self.binary().trim_end_matches("-svc")),
        }
    }
}

/// How many instances of each service a system starts with.
pub struct Shape {
    pub edges: usize,
    pub routers: usize,
    pub auths: usize,
}

impl Shape {
    /// `edges` edges, `routers` routers and `auths` auth-svc instances.
    pub const fn new(edges: usize, routers: usize, auths: usize) -> Shape {
        Shape {
            edges,
            routers,
            auths,
        }
    }
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

/// How to start a [`System`].
pub struct Setup {
    pub shape: Shape,
    /// What every service reads (from `config.toml` in `dir`); the system
    /// sets its Redis and certificates.
    pub cfg: Config,
    /// Environment of every service, over `cfg` (`CHAT_*`, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where the service binaries and `chat-certs` are.
    pub bin: PathBuf,
    /// Certificates, configuration and the services' logs; `None`: a
    /// temporary directory, removed on drop unless the test failed.
    pub dir: Option<PathBuf>,
    /// Each instance gets an admin port of its own, and starting it waits
    /// until that port answers (the service is ready).
    pub admin: bool,
    /// The Redis the system starts (TLS, ACL user, server arguments).
    pub redis: RedisOptions,
    /// Run on a Redis Cluster of the system's own instead: (masters,
    /// replicas of each). Edges, auth-svc and routers reach it with a
    /// `redis+cluster://` URL.
    pub cluster: Option<(usize, usize)>,
}

impl Setup {
    /// A test's: cheap bcrypt, short leases, no limits (the tests of the
    /// limits set them), warnings logged, the binaries beside the test's.
    pub fn test(shape: Shape) -> Setup {
        let mut cfg = Config::default();
        cfg.auth.bcrypt_cost = 4;
        cfg.router.lease_ms = 1500;
        cfg.edge.listen = "127.0.0.1:0".into();
        cfg.edge.lines_per_sec = 0;
        cfg.edge.max_errors_per_min = 0;
        // Every test client comes from 127.0.0.1, and some reconnect a lot.
        cfg.edge.accepts_per_addr_per_sec = 0;
        // Admin ports are given per instance (Setup::admin).
        cfg.edge.admin_listen.clear();
        cfg.auth.admin_listen.clear();
        cfg.router.admin_listen.clear();
        Setup {
            shape,
            cfg,
            env: vec![("RUST_LOG".into(), "warn".into())],
            bin: bin_dir(),
            dir: None,
            admin: true,
            redis: RedisOptions::default(),
            cluster: None,
        }
    }
}

/// One service process.
struct Instance {
    role: Role,
    index: usize,
    /// An edge's TLS port.
    port: u16,
    admin: Option<u16>,
    /// Its own environment, over the system's.
    env: Vec<(String, String)>,
    child: Child,
}

/// A whole system: Redis and the services as processes, killed on drop.
pub struct System {
    /// What the services read (less what each instance has of its own:
    /// id, ports).
    pub cfg: Config,
    dir: PathBuf,
    temporary: bool,
    env: Vec<(String, String)>,
    bin: PathBuf,
    admin: bool,
    instances: Vec<Instance>,
    /// Dropped after the services.
    pub redis: TestRedis,
    /// The cluster the services run on, if [`Setup::cluster`] asked for
    /// one (`redis` is then not theirs).
    pub cluster: Option<TestCluster>,
}

impl System {
    /// Two edges, a router and an auth-svc, configured for tests.
    pub async fn start() -> System {
        Self::start_with(Shape::default(), |_| {}).await
    }

    /// A test's system of `shape`, its configuration changed by `tweak`.
    pub async fn start_with(shape: Shape, tweak: impl FnOnce(&mut Config)) -> System {
        let mut setup = Setup::test(shape);
        tweak(&mut setup.cfg);
        Self::launch(setup).await
    }

    /// As [`System::start_with`], on a Redis started as `redis` says.
    pub async fn start_on(
        shape: Shape,
        redis: RedisOptions,
        tweak: impl FnOnce(&mut Config),
    ) -> System {
        let mut setup = Setup::test(shape);
        setup.redis = redis;
        tweak(&mut setup.cfg);
        Self::launch(setup).await
    }

    /// The system `setup` describes (chat-bench's; tests start theirs with
    /// [`System::start_with`]).
    pub async fn launch(setup: Setup) -> System {
        let redis = TestRedis::start_with(setup.redis).await;
        let temporary = setup.dir.is_none();
        let dir = setup.dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("chat-e2e-{}-{}", std::process::id(), free_port()))
        });
        std::fs::create_dir_all(&dir).unwrap();
        let certs = dir.join("certs");
        let chat_certs = setup.bin.join("chat-certs");
        let made = std::process::Command::new(&chat_certs)
            .arg(&certs)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", chat_certs.display()));
        assert!(made.status.success());
        assert!(String::from_utf8_lossy(&made.stdout).contains("SHA-256"));

        let mut cfg = setup.cfg;
        cfg.redis_url = redis.service_url();
        cfg.redis = redis.service_settings();
        let cluster = match setup.cluster {
            Some((masters, replicas)) => {
                let cluster = TestCluster::start(masters, replicas).await;
                let nodes: Vec<String> = cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port))
                    .collect();
                cfg.redis_url = format!("redis+cluster://{}", nodes.join(","));
                cfg.redis = Default::default();
                Some(cluster)
            }
            None => None,
        };
        cfg.edge.tls_cert = certs.join("server.pem");
        cfg.edge.tls_key = certs.join("server-key.pem");
        cfg.auth.seal_key_file = certs.join(shared::seal::PRIVATE_FILE);
        cfg.edge.auth_public_key_file = certs.join(shared::seal::PUBLIC_FILE);
        std::fs::write(dir.join("config.toml"), toml::to_string(&cfg).unwrap()).unwrap();
        let mut sys = System {
            cfg,
            dir,
            temporary,
            env: setup.env,
            bin: setup.bin,
            admin: setup.admin,
            instances: Vec::new(),
            redis,
            cluster,
        };
        let shape = setup.shape;
        for (role, n) in [
            (Role::Auth, shape.auths),
            (Role::Router, shape.routers),
            (Role::Edge, shape.edges),
        ] {
            for _ in 0..n {
                sys.add(role).await;
            }
        }
        sys
    }

    /// `role`'s binary with this system's configuration and environment,
    /// as no instance of its own ([`System::add`] starts those).
    pub fn command(&self, role: Role) -> Command {
        let mut cmd = Command::new(self.bin.join(role.binary()));
        cmd.env("CHAT_CONFIG", self.dir.join("config.toml"))
            .env("CHAT_REDIS_URL", &self.cfg.redis_url)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// `auth-svc user <args>` with `envs` and `password` on standard
    /// input: whether it succeeded, and what it said on standard error.
    pub async fn account(
        &self,
        envs: &[(&str, &str)],
        args: &[&str],
        password: &str,
    ) -> (bool, String) {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command(Role::Auth)
            .envs(envs.iter().copied())
            .arg("user")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // A command that reads no password may be gone already.
        let _ = stdin.write_all(format!("{password}\n").as_bytes()).await;
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

    /// Starts one more instance of `role` and waits until it is ready;
    /// returns its index.
    pub async fn add(&mut self, role: Role) -> usize {
        self.add_with(role, &[]).await
    }

    /// As [`System::add`], with environment variables of the instance's
    /// own over the system's (kept across [`System::restart`]): for
    /// example its own `CHAT_REDIS_URL`.
    pub async fn add_with(&mut self, role: Role, env: &[(&str, &str)]) -> usize {
        let index = self.count(role);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // A free port can be taken by another test between our look and
        // the service's bind: then other ports, a few times.
        let mut tries = 0;
        let (port, admin, child) = loop {
            let port = if role == Role::Edge { free_port() } else { 0 };
            let admin = self.admin.then(free_port);
            match self.spawn(role, index, port, admin, &env).await {
                Some(child) => break (port, admin, child),
                None if tries < 3 => tries += 1,
                None => panic!("{}: its ports kept being taken", role.id(index)),
            }
        };
        self.instances.push(Instance {
            role,
            index,
            port,
            admin,
            env,
            child,
        });
        index
    }

    /// Starts instance `i` of `role` again (after it exited), on the same
    /// ports.
    pub async fn restart(&mut self, role: Role, i: usize) {
        let at = self.at(role, i);
        let (port, admin) = (self.instances[at].port, self.instances[at].admin);
        let env = self.instances[at].env.clone();
        let child = self.spawn(role, i, port, admin, &env).await;
        self.instances[at].child =
            child.unwrap_or_else(|| panic!("{}: its port was taken", role.id(i)));
    }

    async fn spawn(
        &self,
        role: Role,
        index: usize,
        port: u16,
        admin: Option<u16>,
        env: &[(String, String)],
    ) -> Option<Child> {
        let id = role.id(index);
        let log = self.dir.join(format!("{id}.log"));
        let section = role.section();
        let mut cmd = self.command(role);
        cmd.env(format!("CHAT_{section}__ID"), &id)
            .stdout(Stdio::null())
            .stderr(logfile(&log));
        if role == Role::Edge {
            cmd.env("CHAT_EDGE__LISTEN", format!("127.0.0.1:{port}"));
        }
        if let Some(admin) = admin {
            cmd.env(
                format!("CHAT_{section}__ADMIN_LISTEN"),
                format!("127.0.0.1:{admin}"),
            );
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.join(role.binary()).display()));
        let tls = (role == Role::Edge).then_some(port);
        for port in [tls, admin].into_iter().flatten() {
            if !listening(&mut child, port, &log).await {
                return None;
            }
        }
        Some(child)
    }

    fn at(&self, role: Role, i: usize) -> usize {
        self.instances
            .iter()
            .position(|p| p.role == role && p.index == i)
            .unwrap_or_else(|| panic!("no {} was started", role.id(i)))
    }

    /// How many instances of `role` were started.
    pub fn count(&self, role: Role) -> usize {
        self.instances.iter().filter(|p| p.role == role).count()
    }

    /// The address of edge `i` (0-based).
    pub fn edge(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.instances[self.at(Role::Edge, i)].port))
    }

    /// The admin port of instance `i` of `role` (with [`Setup::admin`]).
    pub fn admin(&self, role: Role, i: usize) -> u16 {
        self.instances[self.at(role, i)]
            .admin
            .expect("the system has admin ports")
    }

    /// The process id of instance `i` of `role` (0 once it has exited).
    pub fn pid(&self, role: Role, i: usize) -> u32 {
        self.instances[self.at(role, i)].child.id().unwrap_or(0)
    }

    /// Sends signal `sig` (`TERM`, `KILL`) to instance `i` of `role`.
    pub fn signal(&self, role: Role, i: usize, sig: &str) {
        let pid = self.instances[self.at(role, i)].child.id();
        let pid = pid.unwrap_or_else(|| panic!("{} has exited", role.id(i)));
        signal(pid, sig);
    }

    /// Waits until instance `i` of `role` has exited.
    pub async fn exited(&mut self, role: Role, i: usize) -> ExitStatus {
        let at = self.at(role, i);
        tokio::time::timeout(WAIT, self.instances[at].child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} does not exit", role.id(i)))
            .unwrap()
    }

    /// `kill -9`: nothing handed back, nothing finished.
    pub async fn kill(&mut self, role: Role, i: usize) {
        self.signal(role, i, "KILL");
        self.exited(role, i).await;
    }

    /// Stops instance `i` of `role` with SIGTERM; it must exit cleanly.
    pub async fn stop(&mut self, role: Role, i: usize) {
        self.signal(role, i, "TERM");
        let status = self.exited(role, i).await;
        assert!(status.success(), "{} exit status {status}", role.id(i));
    }

    /// What instance `i` of `role` has logged so far.
    pub fn log(&self, role: Role, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", role.id(i)))).unwrap_or_default()
    }

    /// The directory of the certificates.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The CA certificate's file.
    pub fn ca(&self) -> PathBuf {
        self.certs().join("ca.pem")
    }

    /// What a client trusts: the system's CA.
    pub fn trust(&self) -> Trust {
        Trust::CaPem(std::fs::read_to_string(self.ca()).unwrap())
    }

    /// A client of the system's Redis, as the services reach it.
    pub fn redis_client(&self) -> redis::RedisResult<redis::Client> {
        shared::store::client(&self.cfg.redis_url, &self.cfg.redis)
    }

    /// The key names the services use.
    pub fn keys(&self) -> Keys {
        match self.cluster {
            Some(_) => Keys::for_cluster(self.cfg.key_prefix.clone()),
            None => Keys::new(self.cfg.key_prefix.clone()),
        }
    }

    /// A connection to the services' Redis (or cluster).
    pub async fn conn(&self) -> shared::store::Conn {
        match &self.cluster {
            Some(c) => shared::store::cluster(&c.seeds(), &Default::default())
                .await
                .unwrap(),
            None => self.redis.conn().await,
        }
    }

    /// An account with the password `<name>-pw`.
    pub async fn add_user(&self, name: &str) {
        let mut conn = self.conn().await;
        auth_svc::accounts::add(&mut conn, &self.keys(), name, &password(name), 4)
            .await
            .unwrap();
    }

    /// Accounts with the password `<name>-pw`.
    pub async fn add_users(&self, names: &[&str]) {
        for name in names {
            self.add_user(name).await;
        }
    }

    /// A connection to edge `edge` (0-based), past its `HELLO`.
    pub async fn connect(&self, edge: usize) -> Client {
        let mut c = Client::connect(self.edge(edge), &self.trust())
            .await
            .unwrap();
        c.expect_prefix("HELLO ").await;
        c
    }

    /// Waits until Redis counts `conns[i]` connections on edge `i` (what
    /// `/edges` lists; the harness's probe of a port may still be counted
    /// for a moment).
    pub async fn edges_count(&self, conns: &[u64]) {
        let r = self.conn().await;
        crate::eventually(&format!("the edges count {conns:?}"), || async {
            let mut r = r.clone();
            for (i, want) in conns.iter().enumerate() {
                let info = self.keys().edge_info(&Role::Edge.id(i));
                // Briefly below 0 when a close is counted after a beat.
                let n: Option<i64> = redis::AsyncCommands::hget(&mut r, &info, "conns")
                    .await
                    .unwrap();
                if n != Some(*want as i64) {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Logs `user` in on edge `edge` (0-based).
    pub async fn login(&self, edge: usize, user: &str) -> Client {
        let mut c = self.connect(edge).await;
        c.send(&format!("LOGIN {user} {}", password(user))).await;
        c.expect(&format!("OK LOGIN {user} lobby")).await;
        c
    }

    /// Waits until `user` has no session in Redis any more.
    pub async fn session_gone(&self, user: &str) {
        let key = self.keys().session(user);
        let r = self.conn().await;
        crate::eventually(&format!("{user}'s session is gone"), || async {
            let mut r = r.clone();
            !redis::AsyncCommands::exists::<_, bool>(&mut r, &key)
                .await
                .unwrap()
        })
        .await;
    }

    /// Waits until `n` routers own partitions (they have balanced).
    pub async fn routers_own_partitions(&self, n: usize) {
        let r = self.conn().await;
        let partitions = self.cfg.partitions;
        let keys = self.keys();
        crate::eventually("the routers share the partitions", || {
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
}

impl Drop for System {
    fn drop(&mut self) {
        if !self.temporary {
            return;
        }
        if std::thread::panicking() {
            eprintln!("the services' logs are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends signal `sig` (`TERM`, `KILL`) to process `pid`.
pub fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap()
        .success());
}

fn logfile(path: &Path) -> std::fs::File {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Waits until `port` accepts connections; false if the process exited
/// because the port was taken meanwhile; fails if it exits for another
/// reason or takes too long.
async fn listening(child: &mut Child, port: u16, log: &Path) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            if said.contains("Address already in use") {
                return false;
            }
            panic!(
                "exited ({status}) before listening on port {port}; see {}",
                log.display()
            );
        }
        let answered = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok();
        // Ours, not another test's process on a port ours could not take.
        if answered && matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on port {port}; see {}",
            log.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
