//! edge-svc: the TLS edge that holds client connections.
//!
//! The edge keeps no shared state: only its own connection table ([`hub`]).
//! It forwards logins to auth-svc and every other command to router-svc
//! over Redis streams, and receives replies and room traffic over Redis
//! Pub/Sub on one connection.
#![forbid(unsafe_code)]

mod connection;
pub mod frame;
mod hub;
mod limits;

use futures_util::StreamExt;
use hub::{Hub, Session};
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use redis::Client;
use shared::admin::{Counter, Gauge, Histogram, Page, Probe};
use shared::config::Config;
use shared::envelope::{Op, Request};
use shared::keys::{partition_of, Keys};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The phase of a connection an I/O error or timeout happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Handshake,
    Read,
    Write,
    Close,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "handshake",
            Phase::Read => "read",
            Phase::Write => "write",
            Phase::Close => "close",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{0} timed out")]
    Timeout(Phase),
    #[error("{phase}: {source}")]
    Io {
        phase: Phase,
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What the edge counts, besides the hub's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    connections: Gauge,
    logins_ok: Counter,
    logins_failed: Counter,
    lines: Counter,
    /// From a request sent to its reply.
    request_seconds: Histogram,
}

impl Probe for Ctx {
    async fn healthy(&self) -> bool {
        shared::admin::redis_answers(&self.redis).await
    }

    async fn metrics(&self) -> String {
        let (m, hub) = (&self.metrics, &self.hub);
        Page::default()
            .gauge(
                "chat_edge_connections",
                "Client connections open.",
                m.connections.get(),
            )
            .counters(
                "chat_edge_logins_total",
                "Logins by result.",
                "result",
                &[("ok", m.logins_ok.get()), ("failed", m.logins_failed.get())],
            )
            .counter(
                "chat_edge_lines_total",
                "Lines received from clients.",
                m.lines.get(),
            )
            .counter(
                "chat_edge_pubsub_messages_total",
                "Pub/Sub messages received from Redis.",
                hub.pubsub_messages.get(),
            )
            .counter(
                "chat_edge_deliveries_total",
                "Broadcast lines queued to clients.",
                hub.deliveries.get(),
            )
            .counter(
                "chat_edge_queue_drops_total",
                "Clients closed because their queue was full (too-slow).",
                hub.drops.get(),
            )
            .histogram(
                "chat_edge_request_seconds",
                "Time from a request to its reply.",
                &m.request_seconds,
            )
            .finish()
    }
}

/// Connections over the caps that are told so at once; past this, they
/// are closed without a word.
const REFUSALS: usize = 16;

/// What every connection of this edge shares.
pub(crate) struct Ctx {
    cfg: Config,
    keys: Keys,
    hub: Arc<Hub>,
    redis: ConnectionManager,
    acceptor: TlsAcceptor,
    slots: Arc<limits::Slots>,
    metrics: Metrics,
    next_conn: AtomicU64,
    next_rid: AtomicU64,
}

impl Ctx {
    /// Connection ids start from the clock, so that an edge that restarts
    /// under the same id never reuses one that Redis may still name.
    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn next_rid(&self) -> u64 {
        self.next_rid.fetch_add(1, Ordering::Relaxed)
    }

    fn router_stream(&self, user: &str) -> String {
        self.keys
            .router_requests(partition_of(user, self.cfg.partitions))
    }

    /// Adds `reqs` to `stream`, in order, in one round trip.
    async fn send_requests(&self, stream: &str, reqs: &[Request]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for req in reqs {
            shared::store::add_request(&mut pipe, stream, self.cfg.request_stream_maxlen, req);
        }
        pipe.query_async(&mut self.redis.clone()).await
    }

    /// Renews this edge's heartbeat (see [`shared::store::heartbeat`]).
    async fn beat(&self, restart: bool) -> redis::RedisResult<u64> {
        let (id, dead_after) = (&self.cfg.edge.id, self.cfg.edge.dead_after_ms);
        shared::store::heartbeat(&mut self.redis.clone(), &self.keys, id, dead_after, restart).await
    }

    /// Asks the router to end `session` (if it is still the current one).
    async fn end_session(&self, session: Session) {
        let req = Request {
            edge: self.cfg.edge.id.clone(),
            conn: 0,
            rid: 0,
            user: session.user.clone(),
            sid: session.sid,
            op: Op::Logout,
        };
        if let Err(e) = self
            .send_requests(&self.router_stream(&session.user), &[req])
            .await
        {
            tracing::warn!(user = %session.user, error = %e, "ending a session failed");
        }
    }
}

