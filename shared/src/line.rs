//! Every line the server sends ([`ServerLine`]): its wire form (`Display`),
//! its parser (for the client, the bench and the tests) and its JSON form,
//! in which the Redis functions hand lines to the edges.

use crate::protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// One server line, without its terminator. Free text, where a line has
/// one, is its last field and runs to the end of the line.
///
/// In JSON (what the Redis functions publish) a line is an object tagged
/// by `k`: `{"k":"msg","room":"lobby","id":"1-0","from":"bob","text":"hi"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum ServerLine {
    /// `HELLO <edge-id> <version>`: first line after the handshake.
    Hello { edge: String, version: String },
    /// `OK LOGIN <user> <room>`.
    OkLogin { user: String, room: String },
    /// `TOKEN <token> <expires-ms>`: a resume token for `RESUME`, right
    /// after `OK LOGIN`; good at least until `expires` (Unix ms).
    Token { token: String, expires: u64 },
    /// `OK JOIN <room>`.
    OkJoin { room: String },
    /// `OK LEAVE <room>`: the room left.
    OkLeave { room: String },
    /// `ROOM <room> <count>`: one line of `/rooms`.
    Room { room: String, count: u64 },
    /// `OK ROOMS <n>`.
    OkRooms { n: u64 },
    /// `USER <user>`: one line of `/who`.
    User { user: String },
    /// `OK WHO <room> <n>`.
    OkWho { room: String, n: u64 },
    /// `OK SUBSCRIBE <user>`.
    OkSubscribe { user: String },
    /// `OK UNSUBSCRIBE <user>`.
    OkUnsubscribe { user: String },
    /// `SUB <user>`: one line of `/subscriptions`.
    Sub { user: String },
    /// `OK SUBSCRIPTIONS <n>`.
    OkSubscriptions { n: u64 },
    /// `OK PUBLISH <id> <online-subscribers>`.
    OkPublish { id: String, online: u64 },
    /// `OK MSG <user> <id>`, or with ` queued` for an offline user.
    OkMsg {
        user: String,
        id: String,
        #[serde(default)]
        queued: bool,
    },
    /// `HIST <of> <id> <from> <text>`: `of` is a room, or `@<user>` for a
    /// private conversation.
    Hist {
        of: String,
        id: String,
        from: String,
        text: String,
    },
    /// `OK HISTORY <n>`.
    OkHistory { n: u64 },
    /// `MORE <what> <n>`: before the final line of a reply (`what`:
    /// `HISTORY`, `WHO`, `ROOMS` or `SUBSCRIPTIONS`), `n` entries asked for
    /// were left out (a reply's size limits); the final line counts those
    /// shown.
    More { what: String, n: u64 },
    /// `KEY <user> <base64> <fingerprint>`: a user's public key (`/key`).
    Key {
        user: String,
        key: String,
        fingerprint: String,
    },
    /// `OK KEY <user>`: the end of `/key <user>` (alone: the user has no
    /// key), or `/key set` done.
    OkKey { user: String },
    /// `INFO <text>`: one line of `/help`.
    Info { text: String },
    /// `OK HELP`.
    OkHelp,
    /// `OK PING`.
    OkPing,
    /// `MSG <room> <id> <from> <text>`.
    Msg {
        room: String,
        id: String,
        from: String,
        text: String,
    },
    /// `PUB <id> <from> <text>`.
    Pub {
        id: String,
        from: String,
        text: String,
    },
    /// `DM <id> <from> <text>`.
    Dm {
        id: String,
        from: String,
        text: String,
    },
    /// `SYS <room> <user> <what>` (`joined` or `left`).
    Sys {
        room: String,
        user: String,
        what: String,
    },
    /// `GAP <kind> <name> <after-id>`: lines of a room (`room`) or of a
    /// publisher (`pub`) after that id may be missing (the edge lost its
    /// Redis connection for longer than it can replay); `/history` has them.
    Gap {
        kind: String,
        name: String,
        after: String,
    },
    /// `EDGE <host:port> <connections>`: one live edge of `/edges`.
    Edge { addr: String, conns: u64 },
    /// `OK EDGES <n>`.
    OkEdges { n: u64 },
    /// `REDIRECT <host:port>`: connect there instead (right after `HELLO`
    /// on a loaded or draining edge; before `BYE server-shutdown` when
    /// the edge drains).
    Redirect { addr: String },
    /// `BYE <reason>`.
    Bye { reason: String },
    /// `ERR <code> <text>`.
    Err { code: ErrorCode, text: String },
}

