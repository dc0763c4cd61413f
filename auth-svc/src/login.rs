//! One login request: password check, then the session switch script.

use crate::AuthError;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use shared::admin::{Counter, Histogram, Page, Probe};
use shared::config::{Config, DuplicateLogin};
use shared::consumer::{pending_count, Entry, EntryId};
use shared::envelope::{Op, Reply, Request};
use shared::keys::Keys;
use shared::protocol::{err_line, ErrorCode};
use shared::store::LUA_PRELUDE;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::Instrument;

/// ARGV: prefix, user, edge, conn, rid, addr, policy, deadline (ms), for a
/// registration the new password hash (else empty), the request's entry
/// id, and the client's IP address.
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
-- Nor for an edge taken for dead: nobody would end the session.
local alive = redis.call('ZSCORE', P .. 'edges', edge)
if not alive or tonumber(alive) < now_ms() then return 'stale' end
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
-- A good login gives back its attempts: the user's count starts over, the
-- address's loses this one (registrations keep theirs).
redis.call('DEL', P .. 'fail:user:' .. user)
if ARGV[9] == '' and redis.call('DECR', P .. 'fail:addr:' .. ARGV[11]) <= 0 then
  redis.call('DEL', P .. 'fail:addr:' .. ARGV[11])
end
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

/// Login outcomes counted for /metrics, by label.
const OUTCOMES: [&str; 5] = ["ok", "bad_credentials", "rate_limited", "refused", "error"];

pub(crate) struct Ctx {
    keys: Keys,
    /// Per [`OUTCOMES`].
    outcomes: [Counter; 5],
    bcrypt_seconds: Histogram,
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
    attempt: Script,
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
            outcomes: Default::default(),
            bcrypt_seconds: Histogram::default(),
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
            attempt: Script::new(ATTEMPT_LUA),
            dummy_hash,
        })
    }
}

/// Counts an attempt on each counter (KEYS: the user's, the address's),
/// in a window that starts with the first, and says whether any is now
/// over its limit (ARGV: window ms, then each key's limit, 0: none). Counted
/// before the password is checked, so that guesses sent in parallel are
/// limited too; a login that succeeds gives its count back.
const ATTEMPT_LUA: &str = r#"
local over = 0
for i, k in ipairs(KEYS) do
  local n = redis.call('INCR', k)
  if n == 1 then redis.call('PEXPIRE', k, ARGV[1]) end
  local max = tonumber(ARGV[i + 1])
  if max > 0 and n > max then over = 1 end
end
return over
"#;

impl Ctx {
    /// The attempt counters of a user name and of a client IP address.
    fn attempt_keys(&self, user: &str, ip: &str) -> [String; 2] {
        let p = self.keys.prefix();
        [format!("{p}fail:user:{user}"), format!("{p}fail:addr:{ip}")]
    }

    /// Counts an attempt on `keys`; true if one of them is over its limit.
    async fn over_limit(
        &self,
        conn: &mut ConnectionManager,
        keys: &[String],
        limits: &[u32],
    ) -> Result<bool, AuthError> {
        let mut inv = self.attempt.prepare_invoke();
        inv.key(keys).arg(self.window).arg(limits);
        let over: i64 = inv.invoke_async(conn).await?;
        Ok(over == 1)
    }
}

