//! Redis key and channel names. Every name starts with a configurable
//! prefix (default `chat:`); docs/protocol.md lists them all.

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Hash `password`, `created`.
    pub fn user(&self, user: &str) -> String {
        format!("{}user:{user}", self.prefix)
    }

    /// Hash `edge`, `conn`, `sid`, `room`, `addr`, `since`.
    pub fn session(&self, user: &str) -> String {
        format!("{}session:{user}", self.prefix)
    }

    /// Set of the users in a room.
    pub fn room(&self, room: &str) -> String {
        format!("{}room:{room}", self.prefix)
    }

    /// Hash `hash` (SHA-256 of the user's resume token, hex), `room` (the
    /// room its session was last in), with expiry.
    pub fn resume(&self, user: &str) -> String {
        format!("{}resume:{user}", self.prefix)
    }

    /// Hash of a room's member count per edge (the edges of its members,
    /// where its lines go).
    pub fn room_edges(&self, room: &str) -> String {
        format!("{}room-edges:{room}", self.prefix)
    }

    /// Set of non-empty rooms.
    pub fn rooms(&self) -> String {
        format!("{}rooms", self.prefix)
    }

    /// Set of the users who subscribe to `user`.
    pub fn subscribers(&self, user: &str) -> String {
        format!("{}subscribers:{user}", self.prefix)
    }

    /// Set of the users `user` subscribes to.
    pub fn subscriptions(&self, user: &str) -> String {
        format!("{}subscriptions:{user}", self.prefix)
    }

    /// Set of the users that have a session (for the online subscriber
    /// count of `OK PUBLISH`).
    pub fn online(&self) -> String {
        format!("{}online", self.prefix)
    }

    /// Hash of each non-empty room's member count (for `/rooms`).
    pub fn room_sizes(&self) -> String {
        format!("{}room-sizes", self.prefix)
    }

    /// Capped stream of a room's messages (`from`, `text`).
    pub fn history(&self, room: &str) -> String {
        format!("{}history:{room}", self.prefix)
    }

    /// Capped stream of the private messages between two users (`from`,
    /// `to`, `text`), named in byte order of the names.
    pub fn dm(&self, a: &str, b: &str) -> String {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        format!("{}dm:{a}:{b}", self.prefix)
    }

    /// Stream of private messages queued for an offline user (`id`, `from`,
    /// `text`).
    pub fn inbox(&self, user: &str) -> String {
        format!("{}inbox:{user}", self.prefix)
    }

    /// Hash of how many messages each sender has queued in `user`'s
    /// inbox (`router.inbox_per_sender`); deleted with the inbox.
    pub fn inbox_counts(&self, user: &str) -> String {
        format!("{}inbox-from:{user}", self.prefix)
    }

    /// Capped stream of a user's publications (`text`).
    pub fn publications(&self, user: &str) -> String {
        format!("{}publications:{user}", self.prefix)
    }

    /// Set of the users whose sessions an edge holds.
    pub fn edge_sessions(&self, edge: &str) -> String {
        format!("{}edge:sessions:{edge}", self.prefix)
    }

    /// Stream of login requests, read by the `auth` consumer group.
    pub fn auth_requests(&self) -> String {
        format!("{}req:auth", self.prefix)
    }

    /// Stream of one partition of router requests, read by the `router`
    /// consumer group; see [`partition_of`].
    pub fn router_requests(&self, partition: u32) -> String {
        format!("{}req:router:{partition}", self.prefix)
    }

    /// The partition of a router request stream, if `stream` is one.
    pub fn partition_of_stream(&self, stream: &str) -> Option<u32> {
        stream
            .strip_prefix(&self.prefix)?
            .strip_prefix("req:router:")?
            .parse()
            .ok()
    }

    /// Lease on a router partition: the id of the router instance that owns it.
    pub fn router_lease(&self, partition: u32) -> String {
        format!("{}router:lease:{partition}", self.prefix)
    }

    /// The entry id of `user`'s last router request applied: each user's
    /// requests take effect once each and in order (docs/design.md). Kept
    /// after the account is deleted: its session may still have requests
    /// in flight.
    pub fn applied(&self, user: &str) -> String {
        format!("{}applied:{user}", self.prefix)
    }

    /// Counter that session ids come from.
    pub fn seq_sid(&self) -> String {
        format!("{}seq:sid", self.prefix)
    }

    /// Sorted set of edges, scored with the time (ms, Redis's clock) until
    /// which their last heartbeat holds.
    pub fn edges(&self) -> String {
        format!("{}edges", self.prefix)
    }

    /// Hash of what an edge advertises: `addr` (its public `host:port`),
    /// `conns` (connections open), `draining` (1 while it drains).
    pub fn edge_info(&self, edge: &str) -> String {
        format!("{}edge-info:{edge}", self.prefix)
    }

    /// Marks the login request with stream entry id `id` applied.
    pub fn auth_done(&self, id: &str) -> String {
        format!("{}auth:done:{id}", self.prefix)
    }

    /// Names the auth-svc instance checking the password of the login
    /// request with stream entry id `id` (one check per request).
    pub fn auth_checking(&self, id: &str) -> String {
        format!("{}auth:checking:{id}", self.prefix)
    }

    /// Failed logins of a user name in the current window.
    pub fn fail_user(&self, user: &str) -> String {
        format!("{}fail:user:{user}", self.prefix)
    }

    /// Failed logins from a client IP address in the current window.
    pub fn fail_addr(&self, ip: &str) -> String {
        format!("{}fail:addr:{ip}", self.prefix)
    }

    /// Registrations from all addresses in the current window.
    pub fn registrations(&self) -> String {
        format!("{}registrations", self.prefix)
    }

    /// Sorted set of live router instances, scored by last heartbeat (ms).
    pub fn routers(&self) -> String {
        format!("{}routers", self.prefix)
    }

    /// Pub/Sub channel of one edge: replies and notices for its connections.
    pub fn edge_channel(&self, edge: &str) -> String {
        format!("{}ch:edge:{edge}", self.prefix)
    }

    /// Pub/Sub channel of one edge's broadcast lines: ready-made `MSG`,
    /// `SYS` and `PUB` lines of the rooms and publishers it has an
    /// audience for. The edge reads it and its own channel on one
    /// connection, so in the order they were published.
    pub fn lines_channel(&self, edge: &str) -> String {
        format!("{}ch:lines:{edge}", self.prefix)
    }
}

