//! One login request: password check, then the session switch script.

use crate::AuthError;
use redis::AsyncCommands;
use shared::admin::{Counter, Histogram, Page, Probe};
use shared::config::{Config, DuplicateLogin, Notices};
use shared::consumer::{pending_count, Entry, EntryId};
use shared::envelope::{Op, Reply, Request};
use shared::keys::Keys;
use shared::line::ServerLine;
use shared::protocol::{ErrorCode, LOBBY};
use shared::scripts::Call;
use shared::seal::Opener;
use shared::store::Conn;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

/// One session switch: `chat_login` (shared/lua/auth.lua) for a login
/// request whose password is good (or a registration, with `new_hash`).
pub struct Switch<'a> {
    pub req: &'a Request,
    /// The request's stream entry id (marks it applied).
    pub entry_id: &'a str,
    pub addr: &'a str,
    pub ip: &'a str,
    pub policy: &'a str,
    /// Redis time (ms) past which the edge no longer waits.
    pub deadline: u64,
    pub new_hash: &'a str,
    /// Where the user's old session is, as read before (empty: none).
    pub at_edge: &'a str,
    pub at_room: &'a str,
    /// The new session's id ([`new_sid`]).
    pub sid: &'a str,
    pub token: Tokens<'a>,
}

/// The resume-token part of a [`Switch`] (shared/lua/resume.lua).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tokens<'a> {
    /// The hash of the token the new session gets (empty: none).
    pub next: &'a str,
    /// How long it lasts unrenewed (ms).
    pub ttl: u64,
    /// For a RESUME: the hash of the token given (empty: a password login).
    pub presented: &'a str,
    /// For a RESUME: the room its record names, as read before.
    pub back_room: &'a str,
}

/// A new session id: 128 random bits, in hex (32 characters).
pub fn new_sid() -> String {
    shared::token::random_hex(16)
}

impl Switch<'_> {
    /// The call, with every key it touches, giving `notices`.
    pub fn call(&self, k: &Keys, notices: Notices) -> Call {
        let (user, edge) = (self.req.user.as_str(), self.req.edge.as_str());
        let keys = [
            k.edges(),
            k.auth_done(user, self.entry_id),
            k.user(user),
            k.fail_user(user),
            k.fail_addr(self.ip),
            k.session(user),
            k.seq_sid(),
            k.edge_sessions(edge),
            k.room(LOBBY),
            k.rooms(),
            k.room_sizes(),
            k.online(),
            k.inbox(user),
            k.subscriptions(user),
            k.edge_sessions(self.at_edge),
            k.room(self.at_room),
            k.resume(user),
            k.room(self.token.back_room),
            k.room_edges(LOBBY),
            k.room_edges(self.token.back_room),
            k.room_edges(self.at_room),
        ];
        Call::new("chat_login", &keys)
            .arg(user)
            .arg(edge)
            .arg(self.req.conn.to_string())
            .arg(self.req.rid.to_string())
            .arg(self.addr)
            .arg(self.policy)
            .arg(self.deadline)
            .arg(self.new_hash)
            .arg(k.edge_channel(edge))
            .arg(k.lines_channel(""))
            .arg(LOBBY)
            .arg(self.at_edge)
            .arg(self.at_room)
            .arg(k.edge_channel(self.at_edge))
            .arg(self.sid)
            .arg(&notices.args()[..])
            .arg(self.token.next)
            .arg(self.token.ttl)
            .arg(self.token.presented)
            .arg(self.token.back_room)
    }
}

/// How many times a login reads again where the old session is, should it
/// move between the read and the switch.
const MOVES: usize = 5;

/// Login outcomes counted for /metrics, by label: `expired`, dropped
/// unchecked because the check could not end before the edge's deadline;
/// `duplicate`, left to the instance already checking it; `unopened`, a
/// sealed password that did not open (another key, tampered, or another
/// request's).
const OUTCOMES: [&str; 8] = [
    "ok",
    "bad_credentials",
    "rate_limited",
    "refused",
    "error",
    "expired",
    "duplicate",
    "unopened",
];

