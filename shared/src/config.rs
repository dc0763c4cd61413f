//! Configuration of every service: defaults, then a TOML file, then
//! environment variables (`CHAT_` prefix, `__` between section and key, for
//! example `CHAT_REDIS_URL` or `CHAT_EDGE__LISTEN`).
//!
//! docs/operations.md lists every setting.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Exit code for invalid configuration (EX_CONFIG-like `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Environment variable naming the TOML file (also `--config`).
pub const CONFIG_ENV: &str = "CHAT_CONFIG";

/// `CHAT_*` variables that are not settings: the config file, the log
/// format, and the `chat` client's own variables.
const NOT_SETTINGS: &[&str] = &["config", "log_format", "password", "server", "ca"];

/// The scheme of a Redis Cluster's URL.
const CLUSTER_SCHEME: &str = "redis+cluster://";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Redis to use, `redis://host:port[/db]`, or over TLS
    /// `rediss://host:port[/db]` (the certificate is checked for `host`),
    /// or a Redis Cluster: `redis+cluster://host:port[,host:port…]`, any of
    /// its nodes (docs/operations.md, "Scaling past one Redis").
    pub redis_url: String,
    /// TLS and ACL credentials for Redis.
    pub redis: RedisConfig,
    /// Prefix of every Redis key and channel.
    pub key_prefix: String,
    /// Number of router request partitions; the same on every edge and router.
    pub partitions: u32,
    /// Approximate cap on each request stream, against unbounded growth
    /// while no service reads it (at least 1000: requests past it are
    /// dropped unread).
    pub request_stream_maxlen: u64,
    /// Time a stopping service gives the work in hand (an edge: its clients
    /// to close) before it exits anyway.
    pub shutdown_grace_ms: u64,
    pub edge: EdgeConfig,
    pub auth: AuthConfig,
    pub router: RouterConfig,
    pub notices: Notices,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id (replies come back on its channel); unique per edge.
    /// Empty means `<hostname>-<pid>`.
    pub id: String,
    /// Address of the TLS listener.
    pub listen: String,
    /// The `host:port` clients should use to reach this edge, advertised
    /// in Redis (`/edges`, `REDIRECT`); empty: the listen address (a
    /// wildcard host, `0.0.0.0` or `[::]`, as `localhost`).
    pub public_addr: String,
    /// A new connection is redirected (`REDIRECT`) when this edge holds
    /// more than this many percent above the mean of the live edges ...
    pub redirect_above_pct: u32,
    /// ... and at least this many connections more than that mean; 0 for
    /// both: never redirect.
    pub redirect_min_excess: u32,
    /// A drain (SIGTERM, `POST /drain`) moves the clients over at least
    /// this long, evenly, with jitter (cut to `shutdown_grace_ms` less 1 s).
    pub drain_window_ms: u64,
    /// ... and over long enough that no more than this share (percent) of
    /// the moved clients is told to move in any one second.
    pub drain_max_share_pct: u32,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// auth-svc's public key: passwords are sealed to it before they
    /// enter Redis (docs/security.md).
    pub auth_public_key_file: PathBuf,
    /// Longest accepted line in bytes, terminator included.
    pub max_line: usize,
    /// Time allowed for the TLS handshake (and the first byte before it;
    /// at least 100).
    pub handshake_timeout_ms: u64,
    /// Time a back-end service has to answer before `ERR unavailable`
    /// (at least 100).
    pub request_timeout_ms: u64,
    /// Lines queued to one client before it is dropped as `too-slow`
    /// (with `out_queue_bytes`, which binds first for lines of 64 bytes
    /// or more).
    pub out_queue: usize,
    /// Time a closing connection gets to flush its last lines.
    pub write_timeout_ms: u64,
    /// A client's socket is written at most once per this many ms (at most
    /// 100); what arrives meanwhile goes out in the same write (0: write at
    /// once).
    pub write_coalesce_ms: u64,
    /// ... and at most once per this many ms while the edge keeps up (its
    /// timers fire on time): the shorter window costs CPU per line, which
    /// an edge with time to spare has (more than `write_coalesce_ms`
    /// counts as that).
    pub write_coalesce_idle_ms: u64,
    /// Threads that serve the clients: 0, one per core; 1, every
    /// connection on one thread (the cheapest per line, for an edge that
    /// shares its machine with others); at most 1024.
    pub threads: usize,
    /// Time a connection may take to log in; 0: no limit.
    pub login_timeout_ms: u64,
    /// Time a logged-in client may send nothing (`/ping` counts) before
    /// `BYE idle-timeout`; 0: no limit.
    pub idle_timeout_ms: u64,
    /// Connections this edge holds at once (handshakes included); 0: no cap.
    pub max_connections: usize,
    /// Connections from one IP address at once; 0: no cap.
    pub max_connections_per_addr: usize,
    /// Lines a connection may send per second, on average; 0: no limit.
    pub lines_per_sec: u32,
    /// Lines a connection may send at once before the rate applies.
    pub line_burst: u32,
    /// A reply to a command costs one more line of the flood budget per
    /// this many bytes (`/history`, listings); 0: replies cost nothing.
    pub reply_bytes_per_line: usize,
    /// `ERR` replies to a connection's own mistakes within a minute before
    /// `BYE too-many-errors`; 0: no limit.
    pub max_errors_per_min: u32,
    /// An edge whose heartbeat is older than this is dead: its sessions
    /// are removed (by router-svc).
    pub dead_after_ms: u64,
    /// Plain-HTTP admin port (`/healthz`, `/metrics`); empty: none.
    pub admin_listen: String,
    /// Bytes queued per client before `BYE too-slow` (a line or reply
    /// larger than this is taken only into an empty queue).
    pub out_queue_bytes: usize,
    /// After its Pub/Sub connection comes back, the most lines an edge
    /// replays per room or publisher from history; past that, `GAP`.
    pub replay_max: usize,
    /// Connections from one IP address that have not logged in yet; more
    /// get `ERR rate-limited` and are closed; 0: no cap.
    pub max_unauth_per_addr: usize,
    /// New connections from one IP address per second, on average; more
    /// are closed at accept, before the TLS handshake; 0: no limit.
    pub accepts_per_addr_per_sec: u32,
    /// New connections one address may open at once before the rate applies.
    pub accept_burst: u32,
    /// New connections this edge accepts per second from all addresses
    /// (as many at once); past it, accepting waits and new connections
    /// queue in the kernel's backlog. 0: no pacing.
    pub accepts_per_sec: u32,
    /// Bytes of Pub/Sub messages read from Redis and not yet applied; past
    /// it the edge drops its Pub/Sub connection and catches up from history.
    pub pubsub_backlog_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Consumer name in the `auth` group; empty means `<hostname>-<pid>`.
    pub id: String,
    /// The private key that opens the passwords edges seal (mode 0600).
    pub seal_key_file: PathBuf,
    /// A sealed password older than this (by the edge's clock against
    /// ours, either way) does not open.
    pub seal_max_age_ms: u64,
    /// bcrypt cost for new password hashes (4..=31).
    pub bcrypt_cost: u32,
    /// Password checks that run at once; 0 means the number of cores (at
    /// most 1024).
    pub bcrypt_concurrency: usize,
    /// How much auth-svc raises its own nice value (0..=19) as it starts:
    /// bcrypt is bulk work, and on a busy machine it gives way to the work
    /// chat waits for (edges, routers, Redis); 0: the priority it was
    /// started with.
    pub nice: i32,
    /// Whether bcrypt runs in threads under Linux's `SCHED_IDLE` policy:
    /// only on CPU time the rest of the machine leaves, giving way at once
    /// to any other thread that wakes (see [`crate::service::idle_thread`]).
    pub bcrypt_idle: bool,
    /// `force-logout` or `reject`.
    pub duplicate_login: DuplicateLogin,
    /// Most requests read per stream read.
    pub batch: usize,
    /// Most requests in hand at once; the rest wait in the stream, where
    /// other instances can take them. 0: what bcrypt can check within
    /// `edge.request_timeout_ms` (permits × request timeout / the time of
    /// one check, measured at start). At most [`MAX_IN_FLIGHT`].
    pub max_in_flight: usize,
    /// Whether `REGISTER` creates accounts.
    pub registration: bool,
    /// Shortest password `REGISTER` and `auth-svc user add`/`passwd`
    /// accept (characters; at most 72, bcrypt's longest).
    pub min_password: usize,
    /// Failed logins per user name within `failure_window_ms` before
    /// `ERR rate-limited`; 0: no limit.
    pub max_failures_per_user: u32,
    /// Failed logins per client IP address within the window; 0: no limit.
    pub max_failures_per_addr: u32,
    /// Registrations within the window from all addresses together (each
    /// costs a bcrypt hash, so a flood from many addresses would starve
    /// logins); 0: no limit.
    pub max_registrations: u32,
    pub failure_window_ms: u64,
    /// A login request read by an instance and left unfinished this long
    /// (the instance died) is taken over by another. Keep it well below
    /// `edge.request_timeout_ms`.
    pub claim_idle_ms: u64,
    /// How long a resume token (`TOKEN`, `RESUME`) stays good once nothing
    /// renews it: its edge renews it every quarter of this while its
    /// session lives. 0: no tokens are given (and `RESUME` always fails).
    pub resume_ttl_ms: u64,
    /// Plain-HTTP admin port (`/healthz`, `/metrics`); empty: none.
    pub admin_listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Instance id (lease owner, consumer name); empty means `<hostname>-<pid>`.
    pub id: String,
    /// Entries kept in each history stream.
    pub history_cap: u64,
    /// A history stream (room, conversation, publications, inbox) not
    /// written for this long expires; 0: never.
    pub history_ttl_ms: u64,
    /// Rough wire bytes of the `HIST` lines of one `/history` reply: the
    /// newest that fit are shown, then `MORE HISTORY <omitted>`.
    pub reply_max_bytes: u64,
    /// Most lines of a `/who`, `/rooms` or `/subscriptions` listing; past
    /// that, a sample of this many and `MORE <what> <omitted>`.
    pub listing_max: u64,
    /// Most messages one sender may have queued in an offline user's
    /// inbox; 0: no limit.
    pub inbox_per_sender: u64,
    /// Most users one user may subscribe to; 0: no limit.
    pub max_subscriptions: u64,
    /// Lifetime of a partition lease; renewed every third of it.
    pub lease_ms: u64,
    /// Most requests read per stream read.
    pub batch: usize,
    /// Plain-HTTP admin port (`/healthz`, `/metrics`); empty: none.
    pub admin_listen: String,
}

