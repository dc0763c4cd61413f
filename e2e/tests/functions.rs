//! Each function of the Redis Functions library (shared/lua/), called as its callers call it.

// No service runs: every test makes the FCALLs of auth-svc, router-svc
// and shared::store against a real redis-server, with keys from `Keys`,
// then checks the status, the keys left behind and what was published,
// decoded with serde into `Reply` / `ServerLine` (a Lua table that no
// longer matches the Rust types fails the decoding, and so the test).
// Lines are compared in their wire form, keys and replies in a short one.

use e2e::TestRedis;
use futures_util::StreamExt;
use redis::AsyncCommands;
use shared::config::Config;
use shared::envelope::{Effect, Op, Reply, Request};
use shared::keys::Keys;
use shared::protocol::LOBBY;
use shared::scripts::Call;
use shared::store::Advert;
use shared::store::Conn;
use std::time::Duration;

/// Longest wait for a published message.
const WAIT: Duration = Duration::from_secs(5);
const ROUTER: &str = "router-1";
/// The partition every router request of these tests travels on.
const P: u32 = 0;
const CAP: u64 = 100;
const RID: u64 = 5;
const ERR_NO_USER: &str = "ERR no-such-user no such user";

struct Fx {
    _redis: TestRedis,
    client: redis::Client,
    c: Conn,
    k: Keys,
    /// Entry ids `<base>-<n>`, increasing: router requests, login done keys.
    base: u64,
    n: u64,
    /// Sessions opened: the next one's id is this plus one (auth-svc
    /// draws random ids; the test numbers them, to name them).
    sessions: u64,
    /// The settings the calls pass: the defaults, `history_cap` [`CAP`].
    cfg: Config,
}

/// A redis-server with the library loaded, live edges `e1` and `e2`, and
/// partition `P` leased to `ROUTER`. The prefix is not the default one,
/// so a function that makes a key name of its own is caught.
async fn setup() -> Fx {
    let redis = TestRedis::start().await;
    let client = shared::store::client(&redis.url(), &Default::default()).unwrap();
    let c = shared::store::commands(&client).await.unwrap();
    let (k, base, n) = (Keys::new("t:"), shared::now_ms(), 0);
    let mut fx = Fx {
        _redis: redis,
        client,
        c,
        k,
        base,
        n,
        sessions: 0,
        cfg: Config::default(),
    };
    fx.cfg.router.history_cap = CAP;
    let advert = Advert::default();
    for e in ["e1", "e2"] {
        let beat = shared::store::heartbeat(&mut fx.c, &fx.k, e, 60_000, &advert, None, None);
        beat.await.unwrap();
    }
    let lease = fx.k.router_lease(P);
    fx.run(&["SET", &lease, ROUTER]).await;
    fx
}

/// [`setup`], with accounts for `users`.
async fn with_accounts(users: &[&str]) -> (Fx, Keys) {
    let mut fx = setup().await;
    let k = fx.k.clone();
    for u in users {
        fx.run(&["HSET", &k.user(u), "password", "x"]).await;
    }
    (fx, k)
}

/// A reply in short: `<conn>/<rid>[ @<sid>][: <line> | …][ => <effect>]`,
/// a listing sorted as the edges sort it.
fn short(r: &Reply) -> String {
    let mut r = r.clone();
    r.sort_listing();
    let lines: Vec<String> = r.lines.iter().map(ToString::to_string).collect();
    let mut s = format!("{}/{}", r.conn, r.rid);
    if !r.sid.is_empty() {
        s += &format!(" @{}", r.sid);
    }
    if !lines.is_empty() {
        s += &format!(": {}", lines.join(" | "));
    }
    let effect = match r.effect {
        None => return s,
        Some(Effect::Login {
            user,
            sid,
            room,
            subs,
            inbox,
            ..
        }) => {
            let mut subs: Vec<&str> = subs.split_whitespace().collect();
            subs.sort_unstable();
            format!("login {user} {sid} {room} [{}] [{inbox}]", subs.join(" "))
        }
        Some(Effect::Room { sid, room, .. }) => format!("room {sid} {room}"),
        Some(Effect::Subscribe { sid, user, .. }) => format!("subscribe {sid} {user}"),
        Some(Effect::Unsubscribe { sid, user, .. }) => format!("unsubscribe {sid} {user}"),
        Some(Effect::Close { reason, sid }) => format!("close {reason} {sid}"),
    };
    format!("{s} => {effect}")
}

/// The `n`th space-separated word of `s` (an id in a line).
fn word(s: &str, n: usize) -> String {
    s.split(' ').nth(n).unwrap().to_string()
}

impl Fx {
    fn eid(&mut self) -> String {
        self.n += 1;
        format!("{}-{}", self.base, self.n)
    }

    /// Runs a plain command (to set a test up).
    async fn run(&mut self, args: &[&str]) {
        let cmd = redis::cmd(args[0]).arg(&args[1..]).to_owned();
        cmd.query_async::<redis::Value>(&mut self.c).await.unwrap();
    }

    /// A key in short: a set's members or a hash's `field=value`s, sorted;
    /// a stream's entries `<id> <field>=<value>…` in order, `|`-separated;
    /// a string as it is; "" when it does not exist.
    async fn show(&mut self, key: &str) -> String {
        let kind = redis::cmd("TYPE").arg(key).to_owned();
        let kind: String = kind.query_async(&mut self.c).await.unwrap();
        let mut items: Vec<String> = match kind.as_str() {
            "none" => vec![],
            "string" => vec![self.c.get(key).await.unwrap()],
            "set" => self.c.smembers(key).await.unwrap(),
            "hash" => {
                let h: Vec<(String, String)> = self.c.hgetall(key).await.unwrap();
                h.into_iter().map(|(f, v)| format!("{f}={v}")).collect()
            }
            "stream" => {
                let s: redis::streams::StreamRangeReply = self.c.xrange_all(key).await.unwrap();
                let mut entries = Vec::new();
                for e in s.ids {
                    let mut fields = Vec::new();
                    for (f, v) in e.map {
                        let v: String = redis::from_redis_value(v).unwrap();
                        fields.push(format!("{f}={v}"));
                    }
                    fields.sort();
                    entries.push(format!("{} {}", e.id, fields.join(" ")));
                }
                return entries.join(" | ");
            }
            other => panic!("{key} is a {other}"),
        };
        items.sort();
        items.join(" ")
    }

    /// A call that answers a number.
    async fn int(&mut self, call: Call) -> i64 {
        call.invoke(&mut self.c).await.unwrap()
    }

    /// Asserts `key` shows as `want` (see [`Fx::show`]).
    async fn is(&mut self, key: String, want: &str) {
        assert_eq!(self.show(&key).await, want, "{key}");
    }

    /// A subscriber to `channels`, subscribed when this returns.
    async fn sub(&self, channels: &[&String]) -> Sub {
        let mut ps = self.client.get_async_pubsub().await.unwrap();
        for ch in channels {
            ps.subscribe(*ch).await.unwrap();
        }
        let (c, first) = (self.c.clone(), channels[0].clone());
        Sub { ps, c, first }
    }
}

/// One Pub/Sub connection: its messages come in publishing order, across
/// its channels, so the tests check the order too.
struct Sub {
    ps: redis::aio::PubSub,
    c: Conn,
    first: String,
}

impl Sub {
    /// The next message: its channel and payload.
    async fn recv(&mut self) -> (String, String) {
        let msg = tokio::time::timeout(WAIT, self.ps.on_message().next()).await;
        let msg = msg.expect("a message within 5 s").expect("subscribed");
        (
            msg.get_channel_name().to_string(),
            msg.get_payload().unwrap(),
        )
    }

    /// The next message's payload, which must come on `channel`.
    async fn next(&mut self, channel: &str) -> String {
        let (on, payload) = self.recv().await;
        assert_eq!(on, channel, "{payload}");
        payload
    }

    /// The next `n` messages, JSON `ServerLine`s, as `<channel> <line>`,
    /// sorted: a line for several edges goes to each in an order of
    /// Redis's.
    async fn fanned(&mut self, n: usize) -> Vec<String> {
        let mut all = Vec::new();
        for _ in 0..n {
            let (on, json) = self.recv().await;
            let line: shared::line::ServerLine = serde_json::from_str(&json).unwrap();
            all.push(format!("{on} {line}"));
        }
        all.sort();
        all
    }

    /// The next message, a JSON `Reply` on `channel`, in short.
    async fn said(&mut self, channel: &str) -> String {
        let json = self.next(channel).await;
        let r = serde_json::from_str(&json);
        short(&r.unwrap_or_else(|e| panic!("not a Reply ({e}): {json}")))
    }

    async fn is(&mut self, channel: &str, want: &str) {
        assert_eq!(self.said(channel).await, want);
    }

    /// The next message, a JSON `ServerLine` on `channel`, in wire form.
    async fn line(&mut self, channel: &str) -> String {
        let json = self.next(channel).await;
        let line: Result<shared::line::ServerLine, _> = serde_json::from_str(&json);
        let line = line.unwrap_or_else(|e| panic!("not a line ({e}): {json}"));
        line.to_string()
    }

    async fn line_is(&mut self, channel: &str, want: &str) {
        assert_eq!(self.line(channel).await, want);
    }

