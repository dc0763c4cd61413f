//! Redis key and channel names. Every name starts with a configurable
//! prefix (default `chat:`); docs/protocol.md lists them all.

/// Key names under one prefix, for one Redis or for a Redis Cluster.
///
/// On a cluster every name carries a hash tag (`{...}`: only it picks the
/// slot), so that what one function touches is in one slot: a user's
/// keys are tagged with the user's name, a room's with the room's, an
/// edge's with the edge's, a partition's with `p<n>`, and the directory
/// (the lists of rooms, edges and routers, the online users, counters)
/// with `dir`. On one Redis the names are those of
/// shared/spec/PROTOCOL.md, untagged.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    cluster: bool,
}

impl Keys {
    /// The names on one Redis.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: false,
        }
    }

    /// The names on a Redis Cluster (docs/protocol.md, "On a Redis
    /// Cluster").
    pub fn for_cluster(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: true,
        }
    }

    /// `<prefix><kind>:<name>`, with `name` as the hash tag on a cluster.
    fn tagged(&self, kind: &str, name: &str) -> String {
        if self.cluster {
            format!("{}{kind}:{{{name}}}", self.prefix)
        } else {
            format!("{}{kind}:{name}", self.prefix)
        }
    }

    /// `<prefix><kind>`, in the directory's slot on a cluster.
    fn directory(&self, kind: &str) -> String {
        if self.cluster {
            format!("{}{kind}:{{dir}}", self.prefix)
        } else {
            format!("{}{kind}", self.prefix)
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether these are a Redis Cluster's names.
    pub fn on_cluster(&self) -> bool {
        self.cluster
    }

    /// The name of the user whose account `key` is ([`Keys::user`]).
    pub fn user_of_account<'a>(&self, key: &'a str) -> Option<&'a str> {
        let name = key.strip_prefix(&self.prefix)?.strip_prefix("user:")?;
        if self.cluster {
            name.strip_prefix('{')?.strip_suffix('}')
        } else {
            Some(name)
        }
    }

    /// Hash `password`, `created`.
    pub fn user(&self, user: &str) -> String {
        self.tagged("user", user)
    }

    /// Hash `edge`, `conn`, `sid`, `room`, `addr`, `since`.
    pub fn session(&self, user: &str) -> String {
        self.tagged("session", user)
    }

    /// Set of the users in a room.
    pub fn room(&self, room: &str) -> String {
        self.tagged("room", room)
    }

    /// Hash `hash` (SHA-256 of the user's resume token, hex), `room` (the
    /// room its session was last in), with expiry.
    pub fn resume(&self, user: &str) -> String {
        self.tagged("resume", user)
    }

    /// Hash of a room's member count per edge (the edges of its members,
    /// where its lines go).
    pub fn room_edges(&self, room: &str) -> String {
        self.tagged("room-edges", room)
    }

    /// Set of non-empty rooms.
    pub fn rooms(&self) -> String {
        self.directory("rooms")
    }

    /// Set of the users who subscribe to `user`.
    pub fn subscribers(&self, user: &str) -> String {
        self.tagged("subscribers", user)
    }

    /// Set of the users `user` subscribes to.
    pub fn subscriptions(&self, user: &str) -> String {
        self.tagged("subscriptions", user)
    }

    /// Set of the users that have a session (for the online subscriber
    /// count of `OK PUBLISH`).
    pub fn online(&self) -> String {
        self.directory("online")
    }

    /// Hash of each non-empty room's member count (for `/rooms`).
    pub fn room_sizes(&self) -> String {
        self.directory("room-sizes")
    }

    /// Capped stream of a room's messages (`from`, `text`).
    pub fn history(&self, room: &str) -> String {
        self.tagged("history", room)
    }

    /// Capped stream of the private messages between two users (`from`,
    /// `to`, `text`), named in byte order of the names.
    pub fn dm(&self, a: &str, b: &str) -> String {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        self.tagged("dm", &format!("{a}:{b}"))
    }

    /// Stream of private messages queued for an offline user (`id`, `from`,
    /// `text`).
    pub fn inbox(&self, user: &str) -> String {
        self.tagged("inbox", user)
    }

    /// Hash of how many messages each sender has queued in `user`'s
    /// inbox (`router.inbox_per_sender`); deleted with the inbox.
    pub fn inbox_counts(&self, user: &str) -> String {
        self.tagged("inbox-from", user)
    }

    /// Capped stream of a user's publications (`text`).
    pub fn publications(&self, user: &str) -> String {
        self.tagged("publications", user)
    }

    /// Set of the users whose sessions an edge holds.
    pub fn edge_sessions(&self, edge: &str) -> String {
        self.tagged("edge:sessions", edge)
    }

    /// Stream of login requests, read by the `auth` consumer group.
    pub fn auth_requests(&self) -> String {
        format!("{}req:auth", self.prefix)
    }

    /// Stream of one partition of router requests, read by the `router`
    /// consumer group; see [`partition_of`].
    pub fn router_requests(&self, partition: u32) -> String {
        self.partition("req:router", partition)
    }

    /// `<prefix><kind>:<partition>`, tagged `p<partition>` on a cluster.
    fn partition(&self, kind: &str, partition: u32) -> String {
        if self.cluster {
            format!("{}{kind}:{{p{partition}}}", self.prefix)
        } else {
            format!("{}{kind}:{partition}", self.prefix)
        }
    }

    /// The partition of a router request stream, if `stream` is one.
    pub fn partition_of_stream(&self, stream: &str) -> Option<u32> {
        let p = stream
            .strip_prefix(&self.prefix)?
            .strip_prefix("req:router:")?;
        let p = match self.cluster {
            true => p.strip_prefix("{p")?.strip_suffix('}')?,
            false => p,
        };
        p.parse().ok()
    }

    /// Lease on a router partition: the id of the router instance that owns it.
    pub fn router_lease(&self, partition: u32) -> String {
        self.partition("router:lease", partition)
    }

    /// The entry id of `user`'s last router request applied: each user's
    /// requests take effect once each and in order (docs/design.md). Kept
    /// after the account is deleted: its session may still have requests
    /// in flight.
    pub fn applied(&self, user: &str) -> String {
        self.tagged("applied", user)
    }

    /// On a cluster, the number of the user's last decision for each
    /// target of a later step (`room:<room>`, …): the `prev` that step
    /// carries (shared/lua/cluster.lua).
    pub fn routes(&self, user: &str) -> String {
        self.tagged("routes", user)
    }

    /// On a cluster, the counter that numbers `user`'s decisions: the
    /// order of its later steps at each target, whatever stream its
    /// requests came on.
    pub fn decisions(&self, user: &str) -> String {
        self.tagged("decisions", user)
    }

    /// On a cluster, what the user step of `user`'s request `eid` decided
    /// (JSON), until the request is acknowledged.
    pub fn decision(&self, user: &str, eid: &str) -> String {
        format!("{}:{eid}", self.tagged("decision", user))
    }

    /// On a cluster, the number of each publisher's last decision a room
    /// applied, and what it gave (`<number> <history id>`).
    pub fn marks(&self, room: &str) -> String {
        self.tagged("marks", room)
    }

    /// On a cluster, the number of each user's last decision applied at
    /// `user` (a subscription's step at its target, or at the subscriber
    /// itself): apart from [`Keys::marks`], since a user and a room of one
    /// name share a slot.
    pub fn user_marks(&self, user: &str) -> String {
        self.tagged("user-marks", user)
    }

    /// On a cluster, the number of each sender's last decision the
    /// conversation between `a` and `b` applied, and the message's id.
    pub fn dm_marks(&self, a: &str, b: &str) -> String {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        self.tagged("dm-marks", &format!("{a}:{b}"))
    }

    /// On a cluster, the end of `user`'s session in progress (what its
    /// user step decided), until its steps are done.
    pub fn ending(&self, user: &str) -> String {
        self.tagged("ending", user)
    }

    /// On a cluster, an edge's liveness in its own slot: set by its
    /// heartbeat, expiring with it (a session joins only a live edge).
    pub fn edge_alive(&self, edge: &str) -> String {
        self.tagged("edge-alive", edge)
    }

    /// On a cluster, the number of each user's last decision an edge's
    /// session set applied.
    pub fn edge_marks(&self, edge: &str) -> String {
        self.tagged("edge-marks", edge)
    }

    /// On a cluster, a room's version: a counter each change of its
    /// members takes (shared/lua/cluster.lua).
    pub fn room_version(&self, room: &str) -> String {
        self.tagged("room-v", room)
    }

    /// On a cluster, the room version each size in [`Keys::room_sizes`]
    /// was read at (older news is dropped).
    pub fn room_size_versions(&self) -> String {
        self.directory("room-size-v")
    }

    /// Counter that session ids come from.
    pub fn seq_sid(&self) -> String {
        self.directory("seq:sid")
    }

    /// Sorted set of edges, scored with the time (ms, Redis's clock) until
    /// which their last heartbeat holds.
    pub fn edges(&self) -> String {
        self.directory("edges")
    }

    /// Hash of what an edge advertises: `addr` (its public `host:port`),
    /// `conns` (connections open), `draining` (1 while it drains).
    /// On a cluster in the directory's slot, with the edges it is listed
    /// with.
    pub fn edge_info(&self, edge: &str) -> String {
        match self.cluster {
            true => format!("{}edge-info:{edge}:{{dir}}", self.prefix),
            false => format!("{}edge-info:{edge}", self.prefix),
        }
    }

    /// Marks `user`'s login request with stream entry id `id` applied
    /// (on a cluster in the user's slot, where the login decides).
    pub fn auth_done(&self, user: &str, id: &str) -> String {
        match self.cluster {
            true => format!("{}auth:done:{{{user}}}:{id}", self.prefix),
            false => format!("{}auth:done:{id}", self.prefix),
        }
    }

    /// The keys of a login's user step on a cluster (`chat_c_login`,
    /// shared/lua/cluster.lua), for `user`'s request with stream entry id
    /// `id`: all in the user's slot.
    pub fn login_step(&self, user: &str, id: &str) -> [String; 10] {
        [
            self.auth_done(user, id),
            self.user(user),
            self.fail_user(user),
            self.session(user),
            self.resume(user),
            self.inbox(user),
            self.subscriptions(user),
            self.decisions(user),
            self.routes(user),
            self.ending(user),
        ]
    }

    /// Names the auth-svc instance checking the password of the login
    /// request with stream entry id `id` (one check per request). On a
    /// cluster all in one slot: an instance renews its checks in one call.
    pub fn auth_checking(&self, id: &str) -> String {
        match self.cluster {
            true => format!("{}auth:checking:{{auth}}:{id}", self.prefix),
            false => format!("{}auth:checking:{id}", self.prefix),
        }
    }

    /// Failed logins of a user name in the current window.
    pub fn fail_user(&self, user: &str) -> String {
        self.tagged("fail:user", user)
    }

    /// Failed logins from a client IP address in the current window.
    pub fn fail_addr(&self, ip: &str) -> String {
        self.tagged("fail:addr", ip)
    }

    /// Registrations from all addresses in the current window.
    pub fn registrations(&self) -> String {
        self.directory("registrations")
    }

    /// Sorted set of live router instances, scored by last heartbeat (ms).
    pub fn routers(&self) -> String {
        self.directory("routers")
    }

    /// Pub/Sub channel of one edge: replies and notices for its connections.
    pub fn edge_channel(&self, edge: &str) -> String {
        self.tagged("ch:edge", edge)
    }

    /// Pub/Sub channel of one edge's broadcast lines: ready-made `MSG`,
    /// `SYS` and `PUB` lines of the rooms and publishers it has an
    /// audience for. The edge reads it and its own channel on one
    /// connection, so in the order they were published.
    pub fn lines_channel(&self, edge: &str) -> String {
        self.tagged("ch:lines", edge)
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

    /// The slot of a key (its hash tag's, if it has one).
    fn slot(key: &str) -> redis::cluster_routing::Slot {
        redis::cluster_routing::Slot::for_key(key)
    }

    /// Whether `keys` all hash to one slot.
    fn one_slot(keys: &[String]) -> bool {
        keys.iter().all(|k| slot(k) == slot(&keys[0]))
    }

    #[test]
    fn on_a_cluster_each_user_room_edge_and_partition_has_a_slot() {
        let k = Keys::for_cluster("chat:");
        assert_eq!(k.session("alice"), "chat:session:{alice}");
        assert_eq!(k.room("dev"), "chat:room:{dev}");
        assert_eq!(k.dm("bob", "alice"), "chat:dm:{alice:bob}");
        assert!(one_slot(&[
            k.dm("bob", "alice"),
            k.dm_marks("alice", "bob")
        ]));
        assert_eq!(k.rooms(), "chat:rooms:{dir}");
        assert_eq!(k.edge_info("e1"), "chat:edge-info:e1:{dir}");
        assert_eq!(k.router_requests(7), "chat:req:router:{p7}");
        assert_eq!(k.partition_of_stream(&k.router_requests(7)), Some(7));
        assert_eq!(
            k.partition_of_stream(&Keys::new("chat:").router_requests(7)),
            None
        );
        let user = |u: &str| {
            vec![
                k.user(u),
                k.session(u),
                k.resume(u),
                k.subscribers(u),
                k.subscriptions(u),
                k.inbox(u),
                k.inbox_counts(u),
                k.publications(u),
                k.applied(u),
                k.fail_user(u),
                k.auth_done(u, "1-0"),
                k.routes(u),
                k.decision(u, "1-0"),
                k.decisions(u),
                k.ending(u),
                k.user_marks(u),
            ]
        };
        let room = |r: &str| {
            vec![
                k.room(r),
                k.history(r),
                k.room_edges(r),
                k.marks(r),
                k.room_version(r),
            ]
        };
        let edge = |e: &str| {
            vec![
                k.edge_sessions(e),
                k.edge_channel(e),
                k.lines_channel(e),
                k.edge_marks(e),
            ]
        };
        let dir = vec![
            k.rooms(),
            k.room_sizes(),
            k.room_size_versions(),
            k.online(),
            k.edges(),
            k.edge_info("e1"),
            k.routers(),
            k.seq_sid(),
            k.registrations(),
        ];
        let checks = vec![k.auth_checking("1-0"), k.auth_checking("2-5")];
        let part = |p: u32| vec![k.router_requests(p), k.router_lease(p)];
        for group in [user("alice"), room("dev"), edge("e1"), dir, checks, part(3)] {
            assert!(one_slot(&group), "{group:?}");
        }
        // Users and rooms spread over the slots (so over the masters).
        let users: std::collections::HashSet<_> = (0..100)
            .map(|i| slot(&k.session(&format!("u{i}"))))
            .collect();
        assert!(users.len() > 95, "{} slots", users.len());
        assert_ne!(slot(&k.session("alice")), slot(&k.session("bob")));
    }

    #[test]
    fn an_accounts_key_names_its_user_in_either_layout() {
        for keys in [Keys::new("chat:"), Keys::for_cluster("chat:")] {
            assert_eq!(keys.user_of_account(&keys.user("alice")), Some("alice"));
            assert_eq!(keys.user_of_account(&keys.session("alice")), None);
        }
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
