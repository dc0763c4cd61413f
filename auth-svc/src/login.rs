//! One login request: password check, then the session switch script.

use crate::{AuthError, GROUP};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use shared::config::{Config, DuplicateLogin};
use shared::envelope::{Op, Reply, Request};
use shared::keys::Keys;
use shared::protocol::{err_line, ErrorCode};
use shared::store::{Entry, LUA_PRELUDE};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// ARGV: prefix, user, edge, conn, rid, addr, policy, deadline (ms), for a
/// registration the new password hash (else empty), and the request's
/// entry id.
///
/// Past the deadline the edge no longer waits: nothing is done (`stale`).
/// A request already applied (claimed again from an instance thought dead)
/// is not applied twice (`duplicate`).
/// A registration creates the account first, unless the name is taken.
///
/// One live session per user: an existing one is either closed (its edge
/// gets a `close` effect, its room membership goes) or kept and the new
/// login refused. The session id comes from a counter, so it is unique.
/// Private messages queued while the user was offline go out with the reply;
/// the effect names the last one, which the edge acknowledges once shown.
const LOGIN_LUA: &str = r#"
local user, edge, conn, rid, addr, policy = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
if now_ms() > tonumber(ARGV[8]) then return 'stale' end
if not redis.call('SET', P .. 'auth:done:' .. ARGV[10], '1', 'NX', 'PX', 600000) then
  return 'duplicate'
end
local ukey = P .. 'user:' .. user
if ARGV[9] ~= '' then
  if redis.call('EXISTS', ukey) == 1 then
    reply(edge, conn, rid, {'ERR user-exists the name ' .. user .. ' is taken'})
    return 'exists'
  end
  redis.call('HSET', ukey, 'password', ARGV[9], 'created', tostring(now_ms()))
end
redis.call('DEL', P .. 'fail:user:' .. user)
local skey = P .. 'session:' .. user
local old = redis.call('HMGET', skey, 'edge', 'conn', 'sid', 'room')
if old[3] then
  if policy == 'reject' then
    reply(edge, conn, rid, {'ERR already-logged-in ' .. user .. ' is logged in elsewhere'})
    return 'rejected'
  end
  reply(old[1], old[2], nil, nil, {kind = 'close', reason = 'logged-in-elsewhere', sid = old[3]})
  end_session(user, old)
end
local sid = tostring(redis.call('INCR', P .. 'seq:sid'))
redis.call('HSET', skey, 'edge', edge, 'conn', conn, 'sid', sid, 'room', 'lobby',
  'addr', addr, 'since', tostring(now_ms()))
redis.call('SADD', P .. 'edge:sessions:' .. edge, user)
redis.call('SADD', P .. 'room:lobby', user)
redis.call('SADD', P .. 'rooms', 'lobby')
local subs = online(user, 1)
-- Private messages queued while offline follow OK LOGIN, in order. They
-- leave the inbox when the edge has shown them (the `delivered` request).
local lines = {'OK LOGIN ' .. user .. ' lobby'}
local last = ''
for _, e in ipairs(redis.call('XRANGE', P .. 'inbox:' .. user, '-', '+')) do
  local f = fields(e[2])
  lines[#lines + 1] = 'DM ' .. (f.id or e[1]) .. ' ' .. (f.from or '?') .. ' ' .. (f.text or '')
  last = e[1]
end
reply(edge, conn, rid, lines, {kind = 'login', user = user, sid = sid, room = 'lobby',
  subs = table.concat(subs, ' '), inbox = last})
sys('lobby', user, 'joined')
return old[3] and 'replaced' or 'ok'
"#;

pub(crate) struct Ctx {
    keys: Keys,
    conn: ConnectionManager,
    policy: DuplicateLogin,
    login: Script,
    bcrypt: Semaphore,
    /// How long an edge waits for a login (ms): older requests are stale.
    max_age: u64,
    registration: bool,
    min_password: usize,
    cost: u32,
    /// Failed logins allowed per user and per address within `window` ms.
    max_failures: [u32; 2],
    window: u64,
    count_failure: Script,
    /// Checked against when the user does not exist, so that an unknown
    /// user costs as much time as a wrong password.
    dummy_hash: String,
}

impl Ctx {
    pub(crate) async fn new(
        cfg: &Config,
        keys: Keys,
        conn: ConnectionManager,
    ) -> Result<Ctx, AuthError> {
        let cost = cfg.auth.bcrypt_cost;
        let dummy_hash =
            tokio::task::spawn_blocking(move || bcrypt::hash("not a real password", cost))
                .await??;
        let permits = match cfg.auth.bcrypt_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Ctx {
            keys,
            conn,
            policy: cfg.auth.duplicate_login,
            login: Script::new(&format!("{LUA_PRELUDE}{LOGIN_LUA}")),
            bcrypt: Semaphore::new(permits),
            max_age: cfg.edge.request_timeout_ms,
            registration: cfg.auth.registration,
            min_password: cfg.auth.min_password,
            cost,
            max_failures: [
                cfg.auth.max_failures_per_user,
                cfg.auth.max_failures_per_addr,
            ],
            window: cfg.auth.failure_window_ms,
            count_failure: Script::new(COUNT_FAILURE_LUA),
            dummy_hash,
        })
    }
}

/// Counts a failed login on each key (KEYS) in a window that starts with
/// the first failure. ARGV: window (ms).
const COUNT_FAILURE_LUA: &str = r#"
for _, k in ipairs(KEYS) do
  if redis.call('INCR', k) == 1 then redis.call('PEXPIRE', k, ARGV[1]) end
