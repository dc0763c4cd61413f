//! Redis plumbing shared by the services: connections and edge liveness
//! (heartbeats, reaping the sessions of dead edges).

use crate::config::{Notices, RedisConfig};
use crate::keys::Keys;
use crate::scripts::Call;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, RedisResult, Value};
use std::path::Path;
use std::time::Duration;

/// Longest time sent data may go unacknowledged by Redis's host.
#[cfg(target_os = "linux")]
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for an ordinary command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The client every service (and the admin CLI, and chat-bench) reaches
/// Redis `url` with: over TLS for `rediss://` (trusting `redis.ca_file`,
/// showing `redis.client_cert` when set), as the ACL user of `redis`, and
/// with connections that send at once (`TCP_NODELAY`: the redis crate
/// leaves Nagle's algorithm on, which holds a small write back until the
/// previous one is acknowledged, up to 40 ms under concurrency).
pub fn client(url: &str, redis: &RedisConfig) -> RedisResult<Client> {
    use redis::IntoConnectionInfo;
    if url.starts_with("redis+cluster://") {
        return Err(std::io::Error::other(
            "this tool does not run on a Redis Cluster yet (docs/operations.md)",
        )
        .into());
    }
    let mut info = url.into_connection_info()?.set_tcp_settings(tcp());
    let mut acl = info.redis_settings().clone();
    if !redis.username.is_empty() {
        acl = acl.set_username(&redis.username);
    }
    if let Some(password) = acl_password(redis)? {
        acl = acl.set_password(password);
    }
    info = info.set_redis_settings(acl);
    if !url.starts_with("rediss://") {
        return Client::open(info);
    }
    let set = |p: &Path| !p.as_os_str().is_empty();
    let client_tls = if set(&redis.client_cert) {
        Some(redis::ClientTlsConfig {
            client_cert: read(&redis.client_cert)?,
            client_key: read(&redis.client_key)?,
        })
    } else {
        None
    };
    let root_cert = if set(&redis.ca_file) {
        Some(read(&redis.ca_file)?)
    } else {
        None
    };
    Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
}

/// The TCP settings of every connection: `TCP_NODELAY`, and a user
/// timeout, so that data unacknowledged that long breaks the connection (a
/// black-holed Redis) and every connection notices and reconnects.
fn tcp() -> redis::io::tcp::TcpSettings {
    let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(USER_TIMEOUT);
    tcp
}

/// The ACL user's password: the first line of `redis.password_file`, or
/// `redis.password`; `None` when neither is set.
fn acl_password(redis: &RedisConfig) -> RedisResult<Option<String>> {
    if !redis.password_file.as_os_str().is_empty() {
        let text = read(&redis.password_file)?;
        let line = String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or("")
            .to_string();
        return Ok(Some(line));
    }
    Ok((!redis.password.0.is_empty()).then(|| redis.password.0.clone()))
}

/// A file of the Redis settings; its error names it.
fn read(path: &Path) -> RedisResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())).into())
}