/// How the services reach Redis: TLS (with `rediss://`) and the ACL user.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// CA certificates (PEM) that Redis's certificate must chain to;
    /// empty: the system's roots.
    pub ca_file: PathBuf,
    /// Client certificate and key (PEM), for a Redis that asks for one
    /// (`tls-auth-clients yes`); both or neither.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// ACL user (`AUTH <username> <password>`); empty: `default`.
    pub username: String,
    /// Its password; better in `password_file`.
    pub password: crate::envelope::Secret,
    /// A file whose first line is the password.
    pub password_file: PathBuf,
}

/// Membership notices (`SYS <room> <user> joined|left`): where they go.
/// Read by every service that moves users (auth-svc, router-svc, edges):
/// set them alike everywhere.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Notices {
    /// Whether the lobby gets them (every logged-in user is there first, so
    /// a login storm would fan out to everyone).
    pub lobby: bool,
    /// No notices in a room with more members than this (after the
    /// change); 0: no limit.
    pub max_members: u64,
}

impl Default for Notices {
    fn default() -> Self {
        Notices {
            lobby: false,
            max_members: 100,
        }
    }
}

impl Notices {
    /// The two ARGV the functions take for them (shared/lua/common.lua
    /// `notices`): the room without notices (empty: none), the most members.
    pub fn args(&self) -> [String; 2] {
        let quiet = if self.lobby {
            ""
        } else {
            crate::protocol::LOBBY
        };
        [quiet.to_string(), self.max_members.to_string()]
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DuplicateLogin {
    ForceLogout,
    Reject,
}

impl DuplicateLogin {
    pub fn as_str(self) -> &'static str {
        match self {
            DuplicateLogin::ForceLogout => "force-logout",
            DuplicateLogin::Reject => "reject",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: "redis://127.0.0.1:6379".into(),
            redis: RedisConfig::default(),
            key_prefix: "chat:".into(),
            partitions: 16,
            request_stream_maxlen: 100_000,
            shutdown_grace_ms: 5_000,
            edge: EdgeConfig::default(),
            auth: AuthConfig::default(),
            router: RouterConfig::default(),
            notices: Notices::default(),
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            id: String::new(),
            listen: "0.0.0.0:7001".into(),
            public_addr: String::new(),
            redirect_above_pct: 20,
            redirect_min_excess: 50,
            drain_window_ms: 3_000,
            drain_max_share_pct: 40,
            tls_cert: "certs/server.pem".into(),
            tls_key: "certs/server-key.pem".into(),
            auth_public_key_file: Path::new("certs").join(crate::seal::PUBLIC_FILE),
            max_line: 4096,
            handshake_timeout_ms: 10_000,
            request_timeout_ms: 5_000,
            out_queue: 16_384,
            write_timeout_ms: 5_000,
            write_coalesce_ms: 10,
            write_coalesce_idle_ms: 5,
            threads: 0,
            login_timeout_ms: 30_000,
            idle_timeout_ms: 900_000,
            max_connections: 20_000,
            max_connections_per_addr: 64,
            lines_per_sec: 20,
            line_burst: 50,
            reply_bytes_per_line: 1024,
            max_errors_per_min: 60,
            dead_after_ms: 15_000,
            admin_listen: "127.0.0.1:9101".into(),
            replay_max: 200,
            out_queue_bytes: 1 << 20,
            max_unauth_per_addr: 32,
            accepts_per_addr_per_sec: 20,
            accept_burst: 64,
            accepts_per_sec: 200,
            pubsub_backlog_bytes: 64 << 20,
        }
    }
}

impl EdgeConfig {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// How long a drain spreads its moves over: `drain_window_ms`, or
    /// longer if `drain_max_share_pct` asks for it; but within `grace`
    /// less a second (the rest is for the last lines to go out).
    pub fn drain_window(&self, grace: Duration) -> Duration {
        let share = u64::from(self.drain_max_share_pct.clamp(1, 100));
        let wanted = Duration::from_millis(self.drain_window_ms.max(100_000 / share));
        wanted.min(grace.saturating_sub(Duration::from_secs(1)))
    }

