//! The interactive client's state, without sockets or a terminal: server
//! lines in, entries for the message pane and lines to send out.

use crate::e2e::{E2e, Out, LOCK};
use shared::line::ServerLine;
use shared::protocol::{Command, ErrorCode};
use std::collections::{BTreeSet, HashMap, VecDeque};

/// How many lines the message pane keeps.
pub const SCROLLBACK: usize = 5000;
/// How many messages of the room are asked for after a reconnect: a
/// modest read, since every client of a restarted edge asks at once.
pub const CATCH_UP: usize = 50;

/// The commands Tab completes.
pub const COMMANDS: &[&str] = &[
    "/edges",
    "/help",
    "/fingerprint",
    "/history",
    "/join",
    "/key",
    "/leave",
    "/msg",
    "/ping",
    "/publish",
    "/quit",
    "/rooms",
    "/subscribe",
    "/subscriptions",
    "/trust",
    "/unsubscribe",
    "/who",
];

/// Whether a session closed with `BYE <reason>` should be opened again:
/// not when the user quit or logged in somewhere else.
pub fn reconnect_after(reason: &str) -> bool {
    !matches!(
        reason.split(' ').next().unwrap_or_default(),
        "quit" | "logged-in-elsewhere"
    )
}

/// Whether a login answered `ERR <code> <text>` is worth trying again:
/// when the back end was slow or failed, the client was rate-limited, or
/// the user's old session is still in place (policy `reject`). Any other
/// error (`bad-credentials`, `bad-name`, ...) will not go away by itself.
pub fn login_retry(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::AlreadyLoggedIn
    )
}

/// A message id `<ms>-<seq>`, ordered as the pair of numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Id(u64, u64);

impl Id {
    pub fn parse(id: &str) -> Option<Id> {
        let (ms, seq) = id.split_once('-')?;
        Some(Id(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The first id of the millisecond `ms`.
    fn at(ms: i64) -> Id {
        Id(ms.max(0) as u64, 0)
    }
}

/// The Unix milliseconds of a `<ms>-<seq>` message id.
pub fn id_ms(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// `HH:MM:SS` of Unix milliseconds in the time zone `tz`.
pub fn clock<Tz: chrono::TimeZone>(ms: i64, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .with_timezone(tz)
        .format("%H:%M:%S")
        .to_string()
}

/// Where the client is with its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Opening a connection (the first, or again after a loss).
    Connecting,
    /// Connected and logging in; after a reconnect, also rejoining the room
    /// and fetching what was missed. Lines typed now are not sent.
    LoggingIn,
    /// Logged in: lines typed are sent.
    Ready,
    /// Lost; the next attempt is on its way.
    Reconnecting { attempt: u32, delay_ms: u64 },
    /// Closed for good (quit, logged in elsewhere).
    Closed(String),
}

impl State {
    pub fn label(&self) -> String {
        match self {
            State::Connecting => "connecting".into(),
            State::LoggingIn => "logging in".into(),
            State::Ready => "connected".into(),
            State::Reconnecting { attempt, delay_ms } => {
                format!("reconnecting (attempt {attempt}, in {delay_ms} ms)")
            }
            State::Closed(why) => format!("disconnected: {why}"),
        }
    }
}

/// What an entry of the message pane is, which decides how it looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Said in a room.
    Msg {
        room: String,
        from: String,
    },
    /// A publication of someone the user subscribes to.
    Pub {
        from: String,
    },
    /// A private message to the user.
    DmIn {
        from: String,
    },
    /// A private message the user sent.
    DmOut {
        to: String,
    },
    /// A line of a `/history` the user asked for.
    Hist {
        conv: String,
        from: String,
    },
    /// Someone joined or left.
    Sys,
    /// The user changed rooms.
    Room,
    /// Listings, `INFO`, other `OK` lines, and lines the client does not
    /// know (shown as they are).
    Reply,
    Error,
    /// What the client itself says: connecting, reconnecting, ...
    Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Unix milliseconds: from the message id, or when the line arrived.
    pub ms: i64,
    pub kind: Kind,
    pub text: String,
    /// Written by the user.
    pub own: bool,
}

/// A command the client sent of its own accord after a login, whose
/// answer is taken in without being shown as such. Every command gets one
/// final `OK`/`ERR`, in order, and nothing of the user's is sent until
/// these are answered, so the next final reply is the first one's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Quiet {
    /// `/subscriptions`: its list replaces the one in the status line.
    Subscriptions,
    /// `/join <room>`: back into the room after a reconnect.
    Rejoin,
    /// The same, once a `RESUME` has put the session back there already
    /// (its `OK JOIN` came with the `OK LOGIN`): the answer says nothing
    /// new.
    Rejoined,
    /// `/history 50` after a reconnect: shows the rows newer than
    /// `since` (the newest message shown, or the join) and older than
    /// `until` (the first message that came live meanwhile).
    CatchUp {
        since: Option<Id>,
        until: Option<Id>,
        oldest: Option<Id>,
    },
}

/// The client's whole state.
#[derive(Debug)]
pub struct Model {
    pub user: String,
    pub room: String,
    pub edge: Option<String>,
    pub server: Option<String>,
    pub state: State,
    pub subscriptions: BTreeSet<String>,
    pub rooms: BTreeSet<String>,
    pub users: BTreeSet<String>,
    pub entries: VecDeque<Entry>,
    /// Entries ever pushed; the view uses it to keep a scrolled pane still.
    pub pushed: u64,
    /// Per conversation, the newest message id shown, or the first id of
    /// the millisecond the user joined (by the local clock) if that is
    /// later: what a catch-up shows must be newer.
    last: HashMap<String, Id>,
    /// The `SUB` lines of a `/subscriptions` answer so far.
    listed: BTreeSet<String>,
    /// The client's own commands not answered yet, oldest first.
    pending: VecDeque<Quiet>,
    /// Logged in before: the next login is a reconnect, which rejoins and
    /// fetches what was missed.
    was_in: bool,
    /// `/quit` sent: the end of the session is not a reason to reconnect.
    pub quitting: bool,
    /// End-to-end encryption of private messages, if the user has keys.
    pub e2e: Option<E2e>,
}

impl Model {
    pub fn new(user: &str) -> Model {
        Model {
            user: user.to_string(),
            room: "lobby".into(),
            edge: None,
            server: None,
            state: State::Connecting,
            subscriptions: BTreeSet::new(),
            rooms: BTreeSet::from(["lobby".to_string()]),
            users: BTreeSet::new(),
            entries: VecDeque::new(),
            pushed: 0,
            last: HashMap::new(),
            listed: BTreeSet::new(),
            pending: VecDeque::new(),
            was_in: false,
            quitting: false,
            e2e: None,
        }
    }

