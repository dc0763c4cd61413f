//! Applying requests on a Redis Cluster: each request's single-slot steps
//! (shared/lua/cluster.lua), then its replies and lines published on the
//! edges' sharded channels (docs/design.md, "Running on a Redis Cluster").
//!
//! The user steps of a batch go in one pipeline (split by slot). Then the
//! requests are carried out one after another, in the batch's order: a
//! request's later steps (the room's, the other user's, the directory's),
//! in the order their answers need, then its `SPUBLISH`es (room lines in a
//! row together: one pipeline of room steps, one of publishes). A step that
//! answers `retry` (the same user's step before it there has not applied:
//! another router's, or one of ours that failed) stops that user's
//! requests here; they are applied again later, their user steps answering
//! with the decisions they kept.

use crate::process::Place;
use redis::{RedisResult, Value};
use serde_json::Value as Json;
use shared::config::Config;
use shared::envelope::{Effect, Op, Reply, Request};
use shared::line::ServerLine;
use shared::protocol::{ErrorCode, LOBBY};
use shared::scripts::Call;
use shared::steps::{json, num, str_of, Done, Halt, Sends};
use std::collections::{HashMap, HashSet};
use std::ops::Deref;

/// A request of a batch, in the batch's order.
pub(crate) struct Job<'a> {
    pub eid: &'a str,
    pub req: &'a Request,
    /// The same user's request before it in the batch ('' if none).
    pub prev: &'a str,
    /// Its session as read before the batch.
    pub at: Place,
}

/// The router's steps: the shared ones ([`shared::steps::Steps`], which
/// it derefs to) and each request's own.
pub(crate) struct Steps {
    base: shared::steps::Steps,
    cfg: Config,
}

impl Deref for Steps {
    type Target = shared::steps::Steps;

    fn deref(&self) -> &shared::steps::Steps {
        &self.base
    }
}

impl Steps {
    pub(crate) fn new(base: shared::steps::Steps, cfg: Config) -> Steps {
        Steps { base, cfg }
    }

    /// Applies `jobs`; the status of each, as the one-Redis functions
    /// answer (`ok`, `duplicate`, `retry`, `moved`, `stale`, …).
    pub(crate) async fn apply(&self, jobs: &[Job<'_>]) -> RedisResult<Vec<String>> {
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.add_command(self.user_step(job).into_cmd());
        }
        let values: Vec<Value> = shared::scripts::query_pipe(&mut self.conn.clone(), &pipe).await?;
        let answers: Vec<Vec<String>> = values
            .into_iter()
            .map(|v| redis::from_redis_value(v).unwrap_or_else(|_| vec!["bad-reply".into()]))
            .collect();
        // In the batch's order, one request after another, so that what
        // the steps do in a room and what is published about it keep one
        // order (a join's reply before the lines routed after it). Lines in
        // a row, whoever says them, go together: their room steps in one
        // round trip, their publishes in another.
        let said: Vec<Option<(String, Json)>> =
            jobs.iter().zip(&answers).map(|(j, a)| said(j, a)).collect();
        let mut statuses = vec![String::new(); jobs.len()];
        let mut halted: HashSet<&str> = HashSet::new();
        let mut i = 0;
        while i < jobs.len() {
            let lines = (i..jobs.len()).take_while(|&j| said[j].is_some()).count();
            let done = if lines > 1 {
                let run: Vec<usize> = (i..i + lines).collect();
                i += lines;
                self.say_run(jobs, &said, &run, &mut halted).await
            } else if halted.contains(jobs[i].req.user.as_str()) {
                i += 1;
                vec![(i - 1, "retry".to_string())]
            } else {
                i += 1;
                vec![(i - 1, self.carry_out(&jobs[i - 1], &answers[i - 1]).await)]
            };
            for (j, status) in done {
                tracing::debug!(id = jobs[j].eid, status, "applied in steps");
                if status == "retry" {
                    // Nothing of this user's may overtake what waits.
                    halted.insert(&jobs[j].req.user);
                }
                statuses[j] = status;
            }
        }
        Ok(statuses)
    }

