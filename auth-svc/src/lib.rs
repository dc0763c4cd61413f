//! auth-svc: checks passwords and opens sessions.
//!
//! Edges put `login` requests on the `req:auth` stream; every auth-svc
//! instance reads it as a consumer of the `auth` group, so instances share
//! the work. An instance takes no more requests than bcrypt can check
//! within the edge's wait (`max_in_flight`). A password is checked with
//! bcrypt on the blocking pool (at most `bcrypt_concurrency` at once), once
//! per request, and only if the check can end before the edge gives up; a
//! good one opens the session with one Redis function that applies the
//! duplicate-login policy, writes the session hash, puts the user in the
//! lobby and answers the edge, all in one step.
#![forbid(unsafe_code)]

pub mod accounts;
mod login;
mod steps;

pub use login::{new_sid, Switch, Tokens};

use shared::config::Config;
use shared::consumer::Consumer;
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
pub async fn run(
    cfg: Config,
    opener: shared::seal::Opener,
    shutdown: CancellationToken,
) -> Result<(), AuthError> {
    let redis = shared::store::Redis::connect(&cfg).await?;
    let stream = redis.keys.auth_requests();
    let streams = vec![stream.clone()];
    let consumer = redis.consumer(streams, GROUP, &cfg.auth.id, BLOCK).await?;
    // A busy admin port is logged, not fatal.
    let admin = shared::admin::bind(&cfg.auth.admin_listen).await.listener();
    let ctx = Arc::new(login::Ctx::new(&cfg, &redis, opener).await?);
    if let Some(admin) = admin {
        tokio::spawn(shared::admin::serve(admin, ctx.clone(), shutdown.clone()));
    }
    tracing::info!(
        id = %cfg.auth.id,
        policy = cfg.auth.duplicate_login.as_str(),
        max_in_flight = ctx.max_in_flight,
        "auth-svc ready"
    );

    let in_flight = Arc::new(Semaphore::new(ctx.max_in_flight));
    let claim_idle = Duration::from_millis(cfg.auth.claim_idle_ms);
    // Ids of the requests this instance has in hand.
    let in_hand: Arc<Mutex<HashSet<String>>> = Arc::default();
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(keep_claimed(
        ctx.clone(),
        consumer.clone(),
        in_hand.clone(),
        claim_idle / 2,
        keeper_stop.clone(),
    ));
    let mut last_claim = Instant::now();
    let tracker = TaskTracker::new();
    loop {
        // Only as many as there is room for are read: the rest wait in the
        // stream, where other instances can take them.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = in_flight.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let room = (in_flight.available_permits() + 1).min(cfg.auth.batch);
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = consumer.read(consumer.streams(), room, BLOCK) => r,
        };
        let Ok(mut entries) = read else {
            continue;
        };
        // Requests an instance read and never finished (it died): taken
        // over once idle for `claim_idle_ms`, still within the edge's wait.
        let free = room.saturating_sub(entries.len());
        if free > 0 && last_claim.elapsed() >= claim_idle / 2 {
            last_claim = Instant::now();
            match consumer.claim(&stream, claim_idle, free).await {
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
        let mut first = Some(first);
        for entry in entries {
            // Never waits: there were permits for all of them.
            let permit = match first.take() {
                Some(p) => p,
                None => in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed"),
            };
            let ctx = ctx.clone();
            lock(&in_hand).insert(entry.id.clone());
            let in_hand = in_hand.clone();
            let consumer = consumer.clone();
            tracker.spawn(async move {
                let (stream, id) = (entry.stream.clone(), entry.id.clone());
                // Done with, well or not: a request (it holds a password)
                // does not outlive its handling.
                let done = [id];
                if login::handle(ctx, entry).await {
                    if let Err(e) = consumer.ack_and_delete(&[(&stream, &done)]).await {
                        tracing::warn!(error = %e, "acknowledging a login request failed");
                    }
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
    keeper_stop.cancel();
    let _ = keeper.await;
    tracing::info!("auth-svc stopped");
    Ok(())
}

/// Every `every` (half of `claim_idle_ms`), whatever the read loop waits
/// for: claims the requests in hand afresh, so that however long they wait
/// for bcrypt no other instance takes them for abandoned, and renews the
/// hold on their checks; and reads the Redis clock again.
async fn keep_claimed(
    ctx: Arc<login::Ctx>,
    consumer: Consumer,
    in_hand: Arc<Mutex<HashSet<String>>>,
    every: Duration,
    stop: CancellationToken,
) {
    let stream = consumer.streams()[0].clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let held: Vec<String> = lock(&in_hand).iter().cloned().collect();
        if let Err(e) = consumer.refresh(&stream, &held).await {
            tracing::warn!(error = %e, "refreshing login requests in hand failed");
        }
        ctx.keep_checks(&held).await;
        ctx.sync_clock().await;
    }
}

fn lock(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}