    /// Nothing more was published: a marker published now comes next.
    async fn quiet(&mut self) {
        let _: () = self.c.publish(&self.first, "marker").await.unwrap();
        assert_eq!(self.next(&self.first.clone()).await, "marker");
    }
}

/// A logged-in connection.
#[derive(Clone, Debug)]
struct Sess {
    user: String,
    edge: String,
    conn: u64,
    sid: String,
}

impl Sess {
    fn req(&self, op: Op) -> Request {
        let (edge, user, sid) = (self.edge.clone(), self.user.clone(), self.sid.clone());
        Request {
            edge,
            conn: self.conn,
            rid: RID,
            user,
            sid,
            op,
        }
    }
}

/// How a login differs from a plain one.
struct Opts {
    policy: &'static str,
    deadline: u64,
    new_hash: &'static str,
    /// The request's entry id (its done key); a new one if `None`.
    entry: Option<String>,
    /// Where the old session is (edge, room); read from its hash if `None`.
    at: Option<(&'static str, &'static str)>,
}

fn opts() -> Opts {
    let deadline = shared::now_ms() + 60_000;
    Opts {
        policy: "force-logout",
        deadline,
        new_hash: "",
        entry: None,
        at: None,
    }
}

/// chat_login as auth-svc calls it ([`auth_svc::Switch`]).
async fn login_with(fx: &mut Fx, user: &str, edge: &str, conn: u64, o: Opts) -> String {
    let entry = o.entry.unwrap_or_else(|| fx.eid());
    let (at_edge, at_room) = match o.at {
        Some((e, r)) => (e.to_string(), r.to_string()),
        None => fx.place(user).await,
    };
    let req = Request {
        edge: edge.into(),
        conn,
        rid: RID,
        user: user.into(),
        sid: String::new(),
        op: Op::Logout,
    };
    let switch = auth_svc::Switch {
        req: &req,
        entry_id: &entry,
        addr: "127.0.0.1:5000",
        ip: "127.0.0.1",
        policy: o.policy,
        deadline: o.deadline,
        new_hash: o.new_hash,
        at_edge: &at_edge,
        at_room: &at_room,
        sid: &(fx.sessions + 1).to_string(),
        token: auth_svc::Tokens::default(),
    };
    let status: String = switch
        .call(&fx.k, fx.cfg.notices)
        .invoke(&mut fx.c)
        .await
        .unwrap();
    if status == "ok" || status == "replaced" {
        fx.sessions += 1;
    }
    status
}

/// A plain login that succeeds (the account need not exist: auth-svc
/// checks passwords, not the function).
async fn login(fx: &mut Fx, user: &str, edge: &str, conn: u64) -> Sess {
    let status = login_with(fx, user, edge, conn, opts()).await;
    assert!(status == "ok" || status == "replaced", "{status}");
    let sid: String = fx.c.hget(fx.k.session(user), "sid").await.unwrap();
    Sess {
        user: user.into(),
        edge: edge.into(),
        conn,
        sid,
    }
}

/// The FCALL of a router request, `at` being where the session was read
/// to be (edge, room): router-svc's own.
fn router_call(
    k: &Keys,
    cfg: &Config,
    owner: &str,
    eid: &str,
    prev: &str,
    req: &Request,
    at: (&str, &str),
) -> Call {
    let place = router_svc::Place {
        sid: String::new(),
        edge: at.0.into(),
        room: at.1.into(),
    };
    let call = router_svc::request_call(k, owner, cfg, P, eid, req, prev, &place);
    call.expect("a router request").call()
}

impl Fx {
    /// Where `user`'s session is (edge, room), as router-svc and auth-svc
    /// read it before making the keys; empty strings if it has none.
    async fn place(&mut self, user: &str) -> (String, String) {
        let session = self.k.session(user);
        let at: (Option<String>, Option<String>) =
            self.c.hmget(session, &["edge", "room"]).await.unwrap();
        (at.0.unwrap_or_default(), at.1.unwrap_or_default())
    }

    /// Applies one request as `ROUTER` would, first of its pipeline, with
    /// the session read just before: the function's status.
    async fn route(&mut self, req: Request) -> String {
        let (eid, (edge, room)) = (self.eid(), self.place(&req.user).await);
        self.apply(ROUTER, &eid, "", &req, (&edge, &room)).await
    }

    /// Applies `req` as router `owner`, as entry `eid` after `prev`.
    async fn apply(
        &mut self,
        owner: &str,
        eid: &str,
        prev: &str,
        req: &Request,
        at: (&str, &str),
    ) -> String {
        let call = router_call(&self.k, &self.cfg, owner, eid, prev, req, at);
        call.invoke(&mut self.c).await.unwrap()
    }

    /// Routes `op` for `s` and expects it applied.
    async fn ok(&mut self, s: &Sess, op: Op) {
        assert_eq!(self.route(s.req(op)).await, "ok");
    }
}

fn join(room: &str) -> Op {
    Op::Join { room: room.into() }
}

fn say(text: &str) -> Op {
    Op::Say { text: text.into() }
}

fn msg(to: &str, text: &str) -> Op {
    let (to, text) = (to.into(), text.into());
    Op::Msg { to, text }
}

fn who(room: Option<&str>) -> Op {
    Op::Who {
        room: room.map(Into::into),
    }
}

fn history(with: Option<&str>, n: u32) -> Op {
    Op::History {
        with: with.map(Into::into),
        n,
    }
}

fn delivered(upto: &str) -> Op {
    Op::Delivered { upto: upto.into() }
}

fn publish(text: &str) -> Op {
    Op::Publish { text: text.into() }
}

fn subscribe(target: &str) -> Op {
    Op::Subscribe {
        target: target.into(),
    }
}

fn unsubscribe(target: &str) -> Op {
    Op::Unsubscribe {
        target: target.into(),
    }
}

#[tokio::test]
async fn login_opens_a_session_and_gives_back_attempts() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    fx.run(&["SET", &k.fail_user("alice"), "3"]).await;
    fx.run(&["SET", &k.fail_addr("127.0.0.1"), "2"]).await;
    fx.run(&["SADD", &k.subscriptions("alice"), "bob", "carol"])
        .await;
    let (e1, lines) = (k.edge_channel("e1"), k.lines_channel("e1"));
    let mut sub = fx.sub(&[&e1, &lines]).await;

    assert_eq!(login_with(&mut fx, "alice", "e1", 41, opts()).await, "ok");
    let since: String = fx.c.hget(k.session("alice"), "since").await.unwrap();
    let session = format!("addr=127.0.0.1:5000 conn=41 edge=e1 room=lobby sid=1 since={since}");
    fx.is(k.session("alice"), &session).await;
    assert!(since.parse::<u64>().unwrap().abs_diff(shared::now_ms()) < 60_000);
    fx.is(k.room(LOBBY), "alice").await;
    fx.is(k.rooms(), "lobby").await;
    fx.is(k.room_sizes(), "lobby=1").await;
    fx.is(k.room_edges(LOBBY), "e1=1").await;
    fx.is(k.online(), "alice").await;
    fx.is(k.edge_sessions("e1"), "alice").await;
    fx.is(k.fail_user("alice"), "").await; // the user's count starts over
    fx.is(k.fail_addr("127.0.0.1"), "1").await; // the address's loses one
    let want = "41/5: OK LOGIN alice lobby => login alice 1 lobby [bob carol] []";
    sub.is(&e1, want).await;
    sub.quiet().await; // no notice in the lobby (notices.lobby)

    // Another user: another session id; alice's stays.
    assert_eq!(login(&mut fx, "bob", "e2", 1).await.sid, "2");
    fx.is(k.room_sizes(), "lobby=2").await;
    fx.is(k.room_edges(LOBBY), "e1=1 e2=1").await;
    fx.is(k.online(), "alice bob").await;
    assert_eq!(fx.place("alice").await, ("e1".into(), LOBBY.into()));
}

#[tokio::test]
async fn a_second_login_replaces_the_session_or_is_rejected() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let old = login(&mut fx, "alice", "e1", 7).await;
    fx.ok(&old, join("dev")).await;
    let (e1, e2) = (k.edge_channel("e1"), k.edge_channel("e2"));
    let (l1, l2) = (k.lines_channel("e1"), k.lines_channel("e2"));
    let mut sub = fx.sub(&[&e1, &e2, &l1, &l2]).await;

    let status = login_with(&mut fx, "alice", "e2", 8, opts()).await;
    assert_eq!(status, "replaced");
    // dev is empty then: its notice goes to no edge.
    sub.is(&e1, "7/0 => close logged-in-elsewhere 1").await;
    let want = "8/5: OK LOGIN alice lobby => login alice 2 lobby [] []";
    sub.is(&e2, want).await;
    sub.quiet().await;
    // Exactly one session: the new one.
    let session = fx.show(&k.session("alice")).await;
    assert!(
        session.contains(" conn=8 edge=e2 room=lobby sid=2 "),
        "{session}"
    );
    fx.is(k.edge_sessions("e1"), "").await;
    fx.is(k.edge_sessions("e2"), "alice").await;
    fx.is(k.room("dev"), "").await;
    fx.is(k.room_edges("dev"), "").await;
    fx.is(k.rooms(), "lobby").await;
    fx.is(k.room_sizes(), "lobby=1").await;
    fx.is(k.room_edges(LOBBY), "e2=1").await;
    fx.is(k.online(), "alice").await;

    // `reject`: the session stays, the new connection is refused.
    let mut o = opts();
    o.policy = "reject";
    assert_eq!(login_with(&mut fx, "alice", "e1", 9, o).await, "rejected");
    let want = "9/5: ERR already-logged-in alice is logged in elsewhere";
    sub.is(&e1, want).await;
    sub.quiet().await;
    fx.is(k.session("alice"), &session).await;
}

