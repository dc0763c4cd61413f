//! The `abuse` soak: hostile load against a system with its default limits
//! (slow readers asking for long histories, `/who` on a huge room, a
//! reconnect storm, a REGISTER flood), checked against stated bounds.

use crate::load::{self, Error, Reader, Writer, PASSWORD};
use crate::scenarios::{self, Timing, Traffic};
use crate::system::{System, LOAD_USER_COST};
use e2e::usage;
use futures_util::StreamExt;
use serde::Serialize;
use shared::line::ServerLine;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The bounds the soak holds the system to.
pub const RSS_BASE_MB: f64 = 300.0;
pub const RSS_KB_PER_CONNECTION: f64 = 30.0;
pub const PING_P99_MS: f64 = 50.0;
/// The quiet room's p99 during the abuse, as a multiple of its quiet runs
/// (the mean of the one before the abuse and the one after it).
pub const QUIET_FACTOR: f64 = 2.0;

/// How big each kind of abuse is.
const SLOW_READERS: usize = 50;
const HISTORY_LINES: usize = 500;
/// Text of a history line: about the longest a line may be.
const HISTORY_TEXT: usize = 4000;
const CROWD: usize = 20_000;
const WHO_ASKERS: usize = 5;
const STORM: usize = 5_000;
/// Storm clients per source address (127.1.x.y).
const STORM_PER_ADDR: usize = 10;
const REGISTER_TASKS: usize = 20;
/// The quiet rooms: 20 members each, 2 of them sending at this rate in
/// total (within the default per-connection line rate).
const QUIET_RATE: f64 = 20.0;
/// How many quiet rooms: their p99 is over this many times the messages
/// of one, so that it moves less from run to run.
pub const QUIET_ROOMS: usize = 5;

#[derive(Serialize, Default)]
pub struct Abuse {
    pub seconds: f64,
    pub history_requests: u64,
    pub slow_readers_dropped: u64,
    pub who_replies: u64,
    pub who_lines_max: u64,
    pub storm_logins: u64,
    pub storm_failures: u64,
    pub storm_waves: u64,
    pub registers_sent: u64,
    pub registers_ok: u64,
    pub registers_refused: u64,
    pub connections_max: u64,
    pub edge_rss_mb: Vec<f64>,
    pub edge_rss_bound_mb: f64,
    pub ping_p50_ms: f64,
    pub ping_p99_ms: f64,
    pub ping_max_ms: f64,
    pub quiet: Traffic,
    pub quiet_during: Traffic,
    /// The quiet room again, once the abusers have gone and the system has
    /// settled.
    pub quiet_after: Traffic,
    /// The bounds that did not hold (empty: all held).
    pub failed: Vec<String>,
}

#[derive(Default)]
struct Counts {
    history: AtomicU64,
    slow_dropped: AtomicU64,
    who: AtomicU64,
    who_lines_max: AtomicU64,
    logins: AtomicU64,
    login_failures: AtomicU64,
    waves: AtomicU64,
    registers: AtomicU64,
    registers_ok: AtomicU64,
    registers_refused: AtomicU64,
    connections: AtomicU64,
}

