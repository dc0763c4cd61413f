//! The writer of a connection: drains its queue into the socket, then says `BYE` and closes.

use super::within;
use crate::error::Phase;
use crate::hub::{Closer, Out, QueueRx};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

/// Most bytes gathered into one write.
const WRITE_BATCH: usize = crate::hub::CHUNK;

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
    let bye = loop {
        let ready = tokio::select! {
            biased;
            _ = closer.token.cancelled() => break closer.reason().map(str::to_string),
            ready = rx.ready() => ready,
        };
        if !ready {
            break None;
        }
        if next_write > Instant::now() {
            tokio::time::sleep_until(next_write.into()).await;
        }
        // The queue's buffers of lines are written as they are (the first
        // one is not copied); an idle connection holds no write buffer.
        let mut buf = Vec::new();
        let mut bye = None;
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Some(Out::Line(lines)) if buf.is_empty() => buf = lines,
                Some(Out::Line(lines)) => buf.extend_from_slice(&lines),
                Some(Out::Bye(reason)) => {
                    bye = Some(reason);
                    break;
                }
                None => break,
            }
        }
        if !buf.is_empty() {
            let written = within(Phase::Write, limit, async {
                wr.write_all(&buf).await?;
                wr.flush().await
            })
            .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "write failed");
                closer.token.cancel();
                return;
            }
            let full = buf.len() >= WRITE_BATCH;
            next_write = Instant::now() + if full { Duration::ZERO } else { coalesce };
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