#[tokio::test]
async fn login_registers_and_refuses_stale_duplicate_and_moved_requests() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let e1 = k.edge_channel("e1");
    let mut sub = fx.sub(&[&e1]).await;
    fx.run(&["SET", &k.fail_addr("127.0.0.1"), "2"]).await;

    let mut o = opts();
    o.new_hash = "$2b$04$hash";
    assert_eq!(login_with(&mut fx, "alice", "e1", 1, o).await, "ok");
    let account = fx.show(&k.user("alice")).await;
    assert!(account.starts_with("created=") && account.ends_with(" password=$2b$04$hash"));
    fx.is(k.fail_addr("127.0.0.1"), "2").await; // registrations keep their count
    let said = sub.said(&e1).await;
    assert!(
        said.starts_with("1/5: OK LOGIN alice lobby => login"),
        "{said}"
    );

    let mut o = opts();
    o.new_hash = "$2b$04$other";
    assert_eq!(login_with(&mut fx, "alice", "e1", 2, o).await, "exists");
    sub.is(&e1, "2/5: ERR user-exists the name alice is taken")
        .await;
    fx.is(k.user("alice"), &account).await;

    let mut o = opts();
    o.deadline = shared::now_ms() - 1_000;
    let status = login_with(&mut fx, "bob", "e1", 3, o).await;
    assert_eq!(status, "stale", "past the deadline");
    let status = login_with(&mut fx, "bob", "e9", 3, opts()).await;
    assert_eq!(status, "stale", "an edge that never beat");
    fx.run(&["ZADD", &k.edges(), "1", "e8"]).await;
    let status = login_with(&mut fx, "bob", "e8", 3, opts()).await;
    assert_eq!(status, "stale", "an edge whose beat ran out");
    fx.is(k.session("bob"), "").await;

    let session = fx.show(&k.session("alice")).await;
    for at in [("e2", LOBBY), ("e1", "dev")] {
        let mut o = opts();
        o.at = Some(at);
        assert_eq!(login_with(&mut fx, "alice", "e1", 4, o).await, "moved");
    }
    fx.is(k.session("alice"), &session).await;

    let entry = fx.eid();
    let mut o = opts();
    o.entry = Some(entry.clone());
    assert_eq!(login_with(&mut fx, "carol", "e1", 5, o).await, "ok");
    sub.said(&e1).await;
    let carol = fx.show(&k.session("carol")).await;
    let mut o = opts();
    o.entry = Some(entry);
    assert_eq!(login_with(&mut fx, "carol", "e1", 6, o).await, "duplicate");
    sub.quiet().await;
    fx.is(k.session("carol"), &carol).await;
}

#[tokio::test]
async fn queued_messages_follow_ok_login_and_leave_once_delivered() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    fx.run(&["HSET", &k.user("alice"), "password", "x"]).await;
    let bob = login(&mut fx, "bob", "e2", 1).await;
    let (e1, e2) = (k.edge_channel("e1"), k.edge_channel("e2"));
    let mut sub = fx.sub(&[&e1, &e2]).await;
    let mut dms = Vec::new();
    for text in ["first", "second  two spaces", "third"] {
        fx.ok(&bob, msg("alice", text)).await;
        let said = sub.said(&e2).await;
        let id = word(&said, 4);
        assert_eq!(said, format!("1/5: OK MSG alice {id} queued"));
        dms.push(format!("DM {id} bob {text}"));
    }
    let inbox: redis::streams::StreamRangeReply = fx.c.xrange_all(k.inbox("alice")).await.unwrap();
    let ids: Vec<&str> = inbox.ids.iter().map(|e| e.id.as_str()).collect();

    let alice = login(&mut fx, "alice", "e1", 3).await;
    let (dms, last) = (dms.join(" | "), ids[2]);
    let want = format!("3/5: OK LOGIN alice lobby | {dms} => login alice 2 lobby [] [{last}]");
    sub.is(&e1, &want).await;

    // Delivered up to the first: two stay; up to the last: the inbox goes.
    fx.ok(&alice, delivered(ids[0])).await;
    let left: usize = fx.c.xlen(k.inbox("alice")).await.unwrap();
    assert_eq!(left, 2);
    fx.ok(&alice, delivered(last)).await;
    fx.is(k.inbox("alice"), "").await;
    sub.quiet().await;
}

#[tokio::test]
async fn say_publishes_msg_lines_and_history_lists_them() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let (e1, lobby) = (k.edge_channel("e1"), k.lines_channel("e1"));
    let mut sub = fx.sub(&[&lobby, &e1]).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three  spaced"] {
        fx.ok(&alice, say(text)).await;
        let line = sub.line(&lobby).await;
        let id = word(&line, 2);
        assert_eq!(line, format!("MSG lobby {id} alice {text}"));
        assert!(
            id.starts_with(&format!("{}-", fx.base)),
            "the request's time: {id}"
        );
        ids.push(id);
    }
    sub.quiet().await; // a say has no reply
    let [a, b, c] = &ids[..] else { unreachable!() };
    let entries = format!("{a} from=alice text=one | {b} from=alice text=two | {c} from=alice");
    fx.is(k.history(LOBBY), &format!("{entries} text=three  spaced"))
        .await;

    // The last two, oldest first.
    fx.ok(&alice, history(None, 2)).await;
    let hist = format!("HIST lobby {b} alice two | HIST lobby {c} alice three  spaced");
    sub.is(&e1, &format!("1/5: {hist} | OK HISTORY 2")).await;

    // A later entry in the stream already: the new id follows it.
    let later = fx.base + 60_000;
    let (stream, id) = (k.history(LOBBY), format!("{later}-0"));
    fx.run(&["XADD", &stream, &id, "from", "x"]).await;
    fx.ok(&alice, say("late")).await;
    sub.line_is(&lobby, &format!("MSG lobby {later}-1 alice late"))
        .await;
}

#[tokio::test]
async fn history_is_trimmed_in_whole_nodes_and_lists_at_most_the_cap() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let e1 = k.edge_channel("e1");
    let n = 3 * CAP + CAP / 2;
    for i in 0..n {
        fx.ok(&alice, say(&format!("line {i}"))).await;
    }
    // Whole nodes of `stream-node-max-entries` (100 by default) go: more
    // than the cap stays, less than a node more.
    let len: u64 = fx.c.xlen(k.history(LOBBY)).await.unwrap();
    assert!(len > CAP && len < CAP + 100, "{len} entries kept");
    let mut sub = fx.sub(&[&e1]).await;
    fx.ok(&alice, history(None, 500)).await;
    let listing = sub.said(&e1).await;
    assert!(
        listing.ends_with(&format!("OK HISTORY {CAP}"))
            && listing.contains(&format!(" alice line {} ", n - CAP))
            && listing.contains(&format!(" alice line {} |", n - 1)),
        "{listing}"
    );
}

#[tokio::test]
async fn join_leave_rooms_and_who() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e2", 2).await;
    let e1 = k.edge_channel("e1");
    let (l1, l2) = (k.lines_channel("e1"), k.lines_channel("e2"));
    let mut sub = fx.sub(&[&e1, &l1, &l2]).await;

    fx.ok(&alice, Op::Leave).await;
    sub.is(&e1, "1/5: ERR not-in-room you are in the lobby")
        .await;

    fx.ok(&alice, join("dev")).await;
    sub.is(&e1, "1/5: OK JOIN dev => room 1 dev").await;
    sub.line_is(&l1, "SYS dev alice joined").await; // none in the lobby
    fx.is(k.room("dev"), "alice").await;
    fx.is(k.room(LOBBY), "bob").await;
    fx.is(k.rooms(), "dev lobby").await;
    fx.is(k.room_sizes(), "dev=1 lobby=1").await;
    fx.is(k.room_edges("dev"), "e1=1").await;
    fx.is(k.room_edges(LOBBY), "e2=1").await;
    assert_eq!(fx.place("alice").await.1, "dev");
    fx.ok(&alice, join("dev")).await;
    sub.is(&e1, "1/5: OK JOIN dev").await; // already there: no move

    fx.ok(&alice, Op::Rooms).await;
    sub.is(&e1, "1/5: ROOM dev 1 | ROOM lobby 1 | OK ROOMS 2")
        .await;
    // A room's lines go to each edge with a member there, once.
    fx.ok(&bob, join("dev")).await;
    let joined = [
        format!("{l1} SYS dev bob joined"),
        format!("{l2} SYS dev bob joined"),
    ];
    assert_eq!(sub.fanned(2).await, joined);
    fx.is(k.room_edges("dev"), "e1=1 e2=1").await;
    fx.is(k.room_edges(LOBBY), "").await;
    fx.ok(&bob, say("hi")).await;
    let said = sub.fanned(2).await;
    assert!(said[0].starts_with(&format!("{l1} MSG dev ")) && said[0].ends_with(" bob hi"));
    assert!(said[1].starts_with(&format!("{l2} MSG dev ")) && said[1].ends_with(" bob hi"));
    fx.ok(&alice, Op::Rooms).await; // the lobby is listed when empty
    sub.is(&e1, "1/5: ROOM dev 2 | ROOM lobby 0 | OK ROOMS 2")
        .await;
    fx.ok(&alice, who(None)).await;
    sub.is(&e1, "1/5: USER alice | USER bob | OK WHO dev 2")
        .await;
    fx.ok(&alice, who(Some("nowhere"))).await;
    sub.is(&e1, "1/5: OK WHO nowhere 0").await;

    fx.ok(&alice, Op::Leave).await;
    sub.is(&e1, "1/5: OK LEAVE dev => room 1 lobby").await;
    sub.line_is(&l2, "SYS dev alice left").await; // bob's edge only
    fx.is(k.room_edges("dev"), "e2=1").await;
    fx.ok(&bob, Op::Leave).await; // the last one: no edge hears it
    sub.quiet().await;
    fx.is(k.room_edges("dev"), "").await;
    fx.is(k.room_edges(LOBBY), "e1=1 e2=1").await;
    fx.is(k.room("dev"), "").await;
    fx.is(k.rooms(), "lobby").await;
    fx.is(k.room_sizes(), "lobby=2").await;
    fx.is(k.room(LOBBY), "alice bob").await;
}