    /// With end-to-end encryption of private messages.
    pub fn with_e2e(mut self, e2e: E2e) -> Model {
        self.e2e = Some(e2e);
        self
    }

    pub fn push(&mut self, ms: i64, kind: Kind, text: impl Into<String>, own: bool) {
        if self.entries.len() == SCROLLBACK {
            self.entries.pop_front();
        }
        self.entries.push_back(Entry {
            ms,
            kind,
            text: text.into(),
            own,
        });
        self.pushed += 1;
    }

    pub fn notice(&mut self, now: i64, text: impl Into<String>) {
        self.push(now, Kind::Client, text, false);
    }

    /// Whether lines typed can go out now.
    pub fn can_send(&self) -> bool {
        self.state == State::Ready
    }

    /// A connection to `server` is open.
    pub fn connected(&mut self, now: i64, server: &str) {
        self.server = Some(server.to_string());
        self.state = State::LoggingIn;
        self.pending.clear();
        self.listed.clear();
        self.notice(now, format!("connected to {server}"));
        let outs = self.e2e.as_mut().map(E2e::reset).unwrap_or_default();
        self.apply(now, outs);
    }

    /// The connection is gone; the next attempt is in `delay_ms`, or never.
    pub fn lost(&mut self, now: i64, why: &str, retry: Option<(u32, u64)>) {
        self.edge = None;
        self.state = match retry {
            Some((attempt, delay_ms)) => State::Reconnecting { attempt, delay_ms },
            None => State::Closed(why.to_string()),
        };
        let text = match retry {
            Some((_, delay_ms)) => format!("disconnected: {why}; trying again in {delay_ms} ms"),
            None => format!("disconnected: {why}"),
        };
        self.notice(now, text);
    }

