//! The edge's connection table, and the dispatcher that applies what comes
//! back over Pub/Sub: room and publisher lines fan out to the local
//! connections in their audience; replies go to one connection and may
//! change its state (logged in, moved, subscribed, closed).
//!
//! The edge reads all its channels on one Pub/Sub connection, so it sees
//! replies and broadcast lines in the order Redis ran the scripts that
//! published them; applying membership changes in that same order is what
//! makes "the members of the room at routing time" exact. A request that
//! may add a connection to a channel's audience first *holds* the channel,
//! which subscribes the edge to it before the request goes out.

use bytes::Bytes;
use shared::admin::Counter;
use shared::envelope::{Effect, Reply};
use shared::keys::Keys;
use shared::protocol::LOBBY;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the writer of a connection sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// Complete lines, terminators included.
    Line(Bytes),
    /// Send `BYE <reason>` and close.
    Bye(String),
}

/// Closes a connection out of band (its queue may be full): the writer
/// sends `BYE <reason>` and the reader stops.
#[derive(Debug, Default)]
pub(crate) struct Closer {
    pub(crate) token: CancellationToken,
    reason: OnceLock<String>,
}

impl Closer {
    pub(crate) fn close(&self, reason: &str) {
        let _ = self.reason.set(reason.to_string());
        self.token.cancel();
    }

    /// Why it was closed; `None` if it closed by itself (client gone).
    pub(crate) fn reason(&self) -> Option<&str> {
        self.reason
            .get()
            .map(String::as_str)
            .filter(|r| !r.is_empty())
    }
}

/// A logged-in session as the edge knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) user: String,
    pub(crate) sid: String,
}

/// A request to the Pub/Sub task: bring the subscription to `channel` in
/// line with whether the hub wants it, and say whether it is subscribed.
pub(crate) struct SubChange {
    pub(crate) channel: String,
    pub(crate) done: Option<oneshot::Sender<bool>>,
}

struct Conn {
    tx: mpsc::Sender<Out>,
    closer: Arc<Closer>,
    session: Option<Session>,
    /// The channels whose lines this connection receives: its room's and
    /// those of the publishers it subscribes to.
    channels: HashSet<String>,
    /// Its room's channel (also in `channels`).
    room: Option<String>,
    /// Channels held for requests in flight, by request id.
    holds: Vec<(u64, Vec<String>)>,
    /// The request this connection waits for, and where to say it came.
    pending: Option<(u64, oneshot::Sender<Option<Effect>>)>,
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn>,
    /// Channel → the connections that receive its lines.
    audience: HashMap<String, HashSet<u64>>,
    /// Channel → requests in flight that may add to its audience.
    holds: HashMap<String, usize>,
}

pub(crate) struct Hub {
    keys: Keys,
    /// Pub/Sub messages applied, lines queued to clients, and clients
    /// dropped for a full queue (for /metrics).
    pub(crate) pubsub_messages: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) drops: Counter,
    /// The edge's own channel (replies), and the lobby's: always wanted.
    edge_channel: String,
    lobby_channel: String,
    state: Mutex<State>,
    /// Sessions to end that no connection holds any more (a login answered
    /// after its connection left or gave up waiting).
    orphans: mpsc::Sender<Session>,
    /// To the Pub/Sub task. Unbounded, but one message per change of an
    /// audience or hold, each caused by a client request or a reply.
    subs: mpsc::UnboundedSender<SubChange>,
}

/// Orphaned sessions waiting to be ended; past this, they are left to the
/// next login of their user, which replaces them.
const ORPHANS: usize = 1024;

/// What [`Hub::new`] hands to the edge's background tasks.
pub(crate) struct HubTasks {
    pub(crate) orphans: mpsc::Receiver<Session>,
    pub(crate) subs: mpsc::UnboundedReceiver<SubChange>,
}