/// Handles one entry of the login stream (the caller then removes it); a
/// `stale` one (its edge no longer waits) is only dropped.
pub(crate) async fn handle(ctx: Arc<Ctx>, entry: Entry, stale: bool) {
    match entry.req {
        Some(req) if stale => {
            tracing::warn!(edge = %req.edge, user = %req.user, "login request too old, dropped");
        }
        Some(req) => {
            let span =
                tracing::info_span!("login", edge = %req.edge, conn = req.conn, user = %req.user);
            let deadline = EntryId::parse(&entry.id).map_or(u64::MAX, |id| id.ms + ctx.max_age);
            let done = login(&ctx, &req, &entry.id, deadline);
            if let Err(e) = done.instrument(span.clone()).await {
                span.in_scope(|| tracing::error!(error = %e, "login failed"));
                ctx.count("error");
                let line = err_line(e.code(), "the login could not be completed, try again");
                let _ = publish(&ctx, &req, line).await;
            }
        }
        None => tracing::warn!(id = %entry.id, "undecodable login request dropped"),
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
    let ip = addr
        .parse::<std::net::SocketAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.ip().to_string());
    let counters = ctx.attempt_keys(&req.user, &ip);
    let refused = |what: &str| {
        tracing::info!("too many {what}");
        err_line(ErrorCode::RateLimited, "too many attempts, wait a minute")
    };
    let new_hash = if *register {
        if !ctx.registration {
            let line = err_line(ErrorCode::RegistrationClosed, "registration is closed");
            return publish(ctx, req, line).await;
        }
        if password.chars().count() < ctx.min_password {
            let text = format!("passwords are at least {} characters", ctx.min_password);
            return publish(ctx, req, err_line(ErrorCode::BadArgs, &text)).await;
        }
        // Registrations count against the address, and are not given back.
        let addr_only = &counters[1..];
        if ctx
            .over_limit(&mut conn, addr_only, &ctx.max_failures[1..])
            .await?
        {
            ctx.count("rate_limited");
            return publish(ctx, req, refused("registrations")).await;
        }
        if conn.exists(ctx.keys.user(&req.user)).await? {
            let text = format!("the name {} is taken", req.user);
            return publish(ctx, req, err_line(ErrorCode::UserExists, &text)).await;
        }
        let cost = ctx.cost;
        let _permit = ctx.bcrypt.acquire().await.expect("semaphore never closed");
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost)).await??
    } else {
        if ctx
            .over_limit(&mut conn, &counters, &ctx.max_failures)
            .await?
        {
            ctx.count("rate_limited");
            return publish(ctx, req, refused("failed logins")).await;
        }
        let stored: Option<String> = conn.hget(ctx.keys.user(&req.user), "password").await?;
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| ctx.dummy_hash.clone());
        let good = {
            let _permit = ctx.bcrypt.acquire().await.expect("semaphore never closed");
            let started = std::time::Instant::now();
            let good = tokio::task::spawn_blocking(move || {
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await?;
            ctx.bcrypt_seconds.observe(started.elapsed());
            good
        };
        if !(good && exists) {
            tracing::info!("bad credentials");
            ctx.count("bad_credentials");
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
        .arg(&ip)
        .invoke_async(&mut conn)
        .await?;
    tracing::info!(outcome = %outcome, "login");
    ctx.count(match outcome.as_str() {
        "ok" | "replaced" => "ok",
        _ => "refused",
    });
    Ok(())
}

impl Probe for Ctx {
    async fn healthy(&self) -> bool {
        shared::admin::redis_answers(&self.conn).await
    }

    async fn metrics(&self) -> String {
        let stream = self.keys.auth_requests();
        let mut conn = self.conn.clone();
        let (length, pending): (i64, redis::Value) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("XPENDING")
            .arg(&stream)
            .arg(crate::GROUP)
            .query_async(&mut conn)
            .await
            .unwrap_or((-1, redis::Value::Nil));
        let pending = pending_count(pending).map_or(-1, |n| n as i64);
        let outcomes: Vec<(&str, u64)> = OUTCOMES
            .iter()
            .zip(&self.outcomes)
            .map(|(l, c)| (*l, c.get()))
            .collect();
        Page::default()
            .counters(
                "chat_auth_logins_total",
                "Login and registration requests by outcome.",
                "result",
                &outcomes,
            )
            .histogram(
                "chat_auth_bcrypt_seconds",
                "Time of one password check.",
                &self.bcrypt_seconds,
            )
            .gauge(
                "chat_auth_stream_length",
                "Login requests in the stream, read or not (-1: unknown).",
                length,
            )
            .gauge(
                "chat_auth_pending",
                "Login requests read and not finished (-1: unknown).",
                pending,
            )
            .finish()
    }
}

impl Ctx {
    fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].inc();
        }
    }
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
