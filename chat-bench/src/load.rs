//! The load itself: logged-in TLS clients, senders at a fixed offered rate,
//! and receivers that check every delivery for loss and order and record
//! its latency.

use hdrhistogram::Histogram;
use shared::consumer::EntryId;
use shared::line::ServerLine;
use shared::placement::{discount, least_loaded, EdgeLoad};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// The password of every prepared user.
pub const PASSWORD: &str = "bench-password";
/// Longest wait for one reply while setting up.
const SETUP_WAIT: Duration = Duration::from_secs(60);
/// One delivery in this many has its "after the edge" time taken (it
/// parses the id): a sample is as good for its quantiles, and cheaper.
const AFTER_EDGE_SAMPLE: u64 = 8;
/// How often senders wake up to send what is due.
const TICK: Duration = Duration::from_millis(2);

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Where the load goes.
#[derive(Clone)]
pub struct Target {
    pub edges: Vec<String>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// The reading side of a connection, with its own buffer so that every
/// complete line a read brought can be handled in one go.
pub struct Reader {
    rd: ReadHalf<TlsStream<TcpStream>>,
    buf: Vec<u8>,
    pos: usize,
}
pub struct Writer(WriteHalf<TlsStream<TcpStream>>);

impl Reader {
    /// Reads more; false at the end.
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(16 * 1024);
        Ok(self.rd.read_buf(&mut self.buf).await? > 0)
    }

    /// The complete lines buffered (terminators included), now consumed.
    fn complete(&mut self) -> &[u8] {
        let start = self.pos;
        match self.buf[start..].iter().rposition(|&b| b == b'\n') {
            Some(i) => {
                self.pos = start + i + 1;
                &self.buf[start..self.pos]
            }
            None => &[],
        }
    }

    /// The next line, without its terminator; `None` at the end.
    pub async fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let mut line = self.buf[self.pos..self.pos + i].to_vec();
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(line));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads up to the first line for which `done` says yes; errors on an
    /// `ERR` or `BYE`, a line outside the protocol, the end, or a long wait.
    pub async fn until(&mut self, done: impl Fn(&ServerLine) -> bool) -> Result<ServerLine, Error> {
        loop {
            let line = tokio::time::timeout(SETUP_WAIT, self.line())
                .await
                .map_err(|_| "no answer in time")??
                .ok_or("connection closed")?;
            let line = ServerLine::parse(std::str::from_utf8(&line)?)?;
            if let ServerLine::Err { .. } | ServerLine::Bye { .. } = line {
                return Err(line.to_string().into());
            }
            if done(&line) {
                return Ok(line);
            }
        }
    }
}

impl Writer {
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await?;
        self.0.flush().await
    }
}

/// A TLS connection to edge `edge`, past its `HELLO`; from source address
/// `from` if given (the abuse soak's clients come from many loopback
/// addresses).
pub async fn connect_from(
    target: &Target,
    edge: usize,
    from: Option<std::net::Ipv4Addr>,
) -> Result<(Reader, Writer), Error> {
    let addr = &target.edges[edge % target.edges.len()];
    let (mut reader, writer) = connect_tls(addr, &target.tls, from).await?;
    reader
        .until(|l| matches!(l, ServerLine::Hello { .. }))
        .await?;
    Ok((reader, writer))
}

/// A TLS connection to `addr` (`host:port`), from source address `from`
/// if given.
pub async fn connect_tls(
    addr: &str,
    tls: &Arc<rustls::ClientConfig>,
    from: Option<std::net::Ipv4Addr>,
) -> Result<(Reader, Writer), Error> {
    let tcp = match from {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((ip, 0).into())?;
            socket.connect(addr.parse()?).await?
        }
    };
    tcp.set_nodelay(true)?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let name = shared::tls::server_name(host)?;
    let tls = TlsConnector::from(tls.clone()).connect(name, tcp).await?;
    let (rd, wr) = tokio::io::split(tls);
    let reader = Reader {
        rd,
        buf: Vec::new(),
        pos: 0,
    };
    Ok((reader, Writer(wr)))
}

