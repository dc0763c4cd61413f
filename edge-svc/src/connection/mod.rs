//! One client connection: the TLS handshake, then a reader ([`handler`]) and a writer ([`writer`]).
//!
//! The reader turns lines into commands ([`commands`] says what each one
//! does); the writer drains the connection's bounded queue.

mod commands;
mod handler;
mod tls;
mod writer;

pub(crate) use tls::refuse;

use crate::ctx::Ctx;
use crate::error::{EdgeError, Phase};
use crate::hub::Closer;
use crate::limits::Slot;
use handler::Handler;
use shared::line::ServerLine;
use shared::protocol;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::ReadHalf;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;
use writer::{write_loop, Pace};

/// Runs `fut` with a deadline; the error names the phase.
async fn within<T>(
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
        // Counted as the heartbeat counts (handshakes included), in Redis at once.
        ctx.metrics.connections.inc();
        ctx.count_connection(1);
        match serve_tls(&ctx, stream, peer, id, slot).await {
            Ok(()) => tracing::debug!("connection closed"),
            Err(e) => tracing::debug!(error = %e, "connection ended"),
        }
        ctx.metrics.connections.dec();
        ctx.count_connection(-1);
    }
    .instrument(span)
    .await
}

async fn serve_tls(
    ctx: &Arc<Ctx>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    slot: Slot,
) -> Result<(), EdgeError> {
    let started = Instant::now();
    let Some(tls) = tls::handshake(ctx, stream).await? else {
        return Ok(());
    };
    let (rd, wr) = tokio::io::split(tls);

    let (tx, rx) = crate::hub::queue(ctx.cfg.edge.out_queue, ctx.cfg.edge.out_queue_bytes);
    let closer = Arc::new(Closer::default());
    ctx.hub.register(id, tx, closer.clone());
    let writer = tokio::spawn(
        write_loop(
            wr,
            rx,
            closer.clone(),
            ctx.cfg.edge.write_timeout(),
            Pace::new(
                Duration::from_millis(ctx.cfg.edge.write_coalesce_idle_ms),
                Duration::from_millis(ctx.cfg.edge.write_coalesce_ms),
            ),
        )
        .in_current_span(),
    );
    ctx.hub.send(
        id,
        &ServerLine::Hello {
            edge: ctx.cfg.edge.id.clone(),
            version: protocol::PROTOCOL_VERSION.into(),
        },
    );
    let result = serve_lines(ctx, id, peer, started, slot, rd, &closer).await;
    let _ = writer.await;
    result
}

/// After `HELLO`: a `REDIRECT` if this edge is loaded or draining (when
/// draining, the connection is then closed), and the client's lines.
async fn serve_lines(
    ctx: &Arc<Ctx>,
    id: u64,
    peer: SocketAddr,
    started: Instant,
    slot: Slot,
    rd: ReadHalf<TlsStream<TcpStream>>,
    closer: &Closer,
) -> Result<(), EdgeError> {
    if let Some(addr) = ctx.redirect().await {
        ctx.hub.send(id, &ServerLine::Redirect { addr });
        if ctx.drain.is_cancelled() {
            ctx.hub.bye(id, "server-shutdown");
            ctx.hub.remove(id);
            return Ok(());
        }
    }
    let mut handler = Handler::new(ctx.clone(), id, peer, started, slot);
    let result = handler.read_loop(rd, closer).await;

    // The session ends with the connection, whatever ended it.
    let (held, _slot) = handler.into_parts();
    let session = ctx.hub.remove(id).or(held);
    if let Some(session) = session {
        ctx.end_session(session).await;
    }
    result
}