impl ServerLine {
    /// `ERR <code> <text>`.
    pub fn err(code: ErrorCode, text: impl Into<String>) -> ServerLine {
        ServerLine::Err {
            code,
            text: text.into(),
        }
    }

    /// Whether this is the final line of a command's reply (`OK …`/`ERR …`).
    pub fn is_final(&self) -> bool {
        use ServerLine::*;
        matches!(
            self,
            OkLogin { .. }
                | OkJoin { .. }
                | OkLeave { .. }
                | OkRooms { .. }
                | OkWho { .. }
                | OkSubscribe { .. }
                | OkUnsubscribe { .. }
                | OkSubscriptions { .. }
                | OkPublish { .. }
                | OkMsg { .. }
                | OkHistory { .. }
                | OkKey { .. }
                | OkHelp
                | OkPing
                | OkEdges { .. }
                | Err { .. }
        )
    }

    /// The name a listing line (`ROOM`, `USER`, `SUB`) is sorted by.
    pub fn listing_name(&self) -> Option<&str> {
        match self {
            ServerLine::Room { room, .. } => Some(room),
            ServerLine::User { user } | ServerLine::Sub { user } => Some(user),
            _ => None,
        }
    }

    /// Parses one line (without its terminator).
    pub fn parse(line: &str) -> Result<ServerLine, BadLine> {
        let bad = || BadLine(line.to_string());
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let mut f = Fields(rest);
        let l = match word {
            "HELLO" => ServerLine::Hello {
                edge: f.word()?,
                version: f.last_word()?,
            },
            "ROOM" => ServerLine::Room {
                room: f.word()?,
                count: f.number()?,
            },
            "USER" => ServerLine::User {
                user: f.last_word()?,
            },
            "SUB" => ServerLine::Sub {
                user: f.last_word()?,
            },
            "HIST" => ServerLine::Hist {
                of: f.word()?,
                id: f.word()?,
                from: f.word()?,
                text: f.text(),
            },
            "KEY" => ServerLine::Key {
                user: f.word()?,
                key: f.word()?,
                fingerprint: f.last_word()?,
            },
            "TOKEN" => {
                let (token, expires) = (f.word()?, f.number()?);
                f.end()?;
                ServerLine::Token { token, expires }
            }
            "INFO" => ServerLine::Info { text: f.text() },
            "MORE" => {
                let (what, n) = (f.word()?, f.number()?);
                f.end()?;
                ServerLine::More { what, n }
            }
            "MSG" => ServerLine::Msg {
                room: f.word()?,
                id: f.word()?,
                from: f.word()?,
                text: f.text(),
            },
            "PUB" => ServerLine::Pub {
                id: f.word()?,
                from: f.word()?,
                text: f.text(),
            },
            "DM" => ServerLine::Dm {
                id: f.word()?,
                from: f.word()?,
                text: f.text(),
            },
            "SYS" => ServerLine::Sys {
                room: f.word()?,
                user: f.word()?,
                what: f.last_word()?,
            },
            "GAP" => ServerLine::Gap {
                kind: f.word()?,
                name: f.word()?,
                after: f.last_word()?,
            },
            "EDGE" => ServerLine::Edge {
                addr: f.word()?,
                conns: f.number()?,
            },
            "REDIRECT" => ServerLine::Redirect {
                addr: f.last_word()?,
            },
            "BYE" => ServerLine::Bye { reason: f.text() },
            "ERR" => ServerLine::Err {
                code: f.word()?.parse().map_err(|_| bad())?,
                text: f.text(),
            },
            "OK" => parse_ok(&mut f)?,
            _ => return Err(bad()),
        };
        Ok(l)
    }
}

