//! The Pub/Sub task: reads every channel in order; keeps the subscriptions in line with the hub.

use crate::ctx::Ctx;
use crate::hub::{Hub, SubChange};
use crate::resync::resync;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::Client;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A new Pub/Sub connection, subscribed to `channels`.
pub(crate) async fn subscribe(
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
pub(crate) async fn deliver(
    client: Client,
    first: (PubSubSink, PubSubStream, HashSet<String>),
    ctx: Arc<Ctx>,
    mut syncs: mpsc::UnboundedReceiver<SubChange>,
    stop: CancellationToken,
) {
    let hub = &ctx.hub;
    let limit = ctx.cfg.edge.request_timeout();
    let mut connected = Some(first);
    let mut backoff = Duration::from_millis(100);

    loop {
        if let Some((mut sink, mut stream, mut subscribed)) = connected.take() {
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
                    }
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

/// How often the Pub/Sub connection is checked with a `PING`.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Most subscription changes made in one round trip.
const SYNC_BATCH: usize = 1024;

/// Subscribes to the channels of `batch` the hub wants and unsubscribes
/// from those it no longer wants. An error or timeout leaves the
/// connection in doubt: the caller drops it.
async fn sync(
    hub: &Hub,
    sink: &mut PubSubSink,
    subscribed: &mut HashSet<String>,
    batch: &[SubChange],
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
