//! LOGIN, what is allowed before it, and the session in Redis.

use e2e::{eventually, Client, Role, Shape, System};
use redis::AsyncCommands;
use std::collections::HashMap;

#[tokio::test]
async fn right_password_logs_in_wrong_and_unknown_look_the_same() {
    let sys = System::start().await;
    sys.add_user("alice").await;

    let mut c = Client::connect(sys.edge(0), &sys.trust()).await.unwrap();
    c.expect("HELLO edge-1 chat/1").await;
    c.send("LOGIN alice wrong-pw").await;
    let wrong = c.expect_prefix("ERR bad-credentials").await;
    c.send("LOGIN nobody nobody-pw").await;
    let unknown = c.expect_prefix("ERR bad-credentials").await;
    assert_eq!(wrong, unknown, "an unknown user must not be told apart");
    c.send("login alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
    c.send("LOGIN alice alice-pw").await;
    c.expect_prefix("ERR already-authenticated").await;
    // Only the upper-case word is the command once logged in: chat text
    // may start with it in any other case.
    for text in ["login works now", "resume the build"] {
        c.send(text).await;
        let line = c.line().await;
        assert!(
            line.starts_with("MSG lobby ") && line.ends_with(&format!(" alice {text}")),
            "{line}"
        );
    }
}

#[tokio::test]
async fn only_login_help_ping_quit_before_login() {
    let sys = System::start().await;
    let mut c = sys.connect(0).await;
    for line in [
        "hello everyone",
        "/join dev",
        "/rooms",
        "/msg bob hi",
        "/nosuchcommand",
    ] {
        c.send(line).await;
        c.expect_prefix("ERR auth-required").await;
    }
    c.send("/ping").await;
    c.expect("OK PING").await;
    c.send("/help").await;
    let first = c.line().await;
    assert!(first.starts_with("INFO "), "{first}");
    c.until(|l| l == "OK HELP").await;
    c.send("LOGIN alice").await;
    c.expect_prefix("ERR bad-args").await;
    c.send("LOGIN al!ce pw").await;
    c.expect_prefix("ERR bad-name").await;
    c.send("/quit").await;
    c.expect("BYE quit").await;
    c.closed().await;
}

#[tokio::test]
async fn session_hash_and_lobby_set_follow_the_session() {
    let sys = System::start().await;
    sys.add_user("alice").await;
    let mut r = sys.redis.conn().await;

    // Ended by /quit.
    let mut c = sys.login(0, "alice").await;
    let session: HashMap<String, String> = r.hgetall("chat:session:alice").await.unwrap();
    assert_eq!(session["edge"], "edge-1");
    assert_eq!(session["room"], "lobby");
    for field in ["conn", "sid", "addr", "since"] {
        assert!(!session[field].is_empty(), "{field} missing");
    }
    assert!(r
        .sismember::<_, _, bool>("chat:room:lobby", "alice")
        .await
        .unwrap());
    assert!(r
        .sismember::<_, _, bool>("chat:rooms", "lobby")
        .await
        .unwrap());
    let first_sid = session["sid"].clone();
    c.send("/quit").await;
    c.expect("BYE quit").await;
    c.closed().await;
    assert!(!r.exists::<_, bool>("chat:session:alice").await.unwrap());
    assert!(!r
        .sismember::<_, _, bool>("chat:room:lobby", "alice")
        .await
        .unwrap());
    assert!(!r
        .sismember::<_, _, bool>("chat:rooms", "lobby")
        .await
        .unwrap());

    // Ended by dropping the connection; on the other edge this time.
    let c = sys.login(1, "alice").await;
    let session: HashMap<String, String> = r.hgetall("chat:session:alice").await.unwrap();
    assert_eq!(session["edge"], "edge-2");
    assert_ne!(session["sid"], first_sid, "session ids are unique");
    drop(c);
    eventually("the dropped session is gone", || {
        let mut r = r.clone();
        async move {
            !r.exists::<_, bool>("chat:session:alice").await.unwrap()
                && !r
                    .sismember::<_, _, bool>("chat:room:lobby", "alice")
                    .await
                    .unwrap()
        }
    })
    .await;
}

#[tokio::test]
async fn second_login_forces_the_first_out_by_default() {
    let sys = System::start().await;
    sys.add_users(&["alice", "bob"]).await;
    let mut bob = sys.login(1, "bob").await;
    let mut old = sys.login(0, "alice").await;
    assert_eq!(old.ask("/join dev").await, "OK JOIN dev");
    let mut new = sys.login(1, "alice").await;
    old.expect("BYE logged-in-elsewhere").await;
    old.closed().await;

    let mut r = sys.redis.conn().await;
    let edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(edge, "edge-2");
    let room: String = r.hget("chat:session:alice", "room").await.unwrap();
    assert_eq!(room, "lobby", "the new session starts in the lobby");
    assert!(
        !r.exists::<_, bool>("chat:room:dev").await.unwrap(),
        "the old session's membership went with it"
    );
    // The old connection's cleanup must not remove the new session.
    new.send("still here").await;
    new.until(|l| l.ends_with(" alice still here")).await;
    bob.until(|l| l.ends_with(" alice still here")).await;
    assert!(r.exists::<_, bool>("chat:session:alice").await.unwrap());
    assert!(r
        .sismember::<_, _, bool>("chat:room:lobby", "alice")
        .await
        .unwrap());
    assert_no_password_in_redis(&mut r, &e2e::password("alice")).await;
}

/// The keys whose value (a string, a hash's fields and values, or a
/// stream's entries) contains `needle`.
async fn keys_holding(r: &mut shared::store::Conn, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let keys: Vec<String> = r.keys("*").await.unwrap();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(r).await.unwrap();
        let text = match kind.as_str() {
            "string" => r.get::<_, String>(&key).await.unwrap(),
            "hash" => r.hgetall::<_, Vec<String>>(&key).await.unwrap().join(" "),
            "stream" => {
                let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(r)
                    .await
                    .unwrap();
                format!("{entries:?}")
            }
            _ => continue,
        };
        if text.contains(needle) {
            found.push(key);
        }
    }
    found
}

