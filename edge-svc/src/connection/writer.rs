//! The writer of a connection: drains its queue into the socket, then says `BYE` and closes.

use super::within;
use crate::error::Phase;
use crate::hub::{Closer, Out, QueueRx};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// The write buffer's first size.
const WRITE_BUF: usize = 4 * 1024;

/// Drains the queue into the socket, many lines per write when several are
/// queued; ends with `BYE <reason>` when the connection is closed by the
/// server.
///
/// A socket is written at most once per `write_coalesce_ms`: under load,
/// lines that arrive within that time share TLS records (up to 16 KiB
/// each) and one system call (on each side) instead of costing one each;
/// an idle connection's first line goes out at once, and so does the next
/// batch when the last one was full.
pub(super) async fn write_loop<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut rx: QueueRx,
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
            Some(Out::Gate(gate)) => {
                if !opened(gate, &closer).await {
                    break closer.reason().map(str::to_string);
                }
                continue;
            }
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
        let mut gate = None;
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Some(Out::Line(line)) => buf.extend_from_slice(&line),
                Some(Out::Bye(reason)) => {
                    bye = Some(reason);
                    break;
                }
                Some(Out::Gate(g)) => {
                    gate = Some(g);
                    break;
                }
                None => break,
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
        if let Some(gate) = gate {
            if !opened(gate, &closer).await {
                break closer.reason().map(str::to_string);
            }
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

/// Waits for a gate to open (its sender dropped counts); false if the
/// connection is closed first.
async fn opened(gate: tokio::sync::oneshot::Receiver<()>, closer: &Closer) -> bool {
    tokio::select! {
        biased;
        _ = closer.token.cancelled() => false,
        _ = gate => true,
    }
}