pub(crate) struct Ctx {
    /// On a Redis Cluster: sessions open in single-slot steps.
    pub(crate) steps: Option<shared::steps::Steps>,
    keys: Keys,
    /// This instance's id.
    id: String,
    /// Per [`OUTCOMES`].
    outcomes: [Counter; 8],
    bcrypt_seconds: Histogram,
    conn: Conn,
    /// Opens the passwords the edges seal ...
    opener: Opener,
    /// ... at most this long ago (ms).
    seal_max_age: u64,
    policy: DuplicateLogin,
    notices: Notices,
    bcrypt: Semaphore,
    /// Most requests in hand at once (`auth.max_in_flight`, or what bcrypt
    /// can check within the edge's wait).
    pub(crate) max_in_flight: usize,
    /// The time of one bcrypt run (µs), as measured lately.
    bcrypt_us: AtomicU64,
    /// Redis's clock minus ours (ms), read every `claim_idle_ms / 2`.
    clock_offset: AtomicI64,
    /// How long an edge waits for a login (ms): older requests are stale.
    max_age: u64,
    /// `auth.claim_idle_ms`: how long a hold on a check lasts unrenewed.
    claim_idle: u64,
    registration: bool,
    min_password: usize,
    cost: u32,
    /// Failed logins allowed per user and per address within `window` ms.
    max_failures: [u32; 2],
    max_registrations: u32,
    window: u64,
    /// `auth.resume_ttl_ms`.
    resume_ttl: u64,
    /// Checked against when the user does not exist, so that an unknown
    /// user costs as much time as a wrong password.
    dummy_hash: String,
    /// `auth.bcrypt_idle`.
    bcrypt_idle: bool,
}