/// The router partition of a user: every request of one user travels on
/// the same partition stream, so one router handles them in order.
///
/// FNV-1a, so that every process agrees without sharing state.
pub fn partition_of(user: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let k = Keys::new("chat:");
        assert_eq!(k.user("alice"), "chat:user:alice");
        assert_eq!(k.session("alice"), "chat:session:alice");
        assert_eq!(k.room("lobby"), "chat:room:lobby");
        assert_eq!(k.rooms(), "chat:rooms");
        assert_eq!(k.resume("alice"), "chat:resume:alice");
        assert_eq!(k.dm("bob", "alice"), "chat:dm:alice:bob");
        assert_eq!(k.dm("alice", "bob"), "chat:dm:alice:bob");
        assert_eq!(k.subscribers("alice"), "chat:subscribers:alice");
        assert_eq!(k.subscriptions("alice"), "chat:subscriptions:alice");
        assert_eq!(k.inbox("bob"), "chat:inbox:bob");
        assert_eq!(k.inbox_counts("bob"), "chat:inbox-from:bob");
        assert_eq!(k.session("bob"), "chat:session:bob");
        assert_eq!(k.history("dev"), "chat:history:dev");
        assert_eq!(k.publications("bob"), "chat:publications:bob");
        assert_eq!(k.edge_sessions("e1"), "chat:edge:sessions:e1");
        assert_eq!(k.edges(), "chat:edges");
        assert_eq!(k.edge_info("e1"), "chat:edge-info:e1");
        assert_eq!(k.applied("bob"), "chat:applied:bob");
        assert_eq!(k.router_lease(3), "chat:router:lease:3");
        assert_eq!(k.seq_sid(), "chat:seq:sid");
        assert_eq!(k.fail_user("bob"), "chat:fail:user:bob");
        assert_eq!(k.fail_addr("::1"), "chat:fail:addr:::1");
        assert_eq!(k.edge_channel("e1"), "chat:ch:edge:e1");
        assert_eq!(k.lines_channel("e1"), "chat:ch:lines:e1");
        assert_eq!(k.room_edges("dev"), "chat:room-edges:dev");
        assert_eq!(k.partition_of_stream(&k.router_requests(7)), Some(7));
        assert_eq!(k.partition_of_stream(&k.auth_requests()), None);
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        assert_eq!(partition_of("alice", 16), partition_of("alice", 16));
        let used: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_of(&format!("user{i}"), 16))
            .collect();
        assert_eq!(used.len(), 16);
        assert!(used.iter().all(|p| *p < 16));
    }
}
