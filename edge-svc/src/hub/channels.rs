//! Channel audiences and holds: the channels the edge wants, and who receives each one's lines.

use super::{Conn, Hub, Members, SubChange};
use std::collections::{HashMap, HashSet};
use tokio::sync::oneshot;

impl Hub {
    /// Whether the edge should be subscribed to `channel`.
    pub(crate) fn wants(&self, channel: &str) -> bool {
        if channel == self.edge_channel || channel == self.lobby_channel {
            return true;
        }
        let st = self.lock();
        st.audience.contains_key(channel) || st.holds.contains_key(channel)
    }

    /// Every channel the edge should be subscribed to (after a reconnect).
    pub(crate) fn wanted(&self) -> Vec<String> {
        let st = self.lock();
        let mut all: HashSet<String> = st.audience.keys().cloned().collect();
        all.extend(st.holds.keys().cloned());
        all.insert(self.edge_channel.clone());
        all.insert(self.lobby_channel.clone());
        all.into_iter().collect()
    }

    /// Keeps `channels` subscribed for request `rid` of `conn` until its
    /// reply has been applied (or [`Hub::release`]), and waits until they
    /// are; false if that failed (Redis unreachable).
    pub(crate) async fn hold(&self, conn: u64, rid: u64, channels: &[String]) -> bool {
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(c) = st.conns.get_mut(&conn) else {
                return false;
            };
            c.holds.push((rid, channels.to_vec()));
            for ch in channels {
                *st.holds.entry(ch.clone()).or_default() += 1;
            }
        }
        self.subscribed(channels).await
    }

    /// Waits until the Pub/Sub task has brought `channels` in line with
    /// what the hub wants; true if they are all subscribed.
    pub(crate) async fn subscribed(&self, channels: &[String]) -> bool {
        let mut waits = Vec::with_capacity(channels.len());
        for ch in channels {
            let (done, wait) = oneshot::channel();
            let _ = self.subs.send(SubChange {
                channel: ch.clone(),
                done: Some(done),
            });
            waits.push(wait);
        }
        let mut all = true;
        for wait in waits {
            all &= wait.await.unwrap_or(false);
        }
        all
    }

    /// Ends the holds of request `rid` of `conn`.
    pub(crate) fn release(&self, conn: u64, rid: u64) {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(c) = st.conns.get_mut(&conn) {
            self.release_in(&mut st.holds, c, rid);
        }
    }

    pub(super) fn release_in(&self, holds: &mut HashMap<String, usize>, conn: &mut Conn, rid: u64) {
        if let Some(i) = conn.holds.iter().position(|(r, _)| *r == rid) {
            let (_, channels) = conn.holds.swap_remove(i);
            self.unhold(holds, &channels);
        }
    }

    pub(super) fn unhold(&self, holds: &mut HashMap<String, usize>, channels: &[String]) {
        for ch in channels {
            if let Some(n) = holds.get_mut(ch) {
                *n -= 1;
                if *n == 0 {
                    holds.remove(ch);
                }
            }
            self.sync(ch);
        }
    }

    fn sync(&self, channel: &str) {
        let _ = self.subs.send(SubChange {
            channel: channel.to_string(),
            done: None,
        });
    }

    pub(super) fn enter(
        &self,
        audience: &mut HashMap<String, Members>,
        id: u64,
        conn: &mut Conn,
        channel: &str,
    ) {
        if conn.channels.insert(channel.to_string()) {
            audience.entry(channel.to_string()).or_default().insert(id);
            self.sync(channel);
        }
    }

    pub(super) fn exit(
        &self,
        audience: &mut HashMap<String, Members>,
        id: u64,
        conn: &mut Conn,
        channel: &str,
    ) {
        if conn.channels.remove(channel) {
            drop_member(audience, channel, id);
            self.sync(channel);
        }
    }

    pub(super) fn leave_all(
        &self,
        audience: &mut HashMap<String, Members>,
        id: u64,
        conn: &mut Conn,
    ) {
        conn.room = None;
        for ch in std::mem::take(&mut conn.channels) {
            drop_member(audience, &ch, id);
            self.sync(&ch);
        }
    }
}

fn drop_member(audience: &mut HashMap<String, Members>, channel: &str, id: u64) {
    if let Some(members) = audience.get_mut(channel) {
        members.remove(&id);
        if members.is_empty() {
            audience.remove(channel);
        }
    }
}