async fn assert_no_password_in_redis(r: &mut shared::store::Conn, password: &str) {
    eventually("the login requests are deleted", || {
        let mut r = r.clone();
        async move { r.xlen::<_, u64>("chat:req:auth").await.unwrap() == 0 }
    })
    .await;
    assert_eq!(keys_holding(r, password).await, Vec::<String>::new());
    // The search does see into values: the bcrypt hash is found.
    assert!(keys_holding(r, "$2")
        .await
        .contains(&"chat:user:alice".to_string()));
}

#[tokio::test]
async fn reject_policy_keeps_the_first_session() {
    let sys = System::start_with(Shape::default(), |c| {
        c.auth.duplicate_login = shared::config::DuplicateLogin::Reject;
    })
    .await;
    sys.add_user("alice").await;
    let mut first = sys.login(0, "alice").await;
    let mut second = sys.connect(1).await;
    second.send("LOGIN alice alice-pw").await;
    second.expect_prefix("ERR already-logged-in").await;
    first.send("/ping").await;
    first.expect("OK PING").await;
    let mut r = sys.redis.conn().await;
    let edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(edge, "edge-1");
}

#[tokio::test]
async fn no_answer_is_unavailable_and_the_request_is_not_acted_on_later() {
    let shape = Shape::new(1, 1, 0);
    let mut sys = System::start_with(shape, |c| c.edge.request_timeout_ms = 300).await;
    sys.add_user("alice").await;
    let mut c = sys.connect(0).await;
    c.send("LOGIN alice alice-pw").await;
    c.expect_prefix("ERR unavailable").await;
    c.send("/ping").await;
    c.expect("OK PING").await;

    // auth-svc comes up and finds the request the edge gave up on: it must
    // not open a session that nobody holds, nor answer it.
    let r = sys.redis.conn().await;
    sys.add(Role::Auth).await;
    eventually("the old request is consumed", || {
        let mut r = r.clone();
        async move { r.xlen::<_, u64>("chat:req:auth").await.unwrap() == 0 }
    })
    .await;
    let mut r2 = r.clone();
    assert!(
        !r2.exists::<_, bool>("chat:seq:sid").await.unwrap(),
        "no session was opened"
    );
    assert!(!r2.exists::<_, bool>("chat:session:alice").await.unwrap());
    c.send("/ping").await;
    c.expect("OK PING").await;
    c.send("LOGIN alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
}

/// 20 logins of one user at once, over two edges and two auth-svc
/// instances: exactly one session lives, and Redis agrees which.
async fn race(policy: &str) {
    let shape = Shape::new(2, 1, 2);
    let sys = System::start_with(shape, |c| {
        // Twenty attempts at once would trip the failed-login limit, which
        // counts attempts in progress too (limits.rs tests it).
        c.auth.max_failures_per_user = 0;
        c.auth.duplicate_login = match policy {
            "reject" => shared::config::DuplicateLogin::Reject,
            _ => shared::config::DuplicateLogin::ForceLogout,
        }
    })
    .await;
    sys.add_user("alice").await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(sys.connect(i % 2).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                c.send("LOGIN alice alice-pw").await;
                let first = c.line().await;
                (i, first, c)
            })
        })
        .collect();
    let mut logged_in = Vec::new();
    let mut rejected = 0;
    for t in tasks {
        let (i, first, c) = t.await.unwrap();
        if first == "OK LOGIN alice lobby" {
            logged_in.push((i, c));
        } else {
            assert!(first.starts_with("ERR already-logged-in "), "{first}");
            rejected += 1;
        }
    }
    match policy {
        "reject" => assert_eq!((logged_in.len(), rejected), (1, 19)),
        _ => assert_eq!(logged_in.len(), 20),
    }
    // A routed command is answered only for the live session; every other
    // connection was closed before its answer could come.
    let mut alive = Vec::new();
    for (i, mut c) in logged_in {
        c.send("/who").await;
        loop {
            match c.next().await.as_deref() {
                Some("OK WHO lobby 1") => {
                    alive.push((i, c));
                    break;
                }
                Some("BYE logged-in-elsewhere") | None => break,
                Some(_) => {}
            }
        }
    }
    let alive: Vec<usize> = alive.iter().map(|(i, _)| *i).collect();
    assert_eq!(alive.len(), 1, "exactly one live session: {alive:?}");
    let mut r = sys.redis.conn().await;
    let edge: String = r.hget("chat:session:alice", "edge").await.unwrap();
    assert_eq!(edge, format!("edge-{}", alive[0] % 2 + 1), "Redis agrees");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_logins_end_with_one_session_under_force_logout() {
    race("force-logout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_logins_end_with_one_session_under_reject() {
    race("reject").await;
}

#[tokio::test]
async fn nothing_of_the_user_is_read_before_the_password_is_checked() {
    let sys = System::start_with(Shape::new(1, 1, 1), |_| {}).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(0, "alice").await;
    assert_eq!(alice.ask("/subscribe bob").await, "OK SUBSCRIBE bob");
    alice.send("/quit").await;
    alice.closed().await;
    sys.session_gone("alice").await;
    let per_user = |l: &String| l.contains("chat:subscriptions:alice");

    let mut feed = sys.redis.monitor().await;
    let mut c = sys.connect(0).await;
    assert!(c
        .ask("LOGIN alice wrong-pw")
        .await
        .starts_with("ERR bad-credentials "));
    let ran = feed.ran_before("after-the-wrong-password").await;
    let touched: Vec<&String> = ran.iter().filter(|l| per_user(l)).collect();
    assert!(touched.is_empty(), "before auth-svc said no: {touched:?}");

    // The right password: the edge subscribes to nothing of the user's
    // (bob's lines come on its own channel), and a publication sent after
    // OK LOGIN arrives.
    assert_eq!(
        c.ask(&format!("LOGIN alice {}", e2e::password("alice")))
            .await,
        "OK LOGIN alice lobby"
    );
    let ran = feed.ran_before("after-ok-login").await;
    assert!(
        ran.iter().all(|l| !l.contains("SUBSCRIBE")),
        "nothing subscribed for a login: {ran:?}"
    );
    let mut bob = sys.login(0, "bob").await;
    assert!(bob.ask("/publish at once").await.starts_with("OK PUBLISH "));
    let line = c.until(|l| l.starts_with("PUB ")).await;
    assert!(line.ends_with(" bob at once"), "{line}");
}

/// bcrypt's cost in the tests of logins under load: a check takes about
/// 40 ms in a release build, 270 ms in a debug one.
const SLOW_COST: u32 = 10;

/// Logins under load: a slow bcrypt, one check at a time, so that a few
/// dozen logins are more than an instance checks within the edge's wait;
/// no failed-login or connection limits.
fn slow_bcrypt(c: &mut shared::config::Config) {
    c.auth.bcrypt_cost = SLOW_COST;
    c.auth.bcrypt_concurrency = 1;
    c.auth.max_failures_per_user = 0;
    c.auth.max_failures_per_addr = 0;
    c.edge.max_connections_per_addr = 0;
    c.edge.max_unauth_per_addr = 0;
    c.edge.accepts_per_sec = 0;
}

/// Accounts `<prefix>0` … with the password `pw` hashed at [`SLOW_COST`]
/// (one hash, shared).
async fn slow_users(sys: &System, prefix: &str, n: usize, pw: &str) -> Vec<String> {
    let mut r = sys.redis.conn().await;
    let keys = sys.keys();
    let first = format!("{prefix}0");
    auth_svc::accounts::add(&mut r, &keys, &first, pw, SLOW_COST)
        .await
        .unwrap();
    let hash: String = r.hget(keys.user(&first), "password").await.unwrap();
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for name in &names[1..] {
        let () = r.hset(keys.user(name), "password", &hash).await.unwrap();
    }
    names
}

/// A value of auth-svc instance `i`'s /metrics (`name` with its labels).
async fn auth_metric(sys: &System, i: usize, name: &str) -> u64 {
    auth_value(sys, i, name).await as u64
}

async fn auth_value(sys: &System, i: usize, name: &str) -> f64 {
    let (_, page) = e2e::http_get(sys.admin(Role::Auth, i), "/metrics").await;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {page}"))
}

/// How many checks of auth-svc 0 fit in `ms`, timed on one login of an
/// unknown user (so that the tests hold on fast and slow machines alike).
async fn checks_within(sys: &System, ms: u64) -> usize {
    let mut c = sys.connect(0).await;
    c.send("LOGIN nobody some-password").await;
    c.expect_prefix("ERR bad-credentials ").await;
    let took = auth_value(sys, 0, "chat_auth_bcrypt_seconds_sum").await;
    (ms as f64 / 1000.0 / took) as usize
}

/// The tests of logins under load run one at a time: each times bcrypt.
static UNDER_LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BCRYPT_RUNS: &str = "chat_auth_bcrypt_seconds_count";
const EXPIRED: &str = "chat_auth_logins_total{result=\"expired\"}";
const OK: &str = "chat_auth_logins_total{result=\"ok\"}";
const DUPLICATE: &str = "chat_auth_logins_total{result=\"duplicate\"}";

/// Sends `LOGIN <user> <pw>` for each user at once, each on a connection
/// of its own to edge 0; returns each one's first line.
async fn log_in_at_once(sys: &System, users: &[String], pw: &str) -> Vec<String> {
    let mut clients = Vec::new();
    for _ in users {
        clients.push(sys.connect(0).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .zip(users)
        .map(|(mut c, user)| {
            let line = format!("LOGIN {user} {pw}");
            tokio::spawn(async move {
                c.send(&line).await;
                c.line().await
            })
        })
        .collect();
    let mut firsts = Vec::new();
    for t in tasks {
        firsts.push(t.await.unwrap());
    }
    firsts
}

/// Waits until every login request was handled (and deleted).
async fn stream_drained(sys: &System) {
    let r = sys.redis.conn().await;
    eventually("every login request is handled", || {
        let mut r = r.clone();
        async move { r.xlen::<_, u64>("chat:req:auth").await.unwrap() == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_request_past_its_deadline_is_dropped_before_bcrypt() {
    let _alone = UNDER_LOAD.lock().await;
    let shape = Shape::new(1, 1, 1);
    let sys = System::start_with(shape, |c| {
        slow_bcrypt(c);
        // Everything in hand at once, as if the instance could do it all.
        c.auth.max_in_flight = 100;
        c.edge.request_timeout_ms = 2000;
    })
    .await;
    // Unknown users: checked against the dummy hash, at SLOW_COST. Three
    // times what can be checked within the wait.
    let n = 3 * checks_within(&sys, 2000).await + 5;
    let users: Vec<String> = (0..n).map(|i| format!("ghost{i}")).collect();
    let firsts = log_in_at_once(&sys, &users, "some-password").await;
    for first in &firsts {
        assert!(
            first.starts_with("ERR bad-credentials ") || first.starts_with("ERR unavailable "),
            "{first}"
        );
    }
    stream_drained(&sys).await;
    let (runs, expired) = (
        auth_metric(&sys, 0, BCRYPT_RUNS).await - 1,
        auth_metric(&sys, 0, EXPIRED).await,
    );
    // Those whose deadline came while they waited were dropped unchecked.
    assert_eq!(
        runs + expired,
        n as u64,
        "checked {runs}, expired {expired}"
    );
    assert!(expired > 0, "checked {runs}, expired {expired}");
    let answered = firsts.iter().filter(|f| f.starts_with("ERR bad-")).count() as u64;
    assert!(answered <= runs, "answered {answered}, checked {runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_check_each_login_once_however_long_bcrypt_takes() {
    let _alone = UNDER_LOAD.lock().await;
    let shape = Shape::new(1, 1, 2);
    let sys = System::start_with(shape, |c| {
        slow_bcrypt(c);
        // Far shorter than the wait for bcrypt: requests in hand must be
        // kept claimed, or the other instance takes them over.
        c.auth.claim_idle_ms = 400;
        c.edge.request_timeout_ms = 10_000;
    })
    .await;
    let users = slow_users(&sys, "slow", 12, "slow-password").await;
    let firsts = log_in_at_once(&sys, &users, "slow-password").await;
    for (user, first) in users.iter().zip(&firsts) {
        assert_eq!(first, &format!("OK LOGIN {user} lobby"));
    }
    stream_drained(&sys).await;
    let (mut runs, mut ok, mut taken_over) = (0, 0, 0);
    for i in 0..2 {
        runs += auth_metric(&sys, i, BCRYPT_RUNS).await;
        ok += auth_metric(&sys, i, OK).await;
        taken_over += auth_metric(&sys, i, DUPLICATE).await;
    }
    assert_eq!((runs, ok), (12, 12), "one check per login");
    // Kept claimed all along: no instance took over another's request.
    assert_eq!(taken_over, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_checks_only_what_can_be_answered_in_time() {
    let _alone = UNDER_LOAD.lock().await;
    let shape = Shape::new(1, 1, 1);
    let sys = System::start_with(shape, |c| {
        slow_bcrypt(c);
        c.edge.request_timeout_ms = 2000;
    })
    .await;
    // Sized automatically: what one check at a time does in 2 s.
    let in_flight = auth_metric(&sys, 0, "chat_auth_max_in_flight").await;
    assert!((1..256).contains(&in_flight), "{in_flight}");
    // Four times what can be checked within the wait.
    let n = 4 * checks_within(&sys, 2000).await + 10;
    let users = slow_users(&sys, "storm", n, "storm-password").await;
    let firsts = log_in_at_once(&sys, &users, "storm-password").await;
    // Each was answered before the edge's deadline, or told it passed.
    let mut logged_in = 0;
    for (user, first) in users.iter().zip(&firsts) {
        if *first == format!("OK LOGIN {user} lobby") {
            logged_in += 1;
        } else {
            assert!(first.starts_with("ERR unavailable "), "{first}");
        }
    }
    stream_drained(&sys).await;
    let runs = auth_metric(&sys, 0, BCRYPT_RUNS).await - 1;
    let expired = auth_metric(&sys, 0, EXPIRED).await;
    let ok = auth_metric(&sys, 0, OK).await;
    assert!(
        logged_in > 0 && expired > 0,
        "{logged_in} in, {expired} expired"
    );
    assert_eq!(
        runs + expired,
        n as u64,
        "checked {runs}, expired {expired}"
    );
    assert_eq!(ok, logged_in);
    // bcrypt's time went to logins that were answered: at most one check
    // (whose end came just after the deadline) was for nothing.
    assert!(runs <= ok + 1, "checked {runs}, logged in {ok}");
}

/// The nice value and scheduling policy (0: normal, 5: `SCHED_IDLE`) of
/// each thread of process `pid` (from `/proc`), by thread id.
fn scheduling(pid: u32) -> HashMap<u32, (i32, u32)> {
    let mut out = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        // After "pid (comm) ", field 3 on; the nice value is field 19,
        // the policy field 41.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let tid = task.file_name().to_string_lossy().parse().unwrap();
        let field = |n: usize| fields[n - 3];
        out.insert(
            tid,
            (field(19).parse().unwrap(), field(41).parse().unwrap()),
        );
    }
    out
}

#[tokio::test]
async fn auth_svc_runs_at_lower_priority_with_bcrypt_under_sched_idle_and_the_edges_do_not() {
    let sys = System::start().await;
    assert_eq!(sys.cfg.auth.nice, 10, "the default");
    assert!(sys.cfg.auth.bcrypt_idle, "the default");
    sys.add_user("alice").await;
    let mut c = sys.connect(0).await;
    c.send("LOGIN alice alice-pw").await;
    c.expect("OK LOGIN alice lobby").await;
    // Relative to the edge's, started alike (the tests may run under
    // `nice`); every thread, the blocking pool's that ran bcrypt too.
    let edge = scheduling(sys.pid(Role::Edge, 0));
    let base = edge.values().next().unwrap().0;
    assert!(
        edge.values().all(|s| *s == (base, 0)),
        "the edge's: {edge:?}"
    );
    let auth = scheduling(sys.pid(Role::Auth, 0));
    let lowered = (base + 10).min(19);
    assert!(base < lowered, "{edge:?}");
    assert!(auth.len() > 2, "the runtime's threads: {auth:?}");
    assert!(
        auth.values().all(|s| s.0 == lowered),
        "auth-svc's: {auth:?}"
    );
    // The thread that checked alice's password is under SCHED_IDLE; the
    // runtime's own threads are not.
    let idle = auth.values().filter(|s| s.1 == 5).count();
    assert!(idle >= 1, "auth-svc's: {auth:?}");
    assert!(
        auth.values().filter(|s| s.1 == 0).count() >= 2,
        "auth-svc's: {auth:?}"
    );
}