    /// The user pressed Enter on `line`: the lines to send.
    pub fn submit(&mut self, now: i64, line: &str) -> Vec<String> {
        if line.is_empty() {
            return Vec::new();
        }
        if !self.can_send() {
            self.notice(
                now,
                format!("not connected ({}): not sent", self.state.label()),
            );
            return Vec::new();
        }
        if line
            .split(' ')
            .next()
            .unwrap_or_default()
            .eq_ignore_ascii_case("/quit")
        {
            self.quitting = true;
        }
        let outs = match self.e2e.as_mut() {
            Some(e2e) => e2e.input(line),
            None => match Command::parse(line) {
                Ok(Some(Command::Msg { to, text })) => vec![
                    Out::Send(line.to_string()),
                    Out::Sent {
                        to,
                        text,
                        sealed: false,
                    },
                ],
                _ => vec![Out::Send(line.to_string())],
            },
        };
        self.apply(now, outs)
    }

    /// Shows what the encryption says, and returns the lines it sends.
    fn apply(&mut self, now: i64, outs: Vec<Out>) -> Vec<String> {
        let mut send = Vec::new();
        for out in outs {
            match out {
                Out::Send(line) => send.push(line),
                Out::Sent { to, text, sealed } => {
                    self.users.insert(to.clone());
                    let text = if sealed {
                        format!("{LOCK}{text}")
                    } else {
                        text
                    };
                    self.push(now, Kind::DmOut { to }, text, true);
                }
                Out::Notice(text) => self.notice(now, text),
                Out::Warning(text) => self.push(now, Kind::Error, text, false),
            }
        }
        send
    }

    /// The text of a private message from `from` as shown (opened, if it
    /// is sealed; `delivered`: a `DM`, see `E2e::open`).
    fn open(&mut self, now: i64, from: &str, text: String, delivered: bool) -> String {
        let Some(e2e) = self.e2e.as_mut() else {
            return text;
        };
        let (shown, warning) = e2e.open(from, &text, delivered);
        self.apply(now, warning.into_iter().collect());
        shown
    }

    /// A line from the server: updates the state, shows what is worth
    /// showing, and returns the lines to send in answer. A line that is not
    /// one of the protocol's (a newer server's) is shown as it is.
    pub fn on_line(&mut self, now: i64, line: &str) -> Vec<String> {
        match ServerLine::parse(line) {
            Ok(l) => self.on_server_line(now, l),
            Err(_) => {
                self.push(now, Kind::Reply, line, false);
                Vec::new()
            }
        }
    }

