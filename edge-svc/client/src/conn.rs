//! TLS connections to the edges: where to connect (the live edges'
//! loads, from `/edges`), one session's lines both ways (used by both
//! modes), and the interactive client's reconnect loop.

use crate::model::{login_retry, reconnect_after};
use bytes::BytesMut;
use edge_svc::frame::{Frame, LineDecoder};
use shared::line::ServerLine;
use shared::placement::{discount, least_loaded, random_below, EdgeLoad};
use shared::protocol::ErrorCode;
use shared::tls::{self, Trust};
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The first wait before connecting again, doubled after each failure up
/// to [`BACKOFF_MAX`]; each wait is cut by a random part of up to half
/// (jitter), so that clients dropped together do not return together.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest server line read; a longer one is left out (with a notice).
pub const MAX_LINE: usize = 64 * 1024;
/// How many lines or events wait in a channel between the tasks.
pub const QUEUE: usize = 256;

/// When a session pings and when it gives up on a silent server.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// After this long without a line sent, a `/ping` goes out, so that the
    /// server's idle timeout (15 minutes by default) does not close the
    /// session.
    pub keepalive: Duration,
    /// After a keepalive `/ping`, the connection is taken for dead when no
    /// line at all arrives within this long.
    pub answer_within: Duration,
    /// How often a logged-in session asks `/edges` (its answer is not
    /// shown), to know where to go next; `None`: the client neither asks
    /// nor places itself by load (nor follows `REDIRECT`).
    pub edges_every: Option<Duration>,
    /// That `/edges` waits until no line has been sent for this long (and
    /// no keepalive `/ping` is unanswered): the answers to the lines
    /// before it, an `ERR` to chat text included, are in by then, so an
    /// `ERR` while it is unanswered is its own (and the flood budget has
    /// refilled).
    pub edges_quiet: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            keepalive: Duration::from_secs(120),
            answer_within: Duration::from_secs(20),
            edges_every: Some(Duration::from_secs(30)),
            edges_quiet: Duration::from_secs(10),
        }
    }
}

/// What the client knows of the edges: their loads as last listed, and
/// the edge a `REDIRECT` named.
#[derive(Debug, Default)]
pub struct Edges {
    pub known: Vec<EdgeLoad>,
    pub hint: Option<String>,
    /// This connection follows a `REDIRECT` given before a login: another
    /// one before this login is not followed (edges that disagree on their
    /// loads cannot send a client back and forth).
    pub redirected: bool,
}

/// Asks the edge at `server` for the live edges (`/edges`) on a
/// connection of its own, closed after the answer.
pub async fn list_edges(server: &str, trust: &Trust) -> Result<Vec<EdgeLoad>, Error> {
    let stream = connect(server, trust).await?;
    let (rd, mut wr) = tokio::io::split(stream);
    wr.write_all(b"/edges\n").await?;
    let mut lines = Reader {
        rd,
        buf: BytesMut::new(),
        decoder: LineDecoder::new(MAX_LINE),
    };
    let mut edges = Vec::new();
    let read = async {
        while let Some(frame) = lines.next().await.map_err(|e| e.to_string())? {
            let Frame::Line(bytes) = frame else { continue };
            match ServerLine::parse(&String::from_utf8_lossy(&bytes)) {
                Ok(ServerLine::Edge { addr, conns }) => edges.push(EdgeLoad { addr, conns }),
                Ok(ServerLine::OkEdges { .. }) => return Ok(()),
                Ok(ServerLine::Err { code, text }) => return Err(format!("{code} {text}")),
                _ => {}
            }
        }
        Err("the connection closed".into())
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, read).await {
        Ok(Ok(())) => {
            let _ = wr.write_all(b"/quit\n").await;
            Ok(edges)
        }
        Ok(Err(why)) => Err(format!("{server}: /edges: {why}").into()),
        Err(_) => Err(format!("{server}: /edges: no answer").into()),
    }
}

/// The live edges, as the first of `servers` that answers lists them
/// (none if none does). The connection that asked is not counted.
pub async fn learn_edges(servers: &[String], trust: &Trust) -> Vec<EdgeLoad> {
    for server in servers {
        if let Ok(mut edges) = list_edges(server, trust).await {
            discount(&mut edges, server);
            return edges;
        }
    }
    Vec::new()
}

