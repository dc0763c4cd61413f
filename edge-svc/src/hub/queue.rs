//! A connection's outgoing queue, bounded in items and in bytes.
//!
//! A line or a reply larger than the byte budget is taken only into an
//! empty queue (a `/history 500` must go through), so what one connection
//! holds is at most the budget or one reply, however it reads.

use super::Out;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// A queue of at most `items` entries and, but for one entry into an
/// empty queue, `bytes` bytes.
pub(crate) fn queue(items: usize, bytes: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::channel(items);
    let queued = Arc::new(AtomicUsize::new(0));
    let rx = QueueRx {
        rx,
        queued: queued.clone(),
    };
    (QueueTx { tx, queued, bytes }, rx)
}

fn size(out: &Out) -> usize {
    match out {
        Out::Line(line) => line.len(),
        Out::Bye(_) | Out::Gate(_) => 0,
    }
}

/// Why an entry was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Over a bound: the reader is too slow.
    Full,
    /// The writer is gone.
    Closed,
}

pub(crate) struct QueueTx {
    tx: mpsc::Sender<Out>,
    queued: Arc<AtomicUsize>,
    bytes: usize,
}

impl QueueTx {
    pub(crate) fn try_send(&self, out: Out) -> Result<(), Refused> {
        let n = size(&out);
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before > 0 && before + n > self.bytes {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        self.tx.try_send(out).map_err(|e| {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

pub(crate) struct QueueRx {
    rx: mpsc::Receiver<Out>,
    queued: Arc<AtomicUsize>,
}

impl QueueRx {
    fn taken(&self, out: Option<Out>) -> Option<Out> {
        if let Some(out) = &out {
            self.queued.fetch_sub(size(out), Ordering::Relaxed);
        }
        out
    }

    pub(crate) async fn recv(&mut self) -> Option<Out> {
        let out = self.rx.recv().await;
        self.taken(out)
    }

    pub(crate) fn try_recv(&mut self) -> Option<Out> {
        let out = self.rx.try_recv().ok();
        self.taken(out)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}
