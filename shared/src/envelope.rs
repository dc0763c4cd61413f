//! What travels between edges and services.
//!
//! Requests go from an edge to a service as one stream entry with a single
//! field `req` holding a JSON [`Request`]. Replies go back on the edge's
//! Pub/Sub channel as a JSON [`Reply`]. Room and publisher deliveries are
//! one JSON [`ServerLine`] each on the room's or publisher's channel.
//!
//! Replies are written by the Redis functions (shared/lua/), so that a
//! reply and the state change it reports happen at one instant, in one
//! order that every subscriber sees; which is why connection and request
//! ids travel as strings: Lua numbers would lose their low digits.

use crate::line::ServerLine;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The stream entry field that holds a request.
pub const REQUEST_FIELD: &str = "req";

/// A request from an edge on behalf of one connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// The edge's id: replies go to its channel.
    pub edge: String,
    /// The connection on that edge.
    #[serde(with = "as_string")]
    pub conn: u64,
    /// Request id, unique per edge; 0 when no reply is expected.
    #[serde(with = "as_string")]
    pub rid: u64,
    /// The user the request acts for (the claimed one, for a login).
    pub user: String,
    /// The session id; empty before login.
    #[serde(default)]
    pub sid: String,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Check the password and open a session (auth-svc).
    Login {
        password: Secret,
        addr: String,
        /// Create the account first (`REGISTER`).
        #[serde(default)]
        register: bool,
        /// The SHA-256 (hex) of the resume token the edge gives the client
        /// with `OK LOGIN`; empty: none (resume tokens are off).
        #[serde(default)]
        token: String,
    },
    /// `RESUME`: open a session with a resume token instead of a password
    /// (auth-svc). The edge hashes the client's token: the token itself
    /// never reaches Redis.
    Resume {
        /// The SHA-256 (hex) of the token the client gave.
        token: String,
        /// The SHA-256 of the token that replaces it.
        next: String,
        addr: String,
    },
    /// Say text in the current room. This and the rest go to router-svc.
    Say {
        text: String,
    },
    /// End the session `sid`, if it is still the current one.
    Logout,
    /// Move to `room`.
    Join {
        room: String,
    },
    /// Move back to the lobby.
    Leave,
    /// List the rooms.
    Rooms,
    /// List the members of `room`, or of the current room.
    Who {
        room: Option<String>,
    },
    /// Subscribe to `target`'s publications.
    Subscribe {
        target: String,
    },
    Unsubscribe {
        target: String,
    },
    /// List whom the user subscribes to.
    Subscriptions,
    /// Publish `text` to the online subscribers.
    Publish {
        text: String,
    },
    /// A private message to `to`.
    Msg {
        to: String,
        text: String,
    },
    /// The queued private messages up to `upto` were shown: drop them.
    Delivered {
        upto: String,
    },
    /// The last `n` messages of the current room, or of the private
    /// conversation `with` a user.
    History {
        with: Option<String>,
        n: u32,
    },
    /// Publish the user's public key (base64) and its fingerprint.
    KeySet {
        key: String,
        fingerprint: String,
    },
    /// `target`'s public key.
    Key {
        target: String,
    },
}

/// A reply to one connection, or a notice to it (`rid` 0).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    #[serde(with = "as_string")]
    pub conn: u64,
    #[serde(default, with = "as_string")]
    pub rid: u64,
    /// Lines to send, in order; the last is the final `OK`/`ERR` of a
    /// reply. A listing (`ROOM`, `USER`, `SUB` lines) comes unsorted:
    /// [`Reply::sort_listing`] sorts it outside Redis.
    #[serde(default)]
    pub lines: Vec<ServerLine>,
    #[serde(default)]
    pub effect: Option<Effect>,
    /// For a notice (`rid` 0) to a session, such as a private message: its
    /// lines are shown only while the connection holds that session.
    #[serde(default)]
    pub sid: String,
}

impl Reply {
    /// A notice of `effect` alone to connection `conn` (no lines, no
    /// request waiting for it).
    pub fn effect(conn: u64, effect: Effect) -> Reply {
        Reply {
            conn,
            rid: 0,
            lines: Vec::new(),
            effect: Some(effect),
            sid: String::new(),
        }
    }

