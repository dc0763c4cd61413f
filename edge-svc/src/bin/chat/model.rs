//! The interactive client's state, without sockets or a terminal: server
//! lines in, entries for the message pane and lines to send out.

use std::collections::{BTreeSet, HashSet, VecDeque};

/// How many lines the message pane keeps.
pub const SCROLLBACK: usize = 5000;
/// How many messages of the room are asked for after a reconnect.
pub const CATCH_UP: usize = 200;

/// The commands Tab completes.
pub const COMMANDS: &[&str] = &[
    "/help",
    "/history",
    "/join",
    "/leave",
    "/msg",
    "/ping",
    "/publish",
    "/quit",
    "/rooms",
    "/subscribe",
    "/subscriptions",
    "/unsubscribe",
    "/who",
];

/// One server line, split into its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Hello {
        edge: String,
    },
    LoggedIn {
        user: String,
    },
    Joined {
        room: String,
    },
    Left {
        room: String,
    },
    Msg {
        room: String,
        id: String,
        from: String,
        text: String,
    },
    Pub {
        id: String,
        from: String,
        text: String,
    },
    Dm {
        id: String,
        from: String,
        text: String,
    },
    Hist {
        conv: String,
        id: String,
        from: String,
        text: String,
    },
    Sys {
        room: String,
        user: String,
        what: String,
    },
    /// `ROOM`, `USER`, `SUB` listing lines.
    Listed {
        kind: String,
        name: String,
        rest: String,
    },
    Info(String),
    Bye(String),
    /// Any other `OK ...`: the words after `OK`.
    Ok(String),
    Err(String),
    Other(String),
}

impl Server {
    pub fn parse(line: &str) -> Server {
        let (kw, rest) = line.split_once(' ').unwrap_or((line, ""));
        let f = |n: usize| -> Vec<String> { rest.splitn(n, ' ').map(str::to_string).collect() };
        let other = || Server::Other(line.to_string());
        match kw {
            "HELLO" => Server::Hello {
                edge: rest.split(' ').next().unwrap_or_default().to_string(),
            },
            "MSG" => match <[String; 4]>::try_from(f(4)) {
                Ok([room, id, from, text]) => Server::Msg {
                    room,
                    id,
                    from,
                    text,
                },
                Err(_) => other(),
            },
            "HIST" => match <[String; 4]>::try_from(f(4)) {
                Ok([conv, id, from, text]) => Server::Hist {
                    conv,
                    id,
                    from,
                    text,
                },
                Err(_) => other(),
            },
            "PUB" | "DM" => match <[String; 3]>::try_from(f(3)) {
                Ok([id, from, text]) if kw == "PUB" => Server::Pub { id, from, text },
                Ok([id, from, text]) => Server::Dm { id, from, text },
                Err(_) => other(),
            },
            "SYS" => match <[String; 3]>::try_from(f(3)) {
                Ok([room, user, what]) => Server::Sys { room, user, what },
                Err(_) => other(),
            },
            "ROOM" | "USER" | "SUB" => {
                let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                Server::Listed {
                    kind: kw.to_string(),
                    name: name.to_string(),
                    rest: rest.to_string(),
                }
            }
            "INFO" => Server::Info(rest.to_string()),
            "BYE" => Server::Bye(rest.to_string()),
            "ERR" => Server::Err(rest.to_string()),
            "OK" => {
                let words: Vec<&str> = rest.split(' ').collect();
                match words.as_slice() {
                    ["LOGIN", user, ..] => Server::LoggedIn {
                        user: user.to_string(),
                    },
                    ["JOIN", room] => Server::Joined {
                        room: room.to_string(),
                    },
                    ["LEAVE", room] => Server::Left {
                        room: room.to_string(),
                    },
                    _ => Server::Ok(rest.to_string()),
                }
            }
            _ => other(),
        }
    }
}

