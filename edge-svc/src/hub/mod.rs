//! The edge's connection table: each connection's queue, closer, session and state.
//!
//! Around it: [`audience`] keeps who receives each room's and
//! publisher's lines, and [`apply`] applies what comes back over Pub/Sub:
//! room and publisher lines fan out to the local connections in their
//! audience; replies go to one connection and may change its state
//! (logged in, moved, subscribed, closed).
//!
//! Everything for the edge comes on its two channels (replies, and the
//! broadcast lines of the rooms with a member here and of every
//! publisher), read on one Pub/Sub connection subscribed from the start.
//! So the edge sees replies and lines in the order Redis ran the functions
//! that published them, and applying membership changes in that same
//! order is what makes "the members of the room at routing time" exact.
//! On a Redis Cluster the routers publish after their steps, each in its
//! own time, and the room versions the lines and moves carry do that
//! instead (`apply.rs`, `deliver_crossing`).

mod apply;
mod audience;
mod queue;
#[cfg(test)]
mod tests;

pub(crate) use apply::Gathered;
pub(crate) use audience::Audience;
use queue::Refused;
pub(crate) use queue::{queue, QueueRx, QueueTx, CHUNK};

use shared::admin::Counter;
use shared::consumer::EntryId;
use shared::envelope::Effect;
use shared::keys::Keys;
use shared::line::ServerLine;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What the writer of a connection sends.
#[derive(Debug)]
pub(crate) enum Out {
    /// Complete lines, terminators included.
    Line(Vec<u8>),
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
    tx: QueueTx,
    closer: Arc<Closer>,
    session: Option<Session>,
    /// The audiences this connection is in: its room's and those of the
    /// publishers it subscribes to.
    audiences: HashSet<Audience>,
    /// Its room's audience (also in `audiences`).
    room: Option<Audience>,
    /// The request this connection waits for, and where to say it came.
    pending: Option<(u64, oneshot::Sender<Option<Effect>>)>,
    /// Bytes of the replies it waited for, since [`Hub::reply_bytes`].
    reply_bytes: usize,
    /// The resume token for the login it waits for: shown (`TOKEN`) right
    /// after that login's `OK LOGIN`.
    token: Option<String>,
    /// A close (session id, reason) that came before the reply of the
    /// login it closes: on a Redis Cluster the login that replaced this
    /// one may publish first. Applied as that login's reply comes.
    early_close: Option<(String, String)>,
    /// On a Redis Cluster: the audiences whose lines this connection is
    /// shown only from an order mark on (the room's version its join took,
    /// the publication after the last one when it subscribed).
    after: HashMap<Audience, EntryId>,
    /// The request id of the last move (join, leave, subscribe,
    /// unsubscribe) applied. A user's router requests run in order, so a
    /// reply to one at or before it is a step run again after a router
    /// handover, already applied.
    moved: u64,
    /// How many replies with an effect were applied to it: a read-back of
    /// its session (`resync`) taken while one came may be older than it.
    changes: u64,
}

/// A logged-in connection as it was at one instant: its id, session and
/// count of changes (see [`Hub::resync`]).
#[derive(Debug, Clone)]
pub(crate) struct Holding {
    pub(crate) id: u64,
    pub(crate) session: Session,
    changes: u64,
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
/// The connections in an audience.
type Members = HashSet<u64, ById>;

#[derive(Default)]
struct State {
    conns: HashMap<u64, Conn, ById>,
    /// Room or publisher → the connections that receive its lines.
    audience: HashMap<Audience, Members>,
    /// Room or publisher → the id of the last `MSG` or `PUB` passed on to
    /// its audience: after a Pub/Sub reconnect, history is replayed from
    /// there (and a line that comes twice, replayed and live, is passed on
    /// once).
    last: HashMap<Audience, EntryId>,
    /// On a Redis Cluster only: what orders lines and moves that cross.
    cross: Crossing,
}

/// On a Redis Cluster only: what the edge keeps to order lines and moves
/// that cross (see `apply.rs`, `deliver_crossing`).
#[derive(Default)]
struct Crossing {
    /// The ids passed on to each audience in the last [`REORDER_MS`]
    /// before its last one. Two routers publish in their own time, so
    /// lines of one room can come out of id order: a line older than the
    /// last is dropped only if it was passed on.
    recent: HashMap<Audience, BTreeSet<EntryId>>,
    /// Connections that left an audience in the last [`REORDER_MS`], and
    /// the marks of the lines that are still theirs (lines routed before
    /// they left may still come).
    left: HashMap<Audience, Vec<Left>>,
    /// Each audience's lines of the last [`REORDER_MS`] (at most
    /// [`HELD_LINES`]), for a join or subscribe whose reply comes after
    /// lines routed after it.
    held: HashMap<Audience, VecDeque<Held>>,
    /// How many audiences with held lines make the next sweep of stale
    /// ones, and when the last one was (one is made every [`REORDER_MS`]
    /// too).
    sweep_at: usize,
    swept: Option<Instant>,
}

/// A connection that left an audience when (`at`) its reply came: its
/// lines from mark `from` (where it joined, if known) to before mark
/// `before` are still that connection's, for [`REORDER_MS`].
struct Left {
    conn: u64,
    from: Option<EntryId>,
    before: EntryId,
    at: Instant,
}

/// A line held for late joiners: its order mark, when it came, its bytes.
struct Held {
    at: EntryId,
    came: Instant,
    line: Vec<u8>,
}

/// Most lines held per audience.
const HELD_LINES: usize = 1024;

/// How far (in id time, and in time on the edge) lines of one room or
/// publisher and the replies that move its members can come out of order
/// on a Redis Cluster: two routers' publishes crossing. Older than that
/// before the last, a line is taken as one passed on already (a router
/// publishing again what it recovered).
const REORDER_MS: u64 = 1000;

pub(crate) struct Hub {
    /// Pub/Sub messages applied, lines queued to clients, and clients
    /// dropped for a full queue (for /metrics).
    pub(crate) pubsub_messages: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) drops: Counter,
    /// The edge's channel of replies (its other one has broadcast lines).
    edge_channel: String,
    /// Lines may come out of id order (a Redis Cluster's routers): see
    /// [`Crossing`].
    crossing: bool,
    state: Mutex<State>,
    /// Sessions to end that no connection holds any more (a login answered
    /// after its connection left or gave up waiting).
    orphans: mpsc::Sender<Session>,
}