/// A logged-in connection as the `chat` client makes one through edge
/// `edge`'s address: it asks that edge for `/edges` and moves to the
/// least-loaded one (itself not counted), as `shared::placement` says.
/// Also returns the index of the edge it ended on.
pub async fn login_placed(
    target: &Target,
    edge: usize,
    user: &str,
) -> Result<(Reader, Writer, usize), Error> {
    let (mut rd, mut wr) = connect_from(target, edge, None).await?;
    wr.send(b"/edges\n").await?;
    let mut edges = Vec::new();
    loop {
        match rd.until(|_| true).await? {
            ServerLine::Edge { addr, conns } => edges.push(EdgeLoad { addr, conns }),
            ServerLine::OkEdges { .. } => break,
            _ => {}
        }
    }
    let asked = &target.edges[edge % target.edges.len()];
    discount(&mut edges, asked);
    let best = least_loaded(&edges, None).map(|e| e.addr.clone());
    let mut on = edge % target.edges.len();
    let moved = best.filter(|b| b != asked);
    if let Some(i) = moved.and_then(|b| target.edges.iter().position(|e| *e == b)) {
        (rd, wr) = connect_from(target, i, None).await?;
        on = i;
    }
    wr.send(format!("LOGIN {user} {PASSWORD}\n").as_bytes())
        .await?;
    rd.until(|l| matches!(l, ServerLine::OkLogin { .. }))
        .await?;
    Ok((rd, wr, on))
}

/// A logged-in connection.
pub async fn login(target: &Target, edge: usize, user: &str) -> Result<(Reader, Writer), Error> {
    login_from(target, edge, user, None).await
}

/// As [`login`], from source address `from`.
pub async fn login_from(
    target: &Target,
    edge: usize,
    user: &str,
    from: Option<std::net::Ipv4Addr>,
) -> Result<(Reader, Writer), Error> {
    let (mut rd, mut wr) = connect_from(target, edge, from).await?;
    wr.send(format!("LOGIN {user} {PASSWORD}\n").as_bytes())
        .await?;
    rd.until(|l| matches!(l, ServerLine::OkLogin { .. }))
        .await?;
    Ok((rd, wr))
}

/// Sends command `line` and waits for its reply (its final line), which
/// must not be an error.
pub async fn command(rd: &mut Reader, wr: &mut Writer, line: &str) -> Result<(), Error> {
    wr.send(format!("{line}\n").as_bytes()).await?;
    rd.until(ServerLine::is_final).await?;
    Ok(())
}

/// Logs in `users[i]` on edge `i % edges` from source address `from(i)`,
/// `parallel` at a time.
pub async fn login_all(
    target: &Target,
    users: &[String],
    from: impl Fn(usize) -> Option<std::net::Ipv4Addr>,
    parallel: usize,
) -> Result<Vec<(Reader, Writer)>, Error> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    stream::iter(users.iter().enumerate())
        .map(|(i, user)| login_from(target, i, user, from(i)))
        .buffered(parallel)
        .try_collect()
        .await
}

/// A latency histogram in microseconds, to 2 significant digits (1%).
/// Every receiver records every delivery in its own: at 3 digits the
/// hundreds of histograms (140 KB each) thrashed the caches and recording
/// took a quarter of the generator's time.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("histogram bounds")
}

/// The shared clock: send times are microseconds since `origin`.
#[derive(Clone, Copy)]
pub struct Window {
    pub origin: Instant,
    /// Deliveries of messages sent in `[from, to)` (µs) are measured.
    pub from: u64,
    pub to: u64,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let from = warmup.as_micros() as u64;
        Window {
            origin: Instant::now(),
            from,
            to: from + duration.as_micros() as u64,
        }
    }

    pub fn now(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    pub fn seconds(&self) -> f64 {
        (self.to - self.from) as f64 / 1e6
    }
}

/// Counts shared by every task, for the progress line and the drain.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
}

