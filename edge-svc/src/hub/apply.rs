//! Applying Pub/Sub messages: broadcast lines fan out to audiences; replies show and take effect.

use super::audience::{enter, exit, leave_all, Audience};
use super::{Hub, Out, Session, REORDER_MS};
use shared::consumer::EntryId;
use shared::envelope::{Effect, Reply};
use shared::line::ServerLine;
use std::collections::HashSet;

impl Hub {
    /// Applies one Pub/Sub message: a reply on the edge's channel, a
    /// broadcast line on its other one.
    pub(crate) fn dispatch(&self, channel: &str, payload: &[u8]) {
        self.pubsub_messages.inc();
        if channel != self.edge_channel {
            self.broadcast(channel, payload);
            return;
        }
        match serde_json::from_slice::<Reply>(payload) {
            Ok(reply) => self.apply(reply),
            Err(e) => tracing::warn!(channel, error = %e, "undecodable reply dropped"),
        }
    }

    fn broadcast(&self, channel: &str, payload: &[u8]) {
        let line = serde_json::from_slice::<ServerLine>(payload);
        match line.as_ref().map(|l| (Audience::of(l), l)) {
            Ok((Some(a), line)) => self.pass_on(&a, line),
            Ok((None, line)) => tracing::warn!(channel, %line, "not a broadcast line; dropped"),
            Err(e) => tracing::warn!(channel, error = %e, "undecodable line dropped"),
        }
    }

    /// Queues a room or publisher line to its audience, unless it is a
    /// message already passed on (replayed, then live).
    pub(crate) fn pass_on(&self, a: &Audience, line: &ServerLine) {
        let id = match line {
            ServerLine::Msg { id, .. } | ServerLine::Pub { id, .. } => EntryId::parse(id),
            _ => None,
        };
        let mut st = self.lock();
        let st = &mut *st;
        let Some(members) = st.audience.get(a) else {
            st.last.remove(a);
            st.recent.remove(a);
            return;
        };
        if let Some(id) = id {
            let first = !st.last.contains_key(a);
            let last = *st.last.entry(a.clone()).or_insert(id);
            if self.crossing {
                let seen = st.recent.entry(a.clone()).or_default();
                let newest = last.max(id);
                if seen.contains(&id) || id.ms + REORDER_MS < newest.ms {
                    return;
                }
                seen.insert(id);
                let keep = EntryId {
                    ms: newest.ms.saturating_sub(REORDER_MS),
                    seq: 0,
                };
                *seen = seen.split_off(&keep);
                st.last.insert(a.clone(), newest);
            } else if !first && id <= last {
                return;
            } else {
                st.last.insert(a.clone(), id);
            }
        }
        let line = render(std::slice::from_ref(line));
        for id in members {
            if let Some(c) = st.conns.get(id) {
                self.push_line(c, &line);
            }
        }
        self.deliveries.add(members.len() as u64);
    }