/// Runs the soak for `seconds` and checks the bounds; `kinds` names the
/// abuses to run (`slow`, `who`, `storm`, `register`, and `churn`: the
/// storm in waves that all quit at once).
pub async fn abuse(system: &System, seconds: f64, kinds: &[String]) -> Result<Abuse, Error> {
    let wants = |k: &str| kinds.iter().any(|x| x == k);
    prepare(system).await?;
    let timing = Timing {
        warmup_s: 2.0,
        duration_s: seconds,
        drain_s: 5.0,
    };
    eprintln!("  abuse: quiet run");
    let quiet = scenarios::small_rooms(system, "quiet-", QUIET_ROOMS).await?;
    let busy = scenarios::small_rooms(system, "calm-", QUIET_ROOMS).await?;
    let quiet = scenarios::chat_in(system, quiet, timing, QUIET_RATE * QUIET_ROOMS as f64).await?;

    let slow = system.users("slow-", SLOW_READERS, LOAD_USER_COST).await?;
    let askers = system.users("asker-", WHO_ASKERS, LOAD_USER_COST).await?;
    let storm = system.users("storm-", STORM, LOAD_USER_COST).await?;
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let abusers = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("abuser")
        // Under SCHED_IDLE: real attackers bring their own CPU; on this one
        // machine they would otherwise take the cores from the system they
        // attack and from the quiet room's clients, and the soak would
        // measure the generator.
        .on_thread_start(shared::service::idle_thread)
        .build()?;
    let mut tasks = Vec::new();
    for (i, user) in slow.into_iter().enumerate().filter(|_| wants("slow")) {
        let t = (system.target.clone(), counts.clone(), stop.clone());
        tasks.push(abusers.spawn(slow_reader(t.0, i, user, t.1, t.2)));
    }
    for (i, user) in askers.into_iter().enumerate().filter(|_| wants("who")) {
        let t = (system.target.clone(), counts.clone(), stop.clone());
        tasks.push(abusers.spawn(who_asker(t.0, i, user, t.1, t.2)));
    }
    if wants("storm") || wants("churn") {
        let t = (system.target.clone(), counts.clone(), stop.clone());
        let churn = wants("churn");
        tasks.push(abusers.spawn(reconnect_storm(t.0, storm, churn, t.1, t.2)));
    }
    for i in (0..REGISTER_TASKS).filter(|_| wants("register")) {
        let t = (system.target.clone(), counts.clone(), stop.clone());
        tasks.push(abusers.spawn(register_flood(t.0, i, t.1, t.2)));
    }
    let pings = tokio::spawn(ping_redis(system.redis().await?, stop.clone()));
    let edges: Vec<u32> = (0..system.services.count(e2e::Role::Edge))
        .map(|i| system.services.pid(e2e::Role::Edge, i))
        .collect();
    let memory = tokio::spawn(peak_rss(edges, stop.clone()));

    eprintln!("  abuse: {seconds} s of hostile load");
    let started = Instant::now();
    let during = scenarios::chat_in(system, busy, timing, QUIET_RATE * QUIET_ROOMS as f64).await;
    stop.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    abusers.shutdown_background();
    let ping = pings.await?;
    let rss = memory.await?;
    let during = during?;
    eprintln!("  abuse: quiet run after it");
    settle(system).await?;
    let again = scenarios::small_rooms(system, "after-", QUIET_ROOMS).await?;
    let quiet_after =
        scenarios::chat_in(system, again, timing, QUIET_RATE * QUIET_ROOMS as f64).await?;

    let c = &counts;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let connections_max =
        get(&c.connections) + (SLOW_READERS + WHO_ASKERS + 40) as u64 + REGISTER_TASKS as u64;
    let bound = RSS_BASE_MB + RSS_KB_PER_CONNECTION * connections_max as f64 / 1000.0;
    let mb = |b: u64| (b as f64 / 1e5).round() / 10.0;
    let ms = |us: u64| (us as f64 / 100.0).round() / 10.0;
    let mut out = Abuse {
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        history_requests: get(&c.history),
        slow_readers_dropped: get(&c.slow_dropped),
        who_replies: get(&c.who),
        who_lines_max: get(&c.who_lines_max),
        storm_logins: get(&c.logins),
        storm_failures: get(&c.login_failures),
        storm_waves: get(&c.waves),
        registers_sent: get(&c.registers),
        registers_ok: get(&c.registers_ok),
        registers_refused: get(&c.registers_refused),
        connections_max,
        edge_rss_mb: rss.iter().map(|b| mb(*b)).collect(),
        edge_rss_bound_mb: bound.round(),
        ping_p50_ms: ms(ping.value_at_quantile(0.5)),
        ping_p99_ms: ms(ping.value_at_quantile(0.99)),
        ping_max_ms: ms(ping.max()),
        quiet,
        quiet_during: during,
        quiet_after,
        failed: Vec::new(),
    };
    let peak = out.edge_rss_mb.iter().cloned().fold(0.0, f64::max);
    if peak > bound {
        out.failed
            .push(format!("edge memory {peak} MB above {bound:.0} MB"));
    }
    if out.ping_p99_ms > PING_P99_MS {
        out.failed.push(format!(
            "Redis PING p99 {} ms above {PING_P99_MS} ms",
            out.ping_p99_ms
        ));
    }
    let quiet = (out.quiet.p99_ms + out.quiet_after.p99_ms) / 2.0;
    if out.quiet_during.p99_ms > QUIET_FACTOR * quiet {
        out.failed.push(format!(
            "quiet room p99 {} ms above {QUIET_FACTOR} x {quiet:.2} ms",
            out.quiet_during.p99_ms
        ));
    }
    if out.quiet_during.lost > 0 || out.quiet_during.out_of_order > 0 {
        out.failed.push(format!(
            "quiet room lost {} and reordered {}",
            out.quiet_during.lost, out.quiet_during.out_of_order
        ));
    }
    Ok(out)
}