/// One receiver's account of what it got.
pub struct Tally {
    pub window: Window,
    /// The next sequence number expected from each sender (by slot).
    next: Vec<u64>,
    pub latency: Histogram<u64>,
    /// From the receiving edge's stamp (the message id) to delivery, in
    /// whole milliseconds: the part of the latency after the first edge.
    /// One delivery in [`AFTER_EDGE_SAMPLE`].
    pub after_edge: Histogram<u64>,
    /// Deliveries received inside the window (the throughput: what was
    /// sent earlier and arrives late counts, what is sent but still queued
    /// does not).
    pub measured: u64,
    pub received: u64,
    /// Messages older than one already received from the same sender
    /// (late, or a duplicate).
    pub out_of_order: u64,
    pub closed: bool,
    live: Arc<Live>,
    /// `received` as last added to `live` (once per read, not per line:
    /// the counter is shared by every receiver).
    reported: u64,
    /// How a line is read: [`seen`], or [`seen_irc`] against an IRC server.
    pub read: fn(&[u8]) -> Seen<'_>,
}

impl Tally {
    pub fn new(window: Window, senders: usize, live: Arc<Live>) -> Tally {
        Tally {
            window,
            next: vec![0; senders],
            latency: histogram(),
            after_edge: histogram(),
            measured: 0,
            received: 0,
            out_of_order: 0,
            closed: false,
            live,
            reported: 0,
            read: seen,
        }
    }

    /// Adds what was received since the last call to the shared count.
    pub fn report(&mut self) {
        let new = self.received - self.reported;
        self.live.delivered.fetch_add(new, Ordering::Relaxed);
        self.reported = self.received;
    }

    /// Notes the deliveries among `lines` (whole lines, each ending in
    /// LF), all read at `now`; false if one was `BYE` (those after it are
    /// left). `memchr` finds the line ends several bytes at a time:
    /// splitting byte by byte cost more than reading the lines.
    pub fn lines(&mut self, lines: &[u8], now: u64, wall_ms: u64) -> bool {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', lines) {
            let line = &lines[start..end];
            start = end + 1;
            match (self.read)(line) {
                Seen::Delivery {
                    id,
                    payload: (slot, seq, sent),
                } => {
                    let sample = self.received % AFTER_EDGE_SAMPLE == 0;
                    let stamp = sample.then(|| stamp(id)).flatten();
                    self.on(slot, seq, sent, now, stamp.map(|s| (s, wall_ms)));
                }
                Seen::Bye => return false,
                Seen::Other => {}
            }
        }
        true
    }

    /// Notes one delivery of message `seq` from sender `slot`, due at
    /// `sent` µs. `now` is [`Window::now`]; `stamp` the message id's ms
    /// and the Unix time in ms (both read once per batch of lines).
    pub fn on(&mut self, slot: usize, seq: u64, sent: u64, now: u64, stamp: Option<(u64, u64)>) {
        self.received += 1;
        let Some(next) = self.next.get_mut(slot) else {
            return;
        };
        if seq >= *next {
            *next = seq + 1;
        } else {
            self.out_of_order += 1;
        }
        if now >= self.window.from && now < self.window.to {
            self.measured += 1;
        }
        if sent >= self.window.from && sent < self.window.to {
            let _ = self.latency.record(now.saturating_sub(sent).max(1));
            if let Some((stamp, wall_ms)) = stamp {
                let _ = self
                    .after_edge
                    .record(wall_ms.saturating_sub(stamp) * 1000 + 1);
            }
        }
    }
}

/// Parses `<slot> <seq> <sent>`, the text of every message the senders
/// send.
pub fn payload(text: &[u8]) -> Option<(usize, u64, u64)> {
    let mut fields = text.splitn(3, |&b| b == b' ');
    let slot = number(fields.next()?)?;
    let seq = number(fields.next()?)?;
    let sent = number(fields.next()?)?;
    Some((slot as usize, seq, sent))
}