/// Orphaned sessions waiting to be ended; past this, they are left to the
/// next login of their user, which replaces them.
const ORPHANS: usize = 1024;

impl Hub {
    /// The hub of edge `edge_id`, and the receiving end of its orphaned
    /// sessions.
    pub(crate) fn new(keys: &Keys, edge_id: &str) -> (Arc<Hub>, mpsc::Receiver<Session>) {
        let (orphans, orphans_rx) = mpsc::channel(ORPHANS);
        let hub = Hub {
            edge_channel: keys.edge_channel(edge_id),
            crossing: keys.on_cluster(),
            pubsub_messages: Counter::default(),
            deliveries: Counter::default(),
            drops: Counter::default(),
            state: Mutex::new(State::default()),
            orphans,
        };
        (Arc::new(hub), orphans_rx)
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
                audiences: HashSet::new(),
                room: None,
                pending: None,
                reply_bytes: 0,
                token: None,
                early_close: None,
                after: HashMap::new(),
                moved: 0,
                changes: 0,
            },
        );
    }

    /// Forgets a connection; returns its session, which the caller ends.
    pub(crate) fn remove(&self, id: u64) -> Option<Session> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut conn = st.conns.remove(&id)?;
        audience::leave_all(
            &mut st.audience,
            self.forgetting(&mut st.last),
            id,
            &mut conn,
        );
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

    /// `last`, where an audience's mark goes with its last member (see
    /// [`audience::Marks`]).
    fn forgetting<'a>(&self, last: &'a mut HashMap<Audience, EntryId>) -> audience::Marks<'a> {
        (!self.crossing).then_some(last)
    }

    /// Whether connection `id` is open.
    pub(crate) fn has(&self, id: u64) -> bool {
        self.lock().conns.contains_key(&id)
    }

    /// The logged-in connections (of `only`, if given) and their sessions.
    pub(crate) fn sessions(&self, only: Option<&HashSet<u64>>) -> Vec<Holding> {
        let st = self.lock();
        st.conns
            .iter()
            .filter(|(id, _)| only.is_none_or(|ids| ids.contains(id)))
            .filter_map(|(id, c)| {
                let session = c.session.clone()?;
                Some(Holding {
                    id: *id,
                    session,
                    changes: c.changes,
                })
            })
            .collect()
    }

    /// Each room and publisher with an audience and the id of the last
    /// message passed on to it, or `since` (when the Pub/Sub connection
    /// was last heard from) for one that has had none since its members
    /// joined: what it missed is after that (forgetting those that lost
    /// their audience).
    pub(crate) fn marks(&self, since: EntryId) -> Vec<(Audience, EntryId)> {
        let mut st = self.lock();
        let st = &mut *st;
        st.last.retain(|a, _| st.audience.contains_key(a));
        st.cross.recent.retain(|a, _| st.audience.contains_key(a));
        st.audience
            .keys()
            .map(|a| (a.clone(), st.last.get(a).copied().unwrap_or(since)))
            .collect()
    }

    /// Tells an audience that lines after `after` may be missing, and
    /// takes `newest` as passed on.
    pub(crate) fn gap(&self, a: &Audience, line: &ServerLine, newest: EntryId) {
        self.pass_on(a, line);
        if let Some(last) = self.lock().last.get_mut(a) {
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
