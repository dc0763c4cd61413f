//! The Redis plumbing on a Redis Cluster of the test's own (3 masters): the functions library on every master, calls routed to the master of their keys' slot, and a master's failover followed.

use e2e::{cluster_info, eventually, TestCluster};
use shared::config::RedisConfig;
use shared::consumer::Consumer;
use shared::keys::Keys;
use shared::scripts::Call;
use shared::store::Conn;
use std::collections::HashSet;
use std::time::Instant;

/// A cluster of `masters` masters with `replicas` replicas each, and a
/// connection to it as the services make one.
async fn cluster(masters: usize, replicas: usize) -> (TestCluster, Conn) {
    let cluster = TestCluster::start(masters, replicas).await;
    let conn = shared::store::cluster(&cluster.seeds(), &RedisConfig::default())
        .await
        .unwrap();
    (cluster, conn)
}

/// Router `r1` holds `lease`.
async fn hold(conn: &mut Conn, lease: &str) {
    redis::cmd("SET")
        .arg(lease)
        .arg("r1")
        .query_async::<()>(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_library_is_on_every_master_and_each_call_runs_where_its_key_lives() {
    let (cluster, mut conn) = cluster(3, 0).await;
    for node in &cluster.nodes {
        let libraries: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .query_async(&mut node.plain().await)
            .await
            .unwrap();
        assert!(
            format!("{libraries:?}").contains("chat_lease_renew"),
            "the library on 127.0.0.1:{}",
            node.port
        );
    }
    // The 16 partitions' leases fall on every master; each renewal runs on
    // its key's master (a call sent elsewhere fails with MOVED).
    let keys = Keys::new("chat:");
    let mut masters = HashSet::new();
    for p in 0..16 {
        let lease = keys.router_lease(p);
        hold(&mut conn, &lease).await;
        let renewed: i64 = Call::new("chat_lease_renew", &[&lease])
            .arg("r1")
            .arg(5000)
            .invoke(&mut conn)
            .await
            .unwrap();
        assert_eq!(renewed, 1, "{lease}");
        let master = cluster.master_of(&lease).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&lease)
            .query_async(&mut cluster.nodes[master].plain().await)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 5000, "{lease} on its master: {ttl}");
        masters.insert(master);
    }
    assert_eq!(masters.len(), 3, "the leases spread over the masters");
}

#[tokio::test]
async fn a_killed_master_is_replaced_by_its_replica_and_the_connection_follows() {
    let (cluster, mut conn) = cluster(3, 1).await;
    let key = Keys::new("chat:").router_lease(0);
    hold(&mut conn, &key).await;
    // Replicated before the kill: `WAIT 1` on its master says so.
    let master = cluster.master_of(&key).await.unwrap();
    let node = &cluster.nodes[master];
    eventually("the write is on a replica", || async {
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(200);
        wait.query_async(&mut node.plain().await).await == Ok(1)
    })
    .await;
    cluster.kill(master);
    let killed = Instant::now();
    eventually("a renewal through the same connection succeeds", || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let call = Call::new("chat_lease_renew", &[&key]).arg("r1").arg(5000);
            call.invoke::<i64>(&mut conn).await.is_ok_and(|n| n == 1)
        }
    })
    .await;
    eprintln!("service resumed {:?} after the kill", killed.elapsed());
    let new_master = cluster.master_of(&key).await.unwrap();
    assert_ne!(new_master, master, "a replica took over");
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i != master {
            eventually("the live nodes see the cluster ok", || async {
                cluster_info(node).await.contains("cluster_state:ok")
            })
            .await;
        }
    }
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "r1", "what was replicated before the kill");
}

/// Runs `cmd key args…`.
async fn run(conn: &mut Conn, cmd: &str, key: &str, args: &[&str]) {
    let mut c = redis::cmd(cmd);
    c.arg(key).arg(args);
    c.query_async::<()>(conn).await.unwrap();
}

/// A room whose keys are on another master than alice's: each step runs
/// on its own slot's master, or fails.
async fn other_room(cluster: &TestCluster, conn: &mut Conn, k: &Keys) -> String {
    let master = |key: String| {
        let mut conn = conn.clone();
        async move {
            run(&mut conn, "SET", &key, &["x"]).await;
            let master = cluster.master_of(&key).await;
            run(&mut conn, "DEL", &key, &[]).await;
            master.unwrap()
        }
    };
    let alice = master(k.marks("alice")).await; // the tag {alice}
    for name in ["dev", "ops", "fun", "art", "web"] {
        if master(k.marks(name)).await != alice {
            return name.to_string();
        }
    }
    panic!("no room on another master than alice's")
}

/// The single-slot steps of alice's requests on a cluster
/// (shared/lua/cluster.lua), her session on edge e1.
struct Steps {
    conn: Conn,
    k: Keys,
    room: String,
}

impl Steps {
    /// alice's user step of request `eid` (`prev`: her previous one in the
    /// pipeline), her session read on edge e1 in the room.
    async fn user(&self, eid: &str, prev: &str) -> Vec<String> {
        self.user_at(eid, prev, &self.room).await
    }

    /// The keys every user step of alice's request `eid` takes first.
    fn user_keys(&self, eid: &str) -> Vec<String> {
        let k = &self.k;
        vec![
            k.applied("alice"),
            k.session("alice"),
            k.decision("alice", eid),
            k.routes("alice"),
            k.decisions("alice"),
        ]
    }

    /// As [`Steps::user`], her session read in room `at`.
    async fn user_at(&self, eid: &str, prev: &str, at: &str) -> Vec<String> {
        let keys = self.user_keys(eid);
        let call = Call::new("chat_c_say", &keys).arg(eid).arg(prev).arg("s1");
        let call = call.arg("e1").arg(at);
        call.invoke(&mut self.conn.clone()).await.unwrap()
    }