end
"#;

impl Ctx {
    /// The failure counters of a user name and of a client address.
    fn failure_keys(&self, user: &str, addr: &str) -> [String; 2] {
        let ip = addr
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| addr.to_string(), |a| a.ip().to_string());
        let p = self.keys.prefix();
        [format!("{p}fail:user:{user}"), format!("{p}fail:addr:{ip}")]
    }

    /// Whether either counter has reached its limit (0: no limit).
    async fn throttled(
        &self,
        conn: &mut ConnectionManager,
        keys: &[String; 2],
    ) -> Result<bool, AuthError> {
        let counts: Vec<Option<u32>> = conn.mget(&keys[..]).await?;
        Ok(counts
            .iter()
            .zip(self.max_failures)
            .any(|(n, max)| max > 0 && n.unwrap_or(0) >= max))
    }

    async fn count_failure(
        &self,
        conn: &mut ConnectionManager,
        keys: &[String; 2],
    ) -> Result<(), AuthError> {
        self.count_failure
            .key(&keys[..])
            .arg(self.window)
            .invoke_async::<()>(conn)
            .await?;
        Ok(())
    }
}

/// Handles one entry of the login stream and removes it; a `stale` one
/// (its edge no longer waits) is only removed.
pub(crate) async fn handle(ctx: Arc<Ctx>, entry: Entry, stale: bool) {
    let stream = entry.stream.clone();
    let ids = [entry.id.clone()];
    match entry.req {
        Some(req) if stale => {
            tracing::warn!(edge = %req.edge, user = %req.user, "login request too old, dropped");
        }
        Some(req) => {
            let span =
                tracing::info_span!("login", edge = %req.edge, conn = req.conn, user = %req.user);
            let deadline = crate::entry_ms(&entry.id).map_or(u64::MAX, |ms| ms + ctx.max_age);
            let done = login(&ctx, &req, &entry.id, deadline);
            if let Err(e) = done.instrument(span.clone()).await {
                span.in_scope(|| tracing::error!(error = %e, "login failed"));
                let line = err_line(e.code(), "the login could not be completed, try again");
                let _ = publish(&ctx, &req, line).await;
            }
        }
        None => tracing::warn!(id = %entry.id, "undecodable login request dropped"),
    }
    let mut pipe = redis::pipe();
    shared::store::ack_and_delete(&mut pipe, &stream, GROUP, &ids);
    if let Err(e) = pipe.query_async::<()>(&mut ctx.conn.clone()).await {
        tracing::warn!(error = %e, "acknowledging a login request failed");
    }
}

async fn login(ctx: &Ctx, req: &Request, entry_id: &str, deadline: u64) -> Result<(), AuthError> {
    let Op::Login {
        password,
        addr,
        register,
    } = &req.op
    else {
        return Err(AuthError::Unexpected(format!("{:?}", req.op)));
    };
    let mut conn = ctx.conn.clone();
    let password = password.0.clone();
    let new_hash = if *register {
        if !ctx.registration {
            let line = err_line(ErrorCode::RegistrationClosed, "registration is closed");
            return publish(ctx, req, line).await;
        }
        if password.chars().count() < ctx.min_password {
            let text = format!("passwords are at least {} characters", ctx.min_password);
            return publish(ctx, req, err_line(ErrorCode::BadArgs, &text)).await;
        }
        let cost = ctx.cost;
        let _permit = ctx.bcrypt.acquire().await.expect("semaphore never closed");
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost)).await??
    } else {
        let failures = ctx.failure_keys(&req.user, addr);
        if ctx.throttled(&mut conn, &failures).await? {
            tracing::info!("too many failed logins");
            let line = err_line(
                ErrorCode::RateLimited,
                "too many failed logins, wait a minute",
            );
            return publish(ctx, req, line).await;
        }
        let stored: Option<String> = conn.hget(ctx.keys.user(&req.user), "password").await?;
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| ctx.dummy_hash.clone());
        let good = {
            let _permit = ctx.bcrypt.acquire().await.expect("semaphore never closed");
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await?
        };
        if !(good && exists) {
            tracing::info!("bad credentials");
            ctx.count_failure(&mut conn, &failures).await?;
            let line = err_line(ErrorCode::BadCredentials, "wrong user name or password");
            return publish(ctx, req, line).await;
        }
        String::new()
    };
    let outcome: String = ctx
        .login
        .arg(ctx.keys.prefix())
        .arg(&req.user)
        .arg(&req.edge)
        .arg(req.conn.to_string())
        .arg(req.rid.to_string())
        .arg(addr)
        .arg(ctx.policy.as_str())
        .arg(deadline)
        .arg(new_hash)
        .arg(entry_id)
        .invoke_async(&mut conn)
        .await?;
    tracing::info!(outcome = %outcome, "login");
    Ok(())
}

async fn publish(ctx: &Ctx, req: &Request, line: String) -> Result<(), AuthError> {
    let reply = Reply {
        conn: req.conn,
        rid: req.rid,
        lines: vec![line],
        effect: None,
        sid: String::new(),
    };
    let json = serde_json::to_string(&reply).expect("replies serialize");
    let mut conn = ctx.conn.clone();
    conn.publish::<_, _, ()>(ctx.keys.edge_channel(&req.edge), json)
        .await?;
    Ok(())
}
