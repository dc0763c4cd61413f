//! Redis plumbing shared by the services: connections, edge liveness, and
//! the Lua prelude of the services' scripts.

use crate::keys::Keys;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Script};
use std::time::Duration;

/// Longest wait for an ordinary command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `url` whose connections send at once (`TCP_NODELAY`).
/// The redis crate leaves Nagle's algorithm on by default, which holds a
/// small write back until the previous one is acknowledged: up to 40 ms
/// (delayed ACK) on a multiplexed connection under concurrency.
pub fn client(url: &str) -> RedisResult<Client> {
    use redis::io::tcp::TcpSettings;
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    Client::open(info)
}

/// A reconnecting, multiplexed connection for ordinary commands.
pub async fn commands(client: &Client) -> RedisResult<ConnectionManager> {
    client
        .get_connection_manager_with_config(manager_config(RESPONSE_TIMEOUT))
        .await
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

/// Appending a request to a stream; edge-svc still finds it here.
pub use crate::consumer::add_request;

/// Lua functions every service script starts with. `P` is the key prefix
/// (each script sets it from its first argument).
///
/// - `reply(edge, conn, rid, lines, effect, sid)` publishes a JSON `Reply`
///   to an edge's channel (all but the first two may be nil).
/// - `sys(room, user, what)` publishes `SYS <room> <user> <what>`.
/// - `online(user, delta)` keeps the online subscriber counts of the users
///   `user` subscribes to, as it comes online or goes offline.
/// - `end_session(user, sess)` removes a user's room membership and session
///   hash and tells the room; `sess` is the `HMGET` of `edge conn sid room`.
/// - `end_edge_sessions(edge)` ends every session an edge holds.
/// - `fields(flat)` turns a stream entry's field list into a table.
/// - `now_ms()` is Redis's clock in Unix milliseconds.
pub const LUA_PRELUDE: &str = r#"
local P = ARGV[1]
local function reply(edge, conn, rid, lines, effect, sid)
  local r = {conn = conn}
  if rid then r.rid = rid end
  if lines then r.lines = lines end
  if effect then r.effect = effect end
  if sid then r.sid = sid end
  redis.call('PUBLISH', P .. 'ch:edge:' .. edge, cjson.encode(r))
end
local function sys(room, user, what)
  redis.call('PUBLISH', P .. 'ch:room:' .. room, 'SYS ' .. room .. ' ' .. user .. ' ' .. what)
end
local function leave_room(user, room)
  redis.call('SREM', P .. 'room:' .. room, user)
  if redis.call('SCARD', P .. 'room:' .. room) == 0 then
    redis.call('SREM', P .. 'rooms', room)
  end
end
local function count_subscriber(publisher, delta)
  local k = P .. 'online-subscribers:' .. publisher
  if redis.call('INCRBY', k, delta) <= 0 then redis.call('DEL', k) end
end
-- The user comes online (delta 1) or goes offline (-1): the online
-- subscriber counts of whom it subscribes to follow. Returns those.
local function online(user, delta)
  local subs = redis.call('SMEMBERS', P .. 'subscriptions:' .. user)
  for _, p in ipairs(subs) do count_subscriber(p, delta) end
  return subs
end
-- Ends a session (sess: HMGET edge, conn, sid, room). Whoever closes the
-- connection publishes that first, so the user does not see its own exit.
local function end_session(user, sess)
  if sess[1] then redis.call('SREM', P .. 'edge:sessions:' .. sess[1], user) end
  if sess[4] then
    leave_room(user, sess[4])
    sys(sess[4], user, 'left')
  end
  online(user, -1)
  redis.call('DEL', P .. 'session:' .. user)
end
-- Ends the sessions an edge still holds (it died, or restarts). Should it
-- be alive after all, its connections are told and closed.
local function end_edge_sessions(edge)
  local set = P .. 'edge:sessions:' .. edge
  local n = 0
  for _, user in ipairs(redis.call('SMEMBERS', set)) do
    local sess = redis.call('HMGET', P .. 'session:' .. user, 'edge', 'conn', 'sid', 'room')
    if sess[1] == edge then
      reply(edge, sess[2], nil, nil, {kind = 'close', reason = 'server-shutdown', sid = sess[3]})
      end_session(user, sess)
      n = n + 1
    end
  end
  redis.call('DEL', set)
  return n
end
-- A stream entry's flat field list as a table.
local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// Edge liveness: each edge in the sorted set `edges`, scored with the
/// time (Redis's clock) until which its heartbeat holds, and the set of
/// users whose sessions each holds. ARGV: prefix, action, then for `beat`
/// and `restart` the edge id and how long the beat holds (ms).
const EDGES_LUA: &str = r#"
local edges = P .. 'edges'
if ARGV[2] == 'beat' then
  redis.call('ZADD', edges, now_ms() + tonumber(ARGV[4]), ARGV[3])
  return 0
elseif ARGV[2] == 'restart' then
  local n = end_edge_sessions(ARGV[3])
  redis.call('ZADD', edges, now_ms() + tonumber(ARGV[4]), ARGV[3])
  return n
end
local n = 0
for _, edge in ipairs(redis.call('ZRANGEBYSCORE', edges, '-inf', now_ms())) do
  n = n + end_edge_sessions(edge)
  redis.call('ZREM', edges, edge)
end
return n
"#;

fn edges_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(&format!("{LUA_PRELUDE}{EDGES_LUA}")))
}

/// Renews edge `edge`'s heartbeat, to hold for `dead_after_ms`. With
/// `restart`, first ends what a previous run under that id left behind;
/// returns how many sessions that ended.
pub async fn heartbeat(
    conn: &mut ConnectionManager,
    keys: &Keys,
    edge: &str,
    dead_after_ms: u64,
    restart: bool,
) -> RedisResult<u64> {
    edges_script()
        .arg(keys.prefix())
        .arg(if restart { "restart" } else { "beat" })
        .arg(edge)
        .arg(dead_after_ms)
        .invoke_async(conn)
        .await
}

/// Ends the sessions of every edge whose heartbeat has run out. Returns
/// how many sessions it ended.
pub async fn reap_dead_edges(conn: &mut ConnectionManager, keys: &Keys) -> RedisResult<u64> {
    edges_script()
        .arg(keys.prefix())
        .arg("reap")
        .invoke_async(conn)
        .await
}
