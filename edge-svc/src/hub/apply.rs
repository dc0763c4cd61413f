//! Applying Pub/Sub messages: broadcast lines fan out to audiences; replies show and take effect.

use super::audience::{enter, exit, leave_all, Audience};
use super::{Conn, Crossing, Held, Holding, Hub, Left, Out, Session, HELD_LINES, REORDER_MS};
use shared::consumer::EntryId;
use shared::envelope::{Effect, Reply};
use shared::line::ServerLine;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Most bytes of lines gathered for one audience before they are queued.
const GATHER_BYTES: usize = 16 * 1024;

/// Consecutive lines of one audience, gathered from the Pub/Sub messages
/// of one read to be queued to each member at once: one lock and one copy
/// per member for the lot, not per line (see [`Hub::dispatch_into`]).
#[derive(Default)]
pub(crate) struct Gathered {
    audience: Option<Audience>,
    bytes: Vec<u8>,
    lines: usize,
}

impl Hub {
    /// Applies one Pub/Sub message: a reply on the edge's channel, a
    /// broadcast line on its other one.
    pub(crate) fn dispatch(&self, channel: &str, payload: &[u8]) {
        let mut gathered = Gathered::default();
        self.dispatch_into(&mut gathered, channel, payload);
        self.flush(&mut gathered);
    }

    /// As [`Hub::dispatch`], but a broadcast line joins the lines of its
    /// audience `gathered` holds, to be queued by [`Hub::flush`], which
    /// the caller calls once it has no message waiting. Lines of another
    /// audience, a reply, and a full `gathered` flush first, so the
    /// members see lines and moves in the order they came.
    pub(crate) fn dispatch_into(&self, gathered: &mut Gathered, channel: &str, payload: &[u8]) {
        self.pubsub_messages.inc();
        if channel != self.edge_channel {
            self.broadcast(gathered, channel, payload);
            return;
        }
        self.flush(gathered);
        match serde_json::from_slice::<Reply>(payload) {
            Ok(reply) => self.apply(reply),
            Err(e) => tracing::warn!(channel, error = %e, "undecodable reply dropped"),
        }
    }

    fn broadcast(&self, gathered: &mut Gathered, channel: &str, payload: &[u8]) {
        let line = serde_json::from_slice::<ServerLine>(payload);
        match line.as_ref().map(|l| (Audience::of(l), l)) {
            Ok((Some(a), line)) if self.crossing => {
                // A cluster's room line names the room's version then.
                let v = serde_json::from_slice::<Version>(payload);
                self.deliver_crossing(&a, line, v.ok().and_then(|v| v.v));
            }
            Ok((Some(a), line)) => self.gather(gathered, a, line),
            Ok((None, line)) => tracing::warn!(channel, %line, "not a broadcast line; dropped"),
            Err(e) => tracing::warn!(channel, error = %e, "undecodable line dropped"),
        }
    }

    /// Queues a room or publisher line to its audience, unless it is a
    /// message already passed on (replayed, then live).
    pub(crate) fn pass_on(&self, a: &Audience, line: &ServerLine) {
        if self.crossing {
            return self.deliver_crossing(a, line, None);
        }
        let mut gathered = Gathered::default();
        self.gather(&mut gathered, a.clone(), line);
        self.flush(&mut gathered);
    }

    /// Adds `line` to `gathered`, unless its audience has no member here
    /// or it is a message already passed on; flushes first lines of
    /// another audience, or too many.
    fn gather(&self, gathered: &mut Gathered, a: Audience, line: &ServerLine) {
        if gathered.audience.as_ref() != Some(&a) || gathered.bytes.len() >= GATHER_BYTES {
            self.flush(gathered);
        }
        {
            let mut st = self.lock();
            let st = &mut *st;
            if !st.audience.contains_key(&a) {
                return;
            }
            if let Some(id) = message_id(line) {
                match st.last.get_mut(&a) {
                    Some(last) if id <= *last => return,
                    Some(last) => *last = id,
                    None => {
                        st.last.insert(a.clone(), id);
                    }
                }
            }
        }
        render_into(&mut gathered.bytes, line);
        gathered.lines += 1;
        gathered.audience = Some(a);
    }

