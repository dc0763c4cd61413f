//! Redis faults under load: a black-holed edge↔Redis path, Redis restarted
//! with its append-only file or empty, Redis at maxmemory, and a call that
//! fails in the middle of a pipeline. Each test runs a small load of its
//! own: a sender on one edge says numbered lines in a room, one at a time
//! (its own echo is the acknowledgement), and receivers on both edges
//! check that every acknowledged line arrives exactly once and in order.
//! Each prints its recovery time as `recovery <fault>: <ms> ms`.
//!
//! The tests run one at a time (they time recoveries, and each starts a
//! whole system).

use e2e::proxy::Proxy;
use e2e::{parse, password, Client, Role, Shape, System, WAIT};
use redis::aio::MultiplexedConnection;
use shared::consumer::EntryId;
use shared::line::ServerLine;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const ROOM: &str = "dev";
const SENDER: &str = "sam";
/// The sender's pace: one line, its echo, then this pause.
const PACE: Duration = Duration::from_millis(30);
/// The text that ends a load.
const END: &str = "end";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the sender saw.
#[derive(Default)]
struct Said {
    /// Its own lines echoed back (acknowledged): number, id, when.
    acked: Vec<(u64, String, Instant)>,
    /// Lines answered `ERR` (not acknowledged).
    errors: Vec<(u64, String)>,
    /// Lines neither echoed nor refused while it waited.
    unanswered: u64,
    gaps: Vec<String>,
    bye: Option<String>,
}

impl Said {
    fn numbers(&self) -> Vec<u64> {
        self.acked.iter().map(|(n, _, _)| *n).collect()
    }

    /// The first acknowledgement at or after `t`, after `t`.
    fn first_ack_after(&self, t: Instant) -> Option<Duration> {
        self.acked
            .iter()
            .find(|(_, _, at)| *at >= t)
            .map(|(_, _, at)| *at - t)
    }
}

/// What a receiver got from the sender.
#[derive(Debug)]
enum Got {
    Msg(u64, String, Instant),
    Gap(String),
    Bye(String),
}

/// A running load: the sender and the receivers, as tasks.
struct Load {
    stop: Arc<AtomicBool>,
    /// Lines acknowledged so far, and refused so far.
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    sender: JoinHandle<(Client, Said)>,
    receivers: Vec<JoinHandle<(Client, Vec<Got>)>>,
}

