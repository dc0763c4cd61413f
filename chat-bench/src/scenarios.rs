//! The named scenarios: `fanout`, `rooms`, `pubsub`, `baseline`, `login`
//! and `connect`.

use crate::load::{self, Error, Live, Reader, Schedule, Seen, Sink, Tally, Window, Writer};
use crate::system::{System, LOAD_USER_COST};
use e2e::usage;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long each measured run lasts.
#[derive(Clone, Copy, Serialize)]
pub struct Timing {
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Longest wait, after the senders stop, for deliveries in flight.
    pub drain_s: f64,
}

/// One measured run of a traffic scenario.
#[derive(Serialize, Clone, Default)]
pub struct Traffic {
    pub scenario: String,
    pub clients: usize,
    pub senders: usize,
    pub offered_msgs_per_s: f64,
    pub sent: u64,
    /// Messages sent per second (warm-up included): below the offered
    /// rate when the senders could not keep up.
    pub sent_msgs_per_s: f64,
    /// Deliveries received inside the measured window, per second.
    pub deliveries_per_s: f64,
    pub expected_deliveries: u64,
    pub received: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub disconnected: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// From the first edge's receive stamp to delivery (whole ms).
    pub after_edge_p50_ms: f64,
    pub after_edge_p99_ms: f64,
    /// CPU seconds used per second of sending, by process.
    pub cpu: BTreeMap<String, f64>,
    /// Redis calls per message sent, by command (those at 0.01 or more).
    pub redis_calls_per_msg: BTreeMap<String, f64>,
    /// Redis calls per message sent, all commands, on each server (each
    /// master of a cluster).
    pub redis_calls_per_shard: Vec<f64>,
    /// `CROSSSLOT` errors Redis answered during the run.
    pub cross_slot_errors: u64,
}

/// One traffic run in the making: its clock, counters and stop signal.
pub struct Run {
    pub window: Window,
    pub live: Arc<Live>,
    pub stop: CancellationToken,
    drain: Duration,
}

impl Run {
    pub fn new(timing: Timing) -> Run {
        Run {
            window: Window::new(
                Duration::from_secs_f64(timing.warmup_s),
                Duration::from_secs_f64(timing.duration_s),
            ),
            live: Arc::default(),
            stop: CancellationToken::new(),
            drain: Duration::from_secs_f64(timing.drain_s),
        }
    }

    pub fn tally(&self, senders: usize) -> Tally {
        Tally::new(self.window, senders, self.live.clone())
    }

    /// Receives room lines and publications on a chat connection.
    pub fn receive(&self, rd: Reader, senders: usize) -> JoinHandle<Tally> {
        tokio::spawn(load::receive(rd, self.tally(senders), self.stop.clone()))
    }
}

/// What a run measures besides its clients.
pub enum Against<'a> {
    /// Our system: its processes' CPU, and its Redis's calls.
    System(&'a System),
    /// Another server's processes (name, pid): their CPU only.
    Processes(Vec<(String, u32)>),
}

impl Against<'_> {
    fn pids(&self) -> Vec<(String, u32)> {
        match self {
            Against::System(system) => system.pids(),
            Against::Processes(pids) => pids.clone(),
        }
    }

    async fn command_calls(&self) -> Vec<Vec<(String, u64)>> {
        match self {
            Against::System(system) => system.command_calls().await,
            Against::Processes(_) => Vec::new(),
        }
    }

    async fn cross_slot_errors(&self) -> u64 {
        match self {
            Against::System(system) => system.cross_slot_errors().await,
            Against::Processes(_) => 0,
        }
    }
}

/// What a traffic run is, for its row in the report.
pub struct Meta {
    pub scenario: String,
    pub clients: usize,
    pub rate: f64,
    pub format: load::Format,
    /// How many clients hear each sender slot.
    pub listeners: Vec<u64>,
}