    /// The user step of `job` (the user's slot).
    fn user_step(&self, job: &Job) -> Call {
        let (k, req, user) = (&self.k, job.req, job.req.user.as_str());
        let r = &self.cfg.router;
        let own = |kind: &str, keys: &[String]| {
            let mut all = vec![k.applied(user), k.session(user), k.decision(user, job.eid)];
            all.extend_from_slice(keys);
            self.admit(Call::new("chat_c_own", &all), job)
                .arg(kind)
                .arg(user)
        };
        let numbered = |name: &str, more: &[String]| {
            let mut all = vec![
                k.applied(user),
                k.session(user),
                k.decision(user, job.eid),
                k.routes(user),
                k.decisions(user),
            ];
            all.extend_from_slice(more);
            self.admit(Call::new(name, &all), job)
        };
        let retention = |c: Call| c.arg(r.history_cap).arg(r.history_ttl_ms);
        match &req.op {
            Op::Say { .. } => numbered("chat_c_say", &[]),
            Op::Join { room } => numbered("chat_c_join", &[k.resume(user)]).arg(room).arg(""),
            Op::Leave => numbered("chat_c_join", &[k.resume(user)])
                .arg(LOBBY)
                .arg("leave"),
            Op::Publish { text } => {
                retention(numbered("chat_c_publish", &[k.publications(user)]).arg(text))
            }
            Op::Subscribe { target } | Op::Unsubscribe { target } => {
                numbered("chat_c_subscribe", &[k.subscriptions(user)])
                    .arg(target)
                    .arg(r.max_subscriptions)
                    .arg(subscribing(&req.op))
            }
            Op::Msg { to, .. } => numbered("chat_c_msg", &[]).arg(to),
            Op::History { with: None, .. } | Op::Who { room: None } => {
                numbered("chat_c_read", &[]).arg("")
            }
            Op::History { with: Some(w), .. } => {
                numbered("chat_c_read", &[]).arg(format!("dm:{w}"))
            }
            Op::Who { room: Some(r) } => numbered("chat_c_read", &[]).arg(format!("room:{r}")),
            Op::Logout => self.end(user, &req.edge, &req.sid, req.rid != 0),
            Op::Subscriptions => own("subscriptions", &[k.subscriptions(user)]).arg(r.listing_max),
            Op::KeySet { key, fingerprint } => {
                own("key_set", &[k.user(user)]).arg(key).arg(fingerprint)
            }
            Op::Delivered { upto } => {
                own("delivered", &[k.inbox(user), k.inbox_counts(user)]).arg(upto)
            }
            Op::Rooms | Op::Key { .. } => own("admit", &[]),
            // Not the router's: never routed here (process.rs skips them).
            Op::Login { .. } | Op::Resume { .. } => own("admit", &[]),
        }
    }

    /// A user step's first five arguments.
    fn admit(&self, call: Call, job: &Job) -> Call {
        call.arg(job.eid)
            .arg(job.prev)
            .arg(&job.req.sid)
            .arg(&job.at.edge)
            .arg(&job.at.room)
    }

    /// Carries out `job` as its user step answered: its later steps and
    /// publishes. Its status.
    async fn carry_out(&self, job: &Job<'_>, answer: &[String]) -> String {
        let done = match (&job.req.op, answer) {
            (Op::Logout, [status, d]) if status == "ok" || status == "pending" => {
                self.logout(job, status, d).await
            }
            (Op::Logout, _) => {
                let mut sends = Sends::new();
                self.close(job, &mut sends);
                self.publish(sends).await.map(|_| "ok".to_string())
            }
            (_, [status, d]) if status == "ok" || (status == "duplicate" && !d.is_empty()) => {
                match serde_json::from_str::<Json>(d) {
                    Ok(d) => self.later(job, &d).await.map(|_| status.clone()),
                    Err(_) => Ok("bad-reply".into()),
                }
            }
            (_, [status, ..]) => Ok(status.clone()),
            _ => Ok("bad-reply".into()),
        };
        match done {
            Ok(status) => status,
            Err(Halt::Retry) => "retry".into(),
            Err(Halt::Redis(e)) if shared::store::transient(&e) => {
                tracing::warn!(id = job.eid, error = %e, "a request's step failed; will retry");
                "retry".into()
            }
            Err(Halt::Redis(e)) => {
                tracing::error!(id = job.eid, error = %e, "a request's step failed");
                "failed".into()
            }
        }
    }