/// Whether a session closed with `BYE <reason>` should be opened again:
/// not when the user quit or logged in somewhere else.
pub fn reconnect_after(reason: &str) -> bool {
    !matches!(
        reason.split(' ').next().unwrap_or_default(),
        "quit" | "logged-in-elsewhere"
    )
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
    /// Closed for good (quit, logged in elsewhere, bad credentials).
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
    /// Listings, `INFO` and other `OK` lines.
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
    /// `<conversation> <id>` of every message shown: nothing twice.
    seen: HashSet<String>,
    /// Keepalive pings whose `OK PING` is not shown.
    pings: usize,
    /// Logged in before: the next login is a reconnect, which rejoins and
    /// fetches what was missed.
    was_in: bool,
    /// `LOGIN` sent, its answer not in yet.
    logging_in: bool,
    /// Waiting for the `OK JOIN` of the rejoin.
    rejoining: bool,
    /// The `HIST` lines coming are the catch-up after a reconnect.
    catching_up: bool,
    /// `/quit` sent: the end of the session is not a reason to reconnect.
    pub quitting: bool,
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
            seen: HashSet::new(),
            pings: 0,
            was_in: false,
            logging_in: false,
            rejoining: false,
            catching_up: false,
            quitting: false,
        }
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
        self.pings = 0;
        self.logging_in = true;
        self.rejoining = false;
        self.catching_up = false;
        self.notice(now, format!("connected to {server}"));
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

    /// A keepalive `/ping` is being sent.
    pub fn pinged(&mut self) {
        self.pings += 1;
    }

    /// The user pressed Enter on `line`: what to send, if anything.
    pub fn submit(&mut self, now: i64, line: &str) -> Option<String> {
        if line.is_empty() {
            return None;
        }
        if !self.can_send() {
            self.notice(
                now,
                format!("not connected ({}): not sent", self.state.label()),
            );
            return None;
        }
        let mut words = line.splitn(3, ' ');
        let cmd = words.next().unwrap_or_default().to_ascii_lowercase();
        match cmd.as_str() {
            "/msg" => {
                if let (Some(to), Some(text)) = (words.next(), words.next()) {
                    self.users.insert(to.to_string());
                    self.push(now, Kind::DmOut { to: to.into() }, text, true);
                }
            }
            "/quit" => self.quitting = true,
            _ => {}
        }
        Some(line.to_string())
    }

    /// A line from the server: updates the state, shows what is worth
    /// showing, and returns the lines to send in answer.
    pub fn on_line(&mut self, now: i64, line: &str) -> Vec<String> {
        let mut out = Vec::new();
        match Server::parse(line) {
            Server::Hello { edge } => self.edge = Some(edge),
            Server::LoggedIn { user } => {
                self.user = user;
                self.logging_in = false;
                // The room the user was in before a reconnect.
                let before = std::mem::replace(&mut self.room, "lobby".into());
                if std::mem::replace(&mut self.was_in, true) {
                    if before != "lobby" {
                        let room = before;
                        self.rejoining = true;
                        out.push(format!("/join {room}"));
                    } else {
                        out.push(self.catch_up());
                    }
                } else {
                    self.state = State::Ready;
                    self.push(
                        now,
                        Kind::Room,
                        format!("logged in as {}, in #lobby", self.user),
                        false,
                    );
                }
            }
            Server::Joined { room } => {
                self.rooms.insert(room.clone());
                self.room = room;
                if std::mem::take(&mut self.rejoining) {
                    out.push(self.catch_up());
                } else {
                    self.push(
                        now,
                        Kind::Room,
                        format!("you are now in #{}", self.room),
                        false,
                    );
                }
            }
            Server::Left { room } => {
                self.room = "lobby".into();
                self.push(
                    now,
                    Kind::Room,
                    format!("you left #{room}, now in #lobby"),
                    false,
                );
            }
            Server::Msg {
                room,
                id,
                from,
                text,
            } => {
                self.rooms.insert(room.clone());
                self.message(
                    &room,
                    &id,
                    Kind::Msg {
                        room: room.clone(),
                        from,
                    },
                    text,
                );
            }
            Server::Pub { id, from, text } => {
                self.message(&format!("pub:{from}"), &id, Kind::Pub { from }, text)
            }
            Server::Dm { id, from, text } => {
                self.message(&format!("@{from}"), &id, Kind::DmIn { from }, text)
            }
            Server::Hist {
                conv,
                id,
                from,
                text,
            } => {
                if self.catching_up {
                    let kind = Kind::Msg {
                        room: conv.clone(),
                        from,
                    };
                    self.message(&conv, &id, kind, text);
                } else {
                    self.users.insert(from.clone());
                    let own = from == self.user;
                    let ms = id_ms(&id).unwrap_or(now);
                    self.push(ms, Kind::Hist { conv, from }, text, own);
                }
            }
            Server::Sys { room, user, what } => {
                self.users.insert(user.clone());
                self.push(now, Kind::Sys, format!("{user} {what} #{room}"), false);
            }
            Server::Listed { kind, name, rest } => {
                match kind.as_str() {
                    "ROOM" => self.rooms.insert(name.clone()),
                    "SUB" => self.subscriptions.insert(name.clone()),
                    _ => self.users.insert(name.clone()),
                };
                let text = format!("{} {name} {rest}", kind.to_lowercase());
                self.push(now, Kind::Reply, text.trim_end(), false);
            }
            Server::Info(text) => self.push(now, Kind::Reply, text, false),
            // The end of the connection follows and says why.
            Server::Bye(_) => {}
            Server::Ok(rest) => self.ok(now, &rest),
            Server::Err(rest) => {
                if std::mem::take(&mut self.logging_in) {
                    self.state = State::Closed("login failed".into());
                } else if self.rejoining || self.catching_up {
                    // The rejoin or the catch-up failed: go on without.
                    self.rejoining = false;
                    self.catching_up = false;
                    self.state = State::Ready;
                }
                self.push(now, Kind::Error, rest, false);
            }
            Server::Other(line) => self.push(now, Kind::Reply, line, false),
        }
        out
    }

    fn catch_up(&mut self) -> String {
        self.catching_up = true;
        format!("/history {CATCH_UP}")
    }

    fn ok(&mut self, now: i64, rest: &str) {
        let words: Vec<&str> = rest.split(' ').collect();
        match words.as_slice() {
            ["PING"] if self.pings > 0 => self.pings -= 1,
            ["HISTORY", ..] if self.catching_up => {
                self.catching_up = false;
                self.state = State::Ready;
                self.push(now, Kind::Room, format!("back in #{}", self.room), false);
            }
            ["MSG", to, id, queued @ ..] => {
                self.seen.insert(format!("@{to} {id}"));
                if !queued.is_empty() {
                    self.notice(now, format!("{to} is offline: the message waits for them"));
                }
            }
            ["SUBSCRIBE", user] => {
                self.subscriptions.insert(user.to_string());
                self.notice(now, format!("subscribed to {user}"));
            }
            ["UNSUBSCRIBE", user] => {
                self.subscriptions.remove(*user);
                self.notice(now, format!("unsubscribed from {user}"));
            }
            ["SUBSCRIPTIONS", ..] => {}
            _ => self.push(
                now,
                Kind::Reply,
                format!("ok: {}", rest.to_lowercase()),
                false,
            ),
        }
    }

    /// Shows a message once, however often it arrives.
    fn message(&mut self, conv: &str, id: &str, kind: Kind, text: String) {
        if !self.seen.insert(format!("{conv} {id}")) {
            return;
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