#[tokio::test]
async fn private_messages_reach_the_session_or_are_queued() {
    let (mut fx, k) = with_accounts(&["alice", "bob", "carol"]).await;
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e2", 2).await;
    let (e1, e2) = (k.edge_channel("e1"), k.edge_channel("e2"));
    let mut sub = fx.sub(&[&e1, &e2]).await;

    // Online: to the recipient's connection, for its session, then OK.
    fx.ok(&alice, msg("bob", "hi  bob")).await;
    let dm = sub.said(&e2).await;
    let id = word(&dm, 3);
    assert_eq!(dm, format!("2/0 @2: DM {id} alice hi  bob"));
    sub.is(&e1, &format!("1/5: OK MSG bob {id}")).await;
    let conversation = format!("{id} from=alice text=hi  bob to=bob");
    fx.is(k.dm("bob", "alice"), &conversation).await;
    fx.ok(&bob, msg("alice", "hello")).await;
    sub.said(&e1).await;
    let id2 = word(&sub.said(&e2).await, 4);

    fx.ok(&alice, msg("nobody", "?")).await;
    sub.is(&e1, &format!("1/5: {ERR_NO_USER}")).await;
    fx.is(k.dm("alice", "nobody"), "").await;

    // Offline: queued in the recipient's inbox.
    fx.ok(&alice, msg("carol", "later")).await;
    let ok = sub.said(&e1).await;
    let qid = word(&ok, 4);
    assert_eq!(ok, format!("1/5: OK MSG carol {qid} queued"));
    let inbox = fx.show(&k.inbox("carol")).await;
    assert!(
        inbox.ends_with(&format!(" from=alice id={qid} text=later")),
        "{inbox}"
    );

    // The conversation's history, oldest first, labelled `@<user>`.
    fx.ok(&alice, history(Some("bob"), 10)).await;
    let hist = format!("HIST @bob {id} alice hi  bob | HIST @bob {id2} bob hello");
    sub.is(&e1, &format!("1/5: {hist} | OK HISTORY 2")).await;
    fx.ok(&alice, history(Some("nobody"), 10)).await;
    sub.is(&e1, &format!("1/5: {ERR_NO_USER}")).await;
    sub.quiet().await;
}

#[tokio::test]
async fn subscriptions_and_publications() {
    let (mut fx, k) = with_accounts(&["alice", "bob", "carol"]).await;
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e2", 2).await;
    let carol = login(&mut fx, "carol", "e2", 3).await;
    let (e1, e2) = (k.edge_channel("e1"), k.edge_channel("e2"));
    let (l1, l2) = (k.lines_channel("e1"), k.lines_channel("e2"));
    let mut sub = fx.sub(&[&e1, &e2, &l1, &l2]).await;

    fx.ok(&alice, subscribe("nobody")).await;
    sub.is(&e1, &format!("1/5: {ERR_NO_USER}")).await;
    fx.is(k.subscriptions("alice"), "").await;
    fx.ok(&alice, subscribe("bob")).await;
    sub.is(&e1, "1/5: OK SUBSCRIBE bob => subscribe 1 bob")
        .await;
    fx.ok(&carol, subscribe("bob")).await;
    sub.is(&e2, "3/5: OK SUBSCRIBE bob => subscribe 3 bob")
        .await;
    fx.ok(&alice, subscribe("carol")).await;
    sub.said(&e1).await;
    fx.is(k.subscriptions("alice"), "bob carol").await;
    fx.is(k.subscribers("bob"), "alice carol").await;
    fx.ok(&alice, Op::Subscriptions).await;
    sub.is(&e1, "1/5: SUB bob | SUB carol | OK SUBSCRIPTIONS 2")
        .await;

    // Carol goes offline: one online subscriber left.
    fx.ok(&carol, Op::Logout).await;
    sub.said(&e2).await;
    // A publication goes to every edge: each passes it on to its
    // connections that subscribe.
    fx.ok(&bob, publish("news  today")).await;
    let lines = sub.fanned(2).await;
    let id = word(&lines[0], 2);
    let line = format!("PUB {id} bob news  today");
    assert_eq!(lines, [format!("{l1} {line}"), format!("{l2} {line}")]);
    sub.is(&e2, &format!("2/5: OK PUBLISH {id} 1")).await;
    let publication = format!("{id} text=news  today");
    fx.is(k.publications("bob"), &publication).await;

    fx.ok(&alice, unsubscribe("bob")).await;
    sub.is(&e1, "1/5: OK UNSUBSCRIBE bob => unsubscribe 1 bob")
        .await;
    fx.is(k.subscriptions("alice"), "carol").await;
    fx.is(k.subscribers("bob"), "carol").await;
    fx.ok(&alice, unsubscribe("bob")).await; // again: answered alike
    sub.is(&e1, "1/5: OK UNSUBSCRIBE bob => unsubscribe 1 bob")
        .await;
    fx.ok(&alice, unsubscribe("nobody")).await;
    sub.is(&e1, &format!("1/5: {ERR_NO_USER}")).await;
    sub.quiet().await;
}

#[tokio::test]
async fn logout_ends_the_session() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e2", 2).await;
    fx.ok(&alice, join("dev")).await;
    let (e1, l1, l2) = (
        k.edge_channel("e1"),
        k.lines_channel("e1"),
        k.lines_channel("e2"),
    );
    let mut sub = fx.sub(&[&e1, &l1, &l2]).await;

    // An old sid: that connection is told to close, the session stays.
    let mut old = alice.clone();
    old.sid = "0".into();
    fx.ok(&old, Op::Logout).await;
    sub.is(&e1, "1/5 => close quit 0").await;
    assert_eq!(fx.place("alice").await.1, "dev");

    fx.ok(&alice, Op::Logout).await;
    sub.is(&e1, "1/5 => close quit 1").await; // dev is empty: no notice
    fx.is(k.session("alice"), "").await;
    fx.is(k.edge_sessions("e1"), "").await;
    fx.is(k.online(), "bob").await;
    fx.is(k.room("dev"), "").await;
    fx.is(k.rooms(), "lobby").await;
    fx.is(k.room_sizes(), "lobby=1").await;
    fx.is(k.room_edges("dev"), "").await;

    // rid 0 (the connection is gone): no reply, the session ends.
    let mut gone = bob.req(Op::Logout);
    gone.rid = 0;
    assert_eq!(fx.route(gone).await, "ok");
    sub.quiet().await;
    fx.is(k.session("bob"), "").await;
    fx.is(k.online(), "").await;
}

#[tokio::test]
async fn router_requests_are_guarded() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let e1 = k.edge_channel("e1");
    let mut sub = fx.sub(&[&e1]).await;
    let (r, at) = (&alice.req(Op::Rooms), ("e1", LOBBY));
    let (i1, i2, i3) = (fx.eid(), fx.eid(), fx.eid());

    assert_eq!(fx.apply("router-2", &i1, "", r, at).await, "fenced");
    fx.is(k.applied("alice"), "").await;
    assert_eq!(fx.apply(ROUTER, &i2, "", r, at).await, "ok");
    sub.said(&e1).await;
    fx.is(k.applied("alice"), &i2).await;
    assert_eq!(fx.apply(ROUTER, &i2, "", r, at).await, "duplicate");
    assert_eq!(fx.apply(ROUTER, &i1, "", r, at).await, "duplicate");
    assert_eq!(fx.apply(ROUTER, &i3, &i1, r, at).await, "retry");
    let elsewhere = ("e2", LOBBY);
    assert_eq!(fx.apply(ROUTER, &i3, &i2, r, elsewhere).await, "moved");
    let elsewhere = ("e1", "dev");
    assert_eq!(fx.apply(ROUTER, &i3, &i2, r, elsewhere).await, "moved");
    fx.is(k.applied("alice"), &i2).await; // none of these was applied
    sub.quiet().await;

    // A session that is not current: the entry is used up, nothing done.
    let mut old = alice.clone();
    old.sid = "9".into();
    let r = &old.req(say("x"));
    assert_eq!(fx.apply(ROUTER, &i3, &i2, r, at).await, "stale");
    fx.is(k.applied("alice"), &i3).await;
    fx.is(k.history(LOBBY), "").await;
    sub.quiet().await;
}

