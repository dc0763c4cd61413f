//! Applying requests: one Lua script call per request, pipelined per batch,
//! then acknowledgement of what was applied.

use redis::aio::ConnectionManager;
use redis::{Script, Value};
use shared::config::Config;
use shared::consumer::{Consumer, Entry, EntryId};
use shared::envelope::{Op, Request};
use shared::keys::Keys;
use shared::store::LUA_PRELUDE;
use std::time::Duration;

/// ARGV: prefix, partition, owner, entry id, edge, conn, rid, user, sid,
/// op, history cap, then the op's arguments (up to three; for `msg` and
/// `history @user` the last is the conversation's stream, named in Rust).
///
/// Returns `ok`, `fenced` (this router no longer owns the partition: the
/// entry is left for the new owner), `duplicate` (applied before), `stale`
/// (the session is no longer current) or `unknown-op`.
///
/// Every reply is published before the notices of the same change, so the
/// edge applies the change (moves the connection) before it sees them.
const ROUTER_LUA: &str = r#"
local part, owner, eid = ARGV[2], ARGV[3], ARGV[4]
local edge, conn, rid, user, sid, op, cap = ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local a1, a2, a3 = ARGV[12], ARGV[13], ARGV[14]
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
  if rid ~= '0' then reply(edge, conn, rid, nil, {kind = 'close', reason = 'quit', sid = sid}) end
  if sess[3] == sid then end_session(user, sess) end
  return 'ok'
end
if op == 'delivered' then
  -- The queued messages up to this id were shown (to whichever session):
  -- drop them. MINID keeps the ids from the next one on.
  local ms, seq = string.match(a1, '^(%d+)-(%d+)$')
  if not ms then return 'ok' end
  local inbox = P .. 'inbox:' .. user
  redis.call('XTRIM', inbox, 'MINID', ms .. '-' .. (tonumber(seq) + 1))
  if redis.call('XLEN', inbox) == 0 then redis.call('DEL', inbox) end
  return 'ok'
end
if sess[3] ~= sid then return 'stale' end
local room = sess[4]