    /// The later steps of a decision `d`, then its publishes.
    async fn later(&self, job: &Job<'_>, d: &Json) -> Done<()> {
        let (req, user) = (job.req, job.req.user.as_str());
        let mut sends = Sends::new();
        match &req.op {
            Op::Say { .. } => self.say(job, d, &mut sends).await?,
            Op::Join { .. } | Op::Leave => self.join(job, d, &mut sends).await?,
            Op::Publish { text } => {
                let id = str_of(d, "id");
                let line = ServerLine::Pub {
                    id: id.clone(),
                    from: user.into(),
                    text: text.clone(),
                };
                let edges: Vec<String> = redis::cmd("ZRANGE")
                    .arg(self.k.edges())
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.conn.clone())
                    .await?;
                self.to_edges(&edges, &line, "", &mut sends);
                let online = self.online_subscribers(user).await?;
                self.reply(
                    job,
                    vec![ServerLine::OkPublish { id, online }],
                    None,
                    &mut sends,
                );
            }
            Op::Subscribe { target } | Op::Unsubscribe { target } => {
                self.subscribe(job, d, target, &mut sends).await?
            }
            Op::Msg { to, text } => self.msg(job, d, to, text, &mut sends).await?,
            Op::History { with, n } => {
                let n = u64::from(*n).min(self.cfg.router.history_cap);
                self.read(job, d, with.as_deref(), Some(n), &mut sends)
                    .await?
            }
            Op::Who { .. } => self.read(job, d, None, None, &mut sends).await?,
            Op::Rooms => {
                let listing: String = Call::new("chat_c_look", &[self.k.room_sizes()])
                    .arg("rooms")
                    .arg(LOBBY)
                    .arg(self.cfg.router.listing_max)
                    .invoke(&mut self.conn.clone())
                    .await?;
                self.reply(job, lines(&listing), None, &mut sends);
            }
            Op::Key { target } => {
                let listing: String = Call::new("chat_c_look", &[self.k.user(target)])
                    .arg("key")
                    .arg(target)
                    .invoke(&mut self.conn.clone())
                    .await?;
                self.reply(job, lines(&listing), None, &mut sends);
            }
            Op::Subscriptions | Op::KeySet { .. } => {
                let shown = serde_json::from_value(d["lines"].clone()).unwrap_or_default();
                self.reply(job, shown, None, &mut sends);
            }
            Op::Delivered { .. } | Op::Logout | Op::Login { .. } | Op::Resume { .. } => {}
        }
        self.publish(sends).await
    }

    /// Room lines in a row (`run`, each [`said`]): their room steps in one
    /// pipeline (a room's in order), then their lines published in order,
    /// except those of a user whose step must wait (from that one on), or
    /// of a user `halted` before. Each one's status.
    async fn say_run<'a>(
        &self,
        jobs: &'a [Job<'_>],
        said: &[Option<(String, Json)>],
        run: &[usize],
        halted: &mut HashSet<&'a str>,
    ) -> Vec<(usize, String)> {
        let mut pipe = redis::pipe();
        let mut decided = Vec::new();
        // Each publisher's first line in the run: its room steps keep the
        // answers from there on, for a successor to publish them again
        // should this router die before its publishes.
        let mut first: HashMap<&str, u64> = HashMap::new();
        for &i in run {
            let (status, d) = said[i].as_ref().expect("a room line");
            let user = jobs[i].req.user.as_str();
            if !halted.contains(user) {
                let from = *first.entry(user).or_insert(num(d, "seq"));
                pipe.add_command(self.say_call(&jobs[i], d, from).into_cmd());
            }
            decided.push((status.clone(), d));
        }
        let values: Vec<Value> =
            match shared::scripts::query_pipe(&mut self.conn.clone(), &pipe).await {
                Ok(values) => values,
                Err(e) => {
                    tracing::warn!(error = %e, "room steps failed; will retry");
                    return run.iter().map(|&i| (i, "retry".to_string())).collect();
                }
            };
        let mut values = values.into_iter();
        let mut sends = Sends::new();
        let mut out = Vec::new();
        for (&i, (status, d)) in run.iter().zip(decided) {
            let user = jobs[i].req.user.as_str();
            if halted.contains(user) {
                out.push((i, "retry".to_string()));
                continue;
            }
            let answer: Vec<String> = values
                .next()
                .and_then(|v| redis::from_redis_value(v).ok())
                .unwrap_or_default();
            match answer.first().map(String::as_str) {
                Some("ok") | Some("duplicate") => {
                    self.said_line(&jobs[i], d, &answer, &mut sends);
                    out.push((i, status));
                }
                _ => {
                    halted.insert(user);
                    out.push((i, "retry".to_string()));
                }
            }
        }
        if let Err(Halt::Redis(e)) = self.publish(sends).await {
            tracing::warn!(error = %e, "publishing lines failed; will retry");
            return run.iter().map(|&i| (i, "retry".to_string())).collect();
        }
        out
    }

    /// The room step of a line as its user step decided (`d`), in a run
    /// whose first line of the same publisher is number `run`.
    fn say_call(&self, job: &Job, d: &Json, run: u64) -> Call {
        let (room, k, r) = (str_of(d, "room"), &self.k, &self.cfg.router);
        let Op::Say { text } = &job.req.op else {
            unreachable!("a room line");
        };
        let keys = [
            k.history(&room),
            k.room_edges(&room),
            k.marks(&room),
            k.room_version(&room),
        ];
        Call::new("chat_c_say_room", &keys)
            .arg(&job.req.user)
            .arg(job.eid)
            .arg(num(d, "seq"))
            .arg(num(d, "prev"))
            .arg(text)
            .arg(r.history_cap)
            .arg(r.history_ttl_ms)
            .arg(run)
    }

    /// The line its room step's `answer` gives, to the edges it names.
    fn said_line(&self, job: &Job, d: &Json, answer: &[String], sends: &mut Sends) {
        let Op::Say { text } = &job.req.op else {
            return;
        };
        if let [_, id, v, edges @ ..] = answer {
            let line = ServerLine::Msg {
                room: str_of(d, "room"),
                id: id.clone(),
                from: job.req.user.clone(),
                text: text.clone(),
            };
            self.to_edges(edges, &line, v, sends);
        }
    }

    /// A room line's room step.
    async fn say(&self, job: &Job<'_>, d: &Json, sends: &mut Sends) -> Done<()> {
        let answer = self.step(self.say_call(job, d, num(d, "seq"))).await?;
        self.said_line(job, d, &answer, sends);
        Ok(())
    }

    /// A join's (or `/leave`'s) room steps and directory steps.
    async fn join(&self, job: &Job<'_>, d: &Json, sends: &mut Sends) -> Done<()> {
        let leave = matches!(job.req.op, Op::Leave);
        let to = str_of(d, "to");
        if d["not_in_room"] == true {
            let line = ServerLine::err(ErrorCode::NotInRoom, "you are in the lobby");
            self.reply(job, vec![line], None, sends);
            return Ok(());
        }
        if d["stay"] == true {
            let room = match &job.req.op {
                Op::Join { room } => room.clone(),
                _ => LOBBY.into(),
            };
            self.reply(job, vec![ServerLine::OkJoin { room }], None, sends);
            return Ok(());
        }
        let from = str_of(d, "from");
        let (seq, edge) = (num(d, "seq"), str_of(d, "edge"));
        let out = self.room_move(&from, &job.req.user, seq, num(d, "prev_from"), &edge, false);
        let into = self.room_move(&to, &job.req.user, seq, num(d, "prev_to"), &edge, true);
        let (out, into) = tokio::try_join!(out, into)?;
        self.sizes(&[(&from, &out), (&to, &into)]).await?;
        let final_line = if leave {
            ServerLine::OkLeave { room: from.clone() }
        } else {
            ServerLine::OkJoin { room: to.clone() }
        };
        let effect = Effect::Room {
            sid: job.req.sid.clone(),
            room: to.clone(),
            v_from: out.get(1).and_then(|v| v.parse().ok()),
            v_to: into.get(1).and_then(|v| v.parse().ok()),
        };
        self.reply(job, vec![final_line], Some(effect), sends);
        self.notice(&from, &job.req.user, "left", &out, sends);
        self.notice(&to, &job.req.user, "joined", &into, sends);
        Ok(())
    }

    /// A subscription's step at its target, then in the user's own slot.
    async fn subscribe(
        &self,
        job: &Job<'_>,
        d: &Json,
        target: &str,
        sends: &mut Sends,
    ) -> Done<()> {
        let (k, user, kind) = (&self.k, job.req.user.as_str(), subscribing(&job.req.op));
        if let Some(max) = d.get("limit") {
            let text = format!("you subscribe to {max} users, the most allowed");
            self.reply(
                job,
                vec![ServerLine::err(ErrorCode::RateLimited, text)],
                None,
                sends,
            );
            return Ok(());
        }
        let seq = num(d, "seq");
        let keys = [
            k.user(target),
            k.subscribers(target),
            k.user_marks(target),
            k.publications(target),
        ];
        let at_target = Call::new("chat_c_subscriber", &keys)
            .arg(user)
            .arg(seq)
            .arg(num(d, "prev"))
            .arg(kind);
        let since = self
            .step(at_target)
            .await?
            .get(1)
            .cloned()
            .unwrap_or_default();
        let nobody = since == "-";
        let keys = [k.subscriptions(user), k.user_marks(user)];
        let own = Call::new("chat_c_own_subscription", &keys)
            .arg(user)
            .arg(target)
            .arg(seq)
            .arg(num(d, "prev_own"))
            .arg(if nobody { "none" } else { kind });
        self.step(own).await?;
        if nobody {
            let line = ServerLine::err(ErrorCode::NoSuchUser, "no such user");
            self.reply(job, vec![line], None, sends);
            return Ok(());
        }
        let (sid, user, since) = (job.req.sid.clone(), target.to_string(), Some(since));
        let (line, effect) = if kind == "subscribe" {
            let line = ServerLine::OkSubscribe { user: user.clone() };
            (line, Effect::Subscribe { sid, user, since })
        } else {
            let line = ServerLine::OkUnsubscribe { user: user.clone() };
            (line, Effect::Unsubscribe { sid, user, since })
        };
        self.reply(job, vec![line], Some(effect), sends);
        Ok(())
    }

    /// A private message's check, conversation and delivery steps.
    async fn msg(
        &self,
        job: &Job<'_>,
        d: &Json,
        to: &str,
        text: &str,
        sends: &mut Sends,
    ) -> Done<()> {
        let (k, user) = (&self.k, job.req.user.as_str());
        let r = &self.cfg.router;
        let keys = [
            k.user(to),
            k.session(to),
            k.inbox_counts(to),
            k.user_marks(to),
        ];
        let check = Call::new("chat_c_msg_check", &keys)
            .arg(user)
            .arg(num(d, "seq_check"))
            .arg(num(d, "prev_check"))
            .arg(r.inbox_per_sender);
        let verdict = self.step(check).await?.get(1).cloned().unwrap_or_default();
        let go = verdict == "go" || verdict.is_empty();
        let seq = num(d, "seq_deliver");
        let keys = [k.dm(user, to), k.dm_marks(user, to)];
        let dm = Call::new("chat_c_msg_dm", &keys)
            .arg(user)
            .arg(job.eid)
            .arg(seq)
            .arg(num(d, "prev_dm"))
            .arg(to)
            .arg(if go { text } else { "" })
            .arg(r.history_cap)
            .arg(r.history_ttl_ms)
            .arg(if go { "" } else { "none" });
        let id = self.step(dm).await?.get(1).cloned().unwrap_or_default();
        let keys = [
            k.session(to),
            k.inbox(to),
            k.inbox_counts(to),
            k.user_marks(to),
        ];
        let deliver = Call::new("chat_c_msg_deliver", &keys)
            .arg(user)
            .arg(seq)
            .arg(num(d, "prev_deliver"))
            .arg(&id)
            .arg(text)
            .arg(r.history_cap)
            .arg(r.history_ttl_ms);
        let delivered = self.step(deliver).await?;
        let line = match verdict.as_str() {
            "no-such-user" => ServerLine::err(ErrorCode::NoSuchUser, "no such user"),
            "rate-limited" => ServerLine::err(
                ErrorCode::RateLimited,
                format!(
                    "you have {} messages waiting for {to} already",
                    r.inbox_per_sender
                ),
            ),
            _ => {
                let queued = delivered.get(1).is_some_and(|how| how == "queued");
                if delivered.get(1).is_some_and(|how| how == "online") {
                    let (edge, conn, sid) = match &delivered[..] {
                        [_, _, edge, conn, sid] => (edge.clone(), conn.clone(), sid.clone()),
                        // Sent again: to the session there is now.
                        _ => self.session_of(to).await?,
                    };
                    let line = ServerLine::Dm {
                        id: id.clone(),
                        from: user.into(),
                        text: text.into(),
                    };
                    if !sid.is_empty() {
                        let notice = Reply {
                            conn: conn.parse().unwrap_or(0),
                            rid: 0,
                            lines: vec![line],
                            effect: None,
                            sid,
                        };
                        sends.push((k.edge_channel(&edge), json(&notice)));
                    }
                }
                ServerLine::OkMsg {
                    user: to.into(),
                    id,
                    queued,
                }
            }
        };
        self.reply(job, vec![line], None, sends);
        Ok(())
    }

    /// The edge, connection and id of `user`'s session ('' if none).
    async fn session_of(&self, user: &str) -> Done<(String, String, String)> {
        let (edge, conn, sid): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(self.k.session(user))
                .arg("edge")
                .arg("conn")
                .arg("sid")
                .query_async(&mut self.conn.clone())
                .await?;
        Ok((
            edge.unwrap_or_default(),
            conn.unwrap_or_default(),
            sid.unwrap_or_default(),
        ))
    }

    /// A read's step (`/history`: `n` Some, of the conversation with
    /// `with` or the room; `/who` otherwise) at its room or conversation.
    async fn read(
        &self,
        job: &Job<'_>,
        d: &Json,
        with: Option<&str>,
        n: Option<u64>,
        sends: &mut Sends,
    ) -> Done<()> {
        let (k, user) = (&self.k, job.req.user.as_str());
        let r = &self.cfg.router;
        let target = str_of(d, "target");
        let room = target.strip_prefix("room:").unwrap_or_default();
        let keys = match (n, with) {
            (None, _) => [k.room(room), k.marks(room)],
            (Some(_), None) => [k.history(room), k.marks(room)],
            (Some(_), Some(w)) => [k.dm(user, w), k.dm_marks(user, w)],
        };
        let call = Call::new("chat_c_read_at", &keys)
            .arg(user)
            .arg(num(d, "seq"))
            .arg(num(d, "prev"));
        let call = match (n, with) {
            (None, _) => call.arg("who").arg(room).arg(r.listing_max),
            (Some(n), None) => call.arg("history").arg(n).arg(room),
            (Some(n), Some(w)) => call.arg("history").arg(n).arg(format!("@{w}")),
        };
        let call = if n.is_some() {
            call.arg(r.reply_max_bytes)
        } else {
            call
        };
        let answer = self.step(call).await?;
        let mut shown = lines(answer.get(1).map_or("", String::as_str));
        if let (Some(w), [ServerLine::OkHistory { n: 0 }]) = (with, &shown[..]) {
            let exists: bool = redis::cmd("EXISTS")
                .arg(k.user(w))
                .query_async(&mut self.conn.clone())
                .await?;
            if !exists {
                shown = vec![ServerLine::err(ErrorCode::NoSuchUser, "no such user")];
            }
        }
        self.reply(job, shown, None, sends);
        Ok(())
    }

    /// A logout: the end's steps (after an earlier end in progress, if
    /// the user step found one).
    async fn logout(&self, job: &Job<'_>, status: &str, d: &str) -> Done<String> {
        let mut sends = Sends::new();
        self.close(job, &mut sends);
        self.publish(sends).await?;
        self.finish_end(&job.req.user, d).await?;
        if status == "pending" {
            // The earlier end is done: now this one.
            let answer: Vec<String> = self.user_step(job).invoke(&mut self.conn.clone()).await?;
            if let [s, d] = &answer[..] {
                if s == "ok" {
                    self.finish_end(&job.req.user, d).await?;
                }
            }
        }
        Ok("ok".into())
    }

    /// A `/quit`'s close, first of all.
    fn close(&self, job: &Job, sends: &mut Sends) {
        if job.req.rid != 0 {
            let effect = Effect::Close {
                reason: "quit".into(),
                sid: job.req.sid.clone(),
            };
            self.reply(job, Vec::new(), Some(effect), sends);
        }
    }

    /// How many of `user`'s subscribers have a session (read after the
    /// step, across slots: not atomic).
    async fn online_subscribers(&self, user: &str) -> Done<u64> {
        let mut conn = self.conn.clone();
        let subscribers: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.k.subscribers(user))
            .query_async(&mut conn)
            .await?;
        if subscribers.is_empty() {
            return Ok(0);
        }
        let on: Vec<bool> = redis::cmd("SMISMEMBER")
            .arg(self.k.online())
            .arg(&subscribers)
            .query_async(&mut conn)
            .await?;
        Ok(on.into_iter().filter(|on| *on).count() as u64)
    }

    /// The reply to `job`'s request, on its edge's channel.
    fn reply(&self, job: &Job, lines: Vec<ServerLine>, effect: Option<Effect>, sends: &mut Sends) {
        let reply = Reply {
            conn: job.req.conn,
            rid: job.req.rid,
            lines,
            effect,
            sid: String::new(),
        };
        sends.push((self.k.edge_channel(&job.req.edge), json(&reply)));
    }
}

/// A room line whose user step decided it (its status, `ok` or
/// `duplicate`, and the decision); `None` for anything else.
fn said(job: &Job, answer: &[String]) -> Option<(String, Json)> {
    match (&job.req.op, answer) {
        (Op::Say { .. }, [status, d])
            if status == "ok" || (status == "duplicate" && !d.is_empty()) =>
        {
            Some((status.clone(), serde_json::from_str(d).ok()?))
        }
        _ => None,
    }
}

/// `subscribe` or `unsubscribe`, as the steps take it.
fn subscribing(op: &Op) -> &'static str {
    if matches!(op, Op::Subscribe { .. }) {
        "subscribe"
    } else {
        "unsubscribe"
    }
}

/// Lines the functions made (JSON).
fn lines(listing: &str) -> Vec<ServerLine> {
    serde_json::from_str(listing).unwrap_or_default()
}