    /// The address clients should use (see `public_addr`).
    pub fn public_addr(&self, bound: std::net::SocketAddr) -> String {
        if !self.public_addr.is_empty() {
            return self.public_addr.clone();
        }
        if bound.ip().is_unspecified() {
            format!("localhost:{}", bound.port())
        } else {
            bound.to_string()
        }
    }

    /// How often an edge renews its heartbeat.
    pub fn heartbeat_every(&self) -> Duration {
        Duration::from_millis(self.dead_after_ms / 3)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            id: String::new(),
            seal_key_file: Path::new("certs").join(crate::seal::PRIVATE_FILE),
            seal_max_age_ms: 60_000,
            bcrypt_cost: 12,
            bcrypt_concurrency: 0,
            nice: 10,
            bcrypt_idle: true,
            duplicate_login: DuplicateLogin::ForceLogout,
            batch: 64,
            max_in_flight: 0,
            registration: false,
            min_password: 8,
            max_failures_per_user: 5,
            max_failures_per_addr: 30,
            max_registrations: 60,
            failure_window_ms: 60_000,
            claim_idle_ms: 2_000,
            resume_ttl_ms: 600_000,
            admin_listen: "127.0.0.1:9102".into(),
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            id: String::new(),
            history_cap: 1000,
            history_ttl_ms: 30 * 24 * 3_600_000,
            reply_max_bytes: 64 * 1024,
            listing_max: 1000,
            inbox_per_sender: 100,
            max_subscriptions: 1000,
            lease_ms: 5_000,
            batch: 256,
            admin_listen: "127.0.0.1:9103".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The seed nodes (`redis://host:port` each) of a `redis+cluster://`
    /// URL; `None` for one Redis.
    pub fn cluster_seeds(&self) -> Option<Vec<String>> {
        let nodes = self.redis_url.strip_prefix(CLUSTER_SCHEME)?;
        Some(
            nodes
                .split(',')
                .filter(|n| !n.is_empty())
                .map(|n| format!("redis://{n}"))
                .collect(),
        )
    }

    /// Loads defaults, then `file` (or `$CHAT_CONFIG`) if given, then `CHAT_*`
    /// variables, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let env_file = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} not found",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        let fig = fig.merge(Env::prefixed("CHAT_").split("__").ignore(NOT_SETTINGS));
        let mut cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.fill_ids();
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`Config::load`] for a service's `main`: on error, says why and
    /// exits with [`EXIT_CONFIG`] before anything binds.
    pub fn load_or_exit(service: &str, file: Option<&Path>) -> Config {
        Config::load(file).unwrap_or_else(|e| exit_config(service, &e))
    }

