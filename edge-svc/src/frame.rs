//! Splitting the client byte stream into lines, with a length limit.
//!
//! A line that is still incomplete is kept apart from a line that is too
//! long: the first waits for more bytes, the second is discarded up to its
//! terminator and reported once as [`Frame::TooLong`].

use bytes::{Bytes, BytesMut};

#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A line without its terminator (LF or CR LF).
    Line(Bytes),
    /// A line longer than the limit was discarded.
    TooLong,
}

#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    /// Bytes of the buffer already searched for a terminator.
    scanned: usize,
    /// Inside an over-long line: drop bytes until its terminator.
    discarding: bool,
}

impl LineDecoder {
    /// `max` is the longest line accepted, terminator included.
    pub fn new(max: usize) -> Self {
        LineDecoder {
            max,
            scanned: 0,
            discarding: false,
        }
    }

    /// The next complete frame in `buf`, consuming it; `None` when more bytes
    /// are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        let newline = buf[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| i + self.scanned);
        match newline {
            Some(i) => {
                self.scanned = 0;
                let line = buf.split_to(i + 1);
                if std::mem::take(&mut self.discarding) || line.len() > self.max {
                    return Some(Frame::TooLong);
                }
                let mut line = line.freeze();
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Some(Frame::Line(line))
            }
            None if self.discarding => {
                buf.clear();
                self.scanned = 0;
                None
            }
            None if buf.len() >= self.max => {
                self.discarding = true;
                buf.clear();
                self.scanned = 0;
                None
            }
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }

    /// At end of input: an unterminated last line, if any.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if let Some(frame) = self.decode(buf) {
            return Some(frame);
        }
        if self.discarding {
            self.discarding = false;
            return Some(Frame::TooLong);
        }
        if buf.is_empty() {
            return None;
        }
        self.scanned = 0;
        let mut line = buf.split().freeze();
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        Some(Frame::Line(line))
    }
}

/// Feeds `data` through the framer and the parser as a client could send
/// it, cut into pieces of the sizes `cuts` gives in turn, and checks what
/// must hold for any input: no frame longer than the limit, the buffer
/// bounded, one frame per terminator, and a parsed command's debug form
/// never shows a password. Panics otherwise. The fuzz target
/// (`fuzz/fuzz_targets/lines.rs`) and the property test below both drive it.
pub fn exercise(data: &[u8], cuts: &[usize], max: usize) {
    use shared::protocol::{allowed_before_login, Command};
    let mut d = LineDecoder::new(max);
    let mut b = BytesMut::new();
    let mut frames = 0;
    let mut rest = data;
    let mut cut = cuts.iter().map(|c| (*c).max(1)).cycle();
    while !rest.is_empty() {
        let n = cut.next().unwrap_or(rest.len()).min(rest.len());
        b.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = d.decode(&mut b) {
            frames += 1;
            let Frame::Line(l) = f else { continue };
            assert!(l.len() < max && !l.contains(&b'\n'));
            let Ok(text) = std::str::from_utf8(&l) else {
                continue;
            };
            let _ = allowed_before_login(text);
            if let Ok(Some(cmd @ (Command::Login { .. } | Command::Register { .. }))) =
                Command::parse(text)
            {
                let (kind, user) = match &cmd {
                    Command::Login { user, .. } => ("Login", user),
                    Command::Register { user, .. } => ("Register", user),
                    _ => unreachable!(),
                };
                let want = format!("{kind} {{ user: {user:?}, password: *** }}");
                assert_eq!(format!("{cmd:?}"), want, "a password in a debug line");
            }
        }
        assert!(b.len() < max);
    }
    assert_eq!(frames, data.iter().filter(|c| **c == b'\n').count());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(dec: &mut LineDecoder, buf: &mut BytesMut) -> Vec<Frame> {
        std::iter::from_fn(|| dec.decode(buf)).collect()
    }

    #[test]
    fn lines_and_crlf() {
        let mut d = LineDecoder::new(100);
        let mut b = BytesMut::from(&b"one\ntwo\r\nthr"[..]);
        assert_eq!(
            all(&mut d, &mut b),
            vec![Frame::Line("one".into()), Frame::Line("two".into())]
        );
        b.extend_from_slice(b"ee\n");
        assert_eq!(all(&mut d, &mut b), vec![Frame::Line("three".into())]);
    }

    #[test]
    fn limit_counts_the_terminator() {
        let mut d = LineDecoder::new(8);
        let mut b = BytesMut::from(&b"1234567\n12345678\nok\n"[..]);
        assert_eq!(
            all(&mut d, &mut b),
            vec![
                Frame::Line("1234567".into()),
                Frame::TooLong,
                Frame::Line("ok".into())
            ]
        );
    }

    #[test]
    fn long_line_in_pieces_is_reported_once() {
        let mut d = LineDecoder::new(8);
        let mut b = BytesMut::new();
        for _ in 0..10 {
            b.extend_from_slice(b"xxxxxx");
            assert_eq!(d.decode(&mut b), None);
        }
        assert!(b.len() < 8, "discarded bytes are not kept");
        b.extend_from_slice(b"xx\nnext\n");
        assert_eq!(
            all(&mut d, &mut b),
            vec![Frame::TooLong, Frame::Line("next".into())]
        );
    }

    #[test]
    fn eof_flushes_the_last_line() {
        let mut d = LineDecoder::new(100);
        let mut b = BytesMut::from(&b"a\nlast"[..]);
        assert_eq!(d.decode(&mut b), Some(Frame::Line("a".into())));
        assert_eq!(d.decode_eof(&mut b), Some(Frame::Line("last".into())));
        assert_eq!(d.decode_eof(&mut b), None);
    }

    proptest! {
        /// Whatever the bytes and however they are cut, no frame is longer
        /// than the limit, the buffer stays bounded, and the number of
        /// frames equals the number of terminators.
        #[test]
        fn any_input_is_bounded(data in proptest::collection::vec(any::<u8>(), 0..2000),
                                cuts in proptest::collection::vec(1usize..300, 1..20)) {
            exercise(&data, &cuts, 64);
        }

        /// Lines that look like commands, to reach deep into the parser.
        #[test]
        fn command_like_lines_are_handled(
            lines in proptest::collection::vec(
                "(/|//|LOGIN |REGISTER )?(join|leave|who|msg|history|publish|subscribe|rooms|@|[ a-zA-Z0-9_!-]){0,12}( [@a-z0-9]{0,8}){0,3}",
                1..20),
        ) {
            let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
            exercise(data.as_bytes(), &[7, 300], 64);
        }
    }
}