/// Serves clients on `listener` until `shutdown`; then says
/// `BYE server-shutdown` to every client, ends their sessions and returns.
pub async fn run(
    listener: TcpListener,
    cfg: Config,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), EdgeError> {
    let client = shared::store::client(&cfg.redis_url)?;
    let keys = Keys::new(cfg.key_prefix.clone());
    let admin = shared::admin::bind(&cfg.edge.admin_listen)
        .await
        .map_err(|source| EdgeError::Io {
            phase: Phase::Handshake,
            source,
        })?;
    let redis = shared::store::commands(&client).await?;
    let (hub, tasks) = Hub::new(keys.clone(), &cfg.edge.id);
    let pubsub = subscribe(&client, &hub.wanted()).await?;
    let ctx = Arc::new(Ctx {
        keys,
        hub: hub.clone(),
        redis,
        acceptor: TlsAcceptor::from(tls),
        slots: limits::Slots::new(cfg.edge.max_connections, cfg.edge.max_connections_per_addr),
        metrics: Metrics::default(),
        next_conn: AtomicU64::new(shared::now_ms() * 1000),
        next_rid: AtomicU64::new(1),
        cfg,
    });
    // Sessions a previous run under this id left (it was killed) end now;
    // subscribed first, so that a late answer to that run is seen.
    let left = ctx.beat(true).await?;
    if left > 0 {
        tracing::info!(sessions = left, "ended sessions left by a previous run");
    }
    let background = CancellationToken::new();
    tokio::spawn(deliver(
        client,
        pubsub,
        ctx.clone(),
        tasks.subs,
        background.clone(),
    ));
    tokio::spawn(end_orphans(ctx.clone(), tasks.orphans));
    tokio::spawn(heartbeat(ctx.clone(), background.clone()));
    if let Some(admin) = admin {
        tokio::spawn(shared::admin::serve(admin, ctx.clone(), background.clone()));
    }

    let addr = listener.local_addr().map_err(|source| EdgeError::Io {
        phase: Phase::Handshake,
        source,
    })?;
    tracing::info!(id = %ctx.cfg.edge.id, %addr, "edge-svc ready");
    let tracker = TaskTracker::new();
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match ctx.slots.acquire(peer.ip()) {
                        Some(slot) => {
                            tracker.spawn(connection::serve(ctx.clone(), stream, peer, slot));
                        }
                        None => {
                            tracing::info!(%peer, "too many connections; refused");
                            // A few are told why; the rest are just closed.
                            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                                let ctx = ctx.clone();
                                tracker.spawn(async move {
                                    connection::refuse(ctx, stream, peer).await;
                                    drop(permit);
                                });
                            }
                        }
                    }
                }
                Err(e) => {
                    // Out of descriptors and the like: wait, never give up.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    for closer in hub.closers() {
        closer.close("server-shutdown");
    }
    tracker.close();
    if tokio::time::timeout(ctx.cfg.shutdown_grace(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline");
    }
    background.cancel();
    tracing::info!("edge-svc stopped");
    Ok(())
}

async fn subscribe(
    client: &Client,
    channels: &[String],
) -> redis::RedisResult<(PubSubSink, PubSubStream, HashSet<String>)> {
    let (mut sink, stream) = client.get_async_pubsub().await?.split();
    sink.subscribe(channels).await?;
    Ok((sink, stream, channels.iter().cloned().collect()))
}