    /// The room step of alice's request `eid`, as its user step decided
    /// (`decided`: its answer), a run of its own.
    async fn room(&self, eid: &str, decided: &[String]) -> Vec<String> {
        self.room_in_run(eid, decided, numbers(decided).0).await
    }

    /// As [`Steps::room`], in a run whose first line of alice's is number
    /// `run`.
    async fn room_in_run(&self, eid: &str, decided: &[String], run: u64) -> Vec<String> {
        let (seq, prev) = numbers(decided);
        let k = &self.k;
        let keys = [
            k.history(&self.room),
            k.room_edges(&self.room),
            k.marks(&self.room),
            k.room_version(&self.room),
        ];
        let call = Call::new("chat_c_say_room", &keys)
            .arg("alice")
            .arg(eid)
            .arg(seq)
            .arg(prev);
        let call = call.arg(format!("line {eid}")).arg(100).arg(0).arg(run);
        call.invoke(&mut self.conn.clone()).await.unwrap()
    }

    /// alice's join (or `/leave`, `how`: `leave`) of room `to`, her
    /// session read in room `at`: the user step.
    async fn join(&self, eid: &str, prev: &str, at: &str, to: &str, how: &str) -> Vec<String> {
        let mut keys = self.user_keys(eid);
        keys.push(self.k.resume("alice"));
        let call = Call::new("chat_c_join", &keys).arg(eid).arg(prev).arg("s1");
        let call = call.arg("e1").arg(at).arg(to).arg(how);
        call.invoke(&mut self.conn.clone()).await.unwrap()
    }

    /// A join's room step in `room` as its user step decided: alice
    /// leaving (`from`) or entering (`to`).
    async fn moved(&self, room: &str, decided: &[String], end: &str) -> Vec<String> {
        let k = &self.k;
        let d: serde_json::Value = serde_json::from_str(&decided[1]).unwrap();
        let keys = [
            k.room(room),
            k.room_edges(room),
            k.marks(room),
            k.room_version(room),
        ];
        let how = if end == "to" { "enter" } else { "leave" };
        let call = Call::new("chat_c_room_move", &keys).arg("alice");
        let call = call
            .arg(d["seq"].as_u64())
            .arg(d[format!("prev_{end}")].as_u64());
        let call = call.arg("e1").arg(how);
        call.invoke(&mut self.conn.clone()).await.unwrap()
    }

    /// Puts a room step's news of `room` in the directory; whether it was
    /// newer than what the directory had.
    async fn size(&self, room: &str, moved: &[String]) -> bool {
        let k = &self.k;
        let keys = [k.rooms(), k.room_sizes(), k.room_size_versions()];
        let call = Call::new("chat_c_room_size", &keys).arg(room);
        let call = call.arg(&moved[2]).arg(&moved[1]);
        call.invoke::<i64>(&mut self.conn.clone()).await.unwrap() == 1
    }

    /// A key in short: a set's members or a hash's `field=value`s, sorted.
    async fn show(&self, key: &str) -> String {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        let cmd = match kind.as_str() {
            "set" => "SMEMBERS",
            "hash" => "HGETALL",
            _ => return kind,
        };
        let items: Vec<String> = redis::cmd(cmd)
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        let mut items: Vec<String> = match cmd {
            "HGETALL" => items
                .chunks(2)
                .map(|p| format!("{}={}", p[0], p[1]))
                .collect(),
            _ => items,
        };
        items.sort();
        items.join(" ")
    }

    /// The room's history: each entry's text, in order.
    async fn history(&self) -> Vec<String> {
        let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.k.history(&self.room))
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn.clone())
            .await
            .unwrap();
        range
            .ids
            .iter()
            .map(|e| e.get::<String>("text").unwrap())
            .collect()
    }
}

/// The `prev` a user step's decision gives the room step.
/// The number a user step's decision gives the room step, and its
/// `prev`.
fn numbers(decided: &[String]) -> (u64, u64) {
    let d: serde_json::Value = serde_json::from_str(&decided[1]).unwrap();
    (d["seq"].as_u64().unwrap(), d["prev"].as_u64().unwrap())
}