    fn apply(&self, mut reply: Reply) {
        reply.sort_listing();
        let mut st = self.lock();
        let st = &mut *st;
        let Some(conn) = st.conns.get_mut(&reply.conn) else {
            // The connection is gone; a session opened for it must not stay.
            if let Some(Effect::Login { user, sid, .. }) = reply.effect {
                self.orphan(Session { user, sid });
            }
            return;
        };
        let id = reply.conn;
        let waiting = reply.rid != 0
            && conn
                .pending
                .as_ref()
                .is_some_and(|(rid, _)| *rid == reply.rid);
        let holds = |sid: &str| conn.session.as_ref().is_some_and(|s| s.sid == sid);
        // A late reply (the client was told `ERR unavailable`) shows no
        // lines, but its effect still holds or is undone. A notice to a
        // session shows only while the connection holds that session.
        let show = waiting || (reply.rid == 0 && (reply.sid.is_empty() || holds(&reply.sid)));
        let mut bye = None;
        match &reply.effect {
            Some(Effect::Login {
                user,
                sid,
                room,
                subs,
                expires,
                ..
            }) if waiting => {
                // The resume token ends the login's reply: the queued `DM`
                // lines follow `OK LOGIN` right away, as the contract wants.
                let token = conn.token.take();
                if let (Some(token), Ok(expires)) = (token, expires.parse()) {
                    reply.lines.push(ServerLine::Token { token, expires });
                }
                conn.session = Some(Session {
                    user: user.clone(),
                    sid: sid.clone(),
                });
                // A RESUME may put the session back in a room of its own.
                let room = Audience::Room(room.clone());
                enter(&mut st.audience, id, conn, room.clone());
                conn.room = Some(room);
                for publisher in subs.split_whitespace() {
                    enter(&mut st.audience, id, conn, Audience::Pub(publisher.into()));
                }
                if let Some((closed, reason)) = conn.early_close.take() {
                    if closed == *sid {
                        conn.session = None;
                        leave_all(&mut st.audience, id, conn);
                        bye = Some(reason);
                    }
                }
            }
            Some(Effect::Login { user, sid, .. }) => self.orphan(Session {
                user: user.clone(),
                sid: sid.clone(),
            }),
            Some(Effect::Room { sid, room }) if holds(sid) => {
                if let Some(old) = conn.room.take() {
                    exit(&mut st.audience, id, conn, &old);
                }
                let room = Audience::Room(room.clone());
                enter(&mut st.audience, id, conn, room.clone());
                conn.room = Some(room);
            }
            Some(Effect::Subscribe { sid, user }) if holds(sid) => {
                enter(&mut st.audience, id, conn, Audience::Pub(user.clone()));
            }
            Some(Effect::Unsubscribe { sid, user }) if holds(sid) => {
                exit(&mut st.audience, id, conn, &Audience::Pub(user.clone()));
            }
            // Only the connection's current session is closed: a close for
            // one it no longer holds (say, a late login already undone) is
            // moot.
            Some(Effect::Close { reason, sid }) if holds(sid) => {
                conn.session = None;
                leave_all(&mut st.audience, id, conn);
                bye = Some(reason.clone());
            }
            // Before the reply of the login it closes (a cluster's
            // services publish in their own time): kept for that reply.
            Some(Effect::Close { reason, sid }) if conn.session.is_none() => {
                conn.early_close = Some((sid.clone(), reason.clone()));
            }
            _ => {}
        }
        if show && !reply.lines.is_empty() {
            // One queue slot for the whole reply, however long a listing.
            let out = render(&reply.lines);
            if waiting {
                conn.reply_bytes += out.len();
            }
            self.push_line(conn, &out);
        }
        if let Some(reason) = bye {
            self.push(conn, Out::Bye(reason));
        }
        if waiting {
            if let Some((_, tx)) = conn.pending.take() {
                let _ = tx.send(reply.effect);
            }
        }
    }

    /// Brings a connection in line with its session as Redis has it now
    /// (after replies may have been lost): `current` is the session's sid,
    /// room and subscriptions there, or `None` if it has no session. A
    /// connection whose session is gone is closed.
    pub(crate) fn resync(&self, id: u64, held: &Session, current: Option<(&str, &str, &[String])>) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(conn) = st.conns.get_mut(&id) else {
            return;
        };
        if conn.session.as_ref() != Some(held) {
            return; // changed meanwhile, by a reply that did arrive
        }
        let Some((_, room, subs)) = current.filter(|(sid, ..)| *sid == held.sid) else {
            tracing::info!(user = %held.user, "session gone while Redis was away; closing");
            conn.session = None;
            leave_all(&mut st.audience, id, conn);
            self.push(conn, Out::Bye("server-shutdown".into()));
            return;
        };
        let room = Audience::Room(room.to_string());
        let mut wanted: HashSet<Audience> = subs.iter().map(|p| Audience::Pub(p.clone())).collect();
        wanted.insert(room.clone());
        let stale: Vec<Audience> = conn.audiences.difference(&wanted).cloned().collect();
        for a in stale {
            exit(&mut st.audience, id, conn, &a);
        }
        for a in wanted {
            enter(&mut st.audience, id, conn, a);
        }
        conn.room = Some(room);
    }
}

/// The bytes queued to a client for `lines`: the wire form of each, ended
/// by `\n`, all in one queue entry. The one place lines become what
/// clients read: a broadcast (one line), a reply's lines, and the edge's
/// own lines ([`Hub::send`]).
pub(super) fn render(lines: &[ServerLine]) -> Vec<u8> {
    use std::fmt::Write;
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    out.into_bytes()
}