impl Ctx {
    pub(crate) async fn new(
        cfg: &Config,
        redis: &shared::store::Redis,
        opener: Opener,
    ) -> Result<Ctx, AuthError> {
        let (keys, conn) = (redis.keys.clone(), redis.conn.clone());
        let cost = cfg.auth.bcrypt_cost;
        // Timed: what one check costs sizes the work taken in hand.
        let started = Instant::now();
        let dummy_hash =
            tokio::task::spawn_blocking(move || bcrypt::hash("not a real password", cost))
                .await??;
        let bcrypt_us = (started.elapsed().as_micros() as u64).max(1);
        let permits = match cfg.auth.bcrypt_concurrency {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let max_in_flight = match cfg.auth.max_in_flight {
            0 => max_in_flight(permits, cfg.edge.request_timeout_ms, bcrypt_us),
            n => n,
        };
        let ctx = Ctx {
            steps: redis.steps(cfg.notices),
            keys,
            id: cfg.auth.id.clone(),
            outcomes: Default::default(),
            bcrypt_seconds: Histogram::default(),
            conn,
            opener,
            seal_max_age: cfg.auth.seal_max_age_ms,
            bcrypt_idle: cfg.auth.bcrypt_idle,
            policy: cfg.auth.duplicate_login,
            notices: cfg.notices,
            bcrypt: Semaphore::new(permits),
            max_in_flight,
            bcrypt_us: AtomicU64::new(bcrypt_us),
            clock_offset: AtomicI64::new(0),
            max_age: cfg.edge.request_timeout_ms,
            claim_idle: cfg.auth.claim_idle_ms,
            registration: cfg.auth.registration,
            min_password: cfg.auth.min_password,
            cost,
            max_failures: [
                cfg.auth.max_failures_per_user,
                cfg.auth.max_failures_per_addr,
            ],
            max_registrations: cfg.auth.max_registrations,
            window: cfg.auth.failure_window_ms,
            resume_ttl: cfg.auth.resume_ttl_ms,
            dummy_hash,
        };
        ctx.sync_clock().await;
        tracing::info!(
            bcrypt_ms = bcrypt_us / 1000,
            permits,
            max_in_flight,
            "bcrypt timed"
        );
        Ok(ctx)
    }

    /// Reads Redis's clock (the one that stamps request ids) and keeps its
    /// offset from ours; on failure the last offset stays.
    pub(crate) async fn sync_clock(&self) {
        let time: redis::RedisResult<(u64, u64)> =
            redis::cmd("TIME").query_async(&mut self.conn.clone()).await;
        match time {
            Ok((secs, micros)) => {
                let redis = (secs * 1000 + micros / 1000) as i64;
                let offset = redis - local_ms() as i64;
                self.clock_offset.store(offset, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "reading the Redis clock failed"),
        }
    }

    /// Redis's time now (ms), from ours and the offset.
    fn redis_now(&self) -> u64 {
        local_ms().saturating_add_signed(self.clock_offset.load(Ordering::Relaxed))
    }

    /// Whether a check started now might end after `deadline` (Redis ms):
    /// less than twice its usual time is left (a check takes longer on a
    /// busy machine, and the answer still has to reach the edge). Never
    /// for a request with half the edge's wait left, so that a time
    /// measured while the machine was busy cannot stop every check.
    fn too_late(&self, deadline: u64) -> bool {
        let check = self.bcrypt_us.load(Ordering::Relaxed) / 1000;
        self.redis_now() + (2 * check).min(self.max_age / 2) > deadline
    }

    /// One bcrypt run on the blocking pool (under the caller's permit),
    /// timed.
    async fn bcrypt<T: Send + 'static>(
        &self,
        run: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let started = Instant::now();
        let idle = self.bcrypt_idle;
        let out = tokio::task::spawn_blocking(move || {
            if idle {
                shared::service::idle_thread();
            }
            run()
        })
        .await?;
        let took = started.elapsed();
        self.bcrypt_seconds.observe(took);
        // A moving average: the machine may get busier or quieter.
        let us = took.as_micros() as u64;
        let old = self.bcrypt_us.load(Ordering::Relaxed);
        self.bcrypt_us.store((old * 7 + us) / 8, Ordering::Relaxed);
        Ok(out)
    }

    /// The way to a password check: a bcrypt permit, if the check can
    /// still end before `deadline` and no other instance checks request
    /// `entry_id`. Nobody is answered otherwise: the edge answers by
    /// itself, or the other instance does.
    async fn gate(&self, entry_id: &str, deadline: u64) -> Result<Gate<'_>, AuthError> {
        let expired = || {
            // Debug: a storm drops many a second.
            tracing::debug!("login request past its deadline, dropped unchecked");
            self.count("expired");
            Ok(Gate::Expired)
        };
        if self.too_late(deadline) {
            return expired();
        }
        let permit = self.bcrypt.acquire().await.expect("semaphore never closed");
        if self.too_late(deadline) {
            return expired();
        }
        let taken: i64 = Call::new("chat_check_login", &[self.keys.auth_checking(entry_id)])
            .arg(&self.id)
            .arg(self.claim_idle)
            .invoke(&mut self.conn.clone())
            .await?;
        if taken == 0 {
            tracing::debug!("another instance checks this login request");
            self.count("duplicate");
            return Ok(Gate::Taken);
        }
        Ok(Gate::Go(permit))
    }

    /// Renews this instance's hold on the checks of requests `ids` (those
    /// it holds), for `claim_idle_ms` more.
    pub(crate) async fn keep_checks(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let keys: Vec<String> = ids.iter().map(|id| self.keys.auth_checking(id)).collect();
        let kept: redis::RedisResult<i64> = Call::new("chat_keep_checks", &keys)
            .arg(&self.id)
            .arg(self.claim_idle)
            .invoke(&mut self.conn.clone())
            .await;
        if let Err(e) = kept {
            tracing::warn!(error = %e, "renewing the checks in hand failed");
        }
    }
}

/// What [`Ctx::gate`] lets through.
enum Gate<'a> {
    /// Check it, under this bcrypt permit.
    Go(SemaphorePermit<'a>),
    /// Too late: the request is done with, unanswered.
    Expired,
    /// Another instance checks it: the request is left pending for that
    /// one (which claims it back), or, should it die, for a takeover once
    /// its hold has lapsed.
    Taken,
}

/// Requests in hand at once so that the last can still be checked within
/// the edge's wait: `permits` checks of `bcrypt_us` at a time for
/// `timeout_ms`, at least one per permit.
fn max_in_flight(permits: usize, timeout_ms: u64, bcrypt_us: u64) -> usize {
    let rounds = (timeout_ms * 1000 / bcrypt_us.max(1)).max(1);
    permits
        .saturating_mul(usize::try_from(rounds).unwrap_or(usize::MAX))
        .min(shared::config::MAX_IN_FLIGHT)
}