    /// Queues the lines `gathered` holds to each member of their audience,
    /// all at once (a member whose queue cannot take them all gets those
    /// that fit before it is closed as too slow: `QueueTx::lines`).
    pub(crate) fn flush(&self, gathered: &mut Gathered) {
        let Some(a) = gathered.audience.take() else {
            return;
        };
        let (bytes, lines) = (std::mem::take(&mut gathered.bytes), gathered.lines);
        gathered.lines = 0;
        let st = self.lock();
        let Some(members) = st.audience.get(&a) else {
            return;
        };
        for id in members {
            if let Some(c) = st.conns.get(id) {
                self.refused(c, c.tx.lines(&bytes, lines));
            }
        }
        self.deliveries.add((members.len() * lines) as u64);
    }

    /// On a Redis Cluster two routers publish in their own time, so a
    /// room's lines, and the replies that move its members, can come out
    /// of the order their steps ran in. Each line has an order mark (the
    /// room's version, a publication's id), and so has each move: a
    /// member is shown the lines from the mark it joined at, and, for
    /// [`REORDER_MS`] after it left, those before the mark it left at;
    /// lines that came before a join's reply are held that long for it.
    /// A line whose id was passed on already is dropped (ids of the last
    /// [`REORDER_MS`] are kept).
    fn deliver_crossing(&self, a: &Audience, line: &ServerLine, v: Option<u64>) {
        let id = message_id(line);
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(id) = id {
            let last = *st.last.entry(a.clone()).or_insert(id);
            let seen = st.cross.recent.entry(a.clone()).or_default();
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
        }
        let at = match a {
            Audience::Room(_) => v.map(|v| EntryId { ms: v, seq: 0 }),
            Audience::Pub(_) => id,
        };
        let shown = |from: Option<&EntryId>| match (at, from) {
            (Some(at), Some(from)) => *from <= at,
            _ => true,
        };
        let bytes = render(std::slice::from_ref(line));
        let mut n = 0;
        for id in st.audience.get(a).into_iter().flatten() {
            if let Some(c) = st.conns.get(id).filter(|c| shown(c.after.get(a))) {
                self.push_line(c, &bytes);
                n += 1;
            }
        }
        let Some(at) = at else {
            self.deliveries.add(n);
            return;
        };
        let now = Instant::now();
        if let Some(left) = st.cross.left.get_mut(a) {
            left.retain(|l| !expired(l.at, now));
            for l in left
                .iter()
                .filter(|l| l.from.is_none_or(|f| f <= at) && at < l.before)
            {
                if let Some(c) = st.conns.get(&l.conn) {
                    self.push_line(c, &bytes);
                    n += 1;
                }
            }
        }
        self.deliveries.add(n);
        let cross = &mut st.cross;
        let held = cross.held.entry(a.clone()).or_default();
        held.push_back(Held {
            at,
            came: now,
            line: bytes,
        });
        prune(held, now);
        if cross.held.len() >= cross.sweep_at || cross.swept.is_none_or(|t| expired(t, now)) {
            cross.held.retain(|_, held| {
                prune(held, now);
                !held.is_empty()
            });
            cross.left.retain(|_, left| {
                left.retain(|l| !expired(l.at, now));
                !left.is_empty()
            });
            cross.swept = Some(now);
            let kept = |a: &Audience| st.audience.contains_key(a) || cross.held.contains_key(a);
            st.last.retain(|a, _| kept(a));
            cross.recent.retain(|a, _| kept(a));
            cross.sweep_at = (2 * cross.held.len()).max(64);
        }
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
        // A move applies once, in its session, in the order of its steps.
        let moves = |sid: &str| holds(sid) && (reply.rid == 0 || reply.rid > conn.moved);
        // A late reply (the client was told `ERR unavailable`) shows no
        // lines, but its effect still holds or is undone. A notice to a
        // session shows only while the connection holds that session.
        let show = waiting || (reply.rid == 0 && (reply.sid.is_empty() || holds(&reply.sid)));
        let mut bye = None;
        let mut replay = Vec::new();
        match &reply.effect {
            Some(Effect::Login {
                user,
                sid,
                room,
                subs,
                expires,
                v,
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
                if enter(&mut st.audience, id, conn, room.clone()) {
                    replay = joined(conn, &st.cross, id, &room, v.map(version));
                }
                conn.room = Some(room);
                for publisher in subs.split_whitespace() {
                    enter(&mut st.audience, id, conn, Audience::Pub(publisher.into()));
                }
                if let Some((closed, reason)) = conn.early_close.take() {
                    if closed == *sid {
                        conn.session = None;
                        leave_all(&mut st.audience, self.forgetting(&mut st.last), id, conn);
                        bye = Some(reason);
                    }
                }
            }
            // The login of the session this connection holds, carried
            // out again by another instance: nothing changes.
            Some(Effect::Login { sid, .. }) if holds(sid) => {}
            Some(Effect::Login { user, sid, .. }) => self.orphan(Session {
                user: user.clone(),
                sid: sid.clone(),
            }),
            Some(Effect::Room {
                sid,
                room,
                v_from,
                v_to,
            }) if moves(sid) => {
                if let Some(old) = conn.room.take() {
                    let marks = self.forgetting(&mut st.last);
                    if exit(&mut st.audience, marks, id, conn, &old) {
                        gone(conn, &mut st.cross, id, old, v_from.map(version));
                    }
                }
                let room = Audience::Room(room.clone());
                if enter(&mut st.audience, id, conn, room.clone()) {
                    replay = joined(conn, &st.cross, id, &room, v_to.map(version));
                }
                conn.room = Some(room);
            }
            Some(Effect::Subscribe { sid, user, since }) if moves(sid) => {
                let a = Audience::Pub(user.clone());
                if enter(&mut st.audience, id, conn, a.clone()) {
                    replay = joined(conn, &st.cross, id, &a, after(since));
                }
            }
            Some(Effect::Unsubscribe { sid, user, since }) if moves(sid) => {
                let a = Audience::Pub(user.clone());
                let marks = self.forgetting(&mut st.last);
                if exit(&mut st.audience, marks, id, conn, &a) {
                    gone(conn, &mut st.cross, id, a, after(since));
                }
            }
            // Only the connection's current session is closed: a close for
            // one it no longer holds (say, a late login already undone) is
            // moot.
            Some(Effect::Close { reason, sid }) if holds(sid) => {
                conn.session = None;
                leave_all(&mut st.audience, self.forgetting(&mut st.last), id, conn);
                bye = Some(reason.clone());
            }
            // Before the reply of the login it closes (a cluster's
            // services publish in their own time): kept for that reply.
            Some(Effect::Close { reason, sid }) if conn.session.is_none() => {
                conn.early_close = Some((sid.clone(), reason.clone()));
            }
            _ => {}
        }
        if matches!(
            reply.effect,
            Some(Effect::Room { .. } | Effect::Subscribe { .. } | Effect::Unsubscribe { .. })
        ) {
            conn.moved = conn.moved.max(reply.rid);
        }
        if reply.effect.is_some() {
            conn.changes += 1;
        }
        if show && !reply.lines.is_empty() {
            // One queue slot for the whole reply, however long a listing.
            let out = render(&reply.lines);
            if waiting {
                conn.reply_bytes += out.len();
            }
            self.push_line(conn, &out);
        }
        if !replay.is_empty() {
            self.push_line(conn, &replay);
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
    /// room and subscriptions there, read after `held` was taken, or
    /// `None` if it has no session. A connection whose session is gone is
    /// closed. False if a reply changed the connection since `held` was
    /// taken: the read may be older than that reply, so it is read again.
    pub(crate) fn resync(&self, held: &Holding, current: Option<(&str, &str, &[String])>) -> bool {
        let mut st = self.lock();
        let st = &mut *st;
        let id = held.id;
        let Some(conn) = st.conns.get_mut(&id) else {
            return true;
        };
        if conn.changes != held.changes {
            return false;
        }
        if conn.session.as_ref() != Some(&held.session) {
            return true; // logged out meanwhile
        }
        let Some((_, room, subs)) = current.filter(|(sid, ..)| *sid == held.session.sid) else {
            tracing::info!(user = %held.session.user, "session gone while Redis was away; closing");
            conn.session = None;
            leave_all(&mut st.audience, self.forgetting(&mut st.last), id, conn);
            self.push(conn, Out::Bye("server-shutdown".into()));
            return true;
        };
        let room = Audience::Room(room.to_string());
        let mut wanted: HashSet<Audience> = subs.iter().map(|p| Audience::Pub(p.clone())).collect();
        wanted.insert(room.clone());
        let stale: Vec<Audience> = conn.audiences.difference(&wanted).cloned().collect();
        for a in stale {
            exit(
                &mut st.audience,
                self.forgetting(&mut st.last),
                id,
                conn,
                &a,
            );
        }
        for a in wanted {
            enter(&mut st.audience, id, conn, a);
        }
        conn.room = Some(room);
        true
    }
}

/// The `v` of a cluster's room line (a room's version when its step ran).
#[derive(serde::Deserialize)]
struct Version {
    v: Option<u64>,
}

/// A room's version `v` as an order mark.
fn version(v: u64) -> EntryId {
    EntryId { ms: v, seq: 0 }
}

/// The order mark after publication id `since` (a subscription's step
/// read it as the last one).
fn after(since: &Option<String>) -> Option<EntryId> {
    let id = EntryId::parse(since.as_deref()?)?;
    Some(EntryId {
        ms: id.ms,
        seq: id.seq + 1,
    })
}

/// `conn` (id `id`) joined audience `a` at order mark `from` (on a Redis
/// Cluster): shown its lines from there on, and those held that came
/// before this reply (returned, to queue after the reply), but for those
/// it was shown already as a member it just left.
fn joined(conn: &mut Conn, st: &Crossing, id: u64, a: &Audience, from: Option<EntryId>) -> Vec<u8> {
    let Some(from) = from else {
        return Vec::new();
    };
    conn.after.insert(a.clone(), from);
    let left: Vec<&Left> = st
        .left
        .get(a)
        .into_iter()
        .flatten()
        .filter(|l| l.conn == id)
        .collect();
    let shown = |h: &Held| {
        left.iter()
            .any(|l| h.came < l.at && l.from.is_none_or(|f| f <= h.at))
    };
    let held = st.held.get(a).into_iter().flatten();
    held.filter(|h| h.at >= from && !shown(h))
        .flat_map(|h| h.line.iter().copied())
        .collect()
}

/// `conn` (id `id`) left audience `a` at order mark `before` (on a Redis
/// Cluster): the lines from where it joined to before that mark that are
/// still to come are its own.
fn gone(conn: &mut Conn, st: &mut Crossing, id: u64, a: Audience, before: Option<EntryId>) {
    let from = conn.after.remove(&a);
    let Some(before) = before else {
        return;
    };
    let now = Instant::now();
    let left = st.left.entry(a).or_default();
    left.retain(|l| !expired(l.at, now));
    left.push(Left {
        conn: id,
        from,
        before,
        at: now,
    });
}

/// Whether something of `at` is past [`REORDER_MS`] by `now`.
fn expired(at: Instant, now: Instant) -> bool {
    now.duration_since(at) > Duration::from_millis(REORDER_MS)
}

/// Drops held lines past [`REORDER_MS`] or [`HELD_LINES`].
fn prune(held: &mut VecDeque<Held>, now: Instant) {
    while held
        .front()
        .is_some_and(|h| held.len() > HELD_LINES || expired(h.came, now))
    {
        held.pop_front();
    }
}

/// The bytes queued to a client for `lines`: the wire form of each, ended
/// by `\n`, all in one queue entry. The one place lines become what
/// clients read: a broadcast (one line), a reply's lines, and the edge's
/// own lines ([`Hub::send`]).
pub(super) fn render(lines: &[ServerLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        render_into(&mut out, line);
    }
    out
}

/// Adds `line`'s wire form, terminator included, to `out`.
fn render_into(out: &mut Vec<u8>, line: &ServerLine) {
    use std::io::Write;
    let _ = writeln!(out, "{line}");
}

/// The id of a room message or a publication.
fn message_id(line: &ServerLine) -> Option<EntryId> {
    match line {
        ServerLine::Msg { id, .. } | ServerLine::Pub { id, .. } => EntryId::parse(id),
        _ => None,
    }
}
