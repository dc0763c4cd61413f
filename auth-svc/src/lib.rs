//! auth-svc: checks passwords and opens sessions.
//!
//! Edges put `login` requests on the `req:auth` stream; every auth-svc
//! instance reads it as a consumer of the `auth` group, so instances share
//! the work. A password is checked with bcrypt on the blocking pool (at most
//! `bcrypt_concurrency` at once); a good one opens the session with one Lua
//! script that applies the duplicate-login policy, writes the session hash,
//! puts the user in the lobby and answers the edge, all in one step.
#![forbid(unsafe_code)]

pub mod accounts;
mod login;

pub use login::{new_sid, Switch};

use shared::config::Config;
use shared::consumer::{Consumer, EntryId};
use shared::keys::Keys;
use shared::protocol::ErrorCode;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The most password bytes bcrypt reads; longer passwords are refused.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// The consumer group of auth-svc on the login stream.
pub const GROUP: &str = "auth";

/// How long one stream read waits for new requests.
const BLOCK: Duration = Duration::from_secs(1);

/// Everything that can go wrong in auth-svc. The full cause is logged; a
/// client sees only [`AuthError::code`] and a short text.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("bad user name: names are 1-32 characters of A-Z a-z 0-9 _ -")]
    BadName,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("passwords are at least {0} characters")]
    ShortPassword(usize),
    #[error("passwords are at most {MAX_PASSWORD_BYTES} bytes")]
    LongPassword,
    #[error("user {0} exists")]
    Exists(String),
    #[error("no user {0}")]
    NotFound(String),
    #[error("unexpected request: {0}")]
    Unexpected(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("bcrypt: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("blocking task: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("reading the password: {0}")]
    Io(#[from] std::io::Error),
}

impl AuthError {
    /// The protocol error code a client is shown.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::BadName => ErrorCode::BadName,
            AuthError::EmptyPassword | AuthError::ShortPassword(_) | AuthError::LongPassword => {
                ErrorCode::BadArgs
            }
            AuthError::Exists(_) => ErrorCode::UserExists,
            AuthError::NotFound(_) => ErrorCode::NoSuchUser,
            AuthError::Redis(_) => ErrorCode::Unavailable,
            AuthError::Unexpected(_)
            | AuthError::Bcrypt(_)
            | AuthError::Join(_)
            | AuthError::Io(_) => ErrorCode::Internal,
        }
    }
}

/// Serves login requests until `shutdown`; requests in hand are finished
/// (within `shutdown_grace_ms`).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), AuthError> {
    let client = shared::store::client(&cfg.redis_url)?;
    let keys = Keys::new(cfg.key_prefix.clone());
    let mut cmds = shared::store::commands(&client).await?;
    let stream = keys.auth_requests();
    let streams = vec![stream.clone()];
    let consumer =
        Consumer::new(&client, cmds.clone(), streams, GROUP, &cfg.auth.id, BLOCK).await?;
    // A busy admin port is logged, not fatal.
    let admin = shared::admin::bind(&cfg.auth.admin_listen).await.listener();
    let ctx = Arc::new(login::Ctx::new(&cfg, keys, cmds.clone()).await?);
    if let Some(admin) = admin {
        tokio::spawn(shared::admin::serve(admin, ctx.clone(), shutdown.clone()));
    }
    tracing::info!(id = %cfg.auth.id, policy = cfg.auth.duplicate_login.as_str(), "auth-svc ready");

    let in_flight = Arc::new(Semaphore::new(cfg.auth.max_in_flight));
    let max_age = cfg.edge.request_timeout_ms;
    let claim_idle = Duration::from_millis(cfg.auth.claim_idle_ms);
    // Ids of the requests this instance has in hand.
    let in_hand: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last_claim = Instant::now();
    let tracker = TaskTracker::new();
    loop {
        let room = in_flight.available_permits().clamp(1, cfg.auth.batch);
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = consumer.read(consumer.streams(), room, BLOCK) => r,
        };
        let Ok(mut entries) = read else {
            continue;
        };
        // Requests an instance read and never finished (it died): taken
        // over once idle for `claim_idle_ms`, still within the edge's wait.
        // Our own in hand are claimed afresh twice as often, so that a busy
        // instance never looks dead.
        if last_claim.elapsed() >= claim_idle / 2 {
            last_claim = Instant::now();
            let held: Vec<String> = lock(&in_hand).iter().cloned().collect();
            if let Err(e) = consumer.refresh(&stream, &held).await {
                tracing::warn!(error = %e, "refreshing login requests in hand failed");
            }
            match consumer.claim(&stream, claim_idle, cfg.auth.batch).await {
                Ok(more) if !more.is_empty() => {
                    let set = lock(&in_hand);
                    let more: Vec<_> = more.into_iter().filter(|e| !set.contains(&e.id)).collect();
                    drop(set);
                    tracing::info!(count = more.len(), "took over login requests left pending");
                    entries.extend(more);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming pending login requests failed"),
            }
        }
        if entries.is_empty() {
            continue;
        }
        // Redis's clock, the one that stamped the entry ids.
        let now = match redis_time_ms(&mut cmds).await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "reading the Redis clock failed");
                0
            }
        };
        for entry in entries {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = in_flight.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            // The edge stopped waiting for an old request: acting on it
            // would open a session nobody holds.
            let stale = EntryId::parse(&entry.id).is_some_and(|id| id.ms + max_age < now);
            let ctx = ctx.clone();
            lock(&in_hand).insert(entry.id.clone());
            let in_hand = in_hand.clone();
            let consumer = consumer.clone();
            tracker.spawn(async move {
                let (stream, id) = (entry.stream.clone(), entry.id.clone());
                login::handle(ctx, entry, stale).await;
                // Done with, well or not: a request (it holds a password)
                // does not outlive its handling.
                let done = [id];
                if let Err(e) = consumer.ack_and_delete(&[(&stream, &done)]).await {
                    tracing::warn!(error = %e, "acknowledging a login request failed");
                }
                lock(&in_hand).remove(&done[0]);
                drop(permit);
            });
        }
    }
    tracker.close();
    if tokio::time::timeout(cfg.shutdown_grace(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still in hand after the grace period");
    }
    tracing::info!("auth-svc stopped");
    Ok(())
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

async fn redis_time_ms(conn: &mut redis::aio::ConnectionManager) -> redis::RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(secs * 1000 + micros / 1000)
}