impl Hub {
    pub(crate) fn new(keys: Keys, edge_id: &str) -> (Arc<Hub>, HubTasks) {
        let (orphans, orphans_rx) = mpsc::channel(ORPHANS);
        let (subs, subs_rx) = mpsc::unbounded_channel();
        let hub = Hub {
            edge_channel: keys.edge_channel(edge_id),
            lobby_channel: keys.room_channel(LOBBY),
            keys,
            pubsub_messages: Counter::default(),
            deliveries: Counter::default(),
            drops: Counter::default(),
            state: Mutex::new(State::default()),
            orphans,
            subs,
        };
        let tasks = HubTasks {
            orphans: orphans_rx,
            subs: subs_rx,
        };
        (Arc::new(hub), tasks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn register(&self, id: u64, tx: mpsc::Sender<Out>, closer: Arc<Closer>) {
        self.lock().conns.insert(
            id,
            Conn {
                tx,
                closer,
                session: None,
                channels: HashSet::new(),
                room: None,
                holds: Vec::new(),
                pending: None,
            },
        );
    }

    /// Forgets a connection; returns its session, which the caller ends.
    pub(crate) fn remove(&self, id: u64) -> Option<Session> {
        let mut st = self.lock();
        let mut conn = st.conns.remove(&id)?;
        self.leave_all(&mut st.audience, id, &mut conn);
        for (_, channels) in conn.holds.drain(..) {
            self.unhold(&mut st.holds, &channels);
        }
        conn.session
    }

    /// The closers of every connection (shutdown).
    pub(crate) fn closers(&self) -> Vec<Arc<Closer>> {
        self.lock()
            .conns
            .values()
            .map(|c| c.closer.clone())
            .collect()
    }

    /// Whether the edge should be subscribed to `channel`.
    pub(crate) fn wants(&self, channel: &str) -> bool {
        if channel == self.edge_channel || channel == self.lobby_channel {
            return true;
        }
        let st = self.lock();
        st.audience.contains_key(channel) || st.holds.contains_key(channel)
    }

    /// Every channel the edge should be subscribed to (after a reconnect).
    pub(crate) fn wanted(&self) -> Vec<String> {
        let st = self.lock();
        let mut all: HashSet<String> = st.audience.keys().cloned().collect();
        all.extend(st.holds.keys().cloned());
        all.insert(self.edge_channel.clone());
        all.insert(self.lobby_channel.clone());
        all.into_iter().collect()
    }

    /// Keeps `channels` subscribed for request `rid` of `conn` until its
    /// reply has been applied (or [`Hub::release`]), and waits until they
    /// are; false if that failed (Redis unreachable).
    pub(crate) async fn hold(&self, conn: u64, rid: u64, channels: &[String]) -> bool {
        let mut waits = Vec::with_capacity(channels.len());
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(c) = st.conns.get_mut(&conn) else {
                return false;
            };
            c.holds.push((rid, channels.to_vec()));
            for ch in channels {
                *st.holds.entry(ch.clone()).or_default() += 1;
                let (done, wait) = oneshot::channel();
                let _ = self.subs.send(SubChange {
                    channel: ch.clone(),
                    done: Some(done),
                });
                waits.push(wait);
            }
        }
        let mut all = true;
        for wait in waits {
            all &= wait.await.unwrap_or(false);
        }
        all
    }

    /// Ends the holds of request `rid` of `conn`.
    pub(crate) fn release(&self, conn: u64, rid: u64) {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(c) = st.conns.get_mut(&conn) {
            self.release_in(&mut st.holds, c, rid);
        }
    }

    fn release_in(&self, holds: &mut HashMap<String, usize>, conn: &mut Conn, rid: u64) {
        if let Some(i) = conn.holds.iter().position(|(r, _)| *r == rid) {
            let (_, channels) = conn.holds.swap_remove(i);
            self.unhold(holds, &channels);
        }
    }

    fn unhold(&self, holds: &mut HashMap<String, usize>, channels: &[String]) {
        for ch in channels {
            if let Some(n) = holds.get_mut(ch) {
                *n -= 1;
                if *n == 0 {
                    holds.remove(ch);
                }
            }
            self.sync(ch);
        }
    }

    fn sync(&self, channel: &str) {
        let _ = self.subs.send(SubChange {
            channel: channel.to_string(),
            done: None,
        });
    }

    /// Registers that `conn` waits for the reply to `rid`.
    pub(crate) fn expect(&self, conn: u64, rid: u64) -> oneshot::Receiver<Option<Effect>> {
        let (tx, rx) = oneshot::channel();
        if let Some(c) = self.lock().conns.get_mut(&conn) {
            c.pending = Some((rid, tx));
        }
        rx
    }

    /// `conn` stops waiting for `rid`; false if the reply came already.
    pub(crate) fn give_up(&self, conn: u64, rid: u64) -> bool {
        let mut st = self.lock();
        match st.conns.get_mut(&conn) {
            Some(c) if c.pending.as_ref().is_some_and(|(r, _)| *r == rid) => {
                c.pending = None;
                true
            }
            _ => false,
        }
    }

    /// Queues a line to one connection.
    pub(crate) fn send(&self, conn: u64, line: &str) {
        if let Some(c) = self.lock().conns.get(&conn) {
            self.push(c, Out::Line(Bytes::from(format!("{line}\n"))));
        }
    }

    /// Queues a close to one connection, after what is queued already.
    pub(crate) fn bye(&self, conn: u64, reason: &str) {
        if let Some(c) = self.lock().conns.get(&conn) {
            self.push(c, Out::Bye(reason.to_string()));
        }
    }

    /// Applies one Pub/Sub message.
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
        let mut line = Vec::with_capacity(payload.len() + 1);
        line.extend_from_slice(payload);
        line.push(b'\n');
        let line = Bytes::from(line);
        let st = self.lock();
        let Some(members) = st.audience.get(channel) else {
            return;
        };
        for id in members {
            if let Some(c) = st.conns.get(id) {
                self.push(c, Out::Line(line.clone()));
            }
        }
        self.deliveries.add(members.len() as u64);
    }