/// Sends from `sinks` at `meta.rate` in total, waits for what is in flight,
/// and adds up what the receivers saw.
pub async fn measure<S: Sink + Send + 'static>(
    against: Against<'_>,
    run: Run,
    receivers: Vec<JoinHandle<Tally>>,
    sinks: Vec<S>,
    meta: Meta,
) -> Result<Traffic, Error> {
    let senders = sinks.len();
    let pids = against.pids();
    let cpu_before = cpu_now(&pids);
    let calls_before = against.command_calls().await;
    let cross_slot_before = against.cross_slot_errors().await;
    let started = Instant::now();
    let per_sec = meta.rate / senders as f64;
    let sending: Vec<_> = sinks
        .into_iter()
        .enumerate()
        .map(|(slot, mut sink)| {
            let schedule = Schedule {
                slot,
                phase: slot as f64 / senders as f64,
                per_sec,
                window: run.window,
                format: meta.format,
            };
            let live = run.live.clone();
            tokio::spawn(async move {
                let sent = schedule.run(&mut sink, &live).await;
                (sent, sink)
            })
        })
        .collect();
    let shown = CancellationToken::new();
    let label = format!("{} {:.0} msg/s", meta.scenario, meta.rate);
    tokio::spawn(progress(label, run.live.clone(), run.window, shown.clone()));

    let mut sent = Vec::new();
    let mut keep = Vec::new(); // connections stay open until the end
    for s in sending {
        let (n, sink) = s.await?;
        sent.push(n);
        keep.push(sink);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_since(&cpu_before, &pids, seconds);
    let total_sent: u64 = sent.iter().sum();
    let expected: u64 = sent.iter().zip(&meta.listeners).map(|(s, l)| s * l).sum();
    let drained_by = Instant::now() + run.drain;
    while run.live.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read once everything sent has been routed.
    let calls_after = against.command_calls().await;
    let cross_slot = against.cross_slot_errors().await - cross_slot_before;
    let shards: Vec<BTreeMap<String, f64>> = calls_before
        .iter()
        .zip(&calls_after)
        .map(|(b, a)| calls_per(b, a, total_sent))
        .collect();
    let mut calls = BTreeMap::new();
    for shard in &shards {
        for (cmd, n) in shard {
            *calls.entry(cmd.clone()).or_insert(0.0) += n;
        }
    }
    // Every command of each server, per message (one entry on one Redis).
    let per_shard: Vec<f64> = shards
        .iter()
        .map(|s| (s.values().sum::<f64>() * 100.0).round() / 100.0)
        .collect();
    run.stop.cancel();
    shown.cancel();

    let mut latency = load::histogram();
    let mut after_edge = load::histogram();
    let mut t = Traffic {
        scenario: meta.scenario,
        clients: meta.clients,
        senders,
        offered_msgs_per_s: meta.rate,
        sent: total_sent,
        sent_msgs_per_s: (total_sent as f64 / (run.window.to as f64 / 1e6)).round(),
        expected_deliveries: expected,
        cpu,
        redis_calls_per_msg: calls,
        redis_calls_per_shard: per_shard,
        cross_slot_errors: cross_slot,
        ..Traffic::default()
    };
    let mut measured = 0;
    for r in receivers {
        let tally = r.await?;
        latency.add(&tally.latency)?;
        after_edge.add(&tally.after_edge)?;
        measured += tally.measured;
        t.received += tally.received;
        t.out_of_order += tally.out_of_order;
        t.disconnected += usize::from(tally.closed);
    }
    drop(keep);
    // A duplicate counts as reordered, so it cannot hide a loss unseen.
    t.lost = expected.saturating_sub(t.received);
    t.deliveries_per_s = (measured as f64 / run.window.seconds()).round();
    let ms = |v: u64| (v as f64 / 1000.0 * 100.0).round() / 100.0;
    t.p50_ms = ms(latency.value_at_quantile(0.5));
    t.p99_ms = ms(latency.value_at_quantile(0.99));
    t.p999_ms = ms(latency.value_at_quantile(0.999));
    t.max_ms = ms(latency.max());
    if !after_edge.is_empty() {
        t.after_edge_p50_ms = ms(after_edge.value_at_quantile(0.5));
        t.after_edge_p99_ms = ms(after_edge.value_at_quantile(0.99));
    }
    Ok(t)
}

/// Progress on standard error while a run goes on.
async fn progress(label: String, live: Arc<Live>, window: Window, stop: CancellationToken) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = window.now();
        let phase = match now {
            n if n < window.from => "warm-up",
            n if n < window.to => "measuring",
            _ => "draining",
        };
        eprint!(
            "\r  {label}: {:5.1}s {phase:9} sent {:>9} delivered {:>11} ",
            now as f64 / 1e6,
            live.sent.load(Ordering::Relaxed),
            live.delivered.load(Ordering::Relaxed)
        );
        let _ = std::io::stderr().flush();
    }
    eprint!("\r{:100}\r", "");
}

