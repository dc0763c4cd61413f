//! Applying requests: one call of a library function per request
//! (shared/lua/router.lua), or per run of consecutive room lines,
//! pipelined per batch, then acknowledgement of what was applied.

use crate::steps::{Job, Steps};
use redis::Value;
use shared::config::Config;
use shared::consumer::{Consumer, Entry, EntryId};
use shared::envelope::{Op, Request};
use shared::keys::Keys;
use shared::protocol::LOBBY;
use shared::scripts::Call;
use shared::store::Conn;
use std::collections::HashMap;
use std::time::Duration;

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
    conn: Conn,
    consumer: Consumer,
    id: String,
    /// The settings the functions take (router limits, notices).
    cfg: Config,
    batch: usize,
    /// On a Redis Cluster: requests are applied in single-slot steps.
    steps: Option<Steps>,
}

/// Each user's [`Place`], by name.
pub(crate) type Places = HashMap<String, Place>;

/// Where a user's session is (empty strings: it has none), as read before
/// making the keys of its requests, then as each request of the pipeline
/// will leave it.
#[derive(Debug, Clone, Default)]
pub struct Place {
    pub sid: String,
    pub edge: String,
    pub room: String,
}

impl Place {
    /// The session after `req`, if it acts on it.
    fn after(&mut self, req: &Request) {
        if self.sid.is_empty() || self.sid != req.sid {
            return;
        }
        match &req.op {
            Op::Join { room } => self.room = room.clone(),
            Op::Leave => self.room = LOBBY.to_string(),
            Op::Logout => *self = Place::default(),
            _ => {}
        }
    }
}

impl Worker {
    pub(crate) fn new(
        cfg: &Config,
        redis: &shared::store::Redis,
        consumer: Consumer,
        until: crate::leases::Until,
    ) -> Worker {
        Worker {
            keys: redis.keys.clone(),
            conn: redis.conn.clone(),
            consumer,
            id: cfg.router.id.clone(),
            cfg: cfg.clone(),
            batch: cfg.router.batch,
            steps: redis.steps(cfg.notices).map(|mut s| {
                s.until = Some(until);
                Steps::new(s, cfg.clone())
            }),
        }
    }