/// A decimal number, without going through `str` (this runs for every
/// delivery).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The milliseconds of a message id (`<ms>-<seq>`).
fn stamp(id: &[u8]) -> Option<u64> {
    Some(EntryId::parse(std::str::from_utf8(id).ok()?)?.ms)
}

/// What a receiver makes of a line.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// A room line (`MSG <room> <id> <from> <text>`) or a publication
    /// (`PUB <id> <from> <text>`) whose text is a [`payload`].
    Delivery {
        id: &'a [u8],
        payload: (usize, u64, u64),
    },
    /// `BYE <reason>`: the session is over.
    Bye,
    Other,
}

/// Reads `line` in place. This runs for every delivery, where
/// [`ServerLine::parse`] would allocate every field; the tests check that
/// both read lines alike.
pub fn seen(line: &[u8]) -> Seen<'_> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let id_and_rest = match keyword {
        b"MSG" => word(rest).and_then(|(_room, rest)| word(rest)),
        b"PUB" => word(rest),
        b"BYE" => return Seen::Bye,
        _ => return Seen::Other,
    };
    id_and_rest
        .and_then(|(id, rest)| {
            let (_from, text) = word(rest)?;
            Some(Seen::Delivery {
                id,
                payload: payload(text)?,
            })
        })
        .unwrap_or(Seen::Other)
}

/// The field before the next space (never empty), and what follows it.
fn word(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = rest.iter().position(|&b| b == b' ')?;
    (i > 0).then(|| (&rest[..i], &rest[i + 1..]))
}

/// [`seen`] for an IRC server's lines: `:<nick>!<user>@<host> PRIVMSG
/// <channel> :<text>` (CR LF ended), whose text is a [`payload`]; `ERROR`
/// (the server closing the link) as [`Seen::Bye`]. IRC lines carry no
/// message id: the id is empty.
pub fn seen_irc(line: &[u8]) -> Seen<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.starts_with(b"ERROR ") {
        return Seen::Bye;
    }
    let delivery = line
        .strip_prefix(b":")
        .and_then(word)
        .and_then(|(_source, rest)| rest.strip_prefix(b"PRIVMSG "))
        .and_then(word)
        .and_then(|(_channel, rest)| rest.strip_prefix(b":"))
        .and_then(payload);
    match delivery {
        Some(payload) => Seen::Delivery { id: b"", payload },
        None => Seen::Other,
    }
}

/// Reads deliveries until `stop`: room lines (`MSG <room> <id> <from>
/// <text>`) or publications (`PUB <id> <from> <text>`).
pub async fn receive(mut rd: Reader, mut tally: Tally, stop: CancellationToken) -> Tally {
    loop {
        let more = tokio::select! {
            _ = stop.cancelled() => break,
            more = rd.fill() => more,
        };
        if !matches!(more, Ok(true)) {
            tally.closed = true;
            break;
        }
        let (now, wall_ms) = (tally.window.now(), shared::now_ms());
        let open = tally.lines(rd.complete(), now, wall_ms);
        tally.report();
        if !open {
            tally.closed = true;
            break;
        }
    }
    tally
}

/// How a sender writes message `seq` (sent at `sent` µs) for slot `slot`.
pub type Format = fn(slot: usize, seq: u64, sent: u64, out: &mut Vec<u8>);

pub fn say(slot: usize, seq: u64, sent: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = writeln!(out, "{slot} {seq} {sent}");
}

pub fn publish(slot: usize, seq: u64, sent: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = writeln!(out, "/publish {slot} {seq} {sent}");
}

/// The channel of the IRC fan-out (see `crate::irc`).
pub const IRC_CHANNEL: &str = "#fanout";

pub fn privmsg(slot: usize, seq: u64, sent: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "PRIVMSG {IRC_CHANNEL} :{slot} {seq} {sent}\r\n");
}

/// Where a sender's batches of lines go.
pub trait Sink {
    /// Sends `batch`; false when the connection is gone.
    fn put(&mut self, batch: Vec<u8>) -> impl std::future::Future<Output = bool> + Send;
}