/// Waits (a minute at most) until the abusers' connections have closed and
/// the work they left has been done: the edges count few connections, and
/// the request streams of auth and the routers are empty.
async fn settle(system: &System) -> Result<(), Error> {
    let keys = system.services.keys();
    let partitions = system.services.cfg.partitions;
    let mut conn = system.redis().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // As `/edges` reads them (a count briefly below 0 as 0).
        let edges = shared::store::live_edges(&mut conn, &keys).await?;
        let mut pipe = redis::pipe();
        pipe.xlen(keys.auth_requests());
        for p in 0..partitions {
            pipe.xlen(keys.router_requests(p));
        }
        let queued: Vec<u64> = pipe.query_async(&mut conn).await?;
        let (open, queued) = (
            edges.iter().map(|e| e.conns).sum::<u64>(),
            queued.iter().sum::<u64>(),
        );
        if (open <= 10 && queued == 0) || Instant::now() > deadline {
            eprintln!("  abuse: settled: {open} connections, {queued} requests queued");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A long room history (`history`) and a room of [`CROWD`] members
/// (`crowd`), written straight into Redis.
async fn prepare(system: &System) -> Result<(), Error> {
    let keys = system.services.keys();
    let mut conn = system.redis().await?;
    let text = "x".repeat(HISTORY_TEXT);
    let mut pipe = redis::pipe();
    for _ in 0..HISTORY_LINES {
        pipe.cmd("XADD")
            .arg(keys.history("history"))
            .arg("*")
            .arg("from")
            .arg("filler")
            .arg("text")
            .arg(&text)
            .ignore();
    }
    let () = pipe.query_async(&mut conn).await?;
    let names: Vec<String> = (0..CROWD).map(|i| format!("crowd-{i}")).collect();
    for chunk in names.chunks(1000) {
        let () = redis::cmd("SADD")
            .arg(keys.room("crowd"))
            .arg(chunk)
            .query_async(&mut conn)
            .await?;
    }
    let () = redis::pipe()
        .cmd("HSET")
        .arg(keys.room_sizes())
        .arg("crowd")
        .arg(CROWD)
        .ignore()
        .cmd("SADD")
        .arg(keys.rooms())
        .arg("crowd")
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Source address `n` of the abusers: 127.1.x.y, a host of their own for
/// every few clients.
fn source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8)
}

/// Logs in, joins `history`, and asks for `/history 500` ten times a
/// second while reading at about 80 KB/s; logs in again when dropped.
async fn slow_reader(
    target: load::Target,
    i: usize,
    user: String,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let Ok((mut rd, mut wr)) = load::login_from(&target, i, &user, Some(source(i))).await
        else {
            continue;
        };
        if load::command(&mut rd, &mut wr, "/join history")
            .await
            .is_err()
        {
            continue;
        }
        let ask = async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if wr.send(b"/history 500\n").await.is_err() {
                    break;
                }
                counts.history.fetch_add(1, Ordering::Relaxed);
            }
        };
        let read = async {
            let mut bytes = 0;
            // Until the edge drops it (`BYE too-slow`, or closed outright
            // when even that does not fit).
            while let Ok(Some(line)) = rd.line().await {
                if line.starts_with(b"BYE") {
                    break;
                }
                bytes += line.len();
                if bytes > 8 * 1024 {
                    bytes = 0;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            counts.slow_dropped.fetch_add(1, Ordering::Relaxed);
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ask => {}
            _ = read => {}
        }
    }
}

