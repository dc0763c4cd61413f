//! The checker of the fault-injection suite (`e2e/tests/chaos.rs`): a
//! steady, bounded load of several users that records every
//! acknowledgement and every delivery, rides out lost connections, and
//! afterwards checks what reached whom, and what Redis holds.
//!
//! # The load
//!
//! `users` users (`u0`, `u1`, …) log in, spread over the edges (user `i` on
//! edge `i mod edges`), all join the room [`ROOM`], and user `i`
//! subscribes to users `i+1` and `i+2` (mod `users`). Then each sends, in
//! turn, a room line, a `/publish` and a `/msg` to user `i+1`, together
//! `rate` messages a second, one at a time: the next only once the last
//! is acknowledged or has failed. Every text is `<k>.<sender>.<seq>`
//! (`k`: `r` room, `p` publication, `d` private message), so each is
//! unique and says who sent it and in which order.
//!
//! * **Acknowledged**: a room line by the sender's own `MSG` echo,
//!   `/publish` by `OK PUBLISH <id> <n>`, `/msg` by `OK MSG <user> <id>
//!   [queued]`. The id is the message's. A message whose sender got `ERR`
//!   (`unavailable`) or lost its connection first is **unacknowledged**.
//! * **Deliveries**: `MSG` (room), `PUB`, `DM` (also the queued ones after
//!   `OK LOGIN`): *live*; `HIST` lines of a catch-up: *from history*.
//! * A user whose connection ends (`BYE`, end of stream, a failed write)
//!   reconnects at once, to the edge a `REDIRECT` named if it got one,
//!   else to its own edge or else any other that accepts,
//!   logs in again (retrying `ERR unavailable`), joins [`ROOM`] and catches
//!   up with `/history 500` and `/history @<peer> 500` for both of its
//!   private conversations; those `HIST` lines count as deliveries (lines
//!   of its own excepted). Users listed in `churn` also `/quit` and come
//!   back that way every `churn_every` (so logins happen all along).
//! * The end ([`Load::finish`]): the senders stop, each user says a last
//!   room line (a marker) and waits until it has seen everyone's marker;
//!   as each user's requests are applied in order, everything sent before
//!   a marker has then been delivered. Then the checks.
//!
//! # The rules
//!
//! 1. **Never twice.** A recipient gets each message under one id only (two
//!    ids: it was applied twice), and live at most once. Each text is at
//!    most once in its Redis stream (room history, publications, private
//!    conversation), and an acknowledged one is there under its id. Nobody
//!    gets a private message or publication that was not for them. This
//!    holds for unacknowledged messages too: they may be lost or
//!    delivered, but not twice.
//! 2. **Acknowledged room lines** reach every other user (all joined
//!    [`ROOM`] before the load began) exactly once, live or through a
//!    catch-up.
//! 3. **Acknowledged private messages** reach their recipient exactly once:
//!    live, queued after `OK LOGIN`, or through a catch-up.
//! 4. **Acknowledged publications** (there is no history to catch up
//!    with) reach every subscriber session that was ready (logged in,
//!    joined, subscribed) when the publication was sent, live, if that
//!    session lasted to the end; a session that ended may miss the ones
//!    after the last line it got from that publisher (they may have been
//!    in flight to an edge that died), not one before it.
//! 5. **Per-publisher order.** Within one session, the live lines a user
//!    gets from one sender (room lines, publications and private messages
//!    together) have increasing sequence numbers.
//! 6. **Sessions** (checked once settled, all users connected): each user's
//!    `chat:session:<user>` names the edge its connection is on, the user
//!    is in exactly one `chat:edge:sessions:*` set (that edge's), every
//!    session in Redis is on an edge whose heartbeat holds, and
//!    `chat:room:<ROOM>` holds exactly the users.
//!
//! Where exactness is impossible (a user whose edge died as a message was
//! routed, or who was between connections), rules 2 and 3 accept the
//! catch-up from history, deduplicated by id; rule 4 excuses only the tail
//! described.
//!
//! **Recovery time**: from [`Load::fault`] to the first live delivery
//! (to someone else) of a message sent after it: the first such delivery
//! at all, and the moment every sender had one delivered again (the
//! figure reported). For logins: to the first `OK LOGIN` of a login sent
//! after the fault.

use crate::{password, Role, System, WAIT};
use redis::AsyncCommands;
use shared::line::ServerLine;
use shared::protocol::ErrorCode;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;

/// The room every user of the load is in.
pub const ROOM: &str = "chaos";

/// What the load is made of.
#[derive(Clone, Debug)]
pub struct Options {
    /// Users `u0`, `u1`, …
    pub users: usize,
    /// Messages a second, all users together.
    pub rate: f64,
    /// Users that `/quit` and log in again every `churn_every`.
    pub churn: Vec<usize>,
    pub churn_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            users: 6,
            rate: 20.0,
            churn: Vec::new(),
            churn_every: Duration::from_secs(3),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Setup,
    Run,
    Stop,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Room,
    Publish,
    Dm,
}

impl Kind {
    fn letter(self) -> char {
        match self {
            Kind::Room => 'r',
            Kind::Publish => 'p',
            Kind::Dm => 'd',
        }
    }
}

