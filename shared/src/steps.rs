//! The single-slot steps on a Redis Cluster that several services carry
//! out (shared/lua/cluster.lua): a member leaving or entering a room, the
//! directory's news of it, the end of a session, and publishing on the
//! edges' sharded channels (docs/design.md, "Running on a Redis Cluster").

use crate::config::Notices;
use crate::envelope::{Effect, Reply};
use crate::keys::Keys;
use crate::line::ServerLine;
use crate::protocol::LOBBY;
use crate::scripts::Call;
use crate::store::Conn;
use redis::{RedisError, RedisResult, Value};
use serde_json::Value as Json;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why a request's steps stopped short.
pub enum Halt {
    /// A step must wait for an earlier one: try again later, in order.
    Retry,
    Redis(RedisError),
}

impl From<RedisError> for Halt {
    fn from(e: RedisError) -> Halt {
        Halt::Redis(e)
    }
}

pub type Done<T> = Result<T, Halt>;

/// What steps leave to publish: (channel, message), in order.
pub type Sends = Vec<(String, String)>;

/// Until when a router's partition leases are surely its own (see
/// router-svc's leases): past it, it publishes nothing.
pub type Until = Arc<Mutex<Instant>>;

/// The steps' keys, notice settings and connection (to the cluster).
#[derive(Clone)]
pub struct Steps {
    pub k: Keys,
    pub notices: Notices,
    pub conn: Conn,
    /// A router's: publishing only while its leases are surely held (two
    /// routers publish in their own time, and a stalled one's late lines
    /// must not follow its successor's).
    pub until: Option<Until>,
}

impl Steps {
    /// A member entering or leaving `room`: `[status, version, members,
    /// edge…]`.
    pub async fn room_move(
        &self,
        room: &str,
        user: &str,
        seq: u64,
        prev: u64,
        edge: &str,
        enter: bool,
    ) -> Done<Vec<String>> {
        let k = &self.k;
        let keys = [
            k.room(room),
            k.room_edges(room),
            k.marks(room),
            k.room_version(room),
        ];
        self.step(
            Call::new("chat_c_room_move", &keys)
                .arg(user)
                .arg(seq)
                .arg(prev)
                .arg(edge)
                .arg(if enter { "enter" } else { "leave" }),
        )
        .await
    }

    /// The directory's news of rooms a room step changed.
    pub async fn sizes(&self, moved: &[(&str, &[String])]) -> Done<()> {
        let k = &self.k;
        let keys = [k.rooms(), k.room_sizes(), k.room_size_versions()];
        let mut pipe = redis::pipe();
        for (room, answer) in moved {
            if let [_, version, members, ..] = answer {
                if !version.is_empty() {
                    let call = Call::new("chat_c_room_size", &keys)
                        .arg(*room)
                        .arg(members)
                        .arg(version);
                    pipe.add_command(call.into_cmd());
                }
            }
        }
        let _: Vec<Value> = crate::scripts::query_pipe(&mut self.conn.clone(), &pipe).await?;
        Ok(())
    }

    /// `SYS <room> <user> <what>` to the room's edges, after a room step
    /// that took effect (`answer`), unless notices keep the room quiet.
    pub fn notice(&self, room: &str, user: &str, what: &str, answer: &[String], sends: &mut Sends) {
        let [status, v, members, edges @ ..] = answer else {
            return;
        };
        let n = &self.notices;
        let members: u64 = members.parse().unwrap_or(0);
        let quiet = (room == LOBBY && !n.lobby) || (n.max_members > 0 && members > n.max_members);
        if status == "ok" && !quiet {
            let line = ServerLine::Sys {
                room: room.into(),
                user: user.into(),
                what: what.into(),
            };
            self.to_edges(edges, &line, v, sends);
        }
    }

    /// The end of `user`'s session on `edge` (`sid`: that one, '' for
    /// whichever), revoking its resume token too if `quit`.
    pub fn end(&self, user: &str, edge: &str, sid: &str, quit: bool) -> Call {
        let k = &self.k;
        let keys = [
            k.session(user),
            k.resume(user),
            k.decisions(user),
            k.routes(user),
            k.ending(user),
        ];
        Call::new("chat_c_end", &keys)
            .arg(edge)
            .arg(sid)
            .arg(if quit { "quit" } else { "" })
    }

    /// The steps of an end of `user`'s session that `chat_c_end` decided
    /// (`d`): its room, the directory, the edge's session set, then the end
    /// forgotten.
    pub async fn finish_end(&self, user: &str, decided: &str) -> Done<()> {
        let d: Json = serde_json::from_str(decided).map_err(|_| Halt::Retry)?;
        let k = &self.k;
        let (room, edge, seq) = (str_of(&d, "room"), str_of(&d, "edge"), num(&d, "seq"));
        let mut sends = Sends::new();
        let out = self
            .room_move(&room, user, seq, num(&d, "prev_room"), &edge, false)
            .await?;
        self.sizes(&[(&room, &out)]).await?;
        self.notice(&room, user, "left", &out, &mut sends);
        let keys = [
            k.edge_sessions(&edge),
            k.edge_marks(&edge),
            k.edge_alive(&edge),
        ];
        let at_edge = Call::new("chat_c_edge_session", &keys)
            .arg(user)
            .arg(seq)
            .arg(num(&d, "prev_edge"))
            .arg("remove");
        self.step(at_edge).await?;
        let _: () = redis::cmd("SREM")
            .arg(k.online())
            .arg(user)
            .query_async(&mut self.conn.clone())
            .await?;
        Call::new("chat_c_ended", &[k.ending(user)])
            .arg(decided)
            .invoke::<i64>(&mut self.conn.clone())
            .await?;
        self.publish(sends).await
    }