fn cpu_now(pids: &[(String, u32)]) -> Vec<(String, f64)> {
    pids.iter()
        .map(|(name, pid)| (name.clone(), usage::cpu_seconds(*pid)))
        .chain(usage::idle_and_stolen())
        .collect()
}

fn cpu_since(
    before: &[(String, f64)],
    pids: &[(String, u32)],
    seconds: f64,
) -> BTreeMap<String, f64> {
    cpu_now(pids)
        .into_iter()
        .zip(before)
        .map(|((name, after), (_, b))| (name, ((after - b) / seconds * 100.0).round() / 100.0))
        .collect()
}

fn calls_per(before: &[(String, u64)], after: &[(String, u64)], per: u64) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(cmd, n)| {
            let b = before.iter().find(|(c, _)| c == cmd).map_or(0, |(_, n)| *n);
            let v = n.saturating_sub(b) as f64 / per.max(1) as f64;
            (v >= 0.01).then(|| (cmd.clone(), (v * 100.0).round() / 100.0))
        })
        .collect()
}

/// Logs in `users` (from source address `from(i)`, or the default) and has
/// each send command `setup(i)` (if any) and wait for its reply.
async fn clients(
    system: &System,
    users: &[String],
    from: impl Fn(usize) -> Option<Ipv4Addr>,
    setup: impl Fn(usize) -> Option<String>,
) -> Result<Vec<(Reader, Writer)>, Error> {
    let mut conns = load::login_all(&system.target, users, from, 64).await?;
    let jobs = conns.iter_mut().enumerate().filter_map(|(i, (rd, wr))| {
        setup(i).map(|line| async move { load::command(rd, wr, &line).await })
    });
    futures_util::stream::iter(jobs)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, Error>>()?;
    Ok(conns)
}

/// Splits connections into receivers (all) and the writers of `senders`.
fn split(
    run: &Run,
    conns: Vec<(Reader, Writer)>,
    senders: &[usize],
) -> (Vec<JoinHandle<Tally>>, Vec<Writer>) {
    let mut receivers = Vec::new();
    let mut writers: Vec<Option<Writer>> = Vec::new();
    for (rd, wr) in conns {
        receivers.push(run.receive(rd, senders.len()));
        writers.push(Some(wr));
    }
    let sinks = senders.iter().filter_map(|&i| writers[i].take()).collect();
    (receivers, sinks)
}

/// `fanout`: `clients` in one room across all edges, `senders` of them
/// sending.
pub async fn fanout(
    system: &System,
    clients: usize,
    senders: usize,
    rate: f64,
    timing: Timing,
) -> Result<Traffic, Error> {
    in_rooms(system, "fanout", clients, 1, senders, rate, timing).await
}

/// `rooms`: `clients` in `rooms` rooms of equal size, one sender in each.
pub async fn rooms(
    system: &System,
    clients: usize,
    rooms: usize,
    rate: f64,
    timing: Timing,
) -> Result<Traffic, Error> {
    in_rooms(system, "rooms", clients, rooms, rooms, rate, timing).await
}