/// `<k>.u<sender>.<seq>` → (kind, sender, seq).
fn parse_text(text: &str) -> Option<(Kind, usize, u64)> {
    let mut it = text.split('.');
    let kind = match it.next()? {
        "r" => Kind::Room,
        "p" => Kind::Publish,
        "d" => Kind::Dm,
        _ => return None,
    };
    let sender = it.next()?.strip_prefix('u')?.parse().ok()?;
    let seq = it.next()?.parse().ok()?;
    it.next().is_none().then_some((kind, sender, seq))
}

/// `f.u<user>`: a user's last line.
fn parse_marker(text: &str) -> Option<usize> {
    text.strip_prefix("f.u")?.parse().ok()
}

/// One message sent.
#[derive(Debug)]
struct Sent {
    kind: Kind,
    sender: usize,
    seq: u64,
    /// A private message's recipient.
    to: Option<usize>,
    at: Instant,
    /// Its id and when it was acknowledged.
    ack: Option<(String, Instant)>,
    /// Why it is not acknowledged (`ERR` code, lost connection, no echo).
    failed: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    Live,
    History,
}

#[derive(Debug)]
struct Delivery {
    to: usize,
    session: usize,
    text: String,
    id: String,
    how: How,
    at: Instant,
}

#[derive(Debug)]
struct Session {
    edge: String,
    opened: Instant,
    ready: Option<Instant>,
    end: Option<(Instant, String)>,
}

#[derive(Debug)]
struct Login {
    sent: Instant,
    answered: Instant,
    ok: bool,
}

#[derive(Default)]
struct Log {
    sent: HashMap<String, Sent>,
    deliveries: Vec<Delivery>,
    /// Per user.
    sessions: Vec<Vec<Session>>,
    logins: Vec<Login>,
    /// Per user: whose markers it has seen; its own acknowledged.
    markers: Vec<HashSet<usize>>,
    marker_acked: Vec<bool>,
    /// Per user: the edge of its session while it is ready.
    ready_on: Vec<Option<String>>,
    violations: Vec<String>,
    notes: Vec<String>,
    fault: Option<Instant>,
}

struct Inner {
    log: Mutex<Log>,
    names: Vec<String>,
    /// `subs[i]`: whom user `i` subscribes to.
    subs: Vec<Vec<usize>>,
}

impl Inner {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The load under way ([`Load::start`]), checked by [`Load::finish`].
pub struct Load {
    inner: Arc<Inner>,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<()>>,
}

/// What [`Load::finish`] measured.
#[derive(Debug)]
pub struct Report {
    /// From the fault to the moment every sender had a message sent after
    /// it delivered to someone.
    pub recovery: Option<Duration>,
    /// From the fault to the first delivery of a message sent after it.
    pub first_delivery: Option<Duration>,
    /// From the fault to the first `OK LOGIN` of a login sent after it.
    pub login_recovery: Option<Duration>,
    /// The longest a sender waited for an acknowledgement.
    pub slowest_ack: Option<Duration>,
    pub sent: usize,
    pub acked: usize,
    /// Unacknowledged, per reason.
    pub failed: BTreeMap<String, usize>,
    pub live: usize,
    /// Deliveries that came only from a catch-up.
    pub from_history: usize,
    /// Connections that ended other than by the user's `/quit`.
    pub lost_sessions: usize,
    pub logins_ok: usize,
    pub logins_failed: usize,
    /// Publications rule 4 excused (in flight to a session that ended).
    pub excused: usize,
    /// Every session after a user's first: when it was opened, on which edge.
    pub arrivals: Vec<(Instant, String)>,
    pub notes: Vec<String>,
}

impl Report {
    /// Prints `recovery <fault>: <ms> ms` and the figures behind it.
    pub fn print(&self, fault: &str) {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
        eprintln!(
            "recovery {fault}: {} ms (first delivery after the fault: {} ms; logins: {} ms)",
            ms(self.recovery),
            ms(self.first_delivery),
            ms(self.login_recovery)
        );
        eprintln!(
            "  {fault}: sent {}, acknowledged {} (slowest after {} ms), unacknowledged {:?}, \
             live deliveries {}, only from history {}, lost connections {}, \
             logins {} ok / {} failed, publications excused {}",
            self.sent,
            self.acked,
            ms(self.slowest_ack),
            self.failed,
            self.live,
            self.from_history,
            self.lost_sessions,
            self.logins_ok,
            self.logins_failed,
            self.excused
        );
        for n in self.notes.iter().take(20) {
            eprintln!("  {fault}: note: {n}");
        }
    }
}

impl Load {
    /// Creates the users, logs them in, joins them and subscribes them,
    /// then starts the senders.
    pub async fn start(sys: &System, opts: Options) -> Load {
        let n = opts.users;
        assert!(n >= 3, "at least three users");
        let names: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        for name in &names {
            sys.add_user(name).await;
        }
        let subs = (0..n).map(|i| vec![(i + 1) % n, (i + 2) % n]).collect();
        let inner = Arc::new(Inner {
            log: Mutex::new(Log {
                sessions: (0..n).map(|_| Vec::new()).collect(),
                markers: vec![HashSet::new(); n],
                marker_acked: vec![false; n],
                ready_on: vec![None; n],
                ..Log::default()
            }),
            names,
            subs,
        });
        let edges: Vec<SocketAddr> = (0..sys.count(Role::Edge)).map(|i| sys.edge(i)).collect();
        let tls = shared::tls::client_config(&sys.trust()).unwrap();
        let (phase, _) = watch::channel(Phase::Setup);
        let interval = Duration::from_secs_f64(n as f64 / opts.rate);
        let reply_wait = Duration::from_millis(sys.cfg.edge.request_timeout_ms) + WAIT;
        let mut tasks = Vec::new();
        for me in 0..n {
            let actor = Actor {
                me,
                n,
                inner: Arc::clone(&inner),
                edges: edges.clone(),
                tls: Arc::clone(&tls),
                phase: phase.subscribe(),
                interval,
                churn: opts.churn.contains(&me).then_some(opts.churn_every),
                reply_wait,
                seq: 0,
                session: 0,
                moves: 0,
                hint: None,
                pending: None,
                // Staggered starts.
                next_send: Instant::now() + interval.mul_f64(me as f64 / n as f64),
            };
            tasks.push(tokio::spawn(actor.run()));
        }
        let load = Load {
            inner,
            phase,
            tasks,
        };
        load.wait_until(
            "every user is logged in, in the room and subscribed",
            |log| log.ready_on.iter().all(Option::is_some),
        )
        .await;
        load.phase.send_replace(Phase::Run);
        load
    }

