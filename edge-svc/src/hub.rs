//! The edge's connection table, and the dispatcher that applies what comes
//! back over Pub/Sub: room lines fan out to the local members of the room;
//! replies go to one connection and may change its state (logged in,
//! closed).
//!
//! The edge reads all its channels on one Pub/Sub connection, so it sees
//! replies and room lines in the order Redis ran the scripts that published
//! them; applying membership changes in that same order is what makes "the
//! members of the room at routing time" exact.

use bytes::Bytes;
use shared::envelope::{Effect, Reply};
use shared::keys::Keys;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the writer of a connection sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// A complete line, terminator included.
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

struct Conn {
    tx: mpsc::Sender<Out>,
    closer: Arc<Closer>,
    session: Option<Session>,
    room: Option<String>,
    /// The request this connection waits for, and where to say it came.
    pending: Option<(u64, oneshot::Sender<Option<Effect>>)>,
}

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn>,
    rooms: HashMap<String, HashSet<u64>>,
}

pub(crate) struct Hub {
    keys: Keys,
    state: Mutex<State>,
    /// Sessions to end that no connection holds any more (a login answered
    /// after its connection left or gave up waiting).
    orphans: mpsc::Sender<Session>,
}

/// Orphaned sessions waiting to be ended; past this, they are left to the
/// next login of their user, which replaces them.
const ORPHANS: usize = 1024;

impl Hub {
    pub(crate) fn new(keys: Keys) -> (Arc<Hub>, mpsc::Receiver<Session>) {
        let (orphans, rx) = mpsc::channel(ORPHANS);
        let hub = Hub {
            keys,
            state: Mutex::new(State::default()),
            orphans,
        };
        (Arc::new(hub), rx)
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
                room: None,
                pending: None,
            },
        );
    }

    /// Forgets a connection; returns its session, which the caller ends.
    pub(crate) fn remove(&self, id: u64) -> Option<Session> {
        let mut st = self.lock();
        let conn = st.conns.remove(&id)?;
        if let Some(room) = &conn.room {
            leave(&mut st.rooms, room, id);
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
            push(c, Out::Line(Bytes::from(format!("{line}\n"))));
        }
    }

    /// Queues a close to one connection, after what is queued already.
    pub(crate) fn bye(&self, conn: u64, reason: &str) {
        if let Some(c) = self.lock().conns.get(&conn) {
            push(c, Out::Bye(reason.to_string()));
        }
    }

    /// Applies one Pub/Sub message.
    pub(crate) fn dispatch(&self, channel: &str, payload: &[u8]) {
        if let Some(room) = self.keys.room_of_channel(channel) {
            self.deliver_to_room(room, payload);
            return;
        }
        match serde_json::from_slice::<Reply>(payload) {
            Ok(reply) => self.apply(reply),
            Err(e) => tracing::warn!(channel, error = %e, "undecodable reply dropped"),
        }
    }

    fn deliver_to_room(&self, room: &str, payload: &[u8]) {
        let mut line = Vec::with_capacity(payload.len() + 1);
        line.extend_from_slice(payload);
        line.push(b'\n');
        let line = Bytes::from(line);
        let st = self.lock();
        let Some(members) = st.rooms.get(room) else {
            return;
        };
        for id in members {
            if let Some(c) = st.conns.get(id) {
                push(c, Out::Line(line.clone()));
            }
        }
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
        let waiting = reply.rid != 0
            && conn
                .pending
                .as_ref()
                .is_some_and(|(rid, _)| *rid == reply.rid);
        // A late reply (the client was told `ERR unavailable`) shows no
        // lines, but its effect still holds or is undone.
        let show = reply.rid == 0 || waiting;
        let mut bye = None;
        match &reply.effect {
            Some(Effect::Login { user, sid, room }) if waiting => {
                conn.session = Some(Session {
                    user: user.clone(),
                    sid: sid.clone(),
                });
                conn.room = Some(room.clone());
                st.rooms.entry(room.clone()).or_default().insert(reply.conn);
            }
            Some(Effect::Login { user, sid, .. }) => self.orphan(Session {
                user: user.clone(),
                sid: sid.clone(),
            }),
            // Only the connection's current session is closed: a close for
            // one it no longer holds (say, a late login already undone) is
            // moot.
            Some(Effect::Close { reason, sid })
                if conn.session.as_ref().is_some_and(|s| s.sid == *sid) =>
            {
                conn.session = None;
                if let Some(room) = conn.room.take() {
                    leave(&mut st.rooms, &room, reply.conn);
                }
                bye = Some(reason.clone());
            }
            Some(Effect::Close { .. }) | None => {}
        }
        if show {
            for line in &reply.lines {
                push(conn, Out::Line(Bytes::from(format!("{line}\n"))));
            }
        }
        if let Some(reason) = bye {
            push(conn, Out::Bye(reason));
        }
        if waiting {
            if let Some((_, tx)) = conn.pending.take() {
                let _ = tx.send(reply.effect);
            }
        }
    }
}

impl Hub {
    fn orphan(&self, session: Session) {
        if self.orphans.try_send(session).is_err() {
            tracing::warn!("too many orphaned sessions queued; one left to its next login");
        }
    }
}

fn leave(rooms: &mut HashMap<String, HashSet<u64>>, room: &str, id: u64) {
    if let Some(members) = rooms.get_mut(room) {
        members.remove(&id);
        if members.is_empty() {
            rooms.remove(room);
        }
    }
}

/// Queues without waiting: a connection whose queue is full is too slow
/// and is closed rather than allowed to hold anyone up.
fn push(conn: &Conn, out: Out) {
    match conn.tx.try_send(out) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => conn.closer.close("too-slow"),
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> (Arc<Hub>, mpsc::Receiver<Session>) {
        Hub::new(Keys::new("chat:"))
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
            }),
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
        let (hub, _orphans) = hub();
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
        let (hub, _orphans) = hub();
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
        let (hub, mut orphans) = hub();
        let (mut a, _) = conn(&hub, 1, 8);
        let _wait = hub.expect(1, 10);
        assert!(hub.give_up(1, 10));
        hub.dispatch("chat:ch:edge:e1", &login_reply(1, 10, "alice", "7"));
        assert!(lines(&mut a).is_empty());
        let orphan = orphans.try_recv().unwrap();
        assert_eq!((orphan.user.as_str(), orphan.sid.as_str()), ("alice", "7"));
        // A reply for a connection that is gone is undone as well.
        hub.dispatch("chat:ch:edge:e1", &login_reply(99, 3, "bob", "8"));
        assert_eq!(orphans.try_recv().unwrap().user, "bob");
    }

    #[test]
    fn close_applies_to_the_current_session_only() {
        let (hub, _orphans) = hub();
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
}