impl Sink for Writer {
    async fn put(&mut self, batch: Vec<u8>) -> bool {
        self.send(&batch).await.is_ok()
    }
}

/// The messages of one sender at `per_sec`, from the start of `window`
/// to its end. A message's send time is when it was due, so a sender that
/// falls behind shows as latency (no coordinated omission).
pub struct Schedule {
    pub slot: usize,
    /// Where in its interval this sender starts (0 to 1): senders spread
    /// out rather than all sending at the same instants.
    pub phase: f64,
    pub per_sec: f64,
    pub window: Window,
    pub format: Format,
}

impl Schedule {
    /// Sends every message when due; returns how many were sent.
    pub async fn run(&self, sink: &mut impl Sink, live: &Live) -> u64 {
        let interval_us = 1e6 / self.per_sec;
        let due = |seq: u64| ((seq as f64 + self.phase) * interval_us) as u64;
        let mut seq = 0u64;
        while due(seq) < self.window.to {
            // Sleep until the next message is due, but wake at most once
            // per TICK: faster senders send what is due in one batch. The
            // last wake is at the window's end, to send what fell due
            // before it.
            let at = due(seq)
                .max(self.window.now() + TICK.as_micros() as u64)
                .min(self.window.to);
            tokio::time::sleep_until((self.window.origin + Duration::from_micros(at)).into()).await;
            let now = self.window.now().min(self.window.to);
            let mut out = Vec::new();
            let mut n = 0;
            while due(seq) < now {
                (self.format)(self.slot, seq, due(seq), &mut out);
                seq += 1;
                n += 1;
            }
            if n > 0 {
                live.sent.fetch_add(n, Ordering::Relaxed);
                if !sink.put(out).await {
                    return seq;
                }
            }
        }
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_takes_the_last_three_fields() {
        assert_eq!(
            seen(b"MSG lobby 1-0 fan-3 2 17 123456"),
            Seen::Delivery {
                id: b"1-0",
                payload: (2, 17, 123456)
            }
        );
        assert_eq!(
            seen(b"PUB 1-0 pub-1 0 5 99"),
            Seen::Delivery {
                id: b"1-0",
                payload: (0, 5, 99)
            }
        );
        assert_eq!(seen(b"MSG lobby 1-0 fan-3 hello"), Seen::Other);
        let Seen::Delivery { id, .. } = seen(b"MSG lobby 17-3 fan-3 2 17 123456") else {
            panic!("a delivery");
        };
        assert_eq!(stamp(id), Some(17));
    }

    /// [`seen`] reads every line as [`ServerLine::parse`] does.
    #[test]
    fn deliveries_are_read_as_server_lines() {
        for line in [
            "MSG lobby 1795426330266-0 fan-3 2 17 123456",
            "MSG room-7 1-12 a 0 0 0",
            "PUB 1795426330266-1 pub-1 0 5 99",
            "MSG lobby 1-0 fan-3 hello there",
            "MSG lobby 1-0 fan-3 1 2 3 4",
            "MSG lobby 1-0 fan-3 1 2",
            "MSG lobby 1-0 fan-3 1 2 99999999999999999999",
            "MSG lobby 1-0 fan-3 ",
            "MSG lobby 1-0 fan-3",
            "MSG lobby 1-0",
            "MSG lobby  1-0 7 8 9",
            "MSG  lobby 1-0 f 7 8 9",
            "MSG",
            "PUB 1-0 pub-1",
            "PUB  1-0 pub-1 1 2 3",
            "DM 1-0 bob 1 2 3",
            "HIST lobby 1-0 bob 1 2 3",
            "SYS lobby bob joined",
            "BYE server-shutdown",
            "BYE",
            "OK PUBLISH 1-0 2",
            "OK PING",
            "ERR rate-limited slow down",
            "HELLO edge-1 chat/1",
            "BYEBYE now",
            "",
        ] {
            let parsed = ServerLine::parse(line);
            let want = match &parsed {
                Ok(ServerLine::Msg { id, text, .. } | ServerLine::Pub { id, text, .. }) => {
                    payload(text.as_bytes()).map_or(Seen::Other, |payload| Seen::Delivery {
                        id: id.as_bytes(),
                        payload,
                    })
                }
                Ok(ServerLine::Bye { .. }) => Seen::Bye,
                _ => Seen::Other,
            };
            assert_eq!(seen(line.as_bytes()), want, "{line:?}");
        }
    }

    #[test]
    fn a_reads_lines_are_split_at_each_end_and_stop_at_bye() {
        let window = Window::new(Duration::ZERO, Duration::from_secs(3600));
        let mut t = Tally::new(window, 2, Arc::default());
        let read = b"MSG lobby 1-0 a 0 0 5\n\nOK PING\nPUB 2-0 b 1 0 6\nMSG lobby 3-0 a 0 1 7\n";
        assert!(t.lines(read, 10, 0));
        assert_eq!((t.received, t.out_of_order), (3, 0));
        assert_eq!(t.next, [2, 1]);
        assert_eq!((t.latency.min(), t.latency.max()), (3, 5));
        assert!(!t.lines(
            b"MSG lobby 4-0 a 0 2 8\nBYE too-slow\nMSG lobby 5-0 a 0 3 9\n",
            10,
            0
        ));
        assert_eq!(t.received, 4, "nothing after BYE");
    }

    #[test]
    fn irc_deliveries_are_read_from_privmsg_lines() {
        let mut sent = Vec::new();
        privmsg(2, 17, 123456, &mut sent);
        assert_eq!(sent, b"PRIVMSG #fanout :2 17 123456\r\n");
        let line = b":fan-3!fan-3@127.0.0.1 PRIVMSG #fanout :2 17 123456\r";
        assert_eq!(
            seen_irc(line),
            Seen::Delivery {
                id: b"",
                payload: (2, 17, 123456)
            }
        );
        for other in [
            &b":irc.bench 001 fan-3 :Welcome\r"[..],
            b":fan-3!f@h PRIVMSG #fanout :hello\r",
            b":fan-3!f@h NOTICE #fanout :2 17 123456\r",
            b"PRIVMSG #fanout :2 17 123456\r",
            b"PING :irc.bench\r",
            b"",
        ] {
            assert_eq!(seen_irc(other), Seen::Other, "{other:?}");
        }
        assert_eq!(seen_irc(b"ERROR :Closing link\r"), Seen::Bye);
        let window = Window::new(Duration::ZERO, Duration::from_secs(3600));
        let mut t = Tally::new(window, 3, Arc::default());
        t.read = seen_irc;
        assert!(t.lines(
            b":a!a@h PRIVMSG #fanout :1 0 5\r\n:a!a@h PRIVMSG #fanout :1 1 6\r\n",
            10,
            0
        ));
        assert_eq!((t.received, t.next[1]), (2, 2));
    }

    #[test]
    fn tally_counts_reordering() {
        let window = Window::new(Duration::ZERO, Duration::from_secs(3600));
        let mut t = Tally::new(window, 2, Arc::default());
        for seq in [0, 1, 3, 2, 4] {
            t.on(0, seq, 1, 2, None);
        }
        t.on(1, 0, 1, 2, None);
        assert_eq!((t.received, t.out_of_order), (6, 1));
        assert_eq!(t.measured, 6);
    }

    #[test]
    fn throughput_counts_arrivals_in_the_window_latency_sends_in_it() {
        let window = Window::new(Duration::from_micros(10), Duration::from_micros(100));
        let mut t = Tally::new(window, 1, Arc::default());
        t.on(0, 0, 5, 20, None); // sent in the warm-up, arrives inside
        t.on(0, 1, 50, 200, None); // sent inside, arrives after
        assert_eq!(t.measured, 1);
        assert_eq!(t.latency.len(), 1);
        assert_eq!(t.latency.max(), 150);
    }
}