#[tokio::test]
async fn each_users_requests_apply_in_their_own_order() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e1", 2).await;
    let (i1, i2) = (fx.eid(), fx.eid());
    let (r, at) = (&alice.req(say("first")), ("e1", LOBBY));
    // alice's request finds her session moved; bob's, later in the same
    // partition, is applied all the same; then alice's is, not taken for
    // a duplicate of bob's.
    assert_eq!(fx.apply(ROUTER, &i1, "", r, ("e2", LOBBY)).await, "moved");
    assert_eq!(
        fx.apply(ROUTER, &i2, "", &bob.req(say("second")), at).await,
        "ok"
    );
    assert_eq!(fx.apply(ROUTER, &i1, "", r, at).await, "ok");
    fx.is(k.applied("alice"), &i1).await;
    fx.is(k.applied("bob"), &i2).await;
    assert_eq!(fx.apply(ROUTER, &i1, "", r, at).await, "duplicate");
}

/// Room lines applied as router-svc applies a batch's run of them: one
/// call, each line with its own status and order (`at`: where each
/// session is).
async fn say_run(
    fx: &mut Fx,
    lines: &[(&str, &str, &str, &Request)],
) -> redis::RedisResult<String> {
    let at = router_svc::Place {
        sid: String::new(),
        edge: "e1".into(),
        room: LOBBY.into(),
    };
    let mut run: Option<router_svc::RouterCall> = None;
    for (n, &(owner, eid, prev, req)) in lines.iter().enumerate() {
        let call = router_svc::request_call(&fx.k, owner, &fx.cfg, P, eid, req, prev, &at);
        let call = call.expect("a router request");
        match &mut run {
            Some(run) => {
                assert!(run.joins(&call, n), "room lines make one call");
                run.extend(call);
            }
            None => run = Some(call),
        }
    }
    run.expect("a line").call().invoke(&mut fx.c).await
}

#[tokio::test]
async fn a_run_of_room_lines_is_one_call_with_a_status_for_each() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e1", 2).await;
    let lobby = k.lines_channel("e1");
    let mut sub = fx.sub(&[&lobby]).await;
    let (a1, b1, a2) = (
        alice.req(say("a1")),
        bob.req(say("b1")),
        alice.req(say("a2")),
    );
    let (i1, i2, i3) = (fx.eid(), fx.eid(), fx.eid());
    let run = [
        (ROUTER, i1.as_str(), "", &a1),
        (ROUTER, i2.as_str(), "", &b1),
        (ROUTER, i3.as_str(), i1.as_str(), &a2),
    ];
    assert_eq!(say_run(&mut fx, &run).await.unwrap(), "ok ok ok");
    for (who, text) in [("alice", "a1"), ("bob", "b1"), ("alice", "a2")] {
        let line = sub.line(&lobby).await;
        assert_eq!(line, format!("MSG lobby {} {who} {text}", word(&line, 2)));
    }
    let kept: i64 = fx.c.pttl(k.history(LOBBY)).await.unwrap();
    assert!(kept > 0, "the history's expiry is set: {kept}");
    fx.is(k.applied("alice"), &i3).await;
    fx.is(k.applied("bob"), &i2).await;

    // The same run again (a router taking over): nothing twice.
    let again = say_run(&mut fx, &run).await.unwrap();
    assert_eq!(again, "duplicate duplicate duplicate");
    sub.quiet().await;

    // Each line is judged alone: out of its user's order, or sent by a
    // router whose lease is gone, with a line applied between them.
    let (a3, b2, a4) = (
        alice.req(say("a3")),
        bob.req(say("b2")),
        alice.req(say("a4")),
    );
    let (i4, i5, i6) = (fx.eid(), fx.eid(), fx.eid());
    let run = [
        (ROUTER, i4.as_str(), i1.as_str(), &a3),
        ("gone", i5.as_str(), "", &b2),
        (ROUTER, i6.as_str(), i3.as_str(), &a4),
    ];
    assert_eq!(say_run(&mut fx, &run).await.unwrap(), "retry fenced ok");
    let line = sub.line(&lobby).await;
    assert_eq!(line, format!("MSG lobby {} alice a4", word(&line, 2)));
    sub.quiet().await;

    // A line that fails (its session key holds the wrong type) ends the
    // call; the line before it stays applied, its history kept, and is
    // not applied again.
    fx.run(&["DEL", &k.history(LOBBY)]).await;
    fx.run(&["SET", &k.session("mallory"), "not a hash"]).await;
    let (a5, m1) = (
        alice.req(say("a5")),
        Request {
            user: "mallory".into(),
            ..bob.req(say("m1"))
        },
    );
    let (i7, i8) = (fx.eid(), fx.eid());
    let run = [
        (ROUTER, i7.as_str(), i6.as_str(), &a5),
        (ROUTER, i8.as_str(), "", &m1),
    ];
    assert!(say_run(&mut fx, &run).await.is_err(), "WRONGTYPE");
    let line = sub.line(&lobby).await;
    assert_eq!(line, format!("MSG lobby {} alice a5", word(&line, 2)));
    fx.is(k.applied("alice"), &i7).await;
    let kept: i64 = fx.c.pttl(k.history(LOBBY)).await.unwrap();
    assert!(kept > 0, "a5's history is kept: {kept}");
    let alone = say_run(&mut fx, &run[..1]).await.unwrap();
    assert_eq!(alone, "duplicate");
    sub.quiet().await;
}

/// chat_attempt as auth-svc/src/login.rs calls it.
async fn attempt(fx: &mut Fx, keys: &[String], window: u64, limits: &[u32]) -> i64 {
    let call = Call::new("chat_attempt", keys).arg(window).arg(limits);
    call.invoke(&mut fx.c).await.unwrap()
}

#[tokio::test]
async fn attempts_are_counted_in_a_window() {
    let mut fx = setup().await;
    let keys = [fx.k.fail_user("alice"), fx.k.fail_addr("::1")];
    assert_eq!(attempt(&mut fx, &keys, 60_000, &[2, 3]).await, 0);
    assert_eq!(attempt(&mut fx, &keys, 600_000, &[2, 3]).await, 0);
    // The user's third, then the address's fourth; 0 is no limit.
    assert_eq!(attempt(&mut fx, &keys, 600_000, &[2, 3]).await, 1);
    assert_eq!(attempt(&mut fx, &keys[1..], 600_000, &[3]).await, 1);
    assert_eq!(attempt(&mut fx, &keys, 600_000, &[0, 0]).await, 0);
    fx.is(keys[0].clone(), "4").await;
    fx.is(keys[1].clone(), "5").await;
    for key in &keys {
        let ttl: i64 = fx.c.pttl(key).await.unwrap();
        assert!(
            ttl > 0 && ttl <= 60_000,
            "the first attempt's window: {ttl}"
        );
    }
}

#[tokio::test]
async fn a_login_request_is_checked_by_one_instance() {
    let mut fx = setup().await;
    let key = fx.k.auth_checking("17-0");
    let check = |who: &str| Call::new("chat_check_login", &[&key]).arg(who).arg(5_000);
    assert_eq!(fx.int(check("auth-0")).await, 1);
    assert_eq!(fx.int(check("auth-1")).await, 0, "taken");
    assert_eq!(fx.int(check("auth-0")).await, 0, "once, even for the same");
    fx.is(key.clone(), "auth-0").await;
    // Renewed by its holder only (the lifetime is auth.claim_idle_ms).
    let other = fx.k.auth_checking("18-0");
    fx.run(&["SET", &other, "auth-1", "PX", "1000"]).await;
    let keep = |who: &str| {
        Call::new("chat_keep_checks", &[&key, &other])
            .arg(who)
            .arg(60_000)
    };
    assert_eq!(fx.int(keep("auth-0")).await, 1);
    for (key, max) in [(&key, 60_000), (&other, 1000)] {
        let ttl: i64 = fx.c.pttl(key).await.unwrap();
        assert!(ttl > max - 1000 && ttl <= max, "{key}: {ttl}");
    }
}