    fn on_server_line(&mut self, now: i64, l: ServerLine) -> Vec<String> {
        let (taken, outs) = match self.e2e.as_mut() {
            Some(e2e) => e2e.on_line(&l),
            None => (false, Vec::new()),
        };
        let mut out = self.apply(now, outs);
        if taken {
            return out;
        }
        match l {
            ServerLine::Hello { edge, .. } => self.edge = Some(edge),
            ServerLine::OkLogin { user, .. } => {
                self.user = user;
                // The room the user was in before a reconnect.
                let before = std::mem::replace(&mut self.room, "lobby".into());
                let publish = self.e2e.as_mut().map(E2e::login).unwrap_or_default();
                out.extend(self.apply(now, publish));
                out.push("/subscriptions".into());
                self.pending.push_back(Quiet::Subscriptions);
                if std::mem::replace(&mut self.was_in, true) {
                    if before != "lobby" {
                        out.push(format!("/join {before}"));
                        self.pending.push_back(Quiet::Rejoin);
                    } else {
                        out.push(self.catch_up());
                    }
                } else {
                    self.mark("lobby", Id::at(now));
                    self.push(
                        now,
                        Kind::Room,
                        format!("logged in as {}, in #lobby", self.user),
                        false,
                    );
                }
            }
            ServerLine::OkJoin { room } => {
                self.rooms.insert(room.clone());
                self.room = room;
                // After a RESUME, the server's own `OK JOIN` comes before
                // the answers to what the client sent.
                let resumed = self.pending.iter().position(|q| *q == Quiet::Rejoin);
                if self.pending.front() == Some(&Quiet::Rejoined) {
                    self.answered();
                } else if self.pending.front() == Some(&Quiet::Rejoin) {
                    self.pending.pop_front();
                    out.push(self.catch_up());
                } else if let Some(i) = resumed {
                    self.pending[i] = Quiet::Rejoined;
                    out.push(self.catch_up());
                } else {
                    self.mark(&self.room.clone(), Id::at(now));
                    self.push(
                        now,
                        Kind::Room,
                        format!("you are now in #{}", self.room),
                        false,
                    );
                }
            }
            ServerLine::OkLeave { room } => {
                self.room = "lobby".into();
                self.mark("lobby", Id::at(now));
                self.push(
                    now,
                    Kind::Room,
                    format!("you left #{room}, now in #lobby"),
                    false,
                );
            }
            ServerLine::Msg {
                room,
                id,
                from,
                text,
            } => {
                if let Some(Quiet::CatchUp { until, .. }) = self.pending.front_mut() {
                    if room == self.room && until.is_none() {
                        *until = Id::parse(&id);
                    }
                }
                self.rooms.insert(room.clone());
                let kind = Kind::Msg {
                    room: room.clone(),
                    from,
                };
                self.message(&room, &id, kind, text);
            }
            ServerLine::Pub { id, from, text } => {
                self.message(&format!("pub:{from}"), &id, Kind::Pub { from }, text)
            }
            ServerLine::Dm { id, from, text } => {
                let text = self.open(now, &from, text, true);
                self.message(&format!("@{from}"), &id, Kind::DmIn { from }, text)
            }
            ServerLine::Hist {
                of: conv,
                id,
                from,
                text,
            } => {
                if let Some(Quiet::CatchUp {
                    since,
                    until,
                    oldest,
                }) = self.pending.front_mut()
                {
                    let row = Id::parse(&id);
                    if oldest.is_none() {
                        *oldest = row;
                    }
                    // Rows without a readable id are shown.
                    let missed = row.is_none_or(|row| {
                        since.is_none_or(|s| row > s) && until.is_none_or(|u| row < u)
                    });
                    if missed {
                        let kind = Kind::Msg {
                            room: conv.clone(),
                            from,
                        };
                        self.message(&conv, &id, kind, text);
                    }
                } else {
                    self.users.insert(from.clone());
                    let text = match conv.starts_with('@') {
                        true => self.open(now, &from, text, false),
                        false => text,
                    };
                    let own = from == self.user;
                    let ms = id_ms(&id).unwrap_or(now);
                    self.push(ms, Kind::Hist { conv, from }, text, own);
                }
            }
            ServerLine::Gap { kind, name, .. } => {
                let what = if kind == "room" {
                    format!("#{name}")
                } else {
                    format!("{name}'s publications")
                };
                let text = format!("the server lost some lines of {what}: /history shows them");
                self.push(now, Kind::Error, text, false);
            }
            ServerLine::Sys { room, user, what } => {
                self.users.insert(user.clone());
                self.push(now, Kind::Sys, format!("{user} {what} #{room}"), false);
            }
            ServerLine::Room { room, count } => {
                self.rooms.insert(room.clone());
                self.listing(now, format!("room {room} {count}"));
            }
            ServerLine::User { user } => {
                self.users.insert(user.clone());
                self.listing(now, format!("user {user}"));
            }
            ServerLine::Sub { user } => {
                self.listed.insert(user.clone());
                self.listing(now, format!("sub {user}"));
            }
            ServerLine::Edge { addr, conns } => {
                self.listing(now, format!("edge {addr} {conns}"));
            }
            ServerLine::Redirect { addr } => {
                self.notice(now, format!("the server points to {addr}"));
            }
            ServerLine::Info { text } => self.push(now, Kind::Reply, text, false),
            // The fingerprint of the key itself, not the one the server
            // says it has.
            ServerLine::Key { user, key, .. } => {
                let text = match shared::identity::IdentityKey::parse(&key) {
                    Some(k) => format!("{user}'s key on the server: {}", k.fingerprint()),
                    None => format!("{user}'s key on the server is not a key"),
                };
                self.push(now, Kind::Reply, text, false)
            }
            ServerLine::More { what, n } => {
                let what = what.to_lowercase();
                self.push(
                    now,
                    Kind::Reply,
                    format!("{n} more not shown ({what})"),
                    false,
                );
            }
            // The end of the connection follows and says why; the
            // connection keeps the resume token.
            ServerLine::Bye { .. } | ServerLine::Token { .. } => {}
            ServerLine::OkHistory { n }
                if matches!(self.pending.front(), Some(Quiet::CatchUp { .. })) =>
            {
                if let Some(Quiet::CatchUp { since, oldest, .. }) = self.answered() {
                    let all = n == CATCH_UP as u64;
                    if all && since.is_some_and(|s| oldest.is_some_and(|o| o > s)) {
                        self.notice(
                            now,
                            format!(
                                "more than {CATCH_UP} messages were missed in #{}: \
                                 the earlier ones are not shown",
                                self.room
                            ),
                        );
                    }
                }
                self.push(now, Kind::Room, format!("back in #{}", self.room), false);
            }
            ServerLine::OkSubscriptions { .. } => {
                self.subscriptions = std::mem::take(&mut self.listed);
                if self.pending.front() == Some(&Quiet::Subscriptions) {
                    self.answered();
                }
            }
            ServerLine::OkMsg { user, queued, .. } => {
                if queued {
                    self.notice(
                        now,
                        format!("{user} is offline: the message waits for them"),
                    );
                }
            }
            ServerLine::OkSubscribe { user } => {
                self.notice(now, format!("subscribed to {user}"));
                self.subscriptions.insert(user);
            }
            ServerLine::OkUnsubscribe { user } => {
                self.subscriptions.remove(&user);
                self.notice(now, format!("unsubscribed from {user}"));
            }
            // Any other final reply, as its line says it, in lower case.
            reply @ (ServerLine::OkRooms { .. }
            | ServerLine::OkWho { .. }
            | ServerLine::OkPublish { .. }
            | ServerLine::OkHistory { .. }
            | ServerLine::OkKey { .. }
            | ServerLine::OkEdges { .. }
            | ServerLine::OkHelp
            | ServerLine::OkPing) => {
                let line = reply.to_string().to_lowercase();
                let text = line.strip_prefix("ok ").unwrap_or(&line);
                self.push(now, Kind::Reply, format!("ok: {text}"), false);
            }
            ServerLine::Err { code, text } => {
                // A command of the client's own failed: go on without it.
                self.answered();
                self.push(now, Kind::Error, format!("{code} {text}"), false);
            }
        }
        out
    }

