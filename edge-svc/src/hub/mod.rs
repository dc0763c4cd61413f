//! The edge's connection table: each connection's queue, closer, session and state.
//!
//! Around it: [`channels`] keeps the audiences and holds of the channels
//! the edge subscribes to, and [`apply`] applies what comes back over
//! Pub/Sub: room and publisher lines fan out to the local connections in
//! their audience; replies go to one connection and may change its state
//! (logged in, moved, subscribed, closed).
//!
//! The edge reads all its channels on one Pub/Sub connection, so it sees
//! replies and broadcast lines in the order Redis ran the scripts that
//! published them; applying membership changes in that same order is what
//! makes "the members of the room at routing time" exact. A request that
//! may add a connection to a channel's audience first *holds* the channel,
//! which subscribes the edge to it before the request goes out.

mod apply;
mod channels;
mod queue;
#[cfg(test)]
mod tests;

use queue::Refused;
pub(crate) use queue::{queue, QueueRx, QueueTx, CHUNK};

use shared::admin::Counter;
use shared::consumer::EntryId;
use shared::envelope::Effect;
use shared::keys::Keys;
use shared::line::ServerLine;
use shared::protocol::LOBBY;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the writer of a connection sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// Complete lines, terminators included.
    Line(Vec<u8>),
    /// Send `BYE <reason>` and close.
    Bye(String),
    /// Write nothing queued after this until it opens (or its sender is
    /// dropped): `OK LOGIN` waits behind one until the login's publisher
    /// channels are subscribed.
    Gate(oneshot::Receiver<()>),
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
    tx: QueueTx,
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
    /// Opens the [`Out::Gate`] queued before its `OK LOGIN`.
    gate: Option<oneshot::Sender<()>>,
    /// Bytes of the replies it waited for, since [`Hub::reply_bytes`].
    reply_bytes: usize,
    /// The resume token for the login it waits for: shown (`TOKEN`) right
    /// after that login's `OK LOGIN`.
    token: Option<String>,
}

/// Hashes a connection id (a counter) with one multiplication: the maps
/// keyed by it are looked up once per delivery, where SipHash showed as the
/// edge's hottest function. Ids are the edge's own, not chosen by clients.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64((self.0 << 8) | u64::from(b));
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type ById = std::hash::BuildHasherDefault<IdHasher>;
/// The connections that receive a channel's lines.
type Members = HashSet<u64, ById>;

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn, ById>,
    /// Channel → the connections that receive its lines.
    audience: HashMap<String, Members>,
    /// Channel → requests in flight that may add to its audience.
    holds: HashMap<String, usize>,
    /// Channel → the id of the last `MSG` or `PUB` passed on from it: after
    /// a Pub/Sub reconnect, history is replayed from there (and a line
    /// that comes twice, replayed and live, is passed on once).
    last: HashMap<String, EntryId>,
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

    pub(crate) fn register(&self, id: u64, tx: QueueTx, closer: Arc<Closer>) {
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
                gate: None,
                reply_bytes: 0,
                token: None,
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

    /// The ids of every connection (a drain).
    pub(crate) fn conn_ids(&self) -> Vec<u64> {
        self.lock().conns.keys().copied().collect()
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

    /// The resume token to give `conn` with its next login, should it
    /// succeed.
    pub(crate) fn give_token(&self, conn: u64, token: String) {
        if let Some(c) = self.lock().conns.get_mut(&conn) {
            c.token = Some(token);
        }
    }

    /// The bytes of the replies `conn` waited for since the last call.
    pub(crate) fn reply_bytes(&self, conn: u64) -> usize {
        self.lock()
            .conns
            .get_mut(&conn)
            .map_or(0, |c| std::mem::take(&mut c.reply_bytes))
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

    /// Lets the lines queued behind the connection's login gate go out.
    pub(crate) fn open_gate(&self, conn: u64) {
        if let Some(gate) = self.lock().conns.get_mut(&conn).and_then(|c| c.gate.take()) {
            let _ = gate.send(());
        }
    }

    /// Queues a line to one connection.
    pub(crate) fn send(&self, conn: u64, line: &ServerLine) {
        if let Some(c) = self.lock().conns.get(&conn) {
            self.push_line(c, &apply::render(std::slice::from_ref(line)));
        }
    }

    /// Queues a close to one connection, after what is queued already.
    pub(crate) fn bye(&self, conn: u64, reason: &str) {
        if let Some(c) = self.lock().conns.get(&conn) {
            self.push(c, Out::Bye(reason.to_string()));
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

    /// Each channel with an audience and the id of the last message
    /// passed on from it (forgetting channels that lost their audience).
    pub(crate) fn marks(&self) -> Vec<(String, EntryId)> {
        let mut st = self.lock();
        let st = &mut *st;
        st.last
            .retain(|channel, _| st.audience.contains_key(channel));
        st.last.iter().map(|(c, id)| (c.clone(), *id)).collect()
    }

    /// Tells a channel's audience that lines after `after` may be missing,
    /// and takes `newest` as passed on.
    pub(crate) fn gap(&self, channel: &str, line: &ServerLine, newest: EntryId) {
        self.pass_on(channel, line);
        if let Some(last) = self.lock().last.get_mut(channel) {
            *last = newest.max(*last);
        }
    }

    fn orphan(&self, session: Session) {
        if self.orphans.try_send(session).is_err() {
            tracing::warn!("too many orphaned sessions queued; one left to its next login");
        }
    }

    /// Queues without waiting: a connection whose queue is full is too
    /// slow and is closed rather than allowed to hold anyone up.
    fn push(&self, conn: &Conn, out: Out) {
        self.refused(conn, conn.tx.send(out));
    }

    /// Queues lines without waiting, as [`Hub::push`] does.
    fn push_line(&self, conn: &Conn, line: &[u8]) {
        self.refused(conn, conn.tx.line(line));
    }

    /// Closes a connection whose queue is full (`too-slow`).
    fn refused(&self, conn: &Conn, queued: Result<(), Refused>) {
        match queued {
            Ok(()) | Err(Refused::Closed) => {}
            Err(Refused::Full) => {
                if conn.closer.reason().is_none() {
                    self.drops.inc();
                }
                conn.closer.close("too-slow");
            }
        }
    }
}