#[tokio::test]
async fn accounts_are_created_changed_and_deleted() {
    use auth_svc::accounts;
    let mut fx = setup().await;
    let k = fx.k.clone();
    for u in ["alice", "bob", "carol", "dave"] {
        accounts::add(&mut fx.c, &k, u, "password", 4)
            .await
            .unwrap();
    }
    let alice = fx.show(&k.user("alice")).await;
    assert!(
        alice.starts_with("created=") && alice.contains(" password=$2"),
        "{alice}"
    );
    assert!(accounts::add(&mut fx.c, &k, "alice", "other", 4)
        .await
        .is_err());
    let create = |user: &str| Call::new("chat_create_user", &[k.user(user)]).arg("h");
    assert_eq!(fx.int(create("alice")).await, 0);
    fx.is(k.user("alice"), &alice).await;
    assert_eq!(fx.int(create("erin")).await, 1);
    assert!(fx.show(&k.user("erin")).await.ends_with(" password=h"));

    let set_pw =
        |user: &str| Call::new("chat_set_password", &[k.user(user), k.resume(user)]).arg("new");
    assert_eq!(fx.int(set_pw("nobody")).await, 0);
    fx.is(k.user("nobody"), "").await; // not created as a bare password
    assert_eq!(fx.int(set_pw("erin")).await, 1);
    assert!(fx.show(&k.user("erin")).await.ends_with(" password=new"));
    let bob = fx.show(&k.user("bob")).await;
    accounts::set_password(&mut fx.c, &k, "bob", "changed", 4)
        .await
        .unwrap();
    assert_ne!(fx.show(&k.user("bob")).await, bob);

    // alice subscribes to bob and carol; dave (online) to alice.
    let a = login(&mut fx, "alice", "e1", 1).await;
    let dave = login(&mut fx, "dave", "e2", 2).await;
    for (s, target) in [(&a, "bob"), (&a, "carol"), (&dave, "alice")] {
        fx.ok(s, subscribe(target)).await;
    }
    fx.run(&["XADD", &k.inbox("alice"), "*", "id", "1-0"]).await;
    fx.run(&["HSET", &k.inbox_counts("alice"), "bob", "1"])
        .await;
    fx.run(&["XADD", &k.publications("alice"), "*", "text", "t"])
        .await;
    // Sets read before alice subscribed to bob: `moved`, nothing changes.
    let names = [
        k.user("alice"),
        k.subscriptions("alice"),
        k.subscribers("alice"),
        k.inbox("alice"),
        k.inbox_counts("alice"),
        k.publications("alice"),
        k.resume("alice"),
        k.subscribers("carol"),
        k.subscriptions("dave"),
        k.session("dave"),
    ];
    let stale = Call::new("chat_delete_user", &names)
        .arg(1)
        .arg(1)
        .arg("alice");
    let stale = stale.arg(k.edge_channel("")).arg("carol").arg("dave");
    assert_eq!(stale.invoke::<String>(&mut fx.c).await.unwrap(), "moved");
    fx.is(k.user("alice"), &alice).await;
    fx.is(k.subscribers("bob"), "alice").await;

    let e2 = k.edge_channel("e2");
    let mut sub = fx.sub(&[&e2]).await;
    accounts::delete(&mut fx.c, &k, "alice").await.unwrap();
    sub.is(&e2, "2/0 => unsubscribe 2 alice").await;
    for key in names.iter().take(9).chain([&k.subscribers("bob")]) {
        fx.is(key.clone(), "").await;
    }
    let again = Call::new("chat_delete_user", &names[..7]).arg(0).arg(0);
    let again = again.arg("alice").arg(k.edge_channel(""));
    assert_eq!(fx.int(again).await, 0, "no such account");
    assert!(accounts::delete(&mut fx.c, &k, "alice").await.is_err());
    sub.quiet().await;
}

/// chat_end_edge_session as the reaper calls it, `room` as read before.
async fn end_session(fx: &mut Fx, edge: &str, user: &str, room: &str, mode: &str) -> String {
    let call = shared::store::end_edge_session(&fx.k, edge, user, room, mode, fx.cfg.notices);
    call.invoke(&mut fx.c).await.unwrap()
}

async fn dead_edges(fx: &mut Fx) -> Vec<String> {
    let call = Call::new("chat_dead_edges", &[fx.k.edges()]);
    let mut dead: Vec<String> = call.invoke(&mut fx.c).await.unwrap();
    dead.sort();
    dead
}

async fn drop_edge(fx: &mut Fx, edge: &str) -> i64 {
    let keys = [fx.k.edges(), fx.k.edge_sessions(edge)];
    Call::new("chat_drop_edge", &keys)
        .arg(edge)
        .invoke(&mut fx.c)
        .await
        .unwrap()
}

#[tokio::test]
async fn edges_advertise_their_address_load_and_drain() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let advert = |addr: &str, conns, draining| Advert {
        addr: addr.into(),
        conns,
        draining,
    };
    let first = advert("h:3", 4, false);
    let beat = shared::store::heartbeat(&mut fx.c, &k, "e3", 30_000, &first, None, None);
    beat.await.unwrap();
    // Counted between beats; the beat writes the exact count again.
    shared::store::count_connection(&mut fx.c, &k, "e3", 1)
        .await
        .unwrap();
    let live = shared::store::live_edges(&mut fx.c, &k).await.unwrap();
    // e1 and e2 (setup's) advertise no address: not listed.
    assert_eq!(
        live,
        [shared::store::LiveEdge {
            id: "e3".into(),
            addr: "h:3".into(),
            conns: 5,
            draining: false
        }]
    );
    let ttl: i64 = fx.c.pttl(k.edge_info("e3")).await.unwrap();
    assert!((30_000..=60_000).contains(&ttl), "{ttl}");
    let draining = advert("h:3", 2, true);
    let beat = shared::store::heartbeat(&mut fx.c, &k, "e3", 30_000, &draining, None, None);
    beat.await.unwrap();
    let live = shared::store::live_edges(&mut fx.c, &k).await.unwrap();
    assert_eq!((live[0].conns, live[0].draining), (2, true));
    // Counts race the beats: closes counted after a beat that left them
    // out already go below 0 in Redis, listed as 0, and the counts stay
    // exact sums, so an open counted late brings it back.
    for delta in [-1, -1, -1] {
        shared::store::count_connection(&mut fx.c, &k, "e3", delta)
            .await
            .unwrap();
    }
    let live = shared::store::live_edges(&mut fx.c, &k).await.unwrap();
    assert_eq!(live[0].conns, 0);
    shared::store::count_connection(&mut fx.c, &k, "e3", 1)
        .await
        .unwrap();
    let conns: i64 = fx.c.hget(k.edge_info("e3"), "conns").await.unwrap();
    assert_eq!(conns, 0);
    // A dead edge is not listed; a count without its hash writes nothing.
    kill(&mut fx, "e3").await;
    assert!(shared::store::live_edges(&mut fx.c, &k)
        .await
        .unwrap()
        .is_empty());
    shared::store::count_connection(&mut fx.c, &k, "e9", 1)
        .await
        .unwrap();
    let made: bool = fx.c.exists(k.edge_info("e9")).await.unwrap();
    assert!(!made);
}

/// Makes an edge's last beat one that ran out long ago.
async fn kill(fx: &mut Fx, edge: &str) {
    let edges = fx.k.edges();
    fx.run(&["ZADD", &edges, "1", edge]).await;
}

#[tokio::test]
async fn edges_beat_die_and_have_their_sessions_ended() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    let advert = Advert::default();
    let beat = shared::store::heartbeat(&mut fx.c, &k, "e3", 30_000, &advert, None, None);
    beat.await.unwrap();
    let until: u64 = fx.c.zscore(k.edges(), "e3").await.unwrap();
    assert!(until.abs_diff(shared::now_ms() + 30_000) < 5_000, "{until}");
    kill(&mut fx, "e9").await;
    assert_eq!(dead_edges(&mut fx).await, ["e9"]);

    let alice = login(&mut fx, "alice", "e1", 1).await;
    login(&mut fx, "bob", "e1", 2).await;
    login(&mut fx, "carol", "e2", 3).await;
    fx.ok(&alice, join("dev")).await;
    let (e1, l1) = (k.edge_channel("e1"), k.lines_channel("e1"));
    let mut sub = fx.sub(&[&e1, &l1]).await;
    assert_eq!(
        end_session(&mut fx, "e1", "alice", "dev", "reap").await,
        "alive"
    );

    kill(&mut fx, "e1").await;
    assert_eq!(dead_edges(&mut fx).await, ["e1", "e9"]);
    assert_eq!(
        end_session(&mut fx, "e1", "alice", LOBBY, "reap").await,
        "moved"
    );
    sub.quiet().await;
    fx.is(k.online(), "alice bob carol").await;
    assert_eq!(
        end_session(&mut fx, "e1", "alice", "dev", "reap").await,
        "ended"
    );
    sub.is(&e1, "1/0 => close server-shutdown 1").await;
    sub.quiet().await; // dev is empty: no notice
    fx.is(k.session("alice"), "").await;
    fx.is(k.room("dev"), "").await;
    fx.is(k.room_sizes(), "lobby=2").await;
    fx.is(k.room_edges("dev"), "").await;
    fx.is(k.room_edges(LOBBY), "e1=1 e2=1").await;
    fx.is(k.online(), "bob carol").await;
    fx.is(k.edge_sessions("e1"), "bob").await;
    assert_eq!(drop_edge(&mut fx, "e1").await, 0, "it holds bob's session");

    // A session now on another edge: only the edge's set forgets it.
    fx.run(&["SADD", &k.edge_sessions("e1"), "carol"]).await;
    assert_eq!(
        end_session(&mut fx, "e1", "carol", LOBBY, "reap").await,
        "gone"
    );
    fx.is(k.edge_sessions("e1"), "bob").await;
    fx.is(k.edge_sessions("e2"), "carol").await;
    // `restart` ends sessions while the edge beats.
    let status = end_session(&mut fx, "e2", "carol", LOBBY, "restart").await;
    assert_eq!(status, "ended");
    fx.is(k.session("carol"), "").await;

    assert_eq!(
        end_session(&mut fx, "e1", "bob", LOBBY, "reap").await,
        "ended"
    );
    assert_eq!(drop_edge(&mut fx, "e2").await, 0, "alive");
    assert_eq!(drop_edge(&mut fx, "e1").await, 1);
    assert_eq!(dead_edges(&mut fx).await, ["e9"]);
    let e1_beat: Option<f64> = fx.c.zscore(k.edges(), "e1").await.unwrap();
    assert_eq!(e1_beat, None);
    fx.is(k.online(), "").await;
    fx.is(k.room_sizes(), "").await;
    fx.is(k.room_edges(LOBBY), "").await;
}