/// Our clock, in Unix ms.
fn local_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl Ctx {
    /// The attempt counters of a user name and of a client IP address.
    fn attempt_keys(&self, user: &str, ip: &str) -> [String; 2] {
        [self.keys.fail_user(user), self.keys.fail_addr(ip)]
    }

    /// Counts an attempt on `keys`; true if one of them is over its limit.
    async fn over_limit(
        &self,
        conn: &mut Conn,
        keys: &[String],
        limits: &[u32],
    ) -> Result<bool, AuthError> {
        // One call per counter: on a cluster each is in a slot of its own.
        let mut pipe = redis::pipe();
        for (key, limit) in keys.iter().zip(limits) {
            let call = Call::new("chat_attempt", &[key])
                .arg(self.window)
                .arg(limit);
            pipe.add_command(call.into_cmd());
        }
        let over: Vec<i64> = shared::scripts::query_pipe(conn, &pipe).await?;
        Ok(over.contains(&1))
    }
}

/// Handles one entry of the login stream. True when it is done with (the
/// caller removes it); false when another instance checks it.
pub(crate) async fn handle(ctx: Arc<Ctx>, entry: Entry) -> bool {
    let Some(req) = entry.req else {
        tracing::warn!(id = %entry.id, "undecodable login request dropped");
        return true;
    };
    let span = tracing::info_span!("login", edge = %req.edge, conn = req.conn, user = %req.user);
    let deadline = EntryId::parse(&entry.id).map_or(u64::MAX, |id| id.ms + ctx.max_age);
    let handled = async {
        if let Some(addr) = decided(&ctx, &req, &entry.id).await? {
            // Carried out however late: see `decided`.
            return switch(&ctx, &req, &entry.id, addr, deadline, "", Tokens::default())
                .await
                .map(|()| true);
        }
        if let Op::Resume { .. } = &req.op {
            // No password: nothing for bcrypt, so no gate either.
            return resume(&ctx, &req, &entry.id, deadline).await.map(|()| true);
        }
        // Held through the attempt count and the check: a request that
        // waited past its deadline counts no attempt either.
        match ctx.gate(&entry.id, deadline).await? {
            Gate::Go(permit) => login(&ctx, &req, &entry.id, deadline, permit)
                .await
                .map(|()| true),
            Gate::Expired => Ok(true),
            Gate::Taken => Ok(false),
        }
    };
    match handled.instrument(span.clone()).await {
        Ok(done) => done,
        Err(e) => {
            span.in_scope(|| tracing::error!(error = %e, "login failed"));
            ctx.count("error");
            let line = ServerLine::err(e.code(), "the login could not be completed, try again");
            let _ = publish(&ctx, &req, line).await;
            true
        }
    }
}

/// On a Redis Cluster: the client's address, if the user step of login
/// request `entry_id` was taken already (its decision kept). An instance
/// that stopped after that step left the steps after it undone, and the
/// session half open (in no edge's set, its room not entered); they are
/// taken now, before and whatever the deadline (the edge ends the session
/// if it no longer waits for it).
async fn decided<'r>(
    ctx: &Ctx,
    req: &'r Request,
    entry_id: &str,
) -> Result<Option<&'r str>, AuthError> {
    let (Op::Login { addr, .. } | Op::Resume { addr, .. }) = &req.op else {
        return Ok(None);
    };
    if ctx.steps.is_none() {
        return Ok(None); // one call does it all there
    }
    let done: bool = ctx
        .conn
        .clone()
        .exists(ctx.keys.auth_done(&req.user, entry_id))
        .await?;
    Ok(done.then_some(addr.as_str()))
}

