//! Upkeep tasks: the heartbeat that keeps this edge's sessions, and ending orphaned ones.

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

/// Ends the sessions the hub hands over that no connection holds any more.
pub(crate) async fn end_orphans(ctx: Arc<Ctx>, mut orphans: mpsc::Receiver<Session>) {
    while let Some(session) = orphans.recv().await {
        tracing::info!(user = %session.user, "ending a session nobody holds");
        ctx.end_session(session).await;
    }
}