#[tokio::test]
async fn heartbeat_restart_and_reaping_end_a_dead_edges_sessions() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    shared::store::heartbeat(&mut fx.c, &k, "e3", 60_000, &Advert::default(), None, None)
        .await
        .unwrap();
    for (user, edge) in [
        ("alice", "e1"),
        ("bob", "e1"),
        ("carol", "e2"),
        ("dave", "e3"),
    ] {
        login(&mut fx, user, edge, 1).await;
    }
    let advert = Advert::default();
    let restart = shared::store::heartbeat(
        &mut fx.c,
        &k,
        "e1",
        60_000,
        &advert,
        Some(fx.cfg.notices),
        None,
    );
    assert_eq!(restart.await.unwrap(), 2);
    fx.is(k.online(), "carol dave").await;
    fx.is(k.edge_sessions("e1"), "").await;

    kill(&mut fx, "e2").await;
    assert_eq!(
        shared::store::reap_dead_edges(&mut fx.c, &k, fx.cfg.notices)
            .await
            .unwrap(),
        1
    );
    fx.is(k.online(), "dave").await;
    fx.is(k.room(LOBBY), "dave").await;
    fx.is(k.room_sizes(), "lobby=1").await;
    let edges: Vec<String> = fx.c.zrange(k.edges(), 0, -1).await.unwrap();
    assert_eq!(edges.len(), 2, "e2 is forgotten: {edges:?}");
    assert!(!edges.contains(&"e2".to_string()), "{edges:?}");
    assert!(dead_edges(&mut fx).await.is_empty());
}

#[tokio::test]
async fn the_reaper_ends_no_sessions_when_most_edges_look_dead() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    shared::store::heartbeat(&mut fx.c, &k, "e3", 60_000, &Advert::default(), None, None)
        .await
        .unwrap();
    for (user, edge) in [("alice", "e1"), ("bob", "e2"), ("carol", "e3")] {
        login(&mut fx, user, edge, 1).await;
    }
    // Two of three silent at once (Redis was full, the network split):
    // more likely not their fault; nobody is logged out.
    kill(&mut fx, "e1").await;
    kill(&mut fx, "e2").await;
    let reaped = shared::store::reap_dead_edges(&mut fx.c, &k, fx.cfg.notices).await;
    assert_eq!(reaped.unwrap(), 0);
    fx.is(k.online(), "alice bob carol").await;
    assert_eq!(dead_edges(&mut fx).await, ["e1", "e2"]);
    // One of three: its sessions end.
    shared::store::heartbeat(&mut fx.c, &k, "e2", 60_000, &Advert::default(), None, None)
        .await
        .unwrap();
    let reaped = shared::store::reap_dead_edges(&mut fx.c, &k, fx.cfg.notices).await;
    assert_eq!(reaped.unwrap(), 1);
    fx.is(k.online(), "bob carol").await;
}

#[tokio::test]
async fn leases_are_kept_by_their_owner_and_the_library_reloads() {
    let mut fx = setup().await;
    let lease = fx.k.router_lease(3);
    let renew = |who: &str| Call::new("chat_lease_renew", &[&lease]).arg(who);
    let renew = |who: &str| renew(who).arg(60_000);
    let release = |who: &str| Call::new("chat_lease_release", &[&lease]).arg(who);
    fx.run(&["SET", &lease, ROUTER, "PX", "1000"]).await;
    assert_eq!(fx.int(renew("router-2")).await, 0);
    assert_eq!(fx.int(renew(ROUTER)).await, 1);
    let ttl: i64 = fx.c.pttl(&lease).await.unwrap();
    assert!(ttl > 1_000, "renewed: {ttl}");
    assert_eq!(fx.int(release("router-2")).await, 0);
    fx.is(lease.clone(), ROUTER).await;
    assert_eq!(fx.int(release(ROUTER)).await, 1);
    fx.is(lease.clone(), "").await;
    assert_eq!(fx.int(renew(ROUTER)).await, 0);
    // Taken when free, kept from another, taken again by its holder (one
    // that forgot it held it), its time renewed.
    let take = |who: &str| Call::new("chat_lease_take", &[&lease]).arg(who);
    assert_eq!(fx.int(take(ROUTER).arg(1_000)).await, 1);
    assert_eq!(fx.int(take("router-2").arg(60_000)).await, 0);
    fx.is(lease.clone(), ROUTER).await;
    assert_eq!(fx.int(take(ROUTER).arg(60_000)).await, 1);
    let ttl: i64 = fx.c.pttl(&lease).await.unwrap();
    assert!(ttl > 1_000, "renewed: {ttl}");

    // After FUNCTION FLUSH (Redis lost its data): loaded again, one retry.
    let renew = Call::new("chat_lease_renew", &[fx.k.router_lease(P)]);
    let renew = renew.arg(ROUTER).arg(60_000);
    fx.run(&["FUNCTION", "FLUSH"]).await;
    let e = renew.cmd().query_async::<i64>(&mut fx.c).await.unwrap_err();
    assert!(shared::scripts::is_missing(&e), "{e}");
    let kept: i64 = renew.invoke(&mut fx.c).await.unwrap();
    assert_eq!(kept, 1);

    fx.run(&["FUNCTION", "FLUSH"]).await;
    let mut pipe = redis::pipe();
    pipe.add_command(renew.cmd().clone());
    pipe.add_command(Call::new("chat_dead_edges", &[fx.k.edges()]).into_cmd());
    let done = shared::scripts::query_pipe(&mut fx.c, &pipe).await;
    let (kept, dead): (i64, Vec<String>) = done.unwrap();
    assert_eq!((kept, dead.len()), (1, 0));
}

#[tokio::test]
async fn a_call_refused_for_memory_is_transient_alone_and_in_a_pipeline() {
    let redis = TestRedis::start().await;
    let mut c = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let say = Call::new("chat_create_user", &["t:user:x"]).arg("hash");
    let alone = say.invoke::<i64>(&mut c).await.unwrap_err();
    assert!(shared::store::transient(&alone), "{alone}");
    let mut pipe = redis::pipe();
    pipe.cmd("PING").add_command(say.cmd().clone()).cmd("PING");
    let piped = pipe
        .query_async::<Vec<redis::Value>>(&mut c)
        .await
        .unwrap_err();
    assert!(shared::store::transient(&piped), "{piped}");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut c)
        .await
        .unwrap();
    let bad = redis::cmd("FCALL")
        .arg("chat_create_user")
        .arg("x")
        .query_async::<()>(&mut c)
        .await
        .unwrap_err();
    assert!(!shared::store::transient(&bad), "{bad}");
}

#[tokio::test]
async fn notices_skip_the_lobby_and_rooms_over_the_limit_unless_configured() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    fx.cfg.notices.max_members = 2;
    // Everyone on e1: every notice that is published reaches it.
    let l1 = k.lines_channel("e1");
    let mut sub = fx.sub(&[&l1]).await;

    // The lobby gets none: logins, moves out and back, logouts, reaping.
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let bob = login(&mut fx, "bob", "e1", 2).await;
    let carol = login(&mut fx, "carol", "e1", 3).await;
    login(&mut fx, "erin", "e1", 5).await;
    fx.ok(&alice, join("dev")).await;
    sub.line_is(&l1, "SYS dev alice joined").await;
    fx.ok(&bob, join("dev")).await;
    sub.line_is(&l1, "SYS dev bob joined").await;
    // A third member: dev is over the limit, and quiet.
    fx.ok(&carol, join("dev")).await;
    sub.quiet().await;
    // At the limit again (after the change): heard.
    fx.ok(&carol, Op::Leave).await;
    sub.line_is(&l1, "SYS dev carol left").await;
    fx.ok(&carol, Op::Logout).await;
    let ended = end_session(&mut fx, "e1", "erin", LOBBY, "restart").await;
    assert_eq!(ended, "ended");
    sub.quiet().await;
    fx.is(k.room(LOBBY), "").await;

    // notices.lobby (and no member limit): the lobby hears them again,
    // olive's edge among them.
    fx.cfg.notices = shared::config::Notices {
        lobby: true,
        max_members: 0,
    };
    login(&mut fx, "olive", "e1", 7).await;
    sub.line_is(&l1, "SYS lobby olive joined").await;
    let dave = login(&mut fx, "dave", "e1", 4).await;
    sub.line_is(&l1, "SYS lobby dave joined").await;
    fx.ok(&dave, join("dev")).await;
    sub.line_is(&l1, "SYS lobby dave left").await;
    sub.line_is(&l1, "SYS dev dave joined").await;
    fx.ok(&dave, Op::Leave).await;
    sub.line_is(&l1, "SYS dev dave left").await;
    sub.line_is(&l1, "SYS lobby dave joined").await;
    fx.ok(&dave, Op::Logout).await;
    sub.line_is(&l1, "SYS lobby dave left").await;
    login(&mut fx, "dave", "e1", 6).await;
    sub.line_is(&l1, "SYS lobby dave joined").await;
    let ended = end_session(&mut fx, "e1", "dave", LOBBY, "restart").await;
    assert_eq!(ended, "ended");
    sub.line_is(&l1, "SYS lobby dave left").await;
    sub.quiet().await;
}

