//! Redis plumbing shared by the services: connections, consumer-group
//! reads of request streams, and edge liveness (heartbeats, reaping).

use crate::envelope::{Request, REQUEST_FIELD};
use crate::keys::Keys;
use crate::scripts::Call;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Client, RedisResult};
use std::time::Duration;

/// Longest wait for an ordinary command's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for `url` whose connections send at once (`TCP_NODELAY`).
/// The redis crate leaves Nagle's algorithm on by default, which holds a
/// small write back until the previous one is acknowledged: up to 40 ms
/// (delayed ACK) on a multiplexed connection under concurrency.
pub fn client(url: &str) -> RedisResult<Client> {
    use redis::io::tcp::TcpSettings;
    use redis::IntoConnectionInfo;
    let info = url
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    Client::open(info)
}

/// A reconnecting, multiplexed connection for ordinary commands, with the
/// functions library loaded (see [`crate::scripts`]).
pub async fn commands(client: &Client) -> RedisResult<ConnectionManager> {
    let mut conn = client
        .get_connection_manager_with_config(manager_config(RESPONSE_TIMEOUT))
        .await?;
    crate::scripts::load(&mut conn).await?;
    Ok(conn)
}

/// Reconnects with backoff (at most a second apart, so service resumes
/// soon after Redis is back).
fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_max_delay(Duration::from_secs(1))
}

/// A connection of its own for blocking reads (`XREADGROUP ... BLOCK`),
/// which would hold up every other command on a shared one. Like
/// [`commands`], it reconnects by itself after Redis restarts.
pub async fn blocking(client: &Client, block: Duration) -> RedisResult<ConnectionManager> {
    client
        .get_connection_manager_with_config(manager_config(block + RESPONSE_TIMEOUT))
        .await
}

/// Creates `group` on each stream (and the stream) unless it exists. A new
/// group starts at the beginning, so requests written before any service
/// ran are still served. Called at start and again on `NOGROUP` (Redis lost
/// its data).
pub async fn ensure_groups(
    conn: &mut ConnectionManager,
    streams: &[String],
    group: &str,
) -> RedisResult<()> {
    for stream in streams {
        let res: RedisResult<()> = conn.xgroup_create_mkstream(stream, group, "0").await;
        match res {
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            other => other?,
        }
    }
    Ok(())
}

/// One request read from a stream; `req` is `None` when the entry could not
/// be decoded (it is acknowledged and dropped by the caller).
pub struct Entry {
    pub stream: String,
    pub id: String,
    pub req: Option<Request>,
}

/// Reads up to `count` new entries from `streams` for `consumer` of `group`,
/// waiting up to `block`.
pub async fn read_group(
    conn: &mut ConnectionManager,
    streams: &[String],
    group: &str,
    consumer: &str,
    count: usize,
    block: Duration,
) -> RedisResult<Vec<Entry>> {
    let opts = StreamReadOptions::default()
        .group(group, consumer)
        .count(count)
        .block(block.as_millis() as usize);
    let ids: Vec<&str> = streams.iter().map(|_| ">").collect();
    let reply: Option<StreamReadReply> = conn.xread_options(streams, &ids, &opts).await?;
    Ok(reply
        .map(|r| {
            r.keys
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
        })
        .unwrap_or_default())
}

/// Entries of `stream` pending for other consumers of `group` for at least
/// `min_idle`, now claimed for `consumer` (oldest first).
pub async fn claim_pending(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    count: usize,
) -> RedisResult<Vec<Entry>> {
    let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
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

fn decode(map: &std::collections::HashMap<String, redis::Value>) -> Option<Request> {
    match map.get(REQUEST_FIELD)? {
        redis::Value::BulkString(b) => serde_json::from_slice(b).ok(),
        _ => None,
    }
}

/// Acknowledges entries and deletes them: a handled request (which may hold
/// a password) does not outlive its handling.
pub fn ack_and_delete(pipe: &mut redis::Pipeline, stream: &str, group: &str, ids: &[String]) {
    if !ids.is_empty() {
        pipe.xack(stream, group, ids).ignore();
        pipe.xdel(stream, ids).ignore();
    }
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

/// Sessions of a dead edge ended in one round trip, at most.
const END_CHUNK: usize = 256;

/// Renews edge `edge`'s heartbeat, to hold for `dead_after_ms`. With
/// `restart`, first ends what a previous run under that id left behind;
/// returns how many sessions that ended.
pub async fn heartbeat(
    conn: &mut ConnectionManager,
    keys: &Keys,
    edge: &str,
    dead_after_ms: u64,
    restart: bool,
) -> RedisResult<u64> {
    let ended = if restart {
        end_edge_sessions(conn, keys, edge, "restart").await?
    } else {
        0
    };
    Call::new("chat_beat", &[keys.edges()])
        .arg(edge)
        .arg(dead_after_ms)
        .invoke::<()>(conn)
        .await?;
    Ok(ended)
}

/// Ends the sessions of every edge whose heartbeat has run out, and
/// forgets those edges. Returns how many sessions it ended.
pub async fn reap_dead_edges(conn: &mut ConnectionManager, keys: &Keys) -> RedisResult<u64> {
    let dead: Vec<String> = Call::new("chat_dead_edges", &[keys.edges()])
        .invoke(conn)
        .await?;
    let mut ended = 0;
    for edge in dead {
        ended += end_edge_sessions(conn, keys, &edge, "reap").await?;
        Call::new("chat_drop_edge", &[keys.edges(), keys.edge_sessions(&edge)])
            .arg(&edge)
            .invoke::<()>(conn)
            .await?;
    }
    Ok(ended)
}

/// Ends the sessions `edge` holds, in chunks of one round trip each;
/// `mode` is `reap` (only while the edge is still dead) or `restart`.
async fn end_edge_sessions(
    conn: &mut ConnectionManager,
    keys: &Keys,
    edge: &str,
    mode: &str,
) -> RedisResult<u64> {
    let users: Vec<String> = conn.smembers(keys.edge_sessions(edge)).await?;
    let mut ended = 0;
    for chunk in users.chunks(END_CHUNK) {
        let mut todo: Vec<&str> = chunk.iter().map(String::as_str).collect();
        // A session that moves to another room meanwhile is read again.
        for _ in 0..3 {
            if todo.is_empty() {
                break;
            }
            let mut read = redis::pipe();
            for user in &todo {
                read.hget(keys.session(user), "room");
            }
            let rooms: Vec<Option<String>> = read.query_async(conn).await?;
            let mut calls = redis::pipe();
            for (user, room) in todo.iter().zip(&rooms) {
                let room = room.as_deref().unwrap_or("");
                let call = Call::new(
                    "chat_end_edge_session",
                    &[
                        keys.edges(),
                        keys.edge_sessions(edge),
                        keys.session(user),
                        keys.online(),
                        keys.room(room),
                        keys.rooms(),
                        keys.room_sizes(),
                    ],
                )
                .arg(edge)
                .arg(*user)
                .arg(room)
                .arg(keys.room_channel(room))
                .arg(keys.edge_channel(edge))
                .arg(mode);
                calls.add_command(call.cmd().clone());
            }
            let statuses: Vec<String> = crate::scripts::query_pipe(conn, &calls).await?;
            if statuses.iter().any(|s| s == "alive") {
                return Ok(ended); // it beats again: nothing more to end
            }
            ended += statuses.iter().filter(|s| *s == "ended").count() as u64;
            todo = todo
                .into_iter()
                .zip(&statuses)
                .filter(|(_, s)| *s == "moved")
                .map(|(u, _)| u)
                .collect();
        }
    }
    Ok(ended)
}