    fn fill_ids(&mut self) {
        for id in [&mut self.edge.id, &mut self.auth.id, &mut self.router.id] {
            if id.is_empty() {
                *id = default_instance_id();
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !["redis://", "rediss://", "unix://", CLUSTER_SCHEME]
            .iter()
            .any(|s| self.redis_url.starts_with(s))
        {
            return bad(
                "redis_url must start with redis://, rediss://, unix:// or redis+cluster://",
            );
        }
        if self.cluster_seeds().is_some_and(|s| s.is_empty()) {
            return bad("redis+cluster:// needs at least one host:port");
        }
        let r = &self.redis;
        if r.client_cert.as_os_str().is_empty() != r.client_key.as_os_str().is_empty() {
            return bad("redis.client_cert and redis.client_key go together");
        }
        if !r.password.0.is_empty() && !r.password_file.as_os_str().is_empty() {
            return bad("set redis.password or redis.password_file, not both");
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return bad("partitions must be 1..=1024");
        }
        if self.edge.max_line < 64 {
            return bad("edge.max_line must be at least 64");
        }
        if self.edge.write_coalesce_ms > 100
            || self.edge.write_coalesce_ms >= self.edge.write_timeout_ms
        {
            return bad(
                "edge.write_coalesce_ms must be at most 100 and below edge.write_timeout_ms",
            );
        }
        if self.edge.threads > 1024 {
            return bad("edge.threads must be at most 1024 (0: one per core)");
        }
        if self.edge.out_queue == 0 {
            return bad("edge.out_queue must be at least 1");
        }
        if self.edge.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("edge.listen must be host:port with a numeric host");
        }
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            return bad("auth.bcrypt_cost must be 4..=31");
        }
        if self.edge.dead_after_ms < 300 {
            return bad("edge.dead_after_ms must be at least 300");
        }
        if self.edge.out_queue_bytes < self.edge.max_line {
            return bad("edge.out_queue_bytes must be at least edge.max_line");
        }
        if !(1..=10_000).contains(&self.edge.replay_max) {
            return bad("edge.replay_max must be 1..=10000");
        }
        for admin in [
            &self.edge.admin_listen,
            &self.auth.admin_listen,
            &self.router.admin_listen,
        ] {
            if !admin.is_empty() && admin.parse::<std::net::SocketAddr>().is_err() {
                return bad("admin_listen must be empty or host:port with a numeric host");
            }
        }
        if self.request_stream_maxlen < 1000 {
            return bad("request_stream_maxlen must be at least 1000");
        }
        if self.edge.handshake_timeout_ms < 100 || self.edge.request_timeout_ms < 100 {
            return bad(
                "edge.handshake_timeout_ms and edge.request_timeout_ms must be at least 100",
            );
        }
        if self.auth.bcrypt_concurrency > 1024 || self.auth.max_in_flight > MAX_IN_FLIGHT {
            return bad(
                "auth.bcrypt_concurrency must be at most 1024, auth.max_in_flight at most 1000000",
            );
        }
        if self.auth.min_password > 72 {
            return bad("auth.min_password must be at most 72 (bcrypt reads no more)");
        }
        if self.edge.request_timeout_ms >= self.edge.dead_after_ms {
            return bad("edge.request_timeout_ms must be below edge.dead_after_ms");
        }
        if self.auth.failure_window_ms == 0
            && (self.auth.max_failures_per_user > 0 || self.auth.max_failures_per_addr > 0)
        {
            return bad("auth.failure_window_ms must be positive while a failure limit is set");
        }
        if self.edge.lines_per_sec > 0 && self.edge.line_burst == 0 {
            return bad("edge.line_burst must be at least 1");
        }
        if self.edge.accepts_per_addr_per_sec > 0 && self.edge.accept_burst == 0 {
            return bad("edge.accept_burst must be at least 1");
        }
        if self.edge.pubsub_backlog_bytes < 4 << 20 {
            return bad("edge.pubsub_backlog_bytes must be at least 4 MiB");
        }
        if !(1..=100).contains(&self.edge.drain_max_share_pct) {
            return bad("edge.drain_max_share_pct must be 1..=100");
        }
        if !self.edge.public_addr.is_empty() && !self.edge.public_addr.contains(':') {
            return bad("edge.public_addr must be host:port");
        }
        if self.auth.seal_max_age_ms < self.edge.request_timeout_ms {
            return bad("auth.seal_max_age_ms must be at least edge.request_timeout_ms");
        }
        if self.auth.resume_ttl_ms != 0 && self.auth.resume_ttl_ms < 1_000 {
            return bad("auth.resume_ttl_ms must be 0 (off) or at least 1000");
        }
        if !(0..=19).contains(&self.auth.nice) {
            return bad("auth.nice must be 0..=19");
        }
        if self.auth.claim_idle_ms < 100 {
            return bad("auth.claim_idle_ms must be at least 100");
        }
        if self.router.lease_ms < 300 {
            return bad("router.lease_ms must be at least 300");
        }
        if self.router.history_cap == 0 || self.auth.batch == 0 || self.router.batch == 0 {
            return bad("history_cap and batch settings must be positive");
        }
        if self.router.listing_max == 0 || self.router.reply_max_bytes < 1024 {
            return bad(
                "router.listing_max must be positive, router.reply_max_bytes at least 1024",
            );
        }
        let id_ok = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
        if !id_ok(&self.edge.id) || !id_ok(&self.auth.id) || !id_ok(&self.router.id) {
            return bad("instance ids must be non-empty and without spaces");
        }
        Ok(())
    }
}

/// The most login requests one auth-svc takes in hand (`auth.max_in_flight`,
/// set or computed).
pub const MAX_IN_FLIGHT: usize = 1_000_000;

/// Reports a configuration error and exits with [`EXIT_CONFIG`].
pub fn exit_config(service: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("{service}: {e}");
    std::process::exit(EXIT_CONFIG)
}

/// `<hostname>-<pid>`: unique per process on a host, and across containers.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type
mod tests {
    use super::*;

