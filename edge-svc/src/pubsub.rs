//! The Pub/Sub task: reads the edge's two channels in order, and reconnects.

use crate::ctx::Ctx;
use crate::hub::{Audience, Gathered, Hub};
use crate::intake::{self, Backlog, PubSubSource};
use crate::resync::resync;
use crate::shard::{Event, ShardFeed};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{PubSubSink, PubSubStream};
use redis::streams::{StreamId, StreamRangeReply};
use shared::consumer::EntryId;
use shared::keys::Keys;
use shared::line::ServerLine;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A new Pub/Sub connection, subscribed to `channels` (the edge's two), its
/// intake bounded by `backlog`.
pub(crate) async fn subscribe(
    source: &PubSubSource,
    channels: &[String],
    backlog: &Arc<Backlog>,
) -> redis::RedisResult<(PubSubSink, PubSubStream)> {
    let (mut sink, stream) = intake::connect(source, backlog).await?.split();
    sink.subscribe(channels).await?;
    Ok((sink, stream))
}

/// Applies Pub/Sub messages in arrival order; reconnects and subscribes to
/// `channels` again if the connection drops.
pub(crate) async fn deliver(
    source: PubSubSource,
    backlog: Arc<Backlog>,
    channels: [String; 2],
    first: (PubSubSink, PubSubStream),
    ctx: Arc<Ctx>,
    stop: CancellationToken,
) {
    let hub = &ctx.hub;
    let limit = ctx.cfg.edge.request_timeout();
    let mut connected = Some(first);
    let mut backoff = Duration::from_millis(100);
    // When the connection was last heard from (a message, a PONG): lines
    // of a room with no mark yet that it missed are after that.
    let mut heard = shared::now_ms();

    loop {
        if let Some((mut sink, mut stream)) = connected.take() {
            backoff = Duration::from_millis(100);
            let mut ping =
                tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    // A silent Redis (a dead host, a black hole: no FIN, no
                    // RST) is noticed within PING_EVERY plus `limit`.
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(limit, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            tracing::warn!("Redis did not answer a Pub/Sub PING in time");
                            break;
                        }
                        heard = shared::now_ms();
                    }
                    m = stream.next() => match m {
                        Some(msg) => {
                            apply(hub, &backlog, &mut stream, msg);
                            heard = shared::now_ms();
                        }
                        None => break,
                    },
                }
            }
            if backlog.take_overflow() {
                ctx.metrics.pubsub_overflows.inc();
                tracing::warn!("Pub/Sub fell behind past edge.pubsub_backlog_bytes; reconnecting");
            } else {
                tracing::warn!("Pub/Sub connection lost; reconnecting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        match subscribe(&source, &channels, &backlog).await {
            Ok(c) => {
                // Replies published while we were away are lost: read back
                // what they would have changed.
                tokio::spawn(resync(ctx.clone(), stop.clone()));
                // Room and publisher lines published meanwhile are in
                // history: passed on before anything newer.
                replay(&ctx, heard).await;
                connected = Some(c);
            }
            Err(e) => {
                tracing::warn!(error = %e, "Pub/Sub reconnect failed");
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// On a Redis Cluster: applies the messages of `feed` in arrival order;
/// when it resumes after a loss (a failover, or the intake over its
/// budget), reads back what the lost replies would have changed and
/// replays what the audiences missed, as after a reconnect on one Redis.
pub(crate) async fn deliver_sharded(mut feed: ShardFeed, ctx: Arc<Ctx>, stop: CancellationToken) {
    let limit = ctx.cfg.edge.request_timeout();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When every shard was last heard from (a PONG from each; a message
    // says nothing of the other shards): see `deliver`.
    let mut heard = shared::now_ms();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ping.tick() => {
                // A silent master (no FIN, no RST) is noticed here.
                if matches!(tokio::time::timeout(limit, feed.ping()).await, Ok(Ok(()))) {
                    heard = shared::now_ms();
                    continue;
                }
                tracing::warn!("Redis did not answer a Pub/Sub PING in time; subscribing again");
                feed.resubscribe().await;
                Some(Event::Resumed)
            }
            event = feed.next() => event,
        };
        match event {
            Some(Event::Message { channel, payload }) => ctx.hub.dispatch(&channel, &payload),
            Some(Event::Resumed) => {
                tracing::warn!("Pub/Sub resumed after a loss; replaying");
                tokio::spawn(resync(ctx.clone(), stop.clone()));
                replay(&ctx, heard).await;
            }
            None => {
                tracing::error!("the Pub/Sub feed ended");
                return;
            }
        }
    }
}

/// Applies `msg` and whatever else has arrived (up to [`DRAIN`]
/// messages), counting each off the backlog; when nothing more is
/// waiting, the backlog is empty. Consecutive lines of one room are
/// queued together (see [`Hub::dispatch_into`]).
fn apply(hub: &Hub, backlog: &Backlog, stream: &mut PubSubStream, mut msg: redis::Msg) {
    let mut gathered = Gathered::default();
    let mut drained = false;
    for n in 1..=DRAIN {
        let (channel, payload) = (msg.get_channel_name(), msg.get_payload_bytes());
        hub.dispatch_into(&mut gathered, channel, payload);
        backlog.applied(channel, payload);
        if n == DRAIN {
            break;
        }
        match stream.next().now_or_never() {
            Some(Some(next)) => msg = next,
            // Ended: the caller's next read sees it.
            Some(None) => break,
            None => {
                drained = true;
                break;
            }
        }
    }
    hub.flush(&mut gathered);
    if drained {
        backlog.drained();
    }
}

/// Most messages applied in a row before the Pub/Sub task looks at its
/// other work (subscription changes, `PING`s).
const DRAIN: usize = 256;

/// After a reconnect, passes on what each room's and publisher's audience
/// missed, read from history from the last id passed on (or from `heard`,
/// when the connection was last heard from, for one that had no line
/// since its members joined), before any newer line (those of the new
/// connection wait meanwhile; one that is both read and received is
/// passed on once). Past `edge.replay_max` lines, or if history cannot be
/// read, the audience gets `GAP` instead.
async fn replay(ctx: &Ctx, heard: u64) {
    let max = ctx.cfg.edge.replay_max;
    let since = EntryId { ms: heard, seq: 0 };
    let sources: Vec<(Audience, EntryId, Source)> = ctx
        .hub
        .marks(since)
        .into_iter()
        .map(|(a, last)| {
            let source = Source::of(&ctx.keys, &a);
            (a, last, source)
        })
        .collect();
    if sources.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for (_, last, source) in &sources {
        pipe.cmd("XRANGE")
            .arg(&source.stream)
            .arg(format!("({last}"))
            .arg("+")
            .arg("COUNT")
            .arg(max + 1);
    }
    let mut conn = ctx.redis.clone();
    // Redis may have just come back: its commands connection reconnects
    // too (with backoff), or it may still be loading its data.
    let deadline = tokio::time::Instant::now() + REPLAY_WAIT;
    let ranges = loop {
        let read = pipe.query_async::<Vec<StreamRangeReply>>(&mut conn);
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(ranges)) => break ranges,
            // After Redis restarted, the commands connection fails its
            // first command (broken pipe) and reconnects: read again
            // rather than give everyone a GAP for nothing missed.
            Ok(Err(e))
                if shared::store::transient(&e)
                    && tokio::time::Instant::now() + REPLAY_RETRY < deadline =>
            {
                tracing::debug!(error = %e, "reading history to replay failed; retrying");
                tokio::time::sleep(REPLAY_RETRY).await;
            }
            failed => {
                tracing::warn!(?failed, "reading history to replay failed");
                break Vec::new();
            }
        }
    };
    let mut replayed = 0;
    for (i, (a, last, source)) in sources.iter().enumerate() {
        let entries = ranges.get(i).map(|r| r.ids.as_slice());
        match entries {
            Some(entries) if entries.len() <= max => {
                for e in entries {
                    ctx.hub.pass_on(a, &source.line(e));
                }
                replayed += entries.len();
            }
            _ => {
                let newest = entries
                    .and_then(|e| e.last())
                    .and_then(|e| EntryId::parse(&e.id))
                    .unwrap_or(*last);
                let gap = ServerLine::Gap {
                    kind: source.kind.into(),
                    name: source.name.clone(),
                    after: last.to_string(),
                };
                tracing::warn!(kind = source.kind, name = source.name, after = %last, "lines missed past what is replayed");
                ctx.hub.gap(a, &gap, newest);
            }
        }
    }
    tracing::info!(
        lines = replayed,
        audiences = sources.len(),
        "replayed what Pub/Sub missed"
    );
}

/// Where a room's or a publisher's lines are kept.
struct Source {
    kind: &'static str,
    name: String,
    stream: String,
}

impl Source {
    fn of(keys: &Keys, a: &Audience) -> Source {
        match a {
            Audience::Room(room) => Source {
                kind: "room",
                name: room.clone(),
                stream: keys.history(room),
            },
            Audience::Pub(user) => Source {
                kind: "pub",
                name: user.clone(),
                stream: keys.publications(user),
            },
        }
    }

    /// The line a history entry was passed on as.
    fn line(&self, e: &StreamId) -> ServerLine {
        let field = |f: &str| e.get::<String>(f).unwrap_or_default();
        match self.kind {
            "room" => ServerLine::Msg {
                room: self.name.clone(),
                id: e.id.clone(),
                from: field("from"),
                text: field("text"),
            },
            _ => ServerLine::Pub {
                id: e.id.clone(),
                from: self.name.clone(),
                text: field("text"),
            },
        }
    }
}

/// The pause before reading history to replay again after a connection
/// error.
const REPLAY_RETRY: Duration = Duration::from_millis(50);

/// How long the replay after a reconnect waits for history to be readable
/// before it gives up and sends `GAP` (Pub/Sub lines wait meanwhile).
const REPLAY_WAIT: Duration = Duration::from_secs(5);

/// How often the Pub/Sub connection is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(5);
