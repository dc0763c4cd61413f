//! The edge's Pub/Sub on a Redis Cluster: its two sharded channels, read on one connection to their shard's master, through failovers.
//!
//! Both channels carry the edge's id as their hash tag, so they are on
//! one shard and their messages arrive in the order Redis ran the
//! publishes, as on one Redis. The redis crate's cluster connection
//! (RESP3) hands the messages over as pushes; it does not move a sharded
//! subscription to the replica that takes over a dead master, so on its
//! `Disconnection` push the feed subscribes again, which reaches the new
//! master once the cluster has promoted one. What was published meanwhile
//! is lost to Pub/Sub: the feed says [`Event::Resumed`], and the edge
//! replays it from history, as after any loss of its Pub/Sub connection.
//! The intake is bounded by the same [`Backlog`] as on one Redis: past it,
//! messages are dropped until the edge has caught up, then
//! [`Event::Resumed`].
//!
//! The edge reads it on a cluster (`pubsub::deliver_sharded`).

use crate::intake::Backlog;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What a [`ShardFeed`] yields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A message on one of the channels.
    Message { channel: String, payload: Vec<u8> },
    /// The subscription was lost (its master died, its slot moved) or the
    /// intake went over its budget, and messages are flowing again; those
    /// published in between are missing.
    Resumed,
}

/// What the push sender passes on.
enum Push {
    Message(String, Vec<u8>),
    /// The connection to the channels' master closed.
    Disconnected,
    /// Messages were dropped for the backlog's budget.
    Overflow,
}

/// A subscription to sharded channels of one slot.
pub(crate) struct ShardFeed {
    conn: ClusterConnection,
    channels: Vec<String>,
    /// Metered by `backlog`: unbounded in count, not in bytes.
    pushes: mpsc::UnboundedReceiver<Push>,
    backlog: Arc<Backlog>,
}

impl ShardFeed {
    /// Subscribes to `channels` (all of one slot) on the cluster that
    /// `builder` leads to, the intake bounded by `backlog`.
    pub(crate) async fn subscribe(
        builder: redis::cluster::ClusterClientBuilder,
        channels: &[String],
        backlog: Arc<Backlog>,
    ) -> RedisResult<ShardFeed> {
        let (tx, pushes) = mpsc::unbounded_channel();
        let metered = backlog.clone();
        // Confirmations and dropped messages pass nothing on.
        let sender = move |info: PushInfo| match sort(&metered, info) {
            Some(push) => tx.send(push).map_err(|_| ()),
            None => Ok(()),
        };
        let client = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(sender)
            .build()?;
        let mut conn = client.get_async_connection().await?;
        conn.ssubscribe(channels).await?;
        Ok(ShardFeed {
            conn,
            channels: channels.to_vec(),
            pushes,
            backlog,
        })
    }

    /// The next event; `None` once the connection is gone for good.
    pub(crate) async fn next(&mut self) -> Option<Event> {
        match self.pushes.recv().await? {
            Push::Message(channel, payload) => {
                self.backlog.applied(&channel, &payload);
                Some(Event::Message { channel, payload })
            }
            Push::Overflow => {
                self.backlog.take_overflow();
                self.backlog.drained();
                Some(Event::Resumed)
            }
            Push::Disconnected => {
                self.resubscribe().await;
                Some(Event::Resumed)
            }
        }
    }

