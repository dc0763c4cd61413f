//! The reader of a connection: lines to commands, within its limits; logins, requests and replies.

use super::commands::{self, Action};
use crate::ctx::Ctx;
use crate::error::{EdgeError, Phase};
use crate::frame::{Frame, LineDecoder};
use crate::hub::{Closer, Session};
use crate::limits::{Bucket, Mistakes, Slot};
use bytes::BytesMut;
use shared::envelope::{Effect, Op, Request};
use shared::line::ServerLine;
use shared::protocol::{self, Command, ErrorCode, ProtoError};
use shared::token::{new_token, token_hash};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, ReadHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The reading side of one connection, and what it knows of its session.
pub(super) struct Handler {
    ctx: Arc<Ctx>,
    id: u64,
    peer: SocketAddr,
    session: Option<Session>,
    /// Its connection slot: not logged in until the session starts.
    slot: Slot,
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
    /// A handler for connection `id`, accepted at `started`.
    pub(super) fn new(
        ctx: Arc<Ctx>,
        id: u64,
        peer: SocketAddr,
        started: Instant,
        slot: Slot,
    ) -> Handler {
        let edge = &ctx.cfg.edge;
        let login_by = (edge.login_timeout_ms > 0)
            .then(|| started + Duration::from_millis(edge.login_timeout_ms));
        let bucket = Bucket::new(edge.lines_per_sec, edge.line_burst, started);
        let mistakes = Mistakes::new(edge.max_errors_per_min, started);
        Handler {
            ctx,
            id,
            peer,
            session: None,
            slot,
            login_by,
            last_line: Instant::now(),
            bucket,
            mistakes,
            unrouted: Vec::new(),
        }
    }

    /// The session this connection holds, if any (to end with it), and
    /// its slot (held until the connection is gone).
    pub(super) fn into_parts(self) -> (Option<Session>, Slot) {
        (self.session, self.slot)
    }