/// Client `i` (user `<scenario>-<i>`, on edge `i % edges`) is in room
/// number `i % rooms`; clients `0..senders` send.
async fn in_rooms(
    system: &System,
    scenario: &str,
    clients: usize,
    rooms: usize,
    senders: usize,
    rate: f64,
    timing: Timing,
) -> Result<Traffic, Error> {
    // Rooms new to each run: a late delivery of the last run cannot land
    // in this one.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let nth = RUNS.fetch_add(1, Ordering::Relaxed);
    system.flush_history().await?;
    let users = system
        .users(&format!("{scenario}-"), clients, LOAD_USER_COST)
        .await?;
    let conns = self::clients(
        system,
        &users,
        |_| None,
        |i| Some(format!("/join {scenario}{nth}-{}", i % rooms)),
    )
    .await?;
    let run = Run::new(timing);
    let who: Vec<usize> = (0..senders).collect();
    let (receivers, sinks) = split(&run, conns, &who);
    let meta = Meta {
        scenario: scenario.into(),
        clients,
        rate,
        format: load::say,
        listeners: vec![(clients / rooms) as u64; senders],
    };
    measure(Against::System(system), run, receivers, sinks, meta).await
}

/// `publishers`, each followed by `per` subscribers.
pub async fn pubsub(
    system: &System,
    publishers: usize,
    per: usize,
    rate: f64,
    timing: Timing,
) -> Result<Traffic, Error> {
    let pubs = system.users("pub-", publishers, LOAD_USER_COST).await?;
    let subs = system
        .users("sub-", publishers * per, LOAD_USER_COST)
        .await?;
    let mut users = pubs.clone();
    users.extend(subs);
    let conns = self::clients(
        system,
        &users,
        |_| None,
        |i| (i >= publishers).then(|| format!("/subscribe pub-{}", i % publishers)),
    )
    .await?;
    let run = Run::new(timing);
    let who: Vec<usize> = (0..publishers).collect();
    let (receivers, sinks) = split(&run, conns, &who);
    let meta = Meta {
        scenario: "pubsub".into(),
        clients: users.len(),
        rate,
        format: load::publish,
        listeners: vec![per as u64; publishers],
    };
    measure(Against::System(system), run, receivers, sinks, meta).await
}

/// A publisher straight to Redis: `PUBLISH` per line, one round trip per
/// batch.
struct RedisSink {
    conn: redis::aio::MultiplexedConnection,
    channel: String,
}

impl Sink for RedisSink {
    async fn put(&mut self, batch: Vec<u8>) -> bool {
        let mut pipe = redis::pipe();
        for line in batch.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            pipe.publish(&self.channel, line).ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await.is_ok()
    }
}

fn baseline_line(slot: usize, seq: u64, sent: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = writeln!(out, "redis {slot} {seq} {sent}");
}

/// The fan-out of `fanout` done with Redis Pub/Sub alone: `clients`
/// subscriber connections, `senders` publishing connections.
pub async fn baseline(
    system: &System,
    clients: usize,
    senders: usize,
    rate: f64,
    timing: Timing,
) -> Result<Traffic, Error> {
    let client = system.services.redis_client()?;
    let channel = "bench:baseline".to_string();
    let mut subscribers = Vec::new();
    for _ in 0..clients {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        subscribers.push(pubsub);
    }
    let mut sinks = Vec::new();
    for _ in 0..senders {
        sinks.push(RedisSink {
            conn: client.get_multiplexed_async_connection().await?,
            channel: channel.clone(),
        });
    }
    // The clock starts once everyone is connected.
    let run = Run::new(timing);
    let mut receivers = Vec::new();
    for pubsub in subscribers {
        let mut tally = run.tally(senders);
        let stop = run.stop.clone();
        receivers.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            loop {
                let m = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = messages.next() => m,
                };
                let Some(m) = m else {
                    tally.closed = true;
                    break;
                };
                if let Some((slot, seq, sent)) = m
                    .get_payload_bytes()
                    .strip_prefix(b"redis ")
                    .and_then(load::payload)
                {
                    let now = tally.window.now();
                    tally.on(slot, seq, sent, now, None);
                    tally.report();
                }
            }
            tally
        }));
    }
    let meta = Meta {
        scenario: "baseline".into(),
        clients,
        rate,
        format: baseline_line,
        listeners: vec![clients as u64; senders],
    };
    measure(Against::System(system), run, receivers, sinks, meta).await
}