    /// Ends the sessions of edges whose heartbeat ran out: see
    /// [`shared::store::reap_dead_edges`].
    pub(crate) async fn reap_dead_edges(&mut self) -> redis::RedisResult<u64> {
        match &self.steps {
            Some(steps) => steps.reap_dead_edges().await,
            None => {
                shared::store::reap_dead_edges(&mut self.conn, &self.keys, self.cfg.notices).await
            }
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

    /// What a fresh read needs before its scripts, in one round trip's
    /// time: the pending count of each run's partition (as
    /// [`Worker::pending`]) and where the users of `runs` are (as
    /// [`Worker::apply_runs`] takes them).
    pub(crate) async fn survey(
        &mut self,
        runs: &[(u32, Vec<Entry>)],
    ) -> redis::RedisResult<(Vec<u64>, Places)> {
        let parts: Vec<u32> = runs.iter().map(|(p, _)| *p).collect();
        let borrowed: Vec<(u32, &[Entry])> = runs.iter().map(|(p, e)| (*p, e.as_slice())).collect();
        let mut conn = self.conn.clone();
        tokio::try_join!(
            self.pending(&parts),
            places(&self.keys, &mut conn, &borrowed)
        )
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
            Err(e) if shared::store::transient(&e) => {
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
    pub(crate) async fn apply_runs(
        &mut self,
        runs: Vec<(u32, Vec<Entry>)>,
        places: Places,
    ) -> Vec<(u32, Outcome)> {
        let order = by_receive_time(&runs);
        let borrowed: Vec<(u32, &[Entry])> = runs.iter().map(|(p, e)| (*p, e.as_slice())).collect();
        let values = match self.run_pipeline(&borrowed, &order, places).await {
            Ok(values) => values,
            Err(e) => {
                // Not a warning yet: the careful path says what it finds.
                tracing::debug!(error = %e, "applying a batch failed; applying it partition by partition");
                let mut out = Vec::new();
                for (p, entries) in runs {
                    out.push((p, self.apply_in_order(p, entries).await));
                }
                return out;
            }
        };
        // Each run's answers, back in its own order.
        let mut answers: Vec<Vec<Value>> = vec![Vec::new(); runs.len()];
        for ((r, _), value) in values {
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

    /// Acknowledges and deletes the `done` ids of each run (on a cluster,
    /// then the decisions their user steps kept).
    async fn acknowledge(&self, runs: &[(&[Entry], Vec<String>)]) {
        let done: Vec<(&str, &[String])> = runs
            .iter()
            .filter_map(|(entries, done)| Some((entries.first()?.stream.as_str(), &done[..])))
            .collect();
        if let Err(e) = self.consumer.ack_and_delete(&done).await {
            // Left pending: applied again later, recognized as duplicates.
            tracing::warn!(error = %e, "acknowledging requests failed");
            return;
        }
        if self.steps.is_none() {
            return;
        }
        let mut pipe = redis::pipe();
        for (entries, done) in runs {
            for entry in entries.iter().filter(|e| done.contains(&e.id)) {
                if let Some(req) = &entry.req {
                    pipe.del(self.keys.decision(&req.user, &entry.id)).ignore();
                }
            }
        }
        // A decision left behind expires by itself.
        let _: redis::RedisResult<()> = pipe.query_async(&mut self.conn.clone()).await;
    }

    /// Applies the entries of one partition, in order, in one round trip.
    async fn apply(&mut self, p: u32, entries: &[Entry]) -> redis::RedisResult<Vec<String>> {
        let order: Vec<(usize, usize)> = (0..entries.len()).map(|i| (0, i)).collect();
        let places = places(&self.keys, &mut self.conn, &[(p, entries)]).await?;
        let values = self.run_pipeline(&[(p, entries)], &order, places).await?;
        let slots = entries.iter().map(|e| e.req.is_some()).collect();
        Ok(statuses(slots, &mut values.into_iter().map(|(_, v)| v)))
    }

    /// Calls the function of each decodable entry of `runs`, in `order`
    /// ((run, entry) pairs), in one pipeline, with `places` (see
    /// [`places`]) naming the keys of each user's room and edge. Returns
    /// each call's answer with its (run, entry).
    async fn run_pipeline(
        &mut self,
        runs: &[(u32, &[Entry])],
        order: &[(usize, usize)],
        mut places: Places,
    ) -> redis::RedisResult<Vec<((usize, usize), Value)>> {
        let mut calls: Vec<(RouterCall, Vec<(usize, usize)>)> = Vec::new();
        let mut jobs = Vec::new();
        let mut owners = Vec::new();
        // The id of each user's previous call in this pipeline.
        let mut prev: HashMap<&str, &str> = HashMap::new();
        for &(r, i) in order {
            let (p, entry) = (runs[r].0, &runs[r].1[i]);
            let Some(req) = &entry.req else { continue };
            let place = places.entry(req.user.clone()).or_default();
            let before = prev.get(req.user.as_str()).copied().unwrap_or("");
            if matches!(req.op, Op::Login { .. } | Op::Resume { .. }) {
                // Not the router's.
            } else if self.steps.is_some() {
                jobs.push(Job {
                    eid: &entry.id,
                    req,
                    prev: before,
                    at: place.clone(),
                });
                owners.push((r, i));
                // An end takes no place in the user's order (chat_c_end).
                if req.op != Op::Logout {
                    prev.insert(&req.user, &entry.id);
                }
            } else if let Some(call) = request_call(
                &self.keys, &self.id, &self.cfg, p, &entry.id, req, before, place,
            ) {
                match calls.last_mut() {
                    Some((run, owners)) if run.joins(&call, owners.len()) => {
                        run.extend(call);
                        owners.push((r, i));
                    }
                    _ => calls.push((call, vec![(r, i)])),
                }
                prev.insert(&req.user, &entry.id);
            }
            place.after(req);
        }
        if let Some(steps) = &self.steps {
            if owners.is_empty() {
                return Ok(Vec::new());
            }
            let values = steps.apply(&jobs).await?.into_iter();
            let values = values.map(|s| Value::BulkString(s.into_bytes()));
            return Ok(owners.into_iter().zip(values).collect());
        }
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (call, _) in &calls {
            pipe.add_command(call.call().into_cmd());
        }
        let values: Vec<Value> = shared::scripts::query_pipe(&mut self.conn, &pipe).await?;
        let mut out = Vec::new();
        for ((_, owners), value) in calls.into_iter().zip(values) {
            let answers = answers(value, owners.len());
            out.extend(owners.into_iter().zip(answers));
        }
        Ok(out)
    }

    /// After a batch failed on a script error: each entry alone; what
    /// [`judge`] stops at (a transient failure, `retry`, `moved`, `fenced`)
    /// stops here too and leaves the rest for a retry: each entry goes
    /// alone, without the id of the user's request before it, so one
    /// applied after an entry left for later would skip its turn.
    async fn apply_singly(&mut self, p: u32, entries: &[Entry]) -> Vec<String> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let status = match self.apply(p, std::slice::from_ref(entry)).await {
                Ok(mut s) => s.pop().unwrap_or_default(),
                Err(e) if shared::store::transient(&e) => "retry".into(),
                Err(e) => {
                    tracing::error!(id = %entry.id, error = %e, "request failed");
                    "failed".into()
                }
            };
            let stop = matches!(status.as_str(), "retry" | "moved" | "fenced");
            out.push(status);
            if stop {
                break;
            }
        }
        out
    }
}

/// Where the session of each user with a request in `runs` is now, read in
/// one round trip (a script finding it changed since answers `moved`).
async fn places(
    keys: &Keys,
    conn: &mut Conn,
    runs: &[(u32, &[Entry])],
) -> redis::RedisResult<Places> {
    let mut users: Vec<&str> = runs
        .iter()
        .flat_map(|(_, entries)| entries.iter())
        .filter_map(|e| e.req.as_ref().map(|r| r.user.as_str()))
        .collect();
    users.sort_unstable();
    users.dedup();
    if users.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    for user in &users {
        pipe.cmd("HMGET")
            .arg(keys.session(user))
            .arg("sid")
            .arg("edge")
            .arg("room");
    }
    let found: Vec<(Option<String>, Option<String>, Option<String>)> =
        pipe.query_async(conn).await?;
    Ok(users
        .into_iter()
        .zip(found)
        .map(|(user, (sid, edge, room))| {
            let place = Place {
                sid: sid.unwrap_or_default(),
                edge: edge.unwrap_or_default(),
                room: room.unwrap_or_default(),
            };
            (user.to_string(), place)
        })
        .collect())
}

/// The most room lines one `chat_say` call takes: a call holds Redis up
/// for its whole run (about 10 µs a line).
const SAY_RUN: usize = 64;

/// A call of the router's library: its function, keys and arguments.
/// Consecutive room lines go in one `chat_say` call (see
/// [`RouterCall::joins`]).
#[derive(Debug)]
pub struct RouterCall {
    name: &'static str,
    keys: Vec<String>,
    args: Vec<String>,
}

impl RouterCall {
    /// Whether `next` may join this call, which holds `n` requests: room
    /// lines do, up to [`SAY_RUN`] (shared/lua/router.lua).
    pub fn joins(&self, next: &RouterCall, n: usize) -> bool {
        self.name == "chat_say" && next.name == "chat_say" && n < SAY_RUN
    }

    /// Adds `next`'s request after this call's (see [`RouterCall::joins`]).
    pub fn extend(&mut self, next: RouterCall) {
        self.keys.extend(next.keys);
        self.args.extend(next.args);
    }

    pub fn call(&self) -> Call {
        let call = Call::new(self.name, &self.keys);
        self.args.iter().fold(call, |call, a| call.arg(a))
    }
}

/// The answer of each of a call's `n` requests: a run of room lines
/// answers their statuses, space-separated. Any other number of them (a
/// library of another version loaded meanwhile) says nothing of which
/// were applied: each is tried again (`retry`), and those applied answer
/// `duplicate` then.
fn answers(value: Value, n: usize) -> Vec<Value> {
    if n == 1 {
        return vec![value];
    }
    let one = |s: &str| Value::BulkString(s.as_bytes().to_vec());
    let all: String = redis::from_redis_value(value).unwrap_or_default();
    let statuses: Vec<Value> = all.split(' ').map(one).collect();
    if statuses.len() == n {
        return statuses;
    }
    tracing::warn!(expected = n, got = %all, "a run's statuses do not match its lines; trying again");
    vec![one("retry"); n]
}

/// The call that applies `req`, stream entry `entry_id` of partition `p`,
/// for router `owner` with the limits of `cfg` (shared/lua/router.lua says
/// what each key and argument is), with its session at `at` and `prev` the
/// id of the same user's call before it ('' for the first); `None` for a
/// request that is not the router's.
#[allow(clippy::too_many_arguments)]
pub fn request_call(
    k: &Keys,
    owner: &str,
    cfg: &Config,
    p: u32,
    entry_id: &str,
    req: &Request,
    prev: &str,
    at: &Place,
) -> Option<RouterCall> {
    let (user, room) = (req.user.as_str(), at.room.as_str());
    let r = &cfg.router;
    // How long histories live (cap, ttl), and where notices go; made for
    // the requests that take them only (this runs for every request).
    let retention = || [r.history_cap.to_string(), r.history_ttl_ms.to_string()];
    let notices = || cfg.notices.args();
    let listing_max = || r.listing_max.to_string();
    let reply_max = || r.reply_max_bytes.to_string();
    // Histories are trimmed in whole nodes: a listing stops at the cap.
    let shown = |n: &u32| u64::from(*n).min(r.history_cap);
    let (name, keys, args): (&str, Vec<String>, Vec<String>) = match &req.op {
        Op::Say { text } => (
            "chat_say",
            vec![k.history(room), k.room_edges(room)],
            retention()
                .into_iter()
                .chain([k.lines_channel(""), text.clone()])
                .collect(),
        ),
        Op::Join { room: to } => (
            "chat_join",
            vec![
                k.room(room),
                k.room(to),
                k.rooms(),
                k.room_sizes(),
                k.resume(user),
                k.room_edges(room),
                k.room_edges(to),
            ],
            [vec![to.clone(), k.lines_channel("")], notices().to_vec()].concat(),
        ),
        Op::Leave => (
            "chat_leave",
            vec![
                k.room(room),
                k.room(LOBBY),
                k.rooms(),
                k.room_sizes(),
                k.resume(user),
                k.room_edges(room),
                k.room_edges(LOBBY),
            ],
            [vec![LOBBY.into(), k.lines_channel("")], notices().to_vec()].concat(),
        ),
        Op::Rooms => (
            "chat_rooms",
            vec![k.room_sizes()],
            vec![LOBBY.into(), listing_max()],
        ),
        Op::Who { room: of } => {
            let of = of.as_deref().unwrap_or(room);
            ("chat_who", vec![k.room(of)], vec![of.into(), listing_max()])
        }
        Op::Subscribe { target } | Op::Unsubscribe { target } => (
            if matches!(req.op, Op::Subscribe { .. }) {
                "chat_subscribe"
            } else {
                "chat_unsubscribe"
            },
            vec![k.user(target), k.subscriptions(user), k.subscribers(target)],
            vec![target.clone(), r.max_subscriptions.to_string()],
        ),
        Op::Subscriptions => (
            "chat_subscriptions",
            vec![k.subscriptions(user)],
            vec![listing_max()],
        ),
        Op::Publish { text } => (
            "chat_publish",
            vec![
                k.publications(user),
                k.subscribers(user),
                k.online(),
                k.edges(),
            ],
            retention()
                .into_iter()
                .chain([k.lines_channel(""), text.clone()])
                .collect(),
        ),
        Op::Msg { to, text } => (
            "chat_msg",
            vec![
                k.user(to),
                k.dm(user, to),
                k.session(to),
                k.inbox(to),
                k.inbox_counts(to),
            ],
            retention()
                .into_iter()
                .chain([
                    to.clone(),
                    text.clone(),
                    k.edge_channel(""),
                    r.inbox_per_sender.to_string(),
                ])
                .collect(),
        ),
        Op::History { with: None, n } => (
            "chat_history",
            vec![k.history(room)],
            vec![
                shown(n).to_string(),
                room.into(),
                String::new(),
                reply_max(),
            ],
        ),
        Op::History { with: Some(w), n } => (
            "chat_history",
            vec![k.dm(user, w), k.user(w)],
            vec![
                shown(n).to_string(),
                format!("@{w}"),
                "dm".into(),
                reply_max(),
            ],
        ),
        Op::KeySet { key, fingerprint } => (
            "chat_key_set",
            vec![k.user(user)],
            vec![key.clone(), fingerprint.clone()],
        ),
        Op::Key { target } => ("chat_key", vec![k.user(target)], vec![target.clone()]),
        Op::Logout => (
            "chat_logout",
            vec![
                k.edge_sessions(&at.edge),
                k.online(),
                k.room(room),
                k.rooms(),
                k.room_sizes(),
                k.resume(user),
                k.room_edges(room),
            ],
            [vec![k.lines_channel("")], notices().to_vec()].concat(),
        ),
        Op::Delivered { upto } => (
            "chat_delivered",
            vec![k.inbox(user), k.inbox_counts(user)],
            vec![upto.clone()],
        ),
        Op::Login { .. } | Op::Resume { .. } => return None,
    };
    let keys = [k.router_lease(p), k.applied(user), k.session(user)]
        .into_iter()
        .chain(keys)
        .collect();
    let head = [
        owner.to_string(),
        entry_id.to_string(),
        prev.to_string(),
        k.edge_channel(&req.edge),
        req.conn.to_string(),
        req.rid.to_string(),
        user.to_string(),
        req.sid.clone(),
        at.edge.clone(),
        room.to_string(),
    ];
    Some(RouterCall {
        name,
        keys,
        args: head.into_iter().chain(args).collect(),
    })
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
            // `moved`: a session changed between reading it and the call.
            "retry" | "moved" => outcome = Outcome::Retry,
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
    fn a_runs_statuses_are_split_and_a_wrong_count_is_tried_again() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(answers(bulk("ok"), 1), [bulk("ok")]);
        assert_eq!(
            answers(bulk("ok duplicate"), 2),
            [bulk("ok"), bulk("duplicate")]
        );
        assert_eq!(answers(bulk("ok"), 3), vec![bulk("retry"); 3]);
        assert_eq!(answers(Value::Nil, 2), vec![bulk("retry"); 2]);
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
