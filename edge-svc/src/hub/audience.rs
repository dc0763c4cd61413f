//! Audiences: which connections receive each room's and each publisher's lines.

use super::{Conn, Members};
use shared::line::ServerLine;
use std::collections::HashMap;

/// Whose lines: a room's (`MSG`, `SYS`) or a publisher's (`PUB`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Audience {
    Room(String),
    Pub(String),
}

impl Audience {
    /// The audience of a broadcast line; `None` for any other line.
    pub(crate) fn of(line: &ServerLine) -> Option<Audience> {
        match line {
            ServerLine::Msg { room, .. } | ServerLine::Sys { room, .. } => {
                Some(Audience::Room(room.clone()))
            }
            ServerLine::Pub { from, .. } => Some(Audience::Pub(from.clone())),
            _ => None,
        }
    }
}

/// Adds `conn` (id `id`) to audience `a`; false if it was in it.
pub(super) fn enter(
    audience: &mut HashMap<Audience, Members>,
    id: u64,
    conn: &mut Conn,
    a: Audience,
) -> bool {
    let new = conn.audiences.insert(a.clone());
    if new {
        audience.entry(a).or_default().insert(id);
    }
    new
}

/// Takes `conn` (id `id`) out of audience `a`; false if it was not in it.
pub(super) fn exit(
    audience: &mut HashMap<Audience, Members>,
    id: u64,
    conn: &mut Conn,
    a: &Audience,
) -> bool {
    let was = conn.audiences.remove(a);
    if was {
        drop_member(audience, a, id);
    }
    was
}

/// Takes `conn` (id `id`) out of every audience (its session ended).
pub(super) fn leave_all(audience: &mut HashMap<Audience, Members>, id: u64, conn: &mut Conn) {
    conn.room = None;
    conn.after.clear();
    for a in std::mem::take(&mut conn.audiences) {
        drop_member(audience, &a, id);
    }
}

fn drop_member(audience: &mut HashMap<Audience, Members>, a: &Audience, id: u64) {
    if let Some(members) = audience.get_mut(a) {
        members.remove(&id);
        if members.is_empty() {
            audience.remove(a);
        }
    }
}
