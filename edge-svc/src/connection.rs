//! One client connection: TLS detection and handshake, then a reader that
//! turns lines into commands and a writer that drains the connection's
//! bounded queue.

use crate::ctx::Ctx;
use crate::error::{EdgeError, Phase};
use crate::frame::{Frame, LineDecoder};
use crate::hub::{Closer, Out, Session};
use crate::limits::{Bucket, Mistakes, Slot};
use bytes::BytesMut;
use shared::envelope::{Effect, Op, Request, Secret};
use shared::protocol::{self, err_line, Command, ErrorCode, HistoryTarget, ProtoError};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
const TLS_REQUIRED: &str = "ERR tls-required this port speaks TLS only\n";
const TOO_MANY: &str = "ERR rate-limited too many connections, try again later\n";
/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// The write buffer's first size.
const WRITE_BUF: usize = 4 * 1024;

/// Runs `fut` with a deadline; the error names the phase.
pub(crate) async fn within<T>(
    phase: Phase,
    limit: Duration,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, EdgeError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(EdgeError::Io { phase, source }),
        Err(_) => Err(EdgeError::Timeout(phase)),
    }
}

/// Serves one accepted TCP connection to its end.
/// `slot` is held from before the handshake, so handshakes count too.
pub(crate) async fn serve(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr, slot: Slot) {
    let id = ctx.next_conn_id();
    let span = tracing::info_span!("conn", %peer, conn = id, user = tracing::field::Empty, sid = tracing::field::Empty);
    async move {
        ctx.metrics.connections.inc();
        match serve_tls(&ctx, stream, peer, id, slot).await {
            Ok(()) => tracing::debug!("connection closed"),
            Err(e) => tracing::debug!(error = %e, "connection ended"),
        }
        ctx.metrics.connections.dec();
    }
    .instrument(span)
    .await
}

async fn serve_tls(
    ctx: &Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    _slot: Slot,
) -> Result<(), EdgeError> {
    let started = Instant::now();
    let limit = ctx.cfg.edge.handshake_timeout();
    let mut first = [0u8; 1];
    if within(Phase::Handshake, limit, stream.peek(&mut first)).await? == 0 {
        return Ok(());
    }
    if first[0] != TLS_HANDSHAKE {
        let mut stream = stream;
        within(
            Phase::Write,
            limit,
            stream.write_all(TLS_REQUIRED.as_bytes()),
        )
        .await?;
        let _ = within(Phase::Close, limit, stream.shutdown()).await;
        return Ok(());
    }
    let tls = within(Phase::Handshake, limit, ctx.acceptor.accept(stream)).await?;
    let (rd, wr) = tokio::io::split(tls);

    let (tx, rx) = mpsc::channel(ctx.cfg.edge.out_queue);
    let closer = Arc::new(Closer::default());
    ctx.hub.register(id, tx, closer.clone());
    let writer = tokio::spawn(
        write_loop(
            wr,
            rx,
            closer.clone(),
            ctx.cfg.edge.write_timeout(),
            Duration::from_millis(ctx.cfg.edge.write_coalesce_ms),
        )
        .in_current_span(),
    );
    ctx.hub.send(
        id,
        &format!("HELLO {} {}", ctx.cfg.edge.id, protocol::PROTOCOL_VERSION),
    );

    let edge = &ctx.cfg.edge;
    let mut handler = Handler {
        ctx: ctx.clone(),
        id,
        peer,
        session: None,
        login_by: (edge.login_timeout_ms > 0)
            .then(|| started + Duration::from_millis(edge.login_timeout_ms)),
        last_line: Instant::now(),
        bucket: Bucket::new(edge.lines_per_sec, edge.line_burst, started),
        mistakes: Mistakes::new(edge.max_errors_per_min, started),
        unrouted: Vec::new(),
    };
    let result = handler.read_loop(rd, &closer).await;

    // The session ends with the connection, whatever ended it.
    let session = ctx.hub.remove(id).or(handler.session.take());
    if let Some(session) = session {
        ctx.end_session(session).await;
    }
    let _ = writer.await;
    result
}

/// Tells a connection over the caps why it is closed (a few at a time:
/// the caller holds one of a small number of permits).
pub(crate) async fn refuse(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let limit = ctx.cfg.edge.handshake_timeout().min(Duration::from_secs(2));
    let refused = async {
        let mut tls = within(Phase::Handshake, limit, ctx.acceptor.accept(stream)).await?;
        within(Phase::Write, limit, tls.write_all(TOO_MANY.as_bytes())).await?;
        within(Phase::Close, limit, tls.shutdown()).await
    };
    if let Err(e) = refused.await {
        tracing::debug!(%peer, error = %e, "refusing a connection failed");
    }
}