    /// Lets the load run for `d` (the senders pace themselves).
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Marks the instant of the fault (call it just before injecting it).
    pub fn fault(&self) {
        self.inner.log().fault.get_or_insert_with(Instant::now);
    }

    /// Connections lost so far (not counting `/quit`s).
    pub fn lost_sessions(&self) -> usize {
        lost(&self.inner.log())
    }

    /// Waits until the load has had a message sent after the fault
    /// delivered for every sender (the service is back for everyone).
    pub async fn recovered(&self) {
        self.wait_until("every sender has a message delivered again", |log| {
            recovery(log, self.inner.names.len()).0.is_some()
        })
        .await;
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            {
                let log = self.inner.log();
                if done(&log) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!("timed out waiting until {what}\n{}", diagnostics(&log));
                }
            }
            if self.tasks.iter().any(|t| t.is_finished()) {
                panic!(
                    "a user of the load stopped while waiting until {what}\n{}",
                    diagnostics(&self.inner.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the senders, waits until everything sent has settled, checks
    /// the rules (panicking with every violation) and returns the figures.
    pub async fn finish(self, sys: &System) -> Report {
        self.phase.send_replace(Phase::Stop);
        let n = self.inner.names.len();
        self.wait_until("every user has seen everyone's last line", |log| {
            (0..n).all(|u| {
                log.marker_acked[u] && log.markers[u].len() == n && log.ready_on[u].is_some()
            })
        })
        .await;
        let ready_on: Vec<String> = (self.inner.log().ready_on.iter())
            .map(|e| e.clone().unwrap_or_default())
            .collect();
        let mut violations = check_redis(sys, &self.inner, &ready_on).await;
        self.phase.send_replace(Phase::Done);
        for t in self.tasks {
            let _ = tokio::time::timeout(WAIT, t).await;
        }
        let log = self.inner.log();
        violations.extend(log.violations.iter().cloned());
        let (mut found, report) = verify(&log, &self.inner);
        violations.append(&mut found);
        if !violations.is_empty() {
            let mut text = format!("{} violation(s):\n", violations.len());
            for v in violations.iter().take(40) {
                let _ = writeln!(text, "  {v}");
            }
            let _ = writeln!(text, "{report:?}");
            panic!("{text}");
        }
        report
    }
}

fn lost(log: &Log) -> usize {
    log.sessions
        .iter()
        .flatten()
        .filter(|s| {
            s.end
                .as_ref()
                .is_some_and(|(_, why)| why != "quit" && why != "done")
        })
        .count()
}

fn diagnostics(log: &Log) -> String {
    let mut s = String::new();
    for (u, sessions) in log.sessions.iter().enumerate() {
        let _ = writeln!(
            s,
            "  u{u}: ready on {:?}, marker acked {}, markers seen {:?}, sessions {:?}",
            log.ready_on[u], log.marker_acked[u], log.markers[u], sessions
        );
    }
    let mut last: BTreeMap<usize, &Sent> = BTreeMap::new();
    for sent in log.sent.values() {
        if last.get(&sent.sender).is_none_or(|s| s.seq < sent.seq) {
            last.insert(sent.sender, sent);
        }
    }
    for (u, sent) in last {
        let _ = writeln!(
            s,
            "  u{u}: last sent {:?} #{} {:?} ago, ack {:?}, failed {:?}",
            sent.kind,
            sent.seq,
            sent.at.elapsed(),
            sent.ack.as_ref().map(|(id, _)| id),
            sent.failed
        );
    }
    if let Some(f) = log.fault {
        let _ = writeln!(s, "  fault {:?} ago", f.elapsed());
        let mut back = BTreeMap::new();
        for d in &log.deliveries {
            if let Some(sent) = log.sent.get(&d.text) {
                if sent.at >= f && sent.sender != d.to {
                    back.entry(sent.sender).or_insert(d.at - f);
                }
            }
        }
        let _ = writeln!(s, "  first delivery after the fault, per sender: {back:?}");
    }
    for v in log.violations.iter().take(20) {
        let _ = writeln!(s, "  violation: {v}");
    }
    s
}

/// (every sender delivered again, first delivery) after the fault.
fn recovery(log: &Log, n: usize) -> (Option<Duration>, Option<Duration>) {
    let Some(fault) = log.fault else {
        return (None, None);
    };
    let mut first: Vec<Option<Instant>> = vec![None; n];
    for d in log.deliveries.iter().filter(|d| d.how == How::Live) {
        let Some(sent) = log.sent.get(&d.text) else {
            continue;
        };
        if sent.sender != d.to && sent.at >= fault {
            let f = &mut first[sent.sender];
            if f.is_none_or(|t| d.at < t) {
                *f = Some(d.at);
            }
        }
    }
    let all = first
        .iter()
        .map(|t| t.map(|t| t - fault))
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().max());
    let any = first.iter().flatten().min().map(|t| *t - fault);
    (all, any)
}

/// Rules 1 to 5 over what was recorded.
fn verify(log: &Log, inner: &Inner) -> (Vec<String>, Report) {
    let names = &inner.names;
    let n = names.len();
    let mut v = Vec::new();
    // (recipient, text) → deliveries.
    let mut got: HashMap<(usize, &str), Vec<&Delivery>> = HashMap::new();
    for d in &log.deliveries {
        got.entry((d.to, d.text.as_str())).or_default().push(d);
    }
    // Rule 1.
    for ((to, text), ds) in &got {
        let Some(sent) = log.sent.get(*text) else {
            v.push(format!("u{to} got {text:?}, which nobody sent"));
            continue;
        };
        let ids: HashSet<&str> = ds.iter().map(|d| d.id.as_str()).collect();
        if ids.len() > 1 {
            v.push(format!("u{to} got {text} under ids {ids:?}: applied twice"));
        }
        if let Some((id, _)) = &sent.ack {
            if !ids.contains(id.as_str()) || ids.len() > 1 {
                v.push(format!(
                    "u{to} got {text} under {ids:?}, acknowledged as {id}"
                ));
            }
        }
        let live = ds.iter().filter(|d| d.how == How::Live).count();
        if live > 1 {
            v.push(format!("u{to} got {text} live {live} times"));
        }
        match sent.kind {
            Kind::Dm if sent.to != Some(*to) && sent.sender != *to => v.push(format!(
                "u{to} got {text}, a private message to someone else"
            )),
            Kind::Publish if !inner.subs[*to].contains(&sent.sender) => v.push(format!(
                "u{to} got {text} without subscribing to its sender"
            )),
            _ => {}
        }
    }
    // (recipient, session, sender) → highest sequence number got live.
    let mut highest: HashMap<(usize, usize, usize), u64> = HashMap::new();
    // Rule 5, on the way.
    for d in log.deliveries.iter().filter(|d| d.how == How::Live) {
        let Some(sent) = log.sent.get(&d.text) else {
            continue;
        };
        let key = (d.to, d.session, sent.sender);
        if let Some(prev) = highest.get(&key) {
            if sent.seq <= *prev {
                v.push(format!(
                    "u{} (session {}) got {} after u{}'s number {prev}: out of order",
                    d.to, d.session, d.text, sent.sender
                ));
            }
        }
        let h = highest.entry(key).or_insert(sent.seq);
        *h = (*h).max(sent.seq);
    }
    // Rules 2 to 4.
    let mut excused = 0;
    let mut from_history = 0;
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    let mut acked = 0;
    for (text, sent) in &log.sent {
        let Some((_, _)) = &sent.ack else {
            *failed
                .entry(sent.failed.clone().unwrap_or_else(|| "no answer".into()))
                .or_default() += 1;
            continue;
        };
        acked += 1;
        let has = |to: usize| got.get(&(to, text.as_str()));
        match sent.kind {
            Kind::Room | Kind::Dm => {
                let recipients: Vec<usize> = match sent.kind {
                    Kind::Room => (0..n).filter(|r| *r != sent.sender).collect(),
                    _ => sent.to.into_iter().collect(),
                };
                for r in recipients {
                    match has(r) {
                        None => v.push(format!(
                            "u{r} never got {text} (acknowledged as {:?})",
                            sent.ack.as_ref().map(|(id, _)| id)
                        )),
                        Some(ds) if ds.iter().all(|d| d.how == How::History) => from_history += 1,
                        Some(_) => {}
                    }
                }
            }
            Kind::Publish => {
                for r in (0..n).filter(|r| inner.subs[*r].contains(&sent.sender)) {
                    for (si, s) in log.sessions[r].iter().enumerate() {
                        let before = s.end.as_ref().is_some_and(|(t, _)| *t < sent.at);
                        if s.ready.is_none_or(|t| t > sent.at) || before {
                            continue;
                        }
                        let later = highest
                            .get(&(r, si, sent.sender))
                            .is_some_and(|h| *h > sent.seq);
                        let live = has(r).is_some_and(|ds| {
                            ds.iter().any(|d| d.session == si && d.how == How::Live)
                        });
                        if live {
                            continue;
                        }
                        let lasted = s.end.as_ref().is_none_or(|(_, why)| why == "done");
                        if lasted || later {
                            v.push(format!(
                                "u{r} (session {si} on {}, ended {:?}) never got {text}",
                                s.edge,
                                s.end.as_ref().map(|(_, why)| why)
                            ));
                        } else {
                            excused += 1;
                        }
                    }
                }
            }
        }
    }
    let (recovery_all, first) = recovery(log, n);
    let login_recovery = log.fault.and_then(|f| {
        log.logins
            .iter()
            .filter(|l| l.ok && l.sent >= f)
            .map(|l| l.answered - f)
            .min()
    });
    let report = Report {
        recovery: recovery_all,
        first_delivery: first,
        login_recovery,
        slowest_ack: log
            .sent
            .values()
            .filter_map(|s| s.ack.as_ref().map(|(_, t)| *t - s.at))
            .max(),
        sent: log.sent.len(),
        acked,
        failed,
        live: log.deliveries.iter().filter(|d| d.how == How::Live).count(),
        from_history,
        lost_sessions: lost(log),
        logins_ok: log.logins.iter().filter(|l| l.ok).count(),
        logins_failed: log.logins.iter().filter(|l| !l.ok).count(),
        excused,
        arrivals: log
            .sessions
            .iter()
            .flat_map(|s| s.iter().skip(1))
            .map(|s| (s.opened, s.edge.clone()))
            .collect(),
        notes: log.notes.clone(),
    };
    (v, report)
}

/// Rule 6 and the stream half of rule 1, read from Redis.
async fn check_redis(sys: &System, inner: &Inner, ready_on: &[String]) -> Vec<String> {
    let mut v = Vec::new();
    let keys = sys.keys();
    let mut r = sys.redis.conn().await;
    let names = &inner.names;
    let n = names.len();
    // Sessions.
    let (now_s, now_us): (u64, u64) = redis::cmd("TIME").query_async(&mut r).await.unwrap();
    let now_ms = now_s * 1000 + now_us / 1000;
    for (u, name) in names.iter().enumerate() {
        let edge: Option<String> = r.hget(keys.session(name), "edge").await.unwrap();
        if edge.as_deref() != Some(ready_on[u].as_str()) {
            v.push(format!(
                "{name}'s session is on {edge:?}; its connection is on {}",
                ready_on[u]
            ));
        }
    }
    let sets: Vec<String> = r.keys(keys.edge_sessions("*")).await.unwrap();
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    for set in &sets {
        let edge = set.trim_start_matches(&keys.edge_sessions(""));
        let members: Vec<String> = r.smembers(set).await.unwrap();
        for m in members {
            holders.entry(m).or_default().push(edge.to_string());
        }
    }
    for (u, name) in names.iter().enumerate() {
        let h = holders.get(name).cloned().unwrap_or_default();
        if h != [ready_on[u].clone()] {
            v.push(format!(
                "{name} is in the session sets of {h:?}; its connection is on {}",
                ready_on[u]
            ));
        }
    }
    let sessions: Vec<String> = r.keys(keys.session("*")).await.unwrap();
    for key in sessions {
        let edge: Option<String> = r.hget(&key, "edge").await.unwrap();
        let Some(edge) = edge else { continue };
        let until: Option<f64> = r.zscore(keys.edges(), &edge).await.unwrap();
        if until.is_none_or(|t| (t as u64) < now_ms) {
            v.push(format!("{key} is on {edge}, whose heartbeat has run out"));
        }
    }
    let mut members: Vec<String> = r.smembers(keys.room(ROOM)).await.unwrap();
    members.sort();
    let mut want = names.clone();
    want.sort();
    if members != want {
        v.push(format!("{ROOM} holds {members:?}, not {want:?}"));
    }
    // Streams: each text at most once, acknowledged ones under their id.
    let mut streams = vec![keys.history(ROOM)];
    for (i, a) in names.iter().enumerate() {
        streams.push(keys.publications(a));
        streams.push(keys.dm(a, &names[(i + 1) % n]));
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for key in streams {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut r)
            .await
            .unwrap();
        for (id, fields) in entries {
            let Some(text) = fields.get("text") else {
                continue;
            };
            if parse_text(text).is_none() {
                continue;
            }
            if let Some(first) = seen.insert(text.clone(), id.clone()) {
                v.push(format!("{key} holds {text} twice: {first} and {id}"));
            }
        }
    }
    let log = inner.log();
    for (text, sent) in &log.sent {
        if let Some((id, _)) = &sent.ack {
            if seen.get(text) != Some(id) {
                v.push(format!(
                    "{text} was acknowledged as {id}; its stream has {:?}",
                    seen.get(text)
                ));
            }
        }
    }
    v
}

/// A connection of the checker's: unlike [`crate::Client`], it never fails
/// the test on a closed connection.
struct Conn {
    lines: Lines<BufReader<ReadHalf<TlsStream<TcpStream>>>>,
    wr: WriteHalf<TlsStream<TcpStream>>,
    edge: String,
}

enum Next {
    Line(ServerLine),
    Bad(String),
    Closed,
}

impl Conn {
    /// Connects and reads `HELLO`; `None` if that fails within 5 s.
    async fn open(addr: SocketAddr, tls: &Arc<ClientConfig>) -> Option<Conn> {
        let open = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let name = shared::tls::server_name("localhost").ok()?;
            let tls = TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
                .ok()?;
            let (rd, wr) = tokio::io::split(tls);
            let mut lines = BufReader::new(rd).lines();
            let hello = lines.next_line().await.ok()??;
            match ServerLine::parse(&hello) {
                Ok(ServerLine::Hello { edge, .. }) => Some(Conn { lines, wr, edge }),
                _ => None,
            }
        };
        tokio::time::timeout(Duration::from_secs(5), open)
            .await
            .ok()
            .flatten()
    }

    async fn send(&mut self, line: &str) -> bool {
        let write = async {
            self.wr.write_all(format!("{line}\n").as_bytes()).await?;
            self.wr.flush().await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), write).await,
            Ok(Ok(()))
        )
    }