    fn apply(&self, reply: Reply) {
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
                ..
            }) if waiting => {
                conn.session = Some(Session {
                    user: user.clone(),
                    sid: sid.clone(),
                });
                let room = self.keys.room_channel(room);
                self.enter(&mut st.audience, id, conn, &room);
                conn.room = Some(room);
                for publisher in subs.split_whitespace() {
                    let ch = self.keys.pub_channel(publisher);
                    self.enter(&mut st.audience, id, conn, &ch);
                }
            }
            Some(Effect::Login { user, sid, .. }) => self.orphan(Session {
                user: user.clone(),
                sid: sid.clone(),
            }),
            Some(Effect::Room { sid, room }) if holds(sid) => {
                if let Some(old) = conn.room.take() {
                    self.exit(&mut st.audience, id, conn, &old);
                }
                let room = self.keys.room_channel(room);
                self.enter(&mut st.audience, id, conn, &room);
                conn.room = Some(room);
            }
            Some(Effect::Subscribe { sid, user }) if holds(sid) => {
                let ch = self.keys.pub_channel(user);
                self.enter(&mut st.audience, id, conn, &ch);
            }
            Some(Effect::Unsubscribe { sid, user }) if holds(sid) => {
                let ch = self.keys.pub_channel(user);
                self.exit(&mut st.audience, id, conn, &ch);
            }
            // Only the connection's current session is closed: a close for
            // one it no longer holds (say, a late login already undone) is
            // moot.
            Some(Effect::Close { reason, sid }) if holds(sid) => {
                conn.session = None;
                self.leave_all(&mut st.audience, id, conn);
                bye = Some(reason.clone());
            }
            _ => {}
        }
        if show && !reply.lines.is_empty() {
            // One queue slot for the whole reply, however long a listing.
            let mut text = reply.lines.join("\n");
            text.push('\n');
            self.push(conn, Out::Line(Bytes::from(text)));
        }
        if let Some(reason) = bye {
            self.push(conn, Out::Bye(reason));
        }
        if reply.rid != 0 {
            self.release_in(&mut st.holds, conn, reply.rid);
        }
        if waiting {
            if let Some((_, tx)) = conn.pending.take() {
                let _ = tx.send(reply.effect);
            }
        }
    }

    /// Whether connection `id` is open.
    pub(crate) fn has(&self, id: u64) -> bool {
        self.lock().conns.contains_key(&id)
    }

    /// The logged-in connections and their sessions.
    pub(crate) fn sessions(&self) -> Vec<(u64, Session)> {
        let st = self.lock();
        st.conns
            .iter()
            .filter_map(|(id, c)| c.session.clone().map(|s| (*id, s)))
            .collect()
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
            self.leave_all(&mut st.audience, id, conn);
            self.push(conn, Out::Bye("server-shutdown".into()));
            return;
        };
        let room = self.keys.room_channel(room);
        let mut wanted: HashSet<String> = subs.iter().map(|p| self.keys.pub_channel(p)).collect();
        wanted.insert(room.clone());
        let stale: Vec<String> = conn.channels.difference(&wanted).cloned().collect();
        for ch in stale {
            self.exit(&mut st.audience, id, conn, &ch);
        }
        for ch in wanted {
            self.enter(&mut st.audience, id, conn, &ch);
        }
        conn.room = Some(room);
    }

    fn enter(
        &self,
        audience: &mut HashMap<String, HashSet<u64>>,
        id: u64,
        conn: &mut Conn,
        channel: &str,
    ) {
        if conn.channels.insert(channel.to_string()) {
            audience.entry(channel.to_string()).or_default().insert(id);
            self.sync(channel);
        }
    }

    fn exit(
        &self,
        audience: &mut HashMap<String, HashSet<u64>>,
        id: u64,
        conn: &mut Conn,
        channel: &str,
    ) {
        if conn.channels.remove(channel) {
            drop_member(audience, channel, id);
            self.sync(channel);
        }
    }

    fn leave_all(&self, audience: &mut HashMap<String, HashSet<u64>>, id: u64, conn: &mut Conn) {
        conn.room = None;
        for ch in std::mem::take(&mut conn.channels) {
            drop_member(audience, &ch, id);
            self.sync(&ch);
        }
    }

    fn orphan(&self, session: Session) {
        if self.orphans.try_send(session).is_err() {
            tracing::warn!("too many orphaned sessions queued; one left to its next login");
        }
    }
}