/// A connection for ordinary commands: to one Redis, or to a Redis Cluster,
/// where each command goes to the master of its keys' slot and follows
/// slot moves and failovers, and a pipeline is split by slot (see
/// [`by_slot`]). Cheap to clone: the clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Node(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => Box::pin(by_slot(c, cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Sends a pipeline to a cluster, one pipeline per slot of its commands'
/// keys, all at once, and gives the answers back in the pipeline's order.
/// The redis crate sends a pipeline whole to the master of its first
/// key's slot, where a command of another slot fails (`MOVED`); the
/// services' pipelines are of independent commands (the sessions of a
/// batch's users, the acknowledgements of its partitions), and the
/// commands of one slot keep their order. A transaction must be of one
/// slot, and goes as it is.
async fn by_slot(
    c: &mut redis::cluster_async::ClusterConnection,
    pipe: &redis::Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    use redis::aio::ConnectionLike;
    use redis::cluster_routing::Slot;
    let mut groups: Vec<(Option<Slot>, redis::Pipeline, Vec<usize>)> = Vec::new();
    for (i, cmd) in pipe.cmd_iter().enumerate() {
        let slot = key_of(cmd).map(Slot::for_key);
        let group = match groups.iter().position(|(s, ..)| *s == slot) {
            Some(g) => g,
            None => {
                groups.push((slot, redis::pipe(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[group].1.add_command(cmd.clone());
        groups[group].2.push(i);
    }
    if pipe.is_transaction() || groups.len() <= 1 {
        return c.req_packed_commands(pipe, offset, count).await;
    }
    let sent = groups.iter().map(|(_, sub, _)| {
        let mut c = c.clone();
        async move { c.req_packed_commands(sub, 0, sub.len()).await }
    });
    let answers = futures_util::future::try_join_all(sent).await?;
    let mut out = vec![Value::Nil; pipe.len()];
    for ((_, _, at), values) in groups.iter().zip(answers) {
        for (i, v) in at.iter().zip(values) {
            out[*i] = v;
        }
    }
    Ok(out)
}

/// The key that picks a command's slot: a function's or script's first
/// key, a container command's (`XGROUP CREATE <key>`) second argument, a
/// stream read's first stream, else the first argument; `None` for a
/// command without one.
fn key_of(cmd: &redis::Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match &name[..] {
        b"FCALL" | b"FCALL_RO" | b"EVAL" | b"EVALSHA" if args.get(2) != Some(&&b"0"[..]) => {
            args.get(3)
        }
        b"FCALL" | b"FCALL_RO" | b"EVAL" | b"EVALSHA" | b"PING" => None,
        b"XGROUP" | b"XINFO" | b"OBJECT" | b"MEMORY" => args.get(2),
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1)
        }
        _ => args.get(1),
    };
    key.map(|k| k.to_vec())
}

impl Conn {
    /// Sends `cmd` (one without a key, such as `CLIENT UNBLOCK`) to the
    /// master of `key`'s slot; on one Redis, to it.
    pub async fn on_master_of(&mut self, key: &str, cmd: redis::Cmd) -> RedisResult<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Conn::Node(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                c.route_command(cmd, to).await
            }
        }
    }
}

impl Conn {
    /// Every key matching `pattern` (`SCAN`; on a cluster, on each master).
    pub async fn scan(&mut self, pattern: &str) -> RedisResult<Vec<String>> {
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let masters: Vec<Option<RoutingInfo>> = match self {
            Conn::Node(_) => vec![None],
            Conn::Cluster(c) => {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(c).await?;
                nodes
                    .lines()
                    .filter(|l| l.contains("master") && !l.contains("fail"))
                    .filter_map(|l| l.split(' ').nth(1)?.split('@').next()?.rsplit_once(':'))
                    .filter_map(|(host, port)| {
                        let port = port.parse().ok()?;
                        let host = host.to_string();
                        let at = SingleNodeRoutingInfo::ByAddress { host, port };
                        Some(Some(RoutingInfo::SingleNode(at)))
                    })
                    .collect()
            }
        };
        let mut keys = Vec::new();
        for master in masters {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000);
                let value = match (&mut *self, &master) {
                    (Conn::Cluster(c), Some(to)) => c.route_command(cmd, to.clone()).await?,
                    (conn, _) => cmd.query_async(conn).await?,
                };
                let (next, batch): (u64, Vec<String>) = redis::from_redis_value(value)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(keys)
    }
}

/// A reconnecting, multiplexed connection for ordinary commands, with the
/// functions library loaded (see [`crate::scripts`]).
pub async fn commands(client: &Client) -> RedisResult<Conn> {
    let conn = client
        .get_connection_manager_with_config(manager_config(RESPONSE_TIMEOUT))
        .await?;
    ready(Conn::Node(conn)).await
}

/// A service's Redis, as `redis_url` names it: one node or a cluster. Its
/// connection for ordinary commands, the key names that fit it, and how
/// its consumers and its steps are made.
pub struct Redis {
    pub conn: Conn,
    pub keys: Keys,
    pub source: Source,
}

/// Where a service's Redis is.
pub enum Source {
    Node(Client),
    /// The seeds, and the settings to reach them with.
    Cluster(Vec<String>, RedisConfig),
}

impl Redis {
    /// Connects as `cfg` says (the library loaded).
    pub async fn connect(cfg: &crate::config::Config) -> RedisResult<Redis> {
        Ok(match cfg.cluster_seeds() {
            Some(seeds) => Redis {
                conn: cluster(&seeds, &cfg.redis).await?,
                keys: Keys::for_cluster(cfg.key_prefix.clone()),
                source: Source::Cluster(seeds, cfg.redis.clone()),
            },
            None => {
                let node = client(&cfg.redis_url, &cfg.redis)?;
                Redis {
                    conn: commands(&node).await?,
                    keys: Keys::new(cfg.key_prefix.clone()),
                    source: Source::Node(node),
                }
            }
        })
    }

    /// A consumer of `streams` in `group` (see [`crate::consumer::Consumer`]).
    pub async fn consumer(
        &self,
        streams: Vec<String>,
        group: &str,
        name: &str,
        block: Duration,
    ) -> RedisResult<crate::consumer::Consumer> {
        use crate::consumer::Consumer;
        let conn = self.conn.clone();
        match &self.source {
            Source::Node(node) => Consumer::new(node, conn, streams, group, name, block).await,
            Source::Cluster(seeds, redis) => {
                let builder = cluster_client(seeds, redis)?;
                Consumer::for_cluster(builder, conn, streams, group, name, block).await
            }
        }
    }

    /// On a cluster, the single-slot steps that several services carry
    /// out, giving `notices`; `None` on one Redis.
    pub fn steps(&self, notices: Notices) -> Option<crate::steps::Steps> {
        matches!(self.source, Source::Cluster(..)).then(|| crate::steps::Steps {
            k: self.keys.clone(),
            notices,
            conn: self.conn.clone(),
            until: None,
        })
    }
}

/// A connection to the Redis Cluster that `seeds` (node URLs, any of its
/// nodes) lead to, as [`cluster_client`] makes it, with the functions
/// library loaded on every master (a replica gets it from its master).
pub async fn cluster(seeds: &[String], redis: &RedisConfig) -> RedisResult<Conn> {
    let conn = cluster_client(seeds, redis)?
        .build()?
        .get_async_connection()
        .await?;
    ready(Conn::Cluster(conn)).await
}

/// How the services connect to a Redis Cluster: the services' TCP settings
/// and timeouts, as the ACL user of `redis`. Over plain TCP: `rediss://`
/// seeds and `redis.ca_file`/`client_cert` are not used for a cluster yet.
pub fn cluster_client(
    seeds: &[String],
    redis: &RedisConfig,
) -> RedisResult<redis::cluster::ClusterClientBuilder> {
    let mut builder = redis::cluster::ClusterClient::builder(seeds.to_vec())
        .tcp_settings(tcp())
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(RESPONSE_TIMEOUT);
    if !redis.username.is_empty() {
        builder = builder.username(redis.username.clone());
    }
    if let Some(password) = acl_password(redis)? {
        builder = builder.password(password);
    }
    Ok(builder)
}

/// `conn` once the functions library is loaded.
async fn ready(mut conn: Conn) -> RedisResult<Conn> {
    crate::scripts::load(&mut conn).await?;
    warn_unless_noeviction(&mut conn).await;
    Ok(conn)
}

/// Warns unless Redis keeps every key when memory runs out: with an
/// eviction policy it may drop accounts, sessions or counters.
async fn warn_unless_noeviction(conn: &mut Conn) {
    let policy: RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match policy.as_deref() {
        Ok([_, policy]) if policy != "noeviction" => tracing::warn!(
            policy = %policy,
            "Redis's maxmemory-policy is not noeviction: at maxmemory it may evict \
             accounts, sessions and counters; set maxmemory-policy noeviction"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "reading maxmemory-policy failed"),
    }
}

/// Reconnects with backoff (at most a second apart, so service resumes
/// soon after Redis is back).
fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(1))
}

