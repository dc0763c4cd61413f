//! Request streams: a consumer group's reads, claims and acknowledgements, and stream entry ids.

use crate::envelope::{Request, REQUEST_FIELD};
use crate::store::Conn;
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamReadOptions;
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
                let read: RedisResult<Value> =
                    reader.clone().xread_options(streams, &ids, &opts).await;
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
        let replies: Vec<Value> = now.query_async(&mut self.conn.clone()).await?;
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
                let reply = cmd.query_async::<Value>(&mut conn).await;
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
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(&self.group)
            .arg(&self.name)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn.clone())
            .await?;
        // The next id to scan from, the entries claimed, (since Redis 7)
        // the ids of those deleted.
        let mut out = Vec::new();
        if let Value::Array(items) = reply {
            if let Some(claimed) = items.into_iter().nth(1) {
                stream_entries(stream, claimed, &mut out);
            }
        }
        Ok(out)
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

/// The entries of an `XREADGROUP` answer, stream by stream, taken from
/// the reply as it came: a typed reply would copy it whole, and make a map
/// of each entry's fields (a fifth of the router's allocations).
fn entries(reply: Value) -> Vec<Entry> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Array(streams) => streams.into_iter().filter_map(pair).collect(),
        Value::Map(streams) => streams,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (stream, list) in streams {
        if let Ok(stream) = redis::from_redis_value::<String>(stream) {
            stream_entries(&stream, list, &mut out);
        }
    }
    out
}

/// Adds the entries of `stream` in `list` (`[[id, [field, value, ...]], ...]`)
/// to `out`.
fn stream_entries(stream: &str, list: Value, out: &mut Vec<Entry>) {
    let Value::Array(list) = list else {
        return;
    };
    for (id, fields) in list.into_iter().filter_map(pair) {
        if let Ok(id) = redis::from_redis_value(id) {
            out.push(Entry {
                stream: stream.to_string(),
                id,
                req: decode(fields),
            });
        }
    }
}

/// The two items of a two-item array.
fn pair(v: Value) -> Option<(Value, Value)> {
    match v {
        Value::Array(items) if items.len() == 2 => {
            let mut items = items.into_iter();
            Some((items.next()?, items.next()?))
        }
        _ => None,
    }
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

/// The request in an entry's fields (`field value ...`).
fn decode(fields: Value) -> Option<Request> {
    let Value::Array(fields) = fields else {
        return None;
    };
    fields.chunks(2).find_map(|kv| match kv {
        [Value::BulkString(k), Value::BulkString(v)] if k == REQUEST_FIELD.as_bytes() => {
            serde_json::from_slice(v).ok()
        }
        _ => None,
    })
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
    fn stream_replies_are_read_as_they_come() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let req = r#"{"edge":"edge-1","conn":"7","rid":"0","user":"ann","sid":"s","op":"say","text":"hi"}"#;
        let list = || {
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("x"), bulk("y"), bulk(REQUEST_FIELD), bulk(req)]),
                ]),
                // A deleted entry's fields, and fields that are no request.
                Value::Array(vec![bulk("2-0"), Value::Nil]),
                Value::Array(vec![
                    bulk("3-0"),
                    Value::Array(vec![bulk(REQUEST_FIELD), bulk("{")]),
                ]),
            ])
        };
        let check = |got: Vec<Entry>, stream: &str| {
            let ids: Vec<_> = got
                .iter()
                .map(|e| (e.stream.as_str(), e.id.as_str()))
                .collect();
            assert_eq!(ids, [(stream, "1-0"), (stream, "2-0"), (stream, "3-0")]);
            let req = got[0].req.as_ref().expect("a request");
            assert_eq!((req.user.as_str(), req.conn), ("ann", 7));
            assert!(got[1].req.is_none() && got[2].req.is_none());
        };
        // XREADGROUP, as RESP2 answers it and as RESP3 does; nothing read.
        check(
            entries(Value::Array(vec![Value::Array(vec![bulk("s1"), list()])])),
            "s1",
        );
        check(entries(Value::Map(vec![(bulk("s2"), list())])), "s2");
        assert!(entries(Value::Nil).is_empty());
        // XAUTOCLAIM's claimed entries.
        let mut out = Vec::new();
        stream_entries("s3", list(), &mut out);
        check(out, "s3");
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