/// Checks the password under `permit` (let go after bcrypt), then opens
/// the session.
async fn login(
    ctx: &Ctx,
    req: &Request,
    entry_id: &str,
    deadline: u64,
    permit: SemaphorePermit<'_>,
) -> Result<(), AuthError> {
    let Op::Login {
        password,
        addr,
        register,
        token,
    } = &req.op
    else {
        return Err(AuthError::Unexpected(format!("{:?}", req.op)));
    };
    let binding = shared::seal::binding(&req.edge, req.conn, req.rid, &req.user, *register);
    let Some(password) = ctx.opener.open(&binding, password, ctx.seal_max_age) else {
        // Nothing of it logged: it is of no use to anyone but an attacker.
        tracing::warn!("a sealed password did not open: sealed to another key, tampered with, or another request's");
        ctx.count("unopened");
        let line = ServerLine::err(ErrorCode::BadCredentials, "wrong user name or password");
        return publish(ctx, req, line).await;
    };
    let mut conn = ctx.conn.clone();
    let ip = ip_of(addr);
    let counters = ctx.attempt_keys(&req.user, &ip);
    if *register {
        if !ctx.registration {
            let line = ServerLine::err(ErrorCode::RegistrationClosed, "registration is closed");
            return publish(ctx, req, line).await;
        }
        if let Err(short) = crate::accounts::check_password(&password, ctx.min_password) {
            let line = ServerLine::err(short.code(), short.to_string());
            return publish(ctx, req, line).await;
        }
    }
    let new_hash = if *register {
        // Registrations count against the address and against all
        // registrations, and are not given back.
        let counters = [counters[1].clone(), ctx.keys.registrations()];
        let limits = [ctx.max_failures[1], ctx.max_registrations];
        if ctx.over_limit(&mut conn, &counters, &limits).await? {
            return refused(ctx, req, "registrations").await;
        }
        if conn.exists(ctx.keys.user(&req.user)).await? {
            let text = format!("the name {} is taken", req.user);
            return publish(ctx, req, ServerLine::err(ErrorCode::UserExists, text)).await;
        }
        let cost = ctx.cost;
        ctx.bcrypt(move || bcrypt::hash(password, cost)).await??
    } else {
        if ctx
            .over_limit(&mut conn, &counters, &ctx.max_failures)
            .await?
        {
            return refused(ctx, req, "failed logins").await;
        }
        let stored: Option<String> = conn.hget(ctx.keys.user(&req.user), "password").await?;
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| ctx.dummy_hash.clone());
        let good = ctx
            .bcrypt(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await?;
        if !(good && exists) {
            tracing::info!("bad credentials");
            ctx.count("bad_credentials");
            let line = ServerLine::err(ErrorCode::BadCredentials, "wrong user name or password");
            return publish(ctx, req, line).await;
        }
        String::new()
    };
    drop(permit);
    let tokens = Tokens {
        next: token,
        ttl: ctx.resume_ttl,
        ..Tokens::default()
    };
    switch(ctx, req, entry_id, addr, deadline, &new_hash, tokens).await
}

/// A `RESUME`: counted as a login attempt (a wrong token is a failed
/// login), then the session switch, which checks and rotates the token.
async fn resume(ctx: &Ctx, req: &Request, entry_id: &str, deadline: u64) -> Result<(), AuthError> {
    let Op::Resume { token, next, addr } = &req.op else {
        return Err(AuthError::Unexpected(format!("{:?}", req.op)));
    };
    let mut conn = ctx.conn.clone();
    let counters = ctx.attempt_keys(&req.user, &ip_of(addr));
    if ctx
        .over_limit(&mut conn, &counters, &ctx.max_failures)
        .await?
    {
        return refused(ctx, req, "failed logins").await;
    }
    let tokens = Tokens {
        next,
        ttl: ctx.resume_ttl,
        presented: token,
        back_room: "",
    };
    switch(ctx, req, entry_id, addr, deadline, "", tokens).await
}

/// `ERR rate-limited` for too many `what`.
async fn refused(ctx: &Ctx, req: &Request, what: &str) -> Result<(), AuthError> {
    tracing::info!("too many {what}");
    ctx.count("rate_limited");
    let line = ServerLine::err(ErrorCode::RateLimited, "too many attempts, wait a minute");
    publish(ctx, req, line).await
}

/// The IP address of a client's `ip:port`.
fn ip_of(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>()
        .map_or_else(|_| addr.to_string(), |a| a.ip().to_string())
}

