//! TLS on a new connection: telling TLS from plain text by its first byte, the handshake, refusals.

use super::within;
use crate::ctx::Ctx;
use crate::error::{EdgeError, Phase};
use crate::limits::Refusal;
use shared::protocol::{ErrorCode, ProtoError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// First byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
const TLS_REQUIRED: ProtoError =
    ProtoError::new(ErrorCode::TlsRequired, "this port speaks TLS only");
const TOO_MANY: ProtoError = ProtoError::new(
    ErrorCode::RateLimited,
    "too many connections, try again later",
);
const TOO_MANY_UNAUTH: ProtoError = ProtoError::new(
    ErrorCode::RateLimited,
    "too many connections from your address that have not logged in",
);

/// Completes the TLS handshake, within the handshake timeout (one
/// deadline for the first byte and the handshake after it); `None` if the
/// client left first, or spoke plain text (it is told TLS is required).
pub(super) async fn handshake(
    ctx: &Ctx,
    stream: TcpStream,
) -> Result<Option<TlsStream<TcpStream>>, EdgeError> {
    let limit = ctx.cfg.edge.handshake_timeout();
    let deadline = Instant::now() + limit;
    let mut first = [0u8; 1];
    if within(Phase::Handshake, limit, stream.peek(&mut first)).await? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE {
        let mut stream = stream;
        within(
            Phase::Write,
            limit,
            stream.write_all(format!("{}\n", TLS_REQUIRED.line()).as_bytes()),
        )
        .await?;
        let _ = within(Phase::Close, limit, stream.shutdown()).await;
        return Ok(None);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let tls = within(Phase::Handshake, left, ctx.acceptor.accept(stream)).await?;
    Ok(Some(tls))
}

/// Tells a connection over the caps why it is closed (a few at a time:
/// the caller holds one of a small number of permits).
pub(crate) async fn refuse(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr, why: Refusal) {
    let limit = ctx.cfg.edge.handshake_timeout().min(Duration::from_secs(2));
    let refused = async {
        let mut tls = within(Phase::Handshake, limit, ctx.acceptor.accept(stream)).await?;
        let error = match why {
            Refusal::Full => TOO_MANY,
            Refusal::Unauthenticated => TOO_MANY_UNAUTH,
        };
        let line = format!("{}\n", error.line());
        within(Phase::Write, limit, tls.write_all(line.as_bytes())).await?;
        within(Phase::Close, limit, tls.shutdown()).await
    };
    if let Err(e) = refused.await {
        tracing::debug!(%peer, error = %e, "refusing a connection failed");
    }
}
