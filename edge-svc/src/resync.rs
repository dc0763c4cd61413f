//! After a Pub/Sub reconnect: reading back from Redis what the replies lost would have changed.

use crate::ctx::Ctx;
use crate::hub::{Holding, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most reads of the connections that changed while they were read: the
/// replies that changed them came after the reconnect, so they keep them
/// current from then on.
const ROUNDS: usize = 4;

/// Brings every logged-in connection in line with its session in Redis;
/// retries while Redis is not quite back.
pub(crate) async fn resync(ctx: Arc<Ctx>, stop: CancellationToken) {
    // Beat at once: routers may be about to take this edge for dead.
    let _ = ctx.beat(false).await;
    let mut sessions = ctx.hub.sessions(None);
    end_unheld(&ctx, &sessions).await;
    for _ in 0..ROUNDS {
        if sessions.is_empty() {
            return;
        }
        let Some(values) = read_back(&ctx, &sessions, &stop).await else {
            return;
        };
        let mut changed = std::collections::HashSet::new();
        for (held, pair) in sessions.iter().zip(values.chunks(2)) {
            let (sid, room): (Option<String>, Option<String>) =
                redis::from_redis_value(pair[0].clone()).unwrap_or((None, None));
            let subs: Vec<String> = redis::from_redis_value(pair[1].clone()).unwrap_or_default();
            let current = match (&sid, &room) {
                (Some(sid), Some(room)) => Some((sid.as_str(), room.as_str(), subs.as_slice())),
                _ => None,
            };
            if !ctx.hub.resync(held, current) {
                changed.insert(held.id);
            }
        }
        sessions = ctx.hub.sessions(Some(&changed));
    }
}

/// Each session's id and room and its subscriptions, as Redis has them
/// (two values per session); `None` if stopped first.
async fn read_back(
    ctx: &Ctx,
    sessions: &[Holding],
    stop: &CancellationToken,
) -> Option<Vec<redis::Value>> {
    let mut pipe = redis::pipe();
    for held in sessions {
        let user = &held.session.user;
        pipe.cmd("HMGET")
            .arg(ctx.keys.session(user))
            .arg("sid")
            .arg("room");
        pipe.cmd("SMEMBERS").arg(ctx.keys.subscriptions(user));
    }
    loop {
        match pipe.query_async(&mut ctx.redis.clone()).await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, "reading sessions back failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Ends the sessions Redis has on this edge that no connection of it holds
/// (a login whose reply was lost while Pub/Sub was down).
async fn end_unheld(ctx: &Ctx, held: &[Holding]) {
    let mut conn = ctx.redis.clone();
    let set = ctx.keys.edge_sessions(&ctx.cfg.edge.id);
    let Ok(users) = redis::AsyncCommands::smembers::<_, Vec<String>>(&mut conn, set).await else {
        return;
    };
    for user in users
        .into_iter()
        .filter(|u| !held.iter().any(|h| &h.session.user == u))
    {
        let fields: redis::RedisResult<(Option<String>, Option<u64>, Option<String>)> =
            redis::cmd("HMGET")
                .arg(ctx.keys.session(&user))
                .arg("edge")
                .arg("conn")
                .arg("sid")
                .query_async(&mut conn)
                .await;
        if let Ok((Some(edge), Some(id), Some(sid))) = fields {
            // A connection that is still here may be waiting for this very
            // login's reply: leave it be.
            if edge == ctx.cfg.edge.id && !ctx.hub.has(id) {
                tracing::info!(%user, "ending a session nobody here holds");
                ctx.end_session(Session { user, sid }).await;
            }
        }
    }
}