    /// Sorts the listing lines by name, in byte order (the functions leave
    /// them unsorted: sorting inside Redis would hold up every client).
    pub fn sort_listing(&mut self) {
        let listed = self
            .lines
            .iter()
            .take_while(|l| l.listing_name().is_some())
            .count();
        self.lines[..listed].sort_by(|a, b| a.listing_name().cmp(&b.listing_name()));
    }
}

/// A change of the connection's state that the edge applies in order with
/// the deliveries it receives.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// The connection is now logged in as `user`, session `sid`, in `room`,
    /// subscribed to the publishers in `subs` (space-separated: Lua's JSON
    /// encoder cannot tell an empty list from an empty object).
    Login {
        user: String,
        sid: String,
        room: String,
        #[serde(default)]
        subs: String,
        /// The id of the last queued private message in `lines` (empty if
        /// none): acknowledged with [`Op::Delivered`] once shown.
        #[serde(default)]
        inbox: String,
        /// Until when (Unix ms, Redis's clock) the resume token given with
        /// this login is good if nothing renews it; empty: none was given.
        #[serde(default)]
        expires: String,
        /// On a Redis Cluster, the room's version its step took: the
        /// room's lines from that version on are the session's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v: Option<u64>,
    },
    /// The session `sid` moved to `room`. On a Redis Cluster, with the
    /// versions the two room steps took: the old room's lines before
    /// `v_from` and the new room's from `v_to` on are the session's.
    Room {
        sid: String,
        room: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v_from: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        v_to: Option<u64>,
    },
    /// The session `sid` now receives `user`'s publications; on a Redis
    /// Cluster, those after id `since` (the last one when it subscribed).
    Subscribe {
        sid: String,
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// The session `sid` no longer receives `user`'s publications; on a
    /// Redis Cluster, but for those up to id `since`.
    Unsubscribe {
        sid: String,
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// The session `sid` is over: send `BYE <reason>` and close.
    Close { reason: String, sid: String },
}

/// A secret: in a login request, the password sealed to auth-svc
/// ([`crate::seal`]); in the configuration, a password. Never shown by
/// `Debug`.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// u64 as a JSON string (and accepted as a number too).
mod as_string {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(u64),
        }
        match Either::deserialize(d)? {
            Either::S(s) => s.parse().map_err(de::Error::custom),
            Either::N(n) => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_keeps_big_ids_and_hides_password() {
        let r = Request {
            edge: "e1".into(),
            conn: 1_790_000_000_000_123,
            rid: 7,
            user: "alice".into(),
            sid: String::new(),
            op: Op::Login {
                password: Secret("pw with space".into()),
                addr: "127.0.0.1:5".into(),
                register: false,
                token: String::new(),
            },
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"conn\":\"1790000000000123\""));
        assert!(json.contains("\"op\":\"login\""));
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r);
        assert!(!format!("{r:?}").contains("pw with space"));
    }

    #[test]
    fn reply_as_lua_writes_it() {
        let r: Reply = serde_json::from_str(
            r#"{"conn":"42","rid":"3","lines":[{"k":"ok_login","user":"alice","room":"lobby"}],
                "effect":{"kind":"login","user":"alice","sid":"9","room":"lobby"}}"#,
        )
        .unwrap();
        assert_eq!(r.conn, 42);
        assert_eq!(r.rid, 3);
        assert_eq!(r.lines[0].to_string(), "OK LOGIN alice lobby");
        assert_eq!(
            r.effect,
            Some(Effect::Login {
                user: "alice".into(),
                sid: "9".into(),
                room: "lobby".into(),
                subs: String::new(),
                inbox: String::new(),
                expires: String::new(),
                v: None,
            })
        );
        let bye: Reply = serde_json::from_str(
            r#"{"conn":"42","effect":{"kind":"close","reason":"logged-in-elsewhere","sid":"9"}}"#,
        )
        .unwrap();
        assert_eq!(bye.rid, 0);
        assert!(bye.lines.is_empty());
    }

    #[test]
    fn listings_sort_by_name_in_byte_order() {
        let mut r: Reply = serde_json::from_str(
            r#"{"conn":"1","lines":[{"k":"user","user":"bob"},{"k":"user","user":"Zed"},
                {"k":"user","user":"alice"},{"k":"ok_who","room":"dev","n":3}]}"#,
        )
        .unwrap();
        r.sort_listing();
        let lines: Vec<String> = r.lines.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            ["USER Zed", "USER alice", "USER bob", "OK WHO dev 3"]
        );
    }
}