#[tokio::test]
async fn a_room_line_in_two_steps_takes_effect_once_in_order_whoever_sends_them() {
    let (cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let room = other_room(&cluster, &mut conn, &k).await;
    let session = ["edge", "e1", "conn", "1", "sid", "s1", "room", &room];
    run(&mut conn, "HSET", &k.session("alice"), &session).await;
    run(
        &mut conn,
        "HSET",
        &k.room_edges(&room),
        &["e1", "1", "e2", "3"],
    )
    .await;
    let s = Steps { conn, k, room };

    // Request 1: decided, then applied; the line goes to the room's edges.
    let u1 = s.user("100-1", "").await;
    assert_eq!(u1[0], "ok");
    assert_eq!(numbers(&u1), (1, 0), "alice's first line to the room");
    let r1 = s.room("100-1", &u1).await;
    assert_eq!(
        (r1[0].as_str(), &r1[3..]),
        ("ok", &["e1".to_string(), "e2".into()][..])
    );
    assert_eq!(r1[2], "0", "the room's version: no member moved yet");
    // Sent again (another router recovering it): the same decision, the
    // same history id and the edges to publish it to again, nothing added.
    assert_eq!(s.user("100-1", "").await, ["duplicate", &u1[1]]);
    assert_eq!(
        s.room("100-1", &u1).await,
        ["duplicate", &r1[1], "0", "e1", "e2"]
    );

    // Requests 2 and 3 in one pipeline; 3's room step arrives first: it
    // waits for 2's.
    let u2 = s.user("100-2", "").await;
    let u3 = s.user("100-3", "100-2").await;
    assert_eq!((numbers(&u2), numbers(&u3)), ((2, 1), (3, 2)));
    assert_eq!(s.room("100-3", &u3).await, ["retry"]);
    assert_eq!(s.room("100-2", &u2).await[0], "ok");
    assert_eq!(s.room("100-3", &u3).await[0], "ok");
    // A user step out of order waits too, and an old one is a duplicate.
    assert_eq!(s.user("100-5", "100-4").await, ["retry"]);
    assert_eq!(s.user("100-2", "").await[0], "duplicate");

    // Two routers send request 4's steps: the old owner (decided it, its
    // room step late) and the new one (recovers it: the stored decision).
    let old = s.user("100-4", "").await;
    let new = s.user("100-4", "").await;
    assert_eq!(new, ["duplicate", &old[1]]);
    let first = s.room("100-4", &new).await;
    let late = s.room("100-4", &old).await;
    assert_eq!(first[0], "ok");
    assert_eq!(late, ["duplicate", &first[1], &first[2], "e1", "e2"]);
    assert_eq!(
        s.history().await,
        ["line 100-1", "line 100-2", "line 100-3", "line 100-4"]
    );

    // The session moved since the router read it: read again.
    assert_eq!(s.user_at("100-6", "", "lobby").await, ["moved"]);

    // A run of three lines (a router's room steps in one round trip, its
    // publishes in the next), its router dead before the publishes: the
    // next owner runs them again, and each gets its own answer back to
    // publish, not only the last.
    let eids = ["100-7", "100-8", "100-9"];
    let mut decided = Vec::new();
    for (i, eid) in eids.iter().enumerate() {
        let prev = if i == 0 { "" } else { eids[i - 1] };
        decided.push(s.user(eid, prev).await);
    }
    let run = numbers(&decided[0]).0;
    let mut gave = Vec::new();
    for (eid, d) in eids.iter().zip(&decided) {
        let answer = s.room_in_run(eid, d, run).await;
        assert_eq!(answer[0], "ok");
        gave.push(answer);
    }
    for ((eid, d), answer) in eids.iter().zip(&decided).zip(&gave) {
        let again = s.room_in_run(eid, d, run).await;
        assert_eq!(
            again,
            ["duplicate", &answer[1], &answer[2], "e1", "e2"],
            "{eid}"
        );
    }
    // Once alice's next run starts here, the earlier answers are let go
    // (that run was published): one of them sent again is only taken.
    let next = s.user("100-10", "").await;
    assert_eq!(s.room("100-10", &next).await[0], "ok");
    assert_eq!(
        s.room_in_run("100-8", &decided[1], run).await,
        ["duplicate", ""]
    );
    assert!(
        !s.show(&s.k.marks(&s.room)).await.contains("alice#"),
        "{}",
        s.show(&s.k.marks(&s.room)).await
    );
}

#[tokio::test]
async fn a_pipeline_over_many_slots_is_answered_in_its_order() {
    let (_cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    let mut set = redis::pipe();
    for u in &users {
        set.hset(k.session(u), "room", format!("room of {u}"))
            .ignore();
    }
    set.query_async::<()>(&mut conn).await.unwrap();
    let mut get = redis::pipe();
    for u in &users {
        get.hget(k.session(u), "room");
        get.cmd("PING");
    }
    let rooms: Vec<String> = get.query_async(&mut conn).await.unwrap();
    let want: Vec<String> = users
        .iter()
        .flat_map(|u| [format!("room of {u}"), "PONG".into()])
        .collect();
    assert_eq!(rooms, want);
    // Functions and the consumer group's commands over the 16 partitions
    // (on every master), as the router sends them.
    let mut groups = redis::pipe();
    let mut renew = redis::pipe();
    let mut pending = redis::pipe();
    for p in 0..16 {
        let stream = k.router_requests(p);
        groups
            .cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg("router")
            .arg("0")
            .arg("MKSTREAM");
        groups.set(k.router_lease(p), "r1");
        renew.add_command(
            Call::new("chat_lease_renew", &[k.router_lease(p)])
                .arg("r1")
                .arg(5000)
                .cmd()
                .clone(),
        );
        pending.cmd("XPENDING").arg(&stream).arg("router");
    }
    groups.query_async::<()>(&mut conn).await.unwrap();
    let renewed: Vec<i64> = renew.query_async(&mut conn).await.unwrap();
    assert_eq!(renewed, [1; 16]);
    let summaries: Vec<redis::Value> = pending.query_async(&mut conn).await.unwrap();
    let counts: Vec<u64> = summaries
        .into_iter()
        .map(|s| shared::consumer::pending_count(s).unwrap())
        .collect();
    assert_eq!(counts, [0; 16]);
}

/// Clients blocked in a command, on all the cluster's nodes.
async fn blocked_clients(cluster: &TestCluster) -> u64 {
    let mut n = 0;
    for node in &cluster.nodes {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut node.plain().await)
            .await
            .unwrap_or_default();
        let line = info.lines().find(|l| l.starts_with("blocked_clients:"));
        n += line
            .and_then(|l| l[16..].trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

#[tokio::test]
async fn a_consumer_waits_on_each_partitions_master_and_the_first_entry_ends_the_wait() {
    let (cluster, conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let streams: Vec<String> = (0..16).map(|p| k.router_requests(p)).collect();
    let builder = shared::store::cluster_client(&cluster.seeds(), &RedisConfig::default());
    let block = std::time::Duration::from_secs(60);
    let consumer = Consumer::for_cluster(
        builder.unwrap(),
        conn.clone(),
        streams.clone(),
        "router",
        "r1",
        block,
    )
    .await
    .unwrap();
    // Nothing to read: the read waits on all 16 streams at once ...
    let reading = tokio::spawn({
        let (consumer, streams) = (consumer.clone(), streams.clone());
        async move { consumer.read(&streams, 10, block).await }
    });
    eventually("a read blocked on each stream", || async {
        blocked_clients(&cluster).await == 16
    })
    .await;
    // ... until one gets an entry: it ends well before its 60 s, and the
    // others let go, having taken nothing.
    let xadd = |conn: &Conn, p: u32| {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(k.router_requests(p))
            .arg("*")
            .arg("req")
            .arg(format!("{p}"));
        let mut conn = conn.clone();
        async move { cmd.query_async::<String>(&mut conn).await.unwrap() }
    };
    let id = xadd(&conn, 5).await;
    let got = tokio::time::timeout(e2e::WAIT, reading).await;
    let got = got.expect("the wait ends with the entry").unwrap().unwrap();
    let first: Vec<(String, String)> = got.into_iter().map(|e| (e.stream, e.id)).collect();
    assert_eq!(first, [(streams[5].clone(), id)]);
    eventually("the other reads let go", || async {
        blocked_clients(&cluster).await == 0
    })
    .await;
    // Entries on every partition at once: each read once, then acknowledged.
    let mut ids = Vec::new();
    for p in 0..16 {
        ids.push(xadd(&conn, p).await);
    }
    let mut read = first.clone();
    while read.len() < 17 {
        let more = consumer.read(&streams, 100, block).await.unwrap();
        read.extend(more.into_iter().map(|e| (e.stream, e.id)));
    }
    read.sort();
    let mut want: Vec<(String, String)> = streams.iter().cloned().zip(ids).chain(first).collect();
    want.sort();
    assert_eq!(read, want);
    let done: Vec<(&str, Vec<String>)> = read
        .iter()
        .map(|(s, id)| (s.as_str(), vec![id.clone()]))
        .collect();
    let done: Vec<(&str, &[String])> = done.iter().map(|(s, ids)| (*s, ids.as_slice())).collect();
    consumer.ack_and_delete(&done).await.unwrap();
    let pending = consumer.pending_counts(&streams).await.unwrap();
    assert_eq!(pending, [0; 16]);
}

#[tokio::test]
async fn a_join_in_single_slot_steps_moves_the_member_once_and_her_lines_wait_for_it() {
    let (cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let dev = other_room(&cluster, &mut conn, &k).await;
    let session = ["edge", "e1", "conn", "1", "sid", "s1", "room", "lobby"];
    run(&mut conn, "HSET", &k.session("alice"), &session).await;
    run(&mut conn, "SADD", &k.room("lobby"), &["alice"]).await;
    run(&mut conn, "HSET", &k.room_edges("lobby"), &["e1", "1"]).await;
    run(
        &mut conn,
        "HSET",
        &k.resume("alice"),
        &["hash", "h", "room", "lobby"],
    )
    .await;
    let s = Steps {
        conn,
        k: k.clone(),
        room: dev.clone(),
    };

    // The user step moves the session at once, and numbers both room steps.
    let join = s.join("200-1", "", "lobby", &dev, "").await;
    assert_eq!(join[0], "ok", "{join:?}");
    assert_eq!(
        s.show(&k.session("alice")).await,
        format!("conn=1 edge=e1 room={dev} sid=s1")
    );
    assert_eq!(
        s.show(&k.resume("alice")).await,
        format!("hash=h room={dev}")
    );
    // Her next line, in dev, waits for the join's step there.
    let say = s.user("200-2", "200-1").await;
    assert_eq!(numbers(&say), (2, 1));
    assert_eq!(s.room("200-2", &say).await, ["retry"]);
    let entered = s.moved(&dev, &join, "to").await;
    assert_eq!(
        entered,
        ["ok", "1", "1", "e1"],
        "version 1, one member, on e1"
    );
    let left = s.moved("lobby", &join, "from").await;
    assert_eq!(left, ["ok", "1", "0"], "the lobby is empty, on no edge");
    let said = s.room("200-2", &say).await;
    assert_eq!(said[0], "ok");
    assert_eq!(
        said[2], entered[1],
        "her line names the version she joined at"
    );
    // Sent again: nothing moves twice (her line came after it there).
    let again = s.moved(&dev, &join, "to").await;
    assert_eq!(again, ["duplicate", "", "1", "e1"]);
    assert_eq!(s.show(&k.room(&dev)).await, "alice");
    assert_eq!(s.show(&k.room_edges(&dev)).await, "e1=1");
    assert_eq!(s.show(&k.room("lobby")).await, "none");
    assert_eq!(s.show(&k.room_edges("lobby")).await, "none");

    // The directory takes the newest size of each room, in whatever order
    // the news comes.
    assert!(s.size(&dev, &entered).await);
    assert!(s.size("lobby", &left).await);
    assert!(
        !s.size(&dev, &["ok".into(), "0".into(), "0".into()]).await,
        "older news"
    );
    assert_eq!(s.show(&k.rooms()).await, dev);
    assert_eq!(s.show(&k.room_sizes()).await, format!("{dev}=1"));

    // /leave: back to the lobby; in the lobby, refused without a step.
    let leave = s.join("200-3", "200-2", &dev, "lobby", "leave").await;
    let d: serde_json::Value = serde_json::from_str(&leave[1]).unwrap();
    assert_eq!(
        (d["from"].as_str(), d["to"].as_str()),
        (Some(dev.as_str()), Some("lobby"))
    );
    assert_eq!(
        (d["prev_from"].as_u64(), d["prev_to"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(s.moved(&dev, &leave, "from").await, ["ok", "2", "0"]);
    assert_eq!(s.moved("lobby", &leave, "to").await, ["ok", "2", "1", "e1"]);
    let again = s.join("200-4", "200-3", "lobby", "lobby", "leave").await;
    assert_eq!(again, ["ok", r#"{"not_in_room":true}"#]);
}

#[tokio::test]
async fn an_end_of_session_in_steps_finishes_once_and_keeps_its_place_in_line() {
    let (cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let dev = other_room(&cluster, &mut conn, &k).await;
    // alice on e1 in dev, as her login's steps (number 1) left her.
    let session = ["edge", "e1", "conn", "7", "sid", "s1", "room", &dev];
    run(&mut conn, "HSET", &k.session("alice"), &session).await;
    run(
        &mut conn,
        "HSET",
        &k.resume("alice"),
        &["hash", "h", "room", &dev],
    )
    .await;
    run(&mut conn, "SET", &k.decisions("alice"), &["1"]).await;
    let routes = [
        format!("room:{dev}"),
        "1".into(),
        "edge:e1".into(),
        "1".into(),
    ];
    let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
    run(&mut conn, "HSET", &k.routes("alice"), &routes).await;
    run(&mut conn, "SADD", &k.room(&dev), &["alice"]).await;
    run(&mut conn, "HSET", &k.room_edges(&dev), &["e1", "1"]).await;
    run(&mut conn, "HSET", &k.marks(&dev), &["alice", "1 1"]).await;
    run(&mut conn, "SADD", &k.edge_sessions("e1"), &["alice"]).await;
    run(&mut conn, "HSET", &k.edge_marks("e1"), &["alice", "1"]).await;
    let s = Steps {
        conn,
        k: k.clone(),
        room: dev.clone(),
    };
    let end = |edge: &str| {
        let keys = [
            k.session("alice"),
            k.resume("alice"),
            k.decisions("alice"),
            k.routes("alice"),
            k.ending("alice"),
        ];
        let call = Call::new("chat_c_end", &keys)
            .arg(edge)
            .arg("")
            .arg("restart");
        let mut conn = s.conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };
    let edge_step = |seq: u64, prev: u64, how: &str| {
        let keys = [
            k.edge_sessions("e1"),
            k.edge_marks("e1"),
            k.edge_alive("e1"),
        ];
        let call = Call::new("chat_c_edge_session", &keys).arg("alice");
        let call = call.arg(seq).arg(prev).arg(how);
        let mut conn = s.conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };

    assert_eq!(end("e2").await, ["gone"], "not a session of e2");
    let ended = end("e1").await;
    assert_eq!(ended[0], "ok");
    let d: serde_json::Value = serde_json::from_str(&ended[1]).unwrap();
    let numbers = (
        d["seq"].as_u64(),
        d["prev_room"].as_u64(),
        d["prev_edge"].as_u64(),
    );
    assert_eq!(numbers, (Some(2), Some(1), Some(1)));
    assert_eq!(
        (d["conn"].as_str(), d["sid"].as_str()),
        (Some("7"), Some("s1"))
    );
    assert_eq!(s.show(&k.session("alice")).await, "none");
    assert_eq!(
        s.show(&k.resume("alice")).await,
        format!("hash=h room={dev}"),
        "kept to come back"
    );
    // Unfinished, it is what the next end finds, to finish first.
    assert_eq!(end("e1").await, ["pending", &ended[1]]);

    // A next login's step on e1 (number 3) cannot overtake the end's.
    assert_eq!(edge_step(3, 2, "add").await, ["retry"]);
    assert_eq!(edge_step(2, 1, "remove").await, ["ok"]);
    assert_eq!(edge_step(2, 1, "remove").await, ["duplicate", ""]);
    assert_eq!(s.show(&k.edge_sessions("e1")).await, "none");
    let left = Call::new(
        "chat_c_room_move",
        &[
            k.room(&dev),
            k.room_edges(&dev),
            k.marks(&dev),
            k.room_version(&dev),
        ],
    );
    let left = left.arg("alice").arg(2).arg(1).arg("e1").arg("leave");
    let left: Vec<String> = left.invoke(&mut s.conn.clone()).await.unwrap();
    assert_eq!(left, ["ok", "1", "0"]);
    // e1's beat ran out: it takes no session, and may leave the
    // directory; beating again, it takes one.
    assert_eq!(edge_step(3, 2, "add").await, ["dead"]);
    let gone = Call::new(
        "chat_c_edge_gone",
        &[k.edge_sessions("e1"), k.edge_alive("e1")],
    );
    assert_eq!(gone.invoke::<i64>(&mut s.conn.clone()).await.unwrap(), 1);
    run(
        &mut s.conn.clone(),
        "SET",
        &k.edge_alive("e1"),
        &["1", "PX", "60000"],
    )
    .await;
    assert_eq!(edge_step(3, 2, "add").await, ["ok"]);
    assert_eq!(s.show(&k.edge_sessions("e1")).await, "alice");
    let gone = Call::new(
        "chat_c_edge_gone",
        &[k.edge_sessions("e1"), k.edge_alive("e1")],
    );
    assert_eq!(gone.invoke::<i64>(&mut s.conn.clone()).await.unwrap(), 0);

    // Finished: forgotten, and there is nothing left to end.
    let done = Call::new("chat_c_ended", &[k.ending("alice")]).arg(&ended[1]);
    done.invoke::<i64>(&mut s.conn.clone()).await.unwrap();
    assert_eq!(end("e1").await, ["gone"]);
}

/// A login's user step on a cluster: how it differs from alice's plain
/// login on e1 with the force policy, no old session read.
struct Login<'a> {
    eid: &'a str,
    sid: &'a str,
    edge: &'a str,
    policy: &'a str,
    at: (&'a str, &'a str),
    new_hash: &'a str,
    deadline: u64,
}

fn login<'a>(eid: &'a str, sid: &'a str) -> Login<'a> {
    Login {
        eid,
        sid,
        edge: "e1",
        policy: "force",
        at: ("", ""),
        new_hash: "",
        deadline: shared::now_ms() + 60_000,
    }
}

impl Login<'_> {
    async fn call(&self, conn: &Conn, k: &Keys) -> Vec<String> {
        let u = "alice";
        let keys = k.login_step(u, self.eid);
        let call = Call::new("chat_c_login", &keys)
            .arg(u)
            .arg(self.edge)
            .arg("7")
            .arg("9");
        let call = call
            .arg("127.0.0.1:5000")
            .arg(self.policy)
            .arg(self.deadline);
        let call = call
            .arg(self.new_hash)
            .arg(self.sid)
            .arg(self.at.0)
            .arg(self.at.1);
        let call = call.arg("lobby").arg("").arg(0).arg("").arg("");
        call.invoke(&mut conn.clone()).await.unwrap()
    }
}

/// alice's session id.
async fn session_id(conn: &mut Conn, k: &Keys) -> String {
    let mut sid = redis::cmd("HGET");
    sid.arg(k.session("alice")).arg("sid");
    sid.query_async(conn).await.unwrap()
}

/// A decision's JSON.
fn decision(answer: &[String]) -> serde_json::Value {
    serde_json::from_str(&answer[1]).unwrap()
}

#[tokio::test]
async fn a_logins_user_step_opens_one_session_and_numbers_the_steps_after_it() {
    let (_cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    // A registration: the account, the session, and two steps to take
    // (the lobby, the edge's set), the first of alice's at each.
    let mut first = login("300-1", "s1");
    first.new_hash = "$2b$hash";
    let opened = first.call(&conn, &k).await;
    assert_eq!(opened[0], "ok", "{opened:?}");
    let d = decision(&opened);
    assert!(d.get("old").is_none());
    assert_eq!(
        d["new"],
        serde_json::json!({"room": "lobby", "edge": "e1", "seq": 1, "prev_room": 0, "prev_edge": 0})
    );
    let account: Option<String> = redis::cmd("HGET")
        .arg(k.user("alice"))
        .arg("password")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(account.as_deref(), Some("$2b$hash"));
    // Claimed again by another instance: the same decision, to carry out,
    // also once the edge has stopped waiting (an instance killed after
    // this step, taken over late): its steps must still be taken, or the
    // session stays half open (in no edge's set, its room not entered).
    assert_eq!(first.call(&conn, &k).await, ["duplicate", &opened[1]]);
    let mut late = login("300-1", "s1");
    late.new_hash = "$2b$hash";
    late.deadline = shared::now_ms() - 1;
    assert_eq!(late.call(&conn, &k).await, ["duplicate", &opened[1]]);

    // A second login on e2 replaces the first: its end, then the new
    // session, numbered in that order in the lobby; queued messages follow
    // OK LOGIN.
    let dm = ["id", "1-1", "from", "bob", "text", "hi"];
    redis::cmd("XADD")
        .arg(k.inbox("alice"))
        .arg("*")
        .arg(&dm)
        .query_async::<String>(&mut conn)
        .await
        .unwrap();
    let mut second = login("300-2", "s2");
    (second.edge, second.at) = ("e2", ("e1", "lobby"));
    let replaced = second.call(&conn, &k).await;
    assert_eq!(replaced[0], "replaced", "{replaced:?}");
    let d = decision(&replaced);
    assert_eq!(
        d["old"],
        serde_json::json!({"room": "lobby", "edge": "e1", "conn": "7", "sid": "s1", "seq": 2, "prev_room": 1, "prev_edge": 1})
    );
    assert_eq!(
        d["new"],
        serde_json::json!({"room": "lobby", "edge": "e2", "seq": 3, "prev_room": 2, "prev_edge": 0})
    );
    let lines: Vec<&str> = d["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["k"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["ok_login", "dm"]);
    let sid = session_id(&mut conn, &k).await;
    assert_eq!(sid, "s2");

    // Refused: the reject policy, a read that is out of date, a deadline
    // passed; and an end in progress goes first.
    let mut third = login("300-3", "s3");
    (third.policy, third.at) = ("reject", ("e2", "lobby"));
    assert_eq!(third.call(&conn, &k).await, ["rejected"]);
    third.policy = "force";
    third.at = ("e1", "lobby");
    assert_eq!(third.call(&conn, &k).await, ["moved"]);
    third.at = ("e2", "lobby");
    third.deadline = shared::now_ms() - 1;
    assert_eq!(third.call(&conn, &k).await, ["stale"]);
    third.deadline = shared::now_ms() + 60_000;
    run(&mut conn, "SET", &k.ending("alice"), &["{}"]).await;
    assert_eq!(third.call(&conn, &k).await, ["pending", "{}"]);
    let sid = session_id(&mut conn, &k).await;
    assert_eq!(sid, "s2", "untouched by the refused ones");
}

#[tokio::test]
async fn subscriptions_and_publications_in_steps_apply_once_and_in_order() {
    let (_cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    for (user, edge) in [("alice", "e1"), ("carol", "e2")] {
        let session = ["edge", edge, "conn", "1", "sid", "s1", "room", "lobby"];
        run(&mut conn, "HSET", &k.session(user), &session).await;
        run(&mut conn, "HSET", &k.user(user), &["password", "x"]).await;
    }
    let user_step = |f: &str, user: &str, eid: &str, extra: &[&str]| {
        let keys = [
            k.applied(user),
            k.session(user),
            k.decision(user, eid),
            k.routes(user),
            k.decisions(user),
            if f == "chat_c_publish" {
                k.publications(user)
            } else {
                k.subscriptions(user)
            },
        ];
        let call = Call::new(f, &keys)
            .arg(eid)
            .arg("")
            .arg("s1")
            .arg(if user == "alice" { "e1" } else { "e2" });
        let call = call.arg("lobby").arg(extra);
        let mut conn = conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };
    let target_step = |target: &str, d: &serde_json::Value, how: &str| {
        let keys = [
            k.user(target),
            k.subscribers(target),
            k.user_marks(target),
            k.publications(target),
        ];
        let call = Call::new("chat_c_subscriber", &keys)
            .arg("alice")
            .arg(d["seq"].as_u64())
            .arg(d["prev"].as_u64())
            .arg(how);
        let mut conn = conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };
    let own_step = |target: &str, d: &serde_json::Value, how: &str| {
        let keys = [k.subscriptions("alice"), k.user_marks("alice")];
        let call = Call::new("chat_c_own_subscription", &keys)
            .arg("alice")
            .arg(target);
        let call = call
            .arg(d["seq"].as_u64())
            .arg(d["prev_own"].as_u64())
            .arg(how);
        let mut conn = conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };
    let members = |key: String| {
        let mut conn = conn.clone();
        async move {
            let mut m: Vec<String> = redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            m.sort();
            m
        }
    };

    // carol publishes: the publication is hers, added by her user step.
    let published = user_step("chat_c_publish", "carol", "400-1", &["news", "100", "0"]).await;
    let id = decision(&published)["id"].as_str().unwrap().to_string();
    assert_eq!(
        user_step("chat_c_publish", "carol", "400-1", &["news", "100", "0"]).await,
        ["duplicate", &published[1]]
    );

    // alice subscribes to carol: carol's step (she exists; her last
    // publication is where alice's edge starts), then alice's own.
    let sub = decision(
        &user_step(
            "chat_c_subscribe",
            "alice",
            "500-1",
            &["carol", "2", "subscribe"],
        )
        .await,
    );
    assert_eq!(target_step("carol", &sub, "subscribe").await, ["ok", &id]);
    assert_eq!(own_step("carol", &sub, "subscribe").await, ["ok"]);
    assert_eq!(
        target_step("carol", &sub, "subscribe").await,
        ["duplicate", &id]
    );
    assert_eq!(members(k.subscribers("carol")).await, ["alice"]);
    assert_eq!(members(k.subscriptions("alice")).await, ["carol"]);

    // To nobody: no such user, and nothing added.
    let nobody = decision(
        &user_step(
            "chat_c_subscribe",
            "alice",
            "500-2",
            &["nobody", "2", "subscribe"],
        )
        .await,
    );
    assert_eq!(
        target_step("nobody", &nobody, "subscribe").await,
        ["ok", "-"]
    );
    // Its own step is sent anyway, to take its number.
    assert_eq!(own_step("nobody", &nobody, "none").await, ["ok"]);
    assert_eq!(members(k.subscriptions("alice")).await, ["carol"]);
    // The cap (here 1): refused in the user step.
    let capped = user_step(
        "chat_c_subscribe",
        "alice",
        "500-3",
        &["dave", "1", "subscribe"],
    )
    .await;
    assert_eq!(capped, ["ok", r#"{"limit":1}"#]);

    // Unsubscribed; an old owner's late step of the subscription then
    // cannot put carol back.
    let unsub = decision(
        &user_step(
            "chat_c_subscribe",
            "alice",
            "500-4",
            &["carol", "2", "unsubscribe"],
        )
        .await,
    );
    assert_eq!(
        target_step("carol", &unsub, "unsubscribe").await,
        ["ok", &id]
    );
    assert_eq!(own_step("carol", &unsub, "unsubscribe").await, ["ok"]);
    assert_eq!(
        own_step("carol", &sub, "subscribe").await,
        ["duplicate", ""]
    );
    assert_eq!(
        members(k.subscriptions("alice")).await,
        Vec::<String>::new()
    );
    assert_eq!(members(k.subscribers("carol")).await, Vec::<String>::new());
}

/// The three steps after a private message's user step, from alice to
/// `to`, as decided in `d`: the check, the conversation, the delivery.
async fn message_steps(
    conn: &Conn,
    k: &Keys,
    to: &str,
    eid: &str,
    d: &serde_json::Value,
) -> [Vec<String>; 3] {
    let mut c = conn.clone();
    let n = |f: &str| d[f].as_u64().unwrap();
    let check = Call::new(
        "chat_c_msg_check",
        &[
            k.user(to),
            k.session(to),
            k.inbox_counts(to),
            k.user_marks(to),
        ],
    );
    let check: Vec<String> = check
        .arg("alice")
        .arg(n("seq_check"))
        .arg(n("prev_check"))
        .arg(1)
        .invoke(&mut c)
        .await
        .unwrap();
    let none = if check.get(1).map(String::as_str) == Some("go") {
        ""
    } else {
        "none"
    };
    let dm = Call::new(
        "chat_c_msg_dm",
        &[k.dm("alice", to), k.dm_marks("alice", to)],
    );
    let dm = dm
        .arg("alice")
        .arg(eid)
        .arg(n("seq_deliver"))
        .arg(n("prev_dm"))
        .arg(to);
    let dm: Vec<String> = dm
        .arg("hello")
        .arg(100)
        .arg(0)
        .arg(none)
        .invoke(&mut c)
        .await
        .unwrap();
    let id = if dm[0] == "ok" {
        dm[1].clone()
    } else {
        String::new()
    };
    let deliver = Call::new(
        "chat_c_msg_deliver",
        &[
            k.session(to),
            k.inbox(to),
            k.inbox_counts(to),
            k.user_marks(to),
        ],
    );
    let deliver = deliver
        .arg("alice")
        .arg(n("seq_deliver"))
        .arg(n("prev_deliver"))
        .arg(&id);
    let deliver: Vec<String> = deliver
        .arg("hello")
        .arg(100)
        .arg(0)
        .invoke(&mut c)
        .await
        .unwrap();
    [check, dm, deliver]
}

#[tokio::test]
async fn a_private_message_in_steps_is_delivered_or_queued_once() {
    let (_cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let session = ["edge", "e1", "conn", "1", "sid", "s1", "room", "lobby"];
    run(&mut conn, "HSET", &k.session("alice"), &session).await;
    run(&mut conn, "HSET", &k.user("bob"), &["password", "x"]).await;
    let mut c = conn.clone();
    let msg = |eid: &'static str, to: &'static str| {
        let keys = [
            k.applied("alice"),
            k.session("alice"),
            k.decision("alice", eid),
            k.routes("alice"),
            k.decisions("alice"),
        ];
        let call = Call::new("chat_c_msg", &keys)
            .arg(eid)
            .arg("")
            .arg("s1")
            .arg("e1")
            .arg("lobby")
            .arg(to);
        let mut conn = conn.clone();
        async move { decision(&call.invoke::<Vec<String>>(&mut conn).await.unwrap()) }
    };
    // bob is offline: queued in his inbox (the conversation has it too).
    let d = msg("600-1", "bob").await;
    let [check, dm, deliver] = message_steps(&conn, &k, "bob", "600-1", &d).await;
    assert_eq!(
        (check, deliver),
        (
            vec!["ok".to_string(), "go".into()],
            vec!["ok".to_string(), "queued".into()]
        )
    );
    let inbox: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(k.inbox("bob"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(inbox.ids.len(), 1);
    assert_eq!(inbox.ids[0].get::<String>("id"), Some(dm[1].clone()));
    // One queued is alice's most (the limit, 1): the next is refused, and
    // its steps still take their numbers.
    let d = msg("600-2", "bob").await;
    let [check, dm, deliver] = message_steps(&conn, &k, "bob", "600-2", &d).await;
    assert_eq!(
        (check[1].as_str(), dm[1].as_str(), deliver[1].as_str()),
        ("rate-limited", "", "none")
    );
    // bob online: delivered to his session; sent again, a duplicate.
    let session = ["edge", "e2", "conn", "4", "sid", "b1", "room", "lobby"];
    run(&mut c, "HSET", &k.session("bob"), &session).await;
    let d = msg("600-3", "bob").await;
    let [_, dm, deliver] = message_steps(&conn, &k, "bob", "600-3", &d).await;
    assert_eq!(deliver, ["ok", "online", "e2", "4", "b1"]);
    let [check, again, deliver] = message_steps(&conn, &k, "bob", "600-3", &d).await;
    assert_eq!(
        (check[0].as_str(), again, deliver),
        (
            "duplicate",
            vec!["duplicate".to_string(), dm[1].clone()],
            vec!["duplicate".to_string(), "online".into()]
        )
    );
    let history: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(k.dm("alice", "bob"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        history.ids.len(),
        2,
        "the refused one is not in the conversation"
    );
    // To nobody: no such user, nothing anywhere.
    let d = msg("600-4", "nobody").await;
    let [check, dm, deliver] = message_steps(&conn, &k, "nobody", "600-4", &d).await;
    assert_eq!(
        (check[1].as_str(), dm[1].as_str(), deliver[1].as_str()),
        ("no-such-user", "", "none")
    );
}

#[tokio::test]
async fn a_read_in_steps_sees_the_readers_own_writes_first() {
    let (cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let room = other_room(&cluster, &mut conn, &k).await;
    let session = ["edge", "e1", "conn", "1", "sid", "s1", "room", &room];
    run(&mut conn, "HSET", &k.session("alice"), &session).await;
    run(&mut conn, "SADD", &k.room(&room), &["alice", "bob"]).await;
    let s = Steps {
        conn,
        k: k.clone(),
        room: room.clone(),
    };
    let read = |eid: &'static str, prev: &'static str, target: String| {
        let call = Call::new("chat_c_read", &s.user_keys(eid))
            .arg(eid)
            .arg(prev)
            .arg("s1")
            .arg("e1");
        let call = call.arg(&room).arg(target);
        let mut conn = s.conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };
    let read_at = |key: String, d: &[String], what: &[&str]| {
        let (seq, prev) = numbers(d);
        let call = Call::new("chat_c_read_at", &[key, k.marks(&room)])
            .arg("alice")
            .arg(seq)
            .arg(prev)
            .arg(what);
        let mut conn = s.conn.clone();
        async move { call.invoke::<Vec<String>>(&mut conn).await.unwrap() }
    };
    // A line said, then /history in one pipeline: the read waits for the
    // line's room step, then shows it.
    let said = s.user("700-1", "").await;
    let history = read("700-2", "700-1", String::new()).await;
    assert_eq!(numbers(&history), (2, 1));
    let hist = ["history", "10", &room, "65536"];
    assert_eq!(read_at(k.history(&room), &history, &hist).await, ["retry"]);
    s.room("700-1", &said).await;
    let shown = read_at(k.history(&room), &history, &hist).await;
    assert_eq!(shown[0], "ok");
    let lines: serde_json::Value = serde_json::from_str(&shown[1]).unwrap();
    let kinds: Vec<&str> = lines
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["k"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["hist", "ok_history"]);
    assert_eq!(lines[0]["text"], "line 700-1");
    assert_eq!(
        read_at(k.history(&room), &history, &hist).await,
        ["duplicate", &shown[1]]
    );
    // /who of the room, by name.
    let who = read("700-3", "700-2", format!("room:{room}")).await;
    let listed = read_at(k.room(&room), &who, &["who", &room, "100"]).await;
    let lines: serde_json::Value = serde_json::from_str(&listed[1]).unwrap();
    let mut users: Vec<&str> = lines
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["user"].as_str())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);
}

#[tokio::test]
async fn a_master_that_lost_the_library_gets_it_back_at_the_first_call_there() {
    let (cluster, mut conn) = cluster(3, 0).await;
    let k = Keys::for_cluster("chat:");
    let lease = k.router_lease(0);
    hold(&mut conn, &lease).await;
    let master = cluster.master_of(&lease).await.unwrap();
    let mut node = cluster.nodes[master].plain().await;
    let () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut node)
        .await
        .unwrap();
    let renew = Call::new("chat_lease_renew", &[&lease]).arg("r1").arg(5000);
    assert_eq!(renew.invoke::<i64>(&mut conn).await.unwrap(), 1);
    let mut pipe = redis::pipe();
    let () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut node)
        .await
        .unwrap();
    pipe.add_command(renew.cmd().clone());
    let renewed: Vec<i64> = shared::scripts::query_pipe(&mut conn, &pipe).await.unwrap();
    assert_eq!(renewed, [1]);
}