    #[test]
    fn the_drain_window_and_the_public_address() {
        let mut edge = EdgeConfig::default();
        let grace = Duration::from_secs(5);
        assert_eq!(edge.drain_window(grace), Duration::from_secs(3));
        // 10 % a second at most: 10 s, but within the grace less a second.
        edge.drain_max_share_pct = 10;
        assert_eq!(edge.drain_window(grace), Duration::from_secs(4));
        assert_eq!(
            edge.drain_window(Duration::from_secs(60)),
            Duration::from_secs(10)
        );
        let bound: std::net::SocketAddr = "0.0.0.0:7001".parse().unwrap();
        assert_eq!(edge.public_addr(bound), "localhost:7001");
        let bound: std::net::SocketAddr = "127.0.0.1:7002".parse().unwrap();
        assert_eq!(edge.public_addr(bound), "127.0.0.1:7002");
        edge.public_addr = "chat.example:443".into();
        assert_eq!(edge.public_addr(bound), "chat.example:443");
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "partitions = 4\n[edge]\nid = \"from-file\"\nmax_line = 100\n",
            )?;
            jail.set_env("CHAT_EDGE__MAX_LINE", "200");
            let cfg = Config::load(Some(Path::new("c.toml"))).expect("load");
            assert_eq!(cfg.partitions, 4);
            assert_eq!(cfg.edge.id, "from-file");
            assert_eq!(cfg.edge.max_line, 200);
            assert_eq!(cfg.auth.duplicate_login, DuplicateLogin::ForceLogout);
            jail.set_env("CHAT_LOG_FORMAT", "json");
            jail.set_env("CHAT_PASSWORD", "client-only");
            jail.set_env("CHAT_AUTH__DUPLICATE_LOGIN", "reject");
            let cfg = Config::load(Some(Path::new("c.toml"))).expect("load");
            assert_eq!(cfg.auth.duplicate_login, DuplicateLogin::Reject);
            Ok(())
        });
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        let mut cfg = Config::default();
        cfg.fill_ids();
        assert_eq!(cfg.cluster_seeds(), None);
        cfg.redis_url = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001".into();
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
        assert_eq!(
            cfg.cluster_seeds().unwrap(),
            ["redis://10.0.0.1:7000", "redis://10.0.0.2:7001"]
        );
        cfg.redis_url = "redis+cluster://".into();
        assert!(cfg.validate().is_err());
        cfg.redis_url = "http://x".into();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("CHAT_PARTITIONS", "0");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_PARTITIONS", "8");
            jail.set_env("CHAT_EDGE__WRITE_COALESCE_MS", "101");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_EDGE__WRITE_COALESCE_MS", "100");
            assert!(Config::load(None).is_ok());
            jail.set_env("CHAT_EDGE__THREADS", "1025");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_EDGE__THREADS", "1");
            assert_eq!(Config::load(None).unwrap().edge.threads, 1);
            jail.set_env("CHAT_ROUTER__LISTING_MAX", "0");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_ROUTER__LISTING_MAX", "5");
            jail.set_env("CHAT_AUTH__NICE", "20");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_AUTH__NICE", "10");
            jail.set_env("CHAT_AUTH__RESUME_TTL_MS", "999");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_AUTH__RESUME_TTL_MS", "0");
            assert_eq!(Config::load(None).unwrap().auth.resume_ttl_ms, 0);
            jail.set_env("CHAT_NOTICES__LOBBY", "true");
            assert!(Config::load(None).unwrap().notices.lobby);
            jail.set_env("CHAT_EDGE__DRAIN_MAX_SHARE_PCT", "0");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_EDGE__DRAIN_MAX_SHARE_PCT", "25");
            jail.set_env("CHAT_EDGE__PUBLIC_ADDR", "no-port");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_EDGE__PUBLIC_ADDR", "chat.example:443");
            let cfg = Config::load(None).unwrap();
            assert_eq!(cfg.edge.public_addr, "chat.example:443");
            jail.set_env("CHAT_REDIS_URL", "rediss://redis.internal:6380");
            jail.set_env("CHAT_REDIS__CLIENT_CERT", "client.pem");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_REDIS__CLIENT_KEY", "client-key.pem");
            jail.set_env("CHAT_REDIS__PASSWORD", "pw");
            jail.set_env("CHAT_REDIS__PASSWORD_FILE", "pw-file");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_REDIS__PASSWORD_FILE", "");
            let cfg = Config::load(None).unwrap();
            assert_eq!(cfg.redis.password.0, "pw");
            assert!(!format!("{cfg:?}").contains("\"pw\""), "never shown");
            jail.set_env("CHAT_AUTH__SEAL_MAX_AGE_MS", "100");
            assert!(matches!(Config::load(None), Err(ConfigError::Invalid(_))));
            jail.set_env("CHAT_AUTH__SEAL_MAX_AGE_MS", "60000");
            // Values that would leave the service unusable, or panic later.
            for (var, bad, good) in [
                ("CHAT_REQUEST_STREAM_MAXLEN", "0", "1000"),
                ("CHAT_EDGE__REQUEST_TIMEOUT_MS", "0", "100"),
                ("CHAT_EDGE__HANDSHAKE_TIMEOUT_MS", "99", "100"),
                ("CHAT_AUTH__BCRYPT_CONCURRENCY", "1025", "1024"),
                ("CHAT_AUTH__MAX_IN_FLIGHT", "2305843009213693952", "1000000"),
                ("CHAT_AUTH__MIN_PASSWORD", "73", "72"),
            ] {
                jail.set_env(var, bad);
                assert!(
                    matches!(Config::load(None), Err(ConfigError::Invalid(_))),
                    "{var}={bad}"
                );
                jail.set_env(var, good);
                assert!(Config::load(None).is_ok(), "{var}={good}");
            }
            jail.set_env("CHAT_EDGE__NO_SUCH_KEY", "1");
            assert!(Config::load(None).is_err());
            Ok(())
        });
    }
}