    /// The next line (cancel-safe).
    async fn next(&mut self) -> Next {
        match self.lines.next_line().await {
            Ok(Some(line)) => match ServerLine::parse(&line) {
                Ok(l) => Next::Line(l),
                Err(_) => Next::Bad(line),
            },
            _ => Next::Closed,
        }
    }
}

/// How a session ended.
enum End {
    Lost(String),
    Quit,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    Sent(Kind),
    Marker,
}

/// The one message in hand, awaiting its acknowledgement.
struct Pending {
    kind: PendingKind,
    text: String,
    deadline: Instant,
}

/// One user of the load.
struct Actor {
    me: usize,
    n: usize,
    inner: Arc<Inner>,
    edges: Vec<SocketAddr>,
    tls: Arc<ClientConfig>,
    phase: watch::Receiver<Phase>,
    interval: Duration,
    churn: Option<Duration>,
    reply_wait: Duration,
    seq: u64,
    /// The index of the current session.
    session: usize,
    /// Connections made after the first (the edge tried first rotates).
    moves: usize,
    /// The edge the last `REDIRECT` named: tried first.
    hint: Option<SocketAddr>,
    pending: Option<Pending>,
    next_send: Instant,
}

impl Actor {
    fn name(&self) -> &str {
        &self.inner.names[self.me]
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    fn violation(&self, what: String) {
        let what = format!("{}: {what}", self.name());
        self.inner.log().violations.push(what);
    }

    fn note(&self, what: String) {
        let what = format!("{}: {what}", self.name());
        self.inner.log().notes.push(what);
    }

    async fn run(mut self) {
        let mut first = true;
        while self.phase() != Phase::Done {
            let Some(mut conn) = self.connect().await else {
                self.violation("no edge accepted a connection".into());
                return;
            };
            {
                let mut log = self.inner.log();
                let sessions = &mut log.sessions[self.me];
                sessions.push(Session {
                    edge: conn.edge.clone(),
                    opened: Instant::now(),
                    ready: None,
                    end: None,
                });
                self.session = sessions.len() - 1;
            }
            let end = match self.setup(&mut conn, first).await {
                Ok(()) => {
                    first = false;
                    self.main(&mut conn).await
                }
                Err(end) => end,
            };
            self.end_session(&end);
            if matches!(end, End::Done) {
                return;
            }
            self.moves += 1;
        }
    }

    /// A connection to the edge a `REDIRECT` named, or the edge this user
    /// prefers now, or else any other.
    async fn connect(&mut self) -> Option<Conn> {
        if let Some(hint) = self.hint.take() {
            if let Some(c) = Conn::open(hint, &self.tls).await {
                return Some(c);
            }
        }
        let deadline = Instant::now() + 2 * WAIT;
        let k = self.edges.len();
        while Instant::now() < deadline {
            for i in 0..k {
                let addr = self.edges[(self.me + self.moves + i) % k];
                if let Some(c) = Conn::open(addr, &self.tls).await {
                    return Some(c);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn end_session(&mut self, end: &End) {
        let why = match end {
            End::Lost(why) => why.clone(),
            End::Quit => "quit".into(),
            End::Done => "done".into(),
        };
        let pending = self.pending.take();
        let mut log = self.inner.log();
        log.ready_on[self.me] = None;
        log.sessions[self.me][self.session].end = Some((Instant::now(), why));
        if let Some(p) = pending {
            if let Some(sent) = log.sent.get_mut(&p.text) {
                if sent.ack.is_none() {
                    sent.failed = Some("connection lost".into());
                }
            }
        }
    }

    /// Sends a command and reads up to its final line, recording what
    /// comes meanwhile.
    async fn command(&mut self, c: &mut Conn, line: &str) -> Result<ServerLine, End> {
        if !c.send(line).await {
            return Err(End::Lost("write failed".into()));
        }
        let deadline = tokio::time::Instant::now() + self.reply_wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, c.next()).await {
                Ok(next) => next,
                Err(_) => {
                    self.violation(format!("no answer to {line:?}"));
                    return Err(End::Lost("no answer".into()));
                }
            };
            match next {
                Next::Line(l) if l.is_final() => return Ok(l),
                Next::Line(l) => self.on_line(&l),
                Next::Bad(l) => self.violation(format!("not a protocol line: {l:?}")),
                Next::Closed => return Err(End::Lost("connection closed".into())),
            }
        }
    }

    /// A command that must succeed, retried on `ERR unavailable`.
    async fn command_ok(&mut self, c: &mut Conn, line: &str) -> Result<(), End> {
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            match self.command(c, line).await? {
                ServerLine::Err {
                    code: ErrorCode::Unavailable,
                    ..
                } if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ServerLine::Err { code, text } => {
                    self.violation(format!("{line:?}: ERR {code} {text}"));
                    return Err(End::Lost("command failed".into()));
                }
                _ => return Ok(()),
            }
        }
    }

    /// Logs in, joins the room, and subscribes (the first time) or catches
    /// up (afterwards).
    async fn setup(&mut self, c: &mut Conn, first: bool) -> Result<(), End> {
        let login = format!("LOGIN {} {}", self.name(), password(self.name()));
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            let sent = Instant::now();
            let reply = self.command(c, &login).await?;
            let ok = matches!(reply, ServerLine::OkLogin { .. });
            self.inner.log().logins.push(Login {
                sent,
                answered: Instant::now(),
                ok,
            });
            match reply {
                ServerLine::OkLogin { .. } => break,
                ServerLine::Err {
                    code: ErrorCode::Unavailable,
                    ..
                } if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => {
                    self.violation(format!("LOGIN: {other}"));
                    return Err(End::Lost("login failed".into()));
                }
            }
        }
        self.command_ok(c, &format!("/join {ROOM}")).await?;
        if first {
            for s in self.inner.subs[self.me].clone() {
                let line = format!("/subscribe {}", self.inner.names[s]);
                self.command_ok(c, &line).await?;
            }
        } else {
            self.command_ok(c, "/history 500").await?;
            let n = self.n;
            for peer in [(self.me + 1) % n, (self.me + n - 1) % n] {
                let line = format!("/history @{} 500", self.inner.names[peer]);
                self.command_ok(c, &line).await?;
            }
        }
        let mut log = self.inner.log();
        log.sessions[self.me][self.session].ready = Some(Instant::now());
        log.ready_on[self.me] = Some(c.edge.clone());
        Ok(())
    }

    /// Sends at its pace, reads, and ends the session when told to, when
    /// the connection ends, or to churn.
    async fn main(&mut self, c: &mut Conn) -> End {
        let churn_at = self.churn.map(|d| Instant::now() + d);
        loop {
            let phase = self.phase();
            let now = Instant::now();
            if phase == Phase::Done {
                return End::Done;
            }
            if let Some(p) = &self.pending {
                if now >= p.deadline {
                    let p = self.pending.take().unwrap();
                    match p.kind {
                        PendingKind::Sent(Kind::Room) => {
                            let mut log = self.inner.log();
                            if let Some(s) = log.sent.get_mut(&p.text) {
                                if s.ack.is_none() {
                                    s.failed = Some("no echo in time".into());
                                }
                            }
                        }
                        PendingKind::Marker => {}
                        PendingKind::Sent(_) => {
                            self.violation(format!("no final reply for {}", p.text))
                        }
                    }
                }
            }
            if self.pending.is_none() {
                if phase == Phase::Run && churn_at.is_some_and(|t| now >= t) {
                    return self.quit(c).await;
                }
                let marker_acked = self.inner.log().marker_acked[self.me];
                if phase == Phase::Stop && !marker_acked {
                    let text = format!("f.u{}", self.me);
                    if !c.send(&text).await {
                        return End::Lost("write failed".into());
                    }
                    self.pending = Some(Pending {
                        kind: PendingKind::Marker,
                        text,
                        deadline: now + self.reply_wait,
                    });
                } else if phase == Phase::Run && now >= self.next_send {
                    self.next_send = (self.next_send + self.interval).max(now);
                    if !self.send_next(c).await {
                        return End::Lost("write failed".into());
                    }
                }
            }
            let mut wake = now + Duration::from_millis(50);
            if phase == Phase::Run && self.pending.is_none() {
                wake = wake.min(self.next_send);
            }
            if let Some(p) = &self.pending {
                wake = wake.min(p.deadline);
            }
            tokio::select! {
                next = c.next() => match next {
                    Next::Line(l) => self.on_line(&l),
                    Next::Bad(l) => self.violation(format!("not a protocol line: {l:?}")),
                    Next::Closed => return End::Lost("connection closed".into()),
                },
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// `/quit`, reading (and recording) up to the end of the connection.
    async fn quit(&mut self, c: &mut Conn) -> End {
        if !c.send("/quit").await {
            return End::Lost("write failed".into());
        }
        let deadline = tokio::time::Instant::now() + self.reply_wait;
        loop {
            match tokio::time::timeout_at(deadline, c.next()).await {
                Ok(Next::Line(l)) => self.on_line(&l),
                Ok(Next::Bad(l)) => self.violation(format!("not a protocol line: {l:?}")),
                Ok(Next::Closed) => return End::Quit,
                Err(_) => {
                    self.violation("the connection stays open after /quit".into());
                    return End::Quit;
                }
            }
        }
    }

    /// The next message: a room line, a publication or a private message.
    async fn send_next(&mut self, c: &mut Conn) -> bool {
        let (me, n) = (self.me, self.n);
        let seq = self.seq;
        self.seq += 1;
        let kind = match (seq + me as u64) % 3 {
            0 => Kind::Room,
            1 => Kind::Publish,
            _ => Kind::Dm,
        };
        let text = format!("{}.u{me}.{seq}", kind.letter());
        let to = (kind == Kind::Dm).then_some((me + 1) % n);
        let line = match kind {
            Kind::Room => text.clone(),
            Kind::Publish => format!("/publish {text}"),
            Kind::Dm => format!("/msg {} {text}", self.inner.names[(me + 1) % n]),
        };
        let at = Instant::now();
        self.inner.log().sent.insert(
            text.clone(),
            Sent {
                kind,
                sender: me,
                seq,
                to,
                at,
                ack: None,
                failed: None,
            },
        );
        self.pending = Some(Pending {
            kind: PendingKind::Sent(kind),
            text,
            deadline: at + self.reply_wait,
        });
        c.send(&line).await
    }

    fn ack(&self, text: &str, id: &str) {
        let mut log = self.inner.log();
        let Some(sent) = log.sent.get_mut(text) else {
            return;
        };
        match &sent.ack {
            None => sent.ack = Some((id.to_string(), Instant::now())),
            Some((first, _)) if first != id => {
                let what = format!(
                    "{}: {text} acknowledged twice, as {first} and {id}",
                    self.inner.names[self.me]
                );
                log.violations.push(what);
            }
            Some(_) => {}
        }
    }

    fn deliver(&self, text: &str, id: &str, how: How) {
        let d = Delivery {
            to: self.me,
            session: self.session,
            text: text.to_string(),
            id: id.to_string(),
            how,
            at: Instant::now(),
        };
        self.inner.log().deliveries.push(d);
    }

    fn seen_marker(&self, of: usize) {
        self.inner.log().markers[self.me].insert(of);
    }

    /// Records a line that is not the final one of a command in hand.
    fn on_line(&mut self, line: &ServerLine) {
        let me = self.name().to_string();
        let pending_text = self.pending.as_ref().map(|p| p.text.clone());
        let resolves = |text: &str| pending_text.as_deref() == Some(text);
        match line {
            ServerLine::Redirect { addr } => self.hint = addr.parse().ok(),
            ServerLine::Msg {
                room,
                id,
                from,
                text,
            } if room == ROOM => {
                if let Some(of) = parse_marker(text) {
                    self.seen_marker(of);
                    if of == self.me {
                        self.inner.log().marker_acked[self.me] = true;
                    }
                } else if parse_text(text).is_some() {
                    self.deliver(text, id, How::Live);
                    if *from == me {
                        self.ack(text, id);
                    }
                } else {
                    self.violation(format!("unexpected {line}"));
                }
                if resolves(text) {
                    self.pending = None;
                }
            }
            ServerLine::Pub { id, text, .. } | ServerLine::Dm { id, text, .. } => {
                self.deliver(text, id, How::Live)
            }
            ServerLine::Hist { id, from, text, .. } => {
                if let Some(of) = parse_marker(text) {
                    self.seen_marker(of);
                } else if *from != me {
                    self.deliver(text, id, How::History);
                }
            }
            ServerLine::OkPublish { id, .. } | ServerLine::OkMsg { id, .. } => {
                let want = match line {
                    ServerLine::OkPublish { .. } => Kind::Publish,
                    _ => Kind::Dm,
                };
                match self.pending.take() {
                    Some(p) if p.kind == PendingKind::Sent(want) => self.ack(&p.text, id),
                    other => {
                        self.pending = other;
                        self.violation(format!("{line} answers nothing in hand"));
                    }
                }
            }
            ServerLine::Err { code, text } => match self.pending.take() {
                Some(p) => {
                    let mut log = self.inner.log();
                    if let Some(s) = log.sent.get_mut(&p.text) {
                        if s.ack.is_none() {
                            s.failed = Some(format!("ERR {code}"));
                        }
                    }
                }
                None => self.note(format!("ERR {code} {text} with nothing in hand")),
            },
            ServerLine::Gap { .. } => self.note(format!("{line}")),
            ServerLine::Bye { reason } if reason != "quit" => self.note(format!("BYE {reason}")),
            _ => {}
        }
    }
}