    /// One line of a listing: shown, unless the client asked for it.
    fn listing(&mut self, now: i64, text: String) {
        if self.pending.front() != Some(&Quiet::Subscriptions) {
            self.push(now, Kind::Reply, text, false);
        }
    }

    /// `/history 50` for the room the user is in, to show what was missed.
    fn catch_up(&mut self) -> String {
        let since = self.last.get(&self.room).copied();
        self.pending.push_back(Quiet::CatchUp {
            since,
            until: None,
            oldest: None,
        });
        format!("/history {CATCH_UP}")
    }

    /// The final answer to the oldest of the client's own commands, if
    /// any: that command, taken off the list. Once all are answered after
    /// a login, the user's lines go out.
    fn answered(&mut self) -> Option<Quiet> {
        let quiet = self.pending.pop_front()?;
        if self.pending.is_empty() && self.state == State::LoggingIn {
            self.state = State::Ready;
        }
        Some(quiet)
    }

    /// Remembers `id` as seen in `conv` if it is the newest.
    fn mark(&mut self, conv: &str, id: Id) {
        let last = self.last.entry(conv.to_string()).or_insert(id);
        *last = (*last).max(id);
    }

    fn message(&mut self, conv: &str, id: &str, kind: Kind, text: String) {
        if let Some(id) = Id::parse(id) {
            self.mark(conv, id);
        }
        let from = match &kind {
            Kind::Msg { from, .. } | Kind::Pub { from } | Kind::DmIn { from } => from.clone(),
            _ => String::new(),
        };
        let own = from == self.user;
        if !own {
            self.users.insert(from);
        }
        self.push(id_ms(id).unwrap_or_default(), kind, text, own);
    }
}

/// Text as shown: control characters (terminal escapes) made harmless.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// Which of `n` colours the name `name` gets: always the same (FNV-1a).
pub fn colour_index(name: &str, n: usize) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % n as u64) as usize
}