/// A connection of its own for blocking reads (`XREADGROUP ... BLOCK`),
/// which would hold up every other command on a shared one. Like
/// [`commands`], it reconnects by itself after Redis restarts.
pub async fn blocking(client: &Client, block: Duration) -> RedisResult<ConnectionManager> {
    client
        .get_connection_manager_with_config(manager_config(block + RESPONSE_TIMEOUT))
        .await
}

/// Errors that pass (Redis restarting, failing over, busy, out of reach),
/// as opposed to a request the script cannot apply.
///
/// A pipeline's error carries each failed call's own: one that passes
/// makes the whole batch pass (those after it in its partition answered
/// `retry` and were not applied either).
pub fn transient(e: &redis::RedisError) -> bool {
    let passing = |code: &str| {
        matches!(
            code,
            "OOM"
                | "BUSY"
                | "LOADING"
                | "READONLY"
                | "MASTERDOWN"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
                | "MOVED"
                | "ASK"
        )
    };
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        // A Redis Cluster in a failover: its slots move or have no master.
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || e.code().is_some_and(passing)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| passing(error.code())))
}

/// Sessions of a dead edge ended in one round trip, at most.
const END_CHUNK: usize = 256;

/// What an edge advertises with its heartbeat (`chat:edge-info:<edge>`).
#[derive(Debug, Clone, Default)]
pub struct Advert {
    /// The `host:port` clients should use.
    pub addr: String,
    /// Connections open.
    pub conns: u64,
    /// Taking no new clients.
    pub draining: bool,
}