fn parse_ok(f: &mut Fields) -> Result<ServerLine, BadLine> {
    let l = match f.word()?.as_str() {
        "LOGIN" => ServerLine::OkLogin {
            user: f.word()?,
            room: f.last_word()?,
        },
        "JOIN" => ServerLine::OkJoin {
            room: f.last_word()?,
        },
        "LEAVE" => ServerLine::OkLeave {
            room: f.last_word()?,
        },
        "ROOMS" => ServerLine::OkRooms { n: f.number()? },
        "WHO" => ServerLine::OkWho {
            room: f.word()?,
            n: f.number()?,
        },
        "SUBSCRIBE" => ServerLine::OkSubscribe {
            user: f.last_word()?,
        },
        "UNSUBSCRIBE" => ServerLine::OkUnsubscribe {
            user: f.last_word()?,
        },
        "SUBSCRIPTIONS" => ServerLine::OkSubscriptions { n: f.number()? },
        "PUBLISH" => ServerLine::OkPublish {
            id: f.word()?,
            online: f.number()?,
        },
        "MSG" => {
            let (user, id) = (f.word()?, f.word()?);
            let queued = match f.text().as_str() {
                "" => false,
                "queued" => true,
                _ => return Err(f.bad()),
            };
            ServerLine::OkMsg { user, id, queued }
        }
        "HISTORY" => ServerLine::OkHistory { n: f.number()? },
        "KEY" => ServerLine::OkKey { user: f.word()? },
        "HELP" => ServerLine::OkHelp,
        "PING" => ServerLine::OkPing,
        "EDGES" => ServerLine::OkEdges { n: f.number()? },
        _ => return Err(f.bad()),
    };
    f.end()?;
    Ok(l)
}

/// The fields after a line's keyword, taken one at a time.
struct Fields<'a>(&'a str);

impl Fields<'_> {
    fn bad(&self) -> BadLine {
        BadLine(self.0.to_string())
    }

    /// The next field: up to the next space, never empty.
    fn word(&mut self) -> Result<String, BadLine> {
        let (w, rest) = self.0.split_once(' ').unwrap_or((self.0, ""));
        if w.is_empty() {
            return Err(self.bad());
        }
        self.0 = rest;
        Ok(w.to_string())
    }

    /// The last field: a word with nothing after it.
    fn last_word(&mut self) -> Result<String, BadLine> {
        let w = self.word()?;
        self.end()?;
        Ok(w)
    }

    fn number(&mut self) -> Result<u64, BadLine> {
        self.word()?.parse().map_err(|_| self.bad())
    }

    /// The rest of the line, as it is.
    fn text(&mut self) -> String {
        std::mem::take(&mut self.0).to_string()
    }

    fn end(&self) -> Result<(), BadLine> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.bad())
        }
    }
}

/// A line that is not one of the protocol's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a protocol line: {0:?}")]
pub struct BadLine(pub String);

