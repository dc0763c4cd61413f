//! A connection's outgoing queue, bounded in lines and in bytes, with consecutive lines in one buffer.
//!
//! A line or a reply larger than the byte budget is taken only into an
//! empty queue (a `/history 500` must go through), so what one connection
//! holds is at most the budget or one reply, however it reads.
//!
//! Lines queued one after another are copied into the same buffer (up to
//! [`CHUNK`] bytes), so a broadcast costs its target one short lock and a
//! copy, the writer takes a whole batch at once, and it is woken only when
//! the queue was empty: no per-line allocation, reference count or wakeup.
//! A new buffer starts a quarter larger than the recent buffers taken were
//! full (up to [`CHUNK`]), so a busy connection's buffer is not grown (and
//! copied) again on every batch; an idle connection holds none.

use super::Out;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Most bytes gathered into one buffer of lines (a longer reply is one
/// buffer of its own).
pub(crate) const CHUNK: usize = 64 * 1024;
/// The first size of a buffer of lines.
const CHUNK_START: usize = 4 * 1024;

/// A queue of at most `lines` lines (a reply counts as one) and, but for
/// one entry into an empty queue, `bytes` bytes.
pub(crate) fn queue(lines: usize, bytes: usize) -> (QueueTx, QueueRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        ready: Notify::new(),
    });
    let limits = Limits { lines, bytes };
    (
        QueueTx {
            shared: shared.clone(),
            limits,
        },
        QueueRx { shared },
    )
}

/// Why an entry was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Over a bound: the reader is too slow.
    Full,
    /// The writer is gone.
    Closed,
}

struct Shared {
    state: Mutex<State>,
    /// Told when an entry goes into an empty queue, or the sender is gone.
    ready: Notify,
}

#[derive(Default)]
struct State {
    /// `Out::Line` entries hold whole lines; each knows how many.
    entries: VecDeque<(Out, usize)>,
    lines: usize,
    bytes: usize,
    /// The most bytes of the recent buffers of lines taken (it decays by
    /// an eighth at each one): the size to start the next one at.
    recent: usize,
    sender_gone: bool,
    receiver_gone: bool,
}

#[derive(Clone, Copy)]
struct Limits {
    lines: usize,
    bytes: usize,
}

impl State {
    /// Whether `count` lines of `n` bytes fit: one line (or reply) always
    /// fits the bytes of an empty queue.
    fn fits(&self, limits: Limits, n: usize, count: usize) -> bool {
        let one_into_empty = count == 1 && self.bytes == 0;
        self.lines + count <= limits.lines && (one_into_empty || self.bytes + n <= limits.bytes)
    }

