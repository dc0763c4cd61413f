//! Applying requests: one Lua script call per request, pipelined per batch,
//! then acknowledgement of what was applied.

use crate::GROUP;
use redis::aio::ConnectionManager;
use redis::{ErrorKind, Script, Value};
use shared::config::Config;
use shared::envelope::{Op, Request};
use shared::keys::Keys;
use shared::store::{Entry, LUA_PRELUDE};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// ARGV: prefix, partition, owner, entry id, edge, conn, rid, user, sid,
/// op, history cap, then the op's arguments.
///
/// Returns `ok`, `fenced` (this router no longer owns the partition: the
/// entry is left for the new owner), `duplicate` (applied before), `stale`
/// (the session is no longer current) or `unknown-op`.
const ROUTER_LUA: &str = r#"
local part, owner, eid = ARGV[2], ARGV[3], ARGV[4]
local edge, conn, rid, user, sid, op, cap = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if redis.call('GET', P .. 'router:lease:' .. part) ~= owner then return 'fenced' end
local function id_after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local applied = P .. 'router:applied:' .. part
local last = redis.call('GET', applied)
if last and not id_after(eid, last) then return 'duplicate' end
redis.call('SET', applied, eid)

local sess = redis.call('HMGET', P .. 'session:' .. user, 'edge', 'conn', 'sid', 'room')
if op == 'logout' then
  if sess[3] == sid then end_session(user, sess) end
  if rid ~= '0' then reply(edge, conn, rid, nil, {kind = 'close', reason = 'quit', sid = sid}) end
  return 'ok'
end
if sess[3] ~= sid then return 'stale' end
if op == 'say' then
  local room, text = sess[4], ARGV[12]
  local id = redis.call('XADD', P .. 'history:' .. room, 'MAXLEN', cap, '*', 'from', user, 'text', text)
  redis.call('PUBLISH', P .. 'ch:room:' .. room, 'MSG ' .. room .. ' ' .. id .. ' ' .. user .. ' ' .. text)
  return 'ok'
end
return 'unknown-op'
"#;

pub(crate) struct Worker {
    keys: Keys,
    conn: ConnectionManager,
    id: String,
    partitions: u32,
    history_cap: u64,
    batch: usize,
    script: Script,
    shutdown: CancellationToken,
}

impl Worker {
    pub(crate) fn new(
        cfg: &Config,
        keys: Keys,
        conn: ConnectionManager,
        shutdown: CancellationToken,
    ) -> Worker {
        Worker {
            keys,
            conn,
            id: cfg.router.id.clone(),
            partitions: cfg.partitions,
            history_cap: cfg.router.history_cap,
            batch: cfg.router.batch,
            script: Script::new(&format!("{LUA_PRELUDE}{ROUTER_LUA}")),
            shutdown,
        }
    }

    /// Takes over what a previous owner of partition `p` read but did not
    /// finish; done before any new request of `p`, so order holds.
    pub(crate) async fn take_over(&mut self, p: u32) {
        let stream = self.keys.router_requests(p);
        loop {
            let claimed = shared::store::claim_pending(
                &mut self.conn,
                &stream,
                GROUP,
                &self.id,
                Duration::ZERO,
                self.batch,
            )
            .await;
            match claimed {
                Ok(entries) if entries.is_empty() => return,
                Ok(entries) => {
                    tracing::info!(
                        partition = p,
                        count = entries.len(),
                        "took over pending requests"
                    );
                    if !self.handle(entries).await {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "claiming pending requests failed");
                    return;
                }
            }
        }
    }

    /// Applies entries in order and acknowledges those done. Returns false
    /// when some were left (lease lost, or Redis unreachable).
    pub(crate) async fn handle(&mut self, entries: Vec<Entry>) -> bool {
        if entries.is_empty() {
            return true;
        }
        let mut backoff = Duration::from_millis(50);
        let statuses = loop {
            match self.apply(&entries).await {
                Ok(statuses) => break statuses,
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    if let Err(e) = self.script.load_async(&mut self.conn).await {
                        tracing::warn!(error = %e, "loading the router script failed");
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::Server(_)) => {
                    // A request the script rejects must not hold up the rest.
                    tracing::error!(error = %e, "batch failed; applying one by one");
                    break self.apply_singly(&entries).await;
                }
                Err(e) => {
                    // Retried until done: newer requests must not overtake
                    // these (duplicates are recognized by the script).
                    tracing::warn!(error = %e, "applying requests failed; retrying");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        let mut pipe = redis::pipe();
        let mut all_done = true;
        for (stream, ids) in done_by_stream(&entries, &statuses, &mut all_done) {
            shared::store::ack_and_delete(&mut pipe, &stream, GROUP, &ids);
        }
        if let Err(e) = pipe.query_async::<()>(&mut self.conn).await {
            tracing::warn!(error = %e, "acknowledging requests failed");
        }
        all_done
    }

    async fn apply(&mut self, entries: &[Entry]) -> redis::RedisResult<Vec<String>> {
        let mut pipe = redis::pipe();
        let mut slots = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.req {
                Some(req) => {
                    let invocation = self.invocation(entry, req);
                    pipe.invoke_script(&invocation);
                    slots.push(true);
                }
                None => slots.push(false),
            }
        }
        let values: Vec<Value> = if pipe.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await?
        };
        let mut values = values.into_iter();
        Ok(slots
            .into_iter()
            .map(|decoded| {
                if !decoded {
                    return "undecodable".to_string();
                }
                match values.next() {
                    Some(v) => redis::from_redis_value(v).unwrap_or_else(|_| "bad-reply".into()),
                    None => "missing".into(),
                }
            })
            .collect())
    }

    async fn apply_singly(&mut self, entries: &[Entry]) -> Vec<String> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let status = match self.apply(std::slice::from_ref(entry)).await {
                Ok(mut s) => s.pop().unwrap_or_default(),
                Err(e) => {
                    tracing::error!(id = %entry.id, error = %e, "request dropped");
                    "failed".into()
                }
            };
            out.push(status);
        }
        out
    }

    fn invocation<'a>(&'a self, entry: &Entry, req: &Request) -> redis::ScriptInvocation<'a> {
        let partition = entry
            .stream
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or_else(|| shared::keys::partition_of(&req.user, self.partitions));
        let mut inv = self.script.prepare_invoke();
        inv.arg(self.keys.prefix())
            .arg(partition)
            .arg(&self.id)
            .arg(&entry.id)
            .arg(&req.edge)
            .arg(req.conn.to_string())
            .arg(req.rid.to_string())
            .arg(&req.user)
            .arg(&req.sid);
        match &req.op {
            Op::Say { text } => inv.arg("say").arg(self.history_cap).arg(text),
            Op::Logout => inv.arg("logout").arg(self.history_cap),
            Op::Login { .. } => inv.arg("login").arg(self.history_cap),
        };
        inv
    }
}

/// The entries to acknowledge, by stream: all but those fenced off.
fn done_by_stream(
    entries: &[Entry],
    statuses: &[String],
    all_done: &mut bool,
) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (entry, status) in entries.iter().zip(statuses) {
        match status.as_str() {
            "fenced" => *all_done = false,
            "ok" | "duplicate" | "stale" => {}
            other => tracing::warn!(id = %entry.id, status = other, "request not applied"),
        }
        if status == "fenced" {
            continue;
        }
        match out.iter_mut().find(|(s, _)| *s == entry.stream) {
            Some((_, ids)) => ids.push(entry.id.clone()),
            None => out.push((entry.stream.clone(), vec![entry.id.clone()])),
        }
    }
    out
}
