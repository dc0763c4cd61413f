//! Audiences: which connections receive each room's and each publisher's lines.

use super::{Conn, Members};
use shared::consumer::EntryId;
use shared::line::ServerLine;
use std::collections::HashMap;

/// The id of the last message passed on to each audience (`State::last`),
/// where one is forgotten with the audience's last member: a later member
/// must not be replayed history from before it joined. `None` on a Redis
/// Cluster, whose lines may still come after the last member left (its
/// sweep forgets them, apply.rs).
pub(super) type Marks<'a> = Option<&'a mut HashMap<Audience, EntryId>>;

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
    marks: Marks,
    id: u64,
    conn: &mut Conn,
    a: &Audience,
) -> bool {
    let was = conn.audiences.remove(a);
    if was {
        drop_member(audience, marks, a, id);
    }
    was
}

/// Takes `conn` (id `id`) out of every audience (its session ended).
pub(super) fn leave_all(
    audience: &mut HashMap<Audience, Members>,
    mut marks: Marks,
    id: u64,
    conn: &mut Conn,
) {
    conn.room = None;
    conn.after.clear();
    for a in std::mem::take(&mut conn.audiences) {
        drop_member(audience, marks.as_deref_mut(), &a, id);
    }
}

fn drop_member(audience: &mut HashMap<Audience, Members>, marks: Marks, a: &Audience, id: u64) {
    if let Some(members) = audience.get_mut(a) {
        members.remove(&id);
        if members.is_empty() {
            audience.remove(a);
            if let Some(marks) = marks {
                marks.remove(a);
            }
        }
    }
}
