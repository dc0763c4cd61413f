//! Where in a Redis strings turn up: its append-only files, an RDB dump,
//! the slow log, a `MONITOR` capture and every key's value. For the tests
//! that secrets (passwords, private text) never reach Redis readable.

use crate::TestRedis;
use redis::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Server arguments that make Redis keep everything it can: every write in
/// its append-only files (written before the reply), every command in the
/// slow log (a long one), and dumps uncompressed (so that a string in one
/// is there as it is).
pub const KEEP_EVERYTHING: &[&str] = &[
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--slowlog-log-slower-than",
    "0",
    "--slowlog-max-len",
    "1000000",
    "--rdbcompression",
    "no",
];

/// A Redis started with [`KEEP_EVERYTHING`].
pub fn keep_everything() -> crate::RedisOptions {
    crate::RedisOptions {
        args: KEEP_EVERYTHING.iter().map(|a| a.to_string()).collect(),
        ..crate::RedisOptions::default()
    }
}

/// The places [`places_of`] looks in.
pub const PLACES: [&str; 5] = ["aof", "rdb", "slowlog", "monitor", "keys"];

/// For each of `needles`, the [`PLACES`] it turns up in: the append-only
/// files (`appendonlydir/`), an RDB dump (`SAVE` now), `SLOWLOG GET`, the
/// `monitor` lines ([`crate::Monitor::ran_before`]) and the values of all
/// keys (`SCAN`, then each read by its type).
pub async fn places_of<'a>(
    redis: &TestRedis,
    monitor: &[String],
    needles: &[&'a str],
) -> BTreeMap<&'a str, BTreeSet<&'static str>> {
    let mut conn = redis.plain().await;
    // The append-only files are whole once no rewrite runs or waits (a
    // replica rewrites them after each full sync).
    crate::eventually("no AOF rewrite in progress", || {
        let mut conn = conn.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("persistence")
                .query_async(&mut conn)
                .await
                .unwrap();
            [
                "aof_enabled:1",
                "aof_rewrite_in_progress:0",
                "aof_rewrite_scheduled:0",
            ]
            .iter()
            .all(|want| info.lines().any(|l| l.trim() == *want))
        }
    })
    .await;
    let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    let mut aof = Vec::new();
    let dir = redis.dir().join("appendonlydir");
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        aof.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let rdb = std::fs::read(redis.dir().join("dump.rdb")).unwrap();
    let slowlog: Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let values = dump(redis).await.into_bytes();
    let mut slow = Vec::new();
    flatten(&slowlog, &mut slow);
    let monitor = monitor.join("\n").into_bytes();
    let haystacks: [(&str, &[u8]); 5] = [
        ("aof", &aof),
        ("rdb", &rdb),
        ("slowlog", &slow),
        ("monitor", &monitor),
        ("keys", &values),
    ];
    needles
        .iter()
        .map(|needle| {
            let found = haystacks
                .iter()
                .filter(|(_, hay)| contains(hay, needle.as_bytes()))
                .map(|(place, _)| *place)
                .collect();
            (*needle, found)
        })
        .collect()
}

/// Every string of a reply, one after another (a newline between).
/// Every key of `redis` with its whole value (`SCAN`, then each read by
/// its type), a line each: `<key> = <its strings, space-separated>`.
pub async fn dump(redis: &TestRedis) -> String {
    let mut conn = redis.plain().await;
    let mut out = String::new();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut read = match kind.as_str() {
            "string" => redis::cmd("GET"),
            "hash" => redis::cmd("HGETALL"),
            "list" => redis::cmd("LRANGE"),
            "set" => redis::cmd("SMEMBERS"),
            "zset" => redis::cmd("ZRANGE"),
            "stream" => redis::cmd("XRANGE"),
            _ => continue, // gone meanwhile
        };
        read.arg(&key);
        match kind.as_str() {
            "list" | "zset" => {
                read.arg(0).arg(-1);
            }
            "stream" => {
                read.arg("-").arg("+");
            }
            _ => {}
        }
        let mut value = Vec::new();
        flatten(&read.query_async(&mut conn).await.unwrap(), &mut value);
        let value = String::from_utf8_lossy(&value).replace('\n', " ");
        out.push_str(&format!("{key} = {}\n", value.trim_end()));
    }
    out
}

fn flatten(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::BulkString(b) => out.extend_from_slice(b),
        Value::SimpleString(s) => out.extend_from_slice(s.as_bytes()),
        Value::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|i| flatten(i, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            flatten(k, out);
            flatten(v, out);
        }),
        _ => {}
    }
    out.push(b'\n');
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
