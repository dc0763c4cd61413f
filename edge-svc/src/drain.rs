//! Draining: once asked (SIGTERM, `POST /drain`), the edge takes no new
//! clients and moves its clients to the other live edges, spread over the
//! drain window.

use crate::ctx::Ctx;
use shared::line::ServerLine;
use shared::placement::{random_below, spread};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Waits for the drain to start, then marks the edge draining in Redis
/// and sends each client `REDIRECT <another edge>` and
/// `BYE server-shutdown`, one at a time over the window (each at a random
/// point of its own slot), the hints spread over the other edges by load.
/// With no other edge live, nobody is moved. Cancels `ctx.drained` when done.
pub(crate) async fn drain(ctx: Arc<Ctx>) {
    ctx.drain.cancelled().await;
    tracing::info!("draining: taking no new clients");
    if let Err(e) = ctx.beat(false).await {
        tracing::warn!(error = %e, "marking the edge draining failed");
    }
    let limit = READ_LIMIT.min(ctx.cfg.edge.request_timeout());
    let others = match tokio::time::timeout(limit, ctx.open_edges()).await {
        Ok(Ok(edges)) => edges
            .into_iter()
            .filter(|e| e.addr != ctx.public_addr)
            .collect(),
        _ => Vec::new(),
    };
    let conns = ctx.hub.conn_ids();
    let hints = spread(&others, conns.len());
    if hints.is_empty() {
        tracing::info!(clients = conns.len(), "no other edge to move clients to");
    } else {
        let window = ctx.cfg.edge.drain_window(ctx.cfg.shutdown_grace());
        tracing::info!(clients = conns.len(), ?window, "moving the clients");
        let slot = window / conns.len() as u32;
        let start = Instant::now();
        for (i, (id, addr)) in conns.into_iter().zip(hints).enumerate() {
            let jitter = slot.mul_f64(random_below(1000) as f64 / 1000.0);
            tokio::time::sleep_until(start + slot * i as u32 + jitter).await;
            ctx.hub.send(id, &ServerLine::Redirect { addr });
            ctx.hub.bye(id, "server-shutdown");
        }
    }
    ctx.drained.cancel();
}

/// The longest a drain waits to learn the other edges: without them it
/// cannot move anyone, so longer than a new connection waits, on a busy
/// Redis or machine.
const READ_LIMIT: Duration = Duration::from_secs(2);

/// The longest a stopping edge waits for its drain: its window (at most
/// `shutdown_grace_ms` less a second) and the read of the other edges, but
/// no longer than the grace less a second, which is left for closing the
/// connections (whatever Redis does meanwhile).
pub(crate) fn longest(ctx: &Ctx) -> Duration {
    let grace = ctx.cfg.shutdown_grace();
    let closing = Duration::from_secs(1);
    (ctx.cfg.edge.drain_window(grace) + READ_LIMIT).min(grace.saturating_sub(closing))
}