/// Where a user's session is (edge, room) and the room of its resume
/// token, as read before the switch.
type Place = (Option<String>, Option<String>, Option<String>);

/// Opens the session (`chat_login`) once the credentials are good, or for
/// a RESUME whose token the function checks.
async fn switch(
    ctx: &Ctx,
    req: &Request,
    entry_id: &str,
    addr: &str,
    deadline: u64,
    new_hash: &str,
    tokens: Tokens<'_>,
) -> Result<(), AuthError> {
    let mut conn = ctx.conn.clone();
    let ip = ip_of(addr);
    // The session switch names the keys of where an old session is (and,
    // for a RESUME, of the room its token goes back to); should they move
    // meanwhile (`moved`), read again.
    let mut outcome = String::new();
    for _ in 0..MOVES {
        let (at_edge, at_room, back_room): Place = redis::pipe()
            .cmd("HGET")
            .arg(ctx.keys.session(&req.user))
            .arg("edge")
            .cmd("HGET")
            .arg(ctx.keys.session(&req.user))
            .arg("room")
            .cmd("HGET")
            .arg(ctx.keys.resume(&req.user))
            .arg("room")
            .query_async(&mut conn)
            .await?;
        let back_room = back_room.unwrap_or_default();
        let token = Tokens {
            back_room: &back_room,
            ..tokens
        };
        let switch = Switch {
            req,
            entry_id,
            addr,
            ip: &ip,
            policy: ctx.policy.as_str(),
            deadline,
            new_hash,
            at_edge: at_edge.as_deref().unwrap_or_default(),
            at_room: at_room.as_deref().unwrap_or_default(),
            sid: &new_sid(),
            token,
        };
        outcome = match &ctx.steps {
            Some(steps) => crate::steps::switch(ctx, steps, &switch).await?,
            None => {
                switch
                    .call(&ctx.keys, ctx.notices)
                    .invoke(&mut conn)
                    .await?
            }
        };
        if outcome != "moved" {
            break;
        }
    }
    if outcome == "moved" {
        let line = ServerLine::err(
            ErrorCode::Unavailable,
            "the login could not be completed, try again",
        );
        return publish(ctx, req, line).await;
    }
    tracing::info!(outcome = %outcome, "login");
    ctx.count(match outcome.as_str() {
        "ok" | "replaced" => "ok",
        "bad-token" => "bad_credentials",
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
                "Time of one bcrypt run (a password check, or a registration's hash).",
                &self.bcrypt_seconds,
            )
            .gauge(
                "chat_auth_stream_length",
                "Login requests in the stream, read or not (-1: unknown).",
                length,
            )
            .gauge(
                "chat_auth_max_in_flight",
                "Most login requests this instance takes in hand at once.",
                self.max_in_flight as i64,
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

pub(crate) async fn publish(ctx: &Ctx, req: &Request, line: ServerLine) -> Result<(), AuthError> {
    let reply = Reply {
        conn: req.conn,
        rid: req.rid,
        lines: vec![line],
        effect: None,
        sid: String::new(),
    };
    let json = serde_json::to_string(&reply).expect("replies serialize");
    let cmd = if ctx.steps.is_some() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    redis::cmd(cmd)
        .arg(ctx.keys.edge_channel(&req.edge))
        .arg(json)
        .query_async::<()>(&mut ctx.conn.clone())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_flight_is_what_bcrypt_checks_within_the_wait() {
        // 2 permits, 5 s, 170 ms a check: 29 rounds.
        assert_eq!(super::max_in_flight(2, 5_000, 170_000), 58);
        // A check slower than the wait: one per permit still.
        assert_eq!(super::max_in_flight(4, 1_000, 3_000_000), 4);
        // Never more than a semaphore takes.
        assert_eq!(
            super::max_in_flight(1, 5_000, 0),
            shared::config::MAX_IN_FLIGHT
        );
        assert_eq!(
            super::max_in_flight(usize::MAX, 5_000, 1),
            shared::config::MAX_IN_FLIGHT
        );
    }

    #[test]
    fn session_ids_are_128_random_bits() {
        let (a, b) = (super::new_sid(), super::new_sid());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}