fn drop_member(audience: &mut HashMap<String, HashSet<u64>>, channel: &str, id: u64) {
    if let Some(members) = audience.get_mut(channel) {
        members.remove(&id);
        if members.is_empty() {
            audience.remove(channel);
        }
    }
}

impl Hub {
    /// Queues without waiting: a connection whose queue is full is too
    /// slow and is closed rather than allowed to hold anyone up.
    fn push(&self, conn: &Conn, out: Out) {
        match conn.tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if conn.closer.reason().is_none() {
                    self.drops.inc();
                }
                conn.closer.close("too-slow");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (Arc<Hub>, HubTasks) {
        Hub::new(Keys::new("chat:"), "e1")
    }

    fn conn(hub: &Hub, id: u64, queue: usize) -> (mpsc::Receiver<Out>, Arc<Closer>) {
        let (tx, rx) = mpsc::channel(queue);
        let closer = Arc::new(Closer::default());
        hub.register(id, tx, closer.clone());
        (rx, closer)
    }

    fn login_reply(conn: u64, rid: u64, user: &str, sid: &str) -> Vec<u8> {
        serde_json::to_vec(&Reply {
            conn,
            rid,
            lines: vec![format!("OK LOGIN {user} lobby")],
            effect: Some(Effect::Login {
                user: user.into(),
                sid: sid.into(),
                room: "lobby".into(),
                subs: String::new(),
                inbox: String::new(),
            }),
            sid: String::new(),
        })
        .unwrap()
    }

    fn lines(rx: &mut mpsc::Receiver<Out>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(o) = rx.try_recv() {
            out.push(match o {
                Out::Line(b) => String::from_utf8(b.to_vec()).unwrap(),
                Out::Bye(r) => format!("BYE {r}"),
            });
        }
        out
    }

    #[test]
    fn room_lines_reach_only_logged_in_members() {
        let (hub, _tasks) = hub();
        let (mut a, _) = conn(&hub, 1, 8);
        let (mut b, _) = conn(&hub, 2, 8);
        let mut wait = hub.expect(1, 10);
        hub.dispatch("chat:ch:edge:e1", &login_reply(1, 10, "alice", "5"));
        assert!(
            wait.try_recv().unwrap().is_some(),
            "the waiting login learns its effect"
        );
        hub.dispatch("chat:ch:room:lobby", b"MSG lobby 1-0 bob hi");
        hub.dispatch("chat:ch:room:dev", b"MSG dev 1-0 bob elsewhere");
        assert_eq!(
            lines(&mut a),
            ["OK LOGIN alice lobby\n", "MSG lobby 1-0 bob hi\n"]
        );
        assert!(lines(&mut b).is_empty(), "not logged in, not in the room");
    }

    #[test]
    fn a_full_queue_closes_that_client_only() {
        let (hub, _tasks) = hub();
        let (mut slow, slow_closer) = conn(&hub, 1, 2);
        let (mut fast, fast_closer) = conn(&hub, 2, 64);
        for (id, user) in [(1, "slow"), (2, "fast")] {
            let _wait = hub.expect(id, id);
            hub.dispatch(
                "chat:ch:edge:e1",
                &login_reply(id, id, user, &id.to_string()),
            );
        }
        for i in 0..10 {
            hub.dispatch(
                "chat:ch:room:lobby",
                format!("MSG lobby {i}-0 x m").as_bytes(),
            );
        }
        assert_eq!(slow_closer.reason(), Some("too-slow"));
        assert!(fast_closer.reason().is_none());
        assert_eq!(lines(&mut fast).len(), 11);
        assert_eq!(
            lines(&mut slow).len(),
            2,
            "the queue never grows past its bound"
        );
    }

    #[test]
    fn a_late_login_is_undone_and_shows_nothing() {
        let (hub, mut tasks) = hub();
        let (mut a, _) = conn(&hub, 1, 8);
        let _wait = hub.expect(1, 10);
        assert!(hub.give_up(1, 10));
        hub.dispatch("chat:ch:edge:e1", &login_reply(1, 10, "alice", "7"));
        assert!(lines(&mut a).is_empty());
        let orphan = tasks.orphans.try_recv().unwrap();
        assert_eq!((orphan.user.as_str(), orphan.sid.as_str()), ("alice", "7"));
        // A reply for a connection that is gone is undone as well.
        hub.dispatch("chat:ch:edge:e1", &login_reply(99, 3, "bob", "8"));
        assert_eq!(tasks.orphans.try_recv().unwrap().user, "bob");
    }

    #[test]
    fn close_applies_to_the_current_session_only() {
        let (hub, _tasks) = hub();
        let (mut a, _) = conn(&hub, 1, 8);
        let (mut b, _) = conn(&hub, 2, 8);
        let _wait = hub.expect(1, 1);
        hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
        let close = |conn: u64, sid: &str| {
            serde_json::to_vec(&Reply {
                conn,
                rid: 0,
                lines: vec![],
                effect: Some(Effect::Close {
                    reason: "logged-in-elsewhere".into(),
                    sid: sid.into(),
                }),
                sid: String::new(),
            })
            .unwrap()
        };
        hub.dispatch("chat:ch:edge:e1", &close(1, "4"));
        hub.dispatch("chat:ch:room:lobby", b"MSG lobby 1-0 bob still");
        hub.dispatch("chat:ch:edge:e1", &close(2, "5"));
        hub.dispatch("chat:ch:edge:e1", &close(1, "5"));
        hub.dispatch("chat:ch:room:lobby", b"MSG lobby 2-0 bob gone");
        assert_eq!(
            lines(&mut a),
            [
                "OK LOGIN alice lobby\n",
                "MSG lobby 1-0 bob still\n",
                "BYE logged-in-elsewhere"
            ]
        );
        assert!(lines(&mut b).is_empty(), "no session, nothing to close");
        assert!(hub.remove(1).is_none(), "the session is over");
    }

    #[test]
    fn moves_subscriptions_and_notices_follow_the_current_session() {
        let (hub, mut tasks) = hub();
        let (mut a, _) = conn(&hub, 1, 16);
        let _wait = hub.expect(1, 1);
        let mut login = serde_json::from_slice::<Reply>(&login_reply(1, 1, "alice", "5")).unwrap();
        login.effect = Some(Effect::Login {
            user: "alice".into(),
            sid: "5".into(),
            room: "lobby".into(),
            subs: "carol dave".into(),
            inbox: String::new(),
        });
        hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&login).unwrap());
        let notice = |rid: u64, sid: &str, lines: &[&str], effect: Option<Effect>| {
            serde_json::to_vec(&Reply {
                conn: 1,
                rid,
                lines: lines.iter().map(|l| l.to_string()).collect(),
                effect,
                sid: sid.into(),
            })
            .unwrap()
        };
        hub.dispatch("chat:ch:pub:carol", b"PUB 1-0 carol x");
        // A move of another (older) session is ignored; of this one, done.
        let moved = |sid: &str| {
            Some(Effect::Room {
                sid: sid.into(),
                room: "dev".into(),
            })
        };
        hub.dispatch("chat:ch:edge:e1", &notice(0, "", &[], moved("4")));
        hub.dispatch("chat:ch:room:lobby", b"MSG lobby 1-0 bob still here");
        hub.dispatch("chat:ch:edge:e1", &notice(0, "", &[], moved("5")));
        hub.dispatch("chat:ch:room:lobby", b"MSG lobby 2-0 bob gone");
        hub.dispatch("chat:ch:room:dev", b"MSG dev 1-0 bob in dev");
        let unsub = Some(Effect::Unsubscribe {
            sid: "5".into(),
            user: "carol".into(),
        });
        hub.dispatch("chat:ch:edge:e1", &notice(0, "", &[], unsub));
        hub.dispatch("chat:ch:pub:carol", b"PUB 2-0 carol y");
        hub.dispatch("chat:ch:pub:dave", b"PUB 1-0 dave z");
        // A private message to an older session is not shown.
        hub.dispatch(
            "chat:ch:edge:e1",
            &notice(0, "4", &["DM 1-0 bob old"], None),
        );
        hub.dispatch(
            "chat:ch:edge:e1",
            &notice(0, "5", &["DM 2-0 bob new"], None),
        );
        assert_eq!(
            lines(&mut a),
            [
                "OK LOGIN alice lobby\n",
                "PUB 1-0 carol x\n",
                "MSG lobby 1-0 bob still here\n",
                "MSG dev 1-0 bob in dev\n",
                "PUB 1-0 dave z\n",
                "DM 2-0 bob new\n",
            ]
        );
        assert!(hub.wants("chat:ch:room:dev") && hub.wants("chat:ch:pub:dave"));
        assert!(!hub.wants("chat:ch:pub:carol"));
        assert!(
            hub.wants("chat:ch:room:lobby"),
            "the lobby is always wanted"
        );
        let mut synced = Vec::new();
        while let Ok(s) = tasks.subs.try_recv() {
            synced.push(s.channel);
        }
        assert!(synced.contains(&"chat:ch:room:dev".to_string()));
        assert!(synced.contains(&"chat:ch:pub:carol".to_string()));

