//! Request streams: a consumer group's reads, claims and acknowledgements, and stream entry ids.

use crate::envelope::{Request, REQUEST_FIELD};
use crate::store::Conn;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Client, RedisResult, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a failed read waits before it returns its error (so that the
/// caller's next read does not hammer a Redis that is away).
const READ_BACKOFF: Duration = Duration::from_millis(500);

/// A stream entry id, `<ms>-<seq>`: the Redis time in Unix milliseconds
/// the entry was added, and its sequence number within that millisecond.
/// Ordered as Redis orders entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl EntryId {
    pub fn parse(id: &str) -> Option<EntryId> {
        let (ms, seq) = id.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// One request read from a stream; `req` is `None` when the entry could not
/// be decoded (it is acknowledged and dropped by the caller).
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub req: Option<Request>,
}

/// Consumer `name` of `group` on `streams`: a blocking connection of its
/// own for reads (on a cluster, one per stream), and the service's
/// connection for everything else.
#[derive(Clone)]
pub struct Consumer {
    streams: Vec<String>,
    group: String,
    name: String,
    reader: Reader,
    conn: Conn,
}

/// Where a consumer's blocking reads go.
#[derive(Clone)]
enum Reader {
    /// One connection: one `XREADGROUP` reads every stream.
    Node(ConnectionManager),
    /// A read of several streams must be of one slot: one connection per
    /// stream, made when first read.
    Cluster(Box<ClusterReader>),
}

#[derive(Clone)]
struct ClusterReader {
    client: redis::cluster::ClusterClient,
    /// Each stream's connection, and its client id on the stream's master
    /// (for `CLIENT UNBLOCK`). The lock is never held across an await.
    conns: Arc<Mutex<HashMap<String, (ClusterConnection, i64)>>>,
}

impl Consumer {
    /// Opens the reading connection (reads wait up to `block`) and creates
    /// the groups.
    pub async fn new(
        client: &Client,
        conn: Conn,
        streams: Vec<String>,
        group: &str,
        name: &str,
        block: Duration,
    ) -> RedisResult<Consumer> {
        let reader = Reader::Node(crate::store::blocking(client, block).await?);
        Consumer::start(reader, conn, streams, group, name).await
    }

    /// As [`Consumer::new`], on the Redis Cluster that `builder` leads to
    /// ([`crate::store::cluster_client`]; `conn` being a connection to
    /// it): a blocking read waits on each stream's own connection, to that
    /// stream's master.
    pub async fn for_cluster(
        builder: redis::cluster::ClusterClientBuilder,
        conn: Conn,
        streams: Vec<String>,
        group: &str,
        name: &str,
        block: Duration,
    ) -> RedisResult<Consumer> {
        // Longer than a read may wait, and the commands' own time on top.
        let client = builder.response_timeout(block * 2).build()?;
        let reader = Reader::Cluster(Box::new(ClusterReader {
            client,
            conns: Arc::default(),
        }));
        Consumer::start(reader, conn, streams, group, name).await
    }

    /// The consumer, once its groups exist.
    async fn start(
        reader: Reader,
        conn: Conn,
        streams: Vec<String>,
        group: &str,
        name: &str,
    ) -> RedisResult<Consumer> {
        let consumer = Consumer {
            reader,
            conn,
            streams,
            group: group.to_string(),
            name: name.to_string(),
        };
        consumer.ensure_groups().await?;
        Ok(consumer)
    }

    /// All the streams this consumer reads.
    pub fn streams(&self) -> &[String] {
        &self.streams
    }

    /// Creates the group on each stream (and the stream) unless it exists.
    /// A new group starts at the beginning, so requests written before any
    /// service ran are still served. Called at start and again on `NOGROUP`
    /// (Redis lost its data).
    pub async fn ensure_groups(&self) -> RedisResult<()> {
        let mut conn = self.conn.clone();
        for stream in &self.streams {
            let res: RedisResult<()> = conn.xgroup_create_mkstream(stream, &self.group, "0").await;
            match res {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Reads up to `count` new entries from `streams` (all of this
    /// consumer's or some), waiting up to `block`. A failure is logged,
    /// lost groups are created again, and the error returns after a pause.
    pub async fn read(
        &self,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> RedisResult<Vec<Entry>> {
        let read = match &self.reader {
            Reader::Node(reader) => {
                let opts = StreamReadOptions::default()
                    .group(&self.group, &self.name)
                    .count(count)
                    .block(block.as_millis() as usize);
                let ids: Vec<&str> = streams.iter().map(|_| ">").collect();
                let read = reader.clone().xread_options(streams, &ids, &opts).await;
                read.map(entries)
            }
            Reader::Cluster(reader) => self.read_each(reader, streams, count, block).await,
        };
        match read {
            Ok(entries) => Ok(entries),
            Err(e) => {
                tracing::warn!(group = %self.group, error = %e, "reading requests failed; retrying");
                if e.code() == Some("NOGROUP") {
                    let _ = self.ensure_groups().await;
                }
                tokio::time::sleep(READ_BACKOFF).await;
                Err(e)
            }
        }
    }

    /// [`Consumer::read`] on a cluster: what the streams have at once (one
    /// pipeline per slot), else a blocking read of each stream on its own
    /// connection; the first that answers unblocks the others (`CLIENT
    /// UNBLOCK ... TIMEOUT`: they answer as if their time was up, having
    /// taken nothing), and every answer is kept.
    async fn read_each(
        &self,
        reader: &ClusterReader,
        streams: &[String],
        count: usize,
        block: Duration,
    ) -> RedisResult<Vec<Entry>> {
        let read = |stream: &str, block: Option<Duration>| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(&self.group).arg(&self.name);
            cmd.arg("COUNT").arg(count);
            if let Some(block) = block {
                cmd.arg("BLOCK").arg(block.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(stream).arg(">");
            cmd
        };
        let mut now = redis::pipe();
        for stream in streams {
            now.add_command(read(stream, None));
        }
        let replies: Vec<Option<StreamReadReply>> = now.query_async(&mut self.conn.clone()).await?;
        let got: Vec<Entry> = replies.into_iter().flat_map(entries).collect();
        if !got.is_empty() || block.is_zero() || streams.is_empty() {
            return Ok(got);
        }
        let mut waiting = FuturesUnordered::new();
        let mut ids = Vec::new();
        for stream in streams {
            let (mut conn, id) = reader.conn(stream).await?;
            ids.push((stream.clone(), id));
            let cmd = read(stream, Some(block));
            waiting.push(async move {
                let reply = cmd.query_async::<Option<StreamReadReply>>(&mut conn).await;
                (stream, reply)
            });
        }
        let (mut out, mut failed, mut unblocked) = (Vec::new(), None, false);
        while let Some((stream, reply)) = waiting.next().await {
            match reply {
                Ok(reply) => out.extend(entries(reply)),
                Err(e) => {
                    reader.forget(stream);
                    failed = Some(e);
                }
            }
            if !unblocked {
                unblocked = true;
                for (other, id) in ids.iter().filter(|(s, _)| s != stream) {
                    let mut unblock = redis::cmd("CLIENT");
                    unblock.arg("UNBLOCK").arg(*id).arg("TIMEOUT");
                    let sent = self.conn.clone().on_master_of(other, unblock).await;
                    if let Err(e) = sent {
                        tracing::debug!(stream = %other, error = %e, "unblocking a read failed");
                    }
                }
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Entries of `stream` pending (for any consumer) for at least
    /// `min_idle`, now claimed for this one, oldest first.
    pub async fn claim(
        &self,
        stream: &str,
        min_idle: Duration,
        count: usize,
    ) -> RedisResult<Vec<Entry>> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(&self.group)
            .arg(&self.name)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(reply
            .claimed
            .into_iter()
            .map(|e| Entry {
                stream: stream.to_string(),
                req: decode(&e.map),
                id: e.id,
            })
            .collect())
    }

    /// Claims this consumer's entries `ids` of `stream` afresh: their idle
    /// time starts over, so that nobody takes them over while in hand.
    pub async fn refresh(&self, stream: &str, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(&self.group)
            .arg(&self.name)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    /// Acknowledges and deletes the ids of each stream, in one round trip:
    /// a handled request (which may hold a password) does not outlive its
    /// handling.
    pub async fn ack_and_delete(&self, done: &[(&str, &[String])]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        for (stream, ids) in done.iter().filter(|(_, ids)| !ids.is_empty()) {
            pipe.xack(stream, &self.group, ids).ignore();
            pipe.xdel(stream, ids).ignore();
        }
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.query_async(&mut self.conn.clone()).await
    }

    /// The number of entries pending (read, not acknowledged) on each of
    /// `streams`, whoever read them; 0 where Redis's answer is not a
    /// summary.
    pub async fn pending_counts(&self, streams: &[String]) -> RedisResult<Vec<u64>> {
        if streams.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for stream in streams {
            pipe.cmd("XPENDING").arg(stream).arg(&self.group);
        }
        let summaries: Vec<Value> = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(summaries
            .into_iter()
            .map(|s| pending_count(s).unwrap_or(0))
            .collect())
    }
}

/// The entry count of an `XPENDING <stream> <group>` summary.
pub fn pending_count(summary: Value) -> Option<u64> {
    match summary {
        Value::Array(items) => redis::from_redis_value(items.into_iter().next()?).ok(),
        _ => None,
    }
}

/// The entries of an `XREADGROUP` answer, stream by stream.
fn entries(reply: Option<StreamReadReply>) -> Vec<Entry> {
    let Some(reply) = reply else {
        return Vec::new();
    };
    reply
        .keys
        .into_iter()
        .flat_map(|k| {
            let stream = k.key;
            k.ids.into_iter().map(move |e| Entry {
                stream: stream.clone(),
                req: decode(&e.map),
                id: e.id,
            })
        })
        .collect()
}

impl ClusterReader {
    /// `stream`'s connection and its client id, made if need be.
    async fn conn(&self, stream: &str) -> RedisResult<(ClusterConnection, i64)> {
        if let Some(c) = self.lock().get(stream) {
            return Ok(c.clone());
        }
        let conn = self.client.get_async_connection().await?;
        let mut id = redis::cmd("CLIENT");
        id.arg("ID");
        let id = Conn::Cluster(conn.clone()).on_master_of(stream, id).await?;
        let id: i64 = redis::from_redis_value(id)?;
        self.lock().insert(stream.to_string(), (conn.clone(), id));
        Ok((conn, id))
    }

    /// Drops `stream`'s connection (it failed: its master may have
    /// changed), to be made again.
    fn forget(&self, stream: &str) {
        self.lock().remove(stream);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ClusterConnection, i64)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode(map: &HashMap<String, Value>) -> Option<Request> {
    match map.get(REQUEST_FIELD)? {
        Value::BulkString(b) => serde_json::from_slice(b).ok(),
        _ => None,
    }
}

/// The call that appends `reqs` to `stream` in order, all or none, capped
/// at about `maxlen` entries (`chat_enqueue`).
pub fn enqueue(stream: &str, maxlen: u64, reqs: &[Request]) -> crate::scripts::Call {
    let call = crate::scripts::Call::new("chat_enqueue", &[stream])
        .arg(maxlen)
        .arg(REQUEST_FIELD);
    reqs.iter().fold(call, |call, req| {
        call.arg(serde_json::to_string(req).expect("requests serialize"))
    })
}

/// Appends a request to a stream, capped at about `maxlen` entries.
pub fn add_request(pipe: &mut redis::Pipeline, stream: &str, maxlen: u64, req: &Request) {
    let json = serde_json::to_string(req).expect("requests serialize");
    pipe.cmd("XADD")
        .arg(stream)
        .arg("MAXLEN")
        .arg("~")
        .arg(maxlen)
        .arg("*")
        .arg(REQUEST_FIELD)
        .arg(json)
        .ignore();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_and_order_as_redis_orders_them() {
        let id = |s| EntryId::parse(s).unwrap();
        assert_eq!(id("17-3"), EntryId { ms: 17, seq: 3 });
        assert!(id("5-1") < id("5-2") && id("5-2") < id("10-0"));
        assert!(id("9-0") < id("10-0"), "numbers, not text");
        for bad in ["", "17", "17-", "-3", "a-1", "1-b", "1-2-3"] {
            assert_eq!(EntryId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn pending_summaries_give_their_count() {
        let summary = Value::Array(vec![
            Value::Int(2),
            Value::BulkString(b"1-0".to_vec()),
            Value::BulkString(b"2-0".to_vec()),
            Value::Nil,
        ]);
        assert_eq!(pending_count(summary), Some(2));
        assert_eq!(pending_count(Value::Array(vec![])), None);
        assert_eq!(pending_count(Value::Nil), None);
    }
}