/// One live edge as Redis has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveEdge {
    pub id: String,
    pub addr: String,
    pub conns: u64,
    pub draining: bool,
}

/// Renews edge `edge`'s heartbeat, to hold for `dead_after_ms`, and its
/// advert. With `restart`, first ends what a previous run under that id
/// left behind (with `notices`); returns how many sessions that ended.
///
/// On a cluster (`steps`), the sessions end in steps, and the edge's
/// liveness key in its own slot is renewed with the beat (a login's step
/// adds a session only while it holds).
pub async fn heartbeat(
    conn: &mut Conn,
    keys: &Keys,
    edge: &str,
    dead_after_ms: u64,
    advert: &Advert,
    restart: Option<Notices>,
    steps: Option<&crate::steps::Steps>,
) -> RedisResult<u64> {
    let ended = match (restart, steps) {
        (Some(_), Some(steps)) => steps.end_edge_sessions(edge).await?,
        (Some(notices), None) => end_edge_sessions(conn, keys, edge, "restart", notices).await?,
        (None, _) => 0,
    };
    if steps.is_some() {
        redis::cmd("SET")
            .arg(keys.edge_alive(edge))
            .arg(1)
            .arg("PX")
            .arg(dead_after_ms)
            .query_async::<()>(conn)
            .await?;
    }
    Call::new("chat_beat", &[keys.edges(), keys.edge_info(edge)])
        .arg(edge)
        .arg(dead_after_ms)
        .arg(&advert.addr)
        .arg(advert.conns)
        .arg(u8::from(advert.draining))
        .invoke::<()>(conn)
        .await?;
    Ok(ended)
}

/// Counts a connection opened (`delta` 1) or closed (-1) on `edge` at
/// once, between heartbeats (which write the exact count), so that
/// clients placing themselves see each other.
pub async fn count_connection(
    conn: &mut Conn,
    keys: &Keys,
    edge: &str,
    delta: i64,
) -> RedisResult<()> {
    Call::new("chat_count_conn", &[keys.edge_info(edge)])
        .arg(delta)
        .invoke(conn)
        .await
}

/// The edges whose heartbeat holds and that advertise an address, with
/// their loads, in id order.
pub async fn live_edges(conn: &mut Conn, keys: &Keys) -> RedisResult<Vec<LiveEdge>> {
    let mut ids: Vec<String> = Call::new("chat_live_edges", &[keys.edges()])
        .invoke(conn)
        .await?;
    ids.sort();
    let mut read = redis::pipe();
    for id in &ids {
        read.cmd("HMGET")
            .arg(keys.edge_info(id))
            .arg(&["addr", "conns", "draining"]);
    }
    type Info = (Option<String>, Option<i64>, Option<String>);
    let infos: Vec<Info> = read.query_async(conn).await?;
    Ok(ids
        .into_iter()
        .zip(infos)
        .filter_map(|(id, (addr, conns, draining))| {
            Some(LiveEdge {
                id,
                addr: addr.filter(|a| !a.is_empty())?,
                conns: conns.unwrap_or(0).max(0) as u64,
                draining: draining.as_deref() == Some("1"),
            })
        })
        .collect())
}