struct Handler {
    ctx: Arc<Ctx>,
    id: u64,
    peer: SocketAddr,
    session: Option<Session>,
    /// Log in by then, or be closed (against sockets held open idle).
    login_by: Option<Instant>,
    last_line: Instant,
    bucket: Bucket,
    mistakes: Mistakes,
    /// Requests that expect no reply, read but not yet sent: those of one
    /// read go to Redis in one round trip (see [`Handler::flush`]).
    unrouted: Vec<Request>,
}

/// Whether to keep reading after a line.
enum Flow {
    Continue,
    Stop,
}

impl Handler {
    async fn read_loop(
        &mut self,
        mut rd: ReadHalf<TlsStream<TcpStream>>,
        closer: &Closer,
    ) -> Result<(), EdgeError> {
        let mut decoder = LineDecoder::new(self.ctx.cfg.edge.max_line);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            while let Some(frame) = decoder.decode(&mut buf) {
                if let Flow::Stop = self.frame(frame).await {
                    self.flush().await;
                    return Ok(());
                }
            }
            self.flush().await;
            let deadline = self.deadline();
            let n = tokio::select! {
                _ = closer.token.cancelled() => return Ok(()),
                _ = sleep_until_some(deadline) => {
                    tracing::info!("idle too long");
                    closer.close("idle-timeout");
                    return Ok(());
                }
                r = rd.read_buf(&mut buf) => r.map_err(|source| EdgeError::Io { phase: Phase::Read, source })?,
            };
            if n == 0 {
                if let Some(frame) = decoder.decode_eof(&mut buf) {
                    self.frame(frame).await;
                    self.flush().await;
                }
                return Ok(());
            }
        }
    }

    /// When the connection is closed unless a line comes first.
    fn deadline(&self) -> Option<Instant> {
        match &self.session {
            None => self.login_by,
            Some(_) => {
                let idle = self.ctx.cfg.edge.idle_timeout_ms;
                (idle > 0).then(|| self.last_line + Duration::from_millis(idle))
            }
        }
    }

    async fn frame(&mut self, frame: Frame) -> Flow {
        self.ctx.metrics.lines.inc();
        let now = Instant::now();
        self.last_line = now;
        if !self.bucket.take(now) {
            return self.mistake(ProtoError::new(
                ErrorCode::RateLimited,
                "too many lines, slow down (this one was dropped)",
            ));
        }
        let line = match frame {
            Frame::TooLong => {
                let max = self.ctx.cfg.edge.max_line;
                self.reply(&err_line(
                    ErrorCode::LineTooLong,
                    &format!("lines are at most {max} bytes"),
                ));
                return self.counted();
            }
            Frame::Line(line) => line,
        };
        let Ok(text) = std::str::from_utf8(&line) else {
            return self.mistake(ProtoError::new(
                ErrorCode::BadEncoding,
                "lines must be UTF-8",
            ));
        };
        if self.session.is_none()
            && !text.trim().is_empty()
            && !protocol::allowed_before_login(text)
        {
            return self.mistake(ProtoError::new(
                ErrorCode::AuthRequired,
                "log in first: LOGIN <user> <password>",
            ));
        }
        match Command::parse(text) {
            Ok(None) => Flow::Continue,
            Ok(Some(cmd)) => self.command(cmd).await,
            Err(e) => self.mistake(e),
        }
    }

    /// Answers a mistake of the client's; too many close the connection.
    fn mistake(&mut self, e: ProtoError) -> Flow {
        self.reply(&e.line());
        self.counted()
    }

    fn counted(&mut self) -> Flow {
        if self.mistakes.record(Instant::now()) {
            tracing::info!("too many errors");
            self.ctx.hub.bye(self.id, "too-many-errors");
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn reply(&self, line: &str) {
        self.ctx.hub.send(self.id, line);
    }

    async fn command(&mut self, cmd: Command) -> Flow {
        // Anything but a room line comes after the room lines before it.
        if !matches!(cmd, Command::Say(_)) {
            self.flush().await;
        }
        match cmd {
            Command::Say(text) => self.queue(Op::Say { text }),
            Command::Login { user, password } => self.login(user, password, false).await,
            Command::Register { user, password } => self.login(user, password, true).await,
            Command::Join(room) => {
                let channel = self.ctx.keys.room_channel(&room);
                self.route(Op::Join { room }, &[channel]).await;
            }
            Command::Leave => self.route(Op::Leave, &[]).await,
            Command::Rooms => self.route(Op::Rooms, &[]).await,
            Command::Who(room) => self.route(Op::Who { room }, &[]).await,
            Command::Subscribe(target) => {
                let channel = self.ctx.keys.pub_channel(&target);
                self.route(Op::Subscribe { target }, &[channel]).await;
            }
            Command::Unsubscribe(target) => self.route(Op::Unsubscribe { target }, &[]).await,
            Command::Subscriptions => self.route(Op::Subscriptions, &[]).await,
            Command::Publish(text) => self.route(Op::Publish { text }, &[]).await,
            Command::Msg { to, text } => self.route(Op::Msg { to, text }, &[]).await,
            Command::History { target, n } => {
                let with = match target {
                    HistoryTarget::Room => None,
                    HistoryTarget::User(user) => Some(user),
                };
                self.route(Op::History { with, n }, &[]).await;
            }
            Command::Ping => self.reply("OK PING"),
            Command::Help => {
                for line in protocol::HELP {
                    self.reply(&format!("INFO {line}"));
                }
                self.reply("OK HELP");
            }
            Command::Quit => {
                self.quit().await;
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    fn request(&self, rid: u64, user: &str, op: Op) -> Request {
        Request {
            edge: self.ctx.cfg.edge.id.clone(),
            conn: self.id,
            rid,
            user: user.to_string(),
            sid: self
                .session
                .as_ref()
                .map(|s| s.sid.clone())
                .unwrap_or_default(),
            op,
        }
    }

    /// `LOGIN`, or `REGISTER` with `register`.
    async fn login(&mut self, user: String, password: String, register: bool) {
        if self.session.is_some() {
            self.reply(&err_line(
                ErrorCode::AlreadyAuthenticated,
                "already logged in",
            ));
            return;
        }
        // The publishers the user subscribes to: their channels are
        // subscribed before the session starts, so that nothing published
        // after it is missed.
        let subs: Vec<String> = match redis::AsyncCommands::smembers(
            &mut self.ctx.redis.clone(),
            self.ctx.keys.subscriptions(&user),
        )
        .await
        {
            Ok(subs) => subs,
            Err(e) => {
                tracing::warn!(error = %e, "reading subscriptions failed");
                self.reply(&unavailable().line());
                return;
            }
        };
        let channels: Vec<String> = subs.iter().map(|p| self.ctx.keys.pub_channel(p)).collect();
        let rid = self.ctx.next_rid();
        let op = Op::Login {
            password: Secret(password),
            addr: self.peer.to_string(),
            register,
        };
        let req = self.request(rid, &user, op);
        let stream = self.ctx.keys.auth_requests();
        match self.call(&stream, req, &channels).await {
            Ok(Some(Effect::Login {
                user, sid, inbox, ..
            })) => {
                let span = tracing::Span::current();
                span.record("user", user.as_str());
                span.record("sid", sid.as_str());
                tracing::info!("logged in");
                self.ctx.metrics.logins_ok.inc();
                self.session = Some(Session { user, sid });
                if !inbox.is_empty() {
                    // Shown (queued before anything else): they may go.
                    self.queue(Op::Delivered { upto: inbox });
                }
            }
            Ok(_) => self.ctx.metrics.logins_failed.inc(),
            Err(e) => {
                self.ctx.metrics.logins_failed.inc();
                self.reply(&e.line());
            }
        }
    }

    /// Queues a router request that expects no reply (a room line, an
    /// inbox shown); [`Handler::flush`] sends it.
    fn queue(&mut self, op: Op) {
        if let Some(session) = &self.session {
            let req = self.request(0, &session.user, op);
            self.unrouted.push(req);
        }
    }

    /// Sends the queued requests, in order, in one round trip (all or
    /// none): the room lines of one read cost one, however many there are.
    /// Each room line lost to a failure is answered `ERR unavailable`.
    async fn flush(&mut self) {
        if self.unrouted.is_empty() {
            return;
        }
        let reqs = std::mem::take(&mut self.unrouted);
        let stream = self.ctx.router_stream(&reqs[0].user);
        if let Err(e) = self.ctx.send_requests(&stream, &reqs).await {
            tracing::warn!(error = %e, requests = reqs.len(), "forwarding requests failed");
            for _ in reqs.iter().filter(|r| matches!(r.op, Op::Say { .. })) {
                self.reply(&unavailable().line());
            }
        }
    }

    /// Sends a router request for the session and waits for its reply;
    /// `channels` are those the reply may add the connection to.
    async fn route(&mut self, op: Op, channels: &[String]) {
        let Some(session) = &self.session else { return };
        let user = session.user.clone();
        let req = self.request(self.ctx.next_rid(), &user, op);
        let stream = self.ctx.router_stream(&user);
        if let Err(e) = self.call(&stream, req, channels).await {
            self.reply(&e.line());
        }
    }

    async fn quit(&mut self) {
        if let Some(session) = self.session.clone() {
            let rid = self.ctx.next_rid();
            let req = self.request(rid, &session.user, Op::Logout);
            let stream = self.ctx.router_stream(&session.user);
            if let Ok(Some(Effect::Close { .. })) = self.call(&stream, req, &[]).await {
                // The router ended the session and its reply closes us.
                self.session = None;
                return;
            }
        }
        self.ctx.hub.bye(self.id, "quit");
    }

    /// Sends a request and waits for its reply (whose lines the dispatcher
    /// has already queued); returns the reply's effect.
    ///
    /// `channels` (those the reply may add the connection to) are held
    /// subscribed from before the request goes out until its reply, even a
    /// late one, has been applied.
    async fn call(
        &self,
        stream: &str,
        req: Request,
        channels: &[String],
    ) -> Result<Option<Effect>, ProtoError> {
        let hub = &self.ctx.hub;
        let limit = self.ctx.cfg.edge.request_timeout();
        if !channels.is_empty() {
            let held = tokio::time::timeout(limit, hub.hold(self.id, req.rid, channels)).await;
            if held != Ok(true) {
                tracing::warn!("subscribing to channels failed");
                hub.release(self.id, req.rid);
                return Err(unavailable());
            }
        }
        let mut rx = hub.expect(self.id, req.rid);
        let sent = Instant::now();
        if let Err(e) = self
            .ctx
            .send_requests(stream, std::slice::from_ref(&req))
            .await
        {
            tracing::warn!(error = %e, "sending a request failed");
            hub.give_up(self.id, req.rid);
            hub.release(self.id, req.rid);
            return Err(unavailable());
        }
        match tokio::time::timeout(limit, &mut rx).await {
            Ok(Ok(effect)) => {
                self.ctx.metrics.request_seconds.observe(sent.elapsed());
                Ok(effect)
            }
            _ if !hub.give_up(self.id, req.rid) => {
                // The reply came just as we stopped waiting.
                Ok(rx.try_recv().ok().flatten())
            }
            _ => {
                tracing::warn!(stream, "no reply in time");
                Err(unavailable())
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn unavailable() -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        "the service did not answer, try again",
    )
}

/// Drains the queue into the socket, many lines per write when several are
/// queued; ends with `BYE <reason>` when the connection is closed by the
/// server.
///
/// A socket is written at most once per `write_coalesce_ms`: under load,
/// lines that arrive within that time share TLS records (up to 16 KiB
/// each) and one system call (on each side) instead of costing one each;
/// an idle connection's first line goes out at once, and so does the next
/// batch when the last one was full.
async fn write_loop<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut rx: mpsc::Receiver<Out>,
    closer: Arc<Closer>,
    limit: Duration,
    coalesce: Duration,
) {
    let mut next_write = Instant::now();
    // Grown when there is something to write, and let go of once the
    // queue is empty: an idle connection holds no write buffer.
    let mut buf = Vec::new();
    let bye = loop {
        let first = tokio::select! {
            biased;
            _ = closer.token.cancelled() => break closer.reason().map(str::to_string),
            m = rx.recv() => m,
        };
        let mut bye = match first {
            None => break None,
            Some(Out::Bye(reason)) => break Some(reason),
            Some(Out::Line(line)) => {
                // One allocation for a typical batch, not a doubling per line.
                buf.reserve(WRITE_BUF.max(line.len()));
                buf.extend_from_slice(&line);
                None
            }
        };
        if next_write > Instant::now() {
            tokio::time::sleep_until(next_write.into()).await;
        }
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(Out::Line(line)) => buf.extend_from_slice(&line),
                Ok(Out::Bye(reason)) => {
                    bye = Some(reason);
                    break;
                }
                Err(_) => break,
            }
        }
        let written = within(Phase::Write, limit, async {
            wr.write_all(&buf).await?;
            wr.flush().await
        })
        .await;
        let full = buf.len() >= WRITE_BATCH;
        next_write = Instant::now() + if full { Duration::ZERO } else { coalesce };
        if rx.is_empty() {
            buf = Vec::new();
        } else {
            buf.clear();
        }
        if let Err(e) = written {
            tracing::debug!(error = %e, "write failed");
            closer.token.cancel();
            return;
        }
        if bye.is_some() {
            break bye;
        }
    };
    if let Some(reason) = bye {
        tracing::info!(reason = %reason, "closing");
        let line = format!("BYE {reason}\n");
        let _ = within(Phase::Write, limit, async {
            wr.write_all(line.as_bytes()).await?;
            wr.flush().await
        })
        .await;
    }
    let _ = within(Phase::Close, limit, wr.shutdown()).await;
    closer.token.cancel();
}