impl Load {
    /// Starts `sender` saying lines and `receivers` listening (all in
    /// ROOM already); `wait`: how long the sender waits for each echo.
    fn start(sender: Client, receivers: Vec<Client>, wait: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let sender = tokio::spawn(send(
            sender,
            stop.clone(),
            acked.clone(),
            refused.clone(),
            wait,
        ));
        let receivers = receivers
            .into_iter()
            .map(|c| tokio::spawn(receive(c)))
            .collect();
        Load {
            stop,
            acked,
            refused,
            sender,
            receivers,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits until `n` more lines than now have been acknowledged.
    async fn more_acked(&self, n: u64, what: &str) {
        let want = self.acked() + n;
        e2e::eventually(what, || async { self.acked() >= want }).await;
    }

    /// Stops the sender (which says END last) and waits for everyone.
    async fn finish(self) -> ((Client, Said), Vec<(Client, Vec<Got>)>) {
        self.stop.store(true, Ordering::SeqCst);
        let said = tokio::time::timeout(2 * WAIT, self.sender)
            .await
            .expect("the sender finishes")
            .expect("the sender");
        let mut got = Vec::new();
        for r in self.receivers {
            got.push(
                tokio::time::timeout(2 * WAIT, r)
                    .await
                    .expect("a receiver finishes")
                    .expect("a receiver"),
            );
        }
        (said, got)
    }
}

/// Says numbered lines one at a time, each after the previous one's echo
/// or refusal (or `wait`), until `stop`; then END until it is echoed (or
/// the session ends).
async fn send(
    mut c: Client,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    wait: Duration,
) -> (Client, Said) {
    let mut said = Said::default();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        c.send(&n.to_string()).await;
        match answer(&mut c, &mut said, &n.to_string(), wait, &acked).await {
            Answer::Echo => {}
            Answer::Refused(why) => {
                said.errors.push((n, why));
                refused.fetch_add(1, Ordering::SeqCst);
            }
            Answer::Silent => said.unanswered += 1,
            Answer::Bye => return (c, said),
        }
        tokio::time::sleep(PACE).await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        c.send(END).await;
        match answer(&mut c, &mut said, END, wait, &acked).await {
            Answer::Echo | Answer::Bye => return (c, said),
            Answer::Refused(_) | Answer::Silent => {}
        }
        assert!(Instant::now() < deadline, "END is never acknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How a line of the sender's was answered.
enum Answer {
    Echo,
    Refused(String),
    /// Neither echoed nor refused in time.
    Silent,
    Bye,
}

/// Reads the sender's lines until the echo of `text`, an `ERR` or `BYE`,
/// or `wait`; records every echo (of earlier lines too) and `GAP`.
async fn answer(
    c: &mut Client,
    said: &mut Said,
    text: &str,
    wait: Duration,
    acked: &AtomicU64,
) -> Answer {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(line) = tokio::time::timeout_at(deadline, c.next()).await else {
            return Answer::Silent;
        };
        let Some(line) = line else {
            said.bye.get_or_insert_with(|| "(closed)".into());
            return Answer::Bye;
        };
        match parse(&line) {
            ServerLine::Msg {
                from, text: t, id, ..
            } if from == SENDER => {
                if t == END {
                    return Answer::Echo;
                }
                said.acked.push((t.parse().unwrap(), id, Instant::now()));
                acked.fetch_add(1, Ordering::SeqCst);
                if t == text {
                    return Answer::Echo;
                }
            }
            ServerLine::Err { code, text: why } => return Answer::Refused(format!("{code} {why}")),
            ServerLine::Gap { after, .. } => said.gaps.push(after),
            ServerLine::Bye { reason } => {
                said.bye = Some(reason);
                return Answer::Bye;
            }
            _ => {}
        }
    }
}

/// Reads the sender's lines until END (or `BYE`).
async fn receive(mut c: Client) -> (Client, Vec<Got>) {
    let mut got = Vec::new();
    loop {
        let Some(line) = c.next().await else {
            got.push(Got::Bye("(closed)".into()));
            return (c, got);
        };
        match parse(&line) {
            ServerLine::Msg { from, text, id, .. } if from == SENDER => {
                if text == END {
                    return (c, got);
                }
                got.push(Got::Msg(text.parse().unwrap(), id, Instant::now()));
            }
            ServerLine::Gap { kind, name, after } => {
                assert_eq!((kind.as_str(), name.as_str()), ("room", ROOM), "{line}");
                got.push(Got::Gap(after));
            }
            ServerLine::Bye { reason } => {
                got.push(Got::Bye(reason));
                return (c, got);
            }
            _ => {}
        }
    }
}

/// The numbers a receiver got, checked to be strictly increasing (no
/// duplicate, in order), ids too.
fn in_order(who: &str, got: &[Got]) -> Vec<u64> {
    let mut last: Option<(u64, EntryId)> = None;
    let mut numbers = Vec::new();
    for g in got {
        if let Got::Msg(n, id, _) = g {
            let id = EntryId::parse(id).unwrap();
            if let Some((m, prev)) = last {
                assert!(
                    *n > m && id > prev,
                    "{who}: line {n} ({id}) after {m} ({prev})"
                );
            }
            last = Some((*n, id));
            numbers.push(*n);
        }
    }
    numbers
}

/// When the first line came at or after `t`, after `t`.
fn first_after(got: &[Got], t: Instant) -> Option<Duration> {
    got.iter().find_map(|g| match g {
        Got::Msg(_, _, at) if *at >= t => Some(*at - t),
        _ => None,
    })
}

fn gaps(got: &[Got]) -> Vec<&str> {
    got.iter()
        .filter_map(|g| match g {
            Got::Gap(after) => Some(after.as_str()),
            _ => None,
        })
        .collect()
}

fn byes(got: &[Got]) -> Vec<&str> {
    got.iter()
        .filter_map(|g| match g {
            Got::Bye(why) => Some(why.as_str()),
            _ => None,
        })
        .collect()
}

/// Logs in SENDER and one receiver per `edges` entry (`r0`, `r1`, …),
/// all in ROOM, receivers first.
async fn people(sys: &System, edges: &[usize], sender_edge: usize) -> (Client, Vec<Client>) {
    let names: Vec<String> = (0..edges.len()).map(|i| format!("r{i}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push(SENDER);
    sys.add_users(&all).await;
    let mut receivers = Vec::new();
    for (name, &edge) in names.iter().zip(edges) {
        let mut c = sys.login(edge, name).await;
        assert_eq!(
            c.ask(&format!("/join {ROOM}")).await,
            format!("OK JOIN {ROOM}")
        );
        receivers.push(c);
    }
    let mut sender = sys.login(sender_edge, SENDER).await;
    assert_eq!(
        sender.ask(&format!("/join {ROOM}")).await,
        format!("OK JOIN {ROOM}")
    );
    (sender, receivers)
}

/// A plain connection to the test's Redis (no library loaded by it).
async fn raw(sys: &System) -> MultiplexedConnection {
    redis::Client::open(sys.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Field `field` of `INFO <section>`.
async fn info(conn: &mut MultiplexedConnection, section: &str, field: &str) -> String {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// `OOM` errors Redis has answered so far.
async fn oom_errors(conn: &mut MultiplexedConnection) -> u64 {
    info(conn, "errorstats", "errorstat_OOM")
        .await
        .strip_prefix("count=")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Black-holes the proxied edge's Redis path while the sender (on the
/// other edge) talks. What it found, and the system (still running).
struct BlackHole {
    detected: Duration,
    recovery: Duration,
    said: Said,
    got: Vec<Vec<Got>>,
    /// The receiver on the black-holed edge.
    r1: Client,
    _proxy: Proxy,
    _sys: System,
}

async fn black_hole_run(replay_max: usize) -> BlackHole {
    let mut sys = System::start_with(
        Shape {
            edges: 1,
            ..Default::default()
        },
        |c| {
            c.edge.request_timeout_ms = 1000;
            c.edge.replay_max = replay_max;
        },
    )
    .await;
    let proxy = Proxy::start(sys.redis.port).await;
    let url = proxy.url();
    sys.add_with(Role::Edge, &[("CHAT_REDIS_URL", &url)]).await;
    assert!(
        proxy.accepted() > 0,
        "edge-2 talks to Redis through the proxy"
    );
    let (sender, receivers) = people(&sys, &[0, 1], 0).await;
    let load = Load::start(sender, receivers, Duration::from_secs(3));
    load.more_acked(10, "the load runs").await;

    let hole = Instant::now();
    proxy.black_hole();
    e2e::eventually("edge-2 reconnects to Redis", || async {
        proxy.accepted_since(hole).is_some()
    })
    .await;
    let detected = proxy.accepted_since(hole).unwrap() - hole;
    // More lines than the edge replays (when that is 2), missed by r1.
    load.more_acked(5, "lines said meanwhile").await;
    let lifted = Instant::now();
    proxy.restore();
    load.more_acked(20, "the load goes on after the black hole")
        .await;
    let ((_, said), got) = load.finish().await;
    let mut got = got.into_iter();
    let (_, r0) = got.next().unwrap();
    let (r1_client, r1) = got.next().unwrap();
    let recovery = first_after(&r1, lifted).expect("r1 gets lines after the black hole");
    BlackHole {
        detected,
        recovery,
        said,
        got: vec![r0, r1],
        r1: r1_client,
        _proxy: proxy,
        _sys: sys,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_edge_replays_what_it_missed_exactly_once() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let BlackHole {
        detected,
        recovery,
        said,
        got,
        _sys,
        _proxy,
        ..
    } = black_hole_run(200).await;
    let acked = said.numbers();
    for (who, got) in ["r0 (edge-1)", "r1 (edge-2, black-holed)"].iter().zip(&got) {
        assert!(byes(got).is_empty(), "{who}: {:?}", byes(got));
        assert!(
            gaps(got).is_empty(),
            "{who}: GAP with fewer than replay_max missed"
        );
        assert_eq!(
            in_order(who, got),
            acked,
            "{who} gets every acknowledged line once"
        );
    }
    assert!(said.gaps.is_empty() && said.bye.is_none());
    println!(
        "black hole: {} lines acknowledged, {} refused, {} unanswered; r1 got them all, once, in order",
        acked.len(),
        said.errors.len(),
        said.unanswered
    );
    println!("detection edge-redis black hole: {} ms", ms(detected));
    println!("recovery edge-redis black hole: {} ms", ms(recovery));
    println!("run time: {} ms", ms(started.elapsed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_quiet_since_its_member_joined_gets_what_a_black_hole_hid() {
    // No line had been passed on to the room on edge-2 (so no id to
    // replay from): what was said while edge-2's Pub/Sub was black-holed
    // is replayed from when it was last heard from.
    let _serial = SERIAL.lock().await;
    let mut sys = System::start_with(
        Shape {
            edges: 1,
            ..Default::default()
        },
        |c| c.edge.request_timeout_ms = 1000,
    )
    .await;
    let proxy = Proxy::start(sys.redis.port).await;
    let url = proxy.url();
    let edge2 = sys.add_with(Role::Edge, &[("CHAT_REDIS_URL", &url)]).await;
    sys.add_users(&["alice", "bob"]).await;
    let mut alice = sys.login(edge2, "alice").await;
    let mut bob = sys.login(0, "bob").await;
    assert_eq!(alice.ask("/join quiet").await, "OK JOIN quiet");
    assert_eq!(bob.ask("/join quiet").await, "OK JOIN quiet");

    let hole = Instant::now();
    proxy.black_hole();
    e2e::eventually("edge-2 reconnects to Redis", || async {
        proxy.accepted_since(hole).is_some()
    })
    .await;
    bob.send("while you were away").await;
    let said = bob.line().await;
    assert!(said.ends_with(" bob while you were away"), "{said}");
    proxy.restore();
    assert_eq!(alice.line().await, said, "replayed once edge-2 is back");
    bob.send("and now").await;
    let live = bob.line().await;
    assert_eq!(alice.line().await, live, "then live, nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_past_replay_max_shows_a_gap_and_no_duplicate() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let BlackHole {
        detected,
        recovery,
        said,
        got,
        r1: mut r1c,
        _sys,
        _proxy,
        ..
    } = black_hole_run(2).await;
    let acked = said.numbers();
    let id_of = |n: u64| said.acked.iter().find(|a| a.0 == n).unwrap().1.clone();
    assert_eq!(
        in_order("r0", &got[0]),
        acked,
        "r0 (not cut off) gets everything"
    );
    let r1 = &got[1];
    assert!(byes(r1).is_empty(), "{:?}", byes(r1));
    let numbers = in_order("r1", r1);
    // One gap, right after the last line r1 got before it.
    assert_eq!(gaps(r1).len(), 1, "{r1:?}");
    let at = r1.iter().position(|g| matches!(g, Got::Gap(_))).unwrap();
    let before: Vec<u64> = in_order("r1", &r1[..at]);
    let after: Vec<u64> = in_order("r1", &r1[at + 1..]);
    let last = *before.last().expect("lines before the black hole");
    assert_eq!(
        gaps(r1)[0],
        id_of(last),
        "GAP names the last line passed on"
    );
    // Everything up to the gap, then a jump, then everything after.
    let first = *after.first().expect("lines after the gap");
    let expect_before: Vec<u64> = acked.iter().copied().filter(|n| *n <= last).collect();
    let expect_after: Vec<u64> = acked.iter().copied().filter(|n| *n >= first).collect();
    assert_eq!(before, expect_before);
    assert_eq!(after, expect_after);
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !numbers.contains(n))
        .collect();
    assert!(
        missing.len() > 2,
        "more than replay_max were missed: {missing:?}"
    );
    // /history has what the gap skipped.
    let hist = history(&mut r1c).await;
    for n in &missing {
        assert!(hist.contains(n), "line {n} is in /history");
    }
    println!(
        "black hole past replay_max=2: {} acknowledged, GAP after line {last}, {} skipped (all in /history), then from {first} on",
        acked.len(),
        missing.len()
    );
    println!("detection edge-redis black hole (gap): {} ms", ms(detected));
    println!("recovery edge-redis black hole (gap): {} ms", ms(recovery));
    println!("run time: {} ms", ms(started.elapsed()));
}

/// Lines of SENDER in ROOM's `/history 500`, by `c`.
async fn history(c: &mut Client) -> Vec<u64> {
    c.command("/history 500")
        .await
        .iter()
        .filter_map(|l| match parse(l) {
            ServerLine::Hist { from, text, .. } if from == SENDER => text.parse().ok(),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_its_append_only_file_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut sys =
        System::start_with(Default::default(), |c| c.edge.request_timeout_ms = 1000).await;
    let mut r = raw(&sys).await;
    // AOF on, as in the compose file (appendfsync everysec).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("yes")
        .query_async(&mut r)
        .await
        .unwrap();
    sys.redis.set_args(&["--appendonly", "yes"]);
    let (sender, receivers) = people(&sys, &[0, 1], 0).await;
    e2e::eventually("the append-only file is written", || {
        let mut r = r.clone();
        async move {
            info(&mut r, "persistence", "aof_enabled").await == "1"
                && info(&mut r, "persistence", "aof_rewrite_in_progress").await == "0"
                && info(&mut r, "persistence", "aof_rewrite_scheduled").await == "0"
        }
    })
    .await;
    let load = Load::start(sender, receivers, Duration::from_secs(3));
    load.more_acked(20, "the load runs").await;

    let down = Instant::now();
    sys.redis.stop().await;
    // Only the append-only file brings the data back.
    sys.redis.forget_data();
    let refused = load.refused();
    e2e::eventually("the sender is refused while Redis is down", || async {
        load.refused() > refused
    })
    .await;
    sys.redis.start_again().await;
    let up = Instant::now();
    load.more_acked(20, "service resumes").await;
    let ((mut sam, said), got) = load.finish().await;
    let mut r = raw(&sys).await;
    assert_eq!(info(&mut r, "persistence", "aof_enabled").await, "1");

    let acked = said.numbers();
    assert!(
        said.bye.is_none(),
        "the sender stays logged in: {:?}",
        said.bye
    );
    assert!(said.gaps.is_empty(), "the sender got GAP: {:?}", said.gaps);
    let mut caught_up = 0;
    let mut receivers = Vec::new();
    for (i, (mut c, got)) in got.into_iter().enumerate() {
        let who = format!("r{i}");
        assert!(byes(&got).is_empty(), "{who}: {:?}", byes(&got));
        let numbers = in_order(&who, &got);
        assert!(
            gaps(&got).is_empty(),
            "{who}: GAP with nothing past replay_max missed: {:?}",
            gaps(&got)
        );
        // Nothing that was not acknowledged (the sender is in the room too).
        assert!(
            numbers.iter().all(|n| acked.contains(n)),
            "{who}: {numbers:?} vs {acked:?}"
        );
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|n| !numbers.contains(n))
            .collect();
        if !missing.is_empty() {
            let hist = history(&mut c).await;
            let lost: Vec<&u64> = missing.iter().filter(|n| !hist.contains(n)).collect();
            assert!(lost.is_empty(), "{who}: acknowledged lines lost: {lost:?}");
            caught_up += missing.len();
        }
        assert_eq!(c.ask("/ping").await, "OK PING");
        receivers.push(c); // logged in until the end
    }
    // Every session survived, and history has every acknowledged line once.
    let mut conn = sys.redis.conn().await;
    for user in [SENDER, "r0", "r1"] {
        let there: bool = redis::AsyncCommands::exists(&mut conn, sys.keys().session(user))
            .await
            .unwrap();
        assert!(there, "{user}'s session survived");
    }
    let hist = history(&mut sam).await;
    let mut sorted = hist.clone();
    sorted.dedup();
    assert_eq!(hist, sorted, "history holds no line twice");
    for n in &acked {
        assert!(hist.contains(n), "acknowledged line {n} is in history");
    }
    println!(
        "AOF restart: {} acknowledged, {} refused while down, {} unanswered; {} caught up with /history",
        acked.len(),
        said.errors.len(),
        said.unanswered,
        caught_up
    );
    println!("redis down for {} ms", ms(up - down));
    let recovery = said.first_ack_after(up).unwrap();
    println!("recovery redis restart (aof): {} ms", ms(recovery));
    println!("run time: {} ms", ms(started.elapsed()));
}

/// Connects to edge `edge` and logs `user` in, retrying while the system
/// is not back (`ERR unavailable`, or no account yet).
async fn log_in_again(sys: &System, edge: usize, user: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = sys.connect(edge).await;
        let reply = c.ask(&format!("LOGIN {user} {}", password(user))).await;
        if reply == format!("OK LOGIN {user} lobby") {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{user} cannot log in again: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_ends_the_sessions_and_service_resumes() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut sys =
        System::start_with(Default::default(), |c| c.edge.request_timeout_ms = 1000).await;
    let (sender, receivers) = people(&sys, &[0, 1], 0).await;
    let load = Load::start(sender, receivers, Duration::from_secs(3));
    load.more_acked(20, "the load runs").await;

    sys.redis.stop().await;
    sys.redis.forget_data();
    sys.redis.start_again().await;
    let up = Instant::now();
    let ((_, said), got) = load.finish().await;
    // Everyone is told the session is gone.
    assert_eq!(said.bye.as_deref(), Some("server-shutdown"));
    let acked = said.numbers();
    let mut undelivered = 0;
    for (i, (_, got)) in got.iter().enumerate() {
        let who = format!("r{i}");
        assert_eq!(byes(got), ["server-shutdown"], "{who}");
        let numbers = in_order(&who, got);
        assert!(numbers.iter().all(|n| acked.contains(n)), "{who}");
        undelivered += acked.len() - numbers.len();
    }
    let bye_after = Instant::now() - up;
    // The services load the library again by themselves.
    let mut r = raw(&sys).await;
    e2e::eventually("the services load the functions library again", || {
        let mut r = r.clone();
        async move {
            let libs: redis::Value = redis::cmd("FUNCTION")
                .arg("LIST")
                .query_async(&mut r)
                .await
                .unwrap();
            format!("{libs:?}").contains("chat_say")
        }
    })
    .await;
    let loaded_after = Instant::now() - up;
    let _ = info(&mut r, "server", "redis_version").await;
    // The accounts went with the data: an operator restores them.
    sys.add_users(&[SENDER, "r0", "r1"]).await;
    // (A stale logout of an old session can no longer end a new one:
    // `a_stale_logout_after_redis_lost_its_data_leaves_the_new_session`.)
    let mut r1 = log_in_again(&sys, 1, "r1").await;
    let mut sam = log_in_again(&sys, 0, SENDER).await;
    // The routers make their groups again when they find them gone:
    // until then requests wait (ERR unavailable).
    for c in [&mut r1, &mut sam] {
        let deadline = Instant::now() + WAIT;
        loop {
            let reply = c.ask(&format!("/join {ROOM}")).await;
            if reply == format!("OK JOIN {ROOM}") {
                break;
            }
            assert!(reply.starts_with("ERR unavailable"), "{reply}");
            assert!(Instant::now() < deadline, "/join never works again");
        }
    }
    sam.send("back").await;
    let echo = sam.msg().await;
    assert!(
        matches!(&echo, ServerLine::Msg { text, .. } if text == "back"),
        "{echo}"
    );
    assert_eq!(r1.msg().await, echo);
    let recovery = Instant::now() - up;
    println!(
        "empty restart: {} acknowledged before, {} deliveries of them missing at receivers, BYE server-shutdown {} ms after the restart, library loaded {} ms after",
        acked.len(),
        undelivered,
        ms(bye_after),
        ms(loaded_after)
    );
    println!("recovery redis restart (empty): {} ms", ms(recovery));
    println!("run time: {} ms", ms(started.elapsed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_logs_nobody_out_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let dead_after = 1500;
    let sys = System::start_with(Default::default(), |c| {
        c.edge.request_timeout_ms = 500;
        c.edge.dead_after_ms = dead_after;
    })
    .await;
    let (sender, receivers) = people(&sys, &[0, 1], 0).await;
    let mut r = raw(&sys).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut r)
        .await
        .unwrap();
    let load = Load::start(sender, receivers, Duration::from_secs(2));
    load.more_acked(20, "the load runs").await;

    let ooms = oom_errors(&mut r).await;
    let used: u64 = info(&mut r, "memory", "used_memory").await.parse().unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + 1024)
        .query_async(&mut r)
        .await
        .unwrap();
    e2e::eventually("Redis refuses writes (OOM)", || {
        let mut r = r.clone();
        async move { oom_errors(&mut r).await > ooms }
    })
    .await;
    let full = Instant::now();
    let (acked_at_full, refused_at_full) = (load.acked(), load.refused());
    // Twice the time after which an edge counts as dead, and then some:
    // every session stays, and both edges' beats hold.
    let keys = sys.keys();
    let mut checks = 0;
    while full.elapsed() < Duration::from_millis(2 * dead_after + 1000) {
        for user in [SENDER, "r0", "r1"] {
            let there: bool = redis::AsyncCommands::exists(&mut r, keys.session(user))
                .await
                .unwrap();
            assert!(there, "{user}'s session is there at maxmemory");
        }
        for edge in ["edge-1", "edge-2"] {
            let until: Option<f64> = redis::AsyncCommands::zscore(&mut r, keys.edges(), edge)
                .await
                .unwrap();
            let until = until.unwrap_or_else(|| panic!("{edge} was reaped"));
            assert!(
                until as u64 > shared::now_ms(),
                "{edge}'s beat holds at maxmemory"
            );
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ooms_during = oom_errors(&mut r).await - ooms;
    let (acked_full, refused_full) = (
        load.acked() - acked_at_full,
        load.refused() - refused_at_full,
    );
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut r)
        .await
        .unwrap();
    let lifted = Instant::now();
    load.more_acked(20, "service resumes").await;
    let ((_, said), got) = load.finish().await;
    assert!(said.bye.is_none(), "{:?}", said.bye);
    let acked = said.numbers();
    for (i, (_, got)) in got.iter().enumerate() {
        let who = format!("r{i}");
        assert!(byes(got).is_empty(), "{who}: {:?}", byes(got));
        assert!(gaps(got).is_empty(), "{who}: {:?}", gaps(got));
        assert_eq!(in_order(&who, got), acked, "{who}");
    }
    assert!(
        refused_full > 0 || acked_full == 0,
        "at maxmemory lines are refused or wait"
    );
    println!(
        "maxmemory for {} ms: {ooms_during} OOM errors, {refused_full} lines refused and {acked_full} acknowledged meanwhile, nobody logged out ({checks} checks); {} acknowledged in all, each delivered once",
        ms(lifted - full),
        acked.len()
    );
    let recovery = said.first_ack_after(lifted).unwrap();
    println!("recovery redis maxmemory: {} ms", ms(recovery));
    println!("run time: {} ms", ms(started.elapsed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_one_that_failed_in_the_same_pipeline_is_not_applied() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // No router: this test calls the router's function itself, with the
    // arguments router-svc gives it, holding partition 0's lease.
    let sys = System::start_with(Shape::new(1, 0, 1), |_| {}).await;
    sys.add_user("alice").await;
    let mut alice = sys.login(0, "alice").await;
    let keys = sys.keys();
    let mut r = raw(&sys).await;
    let _: () = redis::AsyncCommands::set(&mut r, keys.router_lease(0), "tester")
        .await
        .unwrap();
    let (sid, edge, room): (String, String, String) = redis::cmd("HMGET")
        .arg(keys.session("alice"))
        .arg("sid")
        .arg("edge")
        .arg("room")
        .query_async(&mut r)
        .await
        .unwrap();
    let now = shared::now_ms();
    let (first, second) = (format!("{now}-0"), format!("{now}-1"));
    // chat_say as router-svc makes it, for the session as read.
    let cfg = shared::config::Config::default();
    let at = router_svc::Place {
        sid: sid.clone(),
        edge: edge.clone(),
        room: room.clone(),
    };
    let say = |eid: &str, prev: &str, text: &str| {
        let req = shared::envelope::Request {
            edge: edge.clone(),
            conn: 0,
            rid: 0,
            user: "alice".into(),
            sid: sid.clone(),
            op: shared::envelope::Op::Say { text: text.into() },
        };
        let call = router_svc::request_call(&keys, "tester", &cfg, 0, eid, &req, prev, &at);
        call.expect("a router request").call().into_cmd()
    };
    let applied = |r: &mut MultiplexedConnection| {
        let mut r = r.clone();
        let key = keys.applied("alice");
        async move {
            redis::AsyncCommands::get::<_, Option<String>>(&mut r, key)
                .await
                .unwrap()
        }
    };
    let maxmemory = |bytes: u64| {
        let mut c = redis::cmd("CONFIG");
        c.arg("SET").arg("maxmemory").arg(bytes);
        c
    };

    // One pipeline: the first call fails (Redis is out of memory), memory
    // is back before the second, which would apply: it must answer retry.
    let mut pipe = redis::pipe();
    pipe.ignore_errors()
        .add_command(maxmemory(1))
        .add_command(say(&first, "", "one"))
        .add_command(maxmemory(0))
        .add_command(say(&second, &first, "two"));
    let answers: Vec<redis::Value> = pipe.query_async(&mut r).await.unwrap();
    let oom = format!("{:?}", answers[1]);
    assert!(oom.contains("OOM"), "the first call fails: {oom}");
    assert_eq!(
        redis::from_redis_value::<String>(answers[3].clone()).unwrap(),
        "retry",
        "the second is not applied ahead of the first"
    );
    assert_eq!(applied(&mut r).await, None, "nothing was applied");
    let len: u64 = redis::AsyncCommands::xlen(&mut r, keys.history(&room))
        .await
        .unwrap();
    assert_eq!(len, 0, "nothing is in history");

    // The retry, as the router makes it: both, in order.
    let mut pipe = redis::pipe();
    pipe.add_command(say(&first, "", "one"))
        .add_command(say(&second, &first, "two"));
    let statuses: Vec<String> = pipe.query_async(&mut r).await.unwrap();
    assert_eq!(statuses, ["ok", "ok"]);
    // Again (a lost acknowledgement): recognized, nothing twice.
    let statuses: Vec<String> = pipe.query_async(&mut r).await.unwrap();
    assert_eq!(statuses, ["duplicate", "duplicate"]);
    for want in ["one", "two"] {
        let line = alice.msg().await;
        assert!(
            matches!(&line, ServerLine::Msg { text, .. } if text == want),
            "{line}"
        );
    }
    assert_eq!(alice.ask("/ping").await, "OK PING", "nothing more came");
    assert_eq!(applied(&mut r).await.as_deref(), Some(second.as_str()));

    // Without the predecessor's id the same failure would apply the second
    // call first, and the first would later count as a duplicate: lost.
    let (third, fourth) = (format!("{}-0", now + 1), format!("{}-1", now + 1));
    let mut pipe = redis::pipe();
    pipe.ignore_errors()
        .add_command(maxmemory(1))
        .add_command(say(&third, "", "three"))
        .add_command(maxmemory(0))
        .add_command(say(&fourth, "", "four"))
        .add_command(say(&third, "", "three"));
    let answers: Vec<redis::Value> = pipe.query_async(&mut r).await.unwrap();
    assert!(format!("{:?}", answers[1]).contains("OOM"));
    let later: Vec<String> = [&answers[3], &answers[4]]
        .iter()
        .map(|v| redis::from_redis_value((*v).clone()).unwrap())
        .collect();
    assert_eq!(later, ["ok", "duplicate"], "the guard is what keeps order");
    // No recovery time: there is no router here; router-svc retries what
    // it left pending at its next batch or lease tick (lease_ms / 3).
    println!("script failure mid-pipeline: the call after the failed one answered retry; both applied in order on the retry");
    println!("run time: {} ms", ms(started.elapsed()));
}

/// Found by the test above when session ids came from a counter in Redis
/// (`chat:seq:sid`), which started again at 1 when Redis lost its data: a
/// connection closed because its session is gone still sends a logout for
/// it, naming the user and the old sid; had the user logged in again and
/// got the same sid back before a router applied it, it ended the new
/// session (the client, logged in as far as it knew, got `ERR unavailable`
/// for every request). Session ids are now 128 random bits, never reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_logout_after_redis_lost_its_data_leaves_the_new_session() {
    let _serial = SERIAL.lock().await;
    let mut sys =
        System::start_with(Default::default(), |c| c.edge.request_timeout_ms = 1000).await;
    sys.add_user("alice").await;
    let mut old = sys.login(0, "alice").await;
    // No router for a while: the old session's logout waits in its stream.
    sys.stop(Role::Router, 0).await;
    sys.redis.stop().await;
    sys.redis.forget_data();
    sys.redis.start_again().await;
    assert_eq!(
        old.until(|l| l.starts_with("BYE ")).await,
        "BYE server-shutdown"
    );
    old.closed().await;
    let stream = sys
        .keys()
        .router_requests(shared::keys::partition_of("alice", sys.cfg.partitions));
    let mut r = raw(&sys).await;
    e2e::eventually("the old session's logout is queued", || {
        let (mut r, stream) = (r.clone(), stream.clone());
        async move {
            redis::AsyncCommands::xlen::<_, u64>(&mut r, stream)
                .await
                .unwrap()
                >= 1
        }
    })
    .await;
    // The account is restored and alice logs in again, with a new sid.
    sys.add_user("alice").await;
    let mut alice = log_in_again(&sys, 1, "alice").await;
    let sessions: u64 = redis::AsyncCommands::get(&mut r, sys.keys().seq_sid())
        .await
        .unwrap();
    assert_eq!(sessions, 1, "the count started again: one session so far");
    sys.restart(Role::Router, 0).await;
    e2e::eventually("the router has applied the queued logout", || {
        let (mut r, stream) = (r.clone(), stream.clone());
        async move {
            redis::AsyncCommands::xlen::<_, u64>(&mut r, stream)
                .await
                .unwrap()
                == 0
        }
    })
    .await;
    let there: bool = redis::AsyncCommands::exists(&mut r, sys.keys().session("alice"))
        .await
        .unwrap();
    assert!(
        there,
        "alice's new session was ended by the old one's logout"
    );
    assert_eq!(
        alice.ask(&format!("/join {ROOM}")).await,
        format!("OK JOIN {ROOM}")
    );
}