impl fmt::Display for ServerLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ServerLine::*;
        match self {
            Hello { edge, version } => write!(f, "HELLO {edge} {version}"),
            OkLogin { user, room } => write!(f, "OK LOGIN {user} {room}"),
            Token { token, expires } => write!(f, "TOKEN {token} {expires}"),
            OkJoin { room } => write!(f, "OK JOIN {room}"),
            OkLeave { room } => write!(f, "OK LEAVE {room}"),
            Room { room, count } => write!(f, "ROOM {room} {count}"),
            OkRooms { n } => write!(f, "OK ROOMS {n}"),
            User { user } => write!(f, "USER {user}"),
            OkWho { room, n } => write!(f, "OK WHO {room} {n}"),
            OkSubscribe { user } => write!(f, "OK SUBSCRIBE {user}"),
            OkUnsubscribe { user } => write!(f, "OK UNSUBSCRIBE {user}"),
            Sub { user } => write!(f, "SUB {user}"),
            OkSubscriptions { n } => write!(f, "OK SUBSCRIPTIONS {n}"),
            OkPublish { id, online } => write!(f, "OK PUBLISH {id} {online}"),
            OkMsg { user, id, queued } => {
                write!(f, "OK MSG {user} {id}")?;
                if *queued {
                    f.write_str(" queued")?;
                }
                Ok(())
            }
            Hist { of, id, from, text } => write!(f, "HIST {of} {id} {from} {text}"),
            OkHistory { n } => write!(f, "OK HISTORY {n}"),
            More { what, n } => write!(f, "MORE {what} {n}"),
            Key {
                user,
                key,
                fingerprint,
            } => write!(f, "KEY {user} {key} {fingerprint}"),
            OkKey { user } => write!(f, "OK KEY {user}"),
            Info { text } => write!(f, "INFO {text}"),
            OkHelp => f.write_str("OK HELP"),
            OkPing => f.write_str("OK PING"),
            Msg {
                room,
                id,
                from,
                text,
            } => write!(f, "MSG {room} {id} {from} {text}"),
            Pub { id, from, text } => write!(f, "PUB {id} {from} {text}"),
            Dm { id, from, text } => write!(f, "DM {id} {from} {text}"),
            Sys { room, user, what } => write!(f, "SYS {room} {user} {what}"),
            Gap { kind, name, after } => write!(f, "GAP {kind} {name} {after}"),
            Edge { addr, conns } => write!(f, "EDGE {addr} {conns}"),
            OkEdges { n } => write!(f, "OK EDGES {n}"),
            Redirect { addr } => write!(f, "REDIRECT {addr}"),
            Bye { reason } => write!(f, "BYE {reason}"),
            Err { code, text } => write!(f, "ERR {code} {text}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of docs/protocol.md's "Server lines" table: every kind
    /// of line is there, and each must parse and print back unchanged.
    fn documented_examples() -> Vec<String> {
        let doc = include_str!("../../docs/protocol.md");
        let table = doc
            .split("<!-- server-lines -->")
            .nth(1)
            .expect("docs/protocol.md marks its server-line table");
        table
            .trim_start()
            .lines()
            .take_while(|row| !row.is_empty())
            .filter_map(|row| row.strip_prefix("| `"))
            .filter_map(|row| {
                row.split_once("` |")
                    .map(|(example, _)| example.to_string())
            })
            .collect()
    }

    #[test]
    fn every_documented_line_round_trips() {
        let examples = documented_examples();
        let mut kinds = std::collections::BTreeSet::new();
        for example in &examples {
            let line = ServerLine::parse(example).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&line.to_string(), example);
            let json = serde_json::to_string(&line).unwrap();
            assert_eq!(serde_json::from_str::<ServerLine>(&json).unwrap(), line);
            kinds.insert(serde_json::to_value(&line).unwrap()["k"].to_string());
        }
        // 33 variants: the table shows each at least once.
        assert_eq!(kinds.len(), 33, "kinds documented: {kinds:?}");
    }

    #[test]
    fn text_keeps_its_spaces() {
        let l = ServerLine::parse("MSG lobby 1-0 bob  two  spaces ").unwrap();
        assert_eq!(
            l,
            ServerLine::Msg {
                room: "lobby".into(),
                id: "1-0".into(),
                from: "bob".into(),
                text: " two  spaces ".into()
            }
        );
        assert_eq!(l.to_string(), "MSG lobby 1-0 bob  two  spaces ");
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            "",
            "HELLO",
            "OK",
            "OK FROB",
            "OK JOIN",
            "OK JOIN a b",
            "ROOM lobby x",
            "OK MSG bob 1-0 later",
            "MORE HISTORY",
            "MORE WHO 3 more",
            "TOKEN abc",
            "TOKEN abc 12 more",
            "ERR no-such-code text",
            "MSG lobby 1-0",
            "hello there",
        ] {
            assert!(ServerLine::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lua_json_decodes() {
        let l: ServerLine =
            serde_json::from_str(r#"{"k":"err","code":"no-such-user","text":"no such user"}"#)
                .unwrap();
        assert_eq!(l.to_string(), "ERR no-such-user no such user");
        let l: ServerLine =
            serde_json::from_str(r#"{"k":"ok_msg","user":"bob","id":"5-1"}"#).unwrap();
        assert_eq!(l.to_string(), "OK MSG bob 5-1");
    }
}