/// The order in which to try the edges: the hint of a `REDIRECT` first,
/// then the known edges from the least loaded (ties at random), then the
/// addresses given; the one just lost last (unless hinted).
pub fn attempts(edges: &Edges, given: &[String], lost: Option<&str>) -> VecDeque<String> {
    let mut known: Vec<(u64, u64, &str)> = edges
        .known
        .iter()
        .map(|e| (e.conns, random_below(u64::MAX), e.addr.as_str()))
        .collect();
    known.sort_unstable();
    let mut order: VecDeque<String> = edges.hint.iter().cloned().collect();
    let known = known.iter().map(|(_, _, a)| *a);
    for addr in known.chain(given.iter().map(String::as_str)) {
        if !order.iter().any(|o| o == addr) {
            order.push_back(addr.to_string());
        }
    }
    if let Some(at) = order.iter().position(|a| Some(a.as_str()) == lost) {
        if edges.hint.as_deref() != lost {
            let addr = order.remove(at).unwrap_or_default();
            order.push_back(addr);
        }
    }
    order
}

/// The least-loaded live edge the first of `servers` that answers lists
/// (ties at random), if any.
pub async fn place(servers: &[String], trust: &Trust) -> Option<String> {
    let known = learn_edges(servers, trust).await;
    least_loaded(&known, None).map(|e| e.addr.clone())
}

/// Opens a TLS connection to `server` (`host:port`).
pub async fn connect(server: &str, trust: &Trust) -> Result<TlsStream<TcpStream>, Error> {
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("{server}: a server is host:port"))?;
    let connector = TlsConnector::from(tls::client_config(trust)?);
    let name = tls::server_name(host)?;
    let open = async {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {server} failed: {e}"))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(stream) => Ok(stream?),
        Err(_) => Err(format!("{server}: no answer").into()),
    }
}

/// What a connection tells the interface.
#[derive(Debug, PartialEq, Eq)]
pub enum Net {
    Connected(String),
    Line(String),
    /// Something the client itself has to say.
    Notice(String),
    /// The connection is gone (or could not be opened); the next attempt is
    /// `retry`: (attempt number, delay), or none at all.
    Lost {
        why: String,
        retry: Option<(u32, Duration)>,
    },
    /// The login was refused for good (bad credentials, ...): the client
    /// ends with an error.
    Refused(String),
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed it, after `BYE <reason>` if it said one.
    Closed(Option<String>),
    /// It broke off, or the server stopped answering.
    Broken(String),
    /// The login was answered `ERR <code> <text>`.
    Refused { code: ErrorCode, text: String },
    /// Told to go elsewhere (`REDIRECT`) before the login was answered
    /// (and the login answered since).
    Redirected,
    /// The interface went away.
    Gone,
}

/// A session's resume token (`TOKEN` lines), kept in memory only: the
/// next login of `user` tries `RESUME` with it first, and falls back to
/// the password when it is refused.
#[derive(Debug, Default)]
pub struct Resume {
    pub user: String,
    pub token: Option<String>,
}

/// Keeps a session open: connects to the least-loaded live edge (see
/// [`attempts`]; with [`Timing::edges_every`] `None`, to the servers in
/// turn), sends `login` first (or, once a `TOKEN` came, a `RESUME`), then
/// the lines from `outgoing`, and reports everything on `events`. After a
/// loss it waits (backoff) and tries the next edge, unless the server said
/// `BYE quit` or `BYE logged-in-elsewhere`, or refused the login for good.
/// A `REDIRECT` is followed at once.
pub async fn keep_open(
    servers: Vec<String>,
    trust: Trust,
    login: String,
    timing: Timing,
    mut outgoing: mpsc::Receiver<String>,
    events: mpsc::Sender<Net>,
) {
    let mut edges = Edges::default();
    if timing.edges_every.is_some() {
        edges.known = learn_edges(&servers, &trust).await;
    }
    let mut order = attempts(&edges, &servers, None);
    let mut resume = Resume {
        user: login.split(' ').nth(1).unwrap_or_default().to_string(),
        token: None,
    };
    let mut attempt = 0u32;
    let mut delay = BACKOFF_MIN;
    loop {
        let server = order.pop_front().unwrap_or_else(|| servers[0].clone());
        if order.is_empty() {
            order = attempts(&edges, &servers, Some(&server));
        }
        attempt += 1;
        let why = match connect(&server, &trust).await {
            Err(e) => e.to_string(),
            Ok(stream) => {
                attempt = 0;
                let since = Instant::now();
                // Lines typed for the connection that was lost are not
                // sent on this one before the login.
                let mut dropped = 0;
                while outgoing.try_recv().is_ok() {
                    dropped += 1;
                }
                if dropped > 0 {
                    let text =
                        format!("{dropped} line(s) typed as the connection was lost were not sent");
                    if events.send(Net::Notice(text)).await.is_err() {
                        return;
                    }
                }
                if events.send(Net::Connected(server.clone())).await.is_err() {
                    return;
                }
                let follow = timing.edges_every.is_some().then_some(&mut edges);
                let first = Some(&login[..]);
                let end = session(
                    stream,
                    first,
                    &mut resume,
                    timing,
                    &mut outgoing,
                    &events,
                    follow,
                )
                .await;
                if since.elapsed() > STABLE {
                    delay = BACKOFF_MIN;
                }
                order = attempts(&edges, &servers, Some(&server));
                edges.redirected = end == End::Redirected;
                match end {
                    End::Gone => return,
                    End::Refused { code, text } if !login_retry(code) => {
                        let _ = events.send(Net::Refused(format!("{code} {text}"))).await;
                        return;
                    }
                    End::Refused { code, text } => format!("login failed: {code} {text}"),
                    End::Closed(Some(reason)) if !reconnect_after(&reason) => {
                        let _ = events
                            .send(Net::Lost {
                                why: reason,
                                retry: None,
                            })
                            .await;
                        return;
                    }
                    End::Closed(Some(reason)) => reason,
                    End::Closed(None) => "the server closed the connection".into(),
                    End::Redirected => "redirected".into(),
                    End::Broken(why) => why,
                }
            }
        };
        // Told where to go: at once.
        if let Some(hint) = edges.hint.take() {
            let why = format!("{why}; moving to {hint}");
            let retry = Some((1, Duration::ZERO));
            if events.send(Net::Lost { why, retry }).await.is_err() {
                return;
            }
            continue;
        }
        let wait = jitter(delay);
        let retry = Some((attempt + 1, wait));
        if events.send(Net::Lost { why, retry }).await.is_err() {
            return;
        }
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// `delay` less a random part of up to half of it.
pub fn jitter(delay: Duration) -> Duration {
    let random = RandomState::new().hash_one(());
    delay.mul_f64(1.0 - (random % 1000) as f64 / 2000.0)
}

/// Server lines, at most [`MAX_LINE`] bytes each.
struct Reader<R> {
    rd: R,
    buf: BytesMut,
    decoder: LineDecoder,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next frame; `None` at the end. Cancel-safe: what was read stays
    /// in the buffer.
    async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf) {
                return Ok(Some(frame));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(self.decoder.decode_eof(&mut self.buf));
            }
        }
    }
}