    /// Appends `count` lines, into the last buffer while it has room.
    fn push(&mut self, lines: &[u8], count: usize) {
        let n = lines.len();
        match self.entries.back_mut() {
            Some((Out::Line(buf), queued)) if buf.len() + n <= CHUNK => {
                buf.extend_from_slice(lines);
                *queued += count;
            }
            _ => {
                let start = (self.recent + self.recent / 4).clamp(CHUNK_START, CHUNK);
                let mut buf = Vec::with_capacity(n.max(start));
                buf.extend_from_slice(lines);
                self.entries.push_back((Out::Line(buf), count));
            }
        }
        self.lines += count;
        self.bytes += n;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Never held across an await nor while panicking.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct QueueTx {
    shared: Arc<Shared>,
    limits: Limits,
}

impl QueueTx {
    /// Queues a complete line (its terminator included).
    pub(crate) fn line(&self, line: &[u8]) -> Result<(), Refused> {
        self.lines(line, 1)
    }

    /// Queues `count` complete lines, one after another in `lines`, all at
    /// once. If they do not all fit, those that do are queued one by one,
    /// as if they had come alone, and the answer is `Full`. Only a single
    /// line (or reply) may go over the bytes, into an empty queue.
    pub(crate) fn lines(&self, lines: &[u8], count: usize) -> Result<(), Refused> {
        let mut st = self.shared.lock();
        if st.receiver_gone {
            return Err(Refused::Closed);
        }
        let was_empty = st.entries.is_empty();
        let queued = if st.fits(self.limits, lines.len(), count) {
            st.push(lines, count);
            Ok(())
        } else {
            if count > 1 {
                for line in lines.split_inclusive(|&b| b == b'\n') {
                    if !st.fits(self.limits, line.len(), 1) {
                        break;
                    }
                    st.push(line, 1);
                }
            }
            Err(Refused::Full)
        };
        let woken = was_empty && !st.entries.is_empty();
        drop(st);
        if woken {
            self.shared.ready.notify_one();
        }
        queued
    }

    /// Queues an entry: lines, a close or a gate.
    pub(crate) fn send(&self, out: Out) -> Result<(), Refused> {
        if let Out::Line(line) = &out {
            return self.line(line);
        }
        let mut st = self.shared.lock();
        if st.receiver_gone {
            return Err(Refused::Closed);
        }
        let was_empty = st.entries.is_empty();
        st.entries.push_back((out, 0));
        drop(st);
        if was_empty {
            self.shared.ready.notify_one();
        }
        Ok(())
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.ready.notify_one();
    }
}

pub(crate) struct QueueRx {
    shared: Arc<Shared>,
}

impl QueueRx {
    /// Waits for an entry; false once the queue is empty and its sender
    /// gone.
    pub(crate) async fn ready(&self) -> bool {
        loop {
            {
                let st = self.shared.lock();
                if !st.entries.is_empty() {
                    return true;
                }
                if st.sender_gone {
                    return false;
                }
            }
            self.shared.ready.notified().await;
        }
    }

    /// Takes the first entry, if any.
    pub(crate) fn try_recv(&mut self) -> Option<Out> {
        let mut st = self.shared.lock();
        let (out, lines) = st.entries.pop_front()?;
        st.lines -= lines;
        if let Out::Line(buf) = &out {
            st.bytes -= buf.len();
            st.recent = buf.len().max(st.recent - st.recent / 8);
        }
        Some(out)
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receiver_gone = true;
        st.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(rx: &mut QueueRx) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|o| match o {
                Out::Line(b) => b,
                _ => b"(other)".to_vec(),
            })
            .collect()
    }

    #[test]
    fn lines_that_do_not_all_fit_go_in_as_far_as_they_fit() {
        let (tx, mut rx) = queue(3, 8);
        assert_eq!(tx.lines(b"a\nb\nc\nd\n", 4), Err(Refused::Full), "4 lines");
        assert_eq!(taken(&mut rx), [b"a\nb\nc\n".to_vec()]);
        assert_eq!(tx.lines(b"aaaa\nbbbb\n", 2), Err(Refused::Full), "10 bytes");
        assert_eq!(taken(&mut rx), [b"aaaa\n".to_vec()]);
        tx.lines(b"a\nb\n", 2).unwrap();
        tx.line(b"c\n").unwrap();
        assert_eq!(taken(&mut rx), [b"a\nb\nc\n".to_vec()]);
        // A reply is one entry: whole or not at all.
        tx.line(b"a\n").unwrap();
        assert_eq!(tx.line(b"bbbb\ncccc\n"), Err(Refused::Full));
        assert_eq!(taken(&mut rx), [b"a\n".to_vec()]);
        // One line bigger than the bytes still goes into an empty queue.
        tx.line(b"0123456789\n").unwrap();
    }

    #[test]
    fn lines_in_a_row_share_a_buffer_until_a_close_or_gate() {
        let (tx, mut rx) = queue(100, 1 << 20);
        tx.line(b"a\n").unwrap();
        tx.line(b"b\n").unwrap();
        tx.send(Out::Bye("x".into())).unwrap();
        tx.line(b"c\n").unwrap();
        assert_eq!(taken(&mut rx), [&b"a\nb\n"[..], b"(other)", b"c\n"]);
    }

    #[test]
    fn bounded_in_lines_and_bytes_with_one_large_entry_into_an_empty_queue() {
        let (tx, mut rx) = queue(3, 10);
        for _ in 0..3 {
            tx.line(b"1\n").unwrap();
        }
        assert_eq!(tx.line(b"1\n"), Err(Refused::Full), "lines");
        rx.try_recv().unwrap();
        tx.line(&[b'x'; 50]).unwrap();
        assert_eq!(tx.line(b"1\n"), Err(Refused::Full), "bytes");
        rx.try_recv().unwrap();
        tx.line(b"1234567\n").unwrap();
        assert_eq!(tx.line(b"12\n"), Err(Refused::Full), "bytes");
        tx.line(b"1\n").unwrap();
    }

    #[test]
    fn a_buffer_stops_growing_at_a_chunk() {
        let (tx, mut rx) = queue(usize::MAX, usize::MAX);
        let line = [b'x'; 1000];
        for _ in 0..(2 * CHUNK / line.len()) {
            tx.line(&line).unwrap();
        }
        let got = taken(&mut rx);
        assert!(got.len() >= 2 && got.iter().all(|b| b.len() <= CHUNK));
        assert_eq!(
            got.iter().map(Vec::len).sum::<usize>(),
            2 * CHUNK / 1000 * 1000
        );
    }

    #[test]
    fn a_new_buffer_starts_at_the_size_recent_ones_reached() {
        let (tx, mut rx) = queue(usize::MAX, usize::MAX);
        let line = [b'x'; 100];
        let mut capacities = Vec::new();
        for _ in 0..3 {
            for _ in 0..90 {
                tx.line(&line).unwrap();
            }
            match rx.try_recv() {
                Some(Out::Line(buf)) => capacities.push(buf.capacity()),
                _ => panic!("a buffer of lines"),
            }
        }
        // The first grew from CHUNK_START by doubling, to 16 KiB; the next
        // ones were made big enough for 9,000 bytes at once.
        assert_eq!(capacities[0], 16 * 1024);
        assert!(
            capacities[1..]
                .iter()
                .all(|&c| (9_000..16 * 1024).contains(&c)),
            "{capacities:?}"
        );
        // Small batches bring the start back down, little by little.
        let mut capacity = usize::MAX;
        for _ in 0..20 {
            tx.line(&line).unwrap();
            match rx.try_recv() {
                Some(Out::Line(buf)) => {
                    assert!(buf.capacity() <= capacity);
                    capacity = buf.capacity();
                }
                _ => panic!("a buffer of lines"),
            }
        }
        assert_eq!(capacity, CHUNK_START);
    }

    #[tokio::test]
    async fn ready_wakes_for_a_line_and_says_when_the_sender_is_gone() {
        let limit = std::time::Duration::from_secs(10);
        let (tx, mut rx) = queue(10, 100);
        let (woke_tx, woke) = tokio::sync::oneshot::channel();
        let wait = tokio::spawn(async move {
            let _ = woke_tx.send(rx.ready().await);
            rx.try_recv();
            rx.ready().await
        });
        tokio::task::yield_now().await;
        tx.line(b"a\n").unwrap();
        // Woken by the line itself, with the sender still there.
        let first = tokio::time::timeout(limit, woke).await;
        assert!(first.expect("the line wakes the reader").unwrap());
        drop(tx);
        let last = tokio::time::timeout(limit, wait).await;
        assert!(!last.expect("the sender's end wakes it").unwrap());
    }

    #[test]
    fn a_gone_receiver_refuses() {
        let (tx, rx) = queue(10, 100);
        drop(rx);
        assert_eq!(tx.line(b"a\n"), Err(Refused::Closed));
    }
}