    /// Subscribes again until it takes: the cluster connection finds the
    /// slot's new master once one is promoted.
    pub(crate) async fn resubscribe(&mut self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let again =
                tokio::time::timeout(RESUBSCRIBE_WAIT, self.conn.ssubscribe(&self.channels));
            match again.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => tracing::debug!(error = %e, "subscribing again failed"),
                Err(_) => tracing::debug!("subscribing again timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// A `PING` to the channels' master, through the same connection.
    pub(crate) async fn ping(&mut self) -> RedisResult<()> {
        let mut conn = shared::store::Conn::Cluster(self.conn.clone());
        conn.on_master_of(&self.channels[0], redis::cmd("PING"))
            .await?;
        Ok(())
    }
}

/// How long one attempt to subscribe again may take.
const RESUBSCRIBE_WAIT: Duration = Duration::from_secs(2);

/// What a push means to the feed, counting a message against `backlog`;
/// `None` for pushes it ignores (confirmations) and for messages dropped
/// while the backlog is over its budget.
fn sort(backlog: &Backlog, info: PushInfo) -> Option<Push> {
    match info.kind {
        PushKind::SMessage => {
            let [Value::BulkString(channel), Value::BulkString(payload)] = &info.data[..] else {
                return None;
            };
            let channel = String::from_utf8_lossy(channel).into_owned();
            match backlog.take(&channel, payload)? {
                true => Some(Push::Message(channel, payload.clone())),
                false => Some(Push::Overflow),
            }
        }
        PushKind::Disconnection | PushKind::SUnsubscribe => Some(Push::Disconnected),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use e2e::TestCluster;
    use shared::keys::Keys;
    use std::time::Instant;

    /// The next event within `e2e::WAIT`.
    async fn next(feed: &mut ShardFeed) -> Event {
        let event = tokio::time::timeout(e2e::WAIT, feed.next()).await;
        event.expect("an event in time").expect("the feed goes on")
    }

    fn message(channel: &str, payload: &str) -> Event {
        Event::Message {
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    #[tokio::test]
    async fn an_edges_channels_are_read_in_order_through_a_failover_and_past_the_budget() {
        let cluster = TestCluster::start(3, 1).await;
        let keys = Keys::for_cluster("chat:");
        let channels = [keys.edge_channel("e1"), keys.lines_channel("e1")];
        let builder = shared::store::cluster_client(&cluster.seeds(), &Default::default()).unwrap();
        let backlog = Backlog::new(16 * 1024);
        let mut feed = ShardFeed::subscribe(builder, &channels, backlog)
            .await
            .unwrap();
        let conn = shared::store::cluster(&cluster.seeds(), &Default::default())
            .await
            .unwrap();
        let publish = |channel: &str, payload: &str| {
            let (mut conn, mut cmd) = (conn.clone(), redis::cmd("SPUBLISH"));
            cmd.arg(channel).arg(payload);
            async move { cmd.query_async::<i64>(&mut conn).await }
        };
        // Both channels, in publishing order.
        for (ch, text) in [
            (&channels[1], "a"),
            (&channels[0], "b"),
            (&channels[1], "c"),
        ] {
            assert_eq!(publish(ch, text).await.unwrap(), 1);
        }
        for (ch, text) in [
            (&channels[1], "a"),
            (&channels[0], "b"),
            (&channels[1], "c"),
        ] {
            assert_eq!(next(&mut feed).await, message(ch, text));
        }
        feed.ping().await.unwrap();

        // Past the budget (about 64 KB at once): messages are dropped,
        // then the feed says so, and goes on.
        let big = "x".repeat(1000);
        let mut flood = redis::pipe();
        for _ in 0..64 {
            flood.cmd("SPUBLISH").arg(&channels[1]).arg(&big).ignore();
        }
        flood.query_async::<()>(&mut conn.clone()).await.unwrap();
        let mut taken = 0;
        while let Event::Message { .. } = next(&mut feed).await {
            taken += 1;
        }
        assert!(taken < 64, "{taken} of 64 taken before Resumed");
        publish(&channels[1], "after the flood").await.unwrap();
        assert_eq!(
            next(&mut feed).await,
            message(&channels[1], "after the flood")
        );

        // The channels' master dies: the feed subscribes on the replica
        // that takes over, says it resumed, and messages flow again.
        let master = cluster.master_of(&channels[0]).await.unwrap();
        cluster.kill(master);
        let killed = Instant::now();
        assert_eq!(next(&mut feed).await, Event::Resumed);
        eprintln!("resubscribed {:?} after the kill", killed.elapsed());
        assert_eq!(publish(&channels[0], "on the new master").await.unwrap(), 1);
        assert_eq!(
            next(&mut feed).await,
            message(&channels[0], "on the new master")
        );
        assert_ne!(cluster.master_of(&channels[0]).await, Some(master));
    }
}