#[derive(Serialize, Default)]
pub struct Connect {
    pub requested: usize,
    pub held: usize,
    pub edge_rss_before_mb: f64,
    pub edge_rss_after_mb: f64,
    pub kb_per_connection: f64,
    pub seconds_to_connect: f64,
    /// Connections held on each edge (`edge-1`, ...): every client went
    /// through edge 1's address and placed itself as `chat` does.
    pub per_edge: Vec<usize>,
    /// Connections that answered a `/ping` sent to all at the end.
    pub answering: u64,
    /// Connections the server closed meanwhile.
    pub closed: u64,
}

/// Reads a held connection (every login is announced to the lobby, so
/// idle connections still receive: read in place, not parsed) and counts
/// `OK PING` and `BYE`.
async fn drain(mut rd: Reader, pongs: Arc<AtomicU64>, closed: Arc<AtomicU64>) {
    while let Ok(Some(line)) = rd.line().await {
        if line == b"OK PING" {
            pongs.fetch_add(1, Ordering::Relaxed);
        } else if load::seen(&line) == Seen::Bye {
            break;
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

/// `n` idle logged-in connections, all through the first edge's address,
/// each placing itself on the least-loaded edge (`/edges`) as `chat` does.
pub async fn connect(system: &System, n: usize) -> Result<Connect, Error> {
    let users = system.users("idle-", n, LOAD_USER_COST).await?;
    let pid = system.services.pid(e2e::Role::Edge, 0);
    let before = usage::rss(pid);
    let started = Instant::now();
    let target = &system.target;
    let (done, pongs, closed) = (
        Arc::<AtomicU64>::default(),
        Arc::<AtomicU64>::default(),
        Arc::<AtomicU64>::default(),
    );
    let shown = CancellationToken::new();
    tokio::spawn(count_up("connect", done.clone(), shown.clone()));
    let mut drains = Vec::new();
    let mut per_edge = vec![0; target.edges.len()];
    let mut writers: Vec<Writer> = futures_util::stream::iter(users.iter())
        .map(|u| async move { load::login_placed(target, 0, u).await })
        .buffer_unordered(64)
        .filter_map(|c| {
            done.fetch_add(1, Ordering::Relaxed);
            let c = c.ok().map(|(rd, wr, on)| {
                per_edge[on] += 1;
                drains.push(tokio::spawn(drain(rd, pongs.clone(), closed.clone())));
                wr
            });
            async move { c }
        })
        .collect()
        .await;
    shown.cancel();
    let seconds_to_connect = started.elapsed().as_secs_f64();
    // Let the edge settle (queues drained, allocator) before reading.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = usage::rss(pid);
    for wr in &mut writers {
        let _ = wr.send(b"/ping\n").await;
    }
    let until = Instant::now() + Duration::from_secs(30);
    while pongs.load(Ordering::Relaxed) + closed.load(Ordering::Relaxed) < writers.len() as u64
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mb = |b: u64| (b as f64 / 1e5).round() / 10.0;
    let held = writers.len();
    // The memory measured is edge 1's, for the connections it holds.
    let on_first = per_edge.first().copied().unwrap_or(held);
    drop(writers);
    for d in drains {
        d.abort();
    }
    Ok(Connect {
        requested: n,
        held,
        edge_rss_before_mb: mb(before),
        edge_rss_after_mb: mb(after),
        kb_per_connection: ((after.saturating_sub(before)) as f64 / on_first.max(1) as f64 / 100.0)
            .round()
            / 10.0,
        seconds_to_connect: round1(seconds_to_connect),
        per_edge,
        answering: pongs.load(Ordering::Relaxed),
        closed: closed.load(Ordering::Relaxed),
    })
}

async fn count_up(label: &str, n: Arc<AtomicU64>, stop: CancellationToken) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        eprint!("\r  {label}: {:>7} ", n.load(Ordering::Relaxed));
        let _ = std::io::stderr().flush();
    }
    eprint!("\r{:60}\r", "");
}

#[derive(Serialize, Default)]
pub struct Login {
    pub bcrypt_cost: u32,
    pub cores: usize,
    /// `bcrypt::verify` per second on every core, in this process.
    pub bcrypt_verifies_per_s: f64,
    /// Logins per second through the system, by auth-svc instances.
    pub logins_per_s: BTreeMap<String, f64>,
    pub share_of_bcrypt: f64,
    pub failed: u64,
    /// A small room's latency, quiet and during the login storm.
    pub chat_quiet: Traffic,
    pub chat_during_storm: Traffic,
}

/// Logins per second at the configured bcrypt cost, with one and then two
/// auth-svc instances; and a small room chatting through a login storm.
pub async fn login(system: &mut System, parallel: usize, timing: Timing) -> Result<Login, Error> {
    let cost = system.services.cfg.auth.bcrypt_cost;
    let users = system.users("login-", parallel, cost).await?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = Login {
        bcrypt_cost: cost,
        cores,
        ..Login::default()
    };
    out.bcrypt_verifies_per_s = bcrypt_rate(cost, cores, Duration::from_secs(3)).await?.0;

    // Both rooms log in first: a login storm delays other logins too.
    let quiet = small_rooms(system, "quiet-", 1).await?;
    let busy = small_rooms(system, "busy-", 1).await?;
    out.chat_quiet = chat_in(system, quiet, timing, 200.0).await?;
    let (rate, failed) = storm(system, &users, timing).await?;
    out.logins_per_s.insert("1".into(), rate);
    out.failed += failed;
    let (logins, chat) = tokio::join!(
        storm(system, &users, timing),
        chat_in(system, busy, timing, 200.0)
    );
    let (rate, failed) = logins?;
    out.chat_during_storm = chat?;
    out.logins_per_s
        .insert("1, with chat going on".into(), rate);
    out.failed += failed;
    system.services.add(e2e::Role::Auth).await;
    // The new instance joins the consumer group as it starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rate, failed) = storm(system, &users, timing).await?;
    out.logins_per_s.insert("2".into(), rate);
    out.failed += failed;
    out.share_of_bcrypt =
        ((out.logins_per_s["1"] / out.bcrypt_verifies_per_s) * 100.0).round() / 100.0;
    Ok(out)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// 20 users of `prefix` logged in, in each of `rooms` rooms of their own.
pub(crate) async fn small_rooms(
    system: &System,
    prefix: &str,
    rooms: usize,
) -> Result<Vec<(Reader, Writer)>, Error> {
    let users = system.users(prefix, 20 * rooms, LOAD_USER_COST).await?;
    let base = prefix.trim_end_matches('-');
    // Each room from an address of its own (127.0.2.x): the edges'
    // default limits allow 64 connections from one address.
    let from = |i: usize| Some(Ipv4Addr::new(127, 0, 2, (i / 20 + 1) as u8));
    clients(system, &users, from, |i| {
        Some(format!("/join {base}room{}", i / 20))
    })
    .await
}

/// In each room of [`small_rooms`], 2 of the 20 send, half their interval
/// apart; `rate` messages per second in all.
pub(crate) async fn chat_in(
    system: &System,
    conns: Vec<(Reader, Writer)>,
    timing: Timing,
    rate: f64,
) -> Result<Traffic, Error> {
    let rooms = conns.len() / 20;
    // Senders spread over the interval in this order: each room's second
    // sender is half an interval after its first.
    let who: Vec<usize> = (0..rooms)
        .map(|r| 20 * r)
        .chain((0..rooms).map(|r| 20 * r + 10))
        .collect();
    let clients = conns.len();
    let run = Run::new(timing);
    let (receivers, sinks) = split(&run, conns, &who);
    let meta = Meta {
        scenario: "chat".into(),
        clients,
        rate,
        format: load::say,
        listeners: vec![20; who.len()],
    };
    measure(Against::System(system), run, receivers, sinks, meta).await
}

/// Every user logs in over and over (a new connection each time) through
/// `timing`'s warm-up and window; returns logins per second that ended
/// inside the window, and failures.
async fn storm(system: &System, users: &[String], timing: Timing) -> Result<(f64, u64), Error> {
    let started = Instant::now();
    let from = started + Duration::from_secs_f64(timing.warmup_s);
    let until = from + Duration::from_secs_f64(timing.duration_s);
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let (target, user) = (system.target.clone(), user.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < until {
                    let result = load::login(&target, i, &user).await;
                    let now = Instant::now();
                    match result {
                        Ok(_) if now >= from && now < until => ok += 1,
                        Ok(_) => {}
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await?;
        ok += o;
        failed += f;
    }
    Ok((round1(ok as f64 / timing.duration_s), failed))
}

/// `bcrypt::verify` per second with `threads` threads at `cost`, and per
/// second of CPU this process used meanwhile (whatever else the machine
/// runs).
async fn bcrypt_rate(cost: u32, threads: usize, time: Duration) -> Result<(f64, f64), Error> {
    let hash = bcrypt::hash(load::PASSWORD, cost)?;
    let cpu = usage::cpu_seconds(std::process::id());
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let hash = hash.clone();
            tokio::task::spawn_blocking(move || {
                let mut n = 0u64;
                while started.elapsed() < time {
                    let _ = bcrypt::verify(load::PASSWORD, &hash);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await?;
    }
    let cpu = usage::cpu_seconds(std::process::id()) - cpu;
    Ok((
        round1(total as f64 / started.elapsed().as_secs_f64()),
        round1(total as f64 / cpu.max(0.01)),
    ))
}

/// The `logins` scenario: a login storm of ten times what bcrypt can check.
#[derive(Serialize, Default)]
pub struct Logins {
    pub bcrypt_cost: u32,
    /// `bcrypt::verify` per second of CPU, and that times the cores: what
    /// auth-svc could check at best (measured per CPU second, so that other
    /// tenants of the machine do not change it).
    pub bcrypt_per_core_s: f64,
    pub bcrypt_per_s: f64,
    /// Logins offered per second (each on a new TLS connection), and for
    /// how long the measured part lasted.
    pub offered_per_s: f64,
    pub seconds: f64,
    /// Logins offered in the measured window that succeeded, per second,
    /// and as a share of `bcrypt_per_s`.
    pub ok_per_s: f64,
    pub share_of_bcrypt: f64,
    /// The cores auth-svc had during the storm (the machine's others went
    /// to the edges, Redis, the generator and other tenants), and the share
    /// of bcrypt's rate on that many cores that succeeded.
    pub auth_cores: f64,
    pub share_of_auth_cores: f64,
    /// Of the logins offered in the window: `ERR unavailable` (the edge's
    /// deadline passed), other errors, and no answer at all.
    pub offered: u64,
    pub unavailable: u64,
    pub other_errors: u64,
    /// From a successful login's due time to its `OK LOGIN`.
    pub ok_p50_ms: f64,
    pub ok_p99_ms: f64,
    pub ok_max_ms: f64,
    /// A small room's latency, quiet and during the storm.
    pub chat_quiet: Traffic,
    pub chat_during_storm: Traffic,
}

/// bcrypt's rate on every core, then ten times that rate of logins for
/// `seconds` (after a warm-up as long as the edge's wait, so that the
/// storm's backlog has built up) while a room of 20 chats.
pub async fn logins(system: &System, seconds: f64) -> Result<Logins, Error> {
    let cfg = &system.services.cfg;
    let cost = cfg.auth.bcrypt_cost;
    let (_, per_core) = bcrypt_rate(cost, crate::cores(), Duration::from_secs(3)).await?;
    let bcrypt_per_s = round1(per_core * crate::cores() as f64);
    let offered_per_s = round1(10.0 * bcrypt_per_s);
    let timing = Timing {
        warmup_s: cfg.edge.request_timeout_ms as f64 / 1000.0,
        duration_s: seconds,
        drain_s: 5.0,
    };
    // Enough users that none logs in again while its last login runs.
    let wait_s = timing.warmup_s + 1.0;
    let n = (offered_per_s * wait_s * 2.0).ceil() as usize + 10;
    let users = system.users("storm-", n, cost).await?;
    let quiet = small_rooms(system, "calm-", 1).await?;
    let busy = small_rooms(system, "storm-room-", 1).await?;
    let chat_quiet = chat_in(system, quiet, timing, 200.0).await?;
    let (storm, chat) = tokio::join!(
        offer_logins(system, &users, offered_per_s, timing),
        chat_in(system, busy, timing, 200.0)
    );
    let mut out = storm?;
    out.bcrypt_cost = cost;
    out.bcrypt_per_core_s = per_core;
    out.bcrypt_per_s = bcrypt_per_s;
    out.share_of_bcrypt = (out.ok_per_s / bcrypt_per_s * 100.0).round() / 100.0;
    out.chat_quiet = chat_quiet;
    out.chat_during_storm = chat?;
    out.auth_cores = out
        .chat_during_storm
        .cpu
        .get("auth-1")
        .copied()
        .unwrap_or(0.0);
    if out.auth_cores > 0.0 {
        out.share_of_auth_cores =
            (out.ok_per_s / (per_core * out.auth_cores) * 100.0).round() / 100.0;
    }
    Ok(out)
}

/// Logins at `rate` per second, each due at its time whatever the others
/// do (a new connection each, to `users` in turn), through `timing`'s
/// warm-up and window; counts those due inside the window.
async fn offer_logins(
    system: &System,
    users: &[String],
    rate: f64,
    timing: Timing,
) -> Result<Logins, Error> {
    let started = Instant::now();
    let from = started + Duration::from_secs_f64(timing.warmup_s);
    let until = from + Duration::from_secs_f64(timing.duration_s);
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0.. {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if due >= until {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let (target, user) = (system.target.clone(), users[i % users.len()].clone());
        attempts.spawn(async move {
            let result = load::login(&target, i, &user).await.map(drop);
            (due, Instant::now(), result.map_err(|e| e.to_string()))
        });
    }
    let mut out = Logins {
        offered_per_s: rate,
        seconds: timing.duration_s,
        ..Logins::default()
    };
    let mut ok = load::histogram();
    while let Some(done) = attempts.join_next().await {
        let (due, at, result) = done?;
        if due < from {
            continue;
        }
        out.offered += 1;
        match result {
            Ok(()) => ok.record((at - due).as_micros() as u64)?,
            Err(e) if e.starts_with("ERR unavailable") => out.unavailable += 1,
            Err(_) => out.other_errors += 1,
        }
    }
    let ms = |us: u64| round1(us as f64 / 1000.0);
    out.ok_per_s = round1(ok.len() as f64 / timing.duration_s);
    out.ok_p50_ms = ms(ok.value_at_quantile(0.5));
    out.ok_p99_ms = ms(ok.value_at_quantile(0.99));
    out.ok_max_ms = ms(ok.max());
    Ok(out)
}