/// Applies Pub/Sub messages in arrival order, and keeps the subscriptions
/// in line with what the hub wants; reconnects and subscribes again if the
/// connection drops.
async fn deliver(
    client: Client,
    first: (PubSubSink, PubSubStream, HashSet<String>),
    ctx: Arc<Ctx>,
    mut syncs: mpsc::UnboundedReceiver<hub::Sync>,
    stop: CancellationToken,
) {
    let hub = &ctx.hub;
    let limit = ctx.cfg.edge.request_timeout();
    let mut connected = Some(first);
    let mut backoff = Duration::from_millis(100);

    loop {
        if let Some((mut sink, mut stream, mut subscribed)) = connected.take() {
            backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = stream.next() => match m {
                        Some(msg) => hub.dispatch(msg.get_channel_name(), msg.get_payload_bytes()),
                        None => break,
                    },
                    s = syncs.recv() => {
                        let Some(first) = s else { return };
                        // Everything asked for meanwhile, in one round trip.
                        let mut batch = vec![first];
                        while batch.len() < SYNC_BATCH {
                            match syncs.try_recv() {
                                Ok(s) => batch.push(s),
                                Err(_) => break,
                            }
                        }
                        let synced = sync(hub, &mut sink, &mut subscribed, &batch, limit).await;
                        if let Err(e) = &synced {
                            tracing::warn!(error = %e, "Pub/Sub (un)subscribe failed");
                        }
                        for s in batch {
                            if let Some(done) = s.done {
                                let _ = done.send(synced.is_ok() && subscribed.contains(&s.channel));
                            }
                        }
                        if synced.is_err() {
                            break; // start afresh on a new connection
                        }
                    }
                }
            }
            tracing::warn!("Pub/Sub connection lost; reconnecting");
        }
        // While disconnected, holds fail at once: their requests would miss
        // what they wait for.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut pause => break,
                s = syncs.recv() => match s {
                    Some(s) => if let Some(done) = s.done { let _ = done.send(false); },
                    None => return,
                },
            }
        }
        match subscribe(&client, &hub.wanted()).await {
            Ok(c) => {
                // Replies published while we were away are lost: read back
                // what they would have changed.
                tokio::spawn(resync(ctx.clone(), stop.clone()));
                connected = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Pub/Sub reconnect failed");
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Brings every logged-in connection in line with its session in Redis;
/// retries while Redis is not quite back.
async fn resync(ctx: Arc<Ctx>, stop: CancellationToken) {
    // Beat at once: routers may be about to take this edge for dead.
    let _ = ctx.beat(false).await;
    let sessions = ctx.hub.sessions();
    end_unheld(&ctx, &sessions).await;
    if sessions.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (_, s) in &sessions {
        pipe.cmd("HMGET")
            .arg(ctx.keys.session(&s.user))
            .arg("sid")
            .arg("room");
        pipe.cmd("SMEMBERS").arg(ctx.keys.subscriptions(&s.user));
    }
    let values: Vec<redis::Value> = loop {
        match pipe.query_async(&mut ctx.redis.clone()).await {
            Ok(v) => break v,
            Err(e) => tracing::warn!(error = %e, "reading sessions back failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    };
    for ((id, held), pair) in sessions.iter().zip(values.chunks(2)) {
        let (sid, room): (Option<String>, Option<String>) =
            redis::from_redis_value(pair[0].clone()).unwrap_or((None, None));
        let subs: Vec<String> = redis::from_redis_value(pair[1].clone()).unwrap_or_default();
        let current = match (&sid, &room) {
            (Some(sid), Some(room)) => Some((sid.as_str(), room.as_str(), subs.as_slice())),
            _ => None,
        };
        ctx.hub.resync(*id, held, current);
    }
}

/// Ends the sessions Redis has on this edge that no connection of it holds
/// (a login whose reply was lost while Pub/Sub was down).
async fn end_unheld(ctx: &Ctx, held: &[(u64, Session)]) {
    let mut conn = ctx.redis.clone();
    let set = ctx.keys.edge_sessions(&ctx.cfg.edge.id);
    let Ok(users) = redis::AsyncCommands::smembers::<_, Vec<String>>(&mut conn, set).await else {
        return;
    };
    for user in users
        .into_iter()
        .filter(|u| !held.iter().any(|(_, s)| &s.user == u))
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

/// Most subscription changes made in one round trip.
const SYNC_BATCH: usize = 1024;

/// Subscribes to the channels of `batch` the hub wants and unsubscribes
/// from those it no longer wants. An error or timeout leaves the
/// connection in doubt: the caller drops it.
async fn sync(
    hub: &Hub,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
    batch: &[hub::Sync],
    limit: Duration,
) -> redis::RedisResult<()> {
    let (mut on, mut off) = (HashSet::new(), HashSet::new());
    for s in batch {
        let (want, have) = (hub.wants(&s.channel), subscribed.contains(&s.channel));
        if want && !have {
            on.insert(s.channel.as_str());
        } else if !want && have {
            off.insert(s.channel.as_str());
        }
    }
    let timed_out = || {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer from Redis",
        ))
    };
    if !on.is_empty() {
        let on: Vec<&str> = on.into_iter().collect();
        tokio::time::timeout(limit, sink.subscribe(&on))
            .await
            .map_err(|_| timed_out())??;
        subscribed.extend(on.into_iter().map(str::to_string));
    }
    if !off.is_empty() {
        let off: Vec<&str> = off.into_iter().collect();
        tokio::time::timeout(limit, sink.unsubscribe(&off))
            .await
            .map_err(|_| timed_out())??;
        for ch in off {
            subscribed.remove(ch);
        }
    }
    Ok(())
}

/// Tells Redis this edge is alive, so that its sessions are kept.
async fn heartbeat(ctx: Arc<Ctx>, stop: CancellationToken) {
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

async fn end_orphans(ctx: Arc<Ctx>, mut orphans: mpsc::Receiver<Session>) {
    while let Some(session) = orphans.recv().await {
        tracing::info!(user = %session.user, "ending a session nobody holds");
        ctx.end_session(session).await;
    }
}
