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
/// A socket is written at most once per window (see [`Pace`]): under
/// load, lines that arrive within it share TLS records (up to 16 KiB
/// each) and one system call (on each side) instead of costing one each;
/// an idle connection's first line goes out at once, and so does the next
/// batch when the last one was full.
pub(super) async fn write_loop<W: AsyncWrite>(
    mut wr: WriteHalf<W>,
    mut rx: QueueRx,
    closer: Arc<Closer>,
    limit: Duration,
    mut pace: Pace,
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
            pace.woke(Instant::now().saturating_duration_since(next_write));
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
            next_write = Instant::now() + if full { Duration::ZERO } else { pace.window() };
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

/// How late a wakeup may come, on average, before the edge counts as
/// behind: Tokio's timers tick every millisecond, so an edge with time to
/// spare wakes up to about 1 ms after the time asked for.
const BEHIND: Duration = Duration::from_millis(2);

/// The write window of one connection: `idle` (`edge.write_coalesce_idle_ms`,
/// at most `busy`) while its wakeups come on time, `busy` (`edge.write_coalesce_ms`) once
/// they come late on average: the edge's thread, or the machine, is short
/// of CPU, and fewer, larger writes cost less of it per line.
pub(super) struct Pace {
    idle: Duration,
    busy: Duration,
    /// How late the wakeups came: a moving average (weight 1/8 each).
    late: Duration,
}

impl Pace {
    pub(super) fn new(idle: Duration, busy: Duration) -> Self {
        Self {
            idle: idle.min(busy),
            busy,
            late: Duration::ZERO,
        }
    }

    /// Counts a wakeup that came `late` after the time asked for.
    fn woke(&mut self, late: Duration) {
        self.late = (self.late * 7 + late) / 8;
    }

    fn window(&self) -> Duration {
        if self.late > BEHIND {
            self.busy
        } else {
            self.idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_lengthens_while_wakeups_come_late_and_shortens_again() {
        let ms = Duration::from_millis;
        let mut pace = Pace::new(ms(5), ms(10));
        assert_eq!(pace.window(), ms(5));
        // Timers a millisecond late, as they are on an edge with time to spare.
        for _ in 0..50 {
            pace.woke(ms(1));
        }
        assert_eq!(pace.window(), ms(5));
        // One very late wakeup is not enough...
        pace.woke(ms(8));
        assert_eq!(pace.window(), ms(5));
        // ... wakeups late on average are.
        for _ in 0..5 {
            pace.woke(ms(4));
        }
        assert_eq!(pace.window(), ms(10));
        for _ in 0..20 {
            pace.woke(ms(1));
        }
        assert_eq!(pace.window(), ms(5));
        // A fixed window of 0 (write at once) stays one.
        assert_eq!(Pace::new(ms(5), ms(0)).window(), ms(0));
    }
}