#[tokio::test]
async fn history_shows_the_newest_lines_that_fit_its_byte_budget_and_says_so() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    fx.cfg.router.reply_max_bytes = 1024;
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let e1 = k.edge_channel("e1");
    let mut sub = fx.sub(&[&e1]).await;
    for i in 0..10 {
        fx.ok(&alice, say(&format!("{i:03} {}", "x".repeat(196))))
            .await;
    }
    let entries: redis::streams::StreamRangeReply =
        fx.c.xrange_all(k.history(LOBBY)).await.unwrap();
    let wire: Vec<String> = entries
        .ids
        .iter()
        .map(|e| {
            format!(
                "HIST lobby {} alice {}",
                e.id,
                e.get::<String>("text").unwrap()
            )
        })
        .collect();
    // The newest whose lines (with their LF) fit in 1024 bytes: four.
    let fit = wire.iter().rev().scan(0, |bytes, l| {
        *bytes += l.len() + 1;
        (*bytes <= 1024).then_some(l)
    });
    assert_eq!(fit.count(), 4);
    let newest = wire[6..].join(" | ");

    // Asked for 10, or for more than there are: the 4 newest, 6 left out.
    for n in [10, 20] {
        fx.ok(&alice, history(None, n)).await;
        let want = format!("1/5: {newest} | MORE HISTORY 6 | OK HISTORY 4");
        sub.is(&e1, &want).await;
    }
    // What fits is shown as before.
    fx.ok(&alice, history(None, 3)).await;
    let want = format!("1/5: {} | OK HISTORY 3", wire[7..].join(" | "));
    sub.is(&e1, &want).await;
    sub.quiet().await;
}

#[tokio::test]
async fn listings_show_at_most_listing_max_entries_and_say_how_many_more() {
    let mut fx = setup().await;
    let k = fx.k.clone();
    fx.cfg.router.listing_max = 2;
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let e1 = k.edge_channel("e1");
    let mut sub = fx.sub(&[&e1]).await;
    fx.run(&["SADD", &k.room("dev"), "a", "b", "c", "d"]).await;
    let sizes = k.room_sizes();
    fx.run(&["HSET", &sizes, "dev", "4", "r1", "1", "r2", "2"])
        .await;
    fx.run(&["SADD", &k.subscriptions("alice"), "x", "y", "z"])
        .await;

    // Two of dev's four, any two: the edge sorts them.
    fx.ok(&alice, who(Some("dev"))).await;
    let r = sub.said(&e1).await;
    let lines = |r: &str| -> Vec<String> {
        let r = r.strip_prefix("1/5: ").unwrap();
        r.split(" | ").map(String::from).collect()
    };
    let users: Vec<String> = lines(&r)
        .into_iter()
        .filter(|l| l.starts_with("USER "))
        .collect();
    assert_eq!(users.len(), 2, "{r}");
    assert!(r.ends_with(" | MORE WHO 2 | OK WHO dev 2"), "{r}");
    fx.ok(&alice, Op::Subscriptions).await;
    let r = sub.said(&e1).await;
    assert!(
        r.ends_with(" | MORE SUBSCRIPTIONS 1 | OK SUBSCRIPTIONS 2"),
        "{r}"
    );
    // Two rooms of four, and the lobby always, with its count.
    fx.ok(&alice, Op::Rooms).await;
    let r = sub.said(&e1).await;
    let rooms: Vec<String> = lines(&r)
        .into_iter()
        .filter(|l| l.starts_with("ROOM "))
        .collect();
    assert!(rooms.contains(&"ROOM lobby 1".to_string()), "{r}");
    // The lobby drawn with the other, or added: all rooms are 4.
    let n = rooms.len();
    assert!(n == 2 || n == 3, "{r}");
    let end = format!(" | MORE ROOMS {} | OK ROOMS {n}", 4 - n);
    assert!(r.ends_with(&end), "{r}");
    // Within the limit: everything, and no MORE.
    fx.ok(&alice, who(None)).await;
    sub.is(&e1, "1/5: USER alice | OK WHO lobby 1").await;
    sub.quiet().await;
}

#[tokio::test]
async fn histories_expire_a_while_after_their_last_write() {
    let (mut fx, k) = with_accounts(&["alice", "bob", "carol"]).await;
    fx.cfg.router.history_ttl_ms = 600_000;
    let alice = login(&mut fx, "alice", "e1", 1).await;
    login(&mut fx, "bob", "e2", 2).await;
    fx.ok(&alice, say("hi")).await;
    fx.ok(&alice, publish("news")).await;
    fx.ok(&alice, msg("bob", "psst")).await;
    fx.ok(&alice, msg("carol", "later")).await;
    for key in [
        k.history(LOBBY),
        k.publications("alice"),
        k.dm("alice", "bob"),
        k.dm("alice", "carol"),
        k.inbox("carol"),
        k.inbox_counts("carol"),
    ] {
        let ttl: i64 = fx.c.pttl(&key).await.unwrap();
        assert!(ttl > 0 && ttl <= 600_000, "{key}: {ttl}");
    }
    // 0: kept for good (a write removes the expiry it had).
    fx.cfg.router.history_ttl_ms = 0;
    fx.run(&["PERSIST", &k.history(LOBBY)]).await;
    fx.ok(&alice, say("again")).await;
    let ttl: i64 = fx.c.pttl(k.history(LOBBY)).await.unwrap();
    assert_eq!(ttl, -1);
}

#[tokio::test]
async fn one_sender_queues_a_limited_number_of_messages_for_an_offline_user() {
    let (mut fx, k) = with_accounts(&["alice", "bob", "carol"]).await;
    fx.cfg.router.inbox_per_sender = 2;
    fx.cfg.router.history_cap = 3;
    let bob = login(&mut fx, "bob", "e2", 2).await;
    let carol = login(&mut fx, "carol", "e2", 3).await;
    let e2 = k.edge_channel("e2");
    let mut sub = fx.sub(&[&e2]).await;
    for text in ["b1", "b2"] {
        fx.ok(&bob, msg("alice", text)).await;
        assert!(sub.said(&e2).await.ends_with(" queued"));
    }
    fx.is(k.inbox_counts("alice"), "bob=2").await;
    // A third from bob: refused, and stored nowhere.
    fx.ok(&bob, msg("alice", "b3")).await;
    let refused = "2/5: ERR rate-limited you have 2 messages waiting for alice already";
    sub.is(&e2, refused).await;
    let conversation = fx.show(&k.dm("alice", "bob")).await;
    assert!(!conversation.contains("b3"), "{conversation}");
    assert_eq!(conversation.matches(" | ").count(), 1, "{conversation}");
    // Another sender may; the inbox's own cap (3) drops bob's oldest, and
    // its count with it.
    for text in ["c1", "c2"] {
        fx.ok(&carol, msg("alice", text)).await;
        assert!(sub.said(&e2).await.ends_with(" queued"));
    }
    fx.is(k.inbox_counts("alice"), "bob=1 carol=2").await;
    // bob's b2 makes room for b4.
    fx.ok(&bob, msg("alice", "b4")).await;
    assert!(sub.said(&e2).await.ends_with(" queued"));
    fx.is(k.inbox_counts("alice"), "bob=1 carol=2").await;

    // Delivered: the counts go down with the inbox, and go with it.
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let inbox: redis::streams::StreamRangeReply = fx.c.xrange_all(k.inbox("alice")).await.unwrap();
    let ids: Vec<&str> = inbox.ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    fx.ok(&alice, delivered(ids[0])).await; // c1
    fx.is(k.inbox_counts("alice"), "bob=1 carol=1").await;
    fx.ok(&alice, delivered(ids[2])).await;
    fx.is(k.inbox("alice"), "").await;
    fx.is(k.inbox_counts("alice"), "").await;
    sub.quiet().await;
}

#[tokio::test]
async fn subscriptions_are_capped_and_resubscribing_stays_idempotent() {
    let (mut fx, k) = with_accounts(&["alice", "bob", "carol", "dave"]).await;
    fx.cfg.router.max_subscriptions = 2;
    let alice = login(&mut fx, "alice", "e1", 1).await;
    let e1 = k.edge_channel("e1");
    let mut sub = fx.sub(&[&e1]).await;
    for target in ["bob", "carol"] {
        fx.ok(&alice, subscribe(target)).await;
        sub.said(&e1).await;
    }
    fx.ok(&alice, subscribe("dave")).await;
    let refused = "1/5: ERR rate-limited you subscribe to 2 users, the most allowed";
    sub.is(&e1, refused).await;
    fx.is(k.subscriptions("alice"), "bob carol").await;
    fx.is(k.subscribers("dave"), "").await;
    fx.ok(&alice, subscribe("bob")).await;
    sub.is(&e1, "1/5: OK SUBSCRIBE bob => subscribe 1 bob")
        .await;
    fx.ok(&alice, unsubscribe("carol")).await;
    sub.said(&e1).await;
    fx.ok(&alice, subscribe("dave")).await;
    sub.is(&e1, "1/5: OK SUBSCRIBE dave => subscribe 1 dave")
        .await;
    sub.quiet().await;
}