/// One connection, until it ends: sends `login` (if any) first, then the
/// lines from `outgoing`, pings after [`Timing::keepalive`] without a line
/// sent (its `OK PING` is not passed on), and passes the server's lines to
/// `events`. An `ERR` before the `OK LOGIN` ends the session as
/// [`End::Refused`]. When `outgoing` closes, the session goes on until the
/// server closes it or `events` closes.
///
/// With `edges`, it also keeps them up to date: `/edges` every
/// [`Timing::edges_every`] once logged in (the answer is not passed on),
/// and a `REDIRECT` becomes the hint (before the login is answered, it
/// ends the session once the login is answered, that answer not passed
/// on: [`End::Redirected`]; after an `OK LOGIN`, once the rest of its
/// reply is in, the queued `DM` lines passed on and the `TOKEN` kept: the
/// edge counts them delivered).
///
/// `TOKEN` lines are kept in `resume`, not passed on. With a token there,
/// the login is `RESUME` instead; should that be answered
/// `ERR bad-credentials`, the token goes and `login` follows.
pub async fn session(
    stream: TlsStream<TcpStream>,
    login: Option<&str>,
    resume: &mut Resume,
    timing: Timing,
    outgoing: &mut mpsc::Receiver<String>,
    events: &mpsc::Sender<Net>,
    mut edges: Option<&mut Edges>,
) -> End {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = Reader {
        rd,
        buf: BytesMut::new(),
        decoder: LineDecoder::new(MAX_LINE),
    };
    let mut logging_in = login.is_some();
    // A `REDIRECT` came before the login was answered: the session moves
    // once the login is answered here, so that this login, still on its
    // way, cannot land after the one on the next edge and end it.
    let mut moving = false;
    let resuming = login.and(resume.token.as_ref());
    let mut resuming = resuming.map(|t| format!("RESUME {} {t}", resume.user));
    if let Some(first) = resuming.as_deref().or(login) {
        if let Err(e) = wr.write_all(format!("{first}\n").as_bytes()).await {
            return End::Broken(e.to_string());
        }
    }
    let mut bye: Option<String> = None;
    let mut pings = 0usize;
    let mut ping_at = Instant::now() + timing.keepalive;
    // Set while a keepalive ping waits for a sign of life.
    let mut answer_by: Option<Instant> = None;
    let mut input_open = true;
    // `/edges` asked and not yet answered, and the list so far.
    let mut listing = 0usize;
    let mut listed = Vec::new();
    let every = timing.edges_every.filter(|_| edges.is_some());
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut list_at = far;
    loop {
        if !logging_in && list_at == far {
            list_at = every.map_or(far, |e| Instant::now() + e);
        }
        let event = tokio::select! {
            frame = lines.next() => match frame {
                Ok(Some(Frame::Line(bytes))) => {
                    answer_by = None;
                    let line = String::from_utf8_lossy(&bytes).into_owned();
                    // A line that does not parse is passed on as it is.
                    match (ServerLine::parse(&line), edges.as_deref_mut()) {
                        (Ok(ServerLine::Edge { addr, conns }), Some(_)) if listing > 0 => {
                            listed.push(EdgeLoad { addr, conns });
                            continue;
                        }
                        (Ok(ServerLine::OkEdges { .. }), Some(edges)) if listing > 0 => {
                            listing -= 1;
                            edges.known = std::mem::take(&mut listed);
                            continue;
                        }
                        // The list could not be read (Redis away): the
                        // known one stays.
                        (Ok(ServerLine::Err { .. }), Some(_)) if listing > 0 => {
                            listing -= 1;
                            listed.clear();
                            continue;
                        }
                        (Ok(ServerLine::Redirect { addr }), Some(edges)) => {
                            if logging_in && edges.redirected {
                                continue; // followed one already: stay
                            }
                            edges.hint = Some(addr);
                            moving = logging_in;
                            continue;
                        }
                        _ => {}
                    }
                    let answer = ServerLine::parse(&line);
                    if moving && logging_in {
                        match answer {
                            Ok(ServerLine::Err { .. }) => return End::Redirected,
                            // The queued messages and the token follow it,
                            // in the same reply: they are in once a ping
                            // sent now is answered.
                            Ok(ServerLine::OkLogin { .. }) => {
                                if let Err(e) = wr.write_all(b"/ping\n").await {
                                    return End::Broken(e.to_string());
                                }
                                pings += 1;
                                logging_in = false;
                                continue;
                            }
                            _ => {}
                        }
                    }
                    match answer {
                        Ok(ServerLine::OkPing) if pings > 0 => {
                            pings -= 1;
                            if moving && pings == 0 {
                                return End::Redirected;
                            }
                            continue;
                        }
                        Ok(ServerLine::OkLogin { .. }) => logging_in = false,
                        Ok(ServerLine::Token { token, .. }) => {
                            resume.token = Some(token);
                            continue;
                        }
                        Ok(ServerLine::Err { code: ErrorCode::BadCredentials, .. })
                            if logging_in && resuming.take().is_some() =>
                        {
                            resume.token = None;
                            let login = login.unwrap_or_default();
                            if let Err(e) = wr.write_all(format!("{login}\n").as_bytes()).await {
                                return End::Broken(e.to_string());
                            }
                            let text = "the resume token was refused: logging in with the password";
                            if events.send(Net::Notice(text.into())).await.is_err() {
                                return End::Gone;
                            }
                            continue;
                        }
                        Ok(ServerLine::Bye { reason }) => bye = Some(reason),
                        Ok(ServerLine::Err { code, text }) if logging_in => {
                            let _ = events.send(Net::Line(line)).await;
                            return End::Refused { code, text };
                        }
                        _ => {}
                    }
                    Net::Line(line)
                }
                Ok(Some(Frame::TooLong)) => {
                    answer_by = None;
                    Net::Notice(format!("a server line over {MAX_LINE} bytes was left out"))
                }
                // After a `BYE`, however the connection ends.
                Ok(None) => return End::Closed(bye),
                Err(_) if bye.is_some() => return End::Closed(bye),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return End::Broken("the connection broke off".into());
                }
                Err(e) => return End::Broken(e.to_string()),
            },
            line = outgoing.recv(), if input_open => {
                let Some(line) = line else {
                    input_open = false;
                    continue;
                };
                if let Err(e) = wr.write_all(format!("{line}\n").as_bytes()).await {
                    return End::Broken(e.to_string());
                }
                ping_at = Instant::now() + timing.keepalive;
                continue;
            }
            _ = tokio::time::sleep_until(list_at) => {
                // (The last line went out a keepalive before `ping_at`.)
                let quiet_from = ping_at - timing.keepalive + timing.edges_quiet;
                if listing > 0 || pings > 0 || Instant::now() < quiet_from {
                    list_at = quiet_from.max(Instant::now() + timing.edges_quiet);
                    continue;
                }
                if let Err(e) = wr.write_all(b"/edges\n").await {
                    return End::Broken(e.to_string());
                }
                listing += 1;
                list_at = Instant::now() + every.unwrap_or_default();
                continue;
            }
            _ = tokio::time::sleep_until(answer_by.unwrap_or(ping_at)) => {
                if answer_by.is_some() {
                    let secs = timing.answer_within.as_secs_f64();
                    return End::Broken(format!("no answer from the server in {secs} s"));
                }
                if let Err(e) = wr.write_all(b"/ping\n").await {
                    return End::Broken(e.to_string());
                }
                pings += 1;
                let now = Instant::now();
                answer_by = Some(now + timing.answer_within);
                ping_at = now + timing.keepalive;
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return End::Gone;
        }
    }
}