    /// Reads and answers lines until the client leaves or the connection
    /// is closed.
    pub(super) async fn read_loop(
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
                self.reply(ServerLine::err(
                    ErrorCode::LineTooLong,
                    format!("lines are at most {max} bytes"),
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
        let parsed = match self.session {
            Some(_) => Command::parse_in_session(text),
            None => Command::parse(text),
        };
        match parsed {
            Ok(None) => Flow::Continue,
            Ok(Some(cmd)) => self.command(cmd).await,
            Err(e) => self.mistake(e),
        }
    }

    /// Answers a mistake of the client's; too many close the connection.
    fn mistake(&mut self, e: ProtoError) -> Flow {
        self.reply(e.line());
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

    fn reply(&self, line: ServerLine) {
        self.ctx.hub.send(self.id, &line);
    }

    async fn command(&mut self, cmd: Command) -> Flow {
        let action = commands::action(cmd);
        // Anything but a room line comes after the room lines before it.
        if action.flushes() {
            self.flush().await;
        }
        match action {
            Action::Queue(op) => self.queue(op),
            Action::Route(op) => self.route(op).await,
            Action::Login {
                user,
                password,
                register,
            } => {
                // Sealed to auth-svc before it enters Redis, for this
                // request only.
                let (ctx, conn, addr) = (self.ctx.clone(), self.id, self.peer.to_string());
                let name = user.clone();
                self.login(user, move |rid, token| {
                    let binding =
                        shared::seal::binding(&ctx.cfg.edge.id, conn, rid, &name, register);
                    Op::Login {
                        password: ctx.sealer.seal(&binding, &password.0),
                        addr,
                        register,
                        token,
                    }
                })
                .await
            }
            Action::Resume { user, token } => {
                let (addr, token) = (self.peer.to_string(), token_hash(&token.0));
                self.login(user, |_, next| Op::Resume { token, next, addr })
                    .await
            }
            Action::Reply(lines) => {
                for line in lines {
                    self.reply(line);
                }
            }
            Action::Quit => {
                self.quit().await;
                return Flow::Stop;
            }
            Action::Edges => self.edges().await,
        }
        Flow::Continue
    }

    /// `/edges`: an `EDGE` line per live edge taking clients, then `OK EDGES <n>`.
    async fn edges(&self) {
        let limit = self.ctx.cfg.edge.request_timeout();
        let Ok(Ok(edges)) = tokio::time::timeout(limit, self.ctx.open_edges()).await else {
            self.reply(unavailable().line());
            return;
        };
        let n = edges.len() as u64;
        for e in edges {
            self.reply(ServerLine::Edge {
                addr: e.addr,
                conns: e.conns,
            });
        }
        self.reply(ServerLine::OkEdges { n });
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

    /// `LOGIN`, `REGISTER` or `RESUME`: `op` is its request, given the
    /// hash of the resume token the new session is to get (empty: none).
    /// The token itself stays on this edge until it goes to the client.
    async fn login(&mut self, user: String, op: impl FnOnce(u64, String) -> Op) {
        if self.session.is_some() {
            self.reply(ServerLine::err(
                ErrorCode::AlreadyAuthenticated,
                "already logged in",
            ));
            return;
        }
        let rid = self.ctx.next_rid();
        let next = if self.ctx.cfg.auth.resume_ttl_ms > 0 {
            let token = new_token();
            let hash = token_hash(&token);
            self.ctx.hub.give_token(self.id, token);
            hash
        } else {
            String::new()
        };
        let req = self.request(rid, &user, op(rid, next));
        let stream = self.ctx.keys.auth_requests();
        // Nothing of the claimed user's is read before auth-svc has checked
        // the password.
        match self.call(&stream, req).await {
            Ok(Some(Effect::Login {
                user, sid, inbox, ..
            })) => {
                let span = tracing::Span::current();
                span.record("user", user.as_str());
                span.record("sid", sid.as_str());
                tracing::info!("logged in");
                self.ctx.metrics.logins_ok.inc();
                self.session = Some(Session { user, sid });
                self.slot.logged_in();
                if !inbox.is_empty() {
                    // Shown (queued before anything else): they may go.
                    self.queue(Op::Delivered { upto: inbox });
                }
            }
            Ok(_) => self.ctx.metrics.logins_failed.inc(),
            Err(e) => {
                self.ctx.metrics.logins_failed.inc();
                self.reply(e.line());
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
                self.reply(unavailable().line());
            }
        }
    }

    /// Sends a router request for the session and waits for its reply.
    async fn route(&mut self, op: Op) {
        let Some(session) = &self.session else { return };
        let user = session.user.clone();
        let req = self.request(self.ctx.next_rid(), &user, op);
        let stream = self.ctx.router_stream(&user);
        if let Err(e) = self.call(&stream, req).await {
            self.reply(e.line());
        }
        // A long reply costs lines of the flood budget: asking for
        // megabytes is not as cheap as saying one line.
        let bytes = self.ctx.hub.reply_bytes(self.id);
        if let Some(lines) = bytes.checked_div(self.ctx.cfg.edge.reply_bytes_per_line) {
            self.bucket.charge(lines as f64);
        }
    }

    async fn quit(&mut self) {
        if let Some(session) = self.session.clone() {
            let rid = self.ctx.next_rid();
            let req = self.request(rid, &session.user, Op::Logout);
            let stream = self.ctx.router_stream(&session.user);
            if let Ok(Some(Effect::Close { .. })) = self.call(&stream, req).await {
                // The router ended the session and its reply closes us.
                self.session = None;
                return;
            }
        }
        self.ctx.hub.bye(self.id, "quit");
    }

    /// Sends a request and waits for its reply (whose lines the dispatcher
    /// has already queued); returns the reply's effect.
    async fn call(&self, stream: &str, req: Request) -> Result<Option<Effect>, ProtoError> {
        let hub = &self.ctx.hub;
        // One deadline for the whole request: sending it (a Redis that
        // does not answer counts) and its reply.
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.edge.request_timeout();
        let mut rx = hub.expect(self.id, req.rid);
        let sent = Instant::now();
        let reply = async {
            self.ctx
                .send_requests(stream, std::slice::from_ref(&req))
                .await?;
            Ok::<_, redis::RedisError>((&mut rx).await)
        };
        let outcome = tokio::time::timeout_at(deadline, reply).await;
        match outcome {
            Ok(Ok(Ok(effect))) => {
                self.ctx.metrics.request_seconds.observe(sent.elapsed());
                Ok(effect)
            }
            Ok(Err(e)) => {
                // Not sent: nothing will come back.
                tracing::warn!(error = %e, "sending a request failed");
                hub.give_up(self.id, req.rid);
                Err(unavailable())
            }
            _ if !hub.give_up(self.id, req.rid) => {
                // The reply came just as we stopped waiting.
                Ok(rx.try_recv().ok().flatten())
            }
            _ => {
                // Sent, or perhaps not (Redis did not answer): a late reply
                // still takes effect.
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