/// The edges whose heartbeat has run out; none when more than half of
/// them look dead (then more likely Redis's trouble, or the network's,
/// than theirs: ending their sessions would log most users out and start
/// a reconnect storm; wait for them instead).
pub async fn dead_edges(conn: &mut Conn, keys: &Keys) -> RedisResult<Vec<String>> {
    let dead: Vec<String> = Call::new("chat_dead_edges", &[keys.edges()])
        .invoke(conn)
        .await?;
    let known: usize = conn.zcard(keys.edges()).await?;
    if dead.len() > 1 && dead.len() * 2 > known {
        tracing::warn!(
            dead = dead.len(),
            edges = known,
            "more than half of the edges look dead; not ending their sessions"
        );
        return Ok(Vec::new());
    }
    Ok(dead)
}

/// Ends the sessions of every edge whose heartbeat has run out (with
/// `notices`), and forgets those edges. Returns how many sessions it ended.
pub async fn reap_dead_edges(conn: &mut Conn, keys: &Keys, notices: Notices) -> RedisResult<u64> {
    let mut ended = 0;
    for edge in dead_edges(conn, keys).await? {
        ended += end_edge_sessions(conn, keys, &edge, "reap", notices).await?;
        Call::new("chat_drop_edge", &[keys.edges(), keys.edge_sessions(&edge)])
            .arg(&edge)
            .invoke::<()>(conn)
            .await?;
    }
    Ok(ended)
}

/// The call that ends `user`'s session on `edge`, its room as read
/// before; `mode` is `reap` or `restart` (shared/lua/edges.lua).
pub fn end_edge_session(
    keys: &Keys,
    edge: &str,
    user: &str,
    room: &str,
    mode: &str,
    notices: Notices,
) -> Call {
    let call_keys = [
        keys.edges(),
        keys.edge_sessions(edge),
        keys.session(user),
        keys.online(),
        keys.room(room),
        keys.rooms(),
        keys.room_sizes(),
        keys.room_edges(room),
    ];
    Call::new("chat_end_edge_session", &call_keys)
        .arg(edge)
        .arg(user)
        .arg(room)
        .arg(keys.lines_channel(""))
        .arg(keys.edge_channel(edge))
        .arg(mode)
        .arg(&notices.args()[..])
}

/// Ends the sessions `edge` holds, in chunks of one round trip each;
/// `mode` is `reap` (only while the edge is still dead) or `restart`.
async fn end_edge_sessions(
    conn: &mut Conn,
    keys: &Keys,
    edge: &str,
    mode: &str,
    notices: Notices,
) -> RedisResult<u64> {
    let users: Vec<String> = conn.smembers(keys.edge_sessions(edge)).await?;
    let mut ended = 0;
    for chunk in users.chunks(END_CHUNK) {
        let mut todo: Vec<&str> = chunk.iter().map(String::as_str).collect();
        // A session that moves to another room meanwhile is read again.
        for _ in 0..3 {
            if todo.is_empty() {
                break;
            }
            let mut read = redis::pipe();
            for user in &todo {
                read.hget(keys.session(user), "room");
            }
            let rooms: Vec<Option<String>> = read.query_async(conn).await?;
            let mut calls = redis::pipe();
            for (user, room) in todo.iter().zip(&rooms) {
                let room = room.as_deref().unwrap_or("");
                let call = end_edge_session(keys, edge, user, room, mode, notices);
                calls.add_command(call.into_cmd());
            }
            let statuses: Vec<String> = crate::scripts::query_pipe(conn, &calls).await?;
            if statuses.iter().any(|s| s == "alive") {
                return Ok(ended); // it beats again: nothing more to end
            }
            ended += statuses.iter().filter(|s| *s == "ended").count() as u64;
            todo = todo
                .into_iter()
                .zip(&statuses)
                .filter(|(_, s)| *s == "moved")
                .map(|(u, _)| u)
                .collect();
        }
    }
    Ok(ended)
}