local function answer(lines, effect) reply(edge, conn, rid, lines, effect) return 'ok' end
local function fail(code, text) return answer({'ERR ' .. code .. ' ' .. text}) end
local function exists(u) return redis.call('EXISTS', P .. 'user:' .. u) == 1 end
-- Names sort by their bytes (Lua's < follows the server's locale).
local function sorted(names)
  table.sort(names, function(a, b)
    for i = 1, math.min(#a, #b) do
      local x, y = string.byte(a, i), string.byte(b, i)
      if x ~= y then return x < y end
    end
    return #a < #b
  end)
  return names
end
local function listing(kind, names, final)
  local lines = {}
  for _, n in ipairs(names) do lines[#lines + 1] = kind .. ' ' .. n end
  lines[#lines + 1] = final
  return answer(lines)
end
-- Ids take the time the edge received the request (the request's own id);
-- if the stream already has a later one, the next id in that one's ms (read
-- only then, as the rare case: another partition's later message first).
local function add_history(key, ...)
  local ms = string.match(eid, '^(%d+)-')
  local id = redis.pcall('XADD', key, 'MAXLEN', cap, ms .. '-*', ...)
  if type(id) == 'table' and id.err then
    local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
    ms = top and string.match(top[1], '^(%d+)-') or ms
    id = redis.call('XADD', key, 'MAXLEN', cap, ms .. '-*', ...)
  end
  return id
end
local function move(to, final)
  if to == room then return answer({final}) end
  leave_room(user, room)
  redis.call('SADD', P .. 'room:' .. to, user)
  redis.call('SADD', P .. 'rooms', to)
  redis.call('HSET', P .. 'session:' .. user, 'room', to)
  answer({final}, {kind = 'room', sid = sid, room = to})
  sys(room, user, 'left')
  sys(to, user, 'joined')
  return 'ok'
end

if op == 'say' then
  local id = add_history(P .. 'history:' .. room, 'from', user, 'text', a1)
  redis.call('PUBLISH', P .. 'ch:room:' .. room, 'MSG ' .. room .. ' ' .. id .. ' ' .. user .. ' ' .. a1)
  return 'ok'
elseif op == 'join' then
  return move(a1, 'OK JOIN ' .. a1)
elseif op == 'leave' then
  if room == 'lobby' then return fail('not-in-room', 'you are in the lobby') end
  return move('lobby', 'OK LEAVE ' .. room)
elseif op == 'rooms' then
  local names = redis.call('SMEMBERS', P .. 'rooms')
  if redis.call('SISMEMBER', P .. 'rooms', 'lobby') == 0 then names[#names + 1] = 'lobby' end
  sorted(names)
  for i, r in ipairs(names) do names[i] = r .. ' ' .. redis.call('SCARD', P .. 'room:' .. r) end
  return listing('ROOM', names, 'OK ROOMS ' .. #names)
elseif op == 'who' then
  local r = a1 ~= '' and a1 or room
  local names = sorted(redis.call('SMEMBERS', P .. 'room:' .. r))
  return listing('USER', names, 'OK WHO ' .. r .. ' ' .. #names)
elseif op == 'subscribe' then
  if not exists(a1) then return fail('no-such-user', 'no such user') end
  if redis.call('SADD', P .. 'subscriptions:' .. user, a1) == 1 then
    redis.call('SADD', P .. 'subscribers:' .. a1, user)
    count_subscriber(a1, 1)
  end
  return answer({'OK SUBSCRIBE ' .. a1}, {kind = 'subscribe', sid = sid, user = a1})
elseif op == 'unsubscribe' then
  if redis.call('SREM', P .. 'subscriptions:' .. user, a1) == 1 then
    redis.call('SREM', P .. 'subscribers:' .. a1, user)
    count_subscriber(a1, -1)
  elseif not exists(a1) then
    return fail('no-such-user', 'no such user')
  end
  return answer({'OK UNSUBSCRIBE ' .. a1}, {kind = 'unsubscribe', sid = sid, user = a1})
elseif op == 'subscriptions' then
  local names = sorted(redis.call('SMEMBERS', P .. 'subscriptions:' .. user))
  return listing('SUB', names, 'OK SUBSCRIPTIONS ' .. #names)
elseif op == 'publish' then
  local id = add_history(P .. 'publications:' .. user, 'text', a1)
  redis.call('PUBLISH', P .. 'ch:pub:' .. user, 'PUB ' .. id .. ' ' .. user .. ' ' .. a1)
  local n = redis.call('GET', P .. 'online-subscribers:' .. user) or '0'
  return answer({'OK PUBLISH ' .. id .. ' ' .. n})
elseif op == 'msg' then
  if not exists(a1) then return fail('no-such-user', 'no such user') end
  local id = add_history(a3, 'from', user, 'to', a1, 'text', a2)
  local to = redis.call('HMGET', P .. 'session:' .. a1, 'edge', 'conn', 'sid')
  if to[3] then
    reply(to[1], to[2], nil, {'DM ' .. id .. ' ' .. user .. ' ' .. a2}, nil, to[3])
    return answer({'OK MSG ' .. a1 .. ' ' .. id})
  end
  redis.call('XADD', P .. 'inbox:' .. a1, 'MAXLEN', cap, '*', 'id', id, 'from', user, 'text', a2)
  return answer({'OK MSG ' .. a1 .. ' ' .. id .. ' queued'})
elseif op == 'history' then
  local key, label = P .. 'history:' .. room, room
  if a1 ~= '' then
    key, label = a3, '@' .. a1
    if not exists(a1) and redis.call('EXISTS', key) == 0 then
      return fail('no-such-user', 'no such user')
    end
  end
  local entries = redis.call('XREVRANGE', key, '+', '-', 'COUNT', a2)
  local lines = {}
  for i = #entries, 1, -1 do
    local f = fields(entries[i][2])
    lines[#lines + 1] = 'HIST ' .. label .. ' ' .. entries[i][1] .. ' ' .. (f.from or '?') .. ' ' .. (f.text or '')
  end
  lines[#lines + 1] = 'OK HISTORY ' .. #entries
  return answer(lines)
end
return 'unknown-op'
"#;

/// How a run of requests of one partition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// All applied (or recognized as applied before) and acknowledged.
    Done,
    /// This router no longer owns the partition.
    Fenced,
    /// Redis failed for a while: what is left stays pending, to be retried
    /// in order before anything newer.
    Retry,
}

pub(crate) struct Worker {
    keys: Keys,
    conn: ConnectionManager,
    consumer: Consumer,
    id: String,
    history_cap: u64,
    batch: usize,
    script: Script,
}

impl Worker {
    pub(crate) fn new(
        cfg: &Config,
        keys: Keys,
        conn: ConnectionManager,
        consumer: Consumer,
    ) -> Worker {
        Worker {
            keys,
            conn,
            consumer,
            id: cfg.router.id.clone(),
            history_cap: cfg.router.history_cap,
            batch: cfg.router.batch,
            script: Script::new(&format!("{LUA_PRELUDE}{ROUTER_LUA}")),
        }
    }

    /// Number of entries pending (read, not acknowledged) on each
    /// partition, whoever read them.
    pub(crate) async fn pending(&self, partitions: &[u32]) -> redis::RedisResult<Vec<u64>> {
        let streams: Vec<String> = partitions
            .iter()
            .map(|p| self.keys.router_requests(*p))
            .collect();
        self.consumer.pending_counts(&streams).await
    }

    /// Applies, in id order, everything pending on partition `p`: requests
    /// a previous owner read but did not finish, and our own that failed.
    /// Done before anything newer of `p`, so order holds.
    pub(crate) async fn recover(&mut self, p: u32) -> Outcome {
        let stream = self.keys.router_requests(p);
        loop {
            let claimed = self
                .consumer
                .claim(&stream, Duration::ZERO, self.batch)
                .await;
            match claimed {
                Ok(entries) if entries.is_empty() => return Outcome::Done,
                Ok(entries) => {
                    tracing::info!(
                        partition = p,
                        count = entries.len(),
                        "applying pending requests"
                    );
                    let outcome = self.apply_in_order(p, entries).await;
                    if outcome != Outcome::Done {
                        return outcome;
                    }
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "claiming pending requests failed");
                    return Outcome::Retry;
                }
            }
        }
    }

    /// Applies entries of partition `p` in order and acknowledges those
    /// done.
    pub(crate) async fn apply_in_order(&mut self, p: u32, entries: Vec<Entry>) -> Outcome {
        let statuses = match self.apply(p, &entries).await {
            Ok(statuses) => statuses,
            Err(e) if e.code() == Some("NOSCRIPT") => {
                // Redis lost its script cache (restart): load and go on.
                match self.script.load_async(&mut self.conn).await {
                    Ok(_) => return Box::pin(self.apply_in_order(p, entries)).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "loading the router script failed");
                        return Outcome::Retry;
                    }
                }
            }
            Err(e) if transient(&e) => {
                tracing::warn!(error = %e, "applying requests failed; will retry");
                return Outcome::Retry;
            }
            Err(e) => {
                // One request the script rejects must not hold up the rest.
                tracing::error!(error = %e, "batch failed; applying one by one");
                self.apply_singly(p, &entries).await
            }
        };
        let (outcome, done) = judge(&entries, &statuses);
        self.acknowledge(&[(&entries, done)]).await;
        outcome
    }

    /// Applies the runs of several partitions with one round trip for the
    /// scripts and one for the acknowledgements, whatever their number.
    /// If the round trip fails, each run takes the careful path of
    /// [`Worker::apply_in_order`] (requests already applied are recognized
    /// as duplicates there).
    ///
    /// The scripts go in the order the edges received the requests (their
    /// entry ids), across partitions: each partition keeps its order, and
    /// a room's history ids follow receive times without a correction.
    pub(crate) async fn apply_runs(&mut self, runs: Vec<(u32, Vec<Entry>)>) -> Vec<(u32, Outcome)> {
        let mut pipe = redis::pipe();
        // The run of each script in the pipeline, in its order.
        let mut owners = Vec::new();
        for (r, i) in by_receive_time(&runs) {
            let (p, entry) = (runs[r].0, &runs[r].1[i]);
            if let Some(req) = &entry.req {
                pipe.invoke_script(&self.invocation(p, entry, req));
                owners.push(r);
            }
        }
        let values: Vec<Value> = if pipe.is_empty() {
            Vec::new()
        } else {
            match pipe.query_async(&mut self.conn).await {
                Ok(values) => values,
                Err(e) => {
                    // Not a warning yet: the careful path says what it
                    // finds (the first batch after a start or a Redis
                    // restart comes here to load the script).
                    tracing::debug!(error = %e, "applying a batch failed; applying it partition by partition");
                    let mut out = Vec::new();
                    for (p, entries) in runs {
                        out.push((p, self.apply_in_order(p, entries).await));
                    }
                    return out;
                }
            }
        };
        // Each run's answers, back in its own order.
        let mut answers: Vec<Vec<Value>> = vec![Vec::new(); runs.len()];
        for (r, value) in owners.into_iter().zip(values) {
            answers[r].push(value);
        }
        let mut outcomes = Vec::new();
        let mut acks = Vec::new();
        for ((p, entries), answers) in runs.iter().zip(answers) {
            let slots = entries.iter().map(|e| e.req.is_some()).collect();
            let statuses = statuses(slots, &mut answers.into_iter());
            let (outcome, done) = judge(entries, &statuses);
            outcomes.push((*p, outcome));
            acks.push((entries.as_slice(), done));
        }
        self.acknowledge(&acks).await;
        outcomes
    }

    /// Acknowledges and deletes the `done` ids of each run.
    async fn acknowledge(&self, runs: &[(&[Entry], Vec<String>)]) {
        let done: Vec<(&str, &[String])> = runs
            .iter()
            .filter_map(|(entries, done)| Some((entries.first()?.stream.as_str(), &done[..])))
            .collect();
        if let Err(e) = self.consumer.ack_and_delete(&done).await {
            // Left pending: applied again later, recognized as duplicates.
            tracing::warn!(error = %e, "acknowledging requests failed");
        }
    }

    /// Adds the script call of every decodable entry to `pipe`; says which
    /// entries have one.
    fn invocations(&self, pipe: &mut redis::Pipeline, p: u32, entries: &[Entry]) -> Vec<bool> {
        entries
            .iter()
            .map(|entry| match &entry.req {
                Some(req) => {
                    pipe.invoke_script(&self.invocation(p, entry, req));
                    true
                }
                None => false,
            })
            .collect()
    }

    async fn apply(&mut self, p: u32, entries: &[Entry]) -> redis::RedisResult<Vec<String>> {
        let mut pipe = redis::pipe();
        let slots = self.invocations(&mut pipe, p, entries);
        let values: Vec<Value> = if pipe.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await?
        };
        Ok(statuses(slots, &mut values.into_iter()))
    }

    /// After a batch failed on a script error: each entry alone; a
    /// transient failure stops here and leaves the rest for a retry.
    async fn apply_singly(&mut self, p: u32, entries: &[Entry]) -> Vec<String> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let status = match self.apply(p, std::slice::from_ref(entry)).await {
                Ok(mut s) => s.pop().unwrap_or_default(),
                Err(e) if transient(&e) => "retry".into(),
                Err(e) => {
                    tracing::error!(id = %entry.id, error = %e, "request failed");
                    "failed".into()
                }
            };
            let stop = status == "retry";
            out.push(status);
            if stop {
                break;
            }
        }
        out
    }

    fn invocation<'a>(
        &'a self,
        p: u32,
        entry: &Entry,
        req: &Request,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(self.keys.prefix())
            .arg(p)
            .arg(&self.id)
            .arg(&entry.id)
            .arg(&req.edge)
            .arg(req.conn.to_string())
            .arg(req.rid.to_string())
            .arg(&req.user)
            .arg(&req.sid);
        let (count, dm): (String, String);
        let (op, args): (&str, [&str; 3]) = match &req.op {
            Op::Say { text } => ("say", [text, "", ""]),
            Op::Logout => ("logout", ["", "", ""]),
            Op::Join { room } => ("join", [room, "", ""]),
            Op::Leave => ("leave", ["", "", ""]),
            Op::Rooms => ("rooms", ["", "", ""]),
            Op::Who { room } => ("who", [room.as_deref().unwrap_or(""), "", ""]),
            Op::Subscribe { target } => ("subscribe", [target, "", ""]),
            Op::Unsubscribe { target } => ("unsubscribe", [target, "", ""]),
            Op::Subscriptions => ("subscriptions", ["", "", ""]),
            Op::Publish { text } => ("publish", [text, "", ""]),
            Op::Delivered { upto } => ("delivered", [upto, "", ""]),
            Op::Msg { to, text } => {
                dm = self.keys.dm(&req.user, to);
                ("msg", [to, text, &dm])
            }
            Op::History { with, n } => {
                count = n.to_string();
                dm = with
                    .as_ref()
                    .map(|w| self.keys.dm(&req.user, w))
                    .unwrap_or_default();
                ("history", [with.as_deref().unwrap_or(""), &count, &dm])
            }
            Op::Login { .. } => ("login", ["", "", ""]),
        };
        inv.arg(op).arg(self.history_cap).arg(&args[..]);
        inv
    }
}

/// (run, entry) pairs of `runs` by entry id (`<ms>-<seq>`, the time the
/// request reached Redis); each run's own order is kept.
fn by_receive_time(runs: &[(u32, Vec<Entry>)]) -> Vec<(usize, usize)> {
    let mut order: Vec<(usize, usize)> = runs
        .iter()
        .enumerate()
        .flat_map(|(r, (_, entries))| (0..entries.len()).map(move |i| (r, i)))
        .collect();
    // Stable: equal ids (other streams) keep run order, and ids within a
    // stream only grow.
    order.sort_by_key(|&(r, i)| EntryId::parse(&runs[r].1[i].id).unwrap_or_default());
    order
}

/// The status of each entry: the script's answer, taken from `values` in
/// turn, or why there was none.
fn statuses(slots: Vec<bool>, values: &mut impl Iterator<Item = Value>) -> Vec<String> {
    slots
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
        .collect()
}

/// The run's outcome and the ids that may be acknowledged: those before
/// the first entry that must be tried again.
fn judge(entries: &[Entry], statuses: &[String]) -> (Outcome, Vec<String>) {
    let mut outcome = Outcome::Done;
    let mut done = Vec::new();
    for (entry, status) in entries.iter().zip(statuses) {
        match status.as_str() {
            "fenced" => outcome = Outcome::Fenced,
            "retry" => outcome = Outcome::Retry,
            "ok" | "duplicate" | "stale" => done.push(entry.id.clone()),
            other => {
                let (user, sid) = entry
                    .req
                    .as_ref()
                    .map_or(("", ""), |r| (r.user.as_str(), r.sid.as_str()));
                tracing::error!(id = %entry.id, user, sid, status = other, "request dropped");
                done.push(entry.id.clone());
            }
        }
        if outcome != Outcome::Done {
            break; // nothing after it may be acknowledged out of order
        }
    }
    (outcome, done)
}

/// Errors that pass (Redis restarting, failing over, busy, out of reach),
/// as opposed to a request the script cannot apply.
fn transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.code(),
            Some("OOM" | "BUSY" | "LOADING" | "READONLY" | "MASTERDOWN" | "TRYAGAIN" | "NOSCRIPT")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: u32, ids: &[&str]) -> (u32, Vec<Entry>) {
        let entries = ids
            .iter()
            .map(|id| Entry {
                stream: format!("s{p}"),
                id: id.to_string(),
                req: None,
            })
            .collect();
        (p, entries)
    }

    #[test]
    fn runs_interleave_by_receive_time_each_keeping_its_order() {
        let runs = [
            run(0, &["5-0", "9-0", "10-0"]),
            run(1, &["5-0", "6-1", "11-0"]),
        ];
        assert_eq!(
            by_receive_time(&runs),
            [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (1, 2)]
        );
    }
}