    /// Ends the sessions of every edge whose heartbeat has run out, as
    /// [`crate::store::reap_dead_edges`] does on one Redis, in the end's
    /// steps; forgets an edge once `chat_c_edge_gone` says it may go.
    /// Returns how many sessions it ended.
    pub async fn reap_dead_edges(&self) -> RedisResult<u64> {
        let (k, mut conn) = (&self.k, self.conn.clone());
        let mut ended = 0;
        for edge in crate::store::dead_edges(&mut conn, k).await? {
            ended += self.end_edge_sessions(&edge).await?;
            let keys = [k.edge_sessions(&edge), k.edge_alive(&edge)];
            let gone: i64 = Call::new("chat_c_edge_gone", &keys)
                .invoke(&mut conn)
                .await?;
            if gone == 1 {
                let _: () = redis::pipe()
                    .zrem(k.edges(), &edge)
                    .del(k.edge_info(&edge))
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(ended)
    }

    /// The close (`BYE <reason>`) of the session an end or a login decided
    /// (`s`: its `conn` and `sid`), on `edge`'s channel.
    pub fn close(&self, edge: &str, s: &Json, reason: &str) -> (String, String) {
        let effect = Effect::Close {
            reason: reason.into(),
            sid: str_of(s, "sid"),
        };
        let conn = str_of(s, "conn").parse().unwrap_or(0);
        (
            self.k.edge_channel(edge),
            json(&Reply::effect(conn, effect)),
        )
    }

    /// Ends every session `edge` holds (it died, or it starts again under
    /// its id); how many.
    pub async fn end_edge_sessions(&self, edge: &str) -> RedisResult<u64> {
        let users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.k.edge_sessions(edge))
            .query_async(&mut self.conn.clone())
            .await?;
        let mut ended = 0;
        for user in users {
            ended += self.end_on(edge, &user).await.map_err(stopped)?;
        }
        Ok(ended)
    }

    /// Ends `user`'s session on dead `edge` (1), after an end in progress;
    /// 0 if it has none there (it only leaves the edge's set then: no
    /// session can join a dead edge's).
    pub async fn end_on(&self, edge: &str, user: &str) -> Done<u64> {
        let k = &self.k;
        let end = self.end(user, edge, "", false);
        loop {
            let answer: Vec<String> = end.invoke(&mut self.conn.clone()).await?;
            match &answer[..] {
                [s, d] if s == "pending" => self.finish_end(user, d).await?,
                [s, d] if s == "ok" => {
                    // Should the edge be alive after all, its connection
                    // is told and closed.
                    let s: Json = serde_json::from_str(d).map_err(|_| Halt::Retry)?;
                    self.publish(vec![self.close(edge, &s, "server-shutdown")])
                        .await?;
                    self.finish_end(user, d).await?;
                    return Ok(1);
                }
                _ => {
                    let _: () = redis::cmd("SREM")
                        .arg(k.edge_sessions(edge))
                        .arg(user)
                        .query_async(&mut self.conn.clone())
                        .await?;
                    return Ok(0);
                }
            }
        }
    }

    /// A later step's answer; `Halt::Retry` if it must wait for an earlier
    /// one.
    pub async fn step(&self, call: Call) -> Done<Vec<String>> {
        let answer: Vec<String> = call.invoke(&mut self.conn.clone()).await?;
        match answer.first().map(String::as_str) {
            Some("ok") | Some("duplicate") => Ok(answer),
            _ => Err(Halt::Retry),
        }
    }

    /// A broadcast line to each of `edges` (their line channels); a room's
    /// line with the room's version `v` when its step ran (the edges show
    /// it to the members then; a publication's id orders it).
    pub fn to_edges(&self, edges: &[String], line: &ServerLine, v: &str, sends: &mut Sends) {
        let mut payload = serde_json::to_value(line).expect("lines serialize");
        if let Ok(v) = v.parse::<u64>() {
            payload["v"] = v.into();
        }
        let payload = payload.to_string();
        for edge in edges {
            sends.push((self.k.lines_channel(edge), payload.clone()));
        }
    }

    /// Publishes `sends` in order (each edge's in one pipeline: one slot);
    /// a router's, only while its leases are surely held (else its
    /// requests stay pending, for their next owner to carry out again).
    pub async fn publish(&self, sends: Sends) -> Done<()> {
        if sends.is_empty() {
            return Ok(());
        }
        if let Some(until) = &self.until {
            if Instant::now() >= *until.lock().unwrap_or_else(|e| e.into_inner()) {
                let e = std::io::Error::other(
                    "the leases may have run out; publishing left to their next owner",
                );
                return Err(Halt::Redis(e.into()));
            }
        }
        let mut pipe = redis::pipe();
        for (channel, message) in &sends {
            pipe.cmd("SPUBLISH").arg(channel).arg(message).ignore();
        }
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        Ok(())
    }
}

/// A halt as an error: a step that waits is tried again later.
pub fn stopped(halt: Halt) -> RedisError {
    match halt {
        Halt::Redis(e) => e,
        Halt::Retry => std::io::Error::other("a step waits for an earlier one").into(),
    }
}

/// Field `field` of a decision, as a string ('' if none).
pub fn str_of(d: &Json, field: &str) -> String {
    d[field].as_str().unwrap_or_default().to_string()
}

/// Field `field` of a decision, as a number (0 if none).
pub fn num(d: &Json, field: &str) -> u64 {
    d[field].as_u64().unwrap_or(0)
}

/// A line or reply as the edges read it (JSON).
pub fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("lines and replies serialize")
}