/// Asks `/who crowd` over and over, one at a time.
async fn who_asker(
    target: load::Target,
    i: usize,
    user: String,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let Ok((mut rd, mut wr)) =
        load::login_from(&target, i, &user, Some(source(SLOW_READERS + i))).await
    else {
        return;
    };
    while !stop.is_cancelled() {
        if wr.send(b"/who crowd\n").await.is_err() {
            return;
        }
        let mut lines = 0;
        loop {
            let line = tokio::select! {
                _ = stop.cancelled() => return,
                l = rd.line() => l,
            };
            let Ok(Some(line)) = line else { return };
            lines += 1;
            if line.starts_with(b"OK WHO") || line.starts_with(b"ERR") {
                break;
            }
        }
        counts.who.fetch_add(1, Ordering::Relaxed);
        counts.who_lines_max.fetch_max(lines, Ordering::Relaxed);
    }
}

/// [`STORM`] clients logging in at once (200 handshakes in flight) and
/// holding on; with `churn`, waves of them, all going away together at the
/// end of each.
async fn reconnect_storm(
    target: load::Target,
    users: Vec<String>,
    churn: bool,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let base = SLOW_READERS + WHO_ASKERS;
    while !stop.is_cancelled() {
        let held: Vec<(Reader, Writer)> = futures_util::stream::iter(0..users.len())
            .map(|i| {
                let (target, counts, stop) = (target.clone(), counts.clone(), stop.clone());
                let user = users[i].clone();
                async move {
                    if stop.is_cancelled() {
                        return None;
                    }
                    let from = source(base + i / STORM_PER_ADDR);
                    let c = load::login_from(&target, i, &user, Some(from)).await;
                    match &c {
                        Ok(_) => counts.logins.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counts.login_failures.fetch_add(1, Ordering::Relaxed),
                    };
                    c.ok()
                }
            })
            .buffer_unordered(200)
            .filter_map(std::future::ready)
            .collect()
            .await;
        counts
            .connections
            .fetch_max(held.len() as u64, Ordering::Relaxed);
        counts.waves.fetch_add(1, Ordering::Relaxed);
        if !churn {
            // Held to the end: they leave with the soak, not in it.
            stop.cancelled().await;
        }
        drop(held);
    }
}

/// New accounts as fast as answers come, each from a fresh connection.
async fn register_flood(
    target: load::Target,
    i: usize,
    counts: Arc<Counts>,
    stop: CancellationToken,
) {
    let from = source(SLOW_READERS + WHO_ASKERS + STORM / STORM_PER_ADDR + i);
    let mut n = 0;
    while !stop.is_cancelled() {
        n += 1;
        let Ok((mut rd, mut wr)) = load::connect_from(&target, i, Some(from)).await else {
            continue;
        };
        let line = format!("REGISTER flood-{i}-{n} {PASSWORD}\n");
        if wr.send(line.as_bytes()).await.is_err() {
            continue;
        }
        counts.registers.fetch_add(1, Ordering::Relaxed);
        match rd.until(|l| matches!(l, ServerLine::OkLogin { .. })).await {
            Ok(_) => counts.registers_ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.registers_refused.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A `PING` to Redis every 10 ms on a connection of its own, timed (µs).
async fn ping_redis(
    mut conn: shared::store::Conn,
    stop: CancellationToken,
) -> hdrhistogram::Histogram<u64> {
    let mut h = load::histogram();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        let started = Instant::now();
        let _: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        let _ = h.record(started.elapsed().as_micros() as u64);
    }
    h
}

/// The highest resident memory of each process, sampled every 200 ms.
async fn peak_rss(pids: Vec<u32>, stop: CancellationToken) -> Vec<u64> {
    let mut peak = vec![0; pids.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !stop.is_cancelled() {
        tick.tick().await;
        for (p, pid) in peak.iter_mut().zip(&pids) {
            *p = (*p).max(usage::rss(*pid));
        }
    }
    peak
}
