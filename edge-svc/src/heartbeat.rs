//! Upkeep tasks: the heartbeat that keeps this edge's sessions, the renewal of their resume tokens, and ending orphaned ones.

use crate::ctx::Ctx;
use crate::hub::Session;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Tells Redis this edge is alive, so that its sessions are kept.
pub(crate) async fn heartbeat(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.cfg.edge.heartbeat_every());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = ctx.beat(false).await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
    }
}

/// Resume tokens renewed in one round trip, at most.
const RENEW_CHUNK: usize = 500;

/// Keeps the resume tokens of this edge's sessions good while they live:
/// every quarter of `auth.resume_ttl_ms`, each session's token is given
/// that long again (from now). A token revoked or replaced meanwhile is
/// not brought back: only a key that exists gets a new expiry.
pub(crate) async fn renew_tokens(ctx: Arc<Ctx>, stop: CancellationToken) {
    let ttl = ctx.cfg.auth.resume_ttl_ms;
    if ttl == 0 {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(ttl / 4));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let users: Vec<String> = ctx
            .hub
            .sessions(None)
            .into_iter()
            .map(|h| h.session.user)
            .collect();
        for chunk in users.chunks(RENEW_CHUNK) {
            let mut pipe = redis::pipe();
            for user in chunk {
                pipe.cmd("PEXPIRE")
                    .arg(ctx.keys.resume(user))
                    .arg(ttl)
                    .ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut ctx.redis.clone()).await {
                tracing::warn!(error = %e, "renewing resume tokens failed");
                break;
            }
        }
    }
}

/// Ends the sessions the hub hands over that no connection holds any more.
pub(crate) async fn end_orphans(ctx: Arc<Ctx>, mut orphans: mpsc::Receiver<Session>) {
    while let Some(session) = orphans.recv().await {
        tracing::info!(user = %session.user, "ending a session nobody holds");
        ctx.end_session(session).await;
    }
}