        // Closing the connection leaves every channel.
        assert!(hub.remove(1).is_some());
        assert!(!hub.wants("chat:ch:room:dev") && !hub.wants("chat:ch:pub:dave"));
    }

    #[tokio::test]
    async fn a_hold_lasts_until_its_reply_even_a_late_one() {
        let (hub, mut tasks) = hub();
        let (_rx, _) = conn(&hub, 1, 8);
        let channels = ["chat:ch:room:dev".to_string()];
        let holder = {
            let hub = hub.clone();
            let channels = channels.clone();
            tokio::spawn(async move { hub.hold(1, 7, &channels).await })
        };
        let sync = tasks.subs.recv().await.unwrap();
        assert_eq!(sync.channel, "chat:ch:room:dev");
        assert!(hub.wants("chat:ch:room:dev"));
        sync.done.unwrap().send(true).unwrap();
        assert!(holder.await.unwrap());
        // The client gave up waiting; the hold stays until the reply.
        let _wait = hub.expect(1, 7);
        assert!(hub.give_up(1, 7));
        assert!(hub.wants("chat:ch:room:dev"));
        let reply = Reply {
            conn: 1,
            rid: 7,
            lines: vec!["OK JOIN dev".into()],
            effect: None,
            sid: String::new(),
        };
        hub.dispatch("chat:ch:edge:e1", &serde_json::to_vec(&reply).unwrap());
        assert!(!hub.wants("chat:ch:room:dev"));
        // A connection that goes ends its holds too.
        let (_rx2, _) = conn(&hub, 2, 8);
        let holder = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.hold(2, 8, &channels).await })
        };
        loop {
            if let Some(done) = tasks.subs.recv().await.unwrap().done {
                done.send(true).unwrap();
                break;
            }
        }
        assert!(holder.await.unwrap());
        hub.remove(2);
        assert!(!hub.wants("chat:ch:room:dev"));
    }

    #[test]
    fn resync_follows_redis_and_closes_a_lost_session() {
        let (hub, _tasks) = hub();
        let (mut a, _) = conn(&hub, 1, 16);
        let _wait = hub.expect(1, 1);
        hub.dispatch("chat:ch:edge:e1", &login_reply(1, 1, "alice", "5"));
        let held = Session {
            user: "alice".into(),
            sid: "5".into(),
        };
        let subs = ["dave".to_string()];
        hub.resync(1, &held, Some(("5", "dev", &subs)));
        hub.dispatch("chat:ch:room:lobby", b"MSG lobby 1-0 bob not here");
        hub.dispatch("chat:ch:room:dev", b"MSG dev 1-0 bob here");
        hub.dispatch("chat:ch:pub:dave", b"PUB 1-0 dave news");
        hub.resync(1, &held, None);
        hub.dispatch("chat:ch:room:dev", b"MSG dev 2-0 bob gone");
        assert_eq!(
            lines(&mut a),
            [
                "OK LOGIN alice lobby\n",
                "MSG dev 1-0 bob here\n",
                "PUB 1-0 dave news\n",
                "BYE server-shutdown"
            ]
        );
        assert!(!hub.wants("chat:ch:room:dev") && !hub.wants("chat:ch:pub:dave"));
    }
}
